//! podwire as kubelet (`podwire kubelet`): one process per node, speaking
//! to a real API server with the node's credentials (CN system:node:NAME
//! in system:nodes, so the Node authorizer and NodeRestriction apply). It
//! registers the Node and keeps its Lease and Ready condition fresh
//! (node.rs, health.rs), runs the pods bound to the node as a runtime does
//! (pods.rs, worker.rs, lifecycle.rs: sandboxes through the node's CNI
//! plugins, containers as processes under a shim), writes their status
//! (status.rs, pure), probes them (probes.rs), posts events (events.rs),
//! and serves `kubectl logs` and `kubectl exec` on :10250 (server.rs,
//! exec.rs).
//!
//! Everything it creates is recorded under --root-dir (state.rs), so a
//! restarted kubelet adopts running pods, and removes what belongs to pods
//! that are gone. Stopping the kubelet leaves its pods running, as with
//! kubelet.

mod api;
mod containers;
pub mod env;
pub mod error;
mod events;
mod exec;
pub mod health;
mod lifecycle;
pub mod logs;
pub mod node;
mod pods;
pub mod probes;
pub mod restart;
pub mod sandbox;
mod server;
pub mod shim;
pub mod state;
pub mod status;
mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Taint;
use podwire_source::{ClientSettings, Kube};

pub use error::{KubeletError, Result};

/// The Kubernetes release whose kubelet this one stands in for.
pub const KUBELET_VERSION: &str = "v1.37.2";
/// What the Node reports as its container runtime.
pub const RUNTIME_VERSION: &str = concat!("podwire://", env!("CARGO_PKG_VERSION"));

/// Everything `podwire kubelet` is told by its flags.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    pub node: String,
    pub kubeconfig: Option<PathBuf>,
    pub api_server: Option<String>,
    pub node_ip: IpAddr,
    /// Registered as spec.podCIDR(s) (empty: the controller manager's).
    pub pod_cidrs: Vec<IpNet>,
    pub taints: Vec<Taint>,
    pub labels: BTreeMap<String, String>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub root_dir: PathBuf,
    pub cluster_dns: Vec<IpAddr>,
    pub cluster_domain: String,
    /// The node's resolv.conf (dnsPolicy Default).
    pub resolv_conf: PathBuf,
    pub port: u16,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// The node agent's readiness URL (None: no agent check).
    pub agent_health: Option<String>,
    /// The program `podwire` commands and shims run (this binary).
    pub exe: PathBuf,
    /// Pod namespaces are named `<prefix><pod uid>`.
    pub netns_prefix: String,
}

/// What every part of a running kubelet shares.
pub(crate) struct Ctx {
    pub cfg: KubeletConfig,
    pub layout: state::Layout,
    pub kube: Kube,
    pub client: kube::Client,
    pub events: events::Recorder,
    pub machine: node::Machine,
    pub dns: sandbox::Dns,
    /// Running pods on the pod network (the node agent's check).
    pub network_pods: AtomicUsize,
    /// The `kubernetes` Service, once known.
    pub api_service: Mutex<Option<(IpAddr, i32)>>,
    /// (namespace, name) -> uid of the pods on this node (for logs).
    pub pods: Mutex<HashMap<(String, String), String>>,
}

fn check(cfg: &KubeletConfig) -> Result<()> {
    if cfg.node.is_empty() {
        return Err(KubeletError::Config("--node NAME is required".into()));
    }
    for (flag, dir) in [("--cni-bin-dir", &cfg.cni_bin_dir)] {
        if !dir.is_dir() {
            return Err(KubeletError::Config(format!(
                "{flag} {} is not a directory: install the CNI plugins there",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(cfg.root_dir.join("pods")).map_err(|e| {
        KubeletError::io(
            format!("cannot create --root-dir {}", cfg.root_dir.display()),
            e,
        )
    })
}

/// Runs the kubelet until SIGTERM or SIGINT (pods keep running).
pub fn run(cfg: KubeletConfig) -> Result<()> {
    check(&cfg)?;
    let kube = Kube::connect(&ClientSettings {
        kubeconfig: cfg.kubeconfig.clone(),
        api_server: cfg.api_server.clone(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kubelet")
        .enable_all()
        .build()
        .map_err(|e| KubeletError::io("cannot start the kubelet's runtime", e))?;
    let node_resolv = std::fs::read_to_string(&cfg.resolv_conf).unwrap_or_default();
    let client = kube.client();
    let ctx = Arc::new(Ctx {
        layout: state::Layout {
            root: cfg.root_dir.clone(),
        },
        events: events::Recorder::new(client.clone(), &cfg.node),
        machine: node::Machine::read(),
        dns: sandbox::Dns {
            cluster_dns: cfg.cluster_dns.clone(),
            domain: cfg.cluster_domain.clone(),
            node_resolv,
        },
        network_pods: AtomicUsize::new(0),
        api_service: Mutex::new(None),
        pods: Mutex::new(HashMap::new()),
        kube,
        client,
        cfg,
    });
    let result = runtime.block_on(serve(ctx));
    // Probe and event tasks may still run; they are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    result
}

async fn serve(ctx: Arc<Ctx>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| KubeletError::io("cannot handle SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| KubeletError::io("cannot handle SIGINT", e))?;
    // The endpoint first: a port in use is an error before anything else.
    let server = server::bind(ctx.clone()).await?;
    tokio::spawn(server);
    let node_uid = tokio::select! {
        uid = node::register(&ctx) => uid?,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    tokio::spawn(node::lease_loop(ctx.clone(), node_uid));
    tokio::spawn(node::status_loop(ctx.clone()));
    tokio::spawn(api_service_loop(ctx.clone()));
    tokio::select! {
        () = pods::run(ctx.clone()) => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("kubelet stopping; its pods keep running");
    Ok(())
}

/// Learns the `kubernetes` Service (for containers' environment), again
/// every minute in case it changes.
async fn api_service_loop(ctx: Arc<Ctx>) {
    loop {
        let found = api::api_service(&ctx).await;
        if let Ok(mut slot) = ctx.api_service.lock()
            && found.is_some()
        {
            *slot = found;
        }
        let wait = if found.is_some() { 60 } else { 2 };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

impl Ctx {
    /// What sandbox creation and removal need.
    pub fn sandbox_env(&self) -> sandbox::Env<'_> {
        sandbox::Env {
            layout: &self.layout,
            cni_conf_dir: &self.cfg.cni_conf_dir,
            cni_bin_dir: &self.cfg.cni_bin_dir,
            netns_prefix: &self.cfg.netns_prefix,
            node_ip: self.cfg.node_ip,
            dns: &self.dns,
        }
    }
}

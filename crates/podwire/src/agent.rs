//! `podwire agent`: the per-node agent. One loop over the cluster's
//! snapshots (from the files store or the Kubernetes API) drives the
//! routing part and the service proxy in the node's network namespace, and
//! optionally installs the CNI plugin and the node's conflist once its pod
//! slice is known. `podwire agent plan` prints what both would program.
//!
//! `--status-file F` reports both as one (the snapshot's revision, `ok`
//! only when both are), so whoever waits on F (the lab) knows routes AND
//! service rules are in place; `/readyz` on the health port says the same
//! to a kubelet.
//!
//! A watcher thread ([`crate::repair`]) reads the kernel's nftables and
//! route notifications; a change someone else made to the parts' tables,
//! routes or VXLAN device is repaired on the loop's next turn (within
//! ~0.1 s), logged and counted in `podwire_agent_repairs_total`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::IpNet;
use podwire_model::{ClusterState, ClusterWriter, Kind, RoutingMode, Snapshot, Watch, WatchEvent};
use podwire_policy::{PolicyAgent, PolicyOptions, PolicyStatus};
use podwire_proxy::{ProxyOptions, ProxyStatus, ServiceProxy};
use podwire_routing::{AgentOptions, AgentStatus, RoutingAgent};
use podwire_source::{ClusterSettings, KubeWriter};

use crate::repair::{Repairs, Watcher};
use crate::source::{SourceArgs, first_snapshot};

#[derive(Clone, Copy, ValueEnum)]
enum Routing {
    Vxlan,
    HostGw,
}

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// This node's name (its Node object). Default: $NODE_NAME.
    #[arg(long, global = true, env = "NODE_NAME")]
    node: Option<String>,
    /// The underlay interface holding the node's address.
    #[arg(long, global = true, default_value = "eth0")]
    iface: String,
    /// The underlay MTU (default: read from the interface).
    #[arg(long, global = true)]
    underlay_mtu: Option<u32>,
    /// The cluster's pod ranges. With --source kube the first is the
    /// cluster's pod range (required); with a files store they are ranges
    /// besides the store's (e.g. the IPv6 range of a dual-stack cluster).
    /// Traffic from them is "from pods" for the proxy.
    #[arg(long = "cluster-cidr", global = true, value_delimiter = ',')]
    cluster_cidrs: Vec<IpNet>,
    /// The cluster's service ranges. With --source kube the first is the
    /// service range (default: from the API's ServiceCIDR objects).
    #[arg(long = "service-cidr", global = true, value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// How nodes reach each other's pods with --source kube (a files store
    /// says it in its config).
    #[arg(long, global = true, value_enum, default_value = "vxlan")]
    routing: Routing,
    /// Also serve node ports on 127.0.0.1 (sets route_localnet, as
    /// kube-proxy's iptables mode does).
    #[arg(long, global = true)]
    nodeport_localhost: bool,
    /// Where `/healthz` and `/readyz` listen ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind: String,
    /// Where `/metrics` listens ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind: String,
    /// Run only the routing part (no service proxy).
    #[arg(long, conflicts_with = "no_routing")]
    no_proxy: bool,
    /// Run only the service proxy (no routes, no VXLAN, no masquerade).
    #[arg(long)]
    no_routing: bool,
    /// Do not enforce NetworkPolicy.
    #[arg(long)]
    no_policy: bool,
    /// Log connections NetworkPolicy denies (rate-limited, 10/s per
    /// policy) through this nflog group: the agent reads it and logs one
    /// line per denied connection (source pod, destination pod, port,
    /// policy). Off by default.
    #[arg(long, global = true)]
    policy_log_group: Option<u16>,
    /// Install the CNI plugin (this binary) into --cni-bin-dir and write
    /// the node's conflist into --cni-conf-dir once its pod slice is known.
    #[arg(long)]
    install_cni: bool,
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Apply once and exit.
    #[arg(long)]
    once: bool,
    /// Write the outcome of every sync to this file (JSON).
    #[arg(long)]
    status_file: Option<PathBuf>,
    #[command(subcommand)]
    action: Option<AgentAction>,
}

#[derive(Subcommand)]
enum AgentAction {
    /// Print the routes, VXLAN entries and nftables rules the agent would
    /// program on this node (routing, then the service proxy's table as an
    /// `nft -f` script), without touching anything.
    Plan,
    /// Remove the service proxy's and the NetworkPolicy tables from this
    /// namespace (the agent never does on exit, so Services keep working
    /// and policies stay enforced while it restarts).
    Cleanup,
}

fn node(args: &AgentArgs) -> Result<String> {
    match &args.node {
        Some(n) => Ok(n.clone()),
        None => bail!("--node NAME (or $NODE_NAME) is required"),
    }
}

fn kube_mode(args: &AgentArgs) -> Result<bool> {
    Ok(matches!(
        args.source.choice()?,
        crate::source::Choice::Kube(_)
    ))
}

fn routing_options(args: &AgentArgs) -> Result<AgentOptions> {
    let mut opts = AgentOptions::new(node(args)?);
    opts.underlay_device = args.iface.clone();
    opts.underlay_mtu = args.underlay_mtu;
    opts.require_published_vtep = kube_mode(args)?;
    Ok(opts)
}

fn bind(text: &str, flag: &str) -> Result<Option<SocketAddr>> {
    if text == "off" || text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("{flag} {text:?} is not ADDRESS:PORT (or \"off\")"))
}

fn policy_options(args: &AgentArgs) -> Result<PolicyOptions> {
    let mut opts = PolicyOptions::new(node(args)?);
    opts.log_group = args.policy_log_group;
    Ok(opts)
}

fn proxy_options(args: &AgentArgs) -> Result<ProxyOptions> {
    let mut opts = ProxyOptions::new(node(args)?);
    opts.extra_pod_cidrs = args.cluster_cidrs.clone();
    opts.extra_service_cidrs = args.service_cidrs.clone();
    opts.localhost_nodeports = args.nodeport_localhost;
    opts.healthz_bind = bind(&args.healthz_bind, "--healthz-bind")?;
    opts.metrics_bind = bind(&args.metrics_bind, "--metrics-bind")?;
    Ok(opts)
}

/// The cluster settings a real cluster keeps out of the API.
fn cluster_settings(args: &AgentArgs) -> Result<ClusterSettings> {
    let settings = ClusterSettings {
        cluster_cidr: args.cluster_cidrs.first().copied(),
        service_cidr: args.service_cidrs.first().copied(),
        routing: match args.routing {
            Routing::Vxlan => RoutingMode::Vxlan,
            Routing::HostGw => RoutingMode::HostGw,
        },
        ..ClusterSettings::default()
    };
    if kube_mode(args)? && settings.cluster_cidr.is_none() && !args.no_routing {
        bail!(
            "--source kube needs --cluster-cidr (the cluster's pod range, e.g. 10.244.0.0/16): \
             the agent masquerades what leaves it and routes what is inside it"
        );
    }
    Ok(settings)
}

fn open_watch(args: &AgentArgs) -> Result<(Watch, Option<Arc<dyn ClusterWriter>>)> {
    let mut interest = podwire_routing::interest();
    if !args.no_proxy {
        interest = interest.union(&podwire_proxy::interest());
    }
    if !args.no_policy {
        interest = interest.union(&podwire_policy::interest());
    }
    let (source, kube) = args.source.open(&interest, cluster_settings(args)?)?;
    let writer = kube.map(|k| Arc::new(KubeWriter::new(&k)) as Arc<dyn ClusterWriter>);
    Ok((Watch::new(source, &interest), writer))
}

pub fn run(args: AgentArgs) -> Result<()> {
    match args.action {
        Some(AgentAction::Plan) => {
            let (mut watch, _) = open_watch(&args)?;
            let snapshot = first_snapshot(&mut watch)?;
            if !args.no_routing {
                print!(
                    "{}",
                    podwire_routing::plan_for(&routing_options(&args)?, &snapshot.state)?
                );
            }
            if !args.no_proxy {
                print!(
                    "{}",
                    podwire_proxy::plan_for(&proxy_options(&args)?, &snapshot.state)
                );
            }
            if !args.no_policy {
                print!(
                    "{}",
                    podwire_policy::plan_for(&policy_options(&args)?, &snapshot.state)
                );
            }
            Ok(())
        }
        Some(AgentAction::Cleanup) => {
            podwire_proxy::engine::delete_table()?;
            Ok(podwire_policy::engine::delete_table()?)
        }
        None => run_agent(&args),
    }
}

/// Installs the CNI binary once and the node's conflist whenever its pod
/// slices (or the pods' MTU) change.
struct CniInstaller {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    node: String,
    binary_done: bool,
    installed: Option<podwire_cni::install::NodeNetwork>,
}

impl CniInstaller {
    fn update(&mut self, state: &ClusterState, underlay_mtu: u32) {
        if !self.binary_done {
            match std::env::current_exe()
                .and_then(|exe| podwire_cni::install::install_binary(&exe, &self.bin_dir))
            {
                Ok(_) => {
                    tracing::info!(dir = %self.bin_dir.display(), "CNI plugin installed");
                    self.binary_done = true;
                }
                Err(e) => {
                    tracing::warn!(dir = %self.bin_dir.display(), "cannot install the CNI plugin: {e}")
                }
            }
        }
        let Some(info) = state
            .nodes
            .get(&self.node)
            .and_then(podwire_model::NodeInfo::from_node)
        else {
            tracing::debug!(node = %self.node, "no pod slice yet: conflist not written");
            return;
        };
        let mtu = match state.config.as_ref().map(|c| c.routing) {
            Some(RoutingMode::HostGw) => underlay_mtu,
            _ => underlay_mtu.saturating_sub(podwire_routing::VXLAN_OVERHEAD),
        };
        let net = podwire_cni::install::NodeNetwork {
            pod_cidrs: info.pod_cidrs,
            mtu,
            ipam_data_dir: None,
        };
        if self.installed.as_ref() == Some(&net) {
            return;
        }
        match podwire_cni::install::install_conflist(&self.conf_dir, &net) {
            Ok(_) => {
                tracing::info!(
                    path = %self.conf_dir.join(podwire_cni::install::CONFLIST_FILE).display(),
                    slices = ?net.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "CNI configuration written"
                );
                self.installed = Some(net);
            }
            Err(e) => {
                tracing::warn!(dir = %self.conf_dir.display(), "cannot write the CNI configuration: {e}")
            }
        }
    }
}

/// The combined status of the parts (each present only when it runs).
fn combine(
    routing: Option<&AgentStatus>,
    proxy: Option<&ProxyStatus>,
    policy: Option<&PolicyStatus>,
) -> AgentStatus {
    let mut errors = Vec::new();
    if let Some(e) = routing.and_then(|r| r.error.as_ref()) {
        errors.push(format!("routing: {e}"));
    }
    if let Some(e) = proxy.and_then(|p| p.error.as_ref()) {
        errors.push(format!("service proxy: {e}"));
    }
    if let Some(e) = policy.and_then(|p| p.error.as_ref()) {
        errors.push(format!("network policy: {e}"));
    }
    let generations = routing
        .map(|r| r.generation)
        .into_iter()
        .chain(proxy.map(|p| p.generation))
        .chain(policy.map(|p| p.generation));
    AgentStatus {
        generation: generations.min().unwrap_or(0),
        ok: routing.is_none_or(|r| r.ok)
            && proxy.is_none_or(|p| p.ok)
            && policy.is_none_or(|p| p.ok),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

fn underlay_mtu(args: &AgentArgs) -> u32 {
    if let Some(mtu) = args.underlay_mtu {
        return mtu;
    }
    podwire_kernel::Netlink::new()
        .ok()
        .and_then(|mut nl| nl.link_by_name(&args.iface).ok().flatten())
        .map(|l| l.mtu)
        .filter(|m| *m > 0)
        .unwrap_or(1500)
}

fn run_agent(args: &AgentArgs) -> Result<()> {
    let (mut watch, writer) = open_watch(args)?;
    let mut routing = if args.no_routing {
        None
    } else {
        Some(RoutingAgent::new(routing_options(args)?, writer)?)
    };
    let mut proxy = if args.no_proxy {
        None
    } else {
        Some(ServiceProxy::new(proxy_options(args)?, !args.once)?)
    };
    let mut policy = if args.no_policy {
        None
    } else {
        Some(PolicyAgent::new(policy_options(args)?)?)
    };
    let mut cni = args.install_cni.then(|| CniInstaller {
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        node: args.node.clone().unwrap_or_default(),
        binary_done: false,
        installed: None,
    });
    let mtu = underlay_mtu(args);
    let mut on_snapshot = |s: &Snapshot,
                           routing: &mut Option<RoutingAgent>,
                           proxy: &mut Option<ServiceProxy>,
                           policy: &mut Option<PolicyAgent>| {
        if let Some(r) = routing.as_mut() {
            let _ = r.reconcile(s);
        }
        if let Some(p) = proxy.as_mut() {
            let _ = p.reconcile(s);
        }
        if let Some(p) = policy.as_mut() {
            let _ = p.reconcile(s);
        }
        if let Some(c) = cni.as_mut()
            && (s.changed.touches(Kind::Node) || c.installed.is_none())
        {
            c.update(&s.state, mtu);
        }
    };
    let status = |routing: &Option<RoutingAgent>,
                  proxy: &Option<ServiceProxy>,
                  policy: &Option<PolicyAgent>| {
        combine(
            routing.as_ref().and_then(|r| r.status()),
            proxy.as_ref().and_then(|p| p.status()),
            policy.as_ref().and_then(|p| p.status()),
        )
    };

    if args.once {
        let snapshot = first_snapshot(&mut watch)?;
        on_snapshot(&snapshot, &mut routing, &mut proxy, &mut policy);
        let s = status(&routing, &proxy, &policy);
        if let Some(f) = &args.status_file {
            s.write(f);
        }
        if let Some(e) = s.error {
            bail!("{e}");
        }
        return Ok(());
    }

    // Someone else's changes to what the parts own are repaired at once;
    // without notifications the periodic checks below still catch them.
    let watcher = match Watcher::start() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("{e:#}: foreign changes are found by periodic checks only");
            None
        }
    };
    let mut repairs = Repairs::default();
    let stop = AtomicBool::new(false);
    let mut last: Option<AgentStatus> = None;
    watch.run(&stop, &mut |event, source| {
        if let Some(w) = watcher.as_ref() {
            let found = w.take();
            if !found.is_empty() {
                repairs.run(found, &mut routing, &mut proxy, &mut policy);
            }
        }
        match event {
            WatchEvent::Snapshot(s) => on_snapshot(&s, &mut routing, &mut proxy, &mut policy),
            WatchEvent::SourceFailed(err) => {
                if let Some(r) = routing.as_mut() {
                    r.source_failed(&err);
                }
                if let Some(p) = proxy.as_mut() {
                    p.source_failed(&err);
                }
                if let Some(p) = policy.as_mut() {
                    p.source_failed(&err);
                }
            }
            WatchEvent::Idle => {}
        }
        let source_status = source.status();
        let mut s = status(&routing, &proxy, &policy);
        if s.error.is_none()
            && let Some(e) = &source_status.error
        {
            s.error = Some(format!("cluster state: {e}"));
        }
        let synced = routing
            .as_ref()
            .map(|r| r.status().is_some())
            .into_iter()
            .chain(proxy.as_ref().map(|p| p.status().is_some()))
            .chain(policy.as_ref().map(|p| p.status().is_some()))
            .all(|x| x);
        if !synced && s.error.is_some() {
            // Nothing is programmed yet: the error is the whole story.
            s.ok = false;
        }
        if let Some(p) = proxy.as_ref() {
            let mut extra = source_status.render_metrics("podwire_agent_source");
            extra.push_str(&repairs.metrics());
            if let Some(pol) = policy.as_ref() {
                extra.push_str(&pol.metrics());
            }
            p.set_extra_metrics(extra);
            let not_ready = if !synced {
                Some(format!(
                    "no cluster state yet from {}{}",
                    source.describe(),
                    source_status
                        .error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ))
            } else if !s.ok {
                s.error.clone()
            } else {
                None
            };
            p.set_not_ready(not_ready);
        }
        // Before the first snapshot only a failure is worth writing: it
        // replaces whatever an earlier run left in the file, which would
        // otherwise still say ok.
        if (synced || s.error.is_some()) && last.as_ref() != Some(&s) {
            if let Some(f) = &args.status_file {
                s.write(f);
            }
            last = Some(s);
        }
        let mut wait = Duration::from_secs(1);
        if let Some(r) = routing.as_mut() {
            wait = wait.min(r.tick());
        }
        if let Some(p) = proxy.as_mut() {
            wait = wait.min(p.tick());
        }
        if let Some(p) = policy.as_mut() {
            wait = wait.min(p.tick());
        }
        wait
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(generation: u64, ok: bool) -> AgentStatus {
        AgentStatus {
            generation,
            ok,
            error: (!ok).then(|| "no route".to_string()),
        }
    }

    fn p(generation: u64, ok: bool) -> ProxyStatus {
        ProxyStatus {
            generation,
            ok,
            error: (!ok).then(|| "no table".to_string()),
        }
    }

    #[test]
    fn combined_status_names_the_failing_part() {
        let s = combine(Some(&r(5, true)), Some(&p(4, true)), None);
        assert_eq!((s.generation, s.ok), (4, true));
        let s = combine(Some(&r(5, true)), Some(&p(5, false)), None);
        assert!(!s.ok);
        assert_eq!(s.error.as_deref(), Some("service proxy: no table"));
        let s = combine(None, Some(&p(7, true)), None);
        assert_eq!((s.generation, s.ok), (7, true), "routing off");
        let bad = PolicyStatus {
            generation: 6,
            ok: false,
            error: Some("no table".into()),
        };
        let s = combine(Some(&r(7, true)), Some(&p(7, true)), Some(&bad));
        assert_eq!((s.generation, s.ok), (6, false));
        assert_eq!(s.error.as_deref(), Some("network policy: no table"));
    }
}

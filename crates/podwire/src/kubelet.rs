//! `podwire kubelet`: podwire plays kubelet on one node against a real API
//! server (registers the Node, runs the pods bound to it, reports their
//! status, serves `kubectl logs`). The flags follow kubelet's names. The
//! hidden `podwire kubelet shim SPEC` is the per-container shim the
//! kubelet starts (podwire_lab::kubelet::shim).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use podwire_lab::kubelet::{KubeletConfig, health, node};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KubeletArgs {
    /// This node's name (its Node object; the credentials must be
    /// system:node:NAME). Default: $NODE_NAME.
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The node's credentials (a client certificate CN=system:node:NAME,
    /// O=system:nodes).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's.
    #[arg(long)]
    api_server: Option<String>,
    /// The node's address: its InternalIP, and where the kubelet API listens.
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// The node's pod ranges, registered as spec.podCIDR(s) (default: the
    /// controller manager allocates them).
    #[arg(long = "pod-cidr", value_delimiter = ',')]
    pod_cidrs: Vec<IpNet>,
    /// Taints to register the node with: key=value:Effect,...
    #[arg(long, default_value = "")]
    register_with_taints: String,
    /// Labels to register the node with: key=value,...
    #[arg(long, default_value = "")]
    node_labels: String,
    /// Where the runtime finds its network configuration.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the CNI plugins are (CNI_PATH).
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The kubelet's state: pod directories, logs, tokens, what it created.
    #[arg(long, default_value = "/var/lib/podwire/kubelet")]
    root_dir: PathBuf,
    /// Cluster DNS servers for ClusterFirst pods (the kube-dns Service).
    #[arg(long, value_delimiter = ',')]
    cluster_dns: Vec<IpAddr>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The node's resolver configuration (dnsPolicy Default).
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The kubelet API's port.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// The kubelet API's serving certificate (default: self-signed).
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// The CA of clients allowed to call the kubelet API (the API server's
    /// kubelet client certificate).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// The node agent's readiness URL, part of the node's Ready condition
    /// once the agent was seen ready or pods need the pod network; empty:
    /// no agent check.
    #[arg(long, default_value = health::DEFAULT_AGENT_HEALTH)]
    agent_health: String,
    /// The program `podwire` commands and container shims run (default:
    /// this binary).
    #[arg(long)]
    exe: Option<PathBuf>,
    /// Pod network namespaces are named PREFIX<pod uid> (default:
    /// pwk-<node>-).
    #[arg(long)]
    netns_prefix: Option<String>,
    #[command(subcommand)]
    action: Option<KubeletAction>,
}

#[derive(Subcommand)]
enum KubeletAction {
    /// The per-container shim (started by the kubelet itself).
    #[command(hide = true)]
    Shim { spec: PathBuf },
}

pub fn run(args: KubeletArgs) -> Result<()> {
    if let Some(KubeletAction::Shim { spec }) = args.action {
        std::process::exit(podwire_lab::kubelet::shim::run(&spec));
    }
    let Some(node) = args.node.filter(|n| !n.is_empty()) else {
        bail!("--node NAME (or $NODE_NAME) is required");
    };
    let Some(node_ip) = args.node_ip else {
        bail!("--node-ip IP is required: the node's address on its network");
    };
    let taints = node::parse_taints(&args.register_with_taints)
        .map_err(|e| anyhow::anyhow!("--register-with-taints: {e}"))?;
    let labels =
        node::parse_labels(&args.node_labels).map_err(|e| anyhow::anyhow!("--node-labels: {e}"))?;
    let exe = match args.exe {
        Some(exe) => exe,
        None => std::env::current_exe().context("cannot find this program (/proc/self/exe)")?,
    };
    let config = KubeletConfig {
        netns_prefix: args.netns_prefix.unwrap_or_else(|| format!("pwk-{node}-")),
        node,
        kubeconfig: args.kubeconfig,
        api_server: args.api_server,
        node_ip,
        pod_cidrs: args.pod_cidrs,
        taints,
        labels,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        root_dir: args.root_dir,
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain,
        resolv_conf: args.resolv_conf,
        port: args.port,
        tls_cert_file: args.tls_cert_file,
        tls_private_key_file: args.tls_private_key_file,
        client_ca_file: args.client_ca_file,
        agent_health: Some(args.agent_health).filter(|u| !u.is_empty()),
        exe,
    };
    podwire_lab::kubelet::run(config)?;
    Ok(())
}

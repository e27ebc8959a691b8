//! podwire: one binary for the whole Kubernetes network stack. When
//! CNI_COMMAND is set it is a CNI plugin (a runtime executes it as
//! `"type": "podwire"`); otherwise it is the command-line tool.

mod agent;
mod demo;
mod dns;
mod ingress;
mod kubelet;
mod lab;
mod repair;
mod serve;
mod source;

use std::io::{Read, Write};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "podwire",
    version,
    about = "The Kubernetes network stack in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create two pods in private network namespaces through the CNI plugin,
    /// show them reaching each other and a published port, then clean up.
    Demo {
        /// Keep the namespaces after the demo (remove with `podwire demo --cleanup`).
        #[arg(long)]
        keep: bool,
        /// Only remove what an earlier `--keep` demo left.
        #[arg(long)]
        cleanup: bool,
    },
    /// An HTTP server answering with its hostname, its IP and the client's IP
    /// (the lab's default pod workload, like agnhost netexec).
    Serve {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
    },
    /// A multi-node cluster network built from network namespaces on this
    /// machine, running podwire's components.
    Lab(lab::LabArgs),
    /// The node agent: pod routes between nodes (host-gw or VXLAN), egress
    /// masquerade and the service proxy (nftables); `podwire agent plan`
    /// prints what it would program.
    Agent(agent::AgentArgs),
    /// The cluster DNS server (the Kubernetes DNS schema, hosts file,
    /// forwarding, cache); `podwire dns plan` prints the zone it would serve.
    Dns(dns::DnsArgs),
    /// The ingress controller: an HTTP proxy routing by Ingress rules to
    /// ready endpoints; `podwire ingress plan` prints the route table.
    Ingress(ingress::IngressArgs),
    /// podwire as kubelet on one node: registers the Node, runs the pods
    /// bound to it (sandboxes through the node's CNI plugins, containers as
    /// processes), reports their status and serves `kubectl logs`.
    Kubelet(kubelet::KubeletArgs),
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(cni_main());
    }
    init_logs("info");
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Demo { keep, cleanup } => demo::run(keep, cleanup),
        Cmd::Serve { listen } => serve::run(&listen),
        Cmd::Lab(args) => lab::run(args),
        Cmd::Agent(args) => agent::run(args),
        Cmd::Dns(args) => dns::run(args),
        Cmd::Ingress(args) => ingress::run(args),
        Cmd::Kubelet(args) => kubelet::run(args),
    };
    if let Err(err) = outcome {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn init_logs(default: &str) {
    // kube-rs logs every failed request at error level; podwire's source
    // reports the same failures once, with what to do about them.
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODWIRE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},kube_client=off,kube_runtime=warn"))
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// CNI plugin mode: netconf on stdin, result or error JSON on stdout, logs on
/// stderr, non-zero exit on error.
fn cni_main() -> i32 {
    // Not init_logs: a plugin start is part of every pod's ADD, and the full
    // subscriber (span registry, filter directives) costs more than the
    // plugin's own work for a VERSION.
    podwire_cni::log::init(tracing::Level::WARN);
    let mut stdin = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut stdin) {
        tracing::warn!(%err, "cannot read stdin");
    }
    let outcome = podwire_cni::run(|name| std::env::var(name).ok(), &stdin);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    outcome.exit_code
}

/// Result alias used by subcommands.
pub type CmdResult = Result<()>;

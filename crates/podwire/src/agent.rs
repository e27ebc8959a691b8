//! `podwire agent`: the per-node agent (routing today; the service proxy
//! joins it), and `podwire agent plan`, its dry run.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use podwire_routing::AgentOptions;

#[derive(Args)]
pub struct AgentArgs {
    /// This node's name (its Node object).
    #[arg(long, global = true)]
    node: Option<String>,
    /// Where cluster state comes from: `files:DIR` (a lab's store).
    #[arg(long, global = true)]
    source: Option<String>,
    /// The underlay interface holding the node's address.
    #[arg(long, global = true, default_value = "eth0")]
    iface: String,
    /// The underlay MTU (default: read from the interface).
    #[arg(long, global = true)]
    underlay_mtu: Option<u32>,
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
    /// program on this node, without touching anything.
    Plan,
}

fn options(args: &AgentArgs) -> Result<AgentOptions> {
    let Some(node) = &args.node else {
        bail!("--node NAME is required")
    };
    let dir = match args.source.as_deref() {
        Some(s) if s.starts_with("files:") => PathBuf::from(&s["files:".len()..]),
        Some("kube") => bail!("--source kube is not available yet: use --source files:DIR"),
        Some(other) => bail!("unknown source {other:?}: use files:DIR"),
        None => bail!("--source files:DIR is required"),
    };
    let mut opts = AgentOptions::new(node.clone(), dir);
    opts.underlay_device = args.iface.clone();
    opts.underlay_mtu = args.underlay_mtu;
    opts.once = args.once;
    opts.status_file = args.status_file.clone();
    Ok(opts)
}

pub fn run(args: AgentArgs) -> Result<()> {
    let opts = options(&args)?;
    match args.action {
        Some(AgentAction::Plan) => {
            print!("{}", podwire_routing::plan_for(&opts)?);
            Ok(())
        }
        None => Ok(podwire_routing::run_agent(opts)?),
    }
}

//! `podwire agent`: the per-node agent, one process running the routing
//! loop and the service proxy side by side (two threads in the node's
//! network namespace), and `podwire agent plan`, the dry run of both.
//!
//! `--status-file F` reports both as one: the routing loop writes
//! `F.routing`, the proxy reports in memory, and a small reporter thread
//! writes F with the lower generation of the two and `ok` only when both
//! are, so whoever waits on F (the lab) knows routes AND service rules are
//! in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use podwire_proxy::{ProxyOptions, ProxyStatus};
use podwire_routing::{AgentOptions, AgentStatus};

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
    /// Pod ranges besides the cluster's (e.g. the IPv6 range of a
    /// dual-stack cluster): traffic from them is "from pods" for the proxy.
    #[arg(long = "cluster-cidr", global = true, value_delimiter = ',')]
    cluster_cidrs: Vec<IpNet>,
    /// Service ranges besides the cluster's.
    #[arg(long = "service-cidr", global = true, value_delimiter = ',')]
    service_cidrs: Vec<IpNet>,
    /// Also serve node ports on 127.0.0.1 (sets route_localnet, as
    /// kube-proxy's iptables mode does).
    #[arg(long, global = true)]
    nodeport_localhost: bool,
    /// Where `/healthz` listens ("off" to disable).
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
    /// Remove the service proxy's table from this namespace (the agent
    /// never does on exit, so Services keep working while it restarts).
    Cleanup,
}

fn source_dir(args: &AgentArgs) -> Result<PathBuf> {
    crate::source_dir(args.source.as_deref())
}

fn node(args: &AgentArgs) -> Result<String> {
    match &args.node {
        Some(n) => Ok(n.clone()),
        None => bail!("--node NAME is required"),
    }
}

fn routing_options(args: &AgentArgs) -> Result<AgentOptions> {
    let mut opts = AgentOptions::new(node(args)?, source_dir(args)?);
    opts.underlay_device = args.iface.clone();
    opts.underlay_mtu = args.underlay_mtu;
    opts.once = args.once;
    opts.status_file = args.status_file.clone();
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

fn proxy_options(args: &AgentArgs) -> Result<ProxyOptions> {
    let mut opts = ProxyOptions::new(node(args)?, source_dir(args)?);
    opts.extra_pod_cidrs = args.cluster_cidrs.clone();
    opts.extra_service_cidrs = args.service_cidrs.clone();
    opts.localhost_nodeports = args.nodeport_localhost;
    opts.healthz_bind = bind(&args.healthz_bind, "--healthz-bind")?;
    opts.metrics_bind = bind(&args.metrics_bind, "--metrics-bind")?;
    opts.once = args.once;
    Ok(opts)
}

pub fn run(args: AgentArgs) -> Result<()> {
    match args.action {
        Some(AgentAction::Plan) => {
            if !args.no_routing {
                print!("{}", podwire_routing::plan_for(&routing_options(&args)?)?);
            }
            if !args.no_proxy {
                print!("{}", podwire_proxy::plan_for(&proxy_options(&args)?)?);
            }
            Ok(())
        }
        Some(AgentAction::Cleanup) => Ok(podwire_proxy::engine::delete_table()?),
        None if args.no_proxy => Ok(podwire_routing::run_agent(routing_options(&args)?)?),
        None => run_both(&args),
    }
}

/// The combined status of the two loops.
fn combine(routing: Option<&AgentStatus>, proxy: Option<&ProxyStatus>) -> Option<AgentStatus> {
    let (r, p) = (routing?, proxy?);
    let mut errors = Vec::new();
    if let Some(e) = &r.error {
        errors.push(format!("routing: {e}"));
    }
    if let Some(e) = &p.error {
        errors.push(format!("service proxy: {e}"));
    }
    Some(AgentStatus {
        generation: r.generation.min(p.generation),
        ok: r.ok && p.ok,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

fn write_status(path: &Path, status: &AgentStatus) {
    let Ok(body) = serde_json::to_vec(status) else {
        return;
    };
    let tmp = path.with_extension("tmp-combined");
    if std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "cannot write the agent status file");
    }
}

fn routing_status_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".routing");
    PathBuf::from(name)
}

fn run_both(args: &AgentArgs) -> Result<()> {
    let mut ropts = routing_options(args)?;
    let popts = proxy_options(args)?;
    let status_file = args.status_file.clone();
    if let Some(f) = &status_file {
        ropts.status_file = Some(routing_status_path(f));
    }
    let proxy_status: Arc<Mutex<Option<ProxyStatus>>> = Arc::new(Mutex::new(None));
    let no_routing = args.no_routing;

    if args.once {
        if !no_routing {
            podwire_routing::run_agent(ropts)?;
        }
        let ps = proxy_status.clone();
        let stop = AtomicBool::new(false);
        podwire_proxy::run_proxy_until(&popts, &stop, &move |s: &ProxyStatus| {
            if let Ok(mut slot) = ps.lock() {
                *slot = Some(s.clone());
            }
        })?;
        if let Some(f) = &status_file {
            let routing = routing_file_status(&routing_status_path(f), no_routing, &proxy_status);
            let proxy = proxy_status.lock().ok().and_then(|s| s.clone());
            if let Some(s) = combine(routing.as_ref(), proxy.as_ref()) {
                write_status(f, &s);
            }
        }
        return Ok(());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let proxy = {
        let stop = stop.clone();
        let ps = proxy_status.clone();
        std::thread::Builder::new()
            .name("proxy".into())
            .spawn(move || {
                let result =
                    podwire_proxy::run_proxy_until(&popts, &stop, &move |s: &ProxyStatus| {
                        if let Ok(mut slot) = ps.lock() {
                            *slot = Some(s.clone());
                        }
                    });
                stop.store(true, Ordering::Relaxed);
                result
            })
            .context("cannot start the service proxy thread")?
    };
    let reporter = status_file.map(|file| {
        let stop = stop.clone();
        let ps = proxy_status.clone();
        std::thread::spawn(move || {
            let mut last: Option<AgentStatus> = None;
            let routing_file = routing_status_path(&file);
            while !stop.load(Ordering::Relaxed) {
                let routing = routing_file_status(&routing_file, no_routing, &ps);
                let proxy = ps.lock().ok().and_then(|s| s.clone());
                if let Some(s) = combine(routing.as_ref(), proxy.as_ref())
                    && last.as_ref() != Some(&s)
                {
                    write_status(&file, &s);
                    last = Some(s);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    });
    let routing_result = if no_routing {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    } else {
        let r = podwire_routing::run_agent_until(&ropts, &stop);
        stop.store(true, Ordering::Relaxed);
        r
    };
    let proxy_result = proxy
        .join()
        .map_err(|_| anyhow::anyhow!("the service proxy thread panicked"))?;
    if let Some(r) = reporter {
        let _ = r.join();
    }
    routing_result?;
    proxy_result?;
    Ok(())
}

/// The routing loop's last status (from its file); with `--no-routing`
/// the proxy's generation stands in for it.
fn routing_file_status(
    path: &Path,
    no_routing: bool,
    proxy: &Mutex<Option<ProxyStatus>>,
) -> Option<AgentStatus> {
    if no_routing {
        return proxy.lock().ok().and_then(|p| {
            p.as_ref().map(|p| AgentStatus {
                generation: p.generation,
                ok: true,
                error: None,
            })
        });
    }
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
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
    fn combined_status_waits_for_both_and_names_the_failing_part() {
        assert_eq!(combine(None, Some(&p(3, true))), None);
        assert_eq!(combine(Some(&r(3, true)), None), None);
        let s = combine(Some(&r(5, true)), Some(&p(4, true))).unwrap();
        assert_eq!((s.generation, s.ok), (4, true));
        let s = combine(Some(&r(5, true)), Some(&p(5, false))).unwrap();
        assert!(!s.ok);
        assert_eq!(s.error.as_deref(), Some("service proxy: no table"));
        assert_eq!(
            routing_status_path(Path::new("/x/node01.status")),
            PathBuf::from("/x/node01.status.routing")
        );
    }
}

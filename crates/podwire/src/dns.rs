//! `podwire dns`: the cluster DNS server, and `podwire dns plan`, which
//! prints the zone it would serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podwire_dns::{CacheConfig, PodMode, Server, ServerConfig, ZoneOptions};

#[derive(Args)]
pub struct DnsArgs {
    /// Where cluster state comes from: `files:DIR` (a lab's store).
    #[arg(long, global = true)]
    source: Option<String>,
    /// The cluster domain (default: the source's clusterDomain, else cluster.local).
    #[arg(long, global = true)]
    zone: Option<String>,
    /// TTL of cluster records, in seconds.
    #[arg(long, global = true, default_value_t = podwire_dns::DEFAULT_TTL)]
    ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: insecure (any address in an
    /// existing namespace), verified (only existing pods) or disabled.
    #[arg(long, global = true, default_value = "insecure")]
    pods: PodMode,
    /// UDP and TCP address to serve DNS on.
    #[arg(long, default_value = "0.0.0.0:53")]
    listen: SocketAddr,
    /// A hosts file (/etc/hosts format) to serve too; reloaded when it changes.
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Upstream servers for other names, tried in order (IP or IP:PORT;
    /// repeat the flag). Default: the nameservers of --resolv-conf.
    #[arg(long = "upstream")]
    upstreams: Vec<String>,
    /// Where the default upstreams come from.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// How long to wait for one upstream before trying the next, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    upstream_timeout_ms: u64,
    /// Upstream queries in flight at most; beyond it queries get REFUSED.
    #[arg(long, default_value_t = 1000)]
    max_concurrent: usize,
    /// Cache entries at most (0 disables the cache).
    #[arg(long, default_value_t = CacheConfig::default().capacity)]
    cache_size: usize,
    /// Longest time a forwarded answer is cached, in seconds.
    #[arg(long, default_value_t = CacheConfig::default().max_ttl)]
    cache_max_ttl: u32,
    /// Longest time a negative forwarded answer is cached, in seconds.
    #[arg(long, default_value_t = CacheConfig::default().max_negative_ttl)]
    cache_max_negative_ttl: u32,
    /// The /health endpoint's address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_listen: String,
    /// The /ready endpoint's address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:8181")]
    ready_listen: String,
    /// The Prometheus /metrics endpoint's address (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:9153")]
    metrics_listen: String,
    /// UDP worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    #[command(subcommand)]
    action: Option<DnsAction>,
}

#[derive(Subcommand)]
enum DnsAction {
    /// Print the zone the server would serve (a zone file), without serving.
    Plan,
}

fn optional_addr(flag: &str, value: &str) -> Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("--{flag} {value:?}: expected IP:PORT or off"))
}

pub fn run(args: DnsArgs) -> Result<()> {
    let store = crate::source_dir(args.source.as_deref())?;
    let zone = ZoneOptions {
        zone: args.zone.clone(),
        ttl: args.ttl,
        pods: args.pods,
    };
    if let Some(DnsAction::Plan) = args.action {
        let loaded = podwire_dns::source::load(&podwire_model::Store::open(&store), &zone)?;
        println!(
            "; podwire dns plan: {} (generation {}, {} objects read)",
            store.display(),
            loaded.generation,
            loaded.objects
        );
        if loaded.generation == 0 {
            println!(
                "; the store has no generation yet: the server would answer SERVFAIL for the zone"
            );
        }
        for reason in &loaded.skipped {
            println!("; left out: {reason}");
        }
        print!("{}", loaded.zone);
        return Ok(());
    }
    let upstreams = if args.upstreams.is_empty() {
        podwire_dns::resolv::nameservers_of(&args.resolv_conf)
    } else {
        args.upstreams
            .iter()
            .map(|u| podwire_dns::resolv::parse_upstream(u))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut config = ServerConfig::new(store);
    config.listen = args.listen;
    config.zone = zone;
    config.hosts = args.hosts;
    config.upstreams = upstreams;
    config.upstream_timeout = Duration::from_millis(args.upstream_timeout_ms.max(1));
    config.max_concurrent = args.max_concurrent.max(1);
    config.cache = CacheConfig {
        capacity: args.cache_size,
        max_ttl: args.cache_max_ttl,
        max_negative_ttl: args.cache_max_negative_ttl,
    };
    config.health_listen = optional_addr("health-listen", &args.health_listen)?;
    config.ready_listen = optional_addr("ready-listen", &args.ready_listen)?;
    config.metrics_listen = optional_addr("metrics-listen", &args.metrics_listen)?;
    config.workers = args.workers;
    let server = Server::start(config)?;
    server.wait();
    Ok(())
}

//! `podwire dns`: the cluster DNS server, and `podwire dns plan`, which
//! prints the zone it would serve.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podwire_dns::{CacheConfig, PodMode, Server, ServerConfig, TcpConfig, ZoneFacts, ZoneOptions};
use podwire_source::ClusterSettings;

use crate::source::{Choice, SourceArgs};

#[derive(Args)]
pub struct DnsArgs {
    #[command(flatten)]
    source: SourceArgs,
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
    /// A zone this server is authoritative for (repeat the flag): names in
    /// it that the hosts file does not have answer NXDOMAIN instead of
    /// being forwarded; `.` makes it the whole world (the lab's external host).
    #[arg(long = "authoritative")]
    authoritative: Vec<String>,
    /// UDP worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// DNS-over-TCP connections open at most; when all are taken, the least
    /// recently active one is closed for each new client.
    #[arg(long, default_value_t = TcpConfig::default().max_connections)]
    tcp_max_connections: usize,
    /// DNS-over-TCP connections one client address may hold (0: no limit);
    /// a client over it loses its own least recently active connection.
    #[arg(long, default_value_t = TcpConfig::default().max_per_client)]
    tcp_max_per_client: usize,
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

/// How long `dns plan` waits for every kind to be listed.
const PLAN_WAIT: Duration = Duration::from_secs(30);

pub fn run(args: DnsArgs) -> Result<()> {
    let zone = ZoneOptions {
        zone: args.zone.clone(),
        ttl: args.ttl,
        pods: args.pods,
    };
    let settings = ClusterSettings {
        cluster_domain: args
            .zone
            .clone()
            .unwrap_or_else(|| podwire_dns::DEFAULT_ZONE.into()),
        ..ClusterSettings::default()
    };
    let (mut source, _) = args
        .source
        .open(&podwire_dns::server::interest(), settings)?;
    if let Some(DnsAction::Plan) = args.action {
        let mut facts = ZoneFacts::new(zone.pods == PodMode::Verified);
        let deadline = std::time::Instant::now() + PLAN_WAIT;
        let mut revision = 0;
        let mut objects = 0usize;
        while !facts.synced() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!(
                    "no complete cluster state from {} within {PLAN_WAIT:?} (a files store needs generation 1 or more)",
                    source.describe()
                );
            }
            if let Some(update) = source.next(left)? {
                revision = update.revision;
                objects += update.changes.len();
                for change in update.changes {
                    facts.apply(change);
                }
            }
        }
        println!(
            "; podwire dns plan: {} (revision {revision}, {objects} changes read)",
            source.describe()
        );
        for reason in facts.skipped() {
            println!("; left out: {reason}");
        }
        print!("{}", facts.build(&zone, revision as u32));
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
    let mut config = ServerConfig::new(PathBuf::new());
    config.store = match args.source.choice()? {
        Choice::Files(dir) => Some(dir),
        Choice::Kube(_) => None,
    };
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
    config.authoritative = args.authoritative.clone();
    config.tcp = TcpConfig {
        max_connections: args.tcp_max_connections.max(1),
        max_per_client: args.tcp_max_per_client,
        ..TcpConfig::default()
    };
    let server = Server::start_with_source(config, source)?;
    server.wait();
    Ok(())
}

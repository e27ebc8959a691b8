//! The proxy's loop inside `podwire agent`: watch the files source, compile
//! (incrementally), apply (incrementally), re-assert.
//!
//! - The store's generation is polled every `poll` (100 ms): a burst of
//!   changes between two polls becomes one sync, and a 10k-Service store
//!   is loaded once per burst, not once per object.
//! - A failed sync forgets the committed state, reports the error and
//!   retries after a second with a full resync; the desired state is always
//!   the whole store, so no change is ever lost.
//! - Every `check_table` (1 s) the agent asks the kernel whether its table
//!   is still there (one netlink round trip) and re-asserts it with a full
//!   sync when someone deleted it; every `full_resync` (5 min) it re-sends
//!   everything anyway.
//! - The table is never deleted on exit: a restarting agent leaves the
//!   kernel serving Services, and its first (full) sync replaces every
//!   element in one transaction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use podwire_model::{ClusterState, Store};

use crate::compile::{CompileOptions, Compiler, Ruleset, compile};
use crate::engine::{Engine, SyncReport, table_present};
use crate::error::ProxyError;
use crate::http::{self, Handler, HealthCheckServers, Response};
use crate::metrics::Metrics;

/// How the proxy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    pub node_name: String,
    /// The files source (the lab's store).
    pub source_dir: PathBuf,
    /// Pod ranges beyond the cluster config's (e.g. the IPv6 one).
    pub extra_pod_cidrs: Vec<IpNet>,
    /// Service ranges beyond the cluster config's.
    pub extra_service_cidrs: Vec<IpNet>,
    /// Serve node ports on 127.0.0.1 (sets route_localnet).
    pub localhost_nodeports: bool,
    pub poll: Duration,
    pub check_table: Duration,
    pub full_resync: Duration,
    /// `/healthz` and `/livez` (kube-proxy: 0.0.0.0:10256); None: off.
    pub healthz_bind: Option<SocketAddr>,
    /// `/metrics` (kube-proxy: 127.0.0.1:10249); None: off.
    pub metrics_bind: Option<SocketAddr>,
    /// Sync once and return.
    pub once: bool,
}

impl ProxyOptions {
    pub fn new(node_name: impl Into<String>, source_dir: impl Into<PathBuf>) -> ProxyOptions {
        ProxyOptions {
            node_name: node_name.into(),
            source_dir: source_dir.into(),
            extra_pod_cidrs: Vec::new(),
            extra_service_cidrs: Vec::new(),
            localhost_nodeports: false,
            poll: Duration::from_millis(100),
            check_table: Duration::from_secs(1),
            full_resync: Duration::from_secs(300),
            healthz_bind: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
            metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
            once: false,
        }
    }

    fn compile_options(&self, state: &ClusterState) -> CompileOptions {
        CompileOptions::for_node(
            state,
            &self.node_name,
            &self.extra_pod_cidrs,
            &self.extra_service_cidrs,
            self.localhost_nodeports,
        )
    }
}

/// What the proxy reports after each sync attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    pub generation: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// What `/healthz` answers from.
#[derive(Debug, Default)]
struct Health {
    last_ok: Option<SystemTime>,
    /// When a change was first seen that is not applied yet.
    pending_since: Option<Instant>,
}

/// A change pending longer than this makes `/healthz` answer 503.
const STALE: Duration = Duration::from_secs(30);
const RETRY: Duration = Duration::from_secs(1);

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn healthz(health: &Mutex<Health>) -> Response {
    let Ok(h) = health.lock() else {
        return Response::new(503, "text/plain", "unavailable\n");
    };
    let now = SystemTime::now();
    let healthy =
        h.last_ok.is_some() && h.pending_since.is_none_or(|since| since.elapsed() < STALE);
    let body = format!(
        "{{\"lastUpdated\":{},\"currentTime\":{},\"nodeEligible\":true}}",
        h.last_ok.map(unix).unwrap_or(0.0),
        unix(now)
    );
    Response::new(if healthy { 200 } else { 503 }, "application/json", body)
}

fn start_servers(
    opts: &ProxyOptions,
    metrics: &Arc<Metrics>,
    health: &Arc<Mutex<Health>>,
) -> Vec<http::Server> {
    let mut servers = Vec::new();
    let h = health.clone();
    let m = metrics.clone();
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/healthz" | "/livez" => healthz(&h),
        "/metrics" => Response::new(200, "text/plain; version=0.0.4", m.render()),
        _ => Response::new(404, "text/plain", "try /healthz or /metrics\n"),
    });
    let mut binds: Vec<(SocketAddr, &'static str)> = Vec::new();
    if let Some(a) = opts.healthz_bind {
        binds.push((a, "/healthz"));
    }
    if let Some(a) = opts.metrics_bind
        && Some(a) != opts.healthz_bind
    {
        binds.push((a, "/metrics"));
    }
    for (addr, what) in binds {
        match http::serve(addr, what, handler.clone()) {
            Ok(s) => servers.push(s),
            Err(err) => tracing::warn!(%err, "proxy HTTP endpoint not started"),
        }
    }
    servers
}

fn record(metrics: &Metrics, engine: &Engine, ruleset: &Ruleset, report: &SyncReport) {
    metrics.observe_sync(
        if report.full { "full" } else { "partial" },
        report.elapsed.as_secs_f64(),
    );
    metrics.last_sync.set(unix(SystemTime::now()));
    for (set, n) in engine.element_counts() {
        metrics.set_elements(&set, n);
    }
    metrics.rules.set(engine.rule_count() as i64);
    metrics.chains.set(engine.chain_count() as i64);
    metrics.services.set(ruleset.services.len() as i64);
    metrics
        .conntrack_flushes
        .inc_by(report.conntrack_flushes as u64);
}

/// Runs the proxy in the calling thread's network namespace until `stop`
/// is set (checked every poll), calling `report` after every sync attempt.
pub fn run_proxy_until(
    opts: &ProxyOptions,
    stop: &AtomicBool,
    report: &(dyn Fn(&ProxyStatus) + Sync),
) -> Result<(), ProxyError> {
    let store = Store::open(&opts.source_dir);
    if opts.localhost_nodeports
        && let Err(e) = podwire_kernel::sysctl::ensure("net/ipv4/conf/all/route_localnet", "1")
    {
        return Err(ProxyError::kernel(
            "turning on route_localnet (needed for 127.0.0.1 node ports)",
            e,
        ));
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Mutex::new(Health::default()));
    let _servers = if opts.once {
        Vec::new()
    } else {
        start_servers(opts, &metrics, &health)
    };
    let mut health_checks = HealthCheckServers::default();
    let mut compiler = Compiler::new();
    let mut engine = Engine::new();
    tracing::info!(node = %opts.node_name, source = %opts.source_dir.display(), "service proxy started");

    let mut seen: Option<u64> = None;
    let mut retry_at = Instant::now();
    let mut next_check = Instant::now() + opts.check_table;
    let mut next_full = Instant::now() + opts.full_resync;
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let generation = store.generation();
        let mut due = seen != Some(generation) || (!engine.is_synced() && now >= retry_at);
        if engine.is_synced() && now >= next_check {
            next_check = now + opts.check_table;
            match table_present() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("table inet podwire-proxy was deleted; putting it back");
                    engine.invalidate();
                    due = true;
                }
                Err(err) => tracing::debug!(%err, "cannot check the proxy table"),
            }
        }
        if engine.is_synced() && now >= next_full {
            engine.invalidate();
            due = true;
        }
        if due {
            if let Ok(mut h) = health.lock() {
                h.pending_since.get_or_insert(now);
            }
            let outcome = store
                .load_consistent()
                .map_err(|e| ProxyError::Source {
                    dir: opts.source_dir.clone(),
                    detail: e.to_string(),
                })
                .and_then(|(generation, state)| {
                    let ruleset = compiler.compile(&state, &opts.compile_options(&state));
                    let r = engine.sync(ruleset)?;
                    Ok((generation, ruleset, r))
                });
            match outcome {
                Ok((generation, ruleset, r)) => {
                    if r.full {
                        next_full = Instant::now() + opts.full_resync;
                    }
                    if r.services_changed > 0 || r.full || last_error.is_some() {
                        tracing::info!(
                            generation,
                            full = r.full,
                            services = ruleset.services.len(),
                            changed = r.services_changed,
                            added = r.elements_added,
                            deleted = r.elements_deleted,
                            elements = r.elements_total,
                            ms = r.elapsed.as_secs_f64() * 1000.0,
                            "service rules in place"
                        );
                    }
                    record(&metrics, &engine, ruleset, &r);
                    health_checks.update(&ruleset.health_checks());
                    if let Ok(mut h) = health.lock() {
                        h.last_ok = Some(SystemTime::now());
                        h.pending_since = None;
                    }
                    seen = Some(generation);
                    last_error = None;
                    report(&ProxyStatus {
                        generation,
                        ok: true,
                        error: None,
                    });
                }
                Err(err) => {
                    let text = err.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "service rules not applied; retrying with a full resync");
                    }
                    metrics.sync_errors.inc();
                    engine.invalidate();
                    if opts.once {
                        return Err(err);
                    }
                    report(&ProxyStatus {
                        generation,
                        ok: false,
                        error: Some(text.clone()),
                    });
                    last_error = Some(text);
                    seen = Some(generation);
                    retry_at = Instant::now() + RETRY;
                }
            }
            if opts.once {
                return Ok(());
            }
        }
        std::thread::sleep(opts.poll);
    }
    tracing::info!(node = %opts.node_name, "service proxy stopped (its table stays)");
    Ok(())
}

/// The ruleset the proxy would program now (`podwire agent plan`).
pub fn plan_for(opts: &ProxyOptions) -> Result<Ruleset, ProxyError> {
    let store = Store::open(&opts.source_dir);
    let state = store.load().map_err(|e| ProxyError::Source {
        dir: opts.source_dir.clone(),
        detail: e.to_string(),
    })?;
    Ok(compile(&state, &opts.compile_options(&state)))
}

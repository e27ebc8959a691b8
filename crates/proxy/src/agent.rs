//! The service proxy inside `podwire agent`: each snapshot compiled and
//! applied incrementally, the table re-asserted.
//!
//! - A snapshot that names the Services and EndpointSlices that changed
//!   (a watch event, or a files-store relist that found differences)
//!   recompiles and re-sends only those Services
//!   ([`Compiler::compile_changed`] + [`Engine::sync_changed`]): one new
//!   Service costs one Service's work at any scale. The first snapshot (and
//!   one after the cluster settings changed) compiles everything.
//! - A failed sync forgets the committed state, reports the error and
//!   retries a full sync of the last compiled ruleset a second later;
//!   nothing pending is lost.
//! - [`ServiceProxy::repair`]: `podwire agent` watches nftables
//!   notifications and calls it as soon as someone else changed the table
//!   (a flushed chain, a deleted set or element): a full resync at once.
//! - Every `check_table` (1 s) the agent asks the kernel whether its table
//!   is still there (one netlink round trip) and re-asserts it with a full
//!   sync when someone deleted it; every `full_resync` (5 min) it re-sends
//!   everything anyway.
//! - The table is never deleted on exit: a restarting agent leaves the
//!   kernel serving Services, and its first (full) sync replaces every
//!   element in one transaction.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use podwire_model::{Changed, ClusterState, Interest, Kind, Snapshot, SourceError};

use crate::compile::{CompileOptions, Compiler, Ruleset, SERVICE_NAME_LABEL, ServiceKey, compile};
use crate::engine::{Engine, SyncReport, table_present};
use crate::error::ProxyError;
use crate::http::{self, Handler, HealthCheckServers, Response};
use crate::metrics::Metrics;

/// How the proxy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    pub node_name: String,
    /// Pod ranges beyond the cluster config's (e.g. the IPv6 one).
    pub extra_pod_cidrs: Vec<IpNet>,
    /// Service ranges beyond the cluster config's.
    pub extra_service_cidrs: Vec<IpNet>,
    /// Serve node ports on 127.0.0.1 (sets route_localnet).
    pub localhost_nodeports: bool,
    pub check_table: Duration,
    pub full_resync: Duration,
    /// `/healthz` and `/livez` (kube-proxy: 0.0.0.0:10256); None: off.
    pub healthz_bind: Option<SocketAddr>,
    /// `/metrics` (kube-proxy: 127.0.0.1:10249); None: off.
    pub metrics_bind: Option<SocketAddr>,
}

impl ProxyOptions {
    pub fn new(node_name: impl Into<String>) -> ProxyOptions {
        ProxyOptions {
            node_name: node_name.into(),
            extra_pod_cidrs: Vec::new(),
            extra_service_cidrs: Vec::new(),
            localhost_nodeports: false,
            check_table: Duration::from_secs(1),
            full_resync: Duration::from_secs(300),
            healthz_bind: Some(SocketAddr::from(([0, 0, 0, 0], 10256))),
            metrics_bind: Some(SocketAddr::from(([127, 0, 0, 1], 10249))),
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

/// The kinds the proxy reads: Services, EndpointSlices, and Nodes (this
/// node's pod slices decide which endpoints are local).
pub fn interest() -> Interest {
    Interest::new([Kind::Service, Kind::EndpointSlice, Kind::Node])
}

/// What the proxy reports after each sync attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStatus {
    pub generation: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// What `/healthz` and `/readyz` answer from.
#[derive(Debug, Default)]
struct Health {
    last_ok: Option<SystemTime>,
    /// When a change was first seen that is not applied yet.
    pending_since: Option<Instant>,
    /// Why the node is not ready (None: ready), set by whoever runs the
    /// proxy (the agent: cluster state, routing and rules all in place).
    not_ready: Option<String>,
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

fn readyz(health: &Mutex<Health>) -> Response {
    match health.lock().map(|h| h.not_ready.clone()) {
        Ok(None) => Response::new(200, "text/plain", "ok\n"),
        Ok(Some(reason)) => Response::new(503, "text/plain", format!("not ready: {reason}\n")),
        Err(_) => Response::new(503, "text/plain", "unavailable\n"),
    }
}

fn start_servers(
    opts: &ProxyOptions,
    metrics: &Arc<Metrics>,
    health: &Arc<Mutex<Health>>,
    extra: &Arc<Mutex<String>>,
) -> Vec<http::Server> {
    let mut servers = Vec::new();
    let h = health.clone();
    let m = metrics.clone();
    let extra = extra.clone();
    let handler: Handler = Arc::new(move |path: &str| match path {
        "/healthz" | "/livez" => healthz(&h),
        "/readyz" => readyz(&h),
        // As kube-proxy answers on its metrics port.
        "/proxyMode" => Response::new(200, "text/plain", "nftables"),
        "/metrics" => {
            let mut text = m.render();
            if let Ok(e) = extra.lock() {
                text.push_str(&e);
            }
            Response::new(200, "text/plain; version=0.0.4", text)
        }
        _ => Response::new(
            404,
            "text/plain",
            "try /healthz, /readyz, /proxyMode or /metrics\n",
        ),
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

/// The proxy's state between snapshots.
pub struct ServiceProxy {
    opts: ProxyOptions,
    metrics: Arc<Metrics>,
    health: Arc<Mutex<Health>>,
    /// Prometheus text appended to /metrics (the source's status).
    extra_metrics: Arc<Mutex<String>>,
    _servers: Vec<http::Server>,
    health_checks: HealthCheckServers,
    compiler: Compiler,
    engine: Engine,
    /// Which Service each EndpointSlice belonged to when last seen, so a
    /// deleted slice still names the Service to recompile.
    slice_owner: HashMap<(String, String), ServiceKey>,
    compiled: bool,
    generation: u64,
    retry_at: Option<Instant>,
    next_check: Instant,
    next_full: Instant,
    last_error: Option<String>,
    status: Option<ProxyStatus>,
}

impl ServiceProxy {
    /// Prepares the proxy in the calling thread's namespace and starts its
    /// HTTP endpoints (`serve_http` false: none, e.g. for a one-shot run).
    pub fn new(opts: ProxyOptions, serve_http: bool) -> Result<ServiceProxy, ProxyError> {
        if opts.localhost_nodeports
            && let Err(e) = podwire_kernel::sysctl::ensure("net/ipv4/conf/all/route_localnet", "1")
        {
            return Err(ProxyError::kernel(
                "turning on route_localnet (needed for 127.0.0.1 node ports)",
                e,
            ));
        }
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Mutex::new(Health {
            not_ready: Some("no cluster state yet".into()),
            ..Health::default()
        }));
        let extra_metrics = Arc::new(Mutex::new(String::new()));
        let servers = if serve_http {
            start_servers(&opts, &metrics, &health, &extra_metrics)
        } else {
            Vec::new()
        };
        tracing::info!(node = %opts.node_name, "service proxy started");
        let now = Instant::now();
        Ok(ServiceProxy {
            next_check: now + opts.check_table,
            next_full: now + opts.full_resync,
            opts,
            metrics,
            health,
            extra_metrics,
            _servers: servers,
            health_checks: HealthCheckServers::default(),
            compiler: Compiler::new(),
            engine: Engine::new(),
            slice_owner: HashMap::new(),
            compiled: false,
            generation: 0,
            retry_at: None,
            last_error: None,
            status: None,
        })
    }

    /// The outcome of the last sync attempt.
    pub fn status(&self) -> Option<&ProxyStatus> {
        self.status.as_ref()
    }

    /// What `/readyz` answers: ready (None) or why not.
    pub fn set_not_ready(&self, reason: Option<String>) {
        if let Ok(mut h) = self.health.lock() {
            h.not_ready = reason;
        }
    }

    /// Text appended to `/metrics` (e.g. the source's status).
    pub fn set_extra_metrics(&self, text: String) {
        if let Ok(mut slot) = self.extra_metrics.lock() {
            *slot = text;
        }
    }

    /// The Services a snapshot changed, or None for "all of them".
    fn changed_services(&mut self, snapshot: &Snapshot) -> Option<Vec<ServiceKey>> {
        let state = &snapshot.state;
        let set = match &snapshot.changed {
            Changed::All => {
                self.slice_owner = state
                    .endpoint_slices
                    .iter()
                    .filter_map(|(key, slice)| {
                        let svc = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
                        Some((key.clone(), (key.0.clone(), svc.clone())))
                    })
                    .collect();
                return None;
            }
            Changed::Objects(set) => set,
        };
        let mut keys = BTreeSet::new();
        for r in set {
            match r.kind {
                Kind::Service => {
                    keys.insert(r.key());
                }
                Kind::EndpointSlice => {
                    let key = r.key();
                    if let Some(old) = self.slice_owner.remove(&key) {
                        keys.insert(old);
                    }
                    let now = state
                        .endpoint_slices
                        .get(&key)
                        .and_then(|s| s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL));
                    if let Some(svc) = now {
                        let owner = (key.0.clone(), svc.clone());
                        keys.insert(owner.clone());
                        self.slice_owner.insert(key, owner);
                    }
                }
                // Nodes change the compile options; the compiler notices.
                _ => {}
            }
        }
        Some(keys.into_iter().collect())
    }

    /// Compiles and applies a snapshot: only the Services it changed.
    pub fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), ProxyError> {
        let changed = self.changed_services(snapshot);
        self.generation = snapshot.revision;
        let options = self.opts.compile_options(&snapshot.state);
        let ruleset = match &changed {
            Some(keys) if self.compiled => {
                self.compiler
                    .compile_changed(&snapshot.state, &options, keys)
            }
            _ => self.compiler.compile(&snapshot.state, &options),
        };
        self.compiled = true;
        let result = match &changed {
            Some(keys) if self.engine.is_synced() => self.engine.sync_changed(ruleset, keys),
            _ => self.engine.sync(ruleset),
        };
        self.after_sync(result)
    }

    fn after_sync(&mut self, result: Result<SyncReport, ProxyError>) -> Result<(), ProxyError> {
        let generation = self.generation;
        let ruleset = self.compiler.ruleset();
        match result {
            Ok(r) => {
                if r.full {
                    self.next_full = Instant::now() + self.opts.full_resync;
                }
                if r.services_changed > 0 || r.full || self.last_error.is_some() {
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
                record(&self.metrics, &self.engine, ruleset, &r);
                self.health_checks.update(&ruleset.health_checks());
                if let Ok(mut h) = self.health.lock() {
                    h.last_ok = Some(SystemTime::now());
                    h.pending_since = None;
                }
                self.last_error = None;
                self.retry_at = None;
                self.status = Some(ProxyStatus {
                    generation,
                    ok: true,
                    error: None,
                });
                Ok(())
            }
            Err(err) => {
                let text = err.to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "service rules not applied; retrying with a full resync");
                }
                self.metrics.sync_errors.inc();
                self.engine.invalidate();
                if let Ok(mut h) = self.health.lock() {
                    h.pending_since.get_or_insert(Instant::now());
                }
                self.status = Some(ProxyStatus {
                    generation,
                    ok: false,
                    error: Some(text.clone()),
                });
                self.last_error = Some(text);
                self.retry_at = Some(Instant::now() + RETRY);
                Err(err)
            }
        }
    }

    /// Someone else changed the table (a flushed chain, a deleted set or
    /// element): re-sends all of it at once, structure and elements, as
    /// the periodic full resync would. Returns how long the resync took;
    /// None before the first sync (nothing to put back yet).
    pub fn repair(&mut self) -> Option<Result<Duration, ProxyError>> {
        if !self.compiled {
            return None;
        }
        let started = Instant::now();
        self.engine.invalidate();
        let result = self.engine.sync(self.compiler.ruleset());
        Some(self.after_sync(result).map(|()| started.elapsed()))
    }

    /// Periodic work: a retry after a failure, the table check, the full
    /// resync. Returns how long until the next one is due.
    pub fn tick(&mut self) -> Duration {
        if !self.compiled {
            return self.opts.check_table;
        }
        let now = Instant::now();
        let mut full = false;
        if self.retry_at.is_some_and(|t| now >= t) {
            full = true;
        }
        if self.engine.is_synced() && now >= self.next_check {
            self.next_check = now + self.opts.check_table;
            match table_present() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("table inet podwire-proxy was deleted; putting it back");
                    full = true;
                }
                Err(err) => tracing::debug!(%err, "cannot check the proxy table"),
            }
        }
        if self.engine.is_synced() && now >= self.next_full {
            full = true;
        }
        if full {
            self.engine.invalidate();
            let result = self.engine.sync(self.compiler.ruleset());
            let _ = self.after_sync(result);
        }
        let mut next = self.next_check.min(self.next_full);
        if let Some(t) = self.retry_at {
            next = next.min(t);
        }
        next.saturating_duration_since(Instant::now())
    }

    /// The source failed: keep the table, say so in the status.
    pub fn source_failed(&mut self, err: &SourceError) {
        let text = format!("cluster state: {err}");
        match self.status.as_mut() {
            Some(s) => s.error = Some(text),
            None => {
                self.status = Some(ProxyStatus {
                    generation: 0,
                    ok: false,
                    error: Some(text),
                })
            }
        }
    }
}

/// The ruleset the proxy would program for `state` (`podwire agent plan`).
pub fn plan_for(opts: &ProxyOptions, state: &ClusterState) -> Ruleset {
    compile(state, &opts.compile_options(state))
}

//! The running controller: worker threads (each a single-threaded tokio
//! runtime with its own SO_REUSEPORT listeners and backend pool, as nginx
//! runs worker processes), listeners for HTTP, HTTPS (rustls, certificate
//! chosen by SNI, HTTP/2 or HTTP/1.1 by ALPN) and operations (`/metrics`,
//! `/healthz`, `/readyz`), the reload thread that swaps routes and
//! certificates on every snapshot of the cluster (and, when this replica
//! leads, writes the Ingresses' status), and graceful shutdown:
//! on SIGTERM or SIGINT the listeners close, idle keep-alive connections are
//! closed, and in-flight requests get `shutdown_grace` to finish.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwire_model::k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;
use podwire_model::{
    ClusterState, ClusterWriter, FilesSource, Interest, Kind, Leadership, Source, Store, Watch,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use arc_swap::ArcSwap;

use crate::certs::{CertTable, SecretRef, generated_default};
use crate::metrics::Metrics;
mod accept;
mod h1;
mod ops;
mod reload;

use accept::accept_loop;
use ops::ops_loop;
use reload::Reloader;

use crate::limit::{Limits, default_max_connections};
use crate::proxy::{Settings, Shared, Snapshot};
use crate::status::{Publish, pending};
use crate::{CompileOptions, IngressError, RouteTable, our_ingresses};

/// How long startup waits for the first complete cluster state before it
/// serves anyway (404s, `/readyz` 503) and keeps waiting in the background.
const FIRST_SNAPSHOT: Duration = Duration::from_secs(5);
/// How soon a status write that failed (or waits for the leadership) is
/// tried again.
const STATUS_RETRY: Duration = Duration::from_secs(1);

/// The kinds the controller reads; Secrets only of type kubernetes.io/tls.
pub fn interest() -> Interest {
    Interest::new([
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Secret,
    ])
    .tls_secrets_only()
}

/// What the controller writes back in Kubernetes mode: `status.loadBalancer`
/// of our Ingresses (when an address is published) and Warning Events for
/// annotations it ignores. Only the leader writes.
pub struct StatusPublisher {
    pub writer: Arc<dyn ClusterWriter>,
    pub leader: Arc<dyn Leadership>,
    pub publish: Option<Publish>,
}

/// Where the controller's cluster state comes from and what it writes back.
pub struct Feed {
    pub source: Box<dyn Source>,
    pub status: Option<StatusPublisher>,
}

impl Feed {
    /// The files store, no status writes (the lab's and the tests' way).
    pub fn files(store: Store) -> Feed {
        Feed {
            source: Box::new(FilesSource::new(store, interest())),
            status: None,
        }
    }
}

/// What the controller serves from the store.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub options: CompileOptions,
    /// `--default-certificate`: served when SNI matches no Ingress host.
    pub default_certificate: Option<SecretRef>,
}

/// Addresses to listen on (None: that listener is off).
#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

/// Bound listeners, for callers (tests) that pick ports first.
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// Compiles routes and certificates from a cluster state.
pub fn compile(
    generation: u64,
    state: &ClusterState,
    config: &Config,
    generated: &Arc<CertifiedKey>,
) -> Snapshot {
    let routes = RouteTable::compile(state, &config.options);
    let ingresses = our_ingresses(state, &config.options.class);
    let certs = CertTable::compile(
        state,
        &ingresses,
        config.default_certificate.as_ref(),
        generated.clone(),
    );
    Snapshot {
        generation,
        routes,
        certs,
    }
}

/// What `/readyz` answers from.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    synced: bool,
    source: String,
    error: Option<String>,
}

/// A listening socket with SO_REUSEPORT, so that every worker thread can
/// have its own and the kernel spreads connections over them (nginx's
/// `reuseport`): no accept lock, no connection handed between threads.
fn reuseport_listener(addr: SocketAddr) -> Result<std::net::TcpListener, IngressError> {
    let fail = |source: std::io::Error| IngressError::Bind { addr, source };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(4096).map_err(fail)?;
    Ok(socket.into())
}

/// One listener per worker for `addr` (all on the port the first one got).
fn reuseport_listeners(
    addr: Option<SocketAddr>,
    workers: usize,
) -> Result<Vec<Option<std::net::TcpListener>>, IngressError> {
    let Some(addr) = addr else {
        return Ok((0..workers).map(|_| None).collect());
    };
    let first = reuseport_listener(addr)?;
    let bound = first
        .local_addr()
        .map_err(|source| IngressError::Bind { addr, source })?;
    let mut out = vec![Some(first)];
    for _ in 1..workers {
        out.push(Some(reuseport_listener(bound)?));
    }
    Ok(out)
}

fn from_std(listener: Option<std::net::TcpListener>) -> Result<Option<TcpListener>, IngressError> {
    listener
        .map(|l| {
            let addr = l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            TcpListener::from_std(l).map_err(|source| IngressError::Bind { addr, source })
        })
        .transpose()
}

/// What every worker shares.
struct Common {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    settings: Settings,
    readiness: Arc<Mutex<Readiness>>,
    /// The connection limit across workers.
    limits: Arc<Limits>,
    /// The Ingress statuses to write, as of the first snapshot.
    first_statuses: BTreeMap<(String, String), IngressLoadBalancerStatus>,
}

impl Common {
    /// Takes the first snapshot from `watch` (waiting at most
    /// [`FIRST_SNAPSHOT`]; without one the controller starts empty and
    /// not ready).
    fn start(
        watch: &mut Watch,
        config: &Config,
        mut settings: Settings,
        https_port: Option<u16>,
        generated: &Arc<CertifiedKey>,
        publish: Option<&Publish>,
    ) -> Result<Common, IngressError> {
        let mut readiness = Readiness {
            source: watch.source().describe(),
            ..Default::default()
        };
        let deadline = Instant::now() + FIRST_SNAPSHOT;
        let mut first = None;
        while first.is_none() && Instant::now() < deadline {
            match watch.next(deadline.saturating_duration_since(Instant::now())) {
                Ok(snapshot) => first = snapshot,
                Err(err) => {
                    readiness.error = Some(err.to_string());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let first_statuses = match (&first, publish) {
            (Some(s), Some(p)) => pending(&s.state, &config.options.class, p),
            _ => BTreeMap::new(),
        };
        let snapshot = match &first {
            Some(s) => {
                readiness.synced = true;
                readiness.error = None;
                compile(s.revision, &s.state, config, generated)
            }
            None => {
                tracing::warn!(
                    source = %readiness.source,
                    error = readiness.error.as_deref().unwrap_or("none yet"),
                    "no cluster state yet; serving without routes until it comes"
                );
                compile(0, &ClusterState::default(), config, generated)
            }
        };
        tracing::info!(
            generation = snapshot.generation,
            ingresses = snapshot.routes.ingresses.len(),
            "route table loaded"
        );
        if settings.https_redirect_port.is_none() {
            settings.https_redirect_port = https_port;
        }
        let metrics = Metrics::default();
        metrics
            .generation
            .set(i64::try_from(snapshot.generation).unwrap_or(i64::MAX));
        let max_connections = settings
            .max_connections
            .unwrap_or_else(default_max_connections);
        let limits = Arc::new(Limits::new(max_connections));
        metrics
            .max_connections
            .set(i64::try_from(limits.max()).unwrap_or(i64::MAX));
        tracing::info!(max_connections = limits.max(), "client connection limit");
        Ok(Common {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics: Arc::new(metrics),
            settings,
            readiness: Arc::new(Mutex::new(readiness)),
            limits,
            first_statuses,
        })
    }

    fn worker(&self) -> Arc<Shared> {
        Arc::new(Shared::new(
            self.snapshot.clone(),
            self.metrics.clone(),
            self.settings.clone(),
            self.readiness.clone(),
            self.limits.clone(),
        ))
    }
}

/// Runs the controller until SIGTERM or SIGINT: `workers` threads (None:
/// one per CPU), each a single-threaded runtime with its own listeners and
/// backend pool, plus a thread that reloads routes and certificates.
pub fn run(
    listen: Listen,
    feed: Feed,
    config: Config,
    settings: Settings,
    workers: Option<usize>,
) -> Result<(), IngressError> {
    let workers = workers
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1);
    let generated = generated_default()?;
    let https_port = listen.https.map(|a| a.port());
    let mut watch = Watch::new(feed.source, &interest());
    let publish = feed.status.as_ref().and_then(|s| s.publish.as_ref());
    let common = Common::start(
        &mut watch, &config, settings, https_port, &generated, publish,
    )?;
    let mut http = reuseport_listeners(listen.http, workers)?;
    let mut https = reuseport_listeners(listen.https, workers)?;
    let mut metrics = match listen.metrics {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| IngressError::Bind { addr, source })?,
        ),
        None => None,
    };
    let reloader = Reloader::spawn(watch, feed.status, config, generated, &common)?;
    common.limits.spawn_trimmer();
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = Arc::new(());
    let mut threads = Vec::new();
    for i in 0..workers {
        let listeners = (
            http.get_mut(i).and_then(Option::take),
            https.get_mut(i).and_then(Option::take),
            metrics.take(),
        );
        let shared = common.worker();
        let (stop_rx, tracker) = (stop_rx.clone(), tracker.clone());
        let thread = std::thread::Builder::new()
            .name(format!("ingress-{i}"))
            .spawn(move || -> Result<(), IngressError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(IngressError::Runtime)?;
                runtime.block_on(async move {
                    let listeners = Listeners {
                        http: from_std(listeners.0)?,
                        https: from_std(listeners.1)?,
                        metrics: from_std(listeners.2)?,
                    };
                    serve_worker(listeners, shared, stop_rx, tracker).await
                })
            })
            .map_err(IngressError::Runtime)?;
        threads.push(thread);
    }
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(IngressError::Runtime)?;
    signals.block_on(stop_signal());
    let _ = stop_tx.send(true);
    let mut outcome = Ok(());
    for thread in threads {
        match thread.join() {
            Ok(Err(err)) => outcome = Err(err),
            Ok(Ok(())) => {}
            Err(_) => tracing::error!("a worker thread panicked"),
        }
    }
    reloader.stop();
    outcome
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot watch SIGTERM/SIGINT; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Picks the certificate for each TLS handshake from the current snapshot.
#[derive(Debug)]
struct SniResolver(Arc<Shared>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.snapshot.load().certs.resolve(hello.server_name()))
    }
}

/// Serves `listeners` on the current runtime until `stop` resolves, then
/// shuts down gracefully (tests and embedders; `run` uses one runtime per
/// worker thread).
pub async fn serve(
    listeners: Listeners,
    feed: Feed,
    config: Config,
    settings: Settings,
    stop: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    let generated = generated_default()?;
    let https_port = match &listeners.https {
        Some(l) => Some(
            l.local_addr()
                .map_err(|source| IngressError::Accept { source })?
                .port(),
        ),
        None => None,
    };
    let mut watch = Watch::new(feed.source, &interest());
    let publish = feed.status.as_ref().and_then(|s| s.publish.clone());
    let (watch, common) = tokio::task::spawn_blocking(move || {
        Common::start(
            &mut watch,
            &config,
            settings,
            https_port,
            &generated,
            publish.as_ref(),
        )
        .map(|common| (watch, common, config, generated))
    })
    .await
    .map_err(|e| IngressError::Tls(format!("the startup task failed: {e}")))?
    .map(|(watch, common, config, generated)| ((watch, config, generated), common))?;
    let (watch, config, generated) = watch;
    let reloader = Reloader::spawn(watch, feed.status, config, generated, &common)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(serve_worker(
        listeners,
        common.worker(),
        stop_rx,
        Arc::new(()),
    ));
    stop.await;
    let _ = stop_tx.send(true);
    let outcome = match worker.await {
        Ok(outcome) => outcome,
        Err(err) => {
            tracing::error!(%err, "the worker task failed");
            Ok(())
        }
    };
    reloader.stop();
    outcome
}

/// Closes this worker's connections idle past `--idle-timeout`, checking
/// about once a second (more often for shorter timeouts), until `stop`.
async fn close_idle(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let idle = shared.settings.idle_timeout;
    let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let closed = shared.conns.close_idle(idle);
        if closed > 0 {
            tracing::debug!(closed, "closed connections idle past the idle timeout");
        }
    }
}

/// Accepts on `listeners` until `stop` changes, then waits (at most the
/// shutdown grace) until every connection counted by `tracker` is done.
async fn serve_worker(
    listeners: Listeners,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    tracker: Arc<()>,
) -> Result<(), IngressError> {
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.metrics {
        let registry = Arc::new(shared.metrics.registry());
        tasks.push(tokio::spawn(ops_loop(
            listener,
            registry,
            shared.clone(),
            stop.clone(),
        )));
    }
    if let Some(listener) = listeners.http {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            None,
            shared.clone(),
            stop.clone(),
            tracker.clone(),
        )));
    }
    if let Some(listener) = listeners.https {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| IngressError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(shared.clone())));
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // One TLS 1.3 session ticket per handshake (as Go's crypto/tls), not
        // rustls's two: a client resumes with its newest ticket and a new
        // one comes with every connection, and a second ticket cost clients
        // ~10% of their CPU per connection (bench/ingress TLS close: 0.91x ->
        // ~0.97x nginx's requests/s, the client being the bottleneck).
        tls.send_tls13_tickets = 1;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            Some(acceptor),
            shared.clone(),
            stop.clone(),
            tracker.clone(),
        )));
    }
    let sweep = tokio::spawn(close_idle(shared.clone(), stop.clone()));
    for task in tasks {
        let _ = task.await;
    }
    sweep.abort();
    // Every connection task holds a clone of `tracker`; this function too.
    let deadline = Instant::now() + shared.settings.shutdown_grace;
    while Arc::strong_count(&tracker) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = Arc::strong_count(&tracker) - 1;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown grace period over; closing the remaining connections"
        );
    } else {
        tracing::info!("all connections finished; stopped");
    }
    Ok(())
}

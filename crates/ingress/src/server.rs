//! The running controller: listeners for HTTP, HTTPS (rustls, certificate
//! chosen by SNI, HTTP/2 or HTTP/1.1 by ALPN) and operations (`/metrics`,
//! `/healthz`, `/readyz`), the reload loop that swaps routes and
//! certificates when the store's generation moves, and graceful shutdown:
//! on SIGTERM or SIGINT the listeners close, idle keep-alive connections are
//! closed, and in-flight requests get `shutdown_grace` to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use podwire_model::Store;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certs::{CertTable, SecretRef, generated_default};
use crate::metrics::{ListenerLabels, render};
use crate::proxy::{Body, ConnInfo, Settings, Shared, Snapshot, handle};
use crate::{CompileOptions, IngressError, RouteTable, our_ingresses};

/// How often the store's generation is polled: a change is served within
/// this plus the compile time.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

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

/// Loads a consistent snapshot of the store and compiles routes and
/// certificates from it.
pub fn load(
    store: &Store,
    config: &Config,
    generated: &Arc<CertifiedKey>,
) -> Result<Snapshot, IngressError> {
    let (generation, state) = store.load_consistent().map_err(IngressError::Store)?;
    let routes = RouteTable::compile(&state, &config.options);
    let mut ingresses = our_ingresses(&state, &config.options.class);
    ingresses.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.is_none(),
            i.metadata.creation_timestamp.clone(),
            i.metadata.namespace.clone(),
            i.metadata.name.clone(),
        )
    });
    let certs = CertTable::compile(
        &state,
        &ingresses,
        config.default_certificate.as_ref(),
        generated.clone(),
    );
    Ok(Snapshot {
        generation,
        routes,
        certs,
    })
}

async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, IngressError> {
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|source| IngressError::Bind { addr, source }),
    }
}

/// Binds `listen`.
pub async fn bind_all(listen: &Listen) -> Result<Listeners, IngressError> {
    Ok(Listeners {
        http: bind(listen.http).await?,
        https: bind(listen.https).await?,
        metrics: bind(listen.metrics).await?,
    })
}

/// Runs the controller on a new runtime with `workers` threads (None: one
/// per CPU) until SIGTERM or SIGINT.
pub fn run(
    listen: Listen,
    store: Store,
    config: Config,
    settings: Settings,
    workers: Option<usize>,
) -> Result<(), IngressError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(IngressError::Runtime)?;
    runtime.block_on(async move {
        let listeners = bind_all(&listen).await?;
        serve(listeners, store, config, settings, stop_signal()).await
    })
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

/// Serves until `stop` resolves, then shuts down gracefully.
pub async fn serve(
    listeners: Listeners,
    store: Store,
    config: Config,
    mut settings: Settings,
    stop: impl Future<Output = ()>,
) -> Result<(), IngressError> {
    let generated = generated_default()?;
    let snapshot = load(&store, &config, &generated)?;
    tracing::info!(
        generation = snapshot.generation,
        ingresses = snapshot.routes.ingresses.len(),
        "route table loaded"
    );
    if settings.https_redirect_port.is_none()
        && let Some(https) = &listeners.https
    {
        let port = https
            .local_addr()
            .map_err(|source| IngressError::Accept { source })?
            .port();
        settings.https_redirect_port = Some(port);
    }
    let shared = Arc::new(Shared::new(snapshot, settings));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = Arc::new(());

    let reloader = tokio::spawn(reload_loop(store, config, generated, shared.clone()));
    let mut tasks = Vec::new();
    if let Some(listener) = listeners.metrics {
        let registry = Arc::new(shared.metrics.registry());
        tasks.push(tokio::spawn(ops_loop(
            listener,
            registry,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(listener) = listeners.http {
        tasks.push(tokio::spawn(accept_loop(
            listener,
            None,
            shared.clone(),
            stop_rx.clone(),
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
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            Some(acceptor),
            shared.clone(),
            stop_rx.clone(),
            tracker.clone(),
        )));
    }

    stop.await;
    let _ = stop_tx.send(true);
    reloader.abort();
    for task in tasks {
        let _ = task.await;
    }
    // Every connection task holds a clone of `tracker`.
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

/// Polls the store's generation and swaps in a new snapshot when it moves.
async fn reload_loop(
    store: Store,
    config: Config,
    generated: Arc<CertifiedKey>,
    shared: Arc<Shared>,
) {
    let mut generation = shared.snapshot.load().generation;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (store2, config2, generated2) = (store.clone(), config.clone(), generated.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            if store2.generation() == generation {
                return None;
            }
            let started = Instant::now();
            Some(load(&store2, &config2, &generated2).map(|s| (s, started.elapsed())))
        })
        .await;
        match loaded {
            Ok(None) => {}
            Ok(Some(Ok((snapshot, took)))) => {
                tracing::info!(
                    generation = snapshot.generation,
                    ingresses = snapshot.routes.ingresses.len(),
                    ms = format_args!("{:.1}", took.as_secs_f64() * 1000.0),
                    "routes and certificates reloaded"
                );
                generation = snapshot.generation;
                shared.metrics.reloads.inc();
                shared
                    .metrics
                    .generation
                    .set(i64::try_from(generation).unwrap_or(i64::MAX));
                shared.snapshot.store(Arc::new(snapshot));
            }
            Ok(Some(Err(err))) => {
                shared.metrics.reload_failures.inc();
                tracing::warn!(%err, "keeping the previous routes and certificates");
                // Do not retry in a tight loop on a broken store.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => tracing::warn!(%err, "reload task failed"),
        }
    }
}

/// Accepts connections until told to stop.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    tracker: Arc<()>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(err) => {
            tracing::error!(%err, "cannot read the listener's address");
            return;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%local, scheme, "ingress listening");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(err) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            local,
            tls: tls.is_some(),
        };
        let shared = shared.clone();
        let stop = stop.clone();
        let tracker = tracker.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let gauge = shared
                .metrics
                .connections
                .get_or_create_owned(&ListenerLabels { scheme });
            gauge.inc();
            match tls {
                None => serve_connection(stream, false, conn, shared.clone(), stop).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(shared.settings.idle_timeout, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_connection(stream, h2, conn, shared.clone(), stop).await
                        }
                        Ok(Err(err)) => {
                            shared.metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            shared.metrics.tls_handshake_failures.inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            gauge.dec();
            drop(tracker);
        });
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on one connection; on stop,
/// finishes the request in flight and closes.
async fn serve_connection<S>(
    stream: S,
    h2: bool,
    conn: ConnInfo,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = shared.settings.clone();
    let service = hyper::service::service_fn(move |req| handle(req, shared.clone(), conn));
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(settings.idle_timeout));
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(settings.idle_timeout)
            .max_header_size(settings.max_header_bytes)
            .keep_alive(true);
        let connection = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => result,
            _ = stop.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %conn.peer, %err, "connection ended with an error");
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until told to stop.
async fn ops_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let registry = registry.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = ops_answer(req.uri().path(), &registry, &shared);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn ops_answer(path: &str, registry: &Registry, shared: &Shared) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/healthz" | "/readyz" => {
            let snapshot = shared.snapshot.load();
            (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!(
                    "ok: generation {}, {} Ingresses\n",
                    snapshot.generation,
                    snapshot.routes.ingresses.len()
                ),
            )
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

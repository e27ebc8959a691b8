//! Client connections: the accept loop of one listener (plain or TLS) and
//! the serving of one connection: HTTP/1.1 by our own loop (`h1.rs`) until
//! a request needs hyper (a body, an upgrade), then hyper (HTTP/1.1 with
//! upgrades); HTTP/2 by hyper when ALPN chose it. At the connection limit a listener first
//! makes room (the oldest idle connection is told to close) or waits; each
//! connection closes early when it is shed, as on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use http_body_util::BodyExt;

use super::h1::{self, Park, Served};
use crate::limit::{ActiveGuard, Registered, Slot, Tracked};
use crate::metrics::ListenerLabels;
use crate::proxy::{BoxError, ConnInfo, Shared, handle};

/// How often a listener held at the connection limit looks again.
const LIMIT_RECHECK: Duration = Duration::from_millis(50);

/// Accepts connections until told to stop.
pub(super) async fn accept_loop(
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
        // At the limit: shed the oldest idle connection, else hold this one
        // (and accept nothing more) until a connection closes.
        let mut waited = false;
        while !shared.limits.make_room(&shared.metrics) {
            if !waited {
                waited = true;
                shared.metrics.connection_limit_waits.inc();
                tracing::debug!(
                    open = shared.limits.open(),
                    max = shared.limits.max(),
                    "at the connection limit with none idle; the new connection waits"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(LIMIT_RECHECK) => {}
                _ = stop.changed() => return,
            }
        }
        let registered = shared.limits.register(&shared.conns);
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo::new(peer, local, tls.is_some());
        let shared = shared.clone();
        let stop = stop.clone();
        let tracker = tracker.clone();
        let slot = registered.slot().clone();
        let open = Open {
            gauge: shared
                .metrics
                .connections
                .get_or_create_owned(&ListenerLabels { scheme }),
            _registered: registered,
            _tracker: tracker,
        };
        open.gauge.inc();
        // The serving functions are the tasks themselves, plain and TLS
        // apart: a task is as large as its largest state (and an async
        // block around them would hold their arguments twice), and the
        // plain ones, the most numerous, must not carry a handshake's.
        match &tls {
            None => {
                tokio::spawn(serve_http1(stream, conn, shared, stop, slot, open));
            }
            Some(acceptor) => {
                tokio::spawn(serve_tls(
                    acceptor.clone(),
                    stream,
                    conn,
                    shared,
                    stop,
                    slot,
                    open,
                ));
            }
        }
    }
}

/// What an open connection holds until it closes: its place in the
/// `connections` gauge, the connection count and the shutdown tracker.
struct Open {
    gauge: prometheus_client::metrics::gauge::Gauge,
    _registered: Registered,
    _tracker: Arc<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Serves a TLS connection: the handshake (bounded by `--idle-timeout`, cut
/// short when shed), then HTTP/2 or HTTP/1.1 as ALPN chose.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    conn: ConnInfo,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    slot: Arc<Slot>,
    open: Open,
) {
    let peer = conn.peer;
    let handshake = tokio::time::timeout(
        shared.settings.idle_timeout,
        Box::pin(acceptor.accept(stream)),
    );
    let handshake = tokio::select! {
        handshake = handshake => Some(handshake),
        () = slot.shed() => None,
    };
    match handshake {
        None => tracing::debug!(%peer, "TLS handshake cut short: shed at the limit"),
        Some(Ok(Ok(stream))) => {
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                Box::pin(serve_connection(stream, true, conn, shared, stop, slot)).await
            } else {
                Box::pin(serve_http1(stream, conn, shared, stop, slot, open)).await
            }
        }
        Some(Ok(Err(err))) => {
            shared.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, %err, "TLS handshake failed");
        }
        Some(Err(_)) => {
            shared.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Serves HTTP/1.1 with our own loop, handing the connection to hyper
/// when a request needs it.
async fn serve_http1<S>(
    stream: S,
    conn: ConnInfo,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    slot: Arc<Slot>,
    _open: Open,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Park + Unpin + Send + 'static,
{
    if let Served::Hyper(rest) = h1::serve(stream, &conn, &shared, &mut stop, &slot).await {
        // Boxed: only these connections carry hyper's connection state.
        Box::pin(serve_connection(rest, false, conn, shared, stop, slot)).await;
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on one connection; on stop
/// or when shed, finishes the request in flight and closes.
async fn serve_connection<S>(
    stream: S,
    h2: bool,
    conn: ConnInfo,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    slot: Arc<Slot>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = shared.settings.clone();
    let peer = conn.peer;
    // Boxed: hyper keeps room for one request future per connection for the
    // connection's whole life, so an idle keep-alive connection would hold
    // the full size of the request path's state machine.
    // Each request marks the connection busy until its response body has
    // been sent, so that only connections between requests are shed.
    let busy = slot.clone();
    let service = hyper::service::service_fn(move |req| {
        let guard = ActiveGuard::new(&busy);
        let req = req.map(|body: hyper::body::Incoming| body.map_err(BoxError::from).boxed());
        let answer = handle(req, shared.clone(), conn.clone());
        Box::pin(async move {
            answer
                .await
                .map(|response| response.map(|body| Tracked::new(body, guard)))
        })
    });
    let close = async {
        tokio::select! {
            _ = stop.changed() => {}
            () = slot.shed() => tracing::debug!(%peer, "closing: shed at the connection limit"),
        }
    };
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(settings.idle_timeout));
        let mut connection = Box::pin(builder.serve_connection(io, service));
        tokio::select! {
            result = connection.as_mut() => result,
            () = close => {
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
            () = close => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}

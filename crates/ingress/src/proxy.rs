//! The HTTP/1.1 reverse proxy: routes each request through the current
//! [`RouteTable`] (swapped atomically with arc-swap when the store's
//! generation changes), round-robin over the route's ready endpoints.
//!
//! 404 when no route matches, 503 when the route has no ready endpoint, 502
//! when the backend cannot be reached or fails. The request method, path and
//! Host reach the backend unchanged, plus `X-Forwarded-For` (appended),
//! `-Proto`, `-Host` and `-Port`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwire_model::Store;
use tokio::net::TcpListener;

use crate::{CompileOptions, IngressError, RouteTable};

/// How often the store's generation is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long connecting to a backend may take before the request gets 502.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, hyper::Error>;
type HttpClient = Client<HttpConnector, Incoming>;

/// Headers that describe one connection and are not forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Loads a consistent snapshot of the store and compiles it.
pub fn load(store: &Store, options: &CompileOptions) -> Result<(u64, RouteTable), IngressError> {
    let (generation, state) = store.load_consistent().map_err(IngressError::Store)?;
    Ok((generation, RouteTable::compile(&state, options)))
}

/// Binds `addr` (for callers that have no listener yet).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, IngressError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| IngressError::Bind { addr, source })
}

/// Serves the proxy on `listen` on a new multi-threaded runtime; returns
/// only on a startup error.
pub fn run(listen: SocketAddr, store: Store, options: CompileOptions) -> Result<(), IngressError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(IngressError::Runtime)?;
    runtime.block_on(async move { serve(bind(listen).await?, store, options).await })
}

/// Serves the proxy on `listener` until the task is dropped, reloading the
/// route table whenever the store's generation changes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    options: CompileOptions,
) -> Result<(), IngressError> {
    let (generation, table) = load(&store, &options)?;
    tracing::info!(
        generation,
        ingresses = table.ingresses.len(),
        "route table loaded"
    );
    let table = Arc::new(ArcSwap::from_pointee(table));
    tokio::spawn(watch(store, options, generation, table.clone()));

    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let local = listener
        .local_addr()
        .map_err(|source| IngressError::Accept { source })?;
    tracing::info!(%local, "ingress proxy listening");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(err) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, table.clone(), client.clone(), peer, local)
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}

/// Polls the store's generation and swaps in a new table when it moves.
async fn watch(
    store: Store,
    options: CompileOptions,
    mut generation: u64,
    table: Arc<ArcSwap<RouteTable>>,
) {
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        let store2 = store.clone();
        let options2 = options.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            if store2.generation() == generation {
                return None;
            }
            Some(load(&store2, &options2))
        })
        .await;
        match loaded {
            Ok(None) => {}
            Ok(Some(Ok((next, compiled)))) => {
                tracing::info!(
                    generation = next,
                    ingresses = compiled.ingresses.len(),
                    "route table reloaded"
                );
                generation = next;
                table.store(Arc::new(compiled));
            }
            Ok(Some(Err(err))) => {
                tracing::warn!(%err, "keeping the previous route table");
            }
            Err(err) => tracing::warn!(%err, "route table reload task failed"),
        }
    }
}

fn local_response(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    mut req: Request<Incoming>,
    table: Arc<ArcSwap<RouteTable>>,
    client: HttpClient,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (backend, endpoint) = {
        let table = table.load();
        let Some(backend) = table.backend(&host, &path) else {
            tracing::info!(%peer, %method, %host, %path, status = 404, "no route");
            return Ok(local_response(
                StatusCode::NOT_FOUND,
                "404 no Ingress rule matches this host and path",
            ));
        };
        (backend.target.to_string(), backend.pick())
    };
    let Some(endpoint) = endpoint else {
        tracing::info!(%peer, %method, %host, %path, %backend, status = 503, "no ready endpoint");
        return Ok(local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("503 the backend {backend} has no ready endpoint"),
        ));
    };

    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let uri = match format!("http://{endpoint}{path_and_query}").parse::<Uri>() {
        Ok(u) => u,
        Err(err) => {
            tracing::warn!(%err, %path_and_query, "cannot build the upstream URI");
            return Ok(local_response(
                StatusCode::BAD_REQUEST,
                "400 bad request path",
            ));
        }
    };
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    let set = |headers: &mut hyper::HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, "x-forwarded-for", &forwarded_for);
    set(headers, "x-forwarded-proto", "http");
    set(headers, "x-forwarded-host", &host);
    set(headers, "x-forwarded-port", &local.port().to_string());

    match client.request(req).await {
        Ok(response) => {
            tracing::info!(%peer, %method, %host, %path, %backend, %endpoint,
                status = response.status().as_u16(), "proxied");
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(name);
            }
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Err(err) => {
            tracing::warn!(%peer, %method, %host, %path, %backend, %endpoint, %err,
                status = 502, "backend failed");
            Ok(local_response(
                StatusCode::BAD_GATEWAY,
                &format!("502 the backend {backend} ({endpoint}) failed"),
            ))
        }
    }
}

//! The request path of the reverse proxy: route each request through the
//! current [`Snapshot`], redirect plain HTTP to HTTPS where the host has TLS,
//! forward to one of the route's ready endpoints over pooled HTTP/1.1
//! connections, tunnel upgraded connections (WebSocket), and answer locally
//! when there is nothing to forward to.
//!
//! 400 for a request whose Host or request-target is malformed or
//! ambiguous (see `target.rs`) or whose body framing is broken, 404 when no
//! route matches, 503 when the route has no ready endpoint, 502
//! when the backend cannot be reached or fails, 504 when it does not answer
//! in time. The request method and path reach the backend unchanged, Host
//! as routed (an absolute-form target's authority replaces it),
//! plus `X-Forwarded-For` (appended), `-Proto`, `-Host`, `-Port` and
//! `X-Real-IP`. Bodies are streamed both ways, never buffered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, UPGRADE};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::annotations::Action;
use crate::certs::CertTable;
use crate::limit::{Limits, WorkerConns};
use crate::metrics::{HostLabel, HostLabels, Metrics, RequestLabels, UpstreamLabels};
use crate::pool::{Pool, UpstreamError};
use crate::table::host_name;
use crate::target::request_host;
use crate::{Backend, RouteTable};

/// Errors of bodies in either direction.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// The most endpoints one request is tried on.
pub const MAX_ATTEMPTS: usize = 3;

/// Headers that describe one connection and are not forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    UPGRADE,
];

/// What the proxy serves: routes and certificates of one store generation,
/// swapped as one value so a request never sees routes of one generation
/// with certificates of another.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub routes: RouteTable,
    pub certs: CertTable,
}

/// Timeouts and limits.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Connecting to a backend (then the next endpoint is tried, or 502).
    pub connect_timeout: Duration,
    /// From sending the request to the backend's response head (504 after).
    pub read_timeout: Duration,
    /// How long a client connection may sit idle between requests, and the
    /// limit for sending a request head.
    pub idle_timeout: Duration,
    /// The largest request head accepted (431 above it).
    pub max_header_bytes: usize,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// The port plain-HTTP requests are redirected to (None: no HTTPS
    /// listener, so no redirect).
    pub https_redirect_port: Option<u16>,
    /// Endpoints tried for an idempotent request whose connection fails
    /// (at most [`MAX_ATTEMPTS`]).
    pub max_attempts: usize,
    /// Client connections open at once across all workers (None: sized to
    /// memory, [`crate::limit::default_max_connections`]).
    pub max_connections: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 32 * 1024,
            shutdown_grace: Duration::from_secs(10),
            https_redirect_port: None,
            max_attempts: MAX_ATTEMPTS,
            max_connections: None,
        }
    }
}

/// State of one worker thread: the snapshot and metrics every worker
/// shares, and the worker's own backend connection pool (a pooled
/// connection is driven by the runtime that opened it, so sharing pools
/// across workers would bounce every request between threads).
#[derive(Debug)]
pub struct Shared {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    pool: Arc<Pool>,
    pub(crate) readiness: Arc<std::sync::Mutex<crate::server::Readiness>>,
    /// The connection limit every worker shares, and this worker's
    /// connections.
    pub(crate) limits: Arc<Limits>,
    pub(crate) conns: Arc<WorkerConns>,
}

impl Shared {
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        settings: Settings,
        readiness: Arc<std::sync::Mutex<crate::server::Readiness>>,
        limits: Arc<Limits>,
    ) -> Shared {
        Shared {
            snapshot,
            metrics,
            pool: Arc::new(Pool::new(settings.connect_timeout)),
            settings,
            readiness,
            conns: limits.worker(),
            limits,
        }
    }
}

/// The connection a request arrived on, with the forwarded-header values
/// that are the same for all its requests made once.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    peer_ip: HeaderValue,
    local_port: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            local,
            tls,
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            local_port: HeaderValue::from(local.port()),
        }
    }
}

/// A response the controller makes itself.
pub(crate) fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

fn local_response(status: StatusCode, message: &str) -> Response<Body> {
    text_response(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

/// 400, and the connection closes after it: what follows a malformed
/// request on it cannot be trusted to start where the next request does.
fn bad_request(why: &str) -> Response<Body> {
    let mut response = local_response(StatusCode::BAD_REQUEST, &format!("400 {why}"));
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub(crate) fn full(data: Bytes) -> Body {
    Full::new(data).map_err(|never| match never {}).boxed()
}

/// RFC 9110 9.2.2: methods whose repetition has the effect of one.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the header value lists `token` (comma-separated, any case).
pub(crate) fn lists(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers, including those the Connection header names.
/// One pass over the names present instead of a hashed removal per
/// hop-by-hop name: requests usually have none, responses one or two.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut remove: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if remove.contains(&CONNECTION) {
        remove.extend(
            headers
                .get_all(CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
        );
    }
    for name in &remove {
        headers.remove(name);
    }
}

/// The metrics host label of requests no rule matched.
fn unmatched_host() -> Arc<str> {
    static UNMATCHED: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNMATCHED.get_or_init(|| Arc::from("-")).clone()
}

/// What one request did, for the access log and metrics.
struct Outcome<'a> {
    host_label: Arc<str>,
    backend: Option<&'a Backend>,
    endpoint: Option<SocketAddr>,
    status: StatusCode,
}

/// Serves one request.
pub async fn handle(
    req: Request<Body>,
    shared: Arc<Shared>,
    conn: ConnInfo,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    // HTTP/2's :authority arrives as the URI's authority, as an absolute-form
    // target's does in HTTP/1.1: both win over a Host header.
    let host_value = match request_host(&method, version, &uri, req.headers()) {
        Ok(host) => host,
        Err(why) => {
            tracing::debug!(peer = %conn.peer, %why, "bad request");
            let response = bad_request(&why.to_string());
            finish(
                &shared,
                (&method, &uri, version),
                &conn,
                "",
                started,
                Outcome {
                    host_label: unmatched_host(),
                    backend: None,
                    endpoint: None,
                    status: response.status(),
                },
            );
            return Ok(response);
        }
    };
    let host = host_value.to_str().unwrap_or_default();
    let snapshot = shared.snapshot.load_full();
    let route = snapshot.routes.route(host, uri.path());
    let (host_label, redirect, backend, actions) = match route {
        Some(rule) => (
            rule.host.clone(),
            rule.https_redirect,
            Some(&rule.backend),
            Some(&rule.actions),
        ),
        None => (unmatched_host(), false, snapshot.routes.fallback(), None),
    };
    let plain_http = !conn.tls && shared.settings.https_redirect_port.is_some();
    let action = match actions {
        Some(a) => a.decide(uri.path(), uri.query(), redirect, plain_http),
        None => Action::Forward { rewritten: None },
    };
    let response = match (backend, action) {
        (None, _) => (
            local_response(
                StatusCode::NOT_FOUND,
                "404 no Ingress rule matches this host and path",
            ),
            None,
        ),
        (Some(_), Action::HttpsRedirect) => (redirect_response(&uri, host, &shared.settings), None),
        (Some(_), Action::Redirect { status, location }) => {
            (location_response(status, &location), None)
        }
        (Some(backend), Action::Forward { rewritten }) => {
            let mut req = req;
            if let Some(target) = rewritten.and_then(|t| t.parse::<Uri>().ok()) {
                *req.uri_mut() = target;
            }
            forward(req, &host_value, backend, &shared, &conn).await
        }
    };
    let (response, endpoint) = response;
    finish(
        &shared,
        (&method, &uri, version),
        &conn,
        host,
        started,
        Outcome {
            host_label,
            backend: backend.map(|b| &**b),
            endpoint,
            status: response.status(),
        },
    );
    Ok(response)
}

/// Counts the request and writes its access log line.
fn finish(
    shared: &Shared,
    (method, uri, version): (&Method, &Uri, Version),
    conn: &ConnInfo,
    host: &str,
    started: Instant,
    outcome: Outcome<'_>,
) {
    let took = started.elapsed();
    let status = outcome.status.as_u16();
    shared
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            host: HostLabel(outcome.host_label.clone()),
            status,
        })
        .inc();
    shared
        .metrics
        .duration
        .get_or_create(&HostLabels {
            host: HostLabel(outcome.host_label),
        })
        .observe(took.as_secs_f64());
    tracing::info!(
        target: "access",
        peer = %conn.peer,
        %method,
        host,
        %uri,
        ?version,
        status,
        backend = %outcome.backend.map(|b| b.target.to_string()).unwrap_or_else(|| "-".into()),
        endpoint = %outcome.endpoint.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
        ms = format_args!("{:.3}", took.as_secs_f64() * 1000.0),
        "request"
    );
}

/// A redirect an annotation asks for (app-root, permanent-redirect).
fn location_response(status: u16, location: &str) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    let mut response = local_response(code, &format!("{status} see {location}"));
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

/// 308 to the same host and path over HTTPS.
fn redirect_response(uri: &Uri, host: &str, settings: &Settings) -> Response<Body> {
    let name = host_name(host).into_owned();
    let port = match settings.https_redirect_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let location = format!("https://{name}{port}{path}");
    let mut response = local_response(
        StatusCode::PERMANENT_REDIRECT,
        &format!("308 this host is served over HTTPS: {location}"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

/// Sends the request to an endpoint of `backend` (another one when an
/// idempotent request's connection fails) and relays the answer.
async fn forward(
    mut req: Request<Body>,
    host: &HeaderValue,
    backend: &Backend,
    shared: &Shared,
    conn: &ConnInfo,
) -> (Response<Body>, Option<SocketAddr>) {
    let Some(first) = backend.pick() else {
        return (
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("503 the backend {} has no ready endpoint", backend.target),
            ),
            None,
        );
    };
    let upgrade = req.version() == Version::HTTP_11
        && lists(req.headers().get(CONNECTION), "upgrade")
        && req.headers().contains_key(UPGRADE);
    let mut headers = std::mem::take(req.headers_mut());
    let upgrade_to = headers.get(UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = upgrade_to.filter(|_| upgrade) {
        headers.insert(UPGRADE, protocol);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The host the request was routed by: the one Host header, or an
    // absolute-form target's authority, which replaces it (RFC 9112 §3.2.2).
    headers.insert(HOST, host.clone());
    forwarded_headers(&mut headers, host, conn);
    let path_and_query = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let method = req.method().clone();
    let mut client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let retryable = !upgrade && idempotent(&method) && req.body().is_end_stream();
    let attempts = if retryable {
        shared
            .settings
            .max_attempts
            .clamp(1, MAX_ATTEMPTS)
            .min(backend.endpoints.len())
    } else {
        1
    };
    let mut body = Some(req.into_body());
    let mut tried = [first; MAX_ATTEMPTS];
    let mut tries = 0;
    let mut endpoint = first;
    loop {
        tried[tries] = endpoint;
        tries += 1;
        let uri = Uri::from(path_and_query.clone());
        let mut upstream = Request::new(body.take().unwrap_or_else(empty));
        *upstream.method_mut() = method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = if tries < attempts {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let sent = tokio::time::timeout(shared.settings.read_timeout, async {
            match client_upgrade.take() {
                Some(client) => shared
                    .pool
                    .send_upgrade(endpoint, upstream)
                    .await
                    .map(|r| tunnel(r, client)),
                None => shared.pool.send(endpoint, upstream).await.map(|mut r| {
                    strip_hop_by_hop(r.headers_mut());
                    r
                }),
            }
        })
        .await;
        let failure = match sent {
            Ok(Ok(response)) => return (response, Some(endpoint)),
            // The client's body was malformed (bad chunked framing) or cut
            // off: its fault, not the backend's, so 400 and no upstream error.
            Ok(Err(UpstreamError::RequestBody(err))) => {
                tracing::debug!(peer = %conn.peer, %endpoint, %err, "request body failed");
                return (
                    bad_request(&format!("the request body is malformed or cut off: {err}")),
                    Some(endpoint),
                );
            }
            Ok(Err(err)) => {
                let reason = if err.is_connect() {
                    "connect"
                } else {
                    "response"
                };
                upstream_error(shared, backend, reason);
                tracing::warn!(backend = %backend.target, %endpoint, %err, reason, "backend request failed");
                if err.is_connect()
                    && tries < attempts
                    && let Some(next) = next_endpoint(backend, &tried[..tries])
                {
                    shared.metrics.retries.inc();
                    endpoint = next;
                    continue;
                }
                (
                    StatusCode::BAD_GATEWAY,
                    format!("502 the backend {} ({endpoint}) failed", backend.target),
                )
            }
            Err(_) => {
                upstream_error(shared, backend, "timeout");
                tracing::warn!(backend = %backend.target, %endpoint, "backend did not answer in time");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "504 the backend {} ({endpoint}) did not answer within {:?}",
                        backend.target, shared.settings.read_timeout
                    ),
                )
            }
        };
        return (local_response(failure.0, &failure.1), Some(endpoint));
    }
}

/// The next endpoint not tried yet, in round-robin order.
fn next_endpoint(backend: &Backend, tried: &[SocketAddr]) -> Option<SocketAddr> {
    (0..backend.endpoints.len())
        .filter_map(|_| backend.pick())
        .find(|e| !tried.contains(e))
}

fn upstream_error(shared: &Shared, backend: &Backend, reason: &'static str) {
    shared
        .metrics
        .upstream_errors
        .get_or_create(&UpstreamLabels {
            backend: backend.target.to_string(),
            reason,
        })
        .inc();
}

fn forwarded_headers(headers: &mut HeaderMap, host: &HeaderValue, conn: &ConnInfo) {
    let forwarded_for = match headers.get(X_FORWARDED_FOR).map(HeaderValue::to_str) {
        Some(Ok(previous)) => HeaderValue::from_str(&format!("{previous}, {}", conn.peer.ip()))
            .unwrap_or_else(|_| conn.peer_ip.clone()),
        _ => conn.peer_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_REAL_IP, conn.peer_ip.clone());
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    headers.insert(X_FORWARDED_HOST, host.clone());
    headers.insert(X_FORWARDED_PORT, conn.local_port.clone());
}

/// Relays the backend's answer to an upgrade request; a 101 joins the two
/// upgraded connections with a byte tunnel that outlives the request.
fn tunnel(mut response: Response<Incoming>, client: hyper::upgrade::OnUpgrade) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let backend = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client, backend) {
                Ok((client, backend)) => {
                    let mut client = TokioIo::new(client);
                    let mut backend = TokioIo::new(backend);
                    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut backend).await
                    {
                        tracing::debug!(%err, "upgraded connection ended with an error");
                    }
                }
                Err(err) => tracing::warn!(%err, "connection upgrade failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.map_err(BoxError::from).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("x-kept", "2"),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["content-type", "x-kept"]);
        let mut none = HeaderMap::new();
        none.insert(HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut none);
        assert_eq!(none.len(), 1);
    }

    #[test]
    fn idempotent_methods() {
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }
}

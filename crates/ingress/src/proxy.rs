//! The request path of the reverse proxy: route each request through the
//! current [`Snapshot`], redirect plain HTTP to HTTPS where the host has TLS,
//! forward to one of the route's ready endpoints over pooled HTTP/1.1
//! connections, tunnel upgraded connections (WebSocket), and answer locally
//! when there is nothing to forward to.
//!
//! 404 when no route matches, 503 when the route has no ready endpoint, 502
//! when the backend cannot be reached or fails, 504 when it does not answer
//! in time. The request method, path and Host reach the backend unchanged,
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
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::certs::CertTable;
use crate::metrics::{HostLabels, Metrics, RequestLabels, UpstreamLabels};
use crate::table::host_name;
use crate::{Backend, RouteTable};

pub type Body = BoxBody<Bytes, hyper::Error>;
type HttpClient = Client<HttpConnector, Body>;

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
    /// Endpoints tried for an idempotent request whose connection fails.
    pub max_attempts: usize,
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
            max_attempts: 3,
        }
    }
}

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub settings: Settings,
    client: HttpClient,
}

impl Shared {
    pub fn new(snapshot: Snapshot, settings: Settings) -> Shared {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let metrics = Metrics::default();
        metrics
            .generation
            .set(i64::try_from(snapshot.generation).unwrap_or(i64::MAX));
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            settings,
            client,
        }
    }
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
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

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// RFC 9110 9.2.2: methods whose repetition has the effect of one.
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether the header value lists `token` (comma-separated, any case).
fn lists(value: Option<&HeaderValue>, token: &str) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// What one request did, for the access log and metrics.
struct Outcome<'a> {
    host_label: &'a str,
    backend: Option<&'a Backend>,
    endpoint: Option<SocketAddr>,
    status: StatusCode,
}

/// Serves one request.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: ConnInfo,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    let snapshot = shared.snapshot.load_full();
    let route = snapshot.routes.route(&host, uri.path());
    let (host_label, redirect, backend) = match route {
        Some(rule) => (&*rule.host, rule.https_redirect, Some(&rule.backend)),
        None => ("-", false, snapshot.routes.fallback()),
    };
    let response = match backend {
        None => (
            local_response(
                StatusCode::NOT_FOUND,
                "404 no Ingress rule matches this host and path",
            ),
            None,
        ),
        Some(_) if redirect && !conn.tls && shared.settings.https_redirect_port.is_some() => {
            (redirect_response(&uri, &host, &shared.settings), None)
        }
        Some(backend) => forward(req, &host, backend, &shared, conn).await,
    };
    let (response, endpoint) = response;
    finish(
        &shared,
        (&method, &uri, version),
        conn,
        &host,
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
    conn: ConnInfo,
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
            host: outcome.host_label.to_string(),
            status,
        })
        .inc();
    shared
        .metrics
        .duration
        .get_or_create(&HostLabels {
            host: outcome.host_label.to_string(),
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

/// 308 to the same host and path over HTTPS.
fn redirect_response(uri: &Uri, host: &str, settings: &Settings) -> Response<Body> {
    let name = host_name(host);
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
    mut req: Request<Incoming>,
    host: &str,
    backend: &Backend,
    shared: &Shared,
    conn: ConnInfo,
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
    if !headers.contains_key(HOST)
        && let Ok(v) = HeaderValue::from_str(host)
    {
        // HTTP/2 carries the host in :authority; HTTP/1.1 needs the header.
        headers.insert(HOST, v);
    }
    forwarded_headers(&mut headers, host, conn);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let method = req.method().clone();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let retryable = !upgrade && idempotent(&method) && req.body().is_end_stream();
    let attempts = if retryable {
        shared
            .settings
            .max_attempts
            .clamp(1, backend.endpoints.len())
    } else {
        1
    };
    let mut body = Some(req.into_body().boxed());
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(attempts);
    let mut endpoint = first;
    loop {
        tried.push(endpoint);
        let uri = match format!("http://{endpoint}{path_and_query}").parse::<Uri>() {
            Ok(u) => u,
            Err(_) => {
                return (
                    local_response(StatusCode::BAD_REQUEST, "400 bad request path"),
                    None,
                );
            }
        };
        let mut upstream = Request::new(body.take().unwrap_or_else(empty));
        *upstream.method_mut() = method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = if tried.len() < attempts {
            headers.clone()
        } else {
            std::mem::take(&mut headers)
        };
        let sent = tokio::time::timeout(
            shared.settings.read_timeout,
            shared.client.request(upstream),
        )
        .await;
        let failure = match sent {
            Ok(Ok(response)) => {
                return (relay(response, client_upgrade), Some(endpoint));
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
                    && tried.len() < attempts
                    && let Some(next) = next_endpoint(backend, &tried)
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

fn forwarded_headers(headers: &mut HeaderMap, host: &str, conn: ConnInfo) {
    let peer = conn.peer.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {peer}"),
        None => peer.clone(),
    };
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-forwarded-for", &forwarded_for);
    set("x-real-ip", &peer);
    set("x-forwarded-proto", if conn.tls { "https" } else { "http" });
    set("x-forwarded-host", host);
    set("x-forwarded-port", &conn.local.port().to_string());
}

/// Relays the backend's response; a 101 to an upgrade request joins the two
/// upgraded connections with a byte tunnel that outlives the request.
fn relay(
    mut response: Response<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, backend_upgrade) {
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
    Response::from_parts(parts, body.boxed())
}

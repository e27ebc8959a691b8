//! A deliberately tiny HTTP/1.x server (std only) for the proxy's three
//! endpoints: `/healthz` and `/livez` (kube-proxy's port 10256),
//! `/metrics` (10249), and the healthCheckNodePort of every
//! externalTrafficPolicy Local Service (200 with local endpoints, else
//! 503). Requests are GETs with no body; each connection gets one answer
//! and is closed, read with a 2 s limit in its own short-lived thread so a
//! slow client cannot hold the listener.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::compile::HealthCheck;
use crate::error::ProxyError;

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }
}

/// What answers a request path.
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        400 => "Bad Request",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Parses the request line of `head`: (method, path without query).
pub fn parse_request(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// Serializes a response (Connection: close).
pub fn render(resp: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(resp.body.as_bytes());
    }
    bytes
}

fn handle(mut stream: TcpStream, handler: Handler) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let resp = match parse_request(&head) {
        Some(("GET", path)) => (handler(path), false),
        Some(("HEAD", path)) => (handler(path), true),
        Some(_) => (Response::new(405, "text/plain", "only GET\n"), false),
        None => (Response::new(400, "text/plain", "bad request\n"), false),
    };
    let _ = stream.write_all(&render(&resp.0, resp.1));
    let _ = stream.flush();
}

/// A running listener; stops (and closes its port) when dropped.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Listens on `addr` in the calling thread's network namespace and serves
/// `handler` from a background thread.
pub fn serve(addr: SocketAddr, what: &'static str, handler: Handler) -> Result<Server, ProxyError> {
    let listener = TcpListener::bind(addr).map_err(|source| ProxyError::Listen {
        addr: addr.to_string(),
        what,
        source,
    })?;
    let local = listener.local_addr().unwrap_or(addr);
    listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Listen {
            addr: addr.to_string(),
            what,
            source,
        })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name(format!("http-{}", local.port()))
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let h = handler.clone();
                        let _ = std::thread::Builder::new()
                            .name("http-conn".into())
                            .spawn(move || handle(stream, h));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        })
        .map_err(|source| ProxyError::Listen {
            addr: addr.to_string(),
            what,
            source,
        })?;
    Ok(Server { stop, addr: local })
}

/// kube-proxy's health-check answer for one Service.
pub fn health_check_response(check: &HealthCheck) -> Response {
    let body = format!(
        "{{\"service\":{{\"namespace\":{},\"name\":{}}},\"localEndpoints\":{},\"serviceProxyHealthy\":true}}",
        serde_json::Value::String(check.namespace.clone()),
        serde_json::Value::String(check.name.clone()),
        check.local_endpoints
    );
    let mut resp = Response::new(
        if check.local_endpoints > 0 { 200 } else { 503 },
        "application/json",
        body,
    );
    resp.headers.push((
        "X-Load-Balancing-Endpoint-Weight".into(),
        check.local_endpoints.to_string(),
    ));
    resp
}

/// The healthCheckNodePort listeners, kept in step with the Services.
#[derive(Default)]
pub struct HealthCheckServers {
    servers: HashMap<u16, (Server, Arc<Mutex<HealthCheck>>)>,
}

impl HealthCheckServers {
    /// Opens listeners for new ports, updates counts, closes the rest.
    /// A port that cannot be opened is logged and retried next time.
    pub fn update(&mut self, wanted: &BTreeMap<u16, HealthCheck>) {
        self.servers.retain(|port, _| wanted.contains_key(port));
        for (port, check) in wanted {
            if let Some((_, shared)) = self.servers.get(port) {
                if let Ok(mut c) = shared.lock() {
                    *c = check.clone();
                }
                continue;
            }
            let shared = Arc::new(Mutex::new(check.clone()));
            let state = shared.clone();
            let handler: Handler = Arc::new(move |_path: &str| match state.lock() {
                Ok(c) => health_check_response(&c),
                Err(_) => Response::new(503, "text/plain", "unavailable\n"),
            });
            // [::] takes IPv4 too; a node without IPv6 falls back to 0.0.0.0.
            let server = serve(
                SocketAddr::from(([0u16; 8], *port)),
                "a healthCheckNodePort",
                handler.clone(),
            )
            .or_else(|_| {
                serve(
                    SocketAddr::from(([0, 0, 0, 0], *port)),
                    "a healthCheckNodePort",
                    handler,
                )
            });
            match server {
                Ok(s) => {
                    self.servers.insert(*port, (s, shared));
                }
                Err(err) => tracing::warn!(%err, port, "health check server not started"),
            }
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.servers.keys().copied().collect();
        p.sort();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn request_line_parsing() {
        assert_eq!(
            parse_request("GET /healthz?x=1 HTTP/1.1\r\n"),
            Some(("GET", "/healthz"))
        );
        assert_eq!(parse_request("GET /x\r\n"), None);
        assert_eq!(parse_request(""), None);
    }

    #[test]
    fn serves_on_loopback_and_stops() {
        let handler: Handler = Arc::new(|path: &str| match path {
            "/healthz" => Response::new(200, "text/plain", "ok\n"),
            _ => Response::new(404, "text/plain", "no\n"),
        });
        let server = serve("127.0.0.1:0".parse().unwrap(), "test", handler).unwrap();
        let addr = server.addr;
        let ok = get(addr, "/healthz");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"));
        assert!(ok.contains("Content-Length: 3\r\n"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
        drop(server);
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(addr).is_err(), "listener must close");
    }

    #[test]
    fn health_check_is_503_without_local_endpoints() {
        let mut check = HealthCheck {
            port: 32000,
            namespace: "apps".into(),
            name: "web".into(),
            local_endpoints: 0,
        };
        let r = health_check_response(&check);
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["service"]["name"], "web");
        assert_eq!(v["localEndpoints"], 0);
        check.local_endpoints = 2;
        let r = health_check_response(&check);
        assert_eq!(r.status, 200);
        assert!(
            r.headers
                .contains(&("X-Load-Balancing-Endpoint-Weight".into(), "2".into()))
        );
    }
}

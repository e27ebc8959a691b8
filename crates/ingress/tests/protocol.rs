//! The proxy's reading of HTTP/1.1 request framing (RFC 9112 §3.2), each case
//! written byte for byte over a TcpStream on loopback: two Host headers are
//! rejected, an absolute-form target is routed by its own authority, a
//! target that is not a path is rejected, and a client body with broken
//! chunked framing is the client's error (400), not the backend's. Backends
//! record what reaches them, so each test also says whether the request was
//! forwarded. (Self-contained rather than sharing tests/proxy.rs's helpers:
//! those build a hyper client, and these requests are ones no client builds.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use podwire_ingress::proxy::Settings;
use podwire_ingress::server::{Config, Feed, Listeners};
use podwire_model::{Object, Store};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a backend received: `METHOD target host=<Host values joined by |>`,
/// recorded once the whole body has been read.
type Seen = Arc<Mutex<Vec<String>>>;

/// A backend answering 200 `name=<name>` and recording each request.
async fn backend(name: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let hosts: Vec<String> = req
                            .headers()
                            .get_all("host")
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        let line =
                            format!("{} {} host={}", req.method(), req.uri(), hosts.join("|"));
                        // A body that does not arrive whole is not a request.
                        req.into_body().collect().await?;
                        record.lock().unwrap().push(line);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!(
                            "name={name}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn object(v: serde_json::Value) -> Object {
    Object::from_json(&v).unwrap()
}

/// Service `name` (port http:80) with one ready endpoint, 127.0.0.1:`port`.
fn service(name: &str, port: u16) -> Vec<Object> {
    vec![
        object(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}})),
        object(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        ),
    ]
}

fn host_rule(host: &str, service: &str) -> serde_json::Value {
    json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": service, "port": {"name": "http"}}}}]}})
}

/// A running controller routing a.example to backend a and b.example to b.
struct Lab {
    http: SocketAddr,
    metrics: SocketAddr,
    a: Seen,
    b: Seen,
    _store: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn lab() -> Lab {
    let (a_addr, a) = backend("a").await;
    let (b_addr, b) = backend("b").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service("svc-a", a_addr.port());
    objects.extend(service("svc-b", b_addr.port()));
    objects.push(object(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "podwire", "rules": [
            host_rule("a.example", "svc-a"),
            host_rule("b.example", "svc-b")
        ]}}),
    ));
    for o in &objects {
        store.put(o).unwrap();
    }
    store.bump().unwrap();
    let listeners = Listeners {
        http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        https: None,
        metrics: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    };
    let http = listeners.http.as_ref().unwrap().local_addr().unwrap();
    let metrics = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        podwire_ingress::server::serve(
            listeners,
            Feed::files(store),
            Config::default(),
            Settings::default(),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    Lab {
        http,
        metrics,
        a,
        b,
        _store: dir,
        _stop: stop,
    }
}

/// Writes `request` as is; the response's status code and everything read
/// (until the server closes, or 3 s).
async fn send_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn seen(s: &Seen) -> Vec<String> {
    s.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_rejected() {
    let lab = lab().await;
    let (status, text) = send_raw(
        lab.http,
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    // An invalid Host value too.
    let (status, text) = send_raw(
        lab.http,
        b"GET /x HTTP/1.1\r\nHost: a.example@b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(seen(&lab.a), Vec::<String>::new(), "forwarded to a");
    assert_eq!(seen(&lab.b), Vec::<String>::new(), "forwarded to b");
    // One Host header is still fine.
    let (status, text) = send_raw(
        lab.http,
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(seen(&lab.a), ["GET /x host=a.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_is_routed_by_its_own_authority() {
    let lab = lab().await;
    let (status, text) = send_raw(
        lab.http,
        b"GET http://b.example/x?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("name=b"), "{text}");
    // Origin-form to the backend, with the target's authority as its Host.
    assert_eq!(seen(&lab.b), ["GET /x?q=1 host=b.example"]);
    assert_eq!(seen(&lab.a), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_not_a_path_is_rejected() {
    let lab = lab().await;
    for request in [
        &b"GET v1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"[..],
        b"GET * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    ] {
        let (status, text) = send_raw(lab.http, request).await;
        assert_eq!(status, 400, "{}: {text}", String::from_utf8_lossy(request));
    }
    assert_eq!(seen(&lab.a), Vec::<String>::new(), "forwarded");
    // OPTIONS * is the one target that is not a path.
    let (status, text) = send_raw(
        lab.http,
        b"OPTIONS * HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_body_is_the_clients_error() {
    let lab = lab().await;
    // "zz" is not a chunk size.
    let (status, text) = send_raw(
        lab.http,
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        seen(&lab.a),
        Vec::<String>::new(),
        "the backend got a whole request"
    );
    let (_, metrics) = send_raw(
        lab.metrics,
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !metrics.contains("podwire_ingress_upstream_errors_total{"),
        "counted as a backend failure:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"podwire_ingress_requests_total{host="a.example",status="400"} 1"#),
        "{metrics}"
    );
}

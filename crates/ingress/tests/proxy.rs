//! Loopback tests of the ingress controller: tiny backend servers on
//! 127.0.0.x, a temporary store with Ingress/Service/EndpointSlice/Secret
//! objects pointing at them, the controller on random ports and real clients
//! (HTTP/1.1, HTTP/2 and TLS with rustls, WebSocket with tungstenite).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwire_ingress::proxy::Settings;
use podwire_ingress::server::{Config, Listeners};
use podwire_model::{Object, Store};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A backend answering `name=<name> path=<path> xff=.. proto=.. xhost=.. xport=.. host=..`;
/// `/slow` answers after 400 ms.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: Request<Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(400)).await;
                        }
                        if req.uri().path() == "/upload" {
                            let len = req.into_body().collect().await.unwrap().to_bytes().len();
                            return Ok(Response::new(Full::new(Bytes::from(format!(
                                "name={name} len={len}"
                            )))));
                        }
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let body = format!(
                            "name={name} path={} xff={} proto={} xhost={} xport={} host={} method={}",
                            req.uri(),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                            h("x-forwarded-port"),
                            h("host"),
                            req.method(),
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A WebSocket backend echoing every message with a prefix.
async fn websocket_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Message::Text(text) = message
                        && ws
                            .send(Message::text(format!("echo {}", text.as_str())))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn object(v: serde_json::Value) -> Object {
    Object::from_json(&v).unwrap()
}

/// A Service `name` (port http:80) whose slice holds `addrs` (all on `port`), ready or not.
fn service_objects(name: &str, port: u16, addrs: &[(&str, bool)]) -> Vec<Object> {
    let endpoints: Vec<_> = addrs
        .iter()
        .map(|(a, ready)| json!({"addresses": [a], "conditions": {"ready": ready}}))
        .collect();
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
            "endpoints": endpoints}),
        ),
    ]
}

fn rule(path: &str, path_type: &str, service: &str) -> serde_json::Value {
    json!({"path": path, "pathType": path_type,
           "backend": {"service": {"name": service, "port": {"name": "http"}}}})
}

fn ingress(name: &str, spec: serde_json::Value) -> Object {
    let mut spec = spec;
    spec["ingressClassName"] = json!("podwire");
    object(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": spec}),
    )
}

/// A test CA and leaf certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "podwire test CA");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A kubernetes.io/tls Secret for `hosts`, and the leaf certificate's DER.
    fn secret(&self, name: &str, hosts: &[&str]) -> (Object, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let secret = object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert.pem(), "tls.key": key.serialize_pem()}}));
        (secret, cert.der().to_vec())
    }

    fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A running controller.
struct Proxy {
    http: SocketAddr,
    https: SocketAddr,
    metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(store: &Store, settings: Settings) -> Proxy {
    let listeners = Listeners {
        http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        https: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        metrics: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
    };
    let addr = |l: &Option<TcpListener>| l.as_ref().unwrap().local_addr().unwrap();
    let (http, https, metrics) = (
        addr(&listeners.http),
        addr(&listeners.https),
        addr(&listeners.metrics),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let store = store.clone();
    let task = tokio::spawn(async move {
        podwire_ingress::server::serve(
            listeners,
            podwire_ingress::server::Feed::files(store),
            Config::default(),
            settings,
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
    });
    Proxy {
        http,
        https,
        metrics,
        stop: Some(tx),
        task,
    }
}

fn put_all(store: &Store, objects: &[Object]) {
    for o in objects {
        store.put(o).unwrap();
    }
    store.bump().unwrap();
}

async fn get(proxy: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let (status, _, body) = request(proxy, "GET", host, path, &[]).await;
    (status, body)
}

async fn request(
    proxy: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, hyper::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .header("host", host)
        .header("x-forwarded-for", "192.0.2.7");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = if method == "POST" { "data" } else { "" };
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// A port on 127.0.0.1 where nothing listens.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_errors_retries_and_limits() {
    let a = backend("a").await;
    let b = backend("b").await;
    let dead = dead_port().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = Vec::new();
    objects.extend(service_objects("svc-a", a.port(), &[("127.0.0.1", true)]));
    objects.extend(service_objects("svc-b", b.port(), &[("127.0.0.1", true)]));
    objects.extend(service_objects("svc-dead", dead, &[("127.0.0.1", true)]));
    objects.extend(service_objects(
        "svc-none",
        a.port(),
        &[("127.0.0.1", false)],
    ));
    // b listens on 127.0.0.1 only: 127.0.0.2 on its port refuses connections.
    objects.extend(service_objects(
        "svc-half",
        b.port(),
        &[("127.0.0.1", true), ("127.0.0.2", true)],
    ));
    objects.push(ingress(
        "web",
        json!({"rules": [
            {"host": "a.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}},
            {"host": "*.example.com", "http": {"paths": [
                rule("/b", "Prefix", "svc-b"),
                rule("/dead", "Exact", "svc-dead"),
                rule("/none", "Prefix", "svc-none"),
                rule("/half", "Prefix", "svc-half")
            ]}}
        ]}),
    ));
    put_all(&store, &objects);
    let settings = Settings {
        read_timeout: Duration::from_millis(200),
        max_header_bytes: 8 * 1024,
        ..Settings::default()
    };
    let proxy = start(&store, settings).await;
    let http = proxy.http;

    let (status, body) = get(http, "a.example.com", "/some/path?q=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("name=a path=/some/path?q=1 "), "{body}");
    assert!(body.contains("xff=192.0.2.7, 127.0.0.1"), "{body}");
    assert!(body.contains("proto=http"), "{body}");
    assert!(body.contains("xhost=a.example.com"), "{body}");
    assert!(body.contains(&format!("xport={}", http.port())), "{body}");
    assert!(body.contains("host=a.example.com"), "{body}");

    let (status, body) = get(http, "x.example.com:8080", "/b/c").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("name=b path=/b/c "), "{body}");
    // The method reaches the backend unchanged, with the body.
    let (status, _, body) = request(http, "POST", "x.example.com", "/b", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("method=POST"), "{body}");

    let (status, _) = get(http, "x.example.com", "/bc").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(http, "other.org", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(http, "x.example.com", "/none").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = get(http, "x.example.com", "/dead").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // The backend answers after the read timeout: 504.
    let (status, body) = get(http, "a.example.com", "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");

    // Idempotent requests to a half-dead backend are retried on the live endpoint.
    for _ in 0..8 {
        let (status, body) = get(http, "x.example.com", "/half").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // A request head over the limit: 431.
    let big = "x".repeat(10 * 1024);
    let (status, _, _) = request(http, "GET", "a.example.com", "/", &[("x-big", &big)]).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // Metrics and health.
    let (status, metrics) = get(proxy.metrics, "x", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        r#"podwire_ingress_requests_total{host="a.example.com",status="200"}"#,
        r#"podwire_ingress_requests_total{host="*.example.com",status="503"} 1"#,
        r#"podwire_ingress_requests_total{host="-",status="404"} 2"#,
        r#"podwire_ingress_upstream_errors_total{backend="default/svc-dead:http",reason="connect"} 1"#,
        r#"podwire_ingress_upstream_errors_total{backend="default/svc-a:http",reason="timeout"} 1"#,
        "podwire_ingress_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    // Round-robin over two endpoints: some of the 8 requests met the dead one.
    let retries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("podwire_ingress_upstream_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(retries >= 3, "{metrics}");
    let (status, body) = get(proxy.metrics, "x", "/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A new Ingress is served within 100 ms of the store's generation moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_within_100ms() {
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    put_all(
        &store,
        &service_objects("svc-a", a.port(), &[("127.0.0.1", true)]),
    );
    let proxy = start(&store, Settings::default()).await;
    assert_eq!(
        get(proxy.http, "new.org", "/").await.0,
        StatusCode::NOT_FOUND
    );
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let host = format!("new{round}.org");
        store
            .put(&ingress(
                &format!("new{round}"),
                json!({"rules": [{"host": host, "http": {"paths": [rule("/", "Prefix", "svc-a")]}}]}),
            ))
            .unwrap();
        store.bump().unwrap();
        let applied = Instant::now();
        loop {
            if get(proxy.http, &host, "/").await.0 == StatusCode::OK {
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(2),
                "route never appeared"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst = worst.max(applied.elapsed());
    }
    println!("worst time from store change to route served: {worst:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
}

async fn tls_connect(
    ca: &Ca,
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap()
}

fn peer_leaf(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    let certs: &[CertificateDer<'_>] = stream.get_ref().1.peer_certificates().unwrap();
    certs[0].to_vec()
}

/// TLS: certificates by SNI (exact, wildcard, default), HTTP/1.1 and HTTP/2
/// by ALPN, `X-Forwarded-Proto: https`, and 308 from HTTP for TLS hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_by_sni_http2_and_redirect() {
    let a = backend("a").await;
    let ca = Ca::new();
    let (secret_a, leaf_a) = ca.secret("a-tls", &["a.example.com"]);
    let (secret_w, leaf_w) = ca.secret("wild-tls", &["*.w.example.com"]);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service_objects("svc-a", a.port(), &[("127.0.0.1", true)]);
    objects.extend([secret_a, secret_w]);
    objects.push(ingress(
        "secure",
        json!({"tls": [{"hosts": ["a.example.com"], "secretName": "a-tls"},
                {"hosts": ["*.w.example.com"], "secretName": "wild-tls"}],
        "rules": [
          {"host": "a.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}},
          {"host": "*.w.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}},
          {"host": "plain.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}}
        ]}),
    ));
    put_all(&store, &objects);
    let proxy = start(&store, Settings::default()).await;

    // Exact host over HTTP/1.1.
    let mut tls = tls_connect(&ca, proxy.https, "a.example.com", &[b"http/1.1"]).await;
    assert_eq!(peer_leaf(&tls), leaf_a);
    tls.write_all(b"GET /x?y=1 HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("name=a path=/x?y=1"), "{text}");
    assert!(text.contains("proto=https"), "{text}");
    assert!(
        text.contains(&format!("xport={}", proxy.https.port())),
        "{text}"
    );

    // Wildcard host over HTTP/2.
    let tls = tls_connect(&ca, proxy.https, "b.w.example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(peer_leaf(&tls), leaf_w);
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    for path in ["/one", "/two"] {
        let req = Request::get(format!("https://b.w.example.com{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.starts_with(&format!("name=a path={path} ")), "{body}");
        assert!(body.contains("host=b.w.example.com"), "{body}");
    }

    // An unknown name gets the generated default certificate, which the
    // client rejects.
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[]));
    let tcp = TcpStream::connect(proxy.https).await.unwrap();
    let err = connector
        .connect(ServerName::try_from("nope.example.com").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    // Plain HTTP: 308 to HTTPS for TLS hosts, served for the others.
    let (status, headers, _) = request(proxy.http, "GET", "a.example.com", "/p?q=1", &[]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers["location"],
        format!("https://a.example.com:{}/p?q=1", proxy.https.port())
    );
    let (status, _) = get(proxy.http, "plain.example.com", "/").await;
    assert_eq!(status, StatusCode::OK);

    // Certificates are swapped in place: a new Secret for a.example.com.
    let (secret_a2, leaf_a2) = ca.secret("a-tls", &["a.example.com"]);
    put_all(&store, &[secret_a2]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let tls = tls_connect(&ca, proxy.https, "a.example.com", &[]).await;
        if peer_leaf(&tls) == leaf_a2 {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// WebSocket through the proxy, across a reload of the route table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_survives_reload() {
    let ws = websocket_backend().await;
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service_objects("svc-ws", ws.port(), &[("127.0.0.1", true)]);
    objects.push(ingress(
        "ws",
        json!({"rules": [{"host": "ws.example.com", "http": {"paths": [rule("/ws", "Prefix", "svc-ws")]}}]}),
    ));
    put_all(&store, &objects);
    let proxy = start(&store, Settings::default()).await;

    let tcp = TcpStream::connect(proxy.http).await.unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async("ws://ws.example.com/ws/chat", tcp)
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "echo hello");

    // Replace every route (the WebSocket's rule is gone): the open
    // connection keeps working, new ones see the new table.
    store
        .delete(podwire_model::Kind::Ingress, "default", "ws")
        .unwrap();
    put_all(
        &store,
        &[
            service_objects("svc-a", a.port(), &[("127.0.0.1", true)]),
            vec![ingress(
                "other",
                json!({"rules": [{"host": "a.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}}]}),
            )],
        ]
        .concat(),
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(proxy.http, "a.example.com", "/").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..3 {
        socket.send(Message::text(format!("m{i}"))).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo m{i}"));
    }
    assert_eq!(
        get(proxy.http, "ws.example.com", "/ws").await.0,
        StatusCode::NOT_FOUND
    );
}

/// On stop, requests in flight finish; then nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service_objects("svc-a", a.port(), &[("127.0.0.1", true)]);
    objects.push(ingress(
        "web",
        json!({"rules": [{"http": {"paths": [rule("/", "Prefix", "svc-a")]}}]}),
    ));
    put_all(&store, &objects);
    let mut proxy = start(&store, Settings::default()).await;
    let http = proxy.http;
    let slow = tokio::spawn(async move { get(http, "any", "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Instant::now();
    proxy.stop.take().unwrap().send(()).unwrap();
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::timeout(Duration::from_secs(5), &mut proxy.task)
        .await
        .expect("the controller did not stop")
        .unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(http).await.is_err());
}

/// A hand-written HTTP/1.1 backend for response framings hyper would not
/// produce on request: `/chunked` (three chunks, written apart), `/eof`
/// (no length: the body ends when the connection closes), `/close`
/// (`Connection: close`), `/bye` (keep-alive, then the backend closes the
/// idle connection after 50 ms), anything else: `ok <n>` with a length,
/// `n` counting requests on that connection.
async fn raw_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut served = 0;
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    served += 1;
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let w = |s: &str| s.as_bytes().to_vec();
                    match path.as_str() {
                        "/chunked" => {
                            for part in [
                                w(
                                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                                ),
                                w("1;ext=x\r\n \r\n"),
                                w("5\r\nworld\r\n0\r\ntrailer: t\r\n\r\n"),
                            ] {
                                stream.write_all(&part).await.unwrap();
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        "/eof" => {
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                                .await
                                .unwrap();
                            return;
                        }
                        "/close" => {
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nclose")
                                .await
                                .unwrap();
                            return;
                        }
                        "/bye" => {
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye")
                                .await
                                .unwrap();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                        _ => {
                            let body = format!("ok {served}");
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            stream.write_all(response.as_bytes()).await.unwrap();
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Response framings (chunked, until EOF, Connection: close), reuse of
/// kept-alive backend connections, a request sent again when the backend
/// closed the pooled connection, and large bodies streamed both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_framings_and_connection_reuse() {
    let raw = raw_backend().await;
    let echo = backend("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service_objects("svc-raw", raw.port(), &[("127.0.0.1", true)]);
    objects.extend(service_objects(
        "svc-echo",
        echo.port(),
        &[("127.0.0.1", true)],
    ));
    objects.push(ingress(
        "web",
        json!({"rules": [
            {"host": "raw.example.com", "http": {"paths": [rule("/", "Prefix", "svc-raw")]}},
            {"host": "echo.example.com", "http": {"paths": [rule("/", "Prefix", "svc-echo")]}}
        ]}),
    ));
    put_all(&store, &objects);
    let proxy = start(&store, Settings::default()).await;
    let http = proxy.http;

    assert_eq!(
        get(http, "raw.example.com", "/chunked").await,
        (StatusCode::OK, "hello world".to_string())
    );
    assert_eq!(
        get(http, "raw.example.com", "/eof").await,
        (StatusCode::OK, "until the end".to_string())
    );
    assert_eq!(
        get(http, "raw.example.com", "/close").await,
        (StatusCode::OK, "close".to_string())
    );
    // One client connection, sequential requests: the backend connection
    // is reused (its request counter grows).
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let req = Request::get(format!("http://{http}/n"))
            .header("host", "raw.example.com")
            .body(Empty::new())
            .unwrap();
        let body = client.request(req).await.unwrap().into_body();
        counts.push(String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap());
    }
    assert_eq!(counts.last().unwrap(), "ok 3", "{counts:?}");
    // The backend closes the kept-alive connection after /bye; the next
    // request must not fail because of it.
    for _ in 0..3 {
        assert_eq!(
            get(http, "raw.example.com", "/bye").await,
            (StatusCode::OK, "bye".to_string())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(http, "raw.example.com", "/x").await.0, StatusCode::OK);

    // 1 MiB up with a length, streamed; the backend saw all of it.
    let big = "z".repeat(1 << 20);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{http}/upload"))
        .header("host", "echo.example.com")
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&format!("len={}", big.len())), "{body}");
    // A body of unknown length (chunked from the client) arrives whole.
    let mut raw = TcpStream::connect(http).await.unwrap();
    raw.write_all(b"POST /upload HTTP/1.1\r\nHost: echo.example.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    raw.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("name=echo len=8"), "{text}");
    // HEAD gets the head only.
    let (status, headers, body) = request(http, "HEAD", "raw.example.com", "/n", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert!(headers.contains_key("content-length"));
}

/// An Ingress with annotations, in namespace default.
fn annotated(name: &str, annotations: serde_json::Value, spec: serde_json::Value) -> Object {
    let mut spec = spec;
    spec["ingressClassName"] = json!("podwire");
    object(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": spec}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_annotations_rewrite_and_redirect() {
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    let mut objects = service_objects("svc-a", a.port(), &[("127.0.0.1", true)]);
    let host_rule = |host: &str, paths: Vec<serde_json::Value>| json!({"rules": [{"host": host, "http": {"paths": paths}}]});
    objects.extend([
        // The course's: /wear served by an app that serves /.
        annotated(
            "wear",
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/"}),
            host_rule("shop.example.com", vec![rule("/wear", "Prefix", "svc-a")]),
        ),
        annotated(
            "capture",
            json!({"nginx.ingress.kubernetes.io/use-regex": "true",
                   "nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
            host_rule(
                "api.example.com",
                vec![rule("/v1(/|$)(.*)", "ImplementationSpecific", "svc-a")],
            ),
        ),
        annotated(
            "root",
            json!({"nginx.ingress.kubernetes.io/app-root": "/app"}),
            host_rule("root.example.com", vec![rule("/", "Prefix", "svc-a")]),
        ),
        annotated(
            "moved",
            json!({"nginx.ingress.kubernetes.io/permanent-redirect": "https://new.example.org/"}),
            host_rule("old.example.com", vec![rule("/", "Prefix", "svc-a")]),
        ),
        annotated(
            "forced",
            json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
            host_rule("secure.example.com", vec![rule("/", "Prefix", "svc-a")]),
        ),
    ]);
    put_all(&store, &objects);
    let proxy = start(&store, Settings::default()).await;
    let (status, body) = get(proxy.http, "shop.example.com", "/wear/shirts?size=m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("path=/?size=m "), "{body}");
    let (status, body) = get(proxy.http, "api.example.com", "/v1/users/7").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("path=/users/7 "), "{body}");
    let (_, body) = get(proxy.http, "api.example.com", "/V1").await;
    assert!(
        body.contains("path=/ "),
        "case-insensitive, $2 empty: {body}"
    );
    let (status, headers, _) = request(proxy.http, "GET", "root.example.com", "/", &[]).await;
    assert_eq!(status, StatusCode::FOUND);
    assert_eq!(headers["location"], "/app");
    let (status, body) = get(proxy.http, "root.example.com", "/app").await;
    assert!(
        status == StatusCode::OK && body.contains("path=/app "),
        "{body}"
    );
    let (status, headers, _) = request(proxy.http, "GET", "old.example.com", "/x", &[]).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://new.example.org/");
    let (status, headers, _) =
        request(proxy.http, "GET", "secure.example.com", "/p?q=1", &[]).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("https://secure.example.com:"),
        "{headers:?}"
    );
}

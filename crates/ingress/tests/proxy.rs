//! Loopback test of the ingress proxy: two tiny backend HTTP servers on
//! 127.0.0.1, a temporary store with Ingress/Service/EndpointSlice objects
//! pointing at them, the proxy on a random port and real requests.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use podwire_ingress::CompileOptions;
use podwire_model::{Object, Store};
use serde_json::json;
use tokio::net::TcpListener;

/// A backend answering `name=<name> path=<path> xff=.. proto=.. xhost=.. xport=.. host=..`.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let body = format!(
                            "name={name} path={} xff={} proto={} xhost={} xport={} host={}",
                            req.uri(),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                            h("x-forwarded-port"),
                            h("host"),
                        );
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
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

fn ingress(name: &str, rules: serde_json::Value) -> Object {
    object(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"ingressClassName": "podwire", "rules": rules}}),
    )
}

async fn get(proxy: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(format!("http://{proxy}{path}"))
        .header("host", host)
        .header("x-forwarded-for", "192.0.2.7")
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_errors_over_loopback() {
    let a = backend("a").await;
    let b = backend("b").await;
    // A port nothing listens on: 502.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };

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
    objects.push(ingress(
        "web",
        json!([
            {"host": "a.example.com", "http": {"paths": [rule("/", "Prefix", "svc-a")]}},
            {"host": "*.example.com", "http": {"paths": [
                rule("/b", "Prefix", "svc-b"),
                rule("/dead", "Exact", "svc-dead"),
                rule("/none", "Prefix", "svc-none")
            ]}}
        ]),
    ));
    for o in &objects {
        store.put(o).unwrap();
    }
    store.bump().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(podwire_ingress::proxy::serve(
        listener,
        store.clone(),
        CompileOptions::default(),
    ));

    let (status, body) = get(proxy, "a.example.com", "/some/path?q=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("name=a path=/some/path?q=1 "), "{body}");
    assert!(body.contains("xff=192.0.2.7, 127.0.0.1"), "{body}");
    assert!(body.contains("proto=http"), "{body}");
    assert!(body.contains("xhost=a.example.com"), "{body}");
    assert!(body.contains(&format!("xport={}", proxy.port())), "{body}");
    assert!(body.contains("host=a.example.com"), "{body}");

    let (status, body) = get(proxy, "x.example.com:8080", "/b/c").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("name=b path=/b/c "), "{body}");

    let (status, _) = get(proxy, "x.example.com", "/bc").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(proxy, "other.org", "/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = get(proxy, "x.example.com", "/none").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = get(proxy, "x.example.com", "/dead").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

    // A new Ingress is picked up when the generation moves.
    store
        .put(&ingress(
            "more",
            json!([{"host": "other.org", "http": {"paths": [rule("/", "Prefix", "svc-b")]}}]),
        ))
        .unwrap();
    store.bump().unwrap();
    let mut last = StatusCode::NOT_FOUND;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = get(proxy, "other.org", "/").await.0;
        if last == StatusCode::OK {
            break;
        }
    }
    assert_eq!(last, StatusCode::OK);
}

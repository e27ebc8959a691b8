//! The proxy reading what a backend writes byte for byte over loopback
//! (`backend_wire.rs` behind `pool.rs`): chunked bodies with extensions and
//! trailers reach the client whole and the connection is reused after
//! them; responses framed two ways, or with disagreeing lengths, are a 502;
//! a chunk-size line with a bare LF hidden in an extension fails the body.
//! (Self-contained like tests/protocol.rs: these answers are ones no
//! server library writes.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use podwire_ingress::proxy::Settings;
use podwire_ingress::server::{Config, Feed, Listeners};
use podwire_model::{Object, Store};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bytes the backend answers a request for `path` with.
fn answer(path: &str) -> &'static [u8] {
    match path {
        "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              4;ext=1\r\nWiki\r\n5 ; a=\"q;x\"\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n"
        }
        "/both" => {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
        }
        "/lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "/bare-lf" => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;a\nhello\r\n0\r\n\r\n"
        }
        _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    }
}

/// A backend writing `answer(path)` for each request head it reads (GET
/// only: no request bodies); counts the connections it accepted.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                        if stream.write_all(answer(&path)).await.is_err() {
                            return;
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn object(v: serde_json::Value) -> Object {
    Object::from_json(&v).unwrap()
}

/// A running controller sending every request to one raw backend.
struct Lab {
    http: SocketAddr,
    accepted: Arc<AtomicUsize>,
    _store: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn lab() -> Lab {
    let (addr, accepted) = backend().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path());
    for o in [
        object(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "raw", "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": addr.port()}]}})),
        object(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "raw-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "raw"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": addr.port()}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        ),
        object(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ingressClassName": "podwire",
                     "defaultBackend": {"service": {"name": "raw", "port": {"name": "http"}}}}}),
        ),
    ] {
        store.put(&o).unwrap();
    }
    store.bump().unwrap();
    let listeners = Listeners {
        http: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        https: None,
        metrics: None,
    };
    let http = listeners.http.as_ref().unwrap().local_addr().unwrap();
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
        accepted,
        _store: dir,
        _stop: stop,
    }
}

/// One client connection to the proxy.
async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path`: the status and the body, or the error that cut the
/// response off (status 0 when not even the head arrived).
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (u16, Result<Vec<u8>, String>) {
    if let Err(e) = sender.ready().await {
        return (0, Err(e.to_string()));
    }
    let req = Request::get(path)
        .header("host", "raw.example")
        .body(Empty::new())
        .unwrap();
    let response = match tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("no response within 5 s")
    {
        Ok(response) => response,
        Err(e) => return (0, Err(e.to_string())),
    };
    let status = response.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("no body within 5 s")
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (status, body)
}

/// Waits until the proxy serves (its first reload has happened).
async fn ready(lab: &Lab) {
    for _ in 0..100 {
        let mut c = client(lab.http).await;
        if get(&mut c, "/length").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the proxy never served /length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_extensions_and_trailers_is_relayed_and_reused() {
    let lab = lab().await;
    ready(&lab).await;
    let mut c = client(lab.http).await;
    let (status, body) = get(&mut c, "/chunked").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), b"Wikipedia");
    let before = lab.accepted.load(Ordering::SeqCst);
    // Same client connection, same worker, same pool: the backend
    // connection went back to it after the trailers.
    for _ in 0..3 {
        let (status, body) = get(&mut c, "/chunked").await;
        assert_eq!(status, 200);
        assert_eq!(body.unwrap(), b"Wikipedia");
    }
    assert_eq!(lab.accepted.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_a_bad_gateway() {
    let lab = lab().await;
    ready(&lab).await;
    for path in ["/both", "/lengths"] {
        let mut c = client(lab.http).await;
        let (status, _) = get(&mut c, path).await;
        assert_eq!(status, 502, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_a_chunk_extension_fails_the_body() {
    let lab = lab().await;
    ready(&lab).await;
    let mut c = client(lab.http).await;
    // The head may or may not have reached the client before the body
    // failed; either way the response is cut off, never whole.
    let (status, body) = get(&mut c, "/bare-lf").await;
    assert!(status == 0 || status == 200, "{status}");
    assert!(body.is_err(), "{body:?}");
}

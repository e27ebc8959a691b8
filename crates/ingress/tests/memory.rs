//! Memory and connection-limit tests of the ingress controller run as a
//! child process, so that its memory is measured alone: the test binary
//! starts itself again with `PODWIRE_MEMTEST_STORE` set, and in that child
//! the test `child_proxy` runs `server::run` (worker threads, SO_REUSEPORT
//! listeners, as `podwire ingress` does) until it is killed. The parent
//! holds the backend (a plain std-thread HTTP/1.1 server) and the clients,
//! all on loopback, and reads the child's `/proc/<pid>/status` VmRSS.
//!
//! `measure_memory` (ignored; run it by name with `--ignored --nocapture`)
//! prints the figures ARCHITECTURE.md quotes: RSS with N partial request
//! heads open over several rounds, after they close, and per idle
//! keep-alive connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podwire_ingress::proxy::Settings;
use podwire_ingress::server::{Config, Feed, Listen};
use podwire_model::{Object, Store};
use serde_json::json;

const STORE_ENV: &str = "PODWIRE_MEMTEST_STORE";
const HTTP_ENV: &str = "PODWIRE_MEMTEST_HTTP";
const METRICS_ENV: &str = "PODWIRE_MEMTEST_METRICS";
const MAX_ENV: &str = "PODWIRE_MEMTEST_MAX_CONNECTIONS";
const PARTIAL: &[u8] = b"GET / HTTP/1.1\r\nHost: a.example.com\r\n";
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n";

/// The proxy itself, when started by a parent test (else nothing).
#[test]
fn child_proxy() {
    let Ok(dir) = std::env::var(STORE_ENV) else {
        return;
    };
    let port = |name: &str| -> SocketAddr {
        format!("127.0.0.1:{}", std::env::var(name).unwrap())
            .parse()
            .unwrap()
    };
    let mut settings = Settings::default();
    if let Ok(max) = std::env::var(MAX_ENV) {
        settings.max_connections = Some(max.parse().unwrap());
    }
    podwire_ingress::server::run(
        Listen {
            http: Some(port(HTTP_ENV)),
            https: None,
            metrics: Some(port(METRICS_ENV)),
        },
        Feed::files(Store::open(dir)),
        Config::default(),
        settings,
        Some(2),
    )
    .unwrap();
}

/// A backend answering every request head with `200 ok`, keep-alive.
fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn object(v: serde_json::Value) -> Object {
    Object::from_json(&v).unwrap()
}

/// `podwire ingress` as a child process, routing a.example.com to `backend`.
struct ProxyProcess {
    child: Child,
    http: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    fn start(backend: SocketAddr, max_connections: Option<usize>) -> ProxyProcess {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let objects = [
            object(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "svc", "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend.port()}]}})),
            object(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "svc-x", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "svc"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": backend.port()}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
            ),
            object(
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "namespace": "default",
                             "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"ingressClassName": "podwire", "rules": [{"host": "a.example.com",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "svc", "port": {"name": "http"}}}}]}}]}}),
            ),
        ];
        for o in &objects {
            store.put(o).unwrap();
        }
        store.bump().unwrap();
        let (http, metrics) = (free_port(), free_port());
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_proxy", "--nocapture", "--test-threads=1"])
            .env(STORE_ENV, dir.path())
            .env(HTTP_ENV, http.to_string())
            .env(METRICS_ENV, metrics.to_string())
            .env("PODWIRE_LOG", "warn")
            .stdout(Stdio::null());
        if let Some(max) = max_connections {
            cmd.env(MAX_ENV, max.to_string());
        }
        let child = cmd.spawn().unwrap();
        let proxy = ProxyProcess {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(proxy.http)
                && let Ok(answer) = exchange(&mut s, REQUEST)
                && answer.starts_with("HTTP/1.1 200")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the proxy did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text
    }

    /// The open client connections the proxy counts.
    fn connections(&self) -> i64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("podwire_ingress_connections{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum()
    }

    /// Waits until the proxy counts at most `n` connections.
    fn wait_connections(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.connections() > n {
            assert!(Instant::now() < deadline, "connections still open");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` and reads one response (head and `content-length` body).
fn exchange(s: &mut TcpStream, request: &[u8]) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens `n` connections that each send a partial request head.
fn partial_heads(proxy: &ProxyProcess, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.http).unwrap();
            s.write_all(PARTIAL).unwrap();
            s
        })
        .collect()
}

/// Opens `n` connections that each get one answer and stay open (idle
/// keep-alive).
fn keep_alive_connections(proxy: &ProxyProcess, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.http).unwrap();
            let answer = exchange(&mut s, REQUEST).unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            s
        })
        .collect()
}

/// Lets the proxy settle (its threads read what was sent), then reads RSS.
fn settled_rss(proxy: &ProxyProcess) -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    proxy.rss_kb()
}

/// With `--max-connections 3` and three connections open (an idle
/// keep-alive one, the oldest; a partial request head; another idle one),
/// a fourth client is served and the oldest idle connection is closed for
/// it; the other two are kept.
#[test]
fn at_the_limit_the_oldest_idle_connection_makes_room() {
    if std::env::var(STORE_ENV).is_ok() {
        return;
    }
    let proxy = ProxyProcess::start(backend(), Some(3));
    proxy.wait_connections(0, Duration::from_secs(10));
    let mut oldest = TcpStream::connect(proxy.http).unwrap();
    assert!(
        exchange(&mut oldest, REQUEST)
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    std::thread::sleep(Duration::from_millis(100));
    let mut partial = TcpStream::connect(proxy.http).unwrap();
    partial.write_all(PARTIAL).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = TcpStream::connect(proxy.http).unwrap();
    assert!(
        exchange(&mut third, REQUEST)
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.connections() < 3 {
        assert!(
            Instant::now() < deadline,
            "the proxy does not count 3 connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut newest = TcpStream::connect(proxy.http).unwrap();
    let answer = exchange(&mut newest, REQUEST).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    oldest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    match oldest.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the oldest idle connection is still open: {other:?}"),
    }
    let answer = exchange(&mut third, REQUEST).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = exchange(&mut partial, b"\r\n").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = proxy.metrics();
    assert!(
        metrics.contains("podwire_ingress_connections_shed_total{reason=\"idle\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("podwire_ingress_max_connections 3"),
        "{metrics}"
    );
}

/// After 2,000 partial request heads close, the proxy's memory is back
/// within 20% of what it was before them.
#[test]
fn memory_returns_after_partial_heads_close() {
    if std::env::var(STORE_ENV).is_ok() {
        return;
    }
    let proxy = ProxyProcess::start(backend(), None);
    let before = settled_rss(&proxy);
    for _ in 0..2 {
        let conns = partial_heads(&proxy, 2000);
        proxy.wait_connections(2000, Duration::from_secs(30));
        let during = settled_rss(&proxy);
        drop(conns);
        proxy.wait_connections(0, Duration::from_secs(30));
        // The trim follows within a second or so; give a loaded machine 15 s.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut after = settled_rss(&proxy);
        while after as f64 > before as f64 * 1.2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            after = proxy.rss_kb();
        }
        eprintln!("RSS before {before} kB, with 2000 partial heads {during} kB, after {after} kB");
        assert!(
            (after as f64) <= before as f64 * 1.2,
            "RSS {after} kB after the connections closed, {before} kB before"
        );
    }
}

/// An idle keep-alive HTTP/1.1 connection costs the proxy at most 2.5 KB
/// (1.8-1.9 KB now in release and debug builds; 4.4 KB when the plain
/// connection's task also carried the TLS handshake's state, nginx 0.5 KB).
#[test]
fn idle_keep_alive_connections_stay_small() {
    if std::env::var(STORE_ENV).is_ok() {
        return;
    }
    const N: usize = 2000;
    let proxy = ProxyProcess::start(backend(), None);
    let before = settled_rss(&proxy);
    let mut conns = keep_alive_connections(&proxy, N);
    let held = settled_rss(&proxy);
    let each = held.saturating_sub(before) as f64 / N as f64;
    eprintln!("{N} idle keep-alive connections: {before} kB -> {held} kB, {each:.2} KB each");
    assert!(
        each <= 2.5,
        "an idle keep-alive connection costs {each:.2} KB ({before} kB -> {held} kB for {N})"
    );
    // Still open and served: they were idle, not closed.
    let mut s = conns.pop().unwrap();
    assert!(
        exchange(&mut s, REQUEST)
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

/// Prints the memory figures: `PODWIRE_MEMTEST_N` partial heads (default
/// 10,000) over 3 rounds, then as many idle keep-alive connections.
#[test]
#[ignore = "a measurement: run by name with --ignored --nocapture"]
fn measure_memory() {
    if std::env::var(STORE_ENV).is_ok() {
        return;
    }
    let n: usize = std::env::var("PODWIRE_MEMTEST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let max = std::env::var(MAX_ENV).ok().and_then(|v| v.parse().ok());
    let proxy = ProxyProcess::start(backend(), max);
    let mb = |kb: u64| kb as f64 / 1024.0;
    let before = settled_rss(&proxy);
    println!("pre-load RSS {:.1} MB", mb(before));
    for round in 1..=3 {
        let conns = partial_heads(&proxy, n);
        let during = settled_rss(&proxy);
        drop(conns);
        proxy.wait_connections(0, Duration::from_secs(60));
        let after = settled_rss(&proxy);
        println!(
            "round {round}: {n} partial heads {:.1} MB, after close {:.1} MB ({:+.0}% of pre-load)",
            mb(during),
            mb(after),
            (after as f64 / before as f64 - 1.0) * 100.0
        );
    }
    let base = settled_rss(&proxy);
    let mut conns = keep_alive_connections(&proxy, n);
    let held = settled_rss(&proxy);
    println!(
        "{n} idle keep-alive connections: {:.1} MB -> {:.1} MB, {:.2} KB each",
        mb(base),
        mb(held),
        (held as f64 - base as f64) / n as f64
    );
    let mut alive = 0;
    for s in &mut conns {
        if matches!(exchange(s, REQUEST), Ok(a) if a.starts_with("HTTP/1.1 200")) {
            alive += 1;
        }
    }
    println!("{alive} of {n} still served a second request");
    drop(conns);
    proxy.wait_connections(0, Duration::from_secs(60));
    println!("after close {:.1} MB", mb(settled_rss(&proxy)));
}

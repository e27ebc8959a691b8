//! The ingress part of the abuse (fault 5, request framing): `podwire
//! ingress` on loopback with a files store routing a.example and b.example
//! to two backends of our own, sent requests byte for byte that no HTTP
//! client library would build: two Host headers, a target that is no path,
//! an absolute-form target naming another host, a broken chunked body.
//! Backends record every request that reaches them whole, so each check
//! also says whether the proxy forwarded it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::Row;
use crate::ns::{TempDir, check_interrupted};

const PART: &str = "ingress";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one backend received: `METHOD target host=<Host values joined by |>`.
type Seen = Arc<Mutex<Vec<String>>>;

/// A backend on 127.0.0.1 answering 200 `name=<name>`; stops with `stop`.
struct Backend {
    port: u16,
    seen: Seen,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request; its record line when head and body arrived whole.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (method, target) = (request.next()?, request.next()?);
    let mut hosts = Vec::new();
    let mut length = 0usize;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "host" => hosts.push(value.to_string()),
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let mut body = buf[head_end..].to_vec();
    let whole = |body: &[u8]| {
        if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= length
        }
    };
    while !whole(&body) {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(format!("{method} {target} host={}", hosts.join("|")))
}

impl Backend {
    fn start(name: &'static str, stop: Arc<AtomicBool>) -> Result<Backend> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind a backend")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let record = record.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    if let Some(line) = read_request(&mut stream) {
                        if let Ok(mut r) = record.lock() {
                            r.push(line);
                        }
                        let body = format!("name={name}");
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        Ok(Backend { port, seen })
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn write(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, value.to_string()).with_context(|| format!("write {}", path.display()))
}

/// The store: Services svc-a and svc-b (one endpoint each, 127.0.0.1 at the
/// backend's port) and one Ingress routing a.example and b.example to them.
fn write_store(root: &Path, a: u16, b: u16) -> Result<()> {
    for (name, port) in [("svc-a", a), ("svc-b", b)] {
        write(
            &root.join(format!("services/default/{name}.json")),
            &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}}),
        )?;
        write(
            &root.join(format!("endpointslices/default/{name}-x.json")),
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-x"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        )?;
    }
    let rule = |host: &str, service: &str| {
        json!({"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"name": "http"}}}}]}})
    };
    write(
        &root.join("ingresses/default/web.json"),
        &json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "default",
                         "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"ingressClassName": "podwire",
                     "rules": [rule("a.example", "svc-a"), rule("b.example", "svc-b")]}}),
    )?;
    std::fs::write(root.join("generation"), "1\n").context("write generation")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `request` as is; the status code and everything read until the
/// server closes (or 3 s pass).
fn send_raw(addr: SocketAddr, request: &[u8]) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(request)?;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// The value of the metric line starting with `series`, summed over every
/// line that does (0 when none).
fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Runs the four protocol checks (and one for an invalid Host value).
pub fn run(podwire: &PathBuf) -> Result<Vec<Row>> {
    let stop = Arc::new(AtomicBool::new(false));
    let result = checks(podwire, &stop);
    stop.store(true, Ordering::SeqCst);
    result
}

fn checks(podwire: &PathBuf, stop: &Arc<AtomicBool>) -> Result<Vec<Row>> {
    let a = Backend::start("a", stop.clone())?;
    let b = Backend::start("b", stop.clone())?;
    let tmp = TempDir::create("abuse-ingress")?;
    let store = tmp.path().join("store");
    write_store(&store, a.port, b.port)?;
    let (http_port, metrics_port) = (free_port()?, free_port()?);
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let log = std::fs::File::create(tmp.path().join("ingress.log")).context("create log")?;
    let child = Command::new(podwire)
        .args(["ingress", "--source"])
        .arg(format!("files:{}", store.display()))
        .args(["--listen", &http.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--workers", "1"])
        .env("PODWIRE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} ingress", podwire.display()))?;
    let _proxy = Proc(child);
    // Ready once a.example is routed to backend a.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        check_interrupted()?;
        if let Ok((200, text)) = send_raw(
            http,
            b"GET /ready HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ) && text.ends_with("name=a")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "podwire ingress did not route a.example within 30 s (log: {})",
                std::fs::read_to_string(tmp.path().join("ingress.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics_text = || -> Result<String> {
        Ok(send_raw(
            metrics,
            b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )?
        .1)
    };
    let mut rows = Vec::new();
    // (check, request, expected status).
    let rejected: [(&str, &[u8]); 3] = [
        (
            "two Host headers",
            b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "an invalid Host value (a.example@b.example)",
            b"GET /x HTTP/1.1\r\nHost: a.example@b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "`GET v1` (a target that is no path)",
            b"GET v1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, request) in rejected {
        let (before_a, before_b) = (a.seen().len(), b.seen().len());
        let (status, _) = send_raw(http, request)?;
        let forwarded = a.seen().len() - before_a + b.seen().len() - before_b;
        rows.push(Row::new(
            PART,
            what,
            format!("status {status}, forwarded {forwarded}"),
            "400, not forwarded",
            status == 400 && forwarded == 0,
        ));
    }

    let (before_a, before_b) = (a.seen().len(), b.seen().len());
    let (status, text) = send_raw(
        http,
        b"GET http://b.example/x?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )?;
    let at_b: Vec<String> = b.seen().into_iter().skip(before_b).collect();
    let at_a = a.seen().len() - before_a;
    rows.push(Row::new(
        PART,
        "absolute-form GET http://b.example/x?q=1, Host: a.example",
        format!(
            "status {status}, body {:?}; backend b saw {at_b:?}, backend a {at_a}",
            text.rsplit("\r\n\r\n").next().unwrap_or_default()
        ),
        "routed to b as GET /x?q=1, Host b.example",
        status == 200
            && text.ends_with("name=b")
            && at_b == ["GET /x?q=1 host=b.example"]
            && at_a == 0,
    ));

    let before = metrics_text()?;
    let errors_before = metric_sum(&before, "podwire_ingress_upstream_errors_total{");
    let series = r#"podwire_ingress_requests_total{host="a.example",status="400"}"#;
    let bad_before = metric_sum(&before, series);
    let before_a = a.seen().len();
    let (status, _) = send_raw(
        http,
        b"POST /upload HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )?;
    let after = metrics_text()?;
    let errors = metric_sum(&after, "podwire_ingress_upstream_errors_total{") - errors_before;
    let counted = metric_sum(&after, series) - bad_before;
    let whole = a.seen().len() - before_a;
    rows.push(Row::new(
        PART,
        "malformed chunked client body (chunk size `zz`)",
        format!(
            "status {status}; backend got {whole} whole request(s); upstream errors +{errors}, \
             requests{{a.example,400}} +{counted}"
        ),
        "400, not an upstream error",
        status == 400 && whole == 0 && errors == 0.0 && counted == 1.0,
    ));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_lines_are_summed_by_prefix() {
        let text = "# HELP x\nfoo_total{a=\"1\"} 2\nfoo_total{a=\"2\"} 3\nfoo_bar 9\n";
        assert_eq!(metric_sum(text, "foo_total{"), 5.0);
        assert_eq!(metric_sum(text, "nope"), 0.0);
    }
}

//! End-to-end tests of the ingress controller in a lab (issue 6, "Done
//! when"): from the external host, requests by Host header reach the right
//! Service's pods through the controller's NodePorts on every node; TLS
//! with SNI picks each host's certificate (signed by the lab's CA); an
//! Ingress added and removed while a load generator runs costs zero failed
//! requests and its route answers within 100 ms of `lab apply` returning;
//! a scaled-up backend gets requests. Each test brings up the built-in
//! example lab under its own name and always runs `lab down` through the
//! [`Lab`] guard. Traffic goes only to the lab's addresses, from inside the
//! lab's external-host namespace. Needs root, iproute2, nft and curl.

mod lab_common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lab_common::*;
use podwire_kernel::netns::Netns;

/// The ingress controller's nodePorts in every lab.
const HTTP_PORT: u16 = 30800;
const HTTPS_PORT: u16 = 30443;
/// How long a route may take to appear after `lab apply` returns (issue 6).
const ROUTE_VISIBLE: Duration = Duration::from_millis(100);

/// A second application next to the example's `web`: its own namespace,
/// Deployment and Service.
const SHOP_APP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers: [{name: api, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: api-service, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8080}]
";

/// The shop's Ingress, without a class: served through the default
/// IngressClass the lab installs.
const API_INGRESS: &str = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: api, namespace: shop}
spec:
  rules:
    - host: api.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: api-service, port: {number: 80}}}}
";

/// The shop's Deployment with another replica count.
fn api_replicas(n: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: api, namespace: shop}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: api}}}}\n  template:\n    metadata: {{labels: {{app: api}}}}\n    spec:\n      containers: [{{name: api, ports: [{{name: http, containerPort: 8080}}]}}]\n"
    )
}

/// The example's web Deployment with another replica count.
fn web_replicas(n: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: apps, labels: {{app: web}}}}\nspec:\n  replicas: {n}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: web, ports: [{{name: http, containerPort: 8080}}]}}]\n"
    )
}

/// An Ingress for a new host, to add and remove under load.
const FRESH: &str = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fresh, namespace: apps}
spec:
  ingressClassName: podwire
  rules:
    - host: fresh.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web-service, port: {name: http}}}}
";

// ---------------------------------------------------------------------------
// A small HTTP/1.1 client whose sockets live in the lab's external host.

/// The lab's external host namespace.
fn external(lab: &Lab) -> Netns {
    Netns::open(format!("/var/run/netns/pwl-{}_x_external", lab.name))
        .unwrap_or_else(|e| panic!("lab {}: no external host: {e}", lab.name))
}

/// A TCP connection made from inside `ns` (a socket keeps the namespace it
/// was created in, so the thread returns home at once).
fn connect(ns: &Netns, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = ns
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .map_err(std::io::Error::other)??;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// The server will close the connection after this response.
    closes: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The answering pod's hostname (the built-in workload's `hostname=`).
    fn pod(&self) -> Option<String> {
        parse_served(&self.body).get("hostname").cloned()
    }
}

/// One GET on an open connection; `close` asks the server to close after.
fn get(conn: &mut BufReader<TcpStream>, host: &str, close: bool) -> std::io::Result<Response> {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podwire-test\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    conn.get_mut().write_all(request.as_bytes())?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before the status line".into()));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h)? == 0 {
            return Err(bad("connection closed in the headers".into()));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let closes = close || find("connection").is_some_and(|v| v.contains("close"));
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        body.resize(len, 0);
        conn.read_exact(&mut body)?;
    } else if closes {
        conn.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        closes,
    })
}

/// One request on a new connection from the external host.
fn fetch(ns: &Netns, addr: SocketAddr, host: &str) -> std::io::Result<Response> {
    let mut conn = BufReader::new(connect(ns, addr)?);
    get(&mut conn, host, true)
}

fn http_addr(ip: &str) -> SocketAddr {
    SocketAddr::new(
        ip.parse()
            .unwrap_or_else(|e| panic!("bad node IP {ip:?}: {e}")),
        HTTP_PORT,
    )
}

/// The lab's node IPs, as `lab get nodes` shows them.
fn node_ips(lab: &Lab) -> Vec<String> {
    lab.nodes().into_iter().map(|n| n.internal_ip).collect()
}

/// Names of a namespace's pods whose names start with `prefix`.
fn pod_names(lab: &Lab, namespace: &str, prefix: &str) -> BTreeSet<String> {
    lab.pods()
        .into_iter()
        .filter(|p| p.namespace == namespace && p.name.starts_with(prefix))
        .map(|p| p.name)
        .collect()
}

/// The pods that answer `host` on `ip` over `count` new connections;
/// panics on any answer that is not a 200 from the built-in workload.
fn answering_pods(ns: &Netns, ip: &str, host: &str, count: usize) -> BTreeSet<String> {
    (0..count)
        .map(|_| {
            let r = fetch(ns, http_addr(ip), host)
                .unwrap_or_else(|e| panic!("{host} via {ip}:{HTTP_PORT}: {e}"));
            assert_eq!(r.status, 200, "{host} via {ip}:{HTTP_PORT}: {r:?}");
            r.pod()
                .unwrap_or_else(|| panic!("{host} via {ip}: not the workload's answer: {r:?}"))
        })
        .collect()
}

/// Polls (every 5 ms, at most `limit`) until `host` answers `status` on
/// `ip`; the time it took, or None.
fn wait_status(ns: &Netns, ip: &str, host: &str, status: u16, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let tries = limit.as_millis() / 5 + 1;
    for _ in 0..tries {
        if fetch(ns, http_addr(ip), host).is_ok_and(|r| r.status == status) {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// `curl` run inside the external host (`lab exec --node external`).
fn curl_external(lab: &Lab, args: &[&str]) -> Run {
    let mut argv = vec!["curl", "-sS", "-m", "5"];
    argv.extend_from_slice(args);
    lab.exec_node("external", &argv)
}

/// An HTTPS GET of `host` through node `ip` with SNI, trusting the lab's CA.
fn curl_tls(lab: &Lab, ip: &str, host: &str) -> Run {
    let resolve = format!("{host}:{HTTPS_PORT}:{ip}");
    let url = format!("https://{host}:{HTTPS_PORT}/");
    let ca = lab.dir().join("ca.crt").display().to_string();
    curl_external(lab, &["-v", "--cacert", &ca, "--resolve", &resolve, &url])
}

// ---------------------------------------------------------------------------
// 1. Routing by Host header.

#[test]
fn host_header_routes_to_the_right_services_pods_on_every_node() {
    let lab = Lab::start("ingh", None);
    lab.apply_text(&format!("{SHOP_APP}---\n{API_INGRESS}"))
        .expect_ok();
    let ns = external(&lab);
    let webs = pod_names(&lab, "apps", "web-");
    let apis = pod_names(&lab, "shop", "api-");
    assert_eq!((webs.len(), apis.len()), (2, 2), "{webs:?} {apis:?}");
    let ips = node_ips(&lab);
    assert_eq!(ips.len(), 3, "{ips:?}");
    // The Ingress was created just now: allow the controller its reload.
    wait_status(&ns, &ips[0], "api.example.com", 200, Duration::from_secs(2))
        .expect("api.example.com never answered 200");
    for ip in &ips {
        // The controller round-robins over the ready endpoints: enough
        // requests reach every pod of the Service, and only those.
        assert_eq!(
            answering_pods(&ns, ip, "web.example.com", 10),
            webs,
            "web.example.com via {ip}"
        );
        assert_eq!(
            answering_pods(&ns, ip, "api.example.com", 10),
            apis,
            "api.example.com via {ip}"
        );
        // Host matching ignores case and a port, as HTTP says.
        let r = fetch(&ns, http_addr(ip), &format!("API.example.com:{HTTP_PORT}")).unwrap();
        assert!(
            r.status == 200 && r.pod().is_some_and(|p| apis.contains(&p)),
            "{r:?}"
        );
        let r = fetch(&ns, http_addr(ip), "unknown.example.com").unwrap();
        assert_eq!(r.status, 404, "no Ingress for this host via {ip}: {r:?}");
    }

    // `lab get` shows the objects the controller serves.
    let ing = lab.cmd(&["get", "ingress", "-A"]).expect_ok().stdout;
    // NAMESPACE NAME CLASS HOSTS PORTS AGE; PORTS may be "80, 443", as
    // kubectl prints it, so the columns are read from the left.
    let hosts: BTreeSet<(String, String)> = ing
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            Some((cells.get(1)?.to_string(), cells.get(3)?.to_string()))
        })
        .collect();
    assert_eq!(
        hosts,
        BTreeSet::from([
            ("api".into(), "api.example.com".into()),
            ("web".into(), "web.example.com".into())
        ]),
        "{ing}"
    );
    let classes = lab.cmd(&["get", "ingressclasses"]).expect_ok().stdout;
    assert!(classes.contains("podwire.io/ingress"), "{classes}");

    // No ready endpoint left: 503, from every node.
    lab.apply_text(&api_replicas(0)).expect_ok();
    for ip in &ips {
        let took = wait_status(&ns, ip, "api.example.com", 503, Duration::from_secs(2));
        assert!(
            took.is_some(),
            "api.example.com via {ip} must answer 503 with the backend scaled to 0: {:?}",
            fetch(&ns, http_addr(ip), "api.example.com")
        );
    }
    // The other host is untouched.
    assert_eq!(answering_pods(&ns, &ips[1], "web.example.com", 4), webs);
}

// ---------------------------------------------------------------------------
// 2. TLS with SNI.

/// The example's Lab document with one more certificate: `shop/api-tls`.
fn lab_document_with_api_certificate() -> String {
    let example = podwire_cmd(&["lab", "example"], None, CMD_TIMEOUT)
        .expect_ok()
        .stdout;
    let lab_doc = example
        .split("\n---\n")
        .next()
        .expect("the example starts with its Lab document");
    assert!(lab_doc.contains("\n  certificates:"), "{lab_doc}");
    lab_doc.replacen(
        "\n  certificates:",
        "\n  certificates:\n    - {namespace: shop, name: api-tls, hosts: [api.example.com]}",
        1,
    )
}

/// The api Ingress with TLS from the certificate the Lab document adds,
/// and without the ssl-redirect annotation (plain HTTP is redirected).
const API_TLS: &str = "\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: api, namespace: shop}
spec:
  ingressClassName: podwire
  tls: [{hosts: [api.example.com], secretName: api-tls}]
  rules:
    - host: api.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: api-service, port: {name: http}}}}
";

#[test]
fn tls_with_sni_serves_each_hosts_certificate_from_the_lab_ca() {
    let lab = Lab::new("ingt");
    let up = lab.up(None).expect_ok();

    // The hints `lab up` prints for the ingress work as printed.
    let hints: Vec<&str> = up
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.contains(&format!(":{HTTP_PORT}/")) || l.contains(&format!(":{HTTPS_PORT}/")))
        .collect();
    assert_eq!(hints.len(), 2, "two ingress hints: {}", up.describe());
    assert!(
        hints[0].contains("-H 'Host: web.example.com'")
            && hints[1].contains("--cacert")
            && hints[1].contains("https://web.example.com:30443/"),
        "{hints:?}"
    );
    for hint in &hints {
        let command = hint
            .strip_prefix("podwire ")
            .unwrap_or_else(|| panic!("not a podwire command: {hint}"));
        let run = run_program(
            "sh",
            &["-c", &format!("{} {command}", podwire())],
            None,
            CMD_TIMEOUT,
        )
        .expect_ok();
        assert!(
            run.stdout.contains("hostname=web-"),
            "the hint must reach a web pod: {}",
            run.describe()
        );
    }

    // A second host with its own certificate, issued by `lab apply` of the
    // Lab document, in a namespace the same file creates.
    let doc = format!(
        "{}\n---\n{SHOP_APP}---\n{API_TLS}",
        lab_document_with_api_certificate()
    );
    let applied = lab.apply_text(&doc).expect_ok();
    assert!(
        applied.stdout.contains("certificate shop/api-tls issued"),
        "{}",
        applied.describe()
    );
    let secrets = lab.cmd(&["get", "secrets", "-A"]).expect_ok().stdout;
    let rows = parse_table(&secrets);
    for name in ["web-tls", "api-tls"] {
        assert!(
            rows.iter()
                .any(|r| r["NAME"] == name && r["TYPE"] == "kubernetes.io/tls" && r["DATA"] == "3"),
            "{secrets}"
        );
    }
    // Applying the same document again issues nothing new (no key churn).
    let again = lab.apply_text(&doc).expect_ok();
    assert!(!again.stdout.contains("issued"), "{}", again.describe());

    let ns = external(&lab);
    let ips = node_ips(&lab);
    wait_status(&ns, &ips[0], "api.example.com", 308, Duration::from_secs(2))
        .expect("api.example.com over HTTP never redirected");
    for ip in &ips {
        for (host, prefix) in [
            ("web.example.com", "hostname=web-"),
            ("api.example.com", "hostname=api-"),
        ] {
            // curl checks the chain against the lab CA and the name against
            // the host: each host must get its own certificate (SNI).
            let run = curl_tls(&lab, ip, host);
            assert!(
                run.ok() && run.stdout.contains(prefix),
                "https://{host} via {ip}: {}",
                run.describe()
            );
            assert!(
                run.stderr.contains(&format!("CN={host}")),
                "https://{host} via {ip} must present {host}'s certificate: {}",
                run.stderr
            );
        }
        // Without the lab's CA the certificate is not trusted.
        let resolve = format!("web.example.com:{HTTPS_PORT}:{ip}");
        let untrusted = curl_external(
            &lab,
            &[
                "--resolve",
                &resolve,
                &format!("https://web.example.com:{HTTPS_PORT}/"),
            ],
        );
        assert_eq!(untrusted.code, Some(60), "{}", untrusted.describe());
        // Plain HTTP: a TLS host is redirected, unless its Ingress says
        // ssl-redirect "false" (the example's web Ingress does).
        let r = fetch(&ns, http_addr(ip), "api.example.com").unwrap();
        assert_eq!(r.status, 308, "{r:?}");
        assert!(
            r.header("location")
                .is_some_and(|l| l.starts_with("https://api.example.com")),
            "{r:?}"
        );
        let r = fetch(&ns, http_addr(ip), "web.example.com").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
}

// ---------------------------------------------------------------------------
// 3. Changes under load.

/// Counts of a load generator's requests.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.errors.lock()
            && e.len() < 10
        {
            e.push(what);
        }
    }
}

/// One load thread: GET `host` on `addr` until `stop`, on one kept-alive
/// connection (reconnecting only when the server says it closes) or on a
/// new connection per request. Every IO error and non-200 is a failure.
fn load(
    lab_name: String,
    addr: SocketAddr,
    host: &'static str,
    keep_alive: bool,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let ns = match Netns::open(format!("/var/run/netns/pwl-{lab_name}_x_external")) {
            Ok(ns) => ns,
            Err(e) => return tally.fail(format!("external host: {e}")),
        };
        let mut conn: Option<BufReader<TcpStream>> = None;
        // Bounded: the test stops the load within seconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let outcome = (|| {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(BufReader::new(connect(&ns, addr)?)),
                };
                get(c, host, !keep_alive)
            })();
            match outcome {
                Ok(r) => {
                    if r.closes {
                        conn = None;
                    }
                    if r.status == 200 && r.pod().is_some() {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.fail(format!("{addr} {host}: {} {}", r.status, r.body.trim()));
                    }
                }
                Err(e) => {
                    conn = None;
                    tally.fail(format!(
                        "{addr} {host} ({}): {e}",
                        if keep_alive {
                            "keep-alive"
                        } else {
                            "new connection"
                        }
                    ));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

#[test]
fn adding_and_removing_an_ingress_under_load_fails_no_request() {
    let lab = Lab::start("ingl", None);
    let ns = external(&lab);
    let ips = node_ips(&lab);
    wait_status(&ns, &ips[0], "web.example.com", 200, Duration::from_secs(2))
        .expect("web.example.com answers");
    assert!(
        fetch(&ns, http_addr(&ips[0]), "fresh.example.com").is_ok_and(|r| r.status == 404),
        "fresh.example.com has no route yet"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    // New connections through every node's NodePort, and one kept-alive
    // connection (which a table swap must not break).
    let kinds = ips
        .iter()
        .map(|ip| (ip, false))
        .chain(std::iter::once((&ips[0], true)));
    for (ip, keep_alive) in kinds {
        workers.push(load(
            lab.name.clone(),
            http_addr(ip),
            "web.example.com",
            keep_alive,
            Arc::clone(&stop),
            Arc::clone(&tally),
        ));
    }
    let settle = Duration::from_millis(300);
    std::thread::sleep(settle);

    // The prober waits inside its thread; the clock starts when `lab apply`
    // has returned.
    let (go, start) = mpsc::channel::<(Instant, u16)>();
    let (done, result) = mpsc::channel::<Option<Duration>>();
    let probe_addr = http_addr(&ips[1 % ips.len()]);
    let lab_name = lab.name.clone();
    let prober = std::thread::spawn(move || {
        let Ok(ns) = Netns::open(format!("/var/run/netns/pwl-{lab_name}_x_external")) else {
            return;
        };
        while let Ok((since, status)) = start.recv() {
            let mut seen = None;
            // Every 5 ms, for at most 2 s.
            for _ in 0..400 {
                if fetch(&ns, probe_addr, "fresh.example.com").is_ok_and(|r| r.status == status) {
                    seen = Some(since.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if done.send(seen).is_err() {
                return;
            }
        }
    });

    lab.apply_text(FRESH).expect_ok();
    go.send((Instant::now(), 200)).expect("prober");
    let added = result
        .recv_timeout(Duration::from_secs(5))
        .expect("prober answers");
    std::thread::sleep(settle);

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fresh.yaml");
    std::fs::write(&file, FRESH).expect("write manifest");
    lab.delete(&file).expect_ok();
    go.send((Instant::now(), 404)).expect("prober");
    let removed = result
        .recv_timeout(Duration::from_secs(5))
        .expect("prober answers");
    std::thread::sleep(settle);

    stop.store(true, Ordering::Relaxed);
    drop(go);
    for w in workers {
        let _ = w.join();
    }
    let _ = prober.join();
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    eprintln!(
        "under load: {ok} requests ok, {failed} failed; new route answered {added:?} after `lab apply` returned, removed route 404 {removed:?} after `lab delete` returned"
    );
    assert_eq!(
        failed,
        0,
        "requests failed while an Ingress was added and removed: {:?}",
        tally.errors.lock().map(|e| e.clone()).unwrap_or_default()
    );
    assert!(ok >= 100, "the load generator barely ran: {ok} requests");
    let added = added.expect("fresh.example.com never answered 200 after lab apply");
    assert!(
        added < ROUTE_VISIBLE,
        "the new route must answer within {ROUTE_VISIBLE:?} of `lab apply` returning, took {added:?}"
    );
    let removed = removed.expect("fresh.example.com still routed after lab delete");
    assert!(
        removed < Duration::from_secs(1),
        "a removed route must stop answering promptly, took {removed:?}"
    );
}

// ---------------------------------------------------------------------------
// 4. Scaling the backend.

#[test]
fn a_scaled_up_backend_pod_gets_requests_through_the_ingress() {
    let lab = Lab::start("ings", None);
    let ns = external(&lab);
    let ips = node_ips(&lab);
    let before = pod_names(&lab, "apps", "web-");
    assert_eq!(before.len(), 2, "{before:?}");
    wait_status(&ns, &ips[0], "web.example.com", 200, Duration::from_secs(2))
        .expect("web.example.com answers");

    lab.apply_text(&web_replicas(3)).expect_ok();
    let applied = Instant::now();
    let after = pod_names(&lab, "apps", "web-");
    let new: Vec<&String> = after.difference(&before).collect();
    assert_eq!(new.len(), 1, "one new web pod: {before:?} -> {after:?}");
    let new = new[0].clone();
    // Round-robin over three endpoints: the new pod answers within a few
    // requests once the controller has its endpoint.
    let mut seen = BTreeSet::new();
    let mut took = None;
    for i in 0..400 {
        let ip = &ips[i % ips.len()];
        match fetch(&ns, http_addr(ip), "web.example.com") {
            Ok(r) if r.status == 200 => {
                if let Some(pod) = r.pod() {
                    if pod == new && took.is_none() {
                        took = Some(applied.elapsed());
                    }
                    seen.insert(pod);
                }
            }
            other => panic!("web.example.com via {ip} failed while scaling: {other:?}"),
        }
        if seen == after {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("the new pod {new} answered through the ingress {took:?} after `lab apply` returned");
    assert_eq!(
        seen, after,
        "every web pod, the new {new} included, must get requests through the ingress"
    );
}

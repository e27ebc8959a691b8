//! Shared pieces of the DNS server tests: a temporary files store filled
//! with Kubernetes objects, a server bound on 127.0.0.1 (free ports), DNS
//! clients over UDP and TCP (queries built and answers decoded with
//! hickory-proto, independently of the server's own wire code), `dig`, and
//! a small upstream server of our own on loopback.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use podwire_dns::{Server, ServerConfig};
use podwire_model::{
    ClusterConfig, EndpointSlice, Namespace, Object, Pod, RoutingMode, Service, Store,
};
use podwire_testsupport::TempDir;
use serde_json::json;

/// A temporary store.
pub struct Fixture {
    pub dir: TempDir,
    pub store: Store,
}

impl Fixture {
    pub fn empty() -> Fixture {
        let dir = TempDir::new("dns");
        let store = Store::open(dir.path().join("cluster"));
        Fixture { dir, store }
    }

    /// The store with the test cluster (see [`cluster_objects`]), bumped.
    pub fn cluster() -> Fixture {
        let f = Fixture::empty();
        f.config();
        for o in cluster_objects() {
            f.store.put(&o).expect("put");
        }
        f.store.bump().expect("bump");
        f
    }

    pub fn config(&self) {
        self.store
            .write_config(&ClusterConfig {
                pod_cidr: "10.244.0.0/16".parse().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                node_slice_prefix: 24,
                cluster_domain: "cluster.local".into(),
                routing: RoutingMode::Vxlan,
            })
            .expect("config");
    }

    pub fn put(&self, o: Object) {
        self.store.put(&o).expect("put");
    }

    pub fn bump(&self) -> u64 {
        self.store.bump().expect("bump")
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }
}

pub fn service(v: serde_json::Value) -> Object {
    Object::Service(serde_json::from_value::<Service>(v).expect("service json"))
}

pub fn slice(v: serde_json::Value) -> Object {
    Object::EndpointSlice(serde_json::from_value::<EndpointSlice>(v).expect("slice json"))
}

pub fn pod(v: serde_json::Value) -> Object {
    Object::Pod(serde_json::from_value::<Pod>(v).expect("pod json"))
}

pub fn namespace(name: &str) -> Object {
    Object::Namespace(
        serde_json::from_value::<Namespace>(json!({"metadata": {"name": name}})).expect("ns"),
    )
}

/// A ClusterIP Service.
pub fn cluster_ip(ns: &str, name: &str, ips: &[&str], ports: serde_json::Value) -> Object {
    service(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": ports, "selector": {"app": name}}
    }))
}

/// An endpoint: (ip, ready, hostname).
pub fn endpoint_slice(
    ns: &str,
    service: &str,
    endpoints: &[(&str, bool, Option<&str>)],
    ports: serde_json::Value,
) -> Object {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, ready, host)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
            if let Some(h) = host {
                e["hostname"] = json!(h);
            }
            e
        })
        .collect();
    slice(json!({
        "metadata": {"name": format!("{service}-abcde"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports
    }))
}

/// The test cluster:
/// - apps/web-service ClusterIP 10.96.0.20, ports http/80->8080 and an
///   unnamed 443; endpoints 10.244.1.2, 10.244.2.2 (ready), 10.244.2.3 (not)
/// - apps/db headless, port pg/5432; endpoints 10.244.1.5 (hostname db-0),
///   10.244.2.6 (its pod has hostname web-x, subdomain db), 10.244.2.7 (not ready)
/// - apps/empty headless without ready endpoints
/// - apps/dual ClusterIP 10.96.0.30 + fd00:10:96::30
/// - apps/ext ExternalName -> web-service.apps.svc.cluster.local
/// - apps/outside ExternalName -> www.example.test
/// - kube-system/kube-dns ClusterIP 10.96.0.10
pub fn cluster_objects() -> Vec<Object> {
    vec![
        namespace("apps"),
        namespace("default"),
        cluster_ip(
            "apps",
            "web-service",
            &["10.96.0.20"],
            json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}, {"port": 443}]),
        ),
        endpoint_slice(
            "apps",
            "web-service",
            &[
                ("10.244.1.2", true, None),
                ("10.244.2.2", true, None),
                ("10.244.2.3", false, None),
            ],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}]),
        ),
        service(json!({
            "metadata": {"name": "db", "namespace": "apps"},
            "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}], "selector": {"app": "db"}}
        })),
        endpoint_slice(
            "apps",
            "db",
            &[
                ("10.244.1.5", true, Some("db-0")),
                ("10.244.2.6", true, None),
                ("10.244.2.7", false, None),
            ],
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        ),
        pod(json!({
            "metadata": {"name": "db-x", "namespace": "apps", "labels": {"app": "db"}},
            "spec": {"hostname": "web-x", "subdomain": "db", "containers": [{"name": "c", "image": "x"}]},
            "status": {"podIP": "10.244.2.6", "conditions": [{"type": "Ready", "status": "True"}]}
        })),
        pod(json!({
            "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web-service"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"podIP": "10.244.1.2", "conditions": [{"type": "Ready", "status": "True"}]}
        })),
        service(json!({
            "metadata": {"name": "empty", "namespace": "apps"},
            "spec": {"clusterIP": "None", "selector": {"app": "none"}}
        })),
        endpoint_slice("apps", "empty", &[("10.244.1.9", false, None)], json!([])),
        cluster_ip(
            "apps",
            "dual",
            &["10.96.0.30", "fd00:10:96::30"],
            json!([{"name": "http", "port": 80}]),
        ),
        service(json!({
            "metadata": {"name": "ext", "namespace": "apps"},
            "spec": {"type": "ExternalName", "externalName": "web-service.apps.svc.cluster.local"}
        })),
        service(json!({
            "metadata": {"name": "outside", "namespace": "apps"},
            "spec": {"type": "ExternalName", "externalName": "www.example.test"}
        })),
        cluster_ip(
            "kube-system",
            "kube-dns",
            &["10.96.0.10"],
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
        ),
    ]
}

/// A server config on free loopback ports for a store.
pub fn config(store: &Path) -> ServerConfig {
    let mut c = ServerConfig::new(store.to_path_buf());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.health_listen = Some("127.0.0.1:0".parse().unwrap());
    c.ready_listen = Some("127.0.0.1:0".parse().unwrap());
    c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    c.workers = 2;
    c.upstream_timeout = Duration::from_millis(500);
    c.health_check_interval = Duration::from_millis(100);
    c
}

/// Starts a server and waits for its zone (when the store has synced).
pub fn start(c: ServerConfig) -> Server {
    let synced = Store::open(c.store.as_ref().expect("a files store")).generation() >= 1;
    let server = Server::start(c).expect("server starts");
    if synced {
        assert!(server.wait_ready(Duration::from_secs(10)), "zone loaded");
    }
    server
}

pub fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("name")
}

/// A query message.
pub fn query_message(qname: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::query();
    m.metadata.id = fastrand_id();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn fastrand_id() -> u16 {
    (Instant::now().elapsed().subsec_nanos() as u16) ^ (std::process::id() as u16)
}

/// Sends raw bytes over UDP; the raw answer (None on timeout).
pub fn udp_raw(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(packet, addr).expect("send");
    let mut buf = vec![0u8; 65535];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends raw bytes over TCP (length-prefixed); the raw answer.
pub fn tcp_raw(addr: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    Some(body)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub const BOTH: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// One query; the decoded answer (panics when there is none or it does not
/// decode: every answer must decode with hickory-proto).
pub fn ask_with(addr: SocketAddr, t: Transport, m: &Message) -> Message {
    let bytes = m.to_vec().expect("encode");
    let raw = match t {
        Transport::Udp => udp_raw(addr, &bytes),
        Transport::Tcp => tcp_raw(addr, &bytes),
    }
    .unwrap_or_else(|| panic!("no answer over {t:?} to {:?}", m.queries));
    let answer =
        Message::from_vec(&raw).unwrap_or_else(|e| panic!("answer does not decode: {e}: {raw:?}"));
    assert_eq!(answer.metadata.id, m.metadata.id, "same ID");
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    answer
}

pub fn ask(addr: SocketAddr, t: Transport, qname: &str, qtype: RecordType) -> Message {
    ask_with(addr, t, &query_message(qname, qtype, Some(1232)))
}

/// The answer section as "name ttl type data" lines (names as sent).
pub fn lines(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect()
}

/// The answers' data as text, sorted.
pub fn data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

pub fn rcode(m: &Message) -> ResponseCode {
    m.metadata.response_code
}

/// Asserts a negative answer: rcode, no answers, authoritative, the zone SOA
/// in authority.
pub fn assert_negative(m: &Message, code: ResponseCode, zone: &str) {
    assert_eq!(rcode(m), code, "{m:?}");
    assert!(m.answers.is_empty(), "{:?}", m.answers);
    assert!(m.metadata.authoritative, "AA");
    assert_eq!(
        m.authorities.len(),
        1,
        "SOA in authority: {:?}",
        m.authorities
    );
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name.to_ascii().to_lowercase(), zone);
}

/// An HTTP GET on loopback: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of a metric line (exact series text before the value).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` every 10 ms until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    podwire_testsupport::poll_every(timeout, Duration::from_millis(10), || f().then_some(()))
        .is_some()
}

/// `dig` output (+short unless extra flags say otherwise); None when dig is
/// not installed (scripts/setup installs it).
pub fn dig(addr: SocketAddr, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=3", "+tries=1"])
        .args(args)
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How the test upstream answers a name.
pub fn upstream_answer(q: &Message) -> Message {
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    let Some(query) = q.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r;
    };
    r.add_query(query.clone());
    let qname = query.name().to_ascii().to_lowercase();
    let soa = || {
        Record::from_rdata(
            name("example.test."),
            300,
            RData::SOA(SOA::new(
                name("ns.example.test."),
                name("admin.example.test."),
                1,
                60,
                60,
                600,
                60,
            )),
        )
    };
    if qname.starts_with("missing.") {
        r.metadata.response_code = ResponseCode::NXDomain;
        r.add_authority(soa());
    } else if qname.starts_with("big.") && query.query_type() == RecordType::TXT {
        for i in 0..40 {
            r.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::TXT(TXT::new(vec![format!("{i:02}-{}", "x".repeat(60))])),
            ));
        }
    } else if qname.ends_with("example.test.") || qname == "." {
        if query.query_type() == RecordType::A {
            r.add_answer(Record::from_rdata(
                query.name().clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        } else {
            r.add_authority(soa());
        }
    } else {
        r.metadata.response_code = ResponseCode::NXDomain;
        r.add_authority(soa());
    }
    if let Some(e) = &q.edns {
        let mut out = Edns::new();
        out.set_max_payload(e.max_payload().max(512));
        r.set_edns(out);
    }
    r
}

/// A DNS server of our own on loopback (UDP and TCP on one port), answering
/// with [`upstream_answer`]; UDP answers that do not fit 512 bytes (or the
/// advertised size) are sent truncated, as a real server does. `delay`
/// holds every answer back (for the concurrency test).
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TestUpstream {
    pub fn start(delay: Duration) -> TestUpstream {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
        let addr = udp.local_addr().unwrap();
        let tcp = std::net::TcpListener::bind(addr).expect("bind upstream tcp");
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        {
            let stop = Arc::clone(&stop);
            let count = Arc::clone(&udp_queries);
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(SeqCst) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    count.fetch_add(1, SeqCst);
                    let Ok(q) = Message::from_vec(&buf[..n]) else {
                        continue;
                    };
                    let limit = q.edns.as_ref().map_or(512, |e| e.max_payload().max(512)) as usize;
                    let mut r = upstream_answer(&q);
                    let mut bytes = r.to_vec().unwrap();
                    if bytes.len() > limit {
                        r.answers.clear();
                        r.metadata.truncation = true;
                        bytes = r.to_vec().unwrap();
                    }
                    if !delay.is_zero() {
                        std::thread::sleep(delay);
                    }
                    let _ = udp.send_to(&bytes, peer);
                }
            }));
        }
        {
            let stop = Arc::clone(&stop);
            let count = Arc::clone(&tcp_queries);
            threads.push(std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    let Ok((mut s, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut body).is_err() {
                        continue;
                    }
                    count.fetch_add(1, SeqCst);
                    let Ok(q) = Message::from_vec(&body) else {
                        continue;
                    };
                    let bytes = upstream_answer(&q).to_vec().unwrap();
                    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&bytes);
                    let _ = s.write_all(&framed);
                }
            }));
        }
        TestUpstream {
            addr,
            udp_queries,
            tcp_queries,
            stop,
            threads,
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A UDP relay on loopback that forwards every query to `target` and the
/// answer back: an upstream that loops back to the server under test.
pub struct Relay {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind relay");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = s.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while !stop2.load(SeqCst) {
                let Ok((n, peer)) = s.recv_from(&mut buf) else {
                    continue;
                };
                let packet = buf[..n].to_vec();
                let s2 = s.try_clone().expect("clone");
                std::thread::spawn(move || {
                    if let Some(answer) = udp_raw(target, &packet) {
                        let _ = s2.send_to(&answer, peer);
                    }
                });
            }
        });
        Relay {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

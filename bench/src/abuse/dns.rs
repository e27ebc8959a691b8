//! The DNS part of the abuse (fault 2, TCP starvation): `podwire dns` with
//! its default limits (--tcp-max-connections 1024, --tcp-max-per-client 64)
//! on loopback, flooded by more TCP clients than it has slots, each keeping
//! its connection busy with one query every 4 s (never idle long enough to
//! time out). Measured: whether a new TCP client is answered and how fast,
//! UDP answers during the flood, what the flood's own clients saw, and the
//! evictions the server counts on /metrics. Clients bind distinct
//! 127.0.x.y source addresses, as distinct hosts would arrive.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

use super::Row;
use crate::ns::{TempDir, check_interrupted};
use crate::stats::Stats;

const PART: &str = "dns";
/// The name every client asks for, and its answer.
const NAME: &str = "web.abuse.svc.cluster.local";
const ANSWER: [u8; 4] = [10, 96, 0, 20];
/// The server's default TCP table size (`--tcp-max-connections`).
const SLOTS: usize = 1024;
/// What the issue allows a new client while every slot is busy.
const NEWCOMER_TARGET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Settings {
    pub podwire: PathBuf,
    /// TCP clients in the flood.
    pub clients: usize,
    /// Seconds between one flood client's queries.
    pub interval: Duration,
    /// How long the flood lasts once every client has connected.
    pub hold: Duration,
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raises this process's open-file limit to its hard limit (children
/// inherit it): the flood needs a descriptor per client, the server one
/// per connection.
pub fn raise_nofile() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on 127.0.0.1")
}

fn write(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, value.to_string()).with_context(|| format!("write {}", path.display()))
}

/// A files store with namespace `abuse` and Service `web` at 10.96.0.20.
fn write_store(root: &Path) -> Result<()> {
    write(
        &root.join("config.json"),
        &json!({"podCIDR": "10.244.0.0/16", "serviceCIDR": "10.96.0.0/12", "nodeSlicePrefix": 24,
                "clusterDomain": "cluster.local", "routing": "vxlan"}),
    )?;
    write(
        &root.join("namespaces/_cluster/abuse.json"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "abuse"}}),
    )?;
    write(
        &root.join("services/abuse/web.json"),
        &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "abuse"},
                "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )?;
    std::fs::write(root.join("generation"), "1\n").context("write generation")
}

fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in NAME.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(63));
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// A reply to query `id`: NOERROR with one answer, the Service's address.
fn is_answer(reply: &[u8], id: u16) -> bool {
    reply.len() >= 16
        && reply[..2] == id.to_be_bytes()
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1
        && reply[reply.len() - 4..] == ANSWER
}

/// A TCP connection from `source` to the server.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(3))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// One query on an open connection: answered or not (closed, reset, late).
fn ask_tcp(stream: &mut TcpStream, id: u16) -> bool {
    let q = query(id);
    let mut framed = u16::try_from(q.len()).unwrap_or(0).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    if stream.write_all(&framed).is_err() {
        return false;
    }
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).is_err() {
        return false;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).is_ok() && is_answer(&body, id)
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200").then_some(text)
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What the flood's clients saw.
#[derive(Default)]
struct Flood {
    connected: AtomicUsize,
    answered: AtomicUsize,
    /// Queries whose connection had been closed (an eviction).
    dropped: AtomicUsize,
    /// Queries not answered even on a fresh connection.
    failed: AtomicUsize,
    reconnects: AtomicUsize,
}

/// The source address of flood client `i`: 50 clients per address (under
/// the per-client limit of 64), addresses 127.0.1.1 onwards.
fn source(i: usize) -> Ipv4Addr {
    let host = i / 50;
    Ipv4Addr::new(
        127,
        1 + u8::try_from(host / 250).unwrap_or(0),
        1,
        u8::try_from(host % 250 + 1).unwrap_or(1),
    )
}

/// One flood client: connects at `start`, then queries every `interval`
/// until `stop`; a closed connection is reopened once per query.
fn client(
    i: usize,
    server: SocketAddr,
    s: &Settings,
    start: Instant,
    stop: &AtomicBool,
    f: &Flood,
) {
    std::thread::sleep(start.saturating_duration_since(Instant::now()));
    let src = source(i);
    let Ok(mut stream) = connect_from(src, server) else {
        f.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    f.connected.fetch_add(1, Ordering::Relaxed);
    let mut id = u16::try_from(i % 60000).unwrap_or(0);
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        if ask_tcp(&mut stream, id) {
            f.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            f.dropped.fetch_add(1, Ordering::Relaxed);
            f.reconnects.fetch_add(1, Ordering::Relaxed);
            match connect_from(src, server) {
                Ok(fresh) => {
                    stream = fresh;
                    if ask_tcp(&mut stream, id) {
                        f.answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        f.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    f.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        next += s.interval;
        // Sleep in short steps so the end of the flood is seen at once.
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
    }
}

/// Runs the flood and returns its rows.
pub fn run(s: &Settings) -> Result<Vec<Row>> {
    let nofile = raise_nofile()?;
    if nofile < (s.clients as u64) * 2 + 256 {
        bail!(
            "open-file limit {nofile} is too low for {} clients (raise the hard limit: ulimit -Hn)",
            s.clients
        );
    }
    let tmp = TempDir::create("abuse-dns")?;
    let store = tmp.path().join("store");
    write_store(&store)?;
    let port = free_port()?;
    let (ready_port, metrics_port, upstream_port) = (free_port()?, free_port()?, free_port()?);
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::File::create(tmp.path().join("dns.log")).context("create dns.log")?;
    // The upstream is a closed loopback port: nothing is forwarded, and
    // the loop probe stays on loopback.
    let child = Command::new(&s.podwire)
        .args(["dns", "--source"])
        .arg(format!("files:{}", store.display()))
        .args(["--listen", &server.to_string()])
        .args(["--upstream", &format!("127.0.0.1:{upstream_port}")])
        .args(["--health-listen", "off"])
        .args(["--ready-listen", &format!("127.0.0.1:{ready_port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .env("PODWIRE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {} dns", s.podwire.display()))?;
    let _server = Proc(child);
    let metrics_addr: SocketAddr = ([127, 0, 0, 1], metrics_port).into();
    let ready_addr: SocketAddr = ([127, 0, 0, 1], ready_port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(ready_addr, "/ready").is_none() {
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!(
                "podwire dns did not become ready in 30 s (log: {})",
                std::fs::read_to_string(tmp.path().join("dns.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let flood = Flood::default();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now() + Duration::from_millis(200);
    // Connections spread over one interval, so queries are spread too.
    let spread = s.interval.as_secs_f64() / s.clients.max(1) as f64;
    let full_at = t0 + s.interval + Duration::from_secs(1);
    let end = full_at + s.hold;
    let udp_stats = Mutex::new((0usize, 0usize, Vec::<Duration>::new()));
    let newcomers = Mutex::new(Vec::<(bool, Duration)>::new());
    std::thread::scope(|scope| -> Result<()> {
        for i in 0..s.clients {
            let start = t0 + Duration::from_secs_f64(spread * i as f64);
            let (flood, stop) = (&flood, &stop);
            let spawned = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn_scoped(scope, move || client(i, server, s, start, stop, flood));
            if let Err(err) = spawned {
                // The clients already started end at once instead of holding the scope.
                stop.store(true, Ordering::SeqCst);
                return Err(err).context("spawn a flood client");
            }
        }
        let (stop_ref, udp_stats) = (&stop, &udp_stats);
        scope.spawn(move || {
            let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
                return;
            };
            let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 1500];
            let mut id: u16 = 0;
            while !stop_ref.load(Ordering::Relaxed) {
                id = id.wrapping_add(1);
                let sent = Instant::now();
                let ok = socket.send_to(&query(id), server).is_ok()
                    && loop {
                        match socket.recv_from(&mut buf) {
                            Ok((n, _)) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                                break is_answer(&buf[..n], id);
                            }
                            Ok(_) => continue,
                            Err(_) => break false,
                        }
                    };
                if let Ok(mut u) = udp_stats.lock() {
                    u.0 += 1;
                    if ok {
                        u.1 += 1;
                        u.2.push(sent.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Newcomers once every slot is held, spread over the hold time.
        let rounds = 5u32;
        for k in 0..rounds {
            let at = full_at + s.hold * k / rounds;
            while Instant::now() < at {
                if check_interrupted().is_err() {
                    stop.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let started = Instant::now();
            let ok = connect_from(Ipv4Addr::new(127, 0, 2, 1), server)
                .map(|mut c| ask_tcp(&mut c, 7))
                .unwrap_or(false);
            if let Ok(mut n) = newcomers.lock() {
                n.push((ok, started.elapsed()));
            }
        }
        while Instant::now() < end && check_interrupted().is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    check_interrupted()?;

    let metrics = http_get(metrics_addr, "/metrics").context("read /metrics")?;
    let full = metric(&metrics, "podwire_dns_tcp_evictions_total{reason=\"full\"}").unwrap_or(0.0);
    let per_client = metric(
        &metrics,
        "podwire_dns_tcp_evictions_total{reason=\"per_client\"}",
    )
    .unwrap_or(0.0);
    let newcomers = newcomers.into_inner().unwrap_or_default();
    let (udp_sent, udp_ok, udp_times) = udp_stats.into_inner().unwrap_or_default();
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    let answered_newcomers = newcomers.iter().filter(|(ok, _)| *ok).count();
    let slowest = newcomers.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let newcomer_ms: Vec<String> = newcomers
        .iter()
        .map(|(ok, d)| {
            format!(
                "{:.1}{}",
                d.as_secs_f64() * 1e3,
                if *ok { "" } else { " (no answer)" }
            )
        })
        .collect();
    let udp = Stats::of(&udp_times);
    let over = s.clients.saturating_sub(SLOTS);
    Ok(vec![
        Row::new(
            PART,
            format!(
                "new TCP client while {} busy clients (1 query/{} s) hold {SLOTS} slots",
                s.clients,
                s.interval.as_secs()
            ),
            format!(
                "{answered_newcomers}/{} answered; connect+answer ms: {}",
                newcomers.len(),
                newcomer_ms.join(", ")
            ),
            format!("answered within {} s", NEWCOMER_TARGET.as_secs()),
            !newcomers.is_empty()
                && answered_newcomers == newcomers.len()
                && slowest <= NEWCOMER_TARGET,
        ),
        Row::new(
            PART,
            "UDP during the TCP flood (one query every 100 ms)",
            format!(
                "{udp_ok}/{udp_sent} answered; latency median {:.2} ms, max {:.2} ms",
                udp.map_or(0.0, |u| u.median_ms),
                udp.map_or(0.0, |u| u.max_ms)
            ),
            "every query answered",
            udp_sent > 0 && udp_ok == udp_sent,
        ),
        Row::new(
            PART,
            "the flood's own clients",
            format!(
                "{}/{} connected; {} queries answered, {} found their connection evicted and \
                 reconnected, {} not answered after reconnecting",
                load(&flood.connected),
                s.clients,
                load(&flood.answered),
                load(&flood.dropped),
                load(&flood.failed)
            ),
            "all connect; every query answered (reconnect allowed)",
            load(&flood.connected) == s.clients && load(&flood.failed) == 0,
        ),
        Row::new(
            PART,
            "evictions on /metrics",
            format!(
                "podwire_dns_tcp_evictions_total full {full}, per_client {per_client}; \
                 clients over the table {over}, reconnects seen {}",
                load(&flood.reconnects)
            ),
            format!("full >= {over} (clients over {SLOTS}), per_client 0"),
            full >= over as f64 && per_client == 0.0 && (over == 0 || full > 0.0),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::{ANSWER, is_answer, query, source};
    use std::net::Ipv4Addr;

    #[test]
    fn fifty_clients_per_source_address() {
        assert_eq!(source(0), Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(source(49), Ipv4Addr::new(127, 1, 1, 1));
        assert_eq!(source(50), Ipv4Addr::new(127, 1, 1, 2));
        assert_eq!(source(1029), Ipv4Addr::new(127, 1, 1, 21));
    }

    #[test]
    fn an_answer_is_recognised() {
        let mut reply = query(9);
        reply[2] |= 0x80;
        reply[7] = 1;
        reply.extend([0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        reply.extend(ANSWER);
        assert!(is_answer(&reply, 9));
        assert!(!is_answer(&reply, 10));
        reply[3] = 3;
        assert!(!is_answer(&reply, 9));
    }
}

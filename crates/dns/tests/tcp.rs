//! DNS over TCP under pressure: with every connection slot held by clients
//! that keep querying (so none ever idles out), a new client is still
//! answered at once, and one client address opening more connections than
//! its limit cannot take the slots of others. Clients bind distinct
//! 127.0.0.x source addresses (all of 127.0.0.0/8 is loopback) before
//! connecting, as distinct hosts would.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use socket2::{Domain, Protocol, Socket, Type};

const NAME: &str = "web-service.apps.svc.cluster.local.";

/// A TCP connection to `server` from `source` (port chosen by the kernel),
/// whose reads give up after `timeout`.
fn connect_from(source: Ipv4Addr, server: SocketAddr, timeout: Duration) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    socket
        .connect_timeout(&server.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream
}

/// One query on an open connection; None when no answer came (closed,
/// reset or timed out).
fn query(stream: &mut TcpStream) -> Option<Message> {
    let bytes = query_message(NAME, RecordType::A, None)
        .to_vec()
        .expect("encode");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).ok()?;
    Message::from_vec(&body).ok()
}

fn answered(m: Option<Message>) -> bool {
    m.is_some_and(|m| data(&m) == ["10.96.0.20"])
}

fn metric_line(server: &podwire_dns::Server, prefix: &str) -> String {
    let (_, text) = http_get(server.ops_addr("metrics").expect("metrics"), "/metrics");
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .to_string()
}

fn small_tcp_config(
    f: &Fixture,
    max_connections: usize,
    max_per_client: usize,
) -> podwire_dns::ServerConfig {
    let mut c = config(f.root());
    c.tcp.max_connections = max_connections;
    c.tcp.max_per_client = max_per_client;
    c
}

#[test]
fn a_new_client_is_answered_when_busy_clients_hold_every_slot() {
    const SLOTS: u8 = 16;
    let f = Fixture::cluster();
    let s = start(small_tcp_config(&f, usize::from(SLOTS), 4));
    let server = s.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    // Each busy client queries every 100 ms: never idle long enough for the
    // server's idle timeout, so the slots are never given back on their own.
    let busy: Vec<_> = (0..SLOTS)
        .map(|i| {
            let (stop, ready, closed) = (stop.clone(), ready.clone(), closed.clone());
            std::thread::spawn(move || {
                let source = Ipv4Addr::new(127, 0, 0, 2 + i);
                let mut stream = connect_from(source, server, Duration::from_secs(3));
                let mut first = true;
                while !stop.load(SeqCst) {
                    if !answered(query(&mut stream)) {
                        closed.fetch_add(1, SeqCst);
                        return;
                    }
                    if std::mem::take(&mut first) {
                        ready.fetch_add(1, SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.load(SeqCst) < usize::from(SLOTS) {
        assert!(
            Instant::now() < deadline,
            "only {} busy clients were served",
            ready.load(SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every slot taken and in use: a newcomer must still get its answer.
    let started = Instant::now();
    let mut newcomer = connect_from(
        Ipv4Addr::new(127, 0, 0, 100),
        server,
        Duration::from_secs(1),
    );
    let answer = query(&mut newcomer);
    let took = started.elapsed();
    // Long enough for every busy client to query again and see whether it
    // is still connected.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, SeqCst);
    for t in busy {
        let _ = t.join();
    }
    assert!(
        answered(answer),
        "a new TCP client got no answer within 1 s while {SLOTS} busy clients held every slot"
    );
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(closed.load(SeqCst), 1, "exactly one busy client made room");
    assert_eq!(
        metric_line(&s, "podwire_dns_tcp_evictions_total{reason=\"full\"}"),
        "podwire_dns_tcp_evictions_total{reason=\"full\"} 1"
    );
    // UDP is not affected by any of it.
    let m = ask(server, Transport::Udp, NAME, RecordType::A);
    assert_eq!(data(&m), ["10.96.0.20"]);
}

#[test]
fn one_client_address_cannot_take_every_slot() {
    const SLOTS: usize = 16;
    const PER_CLIENT: usize = 4;
    let f = Fixture::cluster();
    let s = start(small_tcp_config(&f, SLOTS, PER_CLIENT));
    let server = s.local_addr();
    let timeout = Duration::from_secs(1);
    // One source opens as many connections as there are slots.
    let hog_ip = Ipv4Addr::new(127, 0, 0, 2);
    let mut hog: Vec<TcpStream> = Vec::new();
    for _ in 0..SLOTS {
        let mut stream = connect_from(hog_ip, server, timeout);
        assert!(
            answered(query(&mut stream)),
            "the newest hog connection is served"
        );
        hog.push(stream);
    }
    // Everyone else still gets in, and stays in.
    let mut others: Vec<TcpStream> = (0..SLOTS - PER_CLIENT)
        .map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, 3 + i as u8);
            let mut stream = connect_from(source, server, timeout);
            assert!(
                answered(query(&mut stream)),
                "client {source} got no answer: one address holds the slots"
            );
            stream
        })
        .collect();
    for (i, stream) in others.iter_mut().enumerate() {
        assert!(answered(query(stream)), "client {i} was pushed out");
    }
    // The hog kept only its newest connections, up to its limit.
    let alive = hog.iter_mut().map(query).filter(|m| m.is_some()).count();
    assert_eq!(alive, PER_CLIENT, "connections left to the one address");
    assert_eq!(
        metric_line(&s, "podwire_dns_tcp_evictions_total{reason=\"per_client\"}"),
        format!(
            "podwire_dns_tcp_evictions_total{{reason=\"per_client\"}} {}",
            SLOTS - PER_CLIENT
        )
    );
}

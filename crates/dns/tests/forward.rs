//! Names outside the cluster: the hosts file (and its reload), forwarding to
//! a test upstream on loopback, failover when an upstream is dead, TCP retry
//! on truncation, the cache (hits and misses in the metrics, negative
//! caching), the bound on concurrent upstream queries, loop detection, and
//! the operations endpoints.

mod common;

use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn metrics(s: &podwire_dns::Server) -> String {
    let (code, body) = http_get(s.ops_addr("metrics").unwrap(), "/metrics");
    assert_eq!(code, 200);
    body
}

#[test]
fn forwards_and_caches_positive_answers() {
    let up = TestUpstream::start(Duration::ZERO);
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    let s = start(c);
    for t in BOTH {
        let m = ask(s.local_addr(), t, "www.example.test.", RecordType::A);
        assert_eq!(rcode(&m), ResponseCode::NoError);
        assert_eq!(data(&m), ["192.0.2.1"]);
        assert!(!m.metadata.authoritative, "forwarded answers are not ours");
    }
    let sent = up.udp_queries.load(SeqCst);
    // The second query (TCP above) was a cache hit; so is this, whatever the case.
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "WWW.Example.TEST.",
        RecordType::A,
    );
    assert_eq!(
        lines(&m.answers)[0].split(' ').next(),
        Some("WWW.Example.TEST.")
    );
    assert!(
        m.answers[0].ttl <= 30,
        "TTL capped to the cache's 30 s: {}",
        m.answers[0].ttl
    );
    assert_eq!(up.udp_queries.load(SeqCst), sent, "answered from the cache");
    let text = metrics(&s);
    assert_eq!(
        metric(&text, "podwire_dns_cache_hits_total"),
        Some(2.0),
        "{text}"
    );
    assert!(metric(&text, "podwire_dns_cache_misses_total").unwrap() >= 1.0);
    assert!(
        text.contains("podwire_dns_requests_total{proto=\"udp\",type=\"A\",rcode=\"NOERROR\"}"),
        "{text}"
    );
    assert!(
        text.contains("podwire_dns_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn caches_negative_answers() {
    let up = TestUpstream::start(Duration::ZERO);
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    let s = start(c);
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "missing.example.test.",
        RecordType::A,
    );
    assert_eq!(rcode(&m), ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);
    let sent = up.udp_queries.load(SeqCst);
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "missing.example.test.",
        RecordType::A,
    );
    assert_eq!(rcode(&m), ResponseCode::NXDomain);
    assert_eq!(up.udp_queries.load(SeqCst), sent, "NXDOMAIN cached");
    // NODATA too.
    ask(
        s.local_addr(),
        Transport::Udp,
        "www.example.test.",
        RecordType::MX,
    );
    let sent = up.udp_queries.load(SeqCst);
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "www.example.test.",
        RecordType::MX,
    );
    assert_eq!(rcode(&m), ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(up.udp_queries.load(SeqCst), sent, "NODATA cached");
}

#[test]
fn cluster_answers_are_not_cached() {
    let up = TestUpstream::start(Duration::ZERO);
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    let s = start(c);
    // The loop probe goes out first.
    assert!(eventually(Duration::from_secs(3), || up
        .udp_queries
        .load(SeqCst)
        >= 1));
    let sent = up.udp_queries.load(SeqCst);
    for _ in 0..3 {
        ask(
            s.local_addr(),
            Transport::Udp,
            "web-service.apps.svc.cluster.local.",
            RecordType::A,
        );
    }
    assert_eq!(s.state().cache.len(), 0);
    assert_eq!(up.udp_queries.load(SeqCst), sent, "never forwarded");
}

#[test]
fn fails_over_when_an_upstream_is_dead() {
    let up = TestUpstream::start(Duration::ZERO);
    // A loopback port with nothing behind it (bound, then closed).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A port that swallows queries (timeouts rather than refusals).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![dead, silent.local_addr().unwrap(), up.addr];
    c.cache.capacity = 0;
    let s = start(c);
    for i in 0..4 {
        let started = Instant::now();
        let m = ask(
            s.local_addr(),
            Transport::Udp,
            &format!("n{i}.example.test."),
            RecordType::A,
        );
        assert_eq!(data(&m), ["192.0.2.1"], "query {i}");
        eprintln!("query {i}: {:?}", started.elapsed());
    }
    let text = metrics(&s);
    let dead_failures = metric(
        &text,
        &format!("podwire_dns_upstream_failures_total{{upstream=\"{dead}\"}}"),
    );
    assert!(dead_failures.unwrap_or(0.0) >= 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            &format!("podwire_dns_upstream_healthy{{upstream=\"{dead}\"}}")
        ),
        Some(0.0),
        "down after two failures: {text}"
    );
    // Once down, the dead ones are skipped: answers come at once.
    let started = Instant::now();
    ask(
        s.local_addr(),
        Transport::Udp,
        "fast.example.test.",
        RecordType::A,
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn upstream_comes_back_after_a_health_check() {
    let f = Fixture::cluster();
    // Reserve a port, keep it closed while the server finds it dead.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let backup = TestUpstream::start(Duration::ZERO);
    let mut c = config(f.root());
    c.upstreams = vec![addr, backup.addr];
    c.cache.capacity = 0;
    let s = start(c);
    for i in 0..3 {
        ask(
            s.local_addr(),
            Transport::Udp,
            &format!("h{i}.example.test."),
            RecordType::A,
        );
    }
    assert!(!s.state().upstreams.list[0].healthy());
    // Now something answers on that port.
    let Ok(socket) = std::net::UdpSocket::bind(addr) else {
        eprintln!("port {addr} was taken meanwhile; skipping");
        return;
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 512];
        while !stop2.load(SeqCst) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let q = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
                let _ = socket.send_to(&upstream_answer(&q).to_vec().unwrap(), peer);
            }
        }
    });
    assert!(eventually(Duration::from_secs(3), || s
        .state()
        .upstreams
        .list[0]
        .healthy()));
    stop.store(true, SeqCst);
    t.join().unwrap();
}

#[test]
fn retries_over_tcp_when_the_upstream_truncates() {
    let up = TestUpstream::start(Duration::ZERO);
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    let s = start(c);
    let m = ask(
        s.local_addr(),
        Transport::Tcp,
        "big.example.test.",
        RecordType::TXT,
    );
    assert_eq!(m.answers.len(), 40);
    assert!(up.tcp_queries.load(SeqCst) >= 1, "retried over TCP");
    // Over UDP the client gets TC (the answer is over 1232 bytes), from the cache.
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "big.example.test.",
        RecordType::TXT,
    );
    assert!(m.metadata.truncation);
}

#[test]
fn external_name_target_resolved_upstream() {
    let up = TestUpstream::start(Duration::ZERO);
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    let s = start(c);
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "outside.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(
            lines(&m.answers),
            [
                "outside.apps.svc.cluster.local. 5 CNAME www.example.test.",
                "www.example.test. 300 A 192.0.2.1"
            ]
        );
    }
}

#[test]
fn concurrency_bound_refuses_beyond_it() {
    let up = TestUpstream::start(Duration::from_millis(300));
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.upstreams = vec![up.addr];
    c.max_concurrent = 1;
    c.upstream_timeout = Duration::from_secs(2);
    let s = start(c);
    let addr = s.local_addr();
    let slow =
        std::thread::spawn(move || ask(addr, Transport::Udp, "slow.example.test.", RecordType::A));
    std::thread::sleep(Duration::from_millis(100));
    let m = ask(addr, Transport::Udp, "other.example.test.", RecordType::A);
    assert_eq!(rcode(&m), ResponseCode::Refused);
    assert_eq!(data(&slow.join().unwrap()), ["192.0.2.1"]);
    let text = metrics(&s);
    assert_eq!(
        metric(&text, "podwire_dns_forward_refused_total"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn never_forwards_to_itself() {
    let f = Fixture::cluster();
    // Bind to learn a free port, then give the server its own address as upstream.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut c = config(f.root());
    c.listen = port;
    c.upstreams = vec![port];
    let s = start(c);
    assert!(
        s.state().upstreams.list.is_empty(),
        "its own address is not an upstream"
    );
    let started = Instant::now();
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "www.example.test.",
        RecordType::A,
    );
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn detects_an_upstream_that_loops_back() {
    let f = Fixture::cluster();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = Relay::start(port);
    let mut c = config(f.root());
    c.listen = port;
    c.upstreams = vec![relay.addr];
    let s = start(c);
    assert!(
        eventually(Duration::from_secs(5), || s.state().upstreams.list[0]
            .looping()),
        "the loop probe came back through the relay"
    );
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "www.example.test.",
        RecordType::A,
    );
    assert_eq!(rcode(&m), ResponseCode::ServFail);
    let text = metrics(&s);
    assert_eq!(
        metric(
            &text,
            &format!(
                "podwire_dns_upstream_healthy{{upstream=\"{}\"}}",
                relay.addr
            )
        ),
        Some(0.0)
    );
}

#[test]
fn hosts_file_answers_and_reloads() {
    let f = Fixture::cluster();
    let hosts = f.dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "192.0.2.10 printer.lan printer\n2001:db8::10 printer.lan\n",
    )
    .unwrap();
    let mut c = config(f.root());
    c.hosts = Some(hosts.clone());
    let s = start(c);
    let a = s.local_addr();
    assert!(eventually(Duration::from_secs(3), || data(&ask(
        a,
        Transport::Udp,
        "printer.lan.",
        RecordType::A
    )) == ["192.0.2.10"]));
    for t in BOTH {
        assert_eq!(
            data(&ask(a, t, "Printer.LAN.", RecordType::AAAA)),
            ["2001:db8::10"]
        );
        assert_eq!(
            data(&ask(a, t, "10.2.0.192.in-addr.arpa.", RecordType::PTR)),
            ["printer.lan."]
        );
        let m = ask(a, t, "printer.", RecordType::MX);
        assert_eq!(
            rcode(&m),
            ResponseCode::NoError,
            "a known name without that type: NODATA"
        );
        assert!(m.answers.is_empty());
    }
    std::fs::write(&hosts, "192.0.2.11 printer.lan\n192.0.2.12 scanner.lan\n").unwrap();
    assert!(eventually(Duration::from_secs(3), || {
        data(&ask(a, Transport::Udp, "printer.lan.", RecordType::A)) == ["192.0.2.11"]
    }));
    assert_eq!(
        data(&ask(a, Transport::Udp, "scanner.lan.", RecordType::A)),
        ["192.0.2.12"]
    );
}

#[test]
fn operations_endpoints() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let (code, body) = http_get(s.ops_addr("health").unwrap(), "/health");
    assert_eq!((code, body.trim()), (200, "OK"));
    assert_eq!(http_get(s.ops_addr("ready").unwrap(), "/ready").0, 200);
    assert_eq!(http_get(s.ops_addr("health").unwrap(), "/nope").0, 404);
    ask(
        s.local_addr(),
        Transport::Tcp,
        "nope.apps.svc.cluster.local.",
        RecordType::AAAA,
    );
    let text = metrics(&s);
    assert!(
        text.contains(
            "podwire_dns_requests_total{proto=\"tcp\",type=\"AAAA\",rcode=\"NXDOMAIN\"} 1"
        ),
        "{text}"
    );
    assert_eq!(metric(&text, "podwire_dns_zone_generation"), Some(1.0));
    assert!(metric(&text, "podwire_dns_zone_services").unwrap() >= 6.0);
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn an_authoritative_server_says_nxdomain_for_names_it_does_not_have() {
    let f = Fixture::cluster();
    let hosts = f.dir.path().join("hosts");
    std::fs::write(&hosts, "192.0.2.10 external.example.com\n").unwrap();
    // No upstream: without authority, an unknown name is SERVFAIL.
    let mut c = config(f.root());
    c.hosts = Some(hosts.clone());
    let plain = start(c.clone());
    assert!(eventually(Duration::from_secs(3), || data(&ask(
        plain.local_addr(),
        Transport::Udp,
        "external.example.com.",
        RecordType::A
    )) == ["192.0.2.10"]));
    assert_eq!(
        rcode(&ask(
            plain.local_addr(),
            Transport::Udp,
            "nosuch.",
            RecordType::A
        )),
        ResponseCode::ServFail
    );
    drop(plain);
    // Authoritative for the root (the lab's outside world): NXDOMAIN, AA.
    c.authoritative = vec![".".into()];
    let s = start(c);
    let a = s.local_addr();
    assert!(eventually(Duration::from_secs(3), || data(&ask(
        a,
        Transport::Udp,
        "external.example.com.",
        RecordType::A
    )) == ["192.0.2.10"]));
    for t in BOTH {
        for name in ["nosuch.", "nosuch.example.com.", "web.default.svc.example."] {
            let m = ask(a, t, name, RecordType::A);
            assert_eq!(rcode(&m), ResponseCode::NXDomain, "{name}");
            assert!(m.metadata.authoritative, "{name}");
        }
    }
    // The cluster zone still answers as before.
    assert_eq!(
        rcode(&ask(
            a,
            Transport::Udp,
            "web-service.apps.svc.cluster.local.",
            RecordType::A
        )),
        ResponseCode::NoError
    );
}

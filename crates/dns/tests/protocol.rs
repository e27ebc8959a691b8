//! The protocol: UDP and TCP on one port, EDNS0 sizes honoured, TC when an
//! answer does not fit (and the whole answer over TCP), FORMERR for several
//! questions, NOTIMP for other opcodes, REFUSED for zone transfers and
//! other classes, BADVERS, and malformed packets that never stop the server.

mod common;

use common::*;
use hickory_proto::op::{Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use serde_json::json;

/// A headless Service with `n` ready endpoints (10.244.0.1..).
fn big_service(f: &Fixture, n: usize) {
    let ips: Vec<String> = (1..=n)
        .map(|i| format!("10.244.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let eps: Vec<(&str, bool, Option<&str>)> =
        ips.iter().map(|ip| (ip.as_str(), true, None)).collect();
    f.put(service(json!({
        "metadata": {"name": "big", "namespace": "apps"},
        "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
    })));
    f.put(endpoint_slice(
        "apps",
        "big",
        &eps,
        json!([{"name": "http", "port": 80}]),
    ));
    f.bump();
}

#[test]
fn edns_size_truncation_and_tcp_retry() {
    let f = Fixture::cluster();
    big_service(&f, 60); // 60 x 16 bytes of A records: over 512, under 1232
    let s = start(config(f.root()));
    let a = s.local_addr();
    let name = "big.apps.svc.cluster.local.";

    // No EDNS: 512 bytes at most -> TC, nothing in the sections.
    let m = ask_with(a, Transport::Udp, &query_message(name, RecordType::A, None));
    assert!(m.metadata.truncation, "TC without EDNS");
    assert!(m.answers.is_empty());
    assert!(m.edns.is_none(), "no OPT when the query had none");
    // EDNS advertising 4096: we send at most 1232, and this fits.
    let m = ask_with(
        a,
        Transport::Udp,
        &query_message(name, RecordType::A, Some(4096)),
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    // EDNS advertising 512: TC.
    let m = ask_with(
        a,
        Transport::Udp,
        &query_message(name, RecordType::A, Some(512)),
    );
    assert!(m.metadata.truncation);
    // TCP: everything.
    let m = ask_with(a, Transport::Tcp, &query_message(name, RecordType::A, None));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);

    // SRV with glue over 512 without EDNS: the glue goes first, and if the
    // answers alone do not fit either, TC.
    let m = ask_with(
        a,
        Transport::Udp,
        &query_message(
            "_http._tcp.big.apps.svc.cluster.local.",
            RecordType::SRV,
            Some(1232),
        ),
    );
    assert!(m.metadata.truncation, "60 SRV records exceed 1232 bytes");
    let m = ask_with(
        a,
        Transport::Tcp,
        &query_message(
            "_http._tcp.big.apps.svc.cluster.local.",
            RecordType::SRV,
            None,
        ),
    );
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.additionals.len(), 60);
}

#[test]
fn additional_records_are_dropped_before_truncating() {
    let f = Fixture::cluster();
    big_service(&f, 6); // 6 SRV fit in 512 bytes, their glue does not
    let s = start(config(f.root()));
    let m = ask_with(
        s.local_addr(),
        Transport::Udp,
        &query_message(
            "_http._tcp.big.apps.svc.cluster.local.",
            RecordType::SRV,
            None,
        ),
    );
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 6);
    assert!(m.additionals.is_empty(), "glue dropped to fit 512 bytes");
}

fn raw_query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_message(name, qtype, None).to_vec().unwrap()
}

#[test]
fn several_questions_get_formerr() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let mut m = query_message("web-service.apps.svc.cluster.local.", RecordType::A, None);
    m.add_query(Query::query(
        name("db.apps.svc.cluster.local."),
        RecordType::A,
    ));
    for t in BOTH {
        let r = ask_with(s.local_addr(), t, &m);
        assert_eq!(rcode(&r), ResponseCode::FormErr);
    }
    // No question at all: FORMERR too.
    let mut none = raw_query("a.", RecordType::A);
    none[5] = 0;
    none.truncate(12);
    let r = Message::from_vec(&udp_raw(s.local_addr(), &none).unwrap()).unwrap();
    assert_eq!(rcode(&r), ResponseCode::FormErr);
}

#[test]
fn other_opcodes_get_notimp() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut m = query_message("web-service.apps.svc.cluster.local.", RecordType::A, None);
        m.metadata.op_code = op;
        for t in BOTH {
            let r = ask_with(s.local_addr(), t, &m);
            assert_eq!(rcode(&r), ResponseCode::NotImp, "{op:?}");
            assert_eq!(r.metadata.op_code, op);
        }
    }
}

#[test]
fn zone_transfers_and_other_classes_are_refused() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        for t in BOTH {
            let r = ask_with(
                s.local_addr(),
                t,
                &query_message("cluster.local.", qtype, None),
            );
            assert_eq!(rcode(&r), ResponseCode::Refused, "{qtype}");
        }
    }
    let mut m = query_message("web-service.apps.svc.cluster.local.", RecordType::A, None);
    m.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        rcode(&ask_with(s.local_addr(), Transport::Udp, &m)),
        ResponseCode::Refused
    );
}

#[test]
fn edns_version_above_zero_gets_badvers() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let mut m = query_message(
        "web-service.apps.svc.cluster.local.",
        RecordType::A,
        Some(1232),
    );
    if let Some(e) = m.edns.as_mut() {
        e.set_version(1);
    }
    let r = ask_with(s.local_addr(), Transport::Udp, &m);
    // 16 is BADVERS in an OPT's extended rcode (BADSIG to a TSIG reader).
    assert_eq!(u16::from(rcode(&r)), 16);
}

#[test]
fn malformed_packets_never_stop_the_server() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let a = s.local_addr();
    let good = raw_query("web-service.apps.svc.cluster.local.", RecordType::A);
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 11],
        vec![0xff; 12],
        vec![0; 512],
        vec![0xAB; 1400],
    ];
    // Every prefix of a good query, and bit flips of each byte.
    for cut in 0..good.len() {
        packets.push(good[..cut].to_vec());
    }
    for i in 0..good.len() {
        for bit in [0x01u8, 0x40, 0x80] {
            let mut p = good.clone();
            p[i] ^= bit;
            packets.push(p);
        }
    }
    // A compression loop in the question, a label past the end, counts
    // larger than the packet.
    let mut looped = good[..12].to_vec();
    looped.extend([0xC0, 12, 0, 1, 0, 1]);
    packets.push(looped);
    let mut long_label = good[..12].to_vec();
    long_label.extend([63, b'a', b'b']);
    packets.push(long_label);
    let mut counts = good.clone();
    counts[7] = 200;
    counts[11] = 200;
    packets.push(counts);
    let mut seed = 0x2545F4914F6CDD1Du64;
    for _ in 0..300 {
        let len = (seed % 300) as usize;
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            p.push(seed as u8);
        }
        packets.push(p);
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in &packets {
        sock.send_to(p, a).unwrap();
        // Every answer that comes back must decode.
    }
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let mut answers = 0;
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        answers += 1;
        let _ = Message::from_vec(&buf[..n])
            .unwrap_or_else(|e| panic!("undecodable answer {e}: {:?}", &buf[..n]));
    }
    assert!(answers > 0);
    // Over TCP too: garbage, then a length longer than what follows.
    for p in packets.iter().take(50) {
        let _ = tcp_raw(a, p);
    }
    // Still serving.
    for t in BOTH {
        let m = ask(a, t, "web-service.apps.svc.cluster.local.", RecordType::A);
        assert_eq!(data(&m), ["10.96.0.20"]);
    }
}

#[test]
fn responses_are_dropped_not_answered() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let mut p = raw_query("web-service.apps.svc.cluster.local.", RecordType::A);
    p[2] |= 0x80; // QR: a response
    assert!(udp_raw(s.local_addr(), &p).is_none());
}

#[test]
fn tcp_connection_carries_several_queries() {
    use std::io::{Read, Write};
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let mut stream = std::net::TcpStream::connect(s.local_addr()).unwrap();
    for name in [
        "web-service.apps.svc.cluster.local.",
        "db.apps.svc.cluster.local.",
        "dual.apps.svc.cluster.local.",
    ] {
        let q = raw_query(name, RecordType::A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend(q);
        stream.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut body = vec![0; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut body).unwrap();
        let m = Message::from_vec(&body).unwrap();
        assert_eq!(rcode(&m), ResponseCode::NoError, "{name}");
        assert!(!m.answers.is_empty());
    }
}

//! Every record rule of the cluster zone, asked over UDP and TCP of a real
//! server on 127.0.0.1 fed by a temporary store (answers decoded with
//! hickory-proto; some compared with `dig`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use podwire_dns::PodMode;
use serde_json::json;

const ZONE: &str = "cluster.local.";

#[test]
fn cluster_ip_service_a_record() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "web-service.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rcode(&m), ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(
            lines(&m.answers),
            ["web-service.apps.svc.cluster.local. 5 A 10.96.0.20"],
            "{t:?}"
        );
        assert!(m.edns.is_some(), "OPT echoed");
    }
}

#[test]
fn names_match_case_insensitively_and_keep_the_question_case() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "WeB-SeRvIcE.Apps.SVC.Cluster.LOCAL.",
            RecordType::A,
        );
        assert_eq!(
            lines(&m.answers),
            ["WeB-SeRvIcE.Apps.SVC.Cluster.LOCAL. 5 A 10.96.0.20"]
        );
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "WeB-SeRvIcE.Apps.SVC.Cluster.LOCAL."
        );
    }
}

#[test]
fn dual_stack_service_answers_a_and_aaaa() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let a = ask(
            s.local_addr(),
            t,
            "dual.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&a), ["10.96.0.30"]);
        let aaaa = ask(
            s.local_addr(),
            t,
            "dual.apps.svc.cluster.local.",
            RecordType::AAAA,
        );
        assert_eq!(data(&aaaa), ["fd00:10:96::30"]);
        // An IPv4-only Service has the name but no AAAA: NODATA.
        let none = ask(
            s.local_addr(),
            t,
            "web-service.apps.svc.cluster.local.",
            RecordType::AAAA,
        );
        assert_negative(&none, ResponseCode::NoError, ZONE);
        // Other types on a Service name: NODATA.
        let mx = ask(
            s.local_addr(),
            t,
            "web-service.apps.svc.cluster.local.",
            RecordType::MX,
        );
        assert_negative(&mx, ResponseCode::NoError, ZONE);
    }
}

#[test]
fn headless_service_answers_its_ready_endpoints() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "db.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(
            data(&m),
            ["10.244.1.5", "10.244.2.6"],
            "not-ready 10.244.2.7 left out"
        );
        assert!(m.answers.iter().all(|r| r.ttl == 5));
        // No ready endpoint: the name does not exist.
        let empty = ask(
            s.local_addr(),
            t,
            "empty.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_negative(&empty, ResponseCode::NXDomain, ZONE);
    }
}

#[test]
fn endpoint_hostname_records() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        // The endpoint's hostname field.
        let m = ask(
            s.local_addr(),
            t,
            "db-0.db.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["10.244.1.5"]);
        // A pod with hostname + subdomain naming the Service.
        let m = ask(
            s.local_addr(),
            t,
            "web-x.db.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["10.244.2.6"]);
        // Endpoints without a hostname answer under their dashed IP (CoreDNS).
        let m = ask(
            s.local_addr(),
            t,
            "10-244-1-2.web-service.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["10.244.1.2"]);
        // Not ready: no record.
        let m = ask(
            s.local_addr(),
            t,
            "10-244-2-7.db.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_negative(&m, ResponseCode::NXDomain, ZONE);
        let m = ask(
            s.local_addr(),
            t,
            "nobody.db.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_negative(&m, ResponseCode::NXDomain, ZONE);
    }
}

#[test]
fn srv_records_for_named_ports_with_glue() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "_http._tcp.web-service.apps.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(rcode(&m), ResponseCode::NoError);
        assert_eq!(data(&m), ["0 100 80 web-service.apps.svc.cluster.local."]);
        assert_eq!(
            lines(&m.additionals),
            ["web-service.apps.svc.cluster.local. 5 A 10.96.0.20"]
        );

        // Headless: one per ready endpoint, the endpoint's port, targets with glue.
        let m = ask(
            s.local_addr(),
            t,
            "_pg._tcp.db.apps.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            data(&m),
            [
                "0 50 5432 db-0.db.apps.svc.cluster.local.",
                "0 50 5432 web-x.db.apps.svc.cluster.local."
            ]
        );
        let mut glue = lines(&m.additionals);
        glue.sort();
        assert_eq!(
            glue,
            [
                "db-0.db.apps.svc.cluster.local. 5 A 10.244.1.5",
                "web-x.db.apps.svc.cluster.local. 5 A 10.244.2.6"
            ]
        );

        // The names between exist (empty non-terminal): NODATA, not NXDOMAIN.
        let m = ask(
            s.local_addr(),
            t,
            "_tcp.web-service.apps.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_negative(&m, ResponseCode::NoError, ZONE);
        // Unnamed ports have none; wrong protocol neither.
        let m = ask(
            s.local_addr(),
            t,
            "_http._udp.web-service.apps.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_negative(&m, ResponseCode::NXDomain, ZONE);
        // SRV on the Service name: every port (CoreDNS).
        let m = ask(
            s.local_addr(),
            t,
            "web-service.apps.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(
            data(&m),
            [
                "0 100 443 web-service.apps.svc.cluster.local.",
                "0 100 80 web-service.apps.svc.cluster.local."
            ]
        );
    }
}

#[test]
fn ptr_records_for_service_and_endpoint_addresses() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "20.0.96.10.in-addr.arpa.",
            RecordType::PTR,
        );
        assert!(m.metadata.authoritative);
        assert_eq!(data(&m), ["web-service.apps.svc.cluster.local."]);
        let m = ask(
            s.local_addr(),
            t,
            "5.1.244.10.in-addr.arpa.",
            RecordType::PTR,
        );
        assert_eq!(data(&m), ["db-0.db.apps.svc.cluster.local."]);
        let m = ask(
            s.local_addr(),
            t,
            "2.1.244.10.in-addr.arpa.",
            RecordType::PTR,
        );
        assert_eq!(data(&m), ["10-244-1-2.web-service.apps.svc.cluster.local."]);
        // The full ip6.arpa form.
        let v6 = "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
        let m = ask(s.local_addr(), t, v6, RecordType::PTR);
        assert_eq!(data(&m), ["dual.apps.svc.cluster.local."]);
        // A not-ready endpoint has none (and without upstreams: SERVFAIL).
        let m = ask(
            s.local_addr(),
            t,
            "7.2.244.10.in-addr.arpa.",
            RecordType::PTR,
        );
        assert!(m.answers.is_empty());
    }
}

#[test]
fn external_name_is_a_cname_with_the_targets_addresses_when_known() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "ext.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(
            lines(&m.answers),
            [
                "ext.apps.svc.cluster.local. 5 CNAME web-service.apps.svc.cluster.local.",
                "web-service.apps.svc.cluster.local. 5 A 10.96.0.20"
            ]
        );
        let m = ask(
            s.local_addr(),
            t,
            "ext.apps.svc.cluster.local.",
            RecordType::CNAME,
        );
        assert_eq!(data(&m), ["web-service.apps.svc.cluster.local."]);
        // A target outside the cluster, no upstream: the CNAME alone.
        let m = ask(
            s.local_addr(),
            t,
            "outside.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(data(&m), ["www.example.test."]);
    }
}

#[test]
fn schema_version_txt() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "dns-version.cluster.local.",
            RecordType::TXT,
        );
        let RData::TXT(txt) = &m.answers[0].data else {
            panic!("{m:?}")
        };
        assert_eq!(txt.to_string(), "1.1.0");
    }
}

#[test]
fn pod_records_in_each_mode() {
    let f = Fixture::cluster();
    let insecure = start(config(f.root()));
    let mut c = config(f.root());
    c.zone.pods = PodMode::Verified;
    let verified = start(c);
    let mut c = config(f.root());
    c.zone.pods = PodMode::Disabled;
    let disabled = start(c);
    for t in BOTH {
        let a = insecure.local_addr();
        assert_eq!(
            data(&ask(
                a,
                t,
                "10-244-1-2.apps.pod.cluster.local.",
                RecordType::A
            )),
            ["10.244.1.2"]
        );
        // insecure: any address in an existing namespace.
        assert_eq!(
            data(&ask(a, t, "1-2-3-4.apps.pod.cluster.local.", RecordType::A)),
            ["1.2.3.4"]
        );
        assert_negative(
            &ask(a, t, "1-2-3-4.nope.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );
        assert_negative(
            &ask(a, t, "not-an-ip.apps.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );
        assert_negative(
            &ask(a, t, "10-244-1-2.apps.pod.cluster.local.", RecordType::AAAA),
            ResponseCode::NoError,
            ZONE,
        );
        assert_eq!(
            data(&ask(
                a,
                t,
                "fd00--1.apps.pod.cluster.local.",
                RecordType::AAAA
            )),
            ["fd00::1"]
        );

        let v = verified.local_addr();
        assert_eq!(
            data(&ask(
                v,
                t,
                "10-244-1-2.apps.pod.cluster.local.",
                RecordType::A
            )),
            ["10.244.1.2"]
        );
        assert_negative(
            &ask(v, t, "1-2-3-4.apps.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );
        assert_negative(
            &ask(v, t, "10-244-1-2.default.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );

        let d = disabled.local_addr();
        assert_negative(
            &ask(d, t, "10-244-1-2.apps.pod.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );
    }
}

#[test]
fn negative_answers_carry_the_zone_soa() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(
            s.local_addr(),
            t,
            "missing.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_negative(&m, ResponseCode::NXDomain, ZONE);
        let RData::SOA(soa) = &m.authorities[0].data else {
            panic!()
        };
        assert_eq!(soa.mname.to_ascii(), "ns.dns.cluster.local.");
        assert_eq!(soa.rname.to_ascii(), "hostmaster.cluster.local.");
        assert_eq!(soa.minimum, 5);
        assert_eq!(m.authorities[0].ttl, 5);
        // Namespaces, svc and pod exist as names: NODATA.
        for name in [
            "apps.svc.cluster.local.",
            "svc.cluster.local.",
            "pod.cluster.local.",
            "apps.pod.cluster.local.",
        ] {
            assert_negative(
                &ask(s.local_addr(), t, name, RecordType::A),
                ResponseCode::NoError,
                ZONE,
            );
        }
        // An unknown namespace does not.
        assert_negative(
            &ask(
                s.local_addr(),
                t,
                "x.nope.svc.cluster.local.",
                RecordType::A,
            ),
            ResponseCode::NXDomain,
            ZONE,
        );
        assert_negative(
            &ask(s.local_addr(), t, "nope.svc.cluster.local.", RecordType::A),
            ResponseCode::NXDomain,
            ZONE,
        );
        assert_negative(
            &ask(
                s.local_addr(),
                t,
                "a.b.c.d.e.svc.cluster.local.",
                RecordType::A,
            ),
            ResponseCode::NXDomain,
            ZONE,
        );
    }
}

#[test]
fn zone_apex_soa_and_ns() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    for t in BOTH {
        let m = ask(s.local_addr(), t, "cluster.local.", RecordType::SOA);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].record_type(), RecordType::SOA);
        let m = ask(s.local_addr(), t, "cluster.local.", RecordType::NS);
        assert_eq!(data(&m), ["ns.dns.cluster.local."]);
        assert_eq!(
            lines(&m.additionals),
            ["ns.dns.cluster.local. 5 A 10.96.0.10"]
        );
        assert_eq!(
            data(&ask(
                s.local_addr(),
                t,
                "ns.dns.cluster.local.",
                RecordType::A
            )),
            ["10.96.0.10"]
        );
    }
}

#[test]
fn ttl_is_configurable() {
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.zone.ttl = 30;
    let s = start(c);
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "web-service.apps.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(m.answers[0].ttl, 30);
}

#[test]
fn other_zone_names() {
    let f = Fixture::cluster();
    let mut c = config(f.root());
    c.zone.zone = Some("corp.example".into());
    let s = start(c);
    let m = ask(
        s.local_addr(),
        Transport::Udp,
        "web-service.apps.svc.corp.example.",
        RecordType::A,
    );
    assert_eq!(data(&m), ["10.96.0.20"]);
}

#[test]
fn servfail_until_the_source_has_synced_then_follows_changes() {
    let f = Fixture::empty();
    f.config();
    let s = start(config(f.root()));
    let addr = s.local_addr();
    let ready = s.ops_addr("ready").unwrap();
    assert_eq!(http_get(ready, "/ready").0, 503);
    assert_eq!(http_get(s.ops_addr("health").unwrap(), "/health").0, 200);
    for t in BOTH {
        let m = ask(
            addr,
            t,
            "web-service.apps.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rcode(&m), ResponseCode::ServFail);
    }
    for o in cluster_objects() {
        f.put(o);
    }
    f.bump();
    assert!(eventually(Duration::from_secs(5), || {
        rcode(&ask(
            addr,
            Transport::Udp,
            "web-service.apps.svc.cluster.local.",
            RecordType::A,
        )) == ResponseCode::NoError
    }));
    assert_eq!(http_get(ready, "/ready").0, 200);

    // A new Service answers once the store is bumped...
    f.put(cluster_ip(
        "apps",
        "new-svc",
        &["10.96.0.99"],
        json!([{"name": "http", "port": 80}]),
    ));
    let bumped = Instant::now();
    f.bump();
    assert!(eventually(Duration::from_secs(5), || {
        data(&ask(
            addr,
            Transport::Udp,
            "new-svc.apps.svc.cluster.local.",
            RecordType::A,
        )) == ["10.96.0.99"]
    }));
    eprintln!("new Service answered {:?} after the bump", bumped.elapsed());
    // ...and a deleted one stops answering.
    assert!(
        f.store
            .delete(podwire_model::Kind::Service, "apps", "new-svc")
            .unwrap()
    );
    f.bump();
    assert!(eventually(Duration::from_secs(5), || {
        rcode(&ask(
            addr,
            Transport::Udp,
            "new-svc.apps.svc.cluster.local.",
            RecordType::A,
        )) == ResponseCode::NXDomain
    }));
}

#[test]
fn dig_agrees() {
    let f = Fixture::cluster();
    let s = start(config(f.root()));
    let a = s.local_addr();
    let Some(out) = dig(a, &["+short", "web-service.apps.svc.cluster.local"]) else {
        eprintln!("dig is not installed (scripts/setup installs dnsutils); skipping");
        return;
    };
    assert_eq!(out.trim(), "10.96.0.20");
    let out = dig(a, &["+short", "+tcp", "db.apps.svc.cluster.local"]).unwrap();
    let mut ips: Vec<&str> = out.lines().collect();
    ips.sort();
    assert_eq!(ips, ["10.244.1.5", "10.244.2.6"]);
    let out = dig(a, &["+short", "-x", "10.96.0.20"]).unwrap();
    assert_eq!(out.trim(), "web-service.apps.svc.cluster.local.");
    let out = dig(
        a,
        &[
            "+short",
            "SRV",
            "_http._tcp.web-service.apps.svc.cluster.local",
        ],
    )
    .unwrap();
    assert_eq!(out.trim(), "0 100 80 web-service.apps.svc.cluster.local.");
    let out = dig(a, &["+short", "TXT", "dns-version.cluster.local"]).unwrap();
    assert_eq!(out.trim(), "\"1.1.0\"");
    let out = dig(a, &["nope.apps.svc.cluster.local"]).unwrap();
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(out.contains("flags: qr aa rd ra"), "{out}");
    assert!(out.contains("AUTHORITY: 1"), "{out}");
    assert!(
        !out.contains("malformed") && !out.contains("mismatch"),
        "{out}"
    );
}

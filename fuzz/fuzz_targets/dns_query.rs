//! Fuzzes the DNS query handler: any bytes in, a response (or nothing) out,
//! never a panic. Every response must decode with hickory-proto (an
//! independent decoder), carry the query's ID and respect the UDP size
//! limit the query allows.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use podwire_dns::{ZoneOptions, handler::State, hosts::Hosts};
use podwire_model::{ClusterState, Object};

fn object(v: serde_json::Value) -> Object {
    Object::from_json(&v).expect("fixture object")
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let mut cluster = ClusterState::default();
        for v in [
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "apps"},
                "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                         "ports": [{"name": "http", "port": 80}, {"port": 443}]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "apps"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "db-x", "namespace": "apps", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": (1..40).map(|i| serde_json::json!({"addresses": [format!("10.244.1.{i}")], "hostname": if i == 1 { Some("db-0") } else { None }})).collect::<Vec<_>>(),
                "ports": [{"name": "pg", "port": 5432}]}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "apps"},
                "spec": {"type": "ExternalName", "externalName": "web.apps.svc.cluster.local"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "out", "namespace": "apps"},
                "spec": {"type": "ExternalName", "externalName": "www.example.org"}}),
        ] {
            cluster.insert(object(v));
        }
        let zone = podwire_dns::Zone::from_state(&cluster, &ZoneOptions::default(), 1);
        let hosts = Hosts::parse("192.0.2.1 printer.lan printer\n2001:db8::1 printer.lan\n");
        podwire_dns::offline_state(Some(zone), hosts)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(response) = podwire_dns::answer_offline(state(), data) else {
        return;
    };
    assert!(response.len() >= 12, "a response has a header");
    assert_eq!(response[0..2], data[0..2], "the query's ID");
    assert!(response[2] & 0x80 != 0, "QR set");
    if let Ok(q) = podwire_dns::wire::parse_query(data) {
        assert!(
            response.len() <= q.size_limit(false),
            "{} > {}",
            response.len(),
            q.size_limit(false)
        );
    }
    if let Err(e) = hickory_proto::op::Message::from_vec(&response) {
        panic!("response does not decode: {e}: {response:?}");
    }
});

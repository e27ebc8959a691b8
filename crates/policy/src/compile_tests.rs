//! Unit tests of the compiler: each NetworkPolicy behaviour asserted on
//! the compiled ruleset through `verdict`, which decides a packet exactly
//! as the table does (isolated? then is some element covering it?).

use std::net::Ipv4Addr;

use podwire_model::{ClusterState, Object};
use serde_json::{Value, json};

use crate::compile::{Ruleset, compile};

const NODE: &str = "node01";

fn ns(name: &str, labels: Value) -> Object {
    Object::Namespace(
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
            .expect("namespace"),
    )
}

fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Object {
    Object::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 80},
                {"name": "serve-81-tcp", "containerPort": 81},
                {"name": "serve-80-udp", "containerPort": 80, "protocol": "UDP"},
                {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
            ]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("pod"),
    )
}

fn policy(ns: &str, name: &str, spec: Value) -> Object {
    Object::NetworkPolicy(
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}))
            .expect("policy"),
    )
}

/// Namespaces x, y, z (label ns=<name>) with pods a, b, c (label pod=<name>);
/// x's pods on node01 (10.244.1.x), the others on node02 (10.244.2.x).
fn matrix(policies: Vec<Object>) -> ClusterState {
    let mut st = ClusterState::default();
    for (i, n) in ["x", "y", "z"].iter().enumerate() {
        st.insert(ns(n, json!({"ns": n})));
        for (j, p) in ["a", "b", "c"].iter().enumerate() {
            let (node, ip) = if *n == "x" {
                ("node01", format!("10.244.1.{}", 10 + j))
            } else {
                ("node02", format!("10.244.2.{}", 10 + 3 * i + j))
            };
            st.insert(pod(n, p, &ip, node, json!({"pod": p})));
        }
    }
    for p in policies {
        st.insert(p);
    }
    st
}

fn ip(state: &ClusterState, ns: &str, name: &str) -> Ipv4Addr {
    state.pods[&(ns.to_string(), name.to_string())]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_ref())
        .and_then(|s| s.parse().ok())
        .expect("pod ip")
}

/// Whether the table lets `src -> dst proto/port` through on this node.
fn verdict(rs: &Ruleset, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, port: u16) -> bool {
    let covers =
        |set: &std::collections::BTreeSet<crate::Element4>, local: Ipv4Addr, peer: Ipv4Addr| {
            let p = u32::from(peer);
            set.iter().any(|e| {
                e.local == local
                    && e.peer.0 <= p
                    && p <= e.peer.1
                    && e.proto.0 <= proto
                    && proto <= e.proto.1
                    && e.port.0 <= port
                    && port <= e.port.1
            })
        };
    let egress_ok = !rs.egress_pods.contains_key(&src) || covers(&rs.egress_allow, src, dst);
    let ingress_ok = !rs.ingress_pods.contains_key(&dst) || covers(&rs.ingress_allow, dst, src);
    egress_ok && ingress_ok
}

fn allowed(
    st: &ClusterState,
    rs: &Ruleset,
    from: (&str, &str),
    to: (&str, &str),
    proto: u8,
    port: u16,
) -> bool {
    verdict(rs, ip(st, from.0, from.1), ip(st, to.0, to.1), proto, port)
}

const TCP: u8 = 6;
const UDP: u8 = 17;

#[test]
fn no_policy_isolates_nothing() {
    let st = matrix(vec![]);
    let rs = compile(&st, NODE);
    assert!(rs.ingress_pods.is_empty() && rs.egress_pods.is_empty());
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80));
}

#[test]
fn default_deny_ingress_isolates_only_selected_local_pods() {
    let st = matrix(vec![policy("x", "deny", json!({"podSelector": {}}))]);
    let rs = compile(&st, NODE);
    assert_eq!(rs.ingress_pods.len(), 3, "x/a, x/b, x/c are on this node");
    assert!(
        rs.egress_pods.is_empty(),
        "policyTypes defaults to Ingress only"
    );
    assert!(rs.ingress_allow.is_empty());
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(!allowed(&st, &rs, ("x", "b"), ("x", "a"), UDP, 81));
    assert!(
        allowed(&st, &rs, ("x", "a"), ("y", "a"), TCP, 80),
        "egress open"
    );
    // Another node has nothing of x: nothing to isolate there.
    let other = compile(&st, "node02");
    assert!(other.ingress_pods.is_empty());
}

#[test]
fn egress_rules_imply_the_egress_type_and_empty_to_allows_all() {
    let st = matrix(vec![policy(
        "x",
        "dns-only",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}),
    )]);
    let rs = compile(&st, NODE);
    assert_eq!(rs.egress_pods.len(), 1);
    assert_eq!(rs.ingress_pods.len(), 1, "Ingress is always a default type");
    assert!(allowed(&st, &rs, ("x", "a"), ("y", "b"), UDP, 53));
    assert!(allowed(&st, &rs, ("x", "a"), ("y", "b"), TCP, 53));
    assert!(!allowed(&st, &rs, ("x", "a"), ("y", "b"), TCP, 80));
    let a = ip(&st, "x", "a");
    assert!(
        verdict(&rs, a, Ipv4Addr::new(8, 8, 8, 8), UDP, 53),
        "to: [] is everywhere"
    );
}

#[test]
fn allow_from_a_namespace() {
    let st = matrix(vec![policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )]);
    let rs = compile(&st, NODE);
    for p in ["a", "b", "c"] {
        assert!(allowed(&st, &rs, ("y", p), ("x", "a"), TCP, 80));
        assert!(allowed(&st, &rs, ("y", p), ("x", "b"), UDP, 81));
        assert!(!allowed(&st, &rs, ("z", p), ("x", "a"), TCP, 80));
        assert!(
            !allowed(&st, &rs, ("x", p), ("x", "a"), TCP, 80),
            "own namespace not listed"
        );
    }
}

#[test]
fn pod_and_namespace_in_one_peer_vs_two_peers() {
    let and = policy(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    );
    let st = matrix(vec![and]);
    let rs = compile(&st, NODE);
    assert!(allowed(&st, &rs, ("y", "b"), ("x", "a"), TCP, 80));
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(!allowed(&st, &rs, ("x", "b"), ("x", "a"), TCP, 80));
    assert!(!allowed(&st, &rs, ("z", "b"), ("x", "a"), TCP, 80));

    let or = policy(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    );
    let st = matrix(vec![or]);
    let rs = compile(&st, NODE);
    assert!(
        allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80),
        "any pod of y"
    );
    assert!(
        allowed(&st, &rs, ("x", "b"), ("x", "a"), TCP, 80),
        "b of the policy's namespace"
    );
    assert!(
        !allowed(&st, &rs, ("z", "b"), ("x", "a"), TCP, 80),
        "b of z is neither"
    );
    assert!(!allowed(&st, &rs, ("x", "c"), ("x", "a"), TCP, 80));
}

#[test]
fn ip_block_with_except() {
    let st = matrix(vec![policy(
        "x",
        "block",
        json!({"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.16/30"]}}
        ]}]}),
    )]);
    let rs = compile(&st, NODE);
    // y's pods are .13-.15, z's .16-.18.
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(
        !allowed(&st, &rs, ("z", "a"), ("x", "a"), TCP, 80),
        ".16 is excepted"
    );
    assert!(
        !allowed(&st, &rs, ("z", "c"), ("x", "a"), TCP, 80),
        ".18 too: the /30 ends at .19"
    );
    let x = ip(&st, "x", "a");
    assert!(!verdict(&rs, Ipv4Addr::new(10, 244, 2, 19), x, TCP, 80));
    assert!(verdict(&rs, Ipv4Addr::new(10, 244, 2, 20), x, TCP, 80));
    assert!(!verdict(&rs, Ipv4Addr::new(10, 244, 3, 1), x, TCP, 80));
}

#[test]
fn named_ports_resolve_per_destination_pod() {
    let mut st = matrix(vec![
        policy(
            "x",
            "named-in",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
        ),
        policy(
            "x",
            "named-out",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
                   "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
        ),
    ]);
    // A pod whose port named serve-80-tcp is 8080.
    st.insert(Object::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": "odd", "namespace": "y", "labels": {"pod": "odd"}},
            "spec": {"nodeName": "node02", "containers": [{"name": "c", "ports": [
                {"name": "serve-80-tcp", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.244.2.99"},
        }))
        .expect("pod"),
    ));
    let rs = compile(&st, NODE);
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "b"), UDP, 81));
    assert!(
        !allowed(&st, &rs, ("y", "a"), ("x", "b"), TCP, 81),
        "the name is UDP only"
    );
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "b"), UDP, 80));
    // Egress: resolved against each destination pod.
    assert!(allowed(&st, &rs, ("x", "a"), ("y", "b"), TCP, 80));
    let a = ip(&st, "x", "a");
    let odd = Ipv4Addr::new(10, 244, 2, 99);
    assert!(verdict(&rs, a, odd, TCP, 8080));
    assert!(!verdict(&rs, a, odd, TCP, 80));
    assert!(
        !verdict(&rs, a, Ipv4Addr::new(1, 1, 1, 1), TCP, 80),
        "not a pod: no named port"
    );
}

#[test]
fn end_port_ranges_and_sctp() {
    let st = matrix(vec![policy(
        "x",
        "range",
        json!({"podSelector": {}, "ingress": [{"ports": [
            {"port": 81, "endPort": 90}, {"protocol": "SCTP", "port": 80}
        ]}]}),
    )]);
    let rs = compile(&st, NODE);
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80));
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 81));
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 90));
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 91));
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "a"), UDP, 81));
    assert!(allowed(&st, &rs, ("y", "a"), ("x", "a"), 132, 80));
}

#[test]
fn policies_are_additive_and_elements_disjoint() {
    let st = matrix(vec![
        policy(
            "x",
            "p1",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}),
        ),
        policy(
            "x",
            "p2",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 81}]}]}),
        ),
        policy(
            "x",
            "p3",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{}]}),
        ),
    ]);
    let rs = compile(&st, NODE);
    assert!(allowed(&st, &rs, ("x", "b"), ("x", "a"), TCP, 80));
    assert!(allowed(&st, &rs, ("x", "b"), ("x", "a"), TCP, 81));
    assert!(!allowed(&st, &rs, ("y", "b"), ("x", "a"), TCP, 80));
    assert!(allowed(&st, &rs, ("y", "b"), ("x", "a"), TCP, 81));
    assert!(
        allowed(&st, &rs, ("z", "b"), ("x", "c"), UDP, 9999),
        "ingress: [{{}}] allows all"
    );
    // The first policy by name answers for the pod.
    let id = crate::policy_id(&("x".into(), "p1".into()));
    assert_eq!(rs.ingress_pods[&ip(&st, "x", "c")], id);
    // No two elements of one pod overlap (pipapo refuses overlaps).
    let list: Vec<_> = rs.ingress_allow.iter().collect();
    for (i, a) in list.iter().enumerate() {
        for b in &list[i + 1..] {
            let overlap = a.local == b.local
                && a.peer.0 <= b.peer.1
                && b.peer.0 <= a.peer.1
                && a.proto.0 <= b.proto.1
                && b.proto.0 <= a.proto.1
                && a.port.0 <= b.port.1
                && b.port.0 <= a.port.1;
            assert!(!overlap, "{a:?} overlaps {b:?}");
        }
    }
}

#[test]
fn bad_input_rejects_that_policy_only_and_fails_closed() {
    let st = matrix(vec![
        policy(
            "x",
            "bad-cidr",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
        ),
        policy(
            "x",
            "bad-proto",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}),
        ),
        policy(
            "x",
            "bad-range",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
        ),
        policy(
            "x",
            "good",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{"ports": [{"port": 80}]}]}),
        ),
    ]);
    let rs = compile(&st, NODE);
    let reason = |name: &str| {
        rs.policies
            .iter()
            .find(|p| p.key.1 == name)
            .and_then(|p| p.rejected.clone())
            .unwrap_or_default()
    };
    assert!(
        reason("bad-cidr").contains("not a CIDR"),
        "{}",
        reason("bad-cidr")
    );
    assert!(
        reason("bad-proto").contains("unknown protocol"),
        "{}",
        reason("bad-proto")
    );
    assert!(
        reason("bad-range").contains("endPort 80 is below port 90"),
        "{}",
        reason("bad-range")
    );
    assert_eq!(reason("good"), "");
    assert!(
        !allowed(&st, &rs, ("y", "a"), ("x", "a"), TCP, 80),
        "fail closed"
    );
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "b"), TCP, 85));
    assert!(
        allowed(&st, &rs, ("y", "a"), ("x", "c"), TCP, 80),
        "the good one is enforced"
    );
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "c"), TCP, 81));
}

#[test]
fn host_network_and_unaddressed_pods_are_never_selected() {
    let mut st = matrix(vec![policy("x", "deny", json!({"podSelector": {}}))]);
    st.insert(Object::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": "host", "namespace": "x"},
            "spec": {"nodeName": NODE, "hostNetwork": true, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": "192.168.56.10"},
        }))
        .expect("pod"),
    ));
    st.insert(Object::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": "pending", "namespace": "x"},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
        }))
        .expect("pod"),
    ));
    let rs = compile(&st, NODE);
    assert_eq!(rs.ingress_pods.len(), 3);
    assert!(
        !rs.ingress_pods
            .contains_key(&Ipv4Addr::new(192, 168, 56, 10))
    );
}

#[test]
fn match_expressions_select_pods_and_namespaces() {
    let st = matrix(vec![policy(
        "x",
        "expr",
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]},
               "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                   {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["z"]}]}}]}]}),
    )]);
    let rs = compile(&st, NODE);
    assert!(!rs.ingress_pods.contains_key(&ip(&st, "x", "a")));
    assert!(
        allowed(&st, &rs, ("z", "a"), ("x", "b"), TCP, 80),
        "the implied name label"
    );
    assert!(!allowed(&st, &rs, ("y", "a"), ("x", "b"), TCP, 80));
}

#[test]
fn the_plan_names_every_policy() {
    let st = matrix(vec![
        policy("x", "deny", json!({"podSelector": {}})),
        policy(
            "x",
            "bad",
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "XTP"}]}]}),
        ),
    ]);
    let rs = compile(&st, NODE);
    let text = crate::layout::Plan {
        ruleset: &rs,
        log_group: Some(100),
    }
    .to_string();
    assert!(text.contains("# policy x/deny"), "{text}");
    assert!(
        text.contains("REJECTED: ingress[0]: ports[0]: unknown protocol"),
        "{text}"
    );
    assert!(text.contains("log prefix \"pwpol in-"), "{text}");
    assert!(
        text.contains("# pod x/a, policy x/bad") || text.contains("# pod x/a, policy x/deny"),
        "{text}"
    );
}

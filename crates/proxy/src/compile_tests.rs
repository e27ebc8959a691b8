//! Unit tests of the compile step: one per kube-proxy behaviour, each
//! asserting the elements (what the packet path will look up) rather than
//! only the printed text.

use super::*;
use crate::layout::{Datum, ElemKey, Fam, LbChain, SetId, SetKind, Value};
use podwire_model::Object;
use serde_json::json;

fn opts() -> CompileOptions {
    CompileOptions {
        node_name: "node01".into(),
        node_pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        structure: crate::layout::StructureOptions {
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            localhost_nodeports: false,
        },
    }
}

fn svc(spec: serde_json::Value) -> Service {
    svc_full(json!({}), spec, json!({}))
}

fn svc_full(
    labels: serde_json::Value,
    spec: serde_json::Value,
    status: serde_json::Value,
) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "apps", "labels": labels},
        "spec": spec,
        "status": status,
    }))
    .unwrap()
}

/// A slice; endpoints are (ip, node, ready, serving, terminating).
fn slice(
    name: &str,
    fam: &str,
    ports: serde_json::Value,
    eps: &[(&str, &str, bool, bool, bool)],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(ip, node, ready, serving, terminating)| {
            json!({
                "addresses": [ip],
                "nodeName": node,
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "apps", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": fam,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn ready(ip: &'static str, node: &'static str) -> (&'static str, &'static str, bool, bool, bool) {
    (ip, node, true, true, false)
}

fn http_ports() -> serde_json::Value {
    json!([{"name": "http", "protocol": "TCP", "port": 8080}])
}

fn compile1(s: &Service, slices: &[EndpointSlice]) -> ServiceRules {
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    compile_service(s, &refs, &opts()).expect("service gets rules")
}

fn a(s: &str) -> Datum {
    Datum::Addr(s.parse().unwrap())
}

fn key(kind: SetKind, fam: Fam, key: Vec<Datum>) -> ElemKey {
    ElemKey::new(SetId::new(kind, fam), key)
}

fn get<'a>(r: &'a ServiceRules, k: &ElemKey) -> Option<&'a Value> {
    r.elements.iter().find(|(x, _)| x == k).map(|(_, v)| v)
}

fn in_set(r: &ServiceRules, kind: SetKind) -> Vec<(ElemKey, Value)> {
    r.elements
        .iter()
        .filter(|(k, _)| k.set.kind == kind)
        .cloned()
        .collect()
}

fn target(ip: &str, port: u16) -> Value {
    Value::Target(ip.parse().unwrap(), port)
}

fn chain(n: u32) -> LbChain {
    LbChain {
        fam: Fam::V4,
        nodeport: false,
        local: false,
        masq: false,
        n,
        affinity: None,
    }
}

fn three() -> Vec<EndpointSlice> {
    vec![slice(
        "web-1",
        "IPv4",
        http_ports(),
        &[
            ready("10.244.2.3", "node02"),
            ready("10.244.1.2", "node01"),
            ready("10.244.3.2", "node03"),
        ],
    )]
}

fn web(extra: serde_json::Value) -> Service {
    let mut spec = json!({
        "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    svc(spec)
}

#[test]
fn clusterip_balances_over_every_ready_endpoint_in_sorted_slots() {
    let r = compile1(&web(json!({})), &three());
    let k = key(
        SetKind::Services,
        Fam::V4,
        vec![a("10.96.0.20"), Datum::Proto(6), Datum::Port(80)],
    );
    assert_eq!(get(&r, &k), Some(&Value::Goto(chain(3))));
    let eps = in_set(&r, SetKind::Endpoints);
    assert_eq!(eps.len(), 3);
    // Named targetPort "http" resolved through the slice's port: 8080.
    assert_eq!(eps[0].1, target("10.244.1.2", 8080));
    assert_eq!(eps[0].0.key[3], Datum::Index(0));
    assert_eq!(eps[2].1, target("10.244.3.2", 8080));
    assert_eq!(eps[2].0.key[3], Datum::Index(2));
    assert!(r.chains.contains(&chain(3)));
    // The local endpoint is in the hairpin set (a pod reaching itself).
    assert!(
        get(
            &r,
            &key(
                SetKind::Hairpin,
                Fam::V4,
                vec![a("10.244.1.2"), a("10.244.1.2")]
            )
        )
        .is_some()
    );
    assert_eq!(in_set(&r, SetKind::Hairpin).len(), 1);
    assert!(in_set(&r, SetKind::NoEndpoints).is_empty());
    assert!(
        in_set(&r, SetKind::NodePorts).is_empty(),
        "ClusterIP type: no node port"
    );
}

#[test]
fn tcp_udp_sctp_and_several_ports_each_resolve_their_own_target_port() {
    let s = svc(json!({
        "clusterIP": "10.96.0.30",
        "ports": [
            {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": "dns"},
            {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 5353},
            {"name": "sig", "protocol": "SCTP", "port": 9000},
        ],
    }));
    let slices = vec![slice(
        "web-1",
        "IPv4",
        json!([
            {"name": "dns", "protocol": "UDP", "port": 1053},
            {"name": "dns-tcp", "protocol": "TCP", "port": 5353},
            {"name": "sig", "protocol": "SCTP", "port": 9000},
        ]),
        &[ready("10.244.2.3", "node02")],
    )];
    let r = compile1(&s, &slices);
    let svc_keys: Vec<&Vec<Datum>> = r
        .elements
        .iter()
        .filter(|(k, _)| k.set.kind == SetKind::Services)
        .map(|(k, _)| &k.key)
        .collect();
    assert_eq!(svc_keys.len(), 3);
    let ep = |proto: u8, port: u16| {
        get(
            &r,
            &key(
                SetKind::Endpoints,
                Fam::V4,
                vec![
                    a("10.96.0.30"),
                    Datum::Proto(proto),
                    Datum::Port(port),
                    Datum::Index(0),
                ],
            ),
        )
        .cloned()
    };
    assert_eq!(ep(17, 53), Some(target("10.244.2.3", 1053)));
    assert_eq!(ep(6, 53), Some(target("10.244.2.3", 5353)));
    assert_eq!(ep(132, 9000), Some(target("10.244.2.3", 9000)));
    // A UDP frontend is recorded for conntrack cleanup.
    assert!(r.frontends.iter().any(|f| f.proto == 17 && f.port == 53));
}

#[test]
fn a_port_without_a_slice_port_of_its_name_has_no_endpoints() {
    let s = svc(json!({
        "clusterIP": "10.96.0.31",
        "ports": [{"name": "metrics", "port": 9090}],
    }));
    let r = compile1(&s, &three());
    assert_eq!(
        get(
            &r,
            &key(
                SetKind::NoEndpoints,
                Fam::V4,
                vec![a("10.96.0.31"), Datum::Proto(6), Datum::Port(9090)]
            )
        ),
        Some(&Value::Reject)
    );
}

#[test]
fn endpoint_conditions_ready_first_then_serving_terminating_never_not_serving() {
    let s = web(json!({}));
    let mixed = vec![slice(
        "web-1",
        "IPv4",
        http_ports(),
        &[
            ("10.244.2.3", "node02", true, true, false),
            ("10.244.2.4", "node02", false, true, true),
            ("10.244.2.5", "node02", false, false, false),
        ],
    )];
    let r = compile1(&s, &mixed);
    let eps = in_set(&r, SetKind::Endpoints);
    assert_eq!(eps.len(), 1, "only the ready one: {eps:?}");
    assert_eq!(eps[0].1, target("10.244.2.3", 8080));

    let terminating = vec![slice(
        "web-1",
        "IPv4",
        http_ports(),
        &[
            ("10.244.2.4", "node02", false, true, true),
            ("10.244.2.5", "node02", false, false, true),
            ("10.244.2.6", "node02", false, false, false),
        ],
    )];
    let r = compile1(&s, &terminating);
    let eps = in_set(&r, SetKind::Endpoints);
    assert_eq!(eps.len(), 1, "serving+terminating fallback only: {eps:?}");
    assert_eq!(eps[0].1, target("10.244.2.4", 8080));

    let none = vec![slice(
        "web-1",
        "IPv4",
        http_ports(),
        &[("10.244.2.6", "node02", false, false, false)],
    )];
    let r = compile1(&s, &none);
    assert!(in_set(&r, SetKind::Endpoints).is_empty());
    assert_eq!(in_set(&r, SetKind::NoEndpoints)[0].1, Value::Reject);

    // publishNotReadyAddresses: not-ready endpoints are used.
    let r = compile1(&web(json!({"publishNotReadyAddresses": true})), &none);
    assert_eq!(in_set(&r, SetKind::Endpoints).len(), 1);
}

#[test]
fn endpoints_in_two_slices_are_merged_and_deduplicated() {
    let slices = vec![
        slice(
            "web-1",
            "IPv4",
            http_ports(),
            &[ready("10.244.2.3", "node02")],
        ),
        slice(
            "web-2",
            "IPv4",
            http_ports(),
            &[ready("10.244.2.3", "node02"), ready("10.244.3.3", "node03")],
        ),
    ];
    let r = compile1(&web(json!({})), &slices);
    assert_eq!(in_set(&r, SetKind::Endpoints).len(), 2);
    assert_eq!(in_set(&r, SetKind::Services)[0].1, Value::Goto(chain(2)));
}

#[test]
fn no_usable_endpoints_reject_at_once() {
    let r = compile1(
        &web(json!({})),
        &[slice("web-1", "IPv4", http_ports(), &[])],
    );
    assert!(in_set(&r, SetKind::Services).is_empty());
    assert_eq!(
        in_set(&r, SetKind::NoEndpoints),
        vec![(
            key(
                SetKind::NoEndpoints,
                Fam::V4,
                vec![a("10.96.0.20"), Datum::Proto(6), Datum::Port(80)]
            ),
            Value::Reject
        )]
    );
    // No slice at all is the same.
    let r = compile1(&web(json!({})), &[]);
    assert_eq!(in_set(&r, SetKind::NoEndpoints).len(), 1);
}

#[test]
fn headless_externalname_and_other_proxies_services_get_nothing() {
    let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    assert!(compile_service(&headless, &[], &opts()).is_none());
    let external = svc(json!({"type": "ExternalName", "externalName": "example.org"}));
    assert!(compile_service(&external, &[], &opts()).is_none());
    let other = svc_full(
        json!({"service.kubernetes.io/service-proxy-name": "cilium"}),
        json!({"clusterIP": "10.96.0.40", "ports": [{"port": 80}]}),
        json!({}),
    );
    assert!(compile_service(&other, &[], &opts()).is_none());
    assert!(skip_reason(&other).unwrap().contains("another proxy"));
    // A type from a newer API: nothing guessed.
    let unknown =
        svc(json!({"type": "Teleport", "clusterIP": "10.96.0.41", "ports": [{"port": 80}]}));
    assert!(compile_service(&unknown, &[], &opts()).is_none());
    assert_eq!(skip_reason(&unknown), Some(UNKNOWN_TYPE));
}

#[test]
fn nodeport_cluster_policy_masquerades_and_uses_every_endpoint() {
    let s = web(
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    );
    let r = compile1(&s, &three());
    let np = key(
        SetKind::NodePorts,
        Fam::V4,
        vec![Datum::Proto(6), Datum::Port(30080)],
    );
    let masq = LbChain {
        nodeport: true,
        masq: true,
        ..chain(3)
    };
    assert_eq!(get(&r, &np), Some(&Value::Goto(masq)));
    assert!(r.chains.contains(&masq) && r.chains.contains(&masq.unmasked()));
    assert_eq!(in_set(&r, SetKind::NodePortEndpoints).len(), 3);
    assert!(
        in_set(&r, SetKind::NodePortsPods).is_empty(),
        "no short-circuit for Cluster policy"
    );
    // The ClusterIP still works as usual.
    assert_eq!(in_set(&r, SetKind::Services).len(), 1);
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_keeps_client_ip_and_short_circuits_pods() {
    let s = web(json!({
        "type": "LoadBalancer", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32001,
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
    }));
    let r = compile1(&s, &three());
    let np = key(
        SetKind::NodePorts,
        Fam::V4,
        vec![Datum::Proto(6), Datum::Port(30080)],
    );
    let local = LbChain {
        nodeport: true,
        local: true,
        ..chain(1)
    };
    assert_eq!(
        get(&r, &np),
        Some(&Value::Goto(local)),
        "local list, no masquerade"
    );
    let local_ep = key(
        SetKind::NodePortEndpoints,
        Fam::V4,
        vec![
            Datum::Proto(6),
            Datum::Port(30080),
            Datum::Index(LOCAL_OFFSET),
        ],
    );
    assert_eq!(get(&r, &local_ep), Some(&target("10.244.1.2", 8080)));
    // Pods: every endpoint, no masquerade; the node itself: masquerade.
    let pods = key(
        SetKind::NodePortsPods,
        Fam::V4,
        vec![Datum::Proto(6), Datum::Port(30080)],
    );
    assert_eq!(
        get(&r, &pods),
        Some(&Value::Goto(LbChain {
            nodeport: true,
            ..chain(3)
        }))
    );
    let node = key(
        SetKind::NodePortsLocal,
        Fam::V4,
        vec![Datum::Proto(6), Datum::Port(30080)],
    );
    assert_eq!(
        get(&r, &node),
        Some(&Value::Goto(LbChain {
            nodeport: true,
            masq: true,
            ..chain(3)
        }))
    );
    assert_eq!(
        r.health_check,
        Some(HealthCheck {
            port: 32001,
            namespace: "apps".into(),
            name: "web".into(),
            local_endpoints: 1
        })
    );

    // On a node without endpoints: external traffic is dropped, not rejected.
    let mut other = opts();
    other.node_name = "node09".into();
    other.node_pod_cidrs = vec!["10.244.9.0/24".parse().unwrap()];
    let refs: Vec<&EndpointSlice> = Vec::new();
    let slices = three();
    let refs2: Vec<&EndpointSlice> = slices.iter().collect();
    let r = compile_service(&s, &refs2, &other).unwrap();
    assert_eq!(
        get(
            &r,
            &key(
                SetKind::NoEndpointNodePorts,
                Fam::V4,
                vec![Datum::Proto(6), Datum::Port(30080)]
            )
        ),
        Some(&Value::Drop)
    );
    assert!(get(&r, &np).is_none());
    assert_eq!(r.health_check.as_ref().map(|h| h.local_endpoints), Some(0));
    assert!(get(&r, &pods).is_some(), "pods still reach the Service");
    // No endpoints anywhere: reject, even with Local policy.
    let r = compile_service(&s, &refs, &other).unwrap();
    assert_eq!(
        get(
            &r,
            &key(
                SetKind::NoEndpointNodePorts,
                Fam::V4,
                vec![Datum::Proto(6), Datum::Port(30080)]
            )
        ),
        Some(&Value::Reject)
    );
}

#[test]
fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let s = web(json!({"internalTrafficPolicy": "Local"}));
    let r = compile1(&s, &three());
    assert_eq!(in_set(&r, SetKind::Services)[0].1, Value::Goto(chain(1)));
    assert_eq!(
        in_set(&r, SetKind::Endpoints)[0].1,
        target("10.244.1.2", 8080)
    );
    let mut other = opts();
    other.node_name = "node09".into();
    let slices = three();
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    let r = compile_service(&s, &refs, &other).unwrap();
    assert_eq!(in_set(&r, SetKind::NoEndpoints)[0].1, Value::Drop);
}

#[test]
fn endpoints_without_node_name_are_local_by_this_nodes_pod_range() {
    let slices = vec![slice(
        "web-1",
        "IPv4",
        http_ports(),
        &[ready("10.244.1.7", "")],
    )];
    let r = compile1(&web(json!({"internalTrafficPolicy": "Local"})), &slices);
    assert_eq!(
        in_set(&r, SetKind::Endpoints)[0].1,
        target("10.244.1.7", 8080)
    );
}

#[test]
fn external_ips_and_load_balancer_ips_with_source_ranges() {
    let s = svc_full(
        json!({}),
        json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.20",
            "externalIPs": ["198.51.100.7"],
            "loadBalancerSourceRanges": ["203.0.113.0/24", "192.0.2.9/32"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
        }),
        json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.8"}, {"ip": "198.51.100.9", "ipMode": "Proxy"}]}}),
    );
    let r = compile1(&s, &three());
    let ext = in_set(&r, SetKind::External);
    assert_eq!(
        ext.len(),
        2,
        "externalIP and one LB IP (ipMode Proxy is the LB's job): {ext:?}"
    );
    let masq = LbChain {
        masq: true,
        ..chain(3)
    };
    assert!(ext.iter().all(|(_, v)| *v == Value::Goto(masq)));
    // Source ranges guard the LB IP only.
    let fw = in_set(&r, SetKind::Firewall);
    assert_eq!(fw.len(), 1);
    assert_eq!(fw[0].0.key[0], a("198.51.100.8"));
    let allow = in_set(&r, SetKind::FirewallAllow);
    assert_eq!(allow.len(), 2);
    assert!(
        allow
            .iter()
            .any(|(k, _)| k.key[3] == Datum::Net("203.0.113.0/24".parse().unwrap()))
    );
}

#[test]
fn session_affinity_client_ip_uses_affinity_chains_with_the_timeout() {
    let s = web(json!({
        "type": "NodePort",
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
    }));
    let r = compile1(&s, &three());
    let aff = LbChain {
        affinity: Some(60),
        ..chain(3)
    };
    assert_eq!(in_set(&r, SetKind::Services)[0].1, Value::Goto(aff));
    assert_eq!(in_set(&r, SetKind::Endpoints).len(), 3);
    assert_eq!(in_set(&r, SetKind::NodePortEndpoints).len(), 3);
    assert!(r.chains.contains(&LbChain {
        nodeport: true,
        masq: true,
        affinity: Some(60),
        ..chain(3)
    }));
    assert!(r.frontends.iter().all(|f| f.affinity));
    // Default timeout: 3 hours.
    let s = web(json!({"sessionAffinity": "ClientIP"}));
    let r = compile1(&s, &three());
    assert_eq!(
        in_set(&r, SetKind::Services)[0].1,
        Value::Goto(LbChain {
            affinity: Some(10800),
            ..chain(3)
        })
    );
}

#[test]
fn dual_stack_services_get_both_families() {
    let s = svc(json!({
        "type": "NodePort",
        "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
        "ipFamilies": ["IPv4", "IPv6"],
        "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
    }));
    let slices = vec![
        slice(
            "web-4",
            "IPv4",
            http_ports(),
            &[ready("10.244.2.3", "node02")],
        ),
        slice(
            "web-6",
            "IPv6",
            http_ports(),
            &[ready("fd00:10:244:2::3", "node02")],
        ),
    ];
    let r = compile1(&s, &slices);
    let v6 = key(
        SetKind::Services,
        Fam::V6,
        vec![a("fd00:10:96::20"), Datum::Proto(6), Datum::Port(80)],
    );
    assert!(matches!(get(&r, &v6), Some(Value::Goto(c)) if c.fam == Fam::V6 && c.n == 1));
    assert_eq!(
        in_set(&r, SetKind::Endpoints)
            .iter()
            .filter(|(k, _)| k.set.fam == Fam::V6)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>(),
        vec![target("fd00:10:244:2::3", 8080)]
    );
    assert_eq!(
        in_set(&r, SetKind::NodePorts)
            .iter()
            .map(|(k, _)| k.set.fam)
            .collect::<Vec<_>>(),
        vec![Fam::V4, Fam::V6]
    );
}

#[test]
fn whole_ruleset_prints_as_an_nft_script_and_dedups_shared_elements() {
    let mut state = ClusterState::default();
    state.insert(Object::Service(web(
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
    )));
    for s in three() {
        state.insert(Object::EndpointSlice(s));
    }
    // A second Service over the same pods: the hairpin element is shared.
    let mut other = web(json!({}));
    other.metadata.name = Some("web2".into());
    other.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.21".into());
    other.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.21".into()]);
    state.insert(Object::Service(other));
    let mut s2 = three().remove(0);
    s2.metadata.name = Some("web2-1".into());
    s2.metadata.labels =
        Some([("kubernetes.io/service-name".to_string(), "web2".to_string())].into());
    state.insert(Object::EndpointSlice(s2));
    let rs = compile(&state, &opts());
    assert_eq!(rs.services.len(), 2);
    let elements = rs.elements();
    let hairpins = elements
        .keys()
        .filter(|k| k.set.kind == SetKind::Hairpin)
        .count();
    assert_eq!(hairpins, 1);
    let text = rs.to_string();
    assert!(text.contains("# apps/web:http TCP/80 IPv4: endpoints 10.244.1.2:8080 10.244.2.3:8080 10.244.3.2:8080; local 10.244.1.2:8080"));
    assert!(
        text.contains("add element inet podwire-proxy svc4 { 10.96.0.20 . tcp . 80 : goto lb4-3 }")
    );
    assert!(text.contains("add element inet podwire-proxy np4 { tcp . 30080 : goto np4-3-masq }"));
    assert!(text.contains(
        "add element inet podwire-proxy ep4 { 10.96.0.21 . tcp . 80 . 2 : 10.244.3.2 . 8080 }"
    ));
    assert!(text.contains("chain lb4-3 {"));
    assert!(text.contains("chain np4-3-masq {"));
}

#[test]
fn incremental_compiler_reuses_unchanged_fragments() {
    let mut state = ClusterState::default();
    state.insert(Object::Service(web(json!({}))));
    for s in three() {
        state.insert(Object::EndpointSlice(s));
    }
    let mut other = web(json!({}));
    other.metadata.name = Some("api".into());
    other.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.22".into());
    other.spec.as_mut().unwrap().cluster_ips = None;
    state.insert(Object::Service(other));
    let mut c = Compiler::new();
    let first = c.compile(&state, &opts()).clone();
    let second = c.compile(&state, &opts()).clone();
    let k = ("apps".to_string(), "web".to_string());
    assert!(Arc::ptr_eq(&first.services[&k], &second.services[&k]));
    // Change web's slice: web recompiles, api keeps its fragment.
    let mut s = three().remove(0);
    s.endpoints.as_mut().unwrap().pop();
    state.insert(Object::EndpointSlice(s));
    let third = c.compile(&state, &opts()).clone();
    assert!(!Arc::ptr_eq(&first.services[&k], &third.services[&k]));
    let api = ("apps".to_string(), "api".to_string());
    assert!(Arc::ptr_eq(&first.services[&api], &third.services[&api]));
    assert_eq!(
        third,
        compile(&state, &opts()),
        "incremental == from scratch"
    );

    // Event-driven: only the named Service is looked at.
    let mut s = three().remove(0);
    s.endpoints.as_mut().unwrap().truncate(1);
    state.insert(Object::EndpointSlice(s));
    let fourth = c
        .compile_changed(&state, &opts(), std::slice::from_ref(&k))
        .clone();
    assert_eq!(in_set(&fourth.services[&k], SetKind::Endpoints).len(), 1);
    assert!(Arc::ptr_eq(&first.services[&api], &fourth.services[&api]));
    assert_eq!(fourth, compile(&state, &opts()));
    state.remove(podwire_model::Kind::Service, "apps", "api");
    let fifth = c
        .compile_changed(&state, &opts(), std::slice::from_ref(&api))
        .clone();
    assert!(!fifth.services.contains_key(&api));
}

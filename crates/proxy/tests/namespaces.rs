//! The proxy's rulesets applied in real namespaces (see `common`), with
//! real connections: balancing, rejection, node ports with and without
//! masquerade, affinity, hairpin, UDP conntrack cleanup, source ranges,
//! incremental syncs and re-asserting a deleted table. Needs root.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use podwire_model::Object;
use podwire_proxy::Engine;
use serde_json::json;

const T: Duration = Duration::from_secs(2);

fn web(extra: serde_json::Value) -> Object {
    let mut spec = json!({
        "clusterIP": "10.96.0.50",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    });
    for (k, v) in extra.as_object().expect("object") {
        spec[k] = v.clone();
    }
    Object::Service(service("web", spec, json!({})))
}

fn web_slice(ips: &[&str]) -> Object {
    Object::EndpointSlice(slice("web", "TCP", 8080, ips))
}

fn three_pods(tag: &str) -> World {
    let mut w = World::new(tag);
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        w.add_pod(name, &format!("10.244.1.{}", 2 + i));
        w.serve_tcp(name, 8080);
    }
    w.add_pod("client", "10.244.1.20");
    w
}

fn counts(
    w: &World,
    from: &str,
    target: std::net::SocketAddr,
    n: usize,
) -> BTreeMap<String, usize> {
    w.run_in(from, || {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let line = tcp_get(target, T).expect("request through the Service");
            *seen.entry(pod_of(&line)).or_insert(0) += 1;
        }
        seen
    })
}

#[test]
fn clusterip_balances_over_all_endpoints_and_rejects_at_once_without_any() {
    let w = three_pods("lb");
    let mut engine = Engine::new();
    let report = w.apply(
        &mut engine,
        &ruleset(vec![
            web(json!({})),
            web_slice(&["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        ]),
    );
    assert!(report.full && report.structure_loaded, "{report:?}");
    // Every element names its Service port in nft's own comment.
    let listing = w.nft_list();
    let named: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("comment \"apps/web:80\""))
        .collect();
    assert!(
        named.iter().any(|l| l.contains("10.96.0.50 . tcp . 80"))
            && named.iter().any(|l| l.contains("10.244.1.4 . 8080")),
        "{listing}"
    );
    let seen = counts(&w, "client", addr("10.96.0.50", 80), 150);
    assert_eq!(seen.len(), 3, "every endpoint answers: {seen:?}");
    for (pod, n) in &seen {
        assert!(*n >= 25, "{pod} got {n} of 150: {seen:?}");
    }
    // The pod sees the client's pod IP: no masquerade inside the pod range.
    let line = w
        .run_in("client", || tcp_get(addr("10.96.0.50", 80), T))
        .unwrap();
    assert_eq!(client_of(&line), "10.244.1.20");

    // Scale to zero: refused at once (TCP reset), not a timeout.
    let report = w.apply(&mut engine, &ruleset(vec![web(json!({})), web_slice(&[])]));
    assert!(
        !report.full,
        "an endpoint change is incremental: {report:?}"
    );
    let (err, took) = w.run_in("client", || {
        let start = Instant::now();
        let r = tcp_get(addr("10.96.0.50", 80), T);
        (r.err(), start.elapsed())
    });
    let err = err.expect("no endpoints must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(100), "refused in {took:?}");

    // Back to one endpoint.
    w.apply(
        &mut engine,
        &ruleset(vec![web(json!({})), web_slice(&["10.244.1.3"])]),
    );
    let seen = counts(&w, "client", addr("10.96.0.50", 80), 10);
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
}

#[test]
fn nodeport_from_outside_masquerades_with_cluster_policy_and_keeps_the_client_with_local() {
    let mut w = three_pods("np");
    w.add_external();
    let mut engine = Engine::new();
    let np = json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]});
    w.apply(
        &mut engine,
        &ruleset(vec![
            web(np.clone()),
            web_slice(&["10.244.1.2", "10.244.1.3"]),
        ]),
    );
    let line = w
        .run_in("ext", || tcp_get(addr(NODE_IP, 30080), T))
        .expect("node port");
    assert_eq!(
        client_of(&line),
        GATEWAY,
        "Cluster policy masquerades: {line}"
    );
    // The ClusterIP from outside the pod range is masqueraded too.
    let line = w
        .run_in("ext", || tcp_get(addr("10.96.0.50", 80), T))
        .expect("cluster IP");
    assert_eq!(client_of(&line), GATEWAY, "{line}");
    // A node port on the pods' gateway address works as well (every local address).
    let line = w
        .run_in("client", || tcp_get(addr(GATEWAY, 30080), T))
        .expect("gateway node port");
    assert!(line.starts_with("pod="), "{line}");

    let mut local = np.clone();
    local["externalTrafficPolicy"] = json!("Local");
    w.apply(
        &mut engine,
        &ruleset(vec![web(local.clone()), web_slice(&["10.244.1.2"])]),
    );
    let line = w
        .run_in("ext", || tcp_get(addr(NODE_IP, 30080), T))
        .expect("node port");
    assert_eq!(
        client_of(&line),
        EXTERNAL_IP,
        "Local keeps the client IP: {line}"
    );

    // Local policy with the only endpoint on another node: dropped (a
    // timeout), while pods are short-circuited to it.
    let mut other = slice("web", "TCP", 8080, &["10.244.1.3"]);
    other.endpoints.as_mut().unwrap()[0].node_name = Some("node02".into());
    w.apply(
        &mut engine,
        &ruleset(vec![web(local), Object::EndpointSlice(other)]),
    );
    let r = w.run_in("ext", || {
        tcp_get(addr(NODE_IP, 30080), Duration::from_millis(500))
    });
    assert_eq!(r.expect_err("dropped").kind(), std::io::ErrorKind::TimedOut);
    let line = w
        .run_in("client", || tcp_get(addr(NODE_IP, 30080), T))
        .expect("pods short-circuit");
    assert_eq!(pod_of(&line), "b");

    // 127.0.0.1:nodePort only when asked for (and with route_localnet,
    // which the agent sets).
    let objects = || vec![web(np.clone()), web_slice(&["10.244.1.2"])];
    w.apply(&mut engine, &ruleset(objects()));
    let local = w.run_in("node", || {
        tcp_get(addr("127.0.0.1", 30080), Duration::from_millis(300))
    });
    assert!(
        local.is_err(),
        "no localhost node ports by default: {local:?}"
    );
    w.sysctl("node", "net/ipv4/conf/all/route_localnet", "1");
    let mut opts = options();
    opts.structure.localhost_nodeports = true;
    let with_localhost = podwire_proxy::compile(&state(objects()), &opts);
    let report = w.apply(&mut engine, &with_localhost);
    assert!(report.full, "other structure options: a full sync");
    let line = w
        .run_in("node", || tcp_get(addr("127.0.0.1", 30080), T))
        .expect("localhost node port");
    assert_eq!(pod_of(&line), "a");
}

#[test]
fn client_ip_affinity_sticks_and_hairpin_reaches_itself() {
    let w = three_pods("aff");
    let mut engine = Engine::new();
    let aff = json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}});
    w.apply(
        &mut engine,
        &ruleset(vec![
            web(aff),
            web_slice(&["10.244.1.2", "10.244.1.3", "10.244.1.4"]),
        ]),
    );
    let seen = counts(&w, "client", addr("10.96.0.50", 80), 30);
    assert_eq!(seen.len(), 1, "one client, one endpoint: {seen:?}");
    let list = w.nft_list();
    assert!(list.contains("timeout 30s"), "{list}");

    // Hairpin: pod a reaches itself through the Service; its source is
    // masqueraded so the reply comes back through the node.
    w.apply(
        &mut engine,
        &ruleset(vec![web(json!({})), web_slice(&["10.244.1.2"])]),
    );
    let line = w
        .run_in("a", || tcp_get(addr("10.96.0.50", 80), T))
        .expect("hairpin");
    assert_eq!(pod_of(&line), "a");
    assert_eq!(client_of(&line), GATEWAY, "{line}");
}

#[test]
fn udp_moves_to_the_new_endpoint_when_the_old_one_is_removed() {
    let mut w = World::new("udp");
    w.add_pod("a", "10.244.1.2");
    w.add_pod("b", "10.244.1.3");
    w.add_pod("client", "10.244.1.20");
    w.serve_udp("a", 5353);
    w.serve_udp("b", 5353);
    let dns = |ips: &[&str]| {
        ruleset(vec![
            Object::Service(service(
                "dns",
                json!({"clusterIP": "10.96.0.53", "ports": [{"name": "http", "protocol": "UDP", "port": 53, "targetPort": 5353}]}),
                json!({}),
            )),
            Object::EndpointSlice(slice("dns", "UDP", 5353, ips)),
        ])
    };
    let mut engine = Engine::new();
    w.apply(&mut engine, &dns(&["10.244.1.2"]));
    // One client socket (one source port), like a resolver: its conntrack
    // entry would keep pointing at the old endpoint.
    let ask = |w: &World| {
        w.run_in("client", || {
            let sock = UdpSocket::bind("10.244.1.20:40053").expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 64];
            for _ in 0..5 {
                let _ = sock.send_to(b"q", "10.96.0.53:53");
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    return String::from_utf8_lossy(&buf[..n]).into_owned();
                }
            }
            String::new()
        })
    };
    assert_eq!(ask(&w), "pod=a");
    let report = w.apply(&mut engine, &dns(&["10.244.1.3"]));
    assert!(report.conntrack_flushes >= 1, "{report:?}");
    assert_eq!(ask(&w), "pod=b");
}

#[test]
fn load_balancer_source_ranges_allow_only_the_listed_clients() {
    let mut w = three_pods("fw");
    w.add_external();
    let mut engine = Engine::new();
    let lb = |ranges: serde_json::Value| {
        Object::Service(service(
            "web",
            json!({
                "type": "LoadBalancer", "clusterIP": "10.96.0.50",
                "loadBalancerSourceRanges": ranges,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
            }),
            json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.10"}]}}),
        ))
    };
    w.apply(
        &mut engine,
        &ruleset(vec![
            lb(json!(["192.168.77.0/24"])),
            web_slice(&["10.244.1.2"]),
        ]),
    );
    let line = w
        .run_in("ext", || tcp_get(addr("198.51.100.10", 80), T))
        .expect("allowed source");
    assert_eq!(pod_of(&line), "a");
    w.apply(
        &mut engine,
        &ruleset(vec![
            lb(json!(["203.0.113.0/24"])),
            web_slice(&["10.244.1.2"]),
        ]),
    );
    let r = w.run_in("ext", || {
        tcp_get(addr("198.51.100.10", 80), Duration::from_millis(500))
    });
    assert!(r.is_err(), "a source outside the ranges is dropped");
}

#[test]
fn incremental_syncs_send_only_the_difference_and_a_deleted_table_comes_back() {
    let w = three_pods("inc");
    let mut engine = Engine::new();
    let mut objects = vec![web(json!({})), web_slice(&["10.244.1.2"])];
    for i in 0..500 {
        let name = format!("s{i}");
        objects.push(Object::Service(service(
            &name,
            json!({"clusterIP": format!("10.97.{}.{}", i / 250, 1 + i % 250), "ports": [{"name": "http", "port": 80}]}),
            json!({}),
        )));
        objects.push(Object::EndpointSlice(slice(
            &name,
            "TCP",
            8080,
            &["10.244.1.3", "10.244.1.4"],
        )));
    }
    let full = w.apply(&mut engine, &ruleset(objects.clone()));
    assert!(full.full);
    assert!(full.elements_total > 1500, "{full:?}");
    objects.push(Object::Service(service(
        "new",
        json!({"clusterIP": "10.96.0.99", "ports": [{"name": "http", "port": 80}]}),
        json!({}),
    )));
    objects.push(Object::EndpointSlice(slice(
        "new",
        "TCP",
        8080,
        &["10.244.1.4"],
    )));
    let one = w.apply(&mut engine, &ruleset(objects.clone()));
    assert!(!one.full && one.services_changed == 1, "{one:?}");
    assert_eq!(one.elements_deleted, 0);
    // svc + endpoint; the pod is already in the hairpin set (shared).
    assert_eq!(one.elements_added, 2, "{one:?}");
    let line = w
        .run_in("client", || tcp_get(addr("10.96.0.99", 80), T))
        .expect("new service");
    assert_eq!(pod_of(&line), "c");
    let again = w.apply(&mut engine, &ruleset(objects.clone()));
    assert_eq!((again.elements_added, again.elements_deleted), (0, 0));

    // Someone deletes the table: the agent's check sees it, the next full
    // sync puts everything back.
    assert!(w.nft(&["delete", "table", "inet", "podwire-proxy"]));
    assert!(
        !w.run_in("node", podwire_proxy::engine::table_present)
            .unwrap()
    );
    engine.invalidate();
    let back = w.apply(&mut engine, &ruleset(objects));
    assert!(
        back.full && back.elements_total == one.elements_total,
        "{back:?}"
    );
    let line = w
        .run_in("client", || tcp_get(addr("10.96.0.99", 80), T))
        .expect("after re-assert");
    assert_eq!(pod_of(&line), "c");
}

#[test]
fn a_second_engine_takes_over_a_table_without_interrupting_traffic() {
    let w = three_pods("take");
    let rs = ruleset(vec![
        web(json!({})),
        web_slice(&["10.244.1.2", "10.244.1.3"]),
    ]);
    let mut first = Engine::new();
    w.apply(&mut first, &rs);
    drop(first);
    // A restarted agent: full sync over the existing table while a client
    // keeps connecting; every connection must succeed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::thread::scope(|s| {
        let client = s.spawn(|| {
            w.run_in("client", || {
                let mut failures = 0;
                let start = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && start.elapsed() < Duration::from_secs(10)
                {
                    if tcp_get(addr("10.96.0.50", 80), T).is_err() {
                        failures += 1;
                    }
                }
                failures
            })
        });
        for _ in 0..10 {
            let mut second = Engine::new();
            let r = w.apply(&mut second, &rs);
            assert!(r.full);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().expect("client")
    });
    assert_eq!(
        failures, 0,
        "connections failed while the table was re-synced"
    );
}

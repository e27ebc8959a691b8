//! The policy table applied in real namespaces with real traffic: a node
//! namespace with two bridges (br0: this node's pods 10.244.1.0/24,
//! bridged to each other; br1: 10.244.2.0/24 standing in for another
//! node's pods, routed through the node), TCP and UDP echo servers on 80
//! and 81 in every pod. Checks default deny, allows by pod and port,
//! egress, pod label changes, node-to-pod traffic, established
//! connections across a policy change, counters, the denied-connection log and re-assertion of a
//! deleted table. Every namespace is removed when the test ends, even on
//! failure. Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use podwire_model::{ClusterState, Object};
use podwire_policy::nflog::LogReader;
use podwire_policy::{Engine, Ruleset, compile, engine};
use podwire_testsupport::Netns;
use serde_json::{Value, json};

const NODE: &str = "node01";
const PROBE: Duration = Duration::from_millis(400);

struct World {
    prefix: String,
    namespaces: Vec<(String, Netns)>,
    stop: Arc<AtomicBool>,
    links: usize,
    state: ClusterState,
}

impl World {
    fn new(tag: &str) -> World {
        let mut w = World {
            prefix: format!("pwpol{tag}{}", std::process::id() % 100000),
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            links: 0,
            state: ClusterState::default(),
        };
        w.add_netns("node");
        let node = w.netns("node");
        for (br, addr) in [("br0", "10.244.1.1/24"), ("br1", "10.244.2.1/24")] {
            node.exec_ok(&["ip", "link", "add", br, "type", "bridge"]);
            node.exec_ok(&["ip", "addr", "add", addr, "dev", br]);
            node.exec_ok(&["ip", "link", "set", br, "up"]);
        }
        node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding"));
        for n in ["x", "y"] {
            w.state.insert(Object::Namespace(
                serde_json::from_value(json!({"metadata": {"name": n, "labels": {"ns": n}}}))
                    .expect("namespace"),
            ));
        }
        w
    }

    fn add_netns(&mut self, name: &str) {
        let ns = Netns::named(&format!("{}-{name}", self.prefix));
        self.namespaces.push((name.to_string(), ns));
    }

    fn netns(&self, name: &str) -> &Netns {
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no namespace {name}"))
    }

    /// A pod `ns/name` at `ip` on br0 (this node) or br1 (the other node),
    /// with TCP and UDP echo servers on 80 and 81.
    fn add_pod(&mut self, ns: &str, name: &str, ip: &str, local: bool) {
        let short = format!("{ns}-{name}");
        self.add_netns(&short);
        self.links += 1;
        let host = format!("vp{}", self.links);
        let path = format!("{}-{short}", self.prefix);
        let (br, gw, node_name) = if local {
            ("br0", "10.244.1.1", NODE)
        } else {
            ("br1", "10.244.2.1", "node02")
        };
        let node = self.netns("node");
        node.exec_ok(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &path,
        ]);
        node.exec_ok(&["ip", "link", "set", &host, "master", br, "up"]);
        let pod = self.netns(&short);
        pod.exec_ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        pod.exec_ok(&["ip", "link", "set", "lo", "up"]);
        pod.exec_ok(&["ip", "route", "add", "default", "via", gw]);
        for port in [80u16, 81] {
            self.serve(&short, port);
        }
        self.state.insert(Object::Pod(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
                "spec": {"nodeName": node_name, "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 80}, {"name": "alt", "containerPort": 81}]}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .expect("pod"),
        ));
    }

    /// Line echo over TCP (one thread per connection) and datagram echo.
    fn serve(&self, pod: &str, port: u16) {
        let stop = self.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        self.netns(pod).thread(move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind tcp");
            let udp = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
            listener.set_nonblocking(true).expect("nonblocking");
            udp.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            let mut buf = [0u8; 256];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(false);
                    std::thread::spawn(move || {
                        let mut w = match s.try_clone() {
                            Ok(w) => w,
                            Err(_) => return,
                        };
                        for line in BufReader::new(s).lines() {
                            let Ok(line) = line else { break };
                            if writeln!(w, "{line}").is_err() {
                                break;
                            }
                        }
                    });
                }
                while let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    }

    fn policy(&mut self, ns: &str, name: &str, spec: Value) {
        self.state.insert(Object::NetworkPolicy(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
            )
            .expect("policy"),
        ));
    }

    fn relabel(&mut self, ns: &str, name: &str, labels: Value) {
        let key = (ns.to_string(), name.to_string());
        let pod = self.state.pods.get_mut(&key).expect("pod");
        pod.metadata.labels = serde_json::from_value(labels).expect("labels");
    }

    fn remove_policy(&mut self, ns: &str, name: &str) {
        self.state
            .network_policies
            .remove(&(ns.to_string(), name.to_string()));
    }

    fn sync(&self, engine: &mut Engine) -> Ruleset {
        let rs = compile(&self.state, NODE);
        self.netns("node").run(|| engine.sync(&rs)).expect("sync");
        rs
    }

    /// Whether `from` (a pod or "node") reaches `ip:port` over `proto`.
    fn reach(&self, from: &str, proto: &str, ip: &str, port: u16) -> bool {
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        self.netns(from).run(|| match proto {
            "tcp" => TcpStream::connect_timeout(&addr, PROBE)
                .and_then(|mut s| {
                    s.set_read_timeout(Some(PROBE))?;
                    s.write_all(b"hi\n")?;
                    let mut b = [0u8; 3];
                    s.read_exact(&mut b)
                })
                .is_ok(),
            _ => UdpSocket::bind("0.0.0.0:0")
                .and_then(|s| {
                    s.set_read_timeout(Some(PROBE))?;
                    s.send_to(b"hi", addr)?;
                    let mut b = [0u8; 8];
                    s.recv_from(&mut b)
                })
                .is_ok(),
        })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some((_, ns)) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

const XA: &str = "10.244.1.10";
const XB: &str = "10.244.1.11";
const YR: &str = "10.244.2.10";

fn world(tag: &str) -> World {
    let mut w = World::new(tag);
    w.add_pod("x", "a", XA, true);
    w.add_pod("x", "b", XB, true);
    w.add_pod("y", "r", YR, false);
    w
}

#[test]
fn deny_then_allow_by_pod_and_port_same_node_and_routed() {
    let mut w = world("a");
    let mut engine = Engine::new(None);
    w.sync(&mut engine);
    assert!(w.reach("x-b", "tcp", XA, 80), "no policy: open");
    w.policy(
        "x",
        "deny",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    w.sync(&mut engine);
    assert!(!w.reach("x-b", "tcp", XA, 80), "same node, bridged");
    assert!(!w.reach("x-b", "udp", XA, 81));
    assert!(!w.reach("y-r", "tcp", XA, 80), "routed from the other node");
    assert!(
        w.reach("x-a", "tcp", XB, 80),
        "egress of a is open, replies pass"
    );
    assert!(w.reach("x-a", "udp", YR, 80));
    assert!(
        w.reach("node", "tcp", XA, 80),
        "the node reaches its own pods"
    );
    assert!(
        w.reach("x-b", "tcp", XB, 80) && w.reach("y-r", "tcp", XB, 81),
        "b is not selected"
    );

    w.policy(
        "x",
        "allow-b-http",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": "http"}]}]}),
    );
    w.sync(&mut engine);
    assert!(w.reach("x-b", "tcp", XA, 80));
    assert!(!w.reach("x-b", "tcp", XA, 81));
    assert!(!w.reach("x-b", "udp", XA, 80), "named port http is TCP");
    assert!(!w.reach("y-r", "tcp", XA, 80));

    w.policy(
        "x",
        "allow-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
               "ports": [{"port": 81, "protocol": "UDP"}]}]}),
    );
    w.sync(&mut engine);
    assert!(w.reach("y-r", "udp", XA, 81));
    assert!(!w.reach("y-r", "udp", XA, 80));
    assert!(!w.reach("y-r", "tcp", XB, 80), "allow-y isolates b now");
    assert!(!w.reach("x-a", "tcp", XB, 80), "x is not y");

    w.remove_policy("x", "allow-y");
    w.remove_policy("x", "deny");
    w.remove_policy("x", "allow-b-http");
    let rs = w.sync(&mut engine);
    assert!(rs.chains().is_empty());
    assert!(
        w.reach("y-r", "tcp", XA, 80) && w.reach("x-a", "tcp", XB, 81),
        "all open again"
    );
    let chains = w.netns("node").run(|| {
        podwire_kernel::nft::list_chains(podwire_kernel::nft::Family::Inet, "podwire-policy")
    });
    assert_eq!(
        chains.expect("chains"),
        vec!["forward".to_string()],
        "unused chains deleted"
    );
}

#[test]
fn egress_isolation_allows_only_what_it_lists() {
    let mut w = world("e");
    let mut engine = Engine::new(None);
    w.policy(
        "x",
        "dns-only",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"port": 80, "protocol": "UDP"}]},
                          {"to": [{"ipBlock": {"cidr": "10.244.2.0/24"}}], "ports": [{"port": 81, "endPort": 90}]}]}),
    );
    w.sync(&mut engine);
    assert!(w.reach("x-a", "udp", XB, 80));
    assert!(!w.reach("x-a", "tcp", XB, 80));
    assert!(!w.reach("x-a", "tcp", YR, 80));
    assert!(w.reach("x-a", "tcp", YR, 81), "ipBlock + endPort range");
    assert!(
        !w.reach("x-a", "tcp", XB, 81),
        "the block is the other node's range only"
    );
    assert!(
        w.reach("x-b", "tcp", XA, 80),
        "ingress of a is not isolated"
    );
}

#[test]
fn established_connections_survive_and_new_ones_follow_the_change() {
    let mut w = world("c");
    let mut engine = Engine::new(Some(7));
    w.policy(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    );
    w.sync(&mut engine);
    let mut log = w.netns("node").run(|| LogReader::open(7)).expect("nflog");
    let addr: SocketAddr = format!("{XA}:80").parse().expect("addr");
    let mut conn = w
        .netns("x-b")
        .run(|| TcpStream::connect_timeout(&addr, PROBE))
        .expect("allowed connection");
    conn.set_read_timeout(Some(PROBE)).expect("timeout");
    let echo = |conn: &mut TcpStream| -> bool {
        let mut b = [0u8; 4];
        conn.write_all(b"abc\n").is_ok() && conn.read_exact(&mut b).is_ok()
    };
    assert!(echo(&mut conn));
    // Now only y may talk to a: the open connection keeps working.
    w.remove_policy("x", "allow-b");
    w.policy(
        "x",
        "deny",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    let rs = w.sync(&mut engine);
    assert!(
        echo(&mut conn),
        "an established connection survives the change"
    );
    assert!(!w.reach("x-b", "tcp", XA, 80), "a new one is refused");
    // The drop was counted in the policy's name and logged.
    let counters = w
        .netns("node")
        .run(engine::drop_counters)
        .expect("counters");
    let id = podwire_policy::policy_id(&("x".into(), "deny".into()));
    let (packets, _) = counters[&format!("in-{id}")];
    assert!(packets >= 1, "{counters:?}");
    let mut denied = Vec::new();
    for _ in 0..20 {
        denied.extend(log.poll());
        if !denied.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let d = denied
        .first()
        .unwrap_or_else(|| panic!("no denied-connection log entry"));
    assert_eq!(d.chain, format!("in-{id}"));
    assert_eq!(
        (
            d.src.to_string().as_str(),
            d.dst.to_string().as_str(),
            d.dport
        ),
        (XB, XA, 80)
    );
    assert_eq!(
        rs.policy_of(&id),
        Some(&("x".to_string(), "deny".to_string()))
    );
}

#[test]
fn a_deleted_table_comes_back_with_a_full_sync() {
    let mut w = world("t");
    let mut engine = Engine::new(None);
    w.policy("x", "deny", json!({"podSelector": {}}));
    w.sync(&mut engine);
    assert!(!w.reach("x-b", "tcp", XA, 80));
    w.netns("node")
        .exec_ok(&["nft", "delete", "table", "inet", "podwire-policy"]);
    assert!(w.reach("x-b", "tcp", XA, 80));
    assert!(!w.netns("node").run(engine::table_present).expect("check"));
    engine.reset();
    w.sync(&mut engine);
    assert!(!w.reach("x-b", "tcp", XA, 80));
    // A second full sync over an existing table is idempotent.
    engine.reset();
    w.sync(&mut engine);
    assert!(!w.reach("x-b", "tcp", XA, 80));
    assert!(w.reach("x-a", "tcp", YR, 80), "egress stays open");
}

#[test]
fn pod_label_changes_move_grants_and_isolation() {
    let mut w = world("l");
    let mut engine = Engine::new(None);
    w.policy(
        "x",
        "from-frontend",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "frontend"}}}]}]}),
    );
    w.sync(&mut engine);
    assert!(!w.reach("y-r", "tcp", XA, 80));
    w.relabel("y", "r", json!({"pod": "r", "role": "frontend"}));
    w.sync(&mut engine);
    assert!(w.reach("y-r", "tcp", XA, 80), "r became a frontend");
    assert!(!w.reach("x-b", "tcp", XA, 80));
    // The selected pod loses its label: it is no longer isolated.
    w.relabel("x", "a", json!({"pod": "a2"}));
    w.sync(&mut engine);
    assert!(w.reach("x-b", "tcp", XA, 80));
    // b gains it: b is isolated now, r still admitted.
    w.relabel("x", "b", json!({"pod": "a"}));
    w.sync(&mut engine);
    assert!(!w.reach("x-a", "tcp", XB, 80));
    assert!(w.reach("y-r", "tcp", XB, 81));
}

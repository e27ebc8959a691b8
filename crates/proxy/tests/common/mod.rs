//! A small world for the proxy's namespace tests: a "node" namespace with a
//! bridge (10.244.1.1/24, the pods' gateway) and an underlay address
//! (192.168.77.10/24), "pod" namespaces on the bridge running tiny TCP/UDP
//! servers (threads that entered the pod's namespace), and an "external"
//! host on the underlay. Everything is removed when the [`World`] drops,
//! even when the test panics. Traffic only flows between these namespaces.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use podwire_model::{ClusterState, EndpointSlice, Object, Service};
use podwire_proxy::layout::StructureOptions;
use podwire_proxy::{CompileOptions, Engine, Ruleset, SyncReport, compile};
use podwire_testsupport::Netns;
use serde_json::json;

pub const NODE_IP: &str = "192.168.77.10";
pub const EXTERNAL_IP: &str = "192.168.77.100";
pub const GATEWAY: &str = "10.244.1.1";

/// The namespaces of one test.
pub struct World {
    pub prefix: String,
    /// (short name, guard): removed in reverse order when the world drops.
    namespaces: Vec<(String, Netns)>,
    pub stop: Arc<AtomicBool>,
    pods: usize,
}

impl World {
    /// A node namespace with bridge br0 and underlay eth0. `tag` keeps the
    /// names of concurrently running tests apart.
    pub fn new(tag: &str) -> World {
        let prefix = format!("pwp{tag}{}", std::process::id() % 100000);
        let mut w = World {
            prefix,
            namespaces: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            pods: 0,
        };
        let node = w.add_netns("node");
        node.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        node.exec_ok(&["ip", "addr", "add", "10.244.1.1/24", "dev", "br0"]);
        node.exec_ok(&["ip", "link", "set", "br0", "up"]);
        w.sysctl("node", "net/ipv4/ip_forward", "1");
        // Like a real node, a default route (here to an address nobody
        // holds), so a ClusterIP without endpoints reaches the forward hook
        // and is rejected there instead of "network unreachable".
        w.netns("node")
            .exec_ok(&["ip", "route", "add", "default", "via", "10.244.1.254"]);
        w
    }

    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// The guard of namespace `name` (of this world).
    pub fn netns(&self, name: &str) -> &Netns {
        self.namespaces
            .iter()
            .find(|(short, _)| short == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("no namespace {name} in this world"))
    }

    fn add_netns(&mut self, name: &str) -> &Netns {
        let ns = Netns::named(&self.ns(name));
        self.namespaces.push((name.to_string(), ns));
        &self.namespaces.last().expect("just pushed").1
    }

    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        self.run_in(ns, || {
            std::fs::write(format!("/proc/sys/{key}"), value).expect("sysctl");
        });
    }

    /// Runs `f` in a thread inside namespace `name` (of this world).
    pub fn run_in<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        self.netns(name).run(f)
    }

    /// A pod namespace on the bridge with address `addr` (10.244.1.x).
    pub fn add_pod(&mut self, name: &str, addr: &str) {
        let ns = self.ns(name);
        self.add_netns(name);
        self.pods += 1;
        let host = format!("vp{}", self.pods);
        let node = self.netns("node");
        node.exec_ok(&[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        node.exec_ok(&["ip", "link", "set", &host, "master", "br0", "up"]);
        // Hairpin: a pod reaching itself through a Service comes back out
        // of its own bridge port.
        node.exec_ok(&[
            "ip",
            "link",
            "set",
            &host,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        let pod = self.netns(name);
        pod.exec_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        pod.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        pod.exec_ok(&["ip", "route", "add", "default", "via", GATEWAY]);
    }

    /// The external host on the node's underlay (192.168.77.0/24).
    pub fn add_external(&mut self) {
        let ns = self.ns("ext");
        self.add_netns("ext");
        let node = self.netns("node");
        let ext = self.netns("ext");
        node.exec_ok(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        node.exec_ok(&["ip", "addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"]);
        node.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        ext.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{EXTERNAL_IP}/24"),
            "dev",
            "eth0",
        ]);
        ext.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        // The node is the way to the service range (an external load
        // balancer or router would send it there).
        ext.exec_ok(&["ip", "route", "add", "10.96.0.0/12", "via", NODE_IP]);
        ext.exec_ok(&["ip", "route", "add", "198.51.100.0/24", "via", NODE_IP]);
        // The node's default route: so locally originated ClusterIP
        // traffic has a route before DNAT.
        node.exec_ok(&["ip", "route", "replace", "default", "via", EXTERNAL_IP]);
    }

    /// A TCP server in pod `name` answering `pod=<name> client=<peer ip>`.
    pub fn serve_tcp(&self, name: &str, port: u16) {
        let stop = self.stop.clone();
        let label = name.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        // This thread stays in the pod's namespace until it ends.
        self.netns(name).thread(move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = tx.send(());
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = writeln!(s, "pod={label} client={}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    }

    /// A UDP server in pod `name` answering every datagram with `pod=<name>`.
    pub fn serve_udp(&self, name: &str, port: u16) {
        let stop = self.stop.clone();
        let label = name.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        self.netns(name).thread(move || {
            let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind udp");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let _ = tx.send(());
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("pod={label}").as_bytes(), peer);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server up");
    }

    /// Applies a ruleset in the node namespace.
    pub fn apply(&self, engine: &mut Engine, rs: &Ruleset) -> SyncReport {
        self.run_in("node", || engine.sync(rs)).expect("sync")
    }

    /// `nft list table inet podwire-proxy` in the node.
    pub fn nft_list(&self) -> String {
        let out = self
            .netns("node")
            .exec(&["nft", "list", "table", "inet", "podwire-proxy"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn nft(&self, args: &[&str]) -> bool {
        let mut full = vec!["nft"];
        full.extend_from_slice(args);
        self.netns("node").exec(&full).status.success()
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

/// One TCP request: the server's line, or the error (refused, timeout).
pub fn tcp_get(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_string())
}

/// `pod=<x>` of a server line.
pub fn pod_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pod="))
        .unwrap_or("")
        .to_string()
}

pub fn client_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("client="))
        .unwrap_or("")
        .to_string()
}

/// Compile options of the test node (node01, slice 10.244.1.0/24).
pub fn options() -> CompileOptions {
    CompileOptions {
        node_name: "node01".into(),
        node_pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        structure: StructureOptions {
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            localhost_nodeports: false,
        },
    }
}

/// A Service in namespace apps from its spec (and status).
pub fn service(name: &str, spec: serde_json::Value, status: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "apps"},
        "spec": spec, "status": status,
    }))
    .expect("service")
}

/// An EndpointSlice for Service `svc` with port `http`/`proto` -> `port`
/// and ready endpoints on node01.
pub fn slice(svc: &str, proto: &str, port: u16, ips: &[&str]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "node01", "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-x"), "namespace": "apps", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": proto, "port": port}],
        "endpoints": eps,
    }))
    .expect("slice")
}

pub fn state(objects: Vec<Object>) -> ClusterState {
    let mut s = ClusterState::default();
    for o in objects {
        s.insert(o);
    }
    s
}

pub fn ruleset(objects: Vec<Object>) -> Ruleset {
    compile(&state(objects), &options())
}

/// Polls `f` (every 20 ms) until it returns Some or `limit` passes.
pub fn poll<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    podwire_testsupport::poll(limit, f)
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

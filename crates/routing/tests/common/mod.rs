//! Test worlds for the routing agent, built only from network namespaces
//! the tests create (and remove on drop, even when a test fails): switches
//! (a bridge in its own namespace), nodes (an `eth0` on a switch, a `cni0`
//! bridge with the first address of the node's slice, one pod namespace
//! behind it), an optional router between two underlay subnets and an
//! "external" host. Nothing is created in the root namespace: every `ip`
//! command runs inside one of the test's namespaces.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ipnet::Ipv4Net;
use podwire_kernel::Netlink;
use podwire_model::k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podwire_model::{ClusterConfig, ClusterState, RoutingMode};
use podwire_routing::{ApplyReport, RoutePlan, RoutingError, apply};
use podwire_testsupport::Netns;

/// A network namespace that lives as long as the value (the guard is
/// podwire-testsupport's; this keeps the name at hand for the tests).
pub struct Ns {
    pub name: String,
    netns: Netns,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let netns = Netns::with_prefix("pwr", tag);
        Ns {
            name: netns.name().to_string(),
            netns,
        }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn sh(&self, cmd: &str) -> Output {
        self.netns.sh(cmd)
    }

    /// Runs `cmd` inside the namespace; panics with its output on failure.
    pub fn ok(&self, cmd: &str) -> String {
        self.netns.ok(cmd)
    }

    /// Runs `f` with the calling thread inside this namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let ns = podwire_kernel::Netns::open(self.path()).expect("open netns");
        ns.run(f).expect("enter netns")
    }

    /// Applies a plan inside this namespace, as the agent does.
    pub fn apply(
        &self,
        plan: &RoutePlan,
        previous: Option<&RoutePlan>,
    ) -> Result<ApplyReport, RoutingError> {
        self.run(|| {
            let mut nl = Netlink::new().expect("netlink socket");
            apply(plan, &mut nl, previous)
        })
    }

    /// Pings `dst` (from `src` when given) a bounded number of times.
    pub fn ping(&self, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> bool {
        let from = src.map(|s| format!("-I {s} ")).unwrap_or_default();
        (0..5).any(|_| {
            self.sh(&format!("ping -c 1 -W 1 {from}{dst}"))
                .status
                .success()
        })
    }

    /// The routing state podwire owns here, as text, for before/after checks.
    pub fn routing_snapshot(&self) -> String {
        self.ok("ip route show proto 112; \
             ip link show podwire.1 >/dev/null 2>&1 && { \
               ip -d link show podwire.1 | sed 1d; \
               ip addr show dev podwire.1 | grep inet; \
               ip neigh show dev podwire.1 nud permanent; \
               bridge fdb show dev podwire.1; }; \
             nft list table inet podwire-node 2>/dev/null; true")
    }
}

/// One node: its namespace, its pod's namespace and their addresses.
pub struct Node {
    pub name: String,
    pub ns: Ns,
    pub pod: Ns,
    pub ip: Ipv4Addr,
    pub cidr: Ipv4Net,
    pub pod_ip: Ipv4Addr,
}

/// A little cluster network: switches, an optional router, nodes, an
/// external host on the first switch.
pub struct World {
    pub switches: Vec<Ns>,
    pub router: Option<Ns>,
    pub external: Ns,
    pub external_ip: Ipv4Addr,
    pub nodes: Vec<Node>,
}

fn subnet_ip(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, subnet, host)
}

fn new_switch(tag: &str) -> Ns {
    let sw = Ns::new(tag);
    sw.ok("ip link add br0 type bridge && ip link set br0 up");
    sw
}

/// Cables `ns` to `switch` as interface `ifname`, with `addr/24`.
fn plug(switch: &Ns, port: &str, ns: &Ns, ifname: &str, addr: Ipv4Addr) {
    switch.ok(&format!(
        "ip link add {port} type veth peer name {ifname} netns {} && ip link set {port} master br0 up",
        ns.name
    ));
    ns.ok(&format!(
        "ip addr add {addr}/24 dev {ifname} && ip link set {ifname} up"
    ));
}

impl World {
    /// `count` nodes on one switch (192.168.56.0/24), node i at .1i with
    /// slice 10.244.i.0/24.
    pub fn one_subnet(count: u8) -> World {
        let switch = new_switch("sw");
        let external = Ns::new("ext");
        let external_ip = subnet_ip(56, 100);
        plug(&switch, "ext", &external, "eth0", external_ip);
        let nodes = (1..=count)
            .map(|i| new_node(i, &switch, 56, None))
            .collect();
        World {
            switches: vec![switch],
            router: None,
            external,
            external_ip,
            nodes,
        }
    }

    /// Node 1 on 192.168.56.0/24, node 2 on 192.168.57.0/24, joined by a
    /// router (.254 on both).
    pub fn two_subnets() -> World {
        let sw1 = new_switch("sw1");
        let sw2 = new_switch("sw2");
        let router = Ns::new("rtr");
        plug(&sw1, "rtr", &router, "eth1", subnet_ip(56, 254));
        plug(&sw2, "rtr", &router, "eth2", subnet_ip(57, 254));
        router.ok("sysctl -qw net.ipv4.ip_forward=1");
        let external = Ns::new("ext");
        let external_ip = subnet_ip(56, 100);
        plug(&sw1, "ext", &external, "eth0", external_ip);
        let nodes = vec![
            new_node(1, &sw1, 56, Some(subnet_ip(56, 254))),
            new_node(2, &sw2, 57, Some(subnet_ip(57, 254))),
        ];
        World {
            switches: vec![sw1, sw2],
            router: Some(router),
            external,
            external_ip,
            nodes,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node of the world")
    }

    /// The cluster state of these nodes (all, or those in `only`).
    pub fn state(&self, mode: RoutingMode, only: Option<&[&str]>) -> ClusterState {
        let mut state = ClusterState {
            config: Some(config(mode)),
            ..Default::default()
        };
        for node in &self.nodes {
            if only.is_some_and(|names| !names.contains(&node.name.as_str())) {
                continue;
            }
            state.nodes.insert(
                node.name.clone(),
                node_object(&node.name, node.ip, node.cidr),
            );
        }
        state
    }
}

fn new_node(i: u8, switch: &Ns, subnet: u8, gateway: Option<Ipv4Addr>) -> Node {
    let name = format!("node{i:02}");
    let ns = Ns::new(&name);
    let ip = subnet_ip(subnet, 10 + i);
    plug(switch, &name, &ns, "eth0", ip);
    if let Some(gw) = gateway {
        ns.ok(&format!("ip route add default via {gw}"));
    }
    let cidr: Ipv4Net = format!("10.244.{i}.0/24").parse().expect("slice");
    let gateway_ip = Ipv4Addr::new(10, 244, i, 1);
    let pod_ip = Ipv4Addr::new(10, 244, i, 2);
    ns.ok(&format!(
        "ip link add cni0 type bridge && ip addr add {gateway_ip}/24 dev cni0 && ip link set cni0 up"
    ));
    let pod = Ns::new(&format!("pod{i}"));
    ns.ok(&format!(
        "ip link add vpod type veth peer name eth0 netns {} && ip link set vpod master cni0 up",
        pod.name
    ));
    pod.ok(&format!(
        "ip addr add {pod_ip}/24 dev eth0 && ip link set eth0 up && ip route add default via {gateway_ip}"
    ));
    Node {
        name,
        ns,
        pod,
        ip,
        cidr,
        pod_ip,
    }
}

pub fn config(mode: RoutingMode) -> ClusterConfig {
    ClusterConfig {
        pod_cidr: "10.244.0.0/16".parse().expect("cidr"),
        service_cidr: "10.96.0.0/12".parse().expect("cidr"),
        node_slice_prefix: 24,
        cluster_domain: "cluster.local".into(),
        routing: mode,
    }
}

pub fn node_object(name: &str, ip: Ipv4Addr, cidr: Ipv4Net) -> podwire_model::Node {
    podwire_model::Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(cidr.to_string()),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                address: ip.to_string(),
                type_: "InternalIP".into(),
            }]),
            ..Default::default()
        }),
    }
}

/// Counts packets from `src` arriving in `ns` (an nft counter in its own
/// table), to tell which source address a receiver really saw.
pub fn watch_sources(ns: &Ns, srcs: &[Ipv4Addr]) {
    let mut rules = String::new();
    for src in srcs {
        rules.push_str(&format!("\t\tip saddr {src} counter\n"));
    }
    ns.ok(&format!(
        "nft -f - <<'EOF'\ntable ip seen {{\n\tchain input {{\n\t\ttype filter hook input priority 0;\n{rules}\t}}\n}}\nEOF"
    ));
}

/// Packets counted for `src` by [`watch_sources`].
pub fn seen_from(ns: &Ns, src: Ipv4Addr) -> u64 {
    let text = ns.ok("nft list table ip seen");
    text.lines()
        .find(|l| l.contains(&format!("ip saddr {src} counter")))
        .and_then(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "packets")?;
            words.next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it holds or `limit` passes; the time it
/// took, or None.
pub fn wait_for(limit: Duration, check: impl FnMut() -> bool) -> Option<Duration> {
    podwire_testsupport::time_until(limit, check)
}

/// A store directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
    _dir: podwire_testsupport::TempDir,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = podwire_testsupport::TempDir::new(tag);
        TempDir {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }
}

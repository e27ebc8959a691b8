//! The pure half of the node agent: cluster state in, this node's routing
//! plan out (routes, VXLAN device, neighbours, FDB entries, masquerade
//! table). No I/O, so every decision here is unit-tested without root.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use podwire_model::{ClusterState, NodeInfo, RoutingMode};
use serde::Serialize;

use crate::error::RoutingError;
use crate::masq;

/// The VXLAN device's name: like Flannel's `flannel.1`, the suffix is the VNI.
pub const VXLAN_DEVICE: &str = "podwire.1";
/// The VXLAN network identifier (Flannel's default too).
pub const VXLAN_VNI: u32 = 1;
/// The UDP port of the overlay: Linux's and Flannel's default (IANA's is 4789).
pub const VXLAN_PORT: u16 = 8472;
/// Encapsulation overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The smallest MTU IPv4 allows (RFC 791), for the overlay device.
const MIN_IPV4_MTU: u32 = 68;
/// The route protocol number (`proto 112`) that marks routes as podwire's,
/// so the agent can find and remove its own routes after a restart and
/// never touches anyone else's. 112 is unassigned in iproute2's rt_protos.
pub const ROUTE_PROTOCOL: u8 = 112;

/// How pod traffic crosses nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Plain routes to other nodes' slices via their InternalIP (one L2 segment).
    HostGw,
    /// A VXLAN overlay between nodes (works across routers).
    Vxlan,
}

impl From<&RoutingMode> for Mode {
    fn from(mode: &RoutingMode) -> Self {
        match mode {
            RoutingMode::HostGw => Mode::HostGw,
            RoutingMode::Vxlan => Mode::Vxlan,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::HostGw => "host-gw",
            Mode::Vxlan => "vxlan",
        })
    }
}

/// Inputs of the plan that do not come from the cluster state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// The node's underlay interface (holds the InternalIP).
    pub underlay_device: String,
    /// Its MTU; the VXLAN device gets this minus the overhead.
    pub underlay_mtu: u32,
    /// VXLAN peers must have published their tunnel endpoint on their Node
    /// (Kubernetes mode: the MAC is whatever that agent's device has);
    /// without this, an unpublished peer's MAC is derived from its IP (the
    /// files store, where every agent derives it the same way).
    pub require_published_vtep: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            underlay_device: "eth0".to_string(),
            underlay_mtu: 1500,
            require_published_vtep: false,
        }
    }
}

/// This node's VXLAN tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// Underlay source address (this node's InternalIP).
    pub local: Ipv4Addr,
    pub underlay_device: String,
    pub mtu: u32,
    #[serde(serialize_with = "serialize_mac")]
    pub mac: [u8; 6],
    /// The device's own address: this node's slice network address as /32,
    /// as Flannel does (`10.244.1.0/32`), so the node has a source address
    /// inside the cluster range for traffic it sends into the overlay.
    pub address: Ipv4Net,
}

/// A remote node's tunnel endpoint: its overlay address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Vtep {
    /// The remote slice's network address (the remote device's address).
    pub ip: Ipv4Addr,
    #[serde(serialize_with = "serialize_mac")]
    pub mac: [u8; 6],
}

/// Everything this node programs for one other node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The next hop for `pod_cidr`: the node IP (host-gw) or the remote
    /// VTEP address through the VXLAN device, onlink (vxlan).
    pub via: Ipv4Addr,
    /// vxlan only: neighbour `vtep.ip -> vtep.mac` and FDB `vtep.mac -> node_ip`.
    pub vtep: Option<Vtep>,
}

/// A node the plan leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub node: String,
    pub reason: String,
}

/// What one node programs. Printing it (`Display`) gives the dry run of
/// `podwire agent plan`, written as the equivalent `ip`/`bridge`/`nft`
/// commands so it can be read and reproduced by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoutePlan {
    pub node: String,
    pub mode: Mode,
    pub node_ip: Ipv4Addr,
    /// This node's pod slice.
    pub pod_cidr: Ipv4Net,
    /// The cluster's pod range.
    pub cluster_cidr: Ipv4Net,
    pub underlay_device: String,
    pub underlay_mtu: u32,
    /// vxlan only.
    pub vxlan: Option<VxlanDevice>,
    /// Other nodes, sorted by name.
    pub peers: Vec<Peer>,
    pub skipped: Vec<Skipped>,
    /// The `inet podwire-node` table, as `nft -f` text.
    pub nft: String,
}

fn serialize_mac<S: serde::Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_mac(mac))
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    podwire_kernel::link::format_mac(mac)
}

/// The VTEP MAC of a node: locally administered unicast (`02`), `70` ("p"),
/// then the four bytes of the node's IPv4 address. Injective in the IP, so
/// two nodes never share a MAC, and stable, so a restarted agent or a peer
/// with a cached FDB entry agrees on it without exchanging anything.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x02, 0x70, a, b, c, d]
}

/// The overlay device's MTU for an underlay MTU.
pub fn vxlan_mtu(underlay_device: &str, underlay_mtu: u32) -> Result<u32, RoutingError> {
    let min = MIN_IPV4_MTU + VXLAN_OVERHEAD;
    if underlay_mtu < min {
        return Err(RoutingError::UnderlayMtuTooSmall {
            device: underlay_device.to_string(),
            mtu: underlay_mtu,
            min,
        });
    }
    Ok(underlay_mtu - VXLAN_OVERHEAD)
}

/// This node's plan with the default options (underlay `eth0`, MTU 1500).
pub fn plan(state: &ClusterState, node: &str) -> Result<RoutePlan, RoutingError> {
    plan_with(state, node, &PlanOptions::default())
}

/// This node's plan for the given underlay.
pub fn plan_with(
    state: &ClusterState,
    node: &str,
    options: &PlanOptions,
) -> Result<RoutePlan, RoutingError> {
    let config = state.config.as_ref().ok_or(RoutingError::NoClusterConfig)?;
    let infos = state.node_infos();
    // node_infos() leaves out nodes without an InternalIP or a podCIDR;
    // name them so the plan can say why they have no route.
    let without_cidr: Vec<String> = state
        .nodes
        .keys()
        .filter(|name| !infos.iter().any(|info| &info.name == *name))
        .cloned()
        .collect();
    compile(
        Mode::from(&config.routing),
        config.pod_cidr,
        &infos,
        &without_cidr,
        node,
        options,
    )
}

fn v4_net(what: impl Into<String>, net: IpNet) -> Result<Ipv4Net, RoutingError> {
    match net {
        IpNet::V4(v4) => Ok(v4.trunc()),
        IpNet::V6(v6) => Err(RoutingError::Ipv6Unsupported {
            what: what.into(),
            value: v6.to_string(),
        }),
    }
}

fn v4_addr(what: impl Into<String>, ip: IpAddr) -> Result<Ipv4Addr, RoutingError> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => Err(RoutingError::Ipv6Unsupported {
            what: what.into(),
            value: v6.to_string(),
        }),
    }
}

/// The plan from plain inputs (what `plan_with` extracts from the state).
pub fn compile(
    mode: Mode,
    cluster_cidr: IpNet,
    nodes: &[NodeInfo],
    without_cidr: &[String],
    node: &str,
    options: &PlanOptions,
) -> Result<RoutePlan, RoutingError> {
    let cluster_cidr = v4_net("the cluster pod range", cluster_cidr)?;
    let Some(me) = nodes.iter().find(|n| n.name == node) else {
        if without_cidr.iter().any(|n| n == node) {
            return Err(RoutingError::NoPodCidr {
                node: node.to_string(),
            });
        }
        let mut known: Vec<&str> = nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(without_cidr.iter().map(String::as_str))
            .collect();
        known.sort_unstable();
        return Err(RoutingError::NodeNotFound {
            node: node.to_string(),
            known: if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            },
        });
    };
    let node_ip = v4_addr(format!("node {node}'s InternalIP"), me.internal_ip)?;
    let pod_cidr = v4_net(format!("node {node}'s podCIDR"), me.pod_cidr)?;

    let vxlan = match mode {
        Mode::HostGw => None,
        Mode::Vxlan => Some(VxlanDevice {
            name: VXLAN_DEVICE.to_string(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: node_ip,
            underlay_device: options.underlay_device.clone(),
            mtu: vxlan_mtu(&options.underlay_device, options.underlay_mtu)?,
            mac: vtep_mac(node_ip),
            // Infallible: a /32 prefix is always valid.
            address: Ipv4Net::new(pod_cidr.network(), 32).unwrap_or(pod_cidr),
        }),
    };

    let mut skipped: Vec<Skipped> = without_cidr
        .iter()
        .filter(|n| n.as_str() != node)
        .map(|n| Skipped {
            node: n.clone(),
            reason: "no InternalIP or spec.podCIDR yet".to_string(),
        })
        .collect();

    // Sorted by name so the plan (and its printout) is deterministic and a
    // conflict always keeps the same node.
    let mut others: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != node).collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    let mut claimed: BTreeMap<String, Ipv4Net> = BTreeMap::new();
    claimed.insert(node.to_string(), pod_cidr);
    let mut peers = Vec::new();
    for other in others {
        let skip = |reason: String| Skipped {
            node: other.name.clone(),
            reason,
        };
        let (IpAddr::V4(peer_ip), IpNet::V4(peer_cidr)) = (other.internal_ip, other.pod_cidr)
        else {
            skipped.push(skip(format!(
                "IPv6 InternalIP or podCIDR ({}, {}): podwire routing is IPv4 only",
                other.internal_ip, other.pod_cidr
            )));
            continue;
        };
        let peer_cidr = peer_cidr.trunc();
        if peer_ip == node_ip {
            skipped.push(skip(format!(
                "its InternalIP {peer_ip} is this node's own: fix the Node object"
            )));
            continue;
        }
        if let Some((owner, net)) = claimed
            .iter()
            .find(|(_, net)| net.contains(&peer_cidr) || peer_cidr.contains(*net))
        {
            skipped.push(skip(format!(
                "its podCIDR {peer_cidr} overlaps {owner}'s {net}: pod slices must be disjoint"
            )));
            continue;
        }
        claimed.insert(other.name.clone(), peer_cidr);
        let (via, vtep, underlay_ip) = match mode {
            Mode::HostGw => (peer_ip, None, peer_ip),
            Mode::Vxlan => {
                let mac = match other.vtep_mac {
                    Some(mac) => mac,
                    None if options.require_published_vtep => {
                        skipped.push(skip(format!(
                            "it has not published its VXLAN endpoint yet (annotation {}): is podwire agent running there?",
                            podwire_model::VTEP_MAC_ANNOTATION
                        )));
                        continue;
                    }
                    None => vtep_mac(peer_ip),
                };
                // The tunnel's outer address: what the peer published, else its InternalIP.
                let underlay_ip = match other.public_ip {
                    Some(IpAddr::V4(ip)) => ip,
                    _ => peer_ip,
                };
                let vtep = Vtep {
                    ip: peer_cidr.network(),
                    mac,
                };
                (vtep.ip, Some(vtep), underlay_ip)
            }
        };
        peers.push(Peer {
            node: other.name.clone(),
            node_ip: underlay_ip,
            pod_cidr: peer_cidr,
            via,
            vtep,
        });
    }
    skipped.sort_by(|a, b| a.node.cmp(&b.node));

    Ok(RoutePlan {
        node: node.to_string(),
        mode,
        node_ip,
        pod_cidr,
        cluster_cidr,
        underlay_device: options.underlay_device.clone(),
        underlay_mtu: options.underlay_mtu,
        vxlan,
        peers,
        skipped,
        nft: masq::table(cluster_cidr, pod_cidr),
    })
}

impl RoutePlan {
    /// The plan as JSON (for tools and `-o json`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The device routes go out of, as `ip route` would name it.
    fn route_dev(&self) -> Option<&str> {
        self.vxlan.as_ref().map(|v| v.name.as_str())
    }
}

impl fmt::Display for RoutePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# podwire agent plan for node {} (routing: {})",
            self.node, self.mode
        )?;
        writeln!(
            f,
            "# node IP {} on {} (mtu {}), pod slice {}, cluster pod range {}",
            self.node_ip, self.underlay_device, self.underlay_mtu, self.pod_cidr, self.cluster_cidr
        )?;
        writeln!(f, "sysctl -w net.ipv4.ip_forward=1")?;
        if let Some(dev) = &self.vxlan {
            writeln!(f, "\n# overlay device")?;
            writeln!(
                f,
                "ip link add {} address {} mtu {} type vxlan id {} local {} dev {} dstport {} nolearning",
                dev.name,
                format_mac(&dev.mac),
                dev.mtu,
                dev.vni,
                dev.local,
                dev.underlay_device,
                dev.port
            )?;
            writeln!(f, "ip addr add {} dev {}", dev.address, dev.name)?;
            writeln!(f, "ip link set {} up", dev.name)?;
        }
        writeln!(f, "\n# routes to the other nodes' pod slices")?;
        if self.peers.is_empty() {
            writeln!(f, "# (none: no other node has a pod slice)")?;
        }
        for peer in &self.peers {
            match self.route_dev() {
                Some(dev) => writeln!(
                    f,
                    "ip route replace {} via {} dev {dev} onlink proto {ROUTE_PROTOCOL}  # {} ({})",
                    peer.pod_cidr, peer.via, peer.node, peer.node_ip
                )?,
                None => writeln!(
                    f,
                    "ip route replace {} via {} proto {ROUTE_PROTOCOL}  # {}",
                    peer.pod_cidr, peer.via, peer.node
                )?,
            }
        }
        if let Some(dev) = &self.vxlan {
            writeln!(f, "\n# neighbours: remote VTEP addresses to MACs")?;
            for peer in &self.peers {
                if let Some(vtep) = &peer.vtep {
                    writeln!(
                        f,
                        "ip neigh replace {} lladdr {} dev {} nud permanent  # {}",
                        vtep.ip,
                        format_mac(&vtep.mac),
                        dev.name,
                        peer.node
                    )?;
                }
            }
            writeln!(f, "\n# fdb: remote VTEP MACs to node IPs")?;
            for peer in &self.peers {
                if let Some(vtep) = &peer.vtep {
                    writeln!(
                        f,
                        "bridge fdb replace {} dev {} dst {} self permanent  # {}",
                        format_mac(&vtep.mac),
                        dev.name,
                        peer.node_ip,
                        peer.node
                    )?;
                }
            }
        }
        if !self.skipped.is_empty() {
            writeln!(f, "\n# nodes left out")?;
            for skipped in &self.skipped {
                writeln!(f, "# {}: {}", skipped.node, skipped.reason)?;
            }
        }
        writeln!(
            f,
            "\n# egress masquerade (nft -f, one transaction, replaces only this table)"
        )?;
        f.write_str(&self.nft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, ip: &str, cidr: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            internal_ip: ip.parse().unwrap(),
            pod_cidr: cidr.parse().unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            vtep_mac: None,
            public_ip: None,
        }
    }

    #[test]
    fn vxlan_peers_from_published_endpoints() {
        let mut nodes = three();
        nodes[0].vtep_mac = Some([0x0a, 1, 2, 3, 4, 5]);
        nodes[0].public_ip = Some("172.16.0.12".parse().unwrap());
        let mut options = PlanOptions {
            require_published_vtep: true,
            ..Default::default()
        };
        let cluster: IpNet = "10.244.0.0/16".parse().unwrap();
        let plan = compile(Mode::Vxlan, cluster, &nodes, &[], "node01", &options).unwrap();
        assert_eq!(plan.peers.len(), 1, "only node02 published");
        let peer = &plan.peers[0];
        assert_eq!(peer.node, "node02");
        assert_eq!(peer.vtep.unwrap().mac, [0x0a, 1, 2, 3, 4, 5]);
        assert_eq!(
            peer.node_ip.to_string(),
            "172.16.0.12",
            "the published underlay address"
        );
        assert_eq!(plan.skipped.len(), 1);
        assert!(
            plan.skipped[0].reason.contains("podwire.io/vtep-mac"),
            "{:?}",
            plan.skipped
        );
        // Without the requirement (the files store) the MAC is derived.
        options.require_published_vtep = false;
        let plan = compile(Mode::Vxlan, cluster, &nodes, &[], "node01", &options).unwrap();
        assert_eq!(plan.peers.len(), 2);
        let cp = plan
            .peers
            .iter()
            .find(|p| p.node == "controlplane")
            .unwrap();
        assert_eq!(
            cp.vtep.unwrap().mac,
            vtep_mac("192.168.56.10".parse().unwrap())
        );
    }

    fn three() -> Vec<NodeInfo> {
        vec![
            info("node02", "192.168.56.12", "10.244.2.0/24"),
            info("controlplane", "192.168.56.10", "10.244.0.0/24"),
            info("node01", "192.168.56.11", "10.244.1.0/24"),
        ]
    }

    fn cluster() -> IpNet {
        "10.244.0.0/16".parse().unwrap()
    }

    #[test]
    fn host_gw_routes_every_other_slice_via_its_node() {
        let plan = compile(
            Mode::HostGw,
            cluster(),
            &three(),
            &[],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(plan.node_ip, Ipv4Addr::new(192, 168, 56, 11));
        assert_eq!(plan.pod_cidr.to_string(), "10.244.1.0/24");
        assert!(plan.vxlan.is_none());
        let routes: Vec<(String, String)> = plan
            .peers
            .iter()
            .map(|p| (p.pod_cidr.to_string(), p.via.to_string()))
            .collect();
        assert_eq!(
            routes,
            vec![
                ("10.244.0.0/24".to_string(), "192.168.56.10".to_string()),
                ("10.244.2.0/24".to_string(), "192.168.56.12".to_string()),
            ]
        );
        assert!(plan.peers.iter().all(|p| p.vtep.is_none()));
    }

    #[test]
    fn vxlan_programs_device_neighbours_fdb_and_onlink_routes() {
        let plan = compile(
            Mode::Vxlan,
            cluster(),
            &three(),
            &[],
            "node01",
            &PlanOptions {
                underlay_device: "eth0".into(),
                underlay_mtu: 9000,
                ..Default::default()
            },
        )
        .unwrap();
        let dev = plan.vxlan.clone().unwrap();
        assert_eq!(dev.name, "podwire.1");
        assert_eq!(dev.vni, 1);
        assert_eq!(dev.port, 8472);
        assert_eq!(dev.local, Ipv4Addr::new(192, 168, 56, 11));
        assert_eq!(dev.mtu, 8950);
        assert_eq!(dev.address.to_string(), "10.244.1.0/32");
        assert_eq!(format_mac(&dev.mac), "02:70:c0:a8:38:0b");
        let node02 = plan.peers.iter().find(|p| p.node == "node02").unwrap();
        assert_eq!(node02.via, Ipv4Addr::new(10, 244, 2, 0));
        let vtep = node02.vtep.unwrap();
        assert_eq!(vtep.ip, Ipv4Addr::new(10, 244, 2, 0));
        assert_eq!(vtep.mac, vtep_mac(Ipv4Addr::new(192, 168, 56, 12)));
        assert_eq!(node02.node_ip, Ipv4Addr::new(192, 168, 56, 12));
    }

    #[test]
    fn mtu_is_underlay_minus_overhead_and_rejects_tiny_underlays() {
        assert_eq!(vxlan_mtu("eth0", 1500).unwrap(), 1450);
        assert_eq!(vxlan_mtu("eth0", 118).unwrap(), 68);
        let err = vxlan_mtu("eth0", 100).unwrap_err().to_string();
        assert!(err.contains("too small"), "{err}");
        assert!(err.contains("eth0"), "{err}");
    }

    #[test]
    fn vtep_macs_are_unique_per_ip_and_locally_administered() {
        let a = vtep_mac(Ipv4Addr::new(192, 168, 56, 10));
        let b = vtep_mac(Ipv4Addr::new(192, 168, 57, 10));
        let c = vtep_mac(Ipv4Addr::new(10, 168, 56, 10));
        assert_ne!(a, b);
        assert_ne!(a, c);
        for mac in [a, b, c] {
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(vtep_mac(Ipv4Addr::new(192, 168, 56, 10)), a, "stable");
    }

    #[test]
    fn this_node_missing_or_without_slice_is_an_error() {
        let err = compile(
            Mode::HostGw,
            cluster(),
            &three(),
            &[],
            "node09",
            &PlanOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RoutingError::NodeNotFound { .. }));
        let text = err.to_string();
        assert!(text.contains("node09"), "{text}");
        assert!(text.contains("controlplane, node01, node02"), "{text}");

        let err = compile(
            Mode::HostGw,
            cluster(),
            &three(),
            &["node03".to_string()],
            "node03",
            &PlanOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, RoutingError::NoPodCidr { .. }), "{err}");
    }

    #[test]
    fn nodes_without_slice_or_with_conflicts_are_skipped_with_a_reason() {
        let mut nodes = three();
        nodes.push(info("node03", "192.168.56.13", "10.244.2.128/25"));
        nodes.push(info("node04", "192.168.56.11", "10.244.4.0/24"));
        nodes.push(info("node05", "fd00::5", "10.244.5.0/24"));
        let plan = compile(
            Mode::Vxlan,
            cluster(),
            &nodes,
            &["node06".to_string()],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap();
        let names: Vec<&str> = plan.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(names, vec!["controlplane", "node02"]);
        let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(skipped, vec!["node03", "node04", "node05", "node06"]);
        assert!(
            plan.skipped[0]
                .reason
                .contains("overlaps node02's 10.244.2.0/24")
        );
        assert!(plan.skipped[3].reason.contains("spec.podCIDR"));
    }

    #[test]
    fn ipv6_pod_range_is_refused_clearly() {
        let err = compile(
            Mode::HostGw,
            "fd00:10::/56".parse().unwrap(),
            &three(),
            &[],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("IPv4"), "{err}");
    }

    #[test]
    fn display_is_a_readable_dry_run() {
        let plan = compile(
            Mode::Vxlan,
            cluster(),
            &three(),
            &["node03".to_string()],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap();
        let text = plan.to_string();
        for needle in [
            "# podwire agent plan for node node01 (routing: vxlan)",
            "ip link add podwire.1 address 02:70:c0:a8:38:0b mtu 1450 type vxlan id 1 local 192.168.56.11 dev eth0 dstport 8472 nolearning",
            "ip addr add 10.244.1.0/32 dev podwire.1",
            "ip route replace 10.244.2.0/24 via 10.244.2.0 dev podwire.1 onlink proto 112  # node02 (192.168.56.12)",
            "ip neigh replace 10.244.2.0 lladdr 02:70:c0:a8:38:0c dev podwire.1 nud permanent  # node02",
            "bridge fdb replace 02:70:c0:a8:38:0c dev podwire.1 dst 192.168.56.12 self permanent  # node02",
            "# node03: no InternalIP or spec.podCIDR yet",
            "table inet podwire-node {",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        let host_gw = compile(
            Mode::HostGw,
            cluster(),
            &three(),
            &[],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap()
        .to_string();
        assert!(
            host_gw
                .contains("ip route replace 10.244.2.0/24 via 192.168.56.12 proto 112  # node02")
        );
        assert!(!host_gw.contains("vxlan"));
        assert!(!host_gw.contains("fdb"));
    }

    fn node(name: &str, ip: &str, cidr: Option<&str>) -> podwire_model::Node {
        use podwire_model::k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
        use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        podwire_model::Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    address: ip.into(),
                    type_: "InternalIP".into(),
                }]),
                ..Default::default()
            }),
        }
    }

    fn state(mode: RoutingMode) -> ClusterState {
        let mut state = ClusterState {
            config: Some(podwire_model::ClusterConfig {
                pod_cidr: cluster(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                node_slice_prefix: 24,
                cluster_domain: "cluster.local".into(),
                routing: mode,
            }),
            ..Default::default()
        };
        for (name, ip, cidr) in [
            ("controlplane", "192.168.56.10", Some("10.244.0.0/24")),
            ("node01", "192.168.56.11", Some("10.244.1.0/24")),
            ("node02", "192.168.56.12", Some("10.244.2.0/24")),
            ("node03", "192.168.56.13", None),
        ] {
            state.nodes.insert(name.into(), node(name, ip, cidr));
        }
        state
    }

    #[test]
    fn plan_reads_mode_and_nodes_from_the_cluster_state() {
        let host_gw = plan(&state(RoutingMode::HostGw), "node01").unwrap();
        assert_eq!(host_gw.mode, Mode::HostGw);
        assert_eq!(host_gw.peers.len(), 2);
        assert_eq!(host_gw.skipped.len(), 1);
        assert_eq!(host_gw.skipped[0].node, "node03");
        assert_eq!(host_gw.underlay_mtu, 1500);

        let vxlan = plan_with(
            &state(RoutingMode::Vxlan),
            "node02",
            &PlanOptions {
                underlay_device: "ens3".into(),
                underlay_mtu: 1400,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(vxlan.vxlan.as_ref().unwrap().mtu, 1350);
        assert_eq!(vxlan.vxlan.as_ref().unwrap().underlay_device, "ens3");

        let err = plan(&state(RoutingMode::Vxlan), "node03").unwrap_err();
        assert!(matches!(err, RoutingError::NoPodCidr { .. }), "{err}");
        let err = plan(&state(RoutingMode::Vxlan), "nodeX").unwrap_err();
        assert!(
            err.to_string()
                .contains("controlplane, node01, node02, node03"),
            "{err}"
        );
        let err = plan(&ClusterState::default(), "node01").unwrap_err();
        assert!(matches!(err, RoutingError::NoClusterConfig), "{err}");
    }

    #[test]
    fn json_names_macs_as_text() {
        let plan = compile(
            Mode::Vxlan,
            cluster(),
            &three(),
            &[],
            "node01",
            &PlanOptions::default(),
        )
        .unwrap();
        let json = plan.to_json();
        assert!(json.contains("\"mac\": \"02:70:c0:a8:38:0b\""), "{json}");
        assert!(json.contains("\"mode\": \"vxlan\""), "{json}");
    }
}

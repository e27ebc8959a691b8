//! The lab's address plan (pure): node IPs on the underlays, the router,
//! the external host, node pod slices and MACs; and the Node objects the lab
//! writes for the planned nodes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use podwire_model::Node;
use podwire_model::k8s_openapi::api::core::v1::{NodeAddress, NodeCondition, NodeSpec, NodeStatus};
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::controllers::workload::{CONTROL_PLANE_LABEL, CONTROL_PLANE_NAME};
use crate::error::ManifestError;
use crate::manifest::LabSpec;
use crate::names::hash;

/// Where everything of a lab sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabPlan {
    pub nodes: Vec<PlannedNode>,
    /// The router's address (.1, with the underlay's prefix) on each
    /// underlay, in underlay order. The router's address on the external
    /// subnet is `external.gateway`.
    pub router_ips: Vec<(String, Ipv4Net)>,
    pub external: Option<PlannedExternal>,
}

/// One node's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedNode {
    pub name: String,
    pub underlay: String,
    /// The node's eth0 address, with the underlay's prefix.
    pub ip: Ipv4Net,
    /// The router's address on the node's underlay (its default gateway).
    pub gateway: Ipv4Addr,
    /// eth0's MAC: locally administered, deterministic, distinct per node.
    pub mac: [u8; 6],
    /// The node's slice of the pod range.
    pub pod_cidr: IpNet,
}

/// The external host's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedExternal {
    pub name: String,
    pub ip: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// The address of host number `offset` in `net`, with the net's prefix.
fn host(net: Ipv4Net, offset: u32) -> Ipv4Net {
    let addr = Ipv4Addr::from(u32::from(net.network()).wrapping_add(offset));
    Ipv4Net::new_assert(addr, net.prefix_len())
}

/// Computes the plan; validates the spec first so the arithmetic below
/// cannot leave the subnets.
pub fn plan_lab(spec: &LabSpec) -> Result<LabPlan, ManifestError> {
    spec.validate()?;
    let mut slices =
        spec.pod_cidr
            .subnets(spec.node_slice_prefix)
            .map_err(|_| ManifestError::SlicePrefix {
                prefix: spec.node_slice_prefix,
                pod_cidr: spec.pod_cidr.to_string(),
                reason: "it is shorter than the pod range's prefix".into(),
            })?;
    let mut next_host: BTreeMap<&str, u32> = BTreeMap::new();
    let mut used_macs = std::collections::BTreeSet::new();
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for node in &spec.nodes {
        // validate() guarantees the underlay exists and has room.
        let underlay = spec
            .underlay_of(node)
            .ok_or_else(|| ManifestError::UnknownUnderlay {
                node: node.name.clone(),
                underlay: node.underlay.clone().unwrap_or_default(),
                known: spec
                    .underlays
                    .iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let index = next_host.entry(underlay.name.as_str()).or_insert(0);
        let ip = host(underlay.subnet, 10 + *index);
        *index += 1;
        let pod_cidr = slices.next().ok_or_else(|| ManifestError::SlicePrefix {
            prefix: spec.node_slice_prefix,
            pod_cidr: spec.pod_cidr.to_string(),
            reason: format!("there are not enough slices for {} nodes", spec.nodes.len()),
        })?;
        let mac = distinct_mac(&spec.name, &node.name, &mut used_macs);
        nodes.push(PlannedNode {
            name: node.name.clone(),
            underlay: underlay.name.clone(),
            ip,
            gateway: host(underlay.subnet, 1).addr(),
            mac,
            pod_cidr,
        });
    }
    let router_ips = spec
        .underlays
        .iter()
        .map(|u| (u.name.clone(), host(u.subnet, 1)))
        .collect();
    let external = spec.external.as_ref().map(|e| PlannedExternal {
        name: e.name.clone(),
        ip: host(e.subnet, 10),
        gateway: host(e.subnet, 1).addr(),
    });
    Ok(LabPlan {
        nodes,
        router_ips,
        external,
    })
}

/// 02:50:57 ("PW") + 3 bytes of a hash of lab and node name; on the rare
/// collision the hash is salted until the MAC is new, so MACs stay distinct
/// and, for a given node list, deterministic.
fn distinct_mac(lab: &str, node: &str, used: &mut std::collections::BTreeSet<[u8; 6]>) -> [u8; 6] {
    let mut salt = 0u32;
    loop {
        let salt_text = salt.to_string();
        let h = if salt == 0 {
            hash(&[lab, node])
        } else {
            hash(&[lab, node, &salt_text])
        };
        let b = h.to_be_bytes();
        let mac = [0x02, 0x50, 0x57, b[5], b[6], b[7]];
        if used.insert(mac) {
            return mac;
        }
        salt += 1;
    }
}

/// The Node object the lab writes for a planned node.
pub fn node_object(node: &PlannedNode) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
    ]);
    if node.name == CONTROL_PLANE_NAME {
        // As kubeadm labels its control-plane node.
        labels.insert(CONTROL_PLANE_LABEL.into(), String::new());
    }
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr.to_string()),
            pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    address: IpAddr::V4(node.ip.addr()).to_string(),
                    type_: "InternalIP".into(),
                },
                NodeAddress {
                    address: node.name.clone(),
                    type_: "Hostname".into(),
                },
            ]),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("podwire lab node is ready".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::workload::is_control_plane;
    use crate::manifest::{LabNode, Underlay, builtin_example, parse_lab};

    #[test]
    fn example_plan() {
        let spec = parse_lab(builtin_example()).unwrap().spec;
        let plan = plan_lab(&spec).unwrap();
        let rows: Vec<(&str, String, String, String)> = plan
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.ip.to_string(),
                    n.gateway.to_string(),
                    n.pod_cidr.to_string(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (
                    "controlplane",
                    "192.168.56.10/24".into(),
                    "192.168.56.1".into(),
                    "10.244.0.0/24".into()
                ),
                (
                    "node01",
                    "192.168.56.11/24".into(),
                    "192.168.56.1".into(),
                    "10.244.1.0/24".into()
                ),
                (
                    "node02",
                    "192.168.56.12/24".into(),
                    "192.168.56.1".into(),
                    "10.244.2.0/24".into()
                ),
            ]
        );
        assert_eq!(
            plan.router_ips,
            vec![("underlay".to_string(), "192.168.56.1/24".parse().unwrap())]
        );
        let ext = plan.external.unwrap();
        assert_eq!(
            (ext.ip.to_string(), ext.gateway.to_string()),
            ("203.0.113.10/24".into(), "203.0.113.1".into())
        );
        let macs: std::collections::BTreeSet<_> = plan.nodes.iter().map(|n| n.mac).collect();
        assert_eq!(macs.len(), 3);
        for mac in &macs {
            assert_eq!(&mac[..3], &[0x02, 0x50, 0x57]);
        }
        // Deterministic.
        assert_eq!(plan_lab(&spec).unwrap().nodes, plan.nodes);
    }

    #[test]
    fn two_underlays_count_hosts_per_underlay() {
        let spec = LabSpec {
            underlays: vec![
                Underlay {
                    name: "net1".into(),
                    subnet: "192.168.56.0/24".parse().unwrap(),
                },
                Underlay {
                    name: "net2".into(),
                    subnet: "192.168.57.0/24".parse().unwrap(),
                },
            ],
            nodes: vec![
                LabNode {
                    name: "a".into(),
                    underlay: None,
                },
                LabNode {
                    name: "b".into(),
                    underlay: Some("net2".into()),
                },
                LabNode {
                    name: "c".into(),
                    underlay: Some("net1".into()),
                },
            ],
            ..Default::default()
        };
        let plan = plan_lab(&spec).unwrap();
        let ips: Vec<String> = plan
            .nodes
            .iter()
            .map(|n| format!("{} {} {}", n.underlay, n.ip, n.gateway))
            .collect();
        assert_eq!(
            ips,
            [
                "net1 192.168.56.10/24 192.168.56.1",
                "net2 192.168.57.10/24 192.168.57.1",
                "net1 192.168.56.11/24 192.168.56.1"
            ]
        );
        assert_eq!(plan.router_ips.len(), 2);
    }

    #[test]
    fn many_nodes_get_distinct_macs() {
        let spec = LabSpec {
            nodes: (0..200)
                .map(|i| LabNode {
                    name: format!("n{i}"),
                    underlay: None,
                })
                .collect(),
            pod_cidr: "10.0.0.0/8".parse().unwrap(),
            service_cidr: "172.16.0.0/12".parse().unwrap(),
            ..Default::default()
        };
        let plan = plan_lab(&spec).unwrap();
        let macs: std::collections::BTreeSet<_> = plan.nodes.iter().map(|n| n.mac).collect();
        assert_eq!(macs.len(), 200);
    }

    #[test]
    fn invalid_spec_is_refused() {
        assert!(matches!(
            plan_lab(&LabSpec::default()),
            Err(ManifestError::NoNodes)
        ));
    }

    #[test]
    fn node_object_fields() {
        let spec = parse_lab(builtin_example()).unwrap().spec;
        let plan = plan_lab(&spec).unwrap();
        let node = node_object(&plan.nodes[1]);
        assert_eq!(node.metadata.name.as_deref(), Some("node01"));
        assert_eq!(
            node.metadata.labels.as_ref().unwrap()["kubernetes.io/hostname"],
            "node01"
        );
        let info = podwire_model::NodeInfo::from_node(&node).unwrap();
        assert_eq!(info.internal_ip.to_string(), "192.168.56.11");
        assert_eq!(info.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(
            node.spec.as_ref().unwrap().pod_cidrs.as_deref(),
            Some(&["10.244.1.0/24".to_string()][..])
        );
        let ready = &node.status.as_ref().unwrap().conditions.as_ref().unwrap()[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "True")
        );
        assert!(is_control_plane(&node_object(&plan.nodes[0])));
        assert!(!is_control_plane(&node));
    }
}

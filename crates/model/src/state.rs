//! `ClusterState`: the desired state every component compiles its plan from,
//! plus the cluster-wide network settings (`ClusterConfig`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    Deployment, EndpointSlice, Ingress, IngressClass, Kind, Namespace, NetworkPolicy, Node, Object,
    Pod, Secret, Service,
};

/// How nodes reach each other's pod slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingMode {
    /// Plain routes via the other nodes' IPs; needs all nodes on one L2 segment.
    HostGw,
    /// Pod traffic encapsulated in UDP between nodes; works across routers.
    Vxlan,
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RoutingMode::HostGw => "host-gw",
            RoutingMode::Vxlan => "vxlan",
        })
    }
}

/// Cluster-wide network settings (what kubeadm's ClusterConfiguration networking holds).
///
/// JSON/YAML field names follow the lab manifest (`podCIDR`, `serviceCIDR`);
/// the plain camelCase spellings (`podCidr`) are accepted too.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(rename = "podCIDR", alias = "podCidr")]
    pub pod_cidr: IpNet,
    #[serde(rename = "serviceCIDR", alias = "serviceCidr")]
    pub service_cidr: IpNet,
    pub node_slice_prefix: u8,
    pub cluster_domain: String,
    pub routing: RoutingMode,
}

/// Everything a component needs to know about the cluster, keyed by
/// (namespace, name) ("" namespace for cluster-scoped).
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub config: Option<ClusterConfig>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub nodes: BTreeMap<String, Node>,
    pub pods: BTreeMap<(String, String), Pod>,
    pub services: BTreeMap<(String, String), Service>,
    pub endpoint_slices: BTreeMap<(String, String), EndpointSlice>,
    pub deployments: BTreeMap<(String, String), Deployment>,
    pub ingresses: BTreeMap<(String, String), Ingress>,
    pub secrets: BTreeMap<(String, String), Secret>,
    /// Cluster-scoped, keyed by name.
    pub ingress_classes: BTreeMap<String, IngressClass>,
    pub network_policies: BTreeMap<(String, String), NetworkPolicy>,
}

/// The annotation a node agent publishes its VXLAN device's MAC in (on its
/// own Node, as Flannel's `flannel.alpha.coreos.com/backend-data`).
pub const VTEP_MAC_ANNOTATION: &str = "podwire.io/vtep-mac";
/// The annotation a node agent publishes its underlay address in (the
/// VXLAN tunnel's outer address; Flannel's `public-ip`).
pub const PUBLIC_IP_ANNOTATION: &str = "podwire.io/public-ip";

/// One node as the routing agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// From status.addresses, type InternalIP (IPv4 first).
    pub internal_ip: IpAddr,
    /// The node's IPv4 pod slice if it has one (spec.podCIDRs, else
    /// spec.podCIDR), else its first.
    pub pod_cidr: IpNet,
    /// Every pod slice (spec.podCIDRs: one per IP family).
    pub pod_cidrs: Vec<IpNet>,
    /// The VXLAN MAC its agent published, if any.
    pub vtep_mac: Option<[u8; 6]>,
    /// The underlay address its agent published, if any.
    pub public_ip: Option<IpAddr>,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl NodeInfo {
    /// The NodeInfo of one Node, or None when it lacks an InternalIP or a
    /// parseable pod slice (a node not yet ready for routing).
    pub fn from_node(node: &Node) -> Option<NodeInfo> {
        let name = node.metadata.name.clone()?;
        let addresses: Vec<IpAddr> = node
            .status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .collect();
        let internal_ip = addresses
            .iter()
            .find(|ip| ip.is_ipv4())
            .or(addresses.first())
            .copied()?;
        let spec = node.spec.as_ref()?;
        let mut pod_cidrs: Vec<IpNet> = spec
            .pod_cidrs
            .iter()
            .flatten()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .collect();
        if pod_cidrs.is_empty() {
            pod_cidrs.extend(spec.pod_cidr.as_ref().and_then(|c| c.parse::<IpNet>().ok()));
        }
        let pod_cidr = pod_cidrs
            .iter()
            .find(|n| matches!(n, IpNet::V4(_)))
            .or(pod_cidrs.first())
            .copied()?;
        let annotation = |key: &str| {
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        Some(NodeInfo {
            name,
            internal_ip,
            pod_cidr,
            pod_cidrs,
            vtep_mac: annotation(VTEP_MAC_ANNOTATION).and_then(parse_mac),
            public_ip: annotation(PUBLIC_IP_ANNOTATION).and_then(|t| t.trim().parse().ok()),
        })
    }
}

impl ClusterState {
    /// Nodes with both an InternalIP and a valid podCIDR, sorted by name.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        // BTreeMap iteration is already name order.
        self.nodes
            .values()
            .filter_map(NodeInfo::from_node)
            .collect()
    }

    /// Adds the object, replacing one with the same kind, namespace and name.
    pub fn insert(&mut self, object: Object) {
        let key = (object.namespace(), object.name());
        match object {
            Object::Namespace(o) => {
                self.namespaces.insert(key.1, o);
            }
            Object::Node(o) => {
                self.nodes.insert(key.1, o);
            }
            Object::Pod(o) => {
                self.pods.insert(key, o);
            }
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::Deployment(o) => {
                self.deployments.insert(key, o);
            }
            Object::Ingress(o) => {
                self.ingresses.insert(key, o);
            }
            Object::Secret(o) => {
                self.secrets.insert(key, o);
            }
            Object::IngressClass(o) => {
                self.ingress_classes.insert(key.1, o);
            }
            Object::NetworkPolicy(o) => {
                self.network_policies.insert(key, o);
            }
        }
    }

    /// Stores the object and says whether that changed anything: a new
    /// object, or one whose resourceVersion (when both carry one) or
    /// content differs from the stored one.
    pub fn apply(&mut self, object: Object) -> bool {
        let key = (object.namespace(), object.name());
        match object {
            Object::Namespace(o) => upsert(&mut self.namespaces, key.1, o),
            Object::Node(o) => upsert(&mut self.nodes, key.1, o),
            Object::Pod(o) => upsert(&mut self.pods, key, o),
            Object::Service(o) => upsert(&mut self.services, key, o),
            Object::EndpointSlice(o) => upsert(&mut self.endpoint_slices, key, o),
            Object::Deployment(o) => upsert(&mut self.deployments, key, o),
            Object::Ingress(o) => upsert(&mut self.ingresses, key, o),
            Object::Secret(o) => upsert(&mut self.secrets, key, o),
            Object::IngressClass(o) => upsert(&mut self.ingress_classes, key.1, o),
            Object::NetworkPolicy(o) => upsert(&mut self.network_policies, key, o),
        }
    }

    /// The (namespace, name) keys of every stored object of a kind
    /// (namespace "" for cluster-scoped kinds).
    pub fn keys(&self, kind: Kind) -> Vec<(String, String)> {
        fn scoped<T>(map: &BTreeMap<(String, String), T>) -> Vec<(String, String)> {
            map.keys().cloned().collect()
        }
        fn cluster<T>(map: &BTreeMap<String, T>) -> Vec<(String, String)> {
            map.keys().map(|n| (String::new(), n.clone())).collect()
        }
        match kind {
            Kind::Namespace => cluster(&self.namespaces),
            Kind::Node => cluster(&self.nodes),
            Kind::Pod => scoped(&self.pods),
            Kind::Service => scoped(&self.services),
            Kind::EndpointSlice => scoped(&self.endpoint_slices),
            Kind::Deployment => scoped(&self.deployments),
            Kind::Ingress => scoped(&self.ingresses),
            Kind::Secret => scoped(&self.secrets),
            Kind::IngressClass => cluster(&self.ingress_classes),
            Kind::NetworkPolicy => scoped(&self.network_policies),
        }
    }

    /// Removes an object; true when it was there. `namespace` is ignored
    /// for cluster-scoped kinds.
    pub fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> bool {
        let key = (namespace.to_string(), name.to_string());
        match kind {
            Kind::Namespace => self.namespaces.remove(name).is_some(),
            Kind::Node => self.nodes.remove(name).is_some(),
            Kind::Pod => self.pods.remove(&key).is_some(),
            Kind::Service => self.services.remove(&key).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(&key).is_some(),
            Kind::Deployment => self.deployments.remove(&key).is_some(),
            Kind::Ingress => self.ingresses.remove(&key).is_some(),
            Kind::Secret => self.secrets.remove(&key).is_some(),
            Kind::IngressClass => self.ingress_classes.remove(name).is_some(),
            Kind::NetworkPolicy => self.network_policies.remove(&key).is_some(),
        }
    }

    /// Looks an object up by identity.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Object> {
        let key = (namespace.to_string(), name.to_string());
        match kind {
            Kind::Namespace => self.namespaces.get(name).cloned().map(Object::Namespace),
            Kind::Node => self.nodes.get(name).cloned().map(Object::Node),
            Kind::Pod => self.pods.get(&key).cloned().map(Object::Pod),
            Kind::Service => self.services.get(&key).cloned().map(Object::Service),
            Kind::EndpointSlice => self
                .endpoint_slices
                .get(&key)
                .cloned()
                .map(Object::EndpointSlice),
            Kind::Deployment => self.deployments.get(&key).cloned().map(Object::Deployment),
            Kind::Ingress => self.ingresses.get(&key).cloned().map(Object::Ingress),
            Kind::Secret => self.secrets.get(&key).cloned().map(Object::Secret),
            Kind::IngressClass => self
                .ingress_classes
                .get(name)
                .cloned()
                .map(Object::IngressClass),
            Kind::NetworkPolicy => self
                .network_policies
                .get(&key)
                .cloned()
                .map(Object::NetworkPolicy),
        }
    }

    /// Every object, kinds in [`Kind`] order, each kind sorted by key.
    pub fn objects(&self) -> Vec<Object> {
        let mut out: Vec<Object> = Vec::new();
        out.extend(self.namespaces.values().cloned().map(Object::Namespace));
        out.extend(self.nodes.values().cloned().map(Object::Node));
        out.extend(self.pods.values().cloned().map(Object::Pod));
        out.extend(self.services.values().cloned().map(Object::Service));
        out.extend(
            self.endpoint_slices
                .values()
                .cloned()
                .map(Object::EndpointSlice),
        );
        out.extend(self.deployments.values().cloned().map(Object::Deployment));
        out.extend(self.ingresses.values().cloned().map(Object::Ingress));
        out.extend(self.secrets.values().cloned().map(Object::Secret));
        out.extend(
            self.ingress_classes
                .values()
                .cloned()
                .map(Object::IngressClass),
        );
        out.extend(
            self.network_policies
                .values()
                .cloned()
                .map(Object::NetworkPolicy),
        );
        out
    }
}

/// Inserts or replaces; true when the map changed. Equal non-empty
/// resourceVersions mean the same object (the API's promise), so the
/// common case of a relist finding nothing new costs no deep comparison.
fn upsert<K: Ord, T>(map: &mut BTreeMap<K, T>, key: K, value: T) -> bool
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta> + PartialEq,
{
    match map.get_mut(&key) {
        Some(old) => {
            let same_version = matches!(
                (&old.metadata().resource_version, &value.metadata().resource_version),
                (Some(a), Some(b)) if a == b && !a.is_empty()
            );
            if same_version || *old == value {
                return false;
            }
            *old = value;
            true
        }
        None => {
            map.insert(key, value);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, ip: Option<&str>, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(Into::into),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    ip.into_iter()
                        .map(|ip| NodeAddress {
                            address: ip.into(),
                            type_: "InternalIP".into(),
                        })
                        .chain([NodeAddress {
                            address: name.into(),
                            type_: "Hostname".into(),
                        }])
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn node_infos_filters_and_sorts() {
        let mut s = ClusterState::default();
        s.insert(Object::Node(node(
            "b",
            Some("192.168.56.11"),
            Some("10.244.1.0/24"),
        )));
        s.insert(Object::Node(node(
            "a",
            Some("192.168.56.10"),
            Some("10.244.0.0/24"),
        )));
        s.insert(Object::Node(node("c", None, Some("10.244.2.0/24"))));
        s.insert(Object::Node(node("d", Some("192.168.56.13"), Some("bad"))));
        let infos = s.node_infos();
        assert_eq!(
            infos.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(
            infos[1].internal_ip,
            "192.168.56.11".parse::<IpAddr>().unwrap()
        );
        assert_eq!(infos[1].pod_cidr, "10.244.1.0/24".parse::<IpNet>().unwrap());
    }

    #[test]
    fn insert_replace_remove() {
        let mut s = ClusterState::default();
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        s.insert(Object::Pod(pod.clone()));
        s.insert(Object::Pod(pod));
        assert_eq!(s.pods.len(), 1);
        assert!(s.pods.contains_key(&("default".into(), "p".into())));
        assert!(s.get(Kind::Pod, "default", "p").is_some());
        assert!(s.remove(Kind::Pod, "default", "p"));
        assert!(!s.remove(Kind::Pod, "default", "p"));
    }

    #[test]
    fn config_json_names() {
        let c = ClusterConfig {
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            node_slice_prefix: 24,
            cluster_domain: "cluster.local".into(),
            routing: RoutingMode::HostGw,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["podCIDR"], "10.244.0.0/16");
        assert_eq!(v["routing"], "host-gw");
        let back: ClusterConfig = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
    }
}

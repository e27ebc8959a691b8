//! Gathers a [`LabPicture`] from a running lab: the lab's record and plan
//! (underlays, router, external host), its cluster state (pods, Services,
//! EndpointSlices — from the files store or the API, as `lab get` reads
//! them) and, from inside each node's network namespace, what the kernel
//! really holds: eth0's address and MAC, cni0, the VXLAN device and the
//! routes to the other nodes' pod slices. The reading is here; turning the
//! facts into the picture ([`assemble`], [`classify_routes`], [`steps`]) is
//! pure and unit-tested.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use podwire_kernel::link::format_mac;
use podwire_kernel::{Netlink, Netns};
use podwire_model::ClusterState;

use super::{
    EndpointRef, ExternalBox, LabPicture, LinkKind, NodeBox, NodeLink, PodBox, ServiceBox, Step,
    TraceOverlay, UnderlayBox,
};
use crate::error::Result;
use crate::inspect::RunningLab;
use crate::manifest::LabSpec;
use crate::paths::netns_path;
use crate::plan::LabPlan;
use crate::trace::places::{Place, PlaceKind};
use crate::trace::{Trace, TraceRequest};

/// The node agent's VXLAN device (the routing crate's `VXLAN_DEVICE`; the
/// lab does not link the routing crate).
pub const VXLAN_DEVICE: &str = "podwire.1";

/// One route of a node's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFact {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// The output device's name.
    pub dev: Option<String>,
    pub onlink: bool,
}

impl std::fmt::Display for RouteFact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// What one node's kernel holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// eth0's first IPv4 address and its MAC.
    pub eth0: Option<(IpNet, String)>,
    pub cni0: Option<IpNet>,
    /// The VXLAN device: its IPv4 address (if any) and MAC.
    pub vxlan: Option<(Option<IpNet>, String)>,
    pub routes: Vec<RouteFact>,
    /// Why the kernel could not be asked.
    pub error: Option<String>,
}

/// The picture of lab `lab` as it is now.
pub fn collect(lab: &str) -> Result<LabPicture> {
    let RunningLab {
        paths,
        spec,
        plan,
        state,
        mode,
    } = RunningLab::open(lab)?;
    let facts: BTreeMap<String, NodeFacts> = plan
        .nodes
        .iter()
        .map(|n| {
            let file = netns_path(&paths.node_ns(&n.name));
            (n.name.clone(), read_node(&file))
        })
        .collect();
    let mut picture = assemble(&spec, &plan, &state, &facts);
    picture.lab = lab.to_string();
    picture.control_plane = mode.as_str().to_string();
    Ok(picture)
}

/// Reads one node's links, addresses and routes from inside its namespace;
/// a failure is recorded, not returned: the picture shows the plan instead.
pub fn read_node(netns: &str) -> NodeFacts {
    match try_read_node(netns) {
        Ok(facts) => facts,
        Err(err) => NodeFacts {
            error: Some(err.to_string()),
            ..NodeFacts::default()
        },
    }
}

fn try_read_node(netns: &str) -> Result<NodeFacts> {
    let ns = Netns::open(netns)?;
    let mut nl = Netlink::in_netns(&ns)?;
    let links = nl.links()?;
    let names: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let mut first_v4 = |index: u32| -> Result<Option<IpNet>> {
        Ok(nl
            .addresses(index)?
            .into_iter()
            .find(|a| matches!(a, IpNet::V4(_))))
    };
    let mut facts = NodeFacts::default();
    for link in &links {
        match link.name.as_str() {
            "eth0" => {
                if let Some(ip) = first_v4(link.index)? {
                    facts.eth0 = Some((ip, link.mac_string()));
                }
            }
            "cni0" => facts.cni0 = first_v4(link.index)?,
            VXLAN_DEVICE => facts.vxlan = Some((first_v4(link.index)?, link.mac_string())),
            _ => {}
        }
    }
    facts.routes = nl
        .route_specs(false)?
        .into_iter()
        .map(|r| RouteFact {
            dst: r.dst,
            gateway: r.gateway,
            dev: r.oif.and_then(|i| names.get(&i).cloned()),
            onlink: r.onlink,
        })
        .collect();
    Ok(facts)
}

/// A node another node may route to: its name, underlay address and pod
/// slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub ip: IpAddr,
    pub pod_cidr: IpNet,
}

/// The links node `from`'s routes make to its peers' pod slices, and a note
/// for every peer it has no route to.
pub fn classify_routes(
    from: &str,
    routes: &[RouteFact],
    peers: &[Peer],
) -> (Vec<NodeLink>, Vec<String>) {
    let mut links = Vec::new();
    let mut notes = Vec::new();
    for peer in peers.iter().filter(|p| p.name != from) {
        let Some(route) = routes.iter().find(|r| r.dst == peer.pod_cidr) else {
            notes.push(format!(
                "{from} has no route to {}'s pods ({})",
                peer.name, peer.pod_cidr
            ));
            continue;
        };
        let kind = if route.dev.as_deref() == Some(VXLAN_DEVICE) {
            LinkKind::Vxlan
        } else if route.gateway == Some(peer.ip) {
            LinkKind::HostGw
        } else {
            LinkKind::Other
        };
        links.push(NodeLink {
            from: from.to_string(),
            to: peer.name.clone(),
            kind,
            route: route.to_string(),
        });
    }
    (links, notes)
}

/// The picture from the lab's settings, plan, cluster state and node facts
/// (pure). Lab name and control plane are the caller's to fill in.
pub fn assemble(
    spec: &LabSpec,
    plan: &LabPlan,
    state: &ClusterState,
    facts: &BTreeMap<String, NodeFacts>,
) -> LabPicture {
    let mut notes = Vec::new();
    let underlays = spec
        .underlays
        .iter()
        .map(|u| UnderlayBox {
            name: u.name.clone(),
            subnet: u.subnet.to_string(),
            router_ip: plan
                .router_ips
                .iter()
                .find(|(name, _)| *name == u.name)
                .map(|(_, ip)| ip.addr().to_string())
                .unwrap_or_default(),
        })
        .collect();
    let external = match (&spec.external, &plan.external) {
        (Some(ext), Some(planned)) => Some(ExternalBox {
            name: ext.name.clone(),
            ip: planned.ip.to_string(),
            subnet: ext.subnet.to_string(),
            gateway: planned.gateway.to_string(),
        }),
        _ => None,
    };
    // The slice each node routes for: the cluster's (the controller
    // manager's, on a real control plane), else the plan's.
    let infos = state.node_infos();
    let mut nodes = Vec::new();
    let mut peers = Vec::new();
    for planned in &plan.nodes {
        let f = facts.get(&planned.name).cloned().unwrap_or_default();
        if let Some(err) = &f.error {
            notes.push(format!(
                "{}: the kernel could not be read ({err}); planned addresses shown",
                planned.name
            ));
        }
        let pod_cidr = infos
            .iter()
            .find(|i| i.name == planned.name)
            .map(|i| i.pod_cidr)
            .unwrap_or(planned.pod_cidr);
        let (eth0_ip, eth0_mac) = match &f.eth0 {
            Some((ip, mac)) => (*ip, mac.clone()),
            None => (IpNet::V4(planned.ip), format_mac(&planned.mac)),
        };
        peers.push(Peer {
            name: planned.name.clone(),
            ip: eth0_ip.addr(),
            pod_cidr,
        });
        nodes.push(NodeBox {
            name: planned.name.clone(),
            underlay: planned.underlay.clone(),
            eth0_ip: eth0_ip.to_string(),
            eth0_mac,
            cni0: f.cni0.map(|c| c.to_string()),
            vxlan: f.vxlan.as_ref().map(|(ip, mac)| match ip {
                Some(ip) => format!("{ip} {mac}"),
                None => mac.clone(),
            }),
            pod_cidr: pod_cidr.to_string(),
            from_kernel: f.error.is_none() && f.eth0.is_some(),
        });
    }
    let mut links = Vec::new();
    for node in &nodes {
        let Some(f) = facts.get(&node.name).filter(|f| f.error.is_none()) else {
            continue;
        };
        let (found, missing) = classify_routes(&node.name, &f.routes, &peers);
        links.extend(found);
        notes.extend(missing);
    }
    let pods: Vec<PodBox> = state
        .pods
        .iter()
        .map(|((namespace, name), pod)| {
            let spec = pod.spec.as_ref();
            PodBox {
                namespace: namespace.clone(),
                name: name.clone(),
                node: spec.and_then(|s| s.node_name.clone()),
                ip: pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
                host_network: spec.and_then(|s| s.host_network) == Some(true),
                ready: podwire_model::pod_is_ready(pod),
            }
        })
        .collect();
    let services = services(state, &pods);
    LabPicture {
        lab: spec.name.clone(),
        control_plane: String::new(),
        routing: spec.routing.to_string(),
        pod_cidr: spec.pod_cidr.to_string(),
        service_cidr: spec.service_cidr.to_string(),
        underlays,
        external,
        nodes,
        pods,
        links,
        services,
        trace: None,
        notes,
    }
}

fn services(state: &ClusterState, pods: &[PodBox]) -> Vec<ServiceBox> {
    use podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let mut out = Vec::new();
    for ((namespace, name), svc) in &state.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let target = match &p.target_port {
                    Some(IntOrString::Int(i)) => i.to_string(),
                    Some(IntOrString::String(s)) => s.clone(),
                    None => p.port.to_string(),
                };
                format!(
                    "{}→{target}/{}{}",
                    p.port,
                    p.protocol.as_deref().unwrap_or("TCP"),
                    p.node_port
                        .map(|n| format!(" nodePort {n}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        let mut endpoints = Vec::new();
        for slice in crate::inspect::slices_of(state, namespace, name) {
            for ep in slice.endpoints.iter().flatten() {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let by_ref = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some((
                            r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            r.name.clone()?,
                        ))
                    });
                for addr in &ep.addresses {
                    let pod = by_ref.clone().or_else(|| {
                        pods.iter()
                            .find(|p| !p.host_network && p.ip.as_deref() == Some(addr.as_str()))
                            .map(|p| (p.namespace.clone(), p.name.clone()))
                    });
                    endpoints.push(EndpointRef {
                        ip: addr.clone(),
                        pod,
                        ready,
                    });
                }
            }
        }
        endpoints.sort_by(|a, b| (&a.ip, &a.pod).cmp(&(&b.ip, &b.pod)));
        endpoints.dedup();
        out.push(ServiceBox {
            namespace: namespace.clone(),
            name: name.clone(),
            kind: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
            cluster_ip: spec.cluster_ip.clone().unwrap_or_else(|| "None".into()),
            ports,
            endpoints,
        });
    }
    out
}

/// A finished trace as an overlay: its path mapped onto the lab's places.
pub fn overlay(lab: &str, req: &TraceRequest, trace: &Trace) -> Result<TraceOverlay> {
    let lab = RunningLab::open(lab)?;
    let kube = lab.mode == crate::ControlPlaneMode::Kubernetes;
    let all = crate::trace::places::places(&lab.paths, &lab.spec, &lab.plan, &lab.state, kube);
    Ok(TraceOverlay {
        title: format!("{} {} → {}", req.proto.name(), req.src, req.dest),
        path: steps(&trace.path(), &all),
        service: service_in_header(&trace.header),
        verdict: trace.verdict.clone(),
        delivered: trace.delivered,
        report: trace.to_string(),
    })
}

/// The trace's place labels as steps on the picture.
pub fn steps(path: &[String], all: &[Place]) -> Vec<Step> {
    path.iter()
        .map(|label| match all.iter().find(|p| p.label == *label) {
            Some(p) => match &p.kind {
                PlaceKind::Pod {
                    namespace, name, ..
                } => Step::Pod {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                PlaceKind::Node => Step::Node(p.name.clone()),
                PlaceKind::Router => Step::Router,
                PlaceKind::External => Step::External,
            },
            None => Step::Other(label.clone()),
        })
        .collect()
}

/// The Service a trace's first header line names: `... (Service NS/NAME
/// port 80)`.
pub fn service_in_header(header: &[String]) -> Option<(String, String)> {
    let first = header.first()?;
    let rest = first.split_once("(Service ")?.1;
    let key = rest.split_whitespace().next()?;
    let (ns, name) = key.split_once('/')?;
    Some((ns.to_string(), name.trim_end_matches(')').to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: Option<&str>, dev: &str) -> RouteFact {
        RouteFact {
            dst: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            dev: Some(dev.into()),
            onlink: false,
        }
    }

    fn peers() -> Vec<Peer> {
        ["node01", "node02", "node03"]
            .iter()
            .enumerate()
            .map(|(i, n)| Peer {
                name: n.to_string(),
                ip: format!("192.168.56.{}", 11 + i).parse().unwrap(),
                pod_cidr: format!("10.244.{}.0/24", i + 1).parse().unwrap(),
            })
            .collect()
    }

    #[test]
    fn routes_become_vxlan_host_gw_or_other_links() {
        let routes = vec![
            route("0.0.0.0/0", Some("192.168.56.1"), "eth0"),
            route("10.244.1.0/24", None, "cni0"),
            route("10.244.2.0/24", Some("10.244.2.0"), VXLAN_DEVICE),
            route("10.244.3.0/24", Some("192.168.56.13"), "eth0"),
        ];
        let (links, notes) = classify_routes("node01", &routes, &peers());
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(links.len(), 2);
        assert_eq!(
            (links[0].to.as_str(), links[0].kind),
            ("node02", LinkKind::Vxlan)
        );
        assert_eq!(links[0].route, "10.244.2.0/24 via 10.244.2.0 dev podwire.1");
        assert_eq!(
            (links[1].to.as_str(), links[1].kind),
            ("node03", LinkKind::HostGw)
        );

        // Via the router instead of the peer: drawn, but as "other".
        let routes = vec![route("10.244.2.0/24", Some("192.168.56.1"), "eth0")];
        let (links, notes) = classify_routes("node01", &routes, &peers());
        assert_eq!(links[0].kind, LinkKind::Other);
        assert_eq!(
            notes,
            vec!["node01 has no route to node03's pods (10.244.3.0/24)"]
        );
    }

    #[test]
    fn trace_labels_map_to_steps() {
        let place = |label: &str, name: &str, kind: PlaceKind| Place {
            label: label.into(),
            name: name.into(),
            kind,
            netns: String::new(),
            ip: None,
        };
        let all = vec![
            place("node node01", "node01", PlaceKind::Node),
            place("router", "router", PlaceKind::Router),
            place("external", "external", PlaceKind::External),
            place(
                "pod default/client (node01)",
                "default/client",
                PlaceKind::Pod {
                    namespace: "default".into(),
                    name: "client".into(),
                    node: "node01".into(),
                },
            ),
        ];
        let path: Vec<String> = [
            "pod default/client (node01)",
            "node node01",
            "router",
            "external",
            "somewhere",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            steps(&path, &all),
            vec![
                Step::Pod {
                    namespace: "default".into(),
                    name: "client".into()
                },
                Step::Node("node01".into()),
                Step::Router,
                Step::External,
                Step::Other("somewhere".into()),
            ]
        );
    }

    #[test]
    fn service_named_in_a_trace_header() {
        let header = vec![
            "trace tcp source port 4242 from pod default/client (node01) to 10.96.0.3:80 (Service apps/web-service port 80)".to_string(),
        ];
        assert_eq!(
            service_in_header(&header),
            Some(("apps".into(), "web-service".into()))
        );
        assert_eq!(
            service_in_header(&["trace tcp to 10.244.1.4:80".into()]),
            None
        );
        assert_eq!(service_in_header(&[]), None);
    }

    #[test]
    fn assembled_from_the_example_lab_without_a_kernel() {
        let parsed = crate::manifest::parse_lab(crate::builtin_example()).unwrap();
        let plan = crate::plan::plan_lab(&parsed.spec).unwrap();
        let mut state = ClusterState::default();
        for o in parsed.objects {
            state.insert(o);
        }
        let picture = assemble(&parsed.spec, &plan, &state, &BTreeMap::new());
        let names: Vec<&str> = picture.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["controlplane", "node01", "node02"]);
        assert_eq!(picture.nodes[1].eth0_ip, "192.168.56.11/24");
        assert!(!picture.nodes[1].from_kernel);
        assert_eq!(picture.routing, "vxlan");
        assert_eq!(picture.underlays[0].router_ip, "192.168.56.1");
        assert_eq!(picture.external.as_ref().unwrap().ip, "203.0.113.10/24");
        assert!(picture.links.is_empty());
        let web = picture
            .services
            .iter()
            .find(|s| s.name == "web-service")
            .unwrap();
        assert_eq!(web.ports, ["80→8080/TCP nodePort 30080"]);
        assert!(picture.pods.iter().any(|p| p.name == "client"));
    }
}

//! Where a trace can start and go in a lab: every pod, node, the router and
//! the external host as a named place with its namespace and address, and
//! the parsing of a trace's SRC and DEST against them (pure: unit-tested on
//! a built state without root).

use std::net::IpAddr;

use podwire_model::ClusterState;

use crate::error::{LabError, Result};
use crate::manifest::LabSpec;
use crate::paths::{LabPaths, netns_path};
use crate::plan::LabPlan;

/// What kind of place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceKind {
    Pod {
        namespace: String,
        name: String,
        node: String,
    },
    Node,
    Router,
    External,
}

/// A network namespace of the lab a packet can cross.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// How reports name it: `pod apps/web-1 (node02)`, `node node01`,
    /// `router`, `external`.
    pub label: String,
    /// The short name users type: `client`, `apps/web-1`, `node01`, ...
    pub name: String,
    pub kind: PlaceKind,
    /// The file of its network namespace (a kubelet's pod namespaces are
    /// reached through their node's mount namespace).
    pub netns: String,
    /// Its main address (pod IP, eth0 address).
    pub ip: Option<IpAddr>,
}

/// Every place of a lab, nodes first. `kube`: pods are run by kubelets
/// (a real control plane), whose pod namespaces are named by pod UID.
pub fn places(
    paths: &LabPaths,
    spec: &LabSpec,
    plan: &LabPlan,
    state: &ClusterState,
    kube: bool,
) -> Vec<Place> {
    let mut out = Vec::new();
    for node in &plan.nodes {
        out.push(Place {
            label: format!("node {}", node.name),
            name: node.name.clone(),
            kind: PlaceKind::Node,
            netns: netns_path(&paths.node_ns(&node.name)),
            ip: Some(IpAddr::V4(node.ip.addr())),
        });
    }
    out.push(Place {
        label: "router".into(),
        name: "router".into(),
        kind: PlaceKind::Router,
        netns: netns_path(&paths.router_ns()),
        ip: plan.router_ips.first().map(|(_, ip)| IpAddr::V4(ip.addr())),
    });
    if let (Some(ext), Some(planned)) = (&spec.external, &plan.external) {
        out.push(Place {
            label: ext.name.clone(),
            name: ext.name.clone(),
            kind: PlaceKind::External,
            netns: netns_path(&paths.external_ns(&ext.name)),
            ip: Some(IpAddr::V4(planned.ip.addr())),
        });
    }
    for ((namespace, name), pod) in &state.pods {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        // Host-network pods live in their node's namespace: not a place.
        if pod
            .spec
            .as_ref()
            .is_some_and(|s| s.host_network == Some(true))
        {
            continue;
        }
        out.push(Place {
            label: format!("pod {namespace}/{name} ({node})"),
            name: format!("{namespace}/{name}"),
            kind: PlaceKind::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
                node: node.clone(),
            },
            netns: if kube {
                let file = format!(
                    "{}{}",
                    crate::cluster::node::pod_netns_prefix(paths, &node),
                    pod.metadata.uid.as_deref().unwrap_or_default()
                );
                match crate::cluster::node::init_pid(paths, &node) {
                    // /run, not /var/run: a symlink would resolve in our own root.
                    Ok(pid) => format!("/proc/{pid}/root/run/netns/{file}"),
                    Err(_) => netns_path(&file),
                }
            } else {
                netns_path(&paths.pod_ns(namespace, name))
            },
            ip,
        });
    }
    out
}

/// Finds SRC: `ns/name` or a pod name (default namespace first, then the
/// only pod of that name), a node, `router`, or the external host's name
/// (or `external`).
pub fn find_source<'a>(all: &'a [Place], src: &str) -> Result<&'a Place> {
    if let Some(p) = all
        .iter()
        .find(|p| p.name == src || (src == "external" && p.kind == PlaceKind::External))
    {
        return Ok(p);
    }
    if !src.contains('/') {
        if let Some(p) = all.iter().find(|p| p.name == format!("default/{src}")) {
            return Ok(p);
        }
        let named: Vec<&Place> = all
            .iter()
            .filter(|p| matches!(&p.kind, PlaceKind::Pod { name, .. } if name == src))
            .collect();
        match named.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(LabError::Invalid(format!(
                    "{src:?} names several pods ({}): write NAMESPACE/NAME",
                    many.iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Err(LabError::Invalid(format!(
        "no pod, node or host {src:?} in this lab: try a pod (`NS/NAME`), a node name, `router` or `external`"
    )))
}

/// The place that owns an address (a pod IP or a node's eth0).
pub fn place_of_ip(all: &[Place], ip: IpAddr) -> Option<&Place> {
    all.iter().find(|p| p.ip == Some(ip))
}

/// DEST as typed: what to resolve and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSpec {
    pub host: String,
    pub port: Option<u16>,
}

/// Splits `DEST[:PORT]` (an IPv6 address goes in brackets: `[fd00::1]:80`).
pub fn parse_dest(dest: &str) -> Result<DestSpec> {
    let bad = || LabError::Invalid(format!("bad destination {dest:?}: use HOST[:PORT]"));
    if let Some(rest) = dest.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if tail.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok(DestSpec {
            host: host.into(),
            port,
        });
    }
    if dest.parse::<IpAddr>().is_ok() {
        return Ok(DestSpec {
            host: dest.into(),
            port: None,
        });
    }
    match dest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Ok(DestSpec {
            host: host.into(),
            port: Some(port.parse().map_err(|_| bad())?),
        }),
        Some(_) => Err(bad()),
        None if dest.is_empty() => Err(bad()),
        None => Ok(DestSpec {
            host: dest.into(),
            port: None,
        }),
    }
}

/// A Service a name may denote: `name.ns`, `name.ns.svc`,
/// `name.ns.svc.<domain>`, or `name` in `default_ns`.
pub fn service_of_name(
    state: &ClusterState,
    host: &str,
    default_ns: &str,
    domain: &str,
) -> Option<(String, String)> {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_suffix(&format!(".svc.{domain}"))
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let key = match host.split_once('.') {
        Some((name, ns)) if !ns.contains('.') => (ns.to_string(), name.to_string()),
        Some(_) => return None,
        None => (default_ns.to_string(), host.to_string()),
    };
    state.services.contains_key(&key).then_some(key)
}

/// The Service (and its port) whose ClusterIP, or whose node port on any
/// node address, `ip:port` is.
pub fn service_of_address(
    state: &ClusterState,
    all: &[Place],
    ip: IpAddr,
    port: u16,
) -> Option<((String, String), String)> {
    let ip_text = ip.to_string();
    let node_address = all
        .iter()
        .any(|p| p.kind == PlaceKind::Node && p.ip == Some(ip));
    for (key, svc) in &state.services {
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let is_cluster_ip = spec.cluster_ip.as_deref() == Some(ip_text.as_str())
            || spec.cluster_ips.iter().flatten().any(|c| *c == ip_text)
            || spec.external_ips.iter().flatten().any(|c| *c == ip_text);
        for p in spec.ports.iter().flatten() {
            let by_vip = is_cluster_ip && p.port == i32::from(port);
            let by_node_port = node_address && p.node_port == Some(i32::from(port));
            if by_vip || by_node_port {
                let how = if by_vip {
                    format!("port {}", p.port)
                } else {
                    format!("nodePort {port} (port {})", p.port)
                };
                return Some((key.clone(), how));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_split_host_and_port() {
        let d = parse_dest("web-service.apps:80").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("web-service.apps", Some(80)));
        let d = parse_dest("10.96.0.10").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("10.96.0.10", None));
        let d = parse_dest("[fd00::1]:53").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("fd00::1", Some(53)));
        assert!(parse_dest("web:http").is_err());
        assert!(parse_dest(":80").is_err());
    }

    fn place(name: &str, kind: PlaceKind) -> Place {
        Place {
            label: name.into(),
            name: name.into(),
            kind,
            netns: format!("ns-{name}"),
            ip: None,
        }
    }

    #[test]
    fn sources_by_pod_name_node_or_external() {
        let pod = |ns: &str, name: &str| {
            place(
                &format!("{ns}/{name}"),
                PlaceKind::Pod {
                    namespace: ns.into(),
                    name: name.into(),
                    node: "node01".into(),
                },
            )
        };
        let all = vec![
            place("node01", PlaceKind::Node),
            place("outside", PlaceKind::External),
            pod("default", "client"),
            pod("apps", "web-1"),
            pod("a", "twin"),
            pod("b", "twin"),
        ];
        assert_eq!(find_source(&all, "client").unwrap().name, "default/client");
        assert_eq!(find_source(&all, "web-1").unwrap().name, "apps/web-1");
        assert_eq!(find_source(&all, "node01").unwrap().name, "node01");
        assert_eq!(find_source(&all, "external").unwrap().name, "outside");
        assert_eq!(find_source(&all, "b/twin").unwrap().name, "b/twin");
        assert!(find_source(&all, "twin").is_err());
        assert!(find_source(&all, "nosuch").is_err());
    }

    #[test]
    fn service_names_in_their_forms() {
        let mut state = ClusterState::default();
        let svc: podwire_model::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-service", "namespace": "apps"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80, "nodePort": 30080}]}
        }))
        .unwrap();
        state.insert(podwire_model::Object::Service(svc));
        let key = Some(("apps".to_string(), "web-service".to_string()));
        for name in [
            "web-service.apps",
            "web-service.apps.svc",
            "web-service.apps.svc.cluster.local",
        ] {
            assert_eq!(
                service_of_name(&state, name, "default", "cluster.local"),
                key
            );
        }
        assert_eq!(
            service_of_name(&state, "web-service", "apps", "cluster.local"),
            key
        );
        assert_eq!(
            service_of_name(&state, "web-service", "default", "cluster.local"),
            None
        );
        assert_eq!(
            service_of_name(&state, "example.com", "default", "cluster.local"),
            None
        );
        let node = Place {
            ip: Some("192.168.56.11".parse().unwrap()),
            ..place("node01", PlaceKind::Node)
        };
        let found = service_of_address(
            &state,
            std::slice::from_ref(&node),
            "10.96.0.20".parse().unwrap(),
            80,
        );
        assert_eq!(found.map(|f| f.0), key.clone());
        let found = service_of_address(&state, &[node], "192.168.56.11".parse().unwrap(), 30080);
        assert_eq!(found.map(|f| f.1), Some("nodePort 30080 (port 80)".into()));
    }
}

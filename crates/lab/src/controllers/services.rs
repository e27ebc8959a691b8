//! ClusterIP and nodePort allocation for Services, as the API server does
//! when a Service is created: validate what the user chose, fill in the rest.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use podwire_model::{ClusterConfig, KUBE_DNS_HOST_OFFSET, Service, nth_address};

use crate::error::ManifestError;

/// The `kubernetes` Service's ClusterIP is the range's first address
/// (10.96.0.1), as kube-apiserver reserves it; never handed out to another.
pub const KUBERNETES_HOST_OFFSET: u32 = 1;
/// The NodePort range.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// The `kubernetes` Service's ClusterIP for a service range (10.96.0.1 for
/// 10.96.0.0/12).
pub fn kubernetes_service_ip(service_cidr: IpNet) -> Option<IpAddr> {
    nth_address(service_cidr, u128::from(KUBERNETES_HOST_OFFSET))
}

fn id(svc: &Service) -> (String, String) {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    (ns, svc.metadata.name.clone().unwrap_or_default())
}

fn service_type(svc: &Service) -> &str {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP")
}

/// Allocates a ClusterIP from the service range for every Service that has
/// none (never the network address, the broadcast address, `.1`, which is
/// the `kubernetes` Service's, or `.10`, which is kept for kube-dns) and a nodePort from 30000-32767 for every port of a
/// NodePort/LoadBalancer Service without one. Pass every Service of the
/// cluster, not only new ones: addresses already held are taken from them.
///
/// Errors: a clusterIP that is not an address, lies outside the range or is
/// used twice; a nodePort outside the range, used twice, or set on a
/// Service type without node ports; a range with nothing left.
pub fn allocate_service_addresses(
    services: &mut [Service],
    config: &ClusterConfig,
) -> Result<(), ManifestError> {
    let range = config.service_cidr;
    let mut used_ips: BTreeMap<IpAddr, (String, String)> = BTreeMap::new();
    let mut used_ports: BTreeMap<i32, ((String, String), String)> = BTreeMap::new();

    // First pass: check and record what users (or earlier runs) chose.
    for svc in services.iter() {
        let (namespace, name) = id(svc);
        let ty = service_type(svc).to_string();
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let chosen = spec
            .cluster_ip
            .clone()
            .filter(|ip| !ip.is_empty())
            .or_else(|| {
                spec.cluster_ips
                    .as_ref()
                    .and_then(|ips| ips.first().cloned())
            });
        if let Some(text) = chosen.filter(|ip| ip != "None" && ty != "ExternalName") {
            let err = |reason: String| ManifestError::ClusterIp {
                namespace: namespace.clone(),
                name: name.clone(),
                ip: text.clone(),
                reason,
            };
            let ip: IpAddr = text
                .parse()
                .map_err(|_| err("is not an IP address; remove it to get one allocated".into()))?;
            if !range.contains(&ip) {
                return Err(err(format!(
                    "is outside the service range {range}; pick one inside it or remove it to get one allocated"
                )));
            }
            if ip == range.network() {
                return Err(err(format!(
                    "is the network address of {range}; pick another one"
                )));
            }
            if let Some((ns, n)) = used_ips.insert(ip, (namespace.clone(), name.clone())) {
                return Err(err(format!(
                    "is already used by service {ns}/{n}; pick another one or remove it"
                )));
            }
        }
        for port in spec.ports.iter().flatten() {
            let Some(node_port) = port.node_port.filter(|p| *p != 0) else {
                continue;
            };
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            let err = |reason: String| ManifestError::NodePort {
                namespace: namespace.clone(),
                name: name.clone(),
                port: node_port,
                reason,
            };
            if ty != "NodePort" && ty != "LoadBalancer" {
                return Err(err(format!(
                    "is set but the service type is {ty}; only NodePort and LoadBalancer services have node ports"
                )));
            }
            if !NODE_PORT_RANGE.contains(&node_port) {
                return Err(err(format!(
                    "is outside the node port range {}-{}",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                )));
            }
            let owner = (namespace.clone(), name.clone());
            match used_ports.get(&node_port) {
                // One Service may use a port number for TCP and UDP alike.
                Some((other, other_proto)) if *other != owner || *other_proto == protocol => {
                    return Err(err(format!(
                        "is already used by service {}/{}; pick another one or remove it to get one allocated",
                        other.0, other.1
                    )));
                }
                _ => {
                    used_ports.insert(node_port, (owner, protocol));
                }
            }
        }
    }

    // Second pass: fill in what is missing, lowest free first, so the
    // result is deterministic.
    let mut next_offset: u128 = 1;
    let mut next_port: i32 = *NODE_PORT_RANGE.start();
    for svc in services.iter_mut() {
        let owner = id(svc);
        let ty = service_type(svc).to_string();
        let Some(spec) = svc.spec.as_mut() else {
            continue;
        };
        let has_ip = spec.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty());
        if ty != "ExternalName" {
            if !has_ip {
                let ip = if let Some(first) = spec
                    .cluster_ips
                    .as_ref()
                    .and_then(|ips| ips.first())
                    .cloned()
                {
                    first
                } else {
                    let ip = loop {
                        let candidate = nth_address(range, next_offset)
                            .filter(|ip| !is_broadcast(range, *ip))
                            .ok_or_else(|| ManifestError::Exhausted {
                                what: "ClusterIP",
                                range: range.to_string(),
                            })?;
                        let offset = next_offset;
                        next_offset += 1;
                        if offset == u128::from(KUBE_DNS_HOST_OFFSET)
                            || offset == u128::from(KUBERNETES_HOST_OFFSET)
                            || used_ips.contains_key(&candidate)
                        {
                            continue;
                        }
                        break candidate;
                    };
                    used_ips.insert(ip, owner.clone());
                    ip.to_string()
                };
                spec.cluster_ip = Some(ip);
            }
            if let Some(ip) = spec.cluster_ip.clone().filter(|ip| ip != "None") {
                if spec.cluster_ips.as_ref().is_none_or(|ips| ips.is_empty()) {
                    spec.cluster_ips = Some(vec![ip.clone()]);
                }
                if spec.ip_families.as_ref().is_none_or(|f| f.is_empty()) {
                    let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
                    spec.ip_families = Some(vec![family.into()]);
                }
                spec.ip_family_policy
                    .get_or_insert_with(|| "SingleStack".into());
            }
        }
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer" && spec.allocate_load_balancer_node_ports != Some(false));
        if !wants_node_ports {
            continue;
        }
        for port in spec.ports.iter_mut().flatten() {
            if port.node_port.is_some_and(|p| p != 0) {
                continue;
            }
            while used_ports.contains_key(&next_port) {
                next_port += 1;
            }
            if !NODE_PORT_RANGE.contains(&next_port) {
                return Err(ManifestError::Exhausted {
                    what: "nodePort",
                    range: format!("{}-{}", NODE_PORT_RANGE.start(), NODE_PORT_RANGE.end()),
                });
            }
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            used_ports.insert(next_port, (owner.clone(), protocol));
            port.node_port = Some(next_port);
        }
    }
    Ok(())
}

fn is_broadcast(range: IpNet, ip: IpAddr) -> bool {
    matches!(range, IpNet::V4(_)) && ip == range.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use podwire_model::{RoutingMode, kube_dns_ip};

    fn config(cidr: &str) -> ClusterConfig {
        ClusterConfig {
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: cidr.parse().unwrap(),
            node_slice_prefix: 24,
            cluster_domain: "cluster.local".into(),
            routing: RoutingMode::Vxlan,
        }
    }

    fn svc(name: &str, ty: Option<&str>, ip: Option<&str>, node_ports: &[Option<i32>]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: ty.map(Into::into),
                cluster_ip: ip.map(Into::into),
                ports: Some(
                    node_ports
                        .iter()
                        .enumerate()
                        .map(|(i, np)| ServicePort {
                            port: 80 + i as i32,
                            node_port: *np,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ip_of(s: &Service) -> &str {
        s.spec.as_ref().unwrap().cluster_ip.as_deref().unwrap()
    }

    #[test]
    fn allocates_skipping_network_dns_and_used() {
        let mut services = vec![
            svc("a", None, None, &[None]),
            svc("b", None, Some("10.96.0.1"), &[None]),
            svc("c", Some("NodePort"), None, &[Some(30000), None]),
            svc("d", None, Some("None"), &[None]),
        ];
        // Fill .2 - .9 so the next allocation has to jump over .10.
        for i in 2..10 {
            services.push(svc(
                &format!("f{i}"),
                None,
                Some(&format!("10.96.0.{i}")),
                &[],
            ));
        }
        allocate_service_addresses(&mut services, &config("10.96.0.0/12")).unwrap();
        assert_eq!(ip_of(&services[0]), "10.96.0.11");
        assert_eq!(ip_of(&services[1]), "10.96.0.1");
        assert_eq!(ip_of(&services[2]), "10.96.0.12");
        assert_eq!(ip_of(&services[3]), "None");
        let spec = services[0].spec.as_ref().unwrap();
        assert_eq!(
            spec.cluster_ips.as_deref(),
            Some(&["10.96.0.11".to_string()][..])
        );
        assert_eq!(spec.ip_families.as_deref(), Some(&["IPv4".to_string()][..]));
        let ports = services[2].spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert_eq!(ports[0].node_port, Some(30000));
        assert_eq!(ports[1].node_port, Some(30001));
        // ClusterIP services get no nodePort.
        assert_eq!(
            services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].node_port,
            None
        );
        assert_eq!(
            kube_dns_ip("10.96.0.0/12".parse().unwrap()),
            Some("10.96.0.10".parse().unwrap())
        );
    }

    #[test]
    fn allocation_is_idempotent() {
        let mut services = vec![svc("a", Some("NodePort"), None, &[None])];
        allocate_service_addresses(&mut services, &config("10.96.0.0/12")).unwrap();
        let once = services.clone();
        allocate_service_addresses(&mut services, &config("10.96.0.0/12")).unwrap();
        assert_eq!(once, services);
    }

    #[test]
    fn errors() {
        let cfg = config("10.96.0.0/12");
        let mut s = vec![svc("a", None, Some("10.0.0.1"), &[])];
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(
            matches!(e, ManifestError::ClusterIp { .. }) && e.to_string().contains("outside"),
            "{e}"
        );

        let mut s = vec![
            svc("a", None, Some("10.96.0.5"), &[]),
            svc("b", None, Some("10.96.0.5"), &[]),
        ];
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(
            e.to_string().contains("already used by service apps/a"),
            "{e}"
        );

        let mut s = vec![svc("a", None, Some("bogus"), &[])];
        assert!(matches!(
            allocate_service_addresses(&mut s, &cfg),
            Err(ManifestError::ClusterIp { .. })
        ));

        let mut s = vec![svc("a", Some("NodePort"), None, &[Some(80)])];
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(
            matches!(e, ManifestError::NodePort { port: 80, .. })
                && e.to_string().contains("30000-32767"),
            "{e}"
        );

        let mut s = vec![
            svc("a", Some("NodePort"), None, &[Some(30080)]),
            svc("b", Some("NodePort"), None, &[Some(30080)]),
        ];
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");

        let mut s = vec![svc("a", None, None, &[Some(30080)])];
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(e.to_string().contains("type is ClusterIP"), "{e}");
    }

    #[test]
    fn exhaustion() {
        // A /29 has .1-.6; .1 is the `kubernetes` Service's, so five are left.
        let cfg = config("10.96.0.0/29");
        let mut s: Vec<Service> = (0..6)
            .map(|i| svc(&format!("s{i}"), None, None, &[]))
            .collect();
        let e = allocate_service_addresses(&mut s, &cfg).unwrap_err();
        assert!(matches!(e, ManifestError::Exhausted { .. }), "{e}");
        let mut s: Vec<Service> = (0..5)
            .map(|i| svc(&format!("s{i}"), None, None, &[]))
            .collect();
        allocate_service_addresses(&mut s, &cfg).unwrap();
        assert_eq!(ip_of(&s[0]), "10.96.0.2");
        assert_eq!(ip_of(&s[4]), "10.96.0.6");
    }

    #[test]
    fn the_first_address_is_kept_for_the_kubernetes_service() {
        let cfg = config("10.96.0.0/12");
        let mut s = vec![svc("ingress", Some("NodePort"), None, &[None])];
        allocate_service_addresses(&mut s, &cfg).unwrap();
        assert_eq!(ip_of(&s[0]), "10.96.0.2");
        assert_eq!(
            kubernetes_service_ip(cfg.service_cidr),
            Some("10.96.0.1".parse().unwrap())
        );
        // The `kubernetes` Service itself asks for it explicitly.
        let mut s = vec![svc("kubernetes", None, Some("10.96.0.1"), &[])];
        allocate_service_addresses(&mut s, &cfg).unwrap();
        assert_eq!(ip_of(&s[0]), "10.96.0.1");
    }
}

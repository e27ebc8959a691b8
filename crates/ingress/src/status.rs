//! The address the controller publishes in each of its Ingresses'
//! `status.loadBalancer` (so `kubectl get ingress` shows an ADDRESS), as
//! ingress-nginx's `--publish-service` / `--publish-status-address` do.
//! Pure: which Ingresses need a new status, from the cluster state; the
//! elected leader alone writes them (see `server.rs`).

use std::collections::BTreeMap;

use podwire_model::ClusterState;
use podwire_model::k8s_openapi::api::networking::v1::{
    IngressLoadBalancerIngress, IngressLoadBalancerStatus,
};

use crate::our_ingresses;

/// Where the published address comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// The Service in front of the controller (`--publish-service NS/NAME`):
    /// a LoadBalancer's ingress points and external IPs, else its external
    /// IPs, else its ClusterIP (an ExternalName's name).
    Service { namespace: String, name: String },
    /// Fixed addresses (`--publish-status-address`): IPs or host names.
    Addresses(Vec<String>),
}

impl Publish {
    /// `NS/NAME` for a Service.
    pub fn service(text: &str) -> Option<Publish> {
        let (namespace, name) = text.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| {
            Publish::Service {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }
        })
    }
}

fn point(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<std::net::IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(address.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(address.to_string()),
            ..Default::default()
        }
    }
}

/// The status every Ingress of ours should carry; None when the published
/// Service does not exist (yet).
pub fn published(state: &ClusterState, publish: &Publish) -> Option<IngressLoadBalancerStatus> {
    let points: Vec<IngressLoadBalancerIngress> = match publish {
        Publish::Addresses(addresses) => addresses.iter().map(|a| point(a)).collect(),
        Publish::Service { namespace, name } => {
            let svc = state.services.get(&(namespace.clone(), name.clone()))?;
            let spec = svc.spec.clone().unwrap_or_default();
            let external: Vec<IngressLoadBalancerIngress> = spec
                .external_ips
                .iter()
                .flatten()
                .map(|ip| point(ip))
                .collect();
            match spec.type_.as_deref() {
                Some("ExternalName") => spec.external_name.iter().map(|n| point(n)).collect(),
                Some("LoadBalancer") => {
                    let mut points: Vec<IngressLoadBalancerIngress> = svc
                        .status
                        .as_ref()
                        .and_then(|s| s.load_balancer.as_ref())
                        .and_then(|lb| lb.ingress.as_ref())
                        .into_iter()
                        .flatten()
                        .map(|i| IngressLoadBalancerIngress {
                            ip: i.ip.clone(),
                            hostname: i.hostname.clone(),
                            ..Default::default()
                        })
                        .collect();
                    points.extend(external);
                    points
                }
                _ if !external.is_empty() => external,
                _ => spec
                    .cluster_ip
                    .iter()
                    .filter(|ip| ip.as_str() != "None")
                    .map(|ip| point(ip))
                    .collect(),
            }
        }
    };
    let mut points = points;
    points.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    points.dedup();
    Some(IngressLoadBalancerStatus {
        ingress: (!points.is_empty()).then_some(points),
    })
}

/// Our Ingresses whose status differs from what should be published,
/// keyed by (namespace, name), with the status to write.
pub fn pending(
    state: &ClusterState,
    class: &str,
    publish: &Publish,
) -> BTreeMap<(String, String), IngressLoadBalancerStatus> {
    let Some(wanted) = published(state, publish) else {
        return BTreeMap::new();
    };
    let normalized = |s: Option<&IngressLoadBalancerStatus>| {
        s.and_then(|s| s.ingress.clone())
            .filter(|v| !v.is_empty())
            .unwrap_or_default()
    };
    our_ingresses(state, class)
        .into_iter()
        .filter(|ing| {
            let current = ing.status.as_ref().and_then(|s| s.load_balancer.as_ref());
            normalized(current) != normalized(Some(&wanted))
        })
        .map(|ing| {
            (
                (
                    ing.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    ing.metadata.name.clone().unwrap_or_default(),
                ),
                wanted.clone(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::Object;

    fn state(objects: &[serde_json::Value]) -> ClusterState {
        let mut s = ClusterState::default();
        for o in objects {
            s.insert(Object::from_json(o).unwrap());
        }
        s
    }

    fn ingress(name: &str, status_ip: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"ingressClassName": "podwire", "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}}});
        if let Some(ip) = status_ip {
            v["status"] = serde_json::json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        v
    }

    fn service(spec: serde_json::Value, status: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "podwire-ingress", "namespace": "ingress-podwire"},
            "spec": spec, "status": status})
    }

    #[test]
    fn service_kinds_give_their_addresses() {
        let publish = Publish::service("ingress-podwire/podwire-ingress").unwrap();
        let ip = |s: &ClusterState| {
            published(s, &publish).and_then(|st| st.ingress).map(|v| {
                v.iter()
                    .map(|i| i.ip.clone().or(i.hostname.clone()).unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let s = state(&[service(
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.20"}),
            serde_json::json!({}),
        )]);
        assert_eq!(ip(&s), Some(vec!["10.96.0.20".to_string()]));
        let s = state(&[service(
            serde_json::json!({"type": "NodePort", "clusterIP": "10.96.0.20", "externalIPs": ["192.0.2.7"]}),
            serde_json::json!({}),
        )]);
        assert_eq!(ip(&s), Some(vec!["192.0.2.7".to_string()]));
        let s = state(&[service(
            serde_json::json!({"type": "LoadBalancer", "clusterIP": "10.96.0.20"}),
            serde_json::json!({"loadBalancer": {"ingress": [{"hostname": "lb.example.com"}]}}),
        )]);
        assert_eq!(ip(&s), Some(vec!["lb.example.com".to_string()]));
        assert_eq!(published(&ClusterState::default(), &publish), None);
        assert_eq!(Publish::service("nope"), None);
    }

    #[test]
    fn only_ingresses_with_another_status_are_pending() {
        let s = state(&[
            service(
                serde_json::json!({"type": "ClusterIP", "clusterIP": "10.96.0.20"}),
                serde_json::json!({}),
            ),
            ingress("fresh", None),
            ingress("done", Some("10.96.0.20")),
            ingress("stale", Some("10.96.0.99")),
        ]);
        let publish = Publish::service("ingress-podwire/podwire-ingress").unwrap();
        let pending = pending(&s, "podwire", &publish);
        let names: Vec<&str> = pending.keys().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["fresh", "stale"]);
        let fixed = Publish::Addresses(vec!["192.0.2.1".into()]);
        assert_eq!(super::pending(&s, "podwire", &fixed).len(), 3);
    }
}

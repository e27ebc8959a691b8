//! EndpointSlices computed the way the EndpointSlice controller does: which
//! pods back a Service, whether each is ready, and which port each Service
//! port reaches on it; and the `kubernetes` Service's slice, which the API
//! server writes for itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use podwire_model::k8s_openapi::api::core::v1::{ObjectReference, ServicePort};
use podwire_model::k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use podwire_model::{EndpointSlice, Pod, Service, pod_is_ready};

use crate::names::{hash, safe_suffix};

/// The label tying a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The managed-by value, the one the real controller uses: the lab stands in
/// for it, and consumers must not be able to tell the difference.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

fn namespace_of(meta: &ObjectMeta) -> String {
    meta.namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// The port a Service port reaches on a pod: its targetPort number, or the
/// pod's container port of that name and protocol; None when the pod has no
/// such named port (the pod is then left out for this port, as Kubernetes does).
fn resolve_target_port(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find_map(|cp| {
                    (cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol)
                        .then_some(cp.container_port)
                })
        }
    }
}

/// EndpointSlices for every Service with a selector: for each address
/// family, one slice per distinct set of resolved ports (normally exactly
/// one slice per Service), named `<service>-<5 chars>` and labelled with
/// `kubernetes.io/service-name`. A Service whose selector matches no ready
/// or unready pod still gets one empty slice, as the controller's
/// placeholder. Services without a selector and ExternalName Services get
/// none; headless Services get slices like any other.
///
/// An endpoint is a pod in the Service's namespace whose labels match the
/// selector, that has status.podIP and has not finished (phase Succeeded or
/// Failed). serving = the pod's Ready condition (or publishNotReadyAddresses);
/// terminating = metadata.deletionTimestamp set; ready = serving and not
/// terminating (or publishNotReadyAddresses).
pub fn endpoint_slices(services: &[Service], pods: &[Pod]) -> Vec<EndpointSlice> {
    let mut sorted_pods: Vec<&Pod> = pods.iter().collect();
    sorted_pods.sort_by_key(|p| (namespace_of(&p.metadata), p.metadata.name.clone()));
    services
        .iter()
        .flat_map(|svc| slices_for(svc, &sorted_pods))
        .collect()
}

fn slices_for(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSlice> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let namespace = namespace_of(&svc.metadata);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses == Some(true);
    let service_ports = spec.ports.clone().unwrap_or_default();

    // The families the Service serves: its ipFamilies, else its ClusterIP's,
    // else whatever the pods have.
    let families: Option<BTreeSet<&str>> = spec
        .ip_families
        .as_ref()
        .filter(|f| !f.is_empty())
        .map(|f| f.iter().map(String::as_str).collect())
        .or_else(|| {
            spec.cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| BTreeSet::from([family(ip)]))
        });

    // (family, resolved ports) -> endpoints; ports are kept as a comparable
    // key (name, protocol, port, appProtocol).
    type PortKey = Vec<(Option<String>, String, i32, Option<String>)>;
    let mut groups: BTreeMap<(&'static str, PortKey), Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if namespace_of(&pod.metadata) != namespace {
            continue;
        }
        let labels = pod.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            continue;
        }
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            continue;
        }
        let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let fam = family(ip);
        if families.as_ref().is_some_and(|f| !f.contains(fam)) {
            continue;
        }
        let ports: PortKey = service_ports
            .iter()
            .filter_map(|sp| {
                let target = resolve_target_port(sp, pod)?;
                Some((
                    sp.name.clone(),
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    target,
                    sp.app_protocol.clone(),
                ))
            })
            .collect();
        groups
            .entry((fam, ports))
            .or_default()
            .push(endpoint_for(pod, ip, &name, publish));
    }

    if groups.is_empty() {
        let fam = families
            .as_ref()
            .and_then(|f| f.first().copied())
            .unwrap_or("IPv4");
        let slice_name = format!("{name}-{}", safe_suffix(hash(&[&namespace, &name, fam]), 5));
        return vec![slice(
            svc,
            &namespace,
            &name,
            slice_name,
            fam,
            None,
            Vec::new(),
        )];
    }

    let mut used = BTreeSet::new();
    groups
        .into_iter()
        .map(|((fam, ports), endpoints)| {
            let port_text: String = ports
                .iter()
                .map(|(n, p, t, _)| format!("{n:?}/{p}/{t};"))
                .collect();
            let mut salt = 0u32;
            let slice_name = loop {
                let s = salt.to_string();
                let parts: Vec<&str> = if salt == 0 {
                    vec![&namespace, &name, fam, &port_text]
                } else {
                    vec![&namespace, &name, fam, &port_text, &s]
                };
                // The single common case (no ports split) gets the same name as
                // the empty placeholder, so a slice keeps its name when its
                // first pod appears.
                let h = if used.is_empty() && salt == 0 {
                    hash(&[&namespace, &name, fam])
                } else {
                    hash(&parts)
                };
                let candidate = format!("{name}-{}", safe_suffix(h, 5));
                if used.insert(candidate.clone()) {
                    break candidate;
                }
                salt += 1;
            };
            let endpoint_ports = ports
                .into_iter()
                .map(|(n, protocol, port, app_protocol)| EndpointPort {
                    name: n,
                    protocol: Some(protocol),
                    port: Some(port),
                    app_protocol,
                })
                .collect();
            slice(
                svc,
                &namespace,
                &name,
                slice_name,
                fam,
                Some(endpoint_ports),
                endpoints,
            )
        })
        .collect()
}

fn endpoint_for(pod: &Pod, ip: IpAddr, service: &str, publish: bool) -> Endpoint {
    let serving = publish || pod_is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let ready = publish || (serving && !terminating);
    let spec = pod.spec.as_ref();
    let hostname = spec
        .filter(|s| s.subdomain.as_deref() == Some(service))
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty());
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: spec.and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(namespace_of(&pod.metadata)),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(
    svc: &Service,
    namespace: &str,
    service: &str,
    name: String,
    address_type: &str,
    ports: Option<Vec<EndpointPort>>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), service.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: service.into(),
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(endpoints),
        ports,
    }
}

/// The `kubernetes` Service's name and namespace, and the API server's
/// secure port its slice points at.
pub const API_SERVER_SERVICE: (&str, &str) = ("default", "kubernetes");
pub const API_SERVER_PORT: i32 = 6443;

/// The EndpointSlice kube-apiserver keeps for the `kubernetes` Service: the
/// API server's address and secure port (no selector, no managed-by label:
/// the API server is not the EndpointSlice controller). None = no API
/// server address known (an empty slice, as when it has no endpoints).
pub fn api_server_slice(address: Option<IpAddr>) -> EndpointSlice {
    let (namespace, name) = API_SERVER_SERVICE;
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        address_type: address.map_or("IPv4", family).into(),
        endpoints: Some(
            address
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("https".into()),
            protocol: Some("TCP".into()),
            port: Some(API_SERVER_PORT),
            app_protocol: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::k8s_openapi::api::core::v1::{
        Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServiceSpec,
    };
    use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(
        ns: &str,
        name: &str,
        app: &str,
        ip: Option<&str>,
        ready: bool,
        ports: &[(&str, i32)],
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node01".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p)| ContainerPort {
                                name: Some(n.to_string()),
                                container_port: *p,
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(Into::into),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn service(
        name: &str,
        selector: Option<&[(&str, &str)]>,
        target: Option<IntOrString>,
    ) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: selector.map(labels),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: target,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn ips(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.clone())
            .collect()
    }

    #[test]
    fn selector_matching_and_fields() {
        let pods = vec![
            pod("apps", "web-1", "web", Some("10.244.1.2"), true, &[]),
            pod("apps", "web-2", "web", Some("10.244.2.2"), true, &[]),
            pod("apps", "web-3", "web", None, true, &[]), // no IP yet
            pod("apps", "db-1", "db", Some("10.244.1.3"), true, &[]),
            pod("default", "web-x", "web", Some("10.244.1.4"), true, &[]), // other namespace
        ];
        let svc = service(
            "web-service",
            Some(&[("app", "web")]),
            Some(IntOrString::Int(8080)),
        );
        let slices = endpoint_slices(&[svc], &pods);
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(ips(s), ["10.244.1.2", "10.244.2.2"]);
        let name = s.metadata.name.as_deref().unwrap();
        assert!(
            name.starts_with("web-service-") && name.len() == "web-service-".len() + 5,
            "{name}"
        );
        assert_eq!(s.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web-service"
        );
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
        let ep = &s.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.node_name.as_deref(), Some("node01"));
        assert_eq!(
            ep.target_ref.as_ref().unwrap().name.as_deref(),
            Some("web-1")
        );
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(true));
    }

    #[test]
    fn default_target_port_is_port() {
        let pods = vec![pod("apps", "web-1", "web", Some("10.244.1.2"), true, &[])];
        let slices = endpoint_slices(&[service("s", Some(&[("app", "web")]), None)], &pods);
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(80));
    }

    #[test]
    fn named_target_port_resolution() {
        let pods = vec![
            pod(
                "apps",
                "a",
                "web",
                Some("10.244.1.2"),
                true,
                &[("http", 8080)],
            ),
            pod(
                "apps",
                "b",
                "web",
                Some("10.244.1.3"),
                true,
                &[("http", 9090)],
            ),
            pod(
                "apps",
                "c",
                "web",
                Some("10.244.1.4"),
                true,
                &[("other", 7070)],
            ),
        ];
        let svc = service(
            "s",
            Some(&[("app", "web")]),
            Some(IntOrString::String("http".into())),
        );
        let slices = endpoint_slices(&[svc], &pods);
        // One slice per distinct port set: 8080, 9090, and none for pod c.
        let mut by_port: Vec<(Option<i32>, Vec<String>)> = slices
            .iter()
            .map(|s| {
                (
                    s.ports.as_ref().unwrap().first().and_then(|p| p.port),
                    ips(s),
                )
            })
            .collect();
        by_port.sort();
        assert_eq!(
            by_port,
            vec![
                (None, vec!["10.244.1.4".to_string()]),
                (Some(8080), vec!["10.244.1.2".to_string()]),
                (Some(9090), vec!["10.244.1.3".to_string()]),
            ]
        );
        let names: BTreeSet<_> = slices.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn not_ready_and_terminating_and_publish() {
        let mut terminating = pod("apps", "t", "web", Some("10.244.1.5"), true, &[]);
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        let pods = vec![
            pod("apps", "n", "web", Some("10.244.1.4"), false, &[]),
            terminating,
        ];
        let svc = service("s", Some(&[("app", "web")]), None);
        let slices = endpoint_slices(std::slice::from_ref(&svc), &pods);
        let conds: Vec<_> = slices[0]
            .endpoints
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.conditions.clone().unwrap())
            .collect();
        assert_eq!(
            (conds[0].ready, conds[0].serving, conds[0].terminating),
            (Some(false), Some(false), Some(false))
        );
        assert_eq!(
            (conds[1].ready, conds[1].serving, conds[1].terminating),
            (Some(false), Some(true), Some(true))
        );

        let mut publish = svc;
        publish.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let slices = endpoint_slices(&[publish], &pods);
        assert!(
            slices[0].endpoints.as_ref().unwrap().iter().all(|e| e
                .conditions
                .as_ref()
                .unwrap()
                .ready
                == Some(true))
        );
    }

    #[test]
    fn headless_no_selector_and_empty() {
        let pods = vec![{
            let mut p = pod("apps", "web-0", "web", Some("10.244.1.2"), true, &[]);
            let spec = p.spec.as_mut().unwrap();
            spec.hostname = Some("web-0".into());
            spec.subdomain = Some("web".into());
            p
        }];
        let mut headless = service("web", Some(&[("app", "web")]), None);
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let slices = endpoint_slices(&[headless], &pods);
        assert_eq!(slices.len(), 1);
        assert_eq!(
            slices[0].endpoints.as_ref().unwrap()[0].hostname.as_deref(),
            Some("web-0")
        );

        assert!(endpoint_slices(&[service("manual", None, None)], &pods).is_empty());

        // A selector matching nothing: one empty placeholder slice, with the
        // name the filled slice will have.
        let empty = endpoint_slices(&[service("web", Some(&[("app", "none")]), None)], &pods);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.as_ref().unwrap().is_empty());
        let filled = endpoint_slices(&[service("web", Some(&[("app", "web")]), None)], &pods);
        assert_eq!(empty[0].metadata.name, filled[0].metadata.name);
        // hostname only when the subdomain names the service
        let other = endpoint_slices(&[service("other", Some(&[("app", "web")]), None)], &pods);
        assert_eq!(other[0].endpoints.as_ref().unwrap()[0].hostname, None);
    }

    #[test]
    fn ipv6_pods_get_ipv6_slices() {
        let pods = vec![pod("apps", "a", "web", Some("fd00::2"), true, &[])];
        let slices = endpoint_slices(&[service("s", Some(&[("app", "web")]), None)], &pods);
        assert_eq!(slices[0].address_type, "IPv6");
    }

    #[test]
    fn api_server_slice_points_at_the_secure_port() {
        let slice = api_server_slice(Some("192.168.56.10".parse().unwrap()));
        assert_eq!(slice.metadata.name.as_deref(), Some("kubernetes"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "kubernetes"
        );
        assert_eq!(ips(&slice), ["192.168.56.10"]);
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("https"), Some(6443))
        );
        assert!(ips(&api_server_slice(None)).is_empty());
    }
}

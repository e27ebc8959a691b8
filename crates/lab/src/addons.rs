//! The system objects a lab adds to what its manifest declares, as kubeadm
//! and the usual install manifests would: the built-in namespaces, the
//! `kubernetes` Service, cluster DNS (CoreDNS's place), the ingress
//! controller (ingress-nginx's place) and the certificates the Lab document
//! asks for (cert-manager's place). An object the manifest declares itself
//! replaces the lab's own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use podwire_model::{ClusterState, NodeInfo, Object, Secret, kube_dns_ip};

use crate::certs;
use crate::controllers::endpoints::{API_SERVER_PORT, API_SERVER_SERVICE};
use crate::controllers::{is_control_plane, kubernetes_service_ip};
use crate::error::{LabError, Result};
use crate::manifest::{BUILTIN_NAMESPACES, LabCertificate, LabSpec};
use crate::plan::LabPlan;
use crate::reconcile::Key;

/// Where the lab's ingress controller runs and what it is called, as
/// ingress-nginx's install manifests name theirs.
pub const INGRESS_NAMESPACE: &str = "ingress-podwire";
pub const INGRESS_NAME: &str = "podwire-ingress";
/// The IngressClass the lab installs (the controller's default `--class`).
pub const INGRESS_CLASS: &str = "podwire";
/// The nodePorts of the controller's Service on every node.
pub const INGRESS_HTTP_NODE_PORT: i32 = 30800;
pub const INGRESS_HTTPS_NODE_PORT: i32 = 30443;

/// What the add-ons are built from.
pub struct Context<'a> {
    pub spec: &'a LabSpec,
    pub plan: &'a LabPlan,
    /// The podwire binary the add-ons' pods run.
    pub exe: &'a Path,
    /// The files store the add-ons read (`--source files:DIR`).
    pub store: &'a Path,
}

/// Every system object, each unless the Lab spec turns it off (cluster DNS,
/// ingress); the built-in namespaces and the `kubernetes` Service always.
pub fn system_objects(cx: &Context) -> Result<Vec<Object>> {
    let mut objects = namespaces()?;
    objects.extend(kubernetes_service(cx.spec)?);
    objects.extend(dns_objects(cx)?);
    if cx.spec.ingress {
        objects.extend(ingress_objects(cx)?);
    }
    Ok(objects)
}

/// The system objects with those the manifest declares itself (same kind,
/// namespace and name) left out, followed by the manifest's objects: e.g.
/// a Deployment podwire-ingress with other replicas wins.
pub fn with_declared(mut system: Vec<Object>, declared: Vec<Object>) -> Vec<Object> {
    system.retain(|sys| {
        !declared.iter().any(|o| {
            o.kind() == sys.kind() && o.namespace() == sys.namespace() && o.name() == sys.name()
        })
    });
    system.extend(declared);
    system
}

fn from_json(values: &[serde_json::Value]) -> Result<Vec<Object>> {
    values
        .iter()
        .map(|o| Object::from_json(o).map_err(LabError::from))
        .collect()
}

/// default, kube-system, kube-public and kube-node-lease, as every cluster
/// has them (`kubectl get namespaces` lists them before anything is created).
fn namespaces() -> Result<Vec<Object>> {
    let values: Vec<_> = BUILTIN_NAMESPACES
        .iter()
        .map(|name| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            })
        })
        .collect();
    from_json(&values)
}

/// `default/kubernetes`: the API server's Service at the service range's
/// first address, port 443 to the API server's 6443, without a selector
/// (its EndpointSlice is [`api_server_address`]'s, written by the lab as
/// the API server writes its own).
fn kubernetes_service(spec: &LabSpec) -> Result<Vec<Object>> {
    let ip = kubernetes_service_ip(spec.service_cidr).ok_or_else(|| {
        LabError::Invalid(format!(
            "the service range {} has no first address for the kubernetes Service",
            spec.service_cidr
        ))
    })?;
    let (namespace, name) = API_SERVER_SERVICE;
    from_json(&[serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip.to_string(),
            "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": API_SERVER_PORT}],
        },
    })])
}

/// Where the `kubernetes` Service's endpoint is: the control-plane node's
/// InternalIP (a node named or labelled as kubeadm does), else the first
/// node's; None without nodes.
pub fn api_server_address(state: &ClusterState) -> Option<IpAddr> {
    state
        .nodes
        .values()
        .find(|n| is_control_plane(n))
        .and_then(NodeInfo::from_node)
        .or_else(|| state.node_infos().into_iter().next())
        .map(|n| n.internal_ip)
}

/// Cluster DNS, as kubeadm installs it: two replicas of `podwire dns`
/// labelled k8s-app=kube-dns behind the kube-dns Service at the service
/// range's tenth address.
fn dns_objects(cx: &Context) -> Result<Vec<Object>> {
    let config = cx.spec.cluster_config();
    let Some(dns_ip) = kube_dns_ip(config.service_cidr).filter(|_| cx.spec.cluster_dns) else {
        return Ok(Vec::new());
    };
    let mut command = vec![
        cx.exe.display().to_string(),
        "dns".into(),
        "--source".into(),
        format!("files:{}", cx.store.display()),
        "--zone".into(),
        config.cluster_domain.clone(),
        "--listen".into(),
        "0.0.0.0:53".into(),
    ];
    match &cx.plan.external {
        Some(ext) => command.extend(["--upstream".into(), format!("{}:53", ext.ip.addr())]),
        None => command.extend(["--resolv-conf".into(), "/dev/null".into()]),
    }
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "clusterIP": dns_ip.to_string(),
            "selector": {"k8s-app": "kube-dns"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
            ]
        }
    });
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "dnsPolicy": "Default",
                    "containers": [{
                        "name": "coredns",
                        "command": command,
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}
                        ]
                    }]
                }
            }
        }
    });
    from_json(&[service, deployment])
}

/// The ingress controller: namespace `ingress-podwire`, the default
/// IngressClass `podwire`, two `podwire ingress` pods reading the lab's
/// store, and the NodePort Service that makes them reachable on every
/// node at 30800 (HTTP) and 30443 (HTTPS), as a bare-metal
/// ingress-nginx is reached.
fn ingress_objects(cx: &Context) -> Result<Vec<Object>> {
    let command = vec![
        cx.exe.display().to_string(),
        "ingress".into(),
        "--source".into(),
        format!("files:{}", cx.store.display()),
        "--listen".into(),
        "0.0.0.0:80".into(),
        "--listen-tls".into(),
        "0.0.0.0:443".into(),
        "--metrics-listen".into(),
        "0.0.0.0:10254".into(),
        // Clients reach HTTPS at the nodePort, not at the pod's 443.
        "--https-redirect-port".into(),
        INGRESS_HTTPS_NODE_PORT.to_string(),
    ];
    let labels = serde_json::json!({
        "app.kubernetes.io/name": INGRESS_NAME,
        "app.kubernetes.io/component": "controller",
    });
    let namespace = serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": INGRESS_NAMESPACE, "labels": {"app.kubernetes.io/name": INGRESS_NAME}},
    });
    let class = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {
            "name": INGRESS_CLASS,
            "labels": labels,
            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
        },
        "spec": {"controller": "podwire.io/ingress"},
    });
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": INGRESS_NAME, "namespace": INGRESS_NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "controller",
                        "command": command,
                        "ports": [
                            {"name": "http", "containerPort": 80, "protocol": "TCP"},
                            {"name": "https", "containerPort": 443, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 10254, "protocol": "TCP"},
                        ],
                        // 200 once the route table is loaded: `lab up`
                        // returns when the controller can route.
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                    }],
                },
            },
        },
    });
    let service = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": INGRESS_NAME, "namespace": INGRESS_NAMESPACE, "labels": labels},
        "spec": {
            "type": "NodePort",
            "selector": labels,
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": INGRESS_HTTP_NODE_PORT},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https", "nodePort": INGRESS_HTTPS_NODE_PORT},
            ],
        },
    });
    from_json(&[namespace, class, deployment, service])
}

/// The certificates whose Secret is missing or was issued for other hosts:
/// re-applying a Lab document leaves current ones (and their keys) alone.
pub fn stale_certificates<'a>(
    wanted: &'a [LabCertificate],
    secrets: &BTreeMap<Key, Secret>,
) -> Vec<&'a LabCertificate> {
    wanted
        .iter()
        .filter(|cert| {
            secrets
                .get(&(cert.namespace.clone(), cert.name.clone()))
                .is_none_or(|secret| !certs::is_current(secret, cert))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::Kind;

    use crate::manifest::{builtin_example, parse_lab};
    use crate::plan::plan_lab;

    fn objects(spec: &LabSpec) -> Vec<Object> {
        let plan = plan_lab(spec).unwrap();
        system_objects(&Context {
            spec,
            plan: &plan,
            exe: Path::new("/usr/bin/podwire"),
            store: Path::new("/run/podwire/labs/t/cluster"),
        })
        .unwrap()
    }

    fn names(objects: &[Object]) -> Vec<String> {
        objects.iter().map(Object::describe).collect()
    }

    #[test]
    fn a_lab_has_what_a_kubeadm_cluster_has() {
        let spec = parse_lab(builtin_example()).unwrap().spec;
        let all = objects(&spec);
        assert_eq!(
            names(&all),
            [
                "Namespace default",
                "Namespace kube-system",
                "Namespace kube-public",
                "Namespace kube-node-lease",
                "Service default/kubernetes",
                "Service kube-system/kube-dns",
                "Deployment kube-system/coredns",
                "Namespace ingress-podwire",
                "IngressClass podwire",
                "Deployment ingress-podwire/podwire-ingress",
                "Service ingress-podwire/podwire-ingress",
            ]
        );
        let Object::Service(k) = &all[4] else {
            panic!("not a Service: {}", all[4].describe());
        };
        let spec = k.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
        assert!(spec.selector.is_none());
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.name.as_deref()), (443, Some("https")));
        // The Services' JSON is what `lab get -o yaml` shows.
        let Object::Service(dns) = &all[5] else {
            panic!("not a Service");
        };
        assert_eq!(
            dns.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.10")
        );
    }

    #[test]
    fn switched_off_add_ons_and_declared_objects() {
        let mut spec = parse_lab(builtin_example()).unwrap().spec;
        spec.cluster_dns = false;
        spec.ingress = false;
        let all = objects(&spec);
        assert!(
            all.iter().all(
                |o| o.kind() == Kind::Namespace || o.describe() == "Service default/kubernetes"
            )
        );
        let declared = Object::from_json(&serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-public"},
        }))
        .unwrap();
        let merged = with_declared(all.clone(), vec![declared]);
        assert_eq!(merged.len(), all.len());
        assert_eq!(
            merged
                .iter()
                .filter(|o| o.describe() == "Namespace kube-public")
                .count(),
            1
        );
        assert_eq!(
            merged.last().map(Object::describe).as_deref(),
            Some("Namespace kube-public")
        );
    }

    #[test]
    fn api_server_address_is_the_control_plane_node() {
        let spec = parse_lab(builtin_example()).unwrap().spec;
        let plan = plan_lab(&spec).unwrap();
        let mut state = ClusterState::default();
        assert_eq!(api_server_address(&state), None);
        for node in plan.nodes.iter().rev() {
            state.insert(Object::Node(crate::plan::node_object(node)));
        }
        assert_eq!(
            api_server_address(&state),
            Some("192.168.56.10".parse().unwrap())
        );
        state.remove(Kind::Node, "", "controlplane");
        assert_eq!(
            api_server_address(&state),
            Some("192.168.56.11".parse().unwrap())
        );
    }
}

//! podwire deployed into a lab from the manifests a user applies to a real
//! cluster (`deploy/podwire.yaml`, compiled in): the same List, with the
//! values its header asks a user to check set from the Lab document (pod
//! range, routing, the API server's address, the kube-dns address) and the
//! lab's conventions (ingress NodePorts 30800/30443, `podwire` the default
//! IngressClass); add-ons the Lab turns off are left out. Pure: the lab
//! applies the result with kubectl.

use std::net::IpAddr;

use podwire_model::{RoutingMode, kube_dns_ip};
use serde_json::{Value, json};

use crate::addons::{INGRESS_HTTP_NODE_PORT, INGRESS_HTTPS_NODE_PORT};
use crate::error::{LabError, Result};
use crate::manifest::LabSpec;

/// The manifests of `kubectl apply -f deploy/`.
pub const DEPLOY_YAML: &str = include_str!("../../../../deploy/podwire.yaml");

/// What the lab sets in the manifests.
pub struct DeployValues<'a> {
    pub spec: &'a LabSpec,
    /// `https://<control-plane node>:6443`.
    pub api_server: String,
    /// The https port the ingress controller redirects plain HTTP to.
    pub https_node_port: i32,
}

fn is(item: &Value, kind: &str, name: &str) -> bool {
    item["kind"] == kind && item["metadata"]["name"] == name
}

fn labelled(item: &Value, key: &str, value: &str) -> bool {
    item["metadata"]["labels"][key] == value
}

/// The rendered List (JSON, as `kubectl apply -f -` reads it).
pub fn render(values: &DeployValues) -> Result<Value> {
    let mut list: Value = serde_yaml_ng::from_str(DEPLOY_YAML)
        .map_err(|e| LabError::Failed(format!("deploy/podwire.yaml does not parse: {e}")))?;
    let spec = values.spec;
    let Some(items) = list["items"].as_array_mut() else {
        return Err(LabError::Failed(
            "deploy/podwire.yaml is not a List with items".into(),
        ));
    };
    let is_dns = |i: &Value| {
        labelled(i, "k8s-app", "kube-dns")
            || i["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n == "podwire-dns" || n.starts_with("podwire-dns:"))
    };
    let is_ingress = |i: &Value| {
        i["metadata"]["namespace"] == "ingress-podwire"
            || is(i, "Namespace", "ingress-podwire")
            || i["kind"] == "IngressClass"
            || i["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("podwire-ingress"))
    };
    items.retain(|i| (spec.cluster_dns || !is_dns(i)) && (spec.ingress || !is_ingress(i)));
    let dns_ip = kube_dns_ip(spec.service_cidr).ok_or_else(|| {
        LabError::Invalid(format!(
            "the service range {} has no tenth address for kube-dns",
            spec.service_cidr
        ))
    })?;
    for item in items.iter_mut() {
        if is(item, "ConfigMap", "podwire-config") {
            item["data"] = json!({
                "cluster-cidr": spec.pod_cidr.to_string(),
                "routing": match spec.routing {
                    RoutingMode::Vxlan => "vxlan",
                    RoutingMode::HostGw => "host-gw",
                },
                "api-server": values.api_server,
            });
        } else if is(item, "Service", "kube-dns") {
            item["spec"]["clusterIP"] = json!(dns_ip.to_string());
        } else if is(item, "Service", "podwire-ingress") {
            if let Some(ports) = item["spec"]["ports"].as_array_mut() {
                for port in ports {
                    let node_port = match port["name"].as_str() {
                        Some("http") => INGRESS_HTTP_NODE_PORT,
                        Some("https") => INGRESS_HTTPS_NODE_PORT,
                        _ => continue,
                    };
                    port["nodePort"] = json!(node_port);
                }
            }
        } else if item["kind"] == "IngressClass" {
            item["metadata"]["annotations"] =
                json!({"ingressclass.kubernetes.io/is-default-class": "true"});
        } else if is(item, "Deployment", "podwire-ingress")
            && let Some(args) =
                item["spec"]["template"]["spec"]["containers"][0]["args"].as_array_mut()
        {
            args.push(json!(format!(
                "--https-redirect-port={}",
                values.https_node_port
            )));
        }
    }
    Ok(list)
}

/// The kubelets' `--cluster-dns`.
pub fn cluster_dns(spec: &LabSpec) -> Option<IpAddr> {
    kube_dns_ip(spec.service_cidr).filter(|_| spec.cluster_dns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{builtin_example, parse_lab};

    fn rendered(edit: impl FnOnce(&mut LabSpec)) -> Vec<Value> {
        let mut spec = parse_lab(builtin_example()).unwrap().spec;
        edit(&mut spec);
        let list = render(&DeployValues {
            spec: &spec,
            api_server: "https://192.168.56.10:6443".into(),
            https_node_port: 30443,
        })
        .unwrap();
        list["items"].as_array().unwrap().clone()
    }

    fn find<'a>(items: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
        items.iter().find(|i| is(i, kind, name))
    }

    #[test]
    fn the_lab_fills_in_what_a_user_would() {
        let items = rendered(|s| s.routing = RoutingMode::HostGw);
        let config = find(&items, "ConfigMap", "podwire-config").unwrap();
        assert_eq!(config["data"]["cluster-cidr"], "10.244.0.0/16");
        assert_eq!(config["data"]["routing"], "host-gw");
        assert_eq!(config["data"]["api-server"], "https://192.168.56.10:6443");
        let dns = find(&items, "Service", "kube-dns").unwrap();
        assert_eq!(dns["spec"]["clusterIP"], "10.96.0.10");
        let ingress = find(&items, "Service", "podwire-ingress").unwrap();
        let ports: Vec<i64> = ingress["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["nodePort"].as_i64().unwrap())
            .collect();
        assert_eq!(ports, [30800, 30443]);
        assert!(find(&items, "DaemonSet", "podwire-node").is_some());
    }

    #[test]
    fn add_ons_the_lab_turns_off_are_left_out() {
        let items = rendered(|s| {
            s.cluster_dns = false;
            s.ingress = false;
        });
        assert!(find(&items, "Service", "kube-dns").is_none());
        assert!(find(&items, "Deployment", "podwire-dns").is_none());
        assert!(find(&items, "Deployment", "podwire-ingress").is_none());
        assert!(!items.iter().any(|i| i["kind"] == "IngressClass"));
        assert!(find(&items, "DaemonSet", "podwire-node").is_some());
        assert!(find(&items, "ConfigMap", "podwire-config").is_some());
    }
}

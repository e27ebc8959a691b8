//! `lab get`: kubectl-shaped tables (and YAML) of the lab's objects, read
//! straight from the store the components watch.

use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podwire_model::{ClusterState, Kind, Object};

use crate::error::{LabError, Result};

/// Which objects and how to print them.
#[derive(Debug, Clone)]
pub struct Query {
    pub resource: String,
    /// None = all namespaces.
    pub namespace: Option<String>,
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
}

fn age(time: Option<&Time>) -> String {
    let Some(t) = time else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let secs = now.saturating_sub(t.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0; width];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn in_scope(query: &Query, namespace: &str) -> bool {
    query.namespace.as_deref().is_none_or(|ns| ns == namespace)
}

/// The objects of one kind in the query's namespace (or all).
fn in_namespace<T: Clone>(
    objects: &std::collections::BTreeMap<(String, String), T>,
    query: &Query,
    wrap: fn(T) -> Object,
) -> Vec<Object> {
    objects
        .iter()
        .filter(|((ns, _), _)| in_scope(query, ns))
        .map(|(_, o)| wrap(o.clone()))
        .collect()
}

/// The kind a resource name lists, for the cluster-scoped ones' messages.
fn objects_kind(resource: &str) -> Option<Kind> {
    match resource {
        "nodes" | "node" | "no" => Some(Kind::Node),
        "namespaces" | "namespace" | "ns" => Some(Kind::Namespace),
        "ingressclasses" | "ingressclass" => Some(Kind::IngressClass),
        _ => None,
    }
}

/// Renders the query against a cluster state.
pub fn render(state: &ClusterState, query: &Query) -> Result<String> {
    let all = query.namespace.is_none();
    let wide = query.output == Output::Wide;
    let resource = query.resource.as_str();
    let objects: Vec<Object> = match resource {
        "nodes" | "node" | "no" => state.nodes.values().cloned().map(Object::Node).collect(),
        "pods" | "pod" | "po" => in_namespace(&state.pods, query, Object::Pod),
        "services" | "service" | "svc" => in_namespace(&state.services, query, Object::Service),
        "endpoints" | "ep" | "endpointslices" | "endpointslice" => {
            in_namespace(&state.endpoint_slices, query, Object::EndpointSlice)
        }
        "ingress" | "ingresses" | "ing" => in_namespace(&state.ingresses, query, Object::Ingress),
        "networkpolicies" | "networkpolicy" | "netpol" => {
            in_namespace(&state.network_policies, query, Object::NetworkPolicy)
        }
        "deployments" | "deployment" | "deploy" => {
            in_namespace(&state.deployments, query, Object::Deployment)
        }
        "ingressclasses" | "ingressclass" => state
            .ingress_classes
            .values()
            .cloned()
            .map(Object::IngressClass)
            .collect(),
        "secrets" | "secret" => in_namespace(&state.secrets, query, Object::Secret),
        "namespaces" | "namespace" | "ns" => state
            .namespaces
            .values()
            .cloned()
            .map(Object::Namespace)
            .collect(),
        other => {
            return Err(LabError::Invalid(format!(
                "unknown resource {other:?}: use nodes, pods, svc, endpoints, ingress, ingressclasses, networkpolicies, secrets, deployments or namespaces"
            )));
        }
    };
    if query.output == Output::Yaml {
        let mut out = String::new();
        for object in &objects {
            out.push_str("---\n");
            out.push_str(
                &serde_yaml_ng::to_string(&object.to_json())
                    .map_err(|e| LabError::Failed(e.to_string()))?,
            );
        }
        return Ok(out);
    }
    if objects.is_empty() {
        return Ok(match &query.namespace {
            Some(ns)
                if !matches!(
                    objects_kind(resource),
                    Some(Kind::Node | Kind::Namespace | Kind::IngressClass)
                ) =>
            {
                format!("No resources found in {ns} namespace.\n")
            }
            _ => "No resources found\n".into(),
        });
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let ns_col = |ns: String, row: &mut Vec<String>| {
        if all {
            row.insert(0, ns);
        }
    };
    match objects.first() {
        Some(Object::Node(_)) => {
            let mut head = vec!["NAME", "STATUS", "ROLES", "AGE", "INTERNAL-IP", "POD-CIDR"];
            if wide {
                head.push("MAC");
            }
            rows.push(head.into_iter().map(String::from).collect());
            for o in &objects {
                let Object::Node(n) = o else { continue };
                let name = n.metadata.name.clone().unwrap_or_default();
                let ip = n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                    .map(|a| a.address.clone())
                    .unwrap_or_default();
                let role = if n
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("node-role.kubernetes.io/control-plane"))
                    || name == "controlplane"
                {
                    "control-plane"
                } else {
                    "<none>"
                };
                let mut row = vec![
                    name,
                    "Ready".into(),
                    role.into(),
                    age(n.metadata.creation_timestamp.as_ref()),
                    ip,
                    n.spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.clone())
                        .unwrap_or_default(),
                ];
                if wide {
                    row.push(
                        n.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("podwire.io/mac").cloned())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                }
                rows.push(row);
            }
        }
        Some(Object::Pod(_)) => {
            let mut head = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            if wide {
                head.extend(["IP", "NODE"]);
            }
            let mut head: Vec<String> = head.into_iter().map(String::from).collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::Pod(p) = o else { continue };
                let statuses = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default();
                let total = p.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
                let ready = statuses.iter().filter(|c| c.ready).count();
                let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
                let mut row = vec![
                    p.metadata.name.clone().unwrap_or_default(),
                    format!("{ready}/{total}"),
                    p.status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_else(|| "Pending".into()),
                    restarts.to_string(),
                    age(p.metadata.creation_timestamp.as_ref()),
                ];
                if wide {
                    row.push(
                        p.status
                            .as_ref()
                            .and_then(|s| s.pod_ip.clone())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                    row.push(
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                }
                ns_col(p.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::Service(_)) => {
            let mut head: Vec<String> = [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ]
            .into_iter()
            .map(String::from)
            .collect();
            if wide {
                head.push("SELECTOR".into());
            }
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::Service(s) = o else { continue };
                let spec = s.spec.clone().unwrap_or_default();
                let ports: Vec<String> = spec
                    .ports
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| match p.node_port {
                        Some(np) => format!(
                            "{}:{np}/{}",
                            p.port,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into())
                        ),
                        None => format!(
                            "{}/{}",
                            p.port,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into())
                        ),
                    })
                    .collect();
                let external = spec
                    .external_ips
                    .clone()
                    .filter(|e| !e.is_empty())
                    .map(|e| e.join(","))
                    .unwrap_or_else(|| "<none>".into());
                let mut row = vec![
                    s.metadata.name.clone().unwrap_or_default(),
                    spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
                    spec.cluster_ip.clone().unwrap_or_else(|| "<none>".into()),
                    external,
                    if ports.is_empty() {
                        "<none>".into()
                    } else {
                        ports.join(",")
                    },
                    age(s.metadata.creation_timestamp.as_ref()),
                ];
                if wide {
                    row.push(
                        spec.selector
                            .as_ref()
                            .map(|sel| {
                                sel.iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_else(|| "<none>".into()),
                    );
                }
                ns_col(s.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::EndpointSlice(_)) => {
            let mut head: Vec<String> = ["NAME", "ENDPOINTS", "AGE"]
                .into_iter()
                .map(String::from)
                .collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::EndpointSlice(s) = o else {
                    continue;
                };
                let service = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name").cloned())
                    .unwrap_or_else(|| s.metadata.name.clone().unwrap_or_default());
                let ports: Vec<i32> = s
                    .ports
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|p| p.port)
                    .collect();
                let mut eps = Vec::new();
                for ep in s.endpoints.iter().flatten() {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for addr in &ep.addresses {
                        if ports.is_empty() {
                            eps.push(addr.clone());
                        }
                        for port in &ports {
                            eps.push(format!("{addr}:{port}"));
                        }
                    }
                }
                let mut row = vec![
                    service,
                    if eps.is_empty() {
                        "<none>".into()
                    } else {
                        eps.join(",")
                    },
                    age(s.metadata.creation_timestamp.as_ref()),
                ];
                ns_col(s.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::NetworkPolicy(_)) => {
            // As kubectl: NAME, POD-SELECTOR, AGE.
            let mut head: Vec<String> = ["NAME", "POD-SELECTOR", "AGE"]
                .into_iter()
                .map(String::from)
                .collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::NetworkPolicy(p) = o else {
                    continue;
                };
                let selector = p.spec.as_ref().and_then(|s| s.pod_selector.as_ref());
                let mut terms: Vec<String> = selector
                    .and_then(|s| s.match_labels.as_ref())
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                for e in selector
                    .and_then(|s| s.match_expressions.as_ref())
                    .into_iter()
                    .flatten()
                {
                    let values = e.values.clone().unwrap_or_default().join(",");
                    terms.push(match e.operator.as_str() {
                        "In" => format!("{} in ({values})", e.key),
                        "NotIn" => format!("{} notin ({values})", e.key),
                        "Exists" => e.key.clone(),
                        _ => format!("!{}", e.key),
                    });
                }
                let mut row = vec![
                    p.metadata.name.clone().unwrap_or_default(),
                    if terms.is_empty() {
                        "<none>".into()
                    } else {
                        terms.join(",")
                    },
                    age(p.metadata.creation_timestamp.as_ref()),
                ];
                ns_col(p.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::Ingress(_)) => {
            let mut head: Vec<String> = ["NAME", "CLASS", "HOSTS", "PORTS", "AGE"]
                .into_iter()
                .map(String::from)
                .collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::Ingress(i) = o else { continue };
                let spec = i.spec.clone().unwrap_or_default();
                let hosts: Vec<String> = spec
                    .rules
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|r| r.host.clone())
                    .collect();
                let ports = if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
                    "80, 443"
                } else {
                    "80"
                };
                let mut row = vec![
                    i.metadata.name.clone().unwrap_or_default(),
                    spec.ingress_class_name
                        .clone()
                        .unwrap_or_else(|| "<none>".into()),
                    if hosts.is_empty() {
                        "*".into()
                    } else {
                        hosts.join(",")
                    },
                    ports.into(),
                    age(i.metadata.creation_timestamp.as_ref()),
                ];
                ns_col(i.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::Deployment(_)) => {
            let mut head: Vec<String> = ["NAME", "REPLICAS", "AGE"]
                .into_iter()
                .map(String::from)
                .collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::Deployment(d) = o else { continue };
                let mut row = vec![
                    d.metadata.name.clone().unwrap_or_default(),
                    d.spec.replicas.unwrap_or(1).to_string(),
                    age(d.metadata.creation_timestamp.as_ref()),
                ];
                ns_col(d.metadata.namespace.clone().unwrap_or_default(), &mut row);
                rows.push(row);
            }
        }
        Some(Object::IngressClass(_)) => {
            rows.push(
                ["NAME", "CONTROLLER", "PARAMETERS", "AGE"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            );
            for o in &objects {
                let Object::IngressClass(c) = o else { continue };
                let spec = c.spec.clone().unwrap_or_default();
                rows.push(vec![
                    c.metadata.name.clone().unwrap_or_default(),
                    spec.controller.unwrap_or_else(|| "<none>".into()),
                    spec.parameters
                        .map(|p| format!("{}/{}", p.kind, p.name))
                        .unwrap_or_else(|| "<none>".into()),
                    age(c.metadata.creation_timestamp.as_ref()),
                ]);
            }
        }
        Some(Object::Secret(_)) => {
            let mut head: Vec<String> = ["NAME", "TYPE", "DATA", "AGE"]
                .into_iter()
                .map(String::from)
                .collect();
            ns_col("NAMESPACE".into(), &mut head);
            rows.push(head);
            for o in &objects {
                let Object::Secret(secret) = o else { continue };
                let data = secret.data.as_ref().map_or(0, |d| d.len())
                    + secret.string_data.as_ref().map_or(0, |d| d.len());
                let mut row = vec![
                    secret.metadata.name.clone().unwrap_or_default(),
                    secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
                    data.to_string(),
                    age(secret.metadata.creation_timestamp.as_ref()),
                ];
                ns_col(
                    secret.metadata.namespace.clone().unwrap_or_default(),
                    &mut row,
                );
                rows.push(row);
            }
        }
        Some(Object::Namespace(_)) => {
            rows.push(vec!["NAME".into(), "STATUS".into(), "AGE".into()]);
            for o in &objects {
                let Object::Namespace(n) = o else { continue };
                rows.push(vec![
                    n.metadata.name.clone().unwrap_or_default(),
                    "Active".into(),
                    age(n.metadata.creation_timestamp.as_ref()),
                ]);
            }
        }
        _ => {}
    }
    Ok(table(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(yaml: &str) -> ClusterState {
        let mut state = ClusterState::default();
        for object in crate::manifest::parse_objects(yaml).unwrap() {
            state.insert(object);
        }
        state
    }

    fn query(resource: &str, namespace: Option<&str>) -> Query {
        Query {
            resource: resource.into(),
            namespace: namespace.map(String::from),
            output: Output::Table,
        }
    }

    #[test]
    fn secrets_and_ingress_classes() {
        let s = state(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: web-tls, namespace: apps}\ntype: kubernetes.io/tls\ndata: {tls.crt: YQ==, tls.key: Yg==}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: podwire}\nspec: {controller: podwire.io/ingress}\n",
        );
        let out = render(&s, &query("secrets", None)).unwrap();
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["NAMESPACE", "NAME", "TYPE", "DATA", "AGE"]);
        assert_eq!(rows[1][..4], ["apps", "web-tls", "kubernetes.io/tls", "2"]);
        assert_eq!(
            render(&s, &query("secret", Some("default"))).unwrap(),
            "No resources found in default namespace.\n"
        );
        let out = render(&s, &query("ingressclasses", Some("default"))).unwrap();
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[0], ["NAME", "CONTROLLER", "PARAMETERS", "AGE"]);
        assert_eq!(rows[1][..3], ["podwire", "podwire.io/ingress", "<none>"]);
        assert_eq!(
            render(&ClusterState::default(), &query("ingressclass", Some("x"))).unwrap(),
            "No resources found\n"
        );
        assert!(
            render(&s, &query("configmaps", None))
                .unwrap_err()
                .to_string()
                .contains("ingressclasses, networkpolicies, secrets")
        );
    }
}

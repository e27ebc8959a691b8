//! What a Deployment controller and a scheduler would do, reduced to pure
//! functions: expand a Deployment into its Pods, and place pods on nodes.

use std::collections::{BTreeMap, BTreeSet};

use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use podwire_model::{Deployment, Node, Pod};

use crate::error::ManifestError;
use crate::names::{hash, safe_suffix};

/// The label Kubernetes puts on a Deployment's pods to tell template
/// versions apart.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// The label kubeadm puts on control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The node name the lab treats as the control plane without a label.
pub const CONTROL_PLANE_NAME: &str = "controlplane";

/// Expands a Deployment into its Pods (spec.replicas, default 1).
///
/// Names are `<deployment>-<10 hex chars of a hash of namespace and
/// name>-<5 chars per index>`, like the ReplicaSet's `<rs>-<suffix>`, and
/// stable: the same Deployment always yields the same pod names, so
/// re-applying it changes nothing.
pub fn expand_deployment(deployment: &Deployment) -> Vec<Pod> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let namespace = match deployment.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ => "default".to_string(),
    };
    let spec = &deployment.spec;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let template_hash = format!("{:010x}", hash(&[&namespace, &name]) & 0xff_ffff_ffff);
    let template_meta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.clone().unwrap_or_default();
    labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), template_hash.clone());
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: name.clone(),
        uid: deployment.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    let mut used = BTreeSet::new();
    (0..replicas)
        .map(|index| {
            // Salt on the (rare) collision so every replica's name differs.
            let mut salt = 0u32;
            let suffix = loop {
                let (i, s) = (index.to_string(), salt.to_string());
                let candidate = safe_suffix(hash(&[&namespace, &name, &i, &s]), 5);
                if used.insert(candidate.clone()) {
                    break candidate;
                }
                salt += 1;
            };
            Pod {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{template_hash}-{suffix}")),
                    namespace: Some(namespace.clone()),
                    labels: Some(labels.clone()),
                    annotations: template_meta.annotations.clone(),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                spec: spec.template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// Whether a node is a control-plane node: named "controlplane" or labelled
/// as kubeadm labels one.
pub fn is_control_plane(node: &Node) -> bool {
    node.metadata.name.as_deref() == Some(CONTROL_PLANE_NAME)
        || node.metadata.labels.as_ref().is_some_and(|l| {
            l.contains_key(CONTROL_PLANE_LABEL) || l.contains_key("node-role.kubernetes.io/master")
        })
}

/// Picks a node for each pod without spec.nodeName: the node with the
/// fewest pods (counting `existing` and the pods placed so far), ties by
/// name, which spreads pods round-robin. A node named "controlplane" is
/// skipped when any other node exists. Pods with nodeName keep it; it is an
/// error if that node does not exist.
pub fn schedule(
    pods: &mut [Pod],
    nodes: &[String],
    existing: &BTreeMap<String, usize>,
) -> Result<(), ManifestError> {
    let candidates: Vec<(String, bool)> = nodes
        .iter()
        .map(|n| (n.clone(), n == CONTROL_PLANE_NAME))
        .collect();
    schedule_candidates(pods, &candidates, existing)
}

/// Like [`schedule`], recognising control-plane nodes by label too
/// ([`is_control_plane`]).
pub fn schedule_on_nodes(
    pods: &mut [Pod],
    nodes: &[Node],
    existing: &BTreeMap<String, usize>,
) -> Result<(), ManifestError> {
    let candidates: Vec<(String, bool)> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, is_control_plane(n))))
        .collect();
    schedule_candidates(pods, &candidates, existing)
}

fn schedule_candidates(
    pods: &mut [Pod],
    nodes: &[(String, bool)],
    existing: &BTreeMap<String, usize>,
) -> Result<(), ManifestError> {
    let known = || {
        nodes
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut counts: BTreeMap<String, usize> = nodes
        .iter()
        .map(|(n, _)| (n.clone(), existing.get(n).copied().unwrap_or(0)))
        .collect();

    // Pinned pods first: they count towards their node's load.
    for pod in pods.iter() {
        if let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            let Some(count) = counts.get_mut(node) else {
                return Err(ManifestError::UnknownNode {
                    namespace: pod
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    node: node.to_string(),
                    known: known(),
                });
            };
            *count += 1;
        }
    }

    let workers: Vec<&str> = nodes
        .iter()
        .filter(|(_, cp)| !cp)
        .map(|(n, _)| n.as_str())
        .collect();
    let eligible: Vec<&str> = if workers.is_empty() {
        nodes.iter().map(|(n, _)| n.as_str()).collect()
    } else {
        workers
    };

    for pod in pods.iter_mut() {
        let spec = pod.spec.get_or_insert_with(Default::default);
        if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
            continue;
        }
        let chosen = eligible
            .iter()
            .min_by_key(|n| (counts.get(**n).copied().unwrap_or(0), **n))
            .ok_or(ManifestError::NoSchedulableNodes)?;
        spec.node_name = Some((*chosen).to_string());
        *counts.entry((*chosen).to_string()).or_default() += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::k8s_openapi::api::apps::v1::DeploymentSpec;
    use podwire_model::k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    fn deployment(ns: Option<&str>, name: &str, replicas: Option<i32>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: ns.map(Into::into),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas,
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(BTreeMap::from([("app".to_string(), name.to_string())])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            status: None,
        }
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn expand_names_stable_distinct_and_labelled() {
        let d = deployment(Some("apps"), "web", Some(3));
        let a = expand_deployment(&d);
        let b = expand_deployment(&d);
        assert_eq!(names(&a), names(&b));
        assert_eq!(a.len(), 3);
        let set: BTreeSet<_> = names(&a).into_iter().collect();
        assert_eq!(set.len(), 3);
        for pod in &a {
            let name = pod.metadata.name.as_deref().unwrap();
            let parts: Vec<&str> = name.rsplitn(3, '-').collect();
            assert_eq!(parts.len(), 3, "{name}");
            assert_eq!(parts[2], "web");
            assert_eq!(parts[1].len(), 10);
            assert!(parts[1].chars().all(|c| c.is_ascii_hexdigit()));
            assert_eq!(parts[0].len(), 5);
            assert_eq!(pod.metadata.namespace.as_deref(), Some("apps"));
            let labels = pod.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["app"], "web");
            assert_eq!(labels[POD_TEMPLATE_HASH_LABEL], parts[1]);
            let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("Deployment", "web")
            );
            assert_eq!(pod.spec.as_ref().unwrap().containers[0].name, "c");
        }
        // Another namespace gives another hash.
        let other = expand_deployment(&deployment(Some("other"), "web", Some(1)));
        assert_ne!(names(&other)[0], names(&a)[0]);
        // Default replicas and namespace.
        let one = expand_deployment(&deployment(None, "web", None));
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].metadata.namespace.as_deref(), Some("default"));
        assert!(expand_deployment(&deployment(None, "web", Some(0))).is_empty());
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn node_of(p: &Pod) -> &str {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("")
    }

    #[test]
    fn schedule_skips_controlplane_and_balances() {
        let nodes: Vec<String> = ["controlplane", "node01", "node02"]
            .map(String::from)
            .to_vec();
        let mut pods: Vec<Pod> = (0..4).map(|i| pod(&format!("p{i}"), None)).collect();
        schedule(&mut pods, &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(
            pods.iter().map(node_of).collect::<Vec<_>>(),
            ["node01", "node02", "node01", "node02"]
        );

        // Existing load on node01 sends new pods to node02 first.
        let mut pods: Vec<Pod> = (0..3).map(|i| pod(&format!("q{i}"), None)).collect();
        let existing = BTreeMap::from([("node01".to_string(), 2usize)]);
        schedule(&mut pods, &nodes, &existing).unwrap();
        assert_eq!(
            pods.iter().map(node_of).collect::<Vec<_>>(),
            ["node02", "node02", "node01"]
        );
    }

    #[test]
    fn schedule_pinned_and_errors() {
        let nodes: Vec<String> = ["controlplane", "node01", "node02"]
            .map(String::from)
            .to_vec();
        let mut pods = vec![
            pod("a", Some("controlplane")),
            pod("b", Some("node01")),
            pod("c", None),
        ];
        schedule(&mut pods, &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(
            pods.iter().map(node_of).collect::<Vec<_>>(),
            ["controlplane", "node01", "node02"]
        );

        let mut pods = vec![pod("a", Some("node09"))];
        let err = schedule(&mut pods, &nodes, &BTreeMap::new()).unwrap_err();
        assert!(matches!(err, ManifestError::UnknownNode { .. }), "{err}");
        assert!(err.to_string().contains("node09"));

        let mut pods = vec![pod("a", None)];
        assert!(matches!(
            schedule(&mut pods, &[], &BTreeMap::new()),
            Err(ManifestError::NoSchedulableNodes)
        ));
    }

    #[test]
    fn schedule_uses_controlplane_when_alone() {
        let mut pods = vec![pod("a", None)];
        schedule(&mut pods, &["controlplane".to_string()], &BTreeMap::new()).unwrap();
        assert_eq!(node_of(&pods[0]), "controlplane");
    }

    #[test]
    fn schedule_on_nodes_honours_labels() {
        let mk = |name: &str, cp: bool| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: cp
                    .then(|| BTreeMap::from([(CONTROL_PLANE_LABEL.to_string(), String::new())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let nodes = vec![mk("alpha", true), mk("beta", false)];
        let mut pods = vec![pod("a", None), pod("b", None)];
        schedule_on_nodes(&mut pods, &nodes, &BTreeMap::new()).unwrap();
        assert_eq!(
            pods.iter().map(node_of).collect::<Vec<_>>(),
            ["beta", "beta"]
        );
    }
}

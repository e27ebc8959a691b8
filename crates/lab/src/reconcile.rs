//! Desired against actual, without touching anything: which pods a
//! Deployment still needs or no longer wants, which EndpointSlices to write
//! or delete, what a Namespace's deletion takes with it, whether a process
//! that ended is started again. The supervisor carries the answers out;
//! these functions are unit-tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podwire_model::{ClusterState, Deployment, EndpointSlice, Kind, Pod};

use crate::controllers::{endpoint_slices, expand_deployment};

/// (namespace, name) of an object.
pub type Key = (String, String);

/// A process that ends sooner than this after starting is left for the next
/// round, so a container that cannot start does not spin.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// What a Deployment's pods need: new ones to create, surplus ones to delete.
#[derive(Debug, Default, PartialEq)]
pub struct PodChanges {
    pub create: Vec<Pod>,
    pub delete: Vec<Key>,
}

/// The pods in `namespace` that a Deployment named `name` owns.
pub fn owned_pods(pods: &BTreeMap<Key, Pod>, namespace: &str, name: &str) -> Vec<Key> {
    pods.iter()
        .filter(|((ns, _), pod)| {
            ns == namespace
                && pod.metadata.owner_references.as_ref().is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.kind == "Deployment" && r.name == name)
                })
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// The Deployment's pods (stable names, see [`expand_deployment`]) against
/// those that exist: scaling down deletes the surplus, scaling up creates
/// only the missing ones, an unchanged Deployment changes nothing.
pub fn deployment_pods(deployment: &Deployment, pods: &BTreeMap<Key, Pod>) -> PodChanges {
    let namespace = deployment
        .metadata
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let desired = expand_deployment(deployment);
    let wanted: BTreeSet<Key> = desired
        .iter()
        .map(|p| {
            (
                namespace.clone(),
                p.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let delete = owned_pods(pods, &namespace, &name)
        .into_iter()
        .filter(|k| !wanted.contains(k))
        .collect();
    let create = desired
        .into_iter()
        .filter(|p| {
            !pods.contains_key(&(
                namespace.clone(),
                p.metadata.name.clone().unwrap_or_default(),
            ))
        })
        .collect();
    PodChanges { create, delete }
}

/// How many pods each node runs, for the scheduler's spreading.
pub fn pods_per_node(pods: &BTreeMap<Key, Pod>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for pod in pods.values() {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *counts.entry(node).or_default() += 1;
        }
    }
    counts
}

/// The pods bound to a node.
pub fn pods_on_node(pods: &BTreeMap<Key, Pod>, node: &str) -> Vec<Key> {
    pods.iter()
        .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .map(|(k, _)| k.clone())
        .collect()
}

/// The EndpointSlices to write and to delete.
#[derive(Debug, Default, PartialEq)]
pub struct SliceChanges {
    pub put: Vec<EndpointSlice>,
    pub delete: Vec<Key>,
}

/// EndpointSlices as the controllers compute them from Services and pods,
/// plus `extra` (the API server's own), against the stored ones. A slice
/// keeps its creationTimestamp (`now` for a new one) and is written only
/// when it differs from the stored one, so consumers see no churn; stored
/// slices nobody computes any more are deleted (manifests cannot declare
/// slices, so every stored one is the lab's).
pub fn endpoint_changes(
    state: &ClusterState,
    extra: Vec<EndpointSlice>,
    now: &Time,
) -> SliceChanges {
    let services: Vec<_> = state.services.values().cloned().collect();
    let pods: Vec<_> = state.pods.values().cloned().collect();
    let mut changes = SliceChanges::default();
    let mut keep = BTreeSet::new();
    for mut slice in endpoint_slices(&services, &pods).into_iter().chain(extra) {
        let key = (
            slice.metadata.namespace.clone().unwrap_or_default(),
            slice.metadata.name.clone().unwrap_or_default(),
        );
        let old = state.endpoint_slices.get(&key);
        slice.metadata.creation_timestamp = old
            .and_then(|o| o.metadata.creation_timestamp.clone())
            .or_else(|| Some(now.clone()));
        if old != Some(&slice) {
            changes.put.push(slice);
        }
        keep.insert(key);
    }
    changes.delete = state
        .keys(Kind::EndpointSlice)
        .into_iter()
        .filter(|k| !keep.contains(k))
        .collect();
    changes
}

/// What deleting a Namespace takes with it: its pods (to be torn down) and
/// its other namespaced objects, as the namespace controller does.
pub fn namespace_contents(state: &ClusterState, namespace: &str) -> (Vec<Key>, Vec<(Kind, Key)>) {
    let pods = state
        .pods
        .keys()
        .filter(|(ns, _)| ns == namespace)
        .cloned()
        .collect();
    let others = [Kind::Service, Kind::Deployment, Kind::Ingress, Kind::Secret]
        .into_iter()
        .flat_map(|kind| {
            state
                .keys(kind)
                .into_iter()
                .filter(|(ns, _)| ns == namespace)
                .map(move |k| (kind, k))
        })
        .collect();
    (pods, others)
}

/// Whether a process that ended is started again: per restartPolicy
/// (Always, the default; OnFailure; Never), and not before it ran
/// [`RESTART_BACKOFF`].
pub fn restart_due(policy: &str, succeeded: bool, ran: Duration) -> bool {
    let again = match policy {
        "Never" => false,
        "OnFailure" => !succeeded,
        _ => true,
    };
    again && ran > RESTART_BACKOFF
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::k8s_openapi::api::apps::v1::DeploymentSpec;
    use podwire_model::k8s_openapi::api::core::v1::{
        Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec, ServicePort, ServiceSpec,
    };
    use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, ObjectMeta,
    };
    use podwire_model::{Object, Service};

    use crate::controllers::api_server_slice;
    use crate::stamp::now;

    fn deployment(replicas: i32) -> Deployment {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            spec: DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "web".into(),
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

    /// The pods as the lab would have stored them: placed and ready.
    fn running(pods: Vec<Pod>, node: &str) -> BTreeMap<Key, Pod> {
        pods.into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                let spec = p.spec.get_or_insert_with(Default::default);
                spec.node_name = Some(node.into());
                p.status = Some(PodStatus {
                    pod_ip: Some(format!("10.244.1.{}", i + 2)),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
                (
                    (
                        p.metadata.namespace.clone().unwrap_or_default(),
                        p.metadata.name.clone().unwrap_or_default(),
                    ),
                    p,
                )
            })
            .collect()
    }

    #[test]
    fn deployment_scales_up_down_and_stays() {
        let d = deployment(3);
        let fresh = deployment_pods(&d, &BTreeMap::new());
        assert_eq!((fresh.create.len(), fresh.delete.len()), (3, 0));
        let pods = running(fresh.create, "node01");
        assert_eq!(deployment_pods(&d, &pods), PodChanges::default());

        let down = deployment_pods(&deployment(1), &pods);
        assert!(down.create.is_empty());
        assert_eq!(down.delete.len(), 2);
        assert!(down.delete.iter().all(|k| pods.contains_key(k)));

        let up = deployment_pods(&deployment(4), &pods);
        assert_eq!((up.create.len(), up.delete.len()), (1, 0));
        assert!(!pods.contains_key(&(
            "apps".to_string(),
            up.create[0].metadata.name.clone().unwrap()
        )));
        assert_eq!(owned_pods(&pods, "apps", "web").len(), 3);
        assert!(owned_pods(&pods, "apps", "other").is_empty());
        assert!(owned_pods(&pods, "default", "web").is_empty());
        assert_eq!(pods_per_node(&pods)["node01"], 3);
        assert_eq!(pods_on_node(&pods, "node01").len(), 3);
        assert!(pods_on_node(&pods, "node02").is_empty());
    }

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn endpoints_written_once_kept_and_deleted() {
        let mut state = ClusterState::default();
        state.insert(Object::Service(service()));
        for pod in running(expand_deployment(&deployment(2)), "node01").into_values() {
            state.insert(Object::Pod(pod));
        }
        let api = || api_server_slice(Some("192.168.56.10".parse().unwrap()));
        let first = endpoint_changes(&state, vec![api()], &now());
        assert_eq!(first.put.len(), 2, "web's slice and the API server's");
        assert!(first.delete.is_empty());
        assert!(
            first
                .put
                .iter()
                .all(|s| s.metadata.creation_timestamp.is_some())
        );
        for slice in first.put {
            state.insert(Object::EndpointSlice(slice));
        }
        // Nothing changed: nothing to write, even at another time.
        let later = Time(podwire_model::k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            endpoint_changes(&state, vec![api()], &later),
            SliceChanges::default()
        );

        // A pod goes: web's slice is rewritten with its old creation time.
        let gone = state.pods.keys().next().cloned().unwrap();
        state.remove(Kind::Pod, &gone.0, &gone.1);
        let changed = endpoint_changes(&state, vec![api()], &later);
        assert_eq!(changed.put.len(), 1);
        let key = (
            "apps".to_string(),
            changed.put[0].metadata.name.clone().unwrap(),
        );
        assert_eq!(
            changed.put[0].metadata.creation_timestamp,
            state.endpoint_slices[&key].metadata.creation_timestamp
        );

        // The Service goes: its slice is deleted, the API server's stays.
        state.remove(Kind::Service, "apps", "web");
        let changes = endpoint_changes(&state, vec![api()], &later);
        assert_eq!(changes.delete, [key]);
        assert!(changes.put.is_empty());
    }

    #[test]
    fn namespace_deletion_takes_its_objects() {
        let mut state = ClusterState::default();
        state.insert(Object::Service(service()));
        for pod in running(expand_deployment(&deployment(1)), "node01").into_values() {
            state.insert(Object::Pod(pod));
        }
        state.insert(Object::Deployment(deployment(1)));
        let (pods, others) = namespace_contents(&state, "apps");
        assert_eq!(pods.len(), 1);
        let kinds: Vec<Kind> = others.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [Kind::Service, Kind::Deployment]);
        assert_eq!(
            namespace_contents(&state, "default"),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn restarts_follow_the_policy() {
        let long = RESTART_BACKOFF * 2;
        assert!(restart_due("Always", true, long));
        assert!(restart_due("", false, long));
        assert!(restart_due("OnFailure", false, long));
        assert!(!restart_due("OnFailure", true, long));
        assert!(!restart_due("Never", false, long));
        assert!(!restart_due("Always", false, Duration::from_millis(10)));
    }
}

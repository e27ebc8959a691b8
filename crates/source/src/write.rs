//! What components write back to the API ([`ClusterWriter`]): the node
//! agent's VXLAN endpoint as annotations on its own Node (through
//! `nodes/status`, as Flannel does, so the agent needs no write access to
//! Node specs), and an Ingress's `status.loadBalancer`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use podwire_model::{ClusterWriter, Ingress, Node, ObjectRef, SourceError};

use crate::client::Kube;

/// Writes to the API server, each call one merge patch.
#[derive(Debug, Clone)]
pub struct KubeWriter {
    kube: Kube,
}

impl KubeWriter {
    pub fn new(kube: &Kube) -> KubeWriter {
        KubeWriter { kube: kube.clone() }
    }
}

impl ClusterWriter for KubeWriter {
    fn annotate_node(
        &self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), SourceError> {
        let api: Api<Node> = Api::all(self.kube.client());
        let patch = serde_json::json!({"metadata": {"annotations": annotations}});
        self.kube
            .block_on(api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch)))
            .map(drop)
            .map_err(|e| self.kube.error("patch", "nodes/status", e))
    }

    fn set_ingress_status(
        &self,
        namespace: &str,
        name: &str,
        status: &IngressLoadBalancerStatus,
    ) -> Result<(), SourceError> {
        let api: Api<Ingress> = Api::namespaced(self.kube.client(), namespace);
        // A merge patch replaces the list as a whole, so removed
        // addresses go too.
        let patch = serde_json::json!({"status": {"loadBalancer": status}});
        self.kube
            .block_on(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .map(drop)
            .map_err(|e| self.kube.error("patch", "ingresses/status", e))
    }

    fn warn(
        &self,
        object: &ObjectRef,
        uid: Option<&str>,
        component: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), SourceError> {
        let namespace = if object.namespace.is_empty() {
            "default"
        } else {
            object.namespace.as_str()
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", object.name)),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(object.kind.api_version().to_string()),
                kind: Some(object.kind.name().to_string()),
                name: Some(object.name.clone()),
                namespace: (!object.namespace.is_empty()).then(|| object.namespace.clone()),
                uid: uid.map(str::to_string),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(component.to_string()),
                host: None,
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.kube.client(), namespace);
        self.kube
            .block_on(api.create(&PostParams::default(), &event))
            .map(drop)
            .map_err(|e| self.kube.error("create", "events", e))
    }
}

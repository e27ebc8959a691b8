//! What components write back to the API ([`ClusterWriter`]): the node
//! agent's VXLAN endpoint as annotations on its own Node (through
//! `nodes/status`, as Flannel does, so the agent needs no write access to
//! Node specs), and an Ingress's `status.loadBalancer`.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;
use kube::api::{Api, Patch, PatchParams};
use podwire_model::{ClusterWriter, Ingress, Node, SourceError};

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
}

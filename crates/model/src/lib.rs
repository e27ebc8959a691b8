//! podwire's cluster model: the Kubernetes objects podwire handles
//! (k8s-openapi types), `ClusterState` that every component compiles its
//! plan from, lab manifests and their address plan, the derived objects a
//! control plane would produce (pods of Deployments, scheduling,
//! EndpointSlices, Service addresses) and the on-disk store the lab writes.
//!
//! Everything here is pure except [`Store`], which only touches its own
//! directory.

pub use k8s_openapi;
pub use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};

mod endpoints;
mod error;
mod files;
mod lab;
mod names;
mod object;
mod plan;
mod services;
mod source;
mod state;
mod store;
mod workload;

pub use endpoints::endpoint_slices;
pub use error::{ModelError, SUPPORTED_KINDS, SourceError};
pub use files::FilesSource;
pub use lab::{
    BUILTIN_NAMESPACES, ExternalHost, LAB_API_VERSION, LAB_KIND, LabCertificate, LabManifest,
    LabNode, LabSpec, Underlay, builtin_example, parse_lab, parse_manifest, parse_objects,
    validate_objects,
};
pub use names::{validate_label, validate_subdomain};
pub use object::{Kind, Object};
pub use plan::{LabPlan, PlannedExternal, PlannedNode, node_object, plan_lab};
pub use services::{
    KUBE_DNS_HOST_OFFSET, NODE_PORT_RANGE, allocate_service_addresses, kube_dns_ip,
};
pub use source::{
    Change, Changed, ClusterWriter, Interest, Leadership, ObjectRef, Reflector, Snapshot, Source,
    SourceStatus, Update, Watch, WatchEvent, strip_bookkeeping,
};
pub use state::{
    ClusterConfig, ClusterState, NodeInfo, PUBLIC_IP_ANNOTATION, RoutingMode, VTEP_MAC_ANNOTATION,
    parse_mac,
};
pub use store::Store;
pub use workload::{
    expand_deployment, is_control_plane, pod_is_ready, schedule, schedule_on_nodes,
};

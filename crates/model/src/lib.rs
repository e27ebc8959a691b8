//! podwire's cluster model: the Kubernetes objects podwire handles
//! (k8s-openapi types), `ClusterState` that every component compiles its
//! plan from, the source seam every component reads through, and the
//! files store (the on-disk store the lab writes, as a source). What a
//! control plane derives (scheduling, Deployment pods, EndpointSlices,
//! Service addresses) is the lab's, in `podwire-lab`.
//!
//! Everything here is pure except [`Store`] and [`FilesSource`], which only
//! touch their own directory.

pub use k8s_openapi;
pub use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass, NetworkPolicy},
};

mod error;
mod files;
mod names;
mod object;
mod services;
mod source;
mod state;
mod store;
mod workload;

pub use error::{ModelError, SUPPORTED_KINDS, SourceError};
pub use files::FilesSource;
pub use names::{validate_label, validate_subdomain};
pub use object::{Kind, Object};
pub use services::{KUBE_DNS_HOST_OFFSET, kube_dns_ip, nth_address};
pub use source::{
    Change, Changed, ClusterWriter, Interest, Leadership, ObjectRef, Reflector, Snapshot, Source,
    SourceStatus, Update, Watch, WatchEvent, strip_bookkeeping,
};
pub use state::{
    ClusterConfig, ClusterState, NodeInfo, PUBLIC_IP_ANNOTATION, RoutingMode, VTEP_MAC_ANNOTATION,
    parse_mac,
};
pub use store::Store;
pub use workload::pod_is_ready;

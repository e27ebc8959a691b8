//! What a Kubernetes control plane does, done by the lab for the files
//! store, as pure functions: the Deployment controller and the scheduler
//! (`workload`), the EndpointSlice controller and the API server's own
//! `kubernetes` endpoints (`endpoints`), and the API server's ClusterIP and
//! nodePort allocators (`services`). With a real control plane these are
//! its programs' work, not the lab's.

pub mod endpoints;
pub mod services;
pub mod workload;

pub use endpoints::{api_server_slice, endpoint_slices};
pub use services::{
    KUBERNETES_HOST_OFFSET, NODE_PORT_RANGE, allocate_service_addresses, kubernetes_service_ip,
};
pub use workload::{expand_deployment, is_control_plane, schedule, schedule_on_nodes};

//! podwire's ingress controller. [`RouteTable`] is the pure part: compiled
//! from `networking.k8s.io/v1` Ingresses of podwire's class, Services and
//! EndpointSlices, it answers "which ready endpoints serve this host and
//! path" and prints itself for `podwire ingress plan`; [`proxy`] is the
//! HTTP/1.1 reverse proxy that serves it.

mod error;
pub mod proxy;
mod table;

pub use error::IngressError;
pub use table::{
    Backend, BackendRef, CompileOptions, DEFAULT_CLASS, INGRESS_CLASS_CONTROLLER, PathKind,
    PathRule, PortRef, RouteTable, is_ours,
};

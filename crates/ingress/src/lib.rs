//! podwire's ingress controller. [`RouteTable`] (routes) and
//! [`certs::CertTable`] (certificates by SNI) are the pure part, compiled
//! from `networking.k8s.io/v1` Ingresses of podwire's class, IngressClasses,
//! Services, EndpointSlices and `kubernetes.io/tls` Secrets; [`proxy`] is the
//! request path (routing, redirect, forwarding, upgrades) and [`server`] the
//! running controller (listeners, TLS, reloads, metrics, shutdown).

pub mod annotations;
pub mod backend_wire;
pub mod certs;
mod error;
pub mod limit;
pub mod metrics;
mod pool;
pub mod proxy;
pub mod server;
pub mod status;
mod table;
pub mod target;

pub use error::IngressError;
pub use table::{
    AnnotationNote, Backend, BackendRef, Classes, CompileOptions, DEFAULT_CLASS,
    DEFAULT_CLASS_ANNOTATION, INGRESS_CLASS_CONTROLLER, PathKind, PathRule, PortRef, RouteTable,
    our_ingresses, tls_hosts,
};

//! The one error type of the model crate: every message says what is wrong
//! and, where there is a fix, what to do about it.

use std::path::PathBuf;

/// The kinds a lab manifest may contain, listed in "unknown kind" errors.
pub const SUPPORTED_KINDS: &str = "v1 Namespace, v1 Pod, v1 Service, v1 Secret, apps/v1 Deployment, networking.k8s.io/v1 Ingress, networking.k8s.io/v1 IngressClass";

/// Everything that can go wrong while parsing, validating, planning or storing.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The YAML text itself is malformed.
    #[error(
        "document {document} is not valid YAML: {message}; fix the syntax at the position shown"
    )]
    Yaml { document: usize, message: String },

    /// A document is missing apiVersion or kind.
    #[error(
        "document {document} has no {field}; every document needs apiVersion and kind (supported: {SUPPORTED_KINDS})"
    )]
    MissingTypeField {
        document: usize,
        field: &'static str,
    },

    /// The apiVersion/kind pair is not one podwire handles.
    #[error("unknown kind {api_version} {kind}; supported kinds are: {SUPPORTED_KINDS}")]
    UnknownKind { api_version: String, kind: String },

    /// A kind podwire knows but that a manifest may not declare (the lab computes it).
    #[error("{kind} objects cannot be declared in a manifest: {reason}")]
    KindNotAllowed { kind: String, reason: &'static str },

    /// The lab file does not start with the Lab document.
    #[error(
        "the first document must be kind: Lab (apiVersion: podwire.io/v1alpha1) holding the lab's settings; found {found}"
    )]
    FirstDocumentNotLab { found: String },

    /// A Lab document where only Kubernetes objects are accepted.
    #[error(
        "document {document} is a Lab document; `lab apply -f`/`lab delete -f` take Kubernetes objects only, lab settings are fixed at `lab up` (change them with `lab down` and `lab up -f`)"
    )]
    UnexpectedLab { document: usize },

    /// An object does not match its Kubernetes schema.
    #[error(
        "invalid {kind} {name}: {message}; compare it with the Kubernetes API reference for {kind}"
    )]
    InvalidObject {
        kind: String,
        name: String,
        message: String,
    },

    /// A field of the Lab document has a bad value.
    #[error("{path}: {message}")]
    InvalidField { path: String, message: String },

    /// A name that is not a valid DNS-1123 label/subdomain.
    #[error(
        "{what} name {name:?} is invalid: {reason}; use lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName {
        what: String,
        name: String,
        reason: String,
    },

    /// Two address ranges overlap where they must not.
    #[error(
        "{first} {first_net} overlaps {second} {second_net}; choose ranges that do not overlap"
    )]
    Overlap {
        first: String,
        first_net: String,
        second: String,
        second_net: String,
    },

    /// The per-node slice prefix cannot carve the pod range for the nodes.
    #[error("nodeSlicePrefix /{prefix} does not fit pod range {pod_cidr}: {reason}")]
    SlicePrefix {
        prefix: u8,
        pod_cidr: String,
        reason: String,
    },

    /// The lab declares no nodes.
    #[error(
        "the lab has no nodes; list at least one under spec.nodes (e.g. nodes: [{{name: controlplane}}])"
    )]
    NoNodes,

    /// Two nodes (or a node and the external host) share a name.
    #[error(
        "duplicate node name {name:?}: node names (and the external host's name) must be unique"
    )]
    DuplicateNode { name: String },

    /// Two underlays share a name.
    #[error("duplicate underlay name {name:?}: underlay names must be unique")]
    DuplicateUnderlay { name: String },

    /// A node refers to an underlay that is not declared.
    #[error(
        "node {node:?} names underlay {underlay:?}, which is not declared; declared underlays: {known}"
    )]
    UnknownUnderlay {
        node: String,
        underlay: String,
        known: String,
    },

    /// The lab has nodes but no underlay to put them on.
    #[error(
        "the lab declares no underlays; add one under spec.underlays (e.g. [{{name: underlay, subnet: 192.168.56.0/24}}])"
    )]
    NoUnderlays,

    /// An underlay (or the external subnet) has too few addresses.
    #[error(
        "{what} {subnet} is too small for {count} host(s) at .10 onwards; use a larger subnet (a /24 holds 245)"
    )]
    SubnetTooSmall {
        what: String,
        subnet: String,
        count: usize,
    },

    /// Two objects with the same kind, namespace and name.
    #[error("duplicate {kind} {namespace}/{name}: each object may appear once")]
    DuplicateObject {
        kind: String,
        namespace: String,
        name: String,
    },

    /// An object in a namespace that is not declared.
    #[error(
        "{kind} {name} is in namespace {namespace:?}, which is not declared; add a Namespace object named {namespace:?} (only default, kube-system, kube-public and kube-node-lease exist without one)"
    )]
    UndeclaredNamespace {
        kind: String,
        namespace: String,
        name: String,
    },

    /// A pod pinned to a node that does not exist.
    #[error(
        "pod {namespace}/{pod} asks for node {node:?} (spec.nodeName), which does not exist; known nodes: {known}"
    )]
    UnknownNode {
        namespace: String,
        pod: String,
        node: String,
        known: String,
    },

    /// Pods to place but no node to place them on.
    #[error("no nodes to schedule pods on; the lab needs at least one node")]
    NoSchedulableNodes,

    /// A Service's clusterIP is unusable.
    #[error("service {namespace}/{name}: clusterIP {ip:?} {reason}")]
    ClusterIp {
        namespace: String,
        name: String,
        ip: String,
        reason: String,
    },

    /// A Service's nodePort is unusable.
    #[error("service {namespace}/{name}: nodePort {port} {reason}")]
    NodePort {
        namespace: String,
        name: String,
        port: i32,
        reason: String,
    },

    /// No free address/port left in a range.
    #[error("no free {what} left in {range}; widen the range or delete services")]
    Exhausted { what: &'static str, range: String },

    /// A file or directory of the store could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A store file holds invalid JSON or an invalid object.
    #[error(
        "{path} is not a valid stored object: {message}; remove it or rewrite it with `podwire lab apply`"
    )]
    StoredFile { path: PathBuf, message: String },
}

impl ModelError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ModelError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why a source could not deliver cluster state. The message says what
/// failed and what to check; a component logs it, reports it in its
/// status, and keeps what it already programmed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The files store could not be read.
    #[error("files source {dir}: {source}")]
    Store {
        dir: PathBuf,
        #[source]
        source: Box<ModelError>,
    },

    /// The API server did not answer (connection refused, timeout, TLS).
    #[error(
        "cannot reach the API server {server}: {reason}; check --api-server/--kubeconfig and that kube-apiserver is running and reachable from here"
    )]
    Unreachable { server: String, reason: String },

    /// 401: the credentials are wrong or expired.
    #[error(
        "the API server {server} refused our credentials (401 Unauthorized): {reason}; the token may have expired or belong to a deleted ServiceAccount: renew it or fix the kubeconfig"
    )]
    Unauthorized { server: String, reason: String },

    /// 403: RBAC does not allow what the component needs.
    #[error(
        "forbidden to {verb} {resource} (403): {reason}; the component's ClusterRole (deploy/podwire.yaml) must allow it"
    )]
    Forbidden {
        verb: String,
        resource: String,
        reason: String,
    },

    /// Any other API error.
    #[error("the API server answered {code} to {verb} {resource}: {reason}")]
    Api {
        verb: String,
        resource: String,
        code: u16,
        reason: String,
    },

    /// No usable client configuration (kubeconfig, in-cluster files).
    #[error("cannot configure the Kubernetes client: {reason}")]
    Config { reason: String },

    /// The source's background work ended.
    #[error("the {what} source stopped: {reason}")]
    Stopped { what: String, reason: String },
}

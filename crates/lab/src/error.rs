//! Lab errors: each says what went wrong and what to do about it.

use podwire_model::{ModelError, SUPPORTED_KINDS};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Kernel(#[from] podwire_kernel::Error),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab {0:?} does not exist: start it with `podwire lab up --name {0}`")]
    NoSuchLab(String),
    #[error("lab {0:?} already exists: use it, or remove it with `podwire lab down --name {0}`")]
    Exists(String),
    #[error("CNI {command} for pod {pod} failed: {detail}")]
    Cni {
        command: String,
        pod: String,
        detail: String,
    },
    /// `lab down` could not remove everything; each item names one thing
    /// and why it stayed.
    #[error(
        "lab {lab} is not fully removed; left: {}. Stop what holds them (a mount, a process in the namespace), then run `podwire lab down --name {lab}` again",
        left.join("; ")
    )]
    Leftovers { lab: String, left: Vec<String> },
    #[error("{0}")]
    Failed(String),
}

impl LabError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> LabError {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, LabError>;

/// What is wrong with a lab manifest or with the objects in it (the checks
/// the API server and its allocators would make), found before the lab
/// creates anything.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A name or an object the model itself refuses.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// The YAML text itself is malformed.
    #[error(
        "document {document} is not valid YAML: {message}; fix the syntax at the position shown"
    )]
    Yaml { document: usize, message: String },

    /// A document is missing apiVersion or kind.
    #[error(
        "document {document} has no {field}; every document needs apiVersion and kind (supported: {kinds})", kinds = SUPPORTED_KINDS
    )]
    MissingTypeField {
        document: usize,
        field: &'static str,
    },

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

    /// A field of the Lab document has a bad value.
    #[error("{path}: {message}")]
    InvalidField { path: String, message: String },

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
}

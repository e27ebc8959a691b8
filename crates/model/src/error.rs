//! The one error type of the model crate: every message says what is wrong
//! and, where there is a fix, what to do about it.

use std::path::PathBuf;

/// The kinds podwire reads (and a lab manifest may contain), listed in
/// "unknown kind" errors.
pub const SUPPORTED_KINDS: &str = "v1 Namespace, v1 Pod, v1 Service, v1 Secret, apps/v1 Deployment, networking.k8s.io/v1 Ingress, networking.k8s.io/v1 IngressClass";

/// Everything that can go wrong while reading objects, checking names or
/// storing. (Manifest and lab-plan errors are the lab's own.)
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The apiVersion/kind pair is not one podwire handles.
    #[error("unknown kind {api_version} {kind}; supported kinds are: {SUPPORTED_KINDS}")]
    UnknownKind { api_version: String, kind: String },

    /// An object does not match its Kubernetes schema.
    #[error(
        "invalid {kind} {name}: {message}; compare it with the Kubernetes API reference for {kind}"
    )]
    InvalidObject {
        kind: String,
        name: String,
        message: String,
    },

    /// A name that is not a valid DNS-1123 label/subdomain.
    #[error(
        "{what} name {name:?} is invalid: {reason}; use lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName {
        what: String,
        name: String,
        reason: String,
    },

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

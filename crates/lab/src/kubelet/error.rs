//! The kubelet's errors: each names what failed and what to do about it.

use podwire_model::SourceError;

use crate::error::LabError;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// A flag or a value derived from one is unusable.
    #[error("{0}")]
    Config(String),
    /// An API call failed (already classified: unreachable, 401, 403, ...).
    #[error(transparent)]
    Api(#[from] SourceError),
    /// A runtime step (namespace, CNI, process) failed.
    #[error(transparent)]
    Runtime(#[from] LabError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kubelet's HTTPS endpoint cannot start.
    #[error("kubelet API: {0}")]
    Server(String),
    /// A pod cannot run as specified (the message goes into its status).
    #[error("{0}")]
    Pod(String),
}

impl KubeletError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> KubeletError {
        KubeletError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, KubeletError>;

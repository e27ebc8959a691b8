//! Lab errors: each says what went wrong and what to do about it.

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] podwire_model::ModelError),
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

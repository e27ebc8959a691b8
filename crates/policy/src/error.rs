//! What can go wrong in the NetworkPolicy enforcer, each with what to do
//! about it.

/// Errors of the NetworkPolicy enforcer.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "loading the NetworkPolicy nftables structure failed: {0}; run `podwire agent plan` to see the table podwire would load"
    )]
    Structure(String),
    #[error(
        "committing {elements} NetworkPolicy nftables elements failed: {source}; the agent retries with a full resync"
    )]
    Elements {
        elements: usize,
        #[source]
        source: podwire_kernel::Error,
    },
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: podwire_kernel::Error,
    },
    #[error("reading denied-connection logs (nflog group {group}): {source}")]
    Log {
        group: u16,
        #[source]
        source: std::io::Error,
    },
}

impl PolicyError {
    pub(crate) fn kernel(what: impl Into<String>, source: podwire_kernel::Error) -> Self {
        PolicyError::Kernel {
            what: what.into(),
            source,
        }
    }
}

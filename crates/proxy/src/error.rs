//! What can go wrong in the service proxy, each with what to do about it.

/// Errors of the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot read the cluster state: {0}")]
    Source(#[from] podwire_model::SourceError),
    #[error("node {0} is not in the cluster state: check --node against `podwire lab get nodes`")]
    UnknownNode(String),
    #[error(
        "loading the proxy's nftables structure failed: {0}; run `podwire agent plan` to see the table podwire would load, and check that nftables supports it (nft --version >= 1.0)"
    )]
    Structure(String),
    #[error(
        "committing {elements} nftables elements failed: {source}; the proxy retries with a full resync"
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
    #[error(
        "cannot listen on {addr} for {what}: {source}; is another agent or kube-proxy running in this namespace?"
    )]
    Listen {
        addr: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    pub(crate) fn kernel(what: impl Into<String>, source: podwire_kernel::Error) -> Self {
        ProxyError::Kernel {
            what: what.into(),
            source,
        }
    }
}

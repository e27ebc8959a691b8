//! Errors of the ingress controller, each saying what is wrong and what to do.

/// What can go wrong while configuring or running the ingress controller.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error(
        "invalid backend {0:?}: expected NAMESPACE/SERVICE:PORT (PORT a number or a port name), e.g. default/fallback:80"
    )]
    BadBackend(String),
    #[error(
        "invalid Secret reference {0:?}: expected NAMESPACE/NAME, e.g. ingress-podwire/default-cert"
    )]
    BadSecret(String),
    #[error("cannot make the default TLS certificate: {0}")]
    Certificate(String),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot read the cluster state: {0}; check the --source directory")]
    Store(#[source] podwire_model::ModelError),
    #[error(
        "cannot listen on {addr}: {source}; choose another address with --listen or stop what is using it"
    )]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listening socket's address: {source}")]
    Accept {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

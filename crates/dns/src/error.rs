//! Errors of the DNS server, each saying what is wrong and what to do.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the cluster state: {0}")]
    Store(#[source] podwire_model::ModelError),
    #[error(
        "cannot listen on {addr} ({proto}): {source}; choose another address with the matching --*listen flag or stop what is using it"
    )]
    Bind {
        addr: std::net::SocketAddr,
        proto: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid upstream {0:?}: expected IP or IP:PORT (e.g. 192.0.2.53 or [2001:db8::53]:5353)"
    )]
    BadUpstream(String),
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl DnsError {
    pub fn io(what: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> DnsError {
        DnsError::Io {
            what,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

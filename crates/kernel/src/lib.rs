//! The only crate in podwire that touches the kernel: network namespaces,
//! links (bridge, veth), addresses, routes, sysctls, nftables, conntrack and
//! the namespaces a new process is placed in.
//! Everything here is synchronous on purpose: a CNI plugin is a short-lived
//! process and a runtime's clock starts when it is executed, so no async
//! runtime is spun up and every request is one netlink round trip.

pub mod addr;
pub mod conntrack;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod nft;
pub mod nftrace;
pub mod notify;
pub mod own;
pub mod process;
pub mod route;
pub mod routeget;
pub mod rtnl;
pub mod sysctl;
pub mod vxlan;

pub use netns::Netns;
pub use rtnl::Netlink;

/// What went wrong talking to the kernel, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink {op} failed: {source}")]
    Netlink {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed netlink reply to {op}: {detail}")]
    Decode { op: String, detail: String },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("link {0} not found")]
    LinkNotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("nftables: {0}")]
    Nft(String),
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    /// The errno behind a failed netlink request, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

//! What can go wrong planning or applying a node's routes, each message
//! saying what is wrong and what to do about it.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    #[error(
        "the cluster state has no cluster configuration (pod range, routing mode): \
         write the lab settings / cluster config into the source before starting the agent"
    )]
    NoClusterConfig,

    #[error(
        "node {node} is not in the cluster state (known nodes: {known}): \
         check --node, or wait until the node object exists"
    )]
    NodeNotFound { node: String, known: String },

    #[error(
        "node {node} has no spec.podCIDR or no InternalIP yet: the agent needs this node's \
         pod slice and address; it programs nothing until the Node object has both"
    )]
    NoPodCidr { node: String },

    #[error("{what} is IPv6 ({value}): podwire routing supports IPv4 pod ranges and node IPs only")]
    Ipv6Unsupported { what: String, value: String },

    #[error(
        "the underlay MTU {mtu} of {device} is too small for VXLAN: it needs at least {min} \
         (the overlay takes 50 bytes); raise the underlay MTU or use routing: host-gw"
    )]
    UnderlayMtuTooSmall { device: String, mtu: u32, min: u32 },

    #[error(
        "underlay device {device} does not exist in this network namespace: \
         the agent must run inside the node's namespace, and --iface must name the device \
         that holds the node's InternalIP"
    )]
    UnderlayMissing { device: String },

    #[error(
        "the name {name} is taken by a {kind} link that podwire did not create: \
         delete it (ip link del {name}) so the agent can create its VXLAN device"
    )]
    NameTaken { name: String, kind: String },

    #[error(
        "host-gw cannot reach {node} ({ip}): it is not on this node's underlay subnet {subnets} \
         — host-gw needs all nodes on one L2 segment; use routing: vxlan"
    )]
    HostGwUnreachable {
        node: String,
        ip: IpAddr,
        subnets: String,
    },

    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: podwire_kernel::Error,
    },

    #[error("cannot read the cluster state: {0}")]
    Source(#[from] podwire_model::SourceError),

    #[error("{count} of the node's networking changes failed:\n  - {list}", count = .0.len(), list = join(.0))]
    Incomplete(Vec<RoutingError>),
}

fn join(errors: &[RoutingError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n  - ")
}

impl RoutingError {
    pub(crate) fn kernel(what: impl Into<String>, source: podwire_kernel::Error) -> Self {
        RoutingError::Kernel {
            what: what.into(),
            source,
        }
    }
}

/// Formats a list of subnets for a diagnostic ("none" when empty).
pub(crate) fn subnets_text(subnets: &[IpNet]) -> String {
    if subnets.is_empty() {
        "(none: the underlay has no IPv4 address)".to_string()
    } else {
        subnets
            .iter()
            .map(|s| s.trunc().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

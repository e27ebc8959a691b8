//! `podwire lab graph`: a picture of a running lab — underlays, the router,
//! the external host, every node with its `eth0` address and MAC and its
//! `cni0`, the pods on each node, the VXLAN tunnels or host-gw routes
//! between nodes as the nodes' route tables hold them, the Services with
//! their ClusterIPs and endpoints, and optionally a trace drawn on top.
//!
//! collect (the lab's record, its cluster state and each node's kernel →
//! [`LabPicture`], plain data) → layout (pure: boxes and lines with
//! coordinates) → svg (pure: an SVG document) → html (pure: a
//! self-contained page around the SVG, with a legend).

pub mod collect;
pub mod html;
pub mod layout;
pub mod svg;

use crate::error::{LabError, Result};
use crate::trace::TraceRequest;

/// Everything the picture shows, gathered once; rendering reads only this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabPicture {
    pub lab: String,
    /// `files` or `kubernetes`.
    pub control_plane: String,
    /// `vxlan` or `host-gw`, as the Lab asked.
    pub routing: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub underlays: Vec<UnderlayBox>,
    pub external: Option<ExternalBox>,
    pub nodes: Vec<NodeBox>,
    pub pods: Vec<PodBox>,
    /// Routes from one node to another node's pod slice.
    pub links: Vec<NodeLink>,
    pub services: Vec<ServiceBox>,
    pub trace: Option<TraceOverlay>,
    /// What could not be read (a node whose namespace is gone, a missing
    /// route), shown under the picture.
    pub notes: Vec<String>,
}

/// One underlay: a bridge in the switch namespace, the router's leg on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayBox {
    pub name: String,
    pub subnet: String,
    /// The router's address on it (the nodes' default gateway).
    pub router_ip: String,
}

/// The external host behind the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalBox {
    pub name: String,
    pub ip: String,
    pub subnet: String,
    /// The router's address on the external subnet.
    pub gateway: String,
}

/// One node as its kernel shows it (the plan's values when the kernel could
/// not be asked: `from_kernel` is false then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBox {
    pub name: String,
    pub underlay: String,
    /// eth0's IPv4 address with its prefix.
    pub eth0_ip: String,
    pub eth0_mac: String,
    /// cni0's IPv4 address with its prefix (none before the first pod).
    pub cni0: Option<String>,
    /// The VXLAN device (`podwire.1`) when there is one: address and MAC.
    pub vxlan: Option<String>,
    pub pod_cidr: String,
    pub from_kernel: bool,
}

/// One pod (host-network pods too: they share their node's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodBox {
    pub namespace: String,
    pub name: String,
    /// None while unscheduled.
    pub node: Option<String>,
    pub ip: Option<String>,
    pub host_network: bool,
    pub ready: bool,
}

/// How one node reaches another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkKind {
    /// Through the VXLAN device: encapsulated to the peer's underlay IP.
    Vxlan,
    /// A plain route via the peer's underlay IP.
    HostGw,
    /// Some other route (e.g. via the router): drawn, but flagged.
    Other,
}

impl LinkKind {
    pub fn word(self) -> &'static str {
        match self {
            LinkKind::Vxlan => "VXLAN",
            LinkKind::HostGw => "host-gw",
            LinkKind::Other => "other route",
        }
    }
}

/// A route on node `from` to node `to`'s pod slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLink {
    pub from: String,
    pub to: String,
    pub kind: LinkKind,
    /// The route as `ip route` would print it.
    pub route: String,
}

/// A Service with its ClusterIP and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBox {
    pub namespace: String,
    pub name: String,
    /// ClusterIP, NodePort, LoadBalancer, ...
    pub kind: String,
    pub cluster_ip: String,
    /// `80→8080/TCP nodePort 30080`, one per port.
    pub ports: Vec<String>,
    pub endpoints: Vec<EndpointRef>,
}

/// One endpoint address of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    pub ip: String,
    /// The pod that owns the address, when it is one: (namespace, name).
    pub pod: Option<(String, String)>,
    pub ready: bool,
}

/// A place of the lab a trace crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Pod {
        namespace: String,
        name: String,
    },
    Node(String),
    Router,
    External,
    /// A place the picture has no box for (named as the trace named it).
    Other(String),
}

/// A trace drawn on the picture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceOverlay {
    /// `client → web-service.apps:80`.
    pub title: String,
    /// The places crossed, in order (forward direction).
    pub path: Vec<Step>,
    /// The Service the probe was addressed to, if any: (namespace, name).
    pub service: Option<(String, String)>,
    pub verdict: String,
    pub delivered: bool,
    /// The whole trace report, for the HTML page.
    pub report: String,
}

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Html,
}

impl Format {
    /// `svg` or `html`.
    pub fn parse(text: &str) -> Result<Format> {
        match text.to_ascii_lowercase().as_str() {
            "svg" => Ok(Format::Svg),
            "html" | "htm" => Ok(Format::Html),
            other => Err(LabError::Invalid(format!(
                "unknown graph format {other:?}: use svg or html"
            ))),
        }
    }

    /// The format a file name asks for by its extension, if it asks.
    pub fn of_path(path: &std::path::Path) -> Option<Format> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| Format::parse(e).ok())
    }
}

/// Gathers the picture of lab `lab`; with `trace`, runs that trace first
/// and lays its path over the picture.
pub fn picture(lab: &str, trace: Option<&TraceRequest>) -> Result<LabPicture> {
    let mut picture = collect::collect(lab)?;
    if let Some(req) = trace {
        let done = crate::trace::trace(lab, req)?;
        picture.trace = Some(collect::overlay(lab, req, &done)?);
    }
    Ok(picture)
}

/// The picture as a document of `format`.
pub fn render(picture: &LabPicture, format: Format) -> String {
    match format {
        Format::Svg => svg::render(picture),
        Format::Html => html::page(picture),
    }
}

#[cfg(test)]
pub(crate) mod sample;

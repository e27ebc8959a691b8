//! The node agent's routing part: every node reaches every other node's pod
//! slice, by plain routes (`host-gw`, nodes on one L2 segment) or through a
//! VXLAN overlay (`vxlan`, works across routers), and pods leaving the
//! cluster's pod range are masqueraded (pod to pod never is).
//!
//! Compile, then apply: [`plan()`] turns the cluster state into this node's
//! [`RoutePlan`] with no I/O (printable: the dry run of `podwire agent
//! plan`), [`apply()`] makes the kernel match it, idempotently and
//! incrementally, and [`RoutingAgent`] keeps doing that as the cluster changes.

mod agent;
mod apply;
mod error;
pub mod masq;
mod plan;

pub use agent::{AgentOptions, AgentStatus, RoutingAgent, interest, plan_for, run_agent_until};
pub use apply::{ApplyReport, apply, teardown};
pub use error::RoutingError;
pub use plan::{
    Mode, Peer, PlanOptions, ROUTE_PROTOCOL, RoutePlan, Skipped, VXLAN_DEVICE, VXLAN_OVERHEAD,
    VXLAN_PORT, VXLAN_VNI, Vtep, VxlanDevice, compile, format_mac, plan, plan_with, vtep_mac,
    vxlan_mtu,
};

//! podwire's service proxy: what kube-proxy does, on nftables maps.
//!
//! `compile` (pure) turns Services + EndpointSlices + this node into a
//! [`Ruleset`]: one table, `inet podwire-proxy`, with a small fixed set of
//! chains and every Service, endpoint and node port as a map element
//! ([`layout`] has the packet path). `engine` applies it: the structure
//! through `nft -f` when it changes, the elements over netlink in one
//! transaction per sync, only the difference against what it committed.
//! `agent` is what `podwire agent` calls for every snapshot; `http` serves `/healthz`,
//! `/metrics` and the healthCheckNodePorts.

pub mod agent;
pub mod compile;
pub mod engine;
mod error;
pub mod http;
pub mod layout;
pub mod metrics;
mod sync_plan;

pub use agent::{ProxyOptions, ProxyStatus, ServiceProxy, interest, plan_for};
pub use compile::{
    CompileOptions, Compiler, Frontend, HealthCheck, Ruleset, ServiceRules, Target, compile,
    compile_service,
};
pub use engine::{Engine, SyncReport};
pub use error::ProxyError;

//! podwire's NetworkPolicy enforcement (networking.k8s.io/v1) on nftables.
//!
//! Like the service proxy: `compile` (pure) turns Pods, Namespaces and
//! NetworkPolicies into a [`Ruleset`] for one node, the variable part of
//! the table `inet podwire-policy` ([`layout`] has the packet path: fixed
//! rules, verdict maps keyed by pod address, interval sets of allowed
//! (pod . peer . protocol . port)); `engine` applies it over netlink as a
//! difference; `agent` is what `podwire agent` runs per snapshot.

pub mod agent;
pub mod compile;
pub mod engine;
mod error;
pub mod layout;
pub mod nflog;
pub mod ranges;
pub mod selector;
pub mod spec;

#[cfg(test)]
mod compile_tests;

pub use agent::{PolicyAgent, PolicyOptions, PolicyStatus, interest, plan_for};
pub use compile::{Element4, PolicyReport, Ruleset, compile, policy_id};
pub use engine::{Engine, SyncReport};
pub use error::PolicyError;

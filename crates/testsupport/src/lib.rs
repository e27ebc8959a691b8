//! Test support shared by every crate: network namespaces, temp dirs,
//! bounded polling, and a real Kubernetes control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler built by
//! `tools/k8s/build`) inside a namespace of its own.
//!
//! Setup failures panic with a message saying what failed and what to do:
//! in tests, that is the useful behaviour. Nothing here ever touches the
//! host's own network namespace.

#![warn(missing_docs)]

mod control_plane;
mod k8s;
mod netns;
mod pki;
mod poll;
mod process;
mod tempdir;

pub use control_plane::{
    API_PORT, Component, ControlPlane, ControlPlaneBuilder, SERVICE_ACCOUNT_ISSUER, UNDERLAY_BRIDGE,
};
pub use k8s::{K8S_BIN_ENV, k8s_bin, k8s_bin_dir, workspace_root};
pub use netns::{Netns, command_in};
pub use pki::CertPair;
pub use poll::{POLL_INTERVAL, eventually, poll, poll_every, time_until, unique_name};
pub use process::{Bounded, Process, run_bounded, run_with_timeout};
pub use tempdir::TempDir;

//! The Kubernetes source: podwire's components fed by a real kube-apiserver
//! through the same seam as the files store ([`podwire_model::Source`]),
//! plus what they write back ([`KubeWriter`]: Node annotations, Ingress
//! status) and leader election on a Lease ([`LeaderElection`]).

mod client;
mod leader;
mod watch;
mod write;

pub use client::{ClientSettings, Kube, SERVICE_ACCOUNT_DIR, classify, full_chain};
pub use leader::{LeaderElection, LeaseSettings};
pub use watch::{ClusterSettings, KubeSource};
pub use write::KubeWriter;

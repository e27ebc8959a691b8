//! Shared pieces of podwire's benchmarks: namespaces and temp dirs that clean
//! up after themselves, running a CNI plugin exactly as a runtime does, and
//! the statistics printed in the tables. Each benchmark is a binary in
//! `src/bin/` started by a script in `bench/`.

pub mod ns;
pub mod plugin;
pub mod stats;

//! podwire's cluster DNS: the Kubernetes DNS-Based Service Discovery schema
//! (1.1.0) served from the cluster state, with CoreDNS's behaviours (pod
//! modes, TTL 5, SOA in negative answers), a hosts file, forwarding to
//! upstream servers with health checks and a cache, over UDP and TCP, with
//! health, readiness and Prometheus metrics endpoints.
//!
//! Data flow: a source (the files store or the Kubernetes API), change by
//! change -> [`ZoneFacts`] (a few facts per object) -> [`Zone`] (compact
//! tables, rebuilt after each batch of changes and swapped atomically) ->
//! [`handler::handle`] per query (zone, reverse, hosts, cache) ->
//! [`handler::resolve`] for what needs an upstream ([`forward`]).

pub mod build;
pub mod cache;
pub mod error;
pub mod facts;
pub mod forward;
pub mod handler;
pub mod hosts;
pub mod metrics;
pub mod ops;
pub mod resolv;
pub mod server;
pub mod tcp;
pub mod wire;
pub mod zone;

pub use build::{DEFAULT_TTL, DEFAULT_ZONE, ZoneBuilder, ZoneOptions};
pub use cache::CacheConfig;
pub use error::DnsError;
pub use facts::ZoneFacts;
pub use server::{Server, ServerConfig};
pub use tcp::TcpConfig;
pub use zone::{PodMode, SCHEMA_VERSION, Zone};

use std::time::Instant;

/// Answers one packet without a network: what the fuzz target and the
/// benchmarks drive. Forwarded names get SERVFAIL (there is no upstream).
/// Returns None when the packet gets no response.
pub fn answer_offline(state: &handler::State, packet: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let handled = handler::handle(
        state,
        packet,
        false,
        &mut out,
        Instant::now(),
        &state.counters[0],
    );
    match handled.action {
        handler::Action::Reply => Some(out),
        handler::Action::Drop => None,
        handler::Action::Forward(_) => {
            let q = wire::parse_query(packet).ok()?;
            let mut w = wire::Writer::new(&mut out, &q, false);
            w.set_rcode(u16::from(wire::rcode::SERVFAIL));
            w.finish();
            Some(out)
        }
    }
}

/// A state serving `zone` with no upstreams (tests, fuzzing, `dns plan`).
pub fn offline_state(zone: Option<Zone>, hosts: hosts::Hosts) -> handler::State {
    use std::sync::Arc;
    let origin = zone
        .as_ref()
        .map(|z| z.origin().to_vec())
        .or_else(|| wire::wire_from_text(DEFAULT_ZONE))
        .unwrap_or_else(|| vec![0]);
    let ttl = zone.as_ref().map_or(DEFAULT_TTL, |z| z.ttl());
    handler::State {
        zone: arc_swap::ArcSwapOption::new(zone.map(Arc::new)),
        origin,
        hosts: arc_swap::ArcSwap::from_pointee(hosts),
        ttl,
        cache: cache::Cache::new(CacheConfig::default()),
        upstreams: Arc::new(forward::Upstreams::new(
            &[],
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            std::time::Duration::from_secs(1),
            1,
        )),
        counters: vec![metrics::Counters::default()],
        authoritative: Vec::new(),
    }
}

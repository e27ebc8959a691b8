//! Prometheus metrics of the ingress controller: requests by matched host
//! and status, a latency histogram by host (time to the response head),
//! upstream errors by backend and reason, open connections, the connection
//! limit and connections shed by reason, reloads. Hosts
//! are the rules' hosts as written (`*.a.com`, `*` for host-less rules, `-`
//! when nothing matched), so a client cannot grow the label set.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds (ingress-nginx's request duration buckets).
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A rule's host, shared with the route table so that counting a request
/// does not allocate.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct HostLabel(pub Arc<str>);

impl EncodeLabelValue for HostLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub host: HostLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: HostLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub backend: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub reason: &'static str,
}

/// Every metric the proxy updates.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<HostLabels, Histogram>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    pub retries: Counter,
    pub connections: Family<ListenerLabels, Gauge>,
    pub tls_handshake_failures: Counter,
    pub max_connections: Gauge,
    pub connections_shed: Family<ShedLabels, Counter>,
    pub connection_limit_waits: Counter,
    pub reloads: Counter,
    pub reload_failures: Counter,
    pub generation: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            upstream_errors: Family::default(),
            retries: Counter::default(),
            connections: Family::default(),
            tls_handshake_failures: Counter::default(),
            max_connections: Gauge::default(),
            connections_shed: Family::default(),
            connection_limit_waits: Counter::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            generation: Gauge::default(),
        }
    }
}

impl Metrics {
    /// A registry exposing these metrics (the handles are shared).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("podwire_ingress");
        r.register(
            "requests",
            "Requests answered, by the matched rule's host and the status sent",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from the request head to the response head, by rule host",
            self.duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Backend requests that failed, by backend and reason (connect, timeout, response)",
            self.upstream_errors.clone(),
        );
        r.register(
            "upstream_retries",
            "Idempotent requests sent again to another endpoint after a connection failure",
            self.retries.clone(),
        );
        r.register(
            "connections",
            "Client connections open, by listener",
            self.connections.clone(),
        );
        r.register(
            "max_connections",
            "The client connection limit (--max-connections), across all workers",
            self.max_connections.clone(),
        );
        r.register(
            "connections_shed",
            "Connections closed to make room at the limit, by reason (idle: between requests; incomplete_head: no complete request head or TLS handshake yet)",
            self.connections_shed.clone(),
        );
        r.register(
            "connection_limit_waits",
            "Times a new connection waited at the limit because no connection was idle",
            self.connection_limit_waits.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "reloads",
            "Route table and certificate reloads",
            self.reloads.clone(),
        );
        r.register(
            "reload_failures",
            "Reloads that failed (the previous configuration stays)",
            self.reload_failures.clone(),
        );
        r.register(
            "config_generation",
            "The store generation being served",
            self.generation.clone(),
        );
        r
    }
}

/// The metrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!("cannot encode metrics: {err}");
    }
    text
}

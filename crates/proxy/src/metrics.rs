//! Prometheus metrics of the proxy (prometheus-client), served at
//! `/metrics` by [`crate::http`]. Names follow kube-proxy's where one
//! exists (`kubeproxy_sync_proxy_rules_*`), so dashboards carry over.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn sync_histogram() -> Histogram {
    // 0.5 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every metric the proxy exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Seconds per sync, by mode (full, partial).
    pub sync_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// Unix time of the last successful sync.
    pub last_sync: Gauge<f64, AtomicU64>,
    pub sync_errors: Counter,
    /// Elements per set, as committed.
    pub elements: Family<Labels, Gauge>,
    pub rules: Gauge,
    pub chains: Gauge,
    pub services: Gauge,
    /// UDP conntrack deletions run.
    pub conntrack_flushes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let sync_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(sync_histogram);
        let last_sync = Gauge::<f64, AtomicU64>::default();
        let sync_errors = Counter::default();
        let elements = Family::<Labels, Gauge>::default();
        let rules = Gauge::default();
        let chains = Gauge::default();
        let services = Gauge::default();
        let conntrack_flushes = Counter::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "Time a sync of the proxy's nftables table took",
            sync_duration.clone(),
        );
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "Unix time of the last successful sync",
            last_sync.clone(),
        );
        registry.register(
            "podwire_proxy_sync_errors",
            "Syncs that failed (each is retried with a full resync)",
            sync_errors.clone(),
        );
        registry.register(
            "podwire_proxy_nftables_elements",
            "Elements in each map or set of table inet podwire-proxy",
            elements.clone(),
        );
        registry.register(
            "podwire_proxy_nftables_rules",
            "Rules in table inet podwire-proxy",
            rules.clone(),
        );
        registry.register(
            "podwire_proxy_nftables_chains",
            "Chains in table inet podwire-proxy",
            chains.clone(),
        );
        registry.register(
            "podwire_proxy_services",
            "Services with rules on this node",
            services.clone(),
        );
        registry.register(
            "podwire_proxy_conntrack_flushes",
            "UDP conntrack deletions for removed endpoints",
            conntrack_flushes.clone(),
        );
        Metrics {
            registry,
            sync_duration,
            last_sync,
            sync_errors,
            elements,
            rules,
            chains,
            services,
            conntrack_flushes,
        }
    }

    /// Records one sync's duration under `mode`.
    pub fn observe_sync(&self, mode: &str, seconds: f64) {
        self.sync_duration
            .get_or_create(&vec![("mode".to_string(), mode.to_string())])
            .observe(seconds);
    }

    /// Sets the element gauge of one set.
    pub fn set_elements(&self, set: &str, count: usize) {
        self.elements
            .get_or_create(&vec![("set".to_string(), set.to_string())])
            .set(count as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::new();
        m.observe_sync("full", 0.12);
        m.set_elements("svc4", 3);
        m.sync_errors.inc();
        let text = m.render();
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="));
        assert!(text.contains("mode=\"full\""));
        assert!(text.contains("podwire_proxy_nftables_elements{set=\"svc4\"} 3"));
        assert!(text.contains("podwire_proxy_sync_errors_total 1"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds"));
    }
}

//! Operations endpoints over plain HTTP/1.1: `/health` (the process
//! answers), `/ready` (the zone has been loaded from the source), and
//! `/metrics` (Prometheus/OpenMetrics text). Every listener serves all three
//! paths; the defaults put them on 8080, 8181 and 9153 like CoreDNS.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::handler::State;
use crate::metrics::{BUCKETS, PROTOS, QTYPES, RCODES, totals};
use crate::tcp::{Connections, Eviction};

/// What the watcher reports: the generation served, reloads, failures.
#[derive(Debug, Default)]
pub struct ZoneStatus {
    /// generation + 1; 0 = nothing loaded yet.
    generation_plus_one: AtomicU64,
    services: AtomicU64,
    reloads: AtomicU64,
    failures: AtomicU64,
    /// The source's last reported status.
    source: Mutex<podwire_model::SourceStatus>,
    /// Where the cluster state comes from ("kube https://…", "files:…").
    source_name: Mutex<String>,
}

impl ZoneStatus {
    pub fn loaded(&self, generation: u64, services: usize) {
        self.generation_plus_one
            .store(generation.saturating_add(1), Relaxed);
        self.services.store(services as u64, Relaxed);
        self.reloads.fetch_add(1, Relaxed);
    }

    pub fn failed(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// Records the source's status (readiness text and metrics use it).
    pub fn source(&self, name: &str, status: podwire_model::SourceStatus) {
        if let Ok(mut s) = self.source.lock() {
            *s = status;
        }
        if let Ok(mut n) = self.source_name.lock()
            && *n != name
        {
            *n = name.to_string();
        }
    }

    fn source_status(&self) -> (String, podwire_model::SourceStatus) {
        (
            self.source_name
                .lock()
                .map(|n| n.clone())
                .unwrap_or_default(),
            self.source.lock().map(|s| s.clone()).unwrap_or_default(),
        )
    }

    pub fn generation(&self) -> Option<u64> {
        self.generation_plus_one.load(Relaxed).checked_sub(1)
    }
}

#[derive(Debug)]
struct Exporter {
    state: Arc<State>,
    status: Arc<ZoneStatus>,
    tcp: Arc<Connections>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for Exporter {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = totals(self.state.counters.iter());
        {
            let mut family = e.encode_descriptor(
                "podwire_dns_requests",
                "DNS requests answered, by transport, query type and response code.",
                None,
                MetricType::Counter,
            )?;
            for (p, proto) in PROTOS.iter().enumerate() {
                for (q, per_rcode) in t.requests[p].iter().enumerate() {
                    let qtype = QTYPES.get(q).map_or("other", |(_, n)| n);
                    for (r, value) in per_rcode.iter().enumerate() {
                        if *value == 0 {
                            continue;
                        }
                        let labels = [("proto", *proto), ("type", qtype), ("rcode", RCODES[r])];
                        let m = family.encode_family(&labels)?;
                        ConstCounter::new(*value).encode(m)?;
                    }
                }
            }
        }
        {
            let m = e.encode_descriptor(
                "podwire_dns_request_duration_seconds",
                "Time from receiving a query to having its response.",
                None,
                MetricType::Histogram,
            )?;
            let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(BUCKETS.len() + 1);
            let mut previous = 0;
            for (i, upper) in BUCKETS.iter().copied().chain([f64::INFINITY]).enumerate() {
                let cumulative = t.latency_cumulative[i];
                buckets.push((upper, cumulative - previous));
                previous = cumulative;
            }
            let mut m = m;
            m.encode_histogram::<NoLabelSet>(
                t.latency_sum_seconds,
                t.latency_count,
                &buckets,
                None,
            )?;
        }
        counter(
            &mut e,
            "podwire_dns_cache_hits",
            "Forwarded names answered from the cache.",
            t.cache_hits,
        )?;
        counter(
            &mut e,
            "podwire_dns_cache_misses",
            "Forwarded names not in the cache.",
            t.cache_misses,
        )?;
        gauge(
            &mut e,
            "podwire_dns_cache_entries",
            "Entries in the cache.",
            self.state.cache.len() as i64,
        )?;
        let upstreams = &self.state.upstreams;
        counter(
            &mut e,
            "podwire_dns_forward_refused",
            "Queries refused because max-concurrent upstream queries were in flight.",
            upstreams.refused.load(Relaxed),
        )?;
        for (name, help, value) in [
            (
                "podwire_dns_upstream_requests",
                "Queries sent to each upstream.",
                0usize,
            ),
            (
                "podwire_dns_upstream_failures",
                "Queries an upstream did not answer (timeout, error, bad answer).",
                1,
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for u in &upstreams.list {
                let v = if value == 0 {
                    u.requests.load(Relaxed)
                } else {
                    u.failures.load(Relaxed)
                };
                let addr = u.addr.to_string();
                let labels = [("upstream", addr.as_str())];
                ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "podwire_dns_upstream_healthy",
                "1 when the upstream is in use, 0 when it is down or loops back to this server.",
                None,
                MetricType::Gauge,
            )?;
            for u in &upstreams.list {
                let addr = u.addr.to_string();
                let labels = [("upstream", addr.as_str())];
                ConstGauge::new(i64::from(u.healthy())).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut e,
            "podwire_dns_tcp_connections",
            "DNS over TCP connections open.",
            self.tcp.open() as i64,
        )?;
        {
            let mut family = e.encode_descriptor(
                "podwire_dns_tcp_evictions",
                "TCP connections closed to admit another: its client was at --tcp-max-per-client (per_client) or every slot was taken (full).",
                None,
                MetricType::Counter,
            )?;
            for (reason, kind) in [
                ("per_client", Eviction::PerClient),
                ("full", Eviction::Full),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(self.tcp.evicted(kind)).encode(family.encode_family(&labels)?)?;
            }
        }
        let status = &self.status;
        gauge(
            &mut e,
            "podwire_dns_zone_generation",
            "The store generation the zone was compiled from (-1: not loaded yet).",
            status.generation().map_or(-1, |g| g as i64),
        )?;
        gauge(
            &mut e,
            "podwire_dns_zone_services",
            "Services in the zone.",
            status.services.load(Relaxed) as i64,
        )?;
        counter(
            &mut e,
            "podwire_dns_zone_reloads",
            "Times the zone was compiled.",
            status.reloads.load(Relaxed),
        )?;
        counter(
            &mut e,
            "podwire_dns_zone_reload_failures",
            "Times the cluster state could not be loaded.",
            status.failures.load(Relaxed),
        )?;
        let (_, source) = status.source_status();
        gauge(
            &mut e,
            "podwire_dns_source_synced",
            "Whether every watched kind has been listed.",
            i64::from(source.synced),
        )?;
        gauge(
            &mut e,
            "podwire_dns_source_error",
            "Whether the source is failing now.",
            i64::from(source.error.is_some()),
        )?;
        counter(
            &mut e,
            "podwire_dns_source_watch_restarts",
            "Watches restarted (errors and relists), all kinds.",
            source.restarts.values().sum(),
        )?;
        Ok(())
    }
}

/// The registry with the server's collector.
pub fn registry(state: Arc<State>, status: Arc<ZoneStatus>, tcp: Arc<Connections>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exporter { state, status, tcp }));
    registry
}

/// The metrics text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!("cannot encode metrics: {err}");
    }
    text
}

/// Serves the operations endpoints on one listener.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    status: Arc<ZoneStatus>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let registry = Arc::clone(&registry);
        let status = Arc::clone(&status);
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), respond(stream, &registry, &status))
                    .await;
        });
    }
}

/// The response to a request line's path: status line, content type, body.
pub fn route(
    path: &str,
    registry: &Registry,
    status: &ZoneStatus,
) -> (&'static str, &'static str, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/health" => ("200 OK", "text/plain", "OK\n".into()),
        "/ready" => {
            let (name, source) = status.source_status();
            match (status.generation(), source.error) {
                (Some(_), None) => ("200 OK", "text/plain", "OK\n".into()),
                // Still serving the last zone: ready, and saying why it may be stale.
                (Some(g), Some(err)) => (
                    "200 OK",
                    "text/plain",
                    format!(
                        "OK (serving the zone of revision {g}; the source {name} is failing: {err})\n"
                    ),
                ),
                (None, err) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!(
                        "not ready: the cluster state has not been loaded yet from {name}: {}\n",
                        err.unwrap_or_else(|| "waiting for every kind to be listed".into())
                    ),
                ),
            }
        }
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /health, /ready or /metrics\n".into(),
        ),
    }
}

async fn respond(
    mut stream: tokio::net::TcpStream,
    registry: &Registry,
    status: &ZoneStatus,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || request.len() > 8192 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let (code, content_type, body) = if method == "GET" || method == "HEAD" {
        route(path, registry, status)
    } else {
        ("405 Method Not Allowed", "text/plain", "use GET\n".into())
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

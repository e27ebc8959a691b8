//! Counters of the query path: requests by transport, type and rcode, a
//! latency histogram, cache hits and misses. Each UDP worker has its own
//! [`Counters`] (relaxed atomics on a cache line of its own, no sharing on
//! the hot path); a scrape sums them. Exported in the Prometheus text
//! format through prometheus-client's `Collector` (see `server.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::wire::rtype;

/// Query types counted by name; anything else is "other".
pub const QTYPES: [(u16, &str); 12] = [
    (rtype::A, "A"),
    (rtype::AAAA, "AAAA"),
    (rtype::CNAME, "CNAME"),
    (rtype::SRV, "SRV"),
    (rtype::PTR, "PTR"),
    (rtype::TXT, "TXT"),
    (rtype::SOA, "SOA"),
    (rtype::NS, "NS"),
    (rtype::MX, "MX"),
    (rtype::ANY, "ANY"),
    (rtype::AXFR, "AXFR"),
    (rtype::IXFR, "IXFR"),
];
pub const QTYPE_SLOTS: usize = QTYPES.len() + 1;
/// NOERROR..REFUSED, then everything else.
pub const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];
/// Latency bucket upper bounds in seconds (CoreDNS's).
pub const BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];
pub const PROTOS: [&str; 2] = ["udp", "tcp"];

/// The slot of a query type.
pub fn qtype_slot(qtype: u16) -> usize {
    QTYPES
        .iter()
        .position(|(t, _)| *t == qtype)
        .unwrap_or(QTYPES.len())
}

/// The counters of one worker.
#[repr(align(128))]
#[derive(Debug)]
pub struct Counters {
    requests: [[[AtomicU64; RCODES.len()]; QTYPE_SLOTS]; 2],
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            }),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_ns: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts one answered request.
    pub fn request(&self, tcp: bool, qtype: u16, rcode: u8, took: Duration) {
        let rc = usize::from(rcode).min(RCODES.len() - 1);
        self.requests[usize::from(tcp)][qtype_slot(qtype)][rc].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }
}

/// Sums over workers.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// [proto][qtype slot][rcode]
    pub requests: Vec<Vec<Vec<u64>>>,
    /// Cumulative counts per bucket (le), then +Inf.
    pub latency_cumulative: Vec<u64>,
    pub latency_sum_seconds: f64,
    pub latency_count: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
}

/// Adds up every worker's counters.
pub fn totals<'a>(all: impl Iterator<Item = &'a Counters>) -> Totals {
    let mut t = Totals {
        requests: vec![vec![vec![0; RCODES.len()]; QTYPE_SLOTS]; 2],
        latency_cumulative: vec![0; BUCKETS.len() + 1],
        ..Default::default()
    };
    let mut sum_ns: u128 = 0;
    for c in all {
        for (p, per_type) in c.requests.iter().enumerate() {
            for (q, per_rcode) in per_type.iter().enumerate() {
                for (r, v) in per_rcode.iter().enumerate() {
                    t.requests[p][q][r] += v.load(Relaxed);
                }
            }
        }
        for (i, v) in c.latency.iter().enumerate() {
            t.latency_cumulative[i] += v.load(Relaxed);
        }
        sum_ns += u128::from(c.latency_sum_ns.load(Relaxed));
        t.cache_hits += c.cache_hits.load(Relaxed);
        t.cache_misses += c.cache_misses.load(Relaxed);
    }
    for i in 1..t.latency_cumulative.len() {
        t.latency_cumulative[i] += t.latency_cumulative[i - 1];
    }
    t.latency_count = t.latency_cumulative.last().copied().unwrap_or(0);
    t.latency_sum_seconds = sum_ns as f64 / 1e9;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_buckets() {
        let a = Counters::default();
        let b = Counters::default();
        a.request(false, rtype::A, 0, Duration::from_micros(100));
        b.request(false, rtype::A, 3, Duration::from_millis(3));
        b.request(true, 999, 9, Duration::from_secs(20));
        a.cache_hit();
        let t = totals([&a, &b].into_iter());
        assert_eq!(t.requests[0][0][0], 1);
        assert_eq!(t.requests[0][0][3], 1);
        assert_eq!(t.requests[1][QTYPES.len()][6], 1);
        assert_eq!(t.latency_cumulative[0], 1);
        assert_eq!(t.latency_cumulative[4], 2, "3 ms is under 4 ms");
        assert_eq!(t.latency_count, 3);
        assert_eq!(t.cache_hits, 1);
    }
}

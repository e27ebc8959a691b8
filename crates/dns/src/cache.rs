//! The response cache for forwarded names: positive and negative answers
//! (RFC 2308: negative TTL from the authority SOA), TTLs capped, a bounded
//! number of entries (sharded, first in first out), TTLs counted down on
//! every hit. Cluster zone answers are never cached: they are computed from
//! the zone faster than a cache lookup, and change as soon as the zone does.

use std::sync::Mutex;
use std::time::Instant;

use rustc_hash::FxHashMap;
use std::collections::VecDeque;

use crate::wire::{self, Query, ResponseInfo, rcode};

const SHARDS: usize = 16;

/// The cache key: lowercase name, type, class and the bits that change the
/// answer (DO, CD, whether the client used EDNS).
pub fn key(q: &Query<'_>) -> Box<[u8]> {
    let name = q.name.wire();
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend_from_slice(name);
    k.extend_from_slice(&q.qtype.to_be_bytes());
    k.extend_from_slice(&q.qclass.to_be_bytes());
    let flags = u8::from(q.edns.is_some_and(|e| e.dnssec_ok))
        | u8::from(q.cd) << 1
        | u8::from(q.edns.is_some()) << 2;
    k.push(flags);
    k.into_boxed_slice()
}

struct Entry {
    response: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    stored: Instant,
    ttl: u32,
}

#[derive(Default)]
struct Shard {
    map: FxHashMap<Box<[u8]>, Entry>,
    order: VecDeque<Box<[u8]>>,
}

/// Limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Entries at most (0 disables the cache).
    pub capacity: usize,
    /// Positive answers are kept at most this many seconds.
    pub max_ttl: u32,
    /// Negative answers (NXDOMAIN, NODATA) at most this many seconds.
    pub max_negative_ttl: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        // kubeadm's Corefile: `cache 30`; CoreDNS's default capacity.
        CacheConfig {
            capacity: 9984,
            max_ttl: 30,
            max_negative_ttl: 30,
        }
    }
}

pub struct Cache {
    shards: Vec<Mutex<Shard>>,
    config: CacheConfig,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config", &self.config)
            .finish()
    }
}

fn shard_of(key: &[u8]) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(key);
    (h.finish() as usize) % SHARDS
}

impl Cache {
    pub fn new(config: CacheConfig) -> Cache {
        Cache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            config,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the cached response for `q` into `out` (its ID, its question
    /// bytes, TTLs counted down); false on a miss or an expired entry.
    pub fn get(&self, key: &[u8], q: &Query<'_>, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.config.capacity == 0 {
            return false;
        }
        let Ok(shard) = self.shards[shard_of(key)].lock() else {
            return false;
        };
        let Some(entry) = shard.map.get(key) else {
            return false;
        };
        let age = now.saturating_duration_since(entry.stored).as_secs();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            return false;
        }
        out.clear();
        out.extend_from_slice(&entry.response);
        if age > 0 {
            for &at in entry.ttl_offsets.iter() {
                let at = usize::from(at);
                if let Some(field) = out.get_mut(at..at + 4) {
                    let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                    field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
                }
            }
        }
        drop(shard);
        out[0..2].copy_from_slice(&q.id.to_be_bytes());
        // The client's question bytes (its case); same length by construction.
        let question = &q.packet[wire::HEADER_LEN..q.question_end];
        if out.len() >= q.question_end {
            out[wire::HEADER_LEN..q.question_end].copy_from_slice(question);
        }
        true
    }

    /// How long a response may be cached; None when it must not be
    /// (truncated, SERVFAIL/REFUSED, negative without SOA, TTL 0).
    pub fn ttl_for(&self, info: &ResponseInfo) -> Option<u32> {
        if info.truncated {
            return None;
        }
        let ttl = match info.rcode {
            rcode::NOERROR if info.answers > 0 => info.min_ttl?.min(self.config.max_ttl),
            rcode::NOERROR | rcode::NXDOMAIN => {
                info.negative_ttl?.min(self.config.max_negative_ttl)
            }
            _ => return None,
        };
        (ttl > 0).then_some(ttl)
    }

    /// Stores an upstream response (its TTLs capped to the entry's lifetime).
    pub fn insert(&self, key: Box<[u8]>, response: &[u8], info: &ResponseInfo, now: Instant) {
        if self.config.capacity == 0 || response.len() > usize::from(u16::MAX) {
            return;
        }
        let Some(ttl) = self.ttl_for(info) else {
            return;
        };
        let mut stored = response.to_vec();
        let mut offsets = Vec::with_capacity(info.ttl_offsets.len());
        for &at in &info.ttl_offsets {
            if let Some(field) = stored.get_mut(at..at + 4) {
                let orig = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                field.copy_from_slice(&orig.min(ttl).to_be_bytes());
                offsets.push(at as u16);
            }
        }
        let entry = Entry {
            response: stored.into_boxed_slice(),
            ttl_offsets: offsets.into_boxed_slice(),
            stored: now,
            ttl,
        };
        let per_shard = self.config.capacity.div_ceil(SHARDS).max(1);
        let Ok(mut shard) = self.shards[shard_of(&key)].lock() else {
            return;
        };
        if let Some(existing) = shard.map.get_mut(&key) {
            *existing = entry;
            return;
        }
        while shard.map.len() >= per_shard {
            match shard.order.pop_front() {
                Some(old) => {
                    shard.map.remove(&old);
                }
                None => break,
            }
        }
        shard.order.push_back(key.clone());
        shard.map.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Owner, Writer, parse_query, rtype, scan_response, wire_from_text};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn query(name: &str, id: u16) -> Vec<u8> {
        let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(wire_from_text(name).unwrap());
        q.extend([0, 1, 0, 1]);
        q
    }

    fn response(packet: &[u8], ttl: u32) -> Vec<u8> {
        let q = parse_query(packet).unwrap();
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &q, false);
        w.a(Owner::Question, ttl, Ipv4Addr::new(192, 0, 2, 1));
        w.finish();
        out
    }

    #[test]
    fn hit_rewrites_id_case_and_ttl() {
        let cache = Cache::new(CacheConfig {
            capacity: 10,
            max_ttl: 30,
            max_negative_ttl: 5,
        });
        let first = query("example.org", 1);
        let resp = response(&first, 300);
        let q1 = parse_query(&first).unwrap();
        let t0 = Instant::now();
        cache.insert(key(&q1), &resp, &scan_response(&resp).unwrap(), t0);
        let second = query("EXAMPLE.org", 2);
        let q2 = parse_query(&second).unwrap();
        let mut out = Vec::new();
        let later = t0 + Duration::from_secs(10);
        assert!(cache.get(&key(&q2), &q2, later, &mut out));
        let info = scan_response(&out).unwrap();
        assert_eq!(info.id, 2);
        assert_eq!(info.min_ttl, Some(20), "capped to 30, then 10 s old");
        assert_eq!(&out[12..second.len()], &second[12..]);
        assert!(!cache.get(&key(&q2), &q2, t0 + Duration::from_secs(31), &mut out));
    }

    #[test]
    fn bounded_and_negative_rules() {
        let cache = Cache::new(CacheConfig {
            capacity: 16,
            max_ttl: 30,
            max_negative_ttl: 5,
        });
        let now = Instant::now();
        for i in 0..100 {
            let p = query(&format!("n{i}.example"), 1);
            let q = parse_query(&p).unwrap();
            let r = response(&p, 60);
            cache.insert(key(&q), &r, &scan_response(&r).unwrap(), now);
        }
        assert!(cache.len() <= 16, "{}", cache.len());
        let mut info = scan_response(&response(&query("x", 1), 60)).unwrap();
        info.rcode = rcode::NXDOMAIN;
        info.answers = 0;
        assert_eq!(cache.ttl_for(&info), None, "no SOA, no negative caching");
        info.negative_ttl = Some(3600);
        assert_eq!(cache.ttl_for(&info), Some(5));
        info.rcode = rcode::SERVFAIL;
        assert_eq!(cache.ttl_for(&info), None);
        let _ = rtype::A;
    }
}

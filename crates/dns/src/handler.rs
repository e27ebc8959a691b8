//! The query handler: bytes in, response bytes out. The synchronous part
//! ([`handle`]) answers everything it can without waiting: protocol errors,
//! the cluster zone, cluster PTRs, the hosts file, cache hits. What needs an
//! upstream comes back as a [`Job`] for [`resolve`], which runs on the async
//! runtime. The order is CoreDNS's kubeadm Corefile: kubernetes (zone and
//! reverse), hosts, cache, forward.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::cache::{self, Cache};
use crate::forward::{self, InFlight, Upstreams};
use crate::hosts::Hosts;
use crate::metrics::Counters;
use crate::wire::{self, Owner, Query, Writer, parse_query, rcode, rtype};
use crate::zone::{Zone, ZoneAnswer};

/// Everything a query may need, shared by all workers.
#[derive(Debug)]
pub struct State {
    /// None until the source has synced (zone names get SERVFAIL).
    pub zone: ArcSwapOption<Zone>,
    /// The origin used before the zone is loaded (wire, lowercase).
    pub origin: Vec<u8>,
    pub hosts: ArcSwap<Hosts>,
    pub ttl: u32,
    pub cache: Cache,
    pub upstreams: Arc<Upstreams>,
    /// Index 0: TCP and the async side; 1..: one per UDP worker.
    pub counters: Vec<Counters>,
    /// Zones this server is authoritative for (lowercase wire): a name in
    /// one that the hosts file does not have is NXDOMAIN, not forwarded.
    pub authoritative: Vec<Vec<u8>>,
}

/// What to do with a packet.
#[derive(Debug)]
pub enum Action {
    /// `out` holds the response.
    Reply,
    /// Nothing to send (not a query).
    Drop,
    /// Needs an upstream: hand the job to [`resolve`].
    Forward(Job),
}

/// A query waiting for an upstream.
#[derive(Debug)]
pub struct Job {
    pub query: Vec<u8>,
    pub key: Box<[u8]>,
    /// An ExternalName answer (the CNAME) whose target's records are to be
    /// appended, and the target (wire).
    pub chase: Option<(Vec<u8>, Vec<u8>)>,
    pub tcp: bool,
    pub started: Instant,
    _slot: InFlight,
}

/// The outcome of [`handle`] and the query type (for metrics).
#[derive(Debug)]
pub struct Handled {
    pub action: Action,
    pub qtype: u16,
}

fn reply(qtype: u16) -> Handled {
    Handled {
        action: Action::Reply,
        qtype,
    }
}

/// Answers what can be answered now. Never panics, whatever the bytes.
pub fn handle(
    state: &State,
    packet: &[u8],
    tcp: bool,
    out: &mut Vec<u8>,
    now: Instant,
    counters: &Counters,
) -> Handled {
    let q = match parse_query(packet) {
        Ok(q) => q,
        Err(reject) => {
            let action = if wire::reject_response(out, packet, reject) {
                Action::Reply
            } else {
                Action::Drop
            };
            return Handled { action, qtype: 0 };
        }
    };
    let qtype = q.qtype;
    let mut w = Writer::new(out, &q, tcp);
    if q.qclass != wire::CLASS_IN && q.qclass != wire::CLASS_ANY {
        w.set_rcode(u16::from(rcode::REFUSED));
        w.finish();
        return reply(qtype);
    }
    if matches!(qtype, rtype::AXFR | rtype::IXFR) {
        // No zone transfers: the zone is generated, ask the source instead.
        w.set_rcode(u16::from(rcode::REFUSED));
        w.finish();
        return reply(qtype);
    }

    let zone = state.zone.load();
    let origin: &[u8] = zone.as_ref().map_or(&state.origin, |z| z.origin());
    if let Some(rel) = wire::relative_len(q.name.wire(), origin) {
        let Some(zone) = zone.as_ref() else {
            w.set_rcode(u16::from(rcode::SERVFAIL));
            w.finish();
            return reply(qtype);
        };
        match zone.answer(&q, rel, &mut w) {
            ZoneAnswer::Done => {
                w.finish();
                return reply(qtype);
            }
            ZoneAnswer::Chase(target) => {
                let hosts = state.hosts.load();
                if let Some(ips) = hosts.lookup(&target) {
                    for ip in ips {
                        match (ip, qtype) {
                            (std::net::IpAddr::V4(v4), rtype::A | rtype::ANY) => {
                                w.a(Owner::Name(&target), state.ttl, *v4)
                            }
                            (std::net::IpAddr::V6(v6), rtype::AAAA | rtype::ANY) => {
                                w.aaaa(Owner::Name(&target), state.ttl, *v6)
                            }
                            _ => {}
                        }
                    }
                    w.finish();
                    return reply(qtype);
                }
                w.finish();
                if !state.upstreams.usable() {
                    return reply(qtype);
                }
                let Some(slot) = state.upstreams.try_acquire() else {
                    return reply(qtype);
                };
                let prefix = out.clone();
                return Handled {
                    action: Action::Forward(Job {
                        query: packet.to_vec(),
                        key: Box::default(),
                        chase: Some((prefix, target)),
                        tcp,
                        started: now,
                        _slot: slot,
                    }),
                    qtype,
                };
            }
        }
    }
    if let Some(zone) = zone.as_ref()
        && zone.answer_reverse(&q, &mut w)
    {
        w.finish();
        return reply(qtype);
    }
    if state.hosts.load().answer(&q, state.ttl, &mut w) {
        w.finish();
        return reply(qtype);
    }
    if state
        .authoritative
        .iter()
        .any(|zone| wire::relative_len(q.name.wire(), zone).is_some())
    {
        // As an authoritative server for the zone says of a name it does
        // not hold: it does not exist (at once, no upstream, no SERVFAIL).
        w.set_authoritative(true);
        w.set_rcode(u16::from(rcode::NXDOMAIN));
        w.finish();
        return reply(qtype);
    }
    if forward::is_probe_name(&q.name) && state.upstreams.check_probe(&q.name) {
        w.set_rcode(u16::from(rcode::SERVFAIL));
        w.finish();
        return reply(qtype);
    }
    let key = cache::key(&q);
    if state.cache.get(&key, &q, now, out) {
        counters.cache_hit();
        fit(out, &q, tcp);
        return reply(qtype);
    }
    counters.cache_miss();
    if !state.upstreams.usable() {
        w = Writer::new(out, &q, tcp);
        w.set_rcode(u16::from(rcode::SERVFAIL));
        w.finish();
        return reply(qtype);
    }
    let Some(slot) = state.upstreams.try_acquire() else {
        // Over the bound on concurrent upstream queries (CoreDNS's
        // max_concurrent answers REFUSED too).
        let mut w = Writer::new(out, &q, tcp);
        w.set_rcode(u16::from(rcode::REFUSED));
        w.finish();
        return reply(qtype);
    };
    Handled {
        action: Action::Forward(Job {
            query: packet.to_vec(),
            key,
            chase: None,
            tcp,
            started: now,
            _slot: slot,
        }),
        qtype,
    }
}

/// Replaces a response that is too big for the client's transport with an
/// empty one with TC set (the client retries over TCP).
fn fit(out: &mut Vec<u8>, q: &Query<'_>, tcp: bool) {
    if out.len() <= q.size_limit(tcp) {
        return;
    }
    let rc = out.get(3).map_or(0, |b| b & 0xF);
    let aa = out.get(2).is_some_and(|b| b & 0x04 != 0);
    let mut w = Writer::new(out, q, tcp);
    w.set_rcode(u16::from(rc));
    w.set_authoritative(aa);
    w.set_truncated();
    w.finish();
}

/// Resolves a forwarded query; always produces a response (SERVFAIL when
/// no upstream answered).
pub async fn resolve(state: &State, job: Job) -> Vec<u8> {
    let Ok(q) = parse_query(&job.query) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match &job.chase {
        None => match state.upstreams.exchange(&job.query).await {
            Ok(response) => {
                if let Some(info) = wire::scan_response(&response)
                    && info.qname == q.name.wire()
                    && info.qtype == q.qtype
                {
                    state
                        .cache
                        .insert(job.key.clone(), &response, &info, Instant::now());
                    out = response;
                    fit(&mut out, &q, job.tcp);
                    return out;
                }
                tracing::debug!("upstream answer does not match the question; SERVFAIL");
            }
            Err(err) => tracing::debug!("forwarding failed: {err}"),
        },
        Some((prefix, target)) => {
            if let Some(merged) = chase(state, &q, prefix, target).await {
                out = merged;
                fit(&mut out, &q, job.tcp);
                return out;
            }
            out = prefix.clone();
            return out;
        }
    }
    let mut w = Writer::new(&mut out, &q, job.tcp);
    w.set_rcode(u16::from(rcode::SERVFAIL));
    w.finish();
    out
}

/// Resolves an ExternalName target upstream and appends its records to the
/// CNAME answer. hickory-proto merges the two messages (the upstream's names
/// may be compressed against its own message).
async fn chase(state: &State, q: &Query<'_>, prefix: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::op::Message;
    let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    query.extend_from_slice(target);
    query.extend_from_slice(&q.qtype.to_be_bytes());
    query.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
    query.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    let response = state.upstreams.exchange(&query).await.ok()?;
    let mut answer = Message::from_vec(prefix).ok()?;
    let upstream = Message::from_vec(&response).ok()?;
    answer.answers.extend(upstream.answers.iter().cloned());
    answer.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names() {
        use wire::relative_len;
        let origin = wire::wire_from_text("cluster.local").unwrap();
        let name = wire::wire_from_text("web.apps.svc.cluster.local").unwrap();
        assert_eq!(relative_len(&name, &origin), Some(13));
        assert_eq!(relative_len(&origin, &origin), Some(0));
        let other = wire::wire_from_text("xcluster.local").unwrap();
        assert_eq!(relative_len(&other, &origin), None);
        // A label whose bytes look like the origin's wire form.
        let tricky = b"\x0fx\x07cluster\x05local\x00";
        assert_eq!(relative_len(tricky, &origin), None);
        assert_eq!(relative_len(b"\x00", &origin), None);
    }
}

//! Forwarding to upstream servers: UDP with a fresh socket and random ID per
//! query (and a TCP retry when the answer is truncated), upstreams tried in
//! order with failover, health checks that bring a failed upstream back,
//! a bound on concurrent upstream queries, and loop detection (an upstream
//! that is this server, or that forwards back to it, is never used).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::wire::{self, NameBuf};

/// Consecutive failures after which an upstream is considered down (it is
/// then only tried when every upstream is down, until a health check
/// succeeds).
const MAX_FAILS: u32 = 2;
/// The suffix of loop-detection probe names.
pub const PROBE_SUFFIX: &str = "podwire-loop-probe.invalid";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream server is configured (or usable): give --upstream IP:PORT")]
    NoUpstream,
    #[error("upstream {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("upstream {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {addr} sent a malformed or mismatched answer")]
    Malformed { addr: SocketAddr },
}

/// One upstream server and its health.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    healthy: AtomicBool,
    fails: AtomicU32,
    looping: AtomicBool,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
}

impl Upstream {
    fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            looping: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed) && !self.looping.load(Relaxed)
    }

    pub fn looping(&self) -> bool {
        self.looping.load(Relaxed)
    }

    fn success(&self) {
        self.fails.store(0, Relaxed);
        if !self.healthy.swap(true, Relaxed) {
            tracing::info!("upstream {} answers again", self.addr);
        }
    }

    fn failure(&self, err: &ForwardError) {
        self.failures.fetch_add(1, Relaxed);
        let fails = self.fails.fetch_add(1, Relaxed) + 1;
        if fails >= MAX_FAILS && self.healthy.swap(false, Relaxed) {
            tracing::warn!("upstream {} is down ({err}); failing over", self.addr);
        }
    }
}

/// The upstream servers.
#[derive(Debug)]
pub struct Upstreams {
    pub list: Vec<Upstream>,
    pub timeout: Duration,
    pub max_concurrent: usize,
    in_flight: AtomicUsize,
    pub refused: AtomicU64,
    probes: Mutex<Vec<(Vec<u8>, usize)>>,
}

/// A slot among the concurrent upstream queries, released on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Upstreams>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Whether `upstream` is this server itself (listening on `listen`).
pub fn is_self(upstream: SocketAddr, listen: SocketAddr) -> bool {
    if upstream.port() != listen.port() {
        return false;
    }
    if upstream.ip() == listen.ip() {
        return true;
    }
    listen.ip().is_unspecified() && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())
}

impl Upstreams {
    /// The upstreams, leaving out (with an error log) any that is this
    /// server's own listening address.
    pub fn new(
        addrs: &[SocketAddr],
        listen: SocketAddr,
        timeout: Duration,
        max_concurrent: usize,
    ) -> Upstreams {
        let mut list = Vec::new();
        for addr in addrs {
            if is_self(*addr, listen) {
                tracing::error!(
                    "upstream {addr} is this server ({listen}): not forwarding to it (a loop); give another --upstream"
                );
                continue;
            }
            if list.iter().any(|u: &Upstream| u.addr == *addr) {
                continue;
            }
            list.push(Upstream::new(*addr));
        }
        if list.is_empty() {
            tracing::warn!("no upstream servers: names outside the cluster get SERVFAIL");
        }
        Upstreams {
            list,
            timeout,
            max_concurrent,
            in_flight: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// Takes a slot for one more upstream query; None (counted) when
    /// `max_concurrent` are already in flight.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Relaxed);
        if before >= self.max_concurrent {
            self.in_flight.fetch_sub(1, Relaxed);
            self.refused.fetch_add(1, Relaxed);
            return None;
        }
        Some(InFlight(Arc::clone(self)))
    }

    /// Whether any upstream can be used at all.
    pub fn usable(&self) -> bool {
        self.list.iter().any(|u| !u.looping())
    }

    /// Sends `query` to the upstreams in order (healthy ones first) until one
    /// answers; the answer carries the query's own ID.
    pub async fn exchange(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let order = self
            .list
            .iter()
            .filter(|u| u.healthy())
            .chain(self.list.iter().filter(|u| !u.healthy() && !u.looping()));
        let mut last = ForwardError::NoUpstream;
        for upstream in order {
            upstream.requests.fetch_add(1, Relaxed);
            match exchange_one(upstream.addr, query, self.timeout).await {
                Ok(response) => {
                    upstream.success();
                    return Ok(response);
                }
                Err(err) => {
                    tracing::debug!("{err}");
                    upstream.failure(&err);
                    last = err;
                }
            }
        }
        Err(last)
    }

    /// Health checks: every `interval`, each upstream that is down is asked
    /// for `. NS`; any answer brings it back.
    pub async fn health_loop(self: Arc<Self>, interval: Duration) {
        let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(&wire::rtype::NS.to_be_bytes());
        query.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
        loop {
            tokio::time::sleep(interval).await;
            for upstream in self.list.iter().filter(|u| !u.healthy() && !u.looping()) {
                if exchange_one(upstream.addr, &query, self.timeout)
                    .await
                    .is_ok()
                {
                    upstream.success();
                }
            }
        }
    }

    /// Loop detection, as CoreDNS's loop plugin: a query for a random name
    /// under [`PROBE_SUFFIX`] is sent through each upstream; if it comes back
    /// to this server ([`Upstreams::check_probe`]), that upstream forwards to
    /// us and is never used again.
    pub async fn probe_loops(self: Arc<Self>) {
        for (idx, upstream) in self.list.iter().enumerate() {
            let name = format!("{:016x}.{PROBE_SUFFIX}", fastrand::u64(..));
            let Some(wire_name) = wire::wire_from_text(&name) else {
                continue;
            };
            if let Ok(mut probes) = self.probes.lock() {
                probes.push((wire_name.clone(), idx));
            }
            let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            query.extend_from_slice(&wire_name);
            query.extend_from_slice(&wire::rtype::HINFO.to_be_bytes());
            query.extend_from_slice(&wire::CLASS_IN.to_be_bytes());
            let _ = exchange_one(upstream.addr, &query, self.timeout).await;
        }
        tokio::time::sleep(self.timeout).await;
        if let Ok(mut probes) = self.probes.lock() {
            probes.clear();
        }
    }

    /// Called for names under [`PROBE_SUFFIX`] arriving at this server: true
    /// when it is one of our probes (the upstream it went to is marked as a
    /// loop); the caller must not forward it.
    pub fn check_probe(&self, name: &NameBuf) -> bool {
        let Ok(probes) = self.probes.lock() else {
            return false;
        };
        match probes.iter().find(|(n, _)| n == name.wire()) {
            Some((_, idx)) => {
                if let Some(upstream) = self.list.get(*idx)
                    && !upstream.looping.swap(true, Relaxed)
                {
                    tracing::error!(
                        "upstream {} forwards queries back to this server (a loop): not using it; give podwire dns an upstream that resolves names itself",
                        upstream.addr
                    );
                }
                true
            }
            None => false,
        }
    }
}

/// Whether `name` is under the probe suffix.
pub fn is_probe_name(name: &NameBuf) -> bool {
    name.wire()
        .ends_with(b"\x12podwire-loop-probe\x07invalid\x00")
}

fn same_question(query: &[u8], response: &[u8]) -> bool {
    let Some(end) = wire::skip_name(query, wire::HEADER_LEN).map(|e| e + 4) else {
        return false;
    };
    match (
        query.get(wire::HEADER_LEN..end),
        response.get(wire::HEADER_LEN..end),
    ) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b) && response.get(4..6) == Some(&[0, 1]),
        _ => false,
    }
}

/// One query to one upstream: UDP from a fresh socket with a random ID,
/// then TCP when the answer is truncated. The answer gets the query's ID back.
pub async fn exchange_one(
    addr: SocketAddr,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { addr, source };
    if query.len() < wire::HEADER_LEN {
        return Err(ForwardError::Malformed { addr });
    }
    let deadline = Instant::now() + timeout;
    let bind: SocketAddr = match addr.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(addr).await.map_err(io)?;
    let id = fastrand::u16(..);
    let mut msg = query.to_vec();
    msg[0..2].copy_from_slice(&id.to_be_bytes());
    socket.send(&msg).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    let response = loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => return Err(ForwardError::Timeout { addr, timeout }),
        };
        let got = &buf[..n];
        // Anything that is not the answer to this question is ignored
        // (spoofing, late answers).
        if n >= wire::HEADER_LEN
            && got[0..2] == id.to_be_bytes()
            && got[2] & 0x80 != 0
            && same_question(&msg, got)
        {
            break got.to_vec();
        }
    };
    let response = if response[2] & 0x02 != 0 {
        exchange_tcp(addr, &msg, deadline, timeout).await?
    } else {
        response
    };
    let mut response = response;
    response[0..2].copy_from_slice(&query[0..2]);
    Ok(response)
}

async fn exchange_tcp(
    addr: SocketAddr,
    msg: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    let io = |source| ForwardError::Io { addr, source };
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        let mut framed = Vec::with_capacity(msg.len() + 2);
        framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        framed.extend_from_slice(msg);
        stream.write_all(&framed).await.map_err(io)?;
        let len = stream.read_u16().await.map_err(io)?;
        let mut body = vec![0u8; usize::from(len)];
        stream.read_exact(&mut body).await.map_err(io)?;
        if body.len() < wire::HEADER_LEN || body[0..2] != msg[0..2] || !same_question(msg, &body) {
            return Err(ForwardError::Malformed { addr });
        }
        Ok(body)
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(ForwardError::Timeout { addr, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let listen: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert!(is_self("127.0.0.1:53".parse().unwrap(), listen));
        assert!(!is_self("127.0.0.1:5353".parse().unwrap(), listen));
        assert!(!is_self("192.0.2.1:53".parse().unwrap(), listen));
        let lo: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        assert!(is_self(lo, lo));
        assert!(!is_self("127.0.0.2:5300".parse().unwrap(), lo));
    }

    #[test]
    fn upstream_list_drops_self_and_duplicates() {
        let listen: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let u = Upstreams::new(
            &[
                listen,
                "127.0.0.2:53".parse().unwrap(),
                "127.0.0.2:53".parse().unwrap(),
            ],
            listen,
            Duration::from_secs(1),
            10,
        );
        assert_eq!(u.list.len(), 1);
    }

    #[test]
    fn probe_names() {
        let name = NameBuf::from_text(&format!("abc.{PROBE_SUFFIX}")).unwrap();
        assert!(is_probe_name(&name));
        assert!(!is_probe_name(&NameBuf::from_text("example.org").unwrap()));
    }

    #[test]
    fn concurrency_bound() {
        let u = Arc::new(Upstreams::new(
            &[],
            "127.0.0.1:1".parse().unwrap(),
            Duration::from_secs(1),
            2,
        ));
        let a = u.try_acquire();
        let b = u.try_acquire();
        assert!(a.is_some() && b.is_some());
        assert!(u.try_acquire().is_none());
        drop(a);
        assert!(u.try_acquire().is_some());
        assert_eq!(u.refused.load(Relaxed), 1);
    }
}

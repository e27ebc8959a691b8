//! DNS over TCP (RFC 7766): the accept loop, one task per connection, and
//! the table of open connections that keeps TCP from being starved.
//!
//! Slots are bounded (`max_connections`), but a full table never stops the
//! server from accepting: clients that keep a connection open and query
//! just often enough never reach the idle timeout, so a plain semaphore let
//! 1,024 such clients lock every newcomer out. Instead, when the table is
//! full the least recently active connection (by the time of its last
//! query) is closed to admit the new one (RFC 7766 §6.2.3 lets a server
//! close connections to manage its resources). Each client address may hold
//! at most `max_per_client` connections, so one source cannot push everyone
//! else out either. UDP does not go through here at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::handler::{self, Action, State};

/// How many connections `podwire dns` accepts over TCP, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Open connections at most; beyond it the least recently active one is
    /// closed for each new client.
    pub max_connections: usize,
    /// Open connections per client address at most (0: no limit, e.g.
    /// when every client arrives through one NAT address).
    pub max_per_client: usize,
    /// A connection is closed after this long without a query.
    pub idle_timeout: Duration,
}

/// The default of `--tcp-max-per-client`: far above what a stub resolver
/// uses (one, at most a few, connections), far below the table's size.
pub const DEFAULT_MAX_PER_CLIENT: usize = 64;

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 1024,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its client address was at its limit and opened another connection.
    PerClient,
    /// Every slot was taken and another client connected.
    Full,
}

/// One open connection, as the table sees it.
#[derive(Debug)]
struct Slot {
    client: IpAddr,
    /// Milliseconds since the table's epoch at the last query (or accept).
    last_active: AtomicU64,
    /// Wakes the connection's task to close it.
    close: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    slots: HashMap<u64, Arc<Slot>>,
    per_client: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&slot.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&slot.client);
            }
        }
        Some(slot)
    }

    /// The least recently active connection (of `client` only, when given);
    /// on a tie the oldest (lowest id).
    fn least_recent(&self, client: Option<IpAddr>) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| client.is_none_or(|c| s.client == c))
            .min_by_key(|(id, s)| (s.last_active.load(Relaxed), **id))
            .map(|(id, _)| *id)
    }
}

/// The open TCP connections and how many were closed to make room.
#[derive(Debug)]
pub struct Connections {
    config: TcpConfig,
    epoch: Instant,
    table: Mutex<Table>,
    evicted_per_client: AtomicU64,
    evicted_full: AtomicU64,
    /// When the last "slots full" notice was logged (ms since epoch + 1).
    last_notice: AtomicU64,
}

/// How often at most the table says at info level that it is full.
const NOTICE_EVERY_MS: u64 = 60_000;

/// A connection's place in the table; leaving frees it.
#[derive(Debug)]
pub struct Admitted {
    connections: Arc<Connections>,
    id: u64,
    slot: Arc<Slot>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Already gone when it was evicted.
        self.connections.lock().remove(self.id);
    }
}

impl Admitted {
    /// Records a query: the connection is active now.
    fn touch(&self) {
        self.slot
            .last_active
            .store(self.connections.now_ms(), Relaxed);
    }
}

impl Connections {
    pub fn new(config: TcpConfig) -> Connections {
        Connections {
            config: TcpConfig {
                max_connections: config.max_connections.max(1),
                ..config
            },
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            evicted_per_client: AtomicU64::new(0),
            evicted_full: AtomicU64::new(0),
            last_notice: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent between statements: a panic elsewhere
        // while holding it leaves nothing half done.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().slots.len()
    }

    /// Connections closed to make room, by reason.
    pub fn evicted(&self, reason: Eviction) -> u64 {
        match reason {
            Eviction::PerClient => self.evicted_per_client.load(Relaxed),
            Eviction::Full => self.evicted_full.load(Relaxed),
        }
    }

    /// Takes a slot for a new connection from `client`, closing another
    /// connection first when the client or the table is at its limit.
    ///
    /// A client at its own limit loses its own least recently active
    /// connection rather than being refused: resolvers use the connection
    /// they just opened, and the older one is the likeliest to be abandoned
    /// (a restarted process, a leaked socket), which refusing would keep
    /// holding a slot until the idle timeout while the client got no
    /// answers. Either way a source never takes more than its share.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Admitted {
        let now = self.now_ms();
        let mut table = self.lock();
        let limit = self.config.max_per_client;
        let at_limit = limit > 0 && table.per_client.get(&client).copied().unwrap_or(0) >= limit;
        let victim = if at_limit {
            table
                .least_recent(Some(client))
                .map(|id| (id, Eviction::PerClient))
        } else if table.slots.len() >= self.config.max_connections {
            table.least_recent(None).map(|id| (id, Eviction::Full))
        } else {
            None
        };
        if let Some((id, reason)) = victim
            && let Some(slot) = table.remove(id)
        {
            // Stored if the task is not waiting yet, so it is never missed.
            slot.close.notify_one();
            let idle = now.saturating_sub(slot.last_active.load(Relaxed));
            match reason {
                Eviction::PerClient => {
                    self.evicted_per_client.fetch_add(1, Relaxed);
                    tracing::debug!(
                        "tcp: {client} is at its limit of {limit} connections; closed its least recently active one (idle {idle} ms)"
                    );
                }
                Eviction::Full => {
                    self.evicted_full.fetch_add(1, Relaxed);
                    tracing::debug!(
                        "tcp: all {} slots taken; closed the least recently active connection (from {}, idle {idle} ms) for {client}",
                        self.config.max_connections,
                        slot.client
                    );
                    self.notice_full(now);
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let slot = Arc::new(Slot {
            client,
            last_active: AtomicU64::new(now),
            close: Notify::new(),
        });
        table.slots.insert(id, Arc::clone(&slot));
        *table.per_client.entry(client).or_default() += 1;
        Admitted {
            connections: Arc::clone(self),
            id,
            slot,
        }
    }

    /// Says at info level, once a minute at most, that slots ran out: worth
    /// knowing (raise --tcp-max-connections?), not worth a line per client.
    fn notice_full(&self, now: u64) {
        let last = self.last_notice.load(Relaxed);
        if (last == 0 || now.saturating_sub(last - 1) >= NOTICE_EVERY_MS)
            && self
                .last_notice
                .compare_exchange(last, now + 1, Relaxed, Relaxed)
                .is_ok()
        {
            tracing::info!(
                "tcp: all {} connection slots are taken; closing the least recently active connection for each new client ({} so far)",
                self.config.max_connections,
                self.evicted_full.load(Relaxed)
            );
        }
    }
}

/// Accepts connections for as long as the runtime runs.
pub async fn accept(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    connections: Arc<Connections>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let admitted = connections.admit(peer.ip());
                let state = Arc::clone(&state);
                let idle = connections.config.idle_timeout;
                tokio::spawn(async move {
                    let slot = Arc::clone(&admitted.slot);
                    tokio::select! {
                        _ = slot.close.notified() => {}
                        _ = serve(stream, &state, &admitted, idle) => {}
                    }
                    // Dropping the stream (with the finished future) closes it.
                    drop(admitted);
                });
            }
            Err(e) => {
                tracing::debug!("tcp accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answers the queries of one connection until it ends, errs or idles.
async fn serve(
    mut stream: tokio::net::TcpStream,
    state: &State,
    admitted: &Admitted,
    idle: Duration,
) {
    let mut out = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut packet = vec![0u8; len];
        match tokio::time::timeout(idle, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        admitted.touch();
        let started = Instant::now();
        let counters = &state.counters[0];
        let handled = handler::handle(state, &packet, true, &mut out, started, counters);
        let response = match handled.action {
            Action::Reply => std::mem::take(&mut out),
            Action::Drop => return,
            Action::Forward(job) => handler::resolve(state, job).await,
        };
        if response.is_empty() {
            return;
        }
        counters.request(
            true,
            handled.qtype,
            response.get(3).map_or(0, |b| b & 0xF),
            started.elapsed(),
        );
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&(response.len() as u16).to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
        out = response;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn table(max_connections: usize, max_per_client: usize) -> Arc<Connections> {
        Arc::new(Connections::new(TcpConfig {
            max_connections,
            max_per_client,
            ..TcpConfig::default()
        }))
    }

    #[test]
    fn full_table_closes_the_least_recently_active() {
        let c = table(3, 0);
        let a = c.admit(ip(2));
        let b = c.admit(ip(3));
        let d = c.admit(ip(4));
        // a and d queried later than b.
        a.slot.last_active.store(10, Relaxed);
        b.slot.last_active.store(5, Relaxed);
        d.slot.last_active.store(20, Relaxed);
        let e = c.admit(ip(5));
        assert_eq!(c.open(), 3);
        assert_eq!(c.evicted(Eviction::Full), 1);
        assert!(!c.lock().slots.contains_key(&b.id), "b was closed");
        // Its task ending later frees nothing twice.
        drop(b);
        assert_eq!(c.open(), 3);
        drop((a, d, e));
        assert_eq!(c.open(), 0);
        assert!(c.lock().per_client.is_empty());
    }

    #[test]
    fn a_client_at_its_limit_loses_its_own_oldest() {
        let c = table(10, 2);
        let other = c.admit(ip(9));
        let first = c.admit(ip(2));
        let _second = c.admit(ip(2));
        let _third = c.admit(ip(2));
        assert_eq!(c.open(), 3);
        assert_eq!(c.evicted(Eviction::PerClient), 1);
        assert!(!c.lock().slots.contains_key(&first.id));
        assert!(c.lock().slots.contains_key(&other.id));
        assert_eq!(c.lock().per_client.get(&ip(2)), Some(&2));
    }
}

//! The client connection limit (`--max-connections`) and the registry that
//! enforces it. Every worker thread keeps its open connections in its own
//! [`WorkerConns`] (one lock per worker, taken once when a connection opens
//! and once when it closes; requests only touch the connection's atomics);
//! [`Limits`] counts them across workers. When a listener accepts a
//! connection at the limit, the connection idle the longest, across every
//! worker, is told to close: one between requests (keep-alive) or one that
//! has not yet sent a complete request head (or finished its TLS
//! handshake). With none idle, the new connection waits, unserved, until
//! one closes, and the listener accepts nothing more meanwhile (the kernel's
//! backlog holds the rest), as nginx does when `worker_connections` are
//! used up.
//!
//! After a drop in open connections the trimmer returns freed heap memory
//! to the system (glibc keeps it otherwise, see ARCHITECTURE.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::metrics::{Metrics, ShedLabels};

/// The default limit's ceiling.
pub const MAX_CONNECTIONS_CAP: usize = 65_536;
/// Memory budgeted per connection for the default limit: an HTTP/1.1
/// connection with a request in flight holds hyper's two 8 KiB buffers,
/// the request state and a backend connection's buffers (~40 KB), a TLS one
/// rustls's buffers besides.
pub const BYTES_PER_CONNECTION: u64 = 64 * 1024;
/// File descriptors kept back from the default limit for listeners,
/// backend connections and the rest.
const FD_RESERVE: u64 = 256;
/// How often the trimmer looks at the connection count.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// The drop in open connections (since the last trim's high-water mark)
/// that makes the trimmer return memory.
const TRIM_AFTER_DROP: usize = 256;

/// Milliseconds since the first call (a cheap, shared clock for "idle since").
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The default `--max-connections`: the memory this process may use (the
/// cgroup's limit, else the machine's) over [`BYTES_PER_CONNECTION`], at
/// most the open-file limit less a reserve, at most [`MAX_CONNECTIONS_CAP`].
pub fn default_max_connections() -> usize {
    let memory = cgroup_memory_limit()
        .or_else(mem_total)
        .map(|bytes| bytes / BYTES_PER_CONNECTION)
        .unwrap_or(MAX_CONNECTIONS_CAP as u64);
    let files = open_file_limit()
        .map(|n| n.saturating_sub(FD_RESERVE))
        .unwrap_or(u64::MAX);
    let n = memory.min(files).min(MAX_CONNECTIONS_CAP as u64).max(16);
    usize::try_from(n).unwrap_or(MAX_CONNECTIONS_CAP)
}

/// The memory limit of this process's cgroup (v1 `memory.limit_in_bytes`
/// or v2 `memory.max`), when it sets one below the machine's memory.
fn cgroup_memory_limit() -> Option<u64> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let limit = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .or_else(|| read("/sys/fs/cgroup/memory.max"))?;
    // "Unlimited" is a huge number in v1 ("max", which does not parse, in v2).
    match mem_total() {
        Some(total) if limit >= total => None,
        _ => Some(limit),
    }
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The soft RLIMIT_NOFILE.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// One open client connection, as the registry sees it.
#[derive(Debug, Default)]
pub struct Slot {
    /// Requests in flight (from the head to the end of the response body).
    active: AtomicU32,
    /// Whether a complete request head has arrived.
    served: AtomicBool,
    /// Whether it has been told to close.
    shed: AtomicBool,
    /// When it last started or finished a request (or was accepted).
    last: AtomicU64,
    close: Notify,
}

impl Slot {
    /// Resolves once the connection has been told to close (at once if it
    /// already was).
    pub async fn shed(&self) {
        self.close.notified().await;
    }

    /// Whether the connection has been told to close.
    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Relaxed)
    }
}

/// Marks a connection busy for as long as it lives: made when a request
/// head arrives, dropped with the response body (or the request).
#[derive(Debug)]
pub struct ActiveGuard(Arc<Slot>);

impl ActiveGuard {
    pub fn new(slot: &Arc<Slot>) -> ActiveGuard {
        slot.active.fetch_add(1, Ordering::Relaxed);
        slot.served.store(true, Ordering::Relaxed);
        slot.last.store(now_ms(), Ordering::Relaxed);
        ActiveGuard(slot.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.last.store(now_ms(), Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection marked busy until hyper has
/// sent it (or dropped it).
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _guard: ActiveGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: ActiveGuard) -> Tracked<B> {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One worker's open connections.
#[derive(Debug, Default)]
pub struct WorkerConns {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
}

impl WorkerConns {
    /// Tells this worker's connections idle for longer than `idle` (no
    /// request in flight since then, or no complete head since they were
    /// accepted) to close; returns how many. One sweep a second per worker
    /// replaces a timer per connection, so an idle connection holds none.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let now = now_ms();
        let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let Ok(slots) = self.slots.lock() else {
            return 0;
        };
        let mut closed = 0;
        for slot in slots.values() {
            if slot.active.load(Ordering::Relaxed) == 0
                && !slot.shed.load(Ordering::Relaxed)
                && now.saturating_sub(slot.last.load(Ordering::Relaxed)) > idle
            {
                slot.shed.store(true, Ordering::Relaxed);
                slot.close.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// A registered connection; dropping it unregisters the connection.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    slot: Arc<Slot>,
    worker: Arc<WorkerConns>,
    limits: Arc<Limits>,
}

impl Registered {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut slots) = self.worker.slots.lock() {
            slots.remove(&self.id);
        }
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection was shed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// Between requests on a keep-alive connection.
    Idle,
    /// No complete request head yet (or a TLS handshake not finished).
    IncompleteHead,
}

impl ShedReason {
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::Idle => "idle",
            ShedReason::IncompleteHead => "incomplete_head",
        }
    }
}

/// The connection limit shared by every worker.
#[derive(Debug)]
pub struct Limits {
    max: usize,
    open: AtomicUsize,
    /// The most connections open since the last trim.
    peak: AtomicUsize,
    workers: Mutex<Vec<Arc<WorkerConns>>>,
}

impl Limits {
    pub fn new(max: usize) -> Limits {
        Limits {
            max: max.max(1),
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A new worker's registry.
    pub fn worker(&self) -> Arc<WorkerConns> {
        let worker = Arc::new(WorkerConns::default());
        if let Ok(mut workers) = self.workers.lock() {
            workers.push(worker.clone());
        }
        worker
    }

    /// Counts and registers a connection just accepted by `worker`.
    pub fn register(self: &Arc<Self>, worker: &Arc<WorkerConns>) -> Registered {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        let slot = Arc::new(Slot::default());
        slot.last.store(now_ms(), Ordering::Relaxed);
        let id = worker.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slots) = worker.slots.lock() {
            slots.insert(id, slot.clone());
        }
        Registered {
            id,
            slot,
            worker: worker.clone(),
            limits: self.clone(),
        }
    }

    /// Whether another connection may be served now: below the limit, or
    /// the oldest idle connection has been told to close (counted in
    /// `metrics`). False: at the limit with every connection busy.
    pub fn make_room(&self, metrics: &Metrics) -> bool {
        if self.open() < self.max {
            return true;
        }
        match self.shed_oldest_idle() {
            Some(reason) => {
                metrics
                    .connections_shed
                    .get_or_create(&ShedLabels {
                        reason: reason.label(),
                    })
                    .inc();
                true
            }
            None => false,
        }
    }

    /// Tells the connection idle the longest (across all workers) to close.
    fn shed_oldest_idle(&self) -> Option<ShedReason> {
        let workers = self.workers.lock().ok()?.clone();
        let mut oldest: Option<(u64, Arc<Slot>)> = None;
        for worker in &workers {
            let Ok(slots) = worker.slots.lock() else {
                continue;
            };
            for slot in slots.values() {
                if slot.active.load(Ordering::Relaxed) > 0 || slot.shed.load(Ordering::Relaxed) {
                    continue;
                }
                let last = slot.last.load(Ordering::Relaxed);
                if oldest.as_ref().is_none_or(|(t, _)| last < *t) {
                    oldest = Some((last, slot.clone()));
                }
            }
        }
        let (_, slot) = oldest?;
        slot.shed.store(true, Ordering::Relaxed);
        // A permit is stored if the connection is not waiting right now.
        slot.close.notify_one();
        Some(if slot.served.load(Ordering::Relaxed) {
            ShedReason::Idle
        } else {
            ShedReason::IncompleteHead
        })
    }

    /// Starts the thread that returns freed heap memory to the system after
    /// the number of open connections has dropped by [`TRIM_AFTER_DROP`]
    /// (or a quarter) since its high-water mark. It runs for the life of
    /// the process.
    pub fn spawn_trimmer(self: &Arc<Self>) {
        let limits = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ingress-trim".into())
            .spawn(move || {
                while let Some(limits) = limits.upgrade() {
                    let open = limits.open();
                    let peak = limits.peak.load(Ordering::Relaxed);
                    if peak.saturating_sub(open) >= TRIM_AFTER_DROP.max(peak / 4) {
                        limits.peak.store(open, Ordering::Relaxed);
                        let started = Instant::now();
                        let released = trim_heap();
                        tracing::debug!(
                            peak,
                            open,
                            released,
                            ms = started.elapsed().as_millis() as u64,
                            "returned freed memory to the system"
                        );
                    }
                    drop(limits);
                    std::thread::sleep(TRIM_EVERY);
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "cannot start the memory trimmer; freed memory stays with the process");
        }
    }
}

/// Returns free heap pages to the system (glibc's `malloc_trim`, which
/// releases free pages inside every arena, not only at their tops).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's free memory.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_the_oldest_idle_connection_first() {
        let limits = Arc::new(Limits::new(3));
        let metrics = Metrics::default();
        let (w0, w1) = (limits.worker(), limits.worker());
        let a = limits.register(&w0);
        std::thread::sleep(Duration::from_millis(5));
        let b = limits.register(&w1);
        let busy = ActiveGuard::new(b.slot());
        std::thread::sleep(Duration::from_millis(5));
        let c = limits.register(&w0);
        let _served = ActiveGuard::new(c.slot());
        assert!(limits.make_room(&metrics), "a is idle");
        assert!(a.slot().shed.load(Ordering::Relaxed));
        drop(a);
        let d = limits.register(&w1);
        // b and c busy, d at the limit, only d idle (newest).
        assert!(limits.make_room(&metrics));
        assert!(d.slot().shed.load(Ordering::Relaxed));
        drop(d);
        let _e = limits.register(&w1);
        let _f = ActiveGuard::new(_e.slot());
        assert!(!limits.make_room(&metrics), "everything busy");
        drop(busy);
        assert!(limits.make_room(&metrics), "b is idle again");
        assert!(b.slot().shed.load(Ordering::Relaxed));
        assert!(!c.slot().shed.load(Ordering::Relaxed));
        let text = crate::metrics::render(&metrics.registry());
        assert!(
            text.contains("podwire_ingress_connections_shed_total{reason=\"incomplete_head\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("podwire_ingress_connections_shed_total{reason=\"idle\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn idle_connections_past_the_timeout_are_told_to_close() {
        let limits = Arc::new(Limits::new(10));
        let worker = limits.worker();
        let idle = limits.register(&worker);
        let busy = limits.register(&worker);
        let _guard = ActiveGuard::new(busy.slot());
        std::thread::sleep(Duration::from_millis(30));
        let fresh = limits.register(&worker);
        assert_eq!(worker.close_idle(Duration::from_millis(20)), 1);
        assert!(idle.slot().is_shed());
        assert!(!busy.slot().is_shed() && !fresh.slot().is_shed());
        assert_eq!(worker.close_idle(Duration::from_millis(20)), 0, "once");
    }

    #[test]
    fn default_limit_is_bounded() {
        let n = default_max_connections();
        assert!((16..=MAX_CONNECTIONS_CAP).contains(&n), "{n}");
    }
}

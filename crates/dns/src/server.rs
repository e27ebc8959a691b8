//! The running server: UDP workers (one thread and one SO_REUSEPORT socket
//! per core, blocking receive, answers written in place), TCP (`tcp.rs`)
//! and forwarding on a small tokio runtime, the watcher thread that folds the
//! source's changes into the zone's facts and recompiles the zone after
//! each batch (and reloads the hosts file), and the operations endpoints.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use podwire_model::{FilesSource, Interest, Source, Store};
use socket2::{Domain, Protocol, Socket, Type};

use crate::build::{DEFAULT_ZONE, ZoneOptions};
use crate::cache::{Cache, CacheConfig};
use crate::error::DnsError;
use crate::facts::{KINDS, ZoneFacts};
use crate::forward::Upstreams;
use crate::handler::{self, Action, State};
use crate::hosts::{Hosts, HostsFile};
use crate::metrics::Counters;
use crate::ops::{self, ZoneStatus};
use crate::tcp::{self, Connections, TcpConfig};
use crate::wire;
use crate::zone::PodMode;

/// How long the watcher waits for changes before it looks at the hosts
/// file and its stop flag again.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How often the hosts file's stamp is compared.
const HOSTS_INTERVAL: Duration = Duration::from_millis(500);

/// Everything `podwire dns` can be told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The files store (the lab's state directory), when the server is
    /// started without a source of its own ([`Server::start`]).
    pub store: Option<PathBuf>,
    pub listen: SocketAddr,
    pub zone: ZoneOptions,
    pub hosts: Option<PathBuf>,
    /// Upstream servers, in order; empty: no forwarding.
    pub upstreams: Vec<SocketAddr>,
    pub upstream_timeout: Duration,
    pub health_check_interval: Duration,
    pub max_concurrent: usize,
    pub cache: CacheConfig,
    pub health_listen: Option<SocketAddr>,
    pub ready_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    /// UDP worker threads; 0: one per available core.
    pub workers: usize,
    /// Zones answered authoritatively from the hosts file (unknown names
    /// NXDOMAIN); "." makes the server the whole world's.
    pub authoritative: Vec<String>,
    /// DNS over TCP: connection slots, per-client limit, idle timeout.
    pub tcp: TcpConfig,
}

impl ServerConfig {
    /// Defaults for everything but the store.
    pub fn new(store: PathBuf) -> ServerConfig {
        ServerConfig {
            store: Some(store),
            listen: SocketAddr::from(([0, 0, 0, 0], 53)),
            zone: ZoneOptions::default(),
            hosts: None,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            health_check_interval: Duration::from_millis(500),
            max_concurrent: 1000,
            cache: CacheConfig::default(),
            health_listen: None,
            ready_listen: None,
            metrics_listen: None,
            workers: 0,
            authoritative: Vec::new(),
            tcp: TcpConfig::default(),
        }
    }
}

/// A running server; stops on [`Server::shutdown`] or drop.
pub struct Server {
    state: Arc<State>,
    status: Arc<ZoneStatus>,
    local: SocketAddr,
    ops: Vec<(String, SocketAddr)>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn udp_socket(addr: SocketAddr) -> Result<Socket, DnsError> {
    let bind = |source| DnsError::Bind {
        addr,
        proto: "udp",
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    socket.set_reuse_port(true).map_err(bind)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Room for bursts while a worker is busy.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(bind)?;
    // Lets the worker notice shutdown.
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(bind)?;
    Ok(socket)
}

fn tcp_listener(addr: SocketAddr, proto: &'static str) -> Result<std::net::TcpListener, DnsError> {
    let bind = |source| DnsError::Bind {
        addr,
        proto,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(bind)?;
    socket.set_reuse_address(true).map_err(bind)?;
    socket.bind(&addr.into()).map_err(bind)?;
    socket.listen(1024).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    Ok(socket.into())
}

/// UDP sockets (one per worker) and the TCP listener on one port. With port
/// 0 the first UDP socket picks it, and TCP may find that port taken by
/// another program's TCP socket: then a new port is picked, a few times.
fn bind_udp_and_tcp(
    listen: SocketAddr,
    workers: usize,
) -> Result<(Vec<Socket>, std::net::TcpListener, SocketAddr), DnsError> {
    let tries = if listen.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = udp_socket(listen)?;
        let local = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or(listen);
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(udp_socket(local)?);
        }
        match tcp_listener(local, "tcp") {
            Ok(tcp) => return Ok((sockets, tcp, local)),
            Err(DnsError::Bind { source, .. })
                if attempt < tries && source.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e),
        }
    }
}

/// What cluster DNS reads: Namespaces, Services, EndpointSlices, Pods.
pub fn interest() -> Interest {
    Interest::new(KINDS)
}

impl Server {
    /// Starts on the files store of `config.store`.
    pub fn start(config: ServerConfig) -> Result<Server, DnsError> {
        let Some(dir) = config.store.clone() else {
            return Err(DnsError::Invalid {
                what: "source",
                value: String::new(),
                reason: "no files store given; use Server::start_with_source".into(),
            });
        };
        let source = FilesSource::new(Store::open(dir), interest());
        Server::start_with_source(config, Box::new(source))
    }

    /// Binds every socket, then starts the workers, the watcher (on
    /// `source`) and the async side. Errors when an address cannot be bound.
    pub fn start_with_source(
        config: ServerConfig,
        source: Box<dyn Source>,
    ) -> Result<Server, DnsError> {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let (sockets, tcp, local) = bind_udp_and_tcp(config.listen, workers)?;
        let mut ops_listeners = Vec::new();
        for (name, addr) in [
            ("health", config.health_listen),
            ("ready", config.ready_listen),
            ("metrics", config.metrics_listen),
        ] {
            if let Some(addr) = addr {
                let listener = tcp_listener(addr, name)?;
                let bound = listener.local_addr().unwrap_or(addr);
                ops_listeners.push((name.to_string(), bound, listener));
            }
        }

        let pre_sync_domain = config
            .zone
            .zone
            .clone()
            .or_else(|| {
                let store = Store::open(config.store.as_ref()?);
                store.read_config().ok().flatten().map(|c| c.cluster_domain)
            })
            .unwrap_or_else(|| DEFAULT_ZONE.to_string())
            .to_ascii_lowercase();
        let origin = wire::wire_from_text(&pre_sync_domain).ok_or_else(|| DnsError::Invalid {
            what: "zone",
            value: pre_sync_domain.clone(),
            reason: "not a DNS name (labels of 1-63 characters, 255 in all)".into(),
        })?;
        let upstreams = Arc::new(Upstreams::new(
            &config.upstreams,
            local,
            config.upstream_timeout,
            config.max_concurrent,
        ));
        let state = Arc::new(State {
            zone: ArcSwapOption::empty(),
            origin,
            hosts: ArcSwap::from_pointee(Hosts::default()),
            ttl: config.zone.ttl,
            cache: Cache::new(config.cache),
            upstreams: Arc::clone(&upstreams),
            counters: (0..=workers).map(|_| Counters::default()).collect(),
            authoritative: config
                .authoritative
                .iter()
                .map(|z| {
                    wire::wire_from_text(&z.to_ascii_lowercase()).ok_or_else(|| DnsError::Invalid {
                        what: "authoritative zone",
                        value: z.clone(),
                        reason: "not a DNS name".into(),
                    })
                })
                .collect::<Result<_, _>>()?,
        });
        let status = Arc::new(ZoneStatus::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("podwire-dns-async")
            .enable_all()
            .build()
            .map_err(DnsError::Runtime)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        // The watcher: zone and hosts file.
        {
            let state = Arc::clone(&state);
            let status = Arc::clone(&status);
            let stop = Arc::clone(&stop);
            let options = config.zone.clone();
            let hosts = config.hosts.clone().map(HostsFile::new);
            threads.push(
                std::thread::Builder::new()
                    .name("podwire-dns-watch".into())
                    .spawn(move || watch(source, options, hosts, state, status, stop))
                    .map_err(DnsError::Runtime)?,
            );
        }

        // The async side: TCP, operations, health checks, loop probe.
        let handle = runtime.handle().clone();
        {
            let _guard = runtime.enter();
            let listener =
                tokio::net::TcpListener::from_std(tcp).map_err(|source| DnsError::Bind {
                    addr: local,
                    proto: "tcp",
                    source,
                })?;
            let connections = Arc::new(Connections::new(config.tcp.clone()));
            handle.spawn(tcp::accept(
                listener,
                Arc::clone(&state),
                Arc::clone(&connections),
            ));
            let registry = Arc::new(ops::registry(
                Arc::clone(&state),
                Arc::clone(&status),
                connections,
            ));
            let mut ops = Vec::new();
            for (name, addr, listener) in ops_listeners {
                let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| {
                    DnsError::Bind {
                        addr,
                        proto: "http",
                        source,
                    }
                })?;
                handle.spawn(ops::serve(
                    listener,
                    Arc::clone(&registry),
                    Arc::clone(&status),
                ));
                tracing::info!("{name} endpoint on http://{addr}/{name}");
                ops.push((name, addr));
            }
            handle.spawn(Arc::clone(&upstreams).health_loop(config.health_check_interval));
            handle.spawn(Arc::clone(&upstreams).probe_loops());
            for (i, socket) in sockets.into_iter().enumerate() {
                let socket: UdpSocket = socket.into();
                let state = Arc::clone(&state);
                let stop = Arc::clone(&stop);
                let handle = handle.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("podwire-dns-udp{i}"))
                        .spawn(move || udp_worker(Arc::new(socket), state, i + 1, handle, stop))
                        .map_err(DnsError::Runtime)?,
                );
            }
            tracing::info!(
                "serving DNS on {local} (udp: {workers} workers, tcp); upstreams: {}",
                if upstreams.list.is_empty() {
                    "none".to_string()
                } else {
                    upstreams
                        .list
                        .iter()
                        .map(|u| u.addr.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            Ok(Server {
                state,
                status,
                local,
                ops,
                stop,
                threads,
                runtime: Some(runtime),
            })
        }
    }

    /// The DNS address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address of an operations endpoint (`health`, `ready`, `metrics`).
    pub fn ops_addr(&self, name: &str) -> Option<SocketAddr> {
        self.ops.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The shared state (zone, cache, upstreams, counters).
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The generation of the zone being served (None before the first sync).
    pub fn generation(&self) -> Option<u64> {
        self.status.generation()
    }

    /// Waits until the zone is loaded; false on timeout.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.status.generation().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Serves until the process is stopped.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops every thread and task.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Datagrams taken per receive call.
const BATCH: usize = 32;
/// Receive buffer per datagram: queries are small; anything longer is cut
/// (MSG_TRUNC) and dropped.
const RECV_BUF: usize = 4096;

/// One UDP worker: `recvmmsg` takes up to [`BATCH`] queries per system
/// call (blocking for the first only), each is answered in place, and the
/// answers leave in one `sendmmsg`. Queries that need an upstream are handed
/// to the async runtime, which answers on the same socket.
fn udp_worker(
    socket: Arc<UdpSocket>,
    state: Arc<State>,
    slot: usize,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let counters = &state.counters[slot.min(state.counters.len() - 1)];
    let mut bufs: Vec<[u8; RECV_BUF]> = vec![[0u8; RECV_BUF]; BATCH];
    // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for
    // which all-zero bytes are a valid value.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: RECV_BUF,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1024)).collect();
    let mut send_iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut send_msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut qtypes = [0u16; BATCH];
    while !stop.load(Relaxed) {
        for i in 0..BATCH {
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_flags = 0;
            msgs[i].msg_len = 0;
        }
        // SAFETY: every msghdr points into buffers owned by this frame that
        // outlive the call, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => {}
                _ => {
                    tracing::warn!("udp receive failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            continue;
        }
        let started = Instant::now();
        let mut replies = 0usize;
        for i in 0..n as usize {
            let len = msgs[i].msg_len as usize;
            if msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                continue;
            }
            let handled = handler::handle(
                &state,
                &bufs[i][..len],
                false,
                &mut outs[i],
                started,
                counters,
            );
            match handled.action {
                Action::Reply => {
                    send_iovs[replies] = libc::iovec {
                        iov_base: outs[i].as_mut_ptr().cast(),
                        iov_len: outs[i].len(),
                    };
                    let hdr = &mut send_msgs[replies].msg_hdr;
                    hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                    hdr.msg_namelen = msgs[i].msg_hdr.msg_namelen;
                    hdr.msg_iov = &mut send_iovs[replies];
                    hdr.msg_iovlen = 1;
                    hdr.msg_flags = 0;
                    qtypes[replies] = handled.qtype;
                    replies += 1;
                }
                Action::Drop => {}
                Action::Forward(job) => {
                    let Some(peer) = peer_addr(&addrs[i]) else {
                        continue;
                    };
                    let state = Arc::clone(&state);
                    let socket = Arc::clone(&socket);
                    let qtype = handled.qtype;
                    rt.spawn(async move {
                        let started = job.started;
                        let response = handler::resolve(&state, job).await;
                        if response.is_empty() {
                            return;
                        }
                        if let Err(e) = socket.send_to(&response, peer) {
                            tracing::debug!("udp send to {peer} failed: {e}");
                        }
                        state.counters[0].request(
                            false,
                            qtype,
                            response.get(3).map_or(0, |b| b & 0xF),
                            started.elapsed(),
                        );
                    });
                }
            }
        }
        let mut sent = 0usize;
        while sent < replies {
            // SAFETY: the first `replies` entries point at live answer buffers
            // and peer addresses of this batch.
            let k = unsafe {
                libc::sendmmsg(
                    fd,
                    send_msgs[sent..].as_mut_ptr(),
                    (replies - sent) as libc::c_uint,
                    0,
                )
            };
            if k <= 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::debug!("udp send failed: {e}");
                // Skip the datagram that failed, send the rest.
                sent += 1;
                continue;
            }
            sent += k as usize;
        }
        let took = started.elapsed();
        for (msg, qtype) in send_msgs.iter().zip(qtypes).take(replies) {
            counters.request(false, qtype, response_rcode(msg), took);
        }
    }
}

/// The peer address the kernel wrote into a sockaddr_storage.
fn peer_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The rcode of an answer queued in a send message.
fn response_rcode(msg: &libc::mmsghdr) -> u8 {
    // SAFETY: msg_iov points at the answer buffer set up in this batch.
    let iov = unsafe { &*msg.msg_hdr.msg_iov };
    if iov.iov_len < 4 {
        return 0;
    }
    // SAFETY: iov_len bytes are readable at iov_base.
    let byte = unsafe { *(iov.iov_base as *const u8).add(3) };
    byte & 0xF
}

/// Folds the source's changes into the zone's facts and recompiles the
/// zone after each batch that changed them (the first time once every kind
/// has been listed), and reloads the hosts file when it changes. A failing
/// source leaves the zone as it is.
fn watch(
    mut source: Box<dyn Source>,
    options: ZoneOptions,
    mut hosts: Option<HostsFile>,
    state: Arc<State>,
    status: Arc<ZoneStatus>,
    stop: Arc<AtomicBool>,
) {
    let mut facts = ZoneFacts::new(options.pods == PodMode::Verified);
    let mut dirty = false;
    let mut loaded = false;
    let mut revision = 0u64;
    let mut objects = 0usize;
    let mut last_error: Option<String> = None;
    let mut last_hosts_check = Instant::now() - HOSTS_INTERVAL;
    let name = source.describe();
    while !stop.load(Relaxed) {
        if let Some(file) = hosts.as_mut()
            && last_hosts_check.elapsed() >= HOSTS_INTERVAL
        {
            last_hosts_check = Instant::now();
            if let Some(new) = file.reload_if_changed() {
                state.hosts.store(Arc::new(new));
            }
        }
        let mut wait = WATCH_INTERVAL;
        let mut failed = None;
        // Everything already waiting becomes one rebuild.
        loop {
            match source.next(wait) {
                Ok(Some(update)) => {
                    revision = update.revision;
                    objects += update.changes.len();
                    for change in update.changes {
                        dirty |= facts.apply(change);
                    }
                    wait = Duration::ZERO;
                }
                Ok(None) => break,
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        status.source(&name, source.status());
        if let Some(message) = failed {
            if last_error.as_deref() != Some(message.as_str()) {
                tracing::warn!(
                    "cluster state unavailable (keeping the zone being served): {message}"
                );
            }
            status.failed();
            last_error = Some(message);
            std::thread::sleep(WATCH_INTERVAL);
            continue;
        }
        if last_error.take().is_some() {
            tracing::info!("cluster state available again from {name}");
        }
        if facts.synced() && (dirty || !loaded) {
            let started = Instant::now();
            let zone = facts.build(&options, revision as u32);
            tracing::info!(
                "zone {} revision {}: {} services ({} changes folded, compiled in {:?})",
                wire::name_to_text(zone.origin()),
                revision,
                zone.service_count(),
                objects,
                started.elapsed()
            );
            for reason in facts.skipped() {
                tracing::debug!("left out of the zone: {reason}");
            }
            status.loaded(revision, zone.service_count());
            state.zone.store(Some(Arc::new(zone)));
            if !loaded || objects > 1000 {
                release_free_memory();
            }
            loaded = true;
            dirty = false;
            objects = 0;
        }
    }
}

/// Hands the heap pages freed by a rebuild (the parsed objects, the old
/// zone) back to the kernel: glibc keeps them otherwise, and after parsing
/// 100k objects that is most of the resident size.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

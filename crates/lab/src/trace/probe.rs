//! The probe of a trace: a temporary nftables table in every namespace the
//! packet may cross that sets `meta nftrace` on the probe's flow (matched by
//! its unique source port, or ICMP echo id) and reports it at each hook,
//! removed by a guard even on failure; and the real packet itself (a TCP
//! SYN through connect(), a UDP datagram, or an ICMP echo request) sent from
//! the source's namespace, with what came back.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use podwire_kernel::Netns;

use crate::error::{LabError, Result};

/// The probe's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    pub fn parse(text: &str) -> Result<Proto> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "icmp" | "ping" => Ok(Proto::Icmp),
            other => Err(LabError::Invalid(format!(
                "unknown probe protocol {other:?}: use tcp, udp or icmp"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }
}

/// The chains of the trace table: two that mark the probe's packets
/// before anything else sees them, and checkpoints whose policy events
/// show the packet at each hook (after NAT at postrouting).
pub const CHECKPOINTS: [&str; 5] = ["seen-pre", "seen-out", "seen-in", "seen-fwd", "seen-post"];

/// The `nft -f` script of the trace table for one probe (pure).
pub fn table_script(table: &str, proto: Proto, id: u16) -> String {
    let rules = match proto {
        Proto::Tcp | Proto::Udp => {
            let p = proto.name();
            format!(
                "meta l4proto {p} th sport {id} meta nftrace set 1\n\
                 \t\tmeta l4proto {p} th dport {id} meta nftrace set 1"
            )
        }
        Proto::Icmp => {
            format!("icmp type {{ echo-request, echo-reply }} icmp id {id} meta nftrace set 1")
        }
    };
    format!(
        "table inet {table} {{\n\
         \tchain mark-pre {{\n\t\ttype filter hook prerouting priority -500; policy accept;\n\t\t{rules}\n\t}}\n\
         \tchain mark-out {{\n\t\ttype filter hook output priority -500; policy accept;\n\t\t{rules}\n\t}}\n\
         \tchain seen-pre {{ type filter hook prerouting priority -499; policy accept; }}\n\
         \tchain seen-out {{ type filter hook output priority -499; policy accept; }}\n\
         \tchain seen-in {{ type filter hook input priority 1000; policy accept; }}\n\
         \tchain seen-fwd {{ type filter hook forward priority 1000; policy accept; }}\n\
         \tchain seen-post {{ type filter hook postrouting priority 1000; policy accept; }}\n\
         }}\n"
    )
}

/// The trace tables of one probe; dropping it removes every one.
pub struct TraceTables {
    pub table: String,
    installed: Vec<(String, Netns)>,
}

impl TraceTables {
    /// Installs the table in each namespace (label, namespace). A namespace
    /// where it cannot be installed fails the whole trace (and what was
    /// installed is removed).
    pub fn install(namespaces: &[(String, Netns)], proto: Proto, id: u16) -> Result<TraceTables> {
        let table = format!("podwire-trace-{}-{id}", std::process::id());
        let script = table_script(&table, proto, id);
        let mut tables = TraceTables {
            table,
            installed: Vec::new(),
        };
        for (label, ns) in namespaces {
            let reopened = Netns::open(ns.path())?;
            ns.run(|| podwire_kernel::nft::apply_script(&script))?
                .map_err(|e| {
                    LabError::Failed(format!("cannot install the trace table in {label}: {e}"))
                })?;
            tables.installed.push((label.clone(), reopened));
        }
        Ok(tables)
    }
}

impl Drop for TraceTables {
    fn drop(&mut self) {
        let script = format!("delete table inet {}\n", self.table);
        for (label, ns) in &self.installed {
            match ns.run(|| podwire_kernel::nft::apply_script(&script)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(%err, %label, "cannot remove the trace table"),
                Err(err) => tracing::warn!(%err, %label, "cannot enter namespace"),
            }
        }
    }
}

/// What the probe's sender saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// TCP SYN-ACK (connected), UDP reply, ICMP echo reply.
    Answered,
    /// TCP RST (connection refused) or ICMP port unreachable for UDP.
    Refused,
    /// An ICMP error naming why (no route, host unreachable, ...).
    Unreachable(String),
    /// Nothing came back in time.
    Timeout,
}

/// The probe's socket: kept open until the trace is read, so the
/// connection's end is not traced.
pub struct Probe {
    pub outcome: Outcome,
    pub elapsed: Duration,
    _socket: Option<OwnedFd>,
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn os_err(what: &str) -> LabError {
    LabError::io(what.to_string(), std::io::Error::last_os_error())
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(os_err("cannot create the probe socket"));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn wait(fd: &OwnedFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

fn error_outcome(errno: i32) -> Outcome {
    match errno {
        libc::ECONNREFUSED => Outcome::Refused,
        libc::ETIMEDOUT => Outcome::Timeout,
        other => Outcome::Unreachable(std::io::Error::from_raw_os_error(other).to_string()),
    }
}

fn so_error(fd: &OwnedFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the given size.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    err
}

/// Sends the probe from the calling thread's namespace: source port (or
/// echo id) `id`, to `dst`.
pub fn send(proto: Proto, dst: SocketAddr, id: u16, timeout: Duration) -> Result<Probe> {
    let started = Instant::now();
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let any: SocketAddr = match dst.ip() {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], id)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], id)),
    };
    let (outcome, fd) = match proto {
        Proto::Tcp | Proto::Udp => {
            let kind = if proto == Proto::Tcp {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            };
            let fd = socket(domain, kind | libc::SOCK_NONBLOCK, 0)?;
            let (local, llen) = sockaddr(any);
            // SAFETY: bind with a sockaddr of the stated length.
            if unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&local as *const libc::sockaddr_storage).cast(),
                    llen,
                )
            } != 0
            {
                return Err(os_err(&format!("cannot bind the probe to port {id}")));
            }
            let (peer, plen) = sockaddr(dst);
            // SAFETY: connect with a sockaddr of the stated length.
            let rc = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&peer as *const libc::sockaddr_storage).cast(),
                    plen,
                )
            };
            if rc != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno != libc::EINPROGRESS {
                    return Ok(Probe {
                        outcome: error_outcome(errno),
                        elapsed: started.elapsed(),
                        _socket: Some(fd),
                    });
                }
            }
            let outcome = if proto == Proto::Tcp {
                if wait(&fd, libc::POLLOUT, timeout) {
                    match so_error(&fd) {
                        0 => Outcome::Answered,
                        e => error_outcome(e),
                    }
                } else {
                    Outcome::Timeout
                }
            } else {
                let payload = b"podwire trace\n";
                // SAFETY: send from a live buffer.
                unsafe { libc::send(fd.as_raw_fd(), payload.as_ptr().cast(), payload.len(), 0) };
                if wait(&fd, libc::POLLIN, timeout) {
                    let mut buf = [0u8; 512];
                    // SAFETY: recv into a live buffer of its size.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n >= 0 {
                        Outcome::Answered
                    } else {
                        error_outcome(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
                    }
                } else {
                    Outcome::Timeout
                }
            };
            (outcome, fd)
        }
        Proto::Icmp => {
            let IpAddr::V4(_) = dst.ip() else {
                return Err(LabError::Invalid("ICMP probes are IPv4 only".into()));
            };
            let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
            let mut echo = vec![8u8, 0, 0, 0];
            echo.extend_from_slice(&id.to_be_bytes());
            echo.extend_from_slice(&1u16.to_be_bytes());
            echo.extend_from_slice(b"podwire trace");
            let sum = checksum(&echo);
            echo[2..4].copy_from_slice(&sum.to_be_bytes());
            let (peer, plen) = sockaddr(SocketAddr::new(dst.ip(), 0));
            // SAFETY: sendto from a live buffer with a sockaddr of its length.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    echo.as_ptr().cast(),
                    echo.len(),
                    0,
                    (&peer as *const libc::sockaddr_storage).cast(),
                    plen,
                )
            };
            (icmp_answer(&fd, id, timeout), fd)
        }
    };
    Ok(Probe {
        outcome,
        elapsed: started.elapsed(),
        _socket: Some(fd),
    })
}

/// Reads ICMP until the echo reply with our id (or an error about our
/// echo) arrives.
fn icmp_answer(fd: &OwnedFd, id: u16, timeout: Duration) -> Outcome {
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if !wait(fd, libc::POLLIN, left) {
            break;
        }
        // SAFETY: recv into a live buffer of its size.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { break };
        let packet = &buf[..n];
        let ihl = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
        let Some(icmp) = packet.get(ihl..) else {
            continue;
        };
        match icmp.first() {
            Some(0) if icmp.get(4..6) == Some(&id.to_be_bytes()[..]) => return Outcome::Answered,
            Some(3) => {
                // The embedded original: IP header, then our echo's id.
                let inner = &icmp[8.min(icmp.len())..];
                let ihl2 = usize::from(inner.first().copied().unwrap_or(0) & 0x0f) * 4;
                if inner.get(ihl2 + 4..ihl2 + 6) == Some(&id.to_be_bytes()[..]) {
                    let code = icmp.get(1).copied().unwrap_or(0);
                    return Outcome::Unreachable(match code {
                        0 => "network unreachable (ICMP)".into(),
                        1 => "host unreachable (ICMP)".into(),
                        3 => "port unreachable (ICMP)".into(),
                        13 => "administratively prohibited (ICMP)".into(),
                        c => format!("destination unreachable code {c} (ICMP)"),
                    });
                }
            }
            _ => {}
        }
    }
    Outcome::Timeout
}

/// The Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], chunk.get(1).copied().unwrap_or(0)]);
        sum = sum.wrapping_add(u32::from(word));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A probe id (source port / echo id) unlikely to collide: above the
/// node port range (30000-32767), from the clock and the process id.
pub fn pick_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = nanos ^ std::process::id().rotate_left(13);
    33000 + (mix % 12000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_the_flow_and_has_every_checkpoint() {
        let s = table_script("podwire-trace-1-40000", Proto::Tcp, 40000);
        assert!(s.contains("meta l4proto tcp th sport 40000 meta nftrace set 1"));
        assert!(s.contains("meta l4proto tcp th dport 40000 meta nftrace set 1"));
        for c in CHECKPOINTS {
            assert!(s.contains(&format!("chain {c} ")), "{c}");
        }
        assert!(table_script("t", Proto::Icmp, 7).contains("icmp id 7 meta nftrace set 1"));
        assert!(Proto::parse("UDP").is_ok() && Proto::parse("sctp").is_err());
    }

    #[test]
    fn checksum_of_an_echo_request() {
        // An all-zero echo with id 1 seq 1: 0x0800 + 0x0001 + 0x0001.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 1]), !0x0802);
        let id = pick_id();
        assert!((33000..45000).contains(&id));
    }
}

//! nftables trace events (what `nft monitor trace` prints), read over
//! netlink: the NFNLGRP_NFTRACE multicast group of NETLINK_NETFILTER carries
//! one NFT_MSG_TRACE message per rule, policy or return a traced packet
//! (`meta nftrace set 1`) meets. Decoded by hand: no Rust crate decodes
//! these messages (they are ~17 flat attributes), and libnftnl is C.
//!
//! A [`TraceListener`] lives in a private namespace of its own and listens
//! to every namespace given an id there (NETLINK_LISTEN_ALL_NSID), so the
//! events of all namespaces a packet crosses arrive on ONE socket in the
//! order the kernel produced them, each tagged with its namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::{Error, Netns, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_TRACE: u16 = 17;
const NFNLGRP_NFTRACE: u32 = 9;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;

const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_IIF: u16 = 10;
const NFTA_TRACE_OIF: u16 = 12;
const NFTA_TRACE_MARK: u16 = 14;
const NFTA_TRACE_POLICY: u16 = 16;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const RTM_NEWNSID: u16 = 88;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

/// What kind of trace event (NFT_TRACETYPE_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// The chain's policy decided (the end of a base chain).
    Policy,
    /// Returned from a chain without a verdict.
    Return,
    /// A rule matched.
    Rule,
    Other(u32),
}

/// A verdict as the trace reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceVerdict {
    Accept,
    Drop,
    Continue,
    Return,
    Jump(String),
    Goto(String),
    Other(i32),
}

impl std::fmt::Display for TraceVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceVerdict::Accept => f.write_str("accept"),
            TraceVerdict::Drop => f.write_str("drop"),
            TraceVerdict::Continue => f.write_str("continue"),
            TraceVerdict::Return => f.write_str("return"),
            TraceVerdict::Jump(c) => write!(f, "jump {c}"),
            TraceVerdict::Goto(c) => write!(f, "goto {c}"),
            TraceVerdict::Other(code) => write!(f, "verdict {code}"),
        }
    }
}

/// The packet as the event saw it (decoded from the network and transport
/// headers the kernel copies into the first event of each chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol (6 tcp, 17 udp, 1 icmp, 58 icmpv6).
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (SYN 0x02, RST 0x04, ACK 0x10), 0 for others.
    pub tcp_flags: u8,
}

/// One decoded NFT_MSG_TRACE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The namespace id the listener gave the event's namespace (None: the
    /// listener's own namespace).
    pub nsid: Option<i32>,
    /// Table family (NFPROTO_*: 1 inet, 2 ip, 7 bridge, 10 ip6).
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub rule_handle: Option<u64>,
    pub kind: TraceKind,
    pub verdict: Option<TraceVerdict>,
    /// The per-packet trace id (the same for one skb across chains).
    pub id: u32,
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub mark: Option<u32>,
    pub packet: Option<PacketInfo>,
}

pub(crate) fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

pub(crate) fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = usize::from(u16::from_ne_bytes([buf[off], buf[off + 1]]));
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            break;
        }
        out.push((kind, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn verdict(b: &[u8]) -> Option<TraceVerdict> {
    let mut code = None;
    let mut chain = String::new();
    for (k, v) in attrs(b) {
        match k {
            NFTA_VERDICT_CODE => code = be_u32(v).map(|c| c as i32),
            NFTA_VERDICT_CHAIN => chain = text(v),
            _ => {}
        }
    }
    Some(match code? {
        0 => TraceVerdict::Drop,
        1 => TraceVerdict::Accept,
        -1 => TraceVerdict::Continue,
        -3 => TraceVerdict::Jump(chain),
        -4 => TraceVerdict::Goto(chain),
        -5 => TraceVerdict::Return,
        other => TraceVerdict::Other(other),
    })
}

/// Decodes the IP and transport headers of a traced packet.
pub fn decode_packet(network: &[u8], transport: &[u8]) -> Option<PacketInfo> {
    let version = network.first()? >> 4;
    let (src, dst, proto) = match version {
        4 if network.len() >= 20 => (
            IpAddr::V4(Ipv4Addr::new(
                network[12],
                network[13],
                network[14],
                network[15],
            )),
            IpAddr::V4(Ipv4Addr::new(
                network[16],
                network[17],
                network[18],
                network[19],
            )),
            network[9],
        ),
        6 if network.len() >= 40 => {
            let a: [u8; 16] = network[8..24].try_into().ok()?;
            let b: [u8; 16] = network[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(a)),
                IpAddr::V6(Ipv6Addr::from(b)),
                network[6],
            )
        }
        _ => return None,
    };
    let port = |at: usize| {
        transport
            .get(at..at + 2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .unwrap_or(0)
    };
    let (sport, dport, tcp_flags) = match proto {
        6 => (port(0), port(2), transport.get(13).copied().unwrap_or(0)),
        17 | 132 => (port(0), port(2), 0),
        // ICMP: type and code as "ports", the echo id as the source port.
        1 | 58 => (port(4), port(0), 0),
        _ => (0, 0, 0),
    };
    Some(PacketInfo {
        src,
        dst,
        proto,
        sport,
        dport,
        tcp_flags,
    })
}

/// Decodes one netlink message (header included); None when it is not a
/// trace event.
pub fn decode_message(msg: &[u8], nsid: Option<i32>) -> Option<TraceEvent> {
    let kind = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE {
        return None;
    }
    let family = *msg.get(16)?;
    let mut event = TraceEvent {
        nsid,
        family,
        table: String::new(),
        chain: String::new(),
        rule_handle: None,
        kind: TraceKind::Other(0),
        verdict: None,
        id: 0,
        iif: None,
        oif: None,
        mark: None,
        packet: None,
    };
    let mut network: &[u8] = &[];
    let mut transport: &[u8] = &[];
    for (k, v) in attrs(msg.get(20..)?) {
        match k {
            NFTA_TRACE_TABLE => event.table = text(v),
            NFTA_TRACE_CHAIN => event.chain = text(v),
            NFTA_TRACE_RULE_HANDLE => {
                event.rule_handle = v
                    .get(..8)
                    .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            NFTA_TRACE_TYPE => {
                event.kind = match be_u32(v) {
                    Some(1) => TraceKind::Policy,
                    Some(2) => TraceKind::Return,
                    Some(3) => TraceKind::Rule,
                    other => TraceKind::Other(other.unwrap_or(0)),
                }
            }
            NFTA_TRACE_VERDICT => event.verdict = verdict(v),
            NFTA_TRACE_POLICY => {
                event.verdict = match be_u32(v) {
                    Some(0) => Some(TraceVerdict::Drop),
                    Some(1) => Some(TraceVerdict::Accept),
                    Some(other) => Some(TraceVerdict::Other(other as i32)),
                    None => event.verdict,
                }
            }
            NFTA_TRACE_ID => event.id = be_u32(v).unwrap_or(0),
            NFTA_TRACE_NETWORK_HEADER => network = v,
            NFTA_TRACE_TRANSPORT_HEADER => transport = v,
            NFTA_TRACE_IIF => event.iif = be_u32(v),
            NFTA_TRACE_OIF => event.oif = be_u32(v),
            NFTA_TRACE_MARK => event.mark = be_u32(v),
            _ => {}
        }
    }
    event.packet = decode_packet(network, transport);
    Some(event)
}

/// A trace-event socket in a private namespace that hears the namespaces
/// given to [`TraceListener::watch`].
pub struct TraceListener {
    /// Keeps the private namespace alive (and lets `watch` assign ids).
    home: Netns,
    socket: Socket,
    rtnl: Socket,
    next_id: i32,
    buf: Vec<u8>,
}

impl TraceListener {
    /// Creates the private namespace (on a short-lived thread, so the
    /// caller's thread never changes namespace) and the socket in it.
    pub fn new() -> Result<TraceListener> {
        let spawned = std::thread::spawn(|| -> Result<(Netns, Socket, Socket)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::Invalid(format!("cannot create the trace listener's namespace: {e}"))
            })?;
            let home = Netns::current()?;
            let mut socket = Socket::new(NETLINK_NETFILTER)
                .map_err(|e| Error::netlink("open trace socket", e))?;
            socket
                .bind_auto()
                .map_err(|e| Error::netlink("bind trace socket", e))?;
            socket
                .add_membership(NFNLGRP_NFTRACE)
                .map_err(|e| Error::netlink("join the nftables trace group", e))?;
            let on: libc::c_int = 1;
            // SAFETY: setsockopt with a pointer to a c_int of its size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    SOL_NETLINK,
                    NETLINK_LISTEN_ALL_NSID,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(Error::netlink(
                    "listen to every namespace",
                    std::io::Error::last_os_error(),
                ));
            }
            let mut rtnl = Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
                .map_err(|e| Error::netlink("open rtnetlink socket", e))?;
            rtnl.bind_auto()
                .map_err(|e| Error::netlink("bind rtnetlink socket", e))?;
            rtnl.connect(&SocketAddr::new(0, 0))
                .map_err(|e| Error::netlink("connect rtnetlink socket", e))?;
            Ok((home, socket, rtnl))
        });
        let (home, socket, rtnl) = spawned
            .join()
            .map_err(|_| Error::Invalid("the trace listener thread panicked".into()))??;
        Ok(TraceListener {
            home,
            socket,
            rtnl,
            next_id: 1,
            buf: vec![0; 256 * 1024],
        })
    }

    /// Makes the events of `ns` reach this listener (an nsid for `ns` in
    /// the private namespace, nothing changes in `ns`); returns that id.
    pub fn watch(&mut self, ns: &Netns) -> Result<i32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut body = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        for (kind, value) in [
            (NETNSA_NSID, id.to_ne_bytes()),
            (NETNSA_FD, (ns.raw_fd() as u32).to_ne_bytes()),
        ] {
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(&value);
        }
        let mut msg = Vec::with_capacity(16 + body.len());
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWNSID.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&(id as u32).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        self.rtnl
            .send(&msg, 0)
            .map_err(|e| Error::netlink("assign a namespace id", e))?;
        let mut reply = vec![0u8; 4096];
        let n = self
            .rtnl
            .recv(&mut &mut reply[..], 0)
            .map_err(|e| Error::netlink("assign a namespace id", e))?;
        // NLMSG_ERROR: the error code follows the header (0 = ACK).
        if n >= 20 && u16::from_ne_bytes([reply[4], reply[5]]) == 2 {
            let code = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
            // EEXIST: the namespace already has an id here (watched twice).
            if code != 0 && code != -libc::EEXIST {
                return Err(Error::netlink(
                    "assign a namespace id",
                    std::io::Error::from_raw_os_error(-code),
                ));
            }
        }
        Ok(id)
    }

    /// The private namespace (tests: nothing of the caller's is in it).
    pub fn home(&self) -> &Netns {
        &self.home
    }

    /// Reads every event that arrives until `quiet` passes without one or
    /// `limit` is over.
    pub fn collect(&mut self, quiet: Duration, limit: Duration) -> Result<Vec<TraceEvent>> {
        let end = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(out);
            }
            let wait = quiet.min(end - now);
            if !self.readable(wait)? {
                return Ok(out);
            }
            self.read_one(&mut out)?;
        }
    }

    fn readable(&self, wait: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(true);
            }
            return Err(Error::netlink("wait for trace events", err));
        }
        Ok(rc > 0)
    }

    fn read_one(&mut self, out: &mut Vec<TraceEvent>) -> Result<()> {
        let mut control = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // SAFETY: msghdr is plain data; zeroed is a valid empty value.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = control.len() as _;
        // SAFETY: the buffers outlive the call; the fd is ours.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut hdr, libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                // Too many events for the buffer: some were lost; go on.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Ok(()),
                _ => Err(Error::netlink("read trace events", err)),
            };
        }
        let nsid = cmsg_nsid(&hdr);
        let data = &self.buf[..n as usize];
        let mut off = 0;
        while off + 16 <= data.len() {
            let len = u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                as usize;
            if len < 16 || off + len > data.len() {
                break;
            }
            if let Some(ev) = decode_message(&data[off..off + len], nsid) {
                out.push(ev);
            }
            off += (len + 3) & !3;
        }
        Ok(())
    }
}

/// The namespace id in a received message's control data.
fn cmsg_nsid(hdr: &libc::msghdr) -> Option<i32> {
    // SAFETY: walking the control buffer the kernel filled, with libc's
    // own macros, reading only inside each cmsg's stated length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_NETLINK && (*cmsg).cmsg_type == NETLINK_LISTEN_ALL_NSID {
                let data = libc::CMSG_DATA(cmsg).cast::<i32>();
                return Some(std::ptr::read_unaligned(data));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    #[test]
    fn a_rule_event_decodes_with_its_packet_and_verdict() {
        let ip = [
            0x45, 0, 0, 60, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 96, 0, 20,
        ];
        let tcp = [
            0xc3, 0x50, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xff, 0xff,
        ];
        let mut verdict = attr(NFTA_VERDICT_CODE, &(-4i32).to_be_bytes());
        verdict.extend(attr(NFTA_VERDICT_CHAIN, b"lb4-2\0"));
        let mut body = vec![1u8, 0, 0, 0];
        body.extend(attr(NFTA_TRACE_TABLE, b"podwire-proxy\0"));
        body.extend(attr(NFTA_TRACE_CHAIN, b"services\0"));
        body.extend(attr(NFTA_TRACE_RULE_HANDLE, &7u64.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_TYPE, &3u32.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_VERDICT | 0x8000, &verdict));
        body.extend(attr(NFTA_TRACE_ID, &0xabcdu32.to_be_bytes()));
        body.extend(attr(NFTA_TRACE_NETWORK_HEADER, &ip));
        body.extend(attr(NFTA_TRACE_TRANSPORT_HEADER, &tcp));
        body.extend(attr(NFTA_TRACE_IIF, &3u32.to_be_bytes()));
        let mut msg = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_TRACE).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend(body);
        let ev = decode_message(&msg, Some(4)).expect("a trace event");
        assert_eq!(ev.nsid, Some(4));
        assert_eq!(ev.family, 1);
        assert_eq!(
            (ev.table.as_str(), ev.chain.as_str()),
            ("podwire-proxy", "services")
        );
        assert_eq!(ev.rule_handle, Some(7));
        assert_eq!(ev.kind, TraceKind::Rule);
        assert_eq!(ev.verdict, Some(TraceVerdict::Goto("lb4-2".into())));
        assert_eq!((ev.id, ev.iif, ev.oif), (0xabcd, Some(3), None));
        let p = ev.packet.expect("packet");
        assert_eq!(p.src.to_string(), "10.244.1.5");
        assert_eq!(p.dst.to_string(), "10.96.0.20");
        assert_eq!(
            (p.proto, p.sport, p.dport, p.tcp_flags),
            (6, 50000, 80, 0x02)
        );
    }

    #[test]
    fn other_messages_are_not_events() {
        let mut msg = 20u32.to_ne_bytes().to_vec();
        msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | 12).to_ne_bytes());
        msg.extend_from_slice(&[0; 14]);
        assert!(decode_message(&msg, None).is_none());
        assert!(decode_message(&[1, 2], None).is_none());
    }
}

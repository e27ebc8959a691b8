//! Change notifications from the kernel, as they happen: the nftables
//! multicast group (NFNLGRP_NFTABLES: every committed table, chain, rule,
//! set and element change, then one NEWGEN naming the committing process)
//! and the route-netlink groups for links, IPv4/IPv6 routes and
//! neighbours, in the namespace the listener was created in.
//!
//! Decoded just enough to tell what changed and who changed it: the
//! message type, the table (and chain or set) name, a route's destination
//! and protocol, a link's name and state. Every notification carries the
//! port id of the socket that caused it (`nlmsg_pid`); [`crate::own`] says
//! whether that is one of podwire's. The sockets are non-blocking: call
//! [`ChangeListener::wait`] (or poll [`ChangeListener::fds`]) and then
//! [`ChangeListener::read`].

use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use ipnet::IpNet;
use netlink_sys::{
    Socket,
    protocols::{NETLINK_NETFILTER, NETLINK_ROUTE},
};

use crate::nftrace::{attrs, be_u32, text};
use crate::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNLGRP_NFTABLES: u32 = 7;
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_DELCHAIN: u8 = 5;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_NEWSET: u8 = 9;
const NFT_MSG_DELSET: u8 = 11;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_DELSETELEM: u8 = 14;
const NFT_MSG_NEWGEN: u8 = 15;
const NFT_MSG_NEWOBJ: u8 = 18;
const NFT_MSG_DELOBJ: u8 = 20;
const NFT_MSG_NEWFLOWTABLE: u8 = 22;
const NFT_MSG_DELFLOWTABLE: u8 = 24;

/// The first attribute of every nftables object message is its table.
const NFTA_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const IFLA_IFNAME: u16 = 3;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const NDA_DST: u16 = 1;
const IFF_UP: u32 = 1;
/// Bytes of notifications the kernel may queue per socket.
const RECEIVE_BUFFER: libc::c_int = 32 * 1024 * 1024;

/// What kind of nftables object a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NftObject {
    Table,
    Chain,
    Set,
    Rule,
    Element,
    /// Stateful objects, flowtables.
    Other,
}

impl NftObject {
    pub fn as_str(self) -> &'static str {
        match self {
            NftObject::Table => "table",
            NftObject::Chain => "chain",
            NftObject::Set => "set",
            NftObject::Rule => "rule",
            NftObject::Element => "element",
            NftObject::Other => "object",
        }
    }
}

/// One committed nftables change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChange {
    pub object: NftObject,
    /// A deletion (else an addition or update).
    pub removed: bool,
    /// NFPROTO_* (1 = inet, 2 = ip, 10 = ip6).
    pub family: u8,
    pub table: String,
    /// The chain (chains, rules) or set (sets, elements), when named.
    pub name: Option<String>,
    /// The port id of the socket that committed it.
    pub portid: u32,
}

/// The end of one nftables transaction (NFT_MSG_NEWGEN): who committed the
/// changes announced just before it with the same port id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub portid: u32,
    /// The committing process's pid (as the initial pid namespace sees it).
    pub pid: Option<u32>,
    /// Its command name (`comm`, e.g. "nft").
    pub comm: Option<String>,
}

/// A decoded notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    Nft(NftChange),
    Commit(Commit),
    Route {
        removed: bool,
        dst: IpNet,
        /// The routing protocol tag (podwire's routes carry 112).
        protocol: u8,
        table: u32,
        oif: Option<u32>,
        portid: u32,
    },
    Link {
        removed: bool,
        name: String,
        index: u32,
        up: bool,
        portid: u32,
    },
    Neigh {
        removed: bool,
        /// AF_INET, AF_INET6 or AF_BRIDGE (an FDB entry).
        family: u8,
        ifindex: u32,
        dst: Option<IpAddr>,
        /// NUD_* (0x80 = permanent).
        state: u16,
        portid: u32,
    },
    /// The kernel dropped notifications (the socket's buffer was full):
    /// whatever changed meanwhile is unknown.
    Overflow,
}

fn u16_ne(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_ne(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Decodes one nfnetlink message (header included); None for anything
/// that is not an nftables change.
pub fn decode_nft(msg: &[u8]) -> Option<Notification> {
    let kind = u16_ne(msg, 4)?;
    let portid = u32_ne(msg, 12)?;
    if kind >> 8 != NFNL_SUBSYS_NFTABLES {
        return None;
    }
    let family = *msg.get(16)?;
    let body = attrs(msg.get(20..)?);
    let find = |t: u16| body.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
    let op = (kind & 0xff) as u8;
    if op == NFT_MSG_NEWGEN {
        return Some(Notification::Commit(Commit {
            portid,
            pid: find(NFTA_GEN_PROC_PID).and_then(be_u32),
            comm: find(NFTA_GEN_PROC_NAME).map(text),
        }));
    }
    let (object, removed, name_attr) = match op {
        NFT_MSG_NEWTABLE => (NftObject::Table, false, None),
        NFT_MSG_DELTABLE => (NftObject::Table, true, None),
        NFT_MSG_NEWCHAIN => (NftObject::Chain, false, Some(NFTA_CHAIN_NAME)),
        NFT_MSG_DELCHAIN => (NftObject::Chain, true, Some(NFTA_CHAIN_NAME)),
        NFT_MSG_NEWRULE => (NftObject::Rule, false, Some(NFTA_RULE_CHAIN)),
        NFT_MSG_DELRULE => (NftObject::Rule, true, Some(NFTA_RULE_CHAIN)),
        NFT_MSG_NEWSET => (NftObject::Set, false, Some(NFTA_SET_NAME)),
        NFT_MSG_DELSET => (NftObject::Set, true, Some(NFTA_SET_NAME)),
        NFT_MSG_NEWSETELEM => (NftObject::Element, false, Some(NFTA_SET_ELEM_LIST_SET)),
        NFT_MSG_DELSETELEM => (NftObject::Element, true, Some(NFTA_SET_ELEM_LIST_SET)),
        NFT_MSG_NEWOBJ | NFT_MSG_NEWFLOWTABLE => (NftObject::Other, false, None),
        NFT_MSG_DELOBJ | NFT_MSG_DELFLOWTABLE => (NftObject::Other, true, None),
        _ => return None,
    };
    Some(Notification::Nft(NftChange {
        object,
        removed,
        family,
        table: find(NFTA_TABLE).map(text)?,
        name: name_attr.and_then(find).map(text),
        portid,
    }))
}

fn ip(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), b.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// Decodes one route-netlink message (header included); None for anything
/// but link, route and neighbour changes.
pub fn decode_rtnl(msg: &[u8]) -> Option<Notification> {
    let kind = u16_ne(msg, 4)?;
    let portid = u32_ne(msg, 12)?;
    let body = msg.get(16..)?;
    match kind {
        RTM_NEWLINK | RTM_DELLINK => {
            // ifinfomsg: family, pad, type (2), index (4), flags (4), change (4).
            let index = u32_ne(body, 4)?;
            let flags = u32_ne(body, 8)?;
            let list = attrs(body.get(16..)?);
            let name = list.iter().find(|(k, _)| *k == IFLA_IFNAME)?.1;
            Some(Notification::Link {
                removed: kind == RTM_DELLINK,
                name: text(name),
                index,
                up: flags & IFF_UP != 0,
                portid,
            })
        }
        RTM_NEWROUTE | RTM_DELROUTE => {
            // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (4).
            let family = *body.first()?;
            let dst_len = *body.get(1)?;
            let mut table = u32::from(*body.get(4)?);
            let protocol = *body.get(5)?;
            let list = attrs(body.get(12..)?);
            let mut dst = None;
            let mut oif = None;
            for (k, v) in list {
                match k {
                    RTA_DST => dst = ip(family, v),
                    RTA_OIF => oif = u32_ne(v, 0),
                    RTA_TABLE => table = u32_ne(v, 0).unwrap_or(table),
                    _ => {}
                }
            }
            let dst = match dst {
                Some(a) => IpNet::new(a, dst_len).ok()?,
                None if i32::from(family) == libc::AF_INET => {
                    IpNet::new(IpAddr::from([0u8; 4]), 0).ok()?
                }
                None if i32::from(family) == libc::AF_INET6 => {
                    IpNet::new(IpAddr::from([0u8; 16]), 0).ok()?
                }
                None => return None,
            };
            Some(Notification::Route {
                removed: kind == RTM_DELROUTE,
                dst,
                protocol,
                table,
                oif,
                portid,
            })
        }
        RTM_NEWNEIGH | RTM_DELNEIGH => {
            // ndmsg: family, pad (3), ifindex (4), state (2), flags, type.
            let family = *body.first()?;
            let ifindex = u32_ne(body, 4)?;
            let state = u16_ne(body, 8)?;
            let list = attrs(body.get(12..)?);
            let dst = list
                .iter()
                .find(|(k, _)| *k == NDA_DST)
                .and_then(|(_, v)| ip(family, v));
            Some(Notification::Neigh {
                removed: kind == RTM_DELNEIGH,
                family,
                ifindex,
                dst,
                state,
                portid,
            })
        }
        _ => None,
    }
}

/// Non-blocking sockets on the nftables and route-netlink notification
/// groups of the namespace they were created in.
pub struct ChangeListener {
    nft: Socket,
    rtnl: Socket,
    buf: Vec<u8>,
}

fn subscribe(protocol: isize, groups: &[u32], what: &str) -> Result<Socket> {
    let mut socket =
        Socket::new(protocol).map_err(|e| Error::netlink(format!("open {what} socket"), e))?;
    socket
        .bind_auto()
        .map_err(|e| Error::netlink(format!("bind {what} socket"), e))?;
    for g in groups {
        socket
            .add_membership(*g)
            .map_err(|e| Error::netlink(format!("join {what} group {g}"), e))?;
    }
    // A burst (a full resync of 100k elements is one notification per
    // element) must not lose the foreign change next to it: a large
    // buffer (forced past rmem_max with CAP_NET_ADMIN), and ENOBUFS is
    // reported as [`Notification::Overflow`].
    let size: libc::c_int = RECEIVE_BUFFER;
    // SAFETY: setsockopt with a pointer to a c_int of its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
    }
    socket
        .set_non_blocking(true)
        .map_err(|e| Error::netlink(format!("make {what} socket non-blocking"), e))?;
    Ok(socket)
}

impl ChangeListener {
    /// Listens in the calling thread's namespace. `neighbours`: also the
    /// neighbour group (chatty on a busy node: every ARP state change).
    pub fn new(neighbours: bool) -> Result<ChangeListener> {
        let nft = subscribe(
            NETLINK_NETFILTER,
            &[NFNLGRP_NFTABLES],
            "nftables notification",
        )?;
        let mut groups = vec![RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE];
        if neighbours {
            groups.push(RTNLGRP_NEIGH);
        }
        let rtnl = subscribe(NETLINK_ROUTE, &groups, "route notification")?;
        Ok(ChangeListener {
            nft,
            rtnl,
            buf: vec![0; 256 * 1024],
        })
    }

    /// The two descriptors, for a caller's own poll loop.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.nft.as_raw_fd(), self.rtnl.as_raw_fd()]
    }

    /// Waits up to `timeout` for something to read; true when there is.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let mut pfds = self.fds().map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: two valid pollfds in an array of that length.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(Error::netlink("wait for change notifications", err));
        }
        Ok(rc > 0)
    }

    /// Everything that arrived so far, in arrival order per socket
    /// (nftables first). Never blocks.
    pub fn read(&mut self) -> Result<Vec<Notification>> {
        let mut out = Vec::new();
        drain(&self.nft, &mut self.buf, decode_nft, &mut out)?;
        drain(&self.rtnl, &mut self.buf, decode_rtnl, &mut out)?;
        Ok(out)
    }
}

fn drain(
    socket: &Socket,
    buf: &mut [u8],
    decode: fn(&[u8]) -> Option<Notification>,
    out: &mut Vec<Notification>,
) -> Result<()> {
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(()),
                    Some(libc::ENOBUFS) => {
                        out.push(Notification::Overflow);
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => Err(Error::netlink("read change notifications", e)),
                };
            }
        };
        let data = &buf[..n.min(buf.len())];
        let mut off = 0;
        while off + 16 <= data.len() {
            let Some(len) = u32_ne(data, off).map(|l| l as usize) else {
                break;
            };
            if len < 16 || off + len > data.len() {
                break;
            }
            if let Some(note) = decode(&data[off..off + len]) {
                out.push(note);
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn msg(kind: u16, portid: u32, fixed: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + fixed.len() + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&portid.to_ne_bytes());
        out.extend_from_slice(fixed);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_deleted_rule_names_its_table_chain_and_sender() {
        let body = [
            attr(1, b"podwire-proxy\0"),
            attr(2, b"services\0"),
            attr(3, &7u64.to_be_bytes()),
        ]
        .concat();
        let m = msg(10 << 8 | 8, 4242, &[1, 0, 0, 0], &body);
        assert_eq!(
            decode_nft(&m),
            Some(Notification::Nft(NftChange {
                object: NftObject::Rule,
                removed: true,
                family: 1,
                table: "podwire-proxy".into(),
                name: Some("services".into()),
                portid: 4242,
            }))
        );
    }

    #[test]
    fn newgen_names_the_committing_process() {
        let body = [
            attr(1, &9u32.to_be_bytes()),
            attr(2, &1234u32.to_be_bytes()),
            attr(3, b"nft\0"),
        ]
        .concat();
        let m = msg(10 << 8 | 15, 77, &[0, 0, 0, 9], &body);
        assert_eq!(
            decode_nft(&m),
            Some(Notification::Commit(Commit {
                portid: 77,
                pid: Some(1234),
                comm: Some("nft".into()),
            }))
        );
        // Another subsystem (conntrack = 1) is not a change.
        assert_eq!(decode_nft(&msg(1 << 8, 77, &[0, 0, 0, 0], &body)), None);
    }

    #[test]
    fn a_deleted_route_has_its_prefix_and_protocol() {
        let mut fixed = vec![libc::AF_INET as u8, 24, 0, 0, 254, 112, 0, 1];
        fixed.extend_from_slice(&0u32.to_ne_bytes());
        let body = [attr(1, &[10, 244, 2, 0]), attr(4, &3u32.to_ne_bytes())].concat();
        let m = msg(25, 99, &fixed, &body);
        assert_eq!(
            decode_rtnl(&m),
            Some(Notification::Route {
                removed: true,
                dst: "10.244.2.0/24".parse().unwrap(),
                protocol: 112,
                table: 254,
                oif: Some(3),
                portid: 99,
            })
        );
    }

    #[test]
    fn a_link_change_has_its_name_and_state() {
        let mut fixed = vec![0u8, 0, 1, 0];
        fixed.extend_from_slice(&5u32.to_ne_bytes());
        fixed.extend_from_slice(&0u32.to_ne_bytes()); // flags: down
        fixed.extend_from_slice(&1u32.to_ne_bytes());
        let body = attr(3, b"podwire.1\0");
        let m = msg(16, 0, &fixed, &body);
        assert_eq!(
            decode_rtnl(&m),
            Some(Notification::Link {
                removed: false,
                name: "podwire.1".into(),
                index: 5,
                up: false,
                portid: 0,
            })
        );
    }
}

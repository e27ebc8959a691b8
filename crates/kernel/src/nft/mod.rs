//! nftables through nfnetlink: the socket, the message framing and the
//! field encoding the other parts share. Set and map elements (what a CNI
//! ADD or DEL, a proxy sync or a policy sync changes) are encoded here by
//! hand and sent as one atomic batch ([`element`]): the `nft` program costs
//! ~15 ms a run on this machine, more than the whole budget of an ADD.
//! Tables, chains and rules are rare, structural changes and go through
//! `nft -f -` in one transaction, so their text stays readable
//! ([`structure`]). Reads are in [`query`].

pub mod element;
pub mod query;
pub mod structure;

pub use element::{
    Element, ElementData, ElementOp, Transaction, TransactionStats, Verdict, commit,
};
pub use query::{chain_exists, count_elements, list_chains, list_elements, table_exists};
pub use structure::{apply_script, delete_chains, delete_table};

use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::own::OwnPort;
use crate::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

/// Batches larger than this raise the socket's send buffer first: a
/// sendmsg larger than the buffer fails with EMSGSIZE.
const SMALL_BATCH_BYTES: usize = 200 * 1024;

/// nftables address families (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Bridge = 7,
    Ip6 = 10,
}

/// One field of a set key or map value, laid out as nftables registers
/// expect: every field of a concatenation padded to 4 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Addr(IpAddr),
    /// inet_proto (tcp = 6, udp = 17, sctp = 132).
    Proto(u8),
    /// inet_service, a port in network order.
    Port(u16),
    /// ether_addr.
    Mac([u8; 6]),
    /// ifname: the name zero-padded to IFNAMSIZ (16 bytes).
    IfName(String),
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>, concat: bool) {
        match self {
            Field::Addr(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            Field::Addr(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
            Field::Proto(p) => {
                out.push(*p);
                if concat {
                    out.extend_from_slice(&[0, 0, 0]);
                }
            }
            Field::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                if concat {
                    out.extend_from_slice(&[0, 0]);
                }
            }
            Field::Mac(mac) => {
                out.extend_from_slice(mac);
                if concat {
                    out.extend_from_slice(&[0, 0]);
                }
            }
            Field::IfName(name) => {
                let mut bytes = [0u8; 16];
                for (slot, b) in bytes.iter_mut().zip(name.bytes().take(15)) {
                    *slot = b;
                }
                out.extend_from_slice(&bytes);
            }
        }
    }
}

/// Encodes set key or map value fields as the kernel stores them (a
/// concatenation's fields padded to 32-bit registers).
pub fn encode_concat(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let concat = fields.len() > 1;
    for field in fields {
        field.encode(&mut out, concat);
    }
    out
}

/// Minimal netlink attribute writer (nftables integers are big-endian).
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn new() -> Self {
        Attrs { buf: Vec::new() }
    }
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }
    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }
    fn nest(&mut self, kind: u16, inner: Attrs) {
        self.put(kind | NLA_F_NESTED, &inner.buf);
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// Appends one netlink message with an nfgenmsg header to `out`.
fn nlmsg(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Splits a receive buffer into (type, seq, payload) of each netlink message.
fn split(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(header) = buf.get(offset..offset + 16) {
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < 16 || offset + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let seq = u32::from_ne_bytes([header[8], header[9], header[10], header[11]]);
        out.push((kind, seq, &buf[offset + 16..offset + len]));
        offset += (len + 3) & !3;
    }
    out
}

/// Walks netlink attributes: (type without the nested flag, payload).
fn attributes(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(header) = buf.get(offset..offset + 4) {
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & !NLA_F_NESTED;
        if len < 4 || offset + len > buf.len() {
            break;
        }
        out.push((kind, &buf[offset + 4..offset + len]));
        offset += (len + 3) & !3;
    }
    out
}

/// The errno of an NLMSG_ERROR payload (0 is an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// One batch: (message type, flags, body) of each message between
/// BATCH_BEGIN and BATCH_END. Returns the bytes and the sequence numbers
/// whose acknowledgements to wait for.
fn build_batch(family: Family, messages: &[(u16, u16, Vec<u8>)]) -> (Vec<u8>, Vec<u32>) {
    let size = 40 + messages.iter().map(|(_, _, b)| 20 + b.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let mut seqs = Vec::with_capacity(messages.len());
    nlmsg(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, (kind, flags, body)) in messages.iter().enumerate() {
        let seq = i as u32 + 1;
        nlmsg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family as u8,
            0,
            body,
        );
        seqs.push(seq);
    }
    nlmsg(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        messages.len() as u32 + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (out, seqs)
}

/// Sends `messages` as one batch (one kernel transaction) and waits for
/// every acknowledgement; returns the batch's size in bytes.
fn run_batch(family: Family, messages: &[(u16, u16, Vec<u8>)], op: &str) -> Result<usize> {
    if messages.is_empty() {
        return Ok(0);
    }
    let (bytes, seqs) = build_batch(family, messages);
    let mut socket = NfSocket::open()?;
    // Error acks then carry only the header, not a copy of a large request.
    let _ = socket.socket.set_cap_ack(true);
    if bytes.len() > SMALL_BATCH_BYTES {
        socket.raise_send_buffer(bytes.len())?;
    }
    socket.send(&bytes, op)?;
    socket.wait_acks(seqs, op)?;
    Ok(bytes.len())
}

struct NfSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// Our changes' notifications name this socket's port id.
    _own: OwnPort,
}

impl NfSocket {
    fn open() -> Result<NfSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::netlink("open nfnetlink socket", e))?;
        let own = socket
            .bind_auto()
            .map(|addr| OwnPort::register(addr.port_number()))
            .map_err(|e| Error::netlink("bind nfnetlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::netlink("connect nfnetlink socket", e))?;
        let _ = socket.set_ext_ack(true);
        Ok(NfSocket {
            socket,
            buf: vec![0; 256 * 1024],
            _own: own,
        })
    }

    fn send(&self, bytes: &[u8], op: &str) -> Result<()> {
        self.socket
            .send(bytes, 0)
            .map_err(|e| Error::netlink(op, e))?;
        Ok(())
    }

    fn raise_send_buffer(&self, bytes: usize) -> Result<()> {
        use std::os::fd::AsRawFd;
        // The kernel doubles the value and needs room for its own overhead.
        let want = (bytes + 64 * 1024).min(i32::MAX as usize / 2) as libc::c_int;
        let fd = self.socket.as_raw_fd();
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
            // SAFETY: setsockopt with a pointer to a c_int of the given size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&want as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        Err(Error::Nft(format!(
            "cannot raise the netlink send buffer to {bytes} bytes ({}); run as root (CAP_NET_ADMIN) or raise net.core.wmem_max",
            std::io::Error::last_os_error()
        )))
    }

    /// Reads replies until every sequence number in `pending` has been
    /// acknowledged, or returns the first error the kernel reports.
    fn wait_acks(&mut self, mut pending: Vec<u32>, op: &str) -> Result<()> {
        while !pending.is_empty() {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::netlink(op, e))?;
            for (kind, seq, payload) in split(&self.buf[..n]) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                pending.retain(|s| *s != seq);
                match error_code(payload) {
                    0 => {}
                    errno => {
                        return Err(Error::netlink(op, std::io::Error::from_raw_os_error(errno)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends a get request; returns the payloads of the replies (Ok(None)
    /// when the object does not exist).
    fn get(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        body: &[u8],
        op: &str,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let mut out = Vec::new();
        nlmsg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            1,
            family,
            0,
            body,
        );
        self.send(&out, op)?;
        let mut replies = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::netlink(op, e))?;
            for (msg_kind, _seq, payload) in split(&self.buf[..n]) {
                match msg_kind {
                    NLMSG_ERROR => {
                        return match error_code(payload) {
                            0 => Ok(Some(replies)),
                            libc::ENOENT => Ok(None),
                            errno => {
                                Err(Error::netlink(op, std::io::Error::from_raw_os_error(errno)))
                            }
                        };
                    }
                    NLMSG_DONE => return Ok(Some(replies)),
                    _ => {
                        replies.push(payload.to_vec());
                        if flags & NLM_F_DUMP == 0 {
                            return Ok(Some(replies));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_fields_are_padded_to_registers() {
        let key = encode_concat(&[Field::Proto(6), Field::Port(8080)]);
        assert_eq!(key, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let single = encode_concat(&[Field::Addr("10.0.0.1".parse().unwrap())]);
        assert_eq!(single, vec![10, 0, 0, 1]);
        let port = encode_concat(&[Field::Port(80)]);
        assert_eq!(port, vec![0, 80]);
        let mac_if = encode_concat(&[
            Field::Mac([1, 2, 3, 4, 5, 6]),
            Field::IfName("veth0".into()),
        ]);
        assert_eq!(mac_if.len(), 24);
        assert_eq!(&mac_if[..8], &[1, 2, 3, 4, 5, 6, 0, 0]);
        assert_eq!(&mac_if[8..13], b"veth0");
    }

    #[test]
    fn batch_is_wrapped_in_begin_and_end() {
        let messages = vec![(12, NLM_F_CREATE, vec![0u8; 8]), (14, 0, vec![0u8; 4])];
        let (bytes, seqs) = build_batch(Family::Inet, &messages);
        let msgs = split(&bytes);
        assert_eq!(msgs.len(), 4);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[1].0, (NFNL_SUBSYS_NFTABLES << 8) | 12);
        assert_eq!(msgs[2].0, (NFNL_SUBSYS_NFTABLES << 8) | 14);
        assert_eq!(msgs[3].0, NFNL_MSG_BATCH_END);
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(msgs[3].1, 3);
    }

    #[test]
    fn truncated_messages_and_attributes_are_not_read_past_their_end() {
        let mut out = Vec::new();
        nlmsg(&mut out, 1, 0, 7, 0, 0, &[1, 2, 3, 4]);
        assert_eq!(split(&out).len(), 1);
        assert!(split(&out[..out.len() - 1]).is_empty());
        let mut attrs = Attrs::new();
        attrs.put(3, &[9, 9]);
        attrs.put(4, &[]);
        assert_eq!(
            attributes(&attrs.buf),
            vec![(3, &[9u8, 9][..]), (4, &[][..])]
        );
        assert_eq!(attributes(&attrs.buf[..5]), vec![]);
        assert_eq!(error_code(&(-2i32).to_ne_bytes()), 2);
        assert_eq!(error_code(&[]), 0);
    }
}

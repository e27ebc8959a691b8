//! A synchronous rtnetlink socket: one request, then read until the ACK (or
//! the end of a dump). netlink-packet-route does the message encoding.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::own::OwnPort;
use crate::{Error, Netns, Result};

/// A route-netlink socket bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    /// Our changes' notifications name this socket's port id.
    _own: OwnPort,
    seq: u32,
    buf: Vec<u8>,
}

/// Flags for a request that creates something and must not replace it.
pub const CREATE_EXCL: u16 = NLM_F_CREATE | NLM_F_EXCL;
/// Flags for a request that creates something or leaves it as it is.
pub const CREATE: u16 = NLM_F_CREATE;

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn new() -> Result<Netlink> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| Error::netlink("open socket", e))?;
        let own = socket
            .bind_auto()
            .map(|addr| OwnPort::register(addr.port_number()))
            .map_err(|e| Error::netlink("bind socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::netlink("connect socket", e))?;
        // Extended ACKs make the kernel explain EINVAL-style failures.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Netlink {
            socket,
            _own: own,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// A socket living in `ns`; the thread returns to its own namespace.
    pub fn in_netns(ns: &Netns) -> Result<Netlink> {
        ns.run(Netlink::new)?
    }

    fn send(&mut self, payload: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| Error::netlink(op, e))?;
        Ok(self.seq)
    }

    /// Sends a change and waits for the kernel's ACK.
    pub fn request(&mut self, payload: RouteNetlinkMessage, flags: u16, op: &str) -> Result<()> {
        let seq = self.send(payload, flags | NLM_F_ACK, op)?;
        loop {
            for msg in self.recv_batch(op)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(()),
                            Some(_) => Err(Error::netlink(op, err.to_io())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(()),
                    _ => {}
                }
            }
        }
    }

    /// Sends a dump request and collects every reply message.
    pub fn dump(
        &mut self,
        payload: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.query(payload, NLM_F_DUMP, op)
    }

    /// Sends a get request (dump or single object) and collects the replies.
    pub fn query(
        &mut self,
        payload: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(payload, flags, op)?;
        let dumping = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            for msg in self.recv_batch(op)? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        replies.push(inner);
                        if !dumping {
                            return Ok(replies);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(replies),
                            Some(_) => Err(Error::netlink(op, err.to_io())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    fn recv_batch(&mut self, op: &str) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let n = self
            .socket
            .recv(&mut &mut self.buf[..], 0)
            .map_err(|e| Error::netlink(op, e))?;
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let bytes = &self.buf[offset..n];
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                Error::Decode {
                    op: op.to_string(),
                    detail: e.to_string(),
                }
            })?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
            out.push(msg);
        }
        Ok(out)
    }
}

//! The opt-in denied-connection log: the drop chains send (rate-limited)
//! packets to an nflog group with the chain's name as prefix; this reader
//! binds that group on a non-blocking nfnetlink socket and turns each
//! packet into a structured log line naming source pod, destination pod,
//! protocol, port and the policy that isolated the pod.

use std::net::Ipv4Addr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::compile::Ruleset;
use crate::error::PolicyError;
use crate::layout::{LOG_PREFIX, chain_policy};

const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 4;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// A bound nflog group.
pub struct LogReader {
    socket: Socket,
    buf: Vec<u8>,
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn config_message(group: u16) -> Vec<u8> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend_from_slice(&group.to_be_bytes());
    attr(&mut body, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = 96u32.to_be_bytes().to_vec();
    // struct nfulnl_msg_config_mode is packed: range, mode, pad (6 bytes).
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    attr(&mut body, NFULA_CFG_MODE, &mode);
    // Deliver each packet at once (the default batches 100 or waits 1 s).
    attr(&mut body, NFULA_CFG_QTHRESH, &1u32.to_be_bytes());
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// One denied packet as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub chain: String,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

/// Parses one NFULNL_MSG_PACKET payload (after the nfgenmsg header).
pub fn parse_packet(attrs: &[u8]) -> Option<Denied> {
    let (mut prefix, mut payload) = (None, None);
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            break;
        }
        let value = &rest[4..len];
        match kind {
            NFULA_PREFIX => {
                prefix = Some(
                    String::from_utf8_lossy(value)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            NFULA_PAYLOAD => payload = Some(value),
            _ => {}
        }
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    let chain = prefix?.strip_prefix(LOG_PREFIX)?.trim().to_string();
    let ip = payload?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let dport = match ip.get(ihl + 2..ihl + 4) {
        Some(b) if matches!(proto, 6 | 17 | 132) => u16::from_be_bytes([b[0], b[1]]),
        _ => 0,
    };
    Some(Denied {
        chain,
        proto,
        src,
        dst,
        dport,
    })
}

impl LogReader {
    /// Binds nflog `group` in the calling thread's namespace.
    pub fn open(group: u16) -> Result<LogReader, PolicyError> {
        let err = |source| PolicyError::Log { group, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        socket.send(&config_message(group), 0).map_err(err)?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = socket.recv(&mut &mut buf[..], 0).map_err(err)?;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Err(err(std::io::Error::from_raw_os_error(-code)));
            }
        }
        socket.set_non_blocking(true).map_err(err)?;
        Ok(LogReader { socket, buf })
    }

    /// Every denied packet waiting on the socket (never blocks).
    pub fn poll(&mut self) -> Vec<Denied> {
        let mut out = Vec::new();
        while let Ok(n) = self.socket.recv(&mut &mut self.buf[..], 0) {
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off + 20 <= n {
                let b = &self.buf[off..n];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len < 20 || len > b.len() {
                    break;
                }
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
                    && let Some(d) = parse_packet(&b[20..len])
                {
                    out.push(d);
                }
                off += (len + 3) & !3;
            }
        }
        out
    }

    /// Logs every denied packet waiting on the socket.
    pub fn drain(&mut self, rs: &Ruleset) {
        for d in self.poll() {
            log_denied(rs, &d);
        }
    }
}

fn log_denied(rs: &Ruleset, d: &Denied) {
    let pod = |ip: &Ipv4Addr| {
        rs.pod_names
            .get(ip)
            .map(|(ns, n)| format!("{ns}/{n}"))
            .unwrap_or_else(|| ip.to_string())
    };
    let proto = match d.proto {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        n => n.to_string(),
    };
    tracing::info!(
        src_pod = %pod(&d.src),
        src_ip = %d.src,
        dst_pod = %pod(&d.dst),
        dst_ip = %d.dst,
        protocol = %proto,
        port = d.dport,
        direction = if d.chain.starts_with("in-") { "ingress" } else { "egress" },
        policy = %chain_policy(rs, &d.chain),
        "NetworkPolicy denied a connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_packet_names_chain_addresses_and_port() {
        let mut attrs = Vec::new();
        attr(&mut attrs, NFULA_PREFIX, b"pwpol in-0123456789ab \0");
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0];
        ip.extend_from_slice(&[10, 244, 1, 2, 10, 244, 2, 3]);
        ip.extend_from_slice(&[0x9c, 0x40, 0, 80]);
        attr(&mut attrs, NFULA_PAYLOAD, &ip);
        let d = parse_packet(&attrs).expect("packet");
        assert_eq!(d.chain, "in-0123456789ab");
        assert_eq!(d.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(d.dst, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!((d.proto, d.dport), (6, 80));
    }

    #[test]
    fn the_config_message_binds_the_group() {
        let msg = config_message(100);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), (4 << 8) | 1);
        assert_eq!(&msg[18..20], &100u16.to_be_bytes());
    }
}

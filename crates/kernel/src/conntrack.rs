//! conntrack cleanup: when a UDP mapping or endpoint goes away, entries that
//! still point at it would keep steering datagrams to a dead address until
//! they time out, so they are deleted at once.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Deletes conntrack entries of `protocol` (IPPROTO_*) whose original
/// destination is `orig_dst` (any when None) and port `orig_dport`, and,
/// when given, whose reply comes from `reply_src` (the endpoint a DNAT
/// chose). Used for UDP, where a stale entry would keep sending datagrams
/// to an endpoint that is gone. Runs the `conntrack` tool in the calling
/// thread's namespace; "no entry matched" is success.
pub fn delete(
    protocol: u8,
    orig_dst: Option<IpAddr>,
    orig_dport: u16,
    reply_src: Option<IpAddr>,
) -> Result<()> {
    let mut args: Vec<String> = vec![
        "-D".into(),
        "-p".into(),
        protocol.to_string(),
        "--orig-port-dst".into(),
        orig_dport.to_string(),
    ];
    let v6 = orig_dst.or(reply_src).is_some_and(|ip| ip.is_ipv6());
    if v6 {
        args.extend(["-f".into(), "ipv6".into()]);
    }
    if let Some(dst) = orig_dst {
        args.extend(["--orig-dst".into(), dst.to_string()]);
    }
    if let Some(src) = reply_src {
        args.extend(["--reply-src".into(), src.to_string()]);
    }
    match Command::new("conntrack")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        // Exit 1 means "no entry matched", which is the usual case.
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!("conntrack tool not installed; stale entries expire on their own");
            Ok(())
        }
        Err(err) => Err(Error::Nft(format!("running conntrack: {err}"))),
    }
}

/// Deletes UDP conntrack entries whose original destination port is `port`
/// (optionally only those DNATed to `to_addr`).
pub fn flush_udp_port(port: u16, to_addr: Option<IpAddr>) -> Result<()> {
    delete(17, None, port, to_addr)
}

//! conntrack cleanup: when a UDP mapping or endpoint goes away, entries that
//! still point at it would keep steering datagrams to a dead address until
//! they time out, so they are deleted at once.

use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Deletes UDP conntrack entries whose original destination port is `port`
/// (optionally only those DNATed to `to_addr`). Uses the `conntrack` tool.
pub fn flush_udp_port(port: u16, to_addr: Option<std::net::IpAddr>) -> Result<()> {
    let port = port.to_string();
    let mut args = vec!["-D", "-p", "udp", "--orig-port-dst", port.as_str()];
    let addr;
    if let Some(ip) = to_addr {
        addr = ip.to_string();
        args.extend(["--reply-src", addr.as_str()]);
        if ip.is_ipv6() {
            args.extend(["-f", "ipv6"]);
        }
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
            tracing::debug!("conntrack tool not installed; stale UDP entries expire on their own");
            Ok(())
        }
        Err(err) => Err(Error::Nft(format!("running conntrack: {err}"))),
    }
}

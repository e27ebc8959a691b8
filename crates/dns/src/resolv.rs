//! The default upstreams: the `nameserver` lines of the server's own
//! /etc/resolv.conf, and parsing `--upstream` values.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::error::DnsError;

/// The nameservers of a resolv.conf text, port 53 (IPv6 zone suffixes such
/// as `%eth0` are dropped; unparseable lines are skipped).
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            let addr = addr.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The nameservers of a resolv.conf file; empty (with a warning) when it
/// cannot be read.
pub fn nameservers_of(path: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => nameservers(&text),
        Err(err) => {
            tracing::warn!(
                "cannot read {}: {err}; names outside the cluster will get SERVFAIL unless --upstream is given",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT` (port 53 by default).
pub fn parse_upstream(text: &str) -> Result<SocketAddr, DnsError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| DnsError::BadUpstream(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers() {
        let text = "# comment\nsearch a b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn parses_upstreams() {
        assert_eq!(
            parse_upstream("1.2.3.4").unwrap(),
            "1.2.3.4:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("1.2.3.4:5353").unwrap(),
            "1.2.3.4:5353".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[::1]:54").unwrap(),
            "[::1]:54".parse().unwrap()
        );
        assert_eq!(parse_upstream("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(
            parse_upstream("example.com")
                .unwrap_err()
                .to_string()
                .contains("IP:PORT")
        );
    }
}

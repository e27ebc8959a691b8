//! The DNS step of a trace: a real A query, sent from the source's network
//! namespace to its resolver and walked through its search list as libc
//! does, so the report shows the answer the source itself gets. The query
//! and answer are a few fixed fields, encoded here (pure, unit-tested).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// What one resolution found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// The name asked (the search domain that answered included).
    pub name: String,
    pub server: SocketAddr,
    /// NOERROR, NXDOMAIN, SERVFAIL, ...
    pub rcode: String,
    pub addresses: Vec<Ipv4Addr>,
    /// Every name tried, with its outcome, in order.
    pub tried: Vec<String>,
}

/// nameserver and search lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>, usize) {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut ndots = 1;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                servers.extend(words.next().and_then(|w| w.parse::<Ipv4Addr>().ok()))
            }
            Some("search") => search = words.map(str::to_string).collect(),
            Some("options") => {
                for w in words {
                    if let Some(n) = w.strip_prefix("ndots:").and_then(|n| n.parse().ok()) {
                        ndots = n;
                    }
                }
            }
            _ => {}
        }
    }
    (servers, search, ndots)
}

/// The names libc tries, in order, for `name` with this search list.
pub fn candidates(name: &str, search: &[String], ndots: usize) -> Vec<String> {
    if let Some(absolute) = name.strip_suffix('.') {
        return vec![absolute.to_string()];
    }
    let dots = name.matches('.').count();
    let searched: Vec<String> = search.iter().map(|s| format!("{name}.{s}")).collect();
    if dots >= ndots {
        std::iter::once(name.to_string()).chain(searched).collect()
    } else {
        searched
            .into_iter()
            .chain(std::iter::once(name.to_string()))
            .collect()
    }
}

/// An A query for `name` with id `id`, recursion desired.
pub fn query(name: &str, id: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        if len == 0 {
            return Some(at + 1);
        }
        at += 1 + usize::from(len);
    }
}

fn rcode_name(code: u8) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => format!("RCODE{other}"),
    }
}

/// The rcode and A records of an answer to query `id`.
pub fn parse_answer(msg: &[u8], id: u16) -> Option<(String, Vec<Ipv4Addr>)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return None;
    }
    let rcode = rcode_name(msg[3] & 0x0f);
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let head = msg.get(at..at + 10)?;
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[8], head[9]]));
        let data = msg.get(at + 10..at + 10 + len)?;
        if kind == 1 && len == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Some((rcode, addresses))
}

/// Asks `server` for `name` with a socket of the calling thread's
/// namespace; None when nothing answered in `timeout`.
pub fn ask(server: SocketAddr, name: &str, timeout: Duration) -> Option<(String, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.set_read_timeout(Some(timeout)).ok()?;
    let id = (std::process::id() as u16) ^ (name.len() as u16).rotate_left(7);
    socket.send_to(&query(name, id), server).ok()?;
    let mut buf = [0u8; 1500];
    for _ in 0..4 {
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        if from == server
            && let Some(answer) = parse_answer(&buf[..n], id)
        {
            return Some(answer);
        }
    }
    None
}

/// Resolves `name` as libc would with this resolv.conf (first server),
/// from the calling thread's namespace.
pub fn resolve(resolv_conf: &str, name: &str, timeout: Duration) -> Option<DnsAnswer> {
    let (servers, search, ndots) = parse_resolv_conf(resolv_conf);
    let server = SocketAddr::from((*servers.first()?, 53));
    let mut tried = Vec::new();
    let mut last = None;
    for candidate in candidates(name, &search, ndots) {
        match ask(server, &candidate, timeout) {
            Some((rcode, addresses)) => {
                tried.push(format!(
                    "{candidate}: {rcode}, {} address(es)",
                    addresses.len()
                ));
                if !addresses.is_empty() {
                    return Some(DnsAnswer {
                        name: candidate,
                        server,
                        rcode,
                        addresses,
                        tried,
                    });
                }
                last = Some((candidate, rcode));
            }
            None => tried.push(format!("{candidate}: no answer")),
        }
    }
    let (name, rcode) = last.unwrap_or_else(|| (name.to_string(), "TIMEOUT".into()));
    Some(DnsAnswer {
        name,
        server,
        rcode,
        addresses: Vec::new(),
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_follows_ndots() {
        let search = vec![
            "default.svc.cluster.local".to_string(),
            "svc.cluster.local".into(),
        ];
        assert_eq!(
            candidates("web-service.apps", &search, 5),
            vec![
                "web-service.apps.default.svc.cluster.local",
                "web-service.apps.svc.cluster.local",
                "web-service.apps"
            ]
        );
        assert_eq!(candidates("a.b.", &search, 5), vec!["a.b"]);
        assert_eq!(candidates("a.b.c", &search, 2)[0], "a.b.c");
    }

    #[test]
    fn a_query_and_its_answer() {
        let q = query("web.apps.svc", 7);
        assert_eq!(&q[12..17], b"\x03web\x04");
        // The answer: header, the question back, one A record by pointer.
        let mut a = vec![0, 7, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        a.extend_from_slice(&q[12..]);
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 20]);
        let (rcode, addrs) = parse_answer(&a, 7).unwrap();
        assert_eq!(rcode, "NOERROR");
        assert_eq!(addrs, vec![Ipv4Addr::new(10, 96, 0, 20)]);
        assert!(parse_answer(&a, 8).is_none());
        let (servers, search, ndots) =
            parse_resolv_conf("nameserver 10.96.0.10\nsearch a.svc svc\noptions ndots:5\n");
        assert_eq!((servers.len(), search.len(), ndots), (1, 2, 5));
    }
}

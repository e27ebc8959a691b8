//! The compiled cluster zone: compact lookup tables keyed by lowercase name,
//! built once per store generation ([`crate::build`]) and answering queries
//! straight into a response buffer.
//!
//! What is stored: one table entry per name that exists as such (apex,
//! `dns-version`, `ns.dns`, Services, SRV names, the empty non-terminals
//! above them); Services with their addresses, ports and ready endpoints;
//! a sorted reverse index (IP -> Service or endpoint) for PTR; namespaces;
//! in `verified` pod mode a sorted (pod IP, namespace) index. Names that are
//! only derived from data are synthesized at query time: endpoint names
//! (`<hostname>.<svc>.<ns>.svc`), pod names (`a-b-c-d.<ns>.pod`) and PTR names.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::wire::{self, AUTHORITY, Owner, Query, Writer, rcode, rtype};

/// The schema version of the Kubernetes DNS specification implemented.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How pod names (`a-b-c-d.<ns>.pod.<zone>`) are answered, as in CoreDNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// No pod records (NXDOMAIN).
    Disabled,
    /// Any well-formed name in an existing namespace answers with the
    /// address it spells (kubeadm's default).
    #[default]
    Insecure,
    /// Only when a pod with that IP exists in that namespace.
    Verified,
}

impl std::str::FromStr for PodMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(PodMode::Disabled),
            "insecure" => Ok(PodMode::Insecure),
            "verified" => Ok(PodMode::Verified),
            other => Err(format!(
                "unknown pods mode {other:?}: use insecure, verified or disabled"
            )),
        }
    }
}

impl std::fmt::Display for PodMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodMode::Disabled => "disabled",
            PodMode::Insecure => "insecure",
            PodMode::Verified => "verified",
        })
    }
}

/// One name of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Node {
    Apex,
    /// Exists only because names below it do (NODATA for every type).
    Empty,
    Service(u32),
    /// `_<port>._<proto>.<svc>.<ns>.svc`: the Service and its port index.
    Srv(u32, u16),
    DnsVersion,
    /// `ns.dns.<zone>`: the DNS server's own addresses.
    NsDns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SvcKind {
    ClusterIp(Box<[IpAddr]>),
    Headless,
    /// The target in wire format (lowercase).
    External(Box<[u8]>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Port {
    /// Lowercase; empty for an unnamed port.
    pub name: Box<str>,
    /// Lowercase (`tcp`, `udp`, `sctp`).
    pub protocol: Box<str>,
    pub port: u16,
    /// The port on the endpoints (headless SRV records use it).
    pub endpoint_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    pub ip: IpAddr,
    /// Lowercase label; None: the dashed IP stands in for it.
    pub hostname: Option<Box<[u8]>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Svc {
    /// `<svc>.<ns>.svc.<zone>.` in wire format, lowercase.
    pub name: Box<[u8]>,
    pub kind: SvcKind,
    pub ports: Box<[Port]>,
    /// Ready endpoints, sorted, without duplicates.
    pub endpoints: Box<[Endpoint]>,
}

/// A reverse entry: the Service (endpoint u32::MAX) or one of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reverse {
    pub ip: u128,
    pub v6: bool,
    pub service: u32,
    pub endpoint: u32,
}

/// The compiled zone.
#[derive(Debug, Clone)]
pub struct Zone {
    pub(crate) origin: Vec<u8>,
    pub(crate) ttl: u32,
    pub(crate) serial: u32,
    pub(crate) pods: PodMode,
    pub(crate) names: FxHashMap<Box<[u8]>, Node>,
    pub(crate) services: Vec<Svc>,
    pub(crate) namespaces: FxHashMap<Box<[u8]>, u32>,
    /// (IP, namespace id), sorted; only in verified mode.
    pub(crate) pod_ips: Vec<(u128, u32)>,
    pub(crate) reverse: Vec<Reverse>,
    pub(crate) kube_dns: Vec<IpAddr>,
    pub(crate) mname: Vec<u8>,
    pub(crate) rname: Vec<u8>,
}

/// What answering a name of the zone produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    /// The response is complete.
    Done,
    /// An ExternalName CNAME was written; the target (wire, lowercase) is
    /// outside the cluster zone and its addresses must come from elsewhere.
    Chase(Vec<u8>),
}

fn ip_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), false),
        IpAddr::V6(v6) => (u128::from(v6), true),
    }
}

/// CoreDNS's endpoint name for an address without a hostname: the IP with
/// dots (or colons) as dashes, a trailing dash completed with 0.
pub fn dashed_ip(ip: IpAddr, buf: &mut String) {
    buf.clear();
    let _ = write!(buf, "{ip}");
    let dashed: String = buf
        .chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect();
    buf.clear();
    buf.push_str(&dashed);
    if buf.ends_with('-') {
        buf.push('0');
    }
}

/// The IP a pod label spells (`10-244-1-5`, `fd00--5`), as CoreDNS reads it.
pub fn pod_label_ip(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    let dashes = text.bytes().filter(|&b| b == b'-').count();
    if dashes == 3 && !text.contains("--") {
        text.replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        text.replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

/// The address a reverse name (`d.c.b.a.in-addr.arpa.` or the 32-nibble
/// `ip6.arpa.` form, lowercase wire) stands for.
pub fn reverse_name_ip(wire: &[u8]) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = wire::labels(wire).collect();
    let n = labels.len();
    if n == 6 && labels[4] == b"in-addr" && labels[5] == b"arpa" {
        let mut octets = [0u8; 4];
        for (i, label) in labels[..4].iter().enumerate() {
            let text = std::str::from_utf8(label).ok()?;
            if text.len() > 1 && text.starts_with('0') {
                return None;
            }
            octets[3 - i] = text.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if n == 34 && labels[32] == b"ip6" && labels[33] == b"arpa" {
        let mut value: u128 = 0;
        for label in labels[..32].iter().rev() {
            let [digit] = label else { return None };
            let nibble = (*digit as char).to_digit(16)?;
            value = (value << 4) | u128::from(nibble);
        }
        return Some(IpAddr::V6(Ipv6Addr::from(value)));
    }
    None
}

/// The reverse name of an address, as text with a trailing dot.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(73);
            for byte in v6.octets().iter().rev() {
                let _ = write!(out, "{:x}.{:x}.", byte & 0xF, byte >> 4);
            }
            out.push_str("ip6.arpa.");
            out
        }
    }
}

/// Writes an address record of the right type.
fn addr(w: &mut Writer<'_>, owner: Owner<'_>, ttl: u32, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => w.a(owner, ttl, v4),
        IpAddr::V6(v6) => w.aaaa(owner, ttl, v6),
    }
}

fn family_matches(ip: &IpAddr, qtype: u16) -> bool {
    match qtype {
        rtype::A => ip.is_ipv4(),
        rtype::AAAA => ip.is_ipv6(),
        rtype::ANY => true,
        _ => false,
    }
}

impl Zone {
    /// The zone's origin in wire format (lowercase).
    pub fn origin(&self) -> &[u8] {
        &self.origin
    }

    /// The TTL of every record.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The SOA serial (the store generation).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The number of Services compiled in.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Whether a lowercase wire name is the origin or below it; returns the
    /// length of the part before the origin.
    pub fn relative_len(&self, name: &[u8]) -> Option<usize> {
        wire::relative_len(name, &self.origin)
    }

    /// Answers a query whose name is in the zone (`rel` from
    /// [`Zone::relative_len`]). Writes the whole response except `finish`.
    pub fn answer(&self, q: &Query<'_>, rel: usize, w: &mut Writer<'_>) -> ZoneAnswer {
        w.set_authoritative(true);
        let key = &q.name.wire()[..rel];
        let outcome = match self.names.get(key) {
            Some(node) => self.answer_node(q, *node, w),
            None => self.answer_synthesized(q, key, w),
        };
        match outcome {
            Outcome::Records => ZoneAnswer::Done,
            Outcome::NoData => {
                self.negative(q, rel, w, rcode::NOERROR);
                ZoneAnswer::Done
            }
            Outcome::NxDomain => {
                self.negative(q, rel, w, u16::from(rcode::NXDOMAIN));
                ZoneAnswer::Done
            }
            Outcome::Chase(target) => ZoneAnswer::Chase(target),
        }
    }

    fn negative(&self, q: &Query<'_>, rel: usize, w: &mut Writer<'_>, code: impl Into<u16>) {
        w.set_rcode(code.into());
        w.section(AUTHORITY);
        self.soa(w, Owner::Pointer((wire::HEADER_LEN + rel) as u16));
        let _ = q;
    }

    fn soa(&self, w: &mut Writer<'_>, owner: Owner<'_>) {
        let (mname, rname, serial, ttl) = (&self.mname, &self.rname, self.serial, self.ttl);
        w.record(owner, rtype::SOA, ttl.min(300), |o| {
            o.extend_from_slice(mname);
            o.extend_from_slice(rname);
            for v in [serial, 7200, 1800, 86400, ttl] {
                o.extend_from_slice(&v.to_be_bytes());
            }
        });
    }

    fn answer_node(&self, q: &Query<'_>, node: Node, w: &mut Writer<'_>) -> Outcome {
        let ttl = self.ttl;
        match node {
            Node::Apex => {
                let mut any = false;
                if matches!(q.qtype, rtype::SOA | rtype::ANY) {
                    self.soa(w, Owner::Question);
                    any = true;
                }
                if matches!(q.qtype, rtype::NS | rtype::ANY) {
                    w.name_record(Owner::Question, rtype::NS, ttl, None, &self.mname);
                    w.section(wire::ADDITIONAL);
                    for ip in &self.kube_dns {
                        addr(w, Owner::Name(&self.mname), ttl, *ip);
                    }
                    any = true;
                }
                if any {
                    Outcome::Records
                } else {
                    Outcome::NoData
                }
            }
            Node::Empty => Outcome::NoData,
            Node::DnsVersion => {
                if matches!(q.qtype, rtype::TXT | rtype::ANY) {
                    w.txt(Owner::Question, ttl, SCHEMA_VERSION.as_bytes());
                    Outcome::Records
                } else {
                    Outcome::NoData
                }
            }
            Node::NsDns => self.addresses(q, w, self.kube_dns.iter().copied()),
            Node::Service(id) => self.answer_service(q, &self.services[id as usize], w),
            Node::Srv(id, port) => {
                if !matches!(q.qtype, rtype::SRV | rtype::ANY) {
                    return Outcome::NoData;
                }
                let svc = &self.services[id as usize];
                self.srv_records(q, svc, std::slice::from_ref(&svc.ports[port as usize]), w)
            }
        }
    }

    fn addresses(
        &self,
        q: &Query<'_>,
        w: &mut Writer<'_>,
        ips: impl Iterator<Item = IpAddr> + Clone,
    ) -> Outcome {
        let matching = ips.clone().filter(|ip| family_matches(ip, q.qtype)).count();
        if matching == 0 {
            return Outcome::NoData;
        }
        // Rotate by query ID, like CoreDNS's loadbalance.
        let start = usize::from(q.id) % matching;
        let ordered = ips.filter(|ip| family_matches(ip, q.qtype));
        for ip in ordered.clone().skip(start).chain(ordered.take(start)) {
            addr(w, Owner::Question, self.ttl, ip);
        }
        Outcome::Records
    }

    fn answer_service(&self, q: &Query<'_>, svc: &Svc, w: &mut Writer<'_>) -> Outcome {
        match &svc.kind {
            SvcKind::External(target) => {
                w.name_record(Owner::Question, rtype::CNAME, self.ttl, None, target);
                if matches!(q.qtype, rtype::CNAME) {
                    return Outcome::Records;
                }
                self.chase(q, target, w)
            }
            _ if q.qtype == rtype::SRV => self.srv_records(q, svc, &svc.ports, w),
            SvcKind::ClusterIp(ips) => self.addresses(q, w, ips.iter().copied()),
            SvcKind::Headless => self.addresses(q, w, svc.endpoints.iter().map(|e| e.ip)),
        }
    }

    /// Follows a CNAME target: inside the zone it is answered from the
    /// tables (one level: a Service or ns.dns name); outside it the caller
    /// resolves it.
    fn chase(&self, q: &Query<'_>, target: &[u8], w: &mut Writer<'_>) -> Outcome {
        let Some(rel) = self.relative_len(target) else {
            return Outcome::Chase(target.to_vec());
        };
        let ips: Vec<IpAddr> = match self.names.get(&target[..rel]) {
            Some(Node::Service(id)) => match &self.services[*id as usize].kind {
                SvcKind::ClusterIp(ips) => ips.to_vec(),
                SvcKind::Headless => self.services[*id as usize]
                    .endpoints
                    .iter()
                    .map(|e| e.ip)
                    .collect(),
                SvcKind::External(_) => Vec::new(),
            },
            Some(Node::NsDns) => self.kube_dns.clone(),
            _ => Vec::new(),
        };
        for ip in ips.into_iter().filter(|ip| family_matches(ip, q.qtype)) {
            addr(w, Owner::Name(target), self.ttl, ip);
        }
        Outcome::Records
    }

    fn srv_records(&self, q: &Query<'_>, svc: &Svc, ports: &[Port], w: &mut Writer<'_>) -> Outcome {
        let ttl = self.ttl;
        let mut host = String::new();
        match &svc.kind {
            SvcKind::ClusterIp(ips) => {
                if ports.is_empty() {
                    return Outcome::NoData;
                }
                for port in ports {
                    w.srv(Owner::Question, ttl, 0, 100, port.port, None, &svc.name);
                }
                w.section(wire::ADDITIONAL);
                for ip in ips.iter() {
                    addr(w, Owner::Name(&svc.name), ttl, *ip);
                }
            }
            SvcKind::Headless => {
                if ports.is_empty() || svc.endpoints.is_empty() {
                    return Outcome::NoData;
                }
                let weight = (100 / svc.endpoints.len()).max(1) as u16;
                for port in ports {
                    for ep in svc.endpoints.iter() {
                        let label = endpoint_label(ep, &mut host);
                        w.srv(
                            Owner::Question,
                            ttl,
                            0,
                            weight,
                            port.endpoint_port,
                            Some(label),
                            &svc.name,
                        );
                    }
                }
                w.section(wire::ADDITIONAL);
                for ep in svc.endpoints.iter() {
                    let label = endpoint_label(ep, &mut host);
                    addr(w, Owner::Prefixed(label, &svc.name), ttl, ep.ip);
                }
            }
            SvcKind::External(_) => return Outcome::NoData,
        }
        let _ = q;
        Outcome::Records
    }

    fn answer_synthesized(&self, q: &Query<'_>, key: &[u8], w: &mut Writer<'_>) -> Outcome {
        let labels: Vec<&[u8]> = wire::labels(key).collect();
        match labels.as_slice() {
            // <hostname>.<svc>.<ns>.svc
            [host, _, _, b"svc"] => {
                let parent = &key[1 + host.len()..];
                let Some(Node::Service(id)) = self.names.get(parent) else {
                    return Outcome::NxDomain;
                };
                let svc = &self.services[*id as usize];
                let mut buf = String::new();
                let matching: Vec<IpAddr> = svc
                    .endpoints
                    .iter()
                    .filter(|ep| endpoint_label(ep, &mut buf) == *host)
                    .map(|ep| ep.ip)
                    .collect();
                if matching.is_empty() {
                    return Outcome::NxDomain;
                }
                self.addresses(q, w, matching.into_iter())
            }
            // <a-b-c-d>.<ns>.pod
            [label, ns, b"pod"] => {
                if self.pods == PodMode::Disabled {
                    return Outcome::NxDomain;
                }
                let Some(&ns_id) = self.namespaces.get(*ns) else {
                    return Outcome::NxDomain;
                };
                let Some(ip) = pod_label_ip(label) else {
                    return Outcome::NxDomain;
                };
                if self.pods == PodMode::Verified {
                    let key = (ip_key(ip).0, ns_id);
                    if self.pod_ips.binary_search(&key).is_err() {
                        return Outcome::NxDomain;
                    }
                }
                self.addresses(q, w, std::iter::once(ip))
            }
            _ => Outcome::NxDomain,
        }
    }

    /// Answers a PTR query for a Service or ready endpoint address; false
    /// (nothing written) when the address is not the cluster's.
    pub fn answer_reverse(&self, q: &Query<'_>, w: &mut Writer<'_>) -> bool {
        let Some(ip) = reverse_name_ip(q.name.wire()) else {
            return false;
        };
        let (key, v6) = ip_key(ip);
        let start = self.reverse.partition_point(|r| (r.ip, r.v6) < (key, v6));
        let entries = self.reverse[start..]
            .iter()
            .take_while(|r| r.ip == key && r.v6 == v6);
        let mut any = false;
        let mut host = String::new();
        for r in entries.clone() {
            if !any {
                w.set_authoritative(true);
                any = true;
                if !matches!(q.qtype, rtype::PTR | rtype::ANY) {
                    break;
                }
            }
            let svc = &self.services[r.service as usize];
            if r.endpoint == u32::MAX {
                w.name_record(Owner::Question, rtype::PTR, self.ttl, None, &svc.name);
            } else {
                let label = endpoint_label(&svc.endpoints[r.endpoint as usize], &mut host);
                w.name_record(
                    Owner::Question,
                    rtype::PTR,
                    self.ttl,
                    Some(label),
                    &svc.name,
                );
            }
        }
        any
    }
}

/// The endpoint's label: its hostname, or its dashed IP.
fn endpoint_label<'a>(ep: &'a Endpoint, buf: &'a mut String) -> &'a [u8] {
    match &ep.hostname {
        Some(h) => h,
        None => {
            dashed_ip(ep.ip, buf);
            buf.as_bytes()
        }
    }
}

enum Outcome {
    Records,
    NoData,
    NxDomain,
    Chase(Vec<u8>),
}

impl std::fmt::Display for Zone {
    /// The zone as a zone file (sorted), what `podwire dns plan` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = wire::name_to_text(&self.origin);
        let ttl = self.ttl;
        writeln!(f, "$ORIGIN {origin}")?;
        writeln!(f, "$TTL {ttl}")?;
        writeln!(
            f,
            "{origin} {} IN SOA {} {} {} 7200 1800 86400 {ttl}",
            ttl.min(300),
            wire::name_to_text(&self.mname),
            wire::name_to_text(&self.rname),
            self.serial
        )?;
        writeln!(
            f,
            "{origin} {ttl} IN NS {}",
            wire::name_to_text(&self.mname)
        )?;
        for ip in &self.kube_dns {
            writeln!(
                f,
                "{} {ttl} IN {} {ip}",
                wire::name_to_text(&self.mname),
                rr_type(ip)
            )?;
        }
        writeln!(f, "dns-version.{origin} {ttl} IN TXT \"{SCHEMA_VERSION}\"")?;
        let mut lines: Vec<String> = Vec::new();
        let mut host = String::new();
        for svc in &self.services {
            let name = wire::name_to_text(&svc.name);
            match &svc.kind {
                SvcKind::ClusterIp(ips) => {
                    for ip in ips.iter() {
                        lines.push(format!("{name} {ttl} IN {} {ip}", rr_type(ip)));
                    }
                }
                SvcKind::Headless => {
                    for ep in svc.endpoints.iter() {
                        lines.push(format!("{name} {ttl} IN {} {}", rr_type(&ep.ip), ep.ip));
                    }
                }
                SvcKind::External(target) => {
                    lines.push(format!(
                        "{name} {ttl} IN CNAME {}",
                        wire::name_to_text(target)
                    ));
                }
            }
            for ep in svc.endpoints.iter() {
                let label = String::from_utf8_lossy(endpoint_label(ep, &mut host)).into_owned();
                lines.push(format!(
                    "{label}.{name} {ttl} IN {} {}",
                    rr_type(&ep.ip),
                    ep.ip
                ));
            }
            for port in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                let owner = format!("_{}._{}.{name}", port.name, port.protocol);
                match &svc.kind {
                    SvcKind::ClusterIp(_) => {
                        lines.push(format!("{owner} {ttl} IN SRV 0 100 {} {name}", port.port))
                    }
                    SvcKind::Headless => {
                        let weight = (100 / svc.endpoints.len().max(1)).max(1);
                        for ep in svc.endpoints.iter() {
                            let label =
                                String::from_utf8_lossy(endpoint_label(ep, &mut host)).into_owned();
                            lines.push(format!(
                                "{owner} {ttl} IN SRV 0 {weight} {} {label}.{name}",
                                port.endpoint_port
                            ));
                        }
                    }
                    SvcKind::External(_) => {}
                }
            }
        }
        for r in &self.reverse {
            let ip = if r.v6 {
                IpAddr::V6(Ipv6Addr::from(r.ip))
            } else {
                IpAddr::V4(Ipv4Addr::from(r.ip as u32))
            };
            let svc = &self.services[r.service as usize];
            let name = wire::name_to_text(&svc.name);
            let target = if r.endpoint == u32::MAX {
                name
            } else {
                let label = String::from_utf8_lossy(endpoint_label(
                    &svc.endpoints[r.endpoint as usize],
                    &mut host,
                ))
                .into_owned();
                format!("{label}.{name}")
            };
            lines.push(format!("{} {ttl} IN PTR {target}", reverse_name(ip)));
        }
        match self.pods {
            PodMode::Disabled => lines.push("; pod records: disabled".into()),
            PodMode::Insecure => lines.push(format!(
                "; pod records (insecure): <a-b-c-d>.<namespace>.pod.{origin} for every namespace: {}",
                self.namespace_list()
            )),
            PodMode::Verified => {
                let names: FxHashMap<u32, &[u8]> =
                    self.namespaces.iter().map(|(n, id)| (*id, &n[..])).collect();
                for (ip, ns) in &self.pod_ips {
                    let ip = if *ip > u128::from(u32::MAX) {
                        IpAddr::V6(Ipv6Addr::from(*ip))
                    } else {
                        IpAddr::V4(Ipv4Addr::from(*ip as u32))
                    };
                    dashed_ip(ip, &mut host);
                    let ns = String::from_utf8_lossy(names.get(ns).copied().unwrap_or_default());
                    lines.push(format!("{host}.{ns}.pod.{origin} {ttl} IN {} {ip}", rr_type(&ip)));
                }
            }
        }
        lines.sort();
        lines.dedup();
        // Comments last.
        lines.sort_by_key(|l| l.starts_with(';'));
        for line in lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

impl Zone {
    fn namespace_list(&self) -> String {
        let mut names: Vec<String> = self
            .namespaces
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect();
        names.sort();
        names.join(", ")
    }

    /// Namespaces known to the zone (lowercase).
    pub fn namespace_names(&self) -> FxHashSet<String> {
        self.namespaces
            .keys()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect()
    }
}

fn rr_type(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "A" } else { "AAAA" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels() {
        assert_eq!(
            pod_label_ip(b"10-244-1-5"),
            Some("10.244.1.5".parse().unwrap())
        );
        assert_eq!(pod_label_ip(b"fd00--5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(pod_label_ip(b"10-244-1"), None);
        assert_eq!(pod_label_ip(b"10-244-1-500"), None);
        assert_eq!(pod_label_ip(b"web"), None);
        assert_eq!(pod_label_ip(b"\xff"), None);
    }

    #[test]
    fn dashes() {
        let mut s = String::new();
        dashed_ip("10.244.1.5".parse().unwrap(), &mut s);
        assert_eq!(s, "10-244-1-5");
        dashed_ip("fd00::".parse().unwrap(), &mut s);
        assert_eq!(s, "fd00--0");
        dashed_ip("fd00::1:2".parse().unwrap(), &mut s);
        assert_eq!(s, "fd00--1-2");
    }

    #[test]
    fn reverse_names_round_trip() {
        for text in ["10.96.0.10", "1.2.3.4", "fd00:10:96::a", "::1"] {
            let ip: IpAddr = text.parse().unwrap();
            let name = reverse_name(ip);
            let wire = crate::wire::wire_from_text(&name).unwrap();
            assert_eq!(reverse_name_ip(&wire), Some(ip), "{name}");
        }
        assert_eq!(
            reverse_name("10.96.0.10".parse().unwrap()),
            "10.0.96.10.in-addr.arpa."
        );
        let partial = crate::wire::wire_from_text("96.10.in-addr.arpa").unwrap();
        assert_eq!(reverse_name_ip(&partial), None);
        let leading_zero = crate::wire::wire_from_text("010.0.96.10.in-addr.arpa").unwrap();
        assert_eq!(reverse_name_ip(&leading_zero), None);
        let bad_nibble =
            crate::wire::wire_from_text(&format!("{}ip6.arpa", "g.".repeat(32))).unwrap();
        assert_eq!(reverse_name_ip(&bad_nibble), None);
    }

    #[test]
    fn pod_modes_parse() {
        assert_eq!("verified".parse::<PodMode>(), Ok(PodMode::Verified));
        assert!("bogus".parse::<PodMode>().unwrap_err().contains("insecure"));
    }
}

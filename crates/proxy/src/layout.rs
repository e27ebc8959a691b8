//! The nftables layout of the service proxy: one table, `inet
//! podwire-proxy`, whose few fixed chains look packets up in maps. Every
//! Service, port, endpoint and node port is a map ELEMENT (sent over
//! netlink in one transaction per sync); chains exist per distinct
//! endpoint count `N`, never per Service. This module is pure: it names the
//! sets and chains, types their elements and writes the `nft -f` text of
//! the structure.
//!
//! Packet path (IPv4; IPv6 is the same with `6` sets and `ip6`):
//!
//! ```text
//! nat prerouting/output (dstnat) -> services:
//!   ip daddr <service CIDR> ip saddr != <pod CIDR>  mark 0x4000    ClusterIP from outside the pods: masquerade
//!   ip daddr . l4proto . dport  vmap @svc4       ClusterIP      -> goto lb4-N (or lb4-local-N for internalTrafficPolicy Local)
//!   ip saddr <pod CIDR> ... vmap @extpod4        externalIP/LB of Local-policy services from pods -> cluster endpoints
//!   fib saddr type local ... vmap @extlocal4      ... from the node itself -> masquerade + cluster endpoints
//!   ip daddr . l4proto . dport  vmap @ext4       externalIP/LB: Cluster -> lb4-N-masq, Local -> lb4-local-N
//!   fib daddr type local jump nodeports          the same three steps with (l4proto . dport) keys: np4*, npep4
//! lb4-N:        ct mark set numgen random mod N
//!               dnat ip to ip daddr . l4proto . dport . ct mark map @ep4
//! lb4-local-N:  the same with `offset 65536` (local endpoints are stored at index 65536+i)
//! lb4-N-masq:   meta mark |= 0x4000; goto lb4-N
//! lb4-N-aff<T>: ct mark set numgen random mod N
//!               update @aff4 { saddr . daddr . l4proto . dport timeout T : ct mark }  (kept if present)
//!               ct mark set <that key> map @aff4; dnat as lb4-N
//! filter prerouting/output (-110): ct state new, LB IP with sourceRanges and saddr not allowed -> drop
//! filter input/forward/output (-5): ct state new, @noep4 / @noepnp4 -> reject (no endpoints) or drop
//!                                   (Local policy, none on this node)
//! nat postrouting (srcnat-5): hairpin (saddr . daddr in @hairpin4) or mark 0x4000 -> masquerade
//! ```

use std::collections::BTreeSet;
use std::fmt::{self, Write};
use std::net::IpAddr;

use ipnet::IpNet;

/// The table's family and name.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE: &str = "podwire-proxy";
/// The packet mark bit asking postrouting to masquerade (kube-proxy's).
pub const MASQ_MARK: u32 = 0x4000;
/// Endpoint indices of a node-local list start here (`numgen ... offset`).
pub const LOCAL_OFFSET: u32 = 65536;
/// kube-proxy's default sessionAffinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// Affinity entries the kernel may hold per family.
pub const AFFINITY_SIZE: u32 = 1 << 20;

/// Address family of a set or chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fam {
    V4,
    V6,
}

impl Fam {
    pub fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }
    pub fn of_net(net: &IpNet) -> Fam {
        match net {
            IpNet::V4(_) => Fam::V4,
            IpNet::V6(_) => Fam::V6,
        }
    }
    /// "4" or "6", the suffix of set and chain names.
    pub fn digit(self) -> char {
        match self {
            Fam::V4 => '4',
            Fam::V6 => '6',
        }
    }
    /// The nft payload keyword: `ip` or `ip6`.
    pub fn ip(self) -> &'static str {
        match self {
            Fam::V4 => "ip",
            Fam::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4_addr",
            Fam::V6 => "ipv6_addr",
        }
    }
    fn nfproto(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }
    pub const ALL: [Fam; 2] = [Fam::V4, Fam::V6];
}

/// The sets and maps of the table whose elements the proxy owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// ClusterIP . proto . port -> verdict.
    Services,
    /// externalIP/LB IP . proto . port -> verdict.
    External,
    /// Local-policy external keys, for sources in the pod range.
    ExternalPods,
    /// Local-policy external keys, for sources on the node itself.
    ExternalLocal,
    /// proto . nodePort -> verdict.
    NodePorts,
    NodePortsPods,
    NodePortsLocal,
    /// daddr . proto . port . index -> endpoint ip . port.
    Endpoints,
    /// proto . nodePort . index -> endpoint.
    NodePortEndpoints,
    /// daddr . proto . port -> reject/drop when nothing can serve.
    NoEndpoints,
    NoEndpointNodePorts,
    /// endpoint . endpoint: a local pod reaching itself.
    Hairpin,
    /// LB IP . proto . port with loadBalancerSourceRanges.
    Firewall,
    /// LB IP . proto . port . allowed source range.
    FirewallAllow,
}

impl SetKind {
    pub const ALL: [SetKind; 14] = [
        SetKind::Services,
        SetKind::External,
        SetKind::ExternalPods,
        SetKind::ExternalLocal,
        SetKind::NodePorts,
        SetKind::NodePortsPods,
        SetKind::NodePortsLocal,
        SetKind::Endpoints,
        SetKind::NodePortEndpoints,
        SetKind::NoEndpoints,
        SetKind::NoEndpointNodePorts,
        SetKind::Hairpin,
        SetKind::Firewall,
        SetKind::FirewallAllow,
    ];

    fn base(self) -> &'static str {
        match self {
            SetKind::Services => "svc",
            SetKind::External => "ext",
            SetKind::ExternalPods => "extpod",
            SetKind::ExternalLocal => "extlocal",
            SetKind::NodePorts => "np",
            SetKind::NodePortsPods => "nppod",
            SetKind::NodePortsLocal => "nplocal",
            SetKind::Endpoints => "ep",
            SetKind::NodePortEndpoints => "npep",
            SetKind::NoEndpoints => "noep",
            SetKind::NoEndpointNodePorts => "noepnp",
            SetKind::Hairpin => "hairpin",
            SetKind::Firewall => "fw",
            SetKind::FirewallAllow => "fwallow",
        }
    }

    /// The nft declaration body (without braces) for a family.
    fn declaration(self, fam: Fam) -> String {
        let a = fam.addr_type();
        match self {
            SetKind::Services
            | SetKind::External
            | SetKind::ExternalPods
            | SetKind::ExternalLocal
            | SetKind::NoEndpoints => {
                format!("type {a} . inet_proto . inet_service : verdict;")
            }
            SetKind::NodePorts
            | SetKind::NodePortsPods
            | SetKind::NodePortsLocal
            | SetKind::NoEndpointNodePorts => "type inet_proto . inet_service : verdict;".into(),
            // `type`, not `typeof`: nft 1.0.6 cannot read back a typeof
            // whose data concatenates an address with a transport field
            // ("conflicting protocols"), which breaks every later `nft -f`.
            SetKind::Endpoints => {
                format!("type {a} . inet_proto . inet_service . mark : {a} . inet_service;")
            }
            SetKind::NodePortEndpoints => {
                format!("type inet_proto . inet_service . mark : {a} . inet_service;")
            }
            SetKind::Hairpin => format!("type {a} . {a};"),
            SetKind::Firewall => format!("type {a} . inet_proto . inet_service;"),
            SetKind::FirewallAllow => {
                format!("type {a} . inet_proto . inet_service . {a}; flags interval;")
            }
        }
    }

    /// Whether the declaration is `map` (else `set`).
    fn is_map(self) -> bool {
        !matches!(
            self,
            SetKind::Hairpin | SetKind::Firewall | SetKind::FirewallAllow
        )
    }
}

/// One owned set of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetId {
    pub kind: SetKind,
    pub fam: Fam,
}

impl SetId {
    pub fn new(kind: SetKind, fam: Fam) -> SetId {
        SetId { kind, fam }
    }
    pub fn name(self) -> String {
        format!("{}{}", self.kind.base(), self.fam.digit())
    }
    /// Every owned set, in declaration order.
    pub fn all() -> impl Iterator<Item = SetId> {
        Fam::ALL.into_iter().flat_map(|fam| {
            SetKind::ALL
                .into_iter()
                .map(move |kind| SetId { kind, fam })
        })
    }
}

/// The name of the dynamic affinity map of a family (filled by the kernel).
pub fn affinity_set(fam: Fam) -> String {
    format!("aff{}", fam.digit())
}

/// A load-balancing chain: the only chains that depend on the Services,
/// one per distinct (family, kind, endpoint count, affinity timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LbChain {
    pub fam: Fam,
    /// Keyed by (proto . nodePort) instead of (daddr . proto . port).
    pub nodeport: bool,
    /// Picks among the node-local list (indices from [`LOCAL_OFFSET`]).
    pub local: bool,
    /// Sets the masquerade mark, then goes to the same chain without it.
    pub masq: bool,
    /// Number of endpoints to pick from (>= 1).
    pub n: u32,
    /// sessionAffinity ClientIP timeout in seconds.
    pub affinity: Option<u32>,
}

impl LbChain {
    pub fn name(&self) -> String {
        let mut s = format!(
            "{}{}-{}{}",
            if self.nodeport { "np" } else { "lb" },
            self.fam.digit(),
            if self.local { "local-" } else { "" },
            self.n
        );
        if let Some(t) = self.affinity {
            let _ = write!(s, "-aff{t}");
        }
        if self.masq {
            s.push_str("-masq");
        }
        s
    }

    /// Whether a chain name belongs to this family of generated chains.
    pub fn is_generated_name(name: &str) -> bool {
        (name.starts_with("lb") || name.starts_with("np"))
            && name.len() > 3
            && matches!(&name[2..3], "4" | "6")
            && name.as_bytes().get(3) == Some(&b'-')
    }

    /// The chain without the masquerade step.
    pub fn unmasked(&self) -> LbChain {
        LbChain {
            masq: false,
            ..*self
        }
    }

    fn body(&self) -> Vec<String> {
        if self.masq {
            return vec![
                format!("meta mark set meta mark | {MASQ_MARK:#x}"),
                format!("goto {}", self.unmasked().name()),
            ];
        }
        let ip = self.fam.ip();
        let d = self.fam.digit();
        let offset = if self.local {
            format!(" offset {LOCAL_OFFSET}")
        } else {
            String::new()
        };
        let (key, ep) = if self.nodeport {
            ("meta l4proto . th dport".to_string(), format!("npep{d}"))
        } else {
            (
                format!("{ip} daddr . meta l4proto . th dport"),
                format!("ep{d}"),
            )
        };
        let n = self.n;
        // The endpoint's index goes through the conntrack mark: the map
        // can then be declared with plain types (see SetKind::declaration)
        // and affinity can store and restore it.
        let dnat = format!("dnat {ip} to {key} . ct mark map @{ep}");
        let random = format!("ct mark set numgen random mod {n}{offset}");
        match self.affinity {
            None => vec![random, dnat],
            // nft 1.0.6 aborts encoding a dynamic-set update with an IPv6
            // key, so IPv6 affinity hashes the client address: a client
            // keeps its endpoint while the endpoint list is unchanged (no
            // timeout).
            Some(_) if self.fam == Fam::V6 => vec![
                format!("ct mark set jhash {ip} saddr mod {n} seed 0x70647772{offset}"),
                dnat,
            ],
            Some(t) => {
                let client = format!("{ip} saddr . {ip} daddr . meta l4proto . th dport");
                vec![
                    random,
                    format!("update @aff{d} {{ {client} timeout {t}s : ct mark }}"),
                    format!("ct mark set {client} map @aff{d}"),
                    dnat,
                ]
            }
        }
    }
}

/// Cluster-wide settings the structure depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StructureOptions {
    /// The cluster's pod ranges (masquerade and short-circuit decisions).
    pub pod_cidrs: Vec<IpNet>,
    /// The service ranges (ClusterIPs live there).
    pub service_cidrs: Vec<IpNet>,
    /// Serve node ports on 127.0.0.1 too.
    pub localhost_nodeports: bool,
}

fn cidr_list(nets: &[IpNet], fam: Fam) -> Option<String> {
    let items: Vec<String> = nets
        .iter()
        .filter(|n| Fam::of_net(n) == fam)
        .map(|n| n.trunc().to_string())
        .collect();
    match items.len() {
        0 => None,
        1 => Some(items[0].clone()),
        _ => Some(format!("{{ {} }}", items.join(", "))),
    }
}

/// The fixed chains and their rules (name, hook line or None, rules).
fn fixed_chains(opts: &StructureOptions) -> Vec<(&'static str, Option<&'static str>, Vec<String>)> {
    let mut services = Vec::new();
    let mut nodeports = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut nodeport_check = Vec::new();
    let mut firewall = Vec::new();
    let mut post = Vec::new();
    if !opts.localhost_nodeports {
        nodeports.push("ip daddr 127.0.0.0/8 return".to_string());
        nodeport_check.push("ip daddr 127.0.0.0/8 return".to_string());
    }
    nodeports.push("ip6 daddr ::1 return".to_string());
    nodeport_check.push("ip6 daddr ::1 return".to_string());
    for fam in Fam::ALL {
        let ip = fam.ip();
        let d = fam.digit();
        let nf = fam.nfproto();
        let key = format!("{ip} daddr . meta l4proto . th dport");
        let pods = cidr_list(&opts.pod_cidrs, fam);
        if let (Some(svc), Some(pods)) = (cidr_list(&opts.service_cidrs, fam), &pods) {
            services.push(format!(
                "{ip} daddr {svc} {ip} saddr != {pods} meta mark set meta mark | {MASQ_MARK:#x} comment \"ClusterIP from outside the pod range: masquerade\""
            ));
        }
        services.push(format!("{key} vmap @svc{d}"));
        if let Some(pods) = &pods {
            services.push(format!("{ip} saddr {pods} {key} vmap @extpod{d}"));
            nodeports.push(format!(
                "{ip} saddr {pods} meta l4proto . th dport vmap @nppod{d}"
            ));
        }
        services.push(format!("fib saddr type local {key} vmap @extlocal{d}"));
        services.push(format!("{key} vmap @ext{d}"));
        nodeports.push(format!(
            "meta nfproto {nf} fib saddr type local meta l4proto . th dport vmap @nplocal{d}"
        ));
        nodeports.push(format!(
            "meta nfproto {nf} meta l4proto . th dport vmap @np{d}"
        ));
        endpoints_check.push(format!("{key} vmap @noep{d}"));
        nodeport_check.push(format!(
            "meta nfproto {nf} meta l4proto . th dport vmap @noepnp{d}"
        ));
        firewall.push(format!(
            "{key} @fw{d} {key} . {ip} saddr != @fwallow{d} drop comment \"loadBalancerSourceRanges\""
        ));
        post.push(format!(
            "ct status dnat {ip} saddr . {ip} daddr @hairpin{d} masquerade comment \"hairpin\""
        ));
    }
    services.push("fib daddr type local jump nodeports".into());
    endpoints_check.push("fib daddr type local jump nodeport-check".into());
    post.push(format!("meta mark & {MASQ_MARK:#x} == 0 return"));
    post.push(format!(
        "meta mark set meta mark ^ {MASQ_MARK:#x} masquerade fully-random"
    ));
    vec![
        ("services", None, services),
        ("nodeports", None, nodeports),
        ("endpoints-check", None, endpoints_check),
        ("nodeport-check", None, nodeport_check),
        ("firewall-check", None, firewall),
        (
            "reject-chain",
            None,
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
        (
            "nat-prerouting",
            Some("type nat hook prerouting priority dstnat; policy accept;"),
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            Some("type nat hook output priority -100; policy accept;"),
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority srcnat - 5; policy accept;"),
            post,
        ),
        (
            "filter-prerouting",
            Some("type filter hook prerouting priority -110; policy accept;"),
            vec!["ct state new jump firewall-check".into()],
        ),
        (
            "filter-output-pre",
            Some("type filter hook output priority -110; policy accept;"),
            vec!["ct state new jump firewall-check".into()],
        ),
        (
            "filter-input",
            Some("type filter hook input priority -5; policy accept;"),
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-forward",
            Some("type filter hook forward priority -5; policy accept;"),
            vec!["ct state new jump endpoints-check".into()],
        ),
        (
            "filter-output",
            Some("type filter hook output priority -5; policy accept;"),
            vec!["ct state new jump endpoints-check".into()],
        ),
    ]
}

/// The `nft -f` script that makes the table's structure exactly this,
/// in ONE transaction, without touching any set's elements: declarations
/// are idempotent `add`s, and every chain is flushed and refilled, so the
/// same script creates the table from nothing, updates it in place, and
/// puts back whatever someone deleted. Load-balancing chains no longer
/// needed are not deleted here (elements may still name them); see
/// [`LbChain::is_generated_name`].
pub fn structure_script(opts: &StructureOptions, chains: &BTreeSet<LbChain>) -> String {
    let mut out = String::new();
    let t = format!("{TABLE_FAMILY} {TABLE}");
    let _ = writeln!(out, "table {t} {{");
    let _ = writeln!(
        out,
        "\tcomment \"podwire service proxy: elements are managed by podwire agent\""
    );
    for set in SetId::all() {
        let _ = writeln!(
            out,
            "\t{} {} {{ {} }}",
            if set.kind.is_map() { "map" } else { "set" },
            set.name(),
            set.kind.declaration(set.fam)
        );
    }
    let _ = writeln!(
        out,
        "\tmap {} {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service : mark; size {AFFINITY_SIZE}; flags dynamic,timeout; timeout {DEFAULT_AFFINITY_TIMEOUT}s; }}",
        affinity_set(Fam::V4)
    );
    let fixed = fixed_chains(opts);
    for (name, hook, _) in &fixed {
        match hook {
            Some(h) => {
                let _ = writeln!(out, "\tchain {name} {{ {h} }}");
            }
            None => {
                let _ = writeln!(out, "\tchain {name} {{ }}");
            }
        }
    }
    for chain in chains {
        let _ = writeln!(out, "\tchain {} {{ }}", chain.name());
    }
    let _ = writeln!(out, "}}");
    // Flush and refill, target chains first so jumps always resolve.
    let mut bodies: Vec<(String, Vec<String>)> =
        chains.iter().map(|c| (c.name(), c.body())).collect();
    bodies.extend(
        fixed
            .into_iter()
            .map(|(name, _, rules)| (name.to_string(), rules)),
    );
    for (name, _) in &bodies {
        let _ = writeln!(out, "flush chain {t} {name}");
    }
    let _ = writeln!(out, "table {t} {{");
    for (name, rules) in &bodies {
        let _ = writeln!(out, "\tchain {name} {{");
        for rule in rules {
            let _ = writeln!(out, "\t\t{rule}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// Number of rules the structure holds (for metrics).
pub fn rule_count(opts: &StructureOptions, chains: &BTreeSet<LbChain>) -> usize {
    fixed_chains(opts)
        .iter()
        .map(|(_, _, r)| r.len())
        .sum::<usize>()
        + chains.iter().map(|c| c.body().len()).sum::<usize>()
}

/// The script that removes the table (idempotent): only for `--cleanup`;
/// the agent never removes it on exit, so traffic keeps flowing while it
/// restarts.
pub fn delete_script() -> String {
    format!("table {TABLE_FAMILY} {TABLE} {{}}\ndelete table {TABLE_FAMILY} {TABLE}\n")
}

/// One field of an element key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Datum {
    Addr(IpAddr),
    Proto(u8),
    Port(u16),
    /// A numgen/ct mark index (host byte order).
    Index(u32),
    /// A range (interval sets): encoded as [first, last].
    Net(IpNet),
}

impl fmt::Display for Datum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Datum::Addr(a) => write!(f, "{a}"),
            Datum::Proto(p) => f.write_str(proto_name(*p)),
            Datum::Port(p) => write!(f, "{p}"),
            Datum::Index(i) => write!(f, "{i}"),
            Datum::Net(n) => write!(f, "{}", n.trunc()),
        }
    }
}

/// The nft name of an IP protocol number.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "unknown",
    }
}

/// What an element maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Value {
    /// A set element.
    None,
    /// An endpoint: DNAT target.
    Target(IpAddr, u16),
    Goto(LbChain),
    Drop,
    /// goto reject-chain.
    Reject,
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => Ok(()),
            Value::Target(ip, port) => write!(f, "{ip} . {port}"),
            Value::Goto(c) => write!(f, "goto {}", c.name()),
            Value::Drop => f.write_str("drop"),
            Value::Reject => f.write_str("goto reject-chain"),
        }
    }
}

/// One element of an owned set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ElemKey {
    pub set: SetId,
    pub key: Vec<Datum>,
}

impl ElemKey {
    pub fn new(set: SetId, key: Vec<Datum>) -> ElemKey {
        ElemKey { set, key }
    }
}

/// The `add element` line of one element (nft syntax).
pub fn element_line(key: &ElemKey, value: &Value) -> String {
    let k: Vec<String> = key.key.iter().map(ToString::to_string).collect();
    let k = k.join(" . ");
    match value {
        Value::None => format!(
            "add element {TABLE_FAMILY} {TABLE} {} {{ {k} }}",
            key.set.name()
        ),
        v => format!(
            "add element {TABLE_FAMILY} {TABLE} {} {{ {k} : {v} }}",
            key.set.name()
        ),
    }
}

fn encode_datum(d: &Datum, out: &mut Vec<u8>, end: &mut Vec<u8>) {
    match d {
        Datum::Addr(IpAddr::V4(a)) => {
            out.extend_from_slice(&a.octets());
            end.extend_from_slice(&a.octets());
        }
        Datum::Addr(IpAddr::V6(a)) => {
            out.extend_from_slice(&a.octets());
            end.extend_from_slice(&a.octets());
        }
        Datum::Proto(p) => {
            out.extend_from_slice(&[*p, 0, 0, 0]);
            end.extend_from_slice(&[*p, 0, 0, 0]);
        }
        Datum::Port(p) => {
            let b = p.to_be_bytes();
            out.extend_from_slice(&[b[0], b[1], 0, 0]);
            end.extend_from_slice(&[b[0], b[1], 0, 0]);
        }
        Datum::Index(i) => {
            out.extend_from_slice(&i.to_ne_bytes());
            end.extend_from_slice(&i.to_ne_bytes());
        }
        Datum::Net(IpNet::V4(n)) => {
            out.extend_from_slice(&n.network().octets());
            end.extend_from_slice(&n.broadcast().octets());
        }
        Datum::Net(IpNet::V6(n)) => {
            out.extend_from_slice(&n.network().octets());
            end.extend_from_slice(&n.broadcast().octets());
        }
    }
}

/// Encodes an element for [`podwire_kernel::nft::commit`]. Every key here
/// is a concatenation, so every field is padded to 4 bytes.
pub fn encode_element(key: &ElemKey, value: &Value) -> podwire_kernel::nft::Element {
    use podwire_kernel::nft::{Element, ElementData, Verdict};
    let mut k = Vec::with_capacity(24);
    let mut end = Vec::with_capacity(24);
    for d in &key.key {
        encode_datum(d, &mut k, &mut end);
    }
    let ranged = key.key.iter().any(|d| matches!(d, Datum::Net(_)));
    let data = match value {
        Value::None => ElementData::None,
        Value::Target(ip, port) => {
            let mut v = Vec::with_capacity(20);
            let mut scratch = Vec::new();
            encode_datum(&Datum::Addr(*ip), &mut v, &mut scratch);
            encode_datum(&Datum::Port(*port), &mut v, &mut scratch);
            ElementData::Value(v)
        }
        Value::Goto(c) => ElementData::Verdict(Verdict::Goto(c.name())),
        Value::Drop => ElementData::Verdict(Verdict::Drop),
        Value::Reject => ElementData::Verdict(Verdict::Goto("reject-chain".into())),
    };
    Element {
        key: k,
        key_end: ranged.then_some(end),
        data,
        comment: None,
        owner: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u32) -> LbChain {
        LbChain {
            fam: Fam::V4,
            nodeport: false,
            local: false,
            masq: false,
            n,
            affinity: None,
        }
    }

    #[test]
    fn chain_names_encode_everything_that_changes_the_body() {
        assert_eq!(chain(3).name(), "lb4-3");
        let c = LbChain {
            fam: Fam::V6,
            nodeport: true,
            local: true,
            masq: true,
            n: 2,
            affinity: Some(60),
        };
        assert_eq!(c.name(), "np6-local-2-aff60-masq");
        assert!(LbChain::is_generated_name(&c.name()));
        assert!(LbChain::is_generated_name("lb4-3"));
        assert!(!LbChain::is_generated_name("services"));
        assert!(!LbChain::is_generated_name("nodeports"));
        assert!(!LbChain::is_generated_name("nat-prerouting"));
        assert_eq!(
            c.body(),
            vec![
                "meta mark set meta mark | 0x4000".to_string(),
                "goto np6-local-2-aff60".into()
            ]
        );
    }

    #[test]
    fn balancing_rule_picks_one_of_n_and_local_lists_use_the_offset() {
        assert_eq!(
            chain(3).body(),
            vec![
                "ct mark set numgen random mod 3".to_string(),
                "dnat ip to ip daddr . meta l4proto . th dport . ct mark map @ep4".into()
            ]
        );
        let local = LbChain {
            local: true,
            ..chain(2)
        };
        assert_eq!(
            local.body()[0],
            "ct mark set numgen random mod 2 offset 65536"
        );
        let aff = LbChain {
            affinity: Some(30),
            ..chain(2)
        };
        let body = aff.body();
        assert_eq!(body[0], "ct mark set numgen random mod 2");
        assert_eq!(
            body[1],
            "update @aff4 { ip saddr . ip daddr . meta l4proto . th dport timeout 30s : ct mark }"
        );
        assert!(body[3].ends_with(". ct mark map @ep4"));
        let v6 = LbChain {
            fam: Fam::V6,
            affinity: Some(30),
            ..chain(2)
        };
        assert!(v6.body()[0].starts_with("ct mark set jhash ip6 saddr mod 2"));
    }

    #[test]
    fn structure_declares_every_set_and_only_generated_chains_vary() {
        let opts = StructureOptions {
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            localhost_nodeports: false,
        };
        let chains: BTreeSet<LbChain> = [chain(1), chain(3)].into();
        let text = structure_script(&opts, &chains);
        for set in SetId::all() {
            assert!(
                text.contains(&format!(" {} {{ ", set.name())),
                "{}",
                set.name()
            );
        }
        assert!(text.contains("map aff4 {"));
        assert!(text.contains("chain lb4-1 {"));
        assert!(text.contains("flush chain inet podwire-proxy lb4-3"));
        assert!(text.contains(
            "ip daddr 10.96.0.0/12 ip saddr != 10.244.0.0/16 meta mark set meta mark | 0x4000"
        ));
        assert!(text.contains("ip daddr 127.0.0.0/8 return"));
        // No IPv6 pod range known: no IPv6 ClusterIP masquerade rule, no
        // short-circuit from pods.
        assert_eq!(
            text.matches("ClusterIP from outside the pod range").count(),
            1
        );
        assert!(!text.contains("@extpod6"));
        // Never a delete: the script updates in place.
        assert!(!text.contains("delete"));
        let with_local = StructureOptions {
            localhost_nodeports: true,
            ..opts
        };
        assert!(!structure_script(&with_local, &chains).contains("ip daddr 127.0.0.0/8 return"));
    }

    #[test]
    fn elements_encode_like_nft() {
        // nft --debug=netlink: element 0100600a 00000006 00005000 00000001 : 0201f40a 0000901f
        let key = ElemKey::new(
            SetId::new(SetKind::Endpoints, Fam::V4),
            vec![
                Datum::Addr("10.96.0.1".parse().unwrap()),
                Datum::Proto(6),
                Datum::Port(80),
                Datum::Index(1),
            ],
        );
        let e = encode_element(&key, &Value::Target("10.244.1.2".parse().unwrap(), 8080));
        let mut want = vec![10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(e.key, want);
        assert_eq!(
            e.data,
            podwire_kernel::nft::ElementData::Value(vec![10, 244, 1, 2, 0x1f, 0x90, 0, 0])
        );
        assert_eq!(e.key_end, None);
        let range = ElemKey::new(
            SetId::new(SetKind::FirewallAllow, Fam::V4),
            vec![
                Datum::Addr("1.2.3.5".parse().unwrap()),
                Datum::Proto(6),
                Datum::Port(80),
                Datum::Net("10.0.0.0/8".parse().unwrap()),
            ],
        );
        let e = encode_element(&range, &Value::None);
        assert_eq!(&e.key[12..], &[10, 0, 0, 0]);
        assert_eq!(&e.key_end.as_ref().unwrap()[12..], &[10, 255, 255, 255]);
        assert_eq!(
            element_line(&range, &Value::None),
            "add element inet podwire-proxy fwallow4 { 1.2.3.5 . tcp . 80 . 10.0.0.0/8 }"
        );
    }
}

//! The `inet podwire-policy` table: its fixed structure (as `nft -f`
//! text), the per-policy drop chains, element encoding for netlink, and
//! the printable plan.
//!
//! ```text
//! chain forward  (filter hook forward, priority filter: after the proxy's DNAT
//!                 in prerouting, so it sees pod addresses after Service translation)
//!   ct state established,related accept      replies and admitted flows
//!   ip saddr vmap @egress4                   source isolated for egress -> jump eg-<policy>
//!   ip daddr vmap @ingress4                  destination isolated for ingress -> jump in-<policy>
//! chain eg-<policy> / in-<policy>            one per policy answering for a pod here
//!   <pod> . <peer> . l4proto . dport @egress_allow4 / @ingress_allow4  return
//!   counter                                  drops in that policy's name
//!   [limit rate 10/s log group N]            opt-in denied-connection log
//!   drop
//! ```
//!
//! Per packet: at most two hash lookups and two interval-set lookups,
//! whatever the number of policies or pods. Traffic from the node itself
//! to its pods goes through output, not forward: kubelet probes pass.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use podwire_kernel::nft::{Element, ElementData, Field, Verdict, encode_concat};

use crate::compile::{Element4, Ruleset};

pub const TABLE: &str = "podwire-policy";
pub const INGRESS_MAP: &str = "ingress4";
pub const EGRESS_MAP: &str = "egress4";
pub const INGRESS_ALLOW: &str = "ingress_allow4";
pub const EGRESS_ALLOW: &str = "egress_allow4";
/// Every set the engine owns.
pub const SETS: [&str; 4] = [INGRESS_MAP, EGRESS_MAP, INGRESS_ALLOW, EGRESS_ALLOW];
/// Prefix of the log lines' nflog prefix (the chain name follows).
pub const LOG_PREFIX: &str = "pwpol ";
/// Denied-connection log rate per policy chain.
pub const LOG_RATE: &str = "limit rate 10/second burst 20 packets";

/// The fixed part: table, sets, maps, the forward chain.
pub fn fixed_script() -> String {
    let t = format!("inet {TABLE}");
    let concat = "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval;";
    let mut s = String::new();
    let _ = writeln!(s, "add table {t}");
    for set in [INGRESS_ALLOW, EGRESS_ALLOW] {
        let _ = writeln!(s, "add set {t} {set} {{ {concat} }}");
    }
    for map in [INGRESS_MAP, EGRESS_MAP] {
        let _ = writeln!(s, "add map {t} {map} {{ type ipv4_addr : verdict; }}");
    }
    let _ = writeln!(
        s,
        "add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain {t} forward");
    for rule in [
        "ct state established,related accept",
        "ip saddr vmap @egress4",
        "ip daddr vmap @ingress4",
    ] {
        let _ = writeln!(s, "add rule {t} forward {rule}");
    }
    s
}

/// The drop chain of one policy and direction (`in-<id>` or `eg-<id>`),
/// commented with the policy's name.
pub fn chain_script(chain: &str, policy: &str, log_group: Option<u16>) -> String {
    let t = format!("inet {TABLE}");
    let ingress = chain.starts_with("in-");
    let (direction, lookup) = if ingress {
        (
            "ingress",
            "ip daddr . ip saddr . meta l4proto . th dport @ingress_allow4",
        )
    } else {
        (
            "egress",
            "ip saddr . ip daddr . meta l4proto . th dport @egress_allow4",
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add chain {t} {chain} {{ comment \"{direction} of pods isolated by {policy}\"; }}"
    );
    let _ = writeln!(s, "flush chain {t} {chain}");
    let _ = writeln!(s, "add rule {t} {chain} {lookup} return");
    let _ = writeln!(s, "add rule {t} {chain} counter");
    if let Some(group) = log_group {
        let _ = writeln!(
            s,
            "add rule {t} {chain} {LOG_RATE} log prefix \"{LOG_PREFIX}{chain} \" group {group}"
        );
    }
    let _ = writeln!(s, "add rule {t} {chain} drop");
    s
}

/// The structure for a ruleset: the fixed part and every chain it uses.
pub fn structure_script(rs: &Ruleset, chains: &[String], log_group: Option<u16>) -> String {
    let mut s = fixed_script();
    for chain in chains {
        s.push_str(&chain_script(chain, &chain_policy(rs, chain), log_group));
    }
    s
}

/// "namespace/name" of the policy owning a chain.
pub fn chain_policy(rs: &Ruleset, chain: &str) -> String {
    let id = chain.get(3..).unwrap_or_default();
    rs.policy_of(id)
        .map(|(ns, name)| format!("{ns}/{name}"))
        .unwrap_or_else(|| id.to_string())
}

/// An allow-set element as the kernel stores it, commented with the
/// local pod's name.
pub fn allow_element(rs: &Ruleset, e: &Element4) -> Element {
    let key = encode_concat(&[
        Field::Addr(e.local.into()),
        Field::Addr(Ipv4Addr::from(e.peer.0).into()),
        Field::Proto(e.proto.0),
        Field::Port(e.port.0),
    ]);
    let end = encode_concat(&[
        Field::Addr(e.local.into()),
        Field::Addr(Ipv4Addr::from(e.peer.1).into()),
        Field::Proto(e.proto.1),
        Field::Port(e.port.1),
    ]);
    Element {
        key,
        key_end: Some(end),
        data: ElementData::None,
        comment: Some(pod_name(rs, &e.local).into()),
        owner: None,
    }
}

/// A verdict-map element: pod -> jump to its policy's chain, commented
/// with the pod's and the policy's names.
pub fn pod_element(rs: &Ruleset, ip: Ipv4Addr, chain: &str) -> Element {
    let mut element =
        Element::keyed(&[Field::Addr(ip.into())]).with_verdict(Verdict::Jump(chain.to_string()));
    element.comment = Some(format!("{} by {}", pod_name(rs, &ip), chain_policy(rs, chain)).into());
    element
}

/// "namespace/name" of the pod with this address.
pub fn pod_name(rs: &Ruleset, ip: &Ipv4Addr) -> String {
    rs.pod_names
        .get(ip)
        .map(|(ns, n)| format!("{ns}/{n}"))
        .unwrap_or_else(|| ip.to_string())
}

fn range_text<T: fmt::Display + PartialEq>(lo: T, hi: T) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// One allow element in nft syntax.
pub fn element_text(e: &Element4) -> String {
    format!(
        "{} . {} . {} . {}",
        e.local,
        range_text(Ipv4Addr::from(e.peer.0), Ipv4Addr::from(e.peer.1)),
        range_text(e.proto.0, e.proto.1),
        range_text(e.port.0, e.port.1)
    )
}

/// The plan: a comment per policy, then an `nft -f` script that builds
/// the table with every element (the dry run of `podwire agent plan`).
pub struct Plan<'a> {
    pub ruleset: &'a Ruleset,
    pub log_group: Option<u16>,
}

impl fmt::Display for Plan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rs = self.ruleset;
        let t = format!("inet {TABLE}");
        let rejected = rs.policies.iter().filter(|p| p.rejected.is_some()).count();
        writeln!(
            f,
            "# NetworkPolicy on node {}: {} policies ({rejected} rejected), {} pods isolated for ingress, {} for egress",
            rs.node,
            rs.policies.len(),
            rs.ingress_pods.len(),
            rs.egress_pods.len()
        )?;
        for p in &rs.policies {
            let types: Vec<&str> = [(p.ingress, "Ingress"), (p.egress, "Egress")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, t)| *t)
                .collect();
            write!(
                f,
                "# policy {}/{} (chains in-{id}/eg-{id}): {}, selects {} pod(s) here",
                p.key.0,
                p.key.1,
                if types.is_empty() {
                    "no types".to_string()
                } else {
                    types.join("+")
                },
                p.local_pods,
                id = p.id,
            )?;
            match &p.rejected {
                Some(reason) => writeln!(
                    f,
                    "\n#   REJECTED: {reason}; the pods it selects stay isolated, none of its rules apply"
                )?,
                None => writeln!(f)?,
            }
        }
        let chains: Vec<String> = rs.chains().into_iter().collect();
        f.write_str(&structure_script(rs, &chains, self.log_group))?;
        let name = |ip: &Ipv4Addr| pod_name(rs, ip);
        for (map, pods, dir) in [
            (INGRESS_MAP, &rs.ingress_pods, "in"),
            (EGRESS_MAP, &rs.egress_pods, "eg"),
        ] {
            for (ip, id) in pods {
                let chain = format!("{dir}-{id}");
                writeln!(
                    f,
                    "add element {t} {map} {{ {ip} : jump {chain} }}  # pod {}, policy {}",
                    name(ip),
                    chain_policy(rs, &chain)
                )?;
            }
        }
        for (set, elems) in [
            (INGRESS_ALLOW, &rs.ingress_allow),
            (EGRESS_ALLOW, &rs.egress_allow),
        ] {
            for e in elems.iter() {
                writeln!(f, "add element {t} {set} {{ {} }}", element_text(e))?;
            }
        }
        Ok(())
    }
}

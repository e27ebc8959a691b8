//! One NetworkPolicy read and validated into the form the compiler uses:
//! policyTypes defaulted as the API does, peers (podSelector in the
//! policy's namespace, namespaceSelector, both = AND, ipBlock minus its
//! excepts), ports (number, range with endPort, named, or the whole
//! protocol). Anything the API server would refuse (a bad CIDR, an unknown
//! protocol, endPort below port, a broken selector) rejects the policy
//! with a reason the agent logs.

use std::net::IpAddr;

use ipnet::IpNet;
use podwire_model::NetworkPolicy;
use podwire_model::k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::ranges::{Range, subtract};
use crate::selector::Selector;

/// Protocol numbers NetworkPolicy knows.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

/// The (namespace, name) of a policy.
pub type PolicyKey = (String, String);

/// Which ports of a protocol a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// No `port`: every port of the protocol.
    All,
    /// `port` (and `endPort`): an inclusive range.
    Range(u16, u16),
    /// A named container port, resolved per destination pod.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortEntry {
    pub proto: u8,
    pub port: PortRef,
}

/// One entry of a rule's `from`/`to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Pods: matching `pods` in the policy's namespace (namespaces None),
    /// or in every namespace matching the namespace selector.
    Pods {
        namespaces: Option<Selector>,
        pods: Selector,
    },
    /// An ipBlock: IPv4 ranges (cidr minus except); an IPv6 block has none.
    Block(Vec<Range>),
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// None: every source/destination (empty or missing `from`/`to`).
    pub peers: Option<Vec<Peer>>,
    /// None: every port and protocol (empty or missing `ports`).
    pub ports: Option<Vec<PortEntry>>,
}

/// A policy as the compiler uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub key: PolicyKey,
    pub selector: Selector,
    /// Some when the policy isolates selected pods for ingress: its rules.
    pub ingress: Option<Vec<Rule>>,
    /// Some when it isolates them for egress.
    pub egress: Option<Vec<Rule>>,
}

/// What reading a policy gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Valid(Parsed),
    /// Refused, with why. When its pod selector and types are readable the
    /// pods it selects stay isolated with none of its rules (fail closed):
    /// a policy whose author meant to restrict traffic never opens it.
    Rejected {
        reason: String,
        isolation: Option<Parsed>,
    },
}

/// Reads and validates one policy.
pub fn parse(policy: &NetworkPolicy) -> Outcome {
    let key = (
        policy.metadata.namespace.clone().unwrap_or_default(),
        policy.metadata.name.clone().unwrap_or_default(),
    );
    let spec = policy.spec.clone().unwrap_or_default();
    let selector = match spec.pod_selector.as_ref().map(Selector::parse) {
        None => Selector::everything(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return Outcome::Rejected {
                reason: format!("podSelector: {e}"),
                isolation: None,
            };
        }
    };
    let (mut ingress_type, mut egress_type) = (false, false);
    match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            for t in types {
                match t.as_str() {
                    "Ingress" => ingress_type = true,
                    "Egress" => egress_type = true,
                    other => {
                        return Outcome::Rejected {
                            reason: format!(
                                "policyTypes: unknown type {other:?} (Ingress, Egress)"
                            ),
                            isolation: None,
                        };
                    }
                }
            }
        }
        // The API's defaulting: Ingress always, Egress when there are
        // egress rules.
        _ => {
            ingress_type = true;
            egress_type = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }
    let shell = Parsed {
        key,
        selector,
        ingress: ingress_type.then(Vec::new),
        egress: egress_type.then(Vec::new),
    };
    let read = || -> Result<Parsed, String> {
        let mut parsed = shell.clone();
        if let Some(rules) = parsed.ingress.as_mut() {
            for (i, r) in spec.ingress.iter().flatten().enumerate() {
                rules.push(
                    rule(r.from.as_deref(), r.ports.as_deref())
                        .map_err(|e| format!("ingress[{i}]: {e}"))?,
                );
            }
        }
        if let Some(rules) = parsed.egress.as_mut() {
            for (i, r) in spec.egress.iter().flatten().enumerate() {
                rules.push(
                    rule(r.to.as_deref(), r.ports.as_deref())
                        .map_err(|e| format!("egress[{i}]: {e}"))?,
                );
            }
        }
        Ok(parsed)
    };
    match read() {
        Ok(parsed) => Outcome::Valid(parsed),
        Err(reason) => Outcome::Rejected {
            reason,
            isolation: Some(shell),
        },
    }
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Result<Rule, String> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(p).map_err(|e| format!("peer {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(p).map_err(|e| format!("ports[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn peer(p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err("ipBlock cannot be combined with podSelector or namespaceSelector".into());
        }
        let cidr = parse_cidr(&block.cidr)?;
        let mut excepts = Vec::new();
        for e in block.except.iter().flatten() {
            let ex = parse_cidr(e)?;
            if !cidr.contains(&ex) || ex == cidr {
                return Err(format!(
                    "ipBlock except {e:?} is not strictly inside cidr {:?}",
                    block.cidr
                ));
            }
            excepts.push(ex);
        }
        return Ok(Peer::Block(match cidr {
            IpNet::V4(v4) => {
                let cut: Vec<Range> = excepts.iter().filter_map(v4_range).collect();
                subtract(v4_range(&IpNet::V4(v4)).into_iter().collect(), &cut)
            }
            IpNet::V6(_) => Vec::new(),
        }));
    }
    let pods = match &p.pod_selector {
        Some(s) => Selector::parse(s).map_err(|e| format!("podSelector: {e}"))?,
        None => Selector::everything(),
    };
    match &p.namespace_selector {
        Some(s) => Ok(Peer::Pods {
            namespaces: Some(Selector::parse(s).map_err(|e| format!("namespaceSelector: {e}"))?),
            pods,
        }),
        None if p.pod_selector.is_some() => Ok(Peer::Pods {
            namespaces: None,
            pods,
        }),
        None => Err("a peer needs podSelector, namespaceSelector or ipBlock".into()),
    }
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| format!("ipBlock {text:?} is not a CIDR (e.g. 10.0.0.0/8)"))
}

fn v4_range(net: &IpNet) -> Option<Range> {
    match (net.network(), net.broadcast()) {
        (IpAddr::V4(lo), IpAddr::V4(hi)) => Some((u32::from(lo), u32::from(hi))),
        _ => None,
    }
}

/// A protocol name as NetworkPolicyPort spells it (default TCP).
pub fn protocol(name: Option<&str>) -> Result<u8, String> {
    match name.unwrap_or("TCP") {
        "TCP" => Ok(TCP),
        "UDP" => Ok(UDP),
        "SCTP" => Ok(SCTP),
        other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

fn port(p: &NetworkPolicyPort) -> Result<PortEntry, String> {
    let proto = protocol(p.protocol.as_deref())?;
    let number = |n: i32| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("port {n} is not in 1-65535"))
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortRef::All,
        (None, Some(_)) => return Err("endPort needs a numeric port".into()),
        (Some(IntOrString::String(name)), None) => match name.parse::<i32>() {
            Ok(n) => {
                let n = number(n)?;
                PortRef::Range(n, n)
            }
            Err(_) if name.is_empty() => return Err("port name is empty".into()),
            Err(_) => PortRef::Named(name.clone()),
        },
        (Some(IntOrString::String(name)), Some(_)) => {
            return Err(format!(
                "endPort cannot be used with the named port {name:?}"
            ));
        }
        (Some(IntOrString::Int(n)), end) => {
            let lo = number(*n)?;
            let hi = match end {
                None => lo,
                Some(e) => {
                    let hi = number(e)?;
                    if hi < lo {
                        return Err(format!("endPort {hi} is below port {lo}"));
                    }
                    hi
                }
            };
            PortRef::Range(lo, hi)
        }
    };
    Ok(PortEntry { proto, port })
}

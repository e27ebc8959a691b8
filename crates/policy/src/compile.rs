//! The pure compile: ClusterState (Pods with labels and IPs, Namespaces
//! with labels, NetworkPolicies) + this node -> [`Ruleset`], the variable
//! part of the node's `inet podwire-policy` table.
//!
//! For every pod of this node that some policy isolates, the grants of all
//! policies selecting it are flattened into disjoint
//! (pod . peer range . protocol range . port range) elements of one
//! interval set per direction, so the packet path does one lookup whatever
//! the number of policies. Named ports are resolved per destination pod:
//! against the local pod for ingress, against each peer pod for egress
//! (addresses that are not pods never match a named port). Each isolated
//! pod maps to the chain of the first policy (by namespace/name) isolating
//! it, which counts and logs what is dropped in that policy's name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use podwire_model::{ClusterState, Pod};

use crate::ranges::{Ports, Range, disjoint};
use crate::spec::{self, Outcome, Parsed, Peer, PolicyKey, PortEntry, PortRef, Rule};

/// The label every Namespace carries with its own name (the API server
/// sets it; a files store may not, so it is implied here).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What the compiler needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Named container ports: (name, protocol, port).
    pub ports: Vec<(String, u8, u16)>,
}

impl PodInfo {
    /// None for pods that policies never see: hostNetwork, finished,
    /// without an IPv4 address yet.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let ip = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .find_map(|text| match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            })?;
        let mut ports = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                let (Some(name), Ok(proto), Ok(port)) = (
                    p.name.as_ref(),
                    spec::protocol(p.protocol.as_deref()),
                    u16::try_from(p.container_port),
                ) else {
                    continue;
                };
                ports.push((name.clone(), proto, port));
            }
        }
        Some(PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip,
            node: spec.node_name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        })
    }
}

/// One element of an allow set: the local pod, a peer address range, a
/// protocol range and a port range (all inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element4 {
    pub local: Ipv4Addr,
    pub peer: Range,
    pub proto: (u8, u8),
    pub port: (u16, u16),
}

/// How one policy came out of the compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyReport {
    pub key: PolicyKey,
    /// Stable short id: the policy's chains are `in-<id>` and `eg-<id>`.
    pub id: String,
    /// Why it was refused (its selected pods stay isolated, fail closed).
    pub rejected: Option<String>,
    pub ingress: bool,
    pub egress: bool,
    /// Pods of this node it selects.
    pub local_pods: usize,
}

/// The variable part of the node's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub node: String,
    /// Every policy, in (namespace, name) order.
    pub policies: Vec<PolicyReport>,
    /// Local pods isolated for ingress -> id of the policy answering for it.
    pub ingress_pods: BTreeMap<Ipv4Addr, String>,
    /// Local pods isolated for egress -> id of the policy answering for it.
    pub egress_pods: BTreeMap<Ipv4Addr, String>,
    /// (destination pod . source range . protocol . port) allowed in.
    pub ingress_allow: BTreeSet<Element4>,
    /// (source pod . destination range . protocol . port) allowed out.
    pub egress_allow: BTreeSet<Element4>,
    /// Every pod address -> (namespace, name), for logs.
    pub pod_names: BTreeMap<Ipv4Addr, (String, String)>,
}

impl Ruleset {
    /// The ids of policies that own a chain (they answer for some pod).
    pub fn chains(&self) -> BTreeSet<String> {
        let ins = self.ingress_pods.values().map(|id| format!("in-{id}"));
        let egs = self.egress_pods.values().map(|id| format!("eg-{id}"));
        ins.chain(egs).collect()
    }

    /// The policy a chain id belongs to.
    pub fn policy_of(&self, id: &str) -> Option<&PolicyKey> {
        self.policies.iter().find(|p| p.id == id).map(|p| &p.key)
    }
}

/// The chain id of a policy: 12 hex digits of an FNV-1a hash of
/// "namespace/name" (stable across restarts and nodes).
pub fn policy_id(key: &PolicyKey) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.0.bytes().chain([b'/']).chain(key.1.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

/// Namespace name -> labels, with the implied name label.
fn namespace_labels(state: &ClusterState) -> HashMap<String, BTreeMap<String, String>> {
    let mut out: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for (name, ns) in &state.namespaces {
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        out.insert(name.clone(), labels);
    }
    out
}

/// Disjoint (peer range, ports) pieces of one pod's grants.
type Pieces = Vec<(Range, Ports)>;

/// Where a rule's peers are: pods (indexes into the pod list) and ranges.
struct PeerSet {
    all: bool,
    pods: Vec<usize>,
    ranges: Vec<Range>,
}

fn peer_set(
    rule: &Rule,
    policy_ns: &str,
    pods: &[PodInfo],
    ns_labels: &HashMap<String, BTreeMap<String, String>>,
) -> PeerSet {
    let Some(peers) = &rule.peers else {
        return PeerSet {
            all: true,
            pods: (0..pods.len()).collect(),
            ranges: Vec::new(),
        };
    };
    let empty = BTreeMap::new();
    let mut set = BTreeSet::new();
    let mut ranges = Vec::new();
    for peer in peers {
        match peer {
            Peer::Block(r) => ranges.extend_from_slice(r),
            Peer::Pods {
                namespaces,
                pods: sel,
            } => {
                for (i, pod) in pods.iter().enumerate() {
                    let ns_ok = match namespaces {
                        None => pod.namespace == policy_ns,
                        Some(nsel) => {
                            let labels = ns_labels.get(&pod.namespace);
                            match labels {
                                Some(l) => nsel.matches(l),
                                None => {
                                    let mut l = empty.clone();
                                    l.insert(NAMESPACE_NAME_LABEL.into(), pod.namespace.clone());
                                    nsel.matches(&l)
                                }
                            }
                        }
                    };
                    if ns_ok && sel.matches(&pod.labels) {
                        set.insert(i);
                    }
                }
            }
        }
    }
    PeerSet {
        all: false,
        pods: set.into_iter().collect(),
        ranges,
    }
}

/// The ports of a rule, named ones resolved against `pod` (None: the
/// peer is no pod, named ports match nothing). None: nothing allowed.
fn resolve(entries: Option<&[PortEntry]>, pod: Option<&PodInfo>) -> Option<Ports> {
    let Some(entries) = entries else {
        return Some(Ports::Any);
    };
    let mut out = Vec::new();
    for e in entries {
        match &e.port {
            PortRef::All => out.push((e.proto, 0, 65535)),
            PortRef::Range(lo, hi) => out.push((e.proto, *lo, *hi)),
            PortRef::Named(name) => {
                for (n, proto, port) in pod.map(|p| p.ports.as_slice()).unwrap_or_default() {
                    if n == name && *proto == e.proto {
                        out.push((e.proto, *port, *port));
                    }
                }
            }
        }
    }
    Ports::from_entries(out)
}

fn has_named(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .flatten()
        .any(|e| matches!(e.port, PortRef::Named(_)))
}

fn ip_range(ip: Ipv4Addr) -> Range {
    let n = u32::from(ip);
    (n, n)
}

fn elements(local: Ipv4Addr, pieces: &[(Range, Ports)], out: &mut BTreeSet<Element4>) {
    for (peer, ports) in pieces {
        for (proto, port) in ports.boxes() {
            out.insert(Element4 {
                local,
                peer: *peer,
                proto,
                port,
            });
        }
    }
}

/// Compiles the node's ruleset. Rejected policies are in `policies` with
/// their reason; the caller logs them.
pub fn compile(state: &ClusterState, node: &str) -> Ruleset {
    let mut pods: Vec<PodInfo> = state.pods.values().filter_map(PodInfo::from_pod).collect();
    // Two pods claiming one address (a stale record): the first wins.
    let mut seen = BTreeSet::new();
    pods.retain(|p| seen.insert(p.ip));
    let ns_labels = namespace_labels(state);
    let mut rs = Ruleset {
        node: node.to_string(),
        pod_names: pods
            .iter()
            .map(|p| (p.ip, (p.namespace.clone(), p.name.clone())))
            .collect(),
        ..Ruleset::default()
    };
    let local: Vec<usize> = (0..pods.len())
        .filter(|i| pods[*i].node.as_deref() == Some(node))
        .collect();

    let mut parsed: Vec<Parsed> = Vec::new();
    for policy in state.network_policies.values() {
        let (p, rejected) = match spec::parse(policy) {
            Outcome::Valid(p) => (Some(p), None),
            Outcome::Rejected { reason, isolation } => (isolation, Some(reason)),
        };
        let key = p.as_ref().map(|p| p.key.clone()).unwrap_or_else(|| {
            (
                policy.metadata.namespace.clone().unwrap_or_default(),
                policy.metadata.name.clone().unwrap_or_default(),
            )
        });
        let local_pods = p.as_ref().map_or(0, |p| {
            local
                .iter()
                .filter(|i| pods[**i].namespace == p.key.0 && p.selector.matches(&pods[**i].labels))
                .count()
        });
        rs.policies.push(PolicyReport {
            id: policy_id(&key),
            key,
            rejected,
            ingress: p.as_ref().is_some_and(|p| p.ingress.is_some()),
            egress: p.as_ref().is_some_and(|p| p.egress.is_some()),
            local_pods,
        });
        parsed.extend(p);
    }

    // Per local pod: the (policy, rule) pairs that apply, by direction.
    let mut ingress_of: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    let mut egress_of: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
    for (pi, p) in parsed.iter().enumerate() {
        let id = policy_id(&p.key);
        for &li in &local {
            let pod = &pods[li];
            if pod.namespace != p.key.0 || !p.selector.matches(&pod.labels) {
                continue;
            }
            if let Some(rules) = &p.ingress {
                rs.ingress_pods.entry(pod.ip).or_insert_with(|| id.clone());
                let list = ingress_of.entry(li).or_default();
                list.extend((0..rules.len()).map(|ri| (pi, ri)));
            }
            if let Some(rules) = &p.egress {
                rs.egress_pods.entry(pod.ip).or_insert_with(|| id.clone());
                let list = egress_of.entry(li).or_default();
                list.extend((0..rules.len()).map(|ri| (pi, ri)));
            }
        }
    }

    // Peers of each rule in use, computed once.
    let mut peers: HashMap<(bool, usize, usize), PeerSet> = HashMap::new();

    // Ingress: grants depend on the destination pod only through named
    // ports, so pods with the same rules and resolutions share one sweep.
    let mut cache: HashMap<Vec<(usize, usize, Option<Ports>)>, Pieces> = HashMap::new();
    for (li, rules) in &ingress_of {
        let dst = &pods[*li];
        let sig: Vec<(usize, usize, Option<Ports>)> = rules
            .iter()
            .map(|&(pi, ri)| {
                let rule = &parsed[pi].ingress.as_ref().expect("ingress rules")[ri];
                (pi, ri, resolve(rule.ports.as_deref(), Some(dst)))
            })
            .collect();
        let pieces = cache.entry(sig).or_insert_with_key(|sig| {
            let mut grants = Vec::new();
            for (pi, ri, ports) in sig {
                let Some(ports) = ports else { continue };
                let rule = &parsed[*pi].ingress.as_ref().expect("ingress rules")[*ri];
                let set =
                    peer_set_cached(&mut peers, true, *pi, *ri, rule, &parsed, &pods, &ns_labels);
                if set.all {
                    grants.push(((0, u32::MAX), ports.clone()));
                    continue;
                }
                for &i in &set.pods {
                    grants.push((ip_range(pods[i].ip), ports.clone()));
                }
                for r in &set.ranges {
                    grants.push((*r, ports.clone()));
                }
            }
            disjoint(&grants)
        });
        elements(dst.ip, pieces, &mut rs.ingress_allow);
    }

    // Egress: grants do not depend on the source pod at all.
    let mut cache: HashMap<Vec<(usize, usize)>, Pieces> = HashMap::new();
    for (li, rules) in &egress_of {
        let src = &pods[*li];
        let pieces = cache.entry(rules.clone()).or_insert_with_key(|sig| {
            let mut grants = Vec::new();
            for &(pi, ri) in sig {
                let rule = &parsed[pi].egress.as_ref().expect("egress rules")[ri];
                let set =
                    peer_set_cached(&mut peers, false, pi, ri, rule, &parsed, &pods, &ns_labels);
                let numeric = resolve(rule.ports.as_deref(), None);
                if set.all {
                    if let Some(n) = &numeric {
                        grants.push(((0, u32::MAX), n.clone()));
                    }
                } else if let Some(n) = &numeric {
                    for r in &set.ranges {
                        grants.push((*r, n.clone()));
                    }
                }
                if has_named(rule) {
                    for &i in &set.pods {
                        if let Some(p) = resolve(rule.ports.as_deref(), Some(&pods[i])) {
                            grants.push((ip_range(pods[i].ip), p));
                        }
                    }
                } else if let (Some(n), false) = (&numeric, set.all) {
                    for &i in &set.pods {
                        grants.push((ip_range(pods[i].ip), n.clone()));
                    }
                }
            }
            disjoint(&grants)
        });
        elements(src.ip, pieces, &mut rs.egress_allow);
    }
    rs
}

/// The peers of one rule, computed on first use.
#[allow(clippy::too_many_arguments)]
fn peer_set_cached<'a>(
    cache: &'a mut HashMap<(bool, usize, usize), PeerSet>,
    ingress: bool,
    pi: usize,
    ri: usize,
    rule: &Rule,
    parsed: &[Parsed],
    pods: &[PodInfo],
    ns_labels: &HashMap<String, BTreeMap<String, String>>,
) -> &'a PeerSet {
    cache
        .entry((ingress, pi, ri))
        .or_insert_with(|| peer_set(rule, &parsed[pi].key.0, pods, ns_labels))
}

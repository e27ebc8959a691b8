//! The compile step (pure): Services + EndpointSlices + this node's
//! identity + the cluster ranges -> [`Ruleset`], the exact nftables table
//! the proxy programs. Each Service compiles on its own into a
//! [`ServiceRules`] fragment (its map elements, the load-balancing chains
//! they jump to, its UDP frontends and health check), so a change to one
//! Service recompiles and re-sends only that Service.
//!
//! What kube-proxy does and where it happens here:
//! - which Services get rules: [`compile_service`] skips headless,
//!   ExternalName and `service.kubernetes.io/service-proxy-name` ones;
//! - endpoint choice: [`endpoints_for_port`] (ready first, else serving and
//!   terminating, never not-serving; publishNotReadyAddresses; named
//!   targetPorts through the slice's ports);
//! - traffic policies, reject/drop, masquerade, affinity, source ranges:
//!   the element each case produces in [`compile_service`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use podwire_model::k8s_openapi::api::core::v1::ServicePort;
use podwire_model::{ClusterState, EndpointSlice, Service};

use crate::layout::{
    DEFAULT_AFFINITY_TIMEOUT, Datum, ElemKey, Fam, LOCAL_OFFSET, LbChain, SetId, SetKind,
    StructureOptions, Value, element_line, proto_name, structure_script,
};

/// Services carrying this label belong to another proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name) of a Service.
pub type ServiceKey = (String, String);

/// This node and the cluster settings the compile step needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompileOptions {
    /// This node's name: endpoints whose `nodeName` is this are local.
    pub node_name: String,
    /// This node's pod slices: an endpoint without `nodeName` is local
    /// when its address lies in one of them.
    pub node_pod_cidrs: Vec<IpNet>,
    pub structure: StructureOptions,
}

impl CompileOptions {
    /// Options for `node` from the cluster state: the cluster's pod and
    /// service ranges (ClusterConfig) plus `extra_pod_cidrs` (e.g. the
    /// IPv6 range of a dual-stack cluster, which ClusterConfig lacks),
    /// and the node's own podCIDR(s).
    pub fn for_node(
        state: &ClusterState,
        node: &str,
        extra_pod_cidrs: &[IpNet],
        extra_service_cidrs: &[IpNet],
        localhost_nodeports: bool,
    ) -> CompileOptions {
        let mut pod_cidrs: Vec<IpNet> = state.config.iter().map(|c| c.pod_cidr).collect();
        let mut service_cidrs: Vec<IpNet> = state.config.iter().map(|c| c.service_cidr).collect();
        for net in extra_pod_cidrs {
            if !pod_cidrs.contains(net) {
                pod_cidrs.push(*net);
            }
        }
        for net in extra_service_cidrs {
            if !service_cidrs.contains(net) {
                service_cidrs.push(*net);
            }
        }
        let node_pod_cidrs = state
            .nodes
            .get(node)
            .and_then(|n| n.spec.as_ref())
            .map(|spec| {
                spec.pod_cidrs
                    .iter()
                    .flatten()
                    .chain(spec.pod_cidr.iter())
                    .filter_map(|c| c.parse::<IpNet>().ok())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        CompileOptions {
            node_name: node.to_string(),
            node_pod_cidrs,
            structure: StructureOptions {
                pod_cidrs,
                service_cidrs,
                localhost_nodeports,
            },
        }
    }
}

/// One endpoint a frontend can DNAT to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
}

/// One address:port (or node port) of a Service and where it leads: what
/// the applier needs beyond elements (UDP conntrack cleanup, affinity
/// cleanup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub fam: Fam,
    /// None for a node port (any local address).
    pub dst: Option<IpAddr>,
    pub proto: u8,
    pub port: u16,
    /// Endpoints by index (index i of the cluster-wide list).
    pub cluster: Vec<Target>,
    /// Node-local endpoints (indices from LOCAL_OFFSET).
    pub local: Vec<Target>,
    pub affinity: bool,
}

/// The `healthCheckNodePort` of an externalTrafficPolicy Local Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub port: u16,
    pub namespace: String,
    pub name: String,
    /// Usable endpoints on this node.
    pub local_endpoints: usize,
}

/// Everything one Service contributes to the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceRules {
    pub elements: Vec<(ElemKey, Value)>,
    /// The nft comment of `elements[i]` (`namespace/name:port`, `/udp` or
    /// `/sctp` after non-TCP ports): `nft list` shows whose element it is.
    pub comments: Vec<Arc<str>>,
    pub chains: BTreeSet<LbChain>,
    pub frontends: Vec<Frontend>,
    pub health_check: Option<HealthCheck>,
    /// One line per port for the printed plan.
    pub summary: Vec<String>,
}

/// The whole desired table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ruleset {
    pub options: CompileOptions,
    pub services: BTreeMap<ServiceKey, Arc<ServiceRules>>,
}

fn proto_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

/// The skip reason of a Service whose type is none of ClusterIP, NodePort,
/// LoadBalancer, ExternalName.
pub const UNKNOWN_TYPE: &str =
    "unknown type (known: ClusterIP, NodePort, LoadBalancer, ExternalName): not proxied";

/// Why a Service gets no rules at all (None: it gets rules).
pub fn skip_reason(svc: &Service) -> Option<&'static str> {
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Some("labelled service.kubernetes.io/service-proxy-name: another proxy serves it");
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Some("no spec");
    };
    match spec.type_.as_deref() {
        Some("ExternalName") => return Some("ExternalName: DNS only"),
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {}
        // A newer API's type this proxy does not know: guessing what it
        // means could steal traffic, so it gets nothing (and a warning).
        Some(_) => return Some(UNKNOWN_TYPE),
    }
    match spec.cluster_ip.as_deref() {
        Some("None") => Some("headless: DNS only"),
        None | Some("") if spec.cluster_ips.as_ref().is_none_or(|v| v.is_empty()) => {
            Some("no ClusterIP allocated yet")
        }
        _ => None,
    }
}

/// Endpoints of one Service port, split as kube-proxy does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortEndpoints {
    /// Cluster-wide: the ready endpoints, or when there are none the
    /// serving-and-terminating ones. Sorted.
    pub cluster: Vec<Target>,
    /// The same choice among this node's endpoints. Sorted.
    pub local: Vec<Target>,
    /// Every distinct endpoint (any condition), for counting.
    pub all: usize,
}

/// Which endpoints of `slices` serve the Service port `port` in family
/// `fam`: slice ports are matched by name and protocol (that is how named
/// targetPorts resolve: the slice carries the number per pod group).
pub fn endpoints_for_port(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    fam: Fam,
    publish_not_ready: bool,
    opts: &CompileOptions,
) -> PortEndpoints {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_proto = port.protocol.as_deref().unwrap_or("TCP");
    let family = match fam {
        Fam::V4 => "IPv4",
        Fam::V6 => "IPv6",
    };
    // (target) -> (ready, serving, terminating, local); first wins.
    let mut seen: BTreeMap<Target, (bool, bool, bool, bool)> = BTreeMap::new();
    for slice in slices {
        if slice.address_type != family {
            continue;
        }
        let Some(target_port) = slice.ports.iter().flatten().find_map(|p| {
            (p.name.as_deref().unwrap_or("") == want_name
                && p.protocol.as_deref().unwrap_or("TCP") == want_proto)
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Ok(target_port) = u16::try_from(target_port) else {
            continue;
        };
        if target_port == 0 {
            continue;
        }
        for ep in slice.endpoints.iter().flatten() {
            let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if Fam::of(&ip) != fam {
                continue;
            }
            let cond = ep.conditions.as_ref();
            let mut ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            if publish_not_ready {
                ready = true;
            }
            let local = match ep.node_name.as_deref() {
                Some(n) if !n.is_empty() => n == opts.node_name,
                _ => opts.node_pod_cidrs.iter().any(|c| c.contains(&ip)),
            };
            seen.entry(Target {
                ip,
                port: target_port,
            })
            .or_insert((ready, serving, terminating, local));
        }
    }
    let pick = |only_local: bool| -> Vec<Target> {
        let candidates = seen.iter().filter(|(_, c)| !only_local || c.3);
        let ready: Vec<Target> = candidates
            .clone()
            .filter(|(_, c)| c.0)
            .map(|(t, _)| *t)
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates
            .filter(|(_, c)| c.1 && c.2)
            .map(|(t, _)| *t)
            .collect()
    };
    PortEndpoints {
        cluster: pick(false),
        local: pick(true),
        all: seen.len(),
    }
}

fn lb(fam: Fam, nodeport: bool, local: bool, masq: bool, n: usize, aff: Option<u32>) -> LbChain {
    LbChain {
        fam,
        nodeport,
        local,
        masq,
        n: n as u32,
        affinity: aff,
    }
}

struct Emit<'a> {
    rules: &'a mut ServiceRules,
    /// The comment of the Service port being emitted.
    comment: Arc<str>,
}

impl Emit<'_> {
    fn put(&mut self, kind: SetKind, fam: Fam, key: Vec<Datum>, value: Value) {
        if let Value::Goto(c) = &value {
            self.rules.chains.insert(*c);
            if c.masq {
                self.rules.chains.insert(c.unmasked());
            }
        }
        self.rules
            .elements
            .push((ElemKey::new(SetId::new(kind, fam), key), value));
        // A hairpin element (pod . pod) is shared by every Service of that
        // pod: it names no Service, so its owner can change without churn.
        let comment = if kind == SetKind::Hairpin {
            Arc::from("hairpin")
        } else {
            self.comment.clone()
        };
        self.rules.comments.push(comment);
    }

    /// The endpoint list of a frontend at `base` indices.
    fn endpoints(
        &mut self,
        fam: Fam,
        prefix: &[Datum],
        list: &[Target],
        base: u32,
        nodeport: bool,
    ) {
        let kind = if nodeport {
            SetKind::NodePortEndpoints
        } else {
            SetKind::Endpoints
        };
        for (i, t) in list.iter().enumerate() {
            let mut key = prefix.to_vec();
            key.push(Datum::Index(base + i as u32));
            self.put(kind, fam, key, Value::Target(t.ip, t.port));
        }
    }
}

/// Compiles one Service with its EndpointSlices. None when the Service
/// gets no rules (see [`skip_reason`]).
pub fn compile_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    opts: &CompileOptions,
) -> Option<ServiceRules> {
    if skip_reason(svc).is_some() {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    let has_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let publish = spec.publish_not_ready_addresses == Some(true);
    let etp_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let itp_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });

    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    cluster_ips.dedup();
    let mut seen_ips = BTreeSet::new();
    cluster_ips.retain(|ip| seen_ips.insert(*ip));
    let families: BTreeSet<Fam> = cluster_ips.iter().map(Fam::of).collect();
    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|s| s.parse().ok())
        .collect();
    let lb_ips: Vec<IpAddr> = if ty == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
            .collect()
    } else {
        Vec::new()
    };
    let source_ranges: Vec<IpNet> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|s| s.trim().parse().ok())
        .collect();

    let mut rules = ServiceRules::default();
    let mut local_count_for_health = 0usize;
    for port in spec.ports.iter().flatten() {
        let Some(proto) = proto_number(port.protocol.as_deref()) else {
            rules.summary.push(format!(
                "port {}: protocol {:?} not supported, skipped",
                port.port,
                port.protocol.as_deref().unwrap_or("")
            ));
            continue;
        };
        let Ok(svc_port) = u16::try_from(port.port) else {
            continue;
        };
        let node_port = port
            .node_port
            .filter(|_| has_node_ports)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        for &fam in &families {
            let eps = endpoints_for_port(slices, port, fam, publish, opts);
            local_count_for_health = local_count_for_health.max(eps.local.len());
            let cluster = &eps.cluster;
            let local = &eps.local;
            let mut emit = Emit {
                rules: &mut rules,
                comment: element_comment(&namespace, &name, svc_port, proto),
            };
            let proto_port = [Datum::Proto(proto), Datum::Port(svc_port)];
            rules_summary(
                &mut emit, fam, &namespace, &name, port, cluster, local, itp_local, etp_local,
            );

            // ClusterIPs: internalTrafficPolicy decides the list.
            for ip in cluster_ips.iter().filter(|ip| Fam::of(ip) == fam) {
                let key = vec![
                    Datum::Addr(*ip),
                    proto_port[0].clone(),
                    proto_port[1].clone(),
                ];
                let list = if itp_local { local } else { cluster };
                if list.is_empty() {
                    // No endpoints at all: reject. Endpoints elsewhere but
                    // none here with internalTrafficPolicy Local: drop.
                    let verdict = if cluster.is_empty() {
                        Value::Reject
                    } else {
                        Value::Drop
                    };
                    emit.put(SetKind::NoEndpoints, fam, key, verdict);
                } else {
                    emit.put(
                        SetKind::Services,
                        fam,
                        key.clone(),
                        Value::Goto(lb(fam, false, false, false, list.len(), affinity)),
                    );
                    emit.endpoints(fam, &key, list, 0, false);
                }
                emit.rules.frontends.push(Frontend {
                    fam,
                    dst: Some(*ip),
                    proto,
                    port: svc_port,
                    cluster: list.clone(),
                    local: Vec::new(),
                    affinity: affinity.is_some() && fam == Fam::V4,
                });
            }

            // External destinations: externalIPs and LB ingress IPs.
            let externals = external_ips
                .iter()
                .chain(lb_ips.iter())
                .filter(|ip| Fam::of(ip) == fam)
                .collect::<BTreeSet<_>>();
            for ip in externals {
                let key = vec![
                    Datum::Addr(*ip),
                    proto_port[0].clone(),
                    proto_port[1].clone(),
                ];
                external(
                    &mut emit,
                    fam,
                    false,
                    key.clone(),
                    cluster,
                    local,
                    etp_local,
                    affinity,
                );
                emit.rules.frontends.push(Frontend {
                    fam,
                    dst: Some(*ip),
                    proto,
                    port: svc_port,
                    cluster: cluster.clone(),
                    local: if etp_local { local.clone() } else { Vec::new() },
                    affinity: affinity.is_some() && fam == Fam::V4,
                });
                if lb_ips.contains(ip) && !source_ranges.is_empty() {
                    emit.put(SetKind::Firewall, fam, key.clone(), Value::None);
                    for range in source_ranges.iter().filter(|r| Fam::of_net(r) == fam) {
                        let mut allow = key.clone();
                        allow.push(Datum::Net(range.trunc()));
                        emit.put(SetKind::FirewallAllow, fam, allow, Value::None);
                    }
                }
            }

            // Node ports: every local address of this family.
            if let Some(np) = node_port {
                let key = vec![Datum::Proto(proto), Datum::Port(np)];
                external(
                    &mut emit, fam, true, key, cluster, local, etp_local, affinity,
                );
                emit.rules.frontends.push(Frontend {
                    fam,
                    dst: None,
                    proto,
                    port: np,
                    cluster: cluster.clone(),
                    local: if etp_local { local.clone() } else { Vec::new() },
                    affinity: affinity.is_some() && fam == Fam::V4,
                });
            }

            // Hairpin: a local pod reaching itself through the Service.
            for t in local {
                emit.put(
                    SetKind::Hairpin,
                    fam,
                    vec![Datum::Addr(t.ip), Datum::Addr(t.ip)],
                    Value::None,
                );
            }
        }
    }
    if etp_local
        && has_node_ports
        && let Some(port) = spec
            .health_check_node_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    {
        rules.health_check = Some(HealthCheck {
            port,
            namespace,
            name,
            local_endpoints: local_count_for_health,
        });
    }
    // A Service may list the same endpoint for two ports: keep one copy of
    // shared elements (hairpin) per Service.
    let mut seen = std::collections::HashSet::new();
    let keep: Vec<bool> = rules
        .elements
        .iter()
        .map(|(k, _)| seen.insert(k.clone()))
        .collect();
    let mut flags = keep.iter();
    rules
        .elements
        .retain(|_| flags.next().copied().unwrap_or(true));
    let mut flags = keep.iter();
    rules
        .comments
        .retain(|_| flags.next().copied().unwrap_or(true));
    Some(rules)
}

/// The comment the elements of one Service port carry in the kernel, so
/// `nft list table inet podwire-proxy | grep web-service` finds them.
pub fn element_comment(namespace: &str, name: &str, port: u16, proto: u8) -> Arc<str> {
    match proto {
        6 => format!("{namespace}/{name}:{port}").into(),
        p => format!("{namespace}/{name}:{port}/{}", proto_name(p)).into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn rules_summary(
    emit: &mut Emit<'_>,
    fam: Fam,
    namespace: &str,
    name: &str,
    port: &ServicePort,
    cluster: &[Target],
    local: &[Target],
    itp_local: bool,
    etp_local: bool,
) {
    let list = |l: &[Target]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.iter()
                .map(|t| match t.ip {
                    IpAddr::V4(ip) => format!("{ip}:{}", t.port),
                    IpAddr::V6(ip) => format!("[{ip}]:{}", t.port),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    emit.rules.summary.push(format!(
        "{namespace}/{name}:{} {}/{} IPv{}: endpoints {}; local {}{}{}",
        port.name.as_deref().unwrap_or(""),
        port.protocol.as_deref().unwrap_or("TCP"),
        port.port,
        if fam == Fam::V4 { 4 } else { 6 },
        list(cluster),
        list(local),
        if itp_local {
            "; internalTrafficPolicy Local"
        } else {
            ""
        },
        if etp_local {
            "; externalTrafficPolicy Local"
        } else {
            ""
        },
    ));
}

/// Elements of one external destination (externalIP, LB IP or node port).
#[allow(clippy::too_many_arguments)]
fn external(
    emit: &mut Emit<'_>,
    fam: Fam,
    nodeport: bool,
    key: Vec<Datum>,
    cluster: &[Target],
    local: &[Target],
    etp_local: bool,
    affinity: Option<u32>,
) {
    let (main, pods, node_local, noep) = if nodeport {
        (
            SetKind::NodePorts,
            SetKind::NodePortsPods,
            SetKind::NodePortsLocal,
            SetKind::NoEndpointNodePorts,
        )
    } else {
        (
            SetKind::External,
            SetKind::ExternalPods,
            SetKind::ExternalLocal,
            SetKind::NoEndpoints,
        )
    };
    if cluster.is_empty() {
        emit.put(noep, fam, key, Value::Reject);
        return;
    }
    let n = cluster.len();
    emit.endpoints(fam, &key, cluster, 0, nodeport);
    if !etp_local {
        // Cluster policy: any endpoint, client masqueraded (the reply must
        // come back through this node).
        emit.put(
            main,
            fam,
            key,
            Value::Goto(lb(fam, nodeport, false, true, n, affinity)),
        );
        return;
    }
    // Local policy: pods and the node itself are short-circuited to every
    // endpoint (the node's own traffic masqueraded); the rest only to this
    // node's endpoints, client IP kept, dropped when there are none.
    emit.put(
        pods,
        fam,
        key.clone(),
        Value::Goto(lb(fam, nodeport, false, false, n, affinity)),
    );
    emit.put(
        node_local,
        fam,
        key.clone(),
        Value::Goto(lb(fam, nodeport, false, true, n, affinity)),
    );
    if local.is_empty() {
        emit.put(noep, fam, key, Value::Drop);
    } else {
        emit.endpoints(fam, &key, local, LOCAL_OFFSET, nodeport);
        emit.put(
            main,
            fam,
            key,
            Value::Goto(lb(fam, nodeport, true, false, local.len(), affinity)),
        );
    }
}

/// EndpointSlices by the (namespace, Service name) they belong to.
pub fn slices_by_service(state: &ClusterState) -> HashMap<ServiceKey, Vec<&EndpointSlice>> {
    let mut out: HashMap<ServiceKey, Vec<&EndpointSlice>> = HashMap::new();
    for ((ns, _), slice) in &state.endpoint_slices {
        let Some(svc) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        out.entry((ns.clone(), svc.clone()))
            .or_default()
            .push(slice);
    }
    out
}

/// Compiles the whole table (the dry run and the first sync).
pub fn compile(state: &ClusterState, opts: &CompileOptions) -> Ruleset {
    let slices = slices_by_service(state);
    let mut services = BTreeMap::new();
    for (key, svc) in &state.services {
        let empty = Vec::new();
        let s = slices.get(key).unwrap_or(&empty);
        if let Some(rules) = compile_service(svc, s, opts) {
            services.insert(key.clone(), Arc::new(rules));
        }
    }
    Ruleset {
        options: opts.clone(),
        services,
    }
}

/// Compiles incrementally: a Service whose object and slices are equal to
/// the previous round's keeps its fragment (the same `Arc`, so the applier
/// skips it without comparing elements).
///
/// Two ways in: [`Compiler::compile`] compares every Service and slice with
/// the previous round (for a source that only gives snapshots, like the
/// files store), [`Compiler::compile_changed`] trusts the caller's list of
/// changed Services (for an event source: a watch says which objects
/// changed), so one new Service costs one Service's work at any scale.
#[derive(Debug, Default)]
pub struct Compiler {
    cache: HashMap<ServiceKey, CacheEntry>,
    options: Option<CompileOptions>,
    ruleset: Ruleset,
}

#[derive(Debug)]
struct CacheEntry {
    service: Service,
    slices: Vec<EndpointSlice>,
}

/// The EndpointSlices of one Service (a scan of its namespace).
fn slices_of<'a>(state: &'a ClusterState, key: &ServiceKey) -> Vec<&'a EndpointSlice> {
    state
        .endpoint_slices
        .range((key.0.clone(), String::new())..)
        .take_while(|((ns, _), _)| *ns == key.0)
        .filter(|(_, s)| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&key.1)
        })
        .map(|(_, s)| s)
        .collect()
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// The last compiled ruleset.
    pub fn ruleset(&self) -> &Ruleset {
        &self.ruleset
    }

    fn reset_if(&mut self, opts: &CompileOptions) -> bool {
        if self.options.as_ref() != Some(opts) {
            self.cache.clear();
            self.options = Some(opts.clone());
            self.ruleset = Ruleset {
                options: opts.clone(),
                services: BTreeMap::new(),
            };
            return true;
        }
        false
    }

    fn recompile(
        &mut self,
        key: &ServiceKey,
        svc: &Service,
        slices: &[&EndpointSlice],
        opts: &CompileOptions,
    ) {
        match compile_service(svc, slices, opts) {
            Some(rules) => {
                self.ruleset.services.insert(key.clone(), Arc::new(rules));
            }
            None => {
                if skip_reason(svc) == Some(UNKNOWN_TYPE) {
                    tracing::warn!(
                        service = %format!("{}/{}", key.0, key.1),
                        r#type = svc.spec.as_ref().and_then(|s| s.type_.as_deref()).unwrap_or_default(),
                        "Service of an unknown type is not proxied: {UNKNOWN_TYPE}"
                    );
                }
                self.ruleset.services.remove(key);
            }
        }
        self.cache.insert(
            key.clone(),
            CacheEntry {
                service: svc.clone(),
                slices: slices.iter().map(|x| (*x).clone()).collect(),
            },
        );
    }

    /// The Ruleset of `state`, recompiling only Services whose object or
    /// slices differ from the last call.
    pub fn compile(&mut self, state: &ClusterState, opts: &CompileOptions) -> &Ruleset {
        self.reset_if(opts);
        let slices = slices_by_service(state);
        let empty = Vec::new();
        for (key, svc) in &state.services {
            let s = slices.get(key).unwrap_or(&empty);
            let fresh = self.cache.get(key).is_some_and(|entry| {
                entry.service == *svc
                    && entry.slices.len() == s.len()
                    && entry.slices.iter().zip(s.iter()).all(|(a, b)| a == *b)
            });
            if !fresh {
                self.recompile(key, svc, s, opts);
            }
        }
        if self.cache.len() != state.services.len() {
            self.cache.retain(|k, _| state.services.contains_key(k));
            self.ruleset
                .services
                .retain(|k, _| state.services.contains_key(k));
        }
        &self.ruleset
    }

    /// Like [`Compiler::compile`], looking only at `changed` Services (those
    /// whose object or slices an event source reported). The first call,
    /// or one with other options, compiles everything.
    pub fn compile_changed(
        &mut self,
        state: &ClusterState,
        opts: &CompileOptions,
        changed: &[ServiceKey],
    ) -> &Ruleset {
        if self.reset_if(opts) {
            return self.compile(state, opts);
        }
        for key in changed {
            match state.services.get(key) {
                Some(svc) => {
                    let s = slices_of(state, key);
                    self.recompile(key, svc, &s, opts);
                }
                None => {
                    self.cache.remove(key);
                    self.ruleset.services.remove(key);
                }
            }
        }
        &self.ruleset
    }
}

impl Ruleset {
    /// Load-balancing chains any Service needs.
    pub fn chains(&self) -> BTreeSet<LbChain> {
        self.services
            .values()
            .flat_map(|s| s.chains.iter().copied())
            .collect()
    }

    /// Every element, deduplicated: when two Services claim the same key
    /// (e.g. one externalIP:port on two Services) the first in
    /// (namespace, name) order wins, as the applier does.
    pub fn elements(&self) -> BTreeMap<ElemKey, Value> {
        let mut out = BTreeMap::new();
        for rules in self.services.values() {
            for (k, v) in &rules.elements {
                out.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        out
    }

    /// The `nft -f` structure script of this ruleset.
    pub fn structure_script(&self) -> String {
        structure_script(&self.options.structure, &self.chains())
    }

    /// Health-check servers wanted: port -> check.
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        self.services
            .values()
            .filter_map(|s| s.health_check.clone())
            .map(|h| (h.port, h))
            .collect()
    }
}

/// The printed plan: the structure script, then every element as an `add
/// element` line, with a comment per Service port. `nft -f` accepts it as
/// is (the comments are `#` lines).
impl fmt::Display for Ruleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# service proxy for node {}: {} services",
            self.options.node_name,
            self.services.len()
        )?;
        for rules in self.services.values() {
            for line in &rules.summary {
                writeln!(f, "# {line}")?;
            }
        }
        f.write_str(&self.structure_script())?;
        for (k, v) in self.elements() {
            writeln!(f, "{}", element_line(&k, &v))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;

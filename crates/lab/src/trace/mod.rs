//! `podwire lab trace SRC DEST[:PORT]`: a real probe packet from SRC, traced
//! by the kernel (nftables `meta nftrace`) in every namespace of the lab,
//! reported hop by hop: the DNS answer, the route chosen in each namespace,
//! every rule matched in the lab's tables, address rewrites, the node it
//! crossed to, and delivery or the point where it was dropped.
//!
//! places (where a trace starts and goes) → dns (the name, asked from SRC)
//! → probe (trace tables + the packet) → kernel::nftrace (events of all
//! namespaces on one socket) → report (visits → hops) → [`Trace`].

pub mod dns;
pub mod explain;
pub mod places;
pub mod probe;
pub mod report;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use podwire_kernel::nftrace::TraceListener;
use podwire_kernel::{Netlink, Netns};

use crate::error::{LabError, Result};
use crate::inspect::RunningLab;
use crate::paths::LabPaths;

use places::{Place, PlaceKind};
pub use probe::Proto;
use probe::{Outcome, TraceTables};
use report::{Context, Hop, Visit};

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    pub src: String,
    pub dest: String,
    pub proto: Proto,
    pub explain: bool,
    /// How long to wait for the answer.
    pub timeout: Duration,
}

/// A finished trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// What was sent, and the DNS answer.
    pub header: Vec<String>,
    /// `--explain`: the plan-level view.
    pub explain: Vec<String>,
    pub hops: Vec<Hop>,
    /// The last line: delivered, refused, or where it was dropped.
    pub verdict: String,
    /// Whether the probe was answered (SYN-ACK, reply, echo reply).
    pub delivered: bool,
}

impl Trace {
    /// The places the probe crossed, in order (forward direction only,
    /// each once): what `lab graph --trace` draws.
    pub fn path(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for h in self.hops.iter().filter(|h| h.forward) {
            if out.last() != Some(&h.place) {
                out.push(h.place.clone());
            }
        }
        out
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.header {
            writeln!(f, "{line}")?;
        }
        if !self.explain.is_empty() {
            writeln!(f, "plan:")?;
            for line in &self.explain {
                writeln!(f, "  {line}")?;
            }
        }
        let mut n = 0;
        for hop in &self.hops {
            n += 1;
            let arrow = if hop.forward { "→" } else { "←" };
            writeln!(f, "{n:>2} {arrow} {}", hop.place)?;
            for line in &hop.lines {
                writeln!(f, "       {line}")?;
            }
        }
        writeln!(f, "{}", self.verdict)
    }
}

/// Runs a trace in lab `lab`.
pub fn trace(lab: &str, req: &TraceRequest) -> Result<Trace> {
    let RunningLab {
        paths,
        spec,
        plan,
        state,
        mode,
    } = RunningLab::open(lab)?;
    let kube = mode == crate::ControlPlaneMode::Kubernetes;
    let all = places::places(&paths, &spec, &plan, &state, kube);
    let src = places::find_source(&all, &req.src)?.clone();
    let src_ns = Netns::open(&src.netns)?;
    let mut header = Vec::new();

    // DEST: an address, a place, or a name asked from SRC.
    let dest = places::parse_dest(&req.dest)?;
    let port = dest.port.unwrap_or(80);
    let ip: IpAddr = if let Ok(ip) = dest.host.parse() {
        ip
    } else if let Some(p) = all.iter().find(|p| {
        p.name == dest.host
            || p.name == format!("default/{}", dest.host)
            || (dest.host == "external" && p.kind == PlaceKind::External)
    }) {
        p.ip.ok_or_else(|| LabError::Invalid(format!("{} has no address yet", p.label)))?
    } else {
        resolve_name(
            &paths,
            &spec,
            &state,
            &src,
            &src_ns,
            &dest.host,
            &mut header,
        )?
    };
    let target = SocketAddr::new(ip, port);
    let id = probe::pick_id();
    let service = places::service_of_address(&state, &all, ip, port);
    header.insert(
        0,
        format!(
            "trace {} {} from {} to {}{}",
            req.proto.name(),
            if req.proto == Proto::Icmp {
                format!("echo id {id}")
            } else {
                format!("source port {id}")
            },
            src.label,
            if req.proto == Proto::Icmp {
                ip.to_string()
            } else {
                target.to_string()
            },
            service
                .as_ref()
                .map(|((ns, name), how)| format!(" (Service {ns}/{name} {how})"))
                .unwrap_or_default()
        ),
    );
    let explain = match (&service, req.explain) {
        (Some((key, _)), true) => explain::explain_service(&state, &all, key),
        (None, true) => vec![match places::place_of_ip(&all, ip) {
            Some(p) => format!("{ip} is {}: no Service in between", p.label),
            None => format!("{ip} is no Service and no place of the lab"),
        }],
        _ => Vec::new(),
    };

    // Every namespace of the lab that exists is watched.
    let mut listener = TraceListener::new()?;
    let mut by_nsid: HashMap<i32, Place> = HashMap::new();
    let mut opened: Vec<(String, Netns)> = Vec::new();
    let mut ns_of: HashMap<i32, Netns> = HashMap::new();
    for place in &all {
        let Ok(ns) = Netns::open(&place.netns) else {
            continue;
        };
        let nsid = listener.watch(&ns)?;
        by_nsid.insert(nsid, place.clone());
        opened.push((place.label.clone(), Netns::open(ns.path())?));
        ns_of.insert(nsid, ns);
    }
    let tables = TraceTables::install(&opened, req.proto, id)?;
    let sent = src_ns.run(|| probe::send(req.proto, target, id, req.timeout))??;
    let events = listener.collect(Duration::from_millis(300), Duration::from_secs(2))?;
    let own_table = tables.table.clone();
    // The trace tables go before the probe's socket closes: its end is
    // not traced.
    drop(tables);

    let visits = report::visits(&events, id, req.proto);
    let links = link_names(&events, &ns_of);
    let rules = rule_texts(&events, &ns_of, &own_table);
    let routes = route_lines(&visits, &ns_of, &links);
    let ctx = Context {
        own_table: &own_table,
        places: &by_nsid,
        all: &all,
        state: &state,
        links: &links,
        rules: &rules,
        routes: &routes,
    };
    let hops = report::render(&visits, &ctx);
    let verdict = verdict(&sent.outcome, req, &visits, &ctx, &routes, target);
    Ok(Trace {
        header,
        explain,
        hops,
        verdict,
        delivered: sent.outcome == Outcome::Answered,
    })
}

/// A name asked from SRC: a pod asks its resolver (resolv.conf, search
/// list); other places have no cluster DNS, so a Service name is looked up
/// in the cluster state.
fn resolve_name(
    paths: &LabPaths,
    spec: &crate::manifest::LabSpec,
    state: &podwire_model::ClusterState,
    src: &Place,
    src_ns: &Netns,
    host: &str,
    header: &mut Vec<String>,
) -> Result<IpAddr> {
    if let PlaceKind::Pod {
        namespace, name, ..
    } = &src.kind
    {
        // The pod's own resolv.conf (files-store labs), else the one a
        // kubelet writes for a ClusterFirst pod.
        let conf = std::fs::read_to_string(paths.pod_dir(namespace, name).join("resolv.conf"))
            .unwrap_or_else(|_| {
                let domain = &spec.cluster_domain;
                let dns = podwire_model::kube_dns_ip(spec.service_cidr)
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                format!(
                    "nameserver {dns}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n"
                )
            });
        let answer = src_ns
            .run(|| dns::resolve(&conf, host, Duration::from_secs(2)))?
            .ok_or_else(|| LabError::Invalid(format!("{} has no nameserver", src.label)))?;
        header.push(format!(
            "dns: {} asked {} — {}",
            src.label,
            answer.server,
            answer.tried.join("; ")
        ));
        return match answer.addresses.first() {
            Some(ip) => {
                header.push(format!(
                    "dns: {} → {} ({})",
                    answer.name,
                    answer
                        .addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    answer.rcode
                ));
                Ok(IpAddr::V4(*ip))
            }
            None => Err(LabError::Failed(format!(
                "dns: {host} does not resolve from {} ({}): nothing to trace",
                src.label, answer.rcode
            ))),
        };
    }
    let key = places::service_of_name(state, host, "default", &spec.cluster_domain)
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "cannot resolve {host:?} from {} (no cluster DNS there): give an IP, a pod, a node or a Service name"
            , src.label))
        })?;
    let ip = state
        .services
        .get(&key)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            LabError::Invalid(format!("Service {}/{} has no ClusterIP", key.0, key.1))
        })?;
    header.push(format!(
        "dns: {} has no cluster DNS; Service {}/{} has ClusterIP {ip} (cluster state)",
        src.label, key.0, key.1
    ));
    Ok(ip)
}

fn link_names(
    events: &[podwire_kernel::nftrace::TraceEvent],
    ns_of: &HashMap<i32, Netns>,
) -> HashMap<(i32, u32), String> {
    let mut out = HashMap::new();
    let mut sockets: HashMap<i32, Netlink> = HashMap::new();
    for e in events {
        let Some(nsid) = e.nsid else { continue };
        for idx in [e.iif, e.oif].into_iter().flatten() {
            if out.contains_key(&(nsid, idx)) {
                continue;
            }
            let Some(ns) = ns_of.get(&nsid) else { continue };
            let nl = match sockets.entry(nsid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match Netlink::in_netns(ns) {
                    Ok(nl) => e.insert(nl),
                    Err(_) => continue,
                },
            };
            if let Ok(Some(link)) = nl.link_by_index(idx) {
                out.insert((nsid, idx), link.name);
            }
        }
    }
    out
}

fn family_word(f: u8) -> &'static str {
    match f {
        2 => "ip",
        7 => "bridge",
        10 => "ip6",
        3 => "arp",
        5 => "netdev",
        _ => "inet",
    }
}

/// The text of every rule the events name, from `nft -a list table` in
/// its namespace.
fn rule_texts(
    events: &[podwire_kernel::nftrace::TraceEvent],
    ns_of: &HashMap<i32, Netns>,
    own_table: &str,
) -> HashMap<(i32, u8, String, u64), String> {
    let mut out = HashMap::new();
    let mut listed = std::collections::HashSet::new();
    for e in events {
        let (Some(nsid), Some(_)) = (e.nsid, e.rule_handle) else {
            continue;
        };
        if e.table == own_table || !listed.insert((nsid, e.family, e.table.clone())) {
            continue;
        }
        let Some(ns) = ns_of.get(&nsid) else { continue };
        let text = ns.run(|| {
            std::process::Command::new("nft")
                .args(["-a", "list", "table", family_word(e.family), &e.table])
                .output()
        });
        let Ok(Ok(output)) = text else { continue };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((rule, handle)) = line.trim().rsplit_once(" # handle ")
                && let Ok(h) = handle.trim().parse::<u64>()
            {
                out.insert(
                    (nsid, e.family, e.table.clone(), h),
                    rule.trim().to_string(),
                );
            }
        }
    }
    out
}

/// `ip route get` for each forward visit: the destination as it left (after
/// DNAT), from the source as it came, on the device it came in by.
fn route_lines(
    visits: &[Visit],
    ns_of: &HashMap<i32, Netns>,
    links: &HashMap<(i32, u32), String>,
) -> HashMap<usize, String> {
    let mut out = HashMap::new();
    for (i, v) in visits.iter().enumerate() {
        let (Some(first), Some(last)) = (v.first_packet(), v.last_packet()) else {
            continue;
        };
        if !v.forward {
            continue;
        }
        let Some(ns) = ns_of.get(&v.nsid) else {
            continue;
        };
        let iif = v.iif();
        let src = iif.map(|_| first.src);
        let result =
            Netlink::in_netns(ns).and_then(|mut nl| nl.route_get(last.dst, src, iif, None));
        let name = |idx: u32| {
            links
                .get(&(v.nsid, idx))
                .cloned()
                .or_else(|| {
                    Netlink::in_netns(ns)
                        .ok()?
                        .link_by_index(idx)
                        .ok()
                        .flatten()
                        .map(|l| l.name)
                })
                .unwrap_or_else(|| format!("if{idx}"))
        };
        let line = match result {
            Ok(d) if d.kind == "unicast" => format!(
                "route: {}{}{}{}",
                last.dst,
                d.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                d.oif
                    .map(|o| format!(" dev {}", name(o)))
                    .unwrap_or_default(),
                table_suffix(d.table)
            ),
            Ok(d) if d.kind == "local" => {
                format!("route: {} is local here{}", last.dst, table_suffix(d.table))
            }
            Ok(d) => format!(
                "route: {} is {}{}: dropped by routing",
                last.dst,
                d.kind,
                table_suffix(d.table)
            ),
            Err(err) => format!("route: no route to {} ({})", last.dst, root_cause(&err)),
        };
        out.insert(i, line);
    }
    out
}

/// ` (table main)`, or nothing when the kernel did not say.
fn table_suffix(table: Option<u32>) -> String {
    table
        .map(|t| format!(" (table {})", table_name(t)))
        .unwrap_or_default()
}

fn table_name(t: u32) -> String {
    match t {
        254 => "main".into(),
        255 => "local".into(),
        253 => "default".into(),
        other => other.to_string(),
    }
}

fn root_cause(err: &podwire_kernel::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// The last line: what the sender saw, and for a packet that got no answer,
/// the last place it was seen and why it went no further.
fn verdict(
    outcome: &Outcome,
    req: &TraceRequest,
    visits: &[Visit],
    ctx: &Context<'_>,
    routes: &HashMap<usize, String>,
    target: SocketAddr,
) -> String {
    let last_forward = visits.iter().enumerate().rev().find(|(_, v)| v.forward);
    let reached = last_forward.and_then(|(_, v)| v.last_packet()).map(|p| {
        let who = report::owner(ctx, p.dst).unwrap_or_else(|| p.dst.to_string());
        (who, p.dst, p.dport)
    });
    let place_of = |v: &Visit| {
        ctx.places
            .get(&v.nsid)
            .map(|p| p.label.clone())
            .unwrap_or_default()
    };
    match outcome {
        Outcome::Answered => match (req.proto, reached) {
            (Proto::Tcp, Some((who, ip, port))) => {
                format!("delivered: SYN-ACK from {who} ({ip}:{port})")
            }
            (_, Some((who, ..))) => format!("delivered: answered by {who}"),
            (_, None) => format!("delivered: answered by {target}"),
        },
        Outcome::Refused => {
            let rejected = visits.iter().find_map(|v| {
                v.events
                    .iter()
                    .find(|e| {
                        e.rule_handle.is_some_and(|h| {
                            ctx.rules
                                .get(&(v.nsid, e.family, e.table.clone(), h))
                                .is_some_and(|r| r.contains("reject"))
                        })
                    })
                    .map(|e| format!("{} ({}/{})", place_of(v), e.table, e.chain))
            });
            let reset_by = visits.iter().find(|v| !v.forward).map(&place_of);
            match (rejected, reset_by, reached) {
                (Some(by), _, _) => format!("refused: rejected by {by} (no endpoint)"),
                (None, _, Some((who, ip, port))) => {
                    format!("refused: RST from {who}: nothing listens on {ip}:{port}")
                }
                (None, Some(by), None) => format!("refused: RST from {by}"),
                (None, None, None) => "refused (RST or ICMP port unreachable)".into(),
            }
        }
        other => {
            let what = match other {
                Outcome::Unreachable(why) => format!("unreachable: {why}"),
                _ => format!("no answer in {:?}", req.timeout),
            };
            match last_forward {
                Some((i, v)) => {
                    let why = if let Some(d) = v.dropped_by() {
                        format!("dropped by {}/{}", d.table, d.chain)
                    } else if let Some(r) = routes
                        .get(&i)
                        .filter(|r| r.contains("no route") || r.contains("dropped"))
                    {
                        r.clone()
                    } else if v.left(ctx.own_table) {
                        "it left and was not seen again".to_string()
                    } else {
                        "it went no further".to_string()
                    };
                    format!("{what}; last seen in {}: {why}", place_of(v))
                }
                None => format!("{what}; the probe was never seen leaving {}", req.src),
            }
        }
    }
}

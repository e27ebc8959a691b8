//! The report of a trace, from the kernel's trace events (pure: unit-tested
//! with made-up events). Events are cut into visits (one namespace, one
//! direction, in the order the kernel produced them); each visit becomes a
//! hop: where the packet came in, every rule it matched in the lab's own
//! tables, the address rewrites (DNAT to which endpoint of which Service,
//! masquerade), the route chosen and where it went next.

use std::collections::HashMap;
use std::net::IpAddr;

use podwire_kernel::nftrace::{PacketInfo, TraceEvent, TraceKind, TraceVerdict};
use podwire_model::ClusterState;

use super::places::{Place, PlaceKind, place_of_ip, service_of_address};
use super::probe::Proto;

/// The events of one namespace in one direction, in kernel order.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub nsid: i32,
    /// The probe's direction (SYN, datagram, echo request); false: the
    /// answer coming back.
    pub forward: bool,
    pub events: Vec<TraceEvent>,
}

impl Visit {
    pub fn first_packet(&self) -> Option<PacketInfo> {
        self.events.iter().find_map(|e| e.packet)
    }
    pub fn last_packet(&self) -> Option<PacketInfo> {
        self.events.iter().rev().find_map(|e| e.packet)
    }
    /// The device it arrived on (None: sent from this namespace).
    pub fn iif(&self) -> Option<u32> {
        self.events.iter().find_map(|e| e.iif)
    }
    /// The device it left by (the last one seen).
    pub fn oif(&self) -> Option<u32> {
        self.events.iter().rev().find_map(|e| e.oif)
    }
    /// Whether it reached the local input hook (delivered to this namespace).
    pub fn delivered_locally(&self, own_table: &str) -> bool {
        self.events
            .iter()
            .any(|e| e.table == own_table && e.chain == "seen-in")
    }
    /// Whether it left through postrouting.
    pub fn left(&self, own_table: &str) -> bool {
        self.events
            .iter()
            .any(|e| e.table == own_table && e.chain == "seen-post")
    }
    /// The drop verdict that ended it here, if any.
    pub fn dropped_by(&self) -> Option<&TraceEvent> {
        self.events
            .iter()
            .find(|e| e.verdict == Some(TraceVerdict::Drop))
    }
}

fn is_forward(p: &PacketInfo, id: u16, proto: Proto) -> bool {
    match proto {
        Proto::Icmp => p.dport >> 8 == 8,
        // Masquerade may change the source port; only answers go to it.
        Proto::Tcp | Proto::Udp => p.sport == id || p.dport != id,
    }
}

/// Cuts the events into visits, up to the answer's arrival back at the
/// source (what follows, the handshake's ACK, adds nothing).
pub fn visits(events: &[TraceEvent], id: u16, proto: Proto) -> Vec<Visit> {
    let mut all = split(events, id, proto);
    let source = all.first().map(|v| v.nsid);
    if let Some(end) = all
        .iter()
        .position(|v| !v.forward && Some(v.nsid) == source)
    {
        all.truncate(end + 1);
    }
    all
}

fn split(events: &[TraceEvent], id: u16, proto: Proto) -> Vec<Visit> {
    let mut out: Vec<Visit> = Vec::new();
    // Direction per (namespace, skb): events without headers inherit it.
    let mut last_dir: HashMap<(i32, u32), bool> = HashMap::new();
    for e in events {
        let nsid = e.nsid.unwrap_or(-1);
        let forward = match e.packet {
            Some(p) => is_forward(&p, id, proto),
            None => last_dir.get(&(nsid, e.id)).copied().unwrap_or(true),
        };
        last_dir.insert((nsid, e.id), forward);
        match out.last_mut() {
            Some(v) if v.nsid == nsid && v.forward == forward => v.events.push(e.clone()),
            _ => out.push(Visit {
                nsid,
                forward,
                events: vec![e.clone()],
            }),
        }
    }
    out
}

/// What the report needs beyond the events (read from the kernel and the
/// cluster state by the caller).
pub struct Context<'a> {
    pub own_table: &'a str,
    pub places: &'a HashMap<i32, Place>,
    pub all: &'a [Place],
    pub state: &'a ClusterState,
    /// Device names by (nsid, ifindex).
    pub links: &'a HashMap<(i32, u32), String>,
    /// Rule texts by (nsid, family, table, handle).
    pub rules: &'a HashMap<(i32, u8, String, u64), String>,
    /// The route line of each forward visit, by visit index.
    pub routes: &'a HashMap<usize, String>,
}

/// One hop of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub place: String,
    /// The node this place is (or is on); None for the router and the
    /// external host.
    pub node: Option<String>,
    pub forward: bool,
    pub lines: Vec<String>,
}

fn endpoint(ip: IpAddr, port: u16, proto: u8) -> String {
    match (ip, proto) {
        (_, 1 | 58) => ip.to_string(),
        (IpAddr::V6(v6), _) => format!("[{v6}]:{port}"),
        (IpAddr::V4(v4), _) => format!("{v4}:{port}"),
    }
}

fn flags(p: &PacketInfo) -> &'static str {
    if p.proto != 6 {
        return "";
    }
    match p.tcp_flags & 0x17 {
        0x02 => " [SYN]",
        0x12 => " [SYN-ACK]",
        0x14 | 0x04 => " [RST]",
        0x10 => " [ACK]",
        _ => "",
    }
}

fn family_name(f: u8) -> &'static str {
    match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "?",
    }
}

fn node_of(place: &Place) -> Option<String> {
    match &place.kind {
        PlaceKind::Node => Some(place.name.clone()),
        PlaceKind::Pod { node, .. } => Some(node.clone()),
        PlaceKind::Router | PlaceKind::External => None,
    }
}

/// Who owns an address, for the report: `pod apps/web-1 (node02)`.
pub fn owner(ctx: &Context<'_>, ip: IpAddr) -> Option<String> {
    place_of_ip(ctx.all, ip).map(|p| p.label.clone())
}

/// Renders every visit as a hop.
pub fn render(visits: &[Visit], ctx: &Context<'_>) -> Vec<Hop> {
    let mut hops = Vec::new();
    for (i, v) in visits.iter().enumerate() {
        let place = ctx.places.get(&v.nsid);
        let label = place
            .map(|p| p.label.clone())
            .unwrap_or_else(|| format!("namespace id {}", v.nsid));
        let link = |idx: u32| {
            ctx.links
                .get(&(v.nsid, idx))
                .cloned()
                .unwrap_or_else(|| format!("if{idx}"))
        };
        let mut lines = Vec::new();
        if let Some(p) = v.first_packet() {
            let how = match v.iif() {
                Some(idx) => format!("in on {}", link(idx)),
                None => "sent from here".to_string(),
            };
            lines.push(format!(
                "{how}: {} → {}{}",
                endpoint(p.src, p.sport, p.proto),
                endpoint(p.dst, p.dport, p.proto),
                flags(&p)
            ));
        }
        for e in &v.events {
            // The trace table's own events, and the ends of chains
            // (handle 0, nothing decided), say nothing.
            if e.table == ctx.own_table
                || (e.rule_handle.is_none_or(|h| h == 0)
                    && matches!(e.verdict, None | Some(TraceVerdict::Continue)))
            {
                continue;
            }
            let verdict = e
                .verdict
                .as_ref()
                .map(|v| format!(" → {v}"))
                .unwrap_or_default();
            match e.kind {
                TraceKind::Rule => {
                    let text = e
                        .rule_handle
                        .and_then(|h| {
                            ctx.rules
                                .get(&(v.nsid, e.family, e.table.clone(), h))
                                .cloned()
                        })
                        .unwrap_or_else(|| format!("rule handle {}", e.rule_handle.unwrap_or(0)));
                    lines.push(format!(
                        "rule {} {}/{}: {text}{verdict}",
                        family_name(e.family),
                        e.table,
                        e.chain
                    ));
                }
                TraceKind::Policy if e.verdict == Some(TraceVerdict::Drop) => {
                    lines.push(format!(
                        "policy {} {}/{}: drop",
                        family_name(e.family),
                        e.table,
                        e.chain
                    ));
                }
                _ => {}
            }
        }
        if let (Some(a), Some(b)) = (v.first_packet(), v.last_packet()) {
            if (a.dst, a.dport) != (b.dst, b.dport) {
                let mut line = format!(
                    "DNAT {} → {}",
                    endpoint(a.dst, a.dport, a.proto),
                    endpoint(b.dst, b.dport, b.proto)
                );
                if v.forward {
                    if let Some(((ns, name), how)) =
                        service_of_address(ctx.state, ctx.all, a.dst, a.dport)
                    {
                        line.push_str(&format!(" (Service {ns}/{name} {how}"));
                        match owner(ctx, b.dst) {
                            Some(o) => line.push_str(&format!(" → endpoint {o})")),
                            None => line.push(')'),
                        }
                    }
                } else {
                    line.push_str(" (reply to the masqueraded source)");
                }
                lines.push(line);
            }
            if (a.src, a.sport) != (b.src, b.sport) {
                let what = if v.forward {
                    "SNAT (masquerade)"
                } else {
                    "reply source restored (un-DNAT)"
                };
                lines.push(format!(
                    "{what} {} → {}",
                    endpoint(a.src, a.sport, a.proto),
                    endpoint(b.src, b.sport, b.proto)
                ));
            }
        }
        if v.forward
            && let Some(route) = ctx.routes.get(&i)
        {
            lines.push(route.clone());
        }
        if let Some(drop) = v.dropped_by() {
            lines.push(format!(
                "DROPPED here by {} {}/{}",
                family_name(drop.family),
                drop.table,
                drop.chain
            ));
        } else if v.delivered_locally(ctx.own_table) {
            lines.push("delivered to this namespace (input)".into());
        } else if v.left(ctx.own_table) {
            // The next visit in the same direction: a reply seen next means
            // the packet left the traced flow here.
            let next = visits
                .get(i + 1)
                .filter(|n| n.forward == v.forward)
                .and_then(|n| ctx.places.get(&n.nsid));
            let out = v.oif().map(link).unwrap_or_else(|| "?".into());
            let mut line = format!("out on {out}");
            if let Some(n) = next {
                let crossing = if out.starts_with("podwire.") {
                    format!(" (VXLAN) → {}", n.label)
                } else {
                    format!(" → {}", n.label)
                };
                line.push_str(&crossing);
                if out.starts_with("podwire.")
                    && let (PlaceKind::Node, Some(ip)) = (&n.kind, n.ip)
                {
                    line.push_str(&format!(", encapsulated to {ip}:8472"));
                }
            } else if v.forward && lines.iter().any(|l| l.starts_with("SNAT")) {
                // The trace rules match the probe's own source port, which
                // a fully-random masquerade replaces.
                line.push_str(
                    " (not traced further: masquerade gave the packet a new source port)",
                );
            }
            lines.push(line);
        }
        hops.push(Hop {
            place: label,
            node: place.and_then(node_of),
            forward: v.forward,
            lines,
        });
    }
    hops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        nsid: i32,
        table: &str,
        chain: &str,
        kind: TraceKind,
        packet: Option<PacketInfo>,
    ) -> TraceEvent {
        TraceEvent {
            nsid: Some(nsid),
            family: 1,
            table: table.into(),
            chain: chain.into(),
            rule_handle: (kind == TraceKind::Rule).then_some(9),
            kind,
            verdict: Some(TraceVerdict::Accept),
            id: 1,
            iif: None,
            oif: None,
            mark: None,
            packet,
        }
    }

    fn pkt(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Option<PacketInfo> {
        Some(PacketInfo {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            sport,
            dport,
            tcp_flags: flags,
        })
    }

    fn place(name: &str, kind: PlaceKind, ip: &str) -> Place {
        Place {
            label: format!("{name}!"),
            name: name.into(),
            kind,
            netns: name.into(),
            ip: Some(ip.parse().unwrap()),
        }
    }

    #[test]
    fn visits_split_by_namespace_and_direction_and_name_the_dnat() {
        let own = "podwire-trace-1-40000";
        let syn = pkt("10.244.1.5", 40000, "10.96.0.20", 80, 0x02);
        let dnated = pkt("10.244.1.5", 40000, "10.244.2.7", 8080, 0x02);
        let mut e1 = ev(1, own, "seen-out", TraceKind::Policy, syn);
        e1.oif = Some(2);
        let mut post1 = ev(1, own, "seen-post", TraceKind::Policy, syn);
        post1.oif = Some(2);
        let mut pre2 = ev(2, own, "seen-pre", TraceKind::Policy, syn);
        pre2.iif = Some(5);
        let mut rule = ev(2, "podwire-proxy", "services", TraceKind::Rule, syn);
        rule.verdict = Some(TraceVerdict::Goto("lb4-2".into()));
        let mut post2 = ev(2, own, "seen-post", TraceKind::Policy, dnated);
        post2.oif = Some(7);
        let pre3 = ev(3, own, "seen-pre", TraceKind::Policy, dnated);
        let synack = pkt("10.244.2.7", 8080, "10.244.1.5", 40000, 0x12);
        let back = ev(3, own, "seen-out", TraceKind::Policy, synack);
        let events = vec![e1, post1, pre2, rule, post2, pre3, back];
        let vs = visits(&events, 40000, Proto::Tcp);
        assert_eq!(
            vs.iter().map(|v| (v.nsid, v.forward)).collect::<Vec<_>>(),
            vec![(1, true), (2, true), (3, true), (3, false)]
        );

        let client = place(
            "default/client",
            PlaceKind::Pod {
                namespace: "default".into(),
                name: "client".into(),
                node: "node01".into(),
            },
            "10.244.1.5",
        );
        let node = place("node01", PlaceKind::Node, "192.168.56.11");
        let web = place(
            "apps/web-1",
            PlaceKind::Pod {
                namespace: "apps".into(),
                name: "web-1".into(),
                node: "node02".into(),
            },
            "10.244.2.7",
        );
        let all = vec![client.clone(), node.clone(), web.clone()];
        let places: HashMap<i32, Place> = [(1, client), (2, node), (3, web)].into();
        let mut state = ClusterState::default();
        let svc: podwire_model::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-service", "namespace": "apps"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
        }))
        .unwrap();
        state.insert(podwire_model::Object::Service(svc));
        let links: HashMap<(i32, u32), String> = [
            ((2, 5), "cni0".to_string()),
            ((2, 7), "podwire.1".to_string()),
        ]
        .into();
        let rules: HashMap<(i32, u8, String, u64), String> = [(
            (2, 1, "podwire-proxy".to_string(), 9),
            "ip daddr . meta l4proto . th dport vmap @svc4".to_string(),
        )]
        .into();
        let routes: HashMap<usize, String> = [(
            1,
            "route: 10.244.2.7 via 10.244.2.0 dev podwire.1".to_string(),
        )]
        .into();
        let ctx = Context {
            own_table: own,
            places: &places,
            all: &all,
            state: &state,
            links: &links,
            rules: &rules,
            routes: &routes,
        };
        let hops = render(&vs, &ctx);
        let node_hop = hops[1].lines.join("\n");
        assert!(
            node_hop.contains("in on cni0: 10.244.1.5:40000 → 10.96.0.20:80 [SYN]"),
            "{node_hop}"
        );
        assert!(node_hop.contains("rule inet podwire-proxy/services: ip daddr . meta l4proto . th dport vmap @svc4 → goto lb4-2"), "{node_hop}");
        assert!(
            node_hop.contains("DNAT 10.96.0.20:80 → 10.244.2.7:8080 (Service apps/web-service port 80 → endpoint apps/web-1!)"),
            "{node_hop}"
        );
        assert!(
            node_hop.contains("out on podwire.1 (VXLAN) → apps/web-1!"),
            "{node_hop}"
        );
        assert_eq!(hops[1].node.as_deref(), Some("node01"));
        assert!(hops[3].lines[0].contains("[SYN-ACK]"), "{:?}", hops[3]);
    }
}

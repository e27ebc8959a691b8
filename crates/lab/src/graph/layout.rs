//! Where everything of a [`LabPicture`] goes (pure, deterministic): the
//! external host and the router on top, one bus per underlay under them,
//! the nodes on their underlay's bus with their pods stacked inside, the
//! node-to-node routes as curves under the nodes (the farther apart, the
//! deeper), the Services in a grid below, and the trace's path as points
//! through the boxes it crossed. Text is measured as DejaVu Sans Mono
//! (0.6 em per character), the font the SVG asks for.

use std::collections::BTreeMap;

use super::{LabPicture, LinkKind, NodeBox, PodBox, ServiceBox, Step};

/// Outer margin.
pub const MARGIN: i32 = 24;
/// Body text size (px) and the width of one character of it.
pub const FONT: i32 = 12;
const CHAR_W: f64 = 7.3;
/// One line of body text.
pub const LINE: i32 = 15;
/// A pod's box height, and the gap between pods.
pub const POD_H: i32 = 34;
const POD_GAP: i32 = 6;
const NODE_GAP: i32 = 48;
/// The text-free lane at a node's right edge.
const TRACE_LANE: i32 = 28;
const GROUP_GAP: i32 = 96;
const SERVICE_GAP: i32 = 24;
/// At most this many endpoints are listed in a Service's box.
pub const MAX_ENDPOINTS: usize = 6;

/// A box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    pub fn right(&self) -> i32 {
        self.x + self.w
    }
    pub fn bottom(&self) -> i32 {
        self.y + self.h
    }
    pub fn cx(&self) -> i32 {
        self.x + self.w / 2
    }
    pub fn cy(&self) -> i32 {
        self.y + self.h / 2
    }
}

/// A point.
pub type Point = (i32, i32);

/// One underlay's bus: a horizontal bar the nodes hang from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus {
    /// Index into `picture.underlays`.
    pub underlay: usize,
    pub x1: i32,
    pub x2: i32,
    pub y: i32,
}

/// A node-to-node route drawn as a quadratic curve under the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Curve {
    pub from: usize,
    pub to: usize,
    pub kind: LinkKind,
    /// Both nodes route to each other this way (no arrowhead).
    pub both_ways: bool,
    pub start: Point,
    pub control: Point,
    pub end: Point,
    /// Where its label goes (just under the curve's lowest point).
    pub label: Point,
    /// The routes, as `node01: 10.244.2.0/24 via ...`.
    pub routes: Vec<String>,
}

/// A line from a Service's box to one of its endpoint pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointLine {
    pub service: usize,
    pub from: Point,
    pub to: Point,
    pub ready: bool,
}

/// The whole picture's geometry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    pub width: i32,
    pub height: i32,
    /// Baselines of the title lines.
    pub title_y: i32,
    pub router: Rect,
    pub external: Option<Rect>,
    pub buses: Vec<Bus>,
    /// In `picture.nodes` order.
    pub nodes: Vec<Rect>,
    /// Height of a node's header (name and addresses) above its pods.
    pub node_header: i32,
    /// Pods on a node, by (namespace, name).
    pub pods: BTreeMap<(String, String), Rect>,
    pub curves: Vec<Curve>,
    /// Baseline of the "Services" heading.
    pub services_y: i32,
    /// In `picture.services` order.
    pub services: Vec<Rect>,
    pub endpoint_lines: Vec<EndpointLine>,
    /// Baseline of the first line under everything (pending pods, notes).
    pub footer_y: i32,
    /// The trace's path through the boxes it crossed.
    pub trace_points: Vec<Point>,
}

/// Pixel width of `text` at the body size.
pub fn text_width(text: &str) -> i32 {
    (text.chars().count() as f64 * CHAR_W).ceil() as i32
}

/// The lines under a node's name.
pub fn node_lines(node: &NodeBox) -> Vec<String> {
    let mut out = vec![
        format!("eth0 {}", node.eth0_ip),
        // No-break spaces: SVG collapses ordinary ones.
        format!("\u{a0}\u{a0}\u{a0}\u{a0}\u{a0}{}", node.eth0_mac),
        format!("cni0 {}", node.cni0.as_deref().unwrap_or("(no pods yet)")),
    ];
    if let Some(v) = &node.vxlan {
        out.push(format!("{} {v}", super::collect::VXLAN_DEVICE));
    }
    out.push(format!("pods {}", node.pod_cidr));
    out
}

/// The two lines of a pod's box.
pub fn pod_lines(pod: &PodBox) -> (String, String) {
    let ip = pod.ip.as_deref().unwrap_or("no IP yet");
    let mut second = format!("{} · {ip}", pod.namespace);
    if pod.host_network {
        second.push_str(" · host network");
    }
    if !pod.ready {
        second.push_str(" · not ready");
    }
    (pod.name.clone(), second)
}

/// The lines of a Service's box after its name.
pub fn service_lines(svc: &ServiceBox, pods: &[PodBox]) -> Vec<String> {
    let mut out = vec![format!("{} {}", svc.kind, svc.cluster_ip)];
    out.extend(svc.ports.iter().cloned());
    if svc.endpoints.is_empty() {
        out.push("no endpoints".into());
    }
    for ep in svc.endpoints.iter().take(MAX_ENDPOINTS) {
        let who = match &ep.pod {
            Some((ns, name)) => {
                let node = pods
                    .iter()
                    .find(|p| p.namespace == *ns && p.name == *name)
                    .and_then(|p| p.node.clone());
                let name = if *ns == svc.namespace {
                    name.clone()
                } else {
                    format!("{ns}/{name}")
                };
                match node {
                    Some(n) => format!(" {name} ({n})"),
                    None => format!(" {name}"),
                }
            }
            None => String::new(),
        };
        out.push(format!(
            "→ {}{who}{}",
            ep.ip,
            if ep.ready { "" } else { " not ready" }
        ));
    }
    if svc.endpoints.len() > MAX_ENDPOINTS {
        out.push(format!(
            "… and {} more",
            svc.endpoints.len() - MAX_ENDPOINTS
        ));
    }
    out
}

/// The title lines: the lab, and (with a trace) the trace's verdict.
pub fn title_lines(p: &LabPicture) -> Vec<String> {
    let mut out = vec![
        format!("lab {}", p.lab),
        format!(
            "{} routing · pods {} · services {} · control plane: {}",
            p.routing, p.pod_cidr, p.service_cidr, p.control_plane
        ),
    ];
    if let Some(t) = &p.trace {
        out.push(format!("trace {}: {}", t.title, t.verdict));
    }
    out
}

/// The external host's lines.
pub fn external_lines(p: &LabPicture) -> Vec<String> {
    p.external
        .iter()
        .flat_map(|e| {
            [
                e.name.clone(),
                e.ip.clone(),
                format!("gateway {}", e.gateway),
            ]
        })
        .collect()
}

/// The router's lines.
pub fn router_lines(p: &LabPicture) -> Vec<String> {
    let mut legs: Vec<String> = p.underlays.iter().map(|u| u.router_ip.clone()).collect();
    legs.extend(p.external.iter().map(|e| e.gateway.clone()));
    vec!["router".into(), legs.join(" · ")]
}

fn box_width(lines: &[String], min: i32) -> i32 {
    lines
        .iter()
        .map(|l| text_width(l))
        .max()
        .unwrap_or(0)
        .saturating_add(24)
        .max(min)
}

/// Computes the layout of `p`.
pub fn layout(p: &LabPicture) -> Layout {
    let mut l = Layout {
        title_y: MARGIN + 18,
        ..Layout::default()
    };
    let header_h = 20 + 20 * title_lines(p).len() as i32;
    let top_y = MARGIN + header_h;
    let top_h = 3 * LINE + 14;

    // Nodes: grouped by underlay, in underlay order (then any other).
    let mut order: Vec<usize> = Vec::new();
    for u in &p.underlays {
        order.extend((0..p.nodes.len()).filter(|&i| p.nodes[i].underlay == u.name));
    }
    let rest: Vec<usize> = (0..p.nodes.len()).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    // A node's right edge keeps a lane free of text, where a trace's path
    // runs between the node and its pods.
    let mut node_w = 240;
    for n in &p.nodes {
        let mut lines = node_lines(n);
        lines.push(n.name.clone());
        node_w = node_w.max(box_width(&lines, 0) + TRACE_LANE);
    }
    for pod in &p.pods {
        let (a, b) = pod_lines(pod);
        node_w = node_w.max(box_width(&[a, b], 0) + 16 + TRACE_LANE);
    }
    let max_lines = p
        .nodes
        .iter()
        .map(|n| node_lines(n).len())
        .max()
        .unwrap_or(0) as i32;
    l.node_header = 28 + max_lines * LINE + 6;
    let on_node = |name: &str| {
        p.pods
            .iter()
            .filter(|pod| pod.node.as_deref() == Some(name))
            .count() as i32
    };
    let most_pods = p.nodes.iter().map(|n| on_node(&n.name)).max().unwrap_or(0);
    let node_h = l.node_header + most_pods * (POD_H + POD_GAP) + 6;

    let bus_y = top_y + top_h + 44;
    let node_y = bus_y + 36;
    l.nodes = vec![Rect::default(); p.nodes.len()];
    let mut x = MARGIN + 16;
    let mut prev_underlay: Option<&str> = None;
    let mut groups: BTreeMap<&str, (i32, i32)> = BTreeMap::new();
    for &i in &order {
        let u = p.nodes[i].underlay.as_str();
        if let Some(prev) = prev_underlay {
            x += if prev == u { NODE_GAP } else { GROUP_GAP };
        }
        prev_underlay = Some(u);
        let r = Rect {
            x,
            y: node_y,
            w: node_w,
            h: node_h,
        };
        l.nodes[i] = r;
        let g = groups.entry(u).or_insert((r.x, r.right()));
        g.1 = r.right();
        x = r.right();
        // The node's pods, stacked under its header.
        let mut py = r.y + l.node_header;
        for pod in p
            .pods
            .iter()
            .filter(|pod| pod.node.as_deref() == Some(&p.nodes[i].name))
        {
            l.pods.insert(
                (pod.namespace.clone(), pod.name.clone()),
                Rect {
                    x: r.x + 8,
                    y: py,
                    w: r.w - 16,
                    h: POD_H,
                },
            );
            py += POD_H + POD_GAP;
        }
    }
    let mut nodes_right = x;
    for (i, u) in p.underlays.iter().enumerate() {
        let (x1, x2) = match groups.get(u.name.as_str()) {
            Some(&(a, b)) => (a - 16, b + 16),
            None => {
                // An underlay without nodes: a short bus after the others.
                let a = nodes_right + GROUP_GAP;
                nodes_right = a + 200;
                (a, a + 200)
            }
        };
        l.buses.push(Bus {
            underlay: i,
            x1,
            x2,
            y: bus_y,
        });
    }
    let span_left = l.buses.iter().map(|b| b.x1).min().unwrap_or(MARGIN);
    let span_right = l.buses.iter().map(|b| b.x2).max().unwrap_or(nodes_right);

    // The router over the middle of the buses; the external host left of it.
    let router_w = box_width(&router_lines(p), 160);
    let mut router_x = (span_left + span_right) / 2 - router_w / 2;
    if p.external.is_some() {
        let ext_w = box_width(&external_lines(p), 160);
        let ext = Rect {
            x: MARGIN,
            y: top_y,
            w: ext_w,
            h: top_h,
        };
        router_x = router_x.max(ext.right() + 150);
        l.external = Some(ext);
    }
    l.router = Rect {
        x: router_x.max(MARGIN),
        y: top_y,
        w: router_w,
        h: top_h,
    };

    // Routes between nodes, one curve per pair and kind.
    let index: BTreeMap<&str, usize> = p
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut pairs: BTreeMap<(usize, usize, LinkKind), Vec<(usize, String)>> = BTreeMap::new();
    for link in &p.links {
        let (Some(&a), Some(&b)) = (index.get(link.from.as_str()), index.get(link.to.as_str()))
        else {
            continue;
        };
        pairs
            .entry((a.min(b), a.max(b), link.kind))
            .or_default()
            .push((a, format!("{}: {}", link.from, link.route)));
    }
    let band_top = node_y + node_h;
    let mut deepest = band_top;
    let mut per_pair: BTreeMap<(usize, usize), i32> = BTreeMap::new();
    for (&(a, b, kind), routes) in &pairs {
        let both_ways = routes.iter().any(|(f, _)| *f == a) && routes.iter().any(|(f, _)| *f == b);
        // One-way: drawn from the node that has the route.
        let (from, to) = match routes.first() {
            Some((f, _)) if !both_ways && *f == b => (b, a),
            _ => (a, b),
        };
        let nth = per_pair.entry((a, b)).or_insert(0);
        let (ra, rb) = (l.nodes[from], l.nodes[to]);
        let slots = (p.nodes.len() as i32).max(2);
        let dist = (ra.cx() - rb.cx()).abs().max(1);
        let hops = order_distance(&order, from, to);
        let spread = |r: &Rect, toward: i32| {
            let side = (toward - r.cx()).signum();
            r.cx() + side * (hops * (r.w / 2 - 20) / slots).min(r.w / 2 - 20)
        };
        let start = (spread(&ra, rb.cx()), band_top);
        let end = (spread(&rb, ra.cx()), band_top);
        let depth = 30 + 34 * hops + 16 * *nth + dist / 100;
        let control = ((start.0 + end.0) / 2, band_top + 2 * depth);
        let apex = band_top + depth;
        deepest = deepest.max(apex + 22);
        *nth += 1;
        l.curves.push(Curve {
            from,
            to,
            kind,
            both_ways,
            start,
            control,
            end,
            label: ((start.0 + end.0) / 2, apex + 14),
            routes: routes.iter().map(|(_, r)| r.clone()).collect(),
        });
    }

    // Services in a grid.
    l.services_y = deepest + 34;
    let mut svc_w = 240;
    for s in &p.services {
        let mut lines = service_lines(s, &p.pods);
        lines.push(format!("{}/{}", s.namespace, s.name));
        svc_w = svc_w.max(box_width(&lines, 0));
    }
    let title_w = title_lines(p)
        .iter()
        .map(|t| text_width(t) * 5 / 4)
        .max()
        .unwrap_or(0);
    let content_right = span_right.max(l.router.right()).max(MARGIN + title_w);
    let cols = ((content_right - MARGIN + SERVICE_GAP) / (svc_w + SERVICE_GAP)).max(1) as usize;
    let mut y = l.services_y + 14;
    for row in p.services.chunks(cols) {
        let row_h = row
            .iter()
            .map(|s| 26 + service_lines(s, &p.pods).len() as i32 * LINE + 6)
            .max()
            .unwrap_or(0);
        for (c, _) in row.iter().enumerate() {
            l.services.push(Rect {
                x: MARGIN + c as i32 * (svc_w + SERVICE_GAP),
                y,
                w: svc_w,
                h: row_h,
            });
        }
        y += row_h + SERVICE_GAP;
    }
    for (i, s) in p.services.iter().enumerate() {
        let r = l.services[i];
        for ep in &s.endpoints {
            // A pod, else a node's own address (host network, the API server).
            let target = ep.pod.as_ref().and_then(|k| l.pods.get(k)).or_else(|| {
                let prefix = format!("{}/", ep.ip);
                p.nodes
                    .iter()
                    .position(|n| n.eth0_ip.starts_with(&prefix))
                    .map(|i| &l.nodes[i])
            });
            if let Some(t) = target {
                l.endpoint_lines.push(EndpointLine {
                    service: i,
                    from: (r.cx(), r.y),
                    to: (t.cx(), t.bottom()),
                    ready: ep.ready,
                });
            }
        }
    }
    // Baseline of the first footer line, just under the last row.
    l.footer_y = y + 4;

    // The trace's path through the boxes.
    if let Some(t) = &p.trace {
        for step in &t.path {
            let at = match step {
                // In the lane at a node's right edge (above the node's box,
                // where eth0 meets the underlay, for the node itself): a
                // path into and out of a node hides no text.
                Step::Pod { namespace, name } => l
                    .pods
                    .get(&(namespace.clone(), name.clone()))
                    .map(|r| (r.right() + 8 - TRACE_LANE / 2, r.cy())),
                Step::Node(n) => index
                    .get(n.as_str())
                    .map(|&i| (l.nodes[i].right() - TRACE_LANE / 2, l.nodes[i].y - 12)),
                Step::Router => Some((l.router.cx(), l.router.cy())),
                Step::External => l.external.map(|r| (r.cx(), r.cy())),
                Step::Other(_) => None,
            };
            if let Some(at) = at
                && l.trace_points.last() != Some(&at)
            {
                l.trace_points.push(at);
            }
        }
    }

    let footer_lines =
        p.notes.len() as i32 + i32::from(p.pods.iter().any(|pod| pod.node.is_none()));
    l.height = if footer_lines == 0 {
        y - SERVICE_GAP + MARGIN
    } else {
        l.footer_y + (footer_lines - 1) * LINE + MARGIN
    };
    l.width = content_right
        .max(l.services.iter().map(Rect::right).max().unwrap_or(0))
        .max(l.curves.iter().map(|c| c.label.0 + 60).max().unwrap_or(0))
        + MARGIN;
    l
}

/// How many places apart two nodes are in drawing order.
fn order_distance(order: &[usize], a: usize, b: usize) -> i32 {
    let pos = |n| order.iter().position(|&i| i == n).unwrap_or(0) as i32;
    (pos(a) - pos(b)).abs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::sample::sample;

    #[test]
    fn layout_is_deterministic_and_keeps_boxes_apart() {
        let p = sample();
        let a = layout(&p);
        assert_eq!(a, layout(&p));
        // Nodes left to right, side by side, inside the picture.
        for pair in a.nodes.windows(2) {
            assert!(pair[0].right() < pair[1].x, "{pair:?}");
        }
        assert!(a.nodes.iter().all(|n| n.right() < a.width));
        // Each pod inside its node, and pods of a node do not overlap.
        for pod in &p.pods {
            let Some(node) = &pod.node else { continue };
            let i = p.nodes.iter().position(|n| n.name == *node).unwrap();
            let r = a.pods[&(pod.namespace.clone(), pod.name.clone())];
            let n = a.nodes[i];
            assert!(r.x > n.x && r.right() < n.right() && r.y > n.y && r.bottom() < n.bottom());
        }
        // Services under the nodes and the curves; the picture holds them.
        let lowest_curve = a.curves.iter().map(|c| c.label.1).max().unwrap();
        assert!(a.services.iter().all(|s| s.y > lowest_curve));
        assert!(
            a.services
                .iter()
                .all(|s| s.bottom() < a.height && s.right() < a.width)
        );
    }

    #[test]
    fn routes_in_both_directions_are_one_curve() {
        let p = sample();
        let a = layout(&p);
        // node01 <-> node02 both ways by VXLAN; controlplane -> node01 one way.
        let both: Vec<&Curve> = a.curves.iter().filter(|c| c.both_ways).collect();
        assert_eq!(both.len(), 1);
        assert_eq!(both[0].routes.len(), 2);
        let one_way = a.curves.iter().find(|c| !c.both_ways).unwrap();
        assert_eq!((one_way.from, one_way.to), (0, 1));
    }

    #[test]
    fn a_trace_becomes_points_through_its_boxes() {
        let p = sample();
        let a = layout(&p);
        // client (pod) → node01 → node02 → web-2 (pod); Other steps are skipped.
        assert_eq!(a.trace_points.len(), 4);
        let client = a.pods[&("default".to_string(), "client".to_string())];
        assert_eq!(
            a.trace_points[0],
            (client.right() + 8 - TRACE_LANE / 2, client.cy())
        );
        // node01's point is straight above, in the same lane.
        assert_eq!(a.trace_points[1].0, a.trace_points[0].0);
        assert!(a.trace_points[1].1 < a.nodes[1].y);
        // Endpoints: the two web pods, and the API server on controlplane's eth0.
        assert_eq!(a.endpoint_lines.len(), 3);
        assert_eq!(
            a.endpoint_lines[2].to,
            (a.nodes[0].cx(), a.nodes[0].bottom())
        );
    }
}

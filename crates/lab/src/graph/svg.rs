//! A [`LabPicture`] as an SVG document (pure): boxes, buses and curves
//! where [`layout`](super::layout) put them, every text escaped. Styles are
//! presentation attributes (no stylesheet, no script), so any SVG viewer
//! draws it the same; classes (`node`, `pod`, `link vxlan`, `trace`, ...)
//! and `<title>` tooltips name what each shape is.

use std::fmt::Write;

use super::layout::{self, FONT, LINE, Layout, Point, Rect};
use super::{LabPicture, LinkKind};

/// Colours.
const INK: &str = "#1f2933";
const MUTED: &str = "#616e7c";
const NODE_FILL: &str = "#eef4fb";
const NODE_STROKE: &str = "#3e6fa3";
const POD_FILL: &str = "#ffffff";
const POD_STROKE: &str = "#7b93ad";
const SVC_FILL: &str = "#f4f0fa";
const SVC_STROKE: &str = "#7d5ba6";
const HOST_FILL: &str = "#f5f5f0";
const BUS: &str = "#52606d";
pub const VXLAN: &str = "#8e44ad";
pub const HOST_GW: &str = "#16866b";
pub const OTHER: &str = "#b7791f";
pub const TRACE: &str = "#e8590c";
const GOOD: &str = "#16866b";
const BAD: &str = "#c53030";

/// Escapes text for XML character data and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Characters XML 1.0 does not allow at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// An element id from free text: letters, digits, `-` and `_` only.
pub fn id(kind: &str, parts: &[&str]) -> String {
    let mut out = kind.to_string();
    for p in parts {
        out.push('-');
        out.extend(p.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        }));
    }
    out
}

/// Stroke colour and dash pattern of a route kind.
pub fn link_style(kind: LinkKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        LinkKind::Vxlan => (VXLAN, "9 5", "vxlan"),
        LinkKind::HostGw => (HOST_GW, "", "host-gw"),
        LinkKind::Other => (OTHER, "2 4", "other"),
    }
}

struct Svg {
    out: String,
}

impl Svg {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
        self.out.push('\n');
    }

    fn text(&mut self, x: i32, y: i32, text: &str, attrs: &str) {
        let _ = writeln!(
            self.out,
            "<text x=\"{x}\" y=\"{y}\"{attrs}>{}</text>",
            esc(text)
        );
    }

    fn rect(&mut self, r: &Rect, rx: i32, fill: &str, stroke: &str, width: f32, extra: &str) {
        let _ = writeln!(
            self.out,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{rx}\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{width}\"{extra}/>",
            r.x, r.y, r.w, r.h
        );
    }

    fn line(&mut self, a: Point, b: Point, stroke: &str, width: f32, extra: &str) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{stroke}\" stroke-width=\"{width}\"{extra}/>",
            a.0, a.1, b.0, b.1
        );
    }
}

/// The picture as a standalone SVG document.
pub fn render(p: &LabPicture) -> String {
    let l = layout::layout(p);
    let mut s = Svg { out: String::new() };
    let _ = writeln!(
        s.out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"{FONT}\" fill=\"{INK}\" class=\"podwire-lab-graph\">",
        w = l.width,
        h = l.height
    );
    let _ = writeln!(s.out, "<title>lab {}</title>", esc(&p.lab));
    defs(&mut s);
    let _ = writeln!(
        s.out,
        "<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>",
        l.width, l.height
    );
    title(&mut s, p, &l);
    hosts(&mut s, p, &l);
    nodes(&mut s, p, &l);
    curves(&mut s, &l);
    services(&mut s, p, &l);
    trace(&mut s, p, &l);
    footer(&mut s, p, &l);
    s.raw("</svg>");
    s.out
}

fn defs(s: &mut Svg) {
    s.raw("<defs>");
    for (name, colour, size) in [
        ("vxlan", VXLAN, 14),
        ("host-gw", HOST_GW, 14),
        ("other", OTHER, 14),
        ("trace", TRACE, 16),
    ] {
        let _ = writeln!(
            s.out,
            "<marker id=\"arrow-{name}\" viewBox=\"0 0 10 10\" refX=\"8\" refY=\"5\" markerUnits=\"userSpaceOnUse\" markerWidth=\"{size}\" markerHeight=\"{size}\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"{colour}\"/></marker>"
        );
    }
    s.raw("</defs>");
}

fn title(s: &mut Svg, p: &LabPicture, l: &Layout) {
    for (i, line) in layout::title_lines(p).iter().enumerate() {
        let y = l.title_y + 20 * i as i32;
        let attrs = match i {
            0 => " font-size=\"18\" font-weight=\"bold\"".to_string(),
            2 => {
                let ok = p.trace.as_ref().is_some_and(|t| t.delivered);
                format!(
                    " font-size=\"13\" font-weight=\"bold\" fill=\"{}\" class=\"trace-verdict\"",
                    if ok { GOOD } else { BAD }
                )
            }
            _ => format!(" font-size=\"13\" fill=\"{MUTED}\""),
        };
        s.text(layout::MARGIN, y, line, &attrs);
    }
}

/// External host, router, buses and the wires between them.
fn hosts(s: &mut Svg, p: &LabPicture, l: &Layout) {
    let on = |step: &super::Step| p.trace.as_ref().is_some_and(|t| t.path.contains(step));
    let r = l.router;
    if let (Some(ext), Some(e)) = (&p.external, l.external) {
        let y = e.cy();
        s.line(
            (e.right(), y),
            (r.x, y),
            BUS,
            2.0,
            " class=\"wire external\"",
        );
        s.text(
            (e.right() + r.x) / 2,
            y - 6,
            &ext.subnet,
            &format!(" text-anchor=\"middle\" fill=\"{MUTED}\""),
        );
        let _ = writeln!(
            s.out,
            "<g id=\"{}\" class=\"external\">",
            id("external", &[&ext.name])
        );
        host_box(
            s,
            &e,
            &layout::external_lines(p),
            on(&super::Step::External),
        );
        s.raw("</g>");
    }
    for bus in &l.buses {
        let Some(u) = p.underlays.get(bus.underlay) else {
            continue;
        };
        let mid = (bus.x1 + bus.x2) / 2;
        s.line(
            (r.cx(), r.bottom()),
            (mid, bus.y),
            BUS,
            2.0,
            " class=\"wire\"",
        );
        s.text(
            mid + 6,
            bus.y - 8,
            &u.router_ip,
            &format!(" fill=\"{MUTED}\""),
        );
        let _ = writeln!(
            s.out,
            "<g id=\"{}\" class=\"underlay\">",
            id("underlay", &[&u.name])
        );
        s.line(
            (bus.x1, bus.y),
            (bus.x2, bus.y),
            BUS,
            6.0,
            " stroke-linecap=\"round\"",
        );
        let label = if u.name == "underlay" {
            format!("underlay {}", u.subnet)
        } else {
            format!("underlay {} {}", u.name, u.subnet)
        };
        s.text(bus.x1, bus.y - 8, &label, &format!(" fill=\"{MUTED}\""));
        s.raw("</g>");
    }
    let _ = writeln!(s.out, "<g id=\"router\" class=\"router\">");
    host_box(s, &r, &layout::router_lines(p), on(&super::Step::Router));
    s.raw("</g>");
}

fn host_box(s: &mut Svg, r: &Rect, lines: &[String], highlighted: bool) {
    let (stroke, width) = if highlighted {
        (TRACE, 3.0)
    } else {
        (BUS, 1.5)
    };
    s.rect(r, 8, HOST_FILL, stroke, width, "");
    for (i, line) in lines.iter().enumerate() {
        let attrs = if i == 0 {
            " font-weight=\"bold\" font-size=\"14\""
        } else {
            ""
        };
        s.text(r.x + 12, r.y + 20 + LINE * i as i32, line, attrs);
    }
}

fn nodes(s: &mut Svg, p: &LabPicture, l: &Layout) {
    let bus_y = |underlay: &str| {
        l.buses
            .iter()
            .find(|b| {
                p.underlays
                    .get(b.underlay)
                    .is_some_and(|u| u.name == underlay)
            })
            .map(|b| b.y)
    };
    let trace = p.trace.as_ref();
    for (node, r) in p.nodes.iter().zip(&l.nodes) {
        if let Some(y) = bus_y(&node.underlay) {
            s.line((r.cx(), y), (r.cx(), r.y), BUS, 2.0, " class=\"wire eth0\"");
        }
        let on = trace.is_some_and(|t| t.path.contains(&super::Step::Node(node.name.clone())));
        let _ = writeln!(
            s.out,
            "<g id=\"{}\" class=\"node\">",
            id("node", &[&node.name])
        );
        let (stroke, width) = if on { (TRACE, 3.0) } else { (NODE_STROKE, 1.5) };
        s.rect(r, 10, NODE_FILL, stroke, width, "");
        let mut name = node.name.clone();
        if !node.from_kernel {
            name.push_str(" (planned)");
        }
        s.text(
            r.x + 12,
            r.y + 20,
            &name,
            " font-weight=\"bold\" font-size=\"15\"",
        );
        for (i, line) in layout::node_lines(node).iter().enumerate() {
            s.text(r.x + 12, r.y + 28 + LINE * (i as i32 + 1), line, "");
        }
        s.raw("</g>");
    }
    for pod in &p.pods {
        let Some(r) = l.pods.get(&(pod.namespace.clone(), pod.name.clone())) else {
            continue;
        };
        let on = trace.is_some_and(|t| {
            t.path.contains(&super::Step::Pod {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            })
        });
        let _ = writeln!(
            s.out,
            "<g id=\"{}\" class=\"pod\">",
            id("pod", &[&pod.namespace, &pod.name])
        );
        let (stroke, width) = if on { (TRACE, 3.0) } else { (POD_STROKE, 1.0) };
        let dash = if pod.ready {
            ""
        } else {
            " stroke-dasharray=\"4 3\""
        };
        s.rect(r, 6, POD_FILL, stroke, width, dash);
        let (a, b) = layout::pod_lines(pod);
        s.text(r.x + 8, r.y + 14, &a, " font-weight=\"bold\"");
        s.text(r.x + 8, r.y + 28, &b, &format!(" fill=\"{MUTED}\""));
        s.raw("</g>");
    }
}

fn curves(s: &mut Svg, l: &Layout) {
    for c in &l.curves {
        let (colour, dash, class) = link_style(c.kind);
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let arrow = if c.both_ways {
            String::new()
        } else {
            format!(" marker-end=\"url(#arrow-{class})\"")
        };
        let _ = writeln!(s.out, "<g class=\"link {class}\">");
        let _ = writeln!(s.out, "<title>{}</title>", esc(&c.routes.join("\n")));
        let _ = writeln!(
            s.out,
            "<path d=\"M{},{} Q{},{} {},{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2.5\"{dash}{arrow}/>",
            c.start.0, c.start.1, c.control.0, c.control.1, c.end.0, c.end.1
        );
        let word = match c.kind {
            LinkKind::Vxlan => "VXLAN".to_string(),
            LinkKind::HostGw => "host-gw".to_string(),
            LinkKind::Other => "other route".to_string(),
        };
        let word = if c.both_ways {
            word
        } else {
            format!("{word} (one way)")
        };
        s.text(
            c.label.0,
            c.label.1,
            &word,
            &format!(" text-anchor=\"middle\" fill=\"{colour}\" font-weight=\"bold\""),
        );
        s.raw("</g>");
    }
}

fn services(s: &mut Svg, p: &LabPicture, l: &Layout) {
    if p.services.is_empty() {
        return;
    }
    s.text(
        layout::MARGIN,
        l.services_y,
        "Services",
        " font-weight=\"bold\" font-size=\"14\"",
    );
    for e in &l.endpoint_lines {
        let dash = if e.ready { "3 3" } else { "1 4" };
        s.line(
            e.from,
            e.to,
            SVC_STROKE,
            1.0,
            &format!(" stroke-dasharray=\"{dash}\" opacity=\"0.4\" class=\"endpoint\""),
        );
    }
    let traced = p.trace.as_ref().and_then(|t| t.service.clone());
    for (svc, r) in p.services.iter().zip(&l.services) {
        let on = traced.as_ref() == Some(&(svc.namespace.clone(), svc.name.clone()));
        let _ = writeln!(
            s.out,
            "<g id=\"{}\" class=\"service\">",
            id("svc", &[&svc.namespace, &svc.name])
        );
        let (stroke, width) = if on { (TRACE, 3.0) } else { (SVC_STROKE, 1.5) };
        s.rect(r, 8, SVC_FILL, stroke, width, "");
        s.text(
            r.x + 10,
            r.y + 18,
            &format!("{}/{}", svc.namespace, svc.name),
            " font-weight=\"bold\"",
        );
        for (i, line) in layout::service_lines(svc, &p.pods).iter().enumerate() {
            s.text(r.x + 10, r.y + 18 + LINE * (i as i32 + 1), line, "");
        }
        s.raw("</g>");
    }
}

fn trace(s: &mut Svg, p: &LabPicture, l: &Layout) {
    let Some(t) = &p.trace else { return };
    if l.trace_points.is_empty() {
        return;
    }
    let _ = writeln!(s.out, "<g class=\"trace\">");
    let _ = writeln!(
        s.out,
        "<title>{}</title>",
        esc(&format!("{}: {}", t.title, t.verdict))
    );
    let points: Vec<String> = l
        .trace_points
        .iter()
        .map(|(x, y)| format!("{x},{y}"))
        .collect();
    let _ = writeln!(
        s.out,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{TRACE}\" stroke-width=\"4\" stroke-linejoin=\"round\" stroke-linecap=\"round\" opacity=\"0.85\"/>",
        points.join(" ")
    );
    // An arrowhead halfway along each leg, clear of the numbered circles.
    for leg in l.trace_points.windows(2) {
        let (a, b) = (leg[0], leg[1]);
        let mid = ((a.0 + b.0) / 2, (a.1 + b.1) / 2);
        s.line(
            a,
            mid,
            TRACE,
            4.0,
            " stroke-linecap=\"round\" marker-end=\"url(#arrow-trace)\"",
        );
    }
    for (i, (x, y)) in l.trace_points.iter().enumerate() {
        let _ = writeln!(
            s.out,
            "<circle cx=\"{x}\" cy=\"{y}\" r=\"9\" fill=\"{TRACE}\" stroke=\"#ffffff\" stroke-width=\"1.5\"/>"
        );
        s.text(
            *x,
            y + 4,
            &(i + 1).to_string(),
            " text-anchor=\"middle\" fill=\"#ffffff\" font-size=\"11\" font-weight=\"bold\"",
        );
    }
    if !t.delivered
        && let Some(&(x, y)) = l.trace_points.last()
    {
        s.text(
            x + 14,
            y - 10,
            "✗ stopped here",
            &format!(" fill=\"{BAD}\" font-weight=\"bold\""),
        );
    }
    s.raw("</g>");
}

fn footer(s: &mut Svg, p: &LabPicture, l: &Layout) {
    let mut y = l.footer_y;
    let pending: Vec<String> = p
        .pods
        .iter()
        .filter(|pod| pod.node.is_none())
        .map(|pod| format!("{}/{}", pod.namespace, pod.name))
        .collect();
    if !pending.is_empty() {
        s.text(
            layout::MARGIN,
            y,
            &format!("pending (no node yet): {}", pending.join(", ")),
            &format!(" fill=\"{MUTED}\" class=\"pending\""),
        );
        y += LINE;
    }
    for note in &p.notes {
        s.text(
            layout::MARGIN,
            y,
            &format!("note: {note}"),
            &format!(" fill=\"{BAD}\" class=\"note\""),
        );
        y += LINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::sample::sample;

    #[test]
    fn every_node_pod_and_service_is_named() {
        let p = sample();
        let svg = render(&p);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        for n in &p.nodes {
            assert!(svg.contains(&format!(">{}<", n.name)) || svg.contains(&n.name));
            assert!(svg.contains(&n.eth0_ip) && svg.contains(&n.eth0_mac));
            assert!(svg.contains(&format!("id=\"node-{}\"", n.name)));
        }
        for pod in &p.pods {
            assert!(svg.contains(&pod.name), "{}", pod.name);
            if let Some(ip) = &pod.ip {
                assert!(svg.contains(ip), "{ip}");
            }
        }
        for svc in &p.services {
            assert!(svg.contains(&format!("{}/{}", svc.namespace, svc.name)));
            assert!(svg.contains(&svc.cluster_ip));
        }
        assert!(svg.contains(">underlay 192.168.56.0/24<"));
        assert!(svg.contains("id=\"router\"") && svg.contains("id=\"external-external\""));
        // Same picture, same bytes.
        assert_eq!(svg, render(&p));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
        assert_eq!(esc("bell\u{7}"), "bell\u{fffd}");
        assert_eq!(id("pod", &["apps", "web/1<x>"]), "pod-apps-web_1_x_");
        let mut p = sample();
        p.lab = "<script>alert(1)</script>".into();
        p.notes.push("a & b < c".into());
        p.services[0].ports.push("80→\"http\"/TCP".into());
        let svg = render(&p);
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(svg.contains("note: a &amp; b &lt; c"));
        assert!(svg.contains("80→&quot;http&quot;/TCP"));
    }

    #[test]
    fn vxlan_and_host_gw_links_are_drawn_differently() {
        let p = sample();
        let svg = render(&p);
        let group = |class: &str| {
            let start = svg
                .find(&format!("<g class=\"link {class}\">"))
                .unwrap_or_else(|| panic!("no {class} link in {svg}"));
            let end = start + svg[start..].find("</g>").unwrap();
            svg[start..end].to_string()
        };
        let vxlan = group("vxlan");
        let host_gw = group("host-gw");
        assert!(
            vxlan.contains(&format!("stroke=\"{VXLAN}\"")) && vxlan.contains("stroke-dasharray")
        );
        assert!(vxlan.contains(">VXLAN<"));
        assert!(vxlan.contains("node01: 10.244.2.0/24 via 10.244.2.0 dev podwire.1 onlink"));
        assert!(host_gw.contains(&format!("stroke=\"{HOST_GW}\"")));
        assert!(!host_gw.contains("stroke-dasharray"));
        assert!(host_gw.contains("marker-end=\"url(#arrow-host-gw)\""));
        assert!(host_gw.contains("host-gw (one way)"));
    }

    #[test]
    fn a_trace_is_highlighted() {
        let mut p = sample();
        let plain = render(&{
            let mut q = p.clone();
            q.trace = None;
            q
        });
        assert!(!plain.contains("class=\"trace\"") && !plain.contains(TRACE_STROKE));
        let svg = render(&p);
        assert!(svg.contains("<g class=\"trace\">"));
        assert!(svg.contains("<polyline points=\""));
        assert!(svg.contains("class=\"trace-verdict\""));
        assert!(svg.contains("delivered: SYN-ACK from pod apps/web-2 (node02)"));
        // The pods, nodes and Service on the path get the trace colour.
        for id in [
            "pod-default-client",
            "node-node01",
            "node-node02",
            "pod-apps-web-2",
            "svc-apps-web",
        ] {
            let start = svg.find(&format!("id=\"{id}\"")).unwrap();
            let end = start + svg[start..].find("</g>").unwrap();
            assert!(
                svg[start..end].contains(TRACE_STROKE),
                "{id} not highlighted"
            );
        }
        let start = svg.find("id=\"pod-apps-web-1\"").unwrap();
        let end = start + svg[start..].find("</g>").unwrap();
        assert!(!svg[start..end].contains(TRACE_STROKE));
        // Numbered steps, one per place drawn.
        assert!(svg.contains(">4</text>") && !svg.contains(">5</text>"));
        // A trace that did not arrive says where it stopped.
        if let Some(t) = p.trace.as_mut() {
            t.delivered = false;
            t.verdict = "no answer; last seen in node node02".into();
        }
        let svg = render(&p);
        assert!(svg.contains("stopped here"));
        assert!(svg.contains(&format!("fill=\"{BAD}\" class=\"trace-verdict\"")));
    }

    const TRACE_STROKE: &str = "stroke=\"#e8590c\" stroke-width=\"3\"";
}

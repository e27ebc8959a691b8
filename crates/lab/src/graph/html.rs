//! A [`LabPicture`] as one self-contained HTML page (pure): the SVG inline,
//! a small legend, and with a trace its whole hop-by-hop report. No
//! external resources and no script: it opens from a file anywhere.

use std::fmt::Write;

use super::LabPicture;
use super::svg::{self, HOST_GW, OTHER, TRACE, VXLAN, esc};

/// The page.
pub fn page(p: &LabPicture) -> String {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(out, "<title>podwire lab {}</title>", esc(&p.lab));
    out.push_str(
        "<style>\n\
         body { margin: 16px; font-family: 'DejaVu Sans', Arial, sans-serif; color: #1f2933; background: #ffffff; }\n\
         .picture { overflow-x: auto; }\n\
         .legend { display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 8px 0 0 24px; font-size: 13px; }\n\
         .legend span { display: inline-flex; align-items: center; gap: 6px; }\n\
         pre { background: #f5f5f0; padding: 10px; font-size: 12px; overflow-x: auto; }\n\
         </style>\n</head>\n<body>\n",
    );
    out.push_str("<div class=\"picture\">\n");
    out.push_str(&svg::render(p));
    out.push_str("</div>\n");
    legend(&mut out);
    if let Some(t) = &p.trace {
        let _ = writeln!(
            out,
            "<details class=\"trace-report\" open>\n<summary>trace {}</summary>\n<pre>{}</pre>\n</details>",
            esc(&t.title),
            esc(&t.report)
        );
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// One sample stroke per kind of line, and the box kinds.
fn legend(out: &mut String) {
    out.push_str("<div class=\"legend\">\n");
    let line = |out: &mut String, colour: &str, dash: &str, width: f32, what: &str| {
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        let _ = writeln!(
            out,
            "<span><svg width=\"44\" height=\"12\" aria-hidden=\"true\"><line x1=\"2\" y1=\"6\" x2=\"42\" y2=\"6\" stroke=\"{colour}\" stroke-width=\"{width}\"{dash}/></svg>{}</span>",
            esc(what)
        );
    };
    line(
        out,
        "#52606d",
        "",
        5.0,
        "underlay (a bridge in the switch namespace)",
    );
    line(
        out,
        VXLAN,
        "9 5",
        2.5,
        "VXLAN route (podwire.1, encapsulated to the peer's eth0)",
    );
    line(out, HOST_GW, "", 2.5, "host-gw route (via the peer's eth0)");
    line(out, OTHER, "2 4", 2.5, "another route to a peer's pods");
    line(out, "#7d5ba6", "3 3", 1.0, "Service → endpoint");
    line(out, TRACE, "", 4.0, "trace path (numbered in order)");
    let boxed = |out: &mut String, fill: &str, stroke: &str, what: &str| {
        let _ = writeln!(
            out,
            "<span><svg width=\"22\" height=\"14\" aria-hidden=\"true\"><rect x=\"1\" y=\"1\" width=\"20\" height=\"12\" rx=\"3\" fill=\"{fill}\" stroke=\"{stroke}\"/></svg>{}</span>",
            esc(what)
        );
    };
    boxed(
        out,
        "#eef4fb",
        "#3e6fa3",
        "node (its eth0 IP and MAC, cni0)",
    );
    boxed(out, "#ffffff", "#7b93ad", "pod (dashed: not ready)");
    boxed(
        out,
        "#f4f0fa",
        "#7d5ba6",
        "Service (ClusterIP, ports, endpoints)",
    );
    out.push_str("</div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::sample::sample;

    #[test]
    fn a_page_holds_the_svg_a_legend_and_the_trace_report() {
        let p = sample();
        let html = page(&p);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(&svg::render(&p)));
        assert!(html.contains("class=\"legend\""));
        assert!(html.contains("VXLAN route") && html.contains("host-gw route"));
        assert!(html.contains("<details class=\"trace-report\" open>"));
        assert!(html.contains("&lt;hop&gt; 1"));
        // Self-contained: nothing fetched, nothing run.
        for forbidden in ["<script", "src=", "href=", "@import", "url(http"] {
            assert!(!html.contains(forbidden), "{forbidden}");
        }
        let mut q = p.clone();
        q.trace = None;
        assert!(!page(&q).contains("trace-report"));
    }
}

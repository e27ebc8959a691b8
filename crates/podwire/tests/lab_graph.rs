//! `podwire lab graph` end to end (issue 13): the built-in example lab drawn
//! as SVG and as an HTML page, the page opened in headless Chromium (Debian's
//! `chromium`, from scripts/setup): it loads without page errors, its DOM
//! names every node and every pod with its IP as `lab get` reports them and
//! every node's eth0 MAC as the node's kernel reports it, and a screenshot
//! renders; a graph with `--trace` carries the trace's highlighted path
//! and verdict. The lab is removed by its guard, Chromium runs on file://
//! pages only, bounded in time, with a fresh profile in a temp dir. Needs
//! root.

mod lab_common;

use std::path::Path;
use std::time::Duration;

use lab_common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs headless Chromium on a local file with its own profile directory
/// (removed with the returned guard's directory) and no background traffic.
fn chromium(profile: &Path, page: &Path, extra: &[&str]) -> Run {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run scripts/setup (Debian package chromium)"
    );
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let url = format!("file://{}", page.display());
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        &profile_arg,
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    run_program(CHROMIUM, &args, None, CHROMIUM_TIMEOUT)
}

/// Lines of Chromium's log that report a problem of the page itself (a
/// script error, a console error, a resource that did not load), not the
/// browser's own noise as root in a container (D-Bus, GPU, sandbox).
fn page_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("Uncaught")
                || l.contains("ERROR:CONSOLE")
                || (l.contains(":CONSOLE") && l.contains("rror"))
                || l.contains("Failed to load resource")
                || l.contains("Refused to")
                || l.contains("net::ERR_")
        })
        .collect()
}

/// The MAC of a node's eth0, as the node's kernel reports it.
fn eth0_mac(lab: &Lab, node: &str) -> String {
    let run = lab
        .exec_node(node, &["cat", "/sys/class/net/eth0/address"])
        .expect_ok();
    run.stdout.trim().to_string()
}

#[test]
fn example_lab_page_loads_in_chromium_with_every_node_and_pod() {
    let lab = Lab::start("graph", None);
    let dir = podwire_testsupport::TempDir::new("lab-graph");
    let profile = podwire_testsupport::TempDir::new("lab-graph-chromium");

    // Without -o: an SVG document on stdout.
    let svg = lab.cmd(&["graph"]).expect_ok();
    assert!(
        svg.stdout
            .starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{}",
        svg.describe()
    );
    assert!(svg.stdout.trim_end().ends_with("</svg>"));

    // -o x.html: the page.
    let page = dir.join("lab.html");
    lab.cmd(&["graph", "-o", &page.display().to_string()])
        .expect_ok();
    let html = std::fs::read_to_string(&page).expect("the page was written");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "the page needs no script");

    let run = chromium(profile.path(), &page, &["--dump-dom"]);
    assert!(run.ok(), "{}", run.describe());
    let errors = page_errors(&run.stderr);
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    let dom = &run.stdout;
    assert!(
        dom.contains("<svg") && dom.contains("class=\"legend\""),
        "{dom}"
    );

    let nodes = lab.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for node in &nodes {
        assert!(
            dom.contains(&format!("id=\"node-{}\"", node.name)),
            "{}",
            node.name
        );
        assert!(
            dom.contains(&node.internal_ip),
            "{} {}",
            node.name,
            node.internal_ip
        );
        let mac = eth0_mac(&lab, &node.name);
        assert!(
            dom.contains(&mac),
            "{}'s eth0 MAC {mac} is not drawn",
            node.name
        );
    }
    let pods = lab.pods();
    assert!(pods.len() >= 5, "{pods:?}");
    for pod in &pods {
        assert!(dom.contains(&pod.name), "pod {} is not drawn", pod.name);
        assert!(
            dom.contains(&pod.ip),
            "pod {}'s IP {} is not drawn",
            pod.name,
            pod.ip
        );
    }
    for svc in [
        "apps/web-service",
        "kube-system/kube-dns",
        "default/kubernetes",
    ] {
        assert!(dom.contains(svc), "Service {svc} is not drawn");
    }
    // The example routes by VXLAN: one tunnel curve per pair of nodes, as
    // the nodes' route tables hold them.
    assert_eq!(dom.matches("<g class=\"link vxlan\">").count(), 3, "{dom}");
    assert!(dom.contains("dev podwire.1"), "{dom}");

    // It renders to an image.
    let png = dir.join("lab.png");
    let shot = format!("--screenshot={}", png.display());
    let run = chromium(
        profile.path(),
        &page,
        &[&shot, "--window-size=1600,1000", "--hide-scrollbars"],
    );
    assert!(run.ok(), "{}", run.describe());
    assert!(page_errors(&run.stderr).is_empty(), "{}", run.describe());
    let image = std::fs::read(&png).expect("the screenshot was written");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 20_000);
}

#[test]
fn a_trace_is_drawn_on_the_graph() {
    let lab = Lab::start("graphtr", None);
    let dir = podwire_testsupport::TempDir::new("lab-graph-trace");
    let profile = podwire_testsupport::TempDir::new("lab-graph-trace-chromium");

    let svg = dir.join("trace.svg");
    let run = lab.cmd(&[
        "graph",
        "--trace",
        "client",
        "web-service.apps:80",
        "-o",
        &svg.display().to_string(),
    ]);
    assert!(run.ok(), "{}", run.describe());
    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(text.starts_with("<svg"), "{text}");
    assert!(text.contains("<g class=\"trace\">"), "{text}");
    assert!(text.contains("class=\"trace-verdict\""));
    assert!(
        text.contains("delivered: SYN-ACK from pod apps/web-"),
        "{}",
        run.describe()
    );
    // The client, the Service and the pod that answered are highlighted.
    for id in ["pod-default-client", "svc-apps-web-service"] {
        let start = text.find(&format!("id=\"{id}\"")).expect(id);
        let end = start + text[start..].find("</g>").expect("group end");
        assert!(text[start..end].contains("stroke=\"#e8590c\""), "{id}");
    }

    // --format html to stdout: the page with the trace report; it loads.
    let run = lab.cmd(&[
        "graph",
        "--format",
        "html",
        "--trace",
        "client",
        "web-service.apps:80",
    ]);
    assert!(run.ok(), "{}", run.describe());
    let page = dir.join("trace.html");
    std::fs::write(&page, &run.stdout).expect("write the page");
    let run = chromium(profile.path(), &page, &["--dump-dom"]);
    assert!(run.ok(), "{}", run.describe());
    assert!(page_errors(&run.stderr).is_empty(), "{}", run.describe());
    assert!(run.stdout.contains("class=\"trace-report\""));
    assert!(run.stdout.contains("<g class=\"trace\">"));

    // A bad trace is the trace's error, and nothing is written.
    let none = dir.join("none.svg");
    let run = lab.cmd(&[
        "graph",
        "--trace",
        "nosuchpod",
        "web-service.apps:80",
        "-o",
        &none.display().to_string(),
    ]);
    assert!(
        !run.ok() && run.stderr.contains("nosuchpod"),
        "{}",
        run.describe()
    );
    assert!(!none.exists());
}

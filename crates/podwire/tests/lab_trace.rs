//! `podwire lab trace` end to end (issue 13): real probes traced by the
//! kernel in labs of their own — a Service by name across nodes (DNS, DNAT
//! to a web pod, the node crossed, delivery), a port nothing listens on
//! (RST and who sent it), a NodePort from the external host (DNAT and
//! masquerade), a pod behind a route made unreachable (where it stopped),
//! and node hops on a host-gw lab. Each lab is removed by its guard even
//! when a test fails; no trace table is left behind. Needs root.

mod lab_common;

use lab_common::*;

fn trace(lab: &Lab, args: &[&str]) -> Run {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    lab.cmd(&all)
}

/// No namespace of the lab keeps a trace table.
fn no_trace_tables_left(lab: &Lab) {
    for node in ["node01", "node02"] {
        let run = lab.exec_node(node, &["nft", "list", "tables"]).expect_ok();
        assert!(!run.stdout.contains("podwire-trace"), "{}", run.describe());
    }
}

#[test]
fn vxlan_service_closed_port_nodeport_and_unreachable_route() {
    let lab = Lab::start("trace", None);

    // A Service by name: DNS from the pod, DNAT to a web pod, delivery. The
    // proxy picks an endpoint at random: some trace crosses to node02.
    let mut crossed = false;
    for _ in 0..8 {
        let run = trace(&lab, &["client", "web-service.apps:80", "--explain"]).expect_ok();
        let out = &run.stdout;
        assert!(
            out.contains("dns: web-service.apps.svc.cluster.local → 10."),
            "{}",
            run.describe()
        );
        assert!(
            out.contains("Service apps/web-service port 80 → endpoint pod apps/web-"),
            "{out}"
        );
        assert!(out.contains("rule inet podwire-proxy/services"), "{out}");
        assert!(
            out.contains("plan:") && out.contains("endpoint(s)"),
            "{out}"
        );
        assert!(
            out.contains("delivered: SYN-ACK from pod apps/web-"),
            "{out}"
        );
        if out.contains("out on podwire.1 (VXLAN) → node node02") {
            assert!(out.contains("→ node node02\n"), "{out}");
            crossed = true;
            break;
        }
    }
    assert!(crossed, "no trace crossed to node02 in 8 tries");

    // A port nothing listens on: the pod's RST.
    let web = lab
        .pods()
        .into_iter()
        .find(|p| p.namespace == "apps" && p.node == "node02")
        .expect("a web pod on node02");
    let dest = format!("apps/{}:9999", web.name);
    let run = trace(&lab, &["client", &dest]).expect_ok();
    assert!(
        run.stdout.contains(&format!(
            "refused: RST from pod apps/{} (node02): nothing listens on {}:9999",
            web.name, web.ip
        )),
        "{}",
        run.describe()
    );

    // From outside to a NodePort: the node's DNAT and masquerade.
    let node01 = lab.node("node01").internal_ip;
    let run = trace(&lab, &["external", &format!("{node01}:30080")]).expect_ok();
    let out = &run.stdout;
    assert!(
        out.contains("→ router") && out.contains("→ node node01"),
        "{}",
        run.describe()
    );
    assert!(
        out.contains("nodePort 30080 (port 80) → endpoint pod apps/web-"),
        "{out}"
    );
    assert!(
        out.contains("masquerade") && out.contains("SNAT (masquerade)"),
        "{out}"
    );
    assert!(out.contains("delivered: SYN-ACK"), "{out}");

    // node01's route to that pod made unreachable: the trace says where.
    let blocked = format!("{}/32", web.ip);
    lab.exec_node("node01", &["ip", "route", "add", "unreachable", &blocked])
        .expect_ok();
    let run = trace(
        &lab,
        &["client", &format!("{}:8080", web.ip), "--timeout", "1"],
    );
    let _ = lab.exec_node("node01", &["ip", "route", "del", "unreachable", &blocked]);
    let out = &run.stdout;
    assert!(
        out.contains(&format!(
            "last seen in node node01: route: {} is unreachable: dropped by routing",
            web.ip
        )),
        "{}",
        run.describe()
    );
    assert!(!out.contains("→ node node02"), "{out}");
    no_trace_tables_left(&lab);
}

#[test]
fn host_gw_names_the_node_hops() {
    let lab = Lab::start("trhgw", Some(&manifest("three-nodes-host-gw.yaml")));
    let web2 = lab.pod("default", "web-2");
    let run = trace(&lab, &["client", "web-2:8080"]).expect_ok();
    let out = &run.stdout;
    let node02 = lab.node("node02").internal_ip;
    assert!(
        out.contains(&format!("route: {} via {node02} dev eth0", web2.ip)),
        "{}",
        run.describe()
    );
    assert!(out.contains("out on eth0 → node node02"), "{out}");
    assert!(out.contains("→ pod default/web-2 (node02)"), "{out}");
    assert!(
        out.contains("delivered: SYN-ACK from pod default/web-2 (node02)"),
        "{out}"
    );
    no_trace_tables_left(&lab);
}

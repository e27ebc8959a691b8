//! Repairs after someone else changes what the agent programmed (issue 14,
//! fault 1), on a lab of two nodes: inside node01 the service proxy's table
//! is flushed, the route to node02's pods deleted and the masquerade table
//! deleted, each by hand as an operator would; each must be back within
//! 1 s (measured from just before the change and printed), the repairs
//! must be counted in the agent's `/metrics` and named in its log.
//!
//! The lab is the test's own (unique name, `lab down` from a Drop guard
//! even on failure); every change and all traffic stay inside its node and
//! pod namespaces. Needs root, iproute2, nft and curl.

mod lab_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_common::*;

const LIMIT: Duration = Duration::from_secs(1);

const MANIFEST: &str = r#"
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata: {name: repair}
spec:
  podCIDR: 10.244.0.0/16
  nodeSlicePrefix: 24
  serviceCIDR: 10.96.0.0/12
  routing: vxlan
  underlays: [{name: underlay, subnet: 192.168.56.0/24}]
  nodes: [{name: node01}, {name: node02}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: node02
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.100.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeName: node01
  containers: [{name: c, command: ["sleep", "infinity"]}]
"#;

const SERVICE: &str = "http://10.96.100.20/";

/// `ip netns exec NS ARGV` (quiet); true when it succeeded. Used instead
/// of `lab exec` where timing matters: it starts in a few milliseconds.
fn in_ns(ns: &str, argv: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `change` inside the node, then polls `check` every 10 ms; returns
/// the time from just before the change until `check` first held, or
/// panics after 5 s.
fn time_to_repair(node_ns: &str, change: &[&str], check: &dyn Fn() -> bool) -> Duration {
    let started = Instant::now();
    assert!(in_ns(node_ns, change), "{change:?} failed in {node_ns}");
    let changed = started.elapsed();
    // The change must have had an effect before the repair counts.
    loop {
        if check() {
            let took = started.elapsed();
            assert!(
                took > changed,
                "{change:?}: check held at once (the change did nothing?)"
            );
            return took;
        }
        if started.elapsed() > Duration::from_secs(5) {
            panic!("{change:?}: not repaired within 5 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn metric(lab: &Lab, node: &str, series: &str) -> u64 {
    let run = lab
        .exec_node(
            node,
            &["curl", "-s", "-m", "2", "http://127.0.0.1:10249/metrics"],
        )
        .expect_ok();
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn foreign_changes_to_tables_and_routes_are_repaired_within_a_second() {
    let lab = Lab::new("repair");
    let mut file = tempfile::NamedTempFile::new().expect("manifest file");
    std::io::Write::write_all(&mut file, MANIFEST.as_bytes()).expect("write manifest");
    lab.up(Some(file.path())).expect_ok();
    let node_ns = lab.node_netns("node01");
    let client_ns = lab.pod_netns("default", "client");
    let peer_slice = lab.node("node02").pod_cidr;
    assert!(!peer_slice.is_empty(), "node02 has no pod CIDR");

    let reaches = || {
        in_ns(
            &client_ns,
            &["curl", "-s", "-o", "/dev/null", "-m", "0.1", SERVICE],
        )
    };
    assert!(
        poll(Duration::from_secs(5), || reaches().then_some(())).is_some(),
        "the Service is not reachable from node01 to begin with"
    );

    // 1. The proxy's table emptied by hand: every Service down until the
    //    agent notices. Traffic must flow again within 1 s.
    let proxy = time_to_repair(
        &node_ns,
        &["nft", "flush", "table", "inet", "podwire-proxy"],
        &reaches,
    );
    println!(
        "proxy table flushed: a pod on node01 reaches the Service again after {:.0} ms",
        proxy.as_secs_f64() * 1000.0
    );

    // 2. The route to node02's pods deleted.
    let route_back = || {
        let out = Command::new("ip")
            .args(["-n", &node_ns, "route", "show", &peer_slice])
            .output();
        out.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
    };
    assert!(
        route_back(),
        "no route to {peer_slice} on node01 to begin with"
    );
    let route = time_to_repair(&node_ns, &["ip", "route", "del", &peer_slice], &route_back);
    println!(
        "route to {peer_slice} deleted: back after {:.0} ms",
        route.as_secs_f64() * 1000.0
    );
    assert!(
        reaches(),
        "the Service is reachable over the restored route"
    );

    // 3. The masquerade table deleted.
    let masq_back = || in_ns(&node_ns, &["nft", "list", "table", "inet", "podwire-node"]);
    assert!(masq_back(), "no masquerade table on node01 to begin with");
    let masq = time_to_repair(
        &node_ns,
        &["nft", "delete", "table", "inet", "podwire-node"],
        &masq_back,
    );
    println!(
        "masquerade table deleted: back after {:.0} ms",
        masq.as_secs_f64() * 1000.0
    );

    for (what, took) in [("proxy", proxy), ("route", route), ("masquerade", masq)] {
        assert!(
            took < LIMIT,
            "{what}: repaired after {:.0} ms, more than {} ms",
            took.as_secs_f64() * 1000.0,
            LIMIT.as_millis()
        );
    }

    // Counted and logged, naming what changed and who changed it.
    let series = [
        "podwire_agent_repairs_total{part=\"proxy\",what=\"rule\"}",
        "podwire_agent_repairs_total{part=\"routing\",what=\"route\"}",
        "podwire_agent_repairs_total{part=\"masquerade\",what=\"table\"}",
    ];
    for s in series {
        assert!(metric(&lab, "node01", s) >= 1, "{s} not counted");
    }
    let log = std::fs::read_to_string(lab.dir().join("nodes/node01/agent.log"))
        .expect("node01's agent log");
    let repairs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("repaired a change made by someone else"))
        .collect();
    for (part, needle) in [
        ("part=\"proxy\"", "rules deleted"),
        ("part=\"routing\"", &format!("route deleted ({peer_slice})")),
        ("part=\"masquerade\"", "1 table deleted"),
    ] {
        assert!(
            repairs
                .iter()
                .any(|l| l.contains(part) && l.contains(needle)),
            "no repair line naming {needle:?}:\n{}",
            repairs.join("\n")
        );
    }
    assert!(
        repairs.iter().any(|l| l.contains("by=nft (pid ")),
        "the nft changes name their program:\n{}",
        repairs.join("\n")
    );
    for l in &repairs {
        println!("agent log: {l}");
    }
}

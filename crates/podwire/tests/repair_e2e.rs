//! Repairs after someone else changes what the agent programmed (issue 14,
//! fault 1), on a lab of two nodes: inside node01 the service proxy's table
//! is flushed, the route to node02's pods deleted, the masquerade table
//! deleted, the VXLAN device set down (one lab per test), each by hand as
//! an operator would; each
//! must be back within 1 s (measured from just before the change and
//! printed), counted in the agent's `/metrics` and named in its log. The
//! agent's own changes (its first sync, a Service added) are never taken
//! for someone else's.
//!
//! Each lab is the test's own (unique name, `lab down` from a Drop guard
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

const EXTRA_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: default}
spec:
  clusterIP: 10.96.100.21
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
"#;

struct Setup {
    lab: Lab,
    node_ns: String,
    client_ns: String,
    peer_slice: String,
}

impl Setup {
    fn start(tag: &str) -> Setup {
        let lab = Lab::new(tag);
        let mut file = tempfile::NamedTempFile::new().expect("manifest file");
        std::io::Write::write_all(&mut file, MANIFEST.as_bytes()).expect("write manifest");
        lab.up(Some(file.path())).expect_ok();
        let node_ns = lab.node_netns("node01");
        let client_ns = lab.pod_netns("default", "client");
        let peer_slice = lab.node("node02").pod_cidr;
        assert!(!peer_slice.is_empty(), "node02 has no pod CIDR");
        let s = Setup {
            lab,
            node_ns,
            client_ns,
            peer_slice,
        };
        assert!(
            poll(Duration::from_secs(5), || s.reaches().then_some(())).is_some(),
            "the Service is not reachable from node01 to begin with"
        );
        s
    }

    fn reaches(&self) -> bool {
        in_ns(
            &self.client_ns,
            &["curl", "-s", "-o", "/dev/null", "-m", "0.1", SERVICE],
        )
    }

    /// node01's agent log lines that report a repair.
    fn repairs(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.lab.dir().join("nodes/node01/agent.log"))
            .expect("node01's agent log");
        log.lines()
            .filter(|l| l.contains("a change made by someone else"))
            .map(String::from)
            .collect()
    }

    /// The agent's own changes (first sync, then a Service added) are
    /// not repairs.
    fn assert_no_repair_yet(&self) {
        self.lab.apply_text(EXTRA_SERVICE).expect_ok();
        std::thread::sleep(Duration::from_millis(300));
        let repairs = self.repairs();
        assert!(
            repairs.is_empty(),
            "the agent took its own changes for someone else's:\n{}",
            repairs.join("\n")
        );
    }

    /// The repair is counted and logged, naming the change and its author.
    fn assert_reported(&self, part: &str, what: &str, change: &str, by: &str) {
        let series = format!("podwire_agent_repairs_total{{part=\"{part}\",what=\"{what}\"}}");
        assert_eq!(metric(&self.lab, "node01", &series), 1, "{series}");
        let repairs = self.repairs();
        for l in &repairs {
            println!("agent log: {l}");
        }
        assert_eq!(repairs.len(), 1, "one repair:\n{}", repairs.join("\n"));
        let line = &repairs[0];
        for needle in [
            format!("part=\"{part}\""),
            format!("what={what}"),
            change.to_string(),
            format!("by={by}"),
        ] {
            assert!(line.contains(&needle), "{needle:?} not in {line}");
        }
    }
}

fn assert_within_limit(what: &str, took: Duration) {
    assert!(
        took < LIMIT,
        "{what}: repaired after {:.0} ms, more than {} ms",
        took.as_secs_f64() * 1000.0,
        LIMIT.as_millis()
    );
}

#[test]
fn a_flushed_proxy_table_serves_again_within_a_second() {
    let s = Setup::start("rp-proxy");
    s.assert_no_repair_yet();
    // The proxy's table emptied by hand: every Service down until the
    // agent notices. Traffic must flow again within 1 s.
    let took = time_to_repair(
        &s.node_ns,
        &["nft", "flush", "table", "inet", "podwire-proxy"],
        &|| s.reaches(),
    );
    println!(
        "proxy table flushed: a pod on node01 reaches the Service again after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_within_limit("flushed proxy table", took);
    s.assert_reported(
        "proxy",
        "rule",
        "rules deleted (chain endpoints-check",
        "nft (pid ",
    );
}

#[test]
fn a_deleted_pod_route_is_back_within_a_second() {
    let s = Setup::start("rp-route");
    s.assert_no_repair_yet();
    let route_back = || {
        let out = Command::new("ip")
            .args(["-n", &s.node_ns, "route", "show", &s.peer_slice])
            .output();
        out.is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
    };
    assert!(route_back(), "no route to {} to begin with", s.peer_slice);
    let took = time_to_repair(
        &s.node_ns,
        &["ip", "route", "del", &s.peer_slice],
        &route_back,
    );
    println!(
        "route to {} deleted: back after {:.0} ms",
        s.peer_slice,
        took.as_secs_f64() * 1000.0
    );
    assert_within_limit("deleted pod route", took);
    assert!(
        s.reaches(),
        "the Service is reachable over the restored route"
    );
    s.assert_reported(
        "routing",
        "route",
        &format!("1 route deleted ({})", s.peer_slice),
        "netlink port ",
    );
}

#[test]
fn a_deleted_masquerade_table_is_back_within_a_second() {
    let s = Setup::start("rp-masq");
    s.assert_no_repair_yet();
    let masq_back = || {
        in_ns(
            &s.node_ns,
            &["nft", "list", "table", "inet", "podwire-node"],
        )
    };
    assert!(masq_back(), "no masquerade table on node01 to begin with");
    let took = time_to_repair(
        &s.node_ns,
        &["nft", "delete", "table", "inet", "podwire-node"],
        &masq_back,
    );
    println!(
        "masquerade table deleted: back after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_within_limit("deleted masquerade table", took);
    s.assert_reported(
        "masquerade",
        "table",
        "1 table deleted, 1 chain deleted (chain postrouting)",
        "nft (pid ",
    );
}

#[test]
fn a_vxlan_device_set_down_carries_traffic_again_within_a_second() {
    let s = Setup::start("rp-link");
    s.assert_no_repair_yet();
    // Down takes the routes through it along; the Service's only endpoint
    // is on node02, behind the tunnel.
    let took = time_to_repair(
        &s.node_ns,
        &["ip", "link", "set", "podwire.1", "down"],
        &|| s.reaches(),
    );
    println!(
        "podwire.1 set down: a pod on node01 reaches the Service on node02 again after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_within_limit("VXLAN device set down", took);
    s.assert_reported("routing", "link", "1 link set down (podwire.1)", "unknown");
}

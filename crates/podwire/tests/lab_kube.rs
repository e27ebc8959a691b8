//! End-to-end test of the lab as a real cluster (issue 11, "Done when"):
//! `podwire lab up --control-plane kubernetes` on the built-in example, then
//! everything through the real `kubectl` and the admin kubeconfig `lab up`
//! printed — nodes, podwire's own DaemonSet and Deployments from deploy/,
//! describe and events, run/expose/create and a request by name from
//! another namespace, logs, an Ingress ADDRESS, a deleted pod replaced on
//! the network — plus the faults a cluster must surface (a crashing
//! container's restarts, a node whose cni0 is down going NotReady, a killed
//! agent restarted as a DaemonSet pod), nodes that look like nodes from
//! inside, node add/remove by Lab document, and `lab down` leaving nothing.
//! Needs root and the Kubernetes programs (tools/k8s/build).

mod lab_common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lab_common::*;
use podwire_testsupport::k8s_bin;
use serde_json::Value;

/// `lab up` of the example with a real control plane (the target
/// is 10 s on this machine; this only stops a hang).
const KUBE_UP_TIMEOUT: Duration = Duration::from_secs(150);

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap()];
        all.extend_from_slice(args);
        run_program(
            k8s_bin("kubectl").to_str().unwrap(),
            &all,
            stdin,
            Duration::from_secs(30),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args, None).expect_ok().stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }

    /// Polls until `check` holds on `kubectl get ARGS -o json`, or fails
    /// with the last object.
    fn wait(&self, what: &str, limit: Duration, args: &[&str], check: impl Fn(&Value) -> bool) {
        let mut last = Value::Null;
        let found = poll(limit, || {
            let run = self.run(&[args, &["-o", "json"]].concat(), None);
            last = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
            check(&last).then_some(())
        });
        assert!(found.is_some(), "{what} within {limit:?}; last: {last:#}");
    }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn condition(v: &Value, kind: &str) -> Option<Value> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

fn restarts(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum()
}

fn pods_named(all: &Value, prefix: &str) -> Vec<Value> {
    items(all)
        .into_iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

/// The Lab document of the built-in example with one more node.
const ADD_NODE03: &str = "\
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata: {name: example}
spec:
  podCIDR: 10.244.0.0/16
  nodeSlicePrefix: 24
  serviceCIDR: 10.96.0.0/12
  clusterDomain: cluster.local
  routing: vxlan
  underlays: [{name: underlay, subnet: 192.168.56.0/24}]
  nodes: [{name: controlplane}, {name: node01}, {name: node02}, {name: node03}]
  external: {name: external, subnet: 203.0.113.0/24}
  certificates: [{namespace: apps, name: web-tls, hosts: [web.example.com]}]
";
const REMOVE_NODE03: &str = "\
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata: {name: example}
spec:
  nodes: [{name: node03}]
";

#[test]
fn the_lab_is_a_real_cluster_that_kubectl_drives() {
    let lab = Lab::new("kube");
    let up = lab.cmd_within(
        &["up", "--control-plane", "kubernetes"],
        None,
        KUBE_UP_TIMEOUT,
    );
    let up = up.expect_ok();
    eprintln!("lab up took {:.1} s", up.elapsed.as_secs_f64());
    let kubeconfig = lab.dir().join("kubeconfig");
    assert!(
        up.stdout
            .contains(&format!("export KUBECONFIG={} PATH=", kubeconfig.display())),
        "lab up must say how to use kubectl: {}",
        up.stdout
    );
    let k = Kubectl { kubeconfig };

    // Nodes: three, Ready, with their addresses; the control plane tainted.
    let nodes = k.json(&["get", "nodes"]);
    assert_eq!(items(&nodes).len(), 3, "{nodes:#}");
    for node in items(&nodes) {
        assert_eq!(condition(&node, "Ready").unwrap()["status"], "True");
    }
    let wide = k.ok(&["get", "nodes", "-o", "wide"]);
    for ip in ["192.168.56.10", "192.168.56.11", "192.168.56.12"] {
        assert!(wide.contains(ip), "INTERNAL-IP {ip} missing:\n{wide}");
    }
    let cp = k.json(&["get", "node", "controlplane"]);
    assert!(
        cp["metadata"]["labels"]
            .get("node-role.kubernetes.io/control-plane")
            .is_some()
    );
    assert!(cp["spec"]["taints"].to_string().contains("control-plane"));

    // podwire itself, from deploy/: the agent on every node, DNS, ingress.
    let ds = k.json(&["get", "ds", "-n", "kube-system", "podwire-node"]);
    assert_eq!(ds["status"]["numberReady"], 3, "{ds:#}");
    let all = k.json(&["get", "pods", "-A"]);
    let agents = pods_named(&all, "podwire-node-");
    let mut agent_nodes: Vec<String> = agents
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    agent_nodes.sort();
    assert_eq!(agent_nodes, ["controlplane", "node01", "node02"]);
    assert_eq!(pods_named(&all, "podwire-dns-").len(), 2);
    assert_eq!(pods_named(&all, "podwire-ingress-").len(), 2);
    assert_eq!(pods_named(&all, "web-").len(), 2);
    let web_nodes: std::collections::BTreeSet<String> = pods_named(&all, "web-")
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    assert!(!web_nodes.contains("controlplane"), "{web_nodes:?}");

    // describe shows events from the scheduler and the kubelet.
    let describe = k.ok(&["describe", "pod", "client"]);
    for event in ["Scheduled", "Started"] {
        assert!(describe.contains(event), "no {event} event:\n{describe}");
    }

    // run + expose + create ns, then a request by name from another namespace.
    k.ok(&["create", "ns", "other"]);
    k.ok(&[
        "run",
        "hello",
        "-n",
        "other",
        "--image=podwire",
        "--port=8080",
    ]);
    k.ok(&[
        "expose",
        "pod",
        "hello",
        "-n",
        "other",
        "--port=80",
        "--target-port=8080",
    ]);
    k.wait(
        "pod other/hello Ready",
        Duration::from_secs(30),
        &["get", "pod", "hello", "-n", "other"],
        |p| condition(p, "Ready").is_some_and(|c| c["status"] == "True"),
    );
    let answer = poll(Duration::from_secs(15), || {
        let run = k.run(
            &[
                "exec",
                "client",
                "--",
                "curl",
                "-s",
                "-m",
                "2",
                "http://hello.other/",
            ],
            None,
        );
        let served = parse_served(&run.stdout);
        (served.get("hostname").map(String::as_str) == Some("hello")).then_some(served)
    });
    assert!(
        answer.is_some(),
        "client could not reach hello.other by name"
    );
    let logs = k.ok(&["logs", "hello", "-n", "other"]);
    assert!(!logs.trim().is_empty(), "kubectl logs printed nothing");

    // The Ingress gets an ADDRESS from the elected controller.
    k.wait(
        "ingress apps/web has an address",
        Duration::from_secs(30),
        &["get", "ingress", "web", "-n", "apps"],
        |i| !i["status"]["loadBalancer"]["ingress"].is_null(),
    );
    let describe = k.ok(&["describe", "ingress", "web", "-n", "apps"]);
    assert!(describe.contains("web-service:"), "{describe}");

    // A deleted pod is replaced by its Deployment, on the network.
    let victim = pods_named(&k.json(&["get", "pods", "-n", "apps"]), "web-")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    k.ok(&["delete", "pod", "-n", "apps", &victim, "--wait=false"]);
    let replacement = poll(Duration::from_secs(30), || {
        let pods = pods_named(&k.json(&["get", "pods", "-n", "apps"]), "web-");
        pods.iter()
            .find(|p| {
                p["metadata"]["name"] != victim.as_str()
                    && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
                    && p["metadata"]["deletionTimestamp"].is_null()
                    && pods.len() == 2
            })
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
            .filter(|_| {
                pods.iter()
                    .all(|p| p["metadata"]["name"] != victim.as_str())
            })
    })
    .expect("the Deployment replaced the deleted pod");
    let reached = poll(Duration::from_secs(15), || {
        let run = k.run(
            &[
                "exec",
                "client",
                "--",
                "curl",
                "-s",
                "-m",
                "2",
                "http://web-service.apps/",
            ],
            None,
        );
        (parse_served(&run.stdout).get("hostname") == Some(&replacement)).then_some(())
    });
    assert!(
        reached.is_some(),
        "the new pod {replacement} is not reached through its Service"
    );

    // Faults surface. A crashing container restarts and RESTARTS rises.
    k.ok(&[
        "run",
        "crasher",
        "--image=podwire",
        "--restart=Always",
        "--command",
        "--",
        "sh",
        "-c",
        "sleep 0.5; exit 3",
    ]);
    k.wait(
        "crasher restarts",
        Duration::from_secs(30),
        &["get", "pod", "crasher"],
        |p| restarts(p) >= 1,
    );
    // A node whose cni0 is down goes NotReady with a reason, and back.
    lab.exec_node("node02", &["ip", "link", "set", "cni0", "down"])
        .expect_ok();
    let started = Instant::now();
    k.wait(
        "node02 NotReady",
        Duration::from_secs(10),
        &["get", "node", "node02"],
        |n| condition(n, "Ready").is_some_and(|c| c["status"] != "True" && c["reason"].is_string()),
    );
    eprintln!(
        "node02 NotReady after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    lab.exec_node("node02", &["ip", "link", "set", "cni0", "up"])
        .expect_ok();
    k.wait(
        "node02 Ready again",
        Duration::from_secs(20),
        &["get", "node", "node02"],
        |n| condition(n, "Ready").is_some_and(|c| c["status"] == "True"),
    );
    // A killed agent shows as a restarted DaemonSet pod.
    lab.exec_node("node01", &["pkill", "-f", "podwire agent"])
        .expect_ok();
    k.wait(
        "the agent pod on node01 restarted",
        Duration::from_secs(30),
        &[
            "get",
            "pods",
            "-n",
            "kube-system",
            "--field-selector=spec.nodeName=node01",
        ],
        |all| {
            pods_named(all, "podwire-node-")
                .iter()
                .any(|p| restarts(p) >= 1)
        },
    );

    // Nodes look like nodes from inside.
    let conf = lab
        .exec_node("node01", &["ls", "/etc/cni/net.d"])
        .expect_ok();
    assert!(
        conf.stdout.contains("10-podwire.conflist"),
        "{}",
        conf.stdout
    );
    let bin = lab.exec_node("node01", &["ls", "/opt/cni/bin"]).expect_ok();
    assert!(bin.stdout.contains("podwire"), "{}", bin.stdout);
    let ps = lab
        .exec_node("node01", &["ps", "-eo", "pid,args"])
        .expect_ok();
    assert!(
        ps.stdout.contains("podwire kubelet") || ps.stdout.contains(" kubelet"),
        "{}",
        ps.stdout
    );
    assert!(
        !ps.stdout.contains("kube-apiserver"),
        "node01 shows other nodes' processes:\n{}",
        ps.stdout
    );
    let listening = lab.exec_node("controlplane", &["ss", "-Hnltp"]).expect_ok();
    for port in [":6443", ":2379", ":10257", ":10259", ":10250"] {
        assert!(
            listening.stdout.contains(port),
            "controlplane does not listen on {port}:\n{}",
            listening.stdout
        );
    }

    // Nodes join and leave by Lab document.
    lab.apply_text(ADD_NODE03).expect_ok();
    k.wait(
        "node03 Ready",
        Duration::from_secs(30),
        &["get", "node", "node03"],
        |n| condition(n, "Ready").is_some_and(|c| c["status"] == "True"),
    );
    lab.cmd_within(&["delete", "-f", "-"], Some(REMOVE_NODE03), UP_TIMEOUT)
        .expect_ok();
    let gone = k.run(&["get", "node", "node03"], None);
    assert!(!gone.ok(), "node03 is still registered");

    lab.down().expect_ok();
    lab.assert_gone();
}

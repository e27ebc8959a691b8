//! NetworkPolicy in Kubernetes mode: `podwire agent --source kube` under
//! the podwire-node ServiceAccount of deploy/ reads NetworkPolicies, Pods
//! and Namespaces from a real API server (kubectl creates them) and
//! programs, updates and removes its policy table accordingly.

mod kube_common;

use kube_common::{CONVERGE, Cluster, assert_not_forbidden};
use podwire_testsupport::eventually;

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: web, image: podwire, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: node-a
  containers: [{name: client, image: podwire}]
"#;

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
"#;

#[test]
fn the_agent_enforces_what_kubectl_creates() {
    let c = Cluster::start();
    let a = c.node("node-a", 11);
    let kubeconfig = c.kubeconfig_for("kube-system", "podwire-node");
    let _agent = c.podwire(
        &a.ns,
        "agent-node-a",
        &[
            "agent",
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--node",
            "node-a",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--routing",
            "host-gw",
            "--healthz-bind",
            "off",
            "--metrics-bind",
            "off",
        ],
    );
    c.apply(OBJECTS);
    // The kubelet's part: the pods' addresses.
    for (pod, ip) in [("web", "10.244.77.2"), ("client", "10.244.77.3")] {
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
        );
        c.kubectl(&[
            "patch",
            "pod",
            pod,
            "-n",
            "shop",
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
    }
    c.apply(POLICY);
    assert!(
        c.kubectl(&["get", "netpol", "-n", "shop"])
            .contains("web-from-client")
    );
    let table = || a.sh("nft list table inet podwire-policy");
    assert!(
        eventually(CONVERGE, || {
            let t = table();
            t.contains("jump in-") && t.contains("10.244.77.2 . 10.244.77.3 . tcp . 8080")
        }),
        "the policy is not programmed:\n{}\n{}",
        table(),
        c.log("agent-node-a")
    );
    // A label change moves the grant away; deleting the policy empties it.
    c.kubectl(&[
        "label",
        "pod",
        "client",
        "-n",
        "shop",
        "app=other",
        "--overwrite",
    ]);
    assert!(
        eventually(CONVERGE, || !table().contains("10.244.77.3 . tcp")),
        "{}",
        table()
    );
    c.kubectl(&["delete", "netpol", "web-from-client", "-n", "shop"]);
    assert!(
        eventually(CONVERGE, || !table().contains("jump in-")),
        "{}",
        table()
    );
    assert_not_forbidden(&c, "agent-node-a");
}

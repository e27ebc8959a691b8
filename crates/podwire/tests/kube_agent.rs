//! `podwire agent --source kube` against a real control plane, under the
//! podwire-node ServiceAccount of deploy/: node routes (host-gw and VXLAN
//! with peers learned from the endpoints agents publish on their Nodes),
//! the masquerade table and the service proxy, all from objects created
//! with kubectl.

mod kube_common;

use kube_common::{CONVERGE, Cluster, Node, assert_not_forbidden, http_get, serve, status_file};
use podwire_testsupport::{eventually, poll};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      hostNetwork: true
      containers:
        - name: web
          image: podwire
          ports: [{containerPort: 18080, name: http}]
"#;

fn agent(cluster: &Cluster, node: &Node, routing: &str) -> podwire_testsupport::Process {
    let kubeconfig = cluster.kubeconfig_for("kube-system", "podwire-node");
    let status = cluster.dir.join(format!("{}.status", node.name));
    let cni = cluster.dir.join(format!("cni-{}", node.name));
    cluster.podwire(
        &node.ns,
        &format!("agent-{}", node.name),
        &[
            "agent",
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--node",
            &node.name,
            "--cluster-cidr",
            "10.244.0.0/16",
            "--routing",
            routing,
            "--status-file",
            &status.display().to_string(),
            "--install-cni",
            "--cni-bin-dir",
            &cni.join("bin").display().to_string(),
            "--cni-conf-dir",
            &cni.join("net.d").display().to_string(),
        ],
    )
}

#[test]
fn agents_route_and_proxy_what_kubectl_creates() {
    let c = Cluster::start();
    let a = c.node("node-a", 11);
    let b = c.node("node-b", 12);
    let (cidr_a, cidr_b) = (c.pod_cidr("node-a"), c.pod_cidr("node-b"));
    let _agent_a = agent(&c, &a, "host-gw");
    let _agent_b = agent(&c, &b, "host-gw");

    // Each node routes the other's pod slice via its InternalIP.
    assert!(
        eventually(CONVERGE, || a
            .sh("ip route")
            .contains(&format!("{cidr_b} via {} dev eth0 proto 112", b.ip))),
        "node-a has no route to node-b's pods:\n{}\n{}",
        a.sh("ip route"),
        c.log("agent-node-a")
    );
    assert!(eventually(CONVERGE, || b
        .sh("ip route")
        .contains(&format!("{cidr_a} via {}", a.ip))));
    // The CNI plugin and the node's conflist, with the slice the API gave it.
    let conflist = c.dir.join("cni-node-a/net.d/10-podwire.conflist");
    assert!(
        eventually(CONVERGE, || std::fs::read_to_string(&conflist)
            .is_ok_and(|t| t.contains(&format!("\"subnet\": \"{cidr_a}\"")))),
        "no conflist with {cidr_a}: {:?}",
        std::fs::read_to_string(&conflist)
    );
    let plugin = c.dir.join("cni-node-a/bin/podwire");
    let version = std::process::Command::new(&plugin)
        .env("CNI_COMMAND", "VERSION")
        .output()
        .expect("the installed plugin runs");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("supportedVersions"),
        "{version:?}"
    );
    // Egress masquerade, as Flannel does it.
    assert!(
        a.sh("nft list table inet podwire-node")
            .contains("pods leaving the cluster range")
    );

    // A Deployment (hostNetwork pods, so their address is the node's and
    // traffic to them is real) exposed as a Service, with kubectl.
    c.apply(WEB);
    c.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=http",
    ]);
    let _serve_a = serve(&c, &a.ns, 18080);
    let _serve_b = serve(&c, &b.ns, 18080);
    assert!(
        poll(CONVERGE, || (c.run_pods("default", "app=web", &[&a, &b])
            == 1)
            .then_some(()))
        .is_some(),
        "the web pod was not scheduled:\n{}\n{}",
        c.kubectl(&["get", "pods", "-o", "wide"]),
        c.kubectl(&["get", "events"])
    );
    let vip = c.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let url = format!("http://{vip}/");
    let answer = poll(CONVERGE, || http_get(&a.ns, &url, None));
    assert!(
        answer.as_deref().is_some_and(|a| a.contains("hostname=")),
        "no answer through ClusterIP {vip}: {answer:?}\n{}\n{}",
        a.sh("nft list table inet podwire-proxy"),
        c.log("agent-node-a")
    );

    // Scaled to 2 (one per node: the pods take host port 18080): two
    // endpoints behind the VIP on both nodes.
    c.kubectl(&["scale", "deployment", "web", "--replicas=2"]);
    let endpoints = |node: &Node| {
        node.sh("nft list map inet podwire-proxy ep4")
            .matches(&format!("{vip} . tcp . 80 . "))
            .count()
    };
    assert!(
        eventually(CONVERGE, || {
            c.run_pods("default", "app=web", &[&a, &b]);
            endpoints(&a) == 2 && endpoints(&b) == 2
        }),
        "scaling to 2 not reflected: {}",
        a.sh("nft list map inet podwire-proxy ep4")
    );

    // Deleted: gone from every node's table.
    c.kubectl(&["delete", "service", "web"]);
    assert!(eventually(CONVERGE, || !a
        .sh("nft list map inet podwire-proxy svc4")
        .contains(&vip)
        && !b.sh("nft list map inet podwire-proxy svc4").contains(&vip)));

    for node in [&a, &b] {
        let status = status_file(&c.dir.join(format!("{}.status", node.name)))
            .expect("the agent writes its status");
        assert_eq!(status["ok"], true, "{status}");
        assert_not_forbidden(&c, &format!("agent-{}", node.name));
    }
}

#[test]
fn vxlan_peers_come_from_the_endpoints_agents_publish() {
    let c = Cluster::start();
    let a = c.node("node-a", 11);
    let b = c.node("node-b", 12);
    // A Node whose agent never runs: it publishes no endpoint.
    let ghost = c.node("node-c", 13);
    let cidr_b = c.pod_cidr("node-b");
    let cidr_c = c.pod_cidr("node-c");
    let _agent_a = agent(&c, &a, "vxlan");
    let _agent_b = agent(&c, &b, "vxlan");

    let published = |node: &str| {
        poll(CONVERGE, || {
            let mac = c.kubectl(&[
                "get",
                "node",
                node,
                "-o",
                r"jsonpath={.metadata.annotations.podwire\.io/vtep-mac}",
            ]);
            (!mac.trim().is_empty()).then(|| mac.trim().to_string())
        })
        .unwrap_or_else(|| {
            panic!(
                "{node} did not publish its VXLAN MAC:\n{}",
                c.log(&format!("agent-{node}"))
            )
        })
    };
    let mac_b = published("node-b");
    let ip_b = c.kubectl(&[
        "get",
        "node",
        "node-b",
        "-o",
        r"jsonpath={.metadata.annotations.podwire\.io/public-ip}",
    ]);
    assert_eq!(ip_b.trim(), b.ip.to_string());
    // The MAC node-b published is its device's.
    assert!(
        b.sh("ip -o link show podwire.1").contains(&mac_b),
        "{}",
        b.sh("ip -o link show podwire.1")
    );
    // node-a forwards node-b's slice into the tunnel to what node-b published.
    assert!(
        eventually(CONVERGE, || a
            .sh("bridge fdb show dev podwire.1")
            .contains(&format!("{mac_b} dst {}", b.ip))),
        "{}\n{}",
        a.sh("bridge fdb show dev podwire.1"),
        c.log("agent-node-a")
    );
    assert!(a.sh("ip route").contains(&format!("{cidr_b} via")));
    // The ghost published nothing, so nothing points at it.
    assert!(!a.sh("ip route").contains(&cidr_c), "{}", a.sh("ip route"));
    drop(ghost);

    // And the overlay carries packets: node-a pings node-b's tunnel address.
    let vtep_b = cidr_b.split('/').next().unwrap_or_default().to_string();
    assert!(
        eventually(CONVERGE, || a
            .ns
            .exec(&["ping", "-c1", "-W1", &vtep_b])
            .status
            .success()),
        "no reply from node-b's VTEP {vtep_b} over VXLAN"
    );
    assert_not_forbidden(&c, "agent-node-a");
    assert_not_forbidden(&c, "agent-node-b");
}

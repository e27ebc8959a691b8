//! Shared pieces of the Kubernetes-mode tests: a real control plane (from
//! podwire-testsupport) with `deploy/podwire.yaml` applied, node namespaces
//! on its underlay with their Node objects, podwire components run under
//! the ServiceAccounts of `deploy/` (never admin), and a stand-in for the
//! kubelet's pod status (no kubelet runs here: pods get the status a
//! kubelet would write, with hostNetwork addresses so traffic to them is
//! real).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use podwire_testsupport::{ControlPlane, Netns, Process, TempDir, poll, workspace_root};

/// How long a convergence may take in a test (the machine is shared and
/// slow at times; timings belong in bench/kube).
pub const CONVERGE: Duration = Duration::from_secs(30);

pub fn podwire() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podwire"))
}

/// A node: a network namespace on the control plane's underlay with its
/// Node object.
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub ns: Netns,
}

impl Node {
    /// Runs a shell script inside the node; its stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.ns.sh(script);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A control plane, the objects of `deploy/`, and a directory for logs.
pub struct Cluster {
    pub cp: ControlPlane,
    pub dir: TempDir,
}

impl Cluster {
    /// etcd + kube-apiserver + controller manager (node IPAM, EndpointSlices,
    /// Deployments) + scheduler, with `deploy/` applied.
    pub fn start() -> Cluster {
        let cp = ControlPlane::start_full();
        let dir = TempDir::new("kube-test");
        let cluster = Cluster { cp, dir };
        cluster.apply_deploy();
        cluster
    }

    /// `kubectl apply -f deploy/` (the directory, as a user does).
    pub fn apply_deploy(&self) -> String {
        let deploy = workspace_root().join("deploy");
        let out = self
            .cp
            .kubectl(&["apply", "-f", &deploy.display().to_string()]);
        assert!(
            out.status.success(),
            "kubectl apply -f deploy/ failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.cp.kubectl_ok(args)
    }

    pub fn apply(&self, yaml: &str) -> String {
        self.cp.apply(yaml)
    }

    /// A kubeconfig with a token of `namespace/service_account`.
    pub fn kubeconfig_for(&self, namespace: &str, service_account: &str) -> PathBuf {
        let token = self.cp.create_token(namespace, service_account);
        self.cp
            .kubeconfig_for_token(&token, &format!("{service_account}-kubeconfig"))
    }

    /// A node namespace attached at the underlay's `.host`, and its Node
    /// object with that InternalIP (the controller manager gives it a pod
    /// slice).
    pub fn node(&self, name: &str, host: u8) -> Node {
        let ns = Netns::new(&format!("kn{host}"));
        let ip = self.cp.underlay_ip(host);
        self.cp.attach(&ns, "eth0", &format!("{ip}/24"));
        // Every node has a default route (the output path routes a packet
        // to a ClusterIP before the proxy's DNAT can); the control plane's
        // address stands in for the gateway.
        ns.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &self.cp.api_ip().to_string(),
        ]);
        self.apply(&format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}}}\n"
        ));
        // What a kubelet reports; the controller manager's node lifecycle
        // part (off here: nothing sends heartbeats) would then lift the
        // not-ready taint the API put on the new Node, so the test does.
        let status = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}],"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady","message":"test node"}}],"capacity":{{"cpu":"2","memory":"4Gi","pods":"110"}},"allocatable":{{"cpu":"2","memory":"4Gi","pods":"110"}}}}}}"#
        );
        self.kubectl(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ]);
        let _ = self.cp.kubectl(&[
            "taint",
            "nodes",
            name,
            "node.kubernetes.io/not-ready:NoSchedule-",
        ]);
        Node {
            name: name.to_string(),
            ip,
            ns,
        }
    }

    /// The pod slice the controller manager gave a node.
    pub fn pod_cidr(&self, node: &str) -> String {
        poll(CONVERGE, || {
            let cidr = self.kubectl(&["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"]);
            (!cidr.trim().is_empty()).then(|| cidr.trim().to_string())
        })
        .unwrap_or_else(|| panic!("node {node} got no podCIDR from the controller manager"))
    }

    /// Starts `podwire ARGS` inside `ns`, output to `<dir>/<log>.log`.
    pub fn podwire(&self, ns: &Netns, log: &str, args: &[&str]) -> Process {
        let file = std::fs::File::create(self.log_path(log)).expect("log file");
        let mut cmd: Command = ns.command(podwire());
        cmd.args(args)
            .env("PODWIRE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        ns.spawn(cmd)
    }

    pub fn log_path(&self, log: &str) -> PathBuf {
        self.dir.join(format!("{log}.log"))
    }

    /// What a component logged so far.
    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.log_path(log)).unwrap_or_default()
    }

    /// Stands in for the kubelet: every pod of `namespace` matching
    /// `selector` that the scheduler placed on a node gets that node's
    /// address (hostNetwork pods) and Running + Ready, so the EndpointSlice
    /// controller lists it. Returns how many pods are running.
    pub fn run_pods(&self, namespace: &str, selector: &str, nodes: &[&Node]) -> usize {
        let listing = self.kubectl(&[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            selector,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
        ]);
        let mut running = 0;
        for line in listing.lines() {
            let mut parts = line.split_whitespace();
            let (Some(pod), Some(node_name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(node) = nodes.iter().find(|n| n.name == node_name) else {
                continue;
            };
            if parts.next() == Some("Running") {
                running += 1;
                continue;
            }
            let ip = node.ip;
            let status = format!(
                r#"{{"status":{{"phase":"Running","hostIP":"{ip}","hostIPs":[{{"ip":"{ip}"}}],"podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}},{{"type":"PodScheduled","status":"True"}},{{"type":"Initialized","status":"True"}}]}}}}"#
            );
            self.kubectl(&[
                "patch",
                "pod",
                pod,
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status,
            ]);
            running += 1;
        }
        running
    }
}

/// A HTTP server (`podwire serve`) in `ns` on `port`.
pub fn serve(cluster: &Cluster, ns: &Netns, port: u16) -> Process {
    let listen = format!("0.0.0.0:{port}");
    cluster.podwire(
        ns,
        &format!("serve-{}-{port}", ns.name()),
        &["serve", "--listen", &listen],
    )
}

/// An HTTP GET from inside `ns` (curl, 2 s limit): the body, or None.
pub fn http_get(ns: &Netns, url: &str, host: Option<&str>) -> Option<String> {
    let mut args = vec!["curl", "-s", "--max-time", "2", "--fail"];
    let header;
    if let Some(h) = host {
        header = format!("Host: {h}");
        args.push("-H");
        args.push(&header);
    }
    args.push(url);
    let out = ns.exec(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dig +short` inside `ns` against `server` (IP:PORT as `@ip -p port`).
pub fn dig(ns: &Netns, server: &str, port: u16, args: &[&str]) -> String {
    let port = port.to_string();
    let at = format!("@{server}");
    let mut argv = vec!["dig", "+time=1", "+tries=1", &at, "-p", &port];
    argv.extend_from_slice(args);
    let out = ns.exec(&argv);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSON status file, when it parses.
pub fn status_file(path: &Path) -> Option<serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Panics when a component's log shows an authorization failure: each runs
/// under the RBAC of deploy/, which must be enough.
pub fn assert_not_forbidden(cluster: &Cluster, log: &str) {
    let text = cluster.log(log);
    assert!(
        !text.contains("forbidden to") && !text.contains("(403)"),
        "{log} hit an RBAC refusal with the permissions of deploy/:\n{text}"
    );
}

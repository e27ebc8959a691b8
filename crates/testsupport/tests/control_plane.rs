//! Tests of the test support itself: the namespace guard and temp dirs, and
//! a real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler from tools/k8s/build) checked with the real kubectl.
//! They need root; the control-plane tests fail loudly when the Kubernetes
//! binaries are missing (`k8s_bin_dir` says how to build them).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use podwire_testsupport::{
    Component, ControlPlane, Netns, TempDir, eventually, k8s_bin_dir, poll, unique_name,
};

fn netns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
        || Path::new("/run/netns").join(name).exists()
}

/// A live (not zombie) process's command line.
fn live_cmdline(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, live_cmdline(pid)?)))
        .filter(|(_, cmd)| cmd.contains(needle))
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn netns_guard_lives_as_long_as_the_value() {
    let ns = Netns::new("guard");
    let name = ns.name().to_string();
    assert!(netns_exists(&name), "{name} exists");
    assert_eq!(ns.path(), Path::new("/run/netns").join(&name));
    let lo = ns.exec_ok(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "lo is up: {lo}");
    assert!(
        ns.exec_ok(&["ip", "-o", "link", "show"]).lines().count() == 1,
        "a fresh namespace holds only lo"
    );

    // Sockets made on `run`'s thread belong to the namespace: a listener
    // there is reachable from the namespace, not from the host.
    let port = ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind in the namespace");
        let port = l.local_addr().expect("addr").port();
        std::mem::forget(l);
        port
    });
    assert!(
        ns.run(|| TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "reachable inside"
    );

    // A process left running inside (orphaned, like a daemon) is killed
    // when the guard drops.
    let orphan: u32 = ns
        .ok("sleep 1000 </dev/null >/dev/null 2>&1 & echo $!")
        .trim()
        .parse()
        .expect("pid of the orphan");
    // A process started through the guard's own helper, deliberately leaked.
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("1000");
    let spawned = ns.spawn(cmd);
    let spawned_pid = spawned.pid();
    std::mem::forget(spawned);
    assert!(
        eventually(Duration::from_secs(5), || {
            let pids = ns.pids();
            pids.contains(&orphan) && pids.contains(&spawned_pid)
        }),
        "both processes run in the namespace: {:?}",
        ns.pids()
    );
    drop(ns);
    assert!(!netns_exists(&name), "{name} removed");
    for pid in [orphan, spawned_pid] {
        assert!(
            eventually(Duration::from_secs(5), || live_cmdline(pid).is_none()),
            "process {pid} killed with the namespace"
        );
    }
}

#[test]
fn netns_guard_removes_the_namespace_when_the_test_panics() {
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new("panics");
        name = ns.name().to_string();
        assert!(netns_exists(&name));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!netns_exists(&name), "{name} removed during unwinding");
}

#[test]
fn temp_dir_and_unique_names() {
    let dir = TempDir::new("check");
    let path = dir.path().to_path_buf();
    std::fs::write(dir.join("file"), "x").expect("write");
    assert!(path.is_dir());
    drop(dir);
    assert!(!path.exists(), "removed with its content");
    assert_ne!(unique_name("a"), unique_name("a"));
}

/// The API server alone (no controller manager, no scheduler): the
/// `kubernetes` Service, stop and start.
#[test]
fn apiserver_only() {
    k8s_bin_dir();
    let mut cp = ControlPlane::start();
    eprintln!(
        "ControlPlane::start() (etcd + kube-apiserver): {:.2} s",
        cp.startup_time().as_secs_f64()
    );
    let version = cp.kubectl_ok(&["get", "--raw", "/version"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version JSON");
    assert!(
        version["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "{version}"
    );
    // The `kubernetes` Service takes the range's first address and points
    // at the advertised address.
    let ip = cp.kubectl_ok(&[
        "get",
        "service",
        "kubernetes",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(ip, cp.first_service_ip().to_string());
    assert_eq!(ip, "10.96.0.1");
    let endpoints = poll(Duration::from_secs(10), || {
        let out = cp.kubectl(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[*].addresses[*]}",
        ]);
        let text = stdout(&out);
        (out.status.success() && !text.is_empty()).then_some(text)
    });
    assert_eq!(endpoints, Some(cp.api_ip().to_string()));

    cp.stop_apiserver();
    assert!(!cp.kubectl(&["get", "ns"]).status.success(), "API down");
    cp.start_apiserver();
    assert!(
        cp.kubectl_ok(&["get", "ns", "-o", "name"])
            .contains("namespace/default")
    );
    assert!(
        cp.log_tail(Component::ApiServer, 5).lines().count() > 0,
        "apiserver log kept"
    );
}

/// A test that panics with a control plane up leaves nothing behind.
#[test]
fn control_plane_is_removed_when_the_test_panics() {
    k8s_bin_dir();
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cp = ControlPlane::start();
        seen = Some((
            cp.netns().name().to_string(),
            cp.dir().to_path_buf(),
            cp.pids(),
        ));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (ns, dir, pids) = seen.expect("the control plane started");
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver");
    assert!(!netns_exists(&ns), "{ns} removed");
    assert!(!dir.exists(), "{} removed", dir.display());
    for pid in pids {
        assert!(live_cmdline(pid).is_none(), "process {pid} still runs");
    }
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "{left:?}");
}

/// A component that cannot start fails the test at once, with its log.
#[test]
fn a_failing_component_is_reported_with_its_log() {
    k8s_bin_dir();
    let result = std::panic::catch_unwind(|| {
        ControlPlane::builder()
            .apiserver_arg("--no-such-flag=1")
            .start()
    });
    let panic = result.err().expect("the control plane must not come up");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("kube-apiserver exited"), "{message}");
    assert!(
        message.contains("no-such-flag"),
        "the log is quoted: {message}"
    );
}

/// Everything: Node podCIDRs from the controller manager, a least-privilege
/// token used from an attached namespace, the underlay between attached
/// namespaces, an API server restart, and a clean teardown.
#[test]
fn full_control_plane() {
    k8s_bin_dir();
    let mut cp = ControlPlane::start_full();
    eprintln!(
        "ControlPlane::start_full() (etcd, kube-apiserver, kube-controller-manager, kube-scheduler): {:.2} s",
        cp.startup_time().as_secs_f64()
    );

    let namespaces = cp.kubectl_ok(&["get", "ns", "-o", "name"]);
    for ns in ["namespace/default", "namespace/kube-system"] {
        assert!(namespaces.contains(ns), "{ns} in {namespaces}");
    }

    // A Node (as a kubelet would register it) gets a podCIDR from the
    // cluster range.
    let node_ip = cp.underlay_ip(10);
    cp.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n\
         status:\n  addresses:\n  - type: InternalIP\n    address: {node_ip}\n"
    ));
    let cidrs = poll(Duration::from_secs(30), || {
        let out = cp.kubectl(&["get", "node", "node-a", "-o", "jsonpath={.spec.podCIDRs}"]);
        let text = stdout(&out);
        (out.status.success() && !text.is_empty()).then_some(text)
    })
    .unwrap_or_else(|| {
        panic!(
            "node-a got no podCIDRs within 30 s; controller manager log:\n{}",
            cp.log_tail(Component::ControllerManager, 30)
        )
    });
    let cidrs: Vec<String> = serde_json::from_str(&cidrs).expect("podCIDRs JSON");
    assert_eq!(cidrs.len(), 1, "{cidrs:?}");
    assert!(
        cidrs[0].starts_with("10.244.") && cidrs[0].ends_with(".0/24"),
        "{cidrs:?} in 10.244.0.0/16, /24"
    );
    let address = cp.kubectl_ok(&[
        "get",
        "node",
        "node-a",
        "-o",
        "jsonpath={.status.addresses[?(@.type==\"InternalIP\")].address}",
    ]);
    assert_eq!(address, node_ip.to_string());

    // A ServiceAccount that may only list nodes.
    cp.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: lister\n  namespace: default\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
         metadata:\n  name: node-lister\nrules:\n\
         - apiGroups: [\"\"]\n  resources: [nodes]\n  verbs: [list]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata:\n  name: node-lister\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: node-lister\n\
         subjects:\n- kind: ServiceAccount\n  name: lister\n  namespace: default\n",
    );
    let token = cp.create_token("default", "lister");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let kubeconfig = cp.kubeconfig_for_token(&token, "lister");

    // Two node namespaces on the underlay.
    let node_a = Netns::new("node-a");
    let node_b = Netns::new("node-b");
    cp.attach(&node_a, "eth0", &format!("{node_ip}/24"));
    cp.attach(&node_b, "eth0", &format!("{}/24", cp.underlay_ip(11)));
    // They reach each other directly (one L2 segment: host-gw works).
    let a_ip = node_ip.to_string();
    assert!(
        node_b
            .exec(&["ping", "-c", "1", "-W", "2", &a_ip])
            .status
            .success(),
        "node-b reaches node-a over the underlay"
    );
    let a_mac = node_a.exec_ok(&["cat", "/sys/class/net/eth0/address"]);
    let neigh = node_b.exec_ok(&["ip", "neigh", "show", &a_ip]);
    assert!(
        neigh.contains(a_mac.trim()),
        "node-a is a direct neighbour of node-b: {neigh} vs {a_mac}"
    );

    // From inside node-a, with the token: nodes yes, secrets no.
    let nodes = cp.kubectl_in(&node_a, &kubeconfig, &["get", "nodes", "-o", "name"]);
    assert!(
        nodes.status.success(),
        "list nodes with the token: {}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    assert!(stdout(&nodes).contains("node/node-a"), "{}", stdout(&nodes));
    let secrets = cp.kubectl_in(&node_a, &kubeconfig, &["get", "secrets", "-A"]);
    assert!(!secrets.status.success(), "secrets are forbidden");
    let err = String::from_utf8_lossy(&secrets.stderr);
    assert!(err.contains("forbidden"), "{err}");
    // The admin kubeconfig works from an attached namespace too.
    let admin = cp.kubectl_in(&node_b, cp.admin_kubeconfig(), &["get", "secrets", "-A"]);
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );

    // The API server restarts on the same etcd: the Node is still there.
    cp.restart_apiserver();
    assert_eq!(
        cp.kubectl_ok(&["get", "node", "node-a", "-o", "name"])
            .trim(),
        "node/node-a"
    );

    // Teardown: namespace, processes and files all gone.
    let ns_name = cp.netns().name().to_string();
    let dir = cp.dir().to_path_buf();
    let pids = cp.pids();
    assert_eq!(
        pids.len(),
        4,
        "etcd, apiserver, controller manager, scheduler"
    );
    assert!(!processes_mentioning(&dir.display().to_string()).is_empty());
    drop(cp);
    assert!(!netns_exists(&ns_name), "{ns_name} removed");
    assert!(!dir.exists(), "{} removed", dir.display());
    for pid in pids {
        assert!(live_cmdline(pid).is_none(), "process {pid} still runs");
    }
    let left = processes_mentioning(&dir.display().to_string());
    assert!(
        left.is_empty(),
        "processes of this control plane remain: {left:?}"
    );
    // The veth pairs went with the bridge's namespace (the kernel cleans
    // a namespace up asynchronously).
    assert!(
        eventually(Duration::from_secs(10), || {
            !node_a
                .exec(&["ip", "link", "show", "eth0"])
                .status
                .success()
        }),
        "node-a's underlay link is gone with the control plane"
    );
}

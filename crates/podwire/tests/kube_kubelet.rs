//! `podwire kubelet` against a real control plane (etcd, API server,
//! controller manager with node lifecycle, scheduler): the Node registers
//! and its Ready condition follows the node's network; pods scheduled to
//! it run in sandboxes made by the CNI plugin, answer on their pod IP,
//! show their logs and events through `kubectl`, restart with back-off,
//! follow their probes, get their environment and ServiceAccount token,
//! run `kubectl exec`, and are torn down on delete; a restarted kubelet
//! adopts its pods.

mod kubelet_common;

use std::time::{Duration, Instant};

use kubelet_common::{
    CONVERGE, KubeletNode, control_plane, describe, jsonpath, kubectl_for, namespace, wait_phase,
};
use podwire_testsupport::{eventually, poll};

fn http_get(node: &KubeletNode, url: &str) -> Option<String> {
    let out = node
        .ns
        .exec(&["curl", "-s", "--max-time", "2", "--fail", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ready_condition(cp: &podwire_testsupport::ControlPlane, node: &str) -> (String, String) {
    let status = jsonpath(
        cp,
        &["get", "node", node],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    let message = jsonpath(
        cp,
        &["get", "node", node],
        "{.status.conditions[?(@.type==\"Ready\")].message}",
    );
    (status, message)
}

#[test]
fn node_registers_and_ready_follows_its_network() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    let ready = poll(CONVERGE, || {
        (ready_condition(&cp, "node-a").0 == "True").then_some(())
    });
    assert!(
        ready.is_some(),
        "node-a did not become Ready: {:?}\n{}",
        ready_condition(&cp, "node-a"),
        node.log()
    );
    let wide = cp.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    let line = wide
        .lines()
        .find(|l| l.starts_with("node-a"))
        .unwrap_or_default();
    assert!(
        line.contains(" Ready ") && line.contains(&node.ip.to_string()) && line.contains("v1.37.2"),
        "{wide}"
    );
    assert_eq!(
        jsonpath(&cp, &["get", "node", "node-a"], "{.spec.podCIDR}"),
        "10.244.1.0/24"
    );
    let holder = jsonpath(
        &cp,
        &["get", "lease", "node-a", "-n", "kube-node-lease"],
        "{.spec.holderIdentity}",
    );
    assert_eq!(holder, "node-a");
    // The lifecycle controller lifts the API's not-ready taint.
    assert!(
        eventually(CONVERGE, || jsonpath(
            &cp,
            &["get", "node", "node-a"],
            "{.spec.taints}"
        )
        .is_empty()),
        "{}",
        cp.kubectl_ok(&["describe", "node", "node-a"])
    );

    // No CNI configuration: NotReady with the reason, within 10 s (a
    // bounded wait with slack for this machine).
    let conflist = node.conf_dir().join(podwire_cni::install::CONFLIST_FILE);
    let saved = std::fs::read(&conflist).expect("conflist");
    std::fs::remove_file(&conflist).expect("remove the conflist");
    let removed = Instant::now();
    let not_ready = poll(Duration::from_secs(20), || {
        let (status, message) = ready_condition(&cp, "node-a");
        (status == "False").then_some(message)
    });
    let message = not_ready.unwrap_or_else(|| panic!("node-a stayed Ready:\n{}", node.log()));
    eprintln!("NotReady reported after {:?}", removed.elapsed());
    assert!(
        message.contains("no CNI configuration in") && message.contains("net.d"),
        "{message}"
    );
    std::fs::write(&conflist, saved).expect("restore the conflist");
    assert!(
        eventually(Duration::from_secs(20), || ready_condition(&cp, "node-a").0
            == "True"),
        "node-a did not come back:\n{}",
        node.log()
    );
}

#[test]
fn a_pod_runs_answers_logs_shows_events_and_is_deleted() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    namespace(&cp, "web");
    assert!(eventually(CONVERGE, || ready_condition(&cp, "node-a").0 == "True"));
    let created = Instant::now();
    cp.kubectl_ok(&["run", "web", "-n", "web", "--image=x", "--port=8080"]);
    wait_phase(&cp, &node, "web", "web", "Running");
    eprintln!("pod create -> Running: {:?}", created.elapsed());
    let ip = jsonpath(&cp, &["get", "pod", "web", "-n", "web"], "{.status.podIP}");
    assert!(
        ip.starts_with("10.244.1."),
        "pod IP {ip:?} is not from the node's slice"
    );
    assert_eq!(
        jsonpath(&cp, &["get", "pod", "web", "-n", "web"], "{.status.hostIP}"),
        node.ip.to_string()
    );
    let body = poll(CONVERGE, || http_get(&node, &format!("http://{ip}:8080/")));
    let body = body.unwrap_or_else(|| panic!("no answer from {ip}:8080:\n{}", node.log()));
    assert!(body.contains("web"), "the pod's hostname: {body}");
    assert!(eventually(CONVERGE, || jsonpath(
        &cp,
        &["get", "pod", "web", "-n", "web"],
        "{.status.conditions[?(@.type==\"Ready\")].status}"
    ) == "True"));

    // Logs through the API server and the kubelet's endpoint.
    let logs = cp.kubectl(&["logs", "web", "-n", "web"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        logs.status.success() && text.contains("serving"),
        "kubectl logs: {text} {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let stamped = cp.kubectl_ok(&["logs", "web", "-n", "web", "--timestamps", "--tail=1"]);
    assert!(
        stamped.starts_with("20") && stamped.contains("serving"),
        "{stamped}"
    );
    let followed = kubectl_for(
        &cp,
        &["logs", "-f", "web", "-n", "web"],
        Duration::from_secs(3),
    );
    assert!(
        String::from_utf8_lossy(&followed.stdout).contains("serving"),
        "kubectl logs -f: {followed:?}"
    );

    let description = describe(&cp, "web", "web");
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            eventually(CONVERGE, || describe(&cp, "web", "web").contains(reason)),
            "no {reason} event:\n{description}"
        );
    }
    assert!(description.contains("kubelet"), "{description}");

    // Delete: containers stopped, sandbox gone, IP released, object gone.
    assert_eq!(node.pod_namespaces().len(), 1);
    assert!(node.leased_ips().contains(&ip), "{:?}", node.leased_ips());
    let deleting = Instant::now();
    cp.kubectl_ok(&["delete", "pod", "web", "-n", "web", "--wait=false"]);
    let gone = eventually(CONVERGE, || {
        !cp.kubectl(&["get", "pod", "web", "-n", "web"])
            .status
            .success()
    });
    assert!(gone, "pod web was not removed:\n{}", node.log());
    eprintln!("pod delete -> gone: {:?}", deleting.elapsed());
    assert!(
        node.pod_namespaces().is_empty(),
        "{:?}",
        node.pod_namespaces()
    );
    assert!(!node.leased_ips().contains(&ip), "{ip} still leased");
    assert!(http_get(&node, &format!("http://{ip}:8080/")).is_none());
}

const CRASHING: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: crash, namespace: crash}
spec:
  containers:
    - name: crash
      image: busybox
      command: [sh, -c, "echo attempt; exit 1"]
"#;

#[test]
fn a_crashing_container_restarts_with_backoff() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    namespace(&cp, "crash");
    cp.apply(CRASHING);
    let restarts = || {
        jsonpath(
            &cp,
            &["get", "pod", "crash", "-n", "crash"],
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse::<i32>()
        .unwrap_or(0)
    };
    assert!(
        eventually(CONVERGE, || restarts() >= 2),
        "restarts: {}\n{}\n{}",
        restarts(),
        describe(&cp, "crash", "crash"),
        node.log()
    );
    let waiting = poll(CONVERGE, || {
        let reason = jsonpath(
            &cp,
            &["get", "pod", "crash", "-n", "crash"],
            "{.status.containerStatuses[0].state.waiting.reason}",
        );
        (reason == "CrashLoopBackOff").then_some(())
    });
    assert!(waiting.is_some(), "{}", describe(&cp, "crash", "crash"));
    let pods = cp.kubectl_ok(&["get", "pods", "-n", "crash"]);
    assert!(
        pods.contains("CrashLoopBackOff") || pods.contains("Error"),
        "{pods}"
    );
    let description = describe(&cp, "crash", "crash");
    assert!(description.contains("BackOff"), "{description}");
    assert_eq!(
        jsonpath(
            &cp,
            &["get", "pod", "crash", "-n", "crash"],
            "{.status.containerStatuses[0].lastState.terminated.exitCode}"
        ),
        "1"
    );
    let previous = cp.kubectl_ok(&["logs", "crash", "-n", "crash", "--previous"]);
    assert_eq!(previous.trim(), "attempt");

    // A force delete removes the object at once; the kubelet sees it vanish
    // and tears the pod down (namespace and address).
    assert_eq!(node.pod_namespaces().len(), 1);
    cp.kubectl_ok(&[
        "delete",
        "pod",
        "crash",
        "-n",
        "crash",
        "--force",
        "--grace-period=0",
    ]);
    assert!(
        eventually(CONVERGE, || node.pod_namespaces().is_empty()
            && node.leased_ips().is_empty()),
        "{:?} {:?}\n{}",
        node.pod_namespaces(),
        node.leased_ips(),
        node.log()
    );
}

const PROBED: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unready, namespace: probes}
spec:
  containers:
    - name: web
      image: podwire
      ports: [{containerPort: 8080}]
      readinessProbe:
        httpGet: {path: /, port: 8081}
        periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {name: unlive, namespace: probes}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: web
      image: podwire
      ports: [{containerPort: 8080}]
      livenessProbe:
        tcpSocket: {port: 8082}
        periodSeconds: 1
        failureThreshold: 2
"#;

#[test]
fn probes_keep_pods_unready_and_restart_unhealthy_ones() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    namespace(&cp, "probes");
    cp.apply(PROBED);
    wait_phase(&cp, &node, "probes", "unready", "Running");
    let unhealthy = eventually(CONVERGE, || {
        describe(&cp, "probes", "unready").contains("Readiness probe failed")
    });
    assert!(unhealthy, "{}", describe(&cp, "probes", "unready"));
    let ready = jsonpath(
        &cp,
        &["get", "pod", "unready", "-n", "probes"],
        "{.status.conditions[?(@.type==\"Ready\")].status}",
    );
    assert_eq!(ready, "False");
    assert_eq!(
        jsonpath(
            &cp,
            &["get", "pod", "unready", "-n", "probes"],
            "{.status.containerStatuses[0].ready}"
        ),
        "false"
    );

    let restarted = eventually(CONVERGE, || {
        jsonpath(
            &cp,
            &["get", "pod", "unlive", "-n", "probes"],
            "{.status.containerStatuses[0].restartCount}",
        )
        .parse::<i32>()
        .unwrap_or(0)
            >= 1
    });
    let description = describe(&cp, "probes", "unlive");
    assert!(restarted, "{description}\n{}", node.log());
    assert!(
        description.contains("Liveness probe failed"),
        "{description}"
    );
    assert!(
        description.contains("failed liveness probe, will be restarted"),
        "{description}"
    );
}

const HOST: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: host}
spec:
  hostNetwork: true
  containers:
    - name: web
      image: podwire
      ports: [{containerPort: 18080}]
"#;

#[test]
fn a_host_network_pod_survives_a_kubelet_restart_and_orphans_are_removed() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    namespace(&cp, "host");
    cp.apply(HOST);
    wait_phase(&cp, &node, "host", "host", "Running");
    let ip = jsonpath(
        &cp,
        &["get", "pod", "host", "-n", "host"],
        "{.status.podIP}",
    );
    assert_eq!(ip, node.ip.to_string());
    assert!(
        node.pod_namespaces().is_empty(),
        "a hostNetwork pod has no namespace of its own"
    );
    let body = poll(CONVERGE, || http_get(&node, &format!("http://{ip}:18080/")));
    assert!(body.is_some(), "{}", node.log());
    let started = jsonpath(
        &cp,
        &["get", "pod", "host", "-n", "host"],
        "{.status.containerStatuses[0].state.running.startedAt}",
    );

    // A new kubelet adopts the running container (no restart) and still
    // manages the pod.
    node.stop();
    node.start();
    assert!(eventually(CONVERGE, || {
        std::fs::read_to_string(node.log_path(1)).is_ok_and(|l| l.contains("node registered"))
    }));
    std::thread::sleep(Duration::from_secs(2));
    assert!(http_get(&node, &format!("http://{ip}:18080/")).is_some());
    assert_eq!(
        jsonpath(
            &cp,
            &["get", "pod", "host", "-n", "host"],
            "{.status.containerStatuses[0].restartCount}"
        ),
        "0"
    );
    assert_eq!(
        jsonpath(
            &cp,
            &["get", "pod", "host", "-n", "host"],
            "{.status.containerStatuses[0].state.running.startedAt}"
        ),
        started
    );
    let logs = cp.kubectl_ok(&["logs", "host", "-n", "host"]);
    assert!(logs.contains("serving"), "{logs}");

    // Force-deleted while no kubelet runs: the next one finds the pod's
    // directory without a pod and removes the container.
    node.stop();
    cp.kubectl_ok(&[
        "delete",
        "pod",
        "host",
        "-n",
        "host",
        "--force",
        "--grace-period=0",
    ]);
    node.start();
    assert!(
        eventually(CONVERGE, || http_get(&node, &format!("http://{ip}:18080/"))
            .is_none()),
        "the orphaned hostNetwork container still answers:\n{}",
        node.log()
    );
    let left = || std::fs::read_dir(node.root_dir().join("pods")).map_or(0, |d| d.count());
    assert!(
        eventually(CONVERGE, || left() == 0),
        "pod directories left: {}",
        left()
    );
}

const CONFIGURED: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: env}
data: {color: blue, size: large}
---
apiVersion: v1
kind: Pod
metadata: {name: env, namespace: env}
spec:
  restartPolicy: Never
  containers:
    - name: env
      image: busybox
      command:
        - sh
        - -c
        - |
          echo "namespace=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)"
          echo "token-parts=$(awk -F. '{print NF}' /var/run/secrets/kubernetes.io/serviceaccount/token)"
          head -1 /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
          echo "hostname=$(cat /proc/sys/kernel/hostname)"
          grep nameserver /etc/resolv.conf
          env | sort
          sleep 3600
      env:
        - name: COLOR
          valueFrom: {configMapKeyRef: {name: settings, key: color}}
        - name: MISSING
          valueFrom: {configMapKeyRef: {name: absent, key: x, optional: true}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: GREETING
          value: "hello $(COLOR)"
      envFrom:
        - configMapRef: {name: settings}
          prefix: CFG_
"#;

#[test]
fn environment_and_service_account_token_reach_the_process() {
    let cp = control_plane();
    let mut node = KubeletNode::new(&cp, "node-a", 11, 1);
    node.start();
    namespace(&cp, "env");
    cp.apply(CONFIGURED);
    wait_phase(&cp, &node, "env", "env", "Running");
    let logs = poll(CONVERGE, || {
        let text = cp.kubectl_ok(&["logs", "env", "-n", "env"]);
        text.contains("KUBERNETES_SERVICE_HOST").then_some(text)
    });
    let logs = logs.unwrap_or_else(|| panic!("{}\n{}", describe(&cp, "env", "env"), node.log()));
    let ip = jsonpath(&cp, &["get", "pod", "env", "-n", "env"], "{.status.podIP}");
    for want in [
        "namespace=env".to_string(),
        "token-parts=3".to_string(),
        "-----BEGIN CERTIFICATE-----".to_string(),
        "hostname=env".to_string(),
        "nameserver 10.96.0.10".to_string(),
        "COLOR=blue".to_string(),
        "CFG_size=large".to_string(),
        "GREETING=hello blue".to_string(),
        format!("POD_IP={ip}"),
        "NODE=node-a".to_string(),
        "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
        "KUBERNETES_SERVICE_PORT=443".to_string(),
    ] {
        assert!(
            logs.contains(&want),
            "{want:?} missing from the container's output:\n{logs}"
        );
    }
    assert!(!logs.contains("MISSING="), "{logs}");

    // kubectl exec: the API server proxies the WebSocket to the kubelet,
    // which runs the command where the container runs.
    let out = cp.kubectl(&[
        "exec",
        "env",
        "-n",
        "env",
        "--",
        "sh",
        "-c",
        "echo exec-$COLOR; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo oops >&2; exit 3",
    ]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("exec-blue") && stdout.contains("env"),
        "{stdout} {stderr}\n{}",
        node.log()
    );
    assert!(stderr.contains("oops"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let piped = cp.kubectl_stdin(
        &["exec", "-i", "env", "-n", "env", "--", "cat"],
        "through stdin\n",
    );
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout).trim(),
        "through stdin",
        "{piped:?}"
    );
}

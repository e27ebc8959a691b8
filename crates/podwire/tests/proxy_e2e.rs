//! The service proxy end to end, on a lab, as a user would check it:
//! ClusterIP from a pod on another node, NodePort from the external host to
//! every node, balance over 3 endpoints, ClientIP affinity, Local traffic
//! policy (client IP kept, dropped where there is no endpoint, health-check
//! node port), hairpin, a Service scaled to zero refused at once, UDP moving
//! to a new endpoint, and traffic that keeps flowing while the agent is
//! killed and while 1,000 unrelated Services are added.
//!
//! Every test brings up its own lab (unique name), runs `lab down` from a
//! Drop guard even when it fails, bounds every command in time, and sends
//! traffic only inside the lab's namespaces. Needs root.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CMD_TIMEOUT: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata: {name: proxy}
spec:
  podCIDR: 10.244.0.0/16
  nodeSlicePrefix: 24
  serviceCIDR: 10.96.0.0/12
  clusterDomain: cluster.local
  routing: vxlan
  underlays: [{name: underlay, subnet: 192.168.56.0/24}]
  nodes: [{name: node01}, {name: node02}, {name: node03}]
  external: {name: external, subnet: 203.0.113.0/24}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: apps}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  type: NodePort
  clusterIP: 10.96.100.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-sticky, namespace: apps}
spec:
  clusterIP: 10.96.100.11
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: apps, labels: {app: solo}}
spec:
  nodeName: node02
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: solo, namespace: apps}
spec:
  type: LoadBalancer
  clusterIP: 10.96.100.12
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: solo}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30081}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeName: node01
  containers: [{name: c, command: ["sleep", "infinity"]}]
"#;

/// The outcome of one command.
#[derive(Debug)]
struct Run {
    argv: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn describe(&self) -> String {
        format!(
            "`{}` -> {:?} in {:.2} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv.join(" "),
            self.code,
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
    fn expect_ok(self) -> Run {
        assert!(self.ok(), "command failed: {}", self.describe());
        self
    }
}

fn read_back(mut f: std::fs::File) -> String {
    let mut s = String::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_string(&mut s);
    s
}

/// Runs `podwire ARGS` with a time limit; output goes to files so that
/// background processes inheriting them cannot block the test.
fn podwire(args: &[&str], stdin: Option<&str>, limit: Duration) -> Run {
    let out = tempfile::tempfile().expect("temp file");
    let err = tempfile::tempfile().expect("temp file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podwire"));
    cmd.args(args)
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    match stdin {
        Some(text) => {
            let mut input = tempfile::tempfile().expect("temp file");
            input.write_all(text.as_bytes()).expect("stdin");
            input.seek(SeekFrom::Start(0)).expect("rewind");
            cmd.stdin(input);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run podwire");
    let mut code = None;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                code = Some(status.code().unwrap_or(-1));
                break;
            }
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let mut argv = vec!["podwire".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Run {
        argv,
        code,
        stdout: read_back(out),
        stderr: read_back(err),
        elapsed: started.elapsed(),
    }
}

/// A lab that is removed when the guard drops.
struct Lab {
    name: String,
}

impl Lab {
    fn up(tag: &str) -> Lab {
        let name = format!("t-px{tag}-{}", std::process::id() % 10000);
        let lab = Lab { name };
        if std::path::Path::new("/run/podwire/labs")
            .join(&lab.name)
            .exists()
        {
            let _ = lab.cmd(&["down"], None);
        }
        let mut file = tempfile::NamedTempFile::new().expect("manifest file");
        file.write_all(MANIFEST.as_bytes()).expect("write manifest");
        let path = file.path().display().to_string();
        lab.cmd(&["up", "--control-plane", "files", "-f", &path], None)
            .expect_ok();
        lab
    }

    fn cmd(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut all = vec!["lab", "--name", &self.name];
        all.extend_from_slice(args);
        podwire(&all, stdin, CMD_TIMEOUT)
    }

    fn apply(&self, yaml: &str) -> Run {
        self.cmd(&["apply", "-f", "-"], Some(yaml))
    }

    fn delete(&self, yaml: &str) -> Run {
        self.cmd(&["delete", "-f", "-"], Some(yaml))
    }

    /// `sh -c SCRIPT` inside a pod.
    fn pod_sh(&self, namespace: &str, pod: &str, script: &str) -> Run {
        self.cmd(
            &["exec", pod, "-n", namespace, "--", "sh", "-c", script],
            None,
        )
    }

    /// `sh -c SCRIPT` inside a node or the external host.
    fn node_sh(&self, node: &str, script: &str) -> Run {
        self.cmd(&["exec", "--node", node, "--", "sh", "-c", script], None)
    }

    fn node_ip(&self, node: &str) -> String {
        let run = self
            .node_sh(node, "ip -4 -o addr show dev eth0")
            .expect_ok();
        run.stdout
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .unwrap_or_else(|| panic!("no address on {node} eth0: {}", run.describe()))
            .to_string()
    }

    fn pod_names(&self, namespace: &str, prefix: &str) -> Vec<String> {
        let run = self
            .cmd(&["get", "pods", "-n", namespace], None)
            .expect_ok();
        run.stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(String::from)
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let run = self.cmd(&["down"], None);
        if !run.ok() {
            eprintln!("lab down failed: {}", run.describe());
        }
    }
}

/// `key=value` words of the built-in workload's answer.
fn served(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Hostnames answering `n` requests to `url` made from one pod.
fn tally(lab: &Lab, namespace: &str, pod: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
    let run = lab
        .pod_sh(
            namespace,
            pod,
            &format!("for i in $(seq {n}); do curl -s -m 2 {url}; echo; done"),
        )
        .expect_ok();
    let mut out = BTreeMap::new();
    for line in run.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let host = served(line).get("hostname").cloned().unwrap_or_default();
        *out.entry(host).or_insert(0) += 1;
    }
    out
}

#[test]
fn clusterip_nodeport_balance_affinity_and_hairpin() {
    let lab = Lab::up("a");
    let webs = lab.pod_names("apps", "web-");
    assert_eq!(webs.len(), 3, "{webs:?}");

    // ClusterIP from a pod on another node: the solo pod is on node02, the
    // client on node01; the server sees the client's pod IP.
    let run = lab
        .pod_sh("default", "client", "curl -s -m 3 http://10.96.100.12/")
        .expect_ok();
    let answer = served(&run.stdout);
    assert_eq!(
        answer.get("hostname").map(String::as_str),
        Some("solo"),
        "{}",
        run.describe()
    );
    let client_ip = lab
        .pod_sh(
            "default",
            "client",
            "hostname -i || ip -4 -o addr show dev eth0",
        )
        .expect_ok();
    assert!(
        client_ip.stdout.contains(answer["client"].as_str()),
        "no NAT between pods: client={} vs {}",
        answer["client"],
        client_ip.stdout
    );

    // NodePort from the external host to every node.
    for node in ["node01", "node02", "node03"] {
        let ip = lab.node_ip(node);
        let run = lab
            .node_sh("external", &format!("curl -s -m 3 http://{ip}:30080/"))
            .expect_ok();
        assert!(
            run.stdout.contains("hostname=web-"),
            "{node}: {}",
            run.describe()
        );
    }

    // Balance: 300 connections, every endpoint >= 20%.
    let seen = tally(&lab, "default", "client", "http://10.96.100.10/", 300);
    assert_eq!(
        seen.values().sum::<usize>(),
        300,
        "every request answered: {seen:?}"
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (host, n) in &seen {
        assert!(*n >= 60, "{host} got {n} of 300: {seen:?}");
    }

    // ClientIP affinity sticks.
    let seen = tally(&lab, "default", "client", "http://10.96.100.11/", 30);
    assert_eq!(seen.len(), 1, "one client sticks to one endpoint: {seen:?}");

    // Hairpin: solo reaches itself through its own Service; the source is
    // masqueraded to its node's bridge so the reply comes back.
    let run = lab
        .pod_sh("apps", "solo", "curl -s -m 3 http://10.96.100.12/")
        .expect_ok();
    let answer = served(&run.stdout);
    assert_eq!(
        answer.get("hostname").map(String::as_str),
        Some("solo"),
        "{}",
        run.describe()
    );
    // node02's bridge: its slice's first address.
    let server = answer.get("server").cloned().unwrap_or_default();
    let gateway = format!(
        "{}.1",
        server.rsplit_once('.').map(|(net, _)| net).unwrap_or("")
    );
    assert_ne!(
        answer.get("client"),
        Some(&server),
        "masqueraded: {}",
        run.describe()
    );
    assert_eq!(answer.get("client"), Some(&gateway), "{}", run.describe());

    // `podwire agent plan` prints the proxy's table.
    let plan = lab
        .node_sh(
            "node01",
            &format!(
                "{} agent plan --node node01 --source files:/run/podwire/labs/{}/cluster",
                env!("CARGO_BIN_EXE_podwire"),
                lab.name
            ),
        )
        .expect_ok();
    assert!(
        plan.stdout.contains("table inet podwire-proxy {"),
        "{}",
        plan.describe()
    );
    assert!(
        plan.stdout
            .contains("svc4 { 10.96.100.10 . tcp . 80 : goto lb4-3 }"),
        "{}",
        plan.describe()
    );
}

#[test]
fn local_policy_keeps_the_client_ip_drops_elsewhere_and_health_checks() {
    let lab = Lab::up("l");
    let external = lab.node_ip("external");
    let node01 = lab.node_ip("node01");
    let node02 = lab.node_ip("node02");
    let run = lab
        .node_sh("external", &format!("curl -s -m 3 http://{node02}:30081/"))
        .expect_ok();
    let answer = served(&run.stdout);
    assert_eq!(answer.get("hostname").map(String::as_str), Some("solo"));
    assert_eq!(
        answer.get("client"),
        Some(&external),
        "client IP preserved: {}",
        run.describe()
    );

    // node01 has no solo endpoint: dropped (curl times out, exit 28).
    let run = lab.node_sh(
        "external",
        &format!("curl -s -m 1 http://{node01}:30081/; echo rc=$?"),
    );
    assert!(
        run.stdout.contains("rc=28"),
        "dropped, not answered or refused: {}",
        run.describe()
    );

    // healthCheckNodePort: 200 where the endpoint is, 503 elsewhere.
    let run = lab
        .node_sh(
            "external",
            &format!("curl -s -m 3 -w ' %{{http_code}}' http://{node02}:32100/"),
        )
        .expect_ok();
    assert!(
        run.stdout.contains("\"localEndpoints\":1") && run.stdout.ends_with(" 200"),
        "{}",
        run.describe()
    );
    let run = lab
        .node_sh(
            "external",
            &format!("curl -s -m 3 -w ' %{{http_code}}' http://{node01}:32100/"),
        )
        .expect_ok();
    assert!(run.stdout.ends_with(" 503"), "{}", run.describe());

    // /healthz and /metrics inside the node.
    let run = lab
        .node_sh(
            "node01",
            &format!("curl -s -m 3 -w ' %{{http_code}}' http://{node01}:10256/healthz"),
        )
        .expect_ok();
    assert!(run.stdout.ends_with(" 200"), "{}", run.describe());
    let run = lab
        .node_sh("node01", "curl -s -m 3 http://127.0.0.1:10249/metrics")
        .expect_ok();
    assert!(
        run.stdout
            .contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains("podwire_proxy_nftables_elements{set=\"svc4\"}")
    );
    // As kube-proxy: the mode on the metrics port.
    let run = lab
        .node_sh("node01", "curl -s -m 3 http://127.0.0.1:10249/proxyMode")
        .expect_ok();
    assert_eq!(run.stdout, "nftables", "{}", run.describe());
    // The live table names each element's Service, as the course greps
    // kube-proxy's rules.
    let run = lab
        .node_sh(
            "node01",
            "nft list table inet podwire-proxy | grep 'apps/web:80'",
        )
        .expect_ok();
    assert!(
        run.stdout.contains("10.96.100.10 . tcp . 80")
            && run.stdout.contains("comment \"apps/web:80\""),
        "{}",
        run.describe()
    );
}

#[test]
fn a_service_scaled_to_zero_is_refused_at_once() {
    let lab = Lab::up("z");
    lab.pod_sh("default", "client", "curl -s -m 3 http://10.96.100.10/")
        .expect_ok();
    lab.apply(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: apps}\n\
         spec:\n  replicas: 0\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]\n",
    )
    .expect_ok();
    // Time the failure inside the pod (curl exit 7: connection refused).
    let run = lab
        .pod_sh(
            "default",
            "client",
            "s=$(date +%s%N); curl -s -m 3 http://10.96.100.10/; rc=$?; e=$(date +%s%N); echo rc=$rc ms=$(( (e - s) / 1000000 ))",
        )
        .expect_ok();
    let words = served(&run.stdout);
    assert_eq!(
        words.get("rc").map(String::as_str),
        Some("7"),
        "refused: {}",
        run.describe()
    );
    let ms: u64 = words
        .get("ms")
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 100, "refused in {ms} ms: {}", run.describe());
}

#[test]
fn udp_moves_to_the_new_endpoint_after_the_old_one_is_deleted() {
    let lab = Lab::up("u");
    let udp_pod = |name: &str, node: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: apps, labels: {{app: dnsish}}}}\n\
             spec:\n  nodeName: {node}\n  containers: [{{name: s, command: [\"socat\", \"UDP4-RECVFROM:5353,fork\", \"SYSTEM:hostname\"]}}]\n"
        )
    };
    lab.apply(&format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: dnsish, namespace: apps}}\n\
         spec:\n  clusterIP: 10.96.100.53\n  selector: {{app: dnsish}}\n  ports: [{{name: dns, protocol: UDP, port: 53, targetPort: 5353}}]\n",
        udp_pod("udp-a", "node02")
    ))
    .expect_ok();
    // The same client port every time, like a resolver: its conntrack entry
    // would keep sending to the old endpoint.
    let ask = || {
        lab.pod_sh(
            "default",
            "client",
            "for i in 1 2 3 4 5; do r=$(echo q | socat -T 1 - UDP4:10.96.100.53:53,sourceport=40053,reuseaddr 2>/dev/null); [ -n \"$r\" ] && { echo \"$r\"; exit 0; }; done; echo none",
        )
        .expect_ok()
        .stdout
        .trim()
        .to_string()
    };
    assert_eq!(ask(), "udp-a");
    lab.apply(&udp_pod("udp-b", "node03")).expect_ok();
    lab.delete(&udp_pod("udp-a", "node02")).expect_ok();
    assert_eq!(ask(), "udp-b");
}

/// PIDs of this lab's agent for `node` (found by its command line, which
/// names the lab's own store).
fn agent_pids(lab: &Lab, node: &str) -> Vec<i32> {
    let store = format!("files:/run/podwire/labs/{}/cluster", lab.name);
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let has = |w: &str| args.iter().any(|a| a == w);
        if has("agent") && has(node) && has(&store) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn traffic_keeps_flowing_while_the_agent_restarts_and_1000_services_arrive() {
    let lab = Lab::up("r");
    let loop_script = "ok=0; fail=0; end=$(( $(date +%s) + 6 )); while [ $(date +%s) -lt $end ]; do \
                       if curl -s -m 1 -o /dev/null http://10.96.100.10/; then ok=$((ok+1)); else fail=$((fail+1)); fi; done; \
                       echo ok=$ok fail=$fail";
    std::thread::scope(|s| {
        let traffic = s.spawn(|| lab.pod_sh("default", "client", loop_script));
        // Kill node01's agent (the client's node) twice; the lab restarts it.
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(1200));
            let pids = agent_pids(&lab, "node01");
            assert!(!pids.is_empty(), "node01's agent is running");
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let run = traffic.join().expect("traffic thread").expect_ok();
        let words = served(&run.stdout);
        assert_eq!(
            words.get("fail").map(String::as_str),
            Some("0"),
            "{}",
            run.describe()
        );
        let ok: usize = words.get("ok").and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!(ok > 20, "{}", run.describe());
    });
    // The agent is back.
    let back = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !agent_pids(&lab, "node01").is_empty()
    });
    assert!(back, "the lab restarts a dead agent");

    // 1,000 unrelated Services (no endpoints) while traffic flows.
    let mut yaml = String::new();
    for i in 0..1000 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bulk-{i}, namespace: apps}}\n\
             spec:\n  selector: {{app: nothing-{i}}}\n  ports: [{{port: 80}}]\n"
        ));
    }
    std::thread::scope(|s| {
        let traffic = s.spawn(|| lab.pod_sh("default", "client", loop_script));
        std::thread::sleep(Duration::from_millis(500));
        lab.apply(&yaml).expect_ok();
        let run = traffic.join().expect("traffic thread").expect_ok();
        let words = served(&run.stdout);
        assert_eq!(
            words.get("fail").map(String::as_str),
            Some("0"),
            "{}",
            run.describe()
        );
    });
    let run = lab.cmd(&["get", "svc", "-n", "apps"], None).expect_ok();
    assert!(run.stdout.lines().count() > 1000, "the services exist");
}

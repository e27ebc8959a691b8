//! The real `kubectl`, as the lab's hands on its real control plane: every
//! write the lab makes (podwire from deploy/, the Lab's objects) and every
//! question it asks (is everything up?) goes through it, as a user's would.
//! The readiness verdict over `kubectl get -o json` output is pure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{LabError, Result};

/// The Kubernetes programs: `$PODWIRE_K8S_BIN`, else `tools/k8s/build`'s
/// cache for the version this podwire is built against.
pub const K8S_BIN_ENV: &str = "PODWIRE_K8S_BIN";
/// `tools/k8s/build`'s cache key: `<kubernetes>-etcd-<etcd>` (a test checks
/// it against tools/k8s/go.mod).
pub const K8S_CACHE_KEY: &str = "v1.37.2-etcd-v3.7.0";
const PROGRAMS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Where the control-plane programs are, if they are all there.
pub fn find_binaries() -> Option<PathBuf> {
    let dir = match std::env::var_os(K8S_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let cache = std::env::var_os("PODWIRE_K8S_CACHE")
                .filter(|c| !c.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/podwire/k8s"));
            cache.join(K8S_CACHE_KEY).join("bin")
        }
    };
    PROGRAMS
        .iter()
        .all(|p| dir.join(p).is_file())
        .then_some(dir)
}

/// kubectl with one kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub program: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    pub fn new(bin: &Path, kubeconfig: PathBuf) -> Kubectl {
        Kubectl {
            program: bin.join("kubectl"),
            kubeconfig,
        }
    }

    /// Runs kubectl; its stdout, or an error with its stderr.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String> {
        let mut child = Command::new(&self.program)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::io(format!("cannot run {}", self.program.display()), e))?;
        if let (Some(body), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(body)
                .map_err(|e| LabError::io("cannot write to kubectl", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::io("kubectl did not finish", e))?;
        if !out.status.success() {
            return Err(LabError::Failed(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl get ... -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let text = self.run(&all, None)?;
        serde_json::from_str(&text)
            .map_err(|e| LabError::Failed(format!("kubectl get printed no JSON: {e}")))
    }

    /// `kubectl apply -f -` of a List.
    pub fn apply(&self, list: &Value) -> Result<String> {
        let body = serde_json::to_vec(list).map_err(|e| LabError::Failed(e.to_string()))?;
        self.run(&["apply", "-f", "-"], Some(&body))
    }
}

/// A List of objects (what `kubectl apply -f -` reads).
pub fn list(items: Vec<Value>) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn condition(object: &Value, kind: &str) -> bool {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn name(object: &Value) -> String {
    let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// What is not up yet in `kubectl get nodes,daemonsets,deployments,pods -A
/// -o json` output (empty: everything is), given how many nodes the lab
/// has: missing or NotReady nodes, DaemonSets not on every node,
/// Deployments short of ready replicas, pods not Ready (finished pods
/// aside).
pub fn not_ready(all: &Value, nodes: usize) -> Vec<String> {
    let items = all["items"].as_array().cloned().unwrap_or_default();
    let of = |kind: &'static str| items.iter().filter(move |i| i["kind"] == kind);
    let mut waiting = Vec::new();
    let registered = of("Node").count();
    if registered < nodes {
        waiting.push(format!("{registered} of {nodes} nodes registered"));
    }
    for node in of("Node").filter(|n| !condition(n, "Ready")) {
        waiting.push(format!("node {} not Ready", name(node)));
    }
    for ds in of("DaemonSet") {
        let desired = ds["status"]["desiredNumberScheduled"].as_i64().unwrap_or(0);
        let ready = ds["status"]["numberReady"].as_i64().unwrap_or(0);
        if desired < nodes as i64 || ready < desired {
            waiting.push(format!(
                "daemonset {} {ready}/{} ready",
                name(ds),
                desired.max(nodes as i64)
            ));
        }
    }
    for deploy in of("Deployment") {
        let want = deploy["spec"]["replicas"].as_i64().unwrap_or(1);
        let ready = deploy["status"]["readyReplicas"].as_i64().unwrap_or(0);
        if ready < want {
            waiting.push(format!("deployment {} {ready}/{want} ready", name(deploy)));
        }
    }
    for pod in of("Pod") {
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        if phase != "Succeeded" && !condition(pod, "Ready") {
            waiting.push(format!("pod {} {phase}", name(pod)));
        }
    }
    waiting
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cache_key_follows_tools_k8s_go_mod() {
        let go_mod = include_str!("../../../../tools/k8s/go.mod");
        let version = |module: &str| {
            go_mod
                .lines()
                .map(str::trim)
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    (words.next() == Some(module)).then(|| words.next().map(String::from))
                })
                .flatten()
                .unwrap()
        };
        assert_eq!(
            K8S_CACHE_KEY,
            format!(
                "{}-etcd-{}",
                version("k8s.io/kubernetes"),
                version("go.etcd.io/etcd/server/v3")
            )
        );
    }

    #[test]
    fn ready_means_every_node_workload_and_pod() {
        let ready = |kind| json!([{"type": kind, "status": "True"}]);
        let mut all = json!({"items": [
            {"kind": "Node", "metadata": {"name": "a"}, "status": {"conditions": ready("Ready")}},
            {"kind": "Node", "metadata": {"name": "b"}, "status": {"conditions": ready("Ready")}},
            {"kind": "DaemonSet", "metadata": {"namespace": "kube-system", "name": "podwire-node"},
             "status": {"desiredNumberScheduled": 2, "numberReady": 2}},
            {"kind": "Deployment", "metadata": {"namespace": "apps", "name": "web"},
             "spec": {"replicas": 2}, "status": {"readyReplicas": 2}},
            {"kind": "Pod", "metadata": {"namespace": "apps", "name": "web-1"},
             "status": {"phase": "Running", "conditions": ready("Ready")}},
            {"kind": "Pod", "metadata": {"namespace": "default", "name": "job"},
             "status": {"phase": "Succeeded"}},
        ]});
        assert!(not_ready(&all, 2).is_empty());
        assert_eq!(not_ready(&all, 3)[0], "2 of 3 nodes registered");
        all["items"][3]["status"]["readyReplicas"] = json!(1);
        all["items"][4]["status"] = json!({"phase": "Pending"});
        assert_eq!(
            not_ready(&all, 2),
            ["deployment apps/web 1/2 ready", "pod apps/web-1 Pending"]
        );
    }
}

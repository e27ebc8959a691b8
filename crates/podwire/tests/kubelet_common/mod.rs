//! Shared pieces of the `podwire kubelet` tests: a real control plane
//! (with the node lifecycle controller, since these nodes send
//! heartbeats), and nodes as network namespaces on its underlay, each with
//! its CNI configuration (bridge cni0, the node's pod slice, IPAM in a temp
//! directory), the podwire binary installed as the CNI plugin, the node's
//! credentials (system:node:NAME) and `podwire kubelet` running in it.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use podwire_testsupport::{ControlPlane, Netns, Process, TempDir, k8s_bin, poll, run_bounded};

/// How long a convergence may take (the machine is shared and slow at
/// times; timings belong in bench/).
pub const CONVERGE: Duration = Duration::from_secs(60);

pub fn podwire() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podwire"))
}

/// etcd, API server, controller manager (with node lifecycle), scheduler.
pub fn control_plane() -> ControlPlane {
    ControlPlane::builder()
        .with_controller_manager(true)
        .with_scheduler(true)
        .with_node_lifecycle(true)
        .start()
}

static NODES: AtomicUsize = AtomicUsize::new(0);

/// A node with its kubelet.
pub struct KubeletNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
    pub ns: Netns,
    pub dir: TempDir,
    /// Pod namespaces are `<prefix><uid>` (testsupport's naming, so a
    /// killed test's leftovers are swept).
    pub netns_prefix: String,
    kubeconfig: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    kubelet: Option<Process>,
    runs: usize,
}

impl KubeletNode {
    /// A node namespace at the underlay's `.host` with pod slice
    /// 10.244.`slice`.0/24, its CNI files and credentials; the kubelet is
    /// started by [`KubeletNode::start`].
    pub fn new(cp: &ControlPlane, name: &str, host: u8, slice: u8) -> KubeletNode {
        let ns = Netns::new(&format!("kl{host}"));
        let ip = cp.underlay_ip(host);
        cp.attach(&ns, "eth0", &format!("{ip}/24"));
        // The output path routes a packet to a ClusterIP before any proxy
        // could; the API server's address stands in for the gateway.
        ns.exec_ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &cp.api_ip().to_string(),
        ]);
        let dir = TempDir::new(&format!("kubelet-{name}"));
        let pod_cidr = format!("10.244.{slice}.0/24");
        let net = podwire_cni::install::NodeNetwork {
            pod_cidrs: vec![pod_cidr.parse().expect("a CIDR")],
            mtu: 1500,
            ipam_data_dir: Some(dir.join("ipam")),
        };
        podwire_cni::install::install_conflist(&dir.join("net.d"), &net).expect("conflist");
        podwire_cni::install::install_binary(&podwire(), &dir.join("bin")).expect("CNI plugin");
        let (kubeconfig, cert, key) = cp.kubelet_credentials(name, IpAddr::V4(ip));
        let n = NODES.fetch_add(1, Ordering::SeqCst);
        KubeletNode {
            name: name.to_string(),
            ip,
            pod_cidr,
            ns,
            netns_prefix: format!("pwk{}-{n}-", std::process::id()),
            dir,
            kubeconfig,
            cert,
            key,
            ca: cp.ca_path(),
            kubelet: None,
            runs: 0,
        }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// The kubelet's log of run `run` (0: the first).
    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("kubelet-{run}.log"))
    }

    /// Everything every kubelet run of this node logged.
    pub fn log(&self) -> String {
        (0..self.runs)
            .map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- next run ---\n")
    }

    /// Starts `podwire kubelet` inside the node.
    pub fn start(&mut self) {
        let log = std::fs::File::create(self.log_path(self.runs)).expect("log file");
        self.runs += 1;
        let mut cmd: Command = self.ns.command(podwire());
        let path = |p: &Path| p.display().to_string();
        cmd.args(["kubelet", "--node", &self.name])
            .args(["--kubeconfig", &path(&self.kubeconfig)])
            .args(["--node-ip", &self.ip.to_string()])
            .args(["--pod-cidr", &self.pod_cidr])
            .args(["--cni-conf-dir", &path(&self.conf_dir())])
            .args(["--cni-bin-dir", &path(&self.dir.join("bin"))])
            .args(["--root-dir", &path(&self.root_dir())])
            .args(["--cluster-dns", "10.96.0.10"])
            .args(["--tls-cert-file", &path(&self.cert)])
            .args(["--tls-private-key-file", &path(&self.key)])
            .args(["--client-ca-file", &path(&self.ca)])
            // No node agent runs in these tests.
            .args(["--agent-health", ""])
            .args(["--netns-prefix", &self.netns_prefix])
            .env("PODWIRE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        self.kubelet = Some(self.ns.spawn(cmd));
    }

    /// Stops the kubelet (SIGTERM); its pods keep running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.kubelet.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Runs a shell script inside the node; its stdout.
    pub fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.ns.sh(script).stdout).into_owned()
    }

    /// The pod namespaces of this node's kubelet that exist now.
    pub fn pod_namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.netns_prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The addresses the node's IPAM has handed out.
    pub fn leased_ips(&self) -> Vec<String> {
        let dir = self.ipam_dir().join(podwire_cni::install::NETWORK_NAME);
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        self.stop();
        // Pods outlive their kubelet (as with kubelet); the test's go with
        // it: every process in their namespaces, then the namespaces.
        for name in self.pod_namespaces() {
            let pids = Command::new("ip").args(["netns", "pids", &name]).output();
            if let Ok(out) = pids {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        // The rest (shims, hostNetwork containers) dies with the node's
        // namespace.
    }
}

/// A JSONPath query of one object (admin kubectl); "" when absent.
pub fn jsonpath(cp: &ControlPlane, args: &[&str], path: &str) -> String {
    let jp = format!("jsonpath={path}");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", &jp]);
    let out = cp.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `kubectl get pod` says phase `phase`; panics with the
/// pod's description and the kubelet's log otherwise.
pub fn wait_phase(cp: &ControlPlane, node: &KubeletNode, ns: &str, pod: &str, phase: &str) {
    let ok = poll(CONVERGE, || {
        (jsonpath(cp, &["get", "pod", pod, "-n", ns], "{.status.phase}") == phase).then_some(())
    });
    if ok.is_none() {
        panic!(
            "pod {ns}/{pod} is not {phase}:\n{}\n--- kubelet log ---\n{}",
            describe(cp, ns, pod),
            node.log()
        );
    }
}

pub fn describe(cp: &ControlPlane, ns: &str, pod: &str) -> String {
    let out = cp.kubectl(&["describe", "pod", pod, "-n", ns]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace of the test's own, with its default ServiceAccount (made
/// by the controller manager; pods are refused without it).
pub fn namespace(cp: &ControlPlane, name: &str) {
    cp.kubectl_ok(&["create", "namespace", name]);
    let made = poll(CONVERGE, || {
        cp.kubectl(&["get", "serviceaccount", "default", "-n", name])
            .status
            .success()
            .then_some(())
    });
    assert!(
        made.is_some(),
        "namespace {name} got no default ServiceAccount"
    );
}

/// kubectl (admin, in the control plane's namespace) stopped after
/// `limit`: what it printed until then (for `logs -f`).
pub fn kubectl_for(cp: &ControlPlane, args: &[&str], limit: Duration) -> Output {
    let mut cmd = cp.netns().command(k8s_bin("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(cp.admin_kubeconfig())
        .args(args);
    let ran = run_bounded(cmd, None, limit);
    Output {
        status: ran
            .status
            .unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9)),
        stdout: ran.stdout,
        stderr: ran.stderr,
    }
}

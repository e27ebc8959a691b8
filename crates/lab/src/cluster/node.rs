//! A node of a lab with a real control plane, as a machine: its own
//! /etc/cni/net.d, /opt/cni/bin, /var/lib/cni and /etc/resolv.conf (bind
//! mounts over the machine's paths, in the node's mount namespace), its own
//! PID namespace whose process 1 is the node's init (nodeinit.rs), and what
//! that init runs: the kubelet, and on the control-plane node etcd,
//! kube-apiserver, the controller manager and the scheduler.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::controlplane::{Component, ControlPlaneConfig};
use crate::error::{LabError, Result};
use crate::paths::{LabPaths, netns_path};
use crate::plan::PlannedNode;
use crate::spawn::{self, Sandbox};

use super::nodeinit::{InitSpec, Program};

/// The machine paths a node has its own copy of (directories), and where
/// in the node's directory that copy lives.
const NODE_DIRS: [(&str, &str); 3] = [
    ("/etc/cni/net.d", "etc-cni-net.d"),
    ("/opt/cni/bin", "opt-cni-bin"),
    ("/var/lib/cni", "var-lib-cni"),
];

/// Everything a node's programs are started with.
pub struct NodeSetup<'a> {
    pub paths: &'a LabPaths,
    pub exe: &'a Path,
    pub bin: &'a Path,
    pub node: &'a PlannedNode,
    pub control_plane: &'a ControlPlaneConfig,
    /// Whether this node runs the control plane.
    pub is_control_plane: bool,
    /// The node's resolvers (the external host's DNS, or none).
    pub nameserver: Option<IpAddr>,
    pub cluster_dns: Option<IpAddr>,
    pub cluster_domain: &'a str,
}

/// The kubelet's network-namespace prefix for this node's pods: under the
/// lab's prefix, so `lab down` finds what a crash left behind.
pub fn pod_netns_prefix(paths: &LabPaths, node: &str) -> String {
    format!("{}k_{node}_", paths.netns_prefix())
}

fn init_pid_file(paths: &LabPaths, node: &str) -> PathBuf {
    paths.node_dir(node).join("init.pid")
}

fn dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| LabError::io(format!("cannot create {}", path.display()), e))
}

impl NodeSetup<'_> {
    fn node_dir(&self) -> PathBuf {
        self.paths.node_dir(&self.node.name)
    }

    fn program(&self, name: &str, argv: Vec<String>) -> Program {
        Program {
            name: name.to_string(),
            argv,
            env: BTreeMap::new(),
            log: self.node_dir().join("logs").join(format!("{name}.log")),
        }
    }

    /// What the node's init runs.
    pub fn init_spec(&self) -> Result<InitSpec> {
        let mut programs = Vec::new();
        if self.is_control_plane {
            for component in Component::ALL {
                let mut argv = vec![self.bin.join(component.program()).display().to_string()];
                argv.extend(self.control_plane.args(component));
                programs.push(self.program(component.program(), argv));
            }
        }
        programs.push(self.program("kubelet", self.kubelet_argv()?));
        Ok(InitSpec { programs })
    }

    fn kubelet_argv(&self) -> Result<Vec<String>> {
        let name = &self.node.name;
        let cp = self.control_plane;
        let ca = crate::certs::LabCa::load(&self.paths.dir, &self.paths.name)?;
        let ip = IpAddr::V4(self.node.ip.addr());
        let (kubeconfig, cert, key) = cp.write_kubelet(&ca, name, ip)?;
        let mut argv: Vec<String> = vec![
            self.exe.display().to_string(),
            "kubelet".into(),
            format!("--node={name}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--api-server={}", cp.api_url()),
            format!("--node-ip={ip}"),
            format!("--pod-cidr={}", self.node.pod_cidr),
            format!("--cluster-domain={}", self.cluster_domain),
            format!("--root-dir={}", self.node_dir().join("kubelet").display()),
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-private-key-file={}", key.display()),
            format!("--client-ca-file={}", cp.pki().join("ca.crt").display()),
            format!("--netns-prefix={}", pod_netns_prefix(self.paths, name)),
            format!("--exe={}", self.exe.display()),
        ];
        if let Some(dns) = self.cluster_dns {
            argv.push(format!("--cluster-dns={dns}"));
        }
        if self.is_control_plane {
            // As kubeadm marks its control-plane node (the role label comes
            // from the admin: NodeRestriction keeps kubelets from setting
            // node-role labels).
            argv.push(format!(
                "--register-with-taints={}=:NoSchedule",
                crate::controllers::workload::CONTROL_PLANE_LABEL
            ));
        }
        Ok(argv)
    }

    /// The node's own copies of the machine paths, bound over them.
    fn binds(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let mut binds = Vec::new();
        for (target, own) in NODE_DIRS {
            let source = self.node_dir().join(own);
            dir(&source)?;
            // The mount point must exist on the machine; an empty
            // directory is all that is added there.
            dir(Path::new(target))?;
            binds.push((source, PathBuf::from(target)));
        }
        let resolv = self.node_dir().join("resolv.conf");
        let text = match self.nameserver {
            Some(ns) => format!("nameserver {ns}\n"),
            None => String::new(),
        };
        std::fs::write(&resolv, text)
            .map_err(|e| LabError::io(format!("cannot write {}", resolv.display()), e))?;
        binds.push((resolv, PathBuf::from("/etc/resolv.conf")));
        Ok(binds)
    }

    /// Starts the node's init (in the node's namespaces) and returns the
    /// `unshare` process that holds it: killing that process ends the init
    /// and with it every process of the node.
    pub fn start(&self) -> Result<Child> {
        dir(&self.node_dir().join("logs"))?;
        let spec_path = self.node_dir().join("node-init.json");
        self.init_spec()?.write(&spec_path)?;
        let sandbox = Sandbox {
            netns: Some(netns_path(&self.paths.node_ns(&self.node.name))),
            hostname: Some(self.node.name.clone()),
            binds: self.binds()?,
        };
        let log = self.node_dir().join("logs").join("init.log");
        let (out, err) = crate::runtime::open_log(&log)?;
        let mut cmd = spawn::command(Path::new("unshare"), &sandbox)?;
        cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
            .arg(self.exe)
            .args(["lab", "node-init"])
            .arg(&spec_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("cannot start node {}", self.node.name), e))?;
        std::fs::write(
            init_pid_file(self.paths, &self.node.name),
            child.id().to_string(),
        )
        .map_err(|e| LabError::io("cannot record the node's init", e))?;
        Ok(child)
    }
}

/// The node's process 1 as the machine sees it (the child of the recorded
/// `unshare`), for entering the node's namespaces.
pub fn init_pid(paths: &LabPaths, node: &str) -> Result<i32> {
    let holder: i32 = std::fs::read_to_string(init_pid_file(paths, node))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| LabError::Failed(format!("node {node} has no running init")))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{holder}/task/{holder}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok()) {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "node {node}'s init (under process {holder}) is not running"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

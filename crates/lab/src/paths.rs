//! Where a lab keeps its state, and how its namespaces are named. Everything
//! a lab creates is recorded under its state directory, so `lab down` can
//! remove it even when the supervisor is gone.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// The root of all labs' state (tmpfs: a lab does not survive a reboot,
/// and neither do its namespaces).
pub const ROOT: &str = "/run/podwire/labs";

/// Validates a lab name: a short DNS label, since it is part of namespace
/// names.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 20
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "invalid lab name {name:?}: use up to 20 lowercase letters, digits and '-'"
        )))
    }
}

/// The paths of one lab.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub name: String,
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(name: &str) -> Result<LabPaths> {
        check_name(name)?;
        Ok(LabPaths {
            name: name.to_string(),
            dir: Path::new(ROOT).join(name),
        })
    }

    pub fn exists(&self) -> bool {
        self.dir.join("lab.json").is_file()
    }
    pub fn lab_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
    pub fn created_file(&self) -> PathBuf {
        self.dir.join("created.json")
    }
    pub fn cluster(&self) -> PathBuf {
        self.dir.join("cluster")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    pub fn supervisor_pid(&self) -> PathBuf {
        self.dir.join("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }
    /// The lab CA's certificate (clients: `curl --cacert`); its key is
    /// `ca.key` beside it.
    pub fn ca_cert(&self) -> PathBuf {
        crate::certs::LabCa::cert_path(&self.dir)
    }
    pub fn cni_bin(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
    pub fn conflist(&self, node: &str) -> PathBuf {
        self.node_dir(node)
            .join("net.d")
            .join("10-podwire.conflist")
    }
    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("ipam")
    }
    pub fn agent_status(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent-status.json")
    }
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.dir.join("pods").join(namespace).join(pod)
    }

    // Namespace names: `pwl-<lab>_<role>_<names…>`. Lab names, node names
    // and Kubernetes namespaces never contain '_', and pod names never do
    // either, so no two objects (in one lab or across labs) can share a
    // name, and `pwl-<lab>_` finds exactly one lab's namespaces.
    pub fn netns_prefix(&self) -> String {
        format!("pwl-{}_", self.name)
    }
    pub fn switch_ns(&self) -> String {
        format!("{}switch", self.netns_prefix())
    }
    pub fn router_ns(&self) -> String {
        format!("{}router", self.netns_prefix())
    }
    pub fn node_ns(&self, node: &str) -> String {
        format!("{}n_{node}", self.netns_prefix())
    }
    pub fn external_ns(&self, name: &str) -> String {
        format!("{}x_{name}", self.netns_prefix())
    }
    pub fn pod_ns(&self, namespace: &str, pod: &str) -> String {
        format!("{}p_{namespace}_{pod}", self.netns_prefix())
    }
}

/// The file of a named network namespace.
pub fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Every lab that has a state directory.
pub fn list_labs() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(ROOT)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

//! What the kubelet created, kept under its --root-dir so that a restarted
//! kubelet adopts its pods (or removes those whose objects are gone):
//!
//! ```text
//! pods/<uid>/pod.json                      sandbox: netns, IPs, the conflist used at ADD
//! pods/<uid>/etc/{resolv.conf,hosts}       bind-mounted into the containers
//! pods/<uid>/volumes/<volume>/             configMap, secret, projected (token), emptyDir
//! pods/<uid>/containers/<name>/state.json  restarts, last termination, back-off
//! pods/<uid>/containers/<name>/<n>.log     attempt n's output (CRI format)
//! pods/<uid>/containers/<name>/<n>/        attempt n: spec.json, pid.json, exit.json, shim.log
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{KubeletError, Result};
use super::restart::Backoff;
use super::status::Termination;

/// The directories under --root-dir.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod(&self, uid: &str) -> PathBuf {
        self.pods().join(uid)
    }
    pub fn pod_record(&self, uid: &str) -> PathBuf {
        self.pod(uid).join("pod.json")
    }
    pub fn etc(&self, uid: &str) -> PathBuf {
        self.pod(uid).join("etc")
    }
    pub fn volume(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod(uid).join("volumes").join(volume)
    }
    pub fn container(&self, uid: &str, name: &str) -> PathBuf {
        self.pod(uid).join("containers").join(name)
    }
    pub fn container_record(&self, uid: &str, name: &str) -> PathBuf {
        self.container(uid, name).join("state.json")
    }
    pub fn attempt(&self, uid: &str, name: &str, attempt: u32) -> PathBuf {
        self.container(uid, name).join(attempt.to_string())
    }
    pub fn log(&self, uid: &str, name: &str, attempt: u32) -> PathBuf {
        self.container(uid, name).join(format!("{attempt}.log"))
    }
}

/// A pod's sandbox as created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub host_network: bool,
    /// The sandbox's named network namespace (None for hostNetwork pods).
    pub netns: Option<String>,
    /// The sandbox's id (CNI_CONTAINERID).
    pub sandbox_id: String,
    pub ips: Vec<IpAddr>,
    /// The network configuration ADD ran with: DEL must use the same one
    /// (libcni caches it for the same reason).
    pub conflist: Option<serde_json::Value>,
    pub created: Timestamp,
}

/// One container across its attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The attempt started last (its directory and log); None: never started.
    pub attempt: Option<u32>,
    pub restart_count: i32,
    pub last_termination: Option<Termination>,
    pub backoff: Backoff,
}

/// The container process of one attempt, written by the shim once it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: i32,
    /// Its start time in clock ticks since boot (/proc/PID/stat field 22):
    /// with the PID, it names this process and never a later one.
    pub start_ticks: u64,
    pub started_at: Timestamp,
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
}

/// How an attempt ended, written by the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: Timestamp,
    /// Set when the process could not be started (exit code 128).
    pub error: Option<String>,
}

/// Writes `value` as JSON through a temporary file and a rename, so a
/// reader (or a kubelet after a crash) never sees half of it.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| KubeletError::Config(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &body, 0o644)
}

/// Replaces a file's contents atomically with the given mode.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    podwire_cni::install::write_if_changed(path, body, mode)
        .map(drop)
        .map_err(|e| KubeletError::io(format!("cannot write {}", path.display()), e))
}

/// A JSON file, when it exists and parses.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// A process's start time in clock ticks, if it exists (and is no zombie).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. State is field 3, start time field 22.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process `pid` that started at `ticks` still runs.
pub fn alive(pid: i32, ticks: u64) -> bool {
    pid > 0 && start_ticks(pid) == Some(ticks)
}

/// The uids of the pod directories under `pods/`.
pub fn recorded_pods(layout: &Layout) -> Vec<String> {
    let mut uids: Vec<String> = std::fs::read_dir(layout.pods())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    uids.sort();
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_records_round_trip() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert!(alive(me, ticks));
        assert!(!alive(me, ticks + 1));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/state.json");
        let record = ContainerRecord {
            attempt: Some(2),
            restart_count: 2,
            ..Default::default()
        };
        write_json(&path, &record).unwrap();
        assert_eq!(read_json::<ContainerRecord>(&path), Some(record));
    }
}

//! Named network namespaces of a lab: created with iproute2's layout
//! (/var/run/netns/NAME, so `ip netns exec` works on them), recorded in the
//! lab's state before they exist, and removed with every process in them.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use crate::error::{LabError, Result};
use crate::paths::{LabPaths, netns_path};

/// The set of namespaces a lab created, kept in `created.json`.
pub fn recorded(paths: &LabPaths) -> BTreeSet<String> {
    std::fs::read(paths.created_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub(crate) fn record(paths: &LabPaths, names: &BTreeSet<String>) -> Result<()> {
    let body = serde_json::to_vec_pretty(names).map_err(|e| LabError::Failed(e.to_string()))?;
    let tmp = paths.created_file().with_extension("tmp");
    std::fs::write(&tmp, body)
        .map_err(|e| LabError::io("cannot record the lab's namespaces", e))?;
    std::fs::rename(&tmp, paths.created_file())
        .map_err(|e| LabError::io("cannot record the lab's namespaces", e))
}

/// Creates a namespace (recording it first, so a crash cannot leak it) with
/// its loopback up.
pub fn create(paths: &LabPaths, name: &str) -> Result<()> {
    if exists(name) {
        // Never adopt (and later delete) a namespace this lab did not make.
        return Err(LabError::Failed(format!(
            "network namespace {name} already exists and is not this lab's: remove it or choose another lab name"
        )));
    }
    let mut names = recorded(paths);
    names.insert(name.to_string());
    record(paths, &names)?;
    if let Err(e) = add(name) {
        if !exists(name) {
            names.remove(name);
            record(paths, &names)?;
        }
        return Err(e);
    }
    Ok(())
}

/// Creates a named namespace (iproute2's layout) with its loopback up,
/// recorded nowhere: the caller keeps its own record (the lab's
/// `created.json`, a kubelet's pod directory).
pub fn add(name: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "add", name])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| LabError::io("cannot run `ip` (install iproute2)", e))?;
    if !out.status.success() {
        return Err(LabError::Failed(format!(
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let ns = podwire_kernel::Netns::open(netns_path(name))?;
    let mut nl = podwire_kernel::Netlink::in_netns(&ns)?;
    nl.loopback_up()?;
    Ok(())
}

/// Kills every process inside a namespace and deletes it (nothing to do
/// when it is gone), touching no record.
pub fn remove(name: &str) {
    kill_processes_in(name);
    let _ = Command::new("ip")
        .args(["netns", "delete", name])
        .stderr(Stdio::null())
        .status();
}

/// Kills every process inside the namespace, then deletes it.
pub fn delete(paths: &LabPaths, name: &str) -> Result<()> {
    remove(name);
    let mut names = recorded(paths);
    if names.remove(name) && paths.dir.is_dir() {
        record(paths, &names)?;
    }
    Ok(())
}

/// SIGKILLs every process whose network namespace is `name`. Matching the
/// namespace (not recorded PIDs) cannot hit an unrelated process that reused
/// a PID.
pub fn kill_processes_in(name: &str) -> usize {
    let Ok(target) = std::fs::metadata(netns_path(name)) else {
        return 0;
    };
    let mut killed = 0;
    for _ in 0..5 {
        let pids = pids_in(target.ino(), target.dev());
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

pub(crate) fn pids_in(ino: u64, dev: u64) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == ino && m.dev() == dev)
                .unwrap_or(false)
        })
        .collect()
}

/// Whether a namespace with this name exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new(&netns_path(name)).exists()
}

//! Removing a lab from what it recorded and what the machine shows: every
//! namespace it made (and every process inside, found by namespace, never
//! by a recorded PID), then its state directory; and an account of whatever
//! could not be removed, so `lab down` never claims a clean machine it did
//! not leave.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::netns;
use crate::paths::{LabPaths, netns_path};

/// Where iproute2 keeps named namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// Every named namespace of the lab present on the machine, recorded or
/// not: `pwl-<lab>_` can only be this lab's (see `paths`), so one that a
/// crash left unrecorded is still found.
pub fn present_namespaces(paths: &LabPaths) -> BTreeSet<String> {
    let prefix = paths.netns_prefix();
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the lab; returns what is left, one line per thing (empty: all
/// gone). What is left stays recorded, so another `lab down` tries again.
pub fn teardown(paths: &LabPaths) -> Vec<String> {
    let mut left = Vec::new();
    let mut names = netns::recorded(paths);
    names.extend(present_namespaces(paths));
    // Pods first, so their processes die before the nodes' agents.
    let pod_prefix = format!("{}p_", paths.netns_prefix());
    let (pods, others): (Vec<_>, Vec<_>) =
        names.into_iter().partition(|n| n.starts_with(&pod_prefix));
    let mut kept = BTreeSet::new();
    for name in pods.into_iter().chain(others) {
        netns::kill_processes_in(&name);
        let survivors = processes_in(&name);
        let _ = netns::delete(paths, &name);
        if netns::exists(&name) {
            kept.insert(name.clone());
        }
        left.extend(
            survivors
                .into_iter()
                .map(|p| format!("process {p} in network namespace {name}")),
        );
    }
    // Links are listed once every other namespace is gone: a cable's end
    // inside a kept namespace went with its peer's namespace.
    for name in &kept {
        let links = links_in(name);
        left.push(if links.is_empty() {
            format!("network namespace {name}")
        } else {
            format!("network namespace {name} (links {})", links.join(", "))
        });
    }
    if paths.dir.is_dir() {
        if !kept.is_empty() && netns::record(paths, &kept).is_err() {
            left.push(format!(
                "the record of the namespaces above ({})",
                paths.created_file().display()
            ));
        }
        let keep = (!kept.is_empty()).then(|| paths.created_file());
        remove_tree(&paths.dir, keep.as_deref(), &mut left);
        if keep.is_none() {
            remove_entry(&paths.dir, true, &mut left);
        }
    }
    left
}

/// "PID (command)" of each process still in the namespace.
fn processes_in(name: &str) -> Vec<String> {
    let Ok(ns) = std::fs::metadata(netns_path(name)) else {
        return Vec::new();
    };
    netns::pids_in(ns.ino(), ns.dev())
        .into_iter()
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", comm.trim())
        })
        .collect()
}

/// The links inside a namespace (without lo): what stays with it.
fn links_in(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", name, "-o", "link", "show"])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// Removes everything under `dir` but `keep`, reporting what would not go.
/// A directory that stays non-empty because of something already reported
/// is not reported again.
fn remove_tree(dir: &Path, keep: Option<&Path>, left: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if Some(path.as_path()) == keep {
            continue;
        }
        // symlink_metadata: a link (the CNI bin directory's) is removed,
        // never followed.
        let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if is_dir {
            remove_tree(&path, keep, left);
        }
        remove_entry(&path, is_dir, left);
    }
}

fn remove_entry(path: &Path, is_dir: bool, left: &mut Vec<String>) {
    let removed = if is_dir {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
        Err(e) => left.push(format!(
            "{} {} ({e})",
            if is_dir { "directory" } else { "file" },
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_a_tree_but_what_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lab");
        std::fs::create_dir_all(root.join("nodes/a/net.d")).unwrap();
        std::fs::write(root.join("nodes/a/net.d/10.conflist"), "{}").unwrap();
        std::fs::write(root.join("created.json"), "[]").unwrap();
        std::os::unix::fs::symlink("/nonexistent", root.join("link")).unwrap();
        let mut left = Vec::new();
        remove_tree(&root, Some(&root.join("created.json")), &mut left);
        assert!(left.is_empty(), "{left:?}");
        let rest: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(rest, ["created.json"]);
        remove_tree(&root, None, &mut left);
        remove_entry(&root, true, &mut left);
        assert!(left.is_empty(), "{left:?}");
        assert!(!root.exists());
    }
}

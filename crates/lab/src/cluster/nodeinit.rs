//! A node's init: process 1 of the node's own PID namespace (started under
//! `unshare --pid --fork --mount-proc`, inside the node's network, mount
//! and UTS namespaces). It runs the node's long-lived programs (the
//! kubelet; on the control-plane node also etcd, kube-apiserver, the
//! controller manager and the scheduler, as kubeadm's static pods), starts
//! each again when it ends (with a backoff, as a kubelet restarts static
//! pods), and reaps every orphan (container shims whose kubelet restarted).
//! So `ps` on a node shows that node's processes only, and killing the init
//! ends everything the node ran.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};

/// The first restart waits this long; each next one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A program that ran this long before it ended starts over at the first
/// backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(50);

/// One program the init keeps running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its stdout and stderr (appended).
    pub log: PathBuf,
}

/// What a node runs (`node-init.json` in the node's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    pub programs: Vec<Program>,
}

impl InitSpec {
    pub fn write(&self, path: &Path) -> Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| LabError::Failed(e.to_string()))?;
        crate::certs::write_file(path, &body, 0o644)
    }

    pub fn read(path: &Path) -> Result<InitSpec> {
        let bytes = std::fs::read(path)
            .map_err(|e| LabError::io(format!("cannot read {}", path.display()), e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| LabError::Failed(format!("corrupt {}: {e}", path.display())))
    }
}

/// The next wait before a restart, given the last one and how long the
/// program ran.
fn next_backoff(last: Option<Duration>, ran: Duration) -> Duration {
    match last {
        _ if ran >= HEALTHY_RUN => FIRST_BACKOFF,
        None => FIRST_BACKOFF,
        Some(d) => (d * 2).min(MAX_BACKOFF),
    }
}

struct Running {
    program: Program,
    pid: Option<Pid>,
    started: Instant,
    backoff: Option<Duration>,
    start_at: Instant,
    restarts: u32,
}

fn start(program: &Program) -> std::io::Result<Pid> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&program.log)?;
    let err = log.try_clone()?;
    let Some((exe, args)) = program.argv.split_first() else {
        return Err(std::io::Error::other("empty argv"));
    };
    let child = Command::new(exe)
        .args(args)
        .envs(&program.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()?;
    // Reaped below with waitpid(-1), like every other child of process 1.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Runs the init until it is killed (it never returns on success).
pub fn run(spec_path: &Path) -> Result<()> {
    let spec = InitSpec::read(spec_path)?;
    let now = Instant::now();
    let mut running: Vec<Running> = spec
        .programs
        .into_iter()
        .map(|program| Running {
            program,
            pid: None,
            started: now,
            backoff: None,
            start_at: now,
            restarts: 0,
        })
        .collect();
    loop {
        let now = Instant::now();
        for r in running.iter_mut().filter(|r| r.pid.is_none()) {
            if now < r.start_at {
                continue;
            }
            match start(&r.program) {
                Ok(pid) => {
                    eprintln!(
                        "node-init: started {} (pid {pid}, restarts {})",
                        r.program.name, r.restarts
                    );
                    r.pid = Some(pid);
                    r.started = now;
                }
                Err(e) => {
                    eprintln!("node-init: cannot start {}: {e}", r.program.name);
                    r.backoff = Some(next_backoff(r.backoff, Duration::ZERO));
                    r.start_at = now + r.backoff.unwrap_or(FIRST_BACKOFF);
                }
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => {
                    if let Some(r) = running.iter_mut().find(|r| r.pid == Some(pid)) {
                        let ran = r.started.elapsed();
                        r.pid = None;
                        r.restarts += 1;
                        r.backoff = Some(next_backoff(r.backoff, ran));
                        r.start_at = Instant::now() + r.backoff.unwrap_or(FIRST_BACKOFF);
                        eprintln!(
                            "node-init: {} ended after {:.1} s; starting it again in {:.1} s",
                            r.program.name,
                            ran.as_secs_f64(),
                            r.backoff.unwrap_or(FIRST_BACKOFF).as_secs_f64()
                        );
                    }
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        std::thread::sleep(TICK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_bound_and_resets_after_a_healthy_run() {
        let first = next_backoff(None, Duration::ZERO);
        assert_eq!(first, FIRST_BACKOFF);
        let second = next_backoff(Some(first), Duration::from_secs(1));
        assert_eq!(second, FIRST_BACKOFF * 2);
        assert_eq!(
            next_backoff(Some(Duration::from_secs(8)), Duration::ZERO),
            MAX_BACKOFF
        );
        assert_eq!(next_backoff(Some(MAX_BACKOFF), HEALTHY_RUN), FIRST_BACKOFF);
    }

    #[test]
    fn the_spec_round_trips() {
        let dir = std::env::temp_dir().join(format!("pw-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = InitSpec {
            programs: vec![Program {
                name: "kubelet".into(),
                argv: vec!["/usr/bin/podwire".into(), "kubelet".into()],
                env: BTreeMap::from([("NODE_NAME".into(), "node01".into())]),
                log: dir.join("kubelet.log"),
            }],
        };
        spec.write(&dir.join("init.json")).unwrap();
        assert_eq!(InitSpec::read(&dir.join("init.json")).unwrap(), spec);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

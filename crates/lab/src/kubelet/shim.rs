//! The container shim (`podwire kubelet shim SPEC`), podwire's conmon: one
//! small process per container attempt that starts the container in its
//! sandbox, writes its output as CRI log records with times, and records
//! its exit code. Containers are therefore not the kubelet's children: they
//! keep running, logging and reporting their exit across a kubelet
//! restart, and the next kubelet reads what happened from the files.
//!
//! The container gets a process group of its own; the kubelet stops it by
//! signalling the group, and once its main process ends the shim kills
//! what is left of the group, as a runtime ends a container's PID
//! namespace.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::logs;
use super::state::{ExitInfo, ProcessInfo, start_ticks, write_json};
use crate::runtime::resolve_program;
use crate::spawn::{self, Sandbox};

/// Everything the shim needs, written by the kubelet as `spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub netns: Option<String>,
    pub hostname: Option<String>,
    /// (source, target) bind mounts inside the container's mount namespace.
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    pub exit_file: PathBuf,
}

/// How long the output of a finished container is still read (processes
/// that left its group may hold the pipes open).
const DRAIN: Duration = Duration::from_secs(2);

fn record_exit(spec: &ShimSpec, exit_code: i32, signal: Option<i32>, error: Option<String>) {
    let info = ExitInfo {
        exit_code,
        signal,
        finished_at: Timestamp::now(),
        error,
    };
    // A pod directory the kubelet removed stays removed.
    if spec.exit_file.parent().is_some_and(|d| !d.is_dir()) {
        return;
    }
    if let Err(e) = write_json(&spec.exit_file, &info) {
        eprintln!("shim: {e}");
    }
}

/// Runs the shim: returns its own exit code (0 once the container's exit
/// is recorded, whatever that was).
pub fn run(spec_path: &Path) -> i32 {
    let spec: ShimSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("shim: cannot read {}: {e}", spec_path.display());
            return 1;
        }
    };
    match start(&spec) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("shim: {message}");
            record_exit(&spec, 128, None, Some(message));
            0
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("cannot make a pipe: {e}"))
}

fn start(spec: &ShimSpec) -> Result<(), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|e| format!("cannot open the log {}: {e}", spec.log.display()))?;
    let log = Arc::new(Mutex::new(log));
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or("the container has an empty command")?;
    let sandbox = Sandbox {
        netns: spec.netns.clone(),
        hostname: spec.hostname.clone(),
        binds: spec.binds.clone(),
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut cmd = spawn::command(&resolve_program(program), &sandbox).map_err(|e| e.to_string())?;
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("failed to start container process {program:?}: {e}"))?;
    // The write ends now live in the child only; `cmd` holds copies.
    drop(cmd);
    let pid = child.id() as i32;
    let me = std::process::id() as i32;
    let info = ProcessInfo {
        pid,
        start_ticks: start_ticks(pid).unwrap_or_default(),
        started_at: Timestamp::now(),
        shim_pid: me,
        shim_start_ticks: start_ticks(me).unwrap_or_default(),
    };
    if let Err(e) = write_json(&spec.pid_file, &info) {
        eprintln!("shim: {e}");
    }
    let readers = [(out_r, "stdout"), (err_r, "stderr")].map(|(fd, stream)| {
        let log = log.clone();
        std::thread::spawn(move || copy(std::fs::File::from(fd), stream, &log))
    });
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for the container: {e}"))?;
    // What is left of the container's process group goes with it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + DRAIN;
    for reader in readers {
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (128, None),
    };
    record_exit(spec, code, signal, None);
    Ok(())
}

/// Copies one output stream into the log as records.
fn copy(mut input: std::fs::File, stream: &str, log: &Mutex<std::fs::File>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, eof) = match input.read(&mut buf) {
            Ok(0) | Err(_) => (0, true),
            Ok(n) => (n, false),
        };
        pending.extend_from_slice(&buf[..n]);
        let (records, used) = logs::split_records(&pending, eof);
        if !records.is_empty() {
            let now = Timestamp::now();
            let mut out = Vec::new();
            for (text, partial) in records {
                out.extend(logs::format_record(now, stream, partial, text));
            }
            if let Ok(mut file) = log.lock() {
                let _ = file.write_all(&out);
            }
        }
        pending.drain(..used);
        if eof {
            return;
        }
    }
}

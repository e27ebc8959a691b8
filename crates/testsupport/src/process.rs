//! Child processes of tests: long-lived ones that die with the test process
//! even when it is killed, and short commands bounded in time.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnJob = (Command, Sender<std::io::Result<Child>>);

/// PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not
/// the process. Test threads end with their test (and a control plane may
/// be started on a helper thread), so every long-lived child is forked by
/// one thread that lives as long as the test process: the child then gets
/// SIGKILL exactly when the test process dies, however it dies.
fn spawner() -> &'static Mutex<Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("testsupport-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the test-support spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it receives SIGKILL when the test process ends.
pub(crate) fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = channel();
    spawner()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, tx))
        .expect("the test-support spawner thread is gone");
    rx.recv().expect("the test-support spawner thread is gone")
}

/// A long-running child process owned by a test: stopped (SIGTERM, then
/// SIGKILL after a grace period) when dropped, and killed by the kernel if
/// the test process itself dies first.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd`; `name` is only used in messages.
    pub fn spawn(name: &str, cmd: Command) -> Process {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child =
            spawn_tied(cmd).unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}"));
        Process {
            name: name.to_string(),
            child,
            status: None,
        }
    }

    /// The process id (with `ip netns exec` in front, still the program's:
    /// `ip` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the process is still running (it is reaped when it is not).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.status = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// How it ended, once it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; always reaped.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.status = Some(status);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill has no memory effects; a stale pid only yields ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// What [`run_bounded`] saw.
#[derive(Debug)]
pub struct Bounded {
    /// How the command ended; `None` when it was killed at its time limit.
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `cmd` to completion with `stdin` as its input, killing it when it
/// takes longer than `limit`. Output goes through temporary files, not
/// pipes, so a background grandchild that inherits them cannot make the
/// test wait, and large output cannot block the child.
pub fn run_bounded(mut cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Bounded {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = tempfile::tempfile().expect("create a temp file for a command's stdout");
    let err = tempfile::tempfile().expect("create a temp file for a command's stderr");
    cmd.stdout(out.try_clone().expect("dup a temp file"))
        .stderr(err.try_clone().expect("dup a temp file"));
    match stdin {
        Some(data) => {
            let mut input = tempfile::tempfile().expect("create a temp file for stdin");
            input.write_all(data).expect("write a command's stdin");
            input.seek(SeekFrom::Start(0)).expect("rewind stdin");
            cmd.stdin(input);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Bounded {
        status,
        stdout: read_all(out),
        stderr: read_all(err),
        elapsed: started.elapsed(),
    }
}

/// [`run_bounded`] as an [`Output`]: a command killed at its limit ends
/// with SIGKILL in its status and a note on stderr.
pub fn run_with_timeout(cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let ran = run_bounded(cmd, stdin, limit);
    let mut stderr = ran.stderr;
    let status = ran.status.unwrap_or_else(|| {
        stderr.extend_from_slice(
            format!("\n[testsupport: {program} killed after {limit:?}]\n").as_bytes(),
        );
        ExitStatus::from_raw(libc::SIGKILL)
    });
    Output {
        status,
        stdout: ran.stdout,
        stderr,
    }
}

fn read_all(mut file: File) -> Vec<u8> {
    let mut data = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut data);
    data
}

/// The last `lines` lines of a text file ("" when it cannot be read).
pub(crate) fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

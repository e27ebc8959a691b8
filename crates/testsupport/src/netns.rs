//! Throwaway named network namespaces: every test network lives in
//! namespaces the test created, so the host's own namespace is never
//! touched, and each is removed (with whatever still runs in it) when its
//! guard drops, even when the test panics.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::process::{Process, signal};

/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The prefix of [`Netns::new`] names.
const DEFAULT_PREFIX: &str = "pwt";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`) with `lo` up, that exists
/// for the life of the value. Dropping it kills every process still inside
/// (`ip netns pids`) and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// A namespace named `pwt<pid>-<counter>-<tag>`: unique within this
    /// machine while the test process lives.
    pub fn new(tag: &str) -> Netns {
        Netns::with_prefix(DEFAULT_PREFIX, tag)
    }

    /// Like [`Netns::new`] with another prefix (ASCII letters, so that a
    /// leftover of a killed test process can be recognised and removed).
    pub fn with_prefix(prefix: &str, tag: &str) -> Netns {
        assert!(
            !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase()),
            "a Netns prefix is lowercase ASCII letters, not {prefix:?}"
        );
        sweep_stale_once();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        Netns::named(&format!("{prefix}{}-{n}-{tag}", std::process::id()))
    }

    /// A namespace with exactly this name. Panics when it cannot be made
    /// (not root, no iproute2, or the name is taken by a live namespace).
    pub fn named(name: &str) -> Netns {
        let path = Path::new(NETNS_DIR).join(name);
        let mut out = ip(&["netns", "add", name]);
        if !out.status.success() && path.exists() && name_is_ours(name) {
            // Our pid and counter are in the name, so this is a leftover of
            // an earlier test process that had the same pid and was killed.
            let _ = ip(&["netns", "del", name]);
            out = ip(&["netns", "add", name]);
        }
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {} (tests that make namespaces need root and iproute2)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns {
            name: name.to_string(),
            path,
        };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/<name>`), as CNI_NETNS takes it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `argv` inside the namespace (`ip netns exec`) and waits for it.
    pub fn exec(&self, argv: &[&str]) -> Output {
        assert!(!argv.is_empty(), "Netns::exec needs a program");
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {}: {e}", self.name))
    }

    /// [`Netns::exec`] that must succeed: its stdout, or a panic with
    /// everything it printed.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "`{}` in namespace {} failed ({}): {}{}",
            argv.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script inside the namespace (`sh -c`).
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// [`Netns::sh`] that must succeed: its stdout, or a panic with
    /// everything it printed.
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A Command for `program` that enters the namespace between fork and
    /// exec (as a container runtime does), so the program is the direct
    /// child with nothing in between, and stdio/env are the caller's to set.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.path, program)
    }

    /// Starts `cmd` inside the namespace as a [`Process`]: stopped when the
    /// value drops, killed when the test process dies.
    pub fn spawn(&self, mut cmd: Command) -> Process {
        enter_on_exec(&mut cmd, &self.path);
        let name = format!("{} in {}", cmd.get_program().to_string_lossy(), self.name);
        Process::spawn(&name, cmd)
    }

    /// Runs `f` on a thread that entered the namespace (sockets made there
    /// belong to it), and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter_thread(&self.path);
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a detached thread inside the namespace (e.g. a test server
    /// that lives as long as the test); it must end on its own.
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path.clone();
        std::thread::spawn(move || {
            enter_thread(&path);
            f()
        })
    }

    /// Processes whose network namespace this is (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        pids_of(&self.name)
    }
}

/// A Command for `program` that enters the network namespace at `path`
/// (e.g. a CNI_NETNS path) between fork and exec.
pub fn command_in(path: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    enter_on_exec(&mut cmd, path);
    cmd
}

fn enter_on_exec(cmd: &mut Command, path: &Path) {
    let path = CString::new(path.as_os_str().as_bytes()).expect("a namespace path has no NUL byte");
    // SAFETY: only async-signal-safe calls (open, setns, close) on memory
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        });
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_thread(path: &Path) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns only changes the calling thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert!(
        rc == 0,
        "setns into {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run ip {}: {e} (is iproute2 installed?)",
                args.join(" ")
            )
        })
}

fn pids_of(name: &str) -> Vec<u32> {
    String::from_utf8_lossy(&ip(&["netns", "pids", name]).stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILLs everything in the namespace (never this process), until none is
/// left or two seconds pass (a process may fork while we kill).
fn kill_all_in(name: &str) {
    let own = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<u32> = pids_of(name).into_iter().filter(|p| *p != own).collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `<letters><pid>-<counter>-...`: the pid part, for names made by
/// [`Netns::with_prefix`].
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.trim_start_matches(|c: char| c.is_ascii_lowercase());
    if rest.len() == name.len() || !name.starts_with("pw") {
        return None;
    }
    let (pid, rest) = rest.split_once('-')?;
    let (counter, _) = rest.split_once('-')?;
    counter.parse::<usize>().ok()?;
    pid.parse().ok()
}

fn name_is_ours(name: &str) -> bool {
    owner_pid(name) == Some(std::process::id())
}

/// Removes namespaces left by test processes that were killed before their
/// guards ran: names of our format whose process is gone and in which
/// nothing runs. Once per test process.
fn sweep_stale_once() {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if pids_of(&name).is_empty() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_only_our_format() {
        assert_eq!(owner_pid("pwt123-4-node"), Some(123));
        assert_eq!(owner_pid("pwcp99-0-cp"), Some(99));
        assert_eq!(owner_pid("pwl-lab_n_node01"), None);
        assert_eq!(owner_pid("pwt123-node"), None);
        assert_eq!(owner_pid("cni-1234-5-x"), None);
        assert_eq!(owner_pid("123-4-x"), None);
    }
}

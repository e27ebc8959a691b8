//! Network namespaces and temp dirs owned by a benchmark run. Every name
//! carries the run's pid (`pwbench-host-<pid>-…`, `pwbench-c-<pid>-…`,
//! `/tmp/pwbench-<pid>-…`); guards remove them on drop, an interrupt only sets
//! a flag so the guards still run, and `sweep` removes what a run that died
//! left behind. Nothing here touches the namespace the benchmark runs in.

use std::fs;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Where `ip netns add` pins named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Every namespace and temp dir a benchmark makes starts with this.
pub const PREFIX: &str = "pwbench-";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM/SIGHUP into a flag checked between steps, so the
/// benchmark unwinds through its guards instead of dying with namespaces left.
/// Plugin processes still get the signal (same process group) and fail fast.
pub fn install_interrupt_handler() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.with_context(|| format!("install {sig} handler"))?;
    }
    Ok(())
}

/// Whether an interrupt has arrived.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails once an interrupt has arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// A named network namespace (`ip netns add NAME`), open, removed on drop.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
    netns: podwire_kernel::Netns,
}

impl NamedNetns {
    /// Creates the namespace; `name` must start with [`PREFIX`].
    pub fn create(name: &str) -> Result<NamedNetns> {
        ensure!(
            name.starts_with(PREFIX),
            "namespace {name} lacks prefix {PREFIX}"
        );
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C must not kill it half-way.
            .process_group(0)
            .output()
            .context("run `ip netns add` (is iproute2 installed?)")?;
        ensure!(
            out.status.success(),
            "`ip netns add {name}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let path = Path::new(NETNS_DIR).join(name);
        let netns = match podwire_kernel::Netns::open(&path) {
            Ok(netns) => netns,
            Err(err) => {
                let _ = remove_netns(name);
                return Err(err).with_context(|| format!("open {}", path.display()));
            }
        };
        Ok(NamedNetns {
            name: name.to_string(),
            path,
            netns,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as CNI_NETNS.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.netns.raw_fd()
    }

    pub fn netns(&self) -> &podwire_kernel::Netns {
        &self.netns
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if let Err(err) = remove_netns(&self.name) {
            eprintln!("warning: cannot remove namespace {}: {err:#}", self.name);
        }
    }
}

/// What `ip netns del` does: detach the bind mount and unlink the pin. The
/// namespace (and every link, route and rule in it) goes when the last
/// reference closes.
pub fn remove_netns(name: &str) -> Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(err) => return Err(err).with_context(|| format!("umount {}", path.display())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("remove {}", path.display())),
    }
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/pwbench-<pid>-<tag>` afresh.
    pub fn create(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}-{tag}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("remove stale {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {err}", self.path.display());
        }
    }
}

/// The pid embedded in a benchmark-made name, if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest
        .strip_prefix("host-")
        .or_else(|| rest.strip_prefix("c-"))
        .unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn is_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes namespaces and temp dirs made by this process (`only_own`) or, at
/// start-up, also those of benchmark runs whose process is gone. Runs of other
/// live processes are never touched. Returns what was removed.
pub fn sweep(only_own: bool) -> Vec<String> {
    let me = std::process::id();
    let stale = |name: &str| match owner_pid(name) {
        Some(pid) if pid == me => true,
        Some(pid) => !only_own && !is_alive(pid),
        None => false,
    };
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) && remove_netns(&name).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) && fs::remove_dir_all(entry.path()).is_ok() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_of_names() {
        assert_eq!(owner_pid("pwbench-host-123-plain-ref"), Some(123));
        assert_eq!(owner_pid("pwbench-c-45-7"), Some(45));
        assert_eq!(owner_pid("pwbench-99-ref"), Some(99));
        assert_eq!(owner_pid("tmeas"), None);
        assert_eq!(owner_pid("pwbench-host-x"), None);
    }
}

//! Starting processes the way a container runtime places them: inside a
//! network namespace, with a private mount namespace where the pod's own
//! resolv.conf and hosts are bind-mounted over /etc, and a UTS namespace
//! carrying the pod's (or node's) hostname.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};

/// Where and how a process runs.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Path of the network namespace file.
    pub netns: Option<String>,
    pub hostname: Option<String>,
    /// (source file, target file) bind mounts, e.g. the pod's resolv.conf
    /// over /etc/resolv.conf.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| LabError::Invalid(format!("path {} contains a NUL byte", path.display())))
}

/// A `Command` for `program` that will run inside `sandbox`.
pub fn command(program: &Path, sandbox: &Sandbox) -> Result<Command> {
    let mut cmd = Command::new(program);
    apply(&mut cmd, sandbox)?;
    Ok(cmd)
}

/// Puts an existing `Command` into `sandbox`.
pub fn apply(cmd: &mut Command, sandbox: &Sandbox) -> Result<()> {
    let netns = match &sandbox.netns {
        Some(path) => Some(
            File::open(path)
                .map_err(|e| LabError::io(format!("cannot open network namespace {path}"), e))?,
        ),
        None => None,
    };
    // Everything the child needs is prepared here: after fork only
    // async-signal-safe system calls may run, no allocation.
    let binds: Vec<(CString, CString)> = sandbox
        .binds
        .iter()
        .map(|(src, dst)| Ok((cstring(src)?, cstring(dst)?)))
        .collect::<Result<_>>()?;
    let hostname = sandbox.hostname.clone().map(|h| h.into_bytes());
    let root = cstring(Path::new("/"))?;
    let sys = cstring(Path::new("/sys"))?;
    let sysfs = cstring(Path::new("sysfs"))?;
    let none = CString::default();
    // SAFETY: the closure only makes system calls (setns, unshare, mount,
    // sethostname) on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ns) = &netns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut flags = 0;
            let private_mounts = !binds.is_empty() || netns.is_some();
            if private_mounts {
                flags |= libc::CLONE_NEWNS;
            }
            if hostname.is_some() {
                flags |= libc::CLONE_NEWUTS;
            }
            if flags != 0 && libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if private_mounts {
                // Keep the bind mounts inside this process's mount namespace.
                if libc::mount(
                    none.as_ptr(),
                    root.as_ptr(),
                    none.as_ptr(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (src, dst) in &binds {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        none.as_ptr(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // /sys shows the network devices of the namespace that
                // mounted it: remount it (as `ip netns exec` does) so
                // /sys/class/net is this namespace's. Best effort: a process
                // that cannot is still correct for everything but /sys.
                if netns.is_some() && libc::umount2(sys.as_ptr(), libc::MNT_DETACH) == 0 {
                    let _ = libc::mount(
                        sysfs.as_ptr(),
                        sys.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
            }
            if let Some(name) = &hostname
                && libc::sethostname(name.as_ptr().cast(), name.len()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

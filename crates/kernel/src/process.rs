//! Placing a new process the way a container runtime does, between fork
//! and exec: into a network namespace, a private mount namespace where
//! files are bind-mounted over others (a pod's resolv.conf over
//! /etc/resolv.conf) and /sys shows that network namespace, and a UTS
//! namespace carrying its own hostname. After fork only async-signal-safe
//! system calls may run, so everything is prepared in the parent
//! ([`Placement::new`]) and the child ([`Placement::enter`]) neither
//! allocates nor takes a lock.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Where a child process goes, ready to enter without allocating.
#[derive(Debug)]
pub struct Placement {
    netns: Option<File>,
    hostname: Option<Vec<u8>>,
    /// (source, target) bind mounts.
    binds: Vec<(CString, CString)>,
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::Invalid(format!(
            "path {} contains a NUL byte: give a path without one",
            path.display()
        ))
    })
}

impl Placement {
    /// Opens the network namespace at `netns` (when given) and prepares
    /// the bind mounts and hostname. A private mount namespace is made
    /// when there are bind mounts or a network namespace (for /sys); a
    /// UTS namespace when there is a hostname.
    pub fn new(
        netns: Option<&Path>,
        hostname: Option<&str>,
        binds: &[(PathBuf, PathBuf)],
    ) -> Result<Placement> {
        let netns = match netns {
            Some(path) => Some(File::open(path).map_err(|source| Error::Netns {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let binds = binds
            .iter()
            .map(|(src, dst)| Ok((c_path(src)?, c_path(dst)?)))
            .collect::<Result<_>>()?;
        Ok(Placement {
            netns,
            hostname: hostname.map(|h| h.as_bytes().to_vec()),
            binds,
        })
    }

    fn private_mounts(&self) -> bool {
        !self.binds.is_empty() || self.netns.is_some()
    }

    /// Moves the calling process into this placement. Meant for the child
    /// of a fork (a `pre_exec` closure): it only makes system calls on
    /// what [`Placement::new`] prepared. Called in a running program it
    /// would move that program, so [`Placement::install`] is the usual way.
    pub fn enter(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        // SAFETY (every block below): system calls on NUL-terminated
        // strings and an open descriptor owned by `self`, which outlives
        // the calls.
        if let Some(ns) = &self.netns {
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
        }
        let mut flags = 0;
        if self.private_mounts() {
            flags |= libc::CLONE_NEWNS;
        }
        if self.hostname.is_some() {
            flags |= libc::CLONE_NEWUTS;
        }
        if flags != 0 {
            check(unsafe { libc::unshare(flags) })?;
        }
        if self.private_mounts() {
            let none = c"";
            // Keep the bind mounts inside this process's mount namespace.
            check(unsafe {
                libc::mount(
                    none.as_ptr(),
                    c"/".as_ptr(),
                    none.as_ptr(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            })?;
            for (src, dst) in &self.binds {
                check(unsafe {
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        none.as_ptr(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                })?;
            }
            // /sys shows the network devices of the namespace that mounted
            // it: remount it (as `ip netns exec` does) so /sys/class/net is
            // this namespace's. Best effort: a process that cannot is still
            // correct for everything but /sys.
            if self.netns.is_some()
                && unsafe { libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) } == 0
            {
                let _ = unsafe {
                    libc::mount(
                        c"sysfs".as_ptr(),
                        c"/sys".as_ptr(),
                        c"sysfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
            }
        }
        if let Some(name) = &self.hostname {
            check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
        }
        Ok(())
    }

    /// Makes `cmd`'s child enter this placement before it executes.
    pub fn install(self, cmd: &mut Command) {
        // SAFETY: `enter` only makes async-signal-safe system calls on
        // data prepared before fork; nothing is allocated in the child.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_to_enter_is_decided_before_fork() {
        let none = Placement::new(None, None, &[]).unwrap();
        assert!(!none.private_mounts() && none.hostname.is_none());
        // Entering nothing changes nothing and succeeds anywhere.
        none.enter().unwrap();
        let binds = [(PathBuf::from("/a"), PathBuf::from("/etc/b"))];
        let named = Placement::new(None, Some("pod-1"), &binds).unwrap();
        assert!(named.private_mounts());
        assert_eq!(named.hostname.as_deref(), Some(&b"pod-1"[..]));
        assert_eq!(named.binds[0].1.as_bytes(), b"/etc/b");
        let nul = [(PathBuf::from("/a\0b"), PathBuf::from("/c"))];
        assert!(matches!(
            Placement::new(None, None, &nul),
            Err(Error::Invalid(msg)) if msg.contains("NUL")
        ));
        assert!(matches!(
            Placement::new(Some(Path::new("/nonexistent/ns")), None, &[]),
            Err(Error::Netns { .. })
        ));
    }
}

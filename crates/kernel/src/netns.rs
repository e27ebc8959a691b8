//! Network namespaces: open one by path and run code inside it. Sockets keep
//! the namespace they were created in, so entering is only needed to create a
//! socket (or a sysctl read/write), then the thread returns home at once.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// An open handle on a network namespace (a file under /proc or /var/run/netns).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    pub fn open(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Error::Netns {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Netns {
            file,
            path: path.display().to_string(),
        })
    }

    /// Opens `path` only if it really is a network namespace. A runtime may
    /// hand over any path; a regular file, a directory or another kind of
    /// namespace would only fail later, inside `setns`, with an errno that
    /// says nothing about the path. Device files and FIFOs are never opened
    /// (opening one can block or have side effects). A missing or
    /// unreadable path is [`Error::Netns`]; anything that exists but is not
    /// a network namespace is [`Error::Invalid`] naming what it is.
    pub fn open_network(path: impl AsRef<Path>) -> Result<Netns> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| Error::Netns {
            path: shown.clone(),
            source,
        })?;
        let kind = meta.file_type();
        if !kind.is_file() {
            let what = if kind.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(Error::Invalid(format!(
                "{shown} is {what}, not a network namespace"
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|source| Error::Netns {
                path: shown.clone(),
                source,
            })?;
        check_network_namespace(&file, &shown)?;
        Ok(Netns { file, path: shown })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let home = Netns::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| Error::Netns {
            path: self.path.clone(),
            source: e.into(),
        })?;
        Ok(NetnsGuard { home })
    }

    /// Runs `f` inside this namespace and returns to the caller's namespace.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.enter()?;
        Ok(f())
    }

    /// Whether this handle is the same namespace as `other` (same inode).
    pub fn same_as(&self, other: &Netns) -> bool {
        match (self.file.metadata(), other.file.metadata()) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        }
    }
}

/// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3): the CLONE_NEW* type of a namespace
/// file (Linux 4.11+).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

fn check_network_namespace(file: &File, path: &str) -> Result<()> {
    let fs = nix::sys::statfs::fstatfs(file).map_err(|e| Error::Netns {
        path: path.to_string(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(Error::Invalid(format!(
            "{path} is a regular file, not a network namespace"
        )));
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the open fd.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        // A kernel without NS_GET_NSTYPE: nsfs is as far as we can tell,
        // setns will refuse anything else.
        return Ok(());
    }
    if kind == libc::CLONE_NEWNET {
        return Ok(());
    }
    let name = match kind {
        libc::CLONE_NEWUTS => "a uts",
        libc::CLONE_NEWIPC => "an ipc",
        libc::CLONE_NEWNS => "a mount",
        libc::CLONE_NEWPID => "a pid",
        libc::CLONE_NEWUSER => "a user",
        libc::CLONE_NEWCGROUP => "a cgroup",
        0x80 => "a time",
        _ => "another kind of",
    };
    Err(Error::Invalid(format!(
        "{path} is {name} namespace, not a network namespace"
    )))
}

/// Returns the thread to the namespace it came from when dropped.
#[must_use]
pub struct NetnsGuard {
    home: Netns,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(self.home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread stuck in the wrong namespace would program the wrong
            // host; there is no safe way to continue.
            tracing::error!(%err, "cannot return to the original network namespace");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespaces_open_as_such() {
        Netns::open_network("/proc/self/ns/net").unwrap();
        let err = |p: &str| match Netns::open_network(p) {
            Err(Error::Invalid(msg)) => msg,
            other => panic!("{p}: {other:?}"),
        };
        assert!(err("/proc/self/ns/uts").contains("a uts namespace"));
        assert!(err("/").contains("a directory"));
        assert!(err("/dev/null").contains("a special file"));
        let file = std::env::temp_dir().join(format!("pw-netns-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let msg = err(file.to_str().unwrap());
        std::fs::remove_file(&file).unwrap();
        assert!(msg.contains("a regular file"), "{msg}");
        assert!(matches!(
            Netns::open_network("/nonexistent/netns"),
            Err(Error::Netns { .. })
        ));
    }
}

//! Network namespaces: open one by path and run code inside it. Sockets keep
//! the namespace they were created in, so entering is only needed to create a
//! socket (or a sysctl read/write), then the thread returns home at once.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
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

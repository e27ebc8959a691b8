//! The on-disk allocation store, byte-compatible with the reference host-local
//! plugin so a node can switch between the two without losing leases.
//!
//! Layout of `<data_dir>/<network>/`: one file per allocated IP, named by the
//! IP, holding `<container_id>\r\n<ifname>`; `last_reserved_ip.<N>` holding the
//! last IP handed out from range set N; and `lock`, flock'ed around every
//! read-modify-write.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Code, Error, Result};

/// How long to wait for another plugin invocation to finish with the store
/// before asking the runtime to retry.
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// host-local's separator between container id and ifname.
const LINE_BREAK: &str = "\r\n";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";

/// One IP file: who holds the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub ip: IpAddr,
    pub container_id: String,
    /// `None` for files written by old host-local versions, which stored only
    /// the container id; such a lease belongs to every ifname of the container.
    pub ifname: Option<String>,
}

impl Entry {
    pub fn held_by(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id.trim()
            && self.ifname.as_deref().is_none_or(|i| i == ifname)
    }

    pub fn describe_holder(&self) -> String {
        match &self.ifname {
            Some(ifname) => format!("container {} ifname {ifname}", self.container_id),
            None => format!("container {}", self.container_id),
        }
    }
}

/// An open, exclusively locked network directory. The lock is released when
/// the store is dropped.
pub(crate) struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// The network name becomes a directory name, so it must not escape `data_dir`.
pub(crate) fn check_network_name(network: &str) -> Result<()> {
    if network.is_empty()
        || network == "."
        || network == ".."
        || network.contains('/')
        || network.contains('\0')
    {
        return Err(Error::config(
            format!(
                "network name {network:?} cannot be used as a store directory: use a non-empty name without '/' that is not '.' or '..'"
            ),
            "",
        ));
    }
    Ok(())
}

impl Store {
    /// Opens the network's store, creating the directory if needed.
    pub fn create(data_dir: &Path, network: &str) -> Result<Store> {
        check_network_name(network)?;
        let dir = data_dir.join(network);
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot create IPAM store directory {}: check that dataDir is writable",
                        dir.display()
                    ),
                    e,
                )
            })?;
        Self::lock_dir(dir, LOCK_TIMEOUT)
    }

    /// Opens an existing store; `None` when nothing was ever allocated.
    pub fn open_existing(data_dir: &Path, network: &str) -> Result<Option<Store>> {
        check_network_name(network)?;
        let dir = data_dir.join(network);
        if !dir.is_dir() {
            return Ok(None);
        }
        Self::lock_dir(dir, LOCK_TIMEOUT).map(Some)
    }

    pub(crate) fn lock_dir(dir: PathBuf, timeout: Duration) -> Result<Store> {
        let lock_path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&lock_path)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot open IPAM lock file {}: check that dataDir is writable",
                        lock_path.display()
                    ),
                    e,
                )
            })?;
        // Polling instead of a blocking flock bounds the wait, so a wedged
        // holder turns into a retryable error rather than a hung runtime. The
        // lock is held for well under a millisecond, so waiters poll often:
        // long sleeps left a few of 100 parallel ADDs waiting for seconds.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Store { dir, _lock: lock }),
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR)) => {
                    if Instant::now() >= deadline {
                        return Err(Error::new(
                            Code::TryAgainLater,
                            format!(
                                "IPAM store {} is locked by another process for more than {}s: retry later, or find the stuck CNI plugin holding {}",
                                dir.display(),
                                timeout.as_secs(),
                                lock_path.display()
                            ),
                            "",
                        ));
                    }
                    file = f;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(2));
                }
                Err((_, errno)) => {
                    return Err(Error::io(
                        format!("cannot lock IPAM lock file {}", lock_path.display()),
                        errno,
                    ));
                }
            }
        }
    }

    /// Every lease in the store, sorted by IP so results are deterministic.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let read_dir = fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("cannot list IPAM store {}", self.dir.display()), e))?;
        let mut entries = Vec::new();
        for dirent in read_dir {
            let dirent = dirent.map_err(|e| {
                Error::io(format!("cannot list IPAM store {}", self.dir.display()), e)
            })?;
            // Non-IP names are the lock, last_reserved_ip.N and foreign files.
            let Some(ip) = dirent
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let path = dirent.path();
            match fs::read_to_string(&path) {
                Ok(content) => {
                    let (container_id, ifname) = parse_owner(&content);
                    entries.push(Entry {
                        ip,
                        container_id,
                        ifname,
                    });
                }
                // A concurrent release without the lock (e.g. by hand) is harmless.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("cannot read IPAM lease file {}", path.display()),
                        e,
                    ));
                }
            }
        }
        entries.sort_by_key(|e| (e.ip.is_ipv6(), e.ip));
        Ok(entries)
    }

    /// Writes the lease file for `ip`. O_EXCL makes a double allocation
    /// impossible even if some writer ignores the lock; `Ok(false)` means the
    /// address is already taken.
    pub fn reserve(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => {
                return Err(Error::io(
                    format!("cannot create IPAM lease file {}", path.display()),
                    e,
                ));
            }
        };
        let content = format!("{}{LINE_BREAK}{ifname}", container_id.trim());
        if let Err(e) = file.write_all(content.as_bytes()) {
            // A lease file without an owner would leak the address forever.
            let _ = fs::remove_file(&path);
            return Err(Error::io(
                format!("cannot write IPAM lease file {}", path.display()),
                e,
            ));
        }
        Ok(true)
    }

    pub fn remove(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(
                format!("cannot remove IPAM lease file {}", path.display()),
                e,
            )),
        }
    }

    /// The round-robin cursor of range set `idx`; unreadable means "start over".
    pub fn last_reserved(&self, idx: usize) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}")))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    pub fn set_last_reserved(&self, idx: usize, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| {
                Error::io(
                    format!("cannot write IPAM cursor file {}", path.display()),
                    e,
                )
            })
    }
}

/// Splits a lease file into container id and ifname; a lone id is the legacy format.
fn parse_owner(content: &str) -> (String, Option<String>) {
    let content = content.trim();
    match content.split_once('\n') {
        Some((id, ifname)) => (id.trim().to_string(), Some(ifname.trim().to_string())),
        None => (content.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_formats() {
        assert_eq!(
            parse_owner("ctr1\r\neth0"),
            ("ctr1".to_string(), Some("eth0".to_string()))
        );
        assert_eq!(
            parse_owner("ctr1\neth0\n"),
            ("ctr1".to_string(), Some("eth0".to_string()))
        );
        assert_eq!(parse_owner(" ctr1 \n"), ("ctr1".to_string(), None));
    }

    #[test]
    fn network_names() {
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b"] {
            let err = check_network_name(bad).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig);
        }
        for good in ["podwire", "my.net", "..x", "net-1"] {
            check_network_name(good).unwrap();
        }
    }

    #[test]
    fn held_lock_times_out_with_try_again_later() {
        let tmp = tempfile::tempdir().unwrap();
        let held = Store::create(tmp.path(), "net").unwrap();
        let start = Instant::now();
        let err = match Store::lock_dir(tmp.path().join("net"), Duration::from_millis(200)) {
            Ok(_) => panic!("lock should be held"),
            Err(e) => e,
        };
        assert_eq!(err.code, Code::TryAgainLater);
        assert!(start.elapsed() >= Duration::from_millis(200));
        drop(held);
        Store::lock_dir(tmp.path().join("net"), Duration::from_millis(200)).unwrap();
    }

    #[test]
    fn reserve_is_exclusive_and_writes_host_local_format() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::create(tmp.path(), "net").unwrap();
        let ip: IpAddr = "fd00::5".parse().unwrap();
        assert!(store.reserve(ip, "ctr1", "eth0").unwrap());
        assert!(!store.reserve(ip, "ctr2", "eth0").unwrap());
        assert_eq!(
            fs::read_to_string(tmp.path().join("net/fd00::5")).unwrap(),
            "ctr1\r\neth0"
        );
        store.set_last_reserved(3, ip).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("net/last_reserved_ip.3")).unwrap(),
            "fd00::5"
        );
        assert_eq!(store.last_reserved(3), Some(ip));
        assert_eq!(store.last_reserved(0), None);
    }
}

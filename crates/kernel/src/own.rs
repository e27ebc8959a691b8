//! Which kernel changes are podwire's own: the netlink port ids of the
//! sockets this process opened and the pids of the `nft` programs it ran.
//!
//! Every nftables and rtnetlink notification carries, in its header's
//! `nlmsg_pid`, the port id of the socket whose request caused it. A
//! socket's port id is fixed when it is bound; an `nft` program's socket
//! is bound by the kernel to the program's pid (as this process sees it)
//! when that id is free. So a change is ours when its port id is one of
//! ours. Entries are kept for [`RETAIN`] after their socket closed or their
//! program exited, because notifications are judged a little after they
//! arrive (the agent's watcher collects a burst first).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a port id stays "ours" after its socket closed.
pub const RETAIN: Duration = Duration::from_secs(60);

struct Entry {
    portid: u32,
    /// None while the socket or program is alive.
    released: Option<Instant>,
    /// Sockets and programs register more than once per id over time.
    holders: usize,
}

static OWN: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn with<T>(f: impl FnOnce(&mut Vec<Entry>) -> T) -> T {
    let mut guard = match OWN.lock() {
        Ok(g) => g,
        // A panic elsewhere while holding the lock leaves a usable list.
        Err(poisoned) => poisoned.into_inner(),
    };
    f(&mut guard)
}

/// A registration: the port id counts as ours while this lives and for
/// [`RETAIN`] after it is dropped.
#[derive(Debug)]
pub struct OwnPort {
    portid: u32,
}

impl OwnPort {
    /// Registers `portid` (a bound socket's, or a child program's pid).
    pub fn register(portid: u32) -> OwnPort {
        let now = Instant::now();
        with(|list| {
            list.retain(|e| e.released.is_none_or(|t| now.duration_since(t) < RETAIN));
            match list.iter_mut().find(|e| e.portid == portid) {
                Some(e) => {
                    e.holders += 1;
                    e.released = None;
                }
                None => list.push(Entry {
                    portid,
                    released: None,
                    holders: 1,
                }),
            }
        });
        OwnPort { portid }
    }

    pub fn portid(&self) -> u32 {
        self.portid
    }
}

impl Drop for OwnPort {
    fn drop(&mut self) {
        let now = Instant::now();
        with(|list| {
            if let Some(e) = list.iter_mut().find(|e| e.portid == self.portid) {
                e.holders = e.holders.saturating_sub(1);
                if e.holders == 0 {
                    e.released = Some(now);
                }
            }
        });
    }
}

/// Whether a notification with this `nlmsg_pid` was caused by this process
/// (one of its sockets, or an `nft` it ran), now or within [`RETAIN`].
pub fn is_own(portid: u32) -> bool {
    if portid == 0 {
        // The kernel itself (e.g. routes removed with their device).
        return false;
    }
    let now = Instant::now();
    with(|list| {
        list.iter().any(|e| {
            e.portid == portid && e.released.is_none_or(|t| now.duration_since(t) < RETAIN)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_ours_while_registered_and_for_a_while_after() {
        let id = 0x7fff_0001;
        assert!(!is_own(id));
        let a = OwnPort::register(id);
        let b = OwnPort::register(id);
        assert!(is_own(id));
        drop(a);
        assert!(is_own(id), "still held");
        drop(b);
        assert!(is_own(id), "released just now: kept for RETAIN");
        assert!(!is_own(0), "the kernel's own changes are never ours");
    }
}

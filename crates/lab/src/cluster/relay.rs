//! The lab's API server as seen from the machine: a TCP relay on loopback
//! (127.0.0.1, a port the kernel picks) to kube-apiserver on the
//! control-plane node's address, which lives in a network namespace the
//! machine has no route to. The admin kubeconfig points at the relay, so a
//! user's own `kubectl` works without entering a namespace; nothing about
//! the machine's network changes (only a loopback socket is opened).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::error::{LabError, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running relay: its loopback address. Its threads end with the process.
pub struct Relay {
    pub local: SocketAddr,
}

/// Listens on 127.0.0.1 and relays every connection to `target` inside the
/// network namespace at `netns`.
pub fn start(netns: &Path, target: SocketAddr) -> Result<Relay> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| LabError::io("cannot open the API relay on 127.0.0.1", e))?;
    let local = listener
        .local_addr()
        .map_err(|e| LabError::io("the API relay's address", e))?;
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let netns = netns.clone();
            std::thread::spawn(move || {
                if let Err(e) = relay_one(client, &netns, target) {
                    tracing::debug!(%e, "API relay connection ended");
                }
            });
        }
    });
    Ok(Relay { local })
}

/// Connects from inside the namespace (this thread only enters it; the
/// socket stays there), then copies both ways until either side closes.
fn relay_one(client: TcpStream, netns: &Path, target: SocketAddr) -> std::io::Result<()> {
    let ns = File::open(netns)?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
    let upstream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let back = std::thread::spawn(move || pump(u2, c2));
    pump(client, upstream);
    let _ = back.join();
    Ok(())
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

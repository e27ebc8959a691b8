//! sysctls of the calling thread's network namespace (/proc/sys/net is per
//! namespace, resolved when the file is opened). Paths use slashes
//! (`net/ipv4/ip_forward`) because interface names may contain dots.

use std::io::Write;

use crate::{Error, Result};

/// Writes `value` unless the sysctl already holds it (a read is cheaper than
/// a write, which may take locks in the kernel).
pub fn ensure(path: &str, value: &str) -> Result<()> {
    let full = format!("/proc/sys/{path}");
    if let Ok(current) = std::fs::read_to_string(&full)
        && current.trim() == value
    {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&full)
        .map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })?;
    file.write_all(value.as_bytes())
        .map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })
}

pub fn read(path: &str) -> Result<String> {
    let full = format!("/proc/sys/{path}");
    std::fs::read_to_string(&full)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Sysctl {
            path: path.to_string(),
            source,
        })
}

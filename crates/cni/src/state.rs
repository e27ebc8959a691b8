//! What one attachment (container ID + interface) left on the host, kept on
//! disk so DEL and GC can undo exactly that even when the runtime passes
//! nothing but the container ID, and even after the namespace is gone.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netconf::PortMapping;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/podwire";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub host_veth: Option<String>,
    #[serde(default)]
    pub netid: String,
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// The container MAC the host port is locked to (`macspoofchk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spoof_mac: Option<String>,
}

/// The directory of one network's attachment records.
pub fn network_dir(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(network)
}

fn file(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    // ':' cannot appear in a container ID or an interface name.
    network_dir(state_dir, network).join(format!("{container_id}:{ifname}.json"))
}

pub fn save(state_dir: &Path, network: &str, att: &Attachment) -> Result<()> {
    let dir = network_dir(state_dir, network);
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::io(
            format!("cannot create state directory {}", dir.display()),
            e,
        )
    })?;
    let path = file(state_dir, network, &att.container_id, &att.ifname);
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(att)
        .map_err(|e| Error::internal("cannot encode attachment state", e))?;
    std::fs::write(&tmp, body)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

pub fn load(
    state_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Option<Attachment>> {
    let path = file(state_dir, network, container_id, ifname);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::io(format!("corrupt state file {}", path.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

pub fn remove(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let path = file(state_dir, network, container_id, ifname);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("cannot remove {}", path.display()), e)),
    }
}

/// Every attachment recorded for a network.
pub fn list(state_dir: &Path, network: &str) -> Result<Vec<Attachment>> {
    let dir = network_dir(state_dir, network);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(att) = serde_json::from_slice::<Attachment>(&bytes)
        {
            out.push(att);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let att = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            host_veth: Some("veth1".into()),
            netid: "n".into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            ip_masq: true,
            port_mappings: vec![],
            spoof_mac: None,
        };
        save(dir.path(), "net", &att).unwrap();
        assert_eq!(
            load(dir.path(), "net", "c1", "eth0").unwrap(),
            Some(att.clone())
        );
        assert_eq!(list(dir.path(), "net").unwrap(), vec![att]);
        remove(dir.path(), "net", "c1", "eth0").unwrap();
        remove(dir.path(), "net", "c1", "eth0").unwrap();
        assert!(load(dir.path(), "net", "c1", "eth0").unwrap().is_none());
        assert!(list(dir.path(), "other").unwrap().is_empty());
    }
}

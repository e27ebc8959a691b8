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

/// What is on disk for one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Found(Attachment),
    Missing,
    /// Unreadable or not an attachment (empty, truncated, garbage): DEL and
    /// GC must still undo what they can find another way.
    Corrupt(String),
}

/// Reads one attachment's record; never fails: a record that cannot be
/// read is reported as corrupt, so DEL can go on without it.
pub fn read(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Record {
    let path = file(state_dir, network, container_id, ifname);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(att) => Record::Found(att),
            Err(e) => Record::Corrupt(format!("{}: {e}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::Missing,
        Err(e) => Record::Corrupt(format!("{}: {e}", path.display())),
    }
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

/// Removes the record and the temporary file a kill during `save` leaves.
pub fn remove(state_dir: &Path, network: &str, container_id: &str, ifname: &str) -> Result<()> {
    let path = file(state_dir, network, container_id, ifname);
    for path in [path.with_extension("tmp"), path] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("cannot remove {}", path.display()), e)),
        }
    }
    Ok(())
}

/// One attachment found in a network's state directory, readable or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub container_id: String,
    pub ifname: String,
    /// `Missing` when only a temporary file exists.
    pub record: Record,
}

/// Every attachment with a record or a temporary file in the network's
/// directory, named by the file name so corrupt records are listed too.
pub fn scan(state_dir: &Path, network: &str) -> Result<Vec<Entry>> {
    let dir = network_dir(state_dir, network);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut out: Vec<Entry> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.rsplit_once('.') else {
            continue;
        };
        if ext != "json" && ext != "tmp" {
            continue;
        }
        let Some((container_id, ifname)) = stem.split_once(':') else {
            continue;
        };
        if out
            .iter()
            .any(|e| e.container_id == container_id && e.ifname == ifname)
        {
            continue;
        }
        out.push(Entry {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            record: read(state_dir, network, container_id, ifname),
        });
    }
    out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
    Ok(out)
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

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            host_veth: None,
            netid: "n".into(),
            ips: vec![],
            ip_masq: false,
            port_mappings: vec![],
            spoof_mac: None,
        }
    }

    #[test]
    fn corrupt_records_and_leftover_temporary_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "net", &att("good")).unwrap();
        let net = network_dir(dir.path(), "net");
        std::fs::write(net.join("empty:eth0.json"), b"").unwrap();
        std::fs::write(net.join("half:eth0.json"), b"{\"containerId\":").unwrap();
        std::fs::write(net.join("killed:eth0.tmp"), b"").unwrap();
        std::fs::write(net.join("good:eth0.tmp"), b"").unwrap();
        std::fs::write(net.join("stray-file"), b"").unwrap();
        assert_eq!(read(dir.path(), "net", "none", "eth0"), Record::Missing);
        assert!(matches!(
            read(dir.path(), "net", "empty", "eth0"),
            Record::Corrupt(_)
        ));
        let found = scan(dir.path(), "net").unwrap();
        let names: Vec<&str> = found.iter().map(|e| e.container_id.as_str()).collect();
        assert_eq!(names, vec!["empty", "good", "half", "killed"]);
        assert_eq!(found[1].record, Record::Found(att("good")));
        assert!(matches!(found[2].record, Record::Corrupt(_)));
        assert_eq!(found[3].record, Record::Missing);
        // Only the readable one is an attachment to `list`.
        assert_eq!(list(dir.path(), "net").unwrap(), vec![att("good")]);
        remove(dir.path(), "net", "good", "eth0").unwrap();
        remove(dir.path(), "net", "killed", "eth0").unwrap();
        let left: Vec<String> = scan(dir.path(), "net")
            .unwrap()
            .into_iter()
            .map(|e| e.container_id)
            .collect();
        assert_eq!(left, vec!["empty", "half"]);
    }
}

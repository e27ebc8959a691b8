//! A hosts file (`/etc/hosts` format) served as A, AAAA and PTR records,
//! reloaded when the file changes (the watcher compares size, mtime and
//! inode).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustc_hash::FxHashMap;

use crate::wire::{self, Owner, Query, Writer, rtype};
use crate::zone::reverse_name_ip;

/// The parsed entries.
#[derive(Debug, Default, Clone)]
pub struct Hosts {
    /// Lowercase wire name -> addresses in file order.
    by_name: FxHashMap<Box<[u8]>, Vec<IpAddr>>,
    /// Address -> canonical names (wire, in file order).
    by_ip: FxHashMap<IpAddr, Vec<Box<[u8]>>>,
}

impl Hosts {
    /// Parses hosts-file text: `IP name [aliases...]`, `#` comments. Lines
    /// with an unparseable address or name are skipped.
    pub fn parse(text: &str) -> Hosts {
        let mut hosts = Hosts::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words
                .next()
                .map(|w| w.split('%').next().unwrap_or(w).parse::<IpAddr>())
            else {
                continue;
            };
            for (position, name) in words.enumerate() {
                let Some(wire) =
                    wire::wire_from_text(&name.to_ascii_lowercase()).filter(|w| w.len() > 1)
                else {
                    continue;
                };
                let wire: Box<[u8]> = wire.into_boxed_slice();
                let ips = hosts.by_name.entry(wire.clone()).or_default();
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
                // PTR: the canonical name (first on its line), as glibc does.
                let names = hosts.by_ip.entry(ip).or_default();
                if position == 0 && !names.contains(&wire) {
                    names.push(wire);
                }
            }
        }
        hosts
    }

    /// The number of names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The addresses of a name (lowercase wire).
    pub fn lookup(&self, name: &[u8]) -> Option<&[IpAddr]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Answers from the file when it knows the name (or the address of a
    /// reverse name); false when it does not. A name it knows without
    /// records of the asked type is NODATA.
    pub fn answer(&self, q: &Query<'_>, ttl: u32, w: &mut Writer<'_>) -> bool {
        if let Some(ips) = self.by_name.get(q.name.wire()) {
            w.set_authoritative(true);
            for ip in ips {
                match (ip, q.qtype) {
                    (IpAddr::V4(v4), rtype::A | rtype::ANY) => w.a(Owner::Question, ttl, *v4),
                    (IpAddr::V6(v6), rtype::AAAA | rtype::ANY) => w.aaaa(Owner::Question, ttl, *v6),
                    _ => {}
                }
            }
            return true;
        }
        if let Some(ip) = reverse_name_ip(q.name.wire())
            && let Some(names) = self.by_ip.get(&ip)
        {
            w.set_authoritative(true);
            if matches!(q.qtype, rtype::PTR | rtype::ANY) {
                for name in names {
                    w.name_record(Owner::Question, rtype::PTR, ttl, None, name);
                }
            }
            return true;
        }
        false
    }
}

/// What identifies a version of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// Reads a file's stamp; None when it does not exist.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

/// A hosts file and the stamp of the version loaded.
#[derive(Debug)]
pub struct HostsFile {
    pub path: PathBuf,
    loaded: Option<Option<FileStamp>>,
}

impl HostsFile {
    pub fn new(path: PathBuf) -> HostsFile {
        HostsFile { path, loaded: None }
    }

    /// Re-reads the file when it changed since the last call (or was never
    /// read); a missing file is an empty one.
    pub fn reload_if_changed(&mut self) -> Option<Hosts> {
        let now = stamp(&self.path);
        if self.loaded.as_ref() == Some(&now) {
            return None;
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) => {
                if now.is_some() {
                    tracing::warn!("cannot read hosts file {}: {err}", self.path.display());
                }
                String::new()
            }
        };
        self.loaded = Some(now);
        let hosts = Hosts::parse(&text);
        tracing::info!("hosts file {}: {} names", self.path.display(), hosts.len());
        Some(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_files() {
        let h = Hosts::parse(
            "127.0.0.1 localhost\n# c\n192.0.2.7 Printer.LAN printer # office\n2001:db8::7 printer.lan\nbogus line\n192.0.2.8 bad..name ok\n",
        );
        let name = wire::wire_from_text("printer.lan").unwrap();
        assert_eq!(
            h.lookup(&name).unwrap(),
            &[
                "192.0.2.7".parse::<IpAddr>().unwrap(),
                "2001:db8::7".parse().unwrap()
            ]
        );
        assert!(h.lookup(&wire::wire_from_text("ok").unwrap()).is_some());
        assert_eq!(h.len(), 4);
        assert_eq!(
            h.by_ip[&"192.0.2.7".parse::<IpAddr>().unwrap()].len(),
            1,
            "aliases get no PTR"
        );
    }
}

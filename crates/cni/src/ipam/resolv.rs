//! resolv.conf parsing for host-local's `resolvConf` option, which fills the
//! DNS section of the CNI result from a file on the node.

use std::path::Path;

use crate::error::{Error, Result};

/// The DNS settings of a CNI result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Parses a resolv.conf-format file (as host-local's resolvConf option does).
pub fn read_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!(
                "cannot read resolvConf file {}: fix the ipam \"resolvConf\" path or create the file",
                path.display()
            ),
            e,
        )
    })?;
    Ok(parse_resolv_conf(&text))
}

/// Mirrors host-local: unknown keywords and lines without a value are ignored,
/// and a later `domain` wins.
fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [key, values @ ..] = fields.as_slice() else {
            continue;
        };
        if values.is_empty() {
            continue;
        }
        let owned = || values.iter().map(|s| s.to_string());
        match *key {
            "nameserver" => dns.nameservers.push(values[0].to_string()),
            "domain" => dns.domain = Some(values[0].to_string()),
            "search" => dns.search.extend(owned()),
            "options" => dns.options.extend(owned()),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn parses_like_host_local() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\n; other comment\nnameserver 10.0.0.10\n  nameserver   fd00::10 \n\
             domain a.example\ndomain cluster.local\nsearch svc.cluster.local cluster.local\n\
             search example.com\noptions ndots:5 edns0\nsortlist 10.0.0.0\nnameserver\n",
        )
        .unwrap();
        let dns = read_resolv_conf(&path).unwrap();
        assert_eq!(
            dns,
            Dns {
                nameservers: vec!["10.0.0.10".into(), "fd00::10".into()],
                domain: Some("cluster.local".into()),
                search: vec![
                    "svc.cluster.local".into(),
                    "cluster.local".into(),
                    "example.com".into()
                ],
                options: vec!["ndots:5".into(), "edns0".into()],
            }
        );
    }

    #[test]
    fn missing_file_is_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_resolv_conf(&tmp.path().join("nope")).unwrap_err();
        assert_eq!(err.code, Code::Io);
        assert!(err.msg.contains("resolvConf"));
    }
}

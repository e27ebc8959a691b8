//! Installing podwire as a node's CNI plugin, as Flannel's and Calico's
//! install steps do: the binary in the runtime's plugin directory (with the
//! chained plugin names as links to it) and the node's network
//! configuration in its config directory. Each file is written to a
//! temporary name and renamed, so a runtime never reads half a file, and
//! left alone when it already holds the same bytes.
//!
//! The IPAM has host-local's options and on-disk layout (default data dir
//! `/var/lib/cni/networks/<name>`), so a node that switches from the
//! reference plugins keeps its leases.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

/// The conflist's file name: sorts before most others, as the first one
/// found is the one a runtime uses.
pub const CONFLIST_FILE: &str = "10-podwire.conflist";
/// The network's name (the IPAM data directory is named after it).
pub const NETWORK_NAME: &str = "podnet";
/// The plugin names a runtime may execute, all this one binary.
pub const PLUGIN_NAMES: [&str; 3] = ["podwire", "podwire-portmap", "podwire-loopback"];

/// What a node's configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The node's pod slices, one per IP family (Node.spec.podCIDRs).
    pub pod_cidrs: Vec<IpNet>,
    /// The pods' MTU (the overlay's, with VXLAN).
    pub mtu: u32,
    /// Where the IPAM keeps its leases; None: host-local's default.
    pub ipam_data_dir: Option<PathBuf>,
}

/// The node's conflist (pure). Masquerade is the node agent's job (as with
/// Flannel), so the plugin adds none; hairpin lets a pod reach itself
/// through a Service; port mappings are offered to runtimes that use them.
pub fn conflist(net: &NodeNetwork) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = net
        .pod_cidrs
        .iter()
        .map(|c| json!([{"subnet": c.trunc().to_string()}]))
        .collect();
    let mut ipam = json!({"type": "podwire", "ranges": ranges});
    if let Some(dir) = &net.ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK_NAME,
        "plugins": [{
            "type": "podwire",
            "bridge": "cni0",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "mtu": net.mtu,
            "capabilities": {"portMappings": true},
            "ipam": ipam,
        }],
    })
}

/// Replaces `path` with `bytes` through a temporary file in the same
/// directory; Ok(false) when it already held them.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Writes the node's conflist into `conf_dir`; Ok(true) when it changed.
pub fn install_conflist(conf_dir: &Path, net: &NodeNetwork) -> std::io::Result<bool> {
    let mut text = serde_json::to_vec_pretty(&conflist(net)).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_if_changed(&conf_dir.join(CONFLIST_FILE), &text, 0o644)
}

/// Copies the binary `exe` into `bin_dir` as `podwire` and points the other
/// plugin names at it; Ok(true) when anything changed.
pub fn install_binary(exe: &Path, bin_dir: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(bin_dir)?;
    let mut changed = copy_if_newer(exe, &bin_dir.join(PLUGIN_NAMES[0]))?;
    for name in &PLUGIN_NAMES[1..] {
        let link = bin_dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(PLUGIN_NAMES[0])) {
            continue;
        }
        let tmp = bin_dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(PLUGIN_NAMES[0], &tmp)?;
        std::fs::rename(&tmp, &link)?;
        changed = true;
    }
    Ok(changed)
}

/// Copies `src` to `dst` (temp file + rename: a runtime never executes a
/// half-written plugin) unless `dst` already has its size and is at least
/// as new, as after a restart of the same agent: no need to read a binary
/// of tens of megabytes on every start.
fn copy_if_newer(src: &Path, dst: &Path) -> std::io::Result<bool> {
    let from = std::fs::metadata(src)?;
    if let Ok(to) = std::fs::metadata(dst)
        && to.len() == from.len()
        && let (Ok(src_time), Ok(dst_time)) = (from.modified(), to.modified())
        && dst_time >= src_time
    {
        return Ok(false);
    }
    let name = dst.file_name().and_then(|n| n.to_str()).unwrap_or("plugin");
    let tmp = dst.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::copy(src, &tmp)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&tmp, dst)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_a_range_per_family_and_host_local_layout() {
        let net = NodeNetwork {
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:10:244:1::/64".parse().unwrap(),
            ],
            mtu: 1450,
            ipam_data_dir: None,
        };
        let c = conflist(&net);
        assert_eq!(c["name"], NETWORK_NAME);
        let plugin = &c["plugins"][0];
        assert_eq!(plugin["mtu"], 1450);
        assert_eq!(plugin["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(
            plugin["ipam"]["ranges"][1][0]["subnet"],
            "fd00:10:244:1::/64"
        );
        assert!(
            plugin["ipam"].get("dataDir").is_none(),
            "host-local's default"
        );
        // The plugin's own parser accepts it.
        let text = serde_json::to_vec(&plugin).unwrap();
        let mut conf: serde_json::Value = serde_json::from_slice(&text).unwrap();
        conf["cniVersion"] = c["cniVersion"].clone();
        conf["name"] = c["name"].clone();
        assert!(crate::netconf::NetConf::parse(&serde_json::to_vec(&conf).unwrap()).is_ok());
    }

    #[test]
    fn installs_atomically_and_only_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let net = NodeNetwork {
            pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
            mtu: 1500,
            ipam_data_dir: None,
        };
        let conf = dir.path().join("net.d");
        assert!(install_conflist(&conf, &net).unwrap());
        assert!(!install_conflist(&conf, &net).unwrap(), "same content");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(conf.join(CONFLIST_FILE)).unwrap()).unwrap();
        assert_eq!(written, conflist(&net));
        assert_eq!(
            std::fs::read_dir(&conf).unwrap().count(),
            1,
            "no temp file left"
        );

        let exe = dir.path().join("exe");
        std::fs::write(&exe, b"binary").unwrap();
        let bin = dir.path().join("bin");
        assert!(install_binary(&exe, &bin).unwrap());
        assert!(!install_binary(&exe, &bin).unwrap());
        assert_eq!(
            std::fs::read(bin.join("podwire-portmap")).unwrap(),
            b"binary"
        );
    }
}

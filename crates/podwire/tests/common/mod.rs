//! Test harness shared by the CNI integration tests: throwaway network
//! namespaces (removed on drop, even when a test fails), and running a CNI
//! plugin binary exactly as a runtime does (environment + netconf on stdin),
//! inside an isolated "host" namespace so the machine's own is never touched.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use podwire_testsupport::TempDir;
use serde_json::Value;

/// The podwire binary under test.
pub fn podwire() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podwire"))
}

/// The reference plugins (Debian's containernetworking-plugins).
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn reference_available() -> bool {
    Path::new(REFERENCE_DIR).join("bridge").is_file()
        && Path::new(REFERENCE_DIR).join("host-local").is_file()
}

/// A network namespace that exists for the life of the value (the guard
/// is podwire-testsupport's: it also kills what still runs inside).
pub struct Netns {
    pub name: String,
    netns: podwire_testsupport::Netns,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let netns = podwire_testsupport::Netns::with_prefix("pwt", tag);
        Netns {
            name: netns.name().to_string(),
            netns,
        }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        self.netns.sh(cmd)
    }

    /// Runs a shell command inside the namespace and returns its stdout;
    /// panics with the command's stderr when it fails.
    pub fn ok(&self, cmd: &str) -> String {
        self.netns.ok(cmd)
    }

    /// A Command that will run inside this namespace (setns before exec, so
    /// no extra process is spawned, as a runtime does it).
    pub fn command(&self, program: &Path) -> Command {
        self.netns.command(program)
    }
}

/// What a plugin invocation printed and returned.
#[derive(Debug)]
pub struct PluginOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl PluginOutput {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / stderr {}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The spec error code of a failed call.
    pub fn error_code(&self) -> u64 {
        assert_ne!(
            self.code, 0,
            "expected a failure, got success: {}",
            self.stdout
        );
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.stdout))
    }

    /// Panics with everything the plugin said unless it succeeded.
    pub fn expect_ok(self, what: &str) -> PluginOutput {
        assert_eq!(
            self.code, 0,
            "{what} failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One CNI call: the environment a runtime would set.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub cni_path: String,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str, cni_path: &Path) -> Call {
        Call {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: String::new(),
            cni_path: cni_path.display().to_string(),
        }
    }

    /// Runs `program` in `host` with this environment and `stdin`.
    pub fn run(&self, program: &Path, host: &Netns, stdin: &str) -> PluginOutput {
        let mut cmd = host.command(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in [
            ("CNI_COMMAND", &self.command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.cni_path),
        ] {
            if !value.is_empty() {
                cmd.env(key, value);
            }
        }
        let mut child = cmd.spawn().expect("spawn plugin");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for plugin");
        PluginOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

/// An isolated host namespace, a CNI_PATH holding the podwire plugin types
/// (symlinks to the binary under test) and a scratch directory for IPAM data.
pub struct World {
    pub host: Netns,
    pub cni_dir: TempDir,
    pub data: TempDir,
}

impl World {
    pub fn new(tag: &str) -> World {
        let host = Netns::new(&format!("{tag}-h"));
        let cni_dir = TempDir::new("cni-bin");
        for name in ["podwire", "podwire-portmap", "podwire-loopback"] {
            std::os::unix::fs::symlink(podwire(), cni_dir.path().join(name))
                .expect("symlink plugin");
        }
        // Reference plugins are reachable too, for delegation and comparison.
        if reference_available() {
            for name in ["bridge", "host-local", "portmap", "loopback", "static"] {
                let src = Path::new(REFERENCE_DIR).join(name);
                if src.is_file() {
                    let _ = std::os::unix::fs::symlink(&src, cni_dir.path().join(name));
                }
            }
        }
        World {
            host,
            cni_dir,
            data: TempDir::new("cni-data"),
        }
    }

    pub fn data_dir(&self) -> String {
        self.data.path().display().to_string()
    }

    pub fn call(&self, command: &str, container_id: &str, netns: &str) -> Call {
        Call::new(command, container_id, netns, self.cni_dir.path())
    }

    /// Runs the plugin named by the netconf's type from this world's CNI_PATH.
    pub fn run(&self, call: &Call, netconf: &Value) -> PluginOutput {
        let kind = netconf["type"].as_str().unwrap_or("podwire");
        call.run(
            &self.cni_dir.path().join(kind),
            &self.host,
            &netconf.to_string(),
        )
    }

    /// Files of the IPAM store of `network` (IP files only).
    pub fn ip_files(&self, network: &str) -> Vec<String> {
        let dir = self.data.path().join(network);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Links in the host namespace whose name starts with `prefix`.
    pub fn host_links(&self, prefix: &str) -> Vec<String> {
        self.host
            .ok("ip -o link show")
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }

    /// Number of elements in the podwire-cni table's maps (0 if absent).
    pub fn nft_elements(&self) -> usize {
        let out = self.host.sh("nft -j list table inet podwire-cni");
        if !out.status.success() {
            return 0;
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.get("map").or_else(|| i.get("set")))
                    .map(|m| m["elem"].as_array().map(|e| e.len()).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// A podwire netconf for the bridge plugin with in-process IPAM.
pub fn podwire_conf(
    version: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &str,
) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": name,
        "type": "podwire",
        "bridge": bridge,
        "isGateway": true,
        "ipam": {"type": "podwire", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    })
}

/// The same network for the reference bridge + host-local.
pub fn reference_conf(
    version: &str,
    name: &str,
    bridge: &str,
    subnet: &str,
    data_dir: &str,
) -> Value {
    serde_json::json!({
        "cniVersion": version,
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir},
    })
}

/// Returns `true` when the tests can run (root, iproute2, nft).
pub fn can_run() -> bool {
    nix::unistd::Uid::effective().is_root()
}

// ---------------------------------------------------------------------------
// Helpers for cni_protocol.rs, cni_conformance.rs and cni_options.rs
// (appended block; everything lives in `kstate` so names cannot clash).
// ---------------------------------------------------------------------------

/// Reading real kernel state back (`ip -j`, `nft -j`, `bridge -j`), host
/// snapshots for "nothing changed", bounded polling, background processes
/// that die with the test, and a runtime's conflist loop.
pub mod kstate {
    use super::{Call, Netns, PluginOutput, World};
    use serde_json::Value;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    /// Parses the JSON printed by `cmd` run in `ns` (`Null` for no output).
    pub fn json(ns: &Netns, cmd: &str) -> Value {
        let out = ns.ok(cmd);
        if out.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`{cmd}` printed no JSON ({e}): {out}"))
    }

    /// `ip -j -d link show dev NAME`, or `None` when the link does not exist.
    pub fn link(ns: &Netns, name: &str) -> Option<Value> {
        let out = ns.sh(&format!("ip -j -d link show dev {name}"));
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array().and_then(|a| a.first().cloned())
    }

    /// Every link name in `ns`, sorted.
    pub fn link_names(ns: &Netns) -> Vec<String> {
        let mut names: Vec<String> = json(ns, "ip -j link show")
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether the link's flags contain `flag` (e.g. "UP", "PROMISC").
    pub fn has_flag(link: &Value, flag: &str) -> bool {
        link["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == flag))
    }

    /// The `addr_info` entries of `dev` in `ns`.
    pub fn addr_info(ns: &Netns, dev: &str) -> Vec<Value> {
        json(ns, &format!("ip -j addr show dev {dev}"))
            .get(0)
            .and_then(|l| l["addr_info"].as_array().cloned())
            .unwrap_or_default()
    }

    /// `address/prefix` of every global-scope address on `dev`, sorted.
    pub fn global_addrs(ns: &Netns, dev: &str) -> Vec<String> {
        let mut out: Vec<String> = addr_info(ns, dev)
            .iter()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect();
        out.sort();
        out
    }

    /// The routing table of `ns` (`family` is "-4" or "-6") with only the
    /// fields that describe the route (dst, gateway, dev, scope, protocol,
    /// prefsrc), sorted, so two tables can be compared. IPv6 link-local
    /// routes are left out: the kernel adds them by itself once a link's
    /// carrier is seen, which may lag under load.
    pub fn routes(ns: &Netns, family: &str) -> Vec<Value> {
        let mut out: Vec<Value> = json(ns, &format!("ip -j {family} route show"))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| !r["dst"].as_str().unwrap_or("").starts_with("fe80:"))
            .map(|r| {
                let mut m = serde_json::Map::new();
                for key in ["dst", "gateway", "dev", "scope", "protocol", "prefsrc"] {
                    if let Some(v) = r.get(key) {
                        m.insert(key.into(), v.clone());
                    }
                }
                Value::Object(m)
            })
            .collect();
        out.sort_by_key(|r| r.to_string());
        out
    }

    /// The elements of one map of the `inet podwire-cni` table, each as
    /// compact JSON text (empty when the table or map is absent).
    pub fn nft_map(ns: &Netns, map: &str) -> Vec<String> {
        let out = ns.sh(&format!("nft -j list map inet podwire-cni {map}"));
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("map"))
            .flat_map(|m| m["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| e.to_string())
            .collect()
    }

    /// The elements of a set or map `name` of table `family podwire-cni`
    /// (e.g. "bridge", "spoof_ports"), each as compact JSON text.
    pub fn nft_set(ns: &Netns, family: &str, name: &str) -> Vec<String> {
        let out = ns.sh(&format!("nft -j list set {family} podwire-cni {name}"));
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("set"))
            .flat_map(|m| m["elem"].as_array().cloned().unwrap_or_default())
            .map(|e| e.to_string())
            .collect()
    }

    /// Every directory (`name/`) and file (`name = "content"`) under `root`,
    /// relative, sorted.
    pub fn tree(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in rd.flatten() {
                let path = entry.path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                if path.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &path, out);
                } else {
                    let body = std::fs::read(&path).unwrap_or_default();
                    out.push(format!("{rel} = {:?}", String::from_utf8_lossy(&body)));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    /// What a failed command must not have changed: the host namespace's
    /// links, addresses and nftables ruleset, the data directory's files and
    /// the pod's links.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Snapshot {
        pub host_links: Vec<String>,
        pub host_addrs: String,
        pub ruleset: String,
        pub files: Vec<String>,
        pub pod_links: Vec<String>,
    }

    /// Every address in `ns` as `ifname address/prefix`, sorted, without
    /// what the kernel changes on its own: flags and lifetimes (e.g.
    /// "tentative" while IPv6 DAD runs) and IPv6 link-local addresses, which
    /// autoconf adds once a link's carrier is seen (linkwatch may take a
    /// second under load).
    pub fn addresses(ns: &Netns) -> String {
        let mut out: Vec<String> = json(ns, "ip -j addr show")
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|link| {
                let name = link["ifname"].as_str().unwrap_or("").to_string();
                link["addr_info"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| !(a["family"] == "inet6" && a["scope"] == "link"))
                    .map(move |a| {
                        format!(
                            "{name} {}/{}",
                            a["local"].as_str().unwrap_or(""),
                            a["prefixlen"]
                        )
                    })
            })
            .collect();
        out.sort();
        out.join("\n")
    }

    pub fn snapshot(world: &World, pod: &Netns) -> Snapshot {
        Snapshot {
            host_links: link_names(&world.host),
            host_addrs: addresses(&world.host),
            ruleset: world.host.ok("nft list ruleset"),
            files: tree(world.data.path()),
            pod_links: link_names(pod),
        }
    }

    /// Polls `f` every 20 ms until it returns true or `timeout` passes.
    pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
        podwire_testsupport::eventually(timeout, f)
    }

    /// Runs `cmd` in `ns` until it succeeds, at most `tries` times (each
    /// command bounds its own wait, e.g. `ping -W1`); panics with the last
    /// output otherwise.
    pub fn retry_ok(ns: &Netns, cmd: &str, tries: usize) -> String {
        let mut last = None;
        for _ in 0..tries {
            let out = ns.sh(cmd);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).to_string();
            }
            last = Some(out);
        }
        let out = last.expect("at least one try");
        panic!(
            "`{cmd}` in {} failed {tries} times: {}{}",
            ns.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A background process in a namespace, killed and reaped on drop.
    pub struct Background {
        pub child: Option<Child>,
    }

    impl Background {
        /// Starts `sh -c cmd` in `ns` with stdout captured.
        pub fn start(ns: &Netns, cmd: &str) -> Background {
            let child = Command::new("ip")
                .args(["netns", "exec", &ns.name, "sh", "-c", cmd])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn background process");
            Background { child: Some(child) }
        }

        /// Waits (bounded) for the process to exit and returns its stdout.
        pub fn finish(mut self, timeout: Duration) -> String {
            let mut child = self.child.take().expect("child");
            let exited = wait_until(timeout, || matches!(child.try_wait(), Ok(Some(_))));
            if !exited {
                let _ = child.kill();
            }
            let out = child.wait_with_output().expect("wait background");
            assert!(
                exited,
                "background process did not exit in {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    }

    impl Drop for Background {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                // `ip netns exec` execs sh, which runs the command as its
                // child: kill the whole process group we can see.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The system python3 (a version manager's shim may not work in every
    /// environment the tests run in).
    pub fn python() -> &'static str {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    /// A TCP server on `port` in `ns` that accepts one connection, answers
    /// "pong", prints the client's address and exits (after 20 s at most).
    /// Returns once the port is listening.
    pub fn tcp_serve_once(ns: &Netns, port: u16) -> Background {
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.bind(('::', {port}))\n\
             s.listen(1)\n\
             s.settimeout(20)\n\
             c, a = s.accept()\n\
             c.sendall(b'pong')\n\
             c.close()\n\
             print(a[0].removeprefix('::ffff:'), flush=True)\n"
        );
        let bg = Background::start(ns, &format!("exec {} -c \"{script}\"", python()));
        let listening = wait_until(Duration::from_secs(10), || {
            !ns.ok(&format!("ss -Htln 'sport = :{port}'"))
                .trim()
                .is_empty()
        });
        assert!(listening, "nothing listens on port {port} in {}", ns.name);
        bg
    }

    /// Connects to `addr`:`port` from `ns` (3 s timeout) and returns what
    /// the server sent, or the error text.
    pub fn tcp_request(ns: &Netns, addr: &str, port: u16) -> String {
        let out = ns.sh(&format!(
            "exec {} -c \"import socket; s = socket.create_connection(('{addr}', {port}), timeout=3); print(s.recv(16).decode())\"",
            python()
        ));
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        } else {
            format!("error: {}", String::from_utf8_lossy(&out.stderr).trim())
        }
    }

    /// A runtime's ADD of a conflist (libcni's rules): each plugin gets the
    /// list's name and cniVersion, the previous plugin's result as
    /// prevResult, and runtimeConfig only for the capabilities it declares.
    /// Returns the last result, or the failing plugin's output.
    pub fn conflist_add(
        world: &World,
        call: &Call,
        conflist: &Value,
        runtime_config: &Value,
    ) -> Result<Value, PluginOutput> {
        let mut prev: Option<Value> = None;
        for plugin in conflist["plugins"].as_array().expect("plugins") {
            let conf = plugin_conf(conflist, plugin, runtime_config, prev.as_ref());
            let out = world.run(call, &conf);
            if !out.success() {
                return Err(out);
            }
            prev = Some(out.json());
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// A runtime's DEL of a conflist: plugins in reverse order, each given
    /// the cached result of the ADD as prevResult.
    pub fn conflist_del(
        world: &World,
        call: &Call,
        conflist: &Value,
        runtime_config: &Value,
        cached: Option<&Value>,
    ) -> Result<(), PluginOutput> {
        for plugin in conflist["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .rev()
        {
            let conf = plugin_conf(conflist, plugin, runtime_config, cached);
            let out = world.run(call, &conf);
            if !out.success() {
                return Err(out);
            }
        }
        Ok(())
    }

    /// One plugin's netconf inside a conflist, as libcni builds it.
    pub fn plugin_conf(
        conflist: &Value,
        plugin: &Value,
        runtime_config: &Value,
        prev: Option<&Value>,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        let mut rc = serde_json::Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(value) = runtime_config.get(cap)
                {
                    rc.insert(cap.clone(), value.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }
}

// ===== BEGIN robustness/portmap helpers (cni_robustness.rs, cni_portmap.rs) =====
// Appended as one block; everything lives in `rp` so names cannot clash with
// other additions to this file.

/// Helpers for the robustness and port-mapping tests: child processes that
/// are killed on drop, bounded polling, host snapshots, a deterministic PRNG.
pub mod rp {
    use super::{Call, PluginOutput, World};
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Calls `check` up to `tries` times, `pause` apart, until it is true.
    pub fn wait_for(tries: u32, pause: Duration, mut check: impl FnMut() -> bool) -> bool {
        for i in 0..tries {
            if check() {
                return true;
            }
            if i + 1 < tries {
                std::thread::sleep(pause);
            }
        }
        false
    }

    /// A child process in its own process group, SIGKILLed (group and all)
    /// and reaped on drop. The child is only reaped at the very end, so its
    /// pid (= the group id) cannot be reused while the group is signalled.
    pub struct ChildGuard {
        child: Option<Child>,
        out: Option<std::thread::JoinHandle<Vec<u8>>>,
        err: Option<std::thread::JoinHandle<Vec<u8>>>,
    }

    /// Whether `pid` (our child) has ended, without reaping it.
    fn ended(pid: u32) -> bool {
        // SAFETY: waitid with WNOWAIT only reads the child's state into a
        // zeroed siginfo_t that we own.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            );
            rc != 0 || info.si_pid() != 0
        }
    }

    impl ChildGuard {
        /// Spawns `cmd` (made its own process group) with stdout and stderr
        /// drained by threads, writing `stdin` (if any) and closing it.
        pub fn spawn(mut cmd: Command, stdin: Option<&[u8]>) -> ChildGuard {
            cmd.process_group(0)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn child");
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                let _ = pipe.write_all(data);
            }
            let drain = |pipe: Option<Box<dyn Read + Send>>| {
                pipe.map(|mut p| {
                    std::thread::spawn(move || {
                        let mut buf = Vec::new();
                        let _ = p.read_to_end(&mut buf);
                        buf
                    })
                })
            };
            let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
            let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
            ChildGuard {
                child: Some(child),
                out,
                err,
            }
        }

        pub fn id(&self) -> u32 {
            self.child.as_ref().map(Child::id).unwrap_or(0)
        }

        /// Whether the process is still running.
        pub fn running(&self) -> bool {
            self.child.as_ref().is_some_and(|c| !ended(c.id()))
        }

        /// SIGKILLs the process group (the child and anything it started).
        pub fn kill(&mut self) {
            if let Some(child) = &self.child {
                let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
        }

        /// Waits at most `timeout` for the child to end; `None` (after killing
        /// it) when it did not, else its status, stdout and stderr. Whatever
        /// the child left running in its group is killed either way.
        pub fn wait_timeout(
            &mut self,
            timeout: Duration,
        ) -> Option<(std::process::ExitStatus, Vec<u8>, Vec<u8>)> {
            let pid = self.child.as_ref()?.id();
            let deadline = Instant::now() + timeout;
            let mut pause = Duration::from_millis(1);
            let finished = loop {
                if ended(pid) {
                    break true;
                }
                if Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            };
            // The leader is a zombie or alive: its group id is still ours.
            self.kill();
            let status = self.child.take()?.wait().ok()?;
            let out = self.out.take().and_then(|h| h.join().ok());
            let err = self.err.take().and_then(|h| h.join().ok());
            finished.then(|| (status, out.unwrap_or_default(), err.unwrap_or_default()))
        }

        /// As `wait_timeout`, as a PluginOutput (code -1 for a signal); panics
        /// when the process is still running after `timeout`.
        pub fn output(&mut self, timeout: Duration, what: &str) -> PluginOutput {
            let (status, out, err) = self
                .wait_timeout(timeout)
                .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"));
            PluginOutput {
                code: status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out).to_string(),
                stderr: String::from_utf8_lossy(&err).to_string(),
            }
        }
    }

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            if self.child.is_some() {
                self.kill();
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
    }

    /// A Command for `program` that runs inside the namespace at `netns_path`.
    pub fn command_in(netns_path: &str, program: &Path) -> Command {
        podwire_testsupport::command_in(Path::new(netns_path), program)
    }

    /// Starts the plugin named by the netconf's type in `world`'s host
    /// namespace without waiting for it. `path_prefix` goes in front of PATH
    /// (to put stand-ins for tools the plugin runs first in line).
    pub fn spawn_plugin(
        world: &World,
        call: &Call,
        stdin: &[u8],
        kind: &str,
        path_prefix: Option<&Path>,
    ) -> ChildGuard {
        let mut cmd = command_in(&world.host.path(), &world.cni_dir.path().join(kind));
        let path = std::env::var("PATH").unwrap_or_default();
        let path = match path_prefix {
            Some(prefix) => format!("{}:{path}", prefix.display()),
            None => path,
        };
        cmd.env_clear().env("PATH", path);
        for (key, value) in [
            ("CNI_COMMAND", &call.command),
            ("CNI_CONTAINERID", &call.container_id),
            ("CNI_NETNS", &call.netns),
            ("CNI_IFNAME", &call.ifname),
            ("CNI_ARGS", &call.args),
            ("CNI_PATH", &call.cni_path),
        ] {
            if !value.is_empty() {
                cmd.env(key, value);
            }
        }
        ChildGuard::spawn(cmd, Some(stdin))
    }

    /// The attachment records of `network` (`<dataDir>/podwire-state/<network>`).
    pub fn state_files(world: &World, network: &str) -> Vec<String> {
        let dir = world.data.path().join("podwire-state").join(network);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Names of the links enslaved to `bridge` in the world's host namespace.
    pub fn bridge_ports(world: &World, bridge: &str) -> Vec<String> {
        let out = world.host.sh(&format!("ip -j link show master {bridge}"));
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let mut names: Vec<String> = v
            .as_array()
            .map(|links| {
                links
                    .iter()
                    .filter_map(|l| l["ifname"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Whether the podwire-cni table exists in the world's host namespace.
    pub fn nft_table_exists(world: &World) -> bool {
        world
            .host
            .sh("nft list table inet podwire-cni")
            .status
            .success()
    }

    /// The links, addresses and routes of `ns`, one per line, without what
    /// the kernel changes by itself (operational state, IPv6 link-local
    /// addresses and their routes, counters), so two snapshots differ only when something was changed.
    pub fn ns_snapshot(ns: &super::Netns) -> String {
        let json = |cmd: &str| -> Vec<serde_json::Value> {
            serde_json::from_str::<serde_json::Value>(&ns.ok(cmd))
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        };
        let mut lines = Vec::new();
        for link in json("ip -j -d link show") {
            let up = link["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP"));
            lines.push(format!(
                "link {} kind={} master={} mtu={} up={up} mac={}",
                link["ifname"].as_str().unwrap_or(""),
                link["linkinfo"]["info_kind"].as_str().unwrap_or(""),
                link["master"].as_str().unwrap_or(""),
                link["mtu"],
                link["address"].as_str().unwrap_or(""),
            ));
        }
        for link in json("ip -j addr show") {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                // IPv6 link-local addresses come and go with DAD.
                if a["family"] == "inet6" && a["scope"] == "link" {
                    continue;
                }
                lines.push(format!(
                    "addr {} {}/{} scope={}",
                    link["ifname"].as_str().unwrap_or(""),
                    a["local"].as_str().unwrap_or(""),
                    a["prefixlen"],
                    a["scope"].as_str().unwrap_or(""),
                ));
            }
        }
        for family in ["-4", "-6"] {
            for r in json(&format!("ip -j {family} route show table all")) {
                let field = |k: &str| r.get(k).map(|v| v.to_string()).unwrap_or_default();
                // The kernel's own routes for link-local addresses, added
                // once DAD completes.
                if r["dst"].as_str().is_some_and(|d| d.starts_with("fe80:")) {
                    continue;
                }
                lines.push(format!(
                    "route {family} type={} dst={} gw={} dev={} table={} proto={}",
                    field("type"),
                    field("dst"),
                    field("gateway"),
                    field("dev"),
                    field("table"),
                    field("protocol"),
                ));
            }
        }
        lines.sort();
        lines.join("\n")
    }

    /// Everything on the host a plugin call could change: links, addresses,
    /// routes, the whole nftables ruleset (host namespace) and every file
    /// under the world's data directory with its content.
    pub fn host_snapshot(world: &World) -> String {
        let mut s = ns_snapshot(&world.host);
        s.push_str(&format!(
            "\n## nft list ruleset\n{}",
            world.host.ok("nft list ruleset")
        ));
        s.push_str("\n## files\n");
        let mut files = Vec::new();
        walk(world.data.path(), &mut files);
        files.sort();
        for (path, content) in files {
            s.push_str(&format!("{path}: {content:?}\n"));
        }
        s
    }

    /// Panics with the lines that differ between two snapshots.
    pub fn assert_same(before: &str, after: &str, what: &str) {
        if before == after {
            return;
        }
        let b: std::collections::BTreeSet<&str> = before.lines().collect();
        let a: std::collections::BTreeSet<&str> = after.lines().collect();
        let gone: Vec<&&str> = b.difference(&a).collect();
        let new: Vec<&&str> = a.difference(&b).collect();
        let first = before
            .lines()
            .zip(after.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(before.lines().count().min(after.lines().count()));
        let near = |s: &str| -> Vec<String> {
            s.lines()
                .skip(first.saturating_sub(2))
                .take(5)
                .map(String::from)
                .collect()
        };
        panic!(
            "{what}: gone {gone:#?}\nnew {new:#?}\nfirst difference at line {first}: \
             before {:#?}\nafter {:#?}",
            near(before),
            near(after)
        );
    }

    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let kind = entry.file_type().ok();
            if kind.is_some_and(|k| k.is_dir()) {
                out.push((path.display().to_string(), "<dir>".into()));
                walk(&path, out);
            } else if kind.is_some_and(|k| k.is_file()) {
                let content = std::fs::read(&path).unwrap_or_default();
                out.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&content).to_string(),
                ));
            } else {
                out.push((path.display().to_string(), "<special>".into()));
            }
        }
    }

    /// python3 for workloads and clients: the system one when present (no
    /// shim process in between), else whatever PATH finds.
    pub fn python3() -> PathBuf {
        let system = PathBuf::from("/usr/bin/python3");
        if system.exists() {
            system
        } else {
            PathBuf::from("python3")
        }
    }

    /// A small deterministic PRNG (splitmix64): reproducible fuzzing without
    /// extra crates.
    pub struct Prng(pub u64);

    impl Prng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n` (n > 0).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub fn chance(&mut self, percent: u64) -> bool {
            self.next_u64() % 100 < percent
        }

        pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }
}
// ===== END robustness/portmap helpers =====

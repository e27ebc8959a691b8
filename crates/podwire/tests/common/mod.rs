//! Test harness shared by the CNI integration tests: throwaway network
//! namespaces (removed on drop, even when a test fails), and running a CNI
//! plugin binary exactly as a runtime does (environment + netconf on stdin),
//! inside an isolated "host" namespace so the machine's own is never touched.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

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

/// A network namespace that exists for the life of the value.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pwt{}-{n}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(
            status.success(),
            "ip netns add {name} failed (tests need root and iproute2)"
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a shell command inside the namespace.
    pub fn sh(&self, cmd: &str) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec")
    }

    /// Runs a shell command inside the namespace and returns its stdout;
    /// panics with the command's stderr when it fails.
    pub fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// A Command that will run inside this namespace (setns before exec, so
    /// no extra process is spawned, as a runtime does it).
    pub fn command(&self, program: &Path) -> (Command, std::fs::File) {
        let file = std::fs::File::open(self.path()).expect("open netns");
        let fd = file.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: setns is async-signal-safe; `file` outlives the spawn.
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(
                    BorrowedFd::borrow_raw(fd),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                )
                .map_err(std::io::Error::from)
            });
        }
        (cmd, file)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
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
        let (mut cmd, _ns) = host.command(program);
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
    pub cni_dir: tempfile::TempDir,
    pub data: tempfile::TempDir,
}

impl World {
    pub fn new(tag: &str) -> World {
        let host = Netns::new(&format!("{tag}-h"));
        let cni_dir = tempfile::tempdir().expect("tempdir");
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
            data: tempfile::tempdir().expect("tempdir"),
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

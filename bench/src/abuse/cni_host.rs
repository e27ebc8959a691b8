//! One CNI network for the abuse: a fresh "host" namespace the plugin runs
//! in, a CNI_PATH of symlinks to the podwire binary, an IPAM/state directory,
//! and what the abuse reads back to say whether anything leaked: leases,
//! attachment records (and their 0-byte `.tmp` leftovers), veths, bridge
//! ports and the elements of the `inet podwire-cni` maps.

use std::fmt;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::fs::symlink;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};

use crate::ns::{NamedNetns, TempDir};
use crate::plugin::{CniCommand, Exec};

/// A command that runs inside the namespace open at `fd`.
pub fn command_in(fd: RawFd, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // SAFETY: runs in the forked child before exec; setns is one
    // async-signal-safe syscall on an fd inherited from the parent.
    unsafe {
        cmd.pre_exec(move || {
            setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// A container as a runtime sees it: an id and a namespace of its own.
pub struct Container {
    pub id: String,
    pub ns: NamedNetns,
}

static NEXT_CONTAINER: AtomicUsize = AtomicUsize::new(0);

impl Container {
    pub fn create() -> Result<Container> {
        let n = NEXT_CONTAINER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        Ok(Container {
            id: format!("abuse-{pid}-{n}"),
            ns: NamedNetns::create(&format!("pwbench-c-{pid}-abuse-{n}"))?,
        })
    }
}

/// How one plugin process ended.
#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Exit {
    pub fn from_output(output: Output, elapsed: Duration) -> Exit {
        Exit {
            code: output.status.code(),
            signal: output.status.signal(),
            stdout: output.stdout,
            stderr: output.stderr,
            elapsed,
        }
    }

    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.stdout).ok()
    }

    /// The `code` of the CNI error printed on stdout.
    pub fn cni_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }

    /// One line for a report: exit, code and what the plugin said.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "unknown end".into(),
        };
        let out = String::from_utf8_lossy(&self.stdout);
        let err = String::from_utf8_lossy(&self.stderr);
        format!("{how}: {} {}", out.trim(), err.trim())
    }
}

/// What a network still holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub leases: usize,
    pub records: usize,
    pub tmp_records: usize,
    pub veths: usize,
    pub bridge_ports: usize,
    pub elements: usize,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        *self == Leftovers::default()
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} leases, {} records, {} .tmp, {} veths, {} bridge ports, {} nft elements",
            self.leases,
            self.records,
            self.tmp_records,
            self.veths,
            self.bridge_ports,
            self.elements
        )
    }
}

/// One network in its own host namespace.
pub struct Host {
    pub ns: NamedNetns,
    dir: TempDir,
    pub cni_path: PathBuf,
    plugin: PathBuf,
    pub network: String,
    pub bridge: String,
    pub subnet: String,
}

impl Host {
    /// `tag` names the namespace, directory and network; `bridge` and
    /// `subnet` keep networks of one run apart.
    pub fn new(podwire: &Path, tag: &str, bridge: &str, subnet: &str) -> Result<Host> {
        let ns = NamedNetns::create(&format!("pwbench-host-{}-abuse-{tag}", std::process::id()))?;
        let dir = TempDir::create(&format!("abuse-{tag}"))?;
        let cni_path = dir.path().join("bin");
        std::fs::create_dir(&cni_path).with_context(|| format!("create {}", cni_path.display()))?;
        for name in ["podwire", "podwire-portmap", "podwire-loopback"] {
            symlink(podwire, cni_path.join(name))
                .with_context(|| format!("symlink {name} in {}", cni_path.display()))?;
        }
        Ok(Host {
            ns,
            plugin: cni_path.join("podwire"),
            cni_path,
            dir,
            network: format!("abuse-{tag}"),
            bridge: bridge.into(),
            subnet: subnet.into(),
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn state_dir(&self) -> PathBuf {
        self.data_dir().join("podwire-state").join(&self.network)
    }

    /// The attachment record of `id` on eth0.
    pub fn record(&self, id: &str) -> PathBuf {
        self.state_dir().join(format!("{id}:eth0.json"))
    }

    /// The network's netconf: bridge, podwire IPAM, masquerade, and one
    /// published TCP port (`hostPort`) as a runtime injects it.
    pub fn conf(&self, host_port: u16) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": self.network,
            "type": "podwire",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}
            ]},
            "ipam": {
                "type": "podwire",
                "ranges": [[{"subnet": self.subnet}]],
                "dataDir": self.data_dir(),
            },
        })
    }

    /// GC's netconf: the network with no valid attachment at all.
    pub fn gc_conf(&self) -> Value {
        let mut gc = self.conf(0);
        gc["cni.dev/valid-attachments"] = json!([]);
        if let Some(obj) = gc.as_object_mut() {
            obj.remove("runtimeConfig");
        }
        gc
    }

    pub fn exec<'a>(&'a self, command: CniCommand, id: &'a str, netns: &'a Path) -> Exec<'a> {
        Exec {
            host_fd: self.ns.raw_fd(),
            cni_path: &self.cni_path,
            plugin: &self.plugin,
            command,
            container_id: id,
            netns,
            ifname: "eth0",
        }
    }

    /// Runs the plugin with `stdin` and returns how it ended.
    pub fn call(&self, command: CniCommand, id: &str, netns: &Path, stdin: &[u8]) -> Result<Exit> {
        let (elapsed, output) = self.exec(command, id, netns).run_raw(stdin)?;
        Ok(Exit::from_output(output, elapsed))
    }

    /// ADD of `c` with `conf`; the result, or why it failed.
    pub fn add(&self, c: &Container, conf: &Value) -> Result<Exit> {
        self.call(
            CniCommand::Add,
            &c.id,
            c.ns.path(),
            conf.to_string().as_bytes(),
        )
    }

    pub fn del(&self, c: &Container, conf: &Value) -> Result<Exit> {
        self.call(
            CniCommand::Del,
            &c.id,
            c.ns.path(),
            conf.to_string().as_bytes(),
        )
    }

    pub fn gc(&self) -> Result<Exit> {
        let conf = self.gc_conf().to_string();
        self.call(CniCommand::Gc, "", Path::new(""), conf.as_bytes())
    }

    /// Runs `program args` in the host namespace; its stdout.
    pub fn sh(&self, program: &str, args: &[&str]) -> Result<Output> {
        command_in(self.ns.raw_fd(), program)
            .args(args)
            .output()
            .with_context(|| format!("run {program} {}", args.join(" ")))
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// IP lease files of the network.
    pub fn leases(&self) -> Vec<String> {
        Self::names_in(&self.data_dir().join(&self.network))
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Attachment records (`<id>:<ifname>.json`) and leftover `.tmp` files.
    pub fn records(&self) -> (Vec<String>, Vec<String>) {
        Self::names_in(&self.state_dir())
            .into_iter()
            .partition(|n| !n.ends_with(".tmp"))
    }

    /// Links of the host namespace whose name starts with `prefix`.
    pub fn links(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self.sh("ip", &["-o", "link", "show"])?;
        ensure!(out.status.success(), "ip link show failed");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    pub fn bridge_ports(&self) -> Result<usize> {
        let out = self.sh("ip", &["-o", "link", "show", "master", &self.bridge])?;
        // No bridge (never created) means no ports.
        if !out.status.success() {
            return Ok(0);
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    }

    /// Elements of every map and set of `inet podwire-cni` (0 without it).
    pub fn nft_elements(&self) -> Result<usize> {
        let out = self.sh("nft", &["-j", "list", "table", "inet", "podwire-cni"])?;
        if !out.status.success() {
            return Ok(0);
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("nft -j output")?;
        Ok(v["nftables"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i.get("map").or_else(|| i.get("set")))
                    .map(|m| m["elem"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0))
    }

    pub fn leftovers(&self) -> Result<Leftovers> {
        let (records, tmp) = self.records();
        Ok(Leftovers {
            leases: self.leases().len(),
            records: records.len(),
            tmp_records: tmp.len(),
            veths: self.links("veth")?.len(),
            bridge_ports: self.bridge_ports()?,
            elements: self.nft_elements()?,
        })
    }

    /// Waits (bounded) for the kernel to finish destroying veths of deleted
    /// namespaces, then reads what is left.
    pub fn settled_leftovers(&self) -> Result<Leftovers> {
        let mut left = self.leftovers()?;
        for _ in 0..100 {
            if left.veths == 0 && left.bridge_ports == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            left = self.leftovers()?;
        }
        Ok(left)
    }

    /// Everything a plugin call could change in the host namespace and on
    /// disk, as text: links (without operational state), IPv4 addresses and
    /// routes, the nftables ruleset, and every file of the data directory
    /// with its content except IPAM's round-robin cursors (a failed
    /// allocation may move them, as host-local's does).
    pub fn snapshot(&self) -> Result<String> {
        let mut s = String::new();
        for args in [
            &["-o", "link", "show"][..],
            &["-o", "-4", "addr", "show"],
            &["-4", "route", "show", "table", "all"],
        ] {
            let out = self.sh("ip", args)?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let line = line
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .replace("state UP", "")
                    .replace("state DOWN", "")
                    .replace("state UNKNOWN", "")
                    .replace("LOWER_UP", "");
                s.push_str(&line);
                s.push('\n');
            }
        }
        let out = self.sh("nft", &["list", "ruleset"])?;
        s.push_str(&String::from_utf8_lossy(&out.stdout));
        let mut files = Vec::new();
        walk(&self.data_dir(), &mut files);
        files.sort();
        for (path, content) in files {
            if !path.contains("last_reserved_ip") {
                s.push_str(&format!("{path}: {content:?}\n"));
            }
        }
        Ok(s)
    }
}

/// The addresses of a container namespace, as text.
pub fn ns_snapshot(ns: &NamedNetns) -> Result<String> {
    let out = command_in(ns.raw_fd(), "ip")
        .args(["-o", "addr", "show"])
        .output()
        .context("ip addr show in a container")?;
    // IPv6 link-local addresses come and go with DAD on their own.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" fe80:"))
        // Lifetimes and DAD flags follow the backslash.
        .map(|l| l.split('\\').next().unwrap_or(l).replace(" tentative", ""))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => {
                out.push((path.display().to_string(), "<dir>".into()));
                walk(&path, out);
            }
            _ => {
                let content = std::fs::read(&path).unwrap_or_default();
                out.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&content).into_owned(),
                ));
            }
        }
    }
}

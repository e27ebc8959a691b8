//! Runs one CNI plugin process the way a container runtime does: CNI_* in the
//! environment, the netconf on stdin, the result on stdout. The process is
//! moved into the benchmark's "host" namespace by a `pre_exec` setns, the same
//! launch for every implementation, so no side pays for an extra process. The
//! clock covers spawn to exit; an ADD that does not return a result with IPs
//! is an error, because a benchmark must never time failures.

use std::ffi::OsStr;
use std::io::{ErrorKind, Write};
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;

/// The PATH given to plugins (the reference finds `iptables` through it).
const PLUGIN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    /// Garbage collection: undo every attachment not named valid.
    Gc,
    /// A bare process start: the plugin only prints its supported versions.
    Version,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Gc => "GC",
            CniCommand::Version => "VERSION",
        }
    }
}

/// Everything about one exec except the netconf.
#[derive(Debug, Clone, Copy)]
pub struct Exec<'a> {
    /// An open fd of the namespace the plugin runs in (the node's "host").
    pub host_fd: RawFd,
    /// CNI_PATH: where the plugin finds its IPAM / delegate plugins.
    pub cni_path: &'a Path,
    /// The executable, normally `<cni_path>/<type>`.
    pub plugin: &'a Path,
    pub command: CniCommand,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
}

/// A successful exec: how long it took and, for ADD, the parsed result.
#[derive(Debug)]
pub struct Outcome {
    pub elapsed: Duration,
    pub result: Option<Value>,
}

impl Exec<'_> {
    /// Runs the plugin with `netconf` on stdin and checks what it returned.
    pub fn run(&self, netconf: &Value) -> Result<Outcome> {
        let stdin = serde_json::to_vec(netconf).context("serialize netconf")?;
        let (elapsed, output) = self.run_raw(&stdin)?;

        if !output.status.success() {
            bail!(
                "{}",
                self.describe_failure(netconf, &output, "exited with failure")
            );
        }
        let result = match self.command {
            CniCommand::Del | CniCommand::Gc => None,
            CniCommand::Version => {
                let value: Option<Value> = serde_json::from_slice(&output.stdout).ok();
                if value
                    .as_ref()
                    .and_then(|v| v.get("supportedVersions"))
                    .is_none()
                {
                    bail!(
                        "{}",
                        self.describe_failure(netconf, &output, "printed no supportedVersions")
                    );
                }
                value
            }
            CniCommand::Add => {
                let value: Value = match serde_json::from_slice(&output.stdout) {
                    Ok(value) => value,
                    Err(err) => bail!(
                        "{}",
                        self.describe_failure(
                            netconf,
                            &output,
                            &format!("printed no JSON result ({err})")
                        )
                    ),
                };
                if ips(&value).is_empty() {
                    bail!(
                        "{}",
                        self.describe_failure(netconf, &output, "returned a result without ips")
                    );
                }
                Some(value)
            }
        };
        Ok(Outcome { elapsed, result })
    }

    /// The plugin's process, configured as a runtime starts it (CNI_* only,
    /// moved into the host namespace before exec) but not yet spawned: for a
    /// caller that must act on the running plugin, such as killing it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.plugin);
        cmd.env_clear()
            .env("PATH", PLUGIN_PATH)
            .env("CNI_COMMAND", self.command.as_str())
            .env("CNI_PATH", self.cni_path);
        // An empty value is left out, as runtimes do (GC names no container).
        for (key, value) in [
            ("CNI_CONTAINERID", OsStr::new(self.container_id)),
            ("CNI_NETNS", self.netns.as_os_str()),
            ("CNI_IFNAME", OsStr::new(self.ifname)),
        ] {
            if !value.is_empty() {
                cmd.env(key, value);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let host_fd = self.host_fd;
        // SAFETY: runs in the forked child before exec; setns is a single
        // async-signal-safe syscall on an fd inherited from the parent.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(host_fd);
                setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Spawns the executable with `stdin`, waits for it and returns how long
    /// that took and what it printed, whatever its exit status.
    pub fn run_raw(&self, stdin: &[u8]) -> Result<(Duration, Output)> {
        let mut cmd = self.command();
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.plugin.display()))?;
        if let Some(mut pipe) = child.stdin.take() {
            match pipe.write_all(stdin) {
                // A plugin that exits without reading is judged by its status.
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::BrokenPipe => {}
                Err(err) => return Err(err).context("write netconf to plugin stdin"),
            }
        }
        let output = child.wait_with_output().context("wait for plugin")?;
        Ok((start.elapsed(), output))
    }

    fn describe_failure(&self, netconf: &Value, output: &Output, what: &str) -> String {
        let conf = serde_json::to_string_pretty(netconf).unwrap_or_else(|_| netconf.to_string());
        format!(
            "CNI {cmd} by {plugin} {what} ({status})\n  \
             command: CNI_COMMAND={cmd} CNI_CONTAINERID={id} CNI_NETNS={netns} CNI_IFNAME={ifname} \
             CNI_PATH={path} {plugin} (run inside the bench's host namespace)\n  \
             netconf: {conf}\n  stdout: {stdout}\n  stderr: {stderr}",
            cmd = self.command.as_str(),
            plugin = self.plugin.display(),
            status = output.status,
            id = self.container_id,
            netns = self.netns.display(),
            ifname = self.ifname,
            path = self.cni_path.display(),
            stdout = String::from_utf8_lossy(&output.stdout).trim(),
            stderr = String::from_utf8_lossy(&output.stderr).trim(),
        )
    }
}

/// The addresses (`ips[].address`) of a CNI result.
pub fn ips(result: &Value) -> Vec<String> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::ips;
    use serde_json::json;

    #[test]
    fn ips_of_a_result() {
        let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.77.0.2/16", "gateway": "10.77.0.1"}]});
        assert_eq!(ips(&result), vec!["10.77.0.2/16".to_string()]);
        assert!(ips(&json!({"code": 7, "msg": "no"})).is_empty());
    }
}

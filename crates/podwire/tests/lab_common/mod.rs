//! Shared helpers for the lab tests (`lab_e2e.rs`, `lab_input.rs`): run the
//! `podwire` binary as a user would, with a time limit; a [`Lab`] guard that
//! always runs `lab down` when it goes out of scope (even when a test
//! panics); and readers of the lab's real state — `ip netns list`, `ip
//! route` inside a node, `/proc`, the state directory — so the tests never
//! rely on the tool's own claims alone.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where every lab keeps its state.
pub const LABS_ROOT: &str = "/run/podwire/labs";

/// Time limits: a lab of a few nodes comes up in well under a second, so
/// these only stop a hung command from hanging the test run.
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);
pub const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// The podwire binary under test.
pub fn podwire() -> &'static str {
    env!("CARGO_BIN_EXE_podwire")
}

/// A test manifest in `tests/lab/`.
pub fn manifest(file: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("lab")
        .join(file);
    assert!(path.is_file(), "missing test manifest {}", path.display());
    path
}

/// A lab name unique to this test process: `t-<tag>-<pid % 10000>`.
pub fn lab_name(tag: &str) -> String {
    let name = format!("t-{tag}-{}", std::process::id() % 10000);
    assert!(
        name.len() <= 20
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "bad test lab name {name:?}: keep tags short, lowercase, digits and '-'"
    );
    name
}

/// The outcome of one command.
#[derive(Debug)]
pub struct Run {
    pub argv: Vec<String>,
    /// None when the command was killed at its time limit.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// For assertion messages: the command and everything it printed.
    pub fn describe(&self) -> String {
        format!(
            "`{}` -> {} in {:.2} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv.join(" "),
            match self.code {
                Some(c) => format!("exit {c}"),
                None => "KILLED at its time limit".into(),
            },
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics (with the output) unless the command succeeded.
    pub fn expect_ok(self) -> Run {
        assert!(self.ok(), "command failed: {}", self.describe());
        self
    }
}

/// Runs `program args` with an optional stdin text and a time limit. Output
/// goes to temporary files, not pipes, so a background process that inherits
/// them can never make the test wait.
pub fn run_program(program: &str, args: &[&str], stdin: Option<&str>, limit: Duration) -> Run {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let ran = podwire_testsupport::run_bounded(cmd, stdin.map(str::as_bytes), limit);
    let mut argv = vec![program.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    Run {
        argv,
        code: ran.status.map(|status| status.code().unwrap_or(-1)),
        stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
        elapsed: ran.elapsed,
    }
}

/// Runs the podwire binary.
pub fn podwire_cmd(args: &[&str], stdin: Option<&str>, limit: Duration) -> Run {
    run_program(podwire(), args, stdin, limit)
}

/// Polls `check` every 50 ms until it returns Some, at most `limit` long;
/// None when it never did.
pub fn poll<T>(limit: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    podwire_testsupport::poll_every(limit, Duration::from_millis(50), check)
}

/// One row of `lab get pods -A -o wide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRow {
    pub namespace: String,
    pub name: String,
    pub status: String,
    pub ip: String,
    pub node: String,
}

/// One row of `lab get nodes -o wide`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub internal_ip: String,
    pub pod_cidr: String,
}

/// Rows of a kubectl-shaped table as maps from column header to cell.
pub fn parse_table(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(head) = lines.next() else {
        return Vec::new();
    };
    let head: Vec<&str> = head.split_whitespace().collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cells.len(),
                head.len(),
                "table row {line:?} does not match header {head:?}"
            );
            head.iter()
                .zip(cells)
                .map(|(h, c)| (h.to_string(), c.to_string()))
                .collect()
        })
        .collect()
}

/// The answer of the built-in workload (`hostname=.. server=.. client=..`).
pub fn parse_served(body: &str) -> BTreeMap<String, String> {
    body.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every named network namespace on the machine (`ip netns list`).
pub fn all_netns() -> Vec<String> {
    let run = run_program("ip", &["netns", "list"], None, CMD_TIMEOUT);
    run.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// PIDs of the processes inside a named network namespace (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    run_program("ip", &["netns", "pids", ns], None, CMD_TIMEOUT)
        .stdout
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A live (not zombie) process's command line, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Every live process: pid and command line.
pub fn processes() -> Vec<(i32, String)> {
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != own)
                .filter_map(|pid| Some((pid, cmdline(pid)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Links of the machine's own network namespace.
pub fn host_links() -> BTreeSet<String> {
    run_program("ip", &["-o", "link", "show"], None, CMD_TIMEOUT)
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// nftables tables of the machine's own network namespace.
pub fn host_nft_tables() -> BTreeSet<String> {
    run_program("nft", &["list", "tables"], None, CMD_TIMEOUT)
        .stdout
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A lab owned by a test: `lab down` runs when the value is dropped, however
/// the test ends.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// A guard for a lab named after `tag`; removes a leftover of the same
    /// name (from an earlier run that was killed) first.
    pub fn new(tag: &str) -> Lab {
        Lab::named(&lab_name(tag))
    }

    /// A guard for a lab with exactly this name.
    pub fn named(name: &str) -> Lab {
        let lab = Lab {
            name: name.to_string(),
        };
        if lab.dir().exists() {
            let _ = lab.cmd(&["down"]);
        }
        lab
    }

    /// `lab up` (the built-in example when no manifest is given) with the
    /// embedded files store; the outcome is the caller's to judge.
    pub fn up(&self, file: Option<&Path>) -> Run {
        self.up_with(file, "files")
    }

    /// `lab up --control-plane MODE` (kubernetes, files or auto).
    pub fn up_with(&self, file: Option<&Path>, mode: &str) -> Run {
        let mut args = vec!["up".to_string(), "--control-plane".into(), mode.into()];
        if let Some(f) = file {
            args.push("-f".into());
            args.push(f.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd_within(&args, None, UP_TIMEOUT)
    }

    /// A lab that is up, or a failed test.
    pub fn start(tag: &str, file: Option<&Path>) -> Lab {
        let lab = Lab::new(tag);
        lab.up(file).expect_ok();
        lab
    }

    /// `podwire lab --name NAME ARGS`.
    pub fn cmd(&self, args: &[&str]) -> Run {
        self.cmd_within(args, None, CMD_TIMEOUT)
    }

    pub fn cmd_within(&self, args: &[&str], stdin: Option<&str>, limit: Duration) -> Run {
        // `--name` first: everything after `--` belongs to the command.
        let mut all = vec!["lab", "--name", &self.name];
        all.extend_from_slice(args);
        podwire_cmd(&all, stdin, limit)
    }

    /// `lab apply -f FILE` / `lab delete -f FILE`.
    pub fn apply(&self, file: &Path) -> Run {
        self.cmd_within(
            &["apply", "-f", &file.display().to_string()],
            None,
            UP_TIMEOUT,
        )
    }
    pub fn apply_text(&self, yaml: &str) -> Run {
        self.cmd_within(&["apply", "-f", "-"], Some(yaml), UP_TIMEOUT)
    }
    pub fn delete(&self, file: &Path) -> Run {
        self.cmd_within(
            &["delete", "-f", &file.display().to_string()],
            None,
            UP_TIMEOUT,
        )
    }

    /// `lab exec POD -n NS -- ARGV`.
    pub fn exec_pod(&self, namespace: &str, pod: &str, argv: &[&str]) -> Run {
        let mut args = vec!["exec", pod, "-n", namespace, "--"];
        args.extend_from_slice(argv);
        self.cmd(&args)
    }

    /// `lab exec --node NODE -- ARGV`.
    pub fn exec_node(&self, node: &str, argv: &[&str]) -> Run {
        let mut args = vec!["exec", "--node", node, "--"];
        args.extend_from_slice(argv);
        self.cmd(&args)
    }

    /// One `curl` from inside a pod.
    pub fn try_curl(&self, namespace: &str, pod: &str, url: &str) -> Run {
        self.exec_pod(namespace, pod, &["curl", "-s", "-m", "3", url])
    }

    /// The built-in workload's answer to a request from inside a pod. A
    /// few bounded tries, for paths that settle asynchronously (e.g. a node
    /// just added); panics with every attempt's output when none answers.
    pub fn curl(&self, namespace: &str, pod: &str, url: &str) -> BTreeMap<String, String> {
        let mut failures = Vec::new();
        for _ in 0..4 {
            let run = self.try_curl(namespace, pod, url);
            if run.ok() && run.stdout.contains("hostname=") {
                return parse_served(&run.stdout);
            }
            failures.push(run.describe());
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "lab {}: {namespace}/{pod} cannot reach {url}:\n{}",
            self.name,
            failures.join("\n")
        );
    }

    /// `lab get pods -A -o wide`.
    pub fn pods(&self) -> Vec<PodRow> {
        let run = self.cmd(&["get", "pods", "-A", "-o", "wide"]).expect_ok();
        parse_table(&run.stdout)
            .into_iter()
            .map(|r| PodRow {
                namespace: r["NAMESPACE"].clone(),
                name: r["NAME"].clone(),
                status: r["STATUS"].clone(),
                ip: r["IP"].clone(),
                node: r["NODE"].clone(),
            })
            .collect()
    }

    pub fn pod(&self, namespace: &str, name: &str) -> PodRow {
        let pods = self.pods();
        pods.iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("lab {}: no pod {namespace}/{name} in {pods:?}", self.name))
    }

    /// `lab get nodes -o wide`.
    pub fn nodes(&self) -> Vec<NodeRow> {
        let run = self.cmd(&["get", "nodes", "-o", "wide"]).expect_ok();
        parse_table(&run.stdout)
            .into_iter()
            .map(|r| NodeRow {
                name: r["NAME"].clone(),
                internal_ip: r["INTERNAL-IP"].clone(),
                pod_cidr: r["POD-CIDR"].clone(),
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> NodeRow {
        let nodes = self.nodes();
        nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("lab {}: no node {name} in {nodes:?}", self.name))
    }

    /// `ip route` inside a node.
    pub fn routes(&self, node: &str) -> String {
        self.exec_node(node, &["ip", "route", "show"])
            .expect_ok()
            .stdout
    }

    /// The IPv4 address (without prefix) of `dev` as seen inside a pod.
    pub fn pod_addr(&self, namespace: &str, pod: &str, dev: &str) -> String {
        let run = self
            .exec_pod(
                namespace,
                pod,
                &["ip", "-4", "-o", "addr", "show", "dev", dev],
            )
            .expect_ok();
        first_inet(&run.stdout).unwrap_or_else(|| {
            panic!(
                "no IPv4 address on {dev} in pod {namespace}/{pod}: {}",
                run.describe()
            )
        })
    }

    /// The IPv4 address (without prefix) of `dev` as seen inside a node.
    pub fn node_addr(&self, node: &str, dev: &str) -> String {
        let run = self
            .exec_node(node, &["ip", "-4", "-o", "addr", "show", "dev", dev])
            .expect_ok();
        first_inet(&run.stdout).unwrap_or_else(|| {
            panic!(
                "no IPv4 address on {dev} in node {node}: {}",
                run.describe()
            )
        })
    }

    /// The lab's state directory.
    pub fn dir(&self) -> PathBuf {
        Path::new(LABS_ROOT).join(&self.name)
    }

    /// A node's IPAM directory for the `podnet` network (one file per IP).
    pub fn ipam_dir(&self, node: &str) -> PathBuf {
        self.dir()
            .join("nodes")
            .join(node)
            .join("ipam")
            .join("podnet")
    }

    /// The lab's network namespaces, as `ip netns list` shows them.
    pub fn netns(&self) -> Vec<String> {
        let prefix = format!("pwl-{}_", self.name);
        all_netns()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("pwl-{}_n_{node}", self.name)
    }
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("pwl-{}_p_{namespace}_{pod}", self.name)
    }

    /// Live processes that belong to this lab: the supervisor (`lab
    /// supervise --name NAME`), any whose command line mentions the state
    /// directory (agents), and any with one of the lab's files bind-mounted
    /// (pod containers and `lab exec` in pods: their resolv.conf and hosts).
    pub fn named_processes(&self) -> Vec<(i32, String)> {
        let dir = format!("{}/", self.dir().display());
        let mounted = format!("/podwire/labs/{}/", self.name);
        processes()
            .into_iter()
            .filter(|(pid, cmd)| {
                let args: Vec<&str> = cmd.split(' ').collect();
                let supervisor = args.contains(&"supervise")
                    && args
                        .windows(2)
                        .any(|w| w[0] == "--name" && w[1] == self.name);
                supervisor
                    || format!("{cmd}/").contains(&dir)
                    || std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                        .is_ok_and(|m| m.contains(&mounted))
            })
            .collect()
    }

    /// Asserts that nothing of the lab remains: no namespace, no state
    /// directory, no process of its own.
    pub fn assert_gone(&self) {
        let ns = self.netns();
        assert!(
            ns.is_empty(),
            "lab {}: namespaces remain: {ns:?}",
            self.name
        );
        assert!(
            !self.dir().exists(),
            "lab {}: state directory {} remains",
            self.name,
            self.dir().display()
        );
        // A process killed just now may take a moment to finish exiting.
        let _ = poll(Duration::from_secs(1), || {
            self.named_processes().is_empty().then_some(())
        });
        let procs = self.named_processes();
        assert!(
            procs.is_empty(),
            "lab {}: processes remain: {procs:?}",
            self.name
        );
    }

    /// `lab down`.
    pub fn down(&self) -> Run {
        self.cmd_within(&["down"], None, UP_TIMEOUT)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Always: a lab that is already gone answers with an error, which
        // is fine here.
        let _ = self.down();
    }
}

/// The first `inet A.B.C.D/N` address of `ip -o addr` output, without prefix.
pub fn first_inet(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            return words
                .next()
                .map(|a| a.split('/').next().unwrap_or(a).to_string());
        }
    }
    None
}

/// Whether `ip route` output has a route for exactly `dst`.
pub fn has_route(routes: &str, dst: &str) -> bool {
    routes
        .lines()
        .any(|l| l.split_whitespace().next() == Some(dst))
}

/// The route line for `dst`, if any.
pub fn route_line<'a>(routes: &'a str, dst: &str) -> Option<&'a str> {
    routes
        .lines()
        .find(|l| l.split_whitespace().next() == Some(dst))
}

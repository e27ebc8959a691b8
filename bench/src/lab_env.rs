//! What the lab benchmark (`src/bin/lab.rs`) measures on: child processes run
//! in their own process group (timed, killable on Ctrl-C), podwire labs that
//! `lab down` themselves when dropped, the reference veth pair between two
//! plain namespaces, and iperf3's JSON report. Included by the binary with
//! `#[path]`; every name it creates carries the benchmark's pid.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use podwire_bench::ns::{self, NamedNetns};
use serde::Serialize;
use serde_json::Value;

/// Every lab the benchmark brings up is named `pwb-<pid>-<tag>`.
pub const LAB_PREFIX: &str = "pwb-";
/// The port iperf3 listens on (its default).
const IPERF_PORT: u16 = 5201;

/// A finished child: exit status, output and wall time.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// Fails with the command's stderr unless it exited 0.
    pub fn check(self, what: &str) -> Result<Finished> {
        ensure!(
            self.status.success(),
            "{what} failed ({}): {}",
            self.status,
            last_lines(&self.stderr, 6)
        );
        Ok(self)
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Whether a Ctrl-C may stop a child half-way. Lab commands run to the end
/// (they are short, and a half-built lab is harder to remove); iperf3 runs
/// are killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    Finish,
    Kill,
}

/// Runs `cmd` in a process group of its own (so the terminal's Ctrl-C reaches
/// only the benchmark, which decides), collecting its output. The wall time
/// is taken by the thread that reaps the child, so polling adds nothing to
/// it. On timeout, or on an interrupt with [`OnInterrupt::Kill`], the whole
/// group (the child and whatever it started) is killed.
pub fn run(cmd: &mut Command, timeout: Duration, on_interrupt: OnInterrupt) -> Result<Finished> {
    let program = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("start {program}"))?;
    let pgid = Pid::from_raw(i32::try_from(child.id()).context("child pid")?);
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, Instant::now()));
    });
    let deadline = start + timeout;
    let mut killed = None;
    let (status, end) = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the waiter of {program}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if killed.is_some() {
            continue;
        }
        let why = if Instant::now() >= deadline {
            Some("timed out")
        } else if on_interrupt == OnInterrupt::Kill && ns::interrupted() {
            Some("interrupted")
        } else {
            None
        };
        if let Some(why) = why {
            // The group is still ours: its leader is not reaped yet.
            let _ = killpg(pgid, Signal::SIGKILL);
            killed = Some(why);
        }
    };
    let _ = waiter.join();
    let status = status.with_context(|| format!("wait for {program}"))?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if let Some(why) = killed {
        bail!("{program} {why} after {:.1} s", (end - start).as_secs_f64());
    }
    Ok(Finished {
        status,
        stdout,
        stderr,
        elapsed: end - start,
    })
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A long-running child (an iperf3 server), killed with its process group
/// when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(cmd: &mut Command) -> Result<Daemon> {
        let program = format!("{:?}", cmd.get_program());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {program}"))?;
        Ok(Daemon { child })
    }

    /// Fails if the child has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("poll daemon")? {
            bail!("the iperf3 server exited ({status})");
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One podwire lab, brought down when dropped (also after a failed or
/// interrupted `lab up`).
#[derive(Debug)]
pub struct Lab {
    podwire: PathBuf,
    name: String,
    removed: bool,
}

/// Longest any single lab command may take before it counts as hung.
const LAB_TIMEOUT: Duration = Duration::from_secs(120);

impl Lab {
    /// `podwire lab up --name NAME --control-plane MODE -f MANIFEST`, timed.
    /// The guard exists before the command runs, so whatever it created is
    /// removed on failure.
    pub fn up(
        podwire: &Path,
        name: &str,
        manifest: &Path,
        control_plane: &str,
    ) -> Result<(Lab, Duration)> {
        let lab = Lab {
            podwire: podwire.to_path_buf(),
            name: name.to_string(),
            removed: false,
        };
        let done = lab
            .podwire(&[
                "up",
                "--control-plane",
                control_plane,
                "-f",
                &manifest.display().to_string(),
            ])
            .with_context(|| format!("lab up --name {name}"))?;
        Ok((lab, done.elapsed))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.podwire);
        cmd.args(["lab", "--name", &self.name]).args(args);
        cmd
    }

    fn podwire(&self, args: &[&str]) -> Result<Finished> {
        let what = format!("podwire lab {}", args.first().copied().unwrap_or_default());
        run(&mut self.command(args), LAB_TIMEOUT, OnInterrupt::Finish)?.check(&what)
    }

    /// `podwire lab down`, timed, then a check that nothing of the lab is
    /// left: no namespace, no state directory, no supervisor.
    pub fn down(mut self) -> Result<Duration> {
        // On failure the guard's drop tries again.
        let done = self.podwire(&["down"])?;
        self.removed = true;
        check_gone(&self.podwire, &self.name)?;
        Ok(done.elapsed)
    }

    /// The pod's IP from `lab get pods -o wide` (namespace default).
    pub fn pod_ip(&self, pod: &str) -> Result<Ipv4Addr> {
        let out = self.podwire(&["get", "pods", "-o", "wide"])?.stdout;
        let mut lines = out.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let name_col = header.iter().position(|h| *h == "NAME");
        let ip_col = header.iter().position(|h| *h == "IP");
        let (Some(name_col), Some(ip_col)) = (name_col, ip_col) else {
            bail!("unexpected `lab get pods -o wide` output:\n{out}");
        };
        for line in lines {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(name_col) == Some(&pod) {
                let ip = cols.get(ip_col).copied().unwrap_or_default();
                return ip
                    .parse()
                    .with_context(|| format!("pod {pod} has no IPv4 address ({ip:?})"));
            }
        }
        bail!("pod {pod} not found in lab {}", self.name)
    }

    /// Runs `argv` inside pod `pod` (namespace default).
    pub fn exec_pod(&self, pod: &str, argv: &[&str], timeout: Duration) -> Result<Finished> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(argv);
        run(&mut self.command(&args), timeout, OnInterrupt::Kill)
    }

    /// Runs `argv` inside node `node` and fails unless it exits 0.
    pub fn exec_node(&self, node: &str, argv: &[&str]) -> Result<String> {
        let mut args = vec!["exec", "--node", node, "--"];
        args.extend_from_slice(argv);
        Ok(run(
            &mut self.command(&args),
            Duration::from_secs(10),
            OnInterrupt::Kill,
        )?
        .check(&format!("lab exec --node {node}"))?
        .stdout)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Err(err) = remove_lab(&self.podwire, &self.name) {
            eprintln!("warning: {err:#}");
        }
    }
}

/// `lab down` for a lab that may or may not exist, then the leftover check.
pub fn remove_lab(podwire: &Path, name: &str) -> Result<()> {
    let mut cmd = Command::new(podwire);
    cmd.args(["lab", "--name", name, "down"]);
    let done = run(&mut cmd, LAB_TIMEOUT, OnInterrupt::Finish)?;
    if !done.status.success() && !done.stderr.contains("does not exist") {
        bail!(
            "lab down --name {name} failed: {}",
            last_lines(&done.stderr, 4)
        );
    }
    check_gone(podwire, name)
}

/// Fails if anything of lab `name` remains: a namespace `pwl-<name>…`, the
/// lab in `lab list`, or its supervisor process (given a second to exit).
pub fn check_gone(podwire: &Path, name: &str) -> Result<()> {
    let supervisor = format!("lab\0supervise\0--name\0{name}\0");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir(ns::NETNS_DIR) {
            for entry in entries.flatten() {
                let ns = entry.file_name().to_string_lossy().into_owned();
                if is_lab_netns(&ns, name) {
                    left.push(format!("namespace {ns}"));
                }
            }
        }
        if lab_names(podwire)?.iter().any(|l| l == name) {
            left.push("its entry in `lab list`".into());
        }
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                    && String::from_utf8_lossy(&cmdline).contains(&supervisor)
                {
                    left.push(format!(
                        "supervisor pid {}",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("lab down --name {name} left {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether namespace `ns` belongs to lab `name`: the lab names them
/// `pwl-<lab>` and a separator ('-' or '_') and the object.
fn is_lab_netns(ns: &str, name: &str) -> bool {
    ns.strip_prefix("pwl-")
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with(['-', '_']))
}

/// The labs on this machine (`podwire lab list`).
pub fn lab_names(podwire: &Path) -> Result<Vec<String>> {
    let mut cmd = Command::new(podwire);
    cmd.args(["lab", "list"]);
    let done = run(&mut cmd, Duration::from_secs(10), OnInterrupt::Finish)?.check("lab list")?;
    Ok(done
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Brings down labs left by benchmark runs whose process is gone (never
/// those of a live run). Returns the names removed.
pub fn sweep_labs(podwire: &Path) -> Vec<String> {
    let Ok(names) = lab_names(podwire) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in names {
        let Some(pid) = name
            .strip_prefix(LAB_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if remove_lab(podwire, &name).is_ok() {
            removed.push(format!("lab {name}"));
        }
    }
    removed
}

/// Two plain namespaces joined by one veth pair, `eth0` on both sides with
/// 10.250.x.1/30 and 10.250.x.2/30, and an iperf3 server on the second: the
/// machine's limit for one TCP stream between namespaces.
#[derive(Debug)]
pub struct VethPair {
    // Field order is drop order: the server goes before its namespace.
    server: Daemon,
    client: NamedNetns,
    _server_ns: NamedNetns,
    server_ip: Ipv4Addr,
}

impl VethPair {
    pub fn create(iperf3: &Path) -> Result<VethPair> {
        let pid = std::process::id();
        let client = NamedNetns::create(&format!("{}{pid}-veth-a", ns::PREFIX))?;
        let server_ns = NamedNetns::create(&format!("{}{pid}-veth-b", ns::PREFIX))?;
        let x = pid % 256;
        let client_ip = Ipv4Addr::new(10, 250, x as u8, 1);
        let server_ip = Ipv4Addr::new(10, 250, x as u8, 2);
        let (a, b) = (client.name(), server_ns.name());
        for args in [
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
            vec![
                "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
            ],
            vec![
                "-n",
                a,
                "addr",
                "add",
                &format!("{client_ip}/30"),
                "dev",
                "eth0",
            ],
            vec![
                "-n",
                b,
                "addr",
                "add",
                &format!("{server_ip}/30"),
                "dev",
                "eth0",
            ],
            vec!["-n", a, "link", "set", "eth0", "up"],
            vec!["-n", b, "link", "set", "eth0", "up"],
        ] {
            let mut cmd = Command::new("ip");
            cmd.args(&args);
            run(&mut cmd, Duration::from_secs(10), OnInterrupt::Finish)?
                .check(&format!("ip {}", args.join(" ")))?;
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", b]).arg(iperf3).arg("-s");
        let server = Daemon::start(&mut cmd)?;
        Ok(VethPair {
            server,
            client,
            _server_ns: server_ns,
            server_ip,
        })
    }

    /// The MTU of the client side's eth0.
    pub fn mtu(&self) -> Result<u32> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "-n",
            self.client.name(),
            "-o",
            "link",
            "show",
            "dev",
            "eth0",
        ]);
        let out = run(&mut cmd, Duration::from_secs(10), OnInterrupt::Finish)?
            .check("read the veth MTU")?
            .stdout;
        mtu_of(&out).context("parse the veth MTU")
    }

    /// One iperf3 client run from the client namespace.
    pub fn iperf(&mut self, iperf3: &Path, seconds: u32) -> Result<Iperf> {
        self.server.check_alive()?;
        let ip = self.server_ip.to_string();
        let secs = seconds.to_string();
        let iperf3 = iperf3.display().to_string();
        let client = self.client.name().to_string();
        iperf_client(seconds, |timeout| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &client, &iperf3])
                .args(iperf_args(&ip, &secs));
            run(&mut cmd, timeout, OnInterrupt::Kill)
        })
    }
}

/// The MTU in `ip -o link show` output (its first link).
pub fn mtu_of(ip_link: &str) -> Option<u32> {
    ip_link
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
}

/// iperf3's client arguments: one TCP stream to `ip`, JSON report.
pub fn iperf_args(ip: &str, secs: &str) -> Vec<String> {
    ["-c", ip, "-p", &IPERF_PORT.to_string(), "-t", secs, "-J"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs one iperf3 client through `launch` (given the timeout), retrying
/// for a few seconds while the server is not listening yet.
pub fn iperf_client(seconds: u32, launch: impl Fn(Duration) -> Result<Finished>) -> Result<Iperf> {
    let timeout = Duration::from_secs(u64::from(seconds) + 30);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        ns::check_interrupted()?;
        let done = launch(timeout)?;
        match Iperf::parse(&done.stdout) {
            Ok(run) if done.status.success() => return Ok(run),
            Err(err) if Instant::now() < deadline && is_connect_error(&err) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(_) => bail!("iperf3 exited with {}", done.status),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "iperf3 client ({}): {}",
                        done.status,
                        last_lines(&done.stderr, 4)
                    )
                });
            }
        }
    }
}

fn is_connect_error(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    text.contains("unable to connect") || text.contains("Connection refused")
}

/// Machine-wide CPU time from `/proc/stat`: (idle + iowait, total), in
/// clock ticks over all CPUs.
fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().context("parse /proc/stat"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((idle, total))
}

/// Measures the machine's idle share between its creation and a reading.
#[derive(Debug, Clone, Copy)]
pub struct IdleMeter {
    start: (u64, u64),
}

impl IdleMeter {
    pub fn start() -> Result<IdleMeter> {
        Ok(IdleMeter {
            start: cpu_ticks()?,
        })
    }

    /// Idle share of all CPUs since the start (0.0–1.0; NaN if no tick
    /// passed).
    pub fn idle(&self) -> Result<f64> {
        let (idle, total) = cpu_ticks()?;
        let total = total.saturating_sub(self.start.1);
        let idle = idle.saturating_sub(self.start.0);
        Ok(if total == 0 {
            f64::NAN
        } else {
            idle as f64 / total as f64
        })
    }
}

/// Waits until the machine is quiet (other work would skew a throughput
/// run): samples the idle share over short windows until one reaches
/// `min_idle` or `max_wait` has passed. Returns the last window's share.
pub fn wait_quiet(min_idle: f64, max_wait: Duration) -> Result<f64> {
    let deadline = Instant::now() + max_wait;
    loop {
        ns::check_interrupted()?;
        let meter = IdleMeter::start()?;
        std::thread::sleep(Duration::from_millis(250));
        let idle = meter.idle()?;
        if idle >= min_idle || Instant::now() >= deadline {
            return Ok(idle);
        }
    }
}

/// What one iperf3 client run reports.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Iperf {
    /// Received by the server, Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions seen by the sender.
    pub retransmits: u64,
    /// CPU use of the sending and receiving iperf3 processes (percent,
    /// user + system, which includes the stack's work in their context).
    pub sender_cpu: f64,
    pub receiver_cpu: f64,
}

impl Iperf {
    /// Parses `iperf3 -J` output.
    pub fn parse(json: &str) -> Result<Iperf> {
        let v: Value = serde_json::from_str(json).context("iperf3 did not print JSON")?;
        if let Some(err) = v.get("error").and_then(Value::as_str) {
            bail!("iperf3: {err}");
        }
        let end = v.get("end").context("iperf3 JSON has no `end`")?;
        let bps = end
            .pointer("/sum_received/bits_per_second")
            .and_then(Value::as_f64)
            .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
        let cpu = |key: &str| {
            end.pointer(&format!("/cpu_utilization_percent/{key}"))
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        Ok(Iperf {
            gbps: bps / 1e9,
            retransmits: end
                .pointer("/sum_sent/retransmits")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            sender_cpu: cpu("host_total"),
            receiver_cpu: cpu("remote_total"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Iperf;

    #[test]
    fn parses_iperf_json() {
        let json = r#"{"start": {}, "end": {
            "sum_sent": {"bits_per_second": 9.1e9, "retransmits": 7},
            "sum_received": {"bits_per_second": 9.0e9},
            "cpu_utilization_percent": {"host_total": 97.5, "remote_total": 60.25}}}"#;
        let run = Iperf::parse(json).expect("valid report");
        assert_eq!(run.gbps, 9.0);
        assert_eq!(run.retransmits, 7);
        assert_eq!((run.sender_cpu, run.receiver_cpu), (97.5, 60.25));
    }

    #[test]
    fn lab_namespaces() {
        use super::is_lab_netns;
        assert!(is_lab_netns("pwl-pwb-12-hgw_n_node01", "pwb-12-hgw"));
        assert!(is_lab_netns("pwl-pwb-12-hgw-switch", "pwb-12-hgw"));
        assert!(!is_lab_netns("pwl-pwb-12-hgw2_switch", "pwb-12-hgw"));
        assert!(!is_lab_netns("pwl-pwb-12-vx_switch", "pwb-12-hgw"));
        assert!(!is_lab_netns("pwbench-12-veth-a", "pwb-12-hgw"));
    }

    #[test]
    fn mtu_from_ip_link() {
        let line =
            "4: podwire.1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN";
        assert_eq!(super::mtu_of(line), Some(1450));
        assert_eq!(super::mtu_of(""), None);
    }

    #[test]
    fn reports_iperf_errors() {
        let json = r#"{"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}"#;
        let err = Iperf::parse(json).expect_err("an error report");
        assert!(format!("{err:#}").contains("Connection refused"));
        assert!(Iperf::parse("not json").is_err());
    }
}

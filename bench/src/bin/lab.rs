//! The lab benchmark (`bench/lab`): wall time of `podwire lab up` and
//! `podwire lab down` for a lab of 3 nodes and 10 pods, and iperf3 pod↔pod
//! throughput across nodes with `routing: host-gw` and `routing: vxlan`
//! against the machine's limit, one TCP stream between two plain namespaces
//! joined by a veth pair. The three paths are interleaved in every repetition
//! (in a rotating order) so machine drift hits them alike. Prints a table
//! (or JSON with `--json`) with ratios and the targets.
//!
//! Safety: traffic flows only between namespaces this run created (its labs,
//! `pwb-<pid>-*`, and its veth pair, `pwbench-<pid>-veth-*`); each is
//! removed on exit, failure or Ctrl-C, and leftovers of dead runs are swept
//! at start.

#[path = "../lab_env.rs"]
mod lab_env;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use lab_env::{IdleMeter, Iperf, Lab, VethPair, iperf_args, iperf_client};
use podwire_bench::ns::{self, TempDir, check_interrupted};
use podwire_bench::stats::{Stats, Summary};
use serde::Serialize;

const USAGE: &str = "\
usage: lab [--runs N] [--iperf-runs N] [--seconds S] [--json]
           [--podwire PATH] [--iperf3 PATH]

Benchmarks the podwire lab (run as root): lab up/down time for 3 nodes and 10
pods, and iperf3 pod-to-pod throughput across nodes (host-gw, vxlan) against
a veth pair between two namespaces, interleaved.
  --runs N         lab up/down repetitions per routing mode (default 5, at least 1)
  --iperf-runs N   iperf3 runs per path, one per repetition (default 5, at most --runs)
  --seconds S      length of each iperf3 run (default 5)
  --control-plane M  files, kubernetes or both (default: both when tools/k8s/build
                   has built the Kubernetes programs, else files); kubernetes
                   rounds time lab up/down of the vxlan lab only (same data path)
  --json           print the results as JSON instead of a table
  --podwire PATH   the podwire binary (default: next to this binary)
  --iperf3 PATH    the iperf3 binary (default: found in PATH)";

/// Targets from the issues: the files store, and a real control plane.
const UP_TARGET_MS: f64 = 5000.0;
const KUBE_UP_TARGET_MS: f64 = 10000.0;
const HOST_GW_TARGET: f64 = 0.90;
const VXLAN_TARGET: f64 = 0.85;

/// Pods in the benchmark's lab: web replicas + the iperf3 server + client.
const WEB_REPLICAS: usize = 8;
const PODS: usize = WEB_REPLICAS + 2;
const NODES: usize = 3;
const SERVER_POD: &str = "iperf-server";
const CLIENT_POD: &str = "iperf-client";
/// Before each iperf3 run the benchmark waits (at most this long) for the
/// machine to be this idle: the kernel's deferred teardown of the previous
/// lab's namespaces, or other work on a shared machine, would skew the run.
const QUIET_IDLE: f64 = 0.8;
const QUIET_MAX_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Args {
    control_plane: String,
    runs: usize,
    iperf_runs: usize,
    seconds: u32,
    json: bool,
    podwire: PathBuf,
    iperf3: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        control_plane: if podwire_lab::cluster::kubectl::find_binaries().is_some() {
            "both".into()
        } else {
            "files".into()
        },
        runs: 5,
        iperf_runs: 5,
        seconds: 5,
        json: false,
        podwire: std::env::current_exe()
            .context("locate this binary")?
            .with_file_name("podwire"),
        iperf3: PathBuf::from("iperf3"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--runs" => {
                args.runs = value("--runs")?.parse().context("--runs takes a number")?;
                ensure!(args.runs >= 1, "--runs must be at least 1");
            }
            "--iperf-runs" => {
                args.iperf_runs = value("--iperf-runs")?
                    .parse()
                    .context("--iperf-runs takes a number")?;
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .context("--seconds takes a number")?;
                ensure!(args.seconds >= 1, "--seconds must be at least 1");
            }
            "--json" => args.json = true,
            "--control-plane" => {
                args.control_plane = value("--control-plane")?;
                ensure!(
                    ["files", "kubernetes", "both"].contains(&args.control_plane.as_str()),
                    "--control-plane takes files, kubernetes or both"
                );
            }
            "--podwire" => args.podwire = PathBuf::from(value("--podwire")?),
            "--iperf3" => args.iperf3 = PathBuf::from(value("--iperf3")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        args.iperf_runs <= args.runs,
        "--iperf-runs ({}) cannot exceed --runs ({}): one iperf3 run per repetition",
        args.iperf_runs,
        args.runs
    );
    args.podwire = args.podwire.canonicalize().with_context(|| {
        format!(
            "podwire binary {} not found (cargo build --release -p podwire)",
            args.podwire.display()
        )
    })?;
    args.iperf3 = find_program(&args.iperf3)
        .context("iperf3 not found (apt-get install -y iperf3, or --iperf3 PATH)")?;
    Ok(args)
}

/// `program` itself when it has a slash, else the first match in PATH.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The three paths measured in every repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Route {
    Veth,
    HostGw,
    Vxlan,
}

impl Route {
    const ALL: [Route; 3] = [Route::Veth, Route::HostGw, Route::Vxlan];

    fn routing(self) -> Option<&'static str> {
        match self {
            Route::Veth => None,
            Route::HostGw => Some("host-gw"),
            Route::Vxlan => Some("vxlan"),
        }
    }

    fn lab_tag(self) -> &'static str {
        match self {
            Route::Veth => "veth",
            Route::HostGw => "hgw",
            Route::Vxlan => "vx",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Veth => "veth pair (machine limit)",
            Route::HostGw => "pod-pod across nodes, host-gw",
            Route::Vxlan => "pod-pod across nodes, vxlan",
        }
    }

    fn target(self) -> Option<f64> {
        match self {
            Route::Veth => None,
            Route::HostGw => Some(HOST_GW_TARGET),
            Route::Vxlan => Some(VXLAN_TARGET),
        }
    }
}

/// The benchmark's lab: 3 nodes on one underlay, 8 replicas of the built-in
/// HTTP server spread over the workers, an iperf3 server pinned to node02 and
/// an idle client pinned to node01.
fn manifest(routing: &str) -> String {
    format!(
        "\
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata:
  name: bench
spec:
  routing: {routing}
  underlays:
    - name: underlay
      subnet: 192.168.56.0/24
  nodes:
    - name: controlplane
    - name: node01
    - name: node02
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {WEB_REPLICAS}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: {SERVER_POD}
  namespace: default
spec:
  nodeName: node02
  containers:
    - name: iperf
      command: [\"iperf3\", \"-s\"]
      ports: [{{containerPort: 5201}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: {CLIENT_POD}
  namespace: default
spec:
  nodeName: node01
  containers:
    - name: client
      command: [\"sleep\", \"infinity\"]
"
    )
}

/// One iperf3 run and how busy the machine was around it.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    #[serde(flatten)]
    iperf: Iperf,
    /// Idle share of all CPUs in the window just before the run (after
    /// waiting for a quiet machine) and during the run.
    idle_before: f64,
    idle_during: f64,
}

/// Waits for a quiet machine, then runs `iperf` and notes how idle the
/// machine was before and during it.
fn sample(iperf: impl FnOnce() -> Result<Iperf>) -> Result<Sample> {
    let idle_before = lab_env::wait_quiet(QUIET_IDLE, QUIET_MAX_WAIT)?;
    let meter = IdleMeter::start()?;
    let iperf = iperf()?;
    Ok(Sample {
        iperf,
        idle_before,
        idle_during: meter.idle()?,
    })
}

/// The samples of one route.
#[derive(Debug, Default)]
struct Samples {
    up: Vec<Duration>,
    /// Machine idle share just before each `lab up`.
    up_idle: Vec<f64>,
    down: Vec<Duration>,
    iperf: Vec<Sample>,
    /// What the route's MTUs were: (pod or veth eth0, overlay device).
    mtu: Option<(u32, Option<u32>)>,
}

/// min / median / max of plain numbers.

#[derive(Debug, Serialize)]
struct LabTimes {
    routing: &'static str,
    control_plane: &'static str,
    up_ms: Stats,
    down_ms: Stats,
    up_target_ms: f64,
    up_met: bool,
    /// Machine idle share just before each `lab up` (after waiting for a
    /// quiet machine), percent.
    idle_before_up_percent: Summary,
}

#[derive(Debug, Serialize)]
struct Throughput {
    route: Route,
    gbps: Summary,
    retransmits: Summary,
    sender_cpu_percent: Summary,
    receiver_cpu_percent: Summary,
    /// Median over medians of the veth pair.
    ratio: Option<f64>,
    /// Median of the per-repetition ratios to the veth run of the same
    /// repetition (robust to drift between repetitions).
    paired_ratio: Option<f64>,
    target: Option<f64>,
    met: Option<bool>,
    eth0_mtu: Option<u32>,
    overlay_mtu: Option<u32>,
    idle_before_percent: Summary,
    idle_during_percent: Summary,
    runs: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct Report {
    nodes: usize,
    pods: usize,
    runs: usize,
    iperf_runs: usize,
    iperf_seconds: u32,
    cpus: usize,
    kernel: String,
    labs: Vec<LabTimes>,
    throughput: Vec<Throughput>,
}

/// One repetition of a lab path: up (timed), an iperf3 run if asked, down
/// (timed). The lab is removed on any failure.
fn lab_round(
    args: &Args,
    route: Route,
    manifest: &Path,
    with_iperf: bool,
    samples: &mut Samples,
) -> Result<()> {
    let routing = route.routing().context("not a lab route")?;
    let name = format!(
        "{}{}-{}",
        lab_env::LAB_PREFIX,
        std::process::id(),
        route.lab_tag()
    );
    samples
        .up_idle
        .push(lab_env::wait_quiet(QUIET_IDLE, QUIET_MAX_WAIT)?);
    let (lab, up) = Lab::up(&args.podwire, &name, manifest, "files")?;
    samples.up.push(up);
    check_interrupted()?;
    if with_iperf {
        let ip = lab.pod_ip(SERVER_POD)?.to_string();
        if samples.mtu.is_none() {
            samples.mtu = Some(lab_mtus(&lab)?);
        }
        let secs = args.seconds.to_string();
        let iperf3 = args.iperf3.display().to_string();
        let mut argv: Vec<String> = vec![iperf3];
        argv.extend(iperf_args(&ip, &secs));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let run = sample(|| {
            iperf_client(args.seconds, |timeout| {
                lab.exec_pod(CLIENT_POD, &argv, timeout)
            })
        })
        .with_context(|| format!("iperf3 {routing} in lab {}", lab.name()))?;
        samples.iperf.push(run);
        check_interrupted()?;
    }
    samples.down.push(lab.down()?);
    Ok(())
}

/// The client pod's eth0 MTU and node01's VXLAN device MTU (if any). Read
/// with `ip` (netlink answers for the namespace it runs in; `/sys/class/net`
/// in a pod shows the sysfs of whoever mounted it).
fn lab_mtus(lab: &Lab) -> Result<(u32, Option<u32>)> {
    let eth0 = lab
        .exec_pod(
            CLIENT_POD,
            &["ip", "-o", "link", "show", "dev", "eth0"],
            Duration::from_secs(10),
        )?
        .check("read the pod's MTU")?
        .stdout;
    let eth0 = lab_env::mtu_of(&eth0).context("parse the pod's MTU")?;
    let links = lab.exec_node("node01", &["ip", "-o", "link", "show", "type", "vxlan"])?;
    Ok((eth0, lab_env::mtu_of(&links)))
}

fn measure(args: &Args) -> Result<Report> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the lab benchmark needs root (network namespaces)"
    );
    let dir = TempDir::create("lab")?;
    let mut manifests = Vec::new();
    for route in [Route::HostGw, Route::Vxlan] {
        let routing = route.routing().context("lab route")?;
        let file = dir.path().join(format!("{routing}.yaml"));
        std::fs::write(&file, manifest(routing))
            .with_context(|| format!("write {}", file.display()))?;
        manifests.push((route, file));
    }
    let mut veth = VethPair::create(&args.iperf3).context("create the veth pair")?;
    let mut samples: Vec<(Route, Samples)> = Route::ALL
        .iter()
        .map(|&p| (p, Samples::default()))
        .collect();
    let files = args.control_plane != "kubernetes";
    let kube = args.control_plane != "files";
    // Each repetition runs the three paths, starting one later each time.
    for rep in (0..args.runs).filter(|_| files) {
        let with_iperf = rep < args.iperf_runs;
        for k in 0..Route::ALL.len() {
            check_interrupted()?;
            let i = (rep + k) % Route::ALL.len();
            let (route, s) = &mut samples[i];
            let route = *route;
            eprintln!(
                "repetition {}/{}: {}{}",
                rep + 1,
                args.runs,
                route.label(),
                if with_iperf { "" } else { " (up/down only)" }
            );
            match route {
                Route::Veth => {
                    if !with_iperf {
                        continue;
                    }
                    if s.mtu.is_none() {
                        s.mtu = Some((veth.mtu()?, None));
                    }
                    let run = sample(|| veth.iperf(&args.iperf3, args.seconds))
                        .context("iperf3 over the veth pair")?;
                    s.iperf.push(run);
                }
                Route::HostGw | Route::Vxlan => {
                    let manifest = manifests
                        .iter()
                        .find(|(p, _)| *p == route)
                        .map(|(_, f)| f.as_path())
                        .context("manifest")?;
                    lab_round(args, route, manifest, with_iperf, s)?;
                }
            }
            if let Some(run) = s.iperf.last().filter(|_| with_iperf) {
                eprintln!(
                    "  {:.2} Gbit/s, {} retransmits; machine idle {:.0}% before, {:.0}% during",
                    run.iperf.gbps,
                    run.iperf.retransmits,
                    run.idle_before * 100.0,
                    run.idle_during * 100.0
                );
            }
        }
    }
    drop(veth);
    let mut kube_samples = Samples::default();
    if kube {
        let manifest = manifests
            .iter()
            .find(|(p, _)| *p == Route::Vxlan)
            .map(|(_, f)| f.as_path())
            .context("manifest")?;
        for rep in 0..args.runs {
            check_interrupted()?;
            eprintln!(
                "repetition {}/{}: vxlan lab, Kubernetes control plane (up/down only)",
                rep + 1,
                args.runs
            );
            let name = format!("{}{}-k", lab_env::LAB_PREFIX, std::process::id());
            kube_samples
                .up_idle
                .push(lab_env::wait_quiet(QUIET_IDLE, QUIET_MAX_WAIT)?);
            let (lab, up) = Lab::up(&args.podwire, &name, manifest, "kubernetes")?;
            kube_samples.up.push(up);
            kube_samples.down.push(lab.down()?);
        }
    }
    let mut report = report(args, &samples, files)?;
    if kube {
        report
            .labs
            .push(lab_times("vxlan", "kubernetes", &kube_samples)?);
    }
    Ok(report)
}

fn lab_times(routing: &'static str, control_plane: &'static str, s: &Samples) -> Result<LabTimes> {
    let up = Stats::of(&s.up).context("no lab up samples")?;
    let target = if control_plane == "kubernetes" {
        KUBE_UP_TARGET_MS
    } else {
        UP_TARGET_MS
    };
    Ok(LabTimes {
        routing,
        control_plane,
        up_ms: up,
        down_ms: Stats::of(&s.down).context("no lab down samples")?,
        up_target_ms: target,
        up_met: up.median_ms <= target,
        idle_before_up_percent: Summary::of(
            &s.up_idle.iter().map(|i| i * 100.0).collect::<Vec<_>>(),
        )
        .context("no lab up samples")?,
    })
}

fn report(args: &Args, samples: &[(Route, Samples)], files: bool) -> Result<Report> {
    let mut labs = Vec::new();
    for (route, s) in samples.iter().filter(|_| files) {
        let Some(routing) = route.routing() else {
            continue;
        };
        labs.push(lab_times(routing, "files", s)?);
    }
    let veth = samples
        .iter()
        .find(|(p, _)| *p == Route::Veth)
        .map(|(_, s)| s)
        .context("no veth samples")?;
    let veth_median = Summary::of(&gbps(&veth.iperf)).map(|s| s.median);
    let mut throughput = Vec::new();
    for (route, s) in samples {
        let Some(g) = Summary::of(&gbps(&s.iperf)) else {
            continue;
        };
        let summary = |f: fn(&Sample) -> f64| {
            Summary::of(&s.iperf.iter().map(f).collect::<Vec<_>>()).unwrap_or(g)
        };
        let ratio = veth_median.map(|v| g.median / v);
        let paired: Vec<f64> = s
            .iperf
            .iter()
            .zip(&veth.iperf)
            .map(|(a, b)| a.iperf.gbps / b.iperf.gbps)
            .collect();
        let target = route.target();
        throughput.push(Throughput {
            route: *route,
            gbps: g,
            retransmits: summary(|r| r.iperf.retransmits as f64),
            sender_cpu_percent: summary(|r| r.iperf.sender_cpu),
            receiver_cpu_percent: summary(|r| r.iperf.receiver_cpu),
            idle_before_percent: summary(|r| r.idle_before * 100.0),
            idle_during_percent: summary(|r| r.idle_during * 100.0),
            ratio,
            paired_ratio: Summary::of(&paired).map(|s| s.median),
            target,
            met: target.and_then(|t| ratio.map(|r| r >= t)),
            eth0_mtu: s.mtu.map(|m| m.0),
            overlay_mtu: s.mtu.and_then(|m| m.1),
            runs: s.iperf.clone(),
        });
    }
    Ok(Report {
        nodes: NODES,
        pods: PODS,
        runs: args.runs,
        iperf_runs: args.iperf_runs,
        iperf_seconds: args.seconds,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        labs,
        throughput,
    })
}

fn gbps(runs: &[Sample]) -> Vec<f64> {
    runs.iter().map(|r| r.iperf.gbps).collect()
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "",
    }
}

fn print_table(r: &Report) {
    println!(
        "podwire lab benchmark: {} nodes, {} pods; {} up/down runs per routing mode; \
         {} iperf3 runs of -t {} (1 TCP stream) per path, paths interleaved; {} CPUs, kernel {}",
        r.nodes, r.pods, r.runs, r.iperf_runs, r.iperf_seconds, r.cpus, r.kernel
    );
    println!();
    println!(
        "{:<32} {:>5} {:>9} {:>9} {:>9}  {:<12} {:>8}",
        "lab (ms)", "runs", "min", "median", "max", "target", "idle b %"
    );
    for l in &r.labs {
        println!(
            "{:<32} {:>5} {:>9.1} {:>9.1} {:>9.1}  {:<12} {:>8.0}",
            format!("lab up ({}, {})", l.routing, l.control_plane),
            l.up_ms.runs,
            l.up_ms.min_ms,
            l.up_ms.median_ms,
            l.up_ms.max_ms,
            format!("<={:.0} {}", l.up_target_ms, verdict(Some(l.up_met))),
            l.idle_before_up_percent.median
        );
        println!(
            "{:<32} {:>5} {:>9.1} {:>9.1} {:>9.1}",
            format!("lab down ({}, {})", l.routing, l.control_plane),
            l.down_ms.runs,
            l.down_ms.min_ms,
            l.down_ms.median_ms,
            l.down_ms.max_ms,
        );
    }
    println!();
    println!(
        "{:<32} {:>5} {:>9} {:>9} {:>9} {:>7} {:>7}  {:<10} {:>6} {:>9} {:>10} {:>10}",
        "iperf3 (Gbit/s)",
        "runs",
        "min",
        "median",
        "max",
        "/veth",
        "paired",
        "target",
        "retx",
        "cpu s/r %",
        "idle b/d %",
        "mtu"
    );
    for t in &r.throughput {
        let ratio = t.ratio.map(|x| format!("{x:.3}")).unwrap_or_default();
        let paired = t
            .paired_ratio
            .map(|x| format!("{x:.3}"))
            .unwrap_or_default();
        let target = t
            .target
            .map(|x| format!(">={x:.2} {}", verdict(t.met)))
            .unwrap_or_default();
        let mtu = match (t.eth0_mtu, t.overlay_mtu) {
            (Some(e), Some(o)) => format!("{e}/{o}"),
            (Some(e), None) => e.to_string(),
            _ => String::new(),
        };
        println!(
            "{:<32} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>7}  {:<10} {:>6.0} {:>4.0}/{:<4.0} {:>5.0}/{:<4.0} {:>10}",
            t.route.label(),
            t.gbps.runs,
            t.gbps.min,
            t.gbps.median,
            t.gbps.max,
            ratio,
            paired,
            target,
            t.retransmits.median,
            t.sender_cpu_percent.median,
            t.receiver_cpu_percent.median,
            t.idle_before_percent.median,
            t.idle_during_percent.median,
            mtu
        );
    }
    println!();
    println!(
        "/veth: median over the veth pair's median; paired: median of each repetition's ratio to \
         its own veth run; retx: median TCP retransmits per run; cpu s/r: iperf3 sender/receiver \
         CPU; idle b/d: machine idle before/during a run (each run first waits up to {} s for \
         >= {:.0}% idle); mtu: eth0 (pod or veth) / node01's VXLAN device",
        QUIET_MAX_WAIT.as_secs(),
        QUIET_IDLE * 100.0
    );
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("lab bench: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(err) = ns::install_interrupt_handler() {
        eprintln!("lab bench: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    for gone in ns::sweep(false)
        .into_iter()
        .chain(lab_env::sweep_labs(&args.podwire))
    {
        eprintln!("removed leftover {gone}");
    }
    let result = measure(&args);
    // The guards have run by now; this only catches what they could not.
    for gone in ns::sweep(true) {
        eprintln!("removed leftover {gone}");
    }
    podwire_bench::finish("lab", result, args.json, print_table)
}

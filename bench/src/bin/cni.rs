//! The CNI benchmark (`bench/cni`): times podwire as a CNI plugin against the
//! reference plugins (bridge + host-local, with iptables masquerade, chained
//! with portmap), interleaved in one run, next to the kernel's floor for
//! deleting a veth pair, plus 100 ADDs launched at once. Prints a table (or
//! JSON with `--json`) with the ratios and the targets from the issue.
//!
//! Safety: nothing runs in the benchmark's own network namespace. Every
//! scenario and implementation gets a fresh "host" namespace, every plugin is
//! moved into it before exec, container namespaces are created before the
//! clock starts, and all of them are removed on exit, failure or Ctrl-C.

use std::collections::HashSet;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use podwire_bench::ns::{self, NamedNetns, TempDir, check_interrupted};
use podwire_bench::plugin::{CniCommand, Exec, ips};
use podwire_bench::stats::Stats;
use podwire_kernel::Netlink;
use serde::Serialize;
use serde_json::{Value, json};

const USAGE: &str = "\
usage: cni [--runs N] [--parallel N] [--parallel-rounds N] [--only LIST] [--json]
           [--reference-only] [--podwire PATH] [--reference-dir DIR]

Benchmarks podwire as a CNI plugin against the reference plugins (run as root).
  --runs N            timed runs per sequential scenario (default 50, at least 1)
  --parallel N        plugins launched at once in the parallel scenario (default 100)
  --parallel-rounds N bursts per implementation, interleaved (default 3)
  --only LIST         comma-separated subset of: plain,masq,portmap,parallel
  --json              print the results as JSON instead of a table
  --reference-only    run the reference side only (while podwire is unfinished)
  --podwire PATH      the podwire binary (default: next to this binary)
  --reference-dir DIR the reference plugins (default /usr/lib/cni)";

/// Targets from the issue.
const ADD_RATIO_TARGET: f64 = 0.10;
const DEL_RATIO_TARGET: f64 = 0.50;
const DEL_OVER_FLOOR_TARGET_MS: f64 = 2.0;
/// A bare start (VERSION) over the process-start floor, and a plain ADD:
/// the plugin's start is paid by every ADD and DEL (issue "Hardening").
const EXEC_OVER_FLOOR_TARGET_MS: f64 = 0.3;
const PLAIN_ADD_TARGET_MS: f64 = 2.5;
const PARALLEL_TARGET_MS: f64 = 2000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// bridge + IPAM, no masquerade.
    Plain,
    /// bridge + IPAM with `ipMasq`.
    Masq,
    /// bridge + IPAM + port mappings.
    Portmap,
    /// N ADDs at once.
    Parallel,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Plain,
        Scenario::Masq,
        Scenario::Portmap,
        Scenario::Parallel,
    ];

    fn key(self) -> &'static str {
        match self {
            Scenario::Plain => "plain",
            Scenario::Masq => "masq",
            Scenario::Portmap => "portmap",
            Scenario::Parallel => "parallel",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Scenario::Plain | Scenario::Parallel => "bridge+ipam",
            Scenario::Masq => "bridge+ipam+ipMasq",
            Scenario::Portmap => "bridge+ipam+portmap",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Side {
    Reference,
    Podwire,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Reference => "reference",
            Side::Podwire => "podwire",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Side::Reference => "ref",
            Side::Podwire => "pw",
        }
    }
}

#[derive(Debug)]
struct Args {
    runs: usize,
    parallel: usize,
    parallel_rounds: usize,
    only: Vec<Scenario>,
    json: bool,
    reference_only: bool,
    podwire: PathBuf,
    reference_dir: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        runs: 50,
        parallel: 100,
        parallel_rounds: 3,
        only: Scenario::ALL.to_vec(),
        json: false,
        reference_only: false,
        podwire: std::env::current_exe()
            .context("locate this binary")?
            .with_file_name("podwire"),
        reference_dir: PathBuf::from("/usr/lib/cni"),
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
            "--parallel" => {
                args.parallel = value("--parallel")?
                    .parse()
                    .context("--parallel takes a number")?;
                ensure!(args.parallel >= 1, "--parallel must be at least 1");
            }
            "--parallel-rounds" => {
                args.parallel_rounds = value("--parallel-rounds")?
                    .parse()
                    .context("--parallel-rounds takes a number")?;
                ensure!(
                    args.parallel_rounds >= 1,
                    "--parallel-rounds must be at least 1"
                );
            }
            "--only" => {
                let list = value("--only")?;
                args.only = list
                    .split(',')
                    .map(|key| {
                        Scenario::ALL
                            .into_iter()
                            .find(|s| s.key() == key.trim())
                            .with_context(|| format!("unknown scenario {key:?}\n{USAGE}"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--json" => args.json = true,
            "--reference-only" => args.reference_only = true,
            "--podwire" => args.podwire = PathBuf::from(value("--podwire")?),
            "--reference-dir" => args.reference_dir = PathBuf::from(value("--reference-dir")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if !args.reference_only {
        // The CNI_PATH symlinks must not depend on the working directory.
        args.podwire = args.podwire.canonicalize().with_context(|| {
            format!(
                "podwire binary {} not found (cargo build --release -p podwire)",
                args.podwire.display()
            )
        })?;
    }
    Ok(args)
}

/// Hands out container names, ids and host ports unique within the run.
struct Containers {
    next: AtomicUsize,
}

/// A container as a runtime sees it: its namespace (made before the clock
/// starts), its id, and the host port it asks for when ports are mapped.
struct Container {
    id: String,
    ns: NamedNetns,
    host_port: u16,
}

impl Containers {
    fn create(&self, side: Side) -> Result<Container> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base: usize = match side {
            Side::Reference => 20000,
            Side::Podwire => 30000,
        };
        Ok(Container {
            id: format!("pwbench-{pid}-{n}"),
            ns: NamedNetns::create(&format!("pwbench-c-{pid}-{n}"))?,
            host_port: u16::try_from(base + n % 10000).context("host port")?,
        })
    }
}

/// One plugin of a network's chain (a conflist of length one or two).
struct Plugin {
    exe: PathBuf,
    conf: Value,
    /// Declares the portMappings capability, so runtimeConfig is injected.
    ports: bool,
}

/// One implementation's network in its own fresh host namespace.
struct Network {
    side: Side,
    host: NamedNetns,
    /// IPAM and plugin state, and podwire's CNI_PATH; removed with the network.
    _dir: TempDir,
    cni_path: PathBuf,
    chain: Vec<Plugin>,
}

impl Network {
    fn new(args: &Args, side: Side, scenario: Scenario) -> Result<Network> {
        let tag = format!("{}-{}", scenario.key(), side.short());
        let host = NamedNetns::create(&format!("pwbench-host-{}-{tag}", std::process::id()))?;
        let dir = TempDir::create(&tag)?;
        let masq = scenario == Scenario::Masq;
        let ports = scenario == Scenario::Portmap;
        let (cni_path, chain) = match side {
            Side::Reference => {
                let cni_path = args.reference_dir.clone();
                let bridge = json!({
                    "type": "bridge",
                    "bridge": "pwb-ref0",
                    "isGateway": true,
                    "ipMasq": masq,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.78.0.0/16"}]],
                        "dataDir": dir.path().join("ipam"),
                    },
                });
                let mut chain = vec![Plugin {
                    exe: cni_path.join("bridge"),
                    conf: bridge,
                    ports: false,
                }];
                if ports {
                    chain.push(Plugin {
                        exe: cni_path.join("portmap"),
                        conf: json!({"type": "portmap", "capabilities": {"portMappings": true}}),
                        ports: true,
                    });
                }
                (cni_path, chain)
            }
            Side::Podwire => {
                let cni_path = dir.path().join("bin");
                std::fs::create_dir(&cni_path)
                    .with_context(|| format!("create {}", cni_path.display()))?;
                for name in ["podwire", "podwire-portmap"] {
                    symlink(&args.podwire, cni_path.join(name))
                        .with_context(|| format!("symlink {name} in {}", cni_path.display()))?;
                }
                let mut conf = json!({
                    "type": "podwire",
                    "bridge": "pwb-pw0",
                    "isGateway": true,
                    "ipMasq": masq,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "podwire",
                        "ranges": [[{"subnet": "10.77.0.0/16"}]],
                        "dataDir": dir.path().join("ipam"),
                    },
                });
                if ports {
                    conf["capabilities"] = json!({"portMappings": true});
                }
                let chain = vec![Plugin {
                    exe: cni_path.join("podwire"),
                    conf,
                    ports,
                }];
                (cni_path, chain)
            }
        };
        Ok(Network {
            side,
            host,
            _dir: dir,
            cni_path,
            chain,
        })
    }

    /// The netconf libcni would hand `plugin` for container `c`.
    fn netconf(&self, plugin: &Plugin, c: &Container, prev: Option<&Value>) -> Value {
        let mut conf = plugin.conf.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!(format!("pwbench-{}", self.side.short()));
        if plugin.ports {
            conf["runtimeConfig"] = json!({"portMappings": [
                {"hostPort": c.host_port, "containerPort": 80, "protocol": "tcp"}
            ]});
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn exec<'a>(&'a self, plugin: &'a Plugin, command: CniCommand, c: &'a Container) -> Exec<'a> {
        Exec {
            host_fd: self.host.raw_fd(),
            cni_path: &self.cni_path,
            plugin: &plugin.exe,
            command,
            container_id: &c.id,
            netns: c.ns.path(),
            ifname: "eth0",
        }
    }

    /// ADD through the whole chain, each plugin getting the previous result;
    /// the time is the sum of the plugin execs.
    fn add(&self, c: &Container) -> Result<(Duration, Value)> {
        let mut total = Duration::ZERO;
        let mut prev: Option<Value> = None;
        for plugin in &self.chain {
            let conf = self.netconf(plugin, c, prev.as_ref());
            let outcome = self.exec(plugin, CniCommand::Add, c).run(&conf)?;
            total += outcome.elapsed;
            prev = outcome.result;
        }
        let result = prev.context("empty plugin chain")?;
        Ok((total, result))
    }

    /// DEL through the chain in reverse, each plugin getting the cached ADD
    /// result as prevResult (as libcni does from CNI 0.4.0 on).
    fn del(&self, c: &Container, added: &Value) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for plugin in self.chain.iter().rev() {
            let conf = self.netconf(plugin, c, Some(added));
            total += self.exec(plugin, CniCommand::Del, c).run(&conf)?.elapsed;
        }
        Ok(total)
    }

    /// A bare start of the chain's first plugin (CNI VERSION).
    fn version(&self, c: &Container) -> Result<Duration> {
        let plugin = self.chain.first().context("empty plugin chain")?;
        let conf = json!({"cniVersion": "1.0.0"});
        Ok(self
            .exec(plugin, CniCommand::Version, c)
            .run(&conf)?
            .elapsed)
    }

    /// Spawns `/bin/true` exactly as a plugin is spawned: the cost of a
    /// process start that does nothing.
    fn exec_floor(&self, c: &Container) -> Result<Duration> {
        let plugin = Plugin {
            exe: PathBuf::from("/bin/true"),
            conf: Value::Null,
            ports: false,
        };
        let (elapsed, output) = self.exec(&plugin, CniCommand::Version, c).run_raw(b"{}")?;
        ensure!(
            output.status.success(),
            "/bin/true failed: {}",
            output.status
        );
        Ok(elapsed)
    }

    /// One untimed ADD + DEL, so the bridge, IPAM store and NAT chains exist
    /// before timing starts (as on a node that already runs pods).
    fn warm_up(&self, containers: &Containers) -> Result<()> {
        let c = containers.create(self.side)?;
        let (_, result) = self
            .add(&c)
            .with_context(|| format!("{} warm-up ADD", self.side.name()))?;
        self.del(&c, &result)
            .with_context(|| format!("{} warm-up DEL", self.side.name()))?;
        Ok(())
    }
}

/// The kernel's cost of deleting one veth pair whose peer is in a container
/// namespace: what any plugin's DEL must pay at least.
struct Floor {
    _host: NamedNetns,
    netlink: Netlink,
    samples: Vec<Duration>,
}

impl Floor {
    fn new() -> Result<Floor> {
        let host = NamedNetns::create(&format!("pwbench-host-{}-floor", std::process::id()))?;
        let netlink =
            Netlink::in_netns(host.netns()).context("netlink socket in the floor namespace")?;
        Ok(Floor {
            _host: host,
            netlink,
            samples: Vec::new(),
        })
    }

    /// Measures one delete; returns the container so that its namespace
    /// outlives the timed part of the run.
    fn measure(&mut self, containers: &Containers) -> Result<Container> {
        let c = containers.create(Side::Podwire)?;
        let name = format!("pwfl{}", self.samples.len());
        self.netlink
            .create_veth(&name, "eth0", c.ns.raw_fd(), None, None)
            .with_context(|| format!("create veth {name} for the floor"))?;
        let start = Instant::now();
        let deleted = self.netlink.delete_link(&name);
        let elapsed = start.elapsed();
        ensure!(
            deleted.with_context(|| format!("delete veth {name}"))?,
            "veth {name} vanished before delete"
        );
        self.samples.push(elapsed);
        Ok(c)
    }
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: &'static str,
    op: &'static str,
    implementation: Side,
    #[serde(flatten)]
    stats: Stats,
    /// podwire median / reference median (podwire rows only).
    ratio: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
    /// This median minus a floor's median: the kernel's veth deletion for
    /// DEL rows, spawning `/bin/true` for bare starts (EXEC rows).
    over_floor_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ParallelSide {
    implementation: Side,
    /// Plugins launched at once per round.
    n: usize,
    /// Wall time from the release of a burst of ADDs until the last exited.
    add_wall: Stats,
    /// Each ADD's own spawn-to-exit time within the bursts.
    add_each: Stats,
    /// The same for the burst of DELs that follows.
    del_wall: Stats,
    /// Fewest distinct IPs any round returned (always n, or the run fails).
    distinct_ips: usize,
}

/// One burst of ADDs then DELs.
struct Round {
    add_wall: Duration,
    add_each: Vec<Duration>,
    del_wall: Duration,
    distinct_ips: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    runs: usize,
    rows: Vec<Row>,
    floor: Option<Stats>,
    /// Spawning `/bin/true` the same way plugins are spawned.
    exec_floor: Option<Stats>,
    parallel: Vec<ParallelSide>,
    parallel_ratio: Option<f64>,
    parallel_target_ms: f64,
    parallel_met: Option<bool>,
}

/// Timings of one sequential scenario, per side.
struct Series {
    scenario: Scenario,
    add: Vec<(Side, Vec<Duration>)>,
    del: Vec<(Side, Vec<Duration>)>,
    /// Bare process starts (CNI VERSION) of the chain's first plugin; plain
    /// scenario only, to show how much of an ADD is just exec.
    version: Vec<(Side, Vec<Duration>)>,
    /// Spawning `/bin/true` the same way: the process-start floor.
    exec_floor: Vec<Duration>,
}

/// Container namespaces are kept until this many have piled up, then removed
/// together: the kernel tears a namespace down asynchronously, and doing that
/// between timed runs would bill its work to whichever plugin runs next.
const GRAVEYARD: usize = 120;

/// Removes `dead` and gives the kernel's namespace cleanup time to finish
/// before anything is timed again.
fn bury(dead: &mut Vec<Container>) {
    let n = dead.len();
    dead.clear();
    let ms = 300 + 10 * u64::try_from(n).unwrap_or(u64::MAX / 20);
    std::thread::sleep(Duration::from_millis(ms));
}

fn push(list: &mut [(Side, Vec<Duration>)], side: Side, d: Duration) {
    if let Some((_, v)) = list.iter_mut().find(|(s, _)| *s == side) {
        v.push(d);
    }
}

/// Runs ADD then DEL for every side, interleaved run by run with alternating
/// order, with one floor measurement per run.
fn sequential(
    args: &Args,
    sides: &[Side],
    scenario: Scenario,
    containers: &Containers,
    floor: &mut Floor,
) -> Result<Series> {
    let nets = sides
        .iter()
        .map(|&side| Network::new(args, side, scenario))
        .collect::<Result<Vec<_>>>()?;
    for net in &nets {
        net.warm_up(containers)
            .with_context(|| format!("scenario {}", scenario.label()))?;
    }
    let mut series = Series {
        scenario,
        add: sides.iter().map(|&s| (s, Vec::new())).collect(),
        del: sides.iter().map(|&s| (s, Vec::new())).collect(),
        version: sides.iter().map(|&s| (s, Vec::new())).collect(),
        exec_floor: Vec::new(),
    };
    let mut dead: Vec<Container> = Vec::new();
    for run in 0..args.runs {
        check_interrupted()?;
        let mut order: Vec<&Network> = nets.iter().collect();
        if run % 2 == 1 {
            order.reverse();
        }
        let cs = order
            .iter()
            .map(|net| containers.create(net.side))
            .collect::<Result<Vec<_>>>()?;
        let mut added = Vec::with_capacity(order.len());
        for (net, c) in order.iter().zip(&cs) {
            let (d, result) = net.add(c).with_context(|| {
                format!(
                    "scenario {} run {run}: {} ADD",
                    scenario.label(),
                    net.side.name()
                )
            })?;
            push(&mut series.add, net.side, d);
            added.push(result);
        }
        for ((net, c), result) in order.iter().zip(&cs).zip(&added) {
            let d = net.del(c, result).with_context(|| {
                format!(
                    "scenario {} run {run}: {} DEL",
                    scenario.label(),
                    net.side.name()
                )
            })?;
            push(&mut series.del, net.side, d);
        }
        if scenario == Scenario::Plain {
            for (net, c) in order.iter().zip(&cs) {
                let d = net
                    .version(c)
                    .with_context(|| format!("{} VERSION", net.side.name()))?;
                push(&mut series.version, net.side, d);
            }
            if let (Some(net), Some(c)) = (order.first(), cs.first()) {
                series.exec_floor.push(net.exec_floor(c)?);
            }
        }
        dead.extend(cs);
        dead.push(floor.measure(containers)?);
        if dead.len() >= GRAVEYARD {
            bury(&mut dead);
        }
    }
    drop(nets);
    bury(&mut dead);
    Ok(series)
}

/// Prepares `n` containers, launches `n` ADDs at once, checks the IPs are
/// distinct, then launches the `n` DELs at once; both wall times are kept.
fn parallel_round(args: &Args, side: Side, containers: &Containers) -> Result<Round> {
    let net = Network::new(args, side, Scenario::Parallel)?;
    net.warm_up(containers)?;
    let cs = (0..args.parallel)
        .map(|_| {
            check_interrupted()?;
            containers.create(side)
        })
        .collect::<Result<Vec<_>>>()?;

    let (add_wall, added) = launch_all(&cs, |c| net.add(c))?;
    let (each, results): (Vec<Duration>, Vec<Value>) = added
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("parallel {} ADD", side.name()))?
        .into_iter()
        .unzip();
    let all: Vec<String> = results.iter().flat_map(ips).collect();
    let distinct: HashSet<&str> = all
        .iter()
        .map(|ip| ip.split('/').next().unwrap_or(ip))
        .collect();
    ensure!(
        distinct.len() == all.len() && all.len() >= cs.len(),
        "parallel {}: {} ADDs returned {} addresses, {} distinct",
        side.name(),
        cs.len(),
        all.len(),
        distinct.len()
    );
    let distinct_ips = distinct.len();

    let pairs: Vec<(&Container, &Value)> = cs.iter().zip(&results).collect();
    let (del_wall, dels) = launch_all(&pairs, |(c, result)| net.del(c, result))?;
    dels.into_iter()
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("parallel {} DEL", side.name()))?;
    drop(pairs);
    drop(net);
    let mut cs = cs;
    bury(&mut cs);
    Ok(Round {
        add_wall,
        add_each: each,
        del_wall,
        distinct_ips,
    })
}

/// Runs `args.parallel_rounds` rounds per side, alternating which side goes
/// first, and summarises each side.
fn parallel(args: &Args, sides: &[Side], containers: &Containers) -> Result<Vec<ParallelSide>> {
    let mut rounds: Vec<(Side, Vec<Round>)> = sides.iter().map(|&s| (s, Vec::new())).collect();
    for r in 0..args.parallel_rounds {
        let mut order: Vec<usize> = (0..rounds.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            check_interrupted()?;
            let side = rounds[i].0;
            eprintln!(
                "running {} parallel ADDs ({}, round {}/{})...",
                args.parallel,
                side.name(),
                r + 1,
                args.parallel_rounds
            );
            let round = parallel_round(args, side, containers)
                .with_context(|| format!("parallel round {}", r + 1))?;
            rounds[i].1.push(round);
        }
    }
    rounds
        .into_iter()
        .map(|(side, rs)| {
            let walls: Vec<Duration> = rs.iter().map(|r| r.add_wall).collect();
            let each: Vec<Duration> = rs.iter().flat_map(|r| r.add_each.iter().copied()).collect();
            let dels: Vec<Duration> = rs.iter().map(|r| r.del_wall).collect();
            Ok(ParallelSide {
                implementation: side,
                n: args.parallel,
                add_wall: Stats::of(&walls).context("no parallel rounds")?,
                add_each: Stats::of(&each).context("no parallel ADDs")?,
                del_wall: Stats::of(&dels).context("no parallel rounds")?,
                distinct_ips: rs.iter().map(|r| r.distinct_ips).min().unwrap_or(0),
            })
        })
        .collect()
}

/// Runs `f` on every item in its own thread, all released at once when every
/// thread is ready; returns the wall time from the release until the last one
/// finished.
fn launch_all<I: Sync, T: Send>(
    items: &[I],
    f: impl Fn(&I) -> Result<T> + Sync,
) -> Result<(Duration, Vec<Result<T>>)> {
    let gate = RwLock::new(());
    let ready = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Held until every thread waits on it; a read lock each releases them.
        let closed = gate.write().map_err(|_| anyhow!("launch gate poisoned"))?;
        let mut handles = Vec::with_capacity(items.len());
        let mut spawn_error = None;
        for item in items {
            let (gate, ready, abort, f) = (&gate, &ready, &abort, &f);
            let spawned = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    ready.fetch_add(1, Ordering::SeqCst);
                    let _open = gate.read();
                    if abort.load(Ordering::SeqCst) {
                        return (Err(anyhow!("launch aborted")), Instant::now());
                    }
                    let result = f(item);
                    (result, Instant::now())
                });
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(err) => {
                    spawn_error = Some(err);
                    break;
                }
            }
        }
        if let Some(err) = spawn_error {
            abort.store(true, Ordering::SeqCst);
            drop(closed);
            return Err(err).context("spawn launcher thread");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready.load(Ordering::SeqCst) < items.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the last threads reach the lock after counting themselves.
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        drop(closed);
        let mut last = start;
        let mut results = Vec::with_capacity(handles.len());
        for handle in handles {
            match handle.join() {
                Ok((result, end)) => {
                    last = last.max(end);
                    results.push(result);
                }
                Err(_) => results.push(Err(anyhow!("a launcher thread panicked"))),
            }
        }
        Ok((last - start, results))
    })
}

fn rows(series: &[Series], floor: Option<&Stats>, exec_floor: Option<&Stats>) -> Vec<Row> {
    let mut rows = Vec::new();
    for s in series {
        for (op, list) in [("ADD", &s.add), ("DEL", &s.del), ("EXEC", &s.version)] {
            let reference = list
                .iter()
                .find(|(side, _)| *side == Side::Reference)
                .and_then(|(_, v)| Stats::of(v));
            for (side, samples) in list {
                let Some(stats) = Stats::of(samples) else {
                    continue;
                };
                let ratio = match (side, reference) {
                    (Side::Podwire, Some(r)) => Some(stats.median_ms / r.median_ms),
                    _ => None,
                };
                let over_floor_ms = match op {
                    "DEL" => floor,
                    "EXEC" => exec_floor,
                    _ => None,
                }
                .map(|f| stats.median_ms - f.median_ms);
                let (target, met) = match (side, op) {
                    (Side::Podwire, "ADD") if s.scenario == Scenario::Plain => (
                        Some(format!(
                            "<={ADD_RATIO_TARGET:.2}, <={PLAIN_ADD_TARGET_MS}ms"
                        )),
                        ratio.map(|r| {
                            r <= ADD_RATIO_TARGET && stats.median_ms <= PLAIN_ADD_TARGET_MS
                        }),
                    ),
                    (Side::Podwire, "ADD") => (
                        Some(format!("<={ADD_RATIO_TARGET:.2}")),
                        ratio.map(|r| r <= ADD_RATIO_TARGET),
                    ),
                    (Side::Podwire, "EXEC") => (
                        Some(format!("exec floor+{EXEC_OVER_FLOOR_TARGET_MS}ms")),
                        over_floor_ms.map(|o| o <= EXEC_OVER_FLOOR_TARGET_MS),
                    ),
                    (Side::Podwire, "DEL") => (
                        Some(format!(
                            "<={DEL_RATIO_TARGET:.2}, floor+{DEL_OVER_FLOOR_TARGET_MS}ms"
                        )),
                        ratio.map(|r| {
                            r <= DEL_RATIO_TARGET
                                && over_floor_ms.is_none_or(|o| o <= DEL_OVER_FLOOR_TARGET_MS)
                        }),
                    ),
                    _ => (None, None),
                };
                rows.push(Row {
                    scenario: if op == "EXEC" {
                        "bare start (CNI VERSION)"
                    } else {
                        s.scenario.label()
                    },
                    op,
                    implementation: *side,
                    stats,
                    ratio,
                    target,
                    met,
                    over_floor_ms,
                });
            }
        }
    }
    rows
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "",
    }
}

fn print_table(report: &Report) {
    println!(
        "podwire CNI benchmark: {} timed runs per scenario, podwire and reference interleaved; times in ms",
        report.runs
    );
    println!(
        "{:<30} {:<10} {:>5} {:>8} {:>8} {:>8} {:>7}  {:<26} {:>10}",
        "scenario", "impl", "runs", "min", "median", "max", "pw/ref", "target", "over floor"
    );
    for row in &report.rows {
        let ratio = row.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
        let target = match &row.target {
            Some(t) => format!("{t} {}", verdict(row.met)),
            None => String::new(),
        };
        let over = row
            .over_floor_ms
            .map(|o| format!("{o:+.2}"))
            .unwrap_or_default();
        let line = format!(
            "{:<30} {:<10} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>7}  {:<26} {:>10}",
            format!("{} {}", row.op, row.scenario),
            row.implementation.name(),
            row.stats.runs,
            row.stats.min_ms,
            row.stats.median_ms,
            row.stats.max_ms,
            ratio,
            target,
            over
        );
        println!("{}", line.trim_end());
    }
    if let Some(f) = &report.floor {
        println!(
            "{:<30} {:<10} {:>5} {:>8.2} {:>8.2} {:>8.2}  (delete one veth pair, peer in a container netns)",
            "DEL kernel floor", "kernel", f.runs, f.min_ms, f.median_ms, f.max_ms
        );
    }
    if let Some(f) = &report.exec_floor {
        println!(
            "{:<30} {:<10} {:>5} {:>8.2} {:>8.2} {:>8.2}  (spawn /bin/true the same way: process-start floor)",
            "EXEC process floor", "os", f.runs, f.min_ms, f.median_ms, f.max_ms
        );
    }
    for p in &report.parallel {
        println!(
            "{:<30} {:<10} {:>5} {:>8.2} {:>8.2} {:>8.2}  wall of {} ADDs at once; each ADD median {:.1}, max {:.1}; distinct IPs {}/{}",
            format!("PAR{} ADD burst (wall)", p.n),
            p.implementation.name(),
            p.add_wall.runs,
            p.add_wall.min_ms,
            p.add_wall.median_ms,
            p.add_wall.max_ms,
            p.n,
            p.add_each.median_ms,
            p.add_each.max_ms,
            p.distinct_ips,
            p.n
        );
        println!(
            "{:<30} {:<10} {:>5} {:>8.2} {:>8.2} {:>8.2}  wall of the {} DELs that follow, at once",
            format!("PAR{} DEL burst (wall)", p.n),
            p.implementation.name(),
            p.del_wall.runs,
            p.del_wall.min_ms,
            p.del_wall.median_ms,
            p.del_wall.max_ms,
            p.n
        );
    }
    if let Some(pw) = report
        .parallel
        .iter()
        .find(|p| p.implementation == Side::Podwire)
    {
        let ratio = report
            .parallel_ratio
            .map(|r| format!("pw/ref {r:.3}, "))
            .unwrap_or_default();
        println!(
            "parallel target: podwire {} ADDs at once within {:.0} ms (median wall): {ratio}median {:.1} ms, worst {:.1} ms: {}",
            pw.n,
            report.parallel_target_ms,
            pw.add_wall.median_ms,
            pw.add_wall.max_ms,
            verdict(report.parallel_met)
        );
    }
}

fn run(args: &Args) -> Result<Report> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the CNI benchmark needs root (network namespaces)"
    );
    let sides: Vec<Side> = if args.reference_only {
        vec![Side::Reference]
    } else {
        vec![Side::Reference, Side::Podwire]
    };
    for plugin in ["bridge", "host-local", "portmap"] {
        let path = args.reference_dir.join(plugin);
        ensure!(
            path.exists(),
            "reference plugin {} not found",
            path.display()
        );
    }
    let needs_iptables = args
        .only
        .iter()
        .any(|s| matches!(s, Scenario::Masq | Scenario::Portmap));
    if needs_iptables {
        ensure!(
            ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"]
                .iter()
                .any(|p| Path::new(p).exists()),
            "iptables is not installed; the reference plugins need it (apt-get install -y iptables)"
        );
    }

    let containers = Containers {
        next: AtomicUsize::new(0),
    };
    let mut floor = Floor::new()?;
    let mut series = Vec::new();
    for &scenario in &args.only {
        check_interrupted()?;
        if scenario == Scenario::Parallel {
            continue;
        }
        eprintln!("running {} ({} runs)...", scenario.label(), args.runs);
        series.push(sequential(args, &sides, scenario, &containers, &mut floor)?);
    }
    let par = if args.only.contains(&Scenario::Parallel) {
        parallel(args, &sides, &containers)?
    } else {
        Vec::new()
    };

    let floor_stats = Stats::of(&floor.samples);
    let parallel_ratio = match (
        par.iter().find(|p| p.implementation == Side::Podwire),
        par.iter().find(|p| p.implementation == Side::Reference),
    ) {
        (Some(pw), Some(r)) => Some(pw.add_wall.median_ms / r.add_wall.median_ms),
        _ => None,
    };
    let parallel_met = par
        .iter()
        .find(|p| p.implementation == Side::Podwire)
        .map(|p| p.add_wall.median_ms <= PARALLEL_TARGET_MS);
    let exec_floor = Stats::of(
        &series
            .iter()
            .flat_map(|s| s.exec_floor.iter().copied())
            .collect::<Vec<_>>(),
    );
    Ok(Report {
        runs: args.runs,
        rows: rows(&series, floor_stats.as_ref(), exec_floor.as_ref()),
        floor: floor_stats,
        exec_floor,
        parallel: par,
        parallel_ratio,
        parallel_target_ms: PARALLEL_TARGET_MS,
        parallel_met,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("cni bench: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(err) = ns::install_interrupt_handler() {
        eprintln!("cni bench: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    for gone in ns::sweep(false) {
        eprintln!("removed leftover {gone}");
    }
    let result = run(&args);
    // The guards have run by now; this only catches what they could not.
    for gone in ns::sweep(true) {
        eprintln!("removed leftover {gone}");
    }
    podwire_bench::finish("cni", result, args.json, print_table)
}

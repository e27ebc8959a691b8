//! The Kubernetes-mode benchmark (`bench/kube`): podwire's components on a
//! real kube-apiserver against the real kube-proxy (nftables mode), both fed
//! by the same API writes in the same run:
//!
//! - +1 Service at 1k and 10k existing Services: from the Service create
//!   (its EndpointSlice already exists) until a TCP connect from the node to
//!   the new ClusterIP succeeds, on node A (podwire agent) and node B
//!   (kube-proxy), and until `podwire dns` answers its name;
//! - a new Ingress until `podwire ingress` routes its host to the backend;
//! - full sync at the largest scale: a restarted proxy on a node whose rules
//!   were removed, until a connect to the newest Service works and until it
//!   reports synced;
//! - memory of every component, and of `podwire dns` with 100k pods.
//!
//! Everything runs in namespaces the test-support harness creates and
//! removes (see `src/kube_env.rs`).

#[path = "../kube_env.rs"]
mod kube_env;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube_env::{Component, Env, Options, Poller, Probe};
use podwire_bench::ns::{self, check_interrupted};
use podwire_bench::stats::Summary;
use serde::Serialize;

const USAGE: &str = "\
usage: kube [--quick] [--runs N] [--sync-runs N] [--pods N] [--min-sync-zero] [--json]

podwire agent, dns and ingress on a real kube-apiserver, against the real
kube-proxy (nftables mode) fed by the same writes (run as root).
  --quick          1k Services only, 5 runs, 1 full sync, no pods (a couple of minutes)
  --runs N         +1 Service / Ingress runs per scale (default 20; --quick 5)
  --sync-runs N    full-sync restarts of each proxy at the largest scale (default 3; --quick 1)
  --pods N         pods for the DNS memory test (default 100000; --quick 0; 0 skips it)
  --scales A,B     Service counts to measure at (default 1000,10000; --quick 1000)
  --min-sync-zero  also run kube-proxy with --iptables-min-sync-period=0 on a third node
  --keep-logs DIR  copy every component's log (and the control plane's) to DIR at the end
  --json           print the results as JSON";

const ADD_TARGET_MS: f64 = 10.0;
const ADD_RATIO_TARGET: f64 = 10.0;
const DNS_TARGET_MS: f64 = 100.0;
const DNS_RSS_TARGET_MB: f64 = 30.0;
/// How often a probe tries during +1 measurements.
const PROBE_EVERY: Duration = Duration::from_millis(1);
/// How long a +1 probe may wait.
const PROBE_LIMIT: Duration = Duration::from_secs(120);
/// How long the bench waits for kube-proxy to be idle before a write.
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// ClusterIPs of the Services whose EndpointSlice is the measured write
/// start this far after the others.
const EP_OFFSET: usize = 50_000;

struct Args {
    runs: usize,
    sync_runs: usize,
    pods: usize,
    scales: Vec<usize>,
    min_sync_zero: bool,
    json: bool,
    quick: bool,
    keep_logs: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let quick = raw.iter().any(|a| a == "--quick");
    let mut a = Args {
        runs: if quick { 5 } else { 20 },
        sync_runs: if quick { 1 } else { 3 },
        pods: if quick { 0 } else { 100_000 },
        scales: if quick {
            vec![1_000]
        } else {
            vec![1_000, 10_000]
        },
        min_sync_zero: false,
        json: false,
        quick,
        keep_logs: None,
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => {}
            "--runs" => a.runs = value("--runs")?.parse::<usize>()?.max(1),
            "--sync-runs" => a.sync_runs = value("--sync-runs")?.parse()?,
            "--pods" => a.pods = value("--pods")?.parse()?,
            "--scales" => {
                let mut s = value("--scales")?
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .context("--scales takes numbers like 1000,10000")?;
                s.sort_unstable();
                s.dedup();
                s.retain(|&n| n > 0);
                if s.is_empty() {
                    bail!("--scales needs at least one count above 0");
                }
                a.scales = s;
            }
            "--min-sync-zero" => a.min_sync_zero = true,
            "--keep-logs" => a.keep_logs = Some(value("--keep-logs")?.into()),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------- report

/// min / median / p99 (nearest rank) / max of a series.
#[derive(Debug, Clone, Copy, Serialize)]
struct Dist {
    runs: usize,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(values: &[f64]) -> Option<Dist> {
        let s = Summary::of(values)?;
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = ((0.99 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(Dist {
            runs: s.runs,
            min: s.min,
            median: s.median,
            p99: v[rank - 1],
            max: s.max,
        })
    }
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    unit: &'static str,
    podwire: Option<Dist>,
    kube_proxy: Option<Dist>,
    /// kube-proxy / podwire: the median of per-run ratios where runs are
    /// paired (same write), else the ratio of medians.
    ratio: Option<f64>,
    target: Option<String>,
    met: Option<bool>,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            name: name.into(),
            unit,
            podwire: None,
            kube_proxy: None,
            ratio: None,
            target: None,
            met: None,
        }
    }

    fn podwire(mut self, v: &[f64]) -> Row {
        self.podwire = Dist::of(v);
        self
    }

    fn kube_proxy(mut self, v: &[f64]) -> Row {
        self.kube_proxy = Dist::of(v);
        if self.ratio.is_none()
            && let (Some(p), Some(k)) = (self.podwire, self.kube_proxy)
            && p.median > 0.0
        {
            self.ratio = Some(k.median / p.median);
        }
        self
    }

    fn paired_ratio(mut self, podwire: &[Option<f64>], peer: &[Option<f64>]) -> Row {
        let ratios: Vec<f64> = podwire
            .iter()
            .zip(peer)
            .filter_map(|(p, k)| match (p, k) {
                (Some(p), Some(k)) if *p > 0.0 => Some(k / p),
                _ => None,
            })
            .collect();
        self.ratio = Summary::of(&ratios).map(|s| s.median);
        self
    }

    fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }
}

#[derive(Debug, Serialize)]
struct Report {
    setup: Vec<String>,
    rows: Vec<Row>,
    notes: Vec<String>,
    legend: Vec<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn some(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

fn k(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

// ---------------------------------------------------------------- steps

/// Creates bulk Services `from..to`, each with its EndpointSlice of 1-3
/// backends, and waits until both proxies and DNS serve the last one.
fn grow(env: &Env, from: usize, to: usize, notes: &mut Vec<String>) -> Result<()> {
    eprintln!("creating Services {from}..{to} and their EndpointSlices through the API");
    let mut services = Vec::with_capacity(to - from);
    let mut slices = Vec::with_capacity(to - from);
    for i in from..to {
        let name = kube_env::bulk_name(i);
        services.push(kube_env::service(&name, kube_env::bulk_ip(i))?);
        slices.push(kube_env::slice(&name, &env.backends(i % 3 + 1))?);
    }
    let c = env.api.client();
    let t_svc = env.api.create_many(
        Api::<Service>::namespaced(c.clone(), kube_env::NS),
        services,
        "services",
    )?;
    let t_sl = env.api.create_many(
        Api::<EndpointSlice>::namespaced(c, kube_env::NS),
        slices,
        "endpointslices",
    )?;
    let n = to - from;
    let rate = n as f64 * 2.0 / (t_svc + t_sl).as_secs_f64();
    eprintln!(
        "  {n} Services in {:.1} s + {n} EndpointSlices in {:.1} s ({rate:.0} writes/s)",
        t_svc.as_secs_f64(),
        t_sl.as_secs_f64()
    );
    notes.push(format!(
        "creating {n} Services + {n} EndpointSlices ({} in flight): {:.1} s ({rate:.0} writes/s)",
        kube_env::CONCURRENCY,
        (t_svc + t_sl).as_secs_f64()
    ));
    let last = SocketAddrV4::new(kube_env::bulk_ip(to - 1), kube_env::SERVICE_PORT);
    let dns = kube_env::dns_name(&kube_env::bulk_name(to - 1));
    let caught_up = wait_all(env, last, &dns, Duration::from_millis(10))?;
    let text: Vec<String> = caught_up
        .iter()
        .map(|(who, d)| format!("{who} {:.2} s", d.as_secs_f64()))
        .collect();
    eprintln!(
        "  last Service served after the writes ended: {}",
        text.join(", ")
    );
    notes.push(format!(
        "after the bulk writes to {to} ended, the last Service worked after: {}",
        text.join(", ")
    ));
    Ok(())
}

/// Waits until nodes A, B (C) connect to `addr` and DNS answers `name`.
fn wait_all(
    env: &Env,
    addr: SocketAddrV4,
    name: &str,
    every: Duration,
) -> Result<Vec<(&'static str, Duration)>> {
    let limit = Duration::from_secs(900);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut probes = vec![
        ("podwire agent", env.node_a.path(), Probe::Tcp(addr)),
        ("kube-proxy", env.node_b.path(), Probe::Tcp(addr)),
        (
            "podwire dns",
            env.svc.path(),
            Probe::Dns {
                server: kube_env::DNS_ADDR.parse()?,
                name: name.to_string(),
            },
        ),
    ];
    if let Some(c) = &env.node_c {
        probes.push(("kube-proxy min-sync 0", c.path(), Probe::Tcp(addr)));
    }
    let pollers: Vec<(&str, Poller)> = probes
        .into_iter()
        .map(|(who, ns, p)| (who, Poller::start(ns, p, every, limit, stop.clone())))
        .collect();
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for (who, p) in pollers {
        match p.wait()? {
            Some(t) => out.push((who, t.saturating_duration_since(started))),
            None => failed.push(who),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} never served {addr} / {name} within {limit:?}",
            failed.join(", ")
        );
    }
    Ok(out)
}

/// What one +1 run measured, in ms.
#[derive(Default)]
struct Run {
    api: Option<f64>,
    podwire: Option<f64>,
    kube_proxy: Option<f64>,
    kube_proxy0: Option<f64>,
    dns: Option<f64>,
    ingress: Option<f64>,
    podwire_apply: Option<f64>,
    kube_proxy_sync: Option<f64>,
    /// The EndpointSlice written after its Service.
    ep: Option<Timed>,
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The `ms=` of the last incremental "service rules in place" line the
/// agent logged after byte `from` of its log.
fn podwire_apply_ms(env: &Env, from: u64) -> Option<f64> {
    let text = std::fs::read(env.log_path(Component::Agent)).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?);
    text.lines()
        .filter(|l| l.contains("service rules in place") && !l.contains("changed=0"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
        })
        .next_back()
}

/// Waits (at most `limit`) until kube-proxy has synced after `since`
/// (unix seconds), has no change pending, and its last sync is older than
/// its min-sync-period (1 s): the next write then finds it idle.
fn kube_proxy_idle(env: &Env, since: f64, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(m) = env.metrics(Component::KubeProxy) {
            let last = kube_env::metric(&m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
                .unwrap_or(0.0);
            let pending = [
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "kubeproxy_sync_proxy_rules_service_changes_pending",
            ]
            .iter()
            .map(|n| kube_env::metric(&m, n).unwrap_or(0.0))
            .sum::<f64>();
            if last > since && pending == 0.0 && unix_now() - last >= 1.2 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a write measured against the proxies, in ms from just before the
/// request: (API round trip, podwire, kube-proxy, kube-proxy min-sync 0,
/// extra probes..., podwire's apply ms=, kube-proxy's sync ms).
struct Timed {
    api: f64,
    podwire: Option<f64>,
    kube_proxy: Option<f64>,
    kube_proxy0: Option<f64>,
    extra: Vec<Option<f64>>,
    podwire_apply: Option<f64>,
    kube_proxy_sync: Option<f64>,
}

/// Starts a connect probe to `addr` on every node (and `extra` probes),
/// makes `write`, and waits for them all.
fn timed_write(
    env: &Env,
    addr: SocketAddrV4,
    extra: Vec<(&std::path::Path, Probe)>,
    write: impl FnOnce() -> Result<(Instant, Instant)>,
) -> Result<Timed> {
    let kp_before = env.kube_proxy_sync_totals(Component::KubeProxy);
    let log_from = file_len(&env.log_path(Component::Agent));
    let stop = Arc::new(AtomicBool::new(false));
    let start = |ns: &std::path::Path, p: Probe| {
        Poller::start(ns, p, PROBE_EVERY, PROBE_LIMIT, stop.clone())
    };
    let pa = start(env.node_a.path(), Probe::Tcp(addr));
    let pb = start(env.node_b.path(), Probe::Tcp(addr));
    let pc = env
        .node_c
        .as_ref()
        .map(|c| start(c.path(), Probe::Tcp(addr)));
    let px: Vec<Poller> = extra.into_iter().map(|(ns, p)| start(ns, p)).collect();
    let (t0, t_api) = match write() {
        Ok(t) => t,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    };
    let since = |t: Option<Instant>| t.map(|t| ms(t.saturating_duration_since(t0)));
    let mut timed = Timed {
        api: ms(t_api - t0),
        podwire: since(pa.wait()?),
        kube_proxy: since(pb.wait()?),
        kube_proxy0: None,
        extra: Vec::new(),
        podwire_apply: None,
        kube_proxy_sync: None,
    };
    if let Some(pc) = pc {
        timed.kube_proxy0 = since(pc.wait()?);
    }
    for p in px {
        timed.extra.push(since(p.wait()?));
    }
    timed.podwire_apply = podwire_apply_ms(env, log_from);
    // kube-proxy records a sync's duration after it returns, a little
    // after its rules work.
    if let Some((s0, c0)) = kp_before {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            if let Some((s1, c1)) = env.kube_proxy_sync_totals(Component::KubeProxy)
                && c1 > c0
            {
                timed.kube_proxy_sync = Some((s1 - s0) / (c1 - c0) * 1e3);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(timed)
}

/// One +1 run, two writes measured:
/// 1. the EndpointSlice first, then (kube-proxy idle) its Service, with
///    the nodes and DNS polling; then an Ingress for it;
/// 2. another Service first (no endpoints yet), then (kube-proxy idle) its
///    EndpointSlice, with the nodes polling.
fn add_one(env: &Env, index: usize) -> Result<Run> {
    let name = format!("new-{index}");
    let ip = kube_env::single_ip(index);
    let addr = SocketAddrV4::new(ip, kube_env::SERVICE_PORT);
    let before = unix_now();
    env.api.create_timed(
        kube_env::NS,
        kube_env::slice(&name, &env.backends(index % 3 + 1))?,
    )?;
    kube_proxy_idle(env, before, IDLE_LIMIT);
    let svc = kube_env::service(&name, ip)?;
    let dns = Probe::Dns {
        server: kube_env::DNS_ADDR.parse()?,
        name: kube_env::dns_name(&name),
    };
    let t = timed_write(env, addr, vec![(env.svc.path(), dns)], || {
        env.api.create_timed(kube_env::NS, svc)
    })?;
    let mut run = Run {
        api: Some(t.api),
        podwire: t.podwire,
        kube_proxy: t.kube_proxy,
        kube_proxy0: t.kube_proxy0,
        dns: t.extra.first().copied().flatten(),
        podwire_apply: t.podwire_apply,
        kube_proxy_sync: t.kube_proxy_sync,
        ..Run::default()
    };

    let host = format!("{name}.example.com");
    let stop = Arc::new(AtomicBool::new(false));
    let pi = Poller::start(
        env.svc.path(),
        Probe::Http {
            addr: kube_env::INGRESS_ADDR.parse()?,
            host: host.clone(),
        },
        PROBE_EVERY,
        PROBE_LIMIT,
        stop.clone(),
    );
    match env
        .api
        .create_timed(kube_env::NS, kube_env::ingress(&name, &host, &name)?)
    {
        Ok((t1, _)) => run.ingress = pi.wait()?.map(|t| ms(t.saturating_duration_since(t1))),
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = pi.wait();
            return Err(e);
        }
    }

    let name = format!("ep-{index}");
    let ip = kube_env::single_ip(EP_OFFSET + index);
    let before = unix_now();
    env.api
        .create_timed(kube_env::NS, kube_env::service(&name, ip)?)?;
    kube_proxy_idle(env, before, IDLE_LIMIT);
    let slice = kube_env::slice(&name, &env.backends(index % 3 + 1))?;
    let t = timed_write(
        env,
        SocketAddrV4::new(ip, kube_env::SERVICE_PORT),
        Vec::new(),
        || env.api.create_timed(kube_env::NS, slice),
    )?;
    run.ep = Some(t);
    Ok(run)
}

/// RSS samples (MB) of a component and its peak.
fn rss(env: &mut Env, c: Component, samples: usize) -> Result<(Vec<f64>, f64)> {
    let pid = env.pid(c)?;
    let mut v = Vec::new();
    let mut peak = 0.0;
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (r, hwm) = kube_env::rss_mb(pid)?;
        v.push(r);
        peak = hwm;
    }
    Ok((v, peak))
}

fn memory_rows(env: &mut Env, label: &str, report: &mut Report) -> Result<()> {
    let (agent, agent_peak) = rss(env, Component::Agent, 5)?;
    let (kp, kp_peak) = rss(env, Component::KubeProxy, 5)?;
    report.rows.push(
        Row::new(format!("RSS {label}: agent vs kube-proxy"), "MB")
            .podwire(&agent)
            .kube_proxy(&kp),
    );
    report.rows.push(
        Row::new(format!("  peak RSS {label} (VmHWM)"), "MB")
            .podwire(&[agent_peak])
            .kube_proxy(&[kp_peak]),
    );
    Ok(())
}

fn service_memory_rows(env: &mut Env, label: &str, report: &mut Report) -> Result<()> {
    let (dns, dns_peak) = rss(env, Component::Dns, 5)?;
    let (ing, ing_peak) = rss(env, Component::Ingress, 5)?;
    report
        .rows
        .push(Row::new(format!("RSS {label}: podwire dns"), "MB").podwire(&dns));
    report.notes.push(format!(
        "podwire dns peak RSS {label}: {dns_peak:.1} MB; podwire ingress peak {ing_peak:.1} MB"
    ));
    report
        .rows
        .push(Row::new(format!("RSS {label}: podwire ingress"), "MB").podwire(&ing));
    Ok(())
}

/// Restarts the agent on a node whose proxy table was removed: (s until a
/// connect to `addr` works, s until its status file says ok).
fn restart_agent(env: &mut Env, addr: SocketAddrV4) -> Result<(f64, f64)> {
    env.stop(Component::Agent);
    // The agent keeps its table on exit (Services work through a
    // restart); a node without rules is what a full sync starts from.
    let _ = kube_env::exec(
        &env.node_a,
        &["nft", "delete", "table", "inet", "podwire-proxy"],
    );
    let status = env.agent_status_path();
    let _ = std::fs::remove_file(&status);
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(600);
    let p = Poller::start(
        env.node_a.path(),
        Probe::Tcp(addr),
        Duration::from_millis(2),
        limit,
        stop.clone(),
    );
    let t0 = Instant::now();
    env.spawn(Component::Agent)?;
    let mut reported = None;
    while t0.elapsed() < limit {
        if let Ok(b) = std::fs::read(&status)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
            && v["ok"] == true
        {
            reported = Some(t0.elapsed());
            break;
        }
        if check_interrupted().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = p.wait()?;
    stop.store(true, Ordering::Relaxed);
    let connected = connected.context("the restarted agent never served the Service")?;
    let reported = reported.context("the restarted agent never reported ok")?;
    Ok((
        connected.saturating_duration_since(t0).as_secs_f64(),
        reported.as_secs_f64(),
    ))
}

/// Restarts kube-proxy on a node whose tables were removed: (s until a
/// connect to `addr` works, s until its metrics show a first sync).
fn restart_kube_proxy(env: &mut Env, addr: SocketAddrV4) -> Result<(f64, f64)> {
    env.stop(Component::KubeProxy);
    for family in ["ip", "ip6"] {
        let _ = kube_env::exec(
            &env.node_b,
            &["nft", "delete", "table", family, "kube-proxy"],
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let limit = Duration::from_secs(900);
    let p = Poller::start(
        env.node_b.path(),
        Probe::Tcp(addr),
        Duration::from_millis(2),
        limit,
        stop.clone(),
    );
    let t0 = Instant::now();
    env.spawn(Component::KubeProxy)?;
    let mut reported = None;
    while t0.elapsed() < limit {
        if env.kube_proxy_last_sync(Component::KubeProxy) > 0.0 {
            reported = Some(t0.elapsed());
            break;
        }
        if check_interrupted().is_err() {
            break;
        }
        env.pid(Component::KubeProxy)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let connected = p.wait()?;
    stop.store(true, Ordering::Relaxed);
    let connected = connected.context("the restarted kube-proxy never served the Service")?;
    let reported = reported.context("the restarted kube-proxy never reported a sync")?;
    Ok((
        connected.saturating_duration_since(t0).as_secs_f64(),
        reported.as_secs_f64(),
    ))
}

/// The DNS memory test: `pods` pods with addresses, then a restart of
/// podwire dns to time its zone load.
fn dns_pods(
    env: &mut Env,
    pods: usize,
    services: usize,
    last: &str,
    report: &mut Report,
) -> Result<()> {
    eprintln!("creating {pods} pods with status.podIP through the API (this takes minutes)");
    let took = env.api.create_pods(0, pods)?;
    report.notes.push(format!(
        "creating {pods} pods + their pods/status: {:.0} s ({:.0} writes/s)",
        took.as_secs_f64(),
        pods as f64 * 2.0 / took.as_secs_f64()
    ));
    // The running server has them once its zone stops changing.
    let started = Instant::now();
    let mut last_gen = None;
    let mut stable_since = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        check_interrupted()?;
        let generation = env
            .metrics(Component::Dns)
            .ok()
            .and_then(|m| kube_env::metric(&m, "podwire_dns_zone_generation"));
        if generation != last_gen {
            last_gen = generation;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let label = format!("{} svc + {} pods", k(services), k(pods));
    let (running, running_peak) = rss(env, Component::Dns, 5)?;
    let running_med = Summary::of(&running).map_or(0.0, |s| s.median);
    report.rows.push(
        Row::new(format!("RSS {label}: podwire dns (grown by watch)"), "MB")
            .podwire(&running)
            .target(
                format!("<={DNS_RSS_TARGET_MB:.0} MB"),
                running_med <= DNS_RSS_TARGET_MB,
            ),
    );
    eprintln!("restarting podwire dns with {label}");
    env.stop(Component::Dns);
    let stop = Arc::new(AtomicBool::new(false));
    let p = Poller::start(
        env.svc.path(),
        Probe::Dns {
            server: kube_env::DNS_ADDR.parse()?,
            name: kube_env::dns_name(last),
        },
        Duration::from_millis(5),
        Duration::from_secs(300),
        stop,
    );
    let t0 = Instant::now();
    env.spawn(Component::Dns)?;
    let loaded = p
        .wait()?
        .context("the restarted podwire dns never answered")?;
    let load_s = loaded.saturating_duration_since(t0).as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (fresh, fresh_peak) = rss(env, Component::Dns, 5)?;
    let fresh_med = Summary::of(&fresh).map_or(0.0, |s| s.median);
    report.rows.push(
        Row::new(format!("RSS {label}: podwire dns after a restart"), "MB")
            .podwire(&fresh)
            .target(
                format!("<={DNS_RSS_TARGET_MB:.0} MB"),
                fresh_med <= DNS_RSS_TARGET_MB,
            ),
    );
    report.rows.push(
        Row::new(format!("  peak RSS {label}: dns grown / restarted"), "MB")
            .podwire(&[running_peak, fresh_peak]),
    );
    report.rows.push(
        Row::new(format!("zone load at {label}: dns start -> answers"), "s").podwire(&[load_s]),
    );
    Ok(())
}

/// The rows of one scale's +1 runs.
fn scale_rows(scale: usize, runs: &[Run], min_sync_zero: bool, report: &mut Report) {
    let col = |f: &dyn Fn(&Run) -> Option<f64>| runs.iter().map(f).collect::<Vec<_>>();
    let ep = |f: fn(&Timed) -> Option<f64>| col(&|r: &Run| r.ep.as_ref().and_then(f));
    let series: [(&str, Vec<Option<f64>>); 6] = [
        ("podwire (Service write)", col(&|r| r.podwire)),
        ("kube-proxy (Service write)", col(&|r| r.kube_proxy)),
        ("podwire (slice write)", ep(|t| t.podwire)),
        ("kube-proxy (slice write)", ep(|t| t.kube_proxy)),
        ("dns", col(&|r| r.dns)),
        ("ingress", col(&|r| r.ingress)),
    ];
    let timeouts: Vec<String> = series
        .iter()
        .map(|(n, v)| (n, v.iter().filter(|x| x.is_none()).count()))
        .filter(|(_, c)| *c > 0)
        .map(|(n, c)| format!("{n}: {c}"))
        .collect();
    if !timeouts.is_empty() {
        report.notes.push(format!(
            "at {}: probes that never succeeded within {PROBE_LIMIT:?}: {}",
            k(scale),
            timeouts.join(", ")
        ));
    }
    let add_row = |name: String, pw: &[Option<f64>], kp: &[Option<f64>]| {
        let mut row = Row::new(name, "ms")
            .podwire(&some(pw))
            .kube_proxy(&some(kp))
            .paired_ratio(pw, kp);
        if let (Some(p), Some(ratio)) = (row.podwire, row.ratio) {
            row = row.target(
                format!("<={ADD_TARGET_MS:.0} ms, >={ADD_RATIO_TARGET:.0}x"),
                p.median <= ADD_TARGET_MS && ratio >= ADD_RATIO_TARGET,
            );
        }
        row
    };
    let after = |api: &dyn Fn(&Run) -> Option<f64>, e2e: &dyn Fn(&Run) -> Option<f64>| {
        runs.iter()
            .filter_map(|r| Some(e2e(r)? - api(r)?))
            .collect::<Vec<_>>()
    };
    let (pw, kp) = (&series[0].1, &series[1].1);
    report.rows.push(add_row(
        format!("+1 Service at {}: Service write -> connect", k(scale)),
        pw,
        kp,
    ));
    report.rows.push(
        Row::new("  after the create call returned", "ms")
            .podwire(&after(&|r| r.api, &|r| r.podwire))
            .kube_proxy(&after(&|r| r.api, &|r| r.kube_proxy)),
    );
    report.rows.push(
        Row::new("  the proxy's own apply (log ms= / metrics)", "ms")
            .podwire(&some(&col(&|r| r.podwire_apply)))
            .kube_proxy(&some(&col(&|r| r.kube_proxy_sync))),
    );
    report
        .rows
        .push(Row::new("  API round trip of the create", "ms").podwire(&some(&col(&|r| r.api))));
    if min_sync_zero {
        report.rows.push(
            Row::new("  vs kube-proxy --iptables-min-sync-period=0", "ms")
                .podwire(&some(pw))
                .kube_proxy(&some(&col(&|r| r.kube_proxy0)))
                .paired_ratio(pw, &col(&|r| r.kube_proxy0)),
        );
    }
    let (pw, kp) = (&series[2].1, &series[3].1);
    report.rows.push(add_row(
        format!("+1 Service at {}: slice write -> connect", k(scale)),
        pw,
        kp,
    ));
    let ep_api = |r: &Run| r.ep.as_ref().map(|t| t.api);
    report.rows.push(
        Row::new("  after the create call returned", "ms")
            .podwire(&after(&ep_api, &|r| r.ep.as_ref()?.podwire))
            .kube_proxy(&after(&ep_api, &|r| r.ep.as_ref()?.kube_proxy)),
    );
    report.rows.push(
        Row::new("  the proxy's own apply (log ms= / metrics)", "ms")
            .podwire(&some(&ep(|t| t.podwire_apply)))
            .kube_proxy(&some(&ep(|t| t.kube_proxy_sync))),
    );
    report.rows.push(
        Row::new("  API round trip of the create", "ms").podwire(&some(&ep(|t| Some(t.api)))),
    );
    if min_sync_zero {
        let kp0 = ep(|t| t.kube_proxy0);
        report.rows.push(
            Row::new("  vs kube-proxy --iptables-min-sync-period=0", "ms")
                .podwire(&some(pw))
                .kube_proxy(&some(&kp0))
                .paired_ratio(pw, &kp0),
        );
    }
    let dns = some(&series[4].1);
    let dns_med = Summary::of(&dns).map_or(f64::INFINITY, |s| s.median);
    report.rows.push(
        Row::new(format!("DNS new Service at {}", k(scale)), "ms")
            .podwire(&dns)
            .target(format!("<={DNS_TARGET_MS:.0} ms"), dns_med <= DNS_TARGET_MS),
    );
    report.rows.push(
        Row::new(format!("ingress new route at {}", k(scale)), "ms").podwire(&some(&series[5].1)),
    );
}

fn measure(args: &Args, env: &mut Env) -> Result<Report> {
    let mut report = Report {
        setup: Vec::new(),
        rows: Vec::new(),
        notes: Vec::new(),
        legend: Vec::new(),
    };
    report.setup.push(format!(
        "etcd + kube-apiserver v1.37.2 in a namespace; node A: podwire agent (host-gw), node B: kube-proxy v1.37.2 --proxy-mode nftables (default min-sync-period 1 s){}; podwire dns + ingress beside them; {} CPUs",
        if env.node_c.is_some() {
            ", node C: kube-proxy --iptables-min-sync-period=0"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    report.setup.push(format!(
        "{} runs per scale; probes every {} ms; writes by kube-rs as admin from a client namespace",
        args.runs,
        PROBE_EVERY.as_millis()
    ));
    // Everything up before measuring.
    let ready = wait_all(
        env,
        SocketAddrV4::new(std::net::Ipv4Addr::new(10, 96, 0, 1), 443),
        "kubernetes.default.svc.cluster.local",
        Duration::from_millis(20),
    );
    if let Err(e) = ready {
        // The kubernetes Service points at the API server: if a proxy
        // cannot reach it, say which.
        bail!("components not ready: {e:#}");
    }
    env.check_alive()?;

    let mut have = 0;
    let mut index = 0;
    let mut last_name = kube_env::bulk_name(0);
    let mut last_addr = SocketAddrV4::new(kube_env::bulk_ip(0), kube_env::SERVICE_PORT);
    for &scale in &args.scales {
        check_interrupted()?;
        grow(env, have, scale, &mut report.notes)?;
        have = scale;
        env.check_alive()?;
        eprintln!(
            "\n+1 at {} ({} runs), ms from the write until it works: Service write (slice existed) | slice write (Service existed)",
            k(scale),
            args.runs
        );
        eprintln!(
            "  {:>3} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} | {:>6} {:>8} {:>8} {:>8}",
            "run",
            "api",
            "podwire",
            "k-proxy",
            "kp ms=0",
            "dns",
            "ingress",
            "pw ms=",
            "kp ms",
            "api",
            "podwire",
            "k-proxy",
            "kp ms=0"
        );
        let mut runs = Vec::new();
        for r in 0..args.runs {
            check_interrupted()?;
            let run = add_one(env, index)?;
            last_name = format!("new-{index}");
            last_addr = SocketAddrV4::new(kube_env::single_ip(index), kube_env::SERVICE_PORT);
            index += 1;
            let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
            let ep = run.ep.as_ref();
            eprintln!(
                "  {:>3} {:>6} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} | {:>6} {:>8} {:>8} {:>8}",
                r,
                f(run.api),
                f(run.podwire),
                f(run.kube_proxy),
                f(run.kube_proxy0),
                f(run.dns),
                f(run.ingress),
                f(run.podwire_apply),
                f(run.kube_proxy_sync),
                f(ep.map(|t| t.api)),
                f(ep.and_then(|t| t.podwire)),
                f(ep.and_then(|t| t.kube_proxy)),
                f(ep.and_then(|t| t.kube_proxy0)),
            );
            runs.push(run);
            env.check_alive()?;
        }
        scale_rows(scale, &runs, env.node_c.is_some(), &mut report);
        memory_rows(env, &format!("at {}", k(scale)), &mut report)?;
        service_memory_rows(env, &format!("at {}", k(scale)), &mut report)?;
    }

    if args.sync_runs > 0 {
        eprintln!(
            "\nfull sync at {}: restarting each proxy on a node without its rules ({} runs, interleaved)",
            k(have),
            args.sync_runs
        );
        let (mut pc, mut pr, mut kc, mut kr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..args.sync_runs {
            check_interrupted()?;
            let (c, rep) = restart_agent(env, last_addr)?;
            eprintln!("  run {r}: podwire agent connect {c:.2} s, status ok {rep:.2} s");
            pc.push(c);
            pr.push(rep);
            check_interrupted()?;
            let (c, rep) = restart_kube_proxy(env, last_addr)?;
            eprintln!("  run {r}: kube-proxy connect {c:.2} s, first sync in metrics {rep:.2} s");
            kc.push(c);
            kr.push(rep);
        }
        report.rows.push(
            Row::new(format!("full sync at {}: start -> connect", k(have)), "s")
                .podwire(&pc)
                .kube_proxy(&kc),
        );
        report.rows.push(
            Row::new(
                format!("full sync at {}: start -> reports synced", k(have)),
                "s",
            )
            .podwire(&pr)
            .kube_proxy(&kr),
        );
        std::thread::sleep(Duration::from_secs(2));
        memory_rows(env, &format!("at {} after restart", k(have)), &mut report)?;
    }

    if args.pods > 0 {
        check_interrupted()?;
        dns_pods(env, args.pods, have, &last_name, &mut report)?;
    }

    report.legend = vec![
        "+1 Service, Service write: the new Service's EndpointSlice (1-3 endpoints, all on the backend) is created first; once kube-proxy has synced it, has nothing pending and its 1 s min-sync-period has passed (it is idle: its best case), the Service is created with an explicit ClusterIP. Time from just before that create request until a TCP connect from the node to ClusterIP:80 succeeds (DNAT to the backend); each node polls every 1 ms with a fresh socket (an attempt is abandoned after 1 ms). Both proxies see the same write; ratio = median of per-run kube-proxy/podwire.".into(),
        "+1 Service, slice write: the reverse order with another Service: the Service first (no endpoints: both proxies reject), kube-proxy idle again, then its EndpointSlice; time from that create until the connect succeeds.".into(),
        "after the create call returned: the same time minus the create's API round trip (the API server commits the write, and sends the watch event, only near the end of that round trip).".into(),
        "the proxy's own apply: podwire's `ms=` of its incremental \"service rules in place\" log line (compile + netlink transaction); kube-proxy's mean sync_proxy_rules_duration_seconds over the syncs between the write and the connect.".into(),
        "DNS new Service: same write until `podwire dns` answers an A query for <svc>.bench.svc.cluster.local (UDP, polled every 1 ms).".into(),
        "ingress new route: an Ingress (class podwire, host new-N.example.com -> the new Service) created after the Service works; time until GET / with that Host through `podwire ingress` answers 200 from the backend (not 404), polled every 1 ms.".into(),
        "RSS: VmRSS of each process, 5 samples 200 ms apart, with every Service in place; peak is VmHWM.".into(),
        "full sync: the proxy is stopped, its nftables table deleted (podwire keeps its table on exit, so a restart alone would measure nothing), then started with every Service present: time from spawn until a connect to the newest Service works (polled every 2 ms), and until podwire's --status-file says ok / kube-proxy's kubeproxy_sync_proxy_rules_last_timestamp_seconds is set.".into(),
        "dns with pods: pods created through the API with status.podIP (pods/status), podwire dns RSS once its zone stopped changing, then restarted: time from spawn until it answers the newest Service.".into(),
        format!("p99 is nearest-rank: with {} runs it is the max.", args.runs),
    ];
    Ok(report)
}

fn print_table(r: &Report) {
    println!();
    for s in &r.setup {
        println!("{s}");
    }
    println!(
        "\n{:<48} {:>5} {:>38}   {:>38}   {:>7}  target",
        "",
        "",
        "podwire: min / median / p99 / max",
        "kube-proxy: min / median / p99 / max",
        "ratio"
    );
    let cell = |d: Option<Dist>| match d {
        Some(d) => {
            let p = if d.max >= 100.0 { 0 } else { 1 };
            let p = if d.max < 10.0 { 2 } else { p };
            format!(
                "{:>9.p$} {:>9.p$} {:>9.p$} {:>9.p$}",
                d.min, d.median, d.p99, d.max
            )
        }
        None => format!("{:>39}", "-"),
    };
    for row in &r.rows {
        let target = match (&row.target, row.met) {
            (Some(t), Some(m)) => format!("{t} {}", if m { "met" } else { "MISSED" }),
            _ => String::new(),
        };
        println!(
            "{:<48} {:>5} {}   {}   {:>7}  {}",
            row.name,
            row.unit,
            cell(row.podwire),
            cell(row.kube_proxy),
            row.ratio.map_or("-".into(), |x| format!("{x:.1}x")),
            target
        );
    }
    println!();
    for n in &r.notes {
        println!("note: {n}");
    }
    println!();
    for l in &r.legend {
        println!("- {l}");
    }
}

/// Copies the plain files of `from` into `to` (created).
fn copy_files(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<Report> {
    let mut env = Env::start(&Options {
        min_sync_zero: args.min_sync_zero,
    })?;
    let result = measure(args, &mut env);
    if let Err(e) = &result
        && !ns::interrupted()
    {
        eprintln!("kube bench: {e:#}\n{}", env.log_tails(25));
    }
    if let Some(dir) = &args.keep_logs {
        let cp_logs = env.cp.dir().join("logs");
        for from in [env.dir.path(), cp_logs.as_path()] {
            if let Err(e) = copy_files(from, dir) {
                eprintln!(
                    "kube bench: cannot keep the logs of {}: {e:#}",
                    from.display()
                );
            }
        }
    }
    result
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(err) => {
            eprintln!("kube bench: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("kube bench: needs root (it creates network namespaces)");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(err) = ns::install_interrupt_handler() {
        eprintln!("kube bench: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    if args.quick {
        eprintln!("quick run: 1k Services, {} runs, no pods", args.runs);
    }
    let result = run(&args);
    podwire_bench::finish("kube", result, args.json, print_table)
}

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
#[path = "../kube_memory.rs"]
mod kube_memory;
#[path = "../kube_report.rs"]
mod kube_report;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube_env::{Component, Env, Options, Poller, Probe};
use kube_memory::{dns_pods, memory_rows, service_memory_rows};
use kube_report::*;
use podwire_bench::ns::{self, check_interrupted};

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

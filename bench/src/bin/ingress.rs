//! The ingress benchmark (`bench/ingress`): wrk requests/s and latency
//! percentiles through `podwire ingress` and through nginx (Debian's,
//! configured with the same host/path routes to the same backend) side by
//! side and interleaved in one run, plain HTTP and TLS, keep-alive (wrk
//! -c64, plus short -c1 runs for the latency a proxy adds without
//! queueing) and a connection per request (`Connection: close`); each proxy's CPU with no traffic; then 10,000 idle keep-alive
//! connections held open against each proxy with its memory before and after.
//!
//! The backend is a second nginx answering `backend <port>` on one loopback
//! port per route, so every route of both proxies is checked before anything
//! is timed. Each proxy runs one worker pinned to one CPU; wrk and the
//! backend share the other (taskset). Everything runs on 127.0.0.1 with
//! ports picked free; every process it starts is stopped (its whole process
//! group) and every file removed when it ends, fails or is interrupted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podwire_bench::ingress::client::{Conn, make_certs, tls_client};
use podwire_bench::ingress::idle::hold_idle;
use podwire_bench::ingress::nginx::start_backend;
use podwire_bench::ingress::proc::{
    BACKGROUND_LIMIT_PCT, background_busy, clock_ticks_per_second, cpu_ticks, free_ports,
    raise_nofile, write,
};
use podwire_bench::ingress::report::{Plan, Report, Run, print_table, tables, version_line};
use podwire_bench::ingress::world::{World, check_plan, podwire_flags, write_store};
use podwire_bench::ingress::wrk::{Load, WRK_SCRIPT, wrk};
use podwire_bench::ingress::{BENCH_HOST, BENCH_PATH, HOSTS, PATHS, Ports, expected_body};
use podwire_bench::ns::{self, TempDir, check_interrupted};
use podwire_bench::stats::Summary;

const USAGE: &str = "\
usage: ingress [--runs N] [--seconds S] [--connections N] [--c1-seconds S]
               [--close-seconds S] [--idle N]
               [--workers N] [--skip-idle] [--skip-tls] [--json] [--podwire PATH]

Benchmarks podwire's ingress controller against nginx (same routes, same
backend) with wrk on loopback, HTTP and TLS, keep-alive and a connection
per request; then holds N idle
keep-alive connections on each and reports the proxies' memory.
  --runs N          wrk runs per proxy and protocol, interleaved (default 5)
  --seconds S       length of each wrk run (default 10)
  --connections N   wrk connections (-c, default 64; one wrk thread)
  --c1-seconds S    length of the unloaded-latency runs with one connection
                    (wrk -c1), one per proxy and protocol each round (default 5; 0: none)
  --close-seconds S length of the connection-per-request runs (wrk -H
                    'Connection: close', -c as above), one per proxy and
                    protocol each round (default 10; 0: none)
  --idle N          idle keep-alive connections held per proxy (default 10000)
  --workers N       worker threads/processes of each proxy (default 1)
  --skip-idle       leave out the idle-connection memory test
  --skip-tls        leave out TLS
  --json            print the results as JSON
  --podwire PATH    the podwire binary (default: next to this binary)";

struct Args {
    runs: usize,
    seconds: u64,
    connections: usize,
    c1_seconds: u64,
    close_seconds: u64,
    idle: usize,
    workers: usize,
    skip_idle: bool,
    skip_tls: bool,
    json: bool,
    podwire: PathBuf,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut a = Args {
        runs: 5,
        seconds: 10,
        connections: 64,
        c1_seconds: 5,
        close_seconds: 10,
        idle: 10_000,
        workers: 1,
        skip_idle: false,
        skip_tls: false,
        json: false,
        podwire: exe.with_file_name("podwire"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--runs" => a.runs = value("--runs")?.parse()?,
            "--seconds" => a.seconds = value("--seconds")?.parse()?,
            "--connections" => a.connections = value("--connections")?.parse()?,
            "--c1-seconds" => a.c1_seconds = value("--c1-seconds")?.parse()?,
            "--close-seconds" => a.close_seconds = value("--close-seconds")?.parse()?,
            "--idle" => a.idle = value("--idle")?.parse()?,
            "--workers" => a.workers = value("--workers")?.parse()?,
            "--skip-idle" => a.skip_idle = true,
            "--skip-tls" => a.skip_tls = true,
            "--json" => a.json = true,
            "--podwire" => a.podwire = value("--podwire")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    a.runs = a.runs.max(1);
    a.seconds = a.seconds.max(1);
    a.connections = a.connections.max(1);
    a.workers = a.workers.max(1);
    Ok(a)
}

fn measure(args: &Args) -> Result<Report> {
    ensure!(
        args.podwire.is_file(),
        "{} not found: build it (cargo build --release -p podwire) or pass --podwire",
        args.podwire.display()
    );
    let nofile = raise_nofile(args.idle as u64 + 1024)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (proxy_cpu, load_cpu) = if cpus >= 2 { ("1", "0") } else { ("0", "0") };
    let flags = podwire_flags(&args.podwire)?;
    let mut notes = Vec::new();
    let tls = !args.skip_tls;
    if tls && !flags.tls {
        notes.push(
            "TLS: not measured: this podwire ingress has no --listen-tls (Ingress stage 2)".into(),
        );
    }
    if !flags.workers {
        notes.push(format!(
            "podwire ingress has no --workers: its runtime sizes itself to the CPUs taskset gives it ({})",
            if cpus >= 2 { 1 } else { cpus }
        ));
    }

    let tmp = TempDir::create("ingress")?;
    let dir = tmp.path().to_path_buf();
    let certs = make_certs()?;
    let client = tls_client(&certs)?;
    let mut ports: Ports = [[0; 3]; 3];
    for (slot, port) in ports.iter_mut().flatten().zip(free_ports(9)?) {
        *slot = port;
    }
    let world = World {
        store: dir.join("store"),
        dir: dir.clone(),
        ports,
        certs,
        client,
        flags,
        proxy_cpu: proxy_cpu.to_string(),
        nofile,
        podwire: args.podwire.clone(),
        workers: args.workers,
    };
    let generation = write_store(&world.store, &ports, &world.certs)?;
    check_plan(&args.podwire, &world.store, &ports)?;
    eprintln!(
        "store generation {generation}: 3 hosts x 3 paths, 9 Services; podwire ingress plan routes all 9"
    );

    let backend_dir = dir.join("backend");
    std::fs::create_dir_all(&backend_dir)?;
    let mut backend = start_backend(&backend_dir, &ports, load_cpu)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (h, p) in (0..3).flat_map(|h| (0..3).map(move |p| (h, p))) {
        loop {
            check_interrupted()?;
            backend.check_running()?;
            match Conn::open(ports[h][p], None).and_then(|mut c| c.get("backend", "/")) {
                Ok((200, body)) if body == expected_body(&ports, h, p) => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => bail!(
                    "the backend nginx does not answer on {}: {other:?}",
                    ports[h][p]
                ),
            }
        }
    }

    let script = dir.join("resolve.lua");
    write(&script, WRK_SCRIPT)?;
    let load = Load {
        script: &script,
        cpu: load_cpu,
        proxy_cpu,
        connections: args.connections,
        close: false,
    };
    let unloaded = Load {
        connections: 1,
        ..load
    };
    let per_request = Load {
        close: true,
        ..load
    };
    let mut tls_params = BTreeMap::new();
    let mut proxies = Vec::new();
    {
        let pw = world.start_podwire("rps", tls)?;
        let ngx = world.start_nginx("rps", tls && world.flags.tls)?;
        for proxy in [&pw, &ngx] {
            if let Some(negotiated) = world.check_routes(proxy)? {
                tls_params.insert(proxy.name.to_string(), negotiated);
            }
        }
        eprintln!(
            "routes checked: 9 host/path pairs through podwire and nginx{}, each to its own backend port; unknown host 404",
            if pw.tls_port.is_some() {
                ", HTTP and TLS"
            } else {
                ""
            }
        );
        proxies.push(pw);
        proxies.push(ngx);
    }
    let protocols: Vec<bool> = if proxies[0].tls_port.is_some() {
        vec![false, true]
    } else {
        vec![false]
    };
    // Warm-up: pools, caches, allocator arenas, TLS sessions.
    for proxy in &proxies {
        for &tls in &protocols {
            let port = if tls {
                proxy.tls_port
            } else {
                Some(proxy.http_port)
            };
            if let Some(port) = port {
                wrk(&load, tls, port, 2, &[])?;
            }
        }
    }
    wrk(&load, false, ports[BENCH_HOST][BENCH_PATH], 2, &[])?;

    let mut all_runs = Vec::new();
    let mut ceiling_runs = Vec::new();
    let mut background: Vec<f64> = Vec::new();
    // (CPU seconds, wall seconds) of each proxy while no load runs.
    let mut idle_cpu = [(0.0f64, 0.0f64); 2];
    for run in 0..args.runs {
        // What else keeps the CPUs busy while none of our load runs, and
        // what the proxies spend with no traffic.
        let idle_ticks: Vec<u64> = proxies.iter().map(|p| cpu_ticks(&p.proc.pids())).collect();
        let quiet = background_busy(&[proxy_cpu, load_cpu])?;
        for (i, proxy) in proxies.iter().enumerate() {
            let used = cpu_ticks(&proxy.proc.pids()).saturating_sub(idle_ticks[i]);
            idle_cpu[i].0 += used as f64 / clock_ticks_per_second();
            idle_cpu[i].1 += 1.0;
        }
        if quiet > BACKGROUND_LIMIT_PCT {
            eprintln!(
                "warning: the CPUs are {quiet:.0}% busy with other work before run {}: numbers will be noisy",
                run + 1
            );
        }
        background.push(quiet);
        // Alternate the order so drift hits both alike.
        let order: Vec<usize> = if run % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        // Loaded, then unloaded: one connection, so latency is what each
        // proxy adds, not queueing; then a connection per request.
        let passes = [
            (&load, args.seconds, args.connections),
            (&unloaded, args.c1_seconds, 1),
            (&per_request, args.close_seconds, args.connections),
        ];
        for (pass_load, seconds, connections) in passes {
            if seconds == 0 {
                continue;
            }
            for &tls in &protocols {
                for &i in &order {
                    let proxy = &mut proxies[i];
                    proxy.proc.check_running()?;
                    let port = if tls {
                        proxy.tls_port.context("no TLS port")?
                    } else {
                        proxy.http_port
                    };
                    let result = wrk(pass_load, tls, port, seconds, &proxy.proc.pids())?;
                    let protocol = if tls { "TLS" } else { "HTTP" };
                    let pass = if pass_load.close { " close" } else { "" };
                    if connections == 1 {
                        eprintln!(
                            "run {}/{} {protocol:<4} {:<8} -c1: {:>7.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                            run + 1,
                            args.runs,
                            proxy.name,
                            result.rps,
                            result.p50_ms,
                            result.p99_ms,
                        );
                    } else {
                        eprintln!(
                            "run {}/{} {protocol:<4}{pass} {:<8} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  proxy {:.0}% of a CPU; CPU {proxy_cpu} {:.0}% busy, CPU {load_cpu} {:.0}%{}",
                            run + 1,
                            args.runs,
                            proxy.name,
                            result.rps,
                            result.p50_ms,
                            result.p99_ms,
                            result.proxy_cpu_pct,
                            result.proxy_cpu_busy_pct,
                            result.load_cpu_busy_pct,
                            if result.socket_errors > 0 {
                                format!("  ({} socket errors)", result.socket_errors)
                            } else {
                                String::new()
                            }
                        );
                    }
                    all_runs.push(Run {
                        proxy: proxy.name.to_string(),
                        tls,
                        run: run + 1,
                        connections,
                        close: pass_load.close,
                        wrk: result,
                    });
                }
            }
        }
        backend.check_running()?;
        let result = wrk(
            &load,
            false,
            ports[BENCH_HOST][BENCH_PATH],
            args.seconds,
            &[],
        )?;
        eprintln!(
            "run {}/{} backend alone  {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  CPU {load_cpu} {:.0}% busy",
            run + 1,
            args.runs,
            result.rps,
            result.p50_ms,
            result.p99_ms,
            result.load_cpu_busy_pct
        );
        ceiling_runs.push(result);
    }
    let worst = background.iter().copied().fold(0.0, f64::max);
    if worst > BACKGROUND_LIMIT_PCT {
        notes.push(format!(
            "other processes kept a CPU up to {worst:.0}% busy between runs (measured for 1 s before each round): the machine was not quiet, the numbers are noisy"
        ));
    }
    let mut logs = Vec::new();
    for proxy in proxies.drain(..) {
        logs.push((proxy.name, proxy.proc.log.clone()));
    }

    // Idle keep-alive connections, each test against a fresh proxy.
    let mut idle = Vec::new();
    if !args.skip_idle {
        for &tls in &protocols {
            for (i, name) in ["podwire", "nginx"].into_iter().enumerate() {
                check_interrupted()?;
                let tag = format!("idle-{}", if tls { "tls" } else { "http" });
                let mut proxy = if i == 0 {
                    world.start_podwire(&tag, tls)?
                } else {
                    world.start_nginx(&tag, tls)?
                };
                let result = hold_idle(&world, &mut proxy, tls, args.idle)?;
                eprintln!(
                    "idle {:<4} {name:<8} {} connections opened in {:.1} s, {} held; RSS {:.1} -> {:.1} MB, PSS {:.1} -> {:.1} MB",
                    if tls { "TLS" } else { "HTTP" },
                    result.connections,
                    result.open_seconds,
                    result.held,
                    result.rss_before_kb as f64 / 1024.0,
                    result.rss_after_kb as f64 / 1024.0,
                    result.pss_before_kb as f64 / 1024.0,
                    result.pss_after_kb as f64 / 1024.0,
                );
                if result.held < result.connections {
                    notes.push(format!(
                        "{name} idle {}: only {} of {} connections still answered after the measurement",
                        if tls { "TLS" } else { "HTTP" },
                        result.held,
                        result.connections
                    ));
                }
                idle.push(result);
                logs.push((proxy.name, proxy.proc.log.clone()));
            }
        }
    }
    drop(backend);

    // Anything the proxies logged (podwire at warn and above, nginx errors).
    for (name, log) in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if !lines.is_empty() {
            notes.push(format!(
                "{name} logged {} line(s) in {}; first: {}",
                lines.len(),
                log.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                lines[0]
            ));
        }
    }

    // The table.
    let plan = Plan {
        protocols,
        connections: args.connections,
        unloaded: args.c1_seconds > 0,
        close: args.close_seconds > 0,
        idle: args.idle,
    };
    let (rows, targets) = tables(&plan, &all_runs, &idle, idle_cpu);
    let ceiling = Summary::of(&ceiling_runs.iter().map(|w| w.rps).collect::<Vec<_>>());
    Ok(Report {
        wrk: version_line("wrk", "-v")
            .split(" [")
            .next()
            .unwrap_or_default()
            .to_string(),
        nginx: version_line("nginx", "-v").replace("nginx version: ", ""),
        proxy_cpu: proxy_cpu.to_string(),
        load_cpu: load_cpu.to_string(),
        workers: args.workers,
        runs: args.runs,
        seconds: args.seconds,
        connections: args.connections,
        url: format!("{}{}", HOSTS[BENCH_HOST], PATHS[BENCH_PATH].2),
        tls: tls_params,
        rows,
        ceiling,
        targets,
        idle,
        all_runs,
        ceiling_runs,
        notes,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("ingress bench: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(err) = ns::install_interrupt_handler() {
        eprintln!("ingress bench: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    for gone in ns::sweep(false) {
        eprintln!("removed leftover {gone}");
    }
    let result = measure(&args);
    for gone in ns::sweep(true) {
        eprintln!("removed leftover {gone}");
    }
    podwire_bench::finish("ingress", result, args.json, print_table)
}

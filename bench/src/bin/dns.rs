//! The DNS benchmark (`bench/dns`): dnsperf against `podwire dns` and Knot
//! (Debian's knotd, serving the same names from a zone file it is given) on
//! loopback, side by side and interleaved in one run, each server pinned to
//! one core and dnsperf to the other (taskset); then QPS for cached external
//! names (podwire forwarding to a Knot upstream on loopback, answers served
//! from its cache); then resident memory of `podwire dns` with 10k Services
//! and 100k pods in its source. Prints min/median/max and ratios (or JSON).
//!
//! Everything runs on 127.0.0.1 with ports picked free; every process it
//! starts is killed and every file removed when it ends.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use podwire_bench::ns::TempDir;
use serde::Serialize;
use serde_json::json;

const USAGE: &str = "\
usage: dns [--runs N] [--seconds S] [--services N] [--mem-services N] [--mem-pods N]
           [--json] [--podwire PATH]

Benchmarks podwire's cluster DNS against Knot (knotd) with dnsperf on loopback.
  --runs N          dnsperf runs per server, interleaved (default 3)
  --seconds S       length of each dnsperf run (default 10)
  --services N      Services (one A name each) in the QPS test (default 1000)
  --mem-services N  Services in the memory test (default 10000)
  --mem-pods N      pods in the memory test, spread over its Services' endpoints (default 100000)
  --json            print the results as JSON
  --podwire PATH    the podwire binary (default: next to this binary)";

/// Targets from the issue.
const RSS_TARGET_MB: f64 = 30.0;
/// CoreDNS's published formula for that cluster, as issue 5 quotes it.
const COREDNS_FORMULA_MB: f64 = 143.0;

struct Args {
    runs: usize,
    seconds: u64,
    services: usize,
    mem_services: usize,
    mem_pods: usize,
    json: bool,
    podwire: PathBuf,
}

fn parse_args() -> Result<Args> {
    let exe = std::env::current_exe()?;
    let mut a = Args {
        runs: 3,
        seconds: 10,
        services: 1000,
        mem_services: 10_000,
        mem_pods: 100_000,
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
            "--services" => a.services = value("--services")?.parse()?,
            "--mem-services" => a.mem_services = value("--mem-services")?.parse()?,
            "--mem-pods" => a.mem_pods = value("--mem-pods")?.parse()?,
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
    Ok(a)
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    // A port free for both UDP and TCP.
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// A files store (the layout of podwire_model::Store) with `services`
/// ClusterIP Services in namespace `bench` and `pods` pods spread over their
/// EndpointSlices.
fn write_store(root: &Path, services: usize, pods: usize) -> Result<()> {
    write(
        &root.join("config.json"),
        &json!({"podCIDR": "10.128.0.0/9", "serviceCIDR": "10.96.0.0/12", "nodeSlicePrefix": 24,
                "clusterDomain": "cluster.local", "routing": "vxlan"})
        .to_string(),
    )?;
    write(
        &root.join("namespaces/_cluster/bench.json"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
            .to_string(),
    )?;
    let per_service = if services == 0 {
        0
    } else {
        pods.div_ceil(services)
    };
    let mut pod_index = 0usize;
    for i in 0..services {
        let ip = format!("10.96.{}.{}", 1 + i / 250, i % 250 + 1);
        write(
            &root.join(format!("services/bench/svc-{i}.json")),
            &json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
                    "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": format!("svc-{i}")},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
            .to_string(),
        )?;
        let mut endpoints = Vec::new();
        for _ in 0..per_service {
            if pod_index >= pods {
                break;
            }
            let pod_ip = format!(
                "10.{}.{}.{}",
                128 + pod_index / 62500,
                (pod_index / 250) % 250,
                pod_index % 250 + 1
            );
            let name = format!("svc-{i}-{pod_index}");
            write(
                &root.join(format!("pods/bench/{name}.json")),
                &json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "bench", "labels": {"app": format!("svc-{i}")}},
                        "spec": {"nodeName": "node01", "containers": [{"name": "c", "image": "podwire",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
                        "status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                                   "conditions": [{"type": "Ready", "status": "True"}]}})
                .to_string(),
            )?;
            endpoints.push(json!({"addresses": [pod_ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                                  "nodeName": "node01",
                                  "targetRef": {"kind": "Pod", "namespace": "bench", "name": name}}));
            pod_index += 1;
        }
        write(
            &root.join(format!("endpointslices/bench/svc-{i}-abcde.json")),
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
                    "addressType": "IPv4", "endpoints": endpoints,
                    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
            .to_string(),
        )?;
    }
    write(&root.join("generation"), "1\n")
}

/// The same names as a zone file for Knot.
fn write_zone(path: &Path, origin: &str, records: &[(String, String)]) -> Result<()> {
    let mut z = String::new();
    writeln!(z, "$ORIGIN {origin}.\n$TTL 5")?;
    writeln!(
        z,
        "@ IN SOA ns.dns.{origin}. hostmaster.{origin}. 1 7200 1800 86400 5"
    )?;
    writeln!(z, "@ IN NS ns.dns.{origin}.\nns.dns IN A 127.0.0.1")?;
    for (name, ip) in records {
        writeln!(z, "{name} IN A {ip}")?;
    }
    write(path, &z)
}

fn dns_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 1, 0, 1]);
    q
}

/// Waits until a DNS server answers `name` with NOERROR.
fn wait_dns(addr: SocketAddr, name: &str, limit: Duration) -> Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket.send_to(&dns_query(name, 7), addr)?;
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 12
            && buf[3] & 0xF == 0
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{addr} did not answer {name} within {limit:?}")
}

fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.1 200")
}

fn rss_kb(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

fn start_podwire(
    args: &Args,
    store: &Path,
    port: u16,
    ops_port: u16,
    extra: &[&str],
    cpu: &str,
) -> Result<Proc> {
    let listen = format!("127.0.0.1:{port}");
    let ready = format!("127.0.0.1:{ops_port}");
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu])
        .arg(&args.podwire)
        .args([
            "dns",
            "--source",
            &format!("files:{}", store.display()),
            "--listen",
            &listen,
        ])
        .args([
            "--health-listen",
            "off",
            "--metrics-listen",
            "off",
            "--ready-listen",
            &ready,
        ])
        .args(["--workers", "1"])
        .args(extra)
        .env("PODWIRE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", args.podwire.display()))?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready_addr: SocketAddr = ready.parse()?;
    while !http_ok(ready_addr, "/ready") {
        if Instant::now() > deadline {
            bail!("podwire dns did not become ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proc)
}

fn start_knot(dir: &Path, port: u16, zones: &[&str], cpu: &str) -> Result<Proc> {
    let mut conf = format!(
        "server:\n    rundir: \"{d}\"\n    listen: 127.0.0.1@{port}\n    udp-workers: 1\n    tcp-workers: 1\n    background-workers: 1\n\
         database:\n    storage: \"{d}/db\"\n\
         log:\n  - target: stderr\n    any: error\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    journal-content: none\n\
         zone:\n",
        d = dir.display()
    );
    for z in zones {
        writeln!(conf, "  - domain: {z}")?;
    }
    write(&dir.join("knot.conf"), &conf)?;
    let child = Command::new("taskset")
        .args(["-c", cpu, "knotd", "-c"])
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start knotd (apt-get install knot)")?;
    let proc = Proc(child);
    wait_dns(
        SocketAddr::from(([127, 0, 0, 1], port)),
        zones[0],
        Duration::from_secs(20),
    )?;
    Ok(proc)
}

#[derive(Debug, Clone, Copy, Serialize)]
struct Perf {
    qps: f64,
    avg_latency_ms: f64,
    lost: u64,
}

fn dnsperf(port: u16, queries: &Path, seconds: u64, cpu: &str) -> Result<Perf> {
    let out = Command::new("taskset")
        .args([
            "-c",
            cpu,
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-q",
            "200",
            "-t",
            "2",
        ])
        .output()
        .context("cannot run dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let qps = find("Queries per second")
        .with_context(|| format!("unexpected dnsperf output:\n{text}"))?;
    let latency = find("Average Latency (s)").unwrap_or(0.0) * 1e3;
    let lost = find("Queries lost").unwrap_or(0.0) as u64;
    Ok(Perf {
        qps,
        avg_latency_ms: latency,
        lost,
    })
}

#[derive(Debug, Clone, Serialize)]
struct Series {
    name: String,
    runs: Vec<Perf>,
    min_qps: f64,
    median_qps: f64,
    max_qps: f64,
    median_latency_ms: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn series(name: &str, runs: Vec<Perf>) -> Series {
    let mut qps: Vec<f64> = runs.iter().map(|p| p.qps).collect();
    let mut lat: Vec<f64> = runs.iter().map(|p| p.avg_latency_ms).collect();
    let med = median(&mut qps);
    Series {
        name: name.to_string(),
        min_qps: qps.first().copied().unwrap_or(0.0),
        max_qps: qps.last().copied().unwrap_or(0.0),
        median_qps: med,
        median_latency_ms: median(&mut lat),
        runs,
    }
}

#[derive(Debug, Serialize)]
struct Memory {
    services: usize,
    pods: usize,
    load_seconds: f64,
    rss_mb: f64,
    peak_rss_mb: f64,
    target_mb: f64,
    coredns_formula_mb: f64,
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if !args.podwire.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p podwire) or pass --podwire",
            args.podwire.display()
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_cpu, client_cpu) = if cpus >= 2 { ("1", "0") } else { ("0", "0") };
    let tmp = TempDir::create("dns")?;
    let dir = tmp.path().to_path_buf();

    // 1. Cluster names: the same Services in podwire's store and Knot's zone.
    let store = dir.join("store");
    write_store(&store, args.services, 0)?;
    let records: Vec<(String, String)> = (0..args.services)
        .map(|i| {
            (
                format!("svc-{i}.bench.svc"),
                format!("10.96.{}.{}", 1 + i / 250, i % 250 + 1),
            )
        })
        .collect();
    let knot_dir = dir.join("knot");
    write_zone(
        &knot_dir.join("cluster.local.zone"),
        "cluster.local",
        &records,
    )?;
    let ext: Vec<(String, String)> = (0..args.services)
        .map(|i| (format!("host-{i}"), format!("192.0.2.{}", i % 250 + 1)))
        .collect();
    write_zone(&knot_dir.join("example.test.zone"), "example.test", &ext)?;
    let mut cluster_queries = String::new();
    for (name, _) in &records {
        writeln!(cluster_queries, "{name}.cluster.local A")?;
    }
    write(&dir.join("cluster.queries"), &cluster_queries)?;
    let mut ext_queries = String::new();
    for (name, _) in &ext {
        writeln!(ext_queries, "{name}.example.test A")?;
    }
    write(&dir.join("external.queries"), &ext_queries)?;

    let knot_port = free_port()?;
    let knot = start_knot(
        &knot_dir,
        knot_port,
        &["cluster.local", "example.test"],
        server_cpu,
    )?;
    let knot_version = Command::new("knotd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let pw_port = free_port()?;
    let pw = start_podwire(
        &args,
        &store,
        pw_port,
        free_port()?,
        &[
            "--upstream",
            &format!("127.0.0.1:{knot_port}"),
            "--cache-max-ttl",
            "3600",
        ],
        server_cpu,
    )?;
    let cluster_file = dir.join("cluster.queries");
    let mut pw_runs = Vec::new();
    let mut knot_runs = Vec::new();
    for run in 0..args.runs {
        // Rotate the order so drift hits both alike.
        let order: [&str; 2] = if run % 2 == 0 {
            ["podwire", "knot"]
        } else {
            ["knot", "podwire"]
        };
        for who in order {
            let (port, into) = if who == "podwire" {
                (pw_port, &mut pw_runs)
            } else {
                (knot_port, &mut knot_runs)
            };
            let p = dnsperf(port, &cluster_file, args.seconds, client_cpu)?;
            eprintln!(
                "cluster names, run {}: {who:8} {:>10.0} QPS, {:.3} ms avg, {} lost",
                run + 1,
                p.qps,
                p.avg_latency_ms,
                p.lost
            );
            into.push(p);
        }
    }
    let (pw_rss, _) = rss_kb(pw.0.id())?;

    // 2. Cached external names: podwire forwards to Knot once, then answers from its cache.
    let ext_file = dir.join("external.queries");
    let _warm = dnsperf(pw_port, &ext_file, 1, client_cpu)?;
    let mut cached_runs = Vec::new();
    let mut direct_runs = Vec::new();
    for run in 0..args.runs {
        let p = dnsperf(pw_port, &ext_file, args.seconds, client_cpu)?;
        eprintln!(
            "external names, run {}: podwire (cached) {:>10.0} QPS, {:.3} ms avg",
            run + 1,
            p.qps,
            p.avg_latency_ms
        );
        cached_runs.push(p);
        let p = dnsperf(knot_port, &ext_file, args.seconds, client_cpu)?;
        eprintln!(
            "external names, run {}: knot (authoritative) {:>10.0} QPS",
            run + 1,
            p.qps
        );
        direct_runs.push(p);
    }
    drop(pw);
    drop(knot);

    // 3. Memory with a big cluster in the source.
    let big = dir.join("big");
    let started = Instant::now();
    write_store(&big, args.mem_services, args.mem_pods)?;
    eprintln!(
        "wrote a store of {} Services and {} pods in {:.1} s",
        args.mem_services,
        args.mem_pods,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mem_port = free_port()?;
    let mem = start_podwire(
        &args,
        &big,
        mem_port,
        free_port()?,
        &["--upstream", "127.0.0.1:9"],
        "0-1",
    )?;
    let load_seconds = started.elapsed().as_secs_f64();
    wait_dns(
        SocketAddr::from(([127, 0, 0, 1], mem_port)),
        "svc-0.bench.svc.cluster.local",
        Duration::from_secs(10),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = rss_kb(mem.0.id())?;
    drop(mem);
    let memory = Memory {
        services: args.mem_services,
        pods: args.mem_pods,
        load_seconds,
        rss_mb: rss as f64 / 1024.0,
        peak_rss_mb: hwm as f64 / 1024.0,
        target_mb: RSS_TARGET_MB,
        coredns_formula_mb: COREDNS_FORMULA_MB,
    };

    let pw_s = series("podwire dns", pw_runs);
    let knot_s = series(&knot_version, knot_runs);
    let cached_s = series("podwire dns, cached external names", cached_runs);
    let direct_s = series("knot, the same names authoritative", direct_runs);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cluster": [pw_s, knot_s], "ratio": pw_s.median_qps / knot_s.median_qps.max(1.0),
                "external": [cached_s, direct_s], "memory": memory,
                "podwire_rss_mb_during_qps": pw_rss as f64 / 1024.0,
            }))?
        );
        return Ok(());
    }
    println!(
        "\nDNS on 127.0.0.1: dnsperf -c 4 -q 200 -l {}s on CPU {client_cpu}, servers on CPU {server_cpu} (one worker each), {} runs interleaved",
        args.seconds, args.runs
    );
    println!("\ncluster names ({} Services, A queries)", args.services);
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>14}",
        "server", "min QPS", "median", "max", "latency (med)"
    );
    for s in [&pw_s, &knot_s] {
        println!(
            "{:<40} {:>10.0} {:>10.0} {:>10.0} {:>11.3} ms",
            s.name, s.min_qps, s.median_qps, s.max_qps, s.median_latency_ms
        );
    }
    let ratio = pw_s.median_qps / knot_s.median_qps.max(1.0);
    println!(
        "ratio podwire/knot (median QPS): {ratio:.2}  (target >= 1.00: {})",
        if ratio >= 1.0 { "met" } else { "NOT met" }
    );
    println!(
        "podwire RSS while serving: {:.1} MB",
        pw_rss as f64 / 1024.0
    );
    println!(
        "\nexternal names ({} names, upstream Knot on loopback)",
        args.services
    );
    for s in [&cached_s, &direct_s] {
        println!(
            "{:<40} {:>10.0} {:>10.0} {:>10.0} {:>11.3} ms",
            s.name, s.min_qps, s.median_qps, s.max_qps, s.median_latency_ms
        );
    }
    println!(
        "\nmemory: {} Services, {} pods (+ their EndpointSlices) in the source",
        memory.services, memory.pods
    );
    println!(
        "podwire dns RSS {:.1} MB (peak {:.1} MB) after loading in {:.1} s; target <= {RSS_TARGET_MB} MB: {}; CoreDNS's formula: ~{COREDNS_FORMULA_MB} MB",
        memory.rss_mb,
        memory.peak_rss_mb,
        memory.load_seconds,
        if memory.rss_mb <= RSS_TARGET_MB {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

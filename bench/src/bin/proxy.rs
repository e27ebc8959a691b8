//! The service proxy benchmark (`bench/proxy`): podwire's proxy against
//! kube-proxy's two layouts, in the same run, each into fresh network
//! namespaces:
//!
//! - full sync of 1k and 10k ClusterIP Services × 3 endpoints: podwire
//!   (compile + one netlink transaction of map elements, after loading its
//!   fixed structure with `nft -f`), kube-proxy's nftables layout (a chain
//!   per service and per endpoint, generated here as kube-proxy writes it)
//!   through `nft -f`, kube-proxy's iptables layout through
//!   `iptables-restore`;
//! - one Service added at 10k: podwire's incremental sync (recompile of
//!   what changed + one transaction), `nft -f` of the new chains and
//!   element, `iptables-restore --noflush` of KUBE-SERVICES plus the new
//!   chains (what kube-proxy's partial sync sends);
//! - connection setup latency through a ClusterIP with 10 and with 10k
//!   Services programmed (podwire), interleaved rounds;
//! - memory of a real `podwire agent` (proxy only) serving 10k Services
//!   from a files store.
//!
//! Nothing runs in the benchmark's own namespace; every namespace, temp
//! dir and process it makes is removed on exit, failure or Ctrl-C.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podwire_bench::ns::{self, NamedNetns, TempDir, check_interrupted};
use podwire_bench::stats::Stats;
use podwire_model::{ClusterState, EndpointSlice, Object, Service, Store};
use podwire_proxy::layout::StructureOptions;
use podwire_proxy::{CompileOptions, Compiler, Engine, compile};
use serde_json::json;

const USAGE: &str = "\
usage: proxy [--runs N] [--nft-runs-10k N] [--latency-conns N] [--skip-kube-proxy-nft] [--json]

Benchmarks podwire's service proxy against kube-proxy's nftables and iptables
layouts (run as root).
  --runs N              timed runs per measurement (default 5)
  --nft-runs-10k N      runs of kube-proxy's nftables layout at 10k (default 1: ~1 min each)
  --latency-conns N     connections per latency round (default 1000; 3 rounds each)
  --skip-kube-proxy-nft leave out kube-proxy's nftables layout (the slow one)
  --json                print the results as JSON";

const FULL_TARGET_MS: f64 = 500.0;
const ADD_TARGET_MS: f64 = 10.0;
const LATENCY_RATIO_TARGET: f64 = 1.1;

struct Args {
    runs: usize,
    nft_runs_10k: usize,
    latency_conns: usize,
    skip_nft: bool,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 5,
        nft_runs_10k: 1,
        latency_conns: 1000,
        skip_nft: false,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--runs" => a.runs = num("--runs")?.max(1),
            "--nft-runs-10k" => a.nft_runs_10k = num("--nft-runs-10k")?,
            "--latency-conns" => a.latency_conns = num("--latency-conns")?.max(10),
            "--skip-kube-proxy-nft" => a.skip_nft = true,
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

// ---------------------------------------------------------------- workload

fn cluster_ip(i: usize) -> String {
    let n = 0x0a60_0000u32 + 0x100 + i as u32; // 10.96.1.0 + i
    std::net::Ipv4Addr::from(n).to_string()
}

fn endpoint_ip(i: usize, k: usize) -> String {
    let e = (3 * i + k) as u32;
    std::net::Ipv4Addr::from(0x0af4_0000u32 + (e / 250) * 256 + e % 250 + 2).to_string()
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .expect("service json")
}

fn slice(i: usize, ips: &[String]) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = ips
        .iter()
        .enumerate()
        .map(|(k, ip)| {
            json!({"addresses": [ip], "nodeName": if k == 0 { "node01" } else { "node02" },
                   "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps,
    }))
    .expect("slice json")
}

fn objects(i: usize) -> [Object; 2] {
    let ips: Vec<String> = (0..3).map(|k| endpoint_ip(i, k)).collect();
    [
        Object::Service(service(i)),
        Object::EndpointSlice(slice(i, &ips)),
    ]
}

fn state(n: usize) -> ClusterState {
    let mut s = ClusterState::default();
    for i in 0..n {
        for o in objects(i) {
            s.insert(o);
        }
    }
    s
}

fn options() -> CompileOptions {
    CompileOptions {
        node_name: "node01".into(),
        node_pod_cidrs: vec!["10.244.0.0/24".parse().expect("cidr")],
        structure: StructureOptions {
            pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
            service_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
            localhost_nodeports: false,
        },
    }
}

// ------------------------------------------------- kube-proxy's rule texts

fn short_hash(text: &str) -> String {
    // FNV-1a, base32-ish like kube-proxy's chain suffixes.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..16)
        .map(|i| alphabet[((h >> (i * 4)) & 31) as usize] as char)
        .collect()
}

/// kube-proxy nftables mode: table header (kube-proxy 1.31's base chains and maps).
fn kp_nft_header() -> String {
    "table ip kube-proxy {
\tcomment \"rules for kube-proxy\"
\tset cluster-ips { type ipv4_addr; comment \"Active ClusterIPs\"; }
\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"; }
\tmap service-nodeports { type inet_proto . inet_service : verdict; comment \"NodePort traffic\"; }
\tmap no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }
\tchain mark-for-masquerade { meta mark set meta mark or 0x4000; }
\tchain masquerading { meta mark & 0x4000 == 0 return; meta mark set meta mark xor 0x4000; masquerade fully-random; }
\tchain services {
\t\tip daddr . meta l4proto . th dport vmap @service-ips
\t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
\t}
\tchain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
\tchain nat-output { type nat hook output priority -100; policy accept; jump services; }
\tchain nat-postrouting { type nat hook postrouting priority srcnat; policy accept; jump masquerading; }
}
"
    .to_string()
}

/// One Service in kube-proxy's nftables layout: a service chain, an
/// endpoint chain per endpoint, the map and set elements.
fn kp_nft_service(i: usize) -> String {
    let name = format!("bench/svc-{i}/tcp/http");
    let svc_chain = format!("service-{}-{name}", &short_hash(&name)[..8]);
    let ip = cluster_ip(i);
    let mut out = String::new();
    let mut vmap = Vec::new();
    let mut chains = String::new();
    for k in 0..3 {
        let ep = endpoint_ip(i, k);
        let ep_chain = format!(
            "endpoint-{}-{name}__{ep}/8080",
            &short_hash(&format!("{name}{ep}"))[..8]
        );
        vmap.push(format!("{k} : goto {ep_chain}"));
        chains.push_str(&format!(
            "add chain ip kube-proxy {ep_chain}\nadd rule ip kube-proxy {ep_chain} ip saddr {ep} jump mark-for-masquerade\nadd rule ip kube-proxy {ep_chain} meta l4proto tcp dnat to {ep}:8080\n"
        ));
    }
    out.push_str(&chains);
    out.push_str(&format!(
        "add chain ip kube-proxy {svc_chain}\nadd rule ip kube-proxy {svc_chain} ip daddr {ip} tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\nadd rule ip kube-proxy {svc_chain} numgen random mod 3 vmap {{ {} }}\n",
        vmap.join(", ")
    ));
    out.push_str(&format!(
        "add element ip kube-proxy cluster-ips {{ {ip} }}\nadd element ip kube-proxy service-ips {{ {ip} . tcp . 80 : goto {svc_chain} }}\n"
    ));
    out
}

fn kp_iptables_service_chains(i: usize, out: &mut String, rules: &mut String) {
    let name = format!("bench/svc-{i}:http");
    let svc = format!("KUBE-SVC-{}", short_hash(&name));
    let ip = cluster_ip(i);
    out.push_str(&format!(":{svc} - [0:0]\n"));
    rules.push_str(&format!(
        "-A {svc} ! -s 10.244.0.0/16 -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n"
    ));
    for k in 0..3 {
        let ep = endpoint_ip(i, k);
        let sep = format!("KUBE-SEP-{}", short_hash(&format!("{name}{ep}")));
        out.push_str(&format!(":{sep} - [0:0]\n"));
        let prob = match k {
            0 => "-m statistic --mode random --probability 0.33333333349 ",
            1 => "-m statistic --mode random --probability 0.50000000000 ",
            _ => "",
        };
        rules.push_str(&format!(
            "-A {svc} -m comment --comment \"{name} -> {ep}:8080\" {prob}-j {sep}\n"
        ));
        rules.push_str(&format!(
            "-A {sep} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}:8080\n"
        ));
    }
}

fn kp_iptables_services_rule(i: usize) -> String {
    let name = format!("bench/svc-{i}:http");
    format!(
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{}\n",
        cluster_ip(i),
        short_hash(&name)
    )
}

/// kube-proxy iptables mode, the nat table as its full restore writes it.
fn kp_iptables_full(n: usize) -> String {
    let mut decl = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let mut services = String::new();
    for i in 0..n {
        kp_iptables_service_chains(i, &mut decl, &mut rules);
        services.push_str(&kp_iptables_services_rule(i));
    }
    services.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    format!("{decl}{rules}{services}COMMIT\n")
}

/// kube-proxy's partial restore after adding Service `new` to `n`: the
/// whole KUBE-SERVICES chain again plus the new Service's chains.
fn kp_iptables_add(n: usize, new: usize) -> String {
    let mut decl = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::new();
    kp_iptables_service_chains(new, &mut decl, &mut rules);
    let mut services = String::new();
    for i in 0..n {
        services.push_str(&kp_iptables_services_rule(i));
    }
    services.push_str(&kp_iptables_services_rule(new));
    services.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    format!("{decl}{rules}{services}COMMIT\n")
}

// ---------------------------------------------------------------- runners

fn netns_name(tag: &str) -> String {
    format!("{}px-{}-{tag}", ns::PREFIX, std::process::id())
}

/// Runs `f` in a thread inside `netns`.
fn in_ns<T: Send>(netns: &NamedNetns, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let _guard = netns.netns().enter().context("enter namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    })
}

/// Runs a program inside `netns` with `input` as a file argument; returns
/// its wall time.
fn timed_exec(netns: &NamedNetns, program: &[&str], input: &Path) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", netns.name()])
        .args(program)
        .arg(input)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", program.join(" ")))?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{} {} failed: {}",
        program.join(" "),
        input.display(),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(took)
}

#[derive(Default, serde::Serialize)]
struct Row {
    what: String,
    stats: Option<Stats>,
    note: String,
}

struct Report {
    rows: Vec<Row>,
    extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    fn add(
        &mut self,
        what: impl Into<String>,
        samples: &[Duration],
        note: impl Into<String>,
    ) -> Option<Stats> {
        let stats = Stats::of(samples);
        let row = Row {
            what: what.into(),
            stats,
            note: note.into(),
        };
        if let Some(s) = stats {
            eprintln!(
                "  {:<58} {:>9.2} {:>9.2} {:>9.2}  {}",
                row.what, s.min_ms, s.median_ms, s.max_ms, row.note
            );
        }
        self.rows.push(row);
        stats
    }
}

fn podwire_full(n: usize, runs: usize, state: &ClusterState, report: &mut Report) -> Result<Stats> {
    let mut total = Vec::new();
    let mut compile_t = Vec::new();
    let mut sync_t = Vec::new();
    let mut bytes = 0;
    let mut elements = 0;
    for r in 0..runs {
        check_interrupted()?;
        let netns = NamedNetns::create(&netns_name(&format!("full{n}-{r}")))?;
        let (c, s, rep) = in_ns(&netns, || -> Result<_> {
            let t0 = Instant::now();
            let rs = compile(state, &options());
            let c = t0.elapsed();
            let mut engine = Engine::new();
            engine.skip_cleanup = true;
            let rep = engine.sync(&rs)?;
            drop(rs);
            Ok((c, t0.elapsed() - c, rep))
        })??;
        bytes = rep.netlink_bytes;
        elements = rep.elements_total;
        compile_t.push(c);
        sync_t.push(s);
        total.push(c + s);
    }
    report.add("  compile (pure)", &compile_t, "");
    report.add(
        "  apply: nft -f structure + 1 netlink transaction",
        &sync_t,
        format!("{elements} elements, {:.1} MB", bytes as f64 / 1e6),
    );
    let st = report
        .add(format!("podwire full sync, {n} services"), &total, "")
        .context("no samples")?;
    Ok(st)
}

fn kube_proxy_nft_full(
    n: usize,
    runs: usize,
    tmp: &TempDir,
    report: &mut Report,
) -> Result<Option<Stats>> {
    if runs == 0 {
        return Ok(None);
    }
    let mut text = kp_nft_header();
    for i in 0..n {
        text.push_str(&kp_nft_service(i));
    }
    let file = tmp.path().join(format!("kp-nft-{n}.nft"));
    std::fs::write(&file, &text)?;
    let mut samples = Vec::new();
    for r in 0..runs {
        check_interrupted()?;
        let netns = NamedNetns::create(&netns_name(&format!("kpnft{n}-{r}")))?;
        samples.push(timed_exec(&netns, &["nft", "-f"], &file)?);
    }
    Ok(report.add(
        format!("kube-proxy nftables layout via nft -f, {n} services"),
        &samples,
        "",
    ))
}

fn kube_proxy_iptables_full(
    n: usize,
    runs: usize,
    tmp: &TempDir,
    report: &mut Report,
) -> Result<Option<Stats>> {
    let file = tmp.path().join(format!("kp-ipt-{n}.rules"));
    std::fs::write(&file, kp_iptables_full(n))?;
    let mut samples = Vec::new();
    for r in 0..runs {
        check_interrupted()?;
        let netns = NamedNetns::create(&netns_name(&format!("kpipt{n}-{r}")))?;
        samples.push(timed_exec(&netns, &["iptables-restore"], &file)?);
    }
    Ok(report.add(
        format!("kube-proxy iptables layout via iptables-restore, {n} services"),
        &samples,
        "",
    ))
}

fn add_one(
    args: &Args,
    tmp: &TempDir,
    report: &mut Report,
) -> Result<(Stats, Option<Stats>, Option<Stats>)> {
    let n = 10_000;
    eprintln!(
        "\n+1 Service at 10k (ms)                                          min    median       max"
    );
    // podwire: incremental compile + one transaction.
    let netns = NamedNetns::create(&netns_name("add-podwire"))?;
    let mut st = state(n);
    let (total, compile_t, sync_t, compare, scratch) = in_ns(&netns, || -> Result<_> {
        let mut compiler = Compiler::new();
        let mut engine = Engine::new();
        engine.skip_cleanup = true;
        engine.sync(compiler.compile(&st, &options()))?;
        let mut total = Vec::new();
        let mut ct = Vec::new();
        let mut stt = Vec::new();
        let mut compare = Vec::new();
        let mut scratch = Vec::new();
        for r in 0..args.runs.max(5) {
            // What a watch source reports: this Service (and its slice) changed.
            let key = ("bench".to_string(), format!("svc-{}", n + r));
            for o in objects(n + r) {
                st.insert(o);
            }
            let t0 = Instant::now();
            let rs = compiler.compile_changed(&st, &options(), std::slice::from_ref(&key));
            let c = t0.elapsed();
            let rep = engine.sync_changed(rs, std::slice::from_ref(&key))?;
            let t = t0.elapsed();
            ensure!(
                !rep.full && rep.services_changed == 1,
                "not incremental: {rep:?}"
            );
            total.push(t);
            ct.push(c);
            stt.push(t - c);
            // For reference: a snapshot source compares all 10k Services to
            // find the change; and compiling everything from scratch.
            let t1 = Instant::now();
            let _ = compiler.compile(&st, &options());
            compare.push(t1.elapsed());
            let t2 = Instant::now();
            let _ = compile(&st, &options());
            scratch.push(t2.elapsed());
        }
        Ok((total, ct, stt, compare, scratch))
    })??;
    report.add("  compile the changed Service", &compile_t, "");
    report.add("  apply: 1 netlink transaction", &sync_t, "");
    report.add(
        "  (reference: find the change by comparing all 10k)",
        &compare,
        "",
    );
    report.add("  (reference: compile all 10k from scratch)", &scratch, "");
    let podwire = report
        .add("podwire +1 service at 10k", &total, "")
        .context("samples")?;
    drop(netns);

    let mut nft = None;
    if !args.skip_nft && args.nft_runs_10k > 0 {
        let netns = NamedNetns::create(&netns_name("add-kpnft"))?;
        let mut text = kp_nft_header();
        for i in 0..n {
            text.push_str(&kp_nft_service(i));
        }
        let base = tmp.path().join("kp-nft-add-base.nft");
        std::fs::write(&base, text)?;
        timed_exec(&netns, &["nft", "-f"], &base)?;
        let mut samples = Vec::new();
        for r in 0..args.runs {
            check_interrupted()?;
            let file = tmp.path().join(format!("kp-nft-add-{r}.nft"));
            std::fs::write(&file, kp_nft_service(n + r))?;
            samples.push(timed_exec(&netns, &["nft", "-f"], &file)?);
        }
        nft = report.add(
            "kube-proxy nftables layout: nft -f of the new chains",
            &samples,
            "",
        );
    }

    let netns = NamedNetns::create(&netns_name("add-kpipt"))?;
    let base = tmp.path().join("kp-ipt-add-base.rules");
    std::fs::write(&base, kp_iptables_full(n))?;
    timed_exec(&netns, &["iptables-restore"], &base)?;
    let mut samples = Vec::new();
    for r in 0..args.runs {
        check_interrupted()?;
        let file = tmp.path().join(format!("kp-ipt-add-{r}.rules"));
        std::fs::write(&file, kp_iptables_add(n + r, n + r))?;
        samples.push(timed_exec(
            &netns,
            &["iptables-restore", "--noflush"],
            &file,
        )?);
    }
    let ipt = report.add(
        "kube-proxy iptables layout: partial iptables-restore",
        &samples,
        "",
    );
    Ok((podwire, nft, ipt))
}

// ---------------------------------------------------------------- latency

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// node (bridge 10.244.0.1/24) + server pod 10.244.0.2 + client pod 10.244.0.3.
fn latency(args: &Args, report: &mut Report) -> Result<f64> {
    eprintln!(
        "\nconnection setup through a ClusterIP (ms)                      min    median       max"
    );
    let node = NamedNetns::create(&netns_name("lat-node"))?;
    let server = NamedNetns::create(&netns_name("lat-srv"))?;
    let client = NamedNetns::create(&netns_name("lat-cli"))?;
    ip(&["-n", node.name(), "link", "set", "lo", "up"])?;
    ip(&["-n", node.name(), "link", "add", "br0", "type", "bridge"])?;
    ip(&[
        "-n",
        node.name(),
        "addr",
        "add",
        "10.244.0.1/24",
        "dev",
        "br0",
    ])?;
    ip(&["-n", node.name(), "link", "set", "br0", "up"])?;
    ip(&[
        "-n",
        node.name(),
        "route",
        "add",
        "default",
        "via",
        "10.244.0.254",
    ])?;
    in_ns(&node, || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
    })??;
    for (pod, addr, host) in [
        (&server, "10.244.0.2/24", "vsrv"),
        (&client, "10.244.0.3/24", "vcli"),
    ] {
        ip(&[
            "-n",
            node.name(),
            "link",
            "add",
            host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        ip(&[
            "-n",
            node.name(),
            "link",
            "set",
            host,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", pod.name(), "link", "set", "lo", "up"])?;
        ip(&["-n", pod.name(), "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", pod.name(), "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            pod.name(),
            "route",
            "add",
            "default",
            "via",
            "10.244.0.1",
        ])?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let server_path = server.path().to_path_buf();
    let handle = std::thread::spawn(move || -> Result<()> {
        let netns = podwire_kernel::Netns::open(&server_path)?;
        let _guard = netns.enter()?;
        let listener = TcpListener::bind("0.0.0.0:8080")?;
        listener.set_nonblocking(true)?;
        let _ = tx.send(());
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"x");
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("server did not start")?;

    // Service 0's endpoints all point at the server pod.
    let make = |n: usize| {
        let mut s = ClusterState::default();
        for i in 0..n {
            let ips: Vec<String> = if i == 0 {
                vec!["10.244.0.2".into()]
            } else {
                (0..3).map(|k| endpoint_ip(i, k)).collect()
            };
            s.insert(Object::Service(service(i)));
            s.insert(Object::EndpointSlice(slice(i, &ips)));
        }
        compile(&s, &options())
    };
    let small = make(10);
    let big = make(10_000);
    let target: SocketAddr = format!("{}:80", cluster_ip(0)).parse()?;
    let mut engine = Engine::new();
    engine.skip_cleanup = true;
    let mut s10 = Vec::new();
    let mut s10k = Vec::new();
    for _round in 0..3 {
        for (rs, out) in [(&small, &mut s10), (&big, &mut s10k)] {
            check_interrupted()?;
            engine.invalidate();
            in_ns(&node, || engine.sync(rs))??;
            let samples = in_ns(&client, || -> Result<Vec<Duration>> {
                let mut v = Vec::with_capacity(args.latency_conns);
                let mut buf = [0u8; 1];
                // Warm-up.
                for _ in 0..20 {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                    let _ = s.read(&mut buf);
                }
                for _ in 0..args.latency_conns {
                    let t0 = Instant::now();
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                    s.read_exact(&mut buf)?;
                    v.push(t0.elapsed());
                }
                Ok(v)
            })??;
            out.extend(samples);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    let a = report
        .add("10 services programmed", &s10, "connect + first byte")
        .context("samples")?;
    let b = report
        .add("10,000 services programmed", &s10k, "connect + first byte")
        .context("samples")?;
    Ok(b.median_ms / a.median_ms)
}

// ---------------------------------------------------------------- memory

fn agent_memory(
    report_extra: &mut BTreeMap<String, serde_json::Value>,
) -> Result<(u64, u64, Duration)> {
    let tmp = TempDir::create("px-store")?;
    let store = Store::open(tmp.path().join("cluster"));
    store.write_config(&podwire_model::ClusterConfig {
        pod_cidr: "10.244.0.0/16".parse()?,
        service_cidr: "10.96.0.0/12".parse()?,
        node_slice_prefix: 24,
        cluster_domain: "cluster.local".into(),
        routing: podwire_model::RoutingMode::Vxlan,
    })?;
    for i in 0..10_000 {
        for o in objects(i) {
            store.put(&o)?;
        }
    }
    let generation = store.bump()?;
    let netns = NamedNetns::create(&netns_name("agent"))?;
    let exe = std::env::current_exe()?
        .parent()
        .map(|d| d.join("podwire"))
        .context("no directory")?;
    ensure!(
        exe.exists(),
        "{} missing: build it with cargo build --release -p podwire",
        exe.display()
    );
    let status = tmp.path().join("status.json");
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns.name()])
        .arg(&exe)
        .args([
            "agent",
            "--no-routing",
            "--node",
            "node01",
            "--healthz-bind",
            "off",
            "--metrics-bind",
            "off",
        ])
        .arg("--source")
        .arg(format!("files:{}", store.root().display()))
        .arg("--status-file")
        .arg(&status)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start podwire agent")?;
    let result = (|| -> Result<(u64, u64, Duration)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let ready = loop {
            check_interrupted()?;
            if let Ok(b) = std::fs::read(&status)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b)
                && v["generation"].as_u64() >= Some(generation)
                && v["ok"] == true
            {
                break started.elapsed();
            }
            ensure!(
                Instant::now() < deadline,
                "the agent did not sync 10k services in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(500));
        let text = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let kb = |key: &str| -> u64 {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((kb("VmRSS:"), kb("VmHWM:"), ready))
    })();
    let _ = child.kill();
    let _ = child.wait();
    if let Ok((rss, hwm, ready)) = &result {
        report_extra.insert("agent_rss_kb".into(), json!(rss));
        report_extra.insert("agent_peak_rss_kb".into(), json!(hwm));
        report_extra.insert(
            "agent_first_sync_from_files_ms".into(),
            json!(ready.as_secs_f64() * 1e3),
        );
    }
    result
}

fn ratio(a: Option<Stats>, b: Stats) -> String {
    a.map(|a| format!("{:.0}x", a.median_ms / b.median_ms))
        .unwrap_or_else(|| "-".into())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    ensure!(
        nix::unistd::geteuid().is_root(),
        "bench/proxy needs root (it creates network namespaces)"
    );
    ns::install_interrupt_handler()?;
    let tmp = TempDir::create("proxy")?;
    let mut report = Report {
        rows: Vec::new(),
        extra: BTreeMap::new(),
    };
    let mut summary = Vec::new();
    for n in [1_000, 10_000] {
        eprintln!(
            "\nfull sync, {n} services x 3 endpoints (ms)                     min    median       max"
        );
        let st = state(n);
        let podwire = podwire_full(n, args.runs, &st, &mut report)?;
        let nft_runs = if args.skip_nft {
            0
        } else if n >= 10_000 {
            args.nft_runs_10k
        } else {
            args.runs
        };
        let nft = kube_proxy_nft_full(n, nft_runs, &tmp, &mut report)?;
        let ipt = kube_proxy_iptables_full(n, args.runs, &tmp, &mut report)?;
        summary.push(format!(
            "full sync {n:>6}: podwire {:>8.1} ms | kube-proxy nft {} slower | iptables {} slower",
            podwire.median_ms,
            ratio(nft, podwire),
            ratio(ipt, podwire)
        ));
        if n == 10_000 {
            summary.push(format!(
                "  target <= {FULL_TARGET_MS} ms at 10k: {}",
                if podwire.median_ms <= FULL_TARGET_MS {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }
    let (add, add_nft, add_ipt) = add_one(&args, &tmp, &mut report)?;
    summary.push(format!(
        "+1 service at 10k: podwire {:.2} ms | kube-proxy nft {} slower | iptables {} slower; target <= {ADD_TARGET_MS} ms: {}",
        add.median_ms,
        ratio(add_nft, add),
        ratio(add_ipt, add),
        if add.median_ms <= ADD_TARGET_MS { "met" } else { "MISSED" }
    ));
    let lat = latency(&args, &mut report)?;
    summary.push(format!(
        "connection setup latency ratio 10k/10 services (medians): {lat:.3}; target <= {LATENCY_RATIO_TARGET}: {}",
        if lat <= LATENCY_RATIO_TARGET { "met" } else { "MISSED" }
    ));
    report.extra.insert("latency_ratio".into(), json!(lat));
    eprintln!("\nagent memory with 10k services (files source, proxy only)");
    match agent_memory(&mut report.extra) {
        Ok((rss, hwm, ready)) => summary.push(format!(
            "podwire agent at 10k services: RSS {:.1} MB (peak {:.1} MB); first sync from a 20k-file store {:.0} ms",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            ready.as_secs_f64() * 1e3
        )),
        Err(err) => summary.push(format!("agent memory: not measured ({err:#})")),
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"rows": report.rows, "extra": report.extra, "summary": summary})
            )?
        );
    } else {
        println!();
        for line in &summary {
            println!("{line}");
        }
    }
    Ok(())
}

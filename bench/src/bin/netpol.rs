//! bench/netpol: podwire's NetworkPolicy enforcement beside the real
//! kube-network-policies (the reference nftables + NFQUEUE enforcer, run
//! against a real control plane: src/netpol_ref.rs) and kube-router's layout
//! (iptables + ipset, generated here for the same policies, loaded with
//! `ipset restore` and `iptables-restore` as kube-router does): programming
//! time for 1 -> 1,000 policies over 1,000 pods (full sync and one policy
//! added), and TCP connection latency through an isolated pod with 10 vs
//! 1,000 policies selecting it. Everything runs in network namespaces this
//! program creates and removes. Needs root.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use podwire_bench::ns::{self, NamedNetns, check_interrupted};
use podwire_bench::stats::Stats;
use podwire_model::{ClusterState, Object};
use podwire_policy::{Engine, Ruleset, compile};
use serde::Serialize;
use serde_json::json;

#[allow(dead_code)]
#[path = "../kube_env.rs"]
mod kube_env;
#[path = "../netpol_ref.rs"]
mod netpol_ref;

const NODE: &str = "node00";
const PODS: usize = 1000;
const NODES: usize = 10;

#[derive(Serialize)]
struct Programming {
    policies: usize,
    elements: usize,
    podwire_full: Stats,
    podwire_compile: Stats,
    podwire_add_one: Stats,
    kube_router_full: Stats,
}

#[derive(Serialize)]
struct Latency {
    policies: usize,
    podwire_us: Stats,
    kube_router_us: Stats,
}

#[derive(Serialize)]
struct Report {
    programming: Vec<Programming>,
    latency: Vec<Latency>,
    podwire_latency_ratio: f64,
    kube_router_latency_ratio: f64,
    /// The reference enforcer's rows, when it ran.
    kube_network_policies: Option<netpol_ref::KnpReport>,
    /// Why it did not run (kube-router's layout is then the only reference).
    kube_network_policies_error: Option<String>,
}

fn pod_ip(j: usize) -> String {
    format!("10.244.{}.{}", j / 100, j % 100 + 2)
}

/// Pod j: namespace ns<j%10>, label app=a<j%100>, on node<j/100>.
fn pod(j: usize) -> Object {
    Object::Pod(
        serde_json::from_value(json!({
            "metadata": {"name": format!("p{j}"), "namespace": format!("ns{}", j % 10),
                         "labels": {"app": format!("a{}", j % 100)}},
            "spec": {"nodeName": format!("node{:02}", j / 100), "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": pod_ip(j)},
        }))
        .expect("pod"),
    )
}

/// Policy i in ns<i%10> selects app=a<i%100> (one pod per node), allows
/// TCP 8000+i%20 from app=a<(i+1)%100> in every namespace and from one /24.
fn policy(i: usize) -> Object {
    Object::NetworkPolicy(
        serde_json::from_value(json!({
            "metadata": {"name": format!("np{i}"), "namespace": format!("ns{}", i % 10)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", i % 100)}},
                     "ingress": [{"from": [
                         {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("a{}", (i + 1) % 100)}}},
                         {"ipBlock": {"cidr": format!("172.16.{}.0/24", i % 256)}}],
                       "ports": [{"port": 8000 + (i % 20)}]}]},
        }))
        .expect("policy"),
    )
}

fn cluster(policies: usize) -> ClusterState {
    let mut s = ClusterState::default();
    for n in 0..10 {
        s.insert(Object::Namespace(
            serde_json::from_value(json!({"metadata": {"name": format!("ns{n}")}})).expect("ns"),
        ));
    }
    for j in 0..PODS {
        s.insert(pod(j));
    }
    for i in 0..policies {
        s.insert(policy(i));
    }
    s
}

fn netns(tag: &str) -> Result<NamedNetns> {
    NamedNetns::create(&format!("{}np-{}-{tag}", ns::PREFIX, std::process::id()))
}

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

fn run_in(netns: &NamedNetns, program: &str, args: &[&str], input: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns.name(), program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

// ------------------------------------------------ kube-router's layout

/// kube-router's filter layout for the pods of this node that `rs`
/// isolates: an ipset of each policy's targets and of each rule's source
/// pods (hash:ip) and blocks (hash:net), a KUBE-NWPLCY chain per policy
/// that marks what a rule admits, a KUBE-POD-FW chain per pod jumping to
/// every policy selecting it and dropping unmarked packets.
fn kube_router(state: &ClusterState, rs: &Ruleset) -> (String, String) {
    let mut ipsets = String::new();
    let mut chains = String::new();
    let mut rules = String::new();
    let mut per_pod: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let local: Vec<(String, String, String)> = state
        .pods
        .values()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE))
        .filter_map(|p| {
            Some((
                p.metadata.namespace.clone()?,
                p.metadata.labels.as_ref()?.get("app")?.clone(),
                p.status.as_ref()?.pod_ip.clone()?,
            ))
        })
        .collect();
    for (k, np) in state.network_policies.values().enumerate() {
        let ns = np.metadata.namespace.clone().unwrap_or_default();
        let spec = np.spec.clone().unwrap_or_default();
        let app = spec
            .pod_selector
            .and_then(|s| s.match_labels)
            .and_then(|m| m.get("app").cloned())
            .unwrap_or_default();
        let targets: Vec<&String> = local
            .iter()
            .filter(|(n, a, _)| *n == ns && *a == app)
            .map(|(_, _, ip)| ip)
            .collect();
        if targets.is_empty() {
            continue;
        }
        let chain = format!("KUBE-NWPLCY-{k:06}");
        chains.push_str(&format!(":{chain} - [0:0]\n"));
        let _ = writeln!(ipsets, "create KUBE-DST-{k:06} hash:ip");
        for ip in &targets {
            let _ = writeln!(ipsets, "add KUBE-DST-{k:06} {ip}");
            per_pod
                .entry((*ip).clone())
                .or_default()
                .push(chain.clone());
        }
        for (r, rule) in spec.ingress.iter().flatten().enumerate() {
            let src = format!("KUBE-SRC-{k:06}-{r}");
            let net = format!("KUBE-NET-{k:06}-{r}");
            let _ = writeln!(ipsets, "create {src} hash:ip");
            let _ = writeln!(ipsets, "create {net} hash:net");
            for peer in rule.from.iter().flatten() {
                if let Some(b) = &peer.ip_block {
                    let _ = writeln!(ipsets, "add {net} {}", b.cidr);
                }
                let want = peer
                    .pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .and_then(|m| m.get("app"));
                if let Some(want) = want {
                    for p in state.pods.values() {
                        if p.metadata.labels.as_ref().and_then(|l| l.get("app")) == Some(want)
                            && let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_ref())
                        {
                            let _ = writeln!(ipsets, "add {src} {ip}");
                        }
                    }
                }
            }
            for port in rule.ports.iter().flatten() {
                let n = match &port.port {
                    Some(podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => *n,
                    _ => continue,
                };
                for set in [&src, &net] {
                    let _ = writeln!(
                        rules,
                        "-A {chain} -p tcp -m set --match-set {set} src -m set --match-set KUBE-DST-{k:06} dst --dport {n} -j MARK --set-xmark 0x10000/0x10000"
                    );
                }
            }
        }
        let _ = writeln!(rules, "-A {chain} -j RETURN");
    }
    let _ = rs;
    let mut pods_rules = String::new();
    for (i, (ip, policies)) in per_pod.iter().enumerate() {
        let chain = format!("KUBE-POD-FW-{i:06}");
        chains.push_str(&format!(":{chain} - [0:0]\n"));
        let _ = writeln!(pods_rules, "-A KUBE-ROUTER-FORWARD -d {ip} -j {chain}");
        let _ = writeln!(
            pods_rules,
            "-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        for p in policies {
            let _ = writeln!(pods_rules, "-A {chain} -j {p}");
        }
        let _ = writeln!(
            pods_rules,
            "-A {chain} -m mark ! --mark 0x10000/0x10000 -j DROP"
        );
        let _ = writeln!(pods_rules, "-A {chain} -j MARK --set-xmark 0x0/0x10000");
    }
    let iptables = format!(
        "*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n{chains}-A FORWARD -j KUBE-ROUTER-FORWARD\n{rules}{pods_rules}COMMIT\n"
    );
    (ipsets, iptables)
}

use std::fmt::Write as _;

fn kube_router_load(netns: &NamedNetns, state: &ClusterState, rs: &Ruleset) -> Result<Duration> {
    let started = Instant::now();
    let (ipsets, iptables) = kube_router(state, rs);
    run_in(netns, "ipset", &["restore", "-exist"], &ipsets)?;
    run_in(netns, "iptables-restore", &[], &iptables)?;
    Ok(started.elapsed())
}

// ------------------------------------------------ programming

fn programming(runs: usize) -> Result<Vec<Programming>> {
    let mut out = Vec::new();
    for n in [1usize, 10, 100, 1000] {
        let state = cluster(n);
        let plus = {
            let mut s = state.clone();
            s.insert(policy(n));
            s
        };
        let (mut full, mut comp, mut add, mut kr) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut elements = 0;
        for run in 0..runs {
            check_interrupted()?;
            let node = netns(&format!("p{n}-{run}"))?;
            let mut engine = Engine::new(None);
            let started = Instant::now();
            let rs = compile(&state, NODE);
            comp.push(started.elapsed());
            in_ns(&node, || engine.sync(&rs))??;
            full.push(started.elapsed());
            elements = rs.ingress_allow.len();
            let started = Instant::now();
            let rs2 = compile(&plus, NODE);
            in_ns(&node, || engine.sync(&rs2))??;
            add.push(started.elapsed());
            drop(node);
            let node = netns(&format!("k{n}-{run}"))?;
            kr.push(kube_router_load(&node, &state, &rs)?);
        }
        let s = |v: &[Duration]| Stats::of(v).context("no samples");
        eprintln!("programmed {n} policies");
        out.push(Programming {
            policies: n,
            elements,
            podwire_full: s(&full)?,
            podwire_compile: s(&comp)?,
            podwire_add_one: s(&add)?,
            kube_router_full: s(&kr)?,
        });
    }
    Ok(out)
}

// ------------------------------------------------ latency

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Server 10.244.0.2 (app=server, isolated by `n` policies: n-1 admit a
/// /24 of 172.16/12 each, one admits the client) and client 10.244.0.3.
fn latency_state(n: usize) -> ClusterState {
    let mut s = ClusterState::default();
    s.insert(Object::Namespace(
        serde_json::from_value(json!({"metadata": {"name": "bench"}})).expect("ns"),
    ));
    for (name, ip) in [("server", "10.244.0.2"), ("client", "10.244.0.3")] {
        s.insert(Object::Pod(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
                "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": ip},
            }))
            .expect("pod"),
        ));
    }
    for i in 0..n {
        let from = if i == n - 1 {
            json!({"podSelector": {"matchLabels": {"app": "client"}}})
        } else {
            json!({"ipBlock": {"cidr": format!("172.{}.{}.0/24", 16 + i / 256, i % 256)}})
        };
        s.insert(Object::NetworkPolicy(
            serde_json::from_value(json!({
                "metadata": {"name": format!("np{i:04}"), "namespace": "bench"},
                "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                         "ingress": [{"from": [from], "ports": [{"port": 8080}]}]},
            }))
            .expect("policy"),
        ));
    }
    s
}

fn connect_times(client: &Path, target: SocketAddr, conns: usize) -> Result<Vec<Duration>> {
    let netns = podwire_kernel::Netns::open(client)?;
    let path = client.to_path_buf();
    let _ = path;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Duration>> {
            let _guard = netns.enter()?;
            let mut out = Vec::with_capacity(conns);
            for _ in 0..conns {
                let started = Instant::now();
                let mut c = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                let mut b = [0u8; 1];
                c.read_exact(&mut b)?;
                out.push(started.elapsed());
            }
            Ok(out)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))?
    })
}

fn us(v: &[Duration]) -> Result<Stats> {
    let s = Stats::of(v).context("no samples")?;
    Ok(Stats {
        runs: s.runs,
        min_ms: s.min_ms * 1e3,
        median_ms: s.median_ms * 1e3,
        max_ms: s.max_ms * 1e3,
    })
}

fn latency(conns: usize) -> Result<Vec<Latency>> {
    let node = netns("node")?;
    let server = netns("server")?;
    let client = netns("client")?;
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
    for (i, (pod, addr)) in [(&server, "10.244.0.2/24"), (&client, "10.244.0.3/24")]
        .iter()
        .enumerate()
    {
        let host = format!("veth{i}");
        ip(&[
            "-n",
            node.name(),
            "link",
            "add",
            &host,
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
            &host,
            "master",
            "br0",
            "up",
        ])?;
        ip(&["-n", pod.name(), "addr", "add", addr, "dev", "eth0"])?;
        ip(&["-n", pod.name(), "link", "set", "eth0", "up"])?;
        ip(&["-n", pod.name(), "link", "set", "lo", "up"])?;
    }
    in_ns(&node, || {
        std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")
    })?
    .context("bridge-nf-call-iptables in the node namespace")?;
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
                Err(_) => std::thread::sleep(Duration::from_micros(20)),
            }
        }
        Ok(())
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("server did not start")?;
    let target: SocketAddr = "10.244.0.2:8080".parse()?;
    let mut out = Vec::new();
    let mut samples: BTreeMap<(usize, bool), Vec<Duration>> = BTreeMap::new();
    // Interleaved rounds so drift on a shared machine hits both sizes.
    for _round in 0..3 {
        for n in [10usize, 1000] {
            check_interrupted()?;
            let state = latency_state(n);
            let rs = compile(&state, NODE);
            let mut engine = Engine::new(None);
            in_ns(&node, || engine.sync(&rs))??;
            let t = connect_times(client.path(), target, conns)?;
            samples.entry((n, true)).or_default().extend(t);
            in_ns(&node, podwire_policy::engine::delete_table)??;
            kube_router_load(&node, &state, &rs)?;
            let t = connect_times(client.path(), target, conns)?;
            samples.entry((n, false)).or_default().extend(t);
            run_in(&node, "iptables", &["-F"], "")?;
            run_in(&node, "iptables", &["-X"], "")?;
            run_in(&node, "ipset", &["destroy"], "")?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = handle.join();
    for n in [10usize, 1000] {
        out.push(Latency {
            policies: n,
            podwire_us: us(&samples[&(n, true)])?,
            kube_router_us: us(&samples[&(n, false)])?,
        });
    }
    Ok(out)
}

fn print(r: &Report) {
    println!(
        "NetworkPolicy programming, 1,000 pods on {NODES} nodes (this node: 100), ms: min / median / max"
    );
    println!(
        "{:>9} {:>9} {:>26} {:>26} {:>26} {:>26}",
        "policies",
        "elements",
        "podwire full sync",
        "podwire compile only",
        "podwire +1 policy",
        "kube-router full"
    );
    let f = |s: &Stats| format!("{:.1} / {:.1} / {:.1}", s.min_ms, s.median_ms, s.max_ms);
    for p in &r.programming {
        println!(
            "{:>9} {:>9} {:>26} {:>26} {:>26} {:>26}",
            p.policies,
            p.elements,
            f(&p.podwire_full),
            f(&p.podwire_compile),
            f(&p.podwire_add_one),
            f(&p.kube_router_full)
        );
        println!(
            "{:>9} kube-router/podwire full sync (medians): {:.2}x",
            "",
            p.kube_router_full.median_ms / p.podwire_full.median_ms
        );
    }
    if let Some(k) = &r.kube_network_policies {
        println!(
            "\nkube-network-policies {} (nftables -> NFQUEUE, decided in userspace from its API caches;\n\
             programming is API watch -> memory): policies written to a real API server\n\
             (64 in flight), then the time until a connection they allow passes, ms: min / median / max",
            k.version
        );
        println!("new connections diverted to its queue by {}", k.diversion);
        println!(
            "{:>9} {:>26} {:>30} {:>26}",
            "policies",
            "write to the API",
            "in effect after last write",
            "first write -> in effect"
        );
        let g = |s: &Stats| format!("{:.2} / {:.2} / {:.2}", s.min_ms, s.median_ms, s.max_ms);
        for p in &k.programming {
            println!(
                "{:>9} {:>26} {:>30} {:>26}",
                p.policies,
                f(&p.write_ms),
                g(&p.effect_ms),
                f(&p.total_ms)
            );
        }
    } else if let Some(e) = &r.kube_network_policies_error {
        println!(
            "\nkube-network-policies did not run here: {e}\n\
             kube-router's layout is the only reference."
        );
    }
    let knp = r.kube_network_policies.as_ref();
    println!("\nTCP connection latency through an isolated pod, us: min / median / max");
    println!(
        "{:>9} {:>28} {:>28} {:>28}",
        "policies", "podwire", "kube-network-policies", "kube-router layout"
    );
    for (i, l) in r.latency.iter().enumerate() {
        let k = knp
            .and_then(|k| k.latency.get(i))
            .map_or("not run".to_string(), |k| f(&k.us));
        println!(
            "{:>9} {:>28} {:>28} {:>28}",
            l.policies,
            f(&l.podwire_us),
            k,
            f(&l.kube_router_us)
        );
    }
    let k = knp.map_or("not run".to_string(), |k| format!("{:.2}", k.latency_ratio));
    println!(
        "ratio 1000/10 (medians): podwire {:.2}, kube-network-policies {k}, kube-router layout {:.2}",
        r.podwire_latency_ratio, r.kube_router_latency_ratio
    );
}

/// The kube-network-policies rows, or why there are none.
fn reference(runs: usize, conns: usize) -> Result<(Option<netpol_ref::KnpReport>, Option<String>)> {
    let run = || -> Result<netpol_ref::KnpReport> {
        let bin = netpol_ref::program()?;
        let mut knp = netpol_ref::Knp::start(&bin)?;
        let programming = knp.programming(&[1, 10, 100, 1000], runs)?;
        let latency = knp.latency(conns)?;
        Ok(netpol_ref::KnpReport {
            version: netpol_ref::VERSION,
            diversion: knp.diversion.clone(),
            latency_ratio: latency[1].us.median_ms / latency[0].us.median_ms,
            programming,
            latency,
        })
    };
    match run() {
        Ok(r) => Ok((Some(r), None)),
        Err(e) if ns::interrupted() => Err(e),
        Err(e) => {
            eprintln!("kube-network-policies: {e:#}");
            Ok((None, Some(format!("{e:#}"))))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json_out = args.iter().any(|a| a == "--json");
    let value = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if args.iter().any(|a| a == "--help") {
        println!(
            "netpol [--runs N (3)] [--conns N (1000 per round, 3 rounds)] [--no-knp] [--json]"
        );
        return ExitCode::SUCCESS;
    }
    let runs = value("--runs", 3);
    let conns = value("--conns", 1000);
    let result = (|| -> Result<Report> {
        ns::install_interrupt_handler()?;
        let programming = programming(runs)?;
        let latency = latency(conns)?;
        let (knp, knp_error) = if args.iter().any(|a| a == "--no-knp") {
            (None, Some("skipped (--no-knp)".to_string()))
        } else {
            reference(runs, conns)?
        };
        let ratio = |f: &dyn Fn(&Latency) -> f64| f(&latency[1]) / f(&latency[0]);
        Ok(Report {
            podwire_latency_ratio: ratio(&|l| l.podwire_us.median_ms),
            kube_router_latency_ratio: ratio(&|l| l.kube_router_us.median_ms),
            programming,
            latency,
            kube_network_policies: knp,
            kube_network_policies_error: knp_error,
        })
    })();
    podwire_bench::finish("netpol", result, json_out, print)
}

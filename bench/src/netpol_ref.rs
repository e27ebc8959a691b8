//! bench/netpol's reference enforcer: the real kube-network-policies
//! (sigs.k8s.io/kube-network-policies, built by tools/netpol-ref/build).
//! It puts the addresses of local isolated pods in an nftables set, queues
//! the first packet of their new connections to userspace (NFQUEUE, hook
//! postrouting) and decides there from its informers' caches, so its
//! "programming" is an API watch into memory. Here it runs in a node
//! namespace holding a bridged server and client pod, against a real
//! throwaway control plane (podwire-testsupport); the bench writes
//! Namespaces, Pods (address set through pods/status, as a kubelet would)
//! and NetworkPolicies with kube-rs, and times (1) how long after the last
//! policy write the policies are in effect and (2) TCP connection latency
//! through the isolated server with 10 vs 1,000 policies selecting it.
//! Included by src/bin/netpol.rs with `#[path]`; the guards remove the
//! process, namespaces and files when [`Knp`] drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use podwire_bench::stats::Stats;
use podwire_testsupport::{ControlPlane, Netns, Process, TempDir};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::kube_env::{ApiClient, CONCURRENCY, create_retry, exec};

/// The version tools/netpol-ref/go.mod pins.
pub const VERSION: &str = "v0.8.0";
const PROGRAM: &str = "kube-network-policies";
const BENCH_NS: &str = "bench";
const SERVER: &str = "10.244.200.2";
const CLIENT: &str = "10.244.200.3";
const PORT: u16 = 8080;
/// Underlay hosts (`.2` is the API server).
const API_HOST: u8 = 5;
const NODE_HOST: u8 = 11;
/// Marks the policies the latency rounds add and remove.
const FILL: &str = "bench.podwire.io/fill";
/// One probe attempt: a connection not established by then counts as denied.
const ATTEMPT: Duration = Duration::from_millis(20);
const EFFECT_LIMIT: Duration = Duration::from_secs(120);

#[derive(Serialize)]
pub struct KnpProgramming {
    pub policies: usize,
    /// Writing the policies (CONCURRENCY in flight) until the last was acknowledged.
    pub write_ms: Stats,
    /// From the last write's acknowledgement until a connection they allow
    /// passes (the start of the first attempt that passed).
    pub effect_ms: Stats,
    /// From the first write until then.
    pub total_ms: Stats,
}

#[derive(Serialize)]
pub struct KnpLatency {
    pub policies: usize,
    pub us: Stats,
}

#[derive(Serialize)]
pub struct KnpReport {
    pub version: &'static str,
    /// Who diverts new connections of isolated pods to its queue: its own
    /// nftables rules, or (kernels without nft's `queue` expression) the
    /// bench's equivalent iptables NFQUEUE rules.
    pub diversion: String,
    pub programming: Vec<KnpProgramming>,
    pub latency: Vec<KnpLatency>,
    pub latency_ratio: f64,
}

/// The program: $PODWIRE_NETPOL_REF_BIN (bench/netpol sets it from
/// tools/netpol-ref/build), else the build's default cache.
pub fn program() -> Result<PathBuf> {
    let dir = std::env::var_os("PODWIRE_NETPOL_REF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/var/cache/podwire/netpol-ref/{VERSION}/bin")));
    let bin = dir.join(PROGRAM);
    ensure!(
        bin.is_file(),
        "{} missing: tools/netpol-ref/build did not build it",
        bin.display()
    );
    Ok(bin)
}

fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).context("build an API object")
}

/// The load policy i of the programming rows (crate::policy), as the API type.
fn load_policy(i: usize) -> Result<(String, NetworkPolicy)> {
    let podwire_model::Object::NetworkPolicy(np) = crate::policy(i) else {
        bail!("policy {i} is not a NetworkPolicy");
    };
    let np: NetworkPolicy = from_json(serde_json::to_value(np)?)?;
    Ok((np.metadata.namespace.clone().unwrap_or_default(), np))
}

fn server_policy(name: &str, from: serde_json::Value, fill: bool) -> Result<NetworkPolicy> {
    let labels = if fill {
        json!({FILL: "true"})
    } else {
        json!({})
    };
    let ingress = if from.is_null() {
        json!([])
    } else {
        json!([{"from": [from], "ports": [{"port": PORT}]}])
    };
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": BENCH_NS, "labels": labels},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "policyTypes": ["Ingress"], "ingress": ingress},
    }))
}

/// The policy admitting the client (last write of every step).
fn allow_policy() -> Result<NetworkPolicy> {
    server_policy(
        "allow",
        json!({"podSelector": {"matchLabels": {"app": "client"}}}),
        false,
    )
}

/// A pod object with its status (phase, podIP) to patch after creation.
fn pod(name: &str, ns: &str, app: &str, node: &str, ip: &str) -> Result<(Pod, serde_json::Value)> {
    let pod = from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "podwire"}],
                 "automountServiceAccountToken": false, "enableServiceLinks": false},
    }))?;
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    Ok((pod, status))
}

/// The control plane, the node running kube-network-policies, its pods.
pub struct Knp {
    process: Option<Process>,
    pub diversion: String,
    stop: Arc<AtomicBool>,
    server_thread: Option<std::thread::JoinHandle<()>>,
    api: ApiClient,
    client: Netns,
    _server: Netns,
    node: Netns,
    _api_ns: Netns,
    cp: ControlPlane,
    dir: TempDir,
}

impl Drop for Knp {
    fn drop(&mut self) {
        self.process.take();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.server_thread.take() {
            let _ = h.join();
        }
    }
}

impl Knp {
    /// Starts everything: control plane, namespaces, objects (1,000 pods
    /// on 10 nodes, server and client on this node, a policy isolating the
    /// server), then kube-network-policies, ready when it denies the client.
    pub fn start(bin: &Path) -> Result<Knp> {
        eprintln!("kube-network-policies {VERSION}: starting etcd + kube-apiserver");
        let cp = ControlPlane::builder()
            .ready_timeout(Duration::from_secs(120))
            .start();
        let dir = TempDir::new("netpol-ref");
        let api_ns = Netns::new("npapi");
        cp.attach(&api_ns, "eth0", &format!("{}/24", cp.underlay_ip(API_HOST)));
        let node = Netns::new("npnode");
        cp.attach(&node, "eth0", &format!("{}/24", cp.underlay_ip(NODE_HOST)));
        let server = Netns::new("npsrv");
        let client = Netns::new("npcli");
        exec(&node, &["ip", "link", "set", "lo", "up"])?;
        exec(&node, &["ip", "link", "add", "br0", "type", "bridge"])?;
        exec(
            &node,
            &["ip", "addr", "add", "10.244.200.1/24", "dev", "br0"],
        )?;
        exec(&node, &["ip", "link", "set", "br0", "up"])?;
        for (i, (pod, addr)) in [(&server, SERVER), (&client, CLIENT)].iter().enumerate() {
            let host = format!("veth{i}");
            exec(
                &node,
                &[
                    "ip",
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
                ],
            )?;
            exec(&node, &["ip", "link", "set", &host, "master", "br0", "up"])?;
            exec(
                pod,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
            exec(pod, &["ip", "link", "set", "eth0", "up"])?;
            exec(pod, &["ip", "link", "set", "lo", "up"])?;
        }
        node.run(|| std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"))
            .context("bridge-nf-call-iptables in the node namespace")?;
        let (stop, server_thread) = serve(&server)?;
        let api = ApiClient::connect(cp.admin_kubeconfig(), api_ns.path())?;
        let mut knp = Knp {
            process: None,
            diversion: String::new(),
            stop,
            server_thread: Some(server_thread),
            api,
            client,
            _server: server,
            node,
            _api_ns: api_ns,
            cp,
            dir,
        };
        knp.objects()?;
        knp.spawn(bin)?;
        Ok(knp)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.cp.kubectl(args);
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn objects(&self) -> Result<()> {
        let c = self.api.client();
        let names: Vec<String> = (0..10)
            .map(|n| format!("ns{n}"))
            .chain([BENCH_NS.to_string()])
            .collect();
        let namespaces: Vec<Namespace> = names
            .iter()
            .map(|n| {
                from_json(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
            })
            .collect::<Result<_>>()?;
        self.api
            .create_many(Api::all(c.clone()), namespaces, "namespaces")?;
        // No controller manager: the ServiceAccount admission plugin wants
        // the account it gives pods to exist.
        let mut accounts = Vec::new();
        for n in &names {
            let sa: ServiceAccount =
                from_json(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": n}}))?;
            accounts.push((n.clone(), sa));
        }
        self.api.create_in(accounts, "service accounts")?;
        let mut pods = Vec::new();
        for j in 0..crate::PODS {
            let (ns, app, node) = (
                format!("ns{}", j % 10),
                format!("a{}", j % 100),
                format!("node{:02}", j / 100),
            );
            pods.push(pod(&format!("p{j}"), &ns, &app, &node, &crate::pod_ip(j))?);
        }
        pods.push(pod("server", BENCH_NS, "server", crate::NODE, SERVER)?);
        pods.push(pod("client", BENCH_NS, "client", crate::NODE, CLIENT)?);
        let started = Instant::now();
        let total = pods.len();
        self.api.run(async move {
            futures::stream::iter(pods)
                .map(|(p, status)| {
                    let api: Api<Pod> = Api::namespaced(
                        c.clone(),
                        p.metadata.namespace.as_deref().unwrap_or_default(),
                    );
                    async move {
                        create_retry(&api, &p).await?;
                        let name = p.metadata.name.clone().unwrap_or_default();
                        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await
                            .with_context(|| format!("patch pods/status of {name}"))?;
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(())
        })?;
        eprintln!(
            "  {total} pods with addresses in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // The server stays isolated throughout: every step only adds or
        // removes what admits the client.
        self.api.create_in(
            vec![(
                BENCH_NS.to_string(),
                server_policy("deny", serde_json::Value::Null, false)?,
            )],
            "the server's isolating policy",
        )?;
        Ok(())
    }

    /// Deletes the NetworkPolicies of `ns` matching `selector` ("" = all).
    fn delete_policies(&self, ns: &str, selector: &str) -> Result<()> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.api.client(), ns);
        let lp = ListParams::default().labels(selector);
        self.api.run(async move {
            api.delete_collection(&DeleteParams::default(), &lp)
                .await
                .context("delete NetworkPolicies")?;
            Ok(())
        })
    }

    fn delete_allow(&self) -> Result<()> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.api.client(), BENCH_NS);
        self.api.run(async move {
            match api.delete("allow", &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e).context("delete the allow policy"),
            }
        })
    }

    /// Starts kube-network-policies in the node namespace. v0.8.0 has no
    /// --kubeconfig: it only takes the in-cluster configuration, so it runs
    /// in a private mount namespace (unshare) whose /run is a tmpfs holding
    /// a ServiceAccount token and the CA at the in-cluster paths; the API
    /// address comes from KUBERNETES_SERVICE_HOST/PORT (the underlay).
    fn spawn(&mut self, bin: &Path) -> Result<()> {
        self.kubectl(&["create", "serviceaccount", PROGRAM, "-n", "kube-system"])?;
        self.kubectl(&[
            "create",
            "clusterrolebinding",
            PROGRAM,
            "--clusterrole=cluster-admin",
            &format!("--serviceaccount=kube-system:{PROGRAM}"),
        ])?;
        let token = self.kubectl(&[
            "create",
            "token",
            PROGRAM,
            "-n",
            "kube-system",
            "--duration=4h",
        ])?;
        let secrets = self.dir.join("serviceaccount");
        std::fs::create_dir_all(&secrets)?;
        std::fs::write(secrets.join("token"), token.trim())?;
        std::fs::write(secrets.join("ca.crt"), self.cp.ca_pem())?;
        std::fs::write(secrets.join("namespace"), "kube-system")?;
        let log = std::fs::File::create(self.dir.join("knp.log"))?;
        let script = r#"set -e
mount --make-rprivate /
mount -t tmpfs -o mode=0755 netpol-ref /run
mkdir -p /run/secrets/kubernetes.io
cp -r "$1" /run/secrets/kubernetes.io/serviceaccount
shift
exec "$@""#;
        let mut cmd = self.node.command("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&secrets)
        .arg(bin)
        .args([
            "--hostname-override",
            crate::NODE,
            "--nfqueue-id=100",
            "--metrics-bind-address=127.0.0.1:9080",
            // Its help: not needed on 6.12+ kernels (UDP DNS only).
            "--netfilter-bug-1766-fix=false",
            "--v=0",
        ])
        .env("KUBERNETES_SERVICE_HOST", self.cp.api_ip().to_string())
        .env(
            "KUBERNETES_SERVICE_PORT",
            podwire_testsupport::API_PORT.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let process = Process::spawn(PROGRAM, cmd);
        let queues = PathBuf::from(format!(
            "/proc/{}/net/netfilter/nfnetlink_queue",
            process.pid()
        ));
        self.process = Some(process);
        // Bound to its queue only once its caches are synced; diverting
        // earlier would drop packets nobody reads (no bypass flag).
        let bound = Instant::now();
        while !std::fs::read_to_string(&queues).is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().next() == Some("100"))
        }) {
            self.alive()?;
            ensure!(
                bound.elapsed() < Duration::from_secs(60),
                "it never bound NFQUEUE 100; its log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.diversion = self.divert()?;
        let started = Instant::now();
        self.wait(false, Duration::from_secs(60)).with_context(|| {
            format!(
                "it never isolated the server; its log:\n{}",
                self.log_tail()
            )
        })?;
        eprintln!(
            "  kube-network-policies enforcing after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Its nftables ruleset sends new connections of isolated pods to
    /// NFQUEUE with nft's `queue` expression; a kernel built without it
    /// (CONFIG_NFT_QUEUE) refuses the whole transaction with ENOENT, and it
    /// keeps running with its queue open but nothing diverted. Then the bench
    /// installs the same diversion with iptables' NFQUEUE target (xt,
    /// through nft_compat): established/related accepted, packets from or to
    /// the isolated server queued to 100. The verdicts stay its own.
    fn divert(&self) -> Result<String> {
        let probe = "add table inet podwire-queue-probe\n\
                     add chain inet podwire-queue-probe c { type filter hook postrouting priority 95; }\n\
                     add rule inet podwire-queue-probe c queue num 100\n";
        let mut cmd = self.node.command("nft");
        // -c: checked by the kernel, never committed.
        cmd.args(["-c", "-f", "-"]);
        let out = podwire_testsupport::run_with_timeout(
            cmd,
            Some(probe.as_bytes()),
            Duration::from_secs(10),
        );
        if out.status.success() {
            return Ok("its own nftables rules (queue 100)".into());
        }
        let why = String::from_utf8_lossy(&out.stderr)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        for rule in [
            "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-s 10.244.200.2 -j NFQUEUE --queue-num 100",
            "-d 10.244.200.2 -j NFQUEUE --queue-num 100",
        ] {
            let mut argv = vec!["iptables", "-t", "mangle", "-A", "POSTROUTING"];
            argv.extend(rule.split(' '));
            exec(&self.node, &argv)?;
        }
        Ok(format!(
            "the bench's iptables NFQUEUE rules: this kernel has no nft `queue` expression \
             (CONFIG_NFT_QUEUE unset; nft: {why}), so its own ruleset fails with \
             \"netlink receive: no such file or directory\""
        ))
    }

    pub fn log_tail(&self) -> String {
        crate::kube_env::tail(&self.dir.join("knp.log"), 20)
    }

    fn alive(&mut self) -> Result<()> {
        let running = self.process.as_mut().is_some_and(Process::is_running);
        ensure!(
            running,
            "kube-network-policies exited; its log:\n{}",
            self.log_tail()
        );
        Ok(())
    }

    /// One connection client -> server: established and answered within ATTEMPT.
    fn attempt(&self) -> bool {
        let target: SocketAddr = (SERVER.parse::<std::net::Ipv4Addr>().expect("ip"), PORT).into();
        self.client.run(|| {
            let Ok(mut c) = TcpStream::connect_timeout(&target, ATTEMPT) else {
                return false;
            };
            let _ = c.set_read_timeout(Some(ATTEMPT));
            c.read_exact(&mut [0u8; 1]).is_ok()
        })
    }

    /// Polls until the client is admitted (`allowed`) or refused twice in a
    /// row; the start of the attempt that showed it.
    fn wait(&self, allowed: bool, limit: Duration) -> Result<Instant> {
        let started = Instant::now();
        let mut streak = 0;
        while started.elapsed() < limit {
            podwire_bench::ns::check_interrupted()?;
            let t = Instant::now();
            let ok = self.attempt();
            if ok == allowed {
                streak += 1;
                if allowed || streak == 2 {
                    return Ok(t);
                }
            } else {
                streak = 0;
                if ok {
                    std::thread::sleep(ATTEMPT);
                }
            }
        }
        bail!(
            "the client was not {} within {limit:?}",
            if allowed { "admitted" } else { "refused" }
        )
    }

    /// Programming rows: per run, remove the previous step (the allow
    /// policy first, confirmed refused, then the load), write `n` load
    /// policies and the allow policy, time until the client passes.
    pub fn programming(&mut self, sizes: &[usize], runs: usize) -> Result<Vec<KnpProgramming>> {
        let mut out = Vec::new();
        for &n in sizes {
            let (mut write, mut effect, mut total) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..runs {
                self.alive()?;
                self.clear_load()?;
                let load = (0..n).map(load_policy).collect::<Result<Vec<_>>>()?;
                let t0 = Instant::now();
                self.api.create_in(load, "load policies")?;
                self.api.create_in(
                    vec![(BENCH_NS.to_string(), allow_policy()?)],
                    "allow policy",
                )?;
                let acked = Instant::now();
                let passed = self.wait(true, EFFECT_LIMIT)?;
                write.push(acked - t0);
                effect.push(passed.saturating_duration_since(acked));
                total.push(passed.saturating_duration_since(t0));
            }
            eprintln!("kube-network-policies: programmed {n} policies");
            out.push(KnpProgramming {
                policies: n,
                write_ms: Stats::of(&write).context("no samples")?,
                effect_ms: Stats::of(&effect).context("no samples")?,
                total_ms: Stats::of(&total).context("no samples")?,
            });
        }
        self.clear_load()?;
        Ok(out)
    }

    fn clear_load(&self) -> Result<()> {
        self.delete_allow()?;
        self.wait(false, EFFECT_LIMIT)?;
        for n in 0..10 {
            self.delete_policies(&format!("ns{n}"), "")?;
        }
        self.delete_policies(BENCH_NS, FILL)?;
        // Let the deletions drain from its queue before the next step.
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    }

    /// Connection latency with `n` policies selecting the server: the
    /// isolating one, n-2 admitting a /24 of 172.16/12 each, and the allow
    /// policy (as crate::latency_state); rounds interleaved.
    pub fn latency(&mut self, conns: usize) -> Result<Vec<KnpLatency>> {
        let target: SocketAddr = format!("{SERVER}:{PORT}").parse()?;
        let mut samples: std::collections::BTreeMap<usize, Vec<Duration>> = Default::default();
        for _round in 0..3 {
            for n in [10usize, 1000] {
                self.alive()?;
                self.clear_load()?;
                let fill = (0..n - 2)
                    .map(|i| {
                        let from = json!({"ipBlock": {"cidr": format!("172.{}.{}.0/24", 16 + i / 256, i % 256)}});
                        Ok((BENCH_NS.to_string(), server_policy(&format!("np{i:04}"), from, true)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.api.create_in(fill, "fill policies")?;
                self.api.create_in(
                    vec![(BENCH_NS.to_string(), allow_policy()?)],
                    "allow policy",
                )?;
                self.wait(true, EFFECT_LIMIT)?;
                let t = crate::connect_times(self.client.path(), target, conns)?;
                samples.entry(n).or_default().extend(t);
            }
        }
        self.alive()?;
        samples
            .into_iter()
            .map(|(policies, v)| {
                Ok(KnpLatency {
                    policies,
                    us: crate::us(&v)?,
                })
            })
            .collect()
    }
}

/// The server: accepts on PORT in `ns`, writes one byte, closes.
fn serve(ns: &Netns) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns.thread(move || {
        let listener = match TcpListener::bind(("0.0.0.0", PORT)) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let _ = listener.set_nonblocking(true);
        let _ = tx.send(Ok(()));
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.write_all(b"x");
                }
                Err(_) => std::thread::sleep(Duration::from_micros(20)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("the server did not start")?
        .context("the server cannot listen")?;
    Ok((stop, handle))
}

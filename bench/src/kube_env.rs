//! What the Kubernetes-mode benchmark (`src/bin/kube.rs`) runs on: a real
//! control plane (podwire-testsupport) with, on its underlay, node A running
//! `podwire agent`, node B running the real kube-proxy (nftables mode), an
//! optional node C running kube-proxy with min-sync-period 0, a backend
//! serving every EndpointSlice, and a namespace with `podwire dns` and
//! `podwire ingress`; an API client whose sockets live in a namespace of
//! their own; the objects the bench writes; and the probes that poll for
//! their effect. Included by the binary with `#[path]`.
//!
//! Everything runs in namespaces the harness creates; the guards remove
//! processes, namespaces and files on drop. The release profile aborts on
//! panic, so setup steps here return errors instead of using the harness's
//! panicking helpers wherever there is a choice; a run that still dies leaves
//! namespaces the next run's sweep removes.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, Patch, PatchParams, PostParams};
use podwire_testsupport::{ControlPlane, Netns, Process, TempDir, k8s_bin_dir};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Where Services, EndpointSlices and Ingresses go.
pub const NS: &str = "bench";
/// Where the DNS memory test's pods go.
pub const PODS_NS: &str = "bench-pods";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const SERVICE_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;
/// Underlay hosts (`.2` is the API server).
const CLIENT_HOST: u8 = 5;
const NODE_A_HOST: u8 = 11;
const NODE_B_HOST: u8 = 12;
const NODE_C_HOST: u8 = 13;
const BACKEND_HOSTS: [u8; 3] = [20, 21, 22];
const SVC_HOST: u8 = 30;
pub const NODE_A: &str = "node-a";
pub const NODE_B: &str = "node-b";
pub const NODE_C: &str = "node-c";
/// podwire dns and ingress listen on loopback inside their namespace.
pub const DNS_ADDR: &str = "127.0.0.1:53";
const DNS_METRICS: &str = "127.0.0.1:9153";
pub const INGRESS_ADDR: &str = "127.0.0.1:80";
const INGRESS_METRICS: &str = "127.0.0.1:10254";
/// kube-proxy's and podwire agent's metrics, each inside its node.
pub const PROXY_METRICS: &str = "127.0.0.1:10249";
/// How many API writes are in flight while creating objects in bulk.
pub const CONCURRENCY: usize = 64;

/// The ClusterIP of bulk Service `i` (10.96.4.0 onwards; explicit, so a
/// probe can start before the write that makes it exist).
pub fn bulk_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 4, 0)) + i as u32)
}

/// The ClusterIP of the `k`-th Service created one at a time (10.100.0.0
/// onwards, away from the bulk ones).
pub fn single_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + k as u32)
}

pub fn bulk_name(i: usize) -> String {
    format!("svc-{i}")
}

/// `name.bench.svc.cluster.local`.
pub fn dns_name(service: &str) -> String {
    format!("{service}.{NS}.svc.cluster.local")
}

fn from_json<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).context("build an object from JSON")
}

pub fn service(name: &str, ip: Ipv4Addr) -> Result<Service> {
    from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT,
                            "targetPort": BACKEND_PORT}]},
    }))
}

/// The one EndpointSlice of Service `service`, labelled as the
/// EndpointSlice controller labels its own.
pub fn slice(service: &str, endpoints: &[Ipv4Addr]) -> Result<EndpointSlice> {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false}}))
        .collect();
    from_json(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-bench"), "namespace": NS,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "bench.podwire.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": BACKEND_PORT}],
        "endpoints": eps,
    }))
}

pub fn ingress(name: &str, host: &str, service: &str) -> Result<Ingress> {
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ingressClassName": "podwire",
                 "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                     "backend": {"service": {"name": service, "port": {"number": SERVICE_PORT}}}}]}}]},
    }))
}

/// Pod `i`'s address (any unique address will do: only DNS reads it).
pub fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 1, 0)) + i as u32)
}

fn pod(i: usize) -> Result<Pod> {
    from_json(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": PODS_NS, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "podwire"}],
                 "automountServiceAccountToken": false, "enableServiceLinks": false},
    }))
}

// ------------------------------------------------------------ API client

/// What the bench creates through the API: any typed Kubernetes object.
pub trait ApiObject:
    kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> ApiObject for K where
    K: kube::Resource
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A kube-rs client (admin kubeconfig) on a runtime whose threads all live
/// in the client namespace, so every socket it opens is on the underlay.
pub struct ApiClient {
    client: kube::Client,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for ApiClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn enter_netns(path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn netns_inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl ApiClient {
    pub fn connect(kubeconfig: &Path, netns: &Path) -> Result<ApiClient> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ns = netns.to_path_buf();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-api")
            .enable_all()
            .on_thread_start(move || {
                if let Err(e) = enter_netns(&ns) {
                    eprintln!("kube bench: API thread cannot enter {}: {e}", ns.display());
                }
            })
            .build()
            .context("start the API client's runtime")?;
        let want = netns_inode(netns);
        let here =
            rt.block_on(rt.spawn(async { netns_inode(Path::new("/proc/thread-self/ns/net")) }))?;
        ensure!(
            want.is_some() && want == here,
            "the API client's threads are not in {}",
            netns.display()
        );
        let path = kubeconfig.to_path_buf();
        let client = rt.block_on(rt.spawn(async move {
            let file = kube::config::Kubeconfig::read_from(&path)?;
            let config = kube::Config::from_custom_kubeconfig(
                file,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            Ok::<_, anyhow::Error>(kube::Client::try_from(config)?)
        }))??;
        Ok(ApiClient {
            client,
            rt: Some(rt),
        })
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Runs `fut` on the client's runtime (in the client namespace) and
    /// waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let rt = self.rt.as_ref().context("runtime gone")?;
        rt.block_on(rt.spawn(fut)).context("API task panicked")?
    }

    /// Creates one object and returns when the API answered: (just before
    /// the request, when the answer came).
    pub fn create_timed<K>(&self, namespace: &str, obj: K) -> Result<(Instant, Instant)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client(), namespace);
        self.run(async move {
            let t0 = Instant::now();
            api.create(&PostParams::default(), &obj)
                .await
                .context("create")?;
            Ok((t0, Instant::now()))
        })
    }

    /// Creates `objects` with [`CONCURRENCY`] writes in flight, retrying
    /// what the server throttles; already existing ones count as created.
    pub fn create_many<K>(&self, api: Api<K>, objects: Vec<K>, what: &str) -> Result<Duration>
    where
        K: ApiObject,
    {
        let each = objects.into_iter().map(|o| (api.clone(), o)).collect();
        self.create_each(each, what)
    }

    /// Creates `objects`, each in its namespace, CONCURRENCY in flight; the
    /// time until the last was acknowledged. (This file is shared by the
    /// kube and netpol benches; only netpol creates across namespaces.)
    #[allow(dead_code)]
    pub fn create_in<K>(&self, objects: Vec<(String, K)>, what: &str) -> Result<Duration>
    where
        K: ApiObject + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        let client = self.client();
        let each = objects
            .into_iter()
            .map(|(ns, o)| (Api::namespaced(client.clone(), &ns), o))
            .collect();
        self.create_each(each, what)
    }

    /// The bulk creation both of the above are: each object through its
    /// own Api handle, retried as [`create_retry`] does.
    fn create_each<K>(&self, objects: Vec<(Api<K>, K)>, what: &str) -> Result<Duration>
    where
        K: ApiObject,
    {
        let what = what.to_string();
        self.run(async move {
            let started = Instant::now();
            futures::stream::iter(objects)
                .map(|(api, obj)| async move { create_retry(&api, &obj).await.map(drop) })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .with_context(|| format!("create {what}"))?;
            Ok(started.elapsed())
        })
    }

    /// Creates pods `from..to` and gives each a Running status with its
    /// address (pods/status), as a kubelet would; progress on stderr.
    pub fn create_pods(&self, from: usize, to: usize) -> Result<Duration> {
        let api: Api<Pod> = Api::namespaced(self.client(), PODS_NS);
        self.run(async move {
            let started = Instant::now();
            let total = to - from;
            let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            futures::stream::iter(from..to)
                .map(|i| {
                    let api = api.clone();
                    let done = done.clone();
                    async move {
                        let p = pod(i)?;
                        create_retry(&api, &p).await?;
                        let ip = pod_ip(i).to_string();
                        let status = json!({"status": {"phase": "Running", "podIP": ip,
                                                       "podIPs": [{"ip": ip}]}});
                        retry(|| async {
                            api.patch_status(
                                &format!("pod-{i}"),
                                &PatchParams::default(),
                                &Patch::Merge(&status),
                            )
                            .await
                        })
                        .await
                        .with_context(|| format!("patch pods/status of pod-{i}"))?;
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(10_000) || n == total {
                            eprintln!(
                                "  {n}/{total} pods created with status ({:.0} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        Ok::<_, anyhow::Error>(())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok(started.elapsed())
        })
    }
}

fn retryable(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(s) => matches!(s.code, 429 | 500 | 502 | 503 | 504),
        _ => true,
    }
}

async fn retry<T, F, Fut>(mut f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match f().await {
            Err(e) if attempt < 6 && retryable(&e) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
}

pub async fn create_retry<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let pp = PostParams::default();
    match retry(|| api.create(&pp, obj)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!(
            "create {}",
            obj.meta().name.as_deref().unwrap_or("?")
        ))),
    }
}

// ------------------------------------------------------------ probes

/// What a probe checks, once per attempt.
#[derive(Debug, Clone)]
pub enum Probe {
    /// A TCP connect (a ClusterIP works when it is DNATed to the backend).
    Tcp(SocketAddrV4),
    /// An A query answered with at least one record.
    Dns { server: SocketAddr, name: String },
    /// An HTTP GET with this Host answered 200 (the backend, not a 404).
    Http { addr: SocketAddr, host: String },
}

/// A probe polling on a thread inside a namespace until it succeeds, the
/// limit passes or it is stopped.
pub struct Poller {
    handle: JoinHandle<Result<Option<Instant>>>,
}

impl Poller {
    /// Starts polling now: one attempt every `every` (an attempt that gets
    /// no answer is abandoned after `every`, a new socket each time, so a
    /// SYN dropped before the rules existed cannot delay the next one).
    pub fn start(
        netns: &Path,
        probe: Probe,
        every: Duration,
        limit: Duration,
        stop: Arc<AtomicBool>,
    ) -> Poller {
        let path = netns.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<Option<Instant>> {
            let ns = podwire_kernel::Netns::open(&path)?;
            let _guard = ns.enter()?;
            let started = Instant::now();
            let mut state = ProbeState::new(&probe)?;
            loop {
                let t = Instant::now();
                if state.attempt(&probe, every) {
                    return Ok(Some(Instant::now()));
                }
                if stop.load(Ordering::Relaxed) || started.elapsed() >= limit {
                    return Ok(None);
                }
                let next = t + every;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
        });
        Poller { handle }
    }

    /// When the probe first succeeded (None: never within its limit).
    pub fn wait(self) -> Result<Option<Instant>> {
        self.handle
            .join()
            .map_err(|_| anyhow!("probe thread panicked"))?
    }
}

struct ProbeState {
    udp: Option<UdpSocket>,
    id: u16,
}

impl ProbeState {
    fn new(probe: &Probe) -> Result<ProbeState> {
        let udp = match probe {
            Probe::Dns { server, .. } => {
                let s = UdpSocket::bind("0.0.0.0:0").context("bind a DNS probe socket")?;
                s.connect(server).context("connect the DNS probe socket")?;
                Some(s)
            }
            _ => None,
        };
        Ok(ProbeState { udp, id: 0 })
    }

    fn attempt(&mut self, probe: &Probe, every: Duration) -> bool {
        match probe {
            Probe::Tcp(addr) => TcpStream::connect_timeout(&SocketAddr::V4(*addr), every).is_ok(),
            Probe::Dns { name, .. } => {
                let Some(sock) = &self.udp else {
                    return false;
                };
                self.id = self.id.wrapping_add(1);
                dns_attempt(sock, self.id, name, every)
            }
            Probe::Http { addr, host } => http_status(addr, host, "/") == Some(200),
        }
    }
}

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// One query; true when its answer (same id) is NOERROR with records.
fn dns_attempt(sock: &UdpSocket, id: u16, name: &str, wait: Duration) -> bool {
    if sock.send(&dns_query(id, name)).is_err() {
        return false;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                return buf[2] & 0x80 != 0 && rcode == 0 && answers > 0;
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// The status code of `GET path` with this Host (fresh connection), or
/// None when there is no answer.
fn http_status(addr: &SocketAddr, host: &str, path: &str) -> Option<u16> {
    let (status, _) = http_get(addr, host, path, Duration::from_millis(500))?;
    Some(status)
}

/// `GET path` on a fresh connection: status and body.
fn http_get(addr: &SocketAddr, host: &str, path: &str, limit: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(addr, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `GET path` from inside a namespace (a thread that enters it).
pub fn http_get_in(netns: &Path, addr: &str, path: &str) -> Result<(u16, String)> {
    let addr: SocketAddr = addr.parse()?;
    let path_owned = path.to_string();
    let ns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<(u16, String)> {
        let ns = podwire_kernel::Netns::open(&ns)?;
        let _guard = ns.enter()?;
        http_get(&addr, "localhost", &path_owned, Duration::from_secs(5))
            .with_context(|| format!("no HTTP answer from {addr}{path_owned}"))
    })
    .join()
    .map_err(|_| anyhow!("HTTP thread panicked"))?
}

/// A Prometheus sample's value in a /metrics text: the unlabelled one, or
/// the first labelled one that is not IPv6's (kube-proxy in dual-stack mode
/// labels its sync metrics by `ip_family`; the IPv4 family is the one the
/// bench's Services use).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = if let Some(v) = rest.strip_prefix(' ') {
            v
        } else {
            let (labels, v) = rest.strip_prefix('{')?.split_once("} ")?;
            if labels.contains("ip_family=\"IPv6\"") {
                return None;
            }
            v
        };
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn metric_reads_plain_and_ipv4_samples() {
        let text =
            "# HELP x\nfoo_total 3\nbar{ip_family=\"IPv6\"} 2\nbar{ip_family=\"IPv4\"} 1.5e+09\n";
        assert_eq!(metric(text, "foo_total"), Some(3.0));
        assert_eq!(metric(text, "bar"), Some(1.5e9));
        assert_eq!(metric(text, "ba"), None);
    }
}

// ------------------------------------------------------------ processes

/// (VmRSS, VmHWM) of a process, in MB.
pub fn rss_mb(pid: u32) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kb = |key: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Ok((
        kb("VmRSS:").context("no VmRSS")? / 1024.0,
        kb("VmHWM:").context("no VmHWM")? / 1024.0,
    ))
}

/// Runs `argv` inside `ns` (ip netns exec) and fails with its stderr.
pub fn exec(ns: &Netns, argv: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", argv.join(" ")))?;
    ensure!(
        out.status.success(),
        "`{}` in {} failed: {}",
        argv.join(" "),
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The program each component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Agent,
    KubeProxy,
    KubeProxyNoMinSync,
    Dns,
    Ingress,
}

impl Component {
    pub fn log_name(self) -> &'static str {
        match self {
            Component::Agent => "podwire-agent",
            Component::KubeProxy => "kube-proxy",
            Component::KubeProxyNoMinSync => "kube-proxy-minsync0",
            Component::Dns => "podwire-dns",
            Component::Ingress => "podwire-ingress",
        }
    }
}

/// Settings of the environment.
pub struct Options {
    /// Also run kube-proxy with --iptables-min-sync-period=0 on node C.
    pub min_sync_zero: bool,
}

/// The running environment; fields drop in order: processes, the API
/// client, namespaces, the control plane, files.
pub struct Env {
    agent: Option<Process>,
    kube_proxy: Option<Process>,
    kube_proxy0: Option<Process>,
    dns: Option<Process>,
    ingress: Option<Process>,
    _serve: Process,
    pub api: ApiClient,
    _client: Netns,
    pub node_a: Netns,
    pub node_b: Netns,
    pub node_c: Option<Netns>,
    _backend: Netns,
    pub svc: Netns,
    pub cp: ControlPlane,
    pub dir: TempDir,
    podwire: PathBuf,
    kube_proxy_bin: PathBuf,
    starts: usize,
}

impl Env {
    pub fn start(opts: &Options) -> Result<Env> {
        let podwire = std::env::current_exe()?
            .parent()
            .map(|d| d.join("podwire"))
            .context("no directory for the bench binary")?;
        ensure!(
            podwire.exists(),
            "{} missing: build it with cargo build --release -p podwire",
            podwire.display()
        );
        let bin = k8s_bin_dir();
        let kube_proxy_bin = bin.join("kube-proxy");
        ensure!(
            kube_proxy_bin.is_file(),
            "{} missing: run tools/k8s/build",
            kube_proxy_bin.display()
        );
        eprintln!("starting etcd + kube-apiserver ({})", bin.display());
        let cp = ControlPlane::builder()
            .ready_timeout(Duration::from_secs(120))
            .start();
        eprintln!(
            "  control plane up in {:.1} s, API at {}",
            cp.startup_time().as_secs_f64(),
            cp.api_url()
        );
        let dir = TempDir::new("kube-bench");
        let attach = |tag: &str, host: u8| -> Netns {
            let ns = Netns::new(tag);
            cp.attach(&ns, "eth0", &format!("{}/24", cp.underlay_ip(host)));
            ns
        };
        let client = attach("kcli", CLIENT_HOST);
        let node_a = attach("knodea", NODE_A_HOST);
        let node_b = attach("knodeb", NODE_B_HOST);
        let node_c = opts.min_sync_zero.then(|| attach("knodec", NODE_C_HOST));
        let backend = attach("kback", BACKEND_HOSTS[0]);
        let svc = attach("ksvc", SVC_HOST);
        for host in &BACKEND_HOSTS[1..] {
            exec(
                &backend,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", cp.underlay_ip(*host)),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        // A node's own connection to a ClusterIP needs a route before the
        // nat output hook can rewrite it. Real nodes have a default route;
        // here the service range goes to a veth whose peer is down, so
        // what no rule rewrites is dropped inside the node.
        for node in [&node_a, &node_b].into_iter().chain(node_c.as_ref()) {
            exec(
                node,
                &[
                    "ip",
                    "link",
                    "add",
                    "svcnull",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "svcnull-p",
                ],
            )?;
            exec(node, &["ip", "link", "set", "svcnull", "arp", "off", "up"])?;
            exec(
                node,
                &["ip", "route", "add", SERVICE_CIDR, "dev", "svcnull"],
            )?;
        }
        let api = ApiClient::connect(cp.admin_kubeconfig(), client.path())?;

        let serve = {
            let log = std::fs::File::create(dir.join("backend.log"))?;
            let mut cmd = backend.command(&podwire);
            cmd.args(["serve", "--listen", &format!("0.0.0.0:{BACKEND_PORT}")])
                .env("PODWIRE_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            Process::spawn("podwire serve", cmd)
        };
        let mut env = Env {
            agent: None,
            kube_proxy: None,
            kube_proxy0: None,
            dns: None,
            ingress: None,
            _serve: serve,
            api,
            _client: client,
            node_a,
            node_b,
            node_c,
            _backend: backend,
            svc,
            cp,
            dir,
            podwire,
            kube_proxy_bin,
            starts: 0,
        };
        env.create_base_objects()?;
        for c in [
            Component::Agent,
            Component::KubeProxy,
            Component::Dns,
            Component::Ingress,
        ] {
            env.spawn(c)?;
        }
        if env.node_c.is_some() {
            env.spawn(Component::KubeProxyNoMinSync)?;
        }
        Ok(env)
    }

    fn create_base_objects(&self) -> Result<()> {
        let c = self.api.client();
        let namespaces: Vec<Namespace> = [NS, PODS_NS]
            .iter()
            .map(|n| {
                from_json(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
            })
            .collect::<Result<_>>()?;
        self.api
            .create_many(Api::all(c.clone()), namespaces, "namespaces")?;
        // No controller manager runs: the ServiceAccount admission plugin
        // wants the account it assigns to pods to exist.
        let sa: ServiceAccount = from_json(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": PODS_NS}}),
        )?;
        self.api.create_many(
            Api::namespaced(c.clone(), PODS_NS),
            vec![sa],
            "service account",
        )?;
        let class: IngressClass = from_json(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "podwire"}, "spec": {"controller": "podwire.io/ingress"}}))?;
        self.api
            .create_many(Api::all(c.clone()), vec![class], "ingress class")?;
        let mut nodes = vec![(NODE_A, NODE_A_HOST, 1), (NODE_B, NODE_B_HOST, 2)];
        if self.node_c.is_some() {
            nodes.push((NODE_C, NODE_C_HOST, 3));
        }
        for (name, host, slice) in nodes {
            let ip = self.cp.underlay_ip(host).to_string();
            let cidr = format!("10.244.{}.0/24", 100 + slice);
            let node: Node = from_json(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}))?;
            self.api
                .create_many(Api::all(c.clone()), vec![node], "node")?;
            let api: Api<Node> = Api::all(c.clone());
            let status = json!({"status": {"addresses": [
                {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}});
            let n = name.to_string();
            self.api.run(async move {
                api.patch_status(&n, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .context("patch nodes/status")?;
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The backend addresses an EndpointSlice may list (1-3 of them).
    pub fn backends(&self, count: usize) -> Vec<Ipv4Addr> {
        BACKEND_HOSTS[..count.clamp(1, 3)]
            .iter()
            .map(|h| self.cp.underlay_ip(*h))
            .collect()
    }

    pub fn log_path(&self, c: Component) -> PathBuf {
        self.dir.join(format!("{}.log", c.log_name()))
    }

    pub fn agent_status_path(&self) -> PathBuf {
        self.dir.join("agent.status")
    }

    /// Starts a component (logs append to its file).
    pub fn spawn(&mut self, c: Component) -> Result<()> {
        self.starts += 1;
        let kubeconfig = self.cp.admin_kubeconfig().display().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(c))?;
        let (ns, program, args, env): (&Netns, &Path, Vec<String>, Option<&str>) = match c {
            Component::Agent => (
                &self.node_a,
                &self.podwire,
                vec![
                    "agent".into(),
                    "--source".into(),
                    "kube".into(),
                    "--kubeconfig".into(),
                    kubeconfig,
                    "--node".into(),
                    NODE_A.into(),
                    "--cluster-cidr".into(),
                    CLUSTER_CIDR.into(),
                    "--routing".into(),
                    "host-gw".into(),
                    "--iface".into(),
                    "eth0".into(),
                    "--healthz-bind".into(),
                    "127.0.0.1:10256".into(),
                    "--metrics-bind".into(),
                    PROXY_METRICS.into(),
                    "--status-file".into(),
                    self.agent_status_path().display().to_string(),
                ],
                Some("info"),
            ),
            Component::KubeProxy | Component::KubeProxyNoMinSync => {
                let (ns, node) = if c == Component::KubeProxy {
                    (&self.node_b, NODE_B)
                } else {
                    (self.node_c.as_ref().context("node C not set up")?, NODE_C)
                };
                let mut args: Vec<String> = [
                    "--kubeconfig",
                    &kubeconfig,
                    "--proxy-mode",
                    "nftables",
                    "--hostname-override",
                    node,
                    "--cluster-cidr",
                    CLUSTER_CIDR,
                    "--conntrack-max-per-core=0",
                    "--conntrack-tcp-timeout-established=0",
                    "--conntrack-tcp-timeout-close-wait=0",
                    "--oom-score-adj=0",
                    "--metrics-bind-address=127.0.0.1:10249",
                    "--healthz-bind-address=127.0.0.1:10256",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if c == Component::KubeProxyNoMinSync {
                    // In nftables mode this flag sets the one minSyncPeriod.
                    args.push("--iptables-min-sync-period=0".into());
                }
                (ns, &self.kube_proxy_bin, args, None)
            }
            Component::Dns => (
                &self.svc,
                &self.podwire,
                [
                    "dns",
                    "--source",
                    "kube",
                    "--kubeconfig",
                    &kubeconfig,
                    "--listen",
                    DNS_ADDR,
                    "--health-listen",
                    "off",
                    "--ready-listen",
                    "127.0.0.1:8181",
                    "--metrics-listen",
                    DNS_METRICS,
                    "--resolv-conf",
                    "/dev/null",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                Some("info"),
            ),
            Component::Ingress => (
                &self.svc,
                &self.podwire,
                [
                    "ingress",
                    "--source",
                    "kube",
                    "--kubeconfig",
                    &kubeconfig,
                    "--listen",
                    INGRESS_ADDR,
                    "--metrics-listen",
                    INGRESS_METRICS,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                // Its access log writes a line per request: the probe's
                // thousand 404s a second would be most of its work.
                Some("warn"),
            ),
        };
        let mut cmd = ns.command(program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(level) = env {
            cmd.env("PODWIRE_LOG", level);
        }
        let p = Process::spawn(c.log_name(), cmd);
        *self.slot(c) = Some(p);
        Ok(())
    }

    fn slot(&mut self, c: Component) -> &mut Option<Process> {
        match c {
            Component::Agent => &mut self.agent,
            Component::KubeProxy => &mut self.kube_proxy,
            Component::KubeProxyNoMinSync => &mut self.kube_proxy0,
            Component::Dns => &mut self.dns,
            Component::Ingress => &mut self.ingress,
        }
    }

    /// Stops a component (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self, c: Component) {
        if let Some(mut p) = self.slot(c).take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// The component's pid, failing when it has exited.
    pub fn pid(&mut self, c: Component) -> Result<u32> {
        let name = c.log_name();
        let log = self.log_path(c);
        let p = self
            .slot(c)
            .as_mut()
            .with_context(|| format!("{name} is not running"))?;
        if !p.is_running() {
            bail!(
                "{name} exited ({:?}); its log ends:\n{}",
                p.exit_status(),
                tail(&log, 20)
            );
        }
        Ok(p.pid())
    }

    /// Fails when any component has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut all = vec![
            Component::Agent,
            Component::KubeProxy,
            Component::Dns,
            Component::Ingress,
        ];
        if self.node_c.is_some() {
            all.push(Component::KubeProxyNoMinSync);
        }
        for c in all {
            if self.slot(c).is_some() {
                self.pid(c)?;
            }
        }
        Ok(())
    }

    /// The namespace a component runs in.
    pub fn netns_of(&self, c: Component) -> &Path {
        match c {
            Component::Agent => self.node_a.path(),
            Component::KubeProxy => self.node_b.path(),
            Component::KubeProxyNoMinSync => self
                .node_c
                .as_ref()
                .map(Netns::path)
                .unwrap_or(self.node_b.path()),
            Component::Dns | Component::Ingress => self.svc.path(),
        }
    }

    /// A component's /metrics text.
    pub fn metrics(&self, c: Component) -> Result<String> {
        let addr = match c {
            Component::Agent | Component::KubeProxy | Component::KubeProxyNoMinSync => {
                PROXY_METRICS
            }
            Component::Dns => DNS_METRICS,
            Component::Ingress => INGRESS_METRICS,
        };
        let (status, body) = http_get_in(self.netns_of(c), addr, "/metrics")?;
        ensure!(status == 200, "{} /metrics answered {status}", c.log_name());
        Ok(body)
    }

    /// kube-proxy's last successful sync (unix seconds; 0 before the first).
    pub fn kube_proxy_last_sync(&self, c: Component) -> f64 {
        self.metrics(c)
            .ok()
            .and_then(|m| metric(&m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"))
            .unwrap_or(0.0)
    }

    /// (sum of seconds, count) of kube-proxy's sync durations so far.
    pub fn kube_proxy_sync_totals(&self, c: Component) -> Option<(f64, f64)> {
        let m = self.metrics(c).ok()?;
        Some((
            metric(&m, "kubeproxy_sync_proxy_rules_duration_seconds_sum")?,
            metric(&m, "kubeproxy_sync_proxy_rules_duration_seconds_count")?,
        ))
    }

    /// The tails of every component's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for c in [
            Component::Agent,
            Component::KubeProxy,
            Component::KubeProxyNoMinSync,
            Component::Dns,
            Component::Ingress,
        ] {
            let path = self.log_path(c);
            if path.exists() {
                out.push_str(&format!(
                    "--- {} (last {lines} lines) ---\n{}\n",
                    c.log_name(),
                    tail(&path, lines)
                ));
            }
        }
        out
    }
}

//! What both proxies serve: the files store podwire reads (Services,
//! EndpointSlices, the Ingress and its TLS Secret), podwire's plan checked
//! against it, and the running proxies with their readiness and route checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podwire_model::k8s_openapi::ByteString;
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podwire_model::{Object, Secret, Store};
use serde_json::json;

use super::client::{Certs, Conn};
use super::nginx::start_nginx_proxy;
use super::proc::{Proc, free_ports, write};
use super::{
    BENCH_HOST, BENCH_PATH, HOSTS, NAMESPACE, PATHS, Ports, SECRET, expected_body, service_name,
};
use crate::ns::check_interrupted;

/// The files store podwire reads: 9 Services with one ready endpoint each
/// (the route's backend port), one Ingress of class podwire with 3 hosts x
/// 3 Prefix paths, and the TLS Secret its spec.tls names.
pub fn write_store(root: &Path, ports: &Ports, certs: &Certs) -> Result<u64> {
    let store = Store::open(root);
    let put = |v: serde_json::Value| -> Result<()> {
        store.put(&Object::from_json(&v)?)?;
        Ok(())
    };
    put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))?;
    let mut rules = Vec::new();
    for (h, host) in HOSTS.iter().enumerate() {
        let mut paths = Vec::new();
        for (p, (_, path, _)) in PATHS.iter().enumerate() {
            let name = service_name(h, p);
            let ip = format!("10.96.0.{}", 10 + 3 * h + p);
            put(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": name},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}))?;
            put(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-abcde"), "namespace": NAMESPACE,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["127.0.0.1"],
                               "conditions": {"ready": true, "serving": true, "terminating": false}}],
                "ports": [{"name": "http", "port": ports[h][p], "protocol": "TCP"}]}),
            )?;
            paths.push(json!({"path": path, "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}}}));
        }
        rules.push(json!({"host": host, "http": {"paths": paths}}));
    }
    // Plain HTTP is benchmarked too, so no HTTP-to-HTTPS redirect (podwire's
    // opt-out annotation, and ingress-nginx's, which podwire also reads).
    put(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "bench", "namespace": NAMESPACE,
                     "annotations": {"podwire.io/ssl-redirect": "false",
                                     "nginx.ingress.kubernetes.io/ssl-redirect": "false"}},
        "spec": {"ingressClassName": "podwire",
                 "tls": [{"hosts": HOSTS, "secretName": SECRET}],
                 "rules": rules}}),
    )?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(certs.leaf_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(certs.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Default::default()
    };
    store.put(&Object::Secret(secret))?;
    Ok(store.bump()?)
}

/// What this podwire's `ingress` subcommand accepts (stage 2 adds flags).
pub struct PodwireFlags {
    pub tls: bool,
    pub workers: bool,
    pub metrics: bool,
    pub idle_timeout: bool,
}

pub fn podwire_flags(podwire: &Path) -> Result<PodwireFlags> {
    let out = Command::new(podwire)
        .args(["ingress", "--help"])
        .output()
        .with_context(|| format!("run {} ingress --help", podwire.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(PodwireFlags {
        tls: help.contains("--listen-tls"),
        workers: help.contains("--workers"),
        metrics: help.contains("--metrics-listen"),
        idle_timeout: help.contains("--idle-timeout"),
    })
}

/// `podwire ingress plan` must route every host and path to a ready endpoint.
pub fn check_plan(podwire: &Path, store: &Path, ports: &Ports) -> Result<String> {
    let out = Command::new(podwire)
        .args(["ingress", "plan", "--source"])
        .arg(format!("files:{}", store.display()))
        .env("PODWIRE_LOG", "warn")
        .output()
        .context("run podwire ingress plan")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "podwire ingress plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (h, host) in HOSTS.iter().enumerate() {
        for (p, (_, path, _)) in PATHS.iter().enumerate() {
            let endpoint = format!("127.0.0.1:{}", ports[h][p]);
            ensure!(
                text.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(host)
                        && f.get(1) == Some(path)
                        && f.last() == Some(&endpoint.as_str())
                }),
                "podwire ingress plan lacks {host}{path} -> {endpoint}:\n{text}"
            );
        }
    }
    Ok(text)
}

pub struct Proxy {
    pub name: &'static str,
    pub proc: Proc,
    pub http_port: u16,
    pub tls_port: Option<u16>,
}

pub struct World {
    pub dir: PathBuf,
    pub store: PathBuf,
    pub ports: Ports,
    pub certs: Certs,
    pub client: Arc<rustls::ClientConfig>,
    pub flags: PodwireFlags,
    pub proxy_cpu: String,
    /// The open-file limit the proxies inherit.
    pub nofile: u64,
    /// The podwire binary.
    pub podwire: PathBuf,
    /// Worker threads/processes of each proxy.
    pub workers: usize,
}

impl World {
    pub fn start_podwire(&self, tag: &str, tls: bool) -> Result<Proxy> {
        let ports = free_ports(2)?;
        let tls_port = (tls && self.flags.tls).then_some(ports[1]);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &self.proxy_cpu])
            .arg(&self.podwire)
            .args(["ingress", "--source"])
            .arg(format!("files:{}", self.store.display()))
            .args(["--listen", &format!("127.0.0.1:{}", ports[0])]);
        if let Some(port) = tls_port {
            cmd.args(["--listen-tls", &format!("127.0.0.1:{port}")]);
        }
        if self.flags.metrics {
            cmd.args(["--metrics-listen", "off"]);
        }
        if self.flags.workers {
            cmd.args(["--workers", &self.workers.to_string()]);
        }
        if self.flags.idle_timeout {
            // As nginx's keepalive_timeout here: idle connections stay open.
            cmd.args(["--idle-timeout", "600s"]);
        }
        // No access log: podwire logs each request at info.
        cmd.env("PODWIRE_LOG", "warn");
        let proc = Proc::spawn(
            "podwire ingress",
            cmd,
            &self.dir.join(format!("podwire-{tag}.log")),
        )?;
        self.ready(Proxy {
            name: "podwire",
            proc,
            http_port: ports[0],
            tls_port,
        })
    }

    pub fn start_nginx(&self, tag: &str, tls: bool) -> Result<Proxy> {
        let ports = free_ports(2)?;
        let tls_port = tls.then_some(ports[1]);
        let dir = self.dir.join(format!("nginx-{tag}"));
        std::fs::create_dir_all(&dir)?;
        write(&dir.join("tls.crt"), &self.certs.leaf_pem)?;
        write(&dir.join("tls.key"), &self.certs.key_pem)?;
        let proc = start_nginx_proxy(
            &dir,
            &self.ports,
            ports[0],
            tls_port,
            self.workers,
            self.nofile,
            &self.proxy_cpu,
        )?;
        self.ready(Proxy {
            name: "nginx",
            proc,
            http_port: ports[0],
            tls_port,
        })
    }

    /// Waits until the proxy answers the benchmarked route.
    pub fn ready(&self, mut proxy: Proxy) -> Result<Proxy> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = expected_body(&self.ports, BENCH_HOST, BENCH_PATH);
        loop {
            check_interrupted()?;
            proxy.proc.check_running()?;
            let answer = Conn::open(proxy.http_port, None)
                .and_then(|mut c| c.get(HOSTS[BENCH_HOST], PATHS[BENCH_PATH].2));
            match answer {
                Ok((200, body)) if body == want => return Ok(proxy),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok((status, body)) => bail!(
                    "{} answers {status} {body:?} instead of {want:?}",
                    proxy.name
                ),
                Err(err) => {
                    return Err(err.context(format!("{} did not answer in 30 s", proxy.name)));
                }
            }
        }
    }

    /// Every host and path through `proxy`, plain and TLS, reaches its own
    /// backend port; an unknown host gets 404. Returns the TLS parameters.
    pub fn check_routes(&self, proxy: &Proxy) -> Result<Option<String>> {
        let mut negotiated = None;
        let mut listeners = vec![(proxy.http_port, false)];
        listeners.extend(proxy.tls_port.map(|p| (p, true)));
        for (port, tls) in listeners {
            let scheme = if tls { "https" } else { "http" };
            for (h, host) in HOSTS.iter().enumerate() {
                for (p, (_, _, request)) in PATHS.iter().enumerate() {
                    let mut conn = Conn::open(port, tls.then_some((&self.client, *host)))?;
                    let (status, body) = conn
                        .get(host, request)
                        .with_context(|| format!("{} {scheme}://{host}{request}", proxy.name))?;
                    let want = expected_body(&self.ports, h, p);
                    ensure!(
                        status == 200 && body == want,
                        "{} routes {scheme}://{host}{request} wrong: {status} {body:?}, want 200 {want:?}",
                        proxy.name
                    );
                    if tls && negotiated.is_none() {
                        negotiated = conn.negotiated();
                    }
                }
            }
            if !tls {
                let mut conn = Conn::open(port, None)?;
                let (status, _) = conn.get("unknown.bench.test", "/")?;
                ensure!(
                    status == 404,
                    "{} answers {status} for an unknown host, want 404",
                    proxy.name
                );
            }
        }
        Ok(negotiated)
    }
}

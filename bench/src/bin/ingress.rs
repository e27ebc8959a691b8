//! The ingress benchmark (`bench/ingress`): wrk requests/s and latency
//! percentiles through `podwire ingress` and through nginx (Debian's,
//! configured with the same host/path routes to the same backend) side by
//! side and interleaved in one run, plain HTTP and TLS, keep-alive (wrk
//! -c64, plus short -c1 runs for the latency a proxy adds without
//! queueing); each proxy's CPU with no traffic; then 10,000 idle keep-alive
//! connections held open against each proxy with its memory before and after.
//!
//! The backend is a second nginx answering `backend <port>` on one loopback
//! port per route, so every route of both proxies is checked before anything
//! is timed. Each proxy runs one worker pinned to one CPU; wrk and the
//! backend share the other (taskset). Everything runs on 127.0.0.1 with
//! ports picked free; every process it starts is stopped (its whole process
//! group) and every file removed when it ends, fails or is interrupted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podwire_bench::ns::{self, TempDir, check_interrupted};
use podwire_bench::stats::Summary;
use podwire_model::k8s_openapi::ByteString;
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podwire_model::{Object, Secret, Store};
use serde::Serialize;
use serde_json::json;

const USAGE: &str = "\
usage: ingress [--runs N] [--seconds S] [--connections N] [--c1-seconds S] [--idle N]
               [--workers N] [--skip-idle] [--skip-tls] [--json] [--podwire PATH]

Benchmarks podwire's ingress controller against nginx (same routes, same
backend) with wrk on loopback, HTTP and TLS, keep-alive; then holds N idle
keep-alive connections on each and reports the proxies' memory.
  --runs N          wrk runs per proxy and protocol, interleaved (default 5)
  --seconds S       length of each wrk run (default 10)
  --connections N   wrk connections (-c, default 64; one wrk thread)
  --c1-seconds S    length of the unloaded-latency runs with one connection
                    (wrk -c1), one per proxy and protocol each round (default 5; 0: none)
  --idle N          idle keep-alive connections held per proxy (default 10000)
  --workers N       worker threads/processes of each proxy (default 1)
  --skip-idle       leave out the idle-connection memory test
  --skip-tls        leave out TLS
  --json            print the results as JSON
  --podwire PATH    the podwire binary (default: next to this binary)";

/// Routed hosts and paths: 3 hosts x 3 paths, each route its own Service
/// and backend port. (name, rule path, request path).
const HOSTS: [&str; 3] = ["app1.bench.test", "app2.bench.test", "app3.bench.test"];
const PATHS: [(&str, &str, &str); 3] = [
    ("root", "/", "/"),
    ("static", "/static", "/static/app.css"),
    ("api", "/api/v1", "/api/v1/items"),
];
/// The benchmarked route: the second host's third path (not the first rule).
const BENCH_HOST: usize = 1;
const BENCH_PATH: usize = 2;
const NAMESPACE: &str = "bench";
const SECRET: &str = "bench-tls";

struct Args {
    runs: usize,
    seconds: u64,
    connections: usize,
    c1_seconds: u64,
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

// ---------------------------------------------------------------- processes

/// A process started in its own process group (so a Ctrl-C reaches this
/// benchmark, not the servers mid-run), killed if this process dies
/// (PDEATHSIG). Drop sends SIGTERM to the group, waits up to 3 s for every
/// member to exit, then SIGKILLs what is left. The leader is reaped only
/// after that, so its pid (the group's id) cannot be reused meanwhile.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The leader and its direct children (nginx's master and workers).
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(
            all_procs()
                .into_iter()
                .filter(|p| p.ppid == self.pid())
                .map(|p| p.pid),
        );
        pids
    }

    /// Fails with the end of the log when the process has exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends:\n{}",
                self.name,
                log_tail(&self.log, 20)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.pid() as i32);
        let members = || {
            all_procs()
                .into_iter()
                .filter(|p| p.pgrp == self.pid() && p.state != 'Z')
                .count()
        };
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while members() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if members() > 0 {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One line of /proc/PID/stat.
struct ProcStat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    state: char,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

fn all_procs() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_stat)
        .collect()
}

fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| proc_stat(p))
        .map(|s| s.ticks)
        .sum()
}

/// Resident and proportional set sizes summed over `pids`, in kB.
fn memory_kb(pids: &[u32]) -> (u64, u64) {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let mut rss = 0;
    let mut pss = 0;
    for pid in pids {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            rss += field(&t, "VmRSS:");
        }
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            pss += field(&t, "Pss:");
        }
    }
    (rss, pss)
}

/// Busy and total jiffies of one CPU ("0", "1") from /proc/stat.
fn cpu_jiffies(cpu: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let label = format!("cpu{cpu}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0,
        _ => 0.0,
    }
}

/// TCP segments sent in this network namespace (loopback included), from
/// /proc/net/snmp.
fn tcp_out_segs() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_whitespace().position(|n| n == "OutSegs")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Context switches (voluntary + involuntary) of every thread of `pids`.
fn context_switches(pids: &[u32]) -> u64 {
    let mut sum = 0;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            sum += text
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    sum
}

/// Above this, other work on the machine is reported as disturbing the run.
const BACKGROUND_LIMIT_PCT: f64 = 10.0;

/// The busiest of `cpus` over one second in which the benchmark runs no load.
fn background_busy(cpus: &[&str]) -> Result<f64> {
    check_interrupted()?;
    let before: Vec<_> = cpus.iter().map(|c| cpu_jiffies(c)).collect();
    std::thread::sleep(Duration::from_secs(1));
    Ok(cpus
        .iter()
        .zip(before)
        .map(|(c, b)| busy_pct(b, cpu_jiffies(c)))
        .fold(0.0, f64::max))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Raises this process's open-file limit to its hard limit (children, the
/// proxies among them, inherit it) and returns it; fails when that is below
/// `need`.
fn raise_nofile(need: u64) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(NOFILE)");
    }
    ensure!(
        lim.rlim_max >= need,
        "{need} open files needed, the hard limit is {} (raise it, or pass a smaller --idle)",
        lim.rlim_max
    );
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: lim is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setrlimit(NOFILE, {})", lim.rlim_max));
        }
    }
    Ok(lim.rlim_cur)
}

/// `n` distinct free TCP ports on 127.0.0.1.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("bind a free port on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------- certificates

struct Certs {
    ca_der: Vec<u8>,
    leaf_pem: String,
    key_pem: String,
}

/// A CA and a leaf for the three hosts (ECDSA P-256), as a cluster's
/// cert-manager would issue them.
fn make_certs() -> Result<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "podwire bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOSTS[0]);
    let leaf = leaf_params.signed_by(&leaf_key, &*ca)?;
    Ok(Certs {
        ca_der: ca.der().to_vec(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn tls_client(certs: &Certs) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(certs.ca_der.clone()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------- clients

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(port: u16, tls: Option<(&Arc<rustls::ClientConfig>, &str)>) -> Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(match tls {
            None => Conn::Plain(tcp),
            Some((config, host)) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
                let conn = rustls::ClientConnection::new(config.clone(), name)?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        })
    }

    /// TLS version and cipher suite, once the handshake is done.
    fn negotiated(&self) -> Option<String> {
        let Conn::Tls(s) = self else { return None };
        let version = s.conn.protocol_version()?;
        let suite = s.conn.negotiated_cipher_suite()?;
        let group = s
            .conn
            .negotiated_key_exchange_group()
            .map(|g| format!(", {:?}", g.name()))
            .unwrap_or_default();
        Some(format!("{version:?}, {:?}{group}", suite.suite()))
    }

    /// One GET; returns the status and the body.
    fn get(&mut self, host: &str, path: &str) -> Result<(u16, String)> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podwire-bench\r\n\r\n");
        match self {
            Conn::Plain(s) => {
                s.write_all(request.as_bytes())?;
                read_response(s)
            }
            Conn::Tls(s) => {
                s.write_all(request.as_bytes())?;
                s.flush()?;
                read_response(s.as_mut())
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
fn read_response(s: &mut impl Read) -> Result<(u16, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 64 * 1024, "response head over 64 KiB");
        let n = s.read(&mut chunk).context("read response")?;
        ensure!(n > 0, "connection closed before a full response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("no Content-Length in {head:?}"))?;
    let want = head_end + 4 + length;
    while buf.len() < want {
        let n = s.read(&mut chunk).context("read response body")?;
        ensure!(n > 0, "connection closed in the response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    ensure!(buf.len() == want, "bytes after the response");
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end + 4..]).into_owned(),
    ))
}

// ---------------------------------------------------------------- the world

/// Backend port per (host, path).
type Ports = [[u16; 3]; 3];

fn service_name(h: usize, p: usize) -> String {
    format!("app{}-{}", h + 1, PATHS[p].0)
}

fn expected_body(ports: &Ports, h: usize, p: usize) -> String {
    format!("backend {}\n", ports[h][p])
}

const NGINX_COMMON: &str = "\
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
";

fn nginx_main(dir: &Path, workers: usize, connections: u64) -> String {
    format!(
        "worker_processes {workers};\npid {d}/nginx.pid;\n\
         error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n",
        d = dir.display()
    )
}

/// The backend: one nginx worker answering `backend <port>` on every route's port.
fn start_backend(dir: &Path, ports: &Ports, cpu: &str) -> Result<Proc> {
    let mut conf = nginx_main(dir, 1, 4096);
    conf.push_str("http {\n");
    conf.push_str(&NGINX_COMMON.replace("{dir}", &dir.display().to_string()));
    conf.push_str("    server {\n");
    for port in ports.iter().flatten() {
        writeln!(conf, "        listen 127.0.0.1:{port};")?;
    }
    conf.push_str("        location / { return 200 \"backend $server_port\\n\"; }\n    }\n}\n");
    start_nginx("backend nginx", dir, &conf, cpu)
}

/// nginx as the ingress: the same hosts and paths as the Ingress, each to
/// an upstream with a keep-alive pool, the same forwarded headers podwire
/// sets (X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP, Host unchanged), and
/// a default server answering 404.
fn start_nginx_proxy(
    dir: &Path,
    ports: &Ports,
    http_port: u16,
    tls_port: Option<u16>,
    workers: usize,
    nofile: u64,
    cpu: &str,
) -> Result<Proc> {
    let d = dir.display().to_string();
    // As many connections as the open-file limit (inherited) allows.
    let mut conf = nginx_main(dir, workers, nofile);
    conf.push_str("http {\n");
    conf.push_str(&NGINX_COMMON.replace("{dir}", &d));
    conf.push_str(
        "    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_set_header X-Forwarded-Port $server_port;
",
    );
    // nginx 1.22 leaves TLS 1.3 out of its default ssl_protocols; podwire
    // (rustls) speaks 1.3, so both get 1.2 and 1.3.
    if tls_port.is_some() {
        writeln!(
            conf,
            "    ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n    ssl_protocols TLSv1.2 TLSv1.3;"
        )?;
    }
    for (h, row) in ports.iter().enumerate() {
        for (p, port) in row.iter().enumerate() {
            writeln!(
                conf,
                "    upstream u{h}{p} {{ server 127.0.0.1:{port}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 600s; }}"
            )?;
        }
    }
    let listen = |conf: &mut String, default: &str| -> Result<()> {
        writeln!(conf, "        listen 127.0.0.1:{http_port}{default};")?;
        if let Some(port) = tls_port {
            writeln!(conf, "        listen 127.0.0.1:{port} ssl{default};")?;
        }
        Ok(())
    };
    for (h, host) in HOSTS.iter().enumerate() {
        conf.push_str("    server {\n");
        listen(&mut conf, "")?;
        writeln!(conf, "        server_name {host};")?;
        for (p, (_, path, _)) in PATHS.iter().enumerate() {
            // Ingress Prefix semantics: the path itself and everything under it.
            if *path == "/" {
                writeln!(conf, "        location / {{ proxy_pass http://u{h}{p}; }}")?;
            } else {
                writeln!(
                    conf,
                    "        location = {path} {{ proxy_pass http://u{h}{p}; }}\n        location {path}/ {{ proxy_pass http://u{h}{p}; }}"
                )?;
            }
        }
        conf.push_str("    }\n");
    }
    conf.push_str("    server {\n");
    listen(&mut conf, " default_server")?;
    conf.push_str("        server_name _;\n        return 404;\n    }\n}\n");
    start_nginx("nginx", dir, &conf, cpu)
}

fn start_nginx(name: &str, dir: &Path, conf: &str, cpu: &str) -> Result<Proc> {
    let path = dir.join("nginx.conf");
    write(&path, conf)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, "nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"]);
    Proc::spawn(name, cmd, &dir.join("nginx.log"))
}

/// The files store podwire reads: 9 Services with one ready endpoint each
/// (the route's backend port), one Ingress of class podwire with 3 hosts x
/// 3 Prefix paths, and the TLS Secret its spec.tls names.
fn write_store(root: &Path, ports: &Ports, certs: &Certs) -> Result<u64> {
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
struct PodwireFlags {
    tls: bool,
    workers: bool,
    metrics: bool,
    idle_timeout: bool,
}

fn podwire_flags(podwire: &Path) -> Result<PodwireFlags> {
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
fn check_plan(podwire: &Path, store: &Path, ports: &Ports) -> Result<String> {
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

struct Proxy {
    name: &'static str,
    proc: Proc,
    http_port: u16,
    tls_port: Option<u16>,
}

struct World {
    dir: PathBuf,
    store: PathBuf,
    ports: Ports,
    certs: Certs,
    client: Arc<rustls::ClientConfig>,
    flags: PodwireFlags,
    proxy_cpu: String,
    /// The open-file limit the proxies inherit.
    nofile: u64,
}

impl World {
    fn start_podwire(&self, args: &Args, tag: &str, tls: bool) -> Result<Proxy> {
        let ports = free_ports(2)?;
        let tls_port = (tls && self.flags.tls).then_some(ports[1]);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &self.proxy_cpu])
            .arg(&args.podwire)
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
            cmd.args(["--workers", &args.workers.to_string()]);
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

    fn start_nginx(&self, args: &Args, tag: &str, tls: bool) -> Result<Proxy> {
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
            args.workers,
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
    fn ready(&self, mut proxy: Proxy) -> Result<Proxy> {
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
    fn check_routes(&self, proxy: &Proxy) -> Result<Option<String>> {
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

// ---------------------------------------------------------------- wrk

/// Connects to 127.0.0.1 whatever host the URL names, so the URL's host is
/// both the Host header and the TLS server name (SNI).
const WRK_SCRIPT: &str = "\
-- bench/ingress: every connection goes to 127.0.0.1; the URL's host stays
-- the Host header and the TLS server name.
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup(\"127.0.0.1\", service)
end
";

#[derive(Debug, Clone, Serialize)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p75_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    requests: u64,
    socket_errors: u64,
    /// Proxy CPU time over wall time, percent of one CPU.
    proxy_cpu_pct: f64,
    /// How busy the proxy's CPU and the CPU of wrk + backend were (all
    /// processes, interrupts and softirqs included), percent.
    proxy_cpu_busy_pct: f64,
    load_cpu_busy_pct: f64,
    /// TCP segments sent (by everyone on loopback) per completed request.
    segments_per_request: f64,
    /// Context switches of the proxy's threads per completed request.
    proxy_switches_per_request: f64,
}

fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    })
}

fn parse_wrk(text: &str) -> Result<Wrk> {
    let pct = |label: &str| -> Result<f64> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| parse_duration_ms(v.trim()))
            .with_context(|| format!("no {label} latency in wrk output:\n{text}"))
    };
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk saw error responses ({}):\n{text}", line.trim());
    }
    Ok(Wrk {
        rps,
        p50_ms: pct("50%")?,
        p75_ms: pct("75%")?,
        p90_ms: pct("90%")?,
        p99_ms: pct("99%")?,
        requests,
        socket_errors,
        proxy_cpu_pct: 0.0,
        proxy_cpu_busy_pct: 0.0,
        load_cpu_busy_pct: 0.0,
        segments_per_request: 0.0,
        proxy_switches_per_request: 0.0,
    })
}

struct Load<'a> {
    script: &'a Path,
    cpu: &'a str,
    proxy_cpu: &'a str,
    connections: usize,
}

/// One wrk run against `port`; `pids` are the proxy's processes, whose CPU
/// time is measured over the run.
fn wrk(load: &Load, tls: bool, port: u16, seconds: u64, pids: &[u32]) -> Result<Wrk> {
    check_interrupted()?;
    let url = format!(
        "{}://{}:{port}{}",
        if tls { "https" } else { "http" },
        HOSTS[BENCH_HOST],
        PATHS[BENCH_PATH].2
    );
    let ticks = cpu_ticks(pids);
    let (proxy_before, load_before) = (cpu_jiffies(load.proxy_cpu), cpu_jiffies(load.cpu));
    let (segs, switches) = (tcp_out_segs(), context_switches(pids));
    let started = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", load.cpu, "wrk", "-t1"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(load.script)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let wall = started.elapsed().as_secs_f64();
    let used = cpu_ticks(pids).saturating_sub(ticks) as f64 / clock_ticks_per_second();
    let proxy_busy = busy_pct(proxy_before, cpu_jiffies(load.proxy_cpu));
    let load_busy = busy_pct(load_before, cpu_jiffies(load.cpu));
    let segs = tcp_out_segs().zip(segs).map(|(a, b)| a.saturating_sub(b));
    let switches = context_switches(pids).saturating_sub(switches);
    check_interrupted()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk {url} failed ({}): {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut result = parse_wrk(&text).with_context(|| format!("wrk {url}"))?;
    result.proxy_cpu_pct = used / wall * 100.0;
    result.proxy_cpu_busy_pct = proxy_busy;
    result.load_cpu_busy_pct = load_busy;
    let requests = result.requests.max(1) as f64;
    result.segments_per_request = segs.unwrap_or(0) as f64 / requests;
    result.proxy_switches_per_request = switches as f64 / requests;
    Ok(result)
}

// ---------------------------------------------------------------- idle

#[derive(Debug, Clone, Serialize)]
struct Idle {
    proxy: String,
    tls: bool,
    connections: usize,
    /// Connections that still answered a second request after the measurement.
    held: usize,
    open_seconds: f64,
    rss_before_kb: u64,
    rss_after_kb: u64,
    pss_before_kb: u64,
    pss_after_kb: u64,
}

fn hold_idle(world: &World, proxy: &mut Proxy, tls: bool, n: usize) -> Result<Idle> {
    let port = if tls {
        proxy.tls_port.context("no TLS listener")?
    } else {
        proxy.http_port
    };
    let host = HOSTS[BENCH_HOST];
    let path = PATHS[BENCH_PATH].2;
    let want = expected_body(&world.ports, BENCH_HOST, BENCH_PATH);
    let tls_client = tls.then_some((&world.client, host));
    // One request first, so both proxies have their backend connection and
    // first-use allocations before the baseline.
    let (status, _) = Conn::open(port, tls_client)?.get(host, path)?;
    ensure!(status == 200, "{} answered {status}", proxy.name);
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before_kb, pss_before_kb) = memory_kb(&proxy.proc.pids());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        if i % 100 == 0 {
            check_interrupted()?;
            proxy.proc.check_running()?;
        }
        let mut conn = Conn::open(port, tls_client)
            .with_context(|| format!("{} connection {}", proxy.name, i + 1))?;
        let (status, body) = conn
            .get(host, path)
            .with_context(|| format!("{} connection {}", proxy.name, i + 1))?;
        ensure!(
            status == 200 && body == want,
            "{} connection {}: {status} {body:?}",
            proxy.name,
            i + 1
        );
        conns.push(conn);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (rss_after_kb, pss_after_kb) = memory_kb(&proxy.proc.pids());
    // Were they really held? A second request on every connection.
    let mut held = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        if i % 100 == 0 {
            check_interrupted()?;
        }
        if matches!(conn.get(host, path), Ok((200, ref body)) if *body == want) {
            held += 1;
        }
    }
    drop(conns);
    Ok(Idle {
        proxy: proxy.name.to_string(),
        tls,
        connections: n,
        held,
        open_seconds,
        rss_before_kb,
        rss_after_kb,
        pss_before_kb,
        pss_after_kb,
    })
}

// ---------------------------------------------------------------- report

#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    podwire: Option<Summary>,
    nginx: Option<Summary>,
    /// podwire median / nginx median.
    ratio: Option<f64>,
    decimals: usize,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    name: String,
    ratio: f64,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    proxy: String,
    tls: bool,
    run: usize,
    /// wrk connections: the loaded runs' count, or 1 for the unloaded ones.
    connections: usize,
    wrk: Wrk,
}

#[derive(Debug, Serialize)]
struct Report {
    wrk: String,
    nginx: String,
    proxy_cpu: String,
    load_cpu: String,
    workers: usize,
    runs: usize,
    seconds: u64,
    connections: usize,
    url: String,
    tls: BTreeMap<String, String>,
    rows: Vec<Row>,
    ceiling: Option<Summary>,
    targets: Vec<Target>,
    idle: Vec<Idle>,
    all_runs: Vec<Run>,
    ceiling_runs: Vec<Wrk>,
    notes: Vec<String>,
}

fn row(name: &str, decimals: usize, pw: &[f64], ngx: &[f64]) -> Row {
    let podwire = Summary::of(pw);
    let nginx = Summary::of(ngx);
    let ratio = match (podwire, nginx) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    };
    Row {
        name: name.to_string(),
        podwire,
        nginx,
        ratio,
        decimals,
    }
}

fn version_line(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
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
    };
    let unloaded = Load {
        connections: 1,
        ..load
    };
    let mut tls_params = BTreeMap::new();
    let mut proxies = Vec::new();
    {
        let pw = world.start_podwire(args, "rps", tls)?;
        let ngx = world.start_nginx(args, "rps", tls && world.flags.tls)?;
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
        // proxy adds, not queueing.
        let passes = [
            (&load, args.seconds, args.connections),
            (&unloaded, args.c1_seconds, 1),
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
                            "run {}/{} {protocol:<4} {:<8} {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  proxy {:.0}% of a CPU; CPU {proxy_cpu} {:.0}% busy, CPU {load_cpu} {:.0}%{}",
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
                    world.start_podwire(args, &tag, tls)?
                } else {
                    world.start_nginx(args, &tag, tls)?
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
    let pick = |who: &str, tls: bool, f: &dyn Fn(&Wrk) -> f64| -> Vec<f64> {
        all_runs
            .iter()
            .filter(|r| r.proxy == who && r.tls == tls && r.connections == args.connections)
            .map(|r| f(&r.wrk))
            .collect()
    };
    let pick_c1 = |who: &str, tls: bool, f: fn(&Wrk) -> f64| -> Vec<f64> {
        all_runs
            .iter()
            .filter(|r| r.proxy == who && r.tls == tls && r.connections == 1)
            .map(|r| f(&r.wrk))
            .collect()
    };
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &tls in &protocols {
        let p = if tls { "TLS" } else { "HTTP" };
        type Metric = (&'static str, usize, fn(&Wrk) -> f64);
        let metrics: [Metric; 9] = [
            ("requests/s", 0, |w| w.rps),
            ("latency p50 ms", 3, |w| w.p50_ms),
            ("latency p90 ms", 3, |w| w.p90_ms),
            ("latency p99 ms", 3, |w| w.p99_ms),
            ("proxy CPU % (its processes)", 0, |w| w.proxy_cpu_pct),
            ("wrk+backend CPU busy %", 0, |w| w.load_cpu_busy_pct),
            ("requests per proxy CPU-s", 0, |w| {
                w.rps / (w.proxy_cpu_pct / 100.0).max(1e-6)
            }),
            ("TCP segments per request", 2, |w| w.segments_per_request),
            ("proxy ctx switches per request", 3, |w| {
                w.proxy_switches_per_request
            }),
        ];
        for (name, decimals, f) in metrics {
            let r = row(
                &format!("{p} {name}"),
                decimals,
                &pick("podwire", tls, &f),
                &pick("nginx", tls, &f),
            );
            if let Some(ratio) = r.ratio {
                if name == "requests/s" {
                    targets.push(Target {
                        name: format!("{p} requests/s >= nginx"),
                        ratio,
                        met: ratio >= 1.0,
                    });
                } else if name == "latency p99 ms" {
                    targets.push(Target {
                        name: format!("{p} p99 <= nginx"),
                        ratio,
                        met: ratio <= 1.0,
                    });
                }
            }
            rows.push(r);
        }
        if args.c1_seconds > 0 {
            type Unloaded = (&'static str, fn(&Wrk) -> f64);
            let metrics: [Unloaded; 2] = [
                ("unloaded (-c1) p50 ms", |w| w.p50_ms),
                ("unloaded (-c1) p99 ms", |w| w.p99_ms),
            ];
            for (name, f) in metrics {
                rows.push(row(
                    &format!("{p} {name}"),
                    3,
                    &pick_c1("podwire", tls, f),
                    &pick_c1("nginx", tls, f),
                ));
            }
        }
    }
    for &tls in &protocols {
        let p = if tls { "TLS" } else { "HTTP" };
        let get = |who: &str, f: &dyn Fn(&Idle) -> f64| -> Vec<f64> {
            idle.iter()
                .filter(|r| r.proxy == who && r.tls == tls)
                .map(f)
                .collect()
        };
        if idle.iter().all(|r| r.tls != tls) {
            continue;
        }
        type Metric = (String, usize, fn(&Idle) -> f64);
        let n = args.idle;
        let metrics: [Metric; 4] = [
            (format!("{p} RSS before idle, MB"), 1, |r| {
                r.rss_before_kb as f64 / 1024.0
            }),
            (format!("{p} RSS with {n} idle, MB"), 1, |r| {
                r.rss_after_kb as f64 / 1024.0
            }),
            (format!("{p} PSS with {n} idle, MB"), 1, |r| {
                r.pss_after_kb as f64 / 1024.0
            }),
            (format!("{p} RSS per idle conn, KB"), 1, |r| {
                (r.rss_after_kb as f64 - r.rss_before_kb as f64) / r.connections.max(1) as f64
            }),
        ];
        for (name, decimals, f) in metrics {
            rows.push(row(&name, decimals, &get("podwire", &f), &get("nginx", &f)));
        }
    }
    let idle_pct = |i: usize| -> Vec<f64> {
        let (cpu, wall) = idle_cpu[i];
        if wall > 0.0 {
            vec![cpu / wall * 100.0]
        } else {
            Vec::new()
        }
    };
    rows.push(row(
        "proxy CPU % with no traffic",
        2,
        &idle_pct(0),
        &idle_pct(1),
    ));
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

fn print_table(r: &Report) {
    println!(
        "\ningress on 127.0.0.1: {} -t1 -c{} -d{}s --latency, keep-alive, GET {} (route 6 of 3 hosts x 3 paths); {} runs, interleaved",
        r.wrk, r.connections, r.seconds, r.url, r.runs
    );
    println!(
        "proxies on CPU {} ({} worker{} each), wrk + backend nginx on CPU {}; podwire with PODWIRE_LOG=warn (no access log), {} with access_log off",
        r.proxy_cpu,
        r.workers,
        if r.workers == 1 { "" } else { "s" },
        r.load_cpu,
        r.nginx
    );
    for (who, params) in &r.tls {
        println!("TLS {who}: {params} (as a rustls client negotiates it)");
    }
    println!(
        "\n{:<36} {:>30}   {:>30}   {:>7}",
        "", "podwire: min / median / max", "nginx: min / median / max", "ratio"
    );
    let cell = |s: Option<Summary>, d: usize| match s {
        Some(s) => format!("{:>9.d$} {:>10.d$} {:>9.d$}", s.min, s.median, s.max, d = d),
        None => format!("{:>30}", "-"),
    };
    for row in &r.rows {
        println!(
            "{:<36} {}   {}   {:>7}",
            row.name,
            cell(row.podwire, row.decimals),
            cell(row.nginx, row.decimals),
            row.ratio.map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    if let Some(c) = r.ceiling {
        println!(
            "{:<36} {}   (wrk straight to the backend: the most CPU {} allows)",
            "backend alone requests/s",
            cell(Some(c), 0),
            r.load_cpu
        );
    }
    println!();
    for t in &r.targets {
        println!(
            "target {:<24} ratio {:.2}: {}",
            t.name,
            t.ratio,
            if t.met { "met" } else { "NOT met" }
        );
    }
    for note in &r.notes {
        println!("note: {note}");
    }
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

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, parse_wrk};

    const WRK: &str = "\
Running 10s test @ http://app2.bench.test:4000/api/v1/items
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us  12.00ms   90.00%
    Req/Sec    53.00k     2.00k   60.00k    70.00%
  Latency Distribution
     50%  574.00us
     75%    1.10ms
     90%    2.00ms
     99%    1.50s
  530000 requests in 10.00s, 60.12MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
Requests/sec:  53000.50
Transfer/sec:      6.01MB
";

    #[test]
    fn parses_wrk_output() {
        let w = parse_wrk(WRK).expect("parses");
        assert_eq!(w.rps, 53000.5);
        assert_eq!(w.p50_ms, 0.574);
        assert_eq!(w.p75_ms, 1.1);
        assert_eq!(w.p90_ms, 2.0);
        assert_eq!(w.p99_ms, 1500.0);
        assert_eq!(w.requests, 530_000);
        assert_eq!(w.socket_errors, 3);
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 5\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250.00us"), Some(0.25));
        assert_eq!(parse_duration_ms("2.00m"), Some(120_000.0));
        assert_eq!(parse_duration_ms("12"), None);
    }
}

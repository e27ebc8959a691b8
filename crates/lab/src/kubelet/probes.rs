//! Container probes as kubelet runs them: httpGet (HTTP; 200-399 is a
//! success), tcpSocket (a connection) and exec (exit code 0) against the
//! pod's address from the node, on the probe's schedule
//! (initialDelaySeconds, periodSeconds, timeoutSeconds) with its
//! thresholds. A [`Tracker`] turns single results into the verdict (pure);
//! [`run`] performs one probe. preStop hooks reuse [`run`].

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spawn::{self, Sandbox};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As kubelet names it in events ("Liveness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    /// A probe podwire cannot run (gRPC, HTTPS); it always fails with this
    /// message, so the pod shows why.
    Unsupported(String),
}

fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("the container has no port named {name:?}")),
    }
}

fn http(container: &Container, get: &HTTPGetAction) -> Action {
    if get.scheme.as_deref() == Some("HTTPS") {
        return Action::Unsupported("HTTPS probes are not supported by podwire's kubelet".into());
    }
    match port(container, &get.port) {
        Ok(p) => Action::Http {
            host: get.host.clone().filter(|h| !h.is_empty()),
            port: p,
            path: get.path.clone().unwrap_or_else(|| "/".into()),
            headers: get
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        },
        Err(e) => Action::Unsupported(e),
    }
}

fn tcp(container: &Container, socket: &TCPSocketAction) -> Action {
    match port(container, &socket.port) {
        Ok(p) => Action::Tcp {
            host: socket.host.clone().filter(|h| !h.is_empty()),
            port: p,
        },
        Err(e) => Action::Unsupported(e),
    }
}

fn exec(action: &ExecAction) -> Action {
    Action::Exec {
        command: action.command.clone().unwrap_or_default(),
    }
}

/// A probe's action.
pub fn probe_action(container: &Container, probe: &Probe) -> Action {
    if let Some(get) = &probe.http_get {
        http(container, get)
    } else if let Some(socket) = &probe.tcp_socket {
        tcp(container, socket)
    } else if let Some(e) = &probe.exec {
        exec(e)
    } else {
        Action::Unsupported("gRPC probes are not supported by podwire's kubelet".into())
    }
}

/// A lifecycle hook's action (sleep is handled by the caller).
pub fn hook_action(container: &Container, hook: &LifecycleHandler) -> Option<Action> {
    if let Some(get) = &hook.http_get {
        Some(http(container, get))
    } else if let Some(socket) = &hook.tcp_socket {
        Some(tcp(container, socket))
    } else {
        hook.exec.as_ref().map(exec)
    }
}

/// One probe of one container attempt: schedule, thresholds, verdict.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub kind: Kind,
    pub action: Action,
    pub period: Duration,
    pub timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    successes: u32,
    failures: u32,
    /// The verdict: readiness starts false, liveness true, startup unknown.
    pub verdict: Option<bool>,
    next: Instant,
    pub in_flight: bool,
    /// probe.terminationGracePeriodSeconds (liveness and startup).
    pub grace: Option<i64>,
}

fn secs(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.unwrap_or(default).max(0) as u64)
}

impl Tracker {
    pub fn new(kind: Kind, container: &Container, probe: &Probe, started: Instant) -> Tracker {
        Tracker {
            kind,
            action: probe_action(container, probe),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            successes: 0,
            failures: 0,
            verdict: match kind {
                Kind::Readiness => Some(false),
                Kind::Liveness => Some(true),
                Kind::Startup => None,
            },
            next: started + secs(probe.initial_delay_seconds, 0),
            in_flight: false,
            grace: probe.termination_grace_period_seconds,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        !self.in_flight && now >= self.next
    }

    /// Marks a probe as started; the next one is due a period later.
    pub fn started(&mut self, now: Instant) {
        self.in_flight = true;
        self.next = now + self.period;
    }

    /// Counts one result; returns the new verdict when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        self.in_flight = false;
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= self.success_threshold {
            Some(true)
        } else if self.failures >= self.failure_threshold {
            Some(false)
        } else {
            self.verdict
        };
        let changed = verdict != self.verdict;
        self.verdict = verdict;
        if changed { verdict } else { None }
    }

    /// Starts counting failures again (after a restart of the container
    /// the tracker is new; after a liveness kill, no second kill).
    pub fn reset_failures(&mut self) {
        self.failures = 0;
    }
}

/// Where exec probes and hooks run: the container's sandbox and env.
#[derive(Debug, Clone, Default)]
pub struct ExecTarget {
    pub sandbox: Sandbox,
    pub env: Vec<(String, String)>,
}

/// Runs one probe or hook against the pod at `pod_ip`; Ok(()) on success,
/// else the failure as kubelet words it.
pub async fn run(
    action: &Action,
    pod_ip: IpAddr,
    timeout: Duration,
    target: &ExecTarget,
) -> Result<(), String> {
    match action {
        Action::Http {
            host,
            port,
            path,
            headers,
        } => http_get(host.as_deref(), pod_ip, *port, path, headers, timeout).await,
        Action::Tcp { host, port } => {
            let addr = resolve(host.as_deref(), pod_ip, *port).await?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Exec { command } => exec_probe(command, target, timeout).await,
        Action::Unsupported(why) => Err(why.clone()),
    }
}

async fn resolve(host: Option<&str>, pod_ip: IpAddr, port: u16) -> Result<SocketAddr, String> {
    let Some(host) = host else {
        return Ok(SocketAddr::new(pod_ip, port));
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("dial tcp: lookup {host}: no such host"))
}

/// GET http://host:port/path: Ok for 200-399, else the status or error.
pub async fn http_get(
    host: Option<&str>,
    pod_ip: IpAddr,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let addr = resolve(host, pod_ip, port).await?;
    let url = format!("http://{addr}{path}");
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: connect: {e}"))?;
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n",
            host.map(|h| format!("{h}:{port}"))
                .unwrap_or_else(|| addr.to_string())
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("Get \"{url}\": {e}")),
            }
        }
        let code: u16 = std::str::from_utf8(&head)
            .ok()
            .and_then(|t| t.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

async fn exec_probe(
    command: &[String],
    target: &ExecTarget,
    timeout: Duration,
) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or("exec probe has an empty command")?;
    let mut cmd = spawn::command(&crate::runtime::resolve_program(program), &target.sandbox)
        .map_err(|e| e.to_string())?;
    cmd.args(args)
        .env_clear()
        .envs(target.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("exec {program:?}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Err(format!(
                "command {:?} exited with {}{}",
                command.join(" "),
                out.status.code().unwrap_or(-1),
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            ))
        }
        Ok(Err(e)) => Err(format!("exec {program:?}: {e}")),
        Err(_) => Err(format!("command {:?} timed out", command.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn probe(failure: i32, success: i32) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("http".into()),
                host: None,
            }),
            failure_threshold: Some(failure),
            success_threshold: Some(success),
            initial_delay_seconds: Some(5),
            ..Default::default()
        }
    }

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds_decide_the_verdict() {
        let now = Instant::now();
        let mut t = Tracker::new(Kind::Liveness, &container(), &probe(3, 1), now);
        assert_eq!(
            t.action,
            Action::Tcp {
                host: None,
                port: 8080
            }
        );
        assert!(!t.due(now), "initial delay");
        assert!(t.due(now + Duration::from_secs(5)));
        assert_eq!(t.verdict, Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false), "third failure");
        assert_eq!(t.record(true), Some(true));

        let mut r = Tracker::new(Kind::Readiness, &container(), &probe(1, 2), now);
        assert_eq!(r.verdict, Some(false));
        assert_eq!(r.record(true), None, "needs two successes");
        assert_eq!(r.record(true), Some(true));
        assert_eq!(r.record(false), Some(false));
    }

    #[test]
    fn unknown_named_ports_and_https_fail_with_a_reason() {
        let mut p = probe(1, 1);
        p.tcp_socket.as_mut().unwrap().port = IntOrString::String("nope".into());
        assert!(
            matches!(probe_action(&container(), &p), Action::Unsupported(m) if m.contains("nope"))
        );
        let https = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(443),
                scheme: Some("HTTPS".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            probe_action(&container(), &https),
            Action::Unsupported(_)
        ));
    }
}

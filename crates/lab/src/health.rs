//! How the lab reads a node agent's health, the way a cluster does: the
//! `--status-file` JSON the agent keeps (which revision of the store its
//! routes and service rules are programmed for, and why not when they are
//! not), and its readiness endpoint (`/readyz` on the health port inside
//! the node, which says why it is not ready). No type of the agent's crate
//! is shared: both are plain formats.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use podwire_kernel::Netns;

use crate::paths::netns_path;

/// The agent's health port (kube-proxy's `--healthz-bind-address` default).
pub const AGENT_HEALTH_PORT: u16 = 10256;

/// What the agent's status file says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AgentReport {
    /// The store revision the report is for.
    pub generation: u64,
    /// Routes and service rules are in place for it.
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// Where the agent stands for a store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// No report for this revision yet.
    Pending,
    Ready,
    /// The agent tried this revision and failed, with its reason.
    Failed(String),
}

impl AgentReport {
    /// Reads a status file; None when it is missing or half-written.
    pub fn read(path: &Path) -> Option<AgentReport> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The agent's state for store revision `generation`.
    pub fn state_for(report: Option<&AgentReport>, generation: u64) -> AgentState {
        match report {
            Some(r) if r.generation >= generation && r.ok => AgentState::Ready,
            Some(r) if r.generation >= generation => {
                AgentState::Failed(r.error.clone().unwrap_or_default())
            }
            _ => AgentState::Pending,
        }
    }
}

/// The agent's own account of why it is not ready: the body of `/readyz`
/// from inside the node's namespace, or what stopped us from asking.
pub fn readyz(node_ns: &str) -> String {
    let netns = match Netns::open(netns_path(node_ns)) {
        Ok(ns) => ns,
        Err(e) => return format!("cannot enter {node_ns}: {e}"),
    };
    let asked = std::thread::spawn(move || -> std::io::Result<String> {
        let _inside = netns.enter().map_err(std::io::Error::other)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_HEALTH_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(
            b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: podwire-lab\r\nConnection: close\r\n\r\n",
        )?;
        let mut answer = Vec::new();
        stream.take(4096).read_to_end(&mut answer)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    })
    .join();
    match asked {
        Ok(Ok(answer)) => readyz_reason(&answer),
        Ok(Err(e)) => format!("/readyz on :{AGENT_HEALTH_PORT} does not answer ({e})"),
        Err(_) => "/readyz could not be asked".into(),
    }
}

/// The body of an HTTP answer, on one line.
fn readyz_reason(answer: &str) -> String {
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(answer, |(_, body)| body);
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.is_empty() {
        "/readyz answered without a reason".into()
    } else {
        format!("/readyz: {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_states() {
        let ok = AgentReport {
            generation: 5,
            ok: true,
            error: None,
        };
        assert_eq!(AgentReport::state_for(Some(&ok), 5), AgentState::Ready);
        assert_eq!(AgentReport::state_for(Some(&ok), 6), AgentState::Pending);
        assert_eq!(AgentReport::state_for(None, 1), AgentState::Pending);
        let failed: AgentReport =
            serde_json::from_str(r#"{"generation":7,"ok":false,"error":"routing: host-gw needs all nodes on one L2 segment"}"#)
                .unwrap();
        assert_eq!(
            AgentReport::state_for(Some(&failed), 7),
            AgentState::Failed("routing: host-gw needs all nodes on one L2 segment".into())
        );
        // The agent omits `error` when there is none.
        let plain: AgentReport = serde_json::from_str(r#"{"generation":1,"ok":true}"#).unwrap();
        assert_eq!(plain.error, None);
    }

    #[test]
    fn readyz_body_is_the_reason() {
        assert_eq!(
            readyz_reason(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot ready: no cluster state yet\n"
            ),
            "/readyz: not ready: no cluster state yet"
        );
        assert_eq!(
            readyz_reason("HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            "/readyz answered without a reason"
        );
    }
}

//! Whether the node's pod network works, for its Ready condition. Three
//! checks, as a container runtime and kubelet make them:
//!
//! - a CNI configuration in --cni-conf-dir (the runtime's NetworkReady);
//! - the bridge `cni0`, when it exists, is up (a bridge without pods is up
//!   without carrier: only the administrative state counts);
//! - the node agent (routes between nodes, Service rules) answers ready on
//!   --agent-health. The agent runs as a hostNetwork DaemonSet pod on this
//!   very kubelet and installs the CNI configuration, so at bootstrap it
//!   cannot be ready yet: its check counts once it has been seen ready, or
//!   once the node runs pods on the pod network, which need it. An empty
//!   --agent-health disables the check (nodes without podwire's agent).
//!
//! The verdict is pure ([`verdict`]); [`Checker`] gathers the facts.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node agent's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Agent {
    /// No --agent-health.
    NotConfigured,
    Ready,
    NotReady(String),
}

/// What the node's network looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub conf_dir: PathBuf,
    pub has_conflist: bool,
    /// None: no cni0 (no pod has been wired yet); Some(up).
    pub bridge_up: Option<bool>,
    pub agent: Agent,
    pub agent_seen_ready: bool,
    /// Pods on the pod network (not hostNetwork) this node runs.
    pub network_pods: usize,
}

/// Ok when the network is ready, else the reason for NotReady.
pub fn verdict(f: &Facts) -> Result<(), String> {
    if !f.has_conflist {
        return Err(format!(
            "container runtime network not ready: no CNI configuration in {}",
            f.conf_dir.display()
        ));
    }
    if f.bridge_up == Some(false) {
        return Err("container runtime network not ready: the pod bridge cni0 is down".into());
    }
    if let Agent::NotReady(why) = &f.agent
        && (f.agent_seen_ready || f.network_pods > 0)
    {
        return Err(format!("node agent not ready: {why}"));
    }
    Ok(())
}

/// Gathers the facts; remembers whether the agent was ever ready.
pub struct Checker {
    pub conf_dir: PathBuf,
    /// http://host:port/path, or None.
    pub agent_url: Option<String>,
    pub agent_seen_ready: bool,
}

impl Checker {
    pub async fn facts(&mut self, network_pods: usize) -> Facts {
        let conf_dir = self.conf_dir.clone();
        let has_conflist = tokio::task::spawn_blocking(move || {
            matches!(crate::runtime::find_conflist(&conf_dir), Ok(Some(_)))
        })
        .await
        .unwrap_or(false);
        let agent = match &self.agent_url {
            None => Agent::NotConfigured,
            Some(url) => match agent_ready(url).await {
                Ok(()) => Agent::Ready,
                Err(e) => Agent::NotReady(e),
            },
        };
        if agent == Agent::Ready {
            self.agent_seen_ready = true;
        }
        Facts {
            conf_dir: self.conf_dir.clone(),
            has_conflist,
            bridge_up: bridge_up("cni0"),
            agent,
            agent_seen_ready: self.agent_seen_ready,
            network_pods,
        }
    }
}

/// cni0's administrative state in the kubelet's own network namespace
/// (netlink, not /sys, which may show another namespace's devices).
fn bridge_up(name: &str) -> Option<bool> {
    let mut nl = podwire_kernel::Netlink::new().ok()?;
    nl.link_by_name(name).ok()?.map(|link| link.up)
}

/// Splits `http://host:port/path`.
pub fn parse_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, p.parse().ok()?),
        _ => (authority, 80),
    };
    Some((host.trim_matches(['[', ']']).to_string(), port, path))
}

async fn agent_ready(url: &str) -> Result<(), String> {
    let (host, port, path) = parse_http_url(url)
        .ok_or_else(|| format!("--agent-health {url:?} is not an http:// URL"))?;
    let ip = host
        .parse()
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    super::probes::http_get(Some(&host), ip, port, &path, &[], Duration::from_secs(2))
        .await
        .map_err(|e| format!("{url}: {e}"))
}

/// The default readiness URL of podwire's node agent.
pub const DEFAULT_AGENT_HEALTH: &str = "http://127.0.0.1:10256/readyz";

/// True when `dir` holds a CNI configuration (for callers without a
/// runtime).
pub fn has_conflist(dir: &Path) -> bool {
    matches!(crate::runtime::find_conflist(dir), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            conf_dir: "/etc/cni/net.d".into(),
            has_conflist: true,
            bridge_up: None,
            agent: Agent::NotReady("connection refused".into()),
            agent_seen_ready: false,
            network_pods: 0,
        }
    }

    #[test]
    fn bootstrap_waits_for_the_cni_configuration_only() {
        assert_eq!(verdict(&facts()), Ok(()), "agent not yet seen, no pods");
        let no_conf = Facts {
            has_conflist: false,
            ..facts()
        };
        assert_eq!(
            verdict(&no_conf),
            Err(
                "container runtime network not ready: no CNI configuration in /etc/cni/net.d"
                    .into()
            )
        );
    }

    #[test]
    fn the_agent_counts_once_seen_or_needed() {
        let seen = Facts {
            agent_seen_ready: true,
            ..facts()
        };
        assert_eq!(
            verdict(&seen),
            Err("node agent not ready: connection refused".into())
        );
        let needed = Facts {
            network_pods: 1,
            ..facts()
        };
        assert!(verdict(&needed).is_err());
        let none = Facts {
            agent: Agent::NotConfigured,
            network_pods: 3,
            ..facts()
        };
        assert_eq!(verdict(&none), Ok(()));
    }

    #[test]
    fn a_down_bridge_is_not_ready() {
        let down = Facts {
            bridge_up: Some(false),
            agent: Agent::Ready,
            ..facts()
        };
        assert!(verdict(&down).unwrap_err().contains("cni0 is down"));
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:10256/readyz"),
            Some(("127.0.0.1".into(), 10256, "/readyz".into()))
        );
        assert_eq!(
            parse_http_url("http://h"),
            Some(("h".into(), 80, "/".into()))
        );
        assert_eq!(parse_http_url("https://h/"), None);
    }
}

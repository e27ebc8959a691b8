//! The routing half of `podwire agent`: each snapshot of the cluster is
//! planned and applied incrementally; every ~10 s (and a second after a
//! failure) the last plan is applied again, which writes nothing when the
//! kernel still matches and puts back whatever someone removed. In VXLAN
//! mode the agent publishes its tunnel endpoint (MAC, underlay address)
//! on its own Node when a [`ClusterWriter`] is given (Kubernetes mode), and
//! its peers learn it from there.
//!
//! [`RoutingAgent::repair`] applies the plan at once when `podwire agent`
//! sees (through netlink notifications) that someone else deleted one of
//! its routes, its VXLAN device or touched its masquerade table.
//!
//! The loop itself is the source's ([`podwire_model::Watch`]); this is
//! what it calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use podwire_kernel::{Netlink, sysctl};
use podwire_model::{
    ClusterState, ClusterWriter, Interest, Kind, PUBLIC_IP_ANNOTATION, Snapshot, SourceError,
    VTEP_MAC_ANNOTATION, Watch, WatchEvent,
};

use crate::apply::apply;
use crate::error::RoutingError;
use crate::plan::{PlanOptions, RoutePlan, format_mac, plan_with};

/// How the routing agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// This node's name (the Node object's metadata.name).
    pub node_name: String,
    /// The underlay interface holding the node's InternalIP (default eth0).
    pub underlay_device: String,
    /// The underlay MTU; None reads it from the device (1500 when the
    /// device is not in this namespace, e.g. for a dry run on the host).
    pub underlay_mtu: Option<u32>,
    /// How often the plan is re-applied with no change (default 10 s).
    pub resync: Duration,
    /// VXLAN peers must have published their endpoint (Kubernetes mode).
    pub require_published_vtep: bool,
    /// Where [`run_agent_until`] reports the outcome of every sync (JSON).
    pub status_file: Option<PathBuf>,
}

/// What the agent reports after each sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentStatus {
    pub generation: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentStatus {
    /// Writes the status as JSON (temp file + rename: readers never see
    /// half of it).
    pub fn write(&self, path: &std::path::Path) {
        let Ok(body) = serde_json::to_vec(self) else {
            return;
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, path))
            .is_err()
        {
            tracing::warn!(path = %path.display(), "cannot write the agent status file");
        }
    }
}

impl AgentOptions {
    /// Options with the defaults: eth0, MTU from the device, 10 s re-assert.
    pub fn new(node_name: impl Into<String>) -> AgentOptions {
        AgentOptions {
            node_name: node_name.into(),
            underlay_device: "eth0".to_string(),
            underlay_mtu: None,
            resync: Duration::from_secs(10),
            require_published_vtep: false,
            status_file: None,
        }
    }
}

/// The kinds the routing agent reads: Nodes (InternalIP, podCIDRs, the
/// published VXLAN endpoints).
pub fn interest() -> Interest {
    Interest::new([Kind::Node])
}

/// After a failure, retry this soon (a node may get its podCIDR any moment).
const RETRY: Duration = Duration::from_secs(1);

/// The routing agent's state between snapshots.
pub struct RoutingAgent {
    opts: AgentOptions,
    nl: Netlink,
    writer: Option<Arc<dyn ClusterWriter>>,
    /// The last plan and whether the kernel matched it after applying.
    plan: Option<RoutePlan>,
    applied: bool,
    next_apply: Instant,
    last_error: Option<String>,
    status: Option<AgentStatus>,
}

impl RoutingAgent {
    /// Opens netlink in the calling thread's namespace and turns on
    /// forwarding. `writer` publishes this node's VXLAN endpoint.
    pub fn new(
        opts: AgentOptions,
        writer: Option<Arc<dyn ClusterWriter>>,
    ) -> Result<RoutingAgent, RoutingError> {
        let nl = Netlink::new().map_err(|e| RoutingError::kernel("opening a netlink socket", e))?;
        sysctl::ensure("net/ipv4/ip_forward", "1").map_err(|e| {
            RoutingError::kernel(
                "turning on net.ipv4.ip_forward (the node must forward pod traffic)",
                e,
            )
        })?;
        tracing::info!(node = %opts.node_name, underlay = %opts.underlay_device, "routing agent started");
        Ok(RoutingAgent {
            opts,
            nl,
            writer,
            plan: None,
            applied: false,
            next_apply: Instant::now() + Duration::from_secs(3600),
            last_error: None,
            status: None,
        })
    }

    /// The outcome of the last sync.
    pub fn status(&self) -> Option<&AgentStatus> {
        self.status.as_ref()
    }

    fn plan_options(&mut self) -> PlanOptions {
        PlanOptions {
            underlay_device: self.opts.underlay_device.clone(),
            underlay_mtu: underlay_mtu(&self.opts, Some(&mut self.nl)),
            require_published_vtep: self.opts.require_published_vtep,
        }
    }

    /// Plans and applies a snapshot (when it touched Nodes or settings).
    pub fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), RoutingError> {
        if !snapshot.changed.touches(Kind::Node) && self.status.is_some() {
            // Nothing routing reads changed; the status follows the revision.
            if let Some(s) = self.status.as_mut() {
                s.generation = snapshot.revision;
            }
            return Ok(());
        }
        let options = self.plan_options();
        let result = plan_with(&snapshot.state, &self.opts.node_name, &options);
        match result {
            Ok(plan) => {
                self.plan = Some(plan);
                self.applied = false;
                self.apply_plan(snapshot.revision, Some(&snapshot.state))
            }
            Err(err) => {
                self.failed(snapshot.revision, &err);
                Err(err)
            }
        }
    }

    /// Someone else removed or changed what the plan owns (a route, the
    /// VXLAN device, the masquerade table): applies the plan again now.
    /// `masquerade`: reload the nft table even if it still exists (its
    /// rules may have been flushed). Returns how long it took; None before
    /// the first plan.
    pub fn repair(&mut self, masquerade: bool) -> Option<Result<Duration, RoutingError>> {
        self.plan.as_ref()?;
        let started = Instant::now();
        if masquerade {
            self.applied = false;
        }
        let generation = self.status.as_ref().map(|s| s.generation).unwrap_or(0);
        Some(
            self.apply_plan(generation, None)
                .map(|()| started.elapsed()),
        )
    }

    /// Whether the current plan has a device of this name (the VXLAN
    /// device in vxlan mode).
    pub fn owns_link(&self, name: &str) -> bool {
        self.plan
            .as_ref()
            .and_then(|p| p.vxlan.as_ref())
            .is_some_and(|d| d.name == name)
    }

    /// Applies the last plan again when due (periodic re-assertion, retry
    /// after a failure). Returns how long until it is due next.
    pub fn tick(&mut self) -> Duration {
        let now = Instant::now();
        if now >= self.next_apply && self.plan.is_some() {
            let generation = self.status.as_ref().map(|s| s.generation).unwrap_or(0);
            let _ = self.apply_plan(generation, None);
        }
        self.next_apply.saturating_duration_since(Instant::now())
    }

    fn apply_plan(
        &mut self,
        generation: u64,
        state: Option<&ClusterState>,
    ) -> Result<(), RoutingError> {
        let Some(plan) = self.plan.clone() else {
            return Ok(());
        };
        let previous = self.applied.then_some(&plan);
        match apply(&plan, &mut self.nl, previous) {
            Ok(report) => {
                let changes = report.changes.len();
                if changes > 0 || self.last_error.is_some() {
                    tracing::info!(
                        generation,
                        mode = %plan.mode,
                        peers = plan.peers.len(),
                        changes,
                        "node routing in place"
                    );
                } else {
                    tracing::debug!(generation, "node routing re-asserted, nothing to change");
                }
                for skipped in &plan.skipped {
                    tracing::debug!(node = %skipped.node, reason = %skipped.reason, "node left out");
                }
                if let Some(state) = state {
                    self.publish(&plan, state);
                }
                self.applied = true;
                self.last_error = None;
                self.status = Some(AgentStatus {
                    generation,
                    ok: true,
                    error: None,
                });
                self.next_apply = Instant::now() + self.opts.resync;
                Ok(())
            }
            Err(err) => {
                // Whatever was half applied, the next attempt starts from
                // the kernel again and reloads the nft table.
                self.applied = false;
                self.failed(generation, &err);
                Err(err)
            }
        }
    }

    fn failed(&mut self, generation: u64, err: &RoutingError) {
        let text = err.to_string();
        // The same failure every second would drown the log.
        if self.last_error.as_deref() != Some(text.as_str()) {
            tracing::warn!(error = %text, "node routing not (fully) applied; retrying");
        }
        self.status = Some(AgentStatus {
            generation,
            ok: false,
            error: Some(text.clone()),
        });
        self.last_error = Some(text);
        self.next_apply = Instant::now() + RETRY;
    }

    /// Publishes this node's VXLAN endpoint on its Node when the Node does
    /// not carry it yet (Kubernetes mode only).
    fn publish(&mut self, plan: &RoutePlan, state: &ClusterState) {
        let (Some(writer), Some(dev)) = (&self.writer, &plan.vxlan) else {
            return;
        };
        let wanted: BTreeMap<String, String> = [
            (VTEP_MAC_ANNOTATION.to_string(), format_mac(&dev.mac)),
            (PUBLIC_IP_ANNOTATION.to_string(), dev.local.to_string()),
        ]
        .into();
        let current = state
            .nodes
            .get(&self.opts.node_name)
            .and_then(|n| n.metadata.annotations.as_ref());
        let missing = wanted
            .iter()
            .any(|(k, v)| current.and_then(|a| a.get(k)) != Some(v));
        if !missing {
            return;
        }
        match writer.annotate_node(&self.opts.node_name, &wanted) {
            Ok(()) => tracing::info!(
                node = %self.opts.node_name,
                mac = %format_mac(&dev.mac),
                ip = %dev.local,
                "published this node's VXLAN endpoint"
            ),
            Err(err) => {
                tracing::warn!(node = %self.opts.node_name, "cannot publish the VXLAN endpoint: {err}");
                // Try again at the next tick.
                self.next_apply = Instant::now() + RETRY;
            }
        }
    }

    /// The source failed: keep everything programmed, say so in the status.
    pub fn source_failed(&mut self, err: &SourceError) {
        let text = format!("cluster state: {err}");
        if let Some(s) = self.status.as_mut() {
            s.error = Some(text);
        } else {
            self.status = Some(AgentStatus {
                generation: 0,
                ok: false,
                error: Some(text),
            });
        }
    }
}

fn underlay_mtu(opts: &AgentOptions, nl: Option<&mut Netlink>) -> u32 {
    if let Some(mtu) = opts.underlay_mtu {
        return mtu;
    }
    let default = PlanOptions::default().underlay_mtu;
    let Some(nl) = nl else { return default };
    match nl.link_by_name(&opts.underlay_device) {
        Ok(Some(link)) if link.mtu > 0 => link.mtu,
        _ => default,
    }
}

/// Runs the routing agent alone on `watch` in the calling thread's network
/// namespace until `stop` is set, writing `opts.status_file` after every
/// sync (`podwire agent` runs it together with the service proxy instead).
pub fn run_agent_until(
    opts: &AgentOptions,
    watch: &mut Watch,
    stop: &AtomicBool,
) -> Result<(), RoutingError> {
    let mut agent = RoutingAgent::new(opts.clone(), None)?;
    watch.run(stop, &mut |event, _| {
        match event {
            WatchEvent::Snapshot(s) => {
                let _ = agent.reconcile(&s);
            }
            WatchEvent::SourceFailed(e) => agent.source_failed(&e),
            WatchEvent::Idle => {}
        }
        if let (Some(path), Some(status)) = (&opts.status_file, agent.status()) {
            status.write(path);
        }
        agent.tick()
    });
    tracing::info!(node = %opts.node_name, "routing agent stopped");
    Ok(())
}

/// The plan the agent would apply for `state`, without applying it: the
/// dry run of `podwire agent plan`. Reads the underlay MTU from the device
/// when it exists in the calling namespace (run it inside the node for the
/// exact MTU), else assumes 1500 unless `opts.underlay_mtu` says otherwise.
pub fn plan_for(opts: &AgentOptions, state: &ClusterState) -> Result<RoutePlan, RoutingError> {
    let mut nl = Netlink::new().ok();
    let options = PlanOptions {
        underlay_device: opts.underlay_device.clone(),
        underlay_mtu: underlay_mtu(opts, nl.as_mut()),
        require_published_vtep: opts.require_published_vtep,
    };
    plan_with(state, &opts.node_name, &options)
}

//! The routing agent's loop (`podwire agent`): watch the files source, plan,
//! apply incrementally, re-assert now and then.
//!
//! The files source bumps a generation counter after every change, so
//! polling one small file every 100 ms is enough to react to a node joining
//! or leaving well within a second, with no inotify edge cases (atomic
//! renames, directories created later). Every ~10 s the agent re-applies
//! the same plan anyway: apply compares with the kernel and writes nothing
//! when all is in place, and puts back whatever someone removed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use podwire_kernel::{Netlink, sysctl};
use podwire_model::Store;

use crate::apply::apply;
use crate::error::RoutingError;
use crate::plan::{PlanOptions, RoutePlan, plan_with};

/// How `podwire agent` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// This node's name (the Node object's metadata.name).
    pub node_name: String,
    /// The files source: the store directory the lab writes.
    pub source_dir: PathBuf,
    /// The underlay interface holding the node's InternalIP (default eth0).
    pub underlay_device: String,
    /// The underlay MTU; None reads it from the device (1500 when the
    /// device is not in this namespace, e.g. for a dry run on the host).
    pub underlay_mtu: Option<u32>,
    /// How often the source's generation is checked (default 100 ms).
    pub poll: Duration,
    /// How often the plan is re-applied with no change (default 10 s).
    pub resync: Duration,
    /// Apply once and return (the exit status says whether it worked).
    pub once: bool,
    /// Where to report the outcome of every sync (JSON: generation, ok,
    /// error), so whoever started the agent can wait for routes to be in
    /// place or show why they are not.
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

fn report(opts: &AgentOptions, status: &AgentStatus) {
    let Some(path) = &opts.status_file else {
        return;
    };
    let Ok(body) = serde_json::to_vec(status) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .is_err()
    {
        tracing::warn!(path = %path.display(), "cannot write the agent status file");
    }
}

impl AgentOptions {
    /// Options with the defaults: eth0, MTU from the device, 100 ms poll,
    /// 10 s re-assert, run until stopped.
    pub fn new(node_name: impl Into<String>, source_dir: impl Into<PathBuf>) -> AgentOptions {
        AgentOptions {
            node_name: node_name.into(),
            source_dir: source_dir.into(),
            underlay_device: "eth0".to_string(),
            underlay_mtu: None,
            poll: Duration::from_millis(100),
            resync: Duration::from_secs(10),
            once: false,
            status_file: None,
        }
    }
}

/// After a failure, retry this soon (a node may get its podCIDR any moment).
const RETRY: Duration = Duration::from_secs(1);

/// Runs the agent in the calling thread's network namespace until the
/// process is stopped (or once, with `opts.once`).
pub fn run_agent(opts: AgentOptions) -> Result<(), RoutingError> {
    static NEVER: AtomicBool = AtomicBool::new(false);
    run_agent_until(&opts, &NEVER)
}

/// Like [`run_agent`], returning when `stop` becomes true (checked every
/// poll interval): for embedding the agent in a thread.
pub fn run_agent_until(opts: &AgentOptions, stop: &AtomicBool) -> Result<(), RoutingError> {
    let store = Store::open(&opts.source_dir);
    let mut nl = Netlink::new().map_err(|e| RoutingError::kernel("opening a netlink socket", e))?;
    sysctl::ensure("net/ipv4/ip_forward", "1").map_err(|e| {
        RoutingError::kernel(
            "turning on net.ipv4.ip_forward (the node must forward pod traffic)",
            e,
        )
    })?;
    tracing::info!(
        node = %opts.node_name,
        source = %opts.source_dir.display(),
        underlay = %opts.underlay_device,
        "routing agent started"
    );

    let mut applied: Option<RoutePlan> = None;
    let mut seen_generation: Option<u64> = None;
    let mut next_resync = Instant::now();
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let generation = store.generation();
        if seen_generation != Some(generation) || Instant::now() >= next_resync {
            match reconcile(&store, opts, &mut nl, applied.as_ref()) {
                Ok((generation, plan, changes)) => {
                    if changes > 0 || last_error.is_some() {
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
                    seen_generation = Some(generation);
                    applied = Some(plan);
                    last_error = None;
                    report(
                        opts,
                        &AgentStatus {
                            generation,
                            ok: true,
                            error: None,
                        },
                    );
                    next_resync = Instant::now() + opts.resync;
                }
                Err(err) => {
                    let text = err.to_string();
                    // The same failure every second would drown the log.
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "node routing not (fully) applied; retrying");
                    }
                    if opts.once {
                        return Err(err);
                    }
                    report(
                        opts,
                        &AgentStatus {
                            generation,
                            ok: false,
                            error: Some(text.clone()),
                        },
                    );
                    last_error = Some(text);
                    seen_generation = Some(generation);
                    // Whatever was half applied, the next attempt starts
                    // from the kernel again and reloads the nft table.
                    applied = None;
                    next_resync = Instant::now() + RETRY;
                }
            }
            if opts.once {
                return Ok(());
            }
        }
        std::thread::sleep(opts.poll);
    }
    tracing::info!(node = %opts.node_name, "routing agent stopped");
    Ok(())
}

/// One round: a consistent snapshot, its plan, applied.
fn reconcile(
    store: &Store,
    opts: &AgentOptions,
    nl: &mut Netlink,
    previous: Option<&RoutePlan>,
) -> Result<(u64, RoutePlan, usize), RoutingError> {
    let (generation, state) = store.load_consistent().map_err(|e| RoutingError::Source {
        dir: opts.source_dir.clone(),
        detail: e.to_string(),
    })?;
    let options = PlanOptions {
        underlay_device: opts.underlay_device.clone(),
        underlay_mtu: underlay_mtu(opts, Some(nl)),
    };
    let plan = plan_with(&state, &opts.node_name, &options)?;
    let report = apply(&plan, nl, previous)?;
    Ok((generation, plan, report.changes.len()))
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

/// The plan the agent would apply now, without applying it: the dry run of
/// `podwire agent plan`. Reads the underlay MTU from the device when it
/// exists in the calling namespace (run it inside the node for the exact
/// MTU), else assumes 1500 unless `opts.underlay_mtu` says otherwise.
pub fn plan_for(opts: &AgentOptions) -> Result<RoutePlan, RoutingError> {
    let store = Store::open(&opts.source_dir);
    let state = store.load().map_err(|e| RoutingError::Source {
        dir: opts.source_dir.clone(),
        detail: e.to_string(),
    })?;
    let mut nl = Netlink::new().ok();
    let options = PlanOptions {
        underlay_device: opts.underlay_device.clone(),
        underlay_mtu: underlay_mtu(opts, nl.as_mut()),
    };
    plan_with(&state, &opts.node_name, &options)
}

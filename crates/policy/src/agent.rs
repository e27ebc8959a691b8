//! The NetworkPolicy part of `podwire agent`: every snapshot that touches
//! Pods, Namespaces or NetworkPolicies is compiled whole (a label change
//! can move any grant) and applied as a difference; the table is
//! re-asserted when someone deletes it (checked every second) and fully
//! re-sent every 5 minutes; [`PolicyAgent::repair`] re-sends it at once
//! when `podwire agent` sees someone else change it. Rejected policies are logged once per reason.
//! Drop counters are read for `/metrics` every few seconds; with a log
//! group, denied connections are read from nflog and logged.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use podwire_model::{ClusterState, Interest, Kind, Snapshot, SourceError};

use crate::compile::{Ruleset, compile};
use crate::engine::{self, Engine, SyncReport};
use crate::error::PolicyError;
use crate::layout::Plan;
use crate::nflog::LogReader;
use crate::spec::PolicyKey;

/// How the enforcer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOptions {
    pub node_name: String,
    /// nflog group for denied-connection logs (None: off).
    pub log_group: Option<u16>,
    pub check_table: Duration,
    pub full_resync: Duration,
}

impl PolicyOptions {
    pub fn new(node_name: impl Into<String>) -> PolicyOptions {
        PolicyOptions {
            node_name: node_name.into(),
            log_group: None,
            check_table: Duration::from_secs(1),
            full_resync: Duration::from_secs(300),
        }
    }
}

/// The kinds policy enforcement reads: every Pod (peers live on every
/// node), Namespaces (their labels) and NetworkPolicies.
pub fn interest() -> Interest {
    Interest::new([Kind::Pod, Kind::Namespace, Kind::NetworkPolicy])
}

/// What `podwire agent plan` prints for policies.
pub fn plan_for(opts: &PolicyOptions, state: &ClusterState) -> String {
    let rs = compile(state, &opts.node_name);
    Plan {
        ruleset: &rs,
        log_group: opts.log_group,
    }
    .to_string()
}

/// What the enforcer reports after each sync attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    pub generation: u64,
    pub ok: bool,
    pub error: Option<String>,
}

const RETRY: Duration = Duration::from_secs(1);
const COUNTERS_EVERY: Duration = Duration::from_secs(5);

/// The enforcer's state between snapshots.
pub struct PolicyAgent {
    opts: PolicyOptions,
    engine: Engine,
    ruleset: Option<Ruleset>,
    rejected: BTreeMap<PolicyKey, String>,
    generation: u64,
    status: Option<PolicyStatus>,
    retry_at: Option<Instant>,
    next_check: Instant,
    next_full: Instant,
    next_counters: Instant,
    counters: BTreeMap<String, (u64, u64)>,
    last_sync: Option<SyncReport>,
    log: Option<LogReader>,
}

impl PolicyAgent {
    /// Prepares the enforcer in the calling thread's namespace: bridged
    /// pod-to-pod traffic must reach the forward hook (br_netfilter), and
    /// with a log group, the nflog socket is bound.
    pub fn new(opts: PolicyOptions) -> Result<PolicyAgent, PolicyError> {
        if std::path::Path::new("/proc/sys/net/bridge").exists() {
            if let Err(e) =
                podwire_kernel::sysctl::ensure("net/bridge/bridge-nf-call-iptables", "1")
            {
                tracing::warn!(
                    error = %e,
                    "cannot turn on bridge-nf-call-iptables: traffic between pods of one node may bypass NetworkPolicy"
                );
            }
        } else {
            tracing::warn!(
                "br_netfilter is not loaded: traffic between pods of one node bypasses NetworkPolicy (modprobe br_netfilter)"
            );
        }
        let log = match opts.log_group {
            Some(group) => Some(LogReader::open(group)?),
            None => None,
        };
        tracing::info!(node = %opts.node_name, log_group = ?opts.log_group, "NetworkPolicy enforcement started");
        let now = Instant::now();
        Ok(PolicyAgent {
            engine: Engine::new(opts.log_group),
            next_check: now + opts.check_table,
            next_full: now + opts.full_resync,
            next_counters: now,
            opts,
            ruleset: None,
            rejected: BTreeMap::new(),
            generation: 0,
            status: None,
            retry_at: None,
            counters: BTreeMap::new(),
            last_sync: None,
            log,
        })
    }

    pub fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }

    /// The last ruleset compiled.
    pub fn ruleset(&self) -> Option<&Ruleset> {
        self.ruleset.as_ref()
    }

    /// Compiles and applies a snapshot (when it touches what policies read).
    pub fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), PolicyError> {
        self.generation = snapshot.revision;
        let touches = [Kind::Pod, Kind::Namespace, Kind::NetworkPolicy]
            .iter()
            .any(|k| snapshot.changed.touches(*k));
        if self.ruleset.is_none() || touches {
            let rs = compile(&snapshot.state, &self.opts.node_name);
            self.log_rejections(&rs);
            self.ruleset = Some(rs);
        }
        self.apply()
    }

    fn log_rejections(&mut self, rs: &Ruleset) {
        let mut now = BTreeMap::new();
        for p in &rs.policies {
            if let Some(reason) = &p.rejected {
                if self.rejected.get(&p.key) != Some(reason) {
                    tracing::warn!(
                        namespace = %p.key.0,
                        policy = %p.key.1,
                        %reason,
                        "NetworkPolicy rejected: none of its rules apply; the pods it selects stay isolated"
                    );
                }
                now.insert(p.key.clone(), reason.clone());
            } else if self.rejected.contains_key(&p.key) {
                tracing::info!(namespace = %p.key.0, policy = %p.key.1, "NetworkPolicy accepted again");
            }
        }
        self.rejected = now;
    }

    fn apply(&mut self) -> Result<(), PolicyError> {
        let Some(rs) = &self.ruleset else {
            return Ok(());
        };
        match self.engine.sync(rs) {
            Ok(report) => {
                tracing::debug!(?report, "policy table synced");
                self.retry_at = None;
                self.last_sync = Some(report);
                self.status = Some(PolicyStatus {
                    generation: self.generation,
                    ok: true,
                    error: None,
                });
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "policy sync failed; retrying with a full sync");
                self.retry_at = Some(Instant::now() + RETRY);
                self.status = Some(PolicyStatus {
                    generation: self.generation,
                    ok: false,
                    error: Some(e.to_string()),
                });
                Err(e)
            }
        }
    }

    /// The source failed: what is programmed stays.
    pub fn source_failed(&mut self, err: &SourceError) {
        tracing::debug!(%err, "policy enforcement keeps its table while the source is down");
    }

    /// Someone else changed the policy table: a full sync now. Returns
    /// how long it took; None before the first ruleset.
    pub fn repair(&mut self) -> Option<Result<Duration, PolicyError>> {
        self.ruleset.as_ref()?;
        let started = Instant::now();
        self.engine.reset();
        Some(self.apply().map(|()| started.elapsed()))
    }

    /// Periodic work; returns how long the caller may wait.
    pub fn tick(&mut self) -> Duration {
        let now = Instant::now();
        if self.retry_at.is_some_and(|t| now >= t) {
            self.engine.reset();
            let _ = self.apply();
        }
        if self.ruleset.is_some() && now >= self.next_check {
            self.next_check = now + self.opts.check_table;
            if matches!(engine::table_present(), Ok(false)) {
                tracing::warn!("the policy table is gone; putting it back");
                self.engine.reset();
                let _ = self.apply();
            }
        }
        if self.ruleset.is_some() && now >= self.next_full {
            self.next_full = now + self.opts.full_resync;
            self.engine.reset();
            let _ = self.apply();
        }
        if self.ruleset.is_some() && now >= self.next_counters {
            self.next_counters = now + COUNTERS_EVERY;
            match engine::drop_counters() {
                Ok(c) => self.counters = c,
                Err(e) => tracing::debug!(error = %e, "cannot read policy counters"),
            }
        }
        if let (Some(log), Some(rs)) = (self.log.as_mut(), self.ruleset.as_ref()) {
            log.drain(rs);
        }
        let mut wait = self.next_check.saturating_duration_since(now);
        if self.log.is_some() {
            wait = wait.min(Duration::from_millis(200));
        }
        if let Some(t) = self.retry_at {
            wait = wait.min(t.saturating_duration_since(now));
        }
        wait
    }

    /// Prometheus text: drops per policy, policies by state, isolated pods.
    pub fn metrics(&self) -> String {
        let mut s = String::new();
        let Some(rs) = &self.ruleset else {
            return s;
        };
        s.push_str("# HELP podwire_policy_drops_total Packets dropped by NetworkPolicy, by the policy answering for the isolated pod.\n");
        s.push_str("# TYPE podwire_policy_drops_total counter\n");
        for (chain, (packets, _)) in &self.counters {
            let (dir, id) = chain.split_at(3);
            let Some((ns, name)) = rs.policy_of(id) else {
                continue;
            };
            let direction = if dir == "in-" { "ingress" } else { "egress" };
            let _ = writeln!(
                s,
                "podwire_policy_drops_total{{namespace=\"{ns}\",policy=\"{name}\",direction=\"{direction}\"}} {packets}"
            );
        }
        let rejected = rs.policies.iter().filter(|p| p.rejected.is_some()).count();
        s.push_str("# HELP podwire_policy_policies NetworkPolicies by state.\n# TYPE podwire_policy_policies gauge\n");
        let _ = writeln!(
            s,
            "podwire_policy_policies{{state=\"enforced\"}} {}\npodwire_policy_policies{{state=\"rejected\"}} {rejected}",
            rs.policies.len() - rejected
        );
        s.push_str("# HELP podwire_policy_isolated_pods Pods of this node isolated by NetworkPolicy.\n# TYPE podwire_policy_isolated_pods gauge\n");
        let _ = writeln!(
            s,
            "podwire_policy_isolated_pods{{direction=\"ingress\"}} {}\npodwire_policy_isolated_pods{{direction=\"egress\"}} {}",
            rs.ingress_pods.len(),
            rs.egress_pods.len()
        );
        s.push_str("# HELP podwire_policy_elements Elements in the policy table's allow sets.\n# TYPE podwire_policy_elements gauge\n");
        let _ = writeln!(
            s,
            "podwire_policy_elements{{set=\"ingress_allow4\"}} {}\npodwire_policy_elements{{set=\"egress_allow4\"}} {}",
            rs.ingress_allow.len(),
            rs.egress_allow.len()
        );
        if let Some(r) = &self.last_sync {
            s.push_str("# HELP podwire_policy_last_sync_seconds Duration of the last policy sync.\n# TYPE podwire_policy_last_sync_seconds gauge\n");
            let _ = writeln!(
                s,
                "podwire_policy_last_sync_seconds {}",
                r.elapsed.as_secs_f64()
            );
        }
        s
    }
}

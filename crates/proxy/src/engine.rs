//! The apply step: makes the kernel's `inet podwire-proxy` table match a
//! [`Ruleset`], keeping what was committed in memory so each sync sends
//! only the difference. What to send is decided by the pure
//! [`crate::sync_plan`] (unit-tested); this file carries a plan out
//! (`nft -f`, one netlink transaction, chain deletions, conntrack and
//! affinity cleanup) and adopts the committed state it describes.
//!
//! - **Full sync** (first sync, after any failure, when asked): load the
//!   structure with `nft -f` (idempotent; never deletes the table, so
//!   traffic keeps flowing across agent restarts), then ONE netlink
//!   transaction that flushes every owned set and adds every element. The
//!   packet path sees the old elements or the new ones, never a mix.
//! - **Incremental sync**: Services whose fragment changed (compared by
//!   `Arc` identity, then by value) contribute deletions and additions of
//!   their own elements, in ONE netlink transaction (deletions first, so a
//!   changed value is a delete + add of the same key). A new endpoint
//!   count that needs a new `lb4-N` chain loads the structure first (new
//!   chains only add); chains nobody uses any more are deleted after.
//! - Elements claimed by two Services (an externalIP:port on both, a pod
//!   behind two Services in the hairpin set) are reference-counted: the
//!   first owner in (namespace, name) order decides the value, and the
//!   element leaves only with its last owner.
//! - After an incremental commit: UDP conntrack entries that point at a
//!   removed endpoint (or that were created while a Service had none) are
//!   deleted, and affinity entries whose endpoint slot changed are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use podwire_kernel::conntrack;
use podwire_kernel::nft::{self, Element, ElementData, Family, Transaction};

use crate::compile::{CompileOptions, Frontend, Ruleset, ServiceKey, ServiceRules, Target};
use crate::error::ProxyError;
use crate::layout::{
    self, ElemKey, Fam, LOCAL_OFFSET, LbChain, SetId, TABLE, affinity_set, encode_element,
};
use crate::sync_plan::{self, ChainCleanup, Committed, Held, SyncPlan};

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    pub full: bool,
    /// The structure was (re)loaded with `nft -f`.
    pub structure_loaded: bool,
    pub services_changed: usize,
    pub elements_added: usize,
    pub elements_deleted: usize,
    /// Elements in the table after the sync.
    pub elements_total: usize,
    pub chains_deleted: usize,
    pub conntrack_flushes: usize,
    pub affinity_purged: usize,
    pub netlink_bytes: usize,
    pub netlink_messages: usize,
    pub elapsed: Duration,
}

/// The element as sent: key, value and the comment naming its Service.
fn encode_held(k: &ElemKey, held: &Held) -> Element {
    let mut element = encode_element(k, &held.0);
    element.comment = Some(held.1.clone());
    element
}

/// The applier. Works in the calling thread's network namespace.
#[derive(Debug, Default)]
pub struct Engine {
    committed: Option<Committed>,
    /// Skip conntrack and affinity cleanup (benchmarks of the table alone).
    pub skip_cleanup: bool,
}

fn kernel_err(what: &str) -> impl FnOnce(podwire_kernel::Error) -> ProxyError + '_ {
    move |e| ProxyError::kernel(what, e)
}

/// The transaction of a plan: flushes, then deletes, then adds, grouped
/// by set.
fn transaction(plan: &SyncPlan) -> Transaction {
    let mut tx = Transaction::new();
    for set in &plan.flush {
        tx.flush(&set.name());
    }
    let mut deletes: BTreeMap<SetId, Vec<Element>> = BTreeMap::new();
    for (k, held) in &plan.deletes {
        deletes.entry(k.set).or_default().push(encode_held(k, held));
    }
    for (set, elements) in deletes {
        tx.delete(&set.name(), elements);
    }
    let mut adds: BTreeMap<SetId, Vec<Element>> = BTreeMap::new();
    for (k, held) in &plan.adds {
        adds.entry(k.set).or_default().push(encode_held(k, held));
    }
    for (set, elements) in adds {
        tx.add(&set.name(), elements);
    }
    tx
}

impl Engine {
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Forgets the committed state: the next sync is a full one.
    pub fn invalidate(&mut self) {
        self.committed = None;
    }

    /// Whether a sync has succeeded since the last failure/invalidate.
    pub fn is_synced(&self) -> bool {
        self.committed.is_some()
    }

    /// Elements per set in the kernel, as committed.
    pub fn element_counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        if let Some(c) = &self.committed {
            for set in SetId::all() {
                out.insert(set.name(), 0);
            }
            for k in c.kernel.keys() {
                *out.entry(k.set.name()).or_default() += 1;
            }
        }
        out
    }

    /// Rules in the table (fixed chains plus generated ones).
    pub fn rule_count(&self) -> usize {
        self.committed
            .as_ref()
            .map(|c| layout::rule_count(&c.options.structure, &c.kernel_chains))
            .unwrap_or(0)
    }

    /// Chains in the table (fixed plus generated).
    pub fn chain_count(&self) -> usize {
        self.committed
            .as_ref()
            .map(|c| 14 + c.kernel_chains.len())
            .unwrap_or(0)
    }

    /// Makes the kernel match `desired`. On error the committed state is
    /// forgotten, so the next call does a full resync (nothing pending is
    /// lost: `desired` is always the whole state).
    pub fn sync(&mut self, desired: &Ruleset) -> Result<SyncReport, ProxyError> {
        self.sync_inner(desired, None)
    }

    /// Like [`Engine::sync`] when the caller knows which Services changed
    /// (see [`crate::Compiler::compile_changed`]): only those are compared.
    pub fn sync_changed(
        &mut self,
        desired: &Ruleset,
        changed: &[ServiceKey],
    ) -> Result<SyncReport, ProxyError> {
        self.sync_inner(desired, Some(changed))
    }

    fn sync_inner(
        &mut self,
        desired: &Ruleset,
        keys: Option<&[ServiceKey]>,
    ) -> Result<SyncReport, ProxyError> {
        let started = Instant::now();
        let plan = sync_plan::plan(self.committed.as_ref(), desired, keys);
        match self.execute(plan, &desired.options) {
            Ok(mut report) => {
                report.elapsed = started.elapsed();
                Ok(report)
            }
            Err(err) => {
                self.committed = None;
                Err(err)
            }
        }
    }

    /// Carries a plan out: structure, ONE netlink transaction, chain
    /// deletions, conntrack and affinity cleanup; then adopts its state.
    fn execute(
        &mut self,
        plan: SyncPlan,
        options: &CompileOptions,
    ) -> Result<SyncReport, ProxyError> {
        let mut report = SyncReport {
            full: plan.full,
            services_changed: plan.services_changed,
            elements_added: plan.adds.len(),
            elements_deleted: plan.deletes.len(),
            ..Default::default()
        };
        if plan.services_changed == 0 && !plan.full {
            report.elements_total = self.committed.as_ref().map_or(0, |c| c.kernel.len());
            return Ok(report);
        }
        if let Some(chains) = &plan.structure {
            nft::apply_script(&layout::structure_script(&options.structure, chains))
                .map_err(|e| ProxyError::Structure(e.to_string()))?;
            report.structure_loaded = true;
        }
        let tx = transaction(&plan);
        if !tx.is_empty() {
            let stats =
                nft::commit(Family::Inet, TABLE, &tx).map_err(|source| ProxyError::Elements {
                    elements: if plan.full {
                        plan.adds.len()
                    } else {
                        plan.adds.len() + plan.deletes.len()
                    },
                    source,
                })?;
            report.netlink_bytes = stats.bytes;
            report.netlink_messages = stats.messages;
        }
        let deleted = match &plan.chains_after {
            ChainCleanup::None => Vec::new(),
            // Generated chains nobody needs (a previous run's, or ours
            // before a failure) go now that no element names them.
            ChainCleanup::AllBut(wanted) => {
                let existing = nft::list_chains(Family::Inet, TABLE)
                    .map_err(kernel_err("listing the proxy's chains"))?;
                let stale: Vec<String> = existing
                    .into_iter()
                    .filter(|c| LbChain::is_generated_name(c) && !wanted.contains(c))
                    .collect();
                if !stale.is_empty() {
                    match nft::delete_chains(Family::Inet, TABLE, &stale) {
                        Ok(()) => report.chains_deleted = stale.len(),
                        Err(err) => {
                            tracing::warn!(%err, "cannot delete unused proxy chains; will retry")
                        }
                    }
                }
                Vec::new()
            }
            ChainCleanup::These(chains) => {
                let names: Vec<String> = chains.iter().map(LbChain::name).collect();
                match nft::delete_chains(Family::Inet, TABLE, &names) {
                    Ok(()) => {
                        report.chains_deleted = names.len();
                        chains.clone()
                    }
                    Err(err) => {
                        tracing::debug!(%err, "unused proxy chains stay until the next full sync");
                        Vec::new()
                    }
                }
            }
        };
        if !self.skip_cleanup {
            for (_, old, new) in &plan.changed {
                let (f, a) = cleanup(old.as_deref(), new.as_deref());
                report.conntrack_flushes += f;
                report.affinity_purged += a;
            }
        }
        let mut committed = plan.adopt(self.committed.take());
        if let Some(c) = committed.as_mut() {
            c.chains_deleted(&deleted);
            report.elements_total = c.kernel.len();
        }
        self.committed = committed;
        Ok(report)
    }
}

type FrontendId = (Fam, Option<IpAddr>, u8, u16);

fn frontends(rules: Option<&ServiceRules>) -> HashMap<FrontendId, &Frontend> {
    rules
        .map(|r| {
            r.frontends
                .iter()
                .map(|f| ((f.fam, f.dst, f.proto, f.port), f))
                .collect()
        })
        .unwrap_or_default()
}

/// UDP conntrack and affinity cleanup for one changed Service; returns
/// (conntrack deletions run, affinity entries purged). Failures are logged:
/// stale entries also expire on their own.
fn cleanup(old: Option<&ServiceRules>, new: Option<&ServiceRules>) -> (usize, usize) {
    let before = frontends(old);
    let after = frontends(new);
    let mut flushes = 0;
    let mut purged = 0;
    for (id, o) in &before {
        let (fam, dst, proto, port) = *id;
        let n = after.get(id);
        let new_targets: BTreeSet<Target> = n
            .map(|f| f.cluster.iter().chain(f.local.iter()).copied().collect())
            .unwrap_or_default();
        if proto == 17 {
            let removed: BTreeSet<IpAddr> = o
                .cluster
                .iter()
                .chain(o.local.iter())
                .filter(|t| !new_targets.contains(t))
                .map(|t| t.ip)
                .collect();
            for ip in removed {
                flushes += 1;
                if let Err(err) = conntrack::delete(17, dst, port, Some(ip)) {
                    tracing::warn!(%err, endpoint = %ip, port, "cannot flush UDP conntrack entries");
                }
            }
        }
        if o.affinity {
            let same = |a: &[Target], b: Option<&[Target]>, base: u32| -> Vec<u32> {
                a.iter()
                    .enumerate()
                    .filter(|(i, t)| b.and_then(|b| b.get(*i)) != Some(*t))
                    .map(|(i, _)| base + i as u32)
                    .collect()
            };
            let mut slots = same(&o.cluster, n.map(|f| f.cluster.as_slice()), 0);
            slots.extend(same(&o.local, n.map(|f| f.local.as_slice()), LOCAL_OFFSET));
            if !slots.is_empty() {
                purged += purge_affinity(fam, dst, proto, port, &slots);
            }
        }
    }
    // UDP frontends that had no endpoints: entries made while packets were
    // rejected would keep failing.
    for (id, n) in &after {
        let (_, dst, proto, port) = *id;
        if proto != 17 || (n.cluster.is_empty() && n.local.is_empty()) {
            continue;
        }
        let had = before
            .get(id)
            .is_some_and(|o| !(o.cluster.is_empty() && o.local.is_empty()));
        if !had {
            flushes += 1;
            if let Err(err) = conntrack::delete(17, dst, port, None) {
                tracing::warn!(%err, port, "cannot flush UDP conntrack entries");
            }
        }
    }
    (flushes, purged)
}

/// Deletes affinity entries of one frontend whose stored slot is in
/// `slots` (their endpoint changed or left).
fn purge_affinity(fam: Fam, dst: Option<IpAddr>, proto: u8, port: u16, slots: &[u32]) -> usize {
    let set = affinity_set(fam);
    let entries = match nft::list_elements(Family::Inet, TABLE, &set) {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!(%err, "cannot list affinity entries");
            return 0;
        }
    };
    let alen = if fam == Fam::V4 { 4 } else { 16 };
    let dst_bytes: Option<Vec<u8>> = dst.map(|ip| match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    });
    let pb = port.to_be_bytes();
    let doomed: Vec<Element> = entries
        .into_iter()
        .filter(|e| {
            let k = &e.key;
            if k.len() != 2 * alen + 8 {
                return false;
            }
            let d = &k[alen..2 * alen];
            let p = k[2 * alen];
            let port_ok = k[2 * alen + 4..2 * alen + 6] == pb;
            let slot = match &e.data {
                ElementData::Value(v) => v
                    .get(0..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                _ => None,
            };
            dst_bytes.as_deref().is_none_or(|x| x == d)
                && p == proto
                && port_ok
                && slot.is_some_and(|s| slots.contains(&s))
        })
        .map(|e| Element::new(e.key))
        .collect();
    if doomed.is_empty() {
        return 0;
    }
    let n = doomed.len();
    // Destroy: an entry that expired meanwhile is no error.
    let mut tx = Transaction::new();
    tx.destroy(&set, doomed);
    if let Err(err) = nft::commit(Family::Inet, TABLE, &tx) {
        // What is left expires on its own.
        tracing::debug!(%err, "affinity purge incomplete");
        return 0;
    }
    n
}

/// Whether the proxy's table is in the kernel (the agent re-asserts it
/// when someone deleted it).
pub fn table_present() -> Result<bool, ProxyError> {
    nft::table_exists(Family::Inet, TABLE).map_err(kernel_err("looking up the proxy table"))
}

/// Removes the table (`--cleanup`); the agent itself never does.
pub fn delete_table() -> Result<(), ProxyError> {
    nft::apply_script(&layout::delete_script()).map_err(kernel_err("deleting the proxy table"))
}

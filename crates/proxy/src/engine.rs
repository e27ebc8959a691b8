//! The apply step: makes the kernel's `inet podwire-proxy` table match a
//! [`Ruleset`], keeping what was committed in memory so each sync sends
//! only the difference.
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_kernel::nft::{self, Family, SetElement, SetOp};

use crate::compile::{CompileOptions, Frontend, Ruleset, ServiceKey, ServiceRules, Target};
use crate::error::ProxyError;
use crate::layout::{
    self, ElemKey, Fam, LOCAL_OFFSET, LbChain, SetId, TABLE, Value, affinity_set, encode_element,
};

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

/// A Service whose fragment changed: (key, before, after).
type Change = (
    ServiceKey,
    Option<Arc<ServiceRules>>,
    Option<Arc<ServiceRules>>,
);

/// Contributions to one element: (owner, value, comment), sorted by owner.
type Owners = Vec<(Arc<ServiceKey>, Value, Arc<str>)>;

/// What the kernel holds for one element: its value and its comment.
type Held = (Value, Arc<str>);

/// The element as sent: key, value and the comment naming its Service.
fn encode_held(k: &ElemKey, held: &Held) -> SetElement {
    let mut element = encode_element(k, &held.0);
    element.comment = Some(held.1.clone());
    element
}

#[derive(Debug)]
struct Committed {
    options: CompileOptions,
    /// Generated chains known to exist in the kernel.
    kernel_chains: BTreeSet<LbChain>,
    chain_refs: HashMap<LbChain, usize>,
    services: BTreeMap<ServiceKey, Arc<ServiceRules>>,
    owners: HashMap<ElemKey, Owners>,
    /// The effective value (and comment) of every element in the kernel.
    kernel: HashMap<ElemKey, Held>,
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
        let full = match &self.committed {
            None => true,
            Some(c) => c.options != desired.options,
        };
        let result = if full {
            self.full_sync(desired)
        } else {
            self.incremental_sync(desired, keys)
        };
        match result {
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

    fn full_sync(&mut self, desired: &Ruleset) -> Result<SyncReport, ProxyError> {
        let mut report = SyncReport {
            full: true,
            services_changed: desired.services.len(),
            ..Default::default()
        };
        let mut chain_refs: HashMap<LbChain, usize> = HashMap::new();
        let mut owners: HashMap<ElemKey, Owners> = HashMap::new();
        for (key, rules) in &desired.services {
            let owner = Arc::new(key.clone());
            for c in &rules.chains {
                *chain_refs.entry(*c).or_default() += 1;
            }
            for ((k, v), comment) in rules.elements.iter().zip(&rules.comments) {
                // Services are visited in key order: pushing keeps owners sorted.
                owners.entry(k.clone()).or_default().push((
                    owner.clone(),
                    v.clone(),
                    comment.clone(),
                ));
            }
        }
        let chains: BTreeSet<LbChain> = chain_refs.keys().copied().collect();
        nft::apply_script(&layout::structure_script(
            &desired.options.structure,
            &chains,
        ))
        .map_err(|e| ProxyError::Structure(e.to_string()))?;
        report.structure_loaded = true;

        let mut kernel = HashMap::with_capacity(owners.len());
        let mut by_set: BTreeMap<SetId, Vec<SetElement>> = BTreeMap::new();
        for (k, list) in &owners {
            let held: Held = (list[0].1.clone(), list[0].2.clone());
            by_set.entry(k.set).or_default().push(encode_held(k, &held));
            kernel.insert(k.clone(), held);
        }
        let mut ops: Vec<SetOp> = SetId::all()
            .map(|set| SetOp::Flush { set: set.name() })
            .collect();
        for (set, elements) in by_set {
            ops.push(SetOp::Add {
                set: set.name(),
                elements,
            });
        }
        let stats = nft::commit_set_ops(Family::Inet, TABLE, &ops).map_err(|source| {
            ProxyError::Elements {
                elements: kernel.len(),
                source,
            }
        })?;
        report.elements_added = kernel.len();
        report.elements_total = kernel.len();
        report.netlink_bytes = stats.bytes;
        report.netlink_messages = stats.messages;

        // Generated chains nobody needs (a previous run's, or ours before
        // a failure) go now that no element names them.
        let existing = nft::list_chains(Family::Inet, TABLE)
            .map_err(kernel_err("listing the proxy's chains"))?;
        let wanted: HashSet<String> = chains.iter().map(LbChain::name).collect();
        let stale: Vec<String> = existing
            .into_iter()
            .filter(|c| LbChain::is_generated_name(c) && !wanted.contains(c))
            .collect();
        if !stale.is_empty() {
            match nft::delete_chains(Family::Inet, TABLE, &stale) {
                Ok(()) => report.chains_deleted = stale.len(),
                Err(err) => tracing::warn!(%err, "cannot delete unused proxy chains; will retry"),
            }
        }
        self.committed = Some(Committed {
            options: desired.options.clone(),
            kernel_chains: chains,
            chain_refs,
            services: desired.services.clone(),
            owners,
            kernel,
        });
        Ok(report)
    }

    fn incremental_sync(
        &mut self,
        desired: &Ruleset,
        keys: Option<&[ServiceKey]>,
    ) -> Result<SyncReport, ProxyError> {
        let mut report = SyncReport::default();
        let Some(c) = self.committed.as_mut() else {
            return Err(ProxyError::Structure("no committed state".into()));
        };
        // Which Services changed: a merge walk of two sorted maps.
        let mut changed: Vec<Change> = Vec::new();
        if let Some(keys) = keys {
            let mut seen = HashSet::new();
            for key in keys.iter().filter(|k| seen.insert(*k)) {
                let old = c.services.get(key);
                let new = desired.services.get(key);
                let same = match (old, new) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                    _ => false,
                };
                if !same {
                    changed.push((key.clone(), old.cloned(), new.cloned()));
                }
            }
        } else {
            let mut old = c.services.iter().peekable();
            let mut new = desired.services.iter().peekable();
            loop {
                match (old.peek(), new.peek()) {
                    (None, None) => break,
                    (Some((ko, vo)), Some((kn, vn))) if ko == kn => {
                        if !Arc::ptr_eq(vo, vn) && vo != vn {
                            changed.push(((*ko).clone(), Some((*vo).clone()), Some((*vn).clone())));
                        }
                        old.next();
                        new.next();
                    }
                    (Some((ko, vo)), Some((kn, _))) if ko < kn => {
                        changed.push(((*ko).clone(), Some((*vo).clone()), None));
                        old.next();
                    }
                    (Some(_), Some((kn, vn))) | (None, Some((kn, vn))) => {
                        changed.push(((*kn).clone(), None, Some((*vn).clone())));
                        new.next();
                    }
                    (Some((ko, vo)), None) => {
                        changed.push(((*ko).clone(), Some((*vo).clone()), None));
                        old.next();
                    }
                }
            }
        }
        report.services_changed = changed.len();
        if changed.is_empty() {
            report.elements_total = c.kernel.len();
            return Ok(report);
        }

        // New owners and chain references (applied to copies first: if the
        // commit fails the whole committed state is dropped anyway).
        let mut touched: Vec<ElemKey> = Vec::new();
        let mut new_chains: BTreeSet<LbChain> = BTreeSet::new();
        for (key, old, new) in &changed {
            if let Some(old) = old {
                for ch in &old.chains {
                    if let Some(n) = c.chain_refs.get_mut(ch) {
                        *n = n.saturating_sub(1);
                    }
                }
                for (k, _) in &old.elements {
                    if let Some(list) = c.owners.get_mut(k) {
                        list.retain(|(o, _, _)| o.as_ref() != key);
                        if list.is_empty() {
                            c.owners.remove(k);
                        }
                    }
                    touched.push(k.clone());
                }
            }
            if let Some(new) = new {
                let owner = Arc::new(key.clone());
                for ch in &new.chains {
                    *c.chain_refs.entry(*ch).or_default() += 1;
                    if !c.kernel_chains.contains(ch) {
                        new_chains.insert(*ch);
                    }
                }
                for ((k, v), comment) in new.elements.iter().zip(&new.comments) {
                    let list = c.owners.entry(k.clone()).or_default();
                    let pos = list.partition_point(|(o, _, _)| o.as_ref() < key);
                    list.insert(pos, (owner.clone(), v.clone(), comment.clone()));
                    touched.push(k.clone());
                }
            }
        }
        if !new_chains.is_empty() {
            let all: BTreeSet<LbChain> = c.kernel_chains.union(&new_chains).copied().collect();
            nft::apply_script(&layout::structure_script(&c.options.structure, &all))
                .map_err(|e| ProxyError::Structure(e.to_string()))?;
            c.kernel_chains = all;
            report.structure_loaded = true;
        }

        let mut deletes: BTreeMap<SetId, Vec<SetElement>> = BTreeMap::new();
        let mut adds: BTreeMap<SetId, Vec<SetElement>> = BTreeMap::new();
        let mut kernel_changes: Vec<(ElemKey, Option<Held>)> = Vec::new();
        let mut done: HashSet<&ElemKey> = HashSet::new();
        for k in &touched {
            if !done.insert(k) {
                continue;
            }
            let want: Option<Held> = c.owners.get(k).map(|l| (l[0].1.clone(), l[0].2.clone()));
            let have = c.kernel.get(k);
            if want.as_ref() == have {
                continue;
            }
            if let Some(v) = have {
                deletes.entry(k.set).or_default().push(encode_held(k, v));
                report.elements_deleted += 1;
            }
            if let Some(v) = &want {
                adds.entry(k.set).or_default().push(encode_held(k, v));
                report.elements_added += 1;
            }
            kernel_changes.push((k.clone(), want));
        }
        let mut ops: Vec<SetOp> = deletes
            .into_iter()
            .map(|(set, elements)| SetOp::Delete {
                set: set.name(),
                elements,
            })
            .collect();
        ops.extend(adds.into_iter().map(|(set, elements)| SetOp::Add {
            set: set.name(),
            elements,
        }));
        let stats = nft::commit_set_ops(Family::Inet, TABLE, &ops).map_err(|source| {
            ProxyError::Elements {
                elements: report.elements_added + report.elements_deleted,
                source,
            }
        })?;
        report.netlink_bytes = stats.bytes;
        report.netlink_messages = stats.messages;
        for (k, v) in kernel_changes {
            match v {
                Some(v) => c.kernel.insert(k, v),
                None => c.kernel.remove(&k),
            };
        }
        for (key, _, new) in &changed {
            match new {
                Some(n) => c.services.insert(key.clone(), n.clone()),
                None => c.services.remove(key),
            };
        }
        report.elements_total = c.kernel.len();

        // Chains no element names any more.
        let unused: Vec<LbChain> = c
            .chain_refs
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(ch, _)| *ch)
            .collect();
        if !unused.is_empty() {
            for ch in &unused {
                c.chain_refs.remove(ch);
            }
            let names: Vec<String> = unused
                .iter()
                .filter(|ch| c.kernel_chains.contains(ch))
                // A masq chain goes before the chain it jumps to.
                .map(LbChain::name)
                .collect();
            let mut names = names;
            names.sort_by_key(|n| !n.ends_with("-masq"));
            match nft::delete_chains(Family::Inet, TABLE, &names) {
                Ok(()) => {
                    report.chains_deleted = names.len();
                    for ch in &unused {
                        c.kernel_chains.remove(ch);
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, "unused proxy chains stay until the next full sync")
                }
            }
        }

        if !self.skip_cleanup {
            for (_, old, new) in &changed {
                let (f, a) = cleanup(old.as_deref(), new.as_deref());
                report.conntrack_flushes += f;
                report.affinity_purged += a;
            }
        }
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
                if let Err(err) = nft::delete_conntrack(17, dst, port, Some(ip)) {
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
            if let Err(err) = nft::delete_conntrack(17, dst, port, None) {
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
    let doomed: Vec<SetElement> = entries
        .into_iter()
        .filter(|e| {
            let k = &e.key;
            if k.len() != 2 * alen + 8 {
                return false;
            }
            let d = &k[alen..2 * alen];
            let p = k[2 * alen];
            let port_ok = k[2 * alen + 4..2 * alen + 6] == pb;
            let slot = e
                .value
                .as_deref()
                .and_then(|v| v.get(0..4))
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            dst_bytes.as_deref().is_none_or(|x| x == d)
                && p == proto
                && port_ok
                && slot.is_some_and(|s| slots.contains(&s))
        })
        .map(|e| SetElement {
            key: e.key,
            key_end: None,
            data: nft::SetData::None,
            comment: None,
        })
        .collect();
    if doomed.is_empty() {
        return 0;
    }
    let n = doomed.len();
    if let Err(err) = nft::commit_set_ops(
        Family::Inet,
        TABLE,
        &[SetOp::Delete {
            set,
            elements: doomed,
        }],
    ) {
        // An entry may have expired meanwhile; the rest expire on their own.
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

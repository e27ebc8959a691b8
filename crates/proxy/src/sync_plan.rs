//! The deciding half of a proxy sync, pure and unit-tested: from what was
//! committed (or nothing) and the desired [`Ruleset`], a [`SyncPlan`] says
//! which generated chains the structure must declare first, which sets a
//! transaction flushes, which elements it deletes and adds, which chains go
//! after, and what the committed state becomes once the kernel accepted it.
//! [`crate::engine`] carries a plan out (`nft -f`, one netlink
//! transaction, chain deletions, conntrack cleanup) and adopts its state.
//!
//! - **Full** (nothing committed, or the structure options changed; also
//!   every repair and periodic resync): structure with every chain in use,
//!   flush every owned set, add every element, then delete generated
//!   chains the kernel has that nobody uses.
//! - **Incremental**: only the Services that changed; an element claimed
//!   by several Services (owners, sorted by Service key) takes the first
//!   owner's value and leaves with its last owner; an element whose value
//!   changes is a delete + add of the same key; a new chain is declared
//!   before the transaction, a chain with no user left is deleted after
//!   (a `-masq` chain before the chain it jumps to).
//!
//! An incremental plan touches only what changed (no copy of the whole
//! state): its bookkeeping is a delta applied after the commit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::compile::{CompileOptions, Ruleset, ServiceKey, ServiceRules};
use crate::layout::{ElemKey, LbChain, SetId, Value};

/// A Service whose fragment changed: (key, before, after).
pub(crate) type Change = (
    ServiceKey,
    Option<Arc<ServiceRules>>,
    Option<Arc<ServiceRules>>,
);

/// Contributions to one element: (owner, value, comment), sorted by owner.
pub(crate) type Owners = Vec<(Arc<ServiceKey>, Value, Arc<str>)>;

/// What the kernel holds for one element: its value and its comment.
pub(crate) type Held = (Value, Arc<str>);

/// What the engine knows the kernel holds after a successful sync.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub options: CompileOptions,
    /// Generated chains known to exist in the kernel.
    pub kernel_chains: BTreeSet<LbChain>,
    pub chain_refs: HashMap<LbChain, usize>,
    pub services: BTreeMap<ServiceKey, Arc<ServiceRules>>,
    pub owners: HashMap<ElemKey, Owners>,
    /// The effective value (and comment) of every element in the kernel.
    pub kernel: HashMap<ElemKey, Held>,
}

/// Which generated chains go after the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCleanup {
    None,
    /// Full sync: every generated chain in the kernel except these names.
    AllBut(BTreeSet<String>),
    /// Incremental: these chains (`-masq` ones first).
    These(Vec<LbChain>),
}

/// The bookkeeping of an incremental plan, applied after the commit.
#[derive(Debug, Default)]
struct Delta {
    /// The new owner list of each touched element (empty: none left).
    owners: Vec<(ElemKey, Owners)>,
    /// The new reference count of each touched chain.
    chain_refs: Vec<(LbChain, usize)>,
    kernel: Vec<(ElemKey, Option<Held>)>,
    new_chains: BTreeSet<LbChain>,
}

#[derive(Debug)]
enum Adopt {
    Full(Committed),
    Delta(Delta),
}

/// One sync, decided.
#[derive(Debug)]
pub struct SyncPlan {
    pub full: bool,
    pub services_changed: usize,
    /// Load the structure (`nft -f`) declaring these generated chains
    /// before the transaction.
    pub structure: Option<BTreeSet<LbChain>>,
    /// Sets flushed at the start of the transaction.
    pub flush: Vec<SetId>,
    /// Elements deleted, then elements added, in the same transaction.
    pub deletes: Vec<(ElemKey, Held)>,
    pub adds: Vec<(ElemKey, Held)>,
    pub chains_after: ChainCleanup,
    /// The Services that changed (for conntrack and affinity cleanup).
    pub(crate) changed: Vec<Change>,
    adopt: Adopt,
}

/// Decides a sync of `desired` against `committed`; `keys` names the
/// Services that may have changed (None: compare all).
pub(crate) fn plan(
    committed: Option<&Committed>,
    desired: &Ruleset,
    keys: Option<&[ServiceKey]>,
) -> SyncPlan {
    match committed {
        Some(c) if c.options == desired.options => plan_incremental(c, desired, keys),
        _ => plan_full(desired),
    }
}

fn plan_full(desired: &Ruleset) -> SyncPlan {
    let mut chain_refs: HashMap<LbChain, usize> = HashMap::new();
    let mut owners: HashMap<ElemKey, Owners> = HashMap::new();
    for (key, rules) in &desired.services {
        let owner = Arc::new(key.clone());
        for c in &rules.chains {
            *chain_refs.entry(*c).or_default() += 1;
        }
        for ((k, v), comment) in rules.elements.iter().zip(&rules.comments) {
            // Services are visited in key order: pushing keeps owners sorted.
            owners
                .entry(k.clone())
                .or_default()
                .push((owner.clone(), v.clone(), comment.clone()));
        }
    }
    let chains: BTreeSet<LbChain> = chain_refs.keys().copied().collect();
    let mut kernel = HashMap::with_capacity(owners.len());
    let mut adds = Vec::with_capacity(owners.len());
    for (k, list) in &owners {
        let held: Held = (list[0].1.clone(), list[0].2.clone());
        adds.push((k.clone(), held.clone()));
        kernel.insert(k.clone(), held);
    }
    SyncPlan {
        full: true,
        services_changed: desired.services.len(),
        structure: Some(chains.clone()),
        flush: SetId::all().collect(),
        deletes: Vec::new(),
        adds,
        chains_after: ChainCleanup::AllBut(chains.iter().map(LbChain::name).collect()),
        changed: Vec::new(),
        adopt: Adopt::Full(Committed {
            options: desired.options.clone(),
            kernel_chains: chains,
            chain_refs,
            services: desired.services.clone(),
            owners,
            kernel,
        }),
    }
}

/// The Services whose fragment differs between `c` and `desired`.
fn changed_services(c: &Committed, desired: &Ruleset, keys: Option<&[ServiceKey]>) -> Vec<Change> {
    let mut changed: Vec<Change> = Vec::new();
    let same = |a: &Arc<ServiceRules>, b: &Arc<ServiceRules>| Arc::ptr_eq(a, b) || a == b;
    if let Some(keys) = keys {
        let mut seen = HashSet::new();
        for key in keys.iter().filter(|k| seen.insert(*k)) {
            let old = c.services.get(key);
            let new = desired.services.get(key);
            let unchanged = match (old, new) {
                (None, None) => true,
                (Some(a), Some(b)) => same(a, b),
                _ => false,
            };
            if !unchanged {
                changed.push((key.clone(), old.cloned(), new.cloned()));
            }
        }
        return changed;
    }
    // A merge walk of two sorted maps.
    let mut old = c.services.iter().peekable();
    let mut new = desired.services.iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some((ko, vo)), Some((kn, vn))) if ko == kn => {
                if !same(vo, vn) {
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
    changed
}

fn plan_incremental(c: &Committed, desired: &Ruleset, keys: Option<&[ServiceKey]>) -> SyncPlan {
    let changed = changed_services(c, desired, keys);
    // Owner lists and chain counts of what the changes touch, as they
    // will be (copies of the touched entries only).
    let mut owners: HashMap<ElemKey, Owners> = HashMap::new();
    let mut refs: HashMap<LbChain, usize> = HashMap::new();
    let mut touched: Vec<ElemKey> = Vec::new();
    let mut new_chains: BTreeSet<LbChain> = BTreeSet::new();
    for (key, old, new) in &changed {
        if let Some(old) = old {
            for ch in &old.chains {
                let n = refs
                    .entry(*ch)
                    .or_insert_with(|| c.chain_refs.get(ch).copied().unwrap_or(0));
                *n = n.saturating_sub(1);
            }
            for (k, _) in &old.elements {
                let list = owners
                    .entry(k.clone())
                    .or_insert_with(|| c.owners.get(k).cloned().unwrap_or_default());
                list.retain(|(o, _, _)| o.as_ref() != key);
                touched.push(k.clone());
            }
        }
        if let Some(new) = new {
            let owner = Arc::new(key.clone());
            for ch in &new.chains {
                *refs
                    .entry(*ch)
                    .or_insert_with(|| c.chain_refs.get(ch).copied().unwrap_or(0)) += 1;
                if !c.kernel_chains.contains(ch) {
                    new_chains.insert(*ch);
                }
            }
            for ((k, v), comment) in new.elements.iter().zip(&new.comments) {
                let list = owners
                    .entry(k.clone())
                    .or_insert_with(|| c.owners.get(k).cloned().unwrap_or_default());
                let pos = list.partition_point(|(o, _, _)| o.as_ref() < key);
                list.insert(pos, (owner.clone(), v.clone(), comment.clone()));
                touched.push(k.clone());
            }
        }
    }
    let structure =
        (!new_chains.is_empty()).then(|| c.kernel_chains.union(&new_chains).copied().collect());

    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    let mut kernel = Vec::new();
    let mut done: HashSet<&ElemKey> = HashSet::new();
    for k in &touched {
        if !done.insert(k) {
            continue;
        }
        let want: Option<Held> = owners
            .get(k)
            .and_then(|l| l.first())
            .map(|(_, v, comment)| (v.clone(), comment.clone()));
        let have = c.kernel.get(k);
        if want.as_ref() == have {
            continue;
        }
        if let Some(v) = have {
            deletes.push((k.clone(), v.clone()));
        }
        if let Some(v) = &want {
            adds.push((k.clone(), v.clone()));
        }
        kernel.push((k.clone(), want));
    }

    // Chains no element names any more (those in the kernel are deleted).
    let mut unused: Vec<LbChain> = refs
        .iter()
        .filter(|(ch, n)| **n == 0 && c.kernel_chains.contains(ch))
        .map(|(ch, _)| *ch)
        .collect();
    // A masq chain goes before the chain it jumps to.
    unused.sort_by_key(|ch| (!ch.masq, *ch));
    let chains_after = if unused.is_empty() {
        ChainCleanup::None
    } else {
        ChainCleanup::These(unused)
    };
    SyncPlan {
        full: false,
        services_changed: changed.len(),
        structure,
        flush: Vec::new(),
        deletes,
        adds,
        chains_after,
        changed,
        adopt: Adopt::Delta(Delta {
            owners: owners.into_iter().collect(),
            chain_refs: refs.into_iter().collect(),
            kernel,
            new_chains,
        }),
    }
}

impl SyncPlan {
    /// Nothing to send: no structure, no set operation.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.structure.is_none()
            && self.flush.is_empty()
            && self.deletes.is_empty()
            && self.adds.is_empty()
    }

    /// The committed state once the kernel accepted the transaction:
    /// a full plan's own, or `previous` with the delta applied. Chains of
    /// [`ChainCleanup::These`] leave the reference counts here and
    /// `kernel_chains` only when their deletion worked
    /// ([`Committed::chains_deleted`]).
    pub(crate) fn adopt(self, previous: Option<Committed>) -> Option<Committed> {
        let delta = match self.adopt {
            Adopt::Full(c) => return Some(c),
            Adopt::Delta(d) => d,
        };
        let mut c = previous?;
        for (k, list) in delta.owners {
            if list.is_empty() {
                c.owners.remove(&k);
            } else {
                c.owners.insert(k, list);
            }
        }
        for (ch, n) in delta.chain_refs {
            if n == 0 {
                c.chain_refs.remove(&ch);
            } else {
                c.chain_refs.insert(ch, n);
            }
        }
        for (k, v) in delta.kernel {
            match v {
                Some(v) => c.kernel.insert(k, v),
                None => c.kernel.remove(&k),
            };
        }
        c.kernel_chains.extend(delta.new_chains);
        for (key, _, new) in self.changed {
            match new {
                Some(n) => c.services.insert(key, n),
                None => c.services.remove(&key),
            };
        }
        Some(c)
    }
}

impl Committed {
    /// Generated chains the executor deleted from the kernel.
    pub(crate) fn chains_deleted(&mut self, chains: &[LbChain]) {
        for ch in chains {
            self.kernel_chains.remove(ch);
        }
    }
}

#[cfg(test)]
#[path = "sync_plan_tests.rs"]
mod tests;

//! The apply step: makes the kernel's `inet podwire-policy` table match a
//! [`Ruleset`], remembering what it committed so each sync sends only the
//! difference.
//!
//! - **Full sync** (first, after a failure, on request): the structure
//!   through `nft -f` (idempotent, never deletes the table), then ONE
//!   netlink transaction flushing the four sets and adding every element,
//!   then the drop chains nobody uses any more are deleted.
//! - **Incremental sync**: chains of newly answering policies are loaded
//!   first (`nft -f`, adds only), then ONE transaction with the removed
//!   elements and the added ones (a pod whose answering policy changed is
//!   a delete and an add of its key), then unused chains are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use podwire_kernel::nft::{self, Element, Family, Transaction};

use crate::compile::{Element4, Ruleset};
use crate::error::PolicyError;
use crate::layout::{self, EGRESS_ALLOW, EGRESS_MAP, INGRESS_ALLOW, INGRESS_MAP, TABLE};

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub full: bool,
    pub structure_loaded: bool,
    pub elements_added: usize,
    pub elements_deleted: usize,
    pub chains_deleted: usize,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
struct Committed {
    ingress_pods: BTreeMap<Ipv4Addr, String>,
    egress_pods: BTreeMap<Ipv4Addr, String>,
    ingress_allow: BTreeSet<Element4>,
    egress_allow: BTreeSet<Element4>,
    chains: BTreeSet<String>,
}

/// Applies rulesets in the calling thread's network namespace.
#[derive(Debug, Default)]
pub struct Engine {
    log_group: Option<u16>,
    committed: Option<Committed>,
}

fn pods_diff(
    rs: &Ruleset,
    old: &BTreeMap<Ipv4Addr, String>,
    new: &BTreeMap<Ipv4Addr, String>,
    dir: &str,
    del: &mut Vec<Element>,
    add: &mut Vec<Element>,
) {
    for (ip, id) in old {
        if new.get(ip) != Some(id) {
            del.push(layout::pod_element(rs, *ip, &format!("{dir}-{id}")));
        }
    }
    for (ip, id) in new {
        if old.get(ip) != Some(id) {
            add.push(layout::pod_element(rs, *ip, &format!("{dir}-{id}")));
        }
    }
}

fn set_diff(
    rs: &Ruleset,
    old: &BTreeSet<Element4>,
    new: &BTreeSet<Element4>,
    del: &mut Vec<Element>,
    add: &mut Vec<Element>,
) {
    del.extend(old.difference(new).map(|e| layout::allow_element(rs, e)));
    add.extend(new.difference(old).map(|e| layout::allow_element(rs, e)));
}

impl Engine {
    /// An engine whose drop chains log to nflog `log_group` (None: no log).
    pub fn new(log_group: Option<u16>) -> Engine {
        Engine {
            log_group,
            committed: None,
        }
    }

    /// Forgets what was committed: the next sync is a full one.
    pub fn reset(&mut self) {
        self.committed = None;
    }

    /// Makes the table match `rs`; on failure the next sync is a full one.
    pub fn sync(&mut self, rs: &Ruleset) -> Result<SyncReport, PolicyError> {
        let result = match self.committed.take() {
            Some(old) => self.incremental(&old, rs),
            None => self.full(rs),
        };
        if result.is_ok() {
            self.committed = Some(Committed {
                ingress_pods: rs.ingress_pods.clone(),
                egress_pods: rs.egress_pods.clone(),
                ingress_allow: rs.ingress_allow.clone(),
                egress_allow: rs.egress_allow.clone(),
                chains: rs.chains(),
            });
        }
        result
    }

    fn full(&mut self, rs: &Ruleset) -> Result<SyncReport, PolicyError> {
        let start = Instant::now();
        let chains: Vec<String> = rs.chains().into_iter().collect();
        nft::apply_script(&layout::structure_script(rs, &chains, self.log_group))
            .map_err(|e| PolicyError::Structure(e.to_string()))?;
        let dir_elems = |pods: &BTreeMap<Ipv4Addr, String>, dir: &str| -> Vec<Element> {
            pods.iter()
                .map(|(ip, id)| layout::pod_element(rs, *ip, &format!("{dir}-{id}")))
                .collect()
        };
        let mut tx = Transaction::new();
        for set in layout::SETS {
            tx.flush(set);
        }
        let adds = [
            (INGRESS_MAP, dir_elems(&rs.ingress_pods, "in")),
            (EGRESS_MAP, dir_elems(&rs.egress_pods, "eg")),
            (
                INGRESS_ALLOW,
                rs.ingress_allow
                    .iter()
                    .map(|e| layout::allow_element(rs, e))
                    .collect(),
            ),
            (
                EGRESS_ALLOW,
                rs.egress_allow
                    .iter()
                    .map(|e| layout::allow_element(rs, e))
                    .collect(),
            ),
        ];
        let mut added = 0;
        for (set, elements) in adds {
            added += elements.len();
            tx.add(set, elements);
        }
        nft::commit(Family::Inet, TABLE, &tx).map_err(|source| PolicyError::Elements {
            elements: added,
            source,
        })?;
        let keep = rs.chains();
        let stale: Vec<String> = nft::list_chains(Family::Inet, TABLE)
            .map_err(|e| PolicyError::kernel("listing the policy chains", e))?
            .into_iter()
            .filter(|c| (c.starts_with("in-") || c.starts_with("eg-")) && !keep.contains(c))
            .collect();
        if !stale.is_empty() {
            nft::delete_chains(Family::Inet, TABLE, &stale)
                .map_err(|e| PolicyError::kernel("deleting unused policy chains", e))?;
        }
        Ok(SyncReport {
            full: true,
            structure_loaded: true,
            elements_added: added,
            elements_deleted: 0,
            chains_deleted: stale.len(),
            elapsed: start.elapsed(),
        })
    }

    fn incremental(&mut self, old: &Committed, rs: &Ruleset) -> Result<SyncReport, PolicyError> {
        let start = Instant::now();
        let chains = rs.chains();
        let new_chains: Vec<String> = chains.difference(&old.chains).cloned().collect();
        if !new_chains.is_empty() {
            let mut script = String::new();
            for chain in &new_chains {
                script.push_str(&layout::chain_script(
                    chain,
                    &layout::chain_policy(rs, chain),
                    self.log_group,
                ));
            }
            nft::apply_script(&script).map_err(|e| PolicyError::Structure(e.to_string()))?;
        }
        let mut tx = Transaction::new();
        let mut dels = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut adds = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        {
            let [d0, d1, d2, d3] = &mut dels;
            let [a0, a1, a2, a3] = &mut adds;
            pods_diff(rs, &old.ingress_pods, &rs.ingress_pods, "in", d0, a0);
            pods_diff(rs, &old.egress_pods, &rs.egress_pods, "eg", d1, a1);
            set_diff(rs, &old.ingress_allow, &rs.ingress_allow, d2, a2);
            set_diff(rs, &old.egress_allow, &rs.egress_allow, d3, a3);
        }
        let names = [INGRESS_MAP, EGRESS_MAP, INGRESS_ALLOW, EGRESS_ALLOW];
        let (mut added, mut deleted) = (0, 0);
        for (set, elements) in names.iter().zip(dels) {
            deleted += elements.len();
            tx.delete(set, elements);
        }
        for (set, elements) in names.iter().zip(adds) {
            added += elements.len();
            tx.add(set, elements);
        }
        if !tx.is_empty() {
            nft::commit(Family::Inet, TABLE, &tx).map_err(|source| PolicyError::Elements {
                elements: added + deleted,
                source,
            })?;
        }
        let gone: Vec<String> = old.chains.difference(&chains).cloned().collect();
        if !gone.is_empty() {
            nft::delete_chains(Family::Inet, TABLE, &gone)
                .map_err(|e| PolicyError::kernel("deleting unused policy chains", e))?;
        }
        Ok(SyncReport {
            full: false,
            structure_loaded: !new_chains.is_empty(),
            elements_added: added,
            elements_deleted: deleted,
            chains_deleted: gone.len(),
            elapsed: start.elapsed(),
        })
    }
}

/// Whether the table exists in the calling thread's namespace.
pub fn table_present() -> Result<bool, PolicyError> {
    nft::table_exists(Family::Inet, TABLE)
        .map_err(|e| PolicyError::kernel("checking the policy table", e))
}

/// Removes the table (`podwire agent cleanup`).
pub fn delete_table() -> Result<(), PolicyError> {
    nft::delete_table("inet", TABLE)
        .map_err(|e| PolicyError::kernel("deleting the policy table", e))
}

/// Drop counters per chain, read with `nft list table` (for /metrics):
/// chain name -> (packets, bytes).
pub fn drop_counters() -> Result<BTreeMap<String, (u64, u64)>, PolicyError> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", TABLE])
        .output()
        .map_err(|e| PolicyError::Structure(format!("running nft: {e}")))?;
    Ok(parse_counters(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `nft list table` output: counters by chain.
pub fn parse_counters(text: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.strip_suffix(" {").map(str::to_string);
        } else if let (Some(c), Some(rest)) = (&chain, line.strip_prefix("counter packets ")) {
            let mut words = rest.split_whitespace();
            let packets = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let bytes = words.nth(1).and_then(|w| w.parse().ok()).unwrap_or(0);
            out.insert(c.clone(), (packets, bytes));
        }
    }
    out
}

//! Unit tests of the sync plan (no kernel): what a full sync (a repair, a
//! periodic resync) sends, how shared elements follow their owners, when
//! generated chains are declared and deleted, and that adopting a plan
//! leaves the same state a full sync of the same ruleset would.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::compile::{Ruleset, ServiceKey, ServiceRules};
use crate::layout::{Datum, ElemKey, Fam, LbChain, SetId, SetKind, Value};

fn key(name: &str) -> ServiceKey {
    ("apps".to_string(), name.to_string())
}

fn chain(n: u32, masq: bool) -> LbChain {
    LbChain {
        fam: Fam::V4,
        nodeport: false,
        local: false,
        masq,
        n,
        affinity: None,
    }
}

fn vip(ip: &str) -> ElemKey {
    let ip: IpAddr = ip.parse().unwrap();
    ElemKey::new(
        SetId::new(SetKind::Services, Fam::V4),
        vec![Datum::Addr(ip), Datum::Proto(6), Datum::Port(80)],
    )
}

fn hairpin(ip: &str) -> ElemKey {
    let ip: IpAddr = ip.parse().unwrap();
    ElemKey::new(
        SetId::new(SetKind::Hairpin, Fam::V4),
        vec![Datum::Addr(ip), Datum::Addr(ip)],
    )
}

/// A Service: its elements (key, value) and the chains they name.
fn rules(name: &str, elements: &[(ElemKey, Value)], chains: &[LbChain]) -> Arc<ServiceRules> {
    Arc::new(ServiceRules {
        elements: elements.to_vec(),
        comments: elements
            .iter()
            .map(|_| Arc::from(format!("apps/{name}")))
            .collect(),
        chains: chains.iter().copied().collect(),
        ..ServiceRules::default()
    })
}

fn ruleset(services: &[(&str, Arc<ServiceRules>)]) -> Ruleset {
    Ruleset {
        options: Default::default(),
        services: services
            .iter()
            .map(|(n, r)| (key(n), r.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The committed state after a full sync of `rs`.
fn committed(rs: &Ruleset) -> Committed {
    plan(None, rs, None)
        .adopt(None)
        .expect("a full plan adopts")
}

fn keys(list: &[(ElemKey, Held)]) -> Vec<(ElemKey, Value)> {
    let mut out: Vec<(ElemKey, Value)> =
        list.iter().map(|(k, h)| (k.clone(), h.0.clone())).collect();
    out.sort();
    out
}

#[test]
fn a_full_sync_flushes_every_set_and_refills_it_with_every_chain_declared() {
    let lb1 = chain(1, false);
    let lb2 = chain(2, true);
    let rs = ruleset(&[
        (
            "a",
            rules("a", &[(vip("10.96.0.1"), Value::Goto(lb1))], &[lb1]),
        ),
        (
            "b",
            rules("b", &[(vip("10.96.0.2"), Value::Goto(lb2))], &[lb2]),
        ),
    ]);
    let p = plan(None, &rs, None);
    assert!(p.full);
    assert_eq!(p.services_changed, 2);
    assert_eq!(p.flush.len(), SetId::all().count(), "every owned set");
    assert!(p.deletes.is_empty());
    assert_eq!(
        keys(&p.adds),
        vec![
            (vip("10.96.0.1"), Value::Goto(lb1)),
            (vip("10.96.0.2"), Value::Goto(lb2))
        ]
    );
    assert_eq!(p.structure, Some(BTreeSet::from([lb1, lb2])));
    assert_eq!(
        p.chains_after,
        ChainCleanup::AllBut(BTreeSet::from([lb1.name(), lb2.name()])),
        "other generated chains in the kernel go"
    );
}

#[test]
fn what_a_repair_sends_does_not_depend_on_what_was_committed() {
    // A repair forgets the committed state (the kernel was changed behind
    // our back): the plan is the same full plan as after a restart.
    let lb1 = chain(1, false);
    let rs = ruleset(&[(
        "a",
        rules("a", &[(vip("10.96.0.1"), Value::Goto(lb1))], &[lb1]),
    )]);
    let c = committed(&rs);
    let again = plan(Some(&c), &rs, None);
    assert!(
        !again.full && again.is_empty(),
        "nothing changed: nothing to send"
    );
    let repair = plan(None, &rs, None);
    assert!(repair.full);
    assert_eq!(keys(&repair.adds), keys(&plan(None, &rs, None).adds));
    assert_eq!(repair.flush.len(), SetId::all().count());
}

#[test]
fn a_shared_element_takes_the_first_owner_and_leaves_with_the_last() {
    let pod = hairpin("10.244.1.5");
    let a = rules("a", &[(pod.clone(), Value::None)], &[]);
    let b = rules("b", &[(pod.clone(), Value::None)], &[]);
    let both = ruleset(&[("a", a.clone()), ("b", b.clone())]);
    let c = committed(&both);
    assert_eq!(c.owners[&pod].len(), 2);

    // The first owner leaves: the element stays (same value, b's comment).
    let only_b = ruleset(&[("b", b.clone())]);
    let p = plan(Some(&c), &only_b, Some(&[key("a")]));
    assert_eq!(p.services_changed, 1);
    assert_eq!(keys(&p.deletes), vec![(pod.clone(), Value::None)]);
    assert_eq!(keys(&p.adds), vec![(pod.clone(), Value::None)]);
    assert_eq!(
        &*p.adds[0].1.1, "apps/b",
        "now named after its remaining owner"
    );
    let c = p.adopt(Some(c)).expect("adopted");
    assert_eq!(c.owners[&pod].len(), 1);

    // The last owner leaves: the element goes.
    let none = ruleset(&[]);
    let p = plan(Some(&c), &none, Some(&[key("b")]));
    assert_eq!(keys(&p.deletes), vec![(pod.clone(), Value::None)]);
    assert!(p.adds.is_empty());
    let c = p.adopt(Some(c)).expect("adopted");
    assert!(c.kernel.is_empty() && c.owners.is_empty() && c.services.is_empty());
}

#[test]
fn a_changed_value_is_a_delete_and_an_add_of_the_same_key() {
    let lb1 = chain(1, false);
    let lb2 = chain(2, false);
    let before = ruleset(&[(
        "a",
        rules("a", &[(vip("10.96.0.1"), Value::Goto(lb1))], &[lb1]),
    )]);
    let after = ruleset(&[(
        "a",
        rules("a", &[(vip("10.96.0.1"), Value::Goto(lb2))], &[lb2]),
    )]);
    let c = committed(&before);
    let p = plan(Some(&c), &after, None);
    assert!(!p.full);
    assert_eq!(keys(&p.deletes), vec![(vip("10.96.0.1"), Value::Goto(lb1))]);
    assert_eq!(keys(&p.adds), vec![(vip("10.96.0.1"), Value::Goto(lb2))]);
    // The new chain is declared before the transaction (with the ones in
    // use), the old one deleted after.
    assert_eq!(p.structure, Some(BTreeSet::from([lb1, lb2])));
    assert_eq!(p.chains_after, ChainCleanup::These(vec![lb1]));
    let mut c = p.adopt(Some(c)).expect("adopted");
    c.chains_deleted(&[lb1]);
    assert_eq!(c.kernel_chains, BTreeSet::from([lb2]));
    assert_eq!(c.chain_refs.get(&lb1), None);
    assert_eq!(c.chain_refs.get(&lb2), Some(&1));
}

#[test]
fn a_chain_still_used_by_another_service_stays_and_masq_chains_go_first() {
    let lb1 = chain(1, false);
    let lb1m = chain(1, true);
    let rs = ruleset(&[
        (
            "a",
            rules("a", &[(vip("10.96.0.1"), Value::Goto(lb1m))], &[lb1, lb1m]),
        ),
        (
            "b",
            rules("b", &[(vip("10.96.0.2"), Value::Goto(lb1))], &[lb1]),
        ),
    ]);
    let c = committed(&rs);
    // a leaves: lb1 is still b's, lb1-masq is nobody's.
    let p = plan(
        Some(&c),
        &ruleset(&[("b", rs.services[&key("b")].clone())]),
        None,
    );
    assert_eq!(p.structure, None, "no new chain: no nft -f");
    assert_eq!(p.chains_after, ChainCleanup::These(vec![lb1m]));
    // Both leave: the masq chain is deleted before the chain it jumps to.
    let p = plan(Some(&c), &ruleset(&[]), None);
    assert_eq!(p.chains_after, ChainCleanup::These(vec![lb1m, lb1]));
}

#[test]
fn adopting_incremental_plans_ends_where_a_full_sync_would() {
    let lb1 = chain(1, false);
    let lb3 = chain(3, false);
    let steps = [
        ruleset(&[(
            "a",
            rules("a", &[(vip("10.96.0.1"), Value::Goto(lb1))], &[lb1]),
        )]),
        ruleset(&[
            (
                "a",
                rules("a", &[(vip("10.96.0.1"), Value::Goto(lb3))], &[lb3]),
            ),
            (
                "b",
                rules("b", &[(hairpin("10.244.1.9"), Value::None)], &[]),
            ),
        ]),
        ruleset(&[(
            "b",
            rules("b", &[(hairpin("10.244.1.9"), Value::None)], &[]),
        )]),
    ];
    let mut c = committed(&steps[0]);
    for rs in &steps[1..] {
        let p = plan(Some(&c), rs, None);
        let gone = match &p.chains_after {
            ChainCleanup::These(list) => list.clone(),
            _ => Vec::new(),
        };
        c = p.adopt(Some(c)).expect("adopted");
        c.chains_deleted(&gone);
        let full = committed(rs);
        assert_eq!(c.kernel, full.kernel);
        assert_eq!(c.owners, full.owners);
        assert_eq!(c.kernel_chains, full.kernel_chains);
        assert_eq!(c.services, full.services);
        let refs: BTreeMap<_, _> = c.chain_refs.iter().filter(|(_, n)| **n > 0).collect();
        assert_eq!(refs, full.chain_refs.iter().collect());
    }
}

#[test]
fn changed_options_make_a_full_plan() {
    let rs = ruleset(&[]);
    let c = committed(&rs);
    let mut other = rs.clone();
    other.options.node_name = "node09".into();
    assert!(plan(Some(&c), &other, None).full);
}

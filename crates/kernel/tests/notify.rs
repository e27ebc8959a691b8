//! Change notifications in a namespace this test creates (unique name,
//! removed by a guard even on failure): a foreign `nft` (run as another
//! program) is seen with its table, chain and committing program, and
//! changes this process makes (an `nft` it runs, its netlink sockets) are
//! recognised as its own. Same for a route deleted with `ip` versus one
//! deleted through podwire's netlink. Needs root.

mod common;

use common::{Namespaces, sh};
use std::time::{Duration, Instant};

use podwire_kernel::notify::{ChangeListener, NftObject, Notification};
use podwire_kernel::own::is_own;
use podwire_kernel::{Netlink, Netns, nft};

/// Reads until `done` says the collected notifications are enough (or 3 s).
fn collect(l: &mut ChangeListener, done: impl Fn(&[Notification]) -> bool) -> Vec<Notification> {
    let end = Instant::now() + Duration::from_secs(3);
    let mut out = Vec::new();
    while Instant::now() < end && !done(&out) {
        if l.wait(Duration::from_millis(50)).expect("poll") {
            out.extend(l.read().expect("read"));
        }
    }
    out
}

fn nft_changes(notes: &[Notification]) -> Vec<(NftObject, bool, String, Option<String>, u32)> {
    notes
        .iter()
        .filter_map(|n| match n {
            Notification::Nft(c) => Some((
                c.object,
                c.removed,
                c.table.clone(),
                c.name.clone(),
                c.portid,
            )),
            _ => None,
        })
        .collect()
}

fn setup(tag: &str) -> (Namespaces, Netns) {
    let name = format!("pwn{}{tag}", std::process::id());
    let guard = Namespaces(vec![name.clone()]);
    sh(&format!(
        "ip netns add {name}; ip -n {name} link set lo up; \
         ip -n {name} link add pwv0 type veth peer name pwv1; \
         ip -n {name} addr add 10.88.0.1/24 dev pwv0; \
         ip -n {name} link set pwv0 up; ip -n {name} link set pwv1 up"
    ));
    let ns = Netns::open(format!("/run/netns/{name}")).expect("open netns");
    (guard, ns)
}

#[test]
fn a_foreign_nft_is_seen_with_its_table_and_program_and_ours_as_ours() {
    let (guard, ns) = setup("n");
    let name = guard.0[0].clone();
    let mut l = ns
        .run(|| ChangeListener::new(false))
        .expect("enter")
        .expect("listener");

    // Ours: an nft this process runs (the way podwire loads structure).
    ns.run(|| {
        nft::apply_script("table inet podwire-proxy {\n chain services {\n  counter\n }\n}\n")
    })
    .expect("enter")
    .expect("nft -f");
    let notes = collect(&mut l, |n| {
        n.iter().any(|x| matches!(x, Notification::Commit(_)))
    });
    let own = nft_changes(&notes);
    assert!(
        own.iter()
            .any(|c| c.0 == NftObject::Table && c.2 == "podwire-proxy"),
        "{notes:?}"
    );
    assert!(
        own.iter().all(|c| is_own(c.4)),
        "our nft is ours: {notes:?}"
    );

    // Ours: a change through podwire's own nfnetlink socket.
    ns.run(|| nft::delete_chains(nft::Family::Inet, "podwire-proxy", &["services".into()]))
        .expect("enter")
        .expect("delete chain");
    let notes = collect(&mut l, |n| {
        n.iter().any(|x| matches!(x, Notification::Commit(_)))
    });
    let own = nft_changes(&notes);
    assert!(
        own.iter()
            .any(|c| c.0 == NftObject::Chain && c.1 && c.3.as_deref() == Some("services")),
        "{notes:?}"
    );
    assert!(
        own.iter().all(|c| is_own(c.4)),
        "our socket is ours: {notes:?}"
    );

    // Foreign: someone runs nft in the namespace (a process we did not
    // spawn through podwire_kernel).
    sh(&format!(
        "ip netns exec {name} nft 'add chain inet podwire-proxy filter {{ type filter hook forward priority 0; }}'; \
         ip netns exec {name} nft add rule inet podwire-proxy filter accept; \
         ip netns exec {name} nft flush table inet podwire-proxy"
    ));
    let notes = collect(&mut l, |n| {
        n.iter()
            .filter(|x| matches!(x, Notification::Commit(_)))
            .count()
            >= 3
    });
    let foreign = nft_changes(&notes);
    let flushed = foreign
        .iter()
        .find(|c| c.0 == NftObject::Rule && c.1)
        .unwrap_or_else(|| panic!("the flush's DELRULE: {notes:?}"));
    assert_eq!(flushed.2, "podwire-proxy");
    assert_eq!(flushed.3.as_deref(), Some("filter"));
    assert!(!is_own(flushed.4), "a foreign nft is not ours: {notes:?}");
    let commit = notes
        .iter()
        .find_map(|n| match n {
            Notification::Commit(c) if c.portid == flushed.4 => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("a NEWGEN for the flush: {notes:?}"));
    assert_eq!(commit.comm.as_deref(), Some("nft"), "{commit:?}");
    assert!(commit.pid.is_some_and(|p| p > 0), "{commit:?}");
}

#[test]
fn a_route_deleted_by_someone_else_is_seen_and_ours_is_ours() {
    let (guard, ns) = setup("r");
    let name = guard.0[0].clone();
    let mut l = ns
        .run(|| ChangeListener::new(false))
        .expect("enter")
        .expect("listener");
    sh(&format!(
        "ip -n {name} route add 10.99.1.0/24 via 10.88.0.2 proto 112; \
         ip -n {name} route add 10.99.2.0/24 via 10.88.0.2 proto 112; \
         ip -n {name} route del 10.99.1.0/24"
    ));
    let notes = collect(&mut l, |n| {
        n.iter()
            .any(|x| matches!(x, Notification::Route { removed: true, .. }))
    });
    let deleted = notes
        .iter()
        .find_map(|n| match n {
            Notification::Route {
                removed: true,
                dst,
                protocol,
                portid,
                ..
            } => Some((*dst, *protocol, *portid)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("RTM_DELROUTE: {notes:?}"));
    assert_eq!(deleted.0, "10.99.1.0/24".parse().unwrap());
    assert_eq!(deleted.1, 112);
    assert!(!is_own(deleted.2), "ip's change is not ours");

    // Ours: podwire's own netlink socket deletes the other one.
    let mut nl = Netlink::in_netns(&ns).expect("netlink");
    assert!(
        nl.delete_route_to("10.99.2.0/24".parse().unwrap(), Some(112))
            .expect("delete")
    );
    let notes = collect(&mut l, |n| {
        n.iter()
            .any(|x| matches!(x, Notification::Route { removed: true, .. }))
    });
    let portid = notes
        .iter()
        .find_map(|n| match n {
            Notification::Route {
                removed: true,
                portid,
                ..
            } => Some(*portid),
            _ => None,
        })
        .unwrap_or_else(|| panic!("RTM_DELROUTE: {notes:?}"));
    assert!(is_own(portid), "our netlink socket's change is ours");

    // A link going away is named.
    sh(&format!("ip -n {name} link del pwv0"));
    let notes = collect(&mut l, |n| {
        n.iter()
            .any(|x| matches!(x, Notification::Link { removed: true, .. }))
    });
    assert!(
        notes
            .iter()
            .any(|n| matches!(n, Notification::Link { removed: true, name, .. } if name == "pwv0")),
        "{notes:?}"
    );
}

//! The element API against a real kernel, in a namespace this test creates
//! (unique name, removed by a guard even on failure): what a transaction
//! adds lists back the same, with owner tag, comment, verdict and range;
//! destroying what is absent is no error while deleting it is; a large
//! transaction (many messages, a raised send buffer) is still one commit.
//! Needs root.

mod common;

use common::{Namespaces, sh};

use podwire_kernel::Netns;
use podwire_kernel::nft::{self, Element, ElementData, Family, Field, Transaction, Verdict};

const TABLE: &str = "pwtest";

fn setup(tag: &str) -> (Namespaces, Netns) {
    let name = format!("pwe{}{tag}", std::process::id());
    let guard = Namespaces(vec![name.clone()]);
    sh(&format!("ip netns add {name}"));
    let ns = Netns::open(format!("/run/netns/{name}")).expect("open netns");
    ns.run(|| {
        nft::apply_script(&format!(
            "table inet {TABLE} {{\n\
             map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
             map jumps {{ type ipv4_addr : verdict; }}\n\
             set ranges {{ type ipv4_addr . inet_service; flags interval; }}\n\
             chain c1 {{ }}\n}}\n"
        ))
    })
    .expect("enter")
    .expect("load the table");
    (guard, ns)
}

fn port(p: u16) -> Element {
    Element::keyed(&[Field::Proto(6), Field::Port(p)])
        .with_value(&[Field::Addr("10.1.0.5".parse().unwrap()), Field::Port(80)])
}

#[test]
fn elements_list_back_as_added_and_destroy_tolerates_absence() {
    let (_guard, ns) = setup("a");
    ns.run(|| {
        let mut tagged = port(8080);
        tagged.owner = Some("podwire net c1 eth0".into());
        tagged.comment = Some("web".into());
        let jump = Element::keyed(&[Field::Addr("10.1.0.5".parse().unwrap())])
            .with_verdict(Verdict::Jump("c1".into()));
        let range = Element {
            key: nft::encode_concat(&[Field::Addr("10.0.0.0".parse().unwrap()), Field::Port(1)]),
            key_end: Some(nft::encode_concat(&[
                Field::Addr("10.0.0.255".parse().unwrap()),
                Field::Port(99),
            ])),
            data: ElementData::None,
            comment: None,
            owner: None,
        };
        let mut tx = Transaction::new();
        tx.add("ports", [tagged.clone(), port(8081)]);
        tx.add("jumps", [jump.clone()]);
        tx.add("ranges", [range.clone()]);
        let stats = nft::commit(Family::Inet, TABLE, &tx).expect("add");
        assert_eq!((stats.elements, stats.messages), (4, 3));

        let ports = nft::list_elements(Family::Inet, TABLE, "ports").expect("list");
        assert_eq!(ports.len(), 2);
        let listed = ports
            .iter()
            .find(|e| e.same_entry(&tagged))
            .expect("tagged");
        assert_eq!(listed.owner.as_deref(), Some("podwire net c1 eth0"));
        assert_eq!(listed.comment.as_deref(), Some("web"));
        assert_eq!(
            nft::list_elements(Family::Inet, TABLE, "jumps").unwrap(),
            vec![jump]
        );
        let ranges = nft::list_elements(Family::Inet, TABLE, "ranges").unwrap();
        assert!(ranges.iter().any(|e| e.same_entry(&range)), "{ranges:?}");

        // Destroy: absent (9999) is fine, present ones go.
        let mut tx = Transaction::new();
        tx.destroy("ports", [port(8081), port(9999)]);
        nft::commit(Family::Inet, TABLE, &tx).expect("destroy");
        assert_eq!(
            nft::count_elements(Family::Inet, TABLE, "ports").unwrap(),
            1
        );
        // Delete: an absent element fails the whole transaction.
        let mut tx = Transaction::new();
        tx.delete("ports", [tagged.clone(), port(9999)]);
        let err = nft::commit(Family::Inet, TABLE, &tx).expect_err("absent");
        assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
        assert_eq!(
            nft::count_elements(Family::Inet, TABLE, "ports").unwrap(),
            1
        );
        // Missing sets list as empty.
        assert!(
            nft::list_elements(Family::Inet, TABLE, "nope")
                .unwrap()
                .is_empty()
        );
        assert!(
            nft::list_elements(Family::Inet, "nope", "ports")
                .unwrap()
                .is_empty()
        );
    })
    .expect("enter");
}

#[test]
fn a_large_transaction_is_one_commit() {
    let (_guard, ns) = setup("b");
    ns.run(|| {
        let mut tx = Transaction::new();
        tx.flush("ports");
        tx.add("ports", (1..=30000u16).map(port));
        let stats = nft::commit(Family::Inet, TABLE, &tx).expect("add");
        assert!(stats.messages > 10 && stats.bytes > 200 * 1024, "{stats:?}");
        assert_eq!(
            nft::count_elements(Family::Inet, TABLE, "ports").unwrap(),
            30000
        );
        // Replace them all: flush plus add in one transaction.
        let mut tx = Transaction::new();
        tx.flush("ports");
        tx.add("ports", (1..=10u16).map(port));
        nft::commit(Family::Inet, TABLE, &tx).expect("replace");
        assert_eq!(
            nft::count_elements(Family::Inet, TABLE, "ports").unwrap(),
            10
        );
    })
    .expect("enter");
}

//! Unit tests of element encoding, decoding and transaction building.

use super::*;

fn goto(i: u32) -> Element {
    Element::new(i.to_be_bytes().to_vec()).with_verdict(Verdict::Goto("lb4-c-3".into()))
}

/// The NFTA_LIST_ELEM payloads inside one message body.
fn listed(body: &[u8]) -> Vec<Vec<u8>> {
    attributes(body)
        .into_iter()
        .filter(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
        .flat_map(|(_, list)| attributes(list).into_iter().map(|(_, e)| e.to_vec()))
        .collect()
}

fn encoded(element: &Element, with_data: bool) -> Vec<u8> {
    let mut list = Attrs::new();
    put_element(&mut list, element, with_data);
    attributes(&list.buf)[0].1.to_vec()
}

#[test]
fn big_element_lists_are_split_under_the_attribute_limit() {
    let mut tx = Transaction::new();
    tx.flush("svc4");
    tx.add("svc4", (0..5000u32).map(goto));
    let msgs = messages("t", tx.ops());
    assert!(msgs.len() > 2, "{} messages", msgs.len());
    assert_eq!(msgs[0].0, NFT_MSG_DELSETELEM);
    assert!(listed(&msgs[0].2).is_empty(), "a flush names no element");
    for (kind, flags, body) in &msgs[1..] {
        assert_eq!((*kind, *flags), (NFT_MSG_NEWSETELEM, NLM_F_CREATE));
        assert!(body.len() < 65535);
    }
    // Every element is in exactly one message, in order.
    let all: Vec<Vec<u8>> = msgs[1..].iter().flat_map(|m| listed(&m.2)).collect();
    assert_eq!(all.len(), 5000);
    assert_eq!(decode_element(&all[4999]), goto(4999));
    assert_eq!(tx.element_count(), 5000);
}

#[test]
fn elements_round_trip_through_their_encoding() {
    let owner: Arc<str> = "podwire net c1 eth0".into();
    let cases = [
        Element::keyed(&[Field::Proto(6), Field::Port(8080)])
            .with_value(&[Field::Addr("10.1.0.5".parse().unwrap()), Field::Port(80)]),
        Element::keyed(&[Field::Addr("10.1.0.5".parse().unwrap())])
            .with_verdict(Verdict::Jump("masq-n".into())),
        Element {
            key: vec![1, 2, 3, 4],
            key_end: Some(vec![1, 2, 3, 9]),
            data: ElementData::None,
            comment: Some("apps/web".into()),
            owner: Some(owner.clone()),
        },
        Element::new(vec![1]).with_verdict(Verdict::Accept),
        Element::new(vec![2]).with_verdict(Verdict::Drop),
        Element::new(vec![3]).with_verdict(Verdict::Code(-5)),
        goto(7),
    ];
    for element in cases {
        assert_eq!(decode_element(&encoded(&element, true)), element);
    }
}

#[test]
fn deletions_send_the_key_alone() {
    let element = Element {
        key: vec![1, 2, 3, 4],
        key_end: Some(vec![1, 2, 3, 9]),
        data: ElementData::Value(vec![5, 6, 7, 8]),
        comment: Some("c".into()),
        owner: Some("o".into()),
    };
    let kinds: Vec<u16> = attributes(&encoded(&element, false))
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(kinds, vec![NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END]);
    let mut tx = Transaction::new();
    tx.delete("a", [element.clone()]);
    tx.destroy("a", [element.clone()]);
    let msgs = messages("t", tx.ops());
    assert_eq!(msgs[0].0, NFT_MSG_DELSETELEM);
    assert_eq!(msgs[1].0, NFT_MSG_DESTROYSETELEM);
    let back = decode_element(&listed(&msgs[1].2)[0]);
    assert_eq!(
        (back.key, back.data, back.owner),
        (element.key, ElementData::None, None)
    );
}

#[test]
fn consecutive_steps_on_one_set_merge_and_order_is_kept() {
    let mut tx = Transaction::new();
    tx.destroy("masq4", [goto(1)]);
    tx.destroy("masq4", [goto(2)]);
    tx.add("masq4", [goto(1)]);
    tx.add("hostports4", Vec::new());
    tx.add("masq4", [goto(3)]);
    tx.add("hostports4", [goto(4)]);
    tx.flush("x");
    tx.flush("x");
    let shape: Vec<(&str, usize)> = tx
        .ops()
        .iter()
        .map(|op| (op.set(), op.elements().len()))
        .collect();
    assert_eq!(
        shape,
        vec![("masq4", 2), ("masq4", 2), ("hostports4", 1), ("x", 0)]
    );
    assert!(matches!(tx.ops()[0], ElementOp::Destroy { .. }));
    assert!(matches!(tx.ops()[1], ElementOp::Add { .. }));
    assert_eq!(tx.element_count(), 5);
    assert!(Transaction::new().is_empty());
    assert!(messages("t", Transaction::new().ops()).is_empty());
}

#[test]
fn same_entry_ignores_comment_and_owner_only() {
    let a = Element::keyed(&[Field::Port(80)]).with_value(&[Field::Port(8080)]);
    let mut b = a.clone();
    b.comment = Some("x".into());
    b.owner = Some("y".into());
    assert!(a.same_entry(&b));
    assert!(!a.same_entry(&a.clone().with_value(&[Field::Port(8081)])));
    assert!(!a.same_entry(&Element::keyed(&[Field::Port(81)]).with_value(&[Field::Port(8080)])));
}

#[test]
fn owner_tags_and_comments_share_the_userdata_limit() {
    let data = userdata(None, Some("podwire net c1 eth0"));
    assert_eq!(data[0], UDATA_OWNER);
    assert_eq!(usize::from(data[1]), data.len() - 2);
    assert_eq!(owner_of(&data).as_deref(), Some("podwire net c1 eth0"));
    assert_eq!(comment_of(&data), None);
    // A comment record first (what nft writes), then the tag; a record
    // cut short is no tag.
    let both = userdata(Some("a/b:1"), Some("owner"));
    assert_eq!(
        both[..8],
        [UDATA_COMMENT, 6, b'a', b'/', b'b', b':', b'1', 0]
    );
    assert_eq!(comment_of(&both).as_deref(), Some("a/b:1"));
    assert_eq!(owner_of(&both).as_deref(), Some("owner"));
    assert_eq!(owner_of(&[0, 3, b'h', b'i', 0]), None);
    assert_eq!(owner_of(&[UDATA_OWNER, 9, b'a']), None);
    // Long texts are cut on a character boundary, the whole under 256.
    let long = "é".repeat(200);
    let data = userdata(Some(&long), Some(&long));
    assert!(data.len() <= USERDATA_MAX, "{}", data.len());
    let comment = comment_of(&data).unwrap_or_default();
    let owner = owner_of(&data).unwrap_or_default();
    assert!(
        comment.len() <= COMMENT_MAX && long.starts_with(&comment),
        "{comment}"
    );
    assert!(!owner.is_empty() && long.starts_with(&owner), "{owner}");
    let alone = owner_of(&userdata(None, Some(&"x".repeat(300)))).unwrap_or_default();
    assert_eq!(alone.len(), USERDATA_MAX - 2);
    assert!(userdata(None, None).is_empty());
}

//! Reading nftables over nfnetlink: whether a table or chain exists, the
//! chains of a table, and the elements of a set as [`Element`]s (the same
//! type a transaction sends, with owner tag and comment).

use super::element::{
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, decode_element,
};
use super::{Attrs, Element, Family, NLM_F_ACK, NLM_F_DUMP, NfSocket, attributes};
use crate::Result;

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;

/// Whether `table` exists in `family` in the calling thread's namespace.
pub fn table_exists(family: Family, table: &str) -> Result<bool> {
    let mut body = Attrs::new();
    body.put_str(NFTA_TABLE_NAME, table);
    let mut socket = NfSocket::open()?;
    Ok(socket
        .get(
            NFT_MSG_GETTABLE,
            NLM_F_ACK,
            family as u8,
            &body.buf,
            "get nftables table",
        )?
        .is_some())
}

/// Whether `chain` exists in `table`.
pub fn chain_exists(family: Family, table: &str, chain: &str) -> Result<bool> {
    let mut body = Attrs::new();
    body.put_str(NFTA_CHAIN_TABLE, table);
    body.put_str(NFTA_CHAIN_NAME, chain);
    let mut socket = NfSocket::open()?;
    Ok(socket
        .get(
            NFT_MSG_GETCHAIN,
            NLM_F_ACK,
            family as u8,
            &body.buf,
            "get nftables chain",
        )?
        .is_some())
}

/// Names of the chains of `table` (empty when the table is missing).
pub fn list_chains(family: Family, table: &str) -> Result<Vec<String>> {
    let mut socket = NfSocket::open()?;
    let Some(replies) = socket.get(
        NFT_MSG_GETCHAIN,
        NLM_F_DUMP | NLM_F_ACK,
        family as u8,
        &[],
        "list nftables chains",
    )?
    else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for reply in replies {
        let attrs = attributes(reply.get(4..).unwrap_or_default());
        let text = |kind: u16| {
            attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| {
                String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            })
        };
        if text(NFTA_CHAIN_TABLE).as_deref() == Some(table)
            && let Some(name) = text(NFTA_CHAIN_NAME)
        {
            out.push(name);
        }
    }
    Ok(out)
}

/// Every element of a set or map, with its data, comment and owner tag
/// (empty when the set or table is missing).
pub fn list_elements(family: Family, table: &str, set: &str) -> Result<Vec<Element>> {
    let mut body = Attrs::new();
    body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    body.put_str(NFTA_SET_ELEM_LIST_SET, set);
    let mut socket = NfSocket::open()?;
    let Some(replies) = socket.get(
        NFT_MSG_GETSETELEM,
        NLM_F_DUMP | NLM_F_ACK,
        family as u8,
        &body.buf,
        "list set elements",
    )?
    else {
        return Ok(Vec::new());
    };
    Ok(replies.iter().flat_map(|r| parse_reply(r)).collect())
}

/// Number of elements in a set (0 when the set or table is missing).
pub fn count_elements(family: Family, table: &str, set: &str) -> Result<usize> {
    Ok(list_elements(family, table, set)?.len())
}

/// The elements of one GETSETELEM reply (after its nfgenmsg header).
fn parse_reply(reply: &[u8]) -> Vec<Element> {
    attributes(reply.get(4..).unwrap_or_default())
        .into_iter()
        .filter(|(kind, _)| *kind == NFTA_SET_ELEM_LIST_ELEMENTS)
        .flat_map(|(_, list)| attributes(list).into_iter().map(|(_, e)| decode_element(e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{Field, Verdict};

    #[test]
    fn a_listing_reply_decodes_to_the_elements_sent() {
        let sent = [
            Element::keyed(&[Field::Port(80)]).with_value(&[Field::Port(8080)]),
            Element::keyed(&[Field::Port(81)]).with_verdict(Verdict::Goto("c".into())),
        ];
        let mut tx = crate::nft::Transaction::new();
        tx.add("s", sent.clone());
        // An add message's body is what a dump reply carries after the
        // nfgenmsg header.
        let (_, _, body) = crate::nft::element::messages("t", tx.ops())
            .into_iter()
            .next()
            .unwrap_or_default();
        let mut reply = vec![0u8; 4];
        reply.extend_from_slice(&body);
        assert_eq!(parse_reply(&reply), sent);
        assert!(parse_reply(&[]).is_empty());
    }
}

//! Set and map elements: the one element type every component uses (the
//! CNI plugin's masquerade, hostport and spoof-check entries; the proxy's
//! service maps; the policy's verdict maps and interval sets) and the one
//! way to change them, a [`Transaction`] committed as ONE nfnetlink batch.
//!
//! One batch is one kernel transaction: the packet path sees none or all
//! of it, so "delete K, add K with new data" replaces an element
//! atomically. Two limits shape the encoding of a large one (a proxy sync
//! changes tens of thousands of elements): a netlink attribute length is
//! 16 bits, so the element list of one message is cut under 64 KiB and
//! split into as many messages as needed inside the same batch; and a
//! sendmsg larger than the socket's send buffer fails, so the buffer is
//! raised to the batch's size first.

use std::sync::Arc;

use super::{Attrs, Family, Field, NLM_F_CREATE, attributes, encode_concat, run_batch};
use crate::Result;

const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_DESTROYSETELEM: u16 = 30;

pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// Element lists are cut well below the 64 KiB attribute limit.
const MAX_ELEMENT_LIST_BYTES: usize = 48 * 1024;

/// Userdata of an element is a list of (type, length, value) records that
/// only userspace reads; the kernel keeps at most this many bytes of it
/// (NFT_USERDATA_MAXLEN).
const USERDATA_MAX: usize = 256;
/// nft's own comment record (NFTNL_UDATA_SET_ELEM_COMMENT): a
/// NUL-terminated string that `nft list` prints as `comment "..."`.
const UDATA_COMMENT: u8 = 0;
/// Longest comment nft accepts (one record's length is a byte, with the
/// NUL, and nft itself stops at 128).
const COMMENT_MAX: usize = 127;
/// nft knows type 0 (comment) and 1 (flags) and skips the others, so the
/// owner tag goes in a type of its own: programs read it back while
/// `nft list` output stays exactly as without it.
const UDATA_OWNER: u8 = 0xf0;

/// A verdict stored in a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    Goto(String),
    /// Any other verdict code, numbered as the kernel numbers it (what a
    /// listing finds that podwire does not write itself).
    Code(i32),
}

/// What an element maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementData {
    /// A plain set element.
    None,
    /// Value bytes of a map (see [`encode_concat`]).
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// One set or map element, encoded as the kernel stores it; what is sent
/// and what a listing returns.
///
/// `key_end` closes a range for sets with `flags interval` over
/// concatenations (the kernel's pipapo set), where every element is one
/// [key, key_end] range. `comment` is nft's own element comment (`nft
/// list` prints it; at most 127 bytes are kept); `owner` is a tag only
/// programs read, naming who added the element so it can be found again
/// when nothing else remembers it (the CNI plugin names the container).
/// Both are sent with additions only; deletions send the key alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: ElementData,
    pub comment: Option<Arc<str>>,
    pub owner: Option<Arc<str>>,
}

impl Element {
    /// A plain set element with this encoded key.
    pub fn new(key: Vec<u8>) -> Element {
        Element {
            key,
            key_end: None,
            data: ElementData::None,
            comment: None,
            owner: None,
        }
    }

    /// A plain set element keyed by these fields.
    pub fn keyed(fields: &[Field]) -> Element {
        Element::new(encode_concat(fields))
    }

    /// This element mapping to the value these fields encode.
    pub fn with_value(mut self, fields: &[Field]) -> Element {
        self.data = ElementData::Value(encode_concat(fields));
        self
    }

    /// This element mapping to a verdict.
    pub fn with_verdict(mut self, verdict: Verdict) -> Element {
        self.data = ElementData::Verdict(verdict);
        self
    }

    /// Whether the kernel holding `other` means it holds this element:
    /// same key, range end and data (comment and owner aside).
    pub fn same_entry(&self, other: &Element) -> bool {
        self.key == other.key && self.key_end == other.key_end && self.data == other.data
    }
}

/// One step of a [`Transaction`], on one set of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementOp {
    /// Remove every element of the set.
    Flush { set: String },
    /// Add these elements; an existing key with the same data is fine, with
    /// different data it fails the transaction (delete it first in the same
    /// transaction).
    Add { set: String, elements: Vec<Element> },
    /// Remove these elements (keys only); a missing one fails the whole
    /// transaction with ENOENT: for callers that know what the kernel holds.
    Delete { set: String, elements: Vec<Element> },
    /// Remove these elements (keys only); missing ones are not an error
    /// (an idempotent DEL, entries that may have expired).
    Destroy { set: String, elements: Vec<Element> },
}

#[derive(Clone, Copy)]
enum Kind {
    Add,
    Delete,
    Destroy,
}

impl ElementOp {
    /// The set this step changes.
    pub fn set(&self) -> &str {
        match self {
            ElementOp::Flush { set }
            | ElementOp::Add { set, .. }
            | ElementOp::Delete { set, .. }
            | ElementOp::Destroy { set, .. } => set,
        }
    }

    fn elements(&self) -> &[Element] {
        match self {
            ElementOp::Flush { .. } => &[],
            ElementOp::Add { elements, .. }
            | ElementOp::Delete { elements, .. }
            | ElementOp::Destroy { elements, .. } => elements,
        }
    }
}

/// Element changes of one table, in order, committed by [`commit`] as one
/// kernel transaction. Consecutive changes of the same kind to the same
/// set are merged into one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    ops: Vec<ElementOp>,
}

impl Transaction {
    pub fn new() -> Transaction {
        Transaction::default()
    }

    /// Removes every element of `set`.
    pub fn flush(&mut self, set: &str) {
        if !matches!(self.ops.last(), Some(ElementOp::Flush { set: s }) if s == set) {
            self.ops.push(ElementOp::Flush { set: set.into() });
        }
    }

    /// Adds elements to `set` (see [`ElementOp::Add`]).
    pub fn add(&mut self, set: &str, elements: impl IntoIterator<Item = Element>) {
        self.push(Kind::Add, set, elements);
    }

    /// Deletes elements that must be there (see [`ElementOp::Delete`]).
    pub fn delete(&mut self, set: &str, elements: impl IntoIterator<Item = Element>) {
        self.push(Kind::Delete, set, elements);
    }

    /// Deletes elements whether or not they are there (see
    /// [`ElementOp::Destroy`]).
    pub fn destroy(&mut self, set: &str, elements: impl IntoIterator<Item = Element>) {
        self.push(Kind::Destroy, set, elements);
    }

    fn push(&mut self, kind: Kind, set: &str, elements: impl IntoIterator<Item = Element>) {
        let mut elements: Vec<Element> = elements.into_iter().collect();
        if elements.is_empty() {
            return;
        }
        match (self.ops.last_mut(), kind) {
            (
                Some(ElementOp::Add {
                    set: s,
                    elements: list,
                }),
                Kind::Add,
            )
            | (
                Some(ElementOp::Delete {
                    set: s,
                    elements: list,
                }),
                Kind::Delete,
            )
            | (
                Some(ElementOp::Destroy {
                    set: s,
                    elements: list,
                }),
                Kind::Destroy,
            ) if s == set => list.append(&mut elements),
            _ => {
                let set = set.to_string();
                self.ops.push(match kind {
                    Kind::Add => ElementOp::Add { set, elements },
                    Kind::Delete => ElementOp::Delete { set, elements },
                    Kind::Destroy => ElementOp::Destroy { set, elements },
                });
            }
        }
    }

    /// The steps, in the order they will run.
    pub fn ops(&self) -> &[ElementOp] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Elements sent (added plus deleted).
    pub fn element_count(&self) -> usize {
        self.ops.iter().map(|op| op.elements().len()).sum()
    }
}

/// What a committed transaction amounted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// nfnetlink messages inside the batch.
    pub messages: usize,
    /// Size of the batch in bytes (one sendmsg).
    pub bytes: usize,
    /// Elements sent (added plus deleted).
    pub elements: usize,
}

/// Commits `tx` to `table` as ONE nfnetlink transaction in the calling
/// thread's namespace. Destroy needs Linux 6.3+; on an older kernel the
/// destroys run first, one element at a time with missing ones skipped,
/// and the rest of the transaction after them.
pub fn commit(family: Family, table: &str, tx: &Transaction) -> Result<TransactionStats> {
    const OP: &str = "commit nftables set elements";
    let messages = messages(table, tx.ops());
    if messages.is_empty() {
        return Ok(TransactionStats::default());
    }
    let elements = tx.element_count();
    let has_destroy = tx
        .ops()
        .iter()
        .any(|op| matches!(op, ElementOp::Destroy { .. }));
    match run_batch(family, &messages, OP) {
        Ok(bytes) => Ok(TransactionStats {
            messages: messages.len(),
            bytes,
            elements,
        }),
        Err(err)
            if has_destroy
                && matches!(err.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) =>
        {
            commit_without_destroy(family, table, tx)
        }
        Err(err) => Err(err),
    }
}

/// [`commit`] for a kernel without DESTROYSETELEM.
fn commit_without_destroy(
    family: Family,
    table: &str,
    tx: &Transaction,
) -> Result<TransactionStats> {
    let mut stats = TransactionStats::default();
    let mut rest = Vec::new();
    for op in tx.ops() {
        let ElementOp::Destroy { set, elements } = op else {
            rest.push(op);
            continue;
        };
        for element in elements {
            let one = [(
                NFT_MSG_DELSETELEM,
                0,
                list_body(table, set, std::slice::from_ref(element), false),
            )];
            match run_batch(family, &one, "delete nftables element") {
                Ok(bytes) => stats.bytes += bytes,
                Err(err) if err.errno() == Some(libc::ENOENT) => {}
                Err(err) => return Err(err),
            }
            stats.messages += 1;
            stats.elements += 1;
        }
    }
    let messages = messages(table, rest.iter().copied());
    stats.bytes += run_batch(family, &messages, "commit nftables set elements")?;
    stats.messages += messages.len();
    stats.elements += rest.iter().map(|op| op.elements().len()).sum::<usize>();
    Ok(stats)
}

/// The messages of a transaction: (message type, flags, body).
pub(super) fn messages<'a>(
    table: &str,
    ops: impl IntoIterator<Item = &'a ElementOp>,
) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    for op in ops {
        let (kind, flags, with_data) = match op {
            ElementOp::Flush { set } => {
                let mut body = Attrs::new();
                body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
                body.put_str(NFTA_SET_ELEM_LIST_SET, set);
                out.push((NFT_MSG_DELSETELEM, 0, body.buf));
                continue;
            }
            ElementOp::Add { .. } => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, true),
            ElementOp::Delete { .. } => (NFT_MSG_DELSETELEM, 0, false),
            ElementOp::Destroy { .. } => (NFT_MSG_DESTROYSETELEM, 0, false),
        };
        for body in list_bodies(table, op.set(), op.elements(), with_data) {
            out.push((kind, flags, body));
        }
    }
    out
}

/// Element list messages of one set, each list under the attribute limit.
fn list_bodies(table: &str, set: &str, elements: &[Element], with_data: bool) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut start = 0;
    let mut list = Attrs::new();
    for (i, element) in elements.iter().enumerate() {
        put_element(&mut list, element, with_data);
        if list.buf.len() >= MAX_ELEMENT_LIST_BYTES {
            bodies.push(wrap(table, set, std::mem::replace(&mut list, Attrs::new())));
            start = i + 1;
        }
    }
    if start < elements.len() {
        bodies.push(wrap(table, set, list));
    }
    bodies
}

fn list_body(table: &str, set: &str, elements: &[Element], with_data: bool) -> Vec<u8> {
    let mut list = Attrs::new();
    for element in elements {
        put_element(&mut list, element, with_data);
    }
    wrap(table, set, list)
}

fn wrap(table: &str, set: &str, list: Attrs) -> Vec<u8> {
    let mut body = Attrs::new();
    body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    body.put_str(NFTA_SET_ELEM_LIST_SET, set);
    body.nest(NFTA_SET_ELEM_LIST_ELEMENTS, list);
    body.buf
}

fn put_element(list: &mut Attrs, element: &Element, with_data: bool) {
    let mut elem = Attrs::new();
    let mut key = Attrs::new();
    key.put(NFTA_DATA_VALUE, &element.key);
    elem.nest(NFTA_SET_ELEM_KEY, key);
    if let Some(end) = &element.key_end {
        let mut key_end = Attrs::new();
        key_end.put(NFTA_DATA_VALUE, end);
        elem.nest(NFTA_SET_ELEM_KEY_END, key_end);
    }
    if with_data {
        let udata = userdata(element.comment.as_deref(), element.owner.as_deref());
        if !udata.is_empty() {
            elem.put(NFTA_SET_ELEM_USERDATA, &udata);
        }
        match &element.data {
            ElementData::None => {}
            ElementData::Value(bytes) => {
                let mut data = Attrs::new();
                data.put(NFTA_DATA_VALUE, bytes);
                elem.nest(NFTA_SET_ELEM_DATA, data);
            }
            ElementData::Verdict(v) => {
                let (code, chain) = match v {
                    Verdict::Accept => (NF_ACCEPT, None),
                    Verdict::Drop => (NF_DROP, None),
                    Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
                    Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
                    Verdict::Code(code) => (*code, None),
                };
                let mut verdict = Attrs::new();
                verdict.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    verdict.put_str(NFTA_VERDICT_CHAIN, chain);
                }
                let mut data = Attrs::new();
                data.nest(NFTA_DATA_VERDICT, verdict);
                elem.nest(NFTA_SET_ELEM_DATA, data);
            }
        }
    }
    list.nest(NFTA_LIST_ELEM, elem);
}

/// Decodes one NFTA_LIST_ELEM of a listing.
pub(super) fn decode_element(elem: &[u8]) -> Element {
    let mut out = Element::new(Vec::new());
    let value = |payload: &[u8]| {
        attributes(payload)
            .into_iter()
            .find(|(k, _)| *k == NFTA_DATA_VALUE)
            .map(|(_, v)| v.to_vec())
    };
    for (attr, payload) in attributes(elem) {
        match attr {
            NFTA_SET_ELEM_KEY => out.key = value(payload).unwrap_or_default(),
            NFTA_SET_ELEM_KEY_END => out.key_end = value(payload),
            NFTA_SET_ELEM_DATA => out.data = decode_data(payload),
            NFTA_SET_ELEM_USERDATA => {
                out.comment = comment_of(payload).map(Arc::from);
                out.owner = owner_of(payload).map(Arc::from);
            }
            _ => {}
        }
    }
    out
}

fn decode_data(payload: &[u8]) -> ElementData {
    for (kind, inner) in attributes(payload) {
        match kind {
            NFTA_DATA_VALUE => return ElementData::Value(inner.to_vec()),
            NFTA_DATA_VERDICT => {
                let mut code = None;
                let mut chain = String::new();
                for (k, v) in attributes(inner) {
                    match (k, v) {
                        (NFTA_VERDICT_CODE, &[a, b, c, d]) => {
                            code = Some(i32::from_be_bytes([a, b, c, d]))
                        }
                        (NFTA_VERDICT_CHAIN, name) => {
                            chain = String::from_utf8_lossy(name)
                                .trim_end_matches('\0')
                                .to_string()
                        }
                        _ => {}
                    }
                }
                let verdict = match code {
                    Some(NF_ACCEPT) => Verdict::Accept,
                    Some(NF_DROP) => Verdict::Drop,
                    Some(NFT_JUMP) => Verdict::Jump(chain),
                    Some(NFT_GOTO) => Verdict::Goto(chain),
                    Some(other) => Verdict::Code(other),
                    None => return ElementData::None,
                };
                return ElementData::Verdict(verdict);
            }
            _ => {}
        }
    }
    ElementData::None
}

/// An element's userdata: nft's comment record first (as nft writes it),
/// then the owner tag, cut so the whole fits the kernel's limit.
fn userdata(comment: Option<&str>, owner: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(text) = comment {
        let text = cut(text, COMMENT_MAX);
        out.push(UDATA_COMMENT);
        out.push((text.len() + 1) as u8);
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }
    if let Some(text) = owner {
        let room = USERDATA_MAX.saturating_sub(out.len() + 2).min(255);
        let text = cut(text, room);
        out.push(UDATA_OWNER);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The value of the first userdata record of type `want`.
fn udata_record(userdata: &[u8], want: u8) -> Option<&[u8]> {
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len);
        let value = tail.get(..len)?;
        if *kind == want {
            return Some(value);
        }
        rest = &tail[len..];
    }
    None
}

fn owner_of(userdata: &[u8]) -> Option<String> {
    udata_record(userdata, UDATA_OWNER).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn comment_of(userdata: &[u8]) -> Option<String> {
    let value = udata_record(userdata, UDATA_COMMENT)?;
    let text = value.strip_suffix(&[0]).unwrap_or(value);
    Some(String::from_utf8_lossy(text).into_owned())
}

#[cfg(test)]
#[path = "element_tests.rs"]
mod tests;

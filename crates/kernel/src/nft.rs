//! nftables through nfnetlink. Set and map elements (what a CNI ADD or DEL
//! changes) are encoded here by hand and sent as one atomic batch: the `nft`
//! program costs ~15 ms a run on this machine, more than the whole budget of
//! an ADD. Tables, chains and rules are rare, structural changes and go
//! through `nft -f -` in one transaction, so their text stays readable.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::own::OwnPort;
use crate::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_DESTROYSETELEM: u16 = 30;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_MULTI: u16 = 2;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// Userdata of an element is a list of (type, length, value) records that
/// only userspace reads. nft knows type 0 (comment) and 1 (flags) and skips
/// the others, so the owner tag goes in a type of its own: programs can
/// read it back while `nft list` output stays exactly as without it.
const UDATA_OWNER: u8 = 0xf0;
const OWNER_MAX: usize = 255;
/// nft's own comment record (NFTNL_UDATA_SET_ELEM_COMMENT): a
/// NUL-terminated string that `nft list` prints as `comment "..."`.
const UDATA_COMMENT: u8 = 0;
/// Longest comment nft accepts (NFT_USERDATA_MAXLEN is 256 bytes for the
/// whole userdata; one record's length is a byte, with the NUL).
const COMMENT_MAX: usize = 127;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;

/// nftables address families (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Inet = 1,
    Ip = 2,
    Bridge = 7,
    Ip6 = 10,
}

/// One field of a set key or map value, laid out as nftables registers
/// expect: every field of a concatenation padded to 4 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Addr(IpAddr),
    /// inet_proto (tcp = 6, udp = 17, sctp = 132).
    Proto(u8),
    /// inet_service, a port in network order.
    Port(u16),
    /// ether_addr.
    Mac([u8; 6]),
    /// ifname: the name zero-padded to IFNAMSIZ (16 bytes).
    IfName(String),
}

impl Field {
    fn encode(&self, out: &mut Vec<u8>, concat: bool) {
        match self {
            Field::Addr(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            Field::Addr(IpAddr::V6(v6)) => out.extend_from_slice(&v6.octets()),
            Field::Proto(p) => {
                out.push(*p);
                if concat {
                    out.extend_from_slice(&[0, 0, 0]);
                }
            }
            Field::Port(p) => {
                out.extend_from_slice(&p.to_be_bytes());
                if concat {
                    out.extend_from_slice(&[0, 0]);
                }
            }
            Field::Mac(mac) => {
                out.extend_from_slice(mac);
                if concat {
                    out.extend_from_slice(&[0, 0]);
                }
            }
            Field::IfName(name) => {
                let mut bytes = [0u8; 16];
                for (slot, b) in bytes.iter_mut().zip(name.bytes().take(15)) {
                    *slot = b;
                }
                out.extend_from_slice(&bytes);
            }
        }
    }
}

fn encode_fields(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    let concat = fields.len() > 1;
    for field in fields {
        field.encode(&mut out, concat);
    }
    out
}

/// What an element maps to, for maps.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElementData {
    None,
    Value(Vec<Field>),
    Jump(String),
}

/// One set or map element in a named set of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element {
    pub set: String,
    pub key: Vec<Field>,
    pub data: ElementData,
}

/// Minimal netlink attribute writer (nftables integers are big-endian).
struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    fn new() -> Self {
        Attrs { buf: Vec::new() }
    }
    fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }
    fn put_str(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes);
    }
    fn nest(&mut self, kind: u16, inner: Attrs) {
        self.put(kind | NLA_F_NESTED, &inner.buf);
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

fn nlmsg(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(body);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn element_list(
    table: &str,
    set: &str,
    elements: &[&Element],
    with_data: bool,
    owner: Option<&str>,
) -> Vec<u8> {
    let mut list = Attrs::new();
    for element in elements {
        let mut elem = Attrs::new();
        let mut key = Attrs::new();
        key.put(NFTA_DATA_VALUE, &encode_fields(&element.key));
        elem.nest(NFTA_SET_ELEM_KEY, key);
        if let Some(text) = owner.filter(|_| with_data) {
            elem.put(NFTA_SET_ELEM_USERDATA, &owner_userdata(text));
        }
        if with_data {
            match &element.data {
                ElementData::None => {}
                ElementData::Value(fields) => {
                    let mut data = Attrs::new();
                    data.put(NFTA_DATA_VALUE, &encode_fields(fields));
                    elem.nest(NFTA_SET_ELEM_DATA, data);
                }
                ElementData::Jump(chain) => {
                    let mut verdict = Attrs::new();
                    verdict.put(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                    verdict.put_str(NFTA_VERDICT_CHAIN, chain);
                    let mut data = Attrs::new();
                    data.nest(NFTA_DATA_VERDICT, verdict);
                    elem.nest(NFTA_SET_ELEM_DATA, data);
                }
            }
        }
        list.nest(NFTA_LIST_ELEM, elem);
    }
    let mut body = Attrs::new();
    body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    body.put_str(NFTA_SET_ELEM_LIST_SET, set);
    body.nest(NFTA_SET_ELEM_LIST_ELEMENTS, list);
    body.buf
}

/// The userdata record of an owner tag (cut at 255 bytes).
fn owner_userdata(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.truncate(OWNER_MAX);
    let mut out = vec![UDATA_OWNER, bytes.len() as u8];
    out.extend_from_slice(&bytes);
    out
}

/// The owner tag in an element's userdata, if it has one.
fn owner_of(userdata: &[u8]) -> Option<String> {
    udata_record(userdata, UDATA_OWNER).map(|v| String::from_utf8_lossy(v).into_owned())
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

/// The userdata record of an nft comment (cut at [`COMMENT_MAX`] bytes, on
/// a character boundary, NUL-terminated as nft requires).
fn comment_userdata(text: &str) -> Vec<u8> {
    let mut end = text.len().min(COMMENT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    let mut out = Vec::with_capacity(bytes.len() + 3);
    out.push(UDATA_COMMENT);
    out.push((bytes.len() + 1) as u8);
    out.extend_from_slice(bytes);
    out.push(0);
    out
}

/// The nft comment in an element's userdata, if it has one.
fn comment_of(userdata: &[u8]) -> Option<String> {
    let value = udata_record(userdata, UDATA_COMMENT)?;
    let text = value.strip_suffix(&[0]).unwrap_or(value);
    Some(String::from_utf8_lossy(text).into_owned())
}

/// A change to set elements of one table, committed as one transaction.
#[derive(Debug, Default, Clone)]
pub struct ElementBatch {
    pub add: Vec<Element>,
    pub delete: Vec<Element>,
}

impl ElementBatch {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
}

fn group_by_set(elements: &[Element]) -> Vec<(&str, Vec<&Element>)> {
    let mut groups: Vec<(&str, Vec<&Element>)> = Vec::new();
    for element in elements {
        match groups.iter_mut().find(|(set, _)| *set == element.set) {
            Some((_, list)) => list.push(element),
            None => groups.push((element.set.as_str(), vec![element])),
        }
    }
    groups
}

struct NfSocket {
    socket: Socket,
    buf: Vec<u8>,
    /// Our changes' notifications name this socket's port id.
    _own: OwnPort,
}

impl NfSocket {
    fn open() -> Result<NfSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::netlink("open nfnetlink socket", e))?;
        let own = socket
            .bind_auto()
            .map(|addr| OwnPort::register(addr.port_number()))
            .map_err(|e| Error::netlink("bind nfnetlink socket", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::netlink("connect nfnetlink socket", e))?;
        let _ = socket.set_ext_ack(true);
        Ok(NfSocket {
            socket,
            buf: vec![0; 256 * 1024],
            _own: own,
        })
    }

    fn send(&self, bytes: &[u8], op: &str) -> Result<()> {
        self.socket
            .send(bytes, 0)
            .map_err(|e| Error::netlink(op, e))?;
        Ok(())
    }

    /// Reads replies until every sequence number in `pending` has been
    /// acknowledged, or returns the first error the kernel reports.
    fn wait_acks(&mut self, mut pending: Vec<u32>, op: &str) -> Result<()> {
        while !pending.is_empty() {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::netlink(op, e))?;
            for (kind, seq, payload) in split(&self.buf[..n]) {
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                pending.retain(|s| *s != seq);
                if code != 0 {
                    return Err(Error::netlink(op, std::io::Error::from_raw_os_error(-code)));
                }
            }
        }
        Ok(())
    }

    /// Sends a get request; returns the payloads of the replies (Ok(None)
    /// when the object does not exist).
    fn get(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        body: &[u8],
        op: &str,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let mut out = Vec::new();
        nlmsg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            1,
            family,
            0,
            body,
        );
        self.send(&out, op)?;
        let mut replies = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|e| Error::netlink(op, e))?;
            for (msg_kind, _seq, payload) in split(&self.buf[..n]) {
                match msg_kind {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        return match -code {
                            0 => Ok(Some(replies)),
                            libc::ENOENT => Ok(None),
                            errno => {
                                Err(Error::netlink(op, std::io::Error::from_raw_os_error(errno)))
                            }
                        };
                    }
                    NLMSG_DONE => return Ok(Some(replies)),
                    _ => {
                        replies.push(payload.to_vec());
                        if flags & NLM_F_DUMP == 0 {
                            return Ok(Some(replies));
                        }
                    }
                }
            }
        }
    }
}

/// Splits a receive buffer into (type, seq, payload) of each netlink message.
fn split(buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 16 <= buf.len() {
        let len = u32::from_ne_bytes([
            buf[offset],
            buf[offset + 1],
            buf[offset + 2],
            buf[offset + 3],
        ]) as usize;
        if len < 16 || offset + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]);
        let flags = u16::from_ne_bytes([buf[offset + 6], buf[offset + 7]]);
        let seq = u32::from_ne_bytes([
            buf[offset + 8],
            buf[offset + 9],
            buf[offset + 10],
            buf[offset + 11],
        ]);
        out.push((kind, seq, &buf[offset + 16..offset + len]));
        let _ = flags & NLM_F_MULTI;
        offset += (len + 3) & !3;
    }
    out
}

fn build_batch(family: Family, table: &str, ops: &[(u16, u16, Vec<u8>)]) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::new();
    let mut seqs = Vec::new();
    nlmsg(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        0,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, (kind, flags, body)) in ops.iter().enumerate() {
        let seq = i as u32 + 1;
        nlmsg(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family as u8,
            0,
            body,
        );
        seqs.push(seq);
    }
    let end_seq = ops.len() as u32 + 1;
    nlmsg(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let _ = table;
    (out, seqs)
}

fn run_batch(family: Family, table: &str, ops: &[(u16, u16, Vec<u8>)], op: &str) -> Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let (bytes, seqs) = build_batch(family, table, ops);
    let mut socket = NfSocket::open()?;
    socket.send(&bytes, op)?;
    socket.wait_acks(seqs, op)
}

/// Applies element additions and deletions to `table` in one transaction.
/// Deleting an element that is not there is not an error (DEL must be
/// idempotent): the kernel's destroy command is used where it exists
/// (Linux 6.3+), else missing elements are skipped one by one.
pub fn apply_elements(family: Family, table: &str, batch: &ElementBatch) -> Result<()> {
    apply_elements_with_owner(family, table, batch, None)
}

/// [`apply_elements`], with an `owner` tag (at most 255 bytes; longer ones
/// are cut) on every added element: who owns an element can then be read
/// back from the kernel ([`list_elements_with_owners`]) when nothing else
/// remembers it.
pub fn apply_elements_with_owner(
    family: Family,
    table: &str,
    batch: &ElementBatch,
    owner: Option<&str>,
) -> Result<()> {
    let mut ops = Vec::new();
    for (set, elements) in group_by_set(&batch.delete) {
        ops.push((
            NFT_MSG_DESTROYSETELEM,
            0,
            element_list(table, set, &elements, false, None),
        ));
    }
    for (set, elements) in group_by_set(&batch.add) {
        ops.push((
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            element_list(table, set, &elements, true, owner),
        ));
    }
    match run_batch(family, table, &ops, "update nftables elements") {
        Err(err)
            if !batch.delete.is_empty()
                && matches!(err.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) =>
        {
            // An older kernel without destroy: delete one by one, then add.
            for element in &batch.delete {
                let op = vec![(
                    NFT_MSG_DELSETELEM,
                    0,
                    element_list(table, &element.set, &[element], false, None),
                )];
                match run_batch(family, table, &op, "delete nftables element") {
                    Ok(()) => {}
                    Err(err) if err.errno() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                }
            }
            let adds: Vec<_> = group_by_set(&batch.add)
                .into_iter()
                .map(|(set, elements)| {
                    (
                        NFT_MSG_NEWSETELEM,
                        NLM_F_CREATE,
                        element_list(table, set, &elements, true, owner),
                    )
                })
                .collect();
            run_batch(family, table, &adds, "add nftables elements")
        }
        other => other,
    }
}

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

/// Walks netlink attributes: (type without the nested flag, payload).
fn attributes(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[offset], buf[offset + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[offset + 2], buf[offset + 3]]) & !NLA_F_NESTED;
        if len < 4 || offset + len > buf.len() {
            break;
        }
        out.push((kind, &buf[offset + 4..offset + len]));
        offset += (len + 3) & !3;
    }
    out
}

/// One element as the kernel holds it: the key's bytes and, for maps with
/// value data, the value's bytes (verdicts are reported as None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawElement {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl RawElement {
    /// Whether this kernel element is exactly `element` (key and value).
    pub fn is(&self, element: &Element) -> bool {
        if self.key != encode_fields(&element.key) {
            return false;
        }
        match &element.data {
            ElementData::Value(fields) => {
                self.value.as_deref() == Some(encode_fields(fields).as_slice())
            }
            ElementData::None | ElementData::Jump(_) => true,
        }
    }
}

/// Every element of a set or map (empty when the set or table is missing).
pub fn list_elements(family: Family, table: &str, set: &str) -> Result<Vec<RawElement>> {
    Ok(list_elements_with_owners(family, table, set)?
        .into_iter()
        .map(|e| RawElement {
            key: e.key,
            value: e.value,
        })
        .collect())
}

/// One element as the kernel holds it, with its owner tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedElement {
    pub key: Vec<u8>,
    /// Value bytes for maps with value data (verdicts are None).
    pub value: Option<Vec<u8>>,
    pub owner: Option<String>,
    /// The element's nft comment (what `nft list` prints).
    pub comment: Option<String>,
}

/// Every element of a set or map with its owner tag (empty when the set or
/// table is missing).
pub fn list_elements_with_owners(
    family: Family,
    table: &str,
    set: &str,
) -> Result<Vec<ListedElement>> {
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
    Ok(replies.iter().flat_map(|r| parse_elements(r)).collect())
}

/// The elements of one GETSETELEM reply (after its nfgenmsg header).
fn parse_elements(reply: &[u8]) -> Vec<ListedElement> {
    let mut out = Vec::new();
    for (kind, list) in attributes(reply.get(4..).unwrap_or_default()) {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, elem) in attributes(list) {
            let mut listed = ListedElement {
                key: Vec::new(),
                value: None,
                owner: None,
                comment: None,
            };
            for (attr, payload) in attributes(elem) {
                let value = || {
                    attributes(payload)
                        .into_iter()
                        .find(|(k, _)| *k == NFTA_DATA_VALUE)
                        .map(|(_, v)| v.to_vec())
                };
                match attr {
                    NFTA_SET_ELEM_KEY => listed.key = value().unwrap_or_default(),
                    NFTA_SET_ELEM_DATA => listed.value = value(),
                    NFTA_SET_ELEM_USERDATA => {
                        listed.owner = owner_of(payload);
                        listed.comment = comment_of(payload);
                    }
                    _ => {}
                }
            }
            out.push(listed);
        }
    }
    out
}

/// Deletes the elements with these raw keys (as listed) from `set`, in one
/// transaction; keys already gone are not an error.
pub fn destroy_elements_by_key(
    family: Family,
    table: &str,
    set: &str,
    keys: &[Vec<u8>],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let body = |keys: &[Vec<u8>]| {
        let mut list = Attrs::new();
        for key in keys {
            let mut elem = Attrs::new();
            let mut k = Attrs::new();
            k.put(NFTA_DATA_VALUE, key);
            elem.nest(NFTA_SET_ELEM_KEY, k);
            list.nest(NFTA_LIST_ELEM, elem);
        }
        let mut body = Attrs::new();
        body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
        body.put_str(NFTA_SET_ELEM_LIST_SET, set);
        body.nest(NFTA_SET_ELEM_LIST_ELEMENTS, list);
        body.buf
    };
    let ops = vec![(NFT_MSG_DESTROYSETELEM, 0, body(keys))];
    match run_batch(family, table, &ops, "delete nftables elements") {
        Err(err) if matches!(err.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) => {
            // No destroy before Linux 6.3: one by one, missing ones skipped.
            for key in keys {
                let op = vec![(NFT_MSG_DELSETELEM, 0, body(std::slice::from_ref(key)))];
                match run_batch(family, table, &op, "delete nftables element") {
                    Ok(()) => {}
                    Err(err) if err.errno() == Some(libc::ENOENT) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        }
        other => other,
    }
}

/// Number of elements in a set (0 when the set or table is missing).
pub fn count_elements(family: Family, table: &str, set: &str) -> Result<usize> {
    Ok(list_elements(family, table, set)?.len())
}

/// Loads an nftables script with `nft -f -` in the calling process's
/// namespace: one transaction, all or nothing.
pub fn apply_script(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Nft(format!(
                "cannot run nft ({e}): install the nftables package"
            ))
        })?;
    // nft's netlink socket is bound to its pid: its changes are ours.
    let _own = OwnPort::register(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(format!(
            "nft -f rejected the ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Deletes a table if it exists, in one `nft` transaction.
pub fn delete_table(family: &str, table: &str) -> Result<()> {
    apply_script(&format!(
        "table {family} {table} {{}}\ndelete table {family} {table}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_fields_are_padded_to_registers() {
        let key = encode_fields(&[Field::Proto(6), Field::Port(8080)]);
        assert_eq!(key, vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        let single = encode_fields(&[Field::Addr("10.0.0.1".parse().unwrap())]);
        assert_eq!(single, vec![10, 0, 0, 1]);
        let port = encode_fields(&[Field::Port(80)]);
        assert_eq!(port, vec![0, 80]);
        let mac_if = encode_fields(&[
            Field::Mac([1, 2, 3, 4, 5, 6]),
            Field::IfName("veth0".into()),
        ]);
        assert_eq!(mac_if.len(), 24);
        assert_eq!(&mac_if[..8], &[1, 2, 3, 4, 5, 6, 0, 0]);
        assert_eq!(&mac_if[8..13], b"veth0");
    }

    #[test]
    fn owner_tags_round_trip_through_userdata() {
        let data = owner_userdata("podwire net c1 eth0");
        assert_eq!(data[0], UDATA_OWNER);
        assert_eq!(usize::from(data[1]), data.len() - 2);
        assert_eq!(owner_of(&data).as_deref(), Some("podwire net c1 eth0"));
        let long = "x".repeat(300);
        assert_eq!(owner_of(&owner_userdata(&long)).map(|c| c.len()), Some(255));
        // A comment record first (what nft writes), then the tag; a record
        // cut short is no tag.
        let mut mixed = vec![0, 3, b'h', b'i', 0];
        mixed.extend_from_slice(&data);
        assert_eq!(owner_of(&mixed).as_deref(), Some("podwire net c1 eth0"));
        assert_eq!(owner_of(&[0, 3, b'h', b'i', 0]), None);
        assert_eq!(owner_of(&[UDATA_OWNER, 9, b'a']), None);
    }

    #[test]
    fn batch_is_wrapped_in_begin_and_end() {
        let ops = vec![(NFT_MSG_NEWSETELEM, NLM_F_CREATE, vec![0u8; 8])];
        let (bytes, seqs) = build_batch(Family::Inet, "t", &ops);
        let msgs = split(&bytes);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[1].0, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM);
        assert_eq!(msgs[2].0, NFNL_MSG_BATCH_END);
        assert_eq!(seqs, vec![1]);
    }
}

// ---------------------------------------------------------------------------
// Large element transactions (the service proxy).
//
// A proxy sync changes tens of thousands of elements of a dozen sets at
// once and must never show the packet path a half-applied change: every
// flush, delete and add of one sync goes into ONE nfnetlink batch (one
// sendmsg, one kernel transaction). Two limits shape the encoding:
// - a netlink attribute length is 16 bits, so the element list of one
//   NEWSETELEM/DELSETELEM message must stay under 64 KiB: elements are
//   split into as many messages as needed inside the same batch;
// - a sendmsg larger than the socket's send buffer fails with EMSGSIZE,
//   so the buffer is raised to the batch's size (SO_SNDBUFFORCE as root,
//   SO_SNDBUF otherwise).
// ---------------------------------------------------------------------------

const NFT_MSG_DELCHAIN: u16 = 5;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFT_GOTO: i32 = -4;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
/// Element lists are cut well below the 64 KiB attribute limit.
const MAX_ELEMENT_LIST_BYTES: usize = 48 * 1024;

/// Encodes set key or map value fields as the kernel stores them
/// (concatenations padded to 32-bit registers), for callers that build
/// [`SetElement`]s.
pub fn encode_concat(fields: &[Field]) -> Vec<u8> {
    encode_fields(fields)
}

/// A verdict stored in a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
    Goto(String),
}

/// What a [`SetElement`] maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetData {
    /// A plain set element.
    None,
    /// Value bytes (see [`encode_concat`]).
    Value(Vec<u8>),
    Verdict(Verdict),
}

/// One element with its key already encoded; `key_end` closes a range for
/// sets with `flags interval` over concatenations (the kernel's pipapo
/// set), where every element is one [key, key_end] range. `comment` is
/// stored as nft's own element comment (`nft list` prints it; at most 127
/// bytes are kept); it is sent with additions only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SetElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: SetData,
    pub comment: Option<std::sync::Arc<str>>,
}

/// One step of an element transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp {
    /// Remove every element of the set.
    Flush { set: String },
    /// Remove these elements (only keys are sent); a missing one fails
    /// the whole transaction with ENOENT.
    Delete {
        set: String,
        elements: Vec<SetElement>,
    },
    /// Add these elements; an existing key with different data fails the
    /// transaction (delete it first in the same transaction).
    Add {
        set: String,
        elements: Vec<SetElement>,
    },
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

fn put_set_element(list: &mut Attrs, element: &SetElement, with_data: bool) {
    let mut elem = Attrs::new();
    let mut key = Attrs::new();
    key.put(NFTA_DATA_VALUE, &element.key);
    elem.nest(NFTA_SET_ELEM_KEY, key);
    if let Some(end) = &element.key_end {
        let mut key_end = Attrs::new();
        key_end.put(NFTA_DATA_VALUE, end);
        elem.nest(NFTA_SET_ELEM_KEY_END, key_end);
    }
    if with_data && let Some(text) = &element.comment {
        elem.put(NFTA_SET_ELEM_USERDATA, &comment_userdata(text));
    }
    if with_data {
        match &element.data {
            SetData::None => {}
            SetData::Value(bytes) => {
                let mut data = Attrs::new();
                data.put(NFTA_DATA_VALUE, bytes);
                elem.nest(NFTA_SET_ELEM_DATA, data);
            }
            SetData::Verdict(v) => {
                let mut verdict = Attrs::new();
                match v {
                    Verdict::Accept => verdict.put(NFTA_VERDICT_CODE, &NF_ACCEPT.to_be_bytes()),
                    Verdict::Drop => verdict.put(NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes()),
                    Verdict::Jump(chain) => {
                        verdict.put(NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                        verdict.put_str(NFTA_VERDICT_CHAIN, chain);
                    }
                    Verdict::Goto(chain) => {
                        verdict.put(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                        verdict.put_str(NFTA_VERDICT_CHAIN, chain);
                    }
                }
                let mut data = Attrs::new();
                data.nest(NFTA_DATA_VERDICT, verdict);
                elem.nest(NFTA_SET_ELEM_DATA, data);
            }
        }
    }
    list.nest(NFTA_LIST_ELEM, elem);
}

fn set_elements_bodies(
    table: &str,
    set: &str,
    elements: &[SetElement],
    with_data: bool,
) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let mut list = Attrs::new();
    let finish = |list: Attrs, bodies: &mut Vec<Vec<u8>>| {
        let mut body = Attrs::new();
        body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
        body.put_str(NFTA_SET_ELEM_LIST_SET, set);
        body.nest(NFTA_SET_ELEM_LIST_ELEMENTS, list);
        bodies.push(body.buf);
    };
    for element in elements {
        put_set_element(&mut list, element, with_data);
        if list.buf.len() >= MAX_ELEMENT_LIST_BYTES {
            finish(std::mem::replace(&mut list, Attrs::new()), &mut bodies);
        }
    }
    if !list.buf.is_empty() {
        finish(list, &mut bodies);
    }
    bodies
}

/// The messages of a transaction: (message type, flags, body).
fn transaction_messages(table: &str, ops: &[SetOp]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            SetOp::Flush { set } => {
                let mut body = Attrs::new();
                body.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
                body.put_str(NFTA_SET_ELEM_LIST_SET, set);
                out.push((NFT_MSG_DELSETELEM, 0, body.buf));
            }
            SetOp::Delete { set, elements } => {
                for body in set_elements_bodies(table, set, elements, false) {
                    out.push((NFT_MSG_DELSETELEM, 0, body));
                }
            }
            SetOp::Add { set, elements } => {
                for body in set_elements_bodies(table, set, elements, true) {
                    out.push((NFT_MSG_NEWSETELEM, NLM_F_CREATE, body));
                }
            }
        }
    }
    out
}

fn raise_send_buffer(socket: &Socket, bytes: usize) -> Result<()> {
    use std::os::fd::AsRawFd;
    // The kernel doubles the value and needs room for its own overhead.
    let want = (bytes + 64 * 1024).min(i32::MAX as usize / 2) as libc::c_int;
    let fd = socket.as_raw_fd();
    for opt in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        // SAFETY: setsockopt with a pointer to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&want as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(Error::Nft(format!(
        "cannot raise the netlink send buffer to {bytes} bytes ({}); run as root (CAP_NET_ADMIN) or raise net.core.wmem_max",
        std::io::Error::last_os_error()
    )))
}

/// Commits set flushes, deletions and additions of `table` as ONE
/// nfnetlink transaction in the calling thread's namespace: the packet
/// path sees either none or all of it. Ops run in the given order, so
/// "delete K, add K with new data" replaces an element atomically.
pub fn commit_set_ops(family: Family, table: &str, ops: &[SetOp]) -> Result<TransactionStats> {
    let messages = transaction_messages(table, ops);
    if messages.is_empty() {
        return Ok(TransactionStats::default());
    }
    let elements = ops
        .iter()
        .map(|op| match op {
            SetOp::Flush { .. } => 0,
            SetOp::Delete { elements, .. } | SetOp::Add { elements, .. } => elements.len(),
        })
        .sum();
    let (bytes, seqs) = build_batch(family, table, &messages);
    let mut socket = NfSocket::open()?;
    let _ = socket.socket.set_cap_ack(true);
    if bytes.len() > 200 * 1024 {
        raise_send_buffer(&socket.socket, bytes.len())?;
    }
    socket.send(&bytes, "commit nftables set elements")?;
    socket.wait_acks(seqs, "commit nftables set elements")?;
    Ok(TransactionStats {
        messages: messages.len(),
        bytes: bytes.len(),
        elements,
    })
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

/// Deletes chains of `table` (which must be empty of references: chains
/// still named by a verdict map element fail with EBUSY) in one
/// transaction.
pub fn delete_chains(family: Family, table: &str, chains: &[String]) -> Result<()> {
    let ops: Vec<(u16, u16, Vec<u8>)> = chains
        .iter()
        .map(|chain| {
            let mut body = Attrs::new();
            body.put_str(NFTA_CHAIN_TABLE, table);
            body.put_str(NFTA_CHAIN_NAME, chain);
            (NFT_MSG_DELCHAIN, 0, body.buf)
        })
        .collect();
    run_batch(family, table, &ops, "delete nftables chains")
}

/// Deletes conntrack entries: see [`crate::conntrack::delete`] (kept here
/// for the proxy, which programs nftables and flushes what it replaced).
pub fn delete_conntrack(
    protocol: u8,
    orig_dst: Option<IpAddr>,
    orig_dport: u16,
    reply_src: Option<IpAddr>,
) -> Result<()> {
    crate::conntrack::delete(protocol, orig_dst, orig_dport, reply_src)
}

#[cfg(test)]
mod transaction_tests {
    use super::*;

    #[test]
    fn big_element_lists_are_split_under_the_attribute_limit() {
        let elements: Vec<SetElement> = (0..5000u32)
            .map(|i| SetElement {
                key: i.to_be_bytes().to_vec(),
                key_end: None,
                data: SetData::Verdict(Verdict::Goto("lb4-c-3".into())),
                comment: None,
            })
            .collect();
        let ops = vec![
            SetOp::Flush { set: "svc4".into() },
            SetOp::Add {
                set: "svc4".into(),
                elements,
            },
        ];
        let msgs = transaction_messages("t", &ops);
        assert!(msgs.len() > 2, "{} messages", msgs.len());
        assert_eq!(msgs[0].0, NFT_MSG_DELSETELEM);
        for (_, _, body) in &msgs {
            assert!(body.len() < 65535);
        }
        // Every element is in exactly one message.
        let total: usize = msgs[1..]
            .iter()
            .map(|(_, _, body)| {
                attributes(body)
                    .into_iter()
                    .filter(|(k, _)| *k == NFTA_SET_ELEM_LIST_ELEMENTS)
                    .map(|(_, list)| attributes(list).len())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(total, 5000);
    }

    #[test]
    fn range_elements_carry_a_key_end_and_verdicts_their_chain() {
        let mut list = Attrs::new();
        put_set_element(
            &mut list,
            &SetElement {
                key: vec![1, 2, 3, 4],
                key_end: Some(vec![1, 2, 3, 9]),
                data: SetData::None,
                comment: None,
            },
            true,
        );
        let elem = attributes(&list.buf);
        let inner = attributes(elem[0].1);
        assert_eq!(
            inner.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END]
        );
        let mut list = Attrs::new();
        put_set_element(
            &mut list,
            &SetElement {
                key: vec![1],
                key_end: None,
                data: SetData::Verdict(Verdict::Goto("x".into())),
                comment: Some("apps/web-service:80".into()),
            },
            true,
        );
        assert!(list.buf.windows(2).any(|w| w == b"x\0"));
        assert!(list.buf.windows(4).any(|w| w == NFT_GOTO.to_be_bytes()));
        let elem = attributes(&list.buf);
        let udata = attributes(elem[0].1)
            .into_iter()
            .find(|(k, _)| *k == NFTA_SET_ELEM_USERDATA)
            .map(|(_, v)| v.to_vec());
        assert_eq!(
            udata.as_deref().and_then(comment_of).as_deref(),
            Some("apps/web-service:80")
        );
    }

    #[test]
    fn comments_are_nul_terminated_and_cut_on_a_character_boundary() {
        let data = comment_userdata("ns/name:80");
        assert_eq!(data[0], UDATA_COMMENT);
        assert_eq!(usize::from(data[1]), data.len() - 2);
        assert_eq!(data.last(), Some(&0));
        let long = "é".repeat(100);
        let cut = comment_of(&comment_userdata(&long)).unwrap_or_default();
        assert!(cut.len() <= COMMENT_MAX && long.starts_with(&cut), "{cut}");
        // An owner tag and a comment side by side: each reads its own.
        let mut both = comment_userdata("a/b:1");
        both.extend(owner_userdata("owner"));
        assert_eq!(comment_of(&both).as_deref(), Some("a/b:1"));
        assert_eq!(owner_of(&both).as_deref(), Some("owner"));
    }
}

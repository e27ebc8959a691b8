//! The DNS wire format on the hot path: parsing a query (header, the one
//! question, EDNS0), writing a response record by record straight into a
//! buffer (owner names as pointers to the question, so the question's case is
//! preserved), size limits with truncation, and scanning an upstream response
//! for its rcode and TTLs (for the cache).
//!
//! Why not hickory-proto here: decoding a query into a `Message` and encoding
//! the answer costs several allocations per query, more than the whole budget
//! of a cluster answer (see ARCHITECTURE.md). hickory-proto is used where
//! messages are complex (an ExternalName target resolved upstream) and by the
//! tests and the fuzz target as an independent decoder of everything written
//! here.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 12;
/// The longest name in wire format (RFC 1035 2.3.4).
pub const MAX_NAME: usize = 255;
/// A UDP response without EDNS0 fits in this.
pub const PLAIN_UDP_LIMIT: usize = 512;
/// The largest UDP payload this server sends, whatever a client advertises
/// (the DNS flag day 2020 value, avoids IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP payload size this server advertises in its OPT record.
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;
/// Length of an OPT record without options.
pub const OPT_LEN: usize = 11;

/// Record types used here.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const HINFO: u16 = 13;
    pub const MX: u16 = 15;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

/// Response codes (RFC 1035, 6891).
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const FORMERR: u8 = 1;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const NOTIMP: u8 = 4;
    pub const REFUSED: u8 = 5;
    /// Extended (needs OPT): 16 = 1 << 4 | 0.
    pub const BADVERS: u16 = 16;
}

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// A lowercase name in wire format (labels, then the root's 0), on the stack.
#[derive(Clone)]
pub struct NameBuf {
    buf: [u8; MAX_NAME + 1],
    len: usize,
    labels: usize,
}

impl NameBuf {
    /// The wire bytes, ending with the root's 0.
    pub fn wire(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The number of labels (the root not counted).
    pub fn labels(&self) -> usize {
        self.labels
    }

    /// Parses a name in wire format starting at `at` without compression
    /// pointers, lowercasing ASCII letters. Returns the name and the offset
    /// after it.
    pub fn parse_uncompressed(packet: &[u8], at: usize) -> Option<(NameBuf, usize)> {
        let mut name = NameBuf {
            buf: [0; MAX_NAME + 1],
            len: 0,
            labels: 0,
        };
        let mut pos = at;
        loop {
            let len = *packet.get(pos)? as usize;
            if len == 0 {
                if name.len + 1 > MAX_NAME {
                    return None;
                }
                name.buf[name.len] = 0;
                name.len += 1;
                return Some((name, pos + 1));
            }
            if len > 63 {
                // A pointer (0xC0) or a reserved label type: not in a question.
                return None;
            }
            let label = packet.get(pos + 1..pos + 1 + len)?;
            if name.len + 1 + len + 1 > MAX_NAME {
                return None;
            }
            name.buf[name.len] = len as u8;
            for (d, s) in name.buf[name.len + 1..name.len + 1 + len]
                .iter_mut()
                .zip(label)
            {
                *d = s.to_ascii_lowercase();
            }
            name.len += 1 + len;
            name.labels += 1;
            pos += 1 + len;
        }
    }

    /// A name from text (`web.apps.svc.cluster.local`, a trailing dot
    /// optional), lowercased. None when a label is empty or too long, or the
    /// name is too long.
    pub fn from_text(text: &str) -> Option<NameBuf> {
        let wire = wire_from_text(text)?;
        let (name, _) = NameBuf::parse_uncompressed(&wire, 0)?;
        Some(name)
    }
}

impl std::fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&name_to_text(self.wire()))
    }
}

/// Text to wire format (case kept). None for an empty label, a label over
/// 63 bytes or a name over 255 bytes. "." and "" are the root.
pub fn wire_from_text(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Wire format (uncompressed) to text with a trailing dot; bytes outside
/// printable ASCII and the dot inside a label are escaped as `\DDD`.
pub fn name_to_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 || len > 63 {
            break;
        }
        let end = (pos + 1 + len as usize).min(wire.len());
        for &b in &wire[pos + 1..end] {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        out.push('.');
        pos = end;
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// The length of the part of `name` before `origin` when `name` is the
/// origin or below it (both lowercase wire, uncompressed).
pub fn relative_len(name: &[u8], origin: &[u8]) -> Option<usize> {
    let rel = name.len().checked_sub(origin.len())?;
    if name[rel..] != *origin {
        return None;
    }
    let mut pos = 0;
    while pos < rel {
        pos += 1 + name[pos] as usize;
    }
    (pos == rel).then_some(rel)
}

/// Iterates the labels of a wire name (uncompressed).
pub fn labels(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            return None;
        }
        let label = wire.get(pos + 1..pos + 1 + len)?;
        pos += 1 + len;
        Some(label)
    })
}

/// EDNS0 as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub udp_size: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A query as the handler needs it.
pub struct Query<'a> {
    pub packet: &'a [u8],
    pub id: u16,
    pub opcode: u8,
    pub rd: bool,
    pub cd: bool,
    /// The question name, lowercase.
    pub name: NameBuf,
    pub qtype: u16,
    pub qclass: u16,
    /// Offset after the question (header + question bytes are echoed).
    pub question_end: usize,
    pub edns: Option<Edns>,
}

/// Why a packet is not a query the handler can answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth a reply: too short to hold a header, or a response.
    Drop,
    /// Reply with this rcode; the question is echoed when it parsed.
    Rcode { rcode: u8, echo_question: bool },
    /// EDNS version above 0: BADVERS with our OPT.
    BadVersion,
}

/// Skips a possibly compressed name; returns the offset after it.
pub fn skip_name(packet: &[u8], mut pos: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *packet.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => {
                total += 1 + len as usize;
                if total > MAX_NAME {
                    return None;
                }
                pos += 1 + len as usize;
                if pos > packet.len() {
                    return None;
                }
            }
            0xC0..=0xFF => {
                packet.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Parses a query. Never panics on any input.
pub fn parse_query(packet: &[u8]) -> Result<Query<'_>, Reject> {
    if packet.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = be16(packet, 0).ok_or(Reject::Drop)?;
    let flags = be16(packet, 2).ok_or(Reject::Drop)?;
    if flags & FLAG_QR != 0 {
        return Err(Reject::Drop);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    let counts = [4, 6, 8, 10].map(|at| be16(packet, at).unwrap_or(0));
    let [qd, an, ns, ar] = counts;
    let formerr = Reject::Rcode {
        rcode: rcode::FORMERR,
        echo_question: false,
    };
    if qd != 1 {
        if opcode != 0 {
            return Err(Reject::Rcode {
                rcode: rcode::NOTIMP,
                echo_question: false,
            });
        }
        return Err(formerr);
    }
    let (name, after_name) = NameBuf::parse_uncompressed(packet, HEADER_LEN).ok_or(formerr)?;
    let qtype = be16(packet, after_name).ok_or(formerr)?;
    let qclass = be16(packet, after_name + 2).ok_or(formerr)?;
    let question_end = after_name + 4;
    if opcode != 0 {
        return Err(Reject::Rcode {
            rcode: rcode::NOTIMP,
            echo_question: true,
        });
    }
    // Skip answer and authority records (a query normally has none), then
    // find the OPT record among the additional ones.
    let mut pos = question_end;
    for _ in 0..(u32::from(an) + u32::from(ns)) {
        pos = skip_rr(packet, pos).ok_or(formerr)?;
    }
    let mut edns = None;
    for _ in 0..ar {
        let name_start = pos;
        let after = skip_name(packet, pos).ok_or(formerr)?;
        let rtype = be16(packet, after).ok_or(formerr)?;
        let class = be16(packet, after + 2).ok_or(formerr)?;
        let ttl = be32(packet, after + 4).ok_or(formerr)?;
        let rdlen = be16(packet, after + 8).ok_or(formerr)? as usize;
        let end = after + 10 + rdlen;
        if end > packet.len() {
            return Err(formerr);
        }
        if rtype == rtype::OPT {
            // RFC 6891 6.1.1: one OPT, owned by the root.
            if edns.is_some() || packet[name_start] != 0 || after != name_start + 1 {
                return Err(formerr);
            }
            edns = Some(Edns {
                udp_size: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl & 0x8000 != 0,
            });
        }
        pos = end;
    }
    let query = Query {
        packet,
        id,
        opcode,
        rd: flags & FLAG_RD != 0,
        cd: flags & FLAG_CD != 0,
        name,
        qtype,
        qclass,
        question_end,
        edns,
    };
    if edns.is_some_and(|e| e.version > 0) {
        return Err(Reject::BadVersion);
    }
    Ok(query)
}

/// Skips one resource record; returns the offset after it.
pub fn skip_rr(packet: &[u8], pos: usize) -> Option<usize> {
    let after = skip_name(packet, pos)?;
    let rdlen = be16(packet, after + 8)? as usize;
    let end = after + 10 + rdlen;
    (end <= packet.len()).then_some(end)
}

impl Query<'_> {
    /// The most bytes a response may have on this transport.
    pub fn size_limit(&self, tcp: bool) -> usize {
        if tcp {
            return u16::MAX as usize;
        }
        match self.edns {
            Some(e) => usize::from(e.udp_size.clamp(PLAIN_UDP_LIMIT as u16, MAX_UDP_PAYLOAD)),
            None => PLAIN_UDP_LIMIT,
        }
    }
}

/// Who owns a record being written.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'n> {
    /// The question's name (a pointer to offset 12).
    Question,
    /// A suffix of the question name, at this offset in the packet.
    Pointer(u16),
    /// A name written out in full (wire format, uncompressed).
    Name(&'n [u8]),
    /// A label followed by a name.
    Prefixed(&'n [u8], &'n [u8]),
}

/// Writes a response into a buffer: header, the question echoed from the
/// query, then records section by section (answer, authority, additional),
/// then the OPT record when the query had one.
pub struct Writer<'b> {
    out: &'b mut Vec<u8>,
    counts: [u16; 3],
    section: usize,
    /// Byte offset where each section starts.
    starts: [usize; 3],
    limit: usize,
    edns: bool,
    extended_rcode: u8,
}

pub const ANSWER: usize = 0;
pub const AUTHORITY: usize = 1;
pub const ADDITIONAL: usize = 2;

impl<'b> Writer<'b> {
    /// Starts a response to `query`: its ID, opcode, RD and CD, QR and RA set,
    /// the question echoed byte for byte (the client's case).
    pub fn new(out: &'b mut Vec<u8>, query: &Query<'_>, tcp: bool) -> Writer<'b> {
        out.clear();
        let flags = FLAG_QR
            | FLAG_RA
            | (u16::from(query.opcode) << 11)
            | if query.rd { FLAG_RD } else { 0 }
            | if query.cd { FLAG_CD } else { 0 };
        out.extend_from_slice(&query.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&query.packet[HEADER_LEN..query.question_end]);
        let end = out.len();
        Writer {
            out,
            counts: [0; 3],
            section: ANSWER,
            starts: [end; 3],
            limit: query.size_limit(tcp),
            edns: query.edns.is_some(),
            extended_rcode: 0,
        }
    }

    /// A header-only response (no question), for packets whose question did
    /// not parse.
    pub fn header_only(out: &mut Vec<u8>, packet: &[u8], rcode: u8) {
        out.clear();
        let id = be16(packet, 0).unwrap_or(0);
        let flags = be16(packet, 2).unwrap_or(0);
        let flags = FLAG_QR | (flags & (0x7800 | FLAG_RD | FLAG_CD)) | u16::from(rcode & 0xF);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&[0; 8]);
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let mut flags = u16::from_be_bytes([self.out[2], self.out[3]]);
        if on {
            flags |= flag;
        } else {
            flags &= !flag;
        }
        self.out[2..4].copy_from_slice(&flags.to_be_bytes());
    }

    /// Sets the authoritative-answer bit.
    pub fn set_authoritative(&mut self, on: bool) {
        self.set_flag(FLAG_AA, on);
    }

    /// Marks the response truncated (TC): the client retries over TCP.
    pub fn set_truncated(&mut self) {
        self.set_flag(FLAG_TC, true);
    }

    /// Sets the response code (values above 15 go into the OPT record).
    pub fn set_rcode(&mut self, code: u16) {
        self.out[3] = (self.out[3] & 0xF0) | (code & 0xF) as u8;
        self.extended_rcode = (code >> 4) as u8;
    }

    /// The response code set so far (low 4 bits).
    pub fn rcode(&self) -> u8 {
        self.out[3] & 0xF
    }

    /// Moves on to a later section (never back).
    pub fn section(&mut self, section: usize) {
        while self.section < section {
            self.section += 1;
            self.starts[self.section] = self.out.len();
        }
    }

    /// Records written so far in a section.
    pub fn count(&self, section: usize) -> u16 {
        self.counts[section]
    }

    fn owner(&mut self, owner: Owner<'_>) {
        match owner {
            Owner::Question => self.out.extend_from_slice(&[0xC0, HEADER_LEN as u8]),
            Owner::Pointer(at) => self.out.extend_from_slice(&(0xC000 | at).to_be_bytes()),
            Owner::Name(wire) => self.out.extend_from_slice(wire),
            Owner::Prefixed(label, wire) => {
                self.out.push(label.len() as u8);
                self.out.extend_from_slice(label);
                self.out.extend_from_slice(wire);
            }
        }
    }

    /// Writes one record in the current section; `rdata` appends the data.
    pub fn record(
        &mut self,
        owner: Owner<'_>,
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Vec<u8>),
    ) {
        self.owner(owner);
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.out.len();
        self.out.extend_from_slice(&[0, 0]);
        rdata(self.out);
        let rdlen = (self.out.len() - len_at - 2) as u16;
        self.out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
        self.counts[self.section] = self.counts[self.section].saturating_add(1);
    }

    pub fn a(&mut self, owner: Owner<'_>, ttl: u32, ip: Ipv4Addr) {
        self.record(owner, rtype::A, ttl, |o| o.extend_from_slice(&ip.octets()));
    }

    pub fn aaaa(&mut self, owner: Owner<'_>, ttl: u32, ip: Ipv6Addr) {
        self.record(owner, rtype::AAAA, ttl, |o| {
            o.extend_from_slice(&ip.octets())
        });
    }

    /// A record whose data is one name (PTR, CNAME, NS): `prefix` label (if
    /// any) then `wire`.
    pub fn name_record(
        &mut self,
        owner: Owner<'_>,
        rtype: u16,
        ttl: u32,
        prefix: Option<&[u8]>,
        wire: &[u8],
    ) {
        self.record(owner, rtype, ttl, |o| {
            if let Some(label) = prefix {
                o.push(label.len() as u8);
                o.extend_from_slice(label);
            }
            o.extend_from_slice(wire);
        });
    }

    /// An SRV record (target never compressed, RFC 2782).
    #[allow(clippy::too_many_arguments)]
    pub fn srv(
        &mut self,
        owner: Owner<'_>,
        ttl: u32,
        priority: u16,
        weight: u16,
        port: u16,
        prefix: Option<&[u8]>,
        target: &[u8],
    ) {
        self.record(owner, rtype::SRV, ttl, |o| {
            o.extend_from_slice(&priority.to_be_bytes());
            o.extend_from_slice(&weight.to_be_bytes());
            o.extend_from_slice(&port.to_be_bytes());
            if let Some(label) = prefix {
                o.push(label.len() as u8);
                o.extend_from_slice(label);
            }
            o.extend_from_slice(target);
        });
    }

    /// A TXT record with one character-string.
    pub fn txt(&mut self, owner: Owner<'_>, ttl: u32, text: &[u8]) {
        self.record(owner, rtype::TXT, ttl, |o| {
            o.push(text.len().min(255) as u8);
            o.extend_from_slice(&text[..text.len().min(255)]);
        });
    }

    /// Finishes: drops the additional section, then everything after the
    /// question with TC set, when the response would exceed the transport's
    /// limit; then adds the OPT record. Returns the response length.
    pub fn finish(mut self) -> usize {
        self.section(ADDITIONAL);
        let reserve = if self.edns { OPT_LEN } else { 0 };
        if self.out.len() + reserve > self.limit {
            // RFC 2181 9: additional data may be dropped without TC.
            self.out.truncate(self.starts[ADDITIONAL]);
            self.counts[ADDITIONAL] = 0;
        }
        if self.out.len() + reserve > self.limit {
            self.out.truncate(self.starts[ANSWER]);
            self.counts = [0; 3];
            self.set_flag(FLAG_TC, true);
        }
        if self.edns {
            self.out.push(0);
            self.out.extend_from_slice(&rtype::OPT.to_be_bytes());
            self.out
                .extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
            self.out
                .extend_from_slice(&[self.extended_rcode, 0, 0, 0, 0, 0]);
            self.counts[ADDITIONAL] = self.counts[ADDITIONAL].saturating_add(1);
        }
        for (i, count) in self.counts.iter().enumerate() {
            self.out[6 + 2 * i..8 + 2 * i].copy_from_slice(&count.to_be_bytes());
        }
        self.out.len()
    }
}

/// A response with only the header (and OPT for BADVERS): FORMERR, NOTIMP,
/// REFUSED and BADVERS answers to packets that did not parse as queries.
pub fn reject_response(out: &mut Vec<u8>, packet: &[u8], reject: Reject) -> bool {
    match reject {
        Reject::Drop => false,
        Reject::Rcode {
            rcode,
            echo_question,
        } => {
            Writer::header_only(out, packet, rcode);
            if echo_question
                && let Some(end) = skip_name(packet, HEADER_LEN)
                && let Some(q) = packet.get(HEADER_LEN..end + 4)
            {
                out.extend_from_slice(q);
                out[4..6].copy_from_slice(&1u16.to_be_bytes());
            }
            true
        }
        Reject::BadVersion => {
            Writer::header_only(out, packet, 0);
            // OPT with extended rcode 1 (BADVERS = 16) and version 0.
            out.push(0);
            out.extend_from_slice(&rtype::OPT.to_be_bytes());
            out.extend_from_slice(&ADVERTISED_UDP_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[(rcode::BADVERS >> 4) as u8, 0, 0, 0, 0, 0]);
            out[10..12].copy_from_slice(&1u16.to_be_bytes());
            true
        }
    }
}

/// What the cache needs to know about an upstream response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseInfo {
    pub id: u16,
    pub rcode: u8,
    pub truncated: bool,
    pub answers: u16,
    /// Offsets of every TTL field except the OPT record's.
    pub ttl_offsets: Vec<usize>,
    /// The smallest TTL among the records (None when there are none).
    pub min_ttl: Option<u32>,
    /// For negative answers: min(SOA TTL, SOA MINIMUM) of the authority SOA.
    pub negative_ttl: Option<u32>,
    /// The question name (lowercase), type and class.
    pub qname: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
}

/// Scans a response from an upstream server. None when it is malformed or
/// not a response with exactly one question.
pub fn scan_response(packet: &[u8]) -> Option<ResponseInfo> {
    let id = be16(packet, 0)?;
    let flags = be16(packet, 2)?;
    if flags & FLAG_QR == 0 || be16(packet, 4)? != 1 {
        return None;
    }
    let an = be16(packet, 6)?;
    let ns = be16(packet, 8)?;
    let ar = be16(packet, 10)?;
    let (qname, after) = NameBuf::parse_uncompressed(packet, HEADER_LEN)?;
    let qtype = be16(packet, after)?;
    let qclass = be16(packet, after + 2)?;
    let mut pos = after + 4;
    let mut info = ResponseInfo {
        id,
        rcode: (flags & 0xF) as u8,
        truncated: flags & FLAG_TC != 0,
        answers: an,
        ttl_offsets: Vec::new(),
        min_ttl: None,
        negative_ttl: None,
        qname: qname.wire().to_vec(),
        qtype,
        qclass,
    };
    let total = u32::from(an) + u32::from(ns) + u32::from(ar);
    for i in 0..total {
        let after_name = skip_name(packet, pos)?;
        let rtype = be16(packet, after_name)?;
        let ttl = be32(packet, after_name + 4)?;
        let rdlen = be16(packet, after_name + 8)? as usize;
        let rdata = after_name + 10;
        let end = rdata + rdlen;
        if end > packet.len() {
            return None;
        }
        if rtype != rtype::OPT {
            info.ttl_offsets.push(after_name + 4);
            info.min_ttl = Some(info.min_ttl.map_or(ttl, |m| m.min(ttl)));
            let in_authority = i >= u32::from(an) && i < u32::from(an) + u32::from(ns);
            if rtype == rtype::SOA && in_authority {
                let mname_end = skip_name(packet, rdata)?;
                let rname_end = skip_name(packet, mname_end)?;
                let minimum = be32(packet, rname_end + 16)?;
                info.negative_ttl = Some(ttl.min(minimum));
            }
        }
        pos = end;
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(wire_from_text(name).unwrap());
        q.extend(qtype.to_be_bytes());
        q.extend(CLASS_IN.to_be_bytes());
        if let Some(size) = edns {
            q[11] = 1;
            q.extend([0, 0, 41]);
            q.extend(size.to_be_bytes());
            q.extend([0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn text_and_wire() {
        assert_eq!(wire_from_text("a.bc").unwrap(), b"\x01a\x02bc\x00");
        assert_eq!(wire_from_text("a.bc.").unwrap(), b"\x01a\x02bc\x00");
        assert_eq!(wire_from_text(".").unwrap(), b"\x00");
        assert!(wire_from_text("a..b").is_none());
        assert!(wire_from_text(&"x".repeat(64)).is_none());
        assert!(wire_from_text(&["abcdefgh"; 40].join(".")).is_none());
        assert_eq!(name_to_text(b"\x01a\x02bc\x00"), "a.bc.");
        assert_eq!(name_to_text(b"\x00"), ".");
        assert_eq!(name_to_text(b"\x03a.b\x00"), "a\\046b.");
        assert_eq!(
            labels(b"\x01a\x02bc\x00").collect::<Vec<_>>(),
            [&b"a"[..], b"bc"]
        );
    }

    #[test]
    fn parses_a_query_lowercase_keeping_the_packet() {
        let packet = query("Web.APPS.svc.cluster.local", rtype::A, Some(4096));
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.id, 0x1234);
        assert!(q.rd);
        assert_eq!(
            q.name.wire(),
            wire_from_text("web.apps.svc.cluster.local").unwrap()
        );
        assert_eq!(q.name.labels(), 5);
        assert_eq!(q.qtype, rtype::A);
        assert_eq!(
            q.edns,
            Some(Edns {
                udp_size: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.size_limit(false), MAX_UDP_PAYLOAD as usize);
        assert_eq!(q.size_limit(true), 65535);
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_query(&[0; 5]).err(), Some(Reject::Drop));
        let mut response = query("a", 1, None);
        response[2] |= 0x80;
        assert_eq!(parse_query(&response).err(), Some(Reject::Drop));
        let mut two = query("a", 1, None);
        two[5] = 2;
        assert!(matches!(
            parse_query(&two),
            Err(Reject::Rcode {
                rcode: rcode::FORMERR,
                ..
            })
        ));
        let mut notify = query("a", 1, None);
        notify[2] |= 4 << 3;
        assert_eq!(
            parse_query(&notify).err(),
            Some(Reject::Rcode {
                rcode: rcode::NOTIMP,
                echo_question: true
            })
        );
        let mut truncated = query("abc", 1, None);
        truncated.truncate(15);
        assert!(matches!(parse_query(&truncated), Err(Reject::Rcode { .. })));
        let mut v1 = query("a", 1, Some(1232));
        let n = v1.len();
        v1[n - 5] = 1; // version
        assert_eq!(parse_query(&v1).err(), Some(Reject::BadVersion));
        // Pointer in the question.
        let mut ptr = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1];
        assert!(parse_query(&ptr).is_err());
        ptr.truncate(3);
        assert_eq!(parse_query(&ptr).err(), Some(Reject::Drop));
    }

    #[test]
    fn writes_and_truncates() {
        let packet = query("X.example", rtype::A, None);
        let q = parse_query(&packet).unwrap();
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &q, false);
        w.set_authoritative(true);
        for i in 0..10u8 {
            w.a(Owner::Question, 5, Ipv4Addr::new(10, 0, 0, i));
        }
        let len = w.finish();
        assert_eq!(len, packet.len() + 10 * 16);
        assert_eq!(out[2] & 0x04, 0x04, "AA");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 10);
        assert_eq!(
            &out[12..packet.len()],
            &packet[12..],
            "question echoed, case kept"
        );

        let mut w = Writer::new(&mut out, &q, false);
        for i in 0..40u8 {
            w.a(Owner::Question, 5, Ipv4Addr::new(10, 0, 0, i));
        }
        w.finish();
        assert_eq!(out.len(), packet.len(), "only the question is left");
        assert_eq!(out[2] & 0x02, 0x02, "TC");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 0);

        // Additional dropped first, without TC.
        let mut w = Writer::new(&mut out, &q, false);
        for i in 0..20u8 {
            w.a(Owner::Question, 5, Ipv4Addr::new(10, 0, 0, i));
        }
        w.section(ADDITIONAL);
        for i in 0..20u8 {
            w.a(Owner::Question, 5, Ipv4Addr::new(10, 0, 1, i));
        }
        w.finish();
        assert_eq!(out[2] & 0x02, 0);
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 20);
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 0);
    }

    #[test]
    fn scans_upstream_responses() {
        let packet = query("x.example", rtype::A, Some(1232));
        let q = parse_query(&packet).unwrap();
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out, &q, false);
        w.a(Owner::Question, 300, Ipv4Addr::new(192, 0, 2, 1));
        w.a(Owner::Question, 60, Ipv4Addr::new(192, 0, 2, 2));
        w.finish();
        let info = scan_response(&out).unwrap();
        assert_eq!(info.answers, 2);
        assert_eq!(info.min_ttl, Some(60));
        assert_eq!(info.ttl_offsets.len(), 2, "OPT excluded");
        assert_eq!(info.qname, wire_from_text("x.example").unwrap());
        assert!(
            scan_response(&packet).is_none(),
            "a query is not a response"
        );
        for cut in 0..out.len() {
            let _ = scan_response(&out[..cut]);
        }
    }
}

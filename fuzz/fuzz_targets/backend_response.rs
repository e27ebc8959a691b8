//! Fuzzes the ingress's reading of backend responses (`backend_wire`: the
//! response head, then a Content-Length, chunked or close-delimited body),
//! driven exactly as `pool.rs` drives it from a socket: parse, and read more
//! only when the decoder asks. A backend is not trusted, so the bytes are
//! arbitrary and arrive split at points the fuzzer picks.
//!
//! Input: `flags` (bit 0: the request was HEAD), `k`, then `k % 17` piece
//! lengths (each byte + 1, used in turn; none: one piece), then the bytes
//! the backend sends before it closes.
//!
//! Checked: no panic; the same outcome (head, body, error or not, what is
//! left after the body) whole and split; the body never longer than the
//! bytes after the head; a Content-Length body exactly that long, else an
//! error; a head with a body never accepted with both Content-Length and
//! Transfer-Encoding, nor with a Content-Length other than its length; a
//! chunked body equal to what a slow model of RFC 9112 7.1 decodes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use podwire_ingress::backend_wire::{BodyDecoder, Framing, Head, parse_head};

/// What reading one response gave.
#[derive(Debug)]
struct Outcome {
    /// The final head, once parsed.
    head: Option<Head>,
    /// Bytes the head (and any interim heads) took.
    head_len: usize,
    body: Vec<u8>,
    /// The error that ended the read, if any (its message).
    error: Option<String>,
    /// What followed the body (only meaningful without an error).
    rest: Vec<u8>,
}

/// The backend's bytes, handed out in pieces of the given lengths (cycled).
struct Backend<'a> {
    stream: &'a [u8],
    lengths: &'a [usize],
    fed: usize,
    reads: usize,
}

impl Backend<'_> {
    /// One read into `buf`; false once the backend has closed.
    fn feed(&mut self, buf: &mut BytesMut) -> bool {
        if self.fed == self.stream.len() {
            return false;
        }
        let len = match self.lengths {
            [] => self.stream.len(),
            lengths => lengths[self.reads % lengths.len()],
        };
        self.reads += 1;
        let end = (self.fed + len).min(self.stream.len());
        buf.extend_from_slice(&self.stream[self.fed..end]);
        self.fed = end;
        true
    }
}

/// Reads `stream` in pieces of the given lengths, as pool.rs reads its
/// socket, until the response ends, fails, or the backend closes.
fn read(stream: &[u8], lengths: &[usize], head_request: bool) -> Outcome {
    let mut backend = Backend {
        stream,
        lengths,
        fed: 0,
        reads: 0,
    };
    let mut out = Outcome {
        head: None,
        head_len: 0,
        body: Vec::new(),
        error: None,
        rest: Vec::new(),
    };
    let mut buf = BytesMut::new();
    let framing = loop {
        match parse_head(&mut buf, head_request) {
            Ok(Some(head)) => {
                let framing = head.framing;
                out.head = Some(head);
                break framing;
            }
            Ok(None) if backend.feed(&mut buf) => {}
            Ok(None) => {
                out.error = Some("closed before the head".into());
                return out;
            }
            Err(err) => {
                out.error = Some(err.to_string());
                return out;
            }
        }
    };
    out.head_len = backend.fed - buf.len();
    let mut decoder = BodyDecoder::new(framing);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(data)) => {
                assert!(!data.is_empty(), "an empty data frame");
                out.body.extend_from_slice(&data);
            }
            Ok(None) if decoder.is_done() => break,
            Ok(None) if backend.feed(&mut buf) => {}
            Ok(None) => {
                if let Err(err) = decoder.close() {
                    out.error = Some(err.to_string());
                }
                break;
            }
            Err(err) => {
                out.error = Some(err.to_string());
                break;
            }
        }
    }
    out.rest = buf.to_vec();
    out.rest.extend_from_slice(&stream[backend.fed..]);
    out
}

/// RFC 9112 7.1 read slowly: the chunk data of `body`, or None where the
/// framing is broken or cut short. Trailers are not looked at.
fn model_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let line = &body[..line_end];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        let size = usize::try_from(size).ok()?;
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// RFC 9110 6.4.1: no body whatever the headers say.
fn bodyless(head: &Head, head_request: bool) -> bool {
    let code = head.status.as_u16();
    head_request || (100..200).contains(&code) || code == 204 || code == 304
}

fn check(stream: &[u8], lengths: &[usize], head_request: bool) {
    let whole = read(stream, &[], head_request);
    let split = read(stream, lengths, head_request);

    // The split must not matter.
    assert_eq!(
        whole.error.is_some(),
        split.error.is_some(),
        "{whole:?} / {split:?}"
    );
    assert_eq!(whole.head.is_some(), split.head.is_some());
    assert_eq!(whole.body, split.body, "body depends on the split");
    if let (Some(a), Some(b)) = (&whole.head, &split.head) {
        assert_eq!(a.status, b.status);
        assert_eq!(a.framing, b.framing);
        assert_eq!(a.keep_alive, b.keep_alive);
        assert_eq!(whole.head_len, split.head_len);
    }
    if whole.error.is_none() {
        assert_eq!(whole.rest, split.rest, "what follows depends on the split");
    }

    let Some(head) = &whole.head else {
        assert!(whole.body.is_empty());
        return;
    };
    let after_head = &stream[whole.head_len..];
    assert!(whole.body.len() <= after_head.len(), "more body than input");

    if !bodyless(head, head_request) {
        let cl = head.headers.get_all("content-length").iter().count();
        let te = head.headers.contains_key("transfer-encoding");
        assert!(
            !(cl > 0 && te),
            "accepted both Content-Length and Transfer-Encoding"
        );
        if let Framing::Length(n) = head.framing {
            for value in head.headers.get_all("content-length") {
                for member in value.as_bytes().split(|b| *b == b',') {
                    let text = std::str::from_utf8(member.trim_ascii())
                        .expect("accepted a non-text length");
                    assert_eq!(
                        text.parse::<u64>().ok(),
                        Some(n),
                        "accepted length {text:?} as {n}"
                    );
                }
            }
        }
    }

    match head.framing {
        Framing::Length(n) => {
            assert!(whole.body.len() as u64 <= n, "more than Content-Length");
            if whole.error.is_none() {
                assert_eq!(
                    whole.body.len() as u64,
                    n,
                    "a Content-Length body cut short without an error"
                );
                assert_eq!(whole.rest, &after_head[whole.body.len()..]);
            }
        }
        Framing::Chunked => {
            if whole.error.is_none() {
                assert_eq!(
                    model_chunked(after_head).as_deref(),
                    Some(&whole.body[..]),
                    "chunked body differs from the model"
                );
            }
        }
        Framing::Eof => {
            assert!(whole.error.is_none(), "a close-delimited body cannot fail");
            assert_eq!(
                whole.body, after_head,
                "a close-delimited body is everything after the head"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, k, rest @ ..] = data else {
        return;
    };
    let k = usize::from(*k % 17).min(rest.len());
    let (lengths, stream) = rest.split_at(k);
    let lengths: Vec<usize> = lengths.iter().map(|b| usize::from(*b) + 1).collect();
    check(stream, &lengths, flags & 1 == 1);
});

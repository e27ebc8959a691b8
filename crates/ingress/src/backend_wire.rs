//! What a backend sends back over HTTP/1.1, decoded without I/O: the
//! response head (httparse; interim 1xx answers skipped; how the body is
//! framed) and the body (Content-Length, chunked with httparse's chunk-size
//! parser, or until the backend closes). Input may arrive split anywhere.
//! The backend is not trusted: every part that has to be buffered whole (a
//! head, a chunk-size line, the trailers) has a limit, and framing that two
//! parsers could read differently (Content-Length beside Transfer-Encoding,
//! disagreeing lengths) is an error rather than a guess. `pool.rs` feeds
//! these from backend sockets; `fuzz/fuzz_targets/backend_response.rs` from
//! arbitrary bytes.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper::{HeaderMap, StatusCode, Version};

/// The largest response head accepted from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The most response headers (or trailer fields) accepted from a backend.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// The longest chunk-size line, extensions and CRLF included (extensions
/// are ignored, but the line has to be held whole to find its end).
pub const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section (read to find the body's end, then dropped).
pub const MAX_TRAILERS: usize = 16 * 1024;

/// What is wrong with a backend's response. Each means the backend (or
/// something between it and us) speaks broken HTTP/1.1: the client gets a
/// 502 (or a cut-off body) and the connection is not reused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "the backend's response head is larger than {MAX_RESPONSE_HEAD} bytes; send fewer or shorter headers"
    )]
    HeadTooLarge,
    #[error("the backend's response head is malformed: {0}")]
    Head(httparse::Error),
    #[error("the backend answered with status code {0}, which is out of range")]
    Status(u16),
    #[error("the backend sent an invalid header name {0:?}")]
    HeaderName(String),
    #[error("the backend sent an invalid value for header {0}")]
    HeaderValue(String),
    #[error("the backend sent an invalid Content-Length {0:?}; it must be one decimal number")]
    ContentLength(String),
    #[error(
        "the backend sent both Content-Length and Transfer-Encoding, which frame the body two ways; send one"
    )]
    LengthAndTransferEncoding,
    #[error(
        "the backend sent Transfer-Encoding in an HTTP/1.0 response, where it is undefined; answer HTTP/1.1"
    )]
    TransferEncodingHttp10,
    #[error(
        "the backend sent an invalid Transfer-Encoding {0:?}; chunked may only appear once, as the last coding"
    )]
    TransferEncoding(String),
    #[error("the backend sent an invalid chunk-size line; it must be hex digits, extensions, CRLF")]
    ChunkSize,
    #[error("the backend sent a chunk-size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("the backend's chunk data is not followed by CRLF; the chunk size is wrong")]
    ChunkDataEnd,
    #[error("the backend's trailer section is malformed: {0}")]
    Trailers(httparse::Error),
    #[error("the backend's trailer section is larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
    #[error("the backend closed the connection in the middle of the response body")]
    Truncated,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body at all).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// When the backend closes the connection (not reusable).
    Eof,
}

/// A final (non-1xx, or 101) response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    pub framing: Framing,
}

/// Parses the final response head at the start of `buf` and removes it
/// (with any interim 1xx heads before it); `Ok(None)` until it is
/// complete. `head_request`: the request was HEAD, so the response has no
/// body whatever its headers say.
pub fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<Head>, WireError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let len = match parsed.parse(buf).map_err(WireError::Head)? {
            httparse::Status::Partial if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(WireError::HeadTooLarge);
            }
            httparse::Status::Partial => return Ok(None),
            // Checked on complete heads too, so the limit does not depend
            // on how the bytes were split.
            httparse::Status::Complete(len) if len > MAX_RESPONSE_HEAD => {
                return Err(WireError::HeadTooLarge);
            }
            httparse::Status::Complete(len) => len,
        };
        let code = parsed.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            // 100 Continue and other interim answers: the final one follows.
            buf.advance(len);
            continue;
        }
        let head = head_of(&parsed, head_request)?;
        buf.advance(len);
        return Ok(Some(head));
    }
}

fn head_of(parsed: &httparse::Response<'_, '_>, head_request: bool) -> Result<Head, WireError> {
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Status(code))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let mut close = version == Version::HTTP_10;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::HeaderName(h.name.to_string()))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| WireError::HeaderValue(h.name.to_string()))?;
        if name == CONNECTION
            && let Ok(v) = value.to_str()
        {
            for token in v.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let framing = framing_of(&headers, version, status, head_request)?;
    Ok(Head {
        status,
        version,
        // After a 101 the connection speaks another protocol.
        keep_alive: !close && status != StatusCode::SWITCHING_PROTOCOLS,
        headers,
        framing,
    })
}

/// RFC 9112 6.3, strictly: a response that could be framed two ways is
/// refused (a proxy that picked one reading could be desynchronised from
/// the backend, or from a cache that picked the other).
fn framing_of(
    headers: &HeaderMap,
    version: Version,
    status: StatusCode,
    head_request: bool,
) -> Result<Framing, WireError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    let length = content_length(headers)?;
    if !headers.contains_key(TRANSFER_ENCODING) {
        return Ok(length.map_or(Framing::Eof, Framing::Length));
    }
    if length.is_some() {
        return Err(WireError::LengthAndTransferEncoding);
    }
    if version == Version::HTTP_10 {
        return Err(WireError::TransferEncodingHttp10);
    }
    let mut codings = Vec::new();
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value.to_str().map_err(|_| {
            WireError::TransferEncoding(String::from_utf8_lossy(value.as_bytes()).into())
        })?;
        codings.extend(text.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    let invalid = || WireError::TransferEncoding(codings.join(", "));
    let Some((last, before)) = codings.split_last() else {
        return Err(invalid());
    };
    if before.iter().any(|c| c.eq_ignore_ascii_case("chunked")) {
        return Err(invalid());
    }
    // Codings without chunked last end when the backend closes (RFC 9112 6.3 4).
    Ok(if last.eq_ignore_ascii_case("chunked") {
        Framing::Chunked
    } else {
        Framing::Eof
    })
}

/// The Content-Length, if any: every value (headers and comma-separated
/// list members) must be the same decimal number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let invalid = || WireError::ContentLength(String::from_utf8_lossy(value.as_bytes()).into());
        for member in value.as_bytes().split(|b| *b == b',') {
            let digits = member.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(invalid());
            }
            let n = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or_else(invalid)?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where a body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    Eof,
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
}

/// Takes body bytes from the front of a buffer as they arrive, leaving
/// whatever follows the body there.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Eof => State::Eof,
        };
        BodyDecoder { state }
    }

    /// The body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body ends with the connection, which cannot be reused.
    pub fn is_close_delimited(&self) -> bool {
        self.state == State::Eof
    }

    /// The exact number of body bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The backend closed the connection: the end of a close-delimited
    /// body, a truncated one otherwise.
    pub fn close(&mut self) -> Result<(), WireError> {
        match self.state {
            State::Eof | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(WireError::Truncated),
        }
    }

    /// The next piece of body data from the front of `buf`; `Ok(None)`
    /// when `buf` holds no more of it (read more, unless `is_done`).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Eof => {
                    return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
                }
                State::Length(left) | State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), left) => State::Length(left),
                        (_, 0) => State::ChunkDataEnd,
                        (_, left) => State::ChunkData(left),
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                State::ChunkSize => {
                    let Some((len, size)) = chunk_size(buf)? else {
                        return Ok(None);
                    };
                    buf.advance(len);
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkDataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err(WireError::ChunkDataEnd),
                    None if buf.first().is_some_and(|b| *b != b'\r') => {
                        return Err(WireError::ChunkDataEnd);
                    }
                    None => return Ok(None),
                },
                State::Trailers => {
                    let len = {
                        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
                        match httparse::parse_headers(buf, &mut fields)
                            .map_err(WireError::Trailers)?
                        {
                            httparse::Status::Partial if buf.len() >= MAX_TRAILERS => {
                                return Err(WireError::TrailersTooLarge);
                            }
                            httparse::Status::Partial => return Ok(None),
                            httparse::Status::Complete((len, _)) if len > MAX_TRAILERS => {
                                return Err(WireError::TrailersTooLarge);
                            }
                            httparse::Status::Complete((len, _)) => len,
                        }
                    };
                    // Trailers are not forwarded (the client side may not
                    // be chunked at all).
                    buf.advance(len);
                    self.state = State::Done;
                    return Ok(None);
                }
            }
        }
    }
}

/// The chunk-size line at the front of `buf`: its length and the size, or
/// `None` until it is complete. httparse does the parsing; on top of it,
/// the line length is bounded, and two things it lets through are refused:
/// a line without digits (it reads that as size 0, the last chunk) and
/// control characters in an extension (it skips a bare LF there, so a
/// backend could hide a line break that another parser would honour).
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, WireError> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
            Err(WireError::ChunkLineTooLong)
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete((len, _))) if len > MAX_CHUNK_LINE => {
            Err(WireError::ChunkLineTooLong)
        }
        Ok(httparse::Status::Complete((len, size))) => {
            // httparse completes a line only at CRLF, its last two bytes.
            let line = buf.get(..len.saturating_sub(2)).unwrap_or_default();
            let digits_first = line.first().is_some_and(u8::is_ascii_hexdigit);
            let controls = line.iter().any(|b| b.is_ascii_control() && *b != b'\t');
            if !digits_first || controls {
                return Err(WireError::ChunkSize);
            }
            Ok(Some((len, size)))
        }
        Err(httparse::InvalidChunkSize) => Err(WireError::ChunkSize),
    }
}

#[cfg(test)]
mod tests;

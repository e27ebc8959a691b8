//! Response heads and bodies as hostile or merely odd backends send them,
//! each read whole and one byte at a time (the result must not depend on
//! how the bytes arrive).

use super::*;

/// What reading a whole response gives: the head, the body, and what
/// was left after the body (the start of the next response, or junk).
#[derive(Debug)]
struct Read {
    head: Head,
    body: Vec<u8>,
    rest: Vec<u8>,
}

/// Reads `input` as `pool.rs` reads a socket, `piece` bytes per read,
/// then the backend closes.
fn read_in(input: &[u8], head_request: bool, piece: usize) -> Result<Read, WireError> {
    let mut pieces = input.chunks(piece.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = parse_head(&mut buf, head_request)? {
            break head;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Err(WireError::Truncated),
        }
    };
    let mut decoder = BodyDecoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        if let Some(data) = decoder.decode(&mut buf)? {
            assert!(!data.is_empty(), "empty data piece");
            body.extend_from_slice(&data);
            continue;
        }
        if decoder.is_done() {
            break;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => {
                decoder.close()?;
                break;
            }
        }
    }
    let mut rest = buf.to_vec();
    pieces.for_each(|p| rest.extend_from_slice(p));
    Ok(Read { head, body, rest })
}

/// Reads `input` whole and byte by byte; both must agree.
fn read(input: &[u8]) -> Result<Read, WireError> {
    read_with(input, false)
}

fn read_with(input: &[u8], head_request: bool) -> Result<Read, WireError> {
    // Byte by byte costs a parse per byte of the unfinished part: large
    // inputs go in odd-sized pieces instead.
    let piece = if input.len() > 4200 { 1021 } else { 1 };
    let whole = read_in(input, head_request, input.len());
    let bytewise = read_in(input, head_request, piece);
    match (&whole, &bytewise) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.body, b.body, "body differs by split");
            assert_eq!(a.rest, b.rest, "rest differs by split");
            assert_eq!(a.head.framing, b.head.framing);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("whole: {whole:?}, byte by byte: {bytewise:?}"),
    }
    whole
}

fn chunked(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}").into_bytes()
}

#[test]
fn content_length() {
    let r = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhelloHTTP/1.1").unwrap();
    assert_eq!(r.head.status, StatusCode::OK);
    assert_eq!(r.head.framing, Framing::Length(5));
    assert!(r.head.keep_alive);
    assert_eq!(r.head.headers["x-a"], "1");
    assert_eq!(r.body, b"hello");
    assert_eq!(r.rest, b"HTTP/1.1");
    // Repeated equal values are one length (RFC 9112 6.3 5).
    let r =
        read(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\ncontent-length: 2\r\n\r\nok").unwrap();
    assert_eq!(r.body, b"ok");
    let r = read(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert!(r.body.is_empty());
}

#[test]
fn content_length_cut_short_is_an_error() {
    let err = read(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello").unwrap_err();
    assert!(matches!(err, WireError::Truncated), "{err}");
}

#[test]
fn invalid_or_disagreeing_lengths() {
    for value in [
        "5, 6",
        "+5",
        "-1",
        "",
        "0x5",
        "5 5",
        "99999999999999999999",
        "½",
    ] {
        let input = format!("HTTP/1.1 200 OK\r\ncontent-length: {value}\r\n\r\nhello");
        let err = read(input.as_bytes()).unwrap_err();
        assert!(matches!(err, WireError::ContentLength(_)), "{value}: {err}");
    }
    let err = read(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!")
        .unwrap_err();
    assert!(matches!(err, WireError::ContentLength(_)), "{err}");
}

#[test]
fn length_beside_transfer_encoding_is_an_error() {
    for head in [
        "content-length: 5\r\ntransfer-encoding: chunked",
        "transfer-encoding: chunked\r\ncontent-length: 5",
        "content-length: 5\r\ntransfer-encoding: gzip",
    ] {
        let input = format!("HTTP/1.1 200 OK\r\n{head}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let err = read(input.as_bytes()).unwrap_err();
        assert!(matches!(err, WireError::LengthAndTransferEncoding), "{err}");
    }
}

#[test]
fn transfer_codings() {
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "chunked",
        "CHUNKED",
        "gzip, chunked",
        "gzip\r\ntransfer-encoding: chunked",
    ] {
        let input = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n{body}");
        let r = read(input.as_bytes()).unwrap();
        assert_eq!(r.head.framing, Framing::Chunked, "{te}");
        assert_eq!(r.body, b"hello");
    }
    // Not chunked last: the body runs to the close.
    let r = read(format!("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n{body}").as_bytes())
        .unwrap();
    assert_eq!(r.head.framing, Framing::Eof);
    assert_eq!(r.body, body.as_bytes());
    for te in ["chunked, gzip", "chunked, chunked", " , "] {
        let input = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n{body}");
        let err = read(input.as_bytes()).unwrap_err();
        assert!(matches!(err, WireError::TransferEncoding(_)), "{te}: {err}");
    }
    let err =
        read(format!("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}").as_bytes())
            .unwrap_err();
    assert!(matches!(err, WireError::TransferEncodingHttp10), "{err}");
}

#[test]
fn bodyless_responses() {
    // 204 and 304 never have a body, whatever the headers say: what follows
    // is left in the buffer (and the connection is then not reused).
    for status in ["204 No Content", "304 Not Modified"] {
        let input = format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\n\r\nabc");
        let r = read(input.as_bytes()).unwrap();
        assert_eq!(r.head.framing, Framing::Length(0));
        assert!(r.body.is_empty());
        assert_eq!(r.rest, b"abc");
    }
    let r = read_with(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true).unwrap();
    assert_eq!(r.head.framing, Framing::Length(0));
    let r = read_with(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        true,
    )
    .unwrap();
    assert_eq!(r.head.framing, Framing::Length(0));
}

#[test]
fn close_delimited() {
    let r = read(b"HTTP/1.0 200 OK\r\n\r\nall of it\r\n0\r\n\r\n").unwrap();
    assert_eq!(r.head.framing, Framing::Eof);
    assert_eq!(r.head.version, Version::HTTP_10);
    assert!(!r.head.keep_alive);
    assert_eq!(r.body, b"all of it\r\n0\r\n\r\n");
    let r = read(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    assert!(r.body.is_empty());
}

#[test]
fn interim_answers_are_skipped() {
    let r = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    )
    .unwrap();
    assert_eq!(r.head.status, StatusCode::CREATED);
    assert!(!r.head.headers.contains_key("link"));
    assert_eq!(r.body, b"ok");
    // 101 is final and has no body; the connection changed protocols.
    let r = read(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nraw").unwrap();
    assert_eq!(r.head.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(!r.head.keep_alive);
    assert_eq!(r.rest, b"raw");
}

#[test]
fn connection_tokens() {
    let r =
        read(b"HTTP/1.1 200 OK\r\nconnection: foo, Close\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert!(!r.head.keep_alive);
    let r =
        read(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert!(r.head.keep_alive);
}

#[test]
fn malformed_heads() {
    for input in [
        &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\0b\r\n\r\n",
        b"garbage",
    ] {
        assert!(read(input).is_err(), "{:?}", String::from_utf8_lossy(input));
    }
    let err = read(b"HTTP/1.1 200 OK\r\n").unwrap_err();
    assert!(matches!(err, WireError::Truncated), "{err}");
}

#[test]
fn head_size_limit_holds_for_any_split() {
    let mut input = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    input.resize(MAX_RESPONSE_HEAD + 10, b'a');
    input.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
    let err = read(&input).unwrap_err();
    assert!(matches!(err, WireError::HeadTooLarge), "{err}");
    let mut fits = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    fits.resize(MAX_RESPONSE_HEAD - 4, b'a');
    fits.extend_from_slice(b"\r\n\r\n");
    assert_eq!(fits.len(), MAX_RESPONSE_HEAD);
    assert!(read(&fits).is_ok());
    let many: String = (0..=MAX_RESPONSE_HEADERS)
        .map(|i| format!("x-{i}: 1\r\n"))
        .collect();
    let err = read(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes()).unwrap_err();
    assert!(
        matches!(err, WireError::Head(httparse::Error::TooManyHeaders)),
        "{err}"
    );
}

#[test]
fn chunks_with_extensions_and_trailers() {
    let r = read(&chunked(
        "4;ext=1\r\nWiki\r\n5 ; a=\"q;\\\"x\" ;b\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n\
         0;last\r\nX-T: 1\r\nX-U: 2\r\n\r\nnext",
    ))
    .unwrap();
    assert_eq!(r.body, b"Wikipedia in\r\n\r\nchunks.");
    assert_eq!(r.rest, b"next");
    let r = read(&chunked("000000000000000A\r\n0123456789\r\n0\r\n\r\n")).unwrap();
    assert_eq!(r.body, b"0123456789");
}

#[test]
fn chunk_sizes_that_overflow() {
    // 16 hex digits fit a u64 (and the body is then cut short); 17 do not.
    let err = read(&chunked("ffffffffffffffff\r\nabc")).unwrap_err();
    assert!(matches!(err, WireError::Truncated), "{err}");
    for size in ["10000000000000000", "00000000000000001"] {
        let err = read(&chunked(&format!("{size}\r\nabc"))).unwrap_err();
        assert!(matches!(err, WireError::ChunkSize), "{size}: {err}");
    }
}

#[test]
fn bad_chunk_size_lines() {
    for line in [
        "zz\r\n",
        "\r\n",
        ";ext\r\n",
        " 5\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5;a\nhello\r\n0\r\n\r\n",
        "5;a\0b\r\nhello\r\n0\r\n\r\n",
        "5\r\rhello",
        "-5\r\n",
        "0x5\r\n",
    ] {
        let err = read(&chunked(line)).unwrap_err();
        assert!(matches!(err, WireError::ChunkSize), "{line:?}: {err}");
    }
}

#[test]
fn chunk_data_must_end_with_crlf() {
    for body in [
        "5\r\nhelloX\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\rX0\r\n\r\n",
        "3\r\nhello\r\n0\r\n\r\n",
    ] {
        let err = read(&chunked(body)).unwrap_err();
        assert!(matches!(err, WireError::ChunkDataEnd), "{body:?}: {err}");
    }
}

#[test]
fn huge_chunk_size_line() {
    let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE));
    let err = read(&chunked(&long)).unwrap_err();
    assert!(matches!(err, WireError::ChunkLineTooLong), "{err}");
    // Never completed: refused as soon as the limit is reached.
    let mut decoder = BodyDecoder::new(Framing::Chunked);
    let mut buf = BytesMut::from(format!("5;{}", "a".repeat(MAX_CHUNK_LINE)).as_bytes());
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(WireError::ChunkLineTooLong)
    ));
    let fits = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(MAX_CHUNK_LINE - 5));
    assert_eq!(read(&chunked(&fits)).unwrap().body, b"hello");
}

#[test]
fn trailer_limits() {
    let big = format!("0\r\nx-t: {}\r\n\r\n", "a".repeat(MAX_TRAILERS));
    let err = read(&chunked(&big)).unwrap_err();
    assert!(matches!(err, WireError::TrailersTooLarge), "{err}");
    let many: String = (0..=MAX_RESPONSE_HEADERS)
        .map(|i| format!("x-{i}: 1\r\n"))
        .collect();
    let err = read(&chunked(&format!("0\r\n{many}\r\n"))).unwrap_err();
    assert!(matches!(err, WireError::Trailers(_)), "{err}");
    let err = read(&chunked("0\r\nnot a field\r\n\r\n")).unwrap_err();
    assert!(matches!(err, WireError::Trailers(_)), "{err}");
    // Trailers that never end: the body is cut short.
    let err = read(&chunked("0\r\nx-t: 1\r\n")).unwrap_err();
    assert!(matches!(err, WireError::Truncated), "{err}");
}

#[test]
fn partial_chunks_stream() {
    let mut decoder = BodyDecoder::new(Framing::Chunked);
    let mut buf = BytesMut::from(&b"a\r\n01234"[..]);
    assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"01234");
    assert!(decoder.decode(&mut buf).unwrap().is_none());
    assert!(!decoder.is_done());
    assert!(matches!(decoder.close(), Err(WireError::Truncated)));
    let mut length = BodyDecoder::new(Framing::Length(4));
    assert_eq!(length.remaining(), Some(4));
    let mut buf = BytesMut::from(&b"ab"[..]);
    assert_eq!(&length.decode(&mut buf).unwrap().unwrap()[..], b"ab");
    assert_eq!(length.remaining(), Some(2));
    let eof = BodyDecoder::new(Framing::Eof);
    assert!(eof.is_close_delimited());
    assert_eq!(eof.remaining(), None);
}

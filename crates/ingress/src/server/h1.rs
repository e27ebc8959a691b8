//! HTTP/1.1 client connections served by podwire itself for the requests a
//! proxy mostly sees (HTTP/1.1, no request body, no upgrade), hyper for the
//! rest of a connection once anything else arrives.
//!
//! Why: hyper 1.x keeps an 8 KiB read buffer and an 8 KiB write buffer per
//! connection for the connection's whole life and offers no way to release
//! them, so an idle keep-alive connection cost ~12 KB (nginx: 0.5 KB). Here
//! no buffer and no timer is held between requests: the connection waits
//! for readability on the bare socket ([`Park`]), a read buffer and the
//! request's state exist only from the first byte of a head to the end of
//! its response, and the response head and a body that is already complete
//! leave in one write.
//!
//! A request with a body (Content-Length other than 0, Transfer-Encoding),
//! an upgrade, `Expect`, or HTTP/1.0 is handed to hyper together with every
//! byte read so far ([`Rewind`]); hyper then serves the rest of that
//! connection, as it served every connection before.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, DATE, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::limit::{ActiveGuard, Slot};
use crate::proxy::{Body, ConnInfo, Shared, empty, handle};

/// The most request headers accepted (hyper's default as well).
const MAX_HEADERS: usize = 100;
/// The read buffer a request head starts with; most heads are far smaller.
const HEAD_BUFFER: usize = 2048;

/// A client connection that can wait for its next request without a
/// buffer: the socket to wait on for readability, when nothing is buffered
/// above it.
pub(super) trait Park {
    /// Whether the socket's bytes are the request's bytes, so that the
    /// first read of a head may go straight to the socket (not under TLS,
    /// whose records must be decrypted by the stream).
    const PLAINTEXT: bool;
    fn bare(&self) -> Option<&TcpStream>;
}

impl Park for TcpStream {
    const PLAINTEXT: bool = true;
    fn bare(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl Park for tokio_rustls::server::TlsStream<TcpStream> {
    const PLAINTEXT: bool = false;
    fn bare(&self) -> Option<&TcpStream> {
        // Plaintext rustls already decrypted would never wake the socket.
        let (tcp, tls) = self.get_ref();
        tls.wants_read().then_some(tcp)
    }
}

/// How a connection left this loop.
pub(super) enum Served<S> {
    /// Closed (by the client, an error, keep-alive off, shutdown or shed).
    Done,
    /// hyper serves the rest: the stream with what was read and not used.
    Hyper(Rewind<S>),
}

/// Serves requests on `stream` until it closes or needs hyper.
///
/// Between requests the connection holds only this function's small state
/// (no buffer, no timer: the worker's idle sweep closes connections idle
/// past `--idle-timeout`, see `limit.rs`); each request is served by one
/// boxed [`serve_one`], freed when its response has been written.
pub(super) async fn serve<S>(
    mut stream: S,
    conn: &ConnInfo,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    slot: &Arc<Slot>,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Park + Unpin,
{
    let peer = conn.peer;
    let mut buf = BytesMut::new();
    loop {
        if *stop.borrow() || slot.is_shed() {
            return Served::Done;
        }
        if buf.is_empty() {
            // Between requests: give the buffer back and wait on the socket.
            buf = BytesMut::new();
            if let Some(tcp) = stream.bare() {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return Served::Done,
                    () = slot.shed() => {
                        tracing::debug!(%peer, "closing an idle connection (shed or idle timeout)");
                        return Served::Done;
                    }
                    ready = tcp.readable() => if let Err(err) = ready {
                        tracing::debug!(%peer, %err, "connection ended with an error");
                        return Served::Done;
                    }
                }
                // Under TLS the stream decrypts what arrived: `serve_one` reads it.
                if S::PLAINTEXT {
                    match read_exact_size(tcp) {
                        Ok(Some(read)) => buf = read,
                        // Woken without data after all: wait again.
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                        Ok(None) => return Served::Done,
                        Err(err) => {
                            tracing::debug!(%peer, %err, "connection ended with an error");
                            return Served::Done;
                        }
                    }
                }
            }
        }
        let step = Box::pin(serve_one(&mut stream, &mut buf, conn, shared, stop, slot)).await;
        match step {
            Step::Next => {}
            Step::Close => {
                let _ = stream.shutdown().await;
                return Served::Done;
            }
            Step::Gone => return Served::Done,
            Step::Hyper => {
                return Served::Hyper(Rewind {
                    prefix: buf.freeze(),
                    inner: stream,
                });
            }
        }
    }
}

/// Reads what the socket has into the worker's scratch buffer and returns
/// it in a buffer of its own size (None: the client closed). A fixed-size
/// read buffer per request, freed between requests, fragmented the heap
/// around the connections' long-lived allocations: ~2 KB per idle
/// connection.
fn read_exact_size(tcp: &TcpStream) -> io::Result<Option<BytesMut>> {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 16 * 1024]);
    }
    SCRATCH.with_borrow_mut(|scratch| {
        let n = tcp.try_read(scratch)?;
        Ok((n > 0).then(|| BytesMut::from(&scratch[..n])))
    })
}

/// What a connection does after one request.
enum Step {
    /// Wait for the next request.
    Next,
    /// Close after what was written.
    Close,
    /// Already closed or broken.
    Gone,
    /// hyper takes the connection with what `buf` holds.
    Hyper,
}

/// Reads one request head (closing early when told to), serves it and
/// writes the response.
async fn serve_one<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    conn: &ConnInfo,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    slot: &Arc<Slot>,
) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer = conn.peer;
    let next = tokio::select! {
        biased;
        _ = stop.changed() => return Step::Gone,
        () = slot.shed() => {
            tracing::debug!(%peer, "closing: shed (at the limit or idle past the timeout) in a request head");
            return Step::Gone;
        }
        next = read_head(stream, buf, shared.settings.max_header_bytes) => next,
    };
    let head = match next {
        Ok(Some(head)) => head,
        // EOF between requests, or a head cut off.
        Ok(None) => return Step::Gone,
        Err(HeadError::Io(err)) => {
            tracing::debug!(%peer, %err, "connection ended with an error");
            return Step::Gone;
        }
        Err(HeadError::Hyper) => return Step::Hyper,
        Err(HeadError::Refused(status)) => {
            // hyper's answers to a head it cannot take, then close.
            let _ = send(stream, refusal(status).as_bytes()).await;
            return Step::Close;
        }
    };
    let guard = ActiveGuard::new(slot);
    let head_request = head.request.method() == Method::HEAD;
    let mut keep_alive = head.keep_alive;
    let response = match handle(head.request, shared.clone(), conn.clone()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if *stop.borrow() || slot.is_shed() {
        keep_alive = false;
    }
    let written = write_response(stream, response, head_request, &mut keep_alive).await;
    drop(guard);
    match written {
        Err(err) => {
            tracing::debug!(%peer, %err, "writing the response failed");
            Step::Gone
        }
        Ok(()) if keep_alive => Step::Next,
        Ok(()) => Step::Close,
    }
}

/// Why no request came out of a head.
enum HeadError {
    Io(io::Error),
    /// Not a request this loop serves: hyper takes the connection.
    Hyper,
    /// Answered with this status, then the connection closes.
    Refused(StatusCode),
}

/// A request head read and parsed.
struct Head {
    request: Request<Body>,
    keep_alive: bool,
}

/// Reads the next request head; what follows it stays in `buf`. None:
/// the client closed.
async fn read_head<S>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Head>, HeadError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf, max)?
        {
            return Ok(Some(head));
        }
        if buf.capacity() - buf.len() < HEAD_BUFFER / 4 {
            buf.reserve(HEAD_BUFFER);
        }
        let n = stream.read_buf(buf).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Header positions in the head, so that the head can be frozen once and
/// every value shared from it instead of copied.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses a complete head at the start of `buf` (None: incomplete) and
/// takes it out of `buf`; a request this loop does not serve leaves `buf`
/// as it is and asks for hyper.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max => {
            return Err(HeadError::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ));
        }
        Err(_) => return Err(HeadError::Refused(StatusCode::BAD_REQUEST)),
    };
    if len > max {
        return Err(HeadError::Refused(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ));
    }
    if parsed.version != Some(1) {
        return Err(HeadError::Hyper);
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method = parsed.method.map(str::as_bytes).map(at).unwrap_or_default();
    let target = parsed.path.map(str::as_bytes).map(at).unwrap_or_default();
    let mut spans = [Span::default(); MAX_HEADERS];
    let count = parsed.headers.len();
    let mut keep_alive = true;
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value.trim_ascii() != b"0" {
                return Err(HeadError::Hyper);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Err(HeadError::Hyper);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(HeadError::Hyper);
                }
            }
        }
        *span = Span {
            name: at(name),
            value: at(h.value),
        };
    }
    let head = buf.split_to(len).freeze();
    let slice = |(start, len): (usize, usize)| head.slice(start..start + len);
    let bad = || HeadError::Refused(StatusCode::BAD_REQUEST);
    let method = Method::from_bytes(&slice(method)).map_err(|_| bad())?;
    let uri = Uri::from_maybe_shared(slice(target)).map_err(|_| bad())?;
    // Room for the forwarded headers the proxy adds, so the map does not grow.
    let mut map = HeaderMap::with_capacity(count + 6);
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(&slice(span.name)).map_err(|_| bad())?;
        let value = HeaderValue::from_maybe_shared(slice(span.value)).map_err(|_| bad())?;
        map.append(name, value);
    }
    let mut request = Request::new(empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Ok(Some(Head {
        request,
        keep_alive,
    }))
}

/// The whole answer to a head refused before any request was made.
fn refusal(status: StatusCode) -> String {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\ndate: {}\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        http_date()
    )
}

/// Writes `response` with HTTP/1.1 framing: its length when the body knows
/// it, else chunked. A body already complete goes in the head's write.
/// `keep_alive` turns false when the response (or a failure) ends the
/// connection.
async fn write_response<S>(
    stream: &mut S,
    response: Response<Body>,
    head_request: bool,
    keep_alive: &mut bool,
) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        None
    } else {
        body.size_hint().exact()
    };
    let chunked = !bodiless && length.is_none();
    let mut scratch = Scratch::take();
    let out = &mut scratch.0;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && !bodiless) {
            continue;
        }
        if name == CONNECTION {
            if crate::proxy::lists(Some(value), "close") {
                *keep_alive = false;
            }
            continue;
        }
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        let _ = write!(out, "{n}\r\n");
    } else if chunked {
        header_line(out, b"transfer-encoding", b"chunked");
    }
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        with_http_date(|date| out.extend_from_slice(date.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    if !*keep_alive {
        header_line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if bodiless {
        return send(stream, out).await;
    }
    // What the body has at once (a whole small body) joins the head.
    let mut sent = 0u64;
    loop {
        let frame = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        match frame {
            Some(frame) => {
                if !append_frame(out, frame, chunked, &mut sent)? {
                    break;
                }
                if out.len() >= 64 * 1024 {
                    stream.write_all(out).await?;
                    out.clear();
                }
            }
            // Nothing ready: send what there is, then wait for the body.
            None => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    stream.flush().await?;
                    out.clear();
                }
                let frame = body.frame().await;
                if !append_frame(out, frame, chunked, &mut sent)? {
                    break;
                }
            }
        }
    }
    if let Some(n) = length
        && sent != n
    {
        // The framing promised to the client cannot be kept.
        *keep_alive = false;
        stream.write_all(out).await?;
        return Err(io::Error::other(format!(
            "the response body had {sent} bytes, not the {n} announced"
        )));
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(stream, out).await
}

/// The worker's response buffer, lent to one response at a time (another
/// response written meanwhile gets a fresh one) and given back on drop, so
/// a response allocates nothing for its head.
struct Scratch(Vec<u8>);

thread_local! {
    static OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Scratch {
    fn take() -> Scratch {
        let mut out = OUT.take();
        out.clear();
        if out.capacity() == 0 {
            out.reserve(1024);
        }
        Scratch(out)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // A buffer grown by a large body is not kept.
        if self.0.capacity() <= 64 * 1024 {
            OUT.set(std::mem::take(&mut self.0));
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// Appends one body frame (chunked framing if asked); false at the end of
/// the body. A body error is an I/O error: the connection cannot go on.
fn append_frame(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<Bytes>, crate::proxy::BoxError>>,
    chunked: bool,
    sent: &mut u64,
) -> io::Result<bool> {
    let Some(frame) = frame else {
        return Ok(false);
    };
    let frame = frame.map_err(io::Error::other)?;
    // Trailers are not forwarded.
    let Ok(data) = frame.into_data() else {
        return Ok(true);
    };
    if data.is_empty() {
        return Ok(true);
    }
    *sent += data.len() as u64;
    if chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(&data);
    }
    Ok(true)
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The Date header's value, formatted once per second per thread.
fn http_date() -> String {
    with_http_date(str::to_owned)
}

/// Calls `f` with the Date header's value, formatted once per second per
/// thread.
fn with_http_date<T>(f: impl FnOnce(&str) -> T) -> T {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        f(text)
    })
}

/// A stream that first yields bytes already read from it: how a connection
/// goes to hyper with the head this loop read but did not serve.
pub(super) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, 32 * 1024)
    }

    #[test]
    fn bodiless_requests_are_served_here() {
        let mut buf = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next"[..],
        );
        let head = match parse_head(&mut buf, 1024) {
            Ok(Some(head)) => head,
            _ => panic!("a complete head"),
        };
        assert!(head.keep_alive);
        assert_eq!(head.request.method(), Method::GET);
        assert_eq!(head.request.uri(), "/a?b=1");
        assert_eq!(head.request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(&buf[..], b"GET /next", "the next request stays");
        let close = parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(matches!(close, Ok(Some(h)) if !h.keep_alive));
        let zero = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(zero, Ok(Some(_))));
        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
    }

    #[test]
    fn bodies_upgrades_and_http10_go_to_hyper() {
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(
                matches!(parse_head(&mut buf, 1024), Err(HeadError::Hyper)),
                "{text}"
            );
            assert_eq!(&buf[..], text.as_bytes(), "hyper gets every byte");
        }
    }

    #[test]
    fn malformed_or_large_heads_are_refused() {
        let refused = |r: Result<Option<Head>, HeadError>| match r {
            Err(HeadError::Refused(s)) => s.as_u16(),
            _ => 0,
        };
        assert_eq!(refused(parse("GET / HTTP/1.1\r\nHo st: x\r\n\r\n")), 400);
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        big.extend_from_slice(&[b'a'; 2000]);
        assert_eq!(refused(parse_head(&mut big, 1024)), 431);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(
            refused(parse(&format!("GET / HTTP/1.1\r\n{many}\r\n"))),
            431
        );
        assert!(refusal(StatusCode::BAD_REQUEST).starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }

    #[tokio::test]
    async fn responses_are_framed_by_length_or_chunked() {
        let written = |response: Response<Body>, head: bool| async move {
            let mut out = Vec::new();
            let mut keep_alive = true;
            write_response(&mut out, response, head, &mut keep_alive)
                .await
                .unwrap();
            (String::from_utf8(out).unwrap(), keep_alive)
        };
        let full = Response::new(crate::proxy::full(Bytes::from_static(b"hello")));
        let (text, keep) = written(full, false).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "));
        assert!(text.ends_with("\r\n\r\nhello") && keep, "{text}");
        let mut chunked = Response::new(
            Slow {
                parts: vec!["c", "ab"],
                ready: false,
            }
            .boxed(),
        );
        chunked
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        let (text, keep) = written(chunked, false).await;
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n") && !keep, "{text}");
        assert!(
            text.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
            "{text}"
        );
        let mut head = Response::new(empty());
        head.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        let (text, _) = written(head, true).await;
        assert!(text.contains("content-length: 42\r\n") && text.ends_with("\r\n\r\n"));
    }

    /// Data frames of unknown length, each ready only on the second poll.
    struct Slow {
        parts: Vec<&'static str>,
        ready: bool,
    }

    impl hyper::body::Body for Slow {
        type Data = Bytes;
        type Error = crate::proxy::BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let ready = self.ready;
            self.ready = !ready;
            if !ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(self.parts.pop().map(|p| Ok(Frame::data(Bytes::from(p)))))
        }
    }
}

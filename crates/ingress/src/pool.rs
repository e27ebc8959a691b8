//! HTTP/1.1 to backend endpoints over keep-alive connections, one pool per
//! worker thread. Written by hand (responses decoded in backend_wire.rs) rather
//! than on a hyper client: a hyper client connection runs as its own task and
//! hands each request, response head and body chunk across channels, which
//! cost podwire a third of its throughput against nginx in `bench/ingress`.
//! Here the request task writes the request itself and the response body
//! reads straight from the backend socket while the client connection
//! polls it, as nginx's upstream module does; a connection returns to the
//! pool when its response body has been read to the end.
//!
//! Upgrade requests (WebSocket) still go through hyper on a fresh
//! connection, which becomes the tunnel.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{HeaderMap, Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend_wire::{self, BodyDecoder, Framing, Head, WireError};
use crate::proxy::{Body, BoxError, empty, full};

/// Idle connections kept per endpoint (more are closed after use).
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// Check-ins between sweeps of every endpoint's idle list.
const SWEEP_EVERY: u32 = 4096;
/// The read buffer a backend connection starts with (kept with it in the
/// pool: a fresh 8 KiB allocation per request showed in profiles as malloc
/// consolidation).
const READ_BUFFER: usize = 4 * 1024;
/// Bodies up to this size that arrived with the head are copied out, so the
/// connection's buffer stays its own and is reused as is.
const COPY_BODY_UP_TO: usize = 16 * 1024;

/// A kept-alive backend connection and its read buffer.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Upgrade(#[source] hyper::Error),
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("cannot read the request body: {0}")]
    RequestBody(#[source] BoxError),
    #[error("invalid response: {0}")]
    BadResponse(#[source] WireError),
}

impl UpstreamError {
    /// True when nothing reached the endpoint (safe to try another one).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_)
        )
    }
}

#[derive(Debug, Default)]
struct Idle {
    by_endpoint: HashMap<SocketAddr, Vec<Conn>>,
    checkins: u32,
}

/// The pool of one worker.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Idle>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Idle::default()),
            connect_timeout,
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn checkout(&self, endpoint: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_endpoint.get_mut(&endpoint)?.pop()
    }

    fn checkin(&self, endpoint: SocketAddr, stream: TcpStream, mut buf: BytesMut) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.checkins = idle.checkins.wrapping_add(1);
        if idle.checkins.is_multiple_of(SWEEP_EVERY) {
            // Endpoints that went away are never checked out again.
            idle.by_endpoint.retain(|_, conns| {
                conns.retain(|c| is_open(&c.stream));
                !conns.is_empty()
            });
        }
        let conns = idle.by_endpoint.entry(endpoint).or_default();
        if conns.len() < MAX_IDLE_PER_ENDPOINT {
            conns.push(Conn { stream, buf });
        }
    }

    /// Sends `req` (origin-form URI, Host header set, hop-by-hop headers
    /// removed) to `endpoint` and returns the response with its body
    /// streaming from the backend.
    pub async fn send(
        self: &Arc<Pool>,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (parts, mut body) = req.into_parts();
        let bodyless = body.is_end_stream();
        let length = if bodyless {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        let head = encode_head(&parts.method, &parts.uri, &parts.headers, length);
        let head_request = parts.method == Method::HEAD;
        loop {
            let pooled = self.checkout(endpoint);
            let reused = pooled.is_some();
            let Conn {
                mut stream,
                mut buf,
            } = match pooled {
                Some(c) if bodyless || is_open(&c.stream) => c,
                Some(_) => continue,
                None => Conn {
                    stream: self.connect(endpoint).await?,
                    buf: BytesMut::with_capacity(READ_BUFFER),
                },
            };
            let sent = async {
                stream.write_all(&head).await?;
                if !bodyless {
                    match write_body(&mut stream, &mut body, length.is_none()).await {
                        Ok(()) => {}
                        // The backend may have answered early (413, 401...)
                        // and closed: relay that answer if it is there.
                        Err(SendError::Io(err)) => {
                            return match read_head(&mut stream, &mut buf, head_request).await {
                                Ok(mut head) => {
                                    head.keep_alive = false;
                                    Ok(head)
                                }
                                Err(_) => Err(SendError::Io(err)),
                            };
                        }
                        Err(other) => return Err(other),
                    }
                }
                read_head(&mut stream, &mut buf, head_request).await
            }
            .await;
            let head = match sent {
                Ok(head) => head,
                // A kept-alive connection the backend had closed: nothing
                // was processed, so a request without a body goes again.
                Err(SendError::Io(err)) if reused && bodyless && buf.is_empty() => {
                    tracing::debug!(%endpoint, %err, "pooled connection was closed; retrying");
                    continue;
                }
                Err(SendError::Io(err)) => return Err(UpstreamError::Io(err)),
                Err(SendError::Body(err)) => return Err(UpstreamError::RequestBody(err)),
                Err(SendError::Bad(why)) => return Err(UpstreamError::BadResponse(why)),
            };
            return Ok(self.response(endpoint, stream, buf, head));
        }
    }

    /// The response to hand to the client: small bodies already read come
    /// back whole (and the connection goes back to the pool at once), others
    /// stream.
    fn response(
        self: &Arc<Pool>,
        endpoint: SocketAddr,
        stream: TcpStream,
        mut buf: BytesMut,
        head: Head,
    ) -> Response<Body> {
        let mut response = Response::new(empty());
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        let body: Body = match head.framing {
            Framing::Length(n) if (buf.len() as u64) >= n => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let data = if n <= COPY_BODY_UP_TO {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    buf.advance(n);
                    data
                } else {
                    buf.split_to(n).freeze()
                };
                if head.keep_alive && buf.is_empty() {
                    self.checkin(endpoint, stream, buf);
                }
                if data.is_empty() { empty() } else { full(data) }
            }
            framing => UpstreamBody {
                stream: Some(stream),
                buf,
                decoder: BodyDecoder::new(framing),
                keep_alive: head.keep_alive,
                pool: self.clone(),
                endpoint,
            }
            .boxed(),
        };
        *response.body_mut() = body;
        response
    }

    /// Sends an upgrade request on a new connection through hyper, which
    /// hands both upgraded sides to the tunnel.
    pub async fn send_upgrade(
        &self,
        endpoint: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let stream = self.connect(endpoint).await?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%endpoint, %err, "upgraded backend connection ended with an error");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Upgrade)
    }
}

/// Whether an idle pooled connection is still open (no EOF, no stray bytes).
fn is_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

enum SendError {
    Io(io::Error),
    Body(BoxError),
    Bad(WireError),
}

impl From<io::Error> for SendError {
    fn from(err: io::Error) -> Self {
        SendError::Io(err)
    }
}

/// The request line and headers, with framing for the body: its length
/// when known, else chunked.
fn encode_head(
    method: &Method,
    uri: &hyper::Uri,
    headers: &HeaderMap,
    length: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + headers.len() * 48);
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        // GET and friends without a body need no framing at all.
        Some(0)
            if matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::DELETE
            ) => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Streams the request body to the backend.
async fn write_body(
    stream: &mut TcpStream,
    body: &mut Body,
    chunked: bool,
) -> Result<(), SendError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SendError::Body)?;
        let Ok(data) = frame.into_data() else {
            // Trailers are not forwarded.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            stream
                .write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await?;
            stream.write_all(&data).await?;
            stream.write_all(b"\r\n").await?;
        } else {
            stream.write_all(&data).await?;
        }
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Reads until a final (non-1xx) response head is complete; leaves what
/// follows it in `buf`.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<Head, SendError> {
    loop {
        if let Some(head) = backend_wire::parse_head(buf, head_request).map_err(SendError::Bad)? {
            return Ok(head);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUFFER);
        }
        let n = tokio::io::AsyncReadExt::read_buf(stream, buf).await?;
        if n == 0 {
            return Err(SendError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backend closed the connection before answering",
            )));
        }
    }
}

/// A response body read from the backend connection while the client
/// connection polls it.
struct UpstreamBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    decoder: BodyDecoder,
    keep_alive: bool,
    pool: Arc<Pool>,
    endpoint: SocketAddr,
}

impl UpstreamBody {
    /// Reads more from the backend; Ok(0) at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(stream) = self.stream.as_ref() else {
            return Poll::Ready(Ok(0));
        };
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        loop {
            match stream.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(stream.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// The body is complete: the connection goes back to the pool when
    /// nothing unexpected follows.
    fn finish(&mut self) {
        if let Some(stream) = self.stream.take()
            && self.keep_alive
            && self.buf.is_empty()
            && !self.decoder.is_close_delimited()
        {
            let buf = std::mem::take(&mut self.buf);
            self.pool.checkin(self.endpoint, stream, buf);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.decoder.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    if let Err(e) = this.decoder.close() {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    this.stream = None;
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn request_heads() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("a.com"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        let uri: hyper::Uri = "/p?q=1".parse().unwrap();
        let get = encode_head(&Method::GET, &uri, &headers, Some(0));
        assert_eq!(get, b"GET /p?q=1 HTTP/1.1\r\nhost: a.com\r\n\r\n");
        let post = encode_head(&Method::POST, &uri, &headers, Some(4));
        assert_eq!(
            post,
            b"POST /p?q=1 HTTP/1.1\r\nhost: a.com\r\ncontent-length: 4\r\n\r\n"
        );
        let stream = encode_head(&Method::PUT, &uri, &headers, None);
        assert!(stream.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }
}

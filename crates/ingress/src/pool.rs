//! Keep-alive connections to backend endpoints, one pool per worker thread.
//! Written on hyper's connection API rather than hyper-util's general
//! client: the proxy only ever speaks HTTP/1.1 to `ip:port` endpoints it
//! already chose, so the general client's URI-keyed pool, its locks and its
//! extra task hops are cost without use (they showed at the top of a
//! profile of `bench/ingress`).
//!
//! A sender goes back to the pool as soon as the response head arrives; it
//! is handed out again only when hyper says the connection is ready (the
//! previous body finished). A request that could not be written on a pooled
//! connection (the backend closed it meanwhile) is sent on the next one.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::Body;

/// Idle connections kept per endpoint (more are closed after use).
const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("{0}")]
    Response(#[source] hyper::Error),
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

/// Check-ins between sweeps of closed connections of every endpoint (an
/// endpoint that went away is never checked out again).
const SWEEP_EVERY: u32 = 4096;

#[derive(Debug, Default)]
struct Idle {
    by_endpoint: HashMap<SocketAddr, VecDeque<SendRequest<Body>>>,
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

    /// Sends `req` (origin-form URI, Host header set) to `endpoint` on a
    /// pooled connection, or a new one.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        while let Some(mut sender) = self.checkout(endpoint) {
            match sender.try_send_request(req).await {
                Ok(response) => {
                    self.checkin(endpoint, sender, response.status());
                    return Ok(response);
                }
                Err(mut err) => match err.take_message() {
                    // Not written: the connection went away; use another.
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Response(err.into_error())),
                },
            }
        }
        let mut sender = self.connect(endpoint).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Response)?;
        self.checkin(endpoint, sender, response.status());
        Ok(response)
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<Body>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.connect_timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%endpoint, %err, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A pooled sender of `endpoint` that is ready for a request.
    fn checkout(&self, endpoint: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let queue = idle.by_endpoint.get_mut(&endpoint)?;
        for _ in 0..queue.len() {
            let sender = queue.pop_front()?;
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            // Still streaming its previous response.
            queue.push_back(sender);
        }
        None
    }

    fn checkin(&self, endpoint: SocketAddr, sender: SendRequest<Body>, status: StatusCode) {
        if status == StatusCode::SWITCHING_PROTOCOLS || sender.is_closed() {
            // An upgraded connection belongs to its tunnel now.
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.checkins = idle.checkins.wrapping_add(1);
        if idle.checkins.is_multiple_of(SWEEP_EVERY) {
            idle.by_endpoint.retain(|_, queue| {
                queue.retain(|s| !s.is_closed());
                !queue.is_empty()
            });
        }
        let queue = idle.by_endpoint.entry(endpoint).or_default();
        if queue.len() < MAX_IDLE_PER_ENDPOINT {
            queue.push_back(sender);
        }
    }
}

//! The kubelet's HTTPS endpoint (--node-ip:--port, 10250), which the API
//! server calls for `kubectl logs` and `kubectl exec`: `GET /containerLogs/NS/POD/CONTAINER`
//! with follow, previous, timestamps, tailLines, limitBytes, sinceSeconds
//! and sinceTime, and `/healthz`. Clients other than /healthz must present
//! a certificate signed by --client-ca-file (the API server's kubelet
//! client certificate); any such client may read logs (kubelet's
//! `--authorization-mode=AlwaysAllow`). `/exec/NS/POD/CONTAINER` is
//! exec.rs; attach and port-forward answer 501 with the reason.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Ctx;
use super::error::{KubeletError, Result};
use super::logs::{self, LogOptions};
use super::state::{ContainerRecord, read_json};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How often a followed log is read again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.into())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    response
}

fn server_error(e: impl std::fmt::Display) -> KubeletError {
    KubeletError::Server(e.to_string())
}

fn tls_config(ctx: &Ctx) -> Result<rustls::ServerConfig> {
    let cfg = &ctx.cfg;
    let (chain, key) = match (&cfg.tls_cert_file, &cfg.tls_private_key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| server_error(format!("--tls-cert-file {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                server_error(format!("--tls-private-key-file {}: {e}", key.display()))
            })?;
            (chain, key)
        }
        (None, None) => {
            // As kubelet without a certificate: a self-signed one.
            let made =
                rcgen::generate_simple_self_signed(vec![cfg.node.clone(), cfg.node_ip.to_string()])
                    .map_err(server_error)?;
            (
                vec![made.cert.der().clone()],
                PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into()),
            )
        }
        _ => {
            return Err(KubeletError::Config(
                "give --tls-cert-file and --tls-private-key-file together".into(),
            ));
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(server_error)?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| server_error(format!("--client-ca-file {}: {e}", ca.display())))?
            {
                let cert = cert
                    .map_err(|e| server_error(format!("--client-ca-file {}: {e}", ca.display())))?;
                roots.add(cert).map_err(server_error)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(server_error)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder.with_single_cert(chain, key).map_err(server_error)
}

/// Binds the endpoint; the returned future serves it.
pub async fn bind(ctx: Arc<Ctx>) -> Result<impl Future<Output = ()>> {
    let tls = tls_config(&ctx)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let addr = SocketAddr::new(ctx.cfg.node_ip, ctx.cfg.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| KubeletError::io(format!("cannot listen on {addr} (--node-ip, --port)"), e))?;
    tracing::info!(%addr, "kubelet API listening");
    Ok(async move {
        loop {
            let Ok((tcp, _peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(error = %e, "kubelet API: TLS handshake failed");
                        return;
                    }
                };
                let authenticated = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(&ctx, req, authenticated).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    // exec's WebSocket takes the connection over.
                    .with_upgrades()
                    .await;
            });
        }
    })
}

async fn handle(ctx: &Ctx, req: Request<Incoming>, authenticated: bool) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if !authenticated {
        return text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: present a client certificate signed by the kubelet's --client-ca-file",
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["containerLogs", ns, pod, container] if req.method() == hyper::Method::GET => {
            container_logs(ctx, ns, pod, container, &query).await
        }
        ["exec", ns, pod, container] => {
            let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
            super::exec::handle(ctx, req, &ns, &pod, &container)
        }
        ["attach" | "portForward" | "run", ..] => text(
            StatusCode::NOT_IMPLEMENTED,
            "podwire's kubelet does not implement attach, port-forward or run; exec works (over WebSocket)",
        ),
        _ => text(StatusCode::NOT_FOUND, format!("404 page not found: {path}")),
    }
}

/// The log file of the attempt asked for, and that attempt's exit file.
fn log_file(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> std::result::Result<(PathBuf, PathBuf), (StatusCode, String)> {
    let uid = ctx
        .pods
        .lock()
        .ok()
        .and_then(|p| p.get(&(ns.to_string(), pod.to_string())).cloned())
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("pod {ns}/{pod} is not on this node"),
            )
        })?;
    let record: ContainerRecord =
        read_json(&ctx.layout.container_record(&uid, container)).unwrap_or_default();
    let Some(current) = record.attempt else {
        return Err((
            StatusCode::BAD_REQUEST,
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            ),
        ));
    };
    let n = if previous {
        current.checked_sub(1).ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
            )
        })?
    } else {
        current
    };
    let files = super::containers::files(&ctx.layout, &uid, container, n);
    Ok((files.log, files.exit))
}

async fn container_logs(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let options = match LogOptions::from_query(query, Timestamp::now()) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (log, exit) = match log_file(ctx, ns, pod, container, options.previous) {
        Ok(files) => files,
        Err((status, message)) => return text(status, message),
    };
    let data = tokio::fs::read(&log).await.unwrap_or_default();
    let first = logs::render_file(&data, &options);
    if !options.follow || options.previous {
        return text(StatusCode::OK, String::from_utf8_lossy(&first).into_owned());
    }
    let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(16);
    let budget = options.limit_bytes.map(|l| l.saturating_sub(first.len()));
    tokio::spawn(follow(
        log,
        exit,
        data.len() as u64,
        first,
        budget,
        options,
        tx,
    ));
    let body = StreamBody::new(rx.map(|b| Ok::<_, Infallible>(Frame::data(b))));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    response.headers_mut().insert(
        "content-type",
        "text/plain; charset=utf-8".parse().expect("static header"),
    );
    response
}

/// Streams what is appended to a log until the attempt has ended and all
/// of it is sent, the byte limit is reached, or the client goes.
async fn follow(
    log: PathBuf,
    exit: PathBuf,
    mut offset: u64,
    first: Vec<u8>,
    mut budget: Option<usize>,
    options: LogOptions,
    mut tx: futures::channel::mpsc::Sender<Bytes>,
) {
    use futures::SinkExt;
    if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
        return;
    }
    let options = LogOptions {
        tail_lines: None,
        ..options
    };
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let ended = Path::new(&exit).exists();
        let chunk = read_from(&log, offset).await;
        offset += chunk.len() as u64;
        pending.extend_from_slice(&chunk);
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        if complete > 0 {
            let lines: Vec<u8> = pending.drain(..complete).collect();
            let mut out = logs::render_records(
                lines
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .filter_map(logs::parse_record),
                &options,
            );
            if let Some(left) = budget.as_mut() {
                out.truncate(*left);
                *left -= out.len();
            }
            if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
                return;
            }
        }
        if budget == Some(0) || (ended && chunk.is_empty()) || tx.is_closed() {
            return;
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

async fn read_from(path: &Path, offset: u64) -> Vec<u8> {
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let _ = file.read_to_end(&mut out).await;
    out
}

//! `kubectl exec` through the kubelet: `GET /exec/NS/POD/CONTAINER` as a
//! WebSocket with the `v5.channel.k8s.io` (or v4) protocol. Since 1.36 the
//! API server proxies exec WebSockets straight to kubelets that declare
//! the `ExtendWebSocketsToKubelet` node feature (this one does, in its
//! Node status), instead of translating them to SPDY, so the kubelet side
//! is plain WebSocket: every binary message starts with its channel (0
//! stdin, 1 stdout, 2 stderr, 3 the final status as JSON, 4 terminal
//! resize; v5: 255 + channel closes that stream).
//!
//! The command runs where the container runs (its network namespace, its
//! bind mounts, hostname and environment, read from the attempt's shim
//! spec). There is no terminal: with `-t` the output comes back on stdout
//! without a TTY (no prompt, no job control).

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::Ctx;
use super::logs::percent_decode;
use super::shim::ShimSpec;
use super::state::{ContainerRecord, read_json};
use crate::spawn::Sandbox;

/// The protocols spoken, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

fn answer(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// What the query asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub fn parse_query(query: &str) -> ExecOptions {
    let mut o = ExecOptions::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
        let v = percent_decode(v);
        let on = v == "true" || v == "1";
        match k {
            "command" => o.command.push(v),
            "input" | "stdin" => o.stdin = on,
            "output" | "stdout" => o.stdout = on,
            "error" | "stderr" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    o
}

/// The running attempt's spec, or why there is none.
fn running_spec(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<ShimSpec, (StatusCode, String)> {
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
    let not_running = || {
        (
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running in pod {pod}"),
        )
    };
    let n = record.attempt.ok_or_else(not_running)?;
    let files = super::containers::files(&ctx.layout, &uid, container, n);
    if files.exit.exists() {
        return Err(not_running());
    }
    read_json(&files.spec).ok_or_else(not_running)
}

/// Answers the upgrade and runs the command on the WebSocket.
pub fn handle(
    ctx: &Ctx,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
    container: &str,
) -> Response<Body> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let offered = header("sec-websocket-protocol");
    let Some(protocol) = PROTOCOLS
        .iter()
        .find(|p| offered.split(',').any(|o| o.trim() == **p))
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            "podwire's kubelet runs exec over WebSocket with the v5.channel.k8s.io or v4.channel.k8s.io protocol only (SPDY is not implemented)",
        );
    };
    let key = header("sec-websocket-key");
    if key.is_empty() || !header("upgrade").eq_ignore_ascii_case("websocket") {
        return answer(StatusCode::BAD_REQUEST, "exec needs a WebSocket upgrade");
    }
    let options = parse_query(req.uri().query().unwrap_or_default());
    if options.command.is_empty() {
        return answer(StatusCode::BAD_REQUEST, "exec needs a command");
    }
    let spec = match running_spec(ctx, ns, pod, container) {
        Ok(spec) => spec,
        Err((status, text)) => return answer(status, &text),
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, spec, options).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec: upgrade failed"),
        }
    });
    let mut r = answer(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    for (name, value) in [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept.as_str()),
        ("sec-websocket-protocol", protocol),
    ] {
        if let Ok(v) = value.parse() {
            h.insert(name, v);
        }
    }
    r
}

/// The status sent on channel 3 when the command ends.
pub fn final_status(command: &[String], code: Option<i32>) -> String {
    match code {
        Some(0) => r#"{"metadata":{},"status":"Success"}"#.to_string(),
        Some(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
        .to_string(),
        None => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command {command:?} was killed by a signal"),
            "reason": "InternalError",
        })
        .to_string(),
    }
}

fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}

async fn pump(
    mut from: impl AsyncRead + Unpin,
    channel: u8,
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut msg = Vec::with_capacity(n + 1);
                msg.push(channel);
                msg.extend_from_slice(&buf[..n]);
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn session<S>(ws: WebSocketStream<S>, spec: ShimSpec, o: ExecOptions)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut incoming) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(32);
    let sandbox = Sandbox {
        netns: spec.netns.clone(),
        hostname: spec.hostname.clone(),
        binds: spec.binds.clone(),
    };
    let piped = |on: bool| {
        if on {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        }
    };
    let started = crate::spawn::command(&crate::runtime::resolve_program(&o.command[0]), &sandbox)
        .map_err(|e| e.to_string())
        .and_then(|mut cmd| {
            cmd.args(&o.command[1..])
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&spec.cwd)
                .stdin(piped(o.stdin))
                .stdout(piped(o.stdout))
                .stderr(piped(o.stderr || o.tty));
            tokio::process::Command::from(cmd)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("exec {:?}: {e}", o.command[0]))
        });
    let mut child = match started {
        Ok(child) => child,
        Err(message) => {
            let status = serde_json::json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"});
            let mut msg = vec![3u8];
            msg.extend_from_slice(status.to_string().as_bytes());
            let _ = sink.send(Message::Binary(msg.into())).await;
            let _ = sink.send(Message::Close(Some(normal_close()))).await;
            let _ = sink.close().await;
            return;
        }
    };
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(out, 1, tx.clone())));
    }
    if let Some(err) = child.stderr.take() {
        // With a "terminal" everything is one stream, as a TTY would show.
        pumps.push(tokio::spawn(pump(
            err,
            if o.tty { 1 } else { 2 },
            tx.clone(),
        )));
    }
    let mut stdin = child.stdin.take();
    let input = tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.first() {
                Some(0) => {
                    if let Some(w) = stdin.as_mut()
                        && w.write_all(&data[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // v5: the client closed a stream; stdin is the one that matters.
                Some(255) if data.get(1) == Some(&0) => stdin = None,
                _ => {}
            }
        }
    });
    let command = o.command.clone();
    let waiter = tokio::spawn(async move {
        let code = child.wait().await.ok().and_then(|s| s.code());
        for p in pumps {
            let _ = p.await;
        }
        let mut msg = vec![3u8];
        msg.extend_from_slice(final_status(&command, code).as_bytes());
        let _ = tx.send(msg).await;
    });
    while let Some(msg) = rx.recv().await {
        if sink.send(Message::Binary(msg.into())).await.is_err() {
            break;
        }
    }
    // A normal closure (1000): clients read it as the end of every stream;
    // a close without a code (1005) is an error to them.
    let _ = sink.send(Message::Close(Some(normal_close()))).await;
    let _ = sink.close().await;
    input.abort();
    let _ = waiter.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_status() {
        let o = parse_query(
            "command=sh&command=-c&command=echo%20hi%3B%20exit%203&stdin=true&stdout=true&stderr=true",
        );
        assert_eq!(o.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        assert_eq!(
            final_status(&o.command, Some(0)),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let failed: serde_json::Value =
            serde_json::from_str(&final_status(&o.command, Some(3))).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}

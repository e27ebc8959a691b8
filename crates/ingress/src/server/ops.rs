//! The operations listener: `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::render;
use crate::proxy::{Body, Shared, text_response};

/// Serves `/metrics`, `/healthz` and `/readyz` until told to stop.
pub(super) async fn ops_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let registry = registry.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = ops_answer(req.uri().path(), &registry, &shared);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn ops_answer(path: &str, registry: &Registry, shared: &Shared) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/healthz" | "/readyz" => {
            let snapshot = shared.snapshot.load();
            let (synced, source, error) = shared
                .readiness
                .lock()
                .map(|r| (r.synced, r.source.clone(), r.error.clone()))
                .unwrap_or_default();
            let mut text = format!(
                "ok: generation {}, {} Ingresses\n",
                snapshot.generation,
                snapshot.routes.ingresses.len()
            );
            if let Some(err) = &error {
                text = format!(
                    "{}; the source {source} is failing: {err}\n",
                    text.trim_end()
                );
            }
            if path == "/readyz" && !synced {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "not ready: no cluster state yet from {source}: {}\n",
                        error
                            .as_deref()
                            .unwrap_or("waiting for every kind to be listed")
                    ),
                )
            } else {
                (StatusCode::OK, "text/plain; charset=utf-8", text)
            }
        }
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(registry),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    text_response(status, content_type, body)
}

//! Connecting to the API server: a kubeconfig, the in-cluster
//! ServiceAccount files, or an explicit server address for the bootstrap
//! (the node agent programs the `kubernetes` Service, so it cannot reach
//! the API through it before it has done so; cluster DNS cannot use
//! cluster DNS to find it), and a background runtime every API call of a
//! process runs on. Also the one place API errors become [`SourceError`]s.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use podwire_model::SourceError;

/// Where the in-cluster ServiceAccount credentials are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSettings {
    /// A kubeconfig file (its current context).
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's or the in-cluster
    /// one (`https://192.168.56.10:6443`).
    pub api_server: Option<String>,
}

/// A connection to the API server with the runtime its calls run on.
/// Cloning shares both.
#[derive(Clone)]
pub struct Kube {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    server: String,
    /// Always Some until dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle may go with a task on this very runtime (an
        // aborted watcher holds one): shut down without waiting, which is
        // allowed from inside a runtime where a plain drop is not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("server", &self.inner.server)
            .finish()
    }
}

fn config_error(reason: impl Into<String>) -> SourceError {
    SourceError::Config {
        reason: reason.into(),
    }
}

async fn client_config(settings: &ClientSettings) -> Result<kube::Config, SourceError> {
    let mut config = match (&settings.kubeconfig, &settings.api_server) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                config_error(format!(
                    "cannot read the kubeconfig {}: {e}; pass a readable file with --kubeconfig",
                    path.display()
                ))
            })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    config_error(format!("the kubeconfig {} is unusable: {e}", path.display()))
                })?
        }
        (None, Some(server)) => service_account_config(server, Path::new(SERVICE_ACCOUNT_DIR))?,
        (None, None) => kube::Config::incluster().map_err(|e| {
            config_error(format!(
                "not running in a cluster ({e}); pass --kubeconfig FILE, or --api-server URL inside a pod"
            ))
        })?,
    };
    if let Some(server) = &settings.api_server {
        config.cluster_url = server
            .parse()
            .map_err(|e| config_error(format!("--api-server {server:?} is not a URL: {e}")))?;
    }
    config.connect_timeout = Some(Duration::from_secs(5));
    // A watch whose connection died without a FIN or RST (a partition, a
    // NAT that lost the flow) would wait forever; the API server sends a
    // bookmark about once a minute on every watch, so two minutes of
    // silence means the connection is gone and the watch resumes on a new one.
    config.read_timeout = Some(Duration::from_secs(120));
    Ok(config)
}

/// In-cluster credentials (the mounted token, re-read as it rotates, and
/// CA) with an explicit server address.
fn service_account_config(server: &str, dir: &Path) -> Result<kube::Config, SourceError> {
    let url = server
        .parse()
        .map_err(|e| config_error(format!("--api-server {server:?} is not a URL: {e}")))?;
    let ca_path = dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(|e| {
        config_error(format!(
            "--api-server without --kubeconfig uses the pod's ServiceAccount, but {} is unreadable: {e}",
            ca_path.display()
        ))
    })?;
    let certs = pem_certificates(&ca);
    if certs.is_empty() {
        return Err(config_error(format!(
            "{} holds no PEM certificate",
            ca_path.display()
        )));
    }
    let token = dir.join("token");
    if !token.exists() {
        return Err(config_error(format!(
            "{} is missing: mount the ServiceAccount token or pass --kubeconfig",
            token.display()
        )));
    }
    let mut config = kube::Config::new(url);
    config.root_cert = Some(certs);
    config.auth_info = AuthInfo {
        token_file: Some(token.display().to_string()),
        ..Default::default()
    };
    if let Ok(ns) = std::fs::read_to_string(dir.join("namespace")) {
        config.default_namespace = ns.trim().to_string();
    }
    Ok(config)
}

/// The DER certificates of a PEM bundle (other blocks are ignored).
fn pem_certificates(bundle: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(bundle)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect()
}

impl Kube {
    /// Builds the client and the runtime (one worker thread) its calls run
    /// on. Nothing is sent yet: an unreachable server shows in the first
    /// call's error.
    pub fn connect(settings: &ClientSettings) -> Result<Kube, SourceError> {
        // rustls needs one process-wide crypto provider; another part of
        // the process may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube")
            .enable_all()
            .build()
            .map_err(|e| config_error(format!("cannot start the API client's runtime: {e}")))?;
        let config = runtime.block_on(client_config(settings))?;
        let server = config.cluster_url.to_string();
        let client = {
            let _guard = runtime.enter();
            kube::Client::try_from(config).map_err(|e| {
                config_error(format!("cannot build the API client for {server}: {e}"))
            })?
        };
        Ok(Kube {
            inner: Arc::new(Inner {
                client,
                server,
                runtime: Some(runtime),
            }),
        })
    }

    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        // Infallible: only Drop takes it.
        self.inner
            .runtime
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime lives as long as the handle"))
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime().handle().clone()
    }

    /// Runs a future on the client's runtime and waits for it (from a
    /// plain thread, never from inside an async task).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// The error of an API call, classified.
    pub fn error(&self, verb: &str, resource: &str, err: kube::Error) -> SourceError {
        classify(&self.inner.server, verb, resource, err)
    }
}

/// Turns a client error into a [`SourceError`] that says what to check.
pub fn classify(server: &str, verb: &str, resource: &str, err: kube::Error) -> SourceError {
    match err {
        kube::Error::Api(status) => {
            let reason = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            match status.code {
                401 => SourceError::Unauthorized {
                    server: server.to_string(),
                    reason,
                },
                403 => SourceError::Forbidden {
                    verb: verb.to_string(),
                    resource: resource.to_string(),
                    reason,
                },
                code => SourceError::Api {
                    verb: verb.to_string(),
                    resource: resource.to_string(),
                    code,
                    reason,
                },
            }
        }
        other => SourceError::Unreachable {
            server: server.to_string(),
            reason: full_chain(&other),
        },
    }
}

/// An error and its causes on one line ("connection refused" hides deep).
pub fn full_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundle_decodes() {
        // "hello" and "world!" as fake DER bodies.
        let pem = b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\njunk\n-----BEGIN CERTIFICATE-----\nd29y\nbGQh\n-----END CERTIFICATE-----\n";
        assert_eq!(
            pem_certificates(pem),
            vec![b"hello".to_vec(), b"world!".to_vec()]
        );
        assert!(pem_certificates(b"no pem here").is_empty());
    }

    #[test]
    fn service_account_config_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = service_account_config("https://10.0.0.1:6443", dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
        std::fs::write(
            dir.path().join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = service_account_config("https://10.0.0.1:6443", dir.path()).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::write(dir.path().join("token"), "t").unwrap();
        std::fs::write(dir.path().join("namespace"), "kube-system\n").unwrap();
        let c = service_account_config("https://10.0.0.1:6443", dir.path()).unwrap();
        assert_eq!(c.default_namespace, "kube-system");
        assert_eq!(c.cluster_url.to_string(), "https://10.0.0.1:6443/");
        let err = service_account_config("not a url", dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a URL"), "{err}");
    }

    #[test]
    fn api_errors_are_classified() {
        let status = |code: u16| {
            kube::Error::Api(
                kube::core::Status {
                    code,
                    message: "nope".into(),
                    ..Default::default()
                }
                .boxed(),
            )
        };
        assert!(matches!(
            classify("s", "list", "pods", status(401)),
            SourceError::Unauthorized { .. }
        ));
        let e = classify("s", "list", "pods", status(403));
        assert!(e.to_string().contains("forbidden to list pods"), "{e}");
        assert!(matches!(
            classify("s", "list", "pods", status(500)),
            SourceError::Api { code: 500, .. }
        ));
    }
}

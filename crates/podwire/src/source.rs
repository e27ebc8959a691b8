//! The `--source` flags every long-running subcommand shares, and opening
//! the source they name: `files:DIR` (a lab's store) or `kube` (a real API
//! server: in-cluster, `--kubeconfig`, or `--api-server` for the bootstrap,
//! since the agent programs the `kubernetes` Service and cannot reach the
//! API through it before it has).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use podwire_model::{FilesSource, Interest, Snapshot, Source, Store, Watch};
use podwire_source::{ClientSettings, ClusterSettings, Kube, KubeSource};

#[derive(Args, Clone, Debug, Default)]
pub struct SourceArgs {
    /// Where cluster state comes from: `kube` (a Kubernetes API server) or
    /// `files:DIR` (a lab's store). Default: kube when --kubeconfig or
    /// --api-server is given.
    #[arg(long, global = true)]
    source: Option<String>,
    /// The kubeconfig for --source kube (default: the pod's ServiceAccount).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL for --source kube, e.g. https://192.168.56.10:6443
    /// (default: the kubeconfig's, or the in-cluster KUBERNETES_SERVICE_HOST).
    #[arg(long, global = true, env = "PODWIRE_API_SERVER")]
    api_server: Option<String>,
}

/// What a `--source` flag names.
pub enum Choice {
    Files(PathBuf),
    Kube(ClientSettings),
}

impl SourceArgs {
    pub fn choice(&self) -> Result<Choice> {
        // An empty value (an unset ConfigMap key) means "not given".
        let api_server = self.api_server.clone().filter(|s| !s.trim().is_empty());
        let kube = || {
            Choice::Kube(ClientSettings {
                kubeconfig: self.kubeconfig.clone(),
                api_server: api_server.clone(),
            })
        };
        match self.source.as_deref() {
            Some(s) if s.starts_with("files:") => {
                Ok(Choice::Files(PathBuf::from(&s["files:".len()..])))
            }
            Some("kube") => Ok(kube()),
            Some(other) => bail!("unknown source {other:?}: use kube or files:DIR"),
            None if self.kubeconfig.is_some() || api_server.is_some() => Ok(kube()),
            None => bail!(
                "--source is required: kube (a Kubernetes API server) or files:DIR (a lab's store)"
            ),
        }
    }

    /// The source for `interest`, and the API connection in Kubernetes mode
    /// (for writes and leader election).
    pub fn open(
        &self,
        interest: &Interest,
        settings: ClusterSettings,
    ) -> Result<(Box<dyn Source>, Option<Kube>)> {
        match self.choice()? {
            Choice::Files(dir) => Ok((
                Box::new(FilesSource::new(Store::open(dir), interest.clone())),
                None,
            )),
            Choice::Kube(client) => {
                let kube = Kube::connect(&client)?;
                tracing::info!(server = %kube.server(), "cluster state from the Kubernetes API");
                let source = KubeSource::start(&kube, interest.clone(), settings);
                Ok((Box::new(source), Some(kube)))
            }
        }
    }
}

/// How long a plan (dry run) waits for the first complete cluster state.
const FIRST_SNAPSHOT: Duration = Duration::from_secs(30);

/// The first complete snapshot of a source, for plans and one-shot runs;
/// the source's last error when none comes in time.
pub fn first_snapshot(watch: &mut Watch) -> Result<Snapshot> {
    let deadline = Instant::now() + FIRST_SNAPSHOT;
    let mut last_error = None;
    while Instant::now() < deadline {
        match watch.next(deadline.saturating_duration_since(Instant::now())) {
            Ok(Some(s)) => return Ok(s),
            Ok(None) => {}
            Err(e) => {
                last_error = Some(e);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    match last_error {
        Some(e) => bail!("no cluster state from {}: {e}", watch.source().describe()),
        None => bail!(
            "no complete cluster state from {} within {FIRST_SNAPSHOT:?} (a files store needs generation 1 or more)",
            watch.source().describe()
        ),
    }
}

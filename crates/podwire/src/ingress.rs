//! `podwire ingress`: the ingress controller (HTTP, HTTPS by SNI, metrics),
//! and `podwire ingress plan`, which prints the routes and certificates it
//! would serve.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use podwire_ingress::certs::SecretRef;
use podwire_ingress::proxy::Settings;
use podwire_ingress::server::{Config, Feed, Listen, StatusPublisher};
use podwire_ingress::status::Publish;
use podwire_ingress::{BackendRef, CompileOptions, DEFAULT_CLASS};
use podwire_model::{ClusterWriter, Leadership, Watch};
use podwire_source::{ClusterSettings, KubeWriter, LeaderElection, LeaseSettings};

use crate::source::{SourceArgs, first_snapshot};

#[derive(Args)]
pub struct IngressArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// An IngressClass name served even without an IngressClass object
    /// (classes whose controller is podwire.io/ingress are always served).
    #[arg(long, global = true, default_value = DEFAULT_CLASS)]
    class: String,
    /// Controller-wide fallback when no rule or Ingress defaultBackend
    /// matches, as NAMESPACE/SERVICE:PORT (default: 404).
    #[arg(long, global = true)]
    default_backend: Option<String>,
    /// A kubernetes.io/tls Secret (NAMESPACE/NAME) served when the client's
    /// SNI matches no Ingress host (default: a generated self-signed one).
    #[arg(long, global = true)]
    default_certificate: Option<String>,
    /// Address to serve HTTP on, or `off`.
    #[arg(long, default_value = "0.0.0.0:80")]
    listen: String,
    /// Address to serve HTTPS (HTTP/2 and HTTP/1.1) on, or `off`.
    #[arg(long, default_value = "off")]
    listen_tls: String,
    /// Address for /metrics, /healthz and /readyz, or `off`.
    #[arg(long, default_value = "0.0.0.0:10254")]
    metrics_listen: String,
    /// The port in HTTP→HTTPS redirects (default: the --listen-tls port;
    /// set it to the NodePort or load balancer port clients use).
    #[arg(long)]
    https_redirect_port: Option<u16>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Time allowed to connect to a backend, e.g. 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Time allowed for a backend's response head, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    read_timeout: Duration,
    /// Time an idle client connection is kept open, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Client connections open at once across all workers; at the limit the
    /// connection idle the longest (between requests, or without a complete
    /// request head) is closed to make room, and with none idle new ones
    /// wait. Default: the memory limit (cgroup, else RAM) / 64 KiB, at most
    /// the open-file limit - 256 and 65536.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request head accepted, in bytes (larger: 431).
    #[arg(long, default_value_t = 32 * 1024)]
    max_header_bytes: usize,
    /// With --source kube: write each Ingress's status.loadBalancer from
    /// this Service's address (NAMESPACE/NAME), as ingress-nginx does.
    #[arg(long)]
    publish_service: Option<String>,
    /// With --source kube: write these addresses (IPs or host names,
    /// comma-separated) into each Ingress's status instead.
    #[arg(long, value_delimiter = ',')]
    publish_status_address: Vec<String>,
    /// The namespace of the leader-election Lease (default: $POD_NAMESPACE,
    /// else ingress-podwire).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ingress-podwire")]
    election_namespace: String,
    /// The leader-election Lease's name.
    #[arg(long, default_value = "podwire-ingress-leader")]
    election_id: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Time in-flight requests get to finish on SIGTERM, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    #[command(subcommand)]
    action: Option<IngressAction>,
}

#[derive(Subcommand)]
enum IngressAction {
    /// Print the routes and certificates the controller would serve.
    Plan,
}

/// `500ms`, `5s`, `2m` or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration: use e.g. 500ms, 5s or 2m");
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn address(flag: &str, text: &str) -> Result<Option<SocketAddr>> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .with_context(|| format!("--{flag} {text:?}: expected ADDRESS:PORT or off"))
}

fn publish(args: &IngressArgs) -> Result<Option<Publish>> {
    match (
        &args.publish_service,
        args.publish_status_address.is_empty(),
    ) {
        (Some(_), false) => {
            anyhow::bail!("--publish-service and --publish-status-address exclude each other")
        }
        (Some(text), true) => Publish::service(text)
            .map(Some)
            .with_context(|| format!("--publish-service {text:?}: expected NAMESPACE/NAME")),
        (None, false) => Ok(Some(Publish::Addresses(
            args.publish_status_address.clone(),
        ))),
        (None, true) => Ok(None),
    }
}

fn identity(args: &IngressArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| format!("podwire-ingress-{}", std::process::id()))
    })
}

pub fn run(args: IngressArgs) -> Result<()> {
    let config = Config {
        options: CompileOptions {
            class: args.class.clone(),
            fallback: args
                .default_backend
                .as_deref()
                .map(str::parse::<BackendRef>)
                .transpose()?,
        },
        default_certificate: args
            .default_certificate
            .as_deref()
            .map(str::parse::<SecretRef>)
            .transpose()?,
    };
    let interest = podwire_ingress::server::interest();
    let (source, kube) = args.source.open(&interest, ClusterSettings::default())?;
    if let Some(IngressAction::Plan) = args.action {
        let generated = podwire_ingress::certs::generated_default()?;
        let mut watch = Watch::new(source, &interest);
        let first = first_snapshot(&mut watch)?;
        let snapshot =
            podwire_ingress::server::compile(first.revision, &first.state, &config, &generated);
        println!(
            "# podwire ingress plan: {} (revision {}, {} Ingresses of class {:?})",
            watch.source().describe(),
            snapshot.generation,
            snapshot.routes.ingresses.len(),
            config.options.class
        );
        print!("{}", snapshot.routes);
        println!();
        print!("{}", snapshot.certs);
        return Ok(());
    }
    let listen = Listen {
        http: address("listen", &args.listen)?,
        https: address("listen-tls", &args.listen_tls)?,
        metrics: address("metrics-listen", &args.metrics_listen)?,
    };
    if listen.http.is_none() && listen.https.is_none() {
        anyhow::bail!("both --listen and --listen-tls are off: nothing to serve");
    }
    let settings = Settings {
        connect_timeout: args.connect_timeout,
        read_timeout: args.read_timeout,
        idle_timeout: args.idle_timeout,
        max_header_bytes: args.max_header_bytes.max(1024),
        shutdown_grace: args.shutdown_grace,
        https_redirect_port: args.https_redirect_port,
        max_connections: args.max_connections.map(|n| n.max(1)),
        ..Settings::default()
    };
    let publish = publish(&args)?;
    let mut election = None;
    let status = match &kube {
        Some(kube) => {
            if publish.is_none() {
                tracing::info!(
                    "no --publish-service or --publish-status-address: Ingress status is not written"
                );
            }
            // As ingress-nginx: one elected replica writes to the API
            // (status addresses, Events), all of them serve.
            let e = Arc::new(LeaderElection::start(
                kube,
                LeaseSettings::new(&args.election_namespace, &args.election_id, identity(&args)),
            ));
            election = Some(e.clone());
            Some(StatusPublisher {
                writer: Arc::new(KubeWriter::new(kube)) as Arc<dyn ClusterWriter>,
                leader: e as Arc<dyn Leadership>,
                publish,
            })
        }
        None => {
            if publish.is_some() {
                tracing::warn!("--publish-* needs --source kube; no Ingress status is written");
            }
            None
        }
    };
    podwire_ingress::server::run(
        listen,
        Feed { source, status },
        config,
        settings,
        args.workers,
    )?;
    // Hand the Lease over at once instead of after its duration.
    if let Some(e) = election.and_then(Arc::into_inner) {
        e.release();
    }
    Ok(())
}

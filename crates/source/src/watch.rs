//! [`KubeSource`]: the cluster state from a real API server, as a
//! [`Source`]. One kube-rs watcher per kind of interest (list, then watch
//! from that resourceVersion; a watch that breaks resumes from the last
//! version it saw, and only an expired version makes it list again), each
//! object filtered and stripped by the interest before it leaves the task,
//! so nothing a component never reads is kept. Pods are watched with a
//! `spec.nodeName` field selector when the interest names a node, TLS
//! Secrets with a `type` field selector.
//!
//! The watchers run on the client's runtime and hand changes to the
//! component's thread through a bounded channel (a slow consumer slows the
//! watchers down instead of growing a queue). Errors are logged once per
//! distinct message, counted, kept in the status until a probe of the same
//! kind succeeds again, and reported to the component by `next`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use podwire_model::{
    Change, ClusterConfig, Deployment, EndpointSlice, Ingress, IngressClass, Interest, Kind,
    Namespace, NetworkPolicy, Node, Object, ObjectRef, Pod, RoutingMode, Secret, Service, Source,
    SourceError, SourceStatus, Update,
};

use crate::client::Kube;

/// Changes handed over per `next` call at most.
const BATCH: usize = 1024;
/// Changes in flight between the watchers and the component.
const CHANNEL: usize = 4096;
/// How often a failing kind is probed to see whether it works again.
const PROBE: Duration = Duration::from_secs(2);

/// The cluster-wide settings the files store keeps in config.json; on a
/// real cluster they come from flags and ServiceCIDR objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The pod range (`--cluster-cidr`); without it no config is reported.
    pub cluster_cidr: Option<IpNet>,
    /// The service range (`--service-cidr`); None: from the ServiceCIDR
    /// objects (the API server creates `kubernetes` from its
    /// --service-cluster-ip-range).
    pub service_cidr: Option<IpNet>,
    pub cluster_domain: String,
    pub routing: RoutingMode,
    pub node_slice_prefix: u8,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            cluster_cidr: None,
            service_cidr: None,
            cluster_domain: "cluster.local".into(),
            routing: RoutingMode::Vxlan,
            node_slice_prefix: 24,
        }
    }
}

impl ClusterSettings {
    fn config(&self, service_cidr: Option<IpNet>) -> Option<ClusterConfig> {
        Some(ClusterConfig {
            pod_cidr: self.cluster_cidr?,
            service_cidr: self.service_cidr.or(service_cidr)?,
            node_slice_prefix: self.node_slice_prefix,
            cluster_domain: self.cluster_domain.clone(),
            routing: self.routing,
        })
    }
}

// Almost every message is a change; see `Change` for why it is not boxed.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Change(Change),
    Failed(SourceError),
}

#[derive(Debug, Default)]
struct Health {
    listed: BTreeSet<Kind>,
    restarts: BTreeMap<&'static str, u64>,
    /// The current error per watched resource ("pods", "servicecidrs").
    errors: BTreeMap<&'static str, String>,
    last_contact: Option<Instant>,
}

type Shared = Arc<Mutex<Health>>;

fn with_health(health: &Shared, f: impl FnOnce(&mut Health)) {
    if let Ok(mut h) = health.lock() {
        f(&mut h);
    }
}

/// The Kubernetes API as a source.
pub struct KubeSource {
    server: String,
    interest: Interest,
    rx: Receiver<Msg>,
    health: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    revision: u64,
    /// An error that arrived with changes, reported at the next call.
    pending_error: Option<SourceError>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("server", &self.server)
            .field("kinds", &self.interest.kinds)
            .finish()
    }
}

/// Watch restarts back off from 200 ms to 5 s (kube-rs's default grows to
/// 30 s, too slow to notice an API server that came back), and start from
/// 200 ms again after any success. A 410 (the version we resume from is
/// older than the server's history, as after an API server restart) is not
/// a failure: the watcher lists again at once.
#[derive(Debug)]
struct QuickBackoff {
    next: Duration,
}

impl QuickBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> QuickBackoff {
        QuickBackoff { next: Self::FIRST }
    }

    fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        now
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Whether a watcher error only means "list again".
fn expired(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchError(status) if status.code == 410)
}

/// Sends without blocking the runtime: a full channel waits a little.
async fn send(tx: &SyncSender<Msg>, mut msg: Msg) -> bool {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Full(m)) => {
                msg = m;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
    }
}

/// What one watcher needs to know.
struct WatchJob {
    kind: Kind,
    resource: &'static str,
    fields: Option<String>,
    interest: Arc<Interest>,
    health: Shared,
    tx: SyncSender<Msg>,
    kube: Kube,
}

impl WatchJob {
    async fn fail(&self, err: SourceError) -> bool {
        let text = err.to_string();
        let mut new = false;
        with_health(&self.health, |h| {
            *h.restarts.entry(self.resource).or_default() += 1;
            if h.errors.get(self.resource) != Some(&text) {
                new = true;
                h.errors.insert(self.resource, text.clone());
            }
        });
        if new {
            tracing::warn!(resource = self.resource, "{text}");
        }
        send(&self.tx, Msg::Failed(err)).await
    }

    fn recovered(&self) {
        let mut was = None;
        with_health(&self.health, |h| {
            was = h.errors.remove(self.resource);
            h.last_contact = Some(Instant::now());
        });
        if was.is_some() {
            tracing::info!(resource = self.resource, "watching {} again", self.resource);
        }
    }
}

async fn watch_kind<K>(job: WatchJob, wrap: fn(K) -> Object)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(job.kube.client());
    let mut config = watcher::Config::default();
    if let Some(fields) = &job.fields {
        config = config.fields(fields);
    }
    let mut probe_params = ListParams::default().limit(1);
    if let Some(fields) = &job.fields {
        probe_params = probe_params.fields(fields);
    }
    let mut stream = watcher::watcher(api.clone(), config).boxed();
    let mut backoff = QuickBackoff::new();
    let mut listed_once = false;
    let mut probe = tokio::time::interval(PROBE);
    // A task that slept in its backoff must not fire the missed probes at once.
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = probe.tick() => {
                let failing = job.health.lock().map(|h| h.errors.contains_key(job.resource)).unwrap_or(false);
                if failing && api.list(&probe_params).await.is_ok() {
                    job.recovered();
                }
                continue;
            }
        };
        let Some(item) = item else { return };
        // Only data means the server works: `Init` comes before every list.
        if matches!(item, Ok(ref e) if !matches!(e, Event::Init)) {
            backoff.reset();
        }
        let msg = match item {
            Ok(Event::Init) => {
                if listed_once {
                    with_health(&job.health, |h| {
                        *h.restarts.entry(job.resource).or_default() += 1
                    });
                }
                Msg::Change(Change::Relisting(job.kind))
            }
            Ok(Event::InitDone) => {
                listed_once = true;
                job.recovered();
                with_health(&job.health, |h| {
                    h.listed.insert(job.kind);
                });
                Msg::Change(Change::Listed(job.kind))
            }
            Ok(Event::InitApply(o)) | Ok(Event::Apply(o)) => {
                job.recovered();
                let object = wrap(o);
                let r = ObjectRef::of(&object);
                match job.interest.prepare(object) {
                    Some(object) => Msg::Change(Change::Applied(object)),
                    // No longer of interest (a filter the API cannot apply).
                    None => Msg::Change(Change::Deleted(r)),
                }
            }
            Ok(Event::Delete(o)) => {
                job.recovered();
                Msg::Change(Change::Deleted(ObjectRef::new(
                    job.kind,
                    o.namespace().unwrap_or_default(),
                    o.name_any(),
                )))
            }
            Err(err) if expired(&err) => {
                with_health(&job.health, |h| {
                    *h.restarts.entry(job.resource).or_default() += 1
                });
                tracing::info!(
                    resource = job.resource,
                    "watch history expired; listing again"
                );
                continue;
            }
            Err(err) => {
                let source_err = match err {
                    watcher::Error::InitialListFailed(e) => job.kube.error("list", job.resource, e),
                    watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                        job.kube.error("watch", job.resource, e)
                    }
                    watcher::Error::WatchError(status) => {
                        job.kube
                            .error("watch", job.resource, kube::Error::Api(status))
                    }
                    watcher::Error::NoResourceVersion => SourceError::Api {
                        verb: "watch".into(),
                        resource: job.resource.into(),
                        code: 0,
                        reason: "the API returned no resourceVersion".into(),
                    },
                };
                if !job.fail(source_err).await {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        if !send(&job.tx, msg).await {
            return;
        }
    }
}

/// Watches ServiceCIDR objects and reports the cluster settings whenever
/// the service range they give changes.
async fn watch_service_cidrs(job: WatchJob, settings: ClusterSettings) {
    let api: Api<ServiceCIDR> = Api::all(job.kube.client());
    let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
    let mut backoff = QuickBackoff::new();
    let mut cidrs: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    let mut listing: Option<BTreeMap<String, Vec<IpNet>>> = None;
    let mut reported: Option<Option<ClusterConfig>> = None;
    while let Some(item) = stream.next().await {
        // Only data means the server works: `Init` comes before every list.
        if matches!(item, Ok(ref e) if !matches!(e, Event::Init)) {
            backoff.reset();
        }
        match item {
            Ok(Event::Init) => listing = Some(BTreeMap::new()),
            Ok(Event::InitApply(o)) => {
                if let Some(l) = listing.as_mut() {
                    l.insert(o.name_any(), parse_cidrs(&o));
                }
            }
            Ok(Event::InitDone) => {
                cidrs = listing.take().unwrap_or_default();
                job.recovered();
            }
            Ok(Event::Apply(o)) => {
                cidrs.insert(o.name_any(), parse_cidrs(&o));
                job.recovered();
            }
            Ok(Event::Delete(o)) => {
                cidrs.remove(&o.name_any());
            }
            Err(err) if expired(&err) => continue,
            Err(err) => {
                let e = match err {
                    watcher::Error::WatchError(status) => kube::Error::Api(status),
                    watcher::Error::InitialListFailed(e)
                    | watcher::Error::WatchStartFailed(e)
                    | watcher::Error::WatchFailed(e) => e,
                    watcher::Error::NoResourceVersion => continue,
                };
                if !job.fail(job.kube.error("watch", job.resource, e)).await {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        if listing.is_some() {
            continue;
        }
        let config = settings.config(service_range(&cidrs));
        if reported.as_ref() != Some(&config) {
            reported = Some(config.clone());
            if !send(&job.tx, Msg::Change(Change::Config(config))).await {
                return;
            }
        }
    }
}

fn parse_cidrs(o: &ServiceCIDR) -> Vec<IpNet> {
    o.spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The service range: the `kubernetes` ServiceCIDR's first range (the one
/// from --service-cluster-ip-range), else any object's, IPv4 first.
fn service_range(cidrs: &BTreeMap<String, Vec<IpNet>>) -> Option<IpNet> {
    let pick = |nets: &Vec<IpNet>| {
        nets.iter()
            .find(|n| matches!(n, IpNet::V4(_)))
            .or(nets.first())
            .copied()
    };
    cidrs
        .get("kubernetes")
        .and_then(pick)
        .or_else(|| cidrs.values().find_map(pick))
}

impl KubeSource {
    /// Starts one watcher per kind of interest (plus one for ServiceCIDRs
    /// when `settings` has no service range). Returns at once; the first
    /// changes arrive through [`Source::next`].
    pub fn start(kube: &Kube, interest: Interest, settings: ClusterSettings) -> KubeSource {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL);
        let health: Shared = Arc::default();
        let shared = Arc::new(interest.clone());
        let handle = kube.handle();
        let mut tasks = Vec::new();
        let job = |kind: Kind, resource: &'static str, fields: Option<String>| WatchJob {
            kind,
            resource,
            fields,
            interest: shared.clone(),
            health: health.clone(),
            tx: tx.clone(),
            kube: kube.clone(),
        };
        if settings.service_cidr.is_some() || settings.cluster_cidr.is_none() {
            // Known up front, or not needed (no pod range: no config).
            let config = settings.config(None);
            let _ = tx.try_send(Msg::Change(Change::Config(config)));
        } else {
            tasks.push(handle.spawn(watch_service_cidrs(
                job(Kind::Namespace, "servicecidrs", None),
                settings.clone(),
            )));
        }
        for kind in &interest.kinds {
            let kind = *kind;
            let resource = kind.resource();
            let task = match kind {
                Kind::Namespace => handle.spawn(watch_kind::<Namespace>(
                    job(kind, resource, None),
                    Object::Namespace,
                )),
                Kind::Node => {
                    handle.spawn(watch_kind::<Node>(job(kind, resource, None), Object::Node))
                }
                Kind::Pod => handle.spawn(watch_kind::<Pod>(
                    job(
                        kind,
                        resource,
                        interest.node.as_ref().map(|n| format!("spec.nodeName={n}")),
                    ),
                    Object::Pod,
                )),
                Kind::Service => handle.spawn(watch_kind::<Service>(
                    job(kind, resource, None),
                    Object::Service,
                )),
                Kind::EndpointSlice => handle.spawn(watch_kind::<EndpointSlice>(
                    job(kind, resource, None),
                    Object::EndpointSlice,
                )),
                Kind::Deployment => handle.spawn(watch_kind::<Deployment>(
                    job(kind, resource, None),
                    Object::Deployment,
                )),
                Kind::Ingress => handle.spawn(watch_kind::<Ingress>(
                    job(kind, resource, None),
                    Object::Ingress,
                )),
                Kind::Secret => handle.spawn(watch_kind::<Secret>(
                    job(
                        kind,
                        resource,
                        interest.secret_type.as_ref().map(|t| format!("type={t}")),
                    ),
                    Object::Secret,
                )),
                Kind::IngressClass => handle.spawn(watch_kind::<IngressClass>(
                    job(kind, resource, None),
                    Object::IngressClass,
                )),
                Kind::NetworkPolicy => handle.spawn(watch_kind::<NetworkPolicy>(
                    job(kind, resource, None),
                    Object::NetworkPolicy,
                )),
            };
            tasks.push(task);
        }
        KubeSource {
            server: kube.server().to_string(),
            interest,
            rx,
            health,
            tasks,
            revision: 0,
            pending_error: None,
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Source for KubeSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<Update>, SourceError> {
        if let Some(err) = self.pending_error.take() {
            return Err(err);
        }
        let first = match self.rx.recv_timeout(timeout) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(SourceError::Stopped {
                    what: "Kubernetes".into(),
                    reason: "every watcher ended".into(),
                });
            }
        };
        let mut changes = Vec::new();
        let mut error = None;
        let mut take = |msg: Msg, changes: &mut Vec<Change>| match msg {
            Msg::Change(c) => changes.push(c),
            Msg::Failed(e) => {
                error.get_or_insert(e);
            }
        };
        take(first, &mut changes);
        while changes.len() < BATCH {
            match self.rx.try_recv() {
                Ok(m) => take(m, &mut changes),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
            }
        }
        if changes.is_empty() {
            return match error {
                Some(e) => Err(e),
                None => Ok(None),
            };
        }
        self.pending_error = error;
        self.revision += 1;
        Ok(Some(Update {
            revision: self.revision,
            changes,
        }))
    }

    fn describe(&self) -> String {
        format!("kube {}", self.server)
    }

    fn status(&self) -> SourceStatus {
        let Ok(h) = self.health.lock() else {
            return SourceStatus::default();
        };
        SourceStatus {
            synced: self.interest.kinds.iter().all(|k| h.listed.contains(k)),
            error: (!h.errors.is_empty())
                .then(|| h.errors.values().cloned().collect::<Vec<_>>().join("; ")),
            restarts: h
                .restarts
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            last_contact_age: h.last_contact.map(|t| t.elapsed().as_secs_f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_range_prefers_the_kubernetes_object_and_ipv4() {
        let mut cidrs = BTreeMap::new();
        cidrs.insert("extra".to_string(), vec!["10.100.0.0/16".parse().unwrap()]);
        assert_eq!(
            service_range(&cidrs),
            Some("10.100.0.0/16".parse().unwrap())
        );
        cidrs.insert(
            "kubernetes".to_string(),
            vec![
                "fd00::/108".parse().unwrap(),
                "10.96.0.0/12".parse().unwrap(),
            ],
        );
        assert_eq!(service_range(&cidrs), Some("10.96.0.0/12".parse().unwrap()));
        assert_eq!(service_range(&BTreeMap::new()), None);
    }

    #[test]
    fn config_needs_both_ranges() {
        let mut s = ClusterSettings::default();
        assert_eq!(s.config(Some("10.96.0.0/12".parse().unwrap())), None);
        s.cluster_cidr = Some("10.244.0.0/16".parse().unwrap());
        assert_eq!(s.config(None), None);
        let c = s.config(Some("10.96.0.0/12".parse().unwrap())).unwrap();
        assert_eq!(c.service_cidr.to_string(), "10.96.0.0/12");
        s.service_cidr = Some("10.100.0.0/16".parse().unwrap());
        assert_eq!(
            s.config(Some("10.96.0.0/12".parse().unwrap()))
                .unwrap()
                .service_cidr
                .to_string(),
            "10.100.0.0/16",
            "the flag wins"
        );
    }

    #[test]
    fn backoff_grows_to_five_seconds_and_resets() {
        let mut b = QuickBackoff::new();
        let seq: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(seq, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
        let gone = watcher::Error::WatchError(
            kube::core::Status {
                code: 410,
                ..Default::default()
            }
            .boxed(),
        );
        assert!(expired(&gone));
        assert!(!expired(&watcher::Error::NoResourceVersion));
    }
}

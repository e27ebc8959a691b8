//! The seam every component reads cluster state through: a [`Source`]
//! yields batches of object changes for the kinds a component is
//! interested in ([`Interest`]), and a [`Reflector`] folds them into
//! snapshots (`Arc<ClusterState>` plus which objects changed).
//!
//! Two sources implement it: the files store ([`crate::FilesSource`], the
//! lab's embedded default) and the Kubernetes API (`podwire-source`, kube-rs
//! watchers). A component cannot tell them apart.
//!
//! Why batches of changes and not only snapshots: cluster DNS keeps its own
//! compact facts instead of the objects (100k pods as k8s-openapi structs
//! are ~250 MB; DNS needs a few bytes of each), so it consumes the changes
//! directly; every other component takes snapshots from a [`Watch`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;

use crate::{ClusterConfig, ClusterState, Kind, Object, SourceError};

/// The identity of one object: kind, namespace ("" for cluster-scoped
/// kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> ObjectRef {
        let namespace = if kind.namespaced() {
            let ns: String = namespace.into();
            if ns.is_empty() { "default".into() } else { ns }
        } else {
            String::new()
        };
        ObjectRef {
            kind,
            namespace,
            name: name.into(),
        }
    }

    /// The identity of an object.
    pub fn of(object: &Object) -> ObjectRef {
        ObjectRef {
            kind: object.kind(),
            namespace: object.namespace(),
            name: object.name(),
        }
    }

    /// The (namespace, name) key ClusterState's maps use.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One change a source reports.
// Most changes are `Applied`; boxing the object would cost an allocation
// per object for the few markers' sake.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Change {
    /// An object was added or modified (already filtered and stripped by
    /// the interest).
    Applied(Object),
    /// An object was deleted.
    Deleted(ObjectRef),
    /// Every object of this kind is listed again from here: the `Applied`
    /// changes of the kind up to `Listed(kind)` are the whole set, and an
    /// object of the kind that is not among them is gone. The first list of
    /// a kind is one too.
    Relisting(Kind),
    /// The list started by `Relisting(kind)` is complete.
    Listed(Kind),
    /// The cluster-wide settings (ranges, domain, routing mode), when known.
    Config(Option<ClusterConfig>),
}

/// A batch of changes. `revision` grows with every batch of a source (the
/// files store's generation; a counter for the API).
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// What a component needs: the kinds, optionally only the Pods bound to one
/// node, and a function that removes the fields it never reads before
/// anything is stored.
#[derive(Debug, Clone)]
pub struct Interest {
    pub kinds: BTreeSet<Kind>,
    /// Only Pods whose spec.nodeName is this (the API filters by field
    /// selector, the files store while reading).
    pub node: Option<String>,
    /// Only Secrets of this type (e.g. `kubernetes.io/tls`).
    pub secret_type: Option<String>,
    pub strip: fn(&mut Object),
}

impl Interest {
    /// These kinds, every Pod, bookkeeping fields stripped.
    pub fn new(kinds: impl IntoIterator<Item = Kind>) -> Interest {
        Interest {
            kinds: kinds.into_iter().collect(),
            node: None,
            secret_type: None,
            strip: strip_bookkeeping,
        }
    }

    /// Only Secrets of type `kubernetes.io/tls` (what an ingress serves).
    pub fn tls_secrets_only(mut self) -> Interest {
        self.secret_type = Some(TLS_SECRET_TYPE.to_string());
        self
    }

    /// Only the Pods bound to `node`.
    pub fn pods_of_node(mut self, node: impl Into<String>) -> Interest {
        self.node = Some(node.into());
        self
    }

    /// Strips with `strip` (which should call [`strip_bookkeeping`] too).
    pub fn stripping(mut self, strip: fn(&mut Object)) -> Interest {
        self.strip = strip;
        self
    }

    /// The union of two interests (one source for two components of one
    /// process): kinds of both, the node filter only when both have the same.
    pub fn union(&self, other: &Interest) -> Interest {
        Interest {
            kinds: self.kinds.union(&other.kinds).copied().collect(),
            node: if self.node == other.node {
                self.node.clone()
            } else {
                None
            },
            secret_type: if self.secret_type == other.secret_type {
                self.secret_type.clone()
            } else {
                None
            },
            strip: if self.strip as usize == other.strip as usize {
                self.strip
            } else {
                strip_bookkeeping
            },
        }
    }

    /// Whether the object is of interest (kind, node filter).
    pub fn wants(&self, object: &Object) -> bool {
        if !self.kinds.contains(&object.kind()) {
            return false;
        }
        if let (Some(node), Object::Pod(pod)) = (&self.node, object) {
            return pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
        }
        match (&self.secret_type, object) {
            (Some(wanted), Object::Secret(secret)) => {
                secret.type_.as_deref() == Some(wanted.as_str())
            }
            _ => true,
        }
    }

    /// The object as a component stores it: None when it is not of
    /// interest, else stripped.
    pub fn prepare(&self, mut object: Object) -> Option<Object> {
        if !self.wants(&object) {
            return None;
        }
        (self.strip)(&mut object);
        Some(object)
    }
}

/// The type of Secrets holding a TLS certificate and key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The annotation `kubectl apply` keeps a copy of the whole object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no component reads: managedFields and kubectl's copy of the
/// last applied object (together often larger than the object itself).
pub fn strip_bookkeeping(object: &mut Object) {
    let meta = object.metadata_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// How a source is doing, for readiness, status files and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStatus {
    /// Every kind of interest has been listed at least once.
    pub synced: bool,
    /// The last error, while it lasts (cleared once the source works again).
    pub error: Option<String>,
    /// Watches (re)started per resource ("pods", "servicecidrs"), beyond
    /// the first: errors and relists.
    pub restarts: BTreeMap<String, u64>,
    /// Seconds since the source last heard from its backend (an event, a
    /// list, or a successful poll).
    pub last_contact_age: Option<f64>,
}

impl SourceStatus {
    /// The status as Prometheus text lines, metric names prefixed with
    /// `prefix` (e.g. `podwire_dns_source`).
    pub fn render_metrics(&self, prefix: &str) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# HELP {prefix}_synced Whether every watched kind has been listed.\n# TYPE {prefix}_synced gauge\n{prefix}_synced {}\n",
            u8::from(self.synced)
        ));
        out.push_str(&format!(
            "# HELP {prefix}_error Whether the source is failing now.\n# TYPE {prefix}_error gauge\n{prefix}_error {}\n",
            u8::from(self.error.is_some())
        ));
        out.push_str(&format!(
            "# HELP {prefix}_watch_restarts_total Watches restarted (errors, relists), per resource.\n# TYPE {prefix}_watch_restarts_total counter\n"
        ));
        for (resource, n) in &self.restarts {
            out.push_str(&format!(
                "{prefix}_watch_restarts_total{{resource=\"{resource}\"}} {n}\n"
            ));
        }
        if let Some(age) = self.last_contact_age {
            out.push_str(&format!(
                "# HELP {prefix}_last_contact_seconds Seconds since the source last heard from its backend.\n# TYPE {prefix}_last_contact_seconds gauge\n{prefix}_last_contact_seconds {age:.3}\n"
            ));
        }
        out
    }
}

/// Where cluster state comes from.
pub trait Source: Send {
    /// Waits up to `timeout` for the next batch of changes; `Ok(None)` when
    /// nothing happened. An `Err` reports a failure of the backend (the
    /// component logs it and keeps what it has); the source keeps trying
    /// on its own, and a later call returns changes again.
    fn next(&mut self, timeout: Duration) -> Result<Option<Update>, SourceError>;

    /// "files:/run/podwire/labs/lab/cluster", "kube https://10.0.0.1:6443".
    fn describe(&self) -> String;

    fn status(&self) -> SourceStatus;
}

/// What components write back to the cluster (Kubernetes mode; the files
/// store has a single writer, the lab, and no such writes).
pub trait ClusterWriter: Send + Sync {
    /// Merges annotations into a Node's metadata, through `nodes/status`
    /// (what a node agent is allowed to patch, as Flannel does).
    fn annotate_node(
        &self,
        node: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(), SourceError>;

    /// Replaces an Ingress's `status.loadBalancer` (`ingresses/status`).
    fn set_ingress_status(
        &self,
        namespace: &str,
        name: &str,
        status: &IngressLoadBalancerStatus,
    ) -> Result<(), SourceError>;

    /// Records a Warning Event about an object (what `kubectl describe`
    /// shows), from `component`.
    fn warn(
        &self,
        object: &ObjectRef,
        uid: Option<&str>,
        component: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), SourceError>;
}

/// Whether this replica currently leads (holds the election Lease).
pub trait Leadership: Send + Sync {
    fn is_leader(&self) -> bool;
    /// This replica's identity in the Lease (`holderIdentity`).
    fn identity(&self) -> String;
}

/// Which objects a snapshot changed since the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// The first snapshot, or one after the cluster settings changed:
    /// treat everything as new.
    All,
    Objects(BTreeSet<ObjectRef>),
}

impl Changed {
    pub fn is_all(&self) -> bool {
        matches!(self, Changed::All)
    }

    /// Whether anything of this kind changed (always, for `All`).
    pub fn touches(&self, kind: Kind) -> bool {
        match self {
            Changed::All => true,
            Changed::Objects(set) => set.iter().any(|r| r.kind == kind),
        }
    }

    /// The changed objects of one kind (none for `All`: check it first).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &ObjectRef> {
        let set = match self {
            Changed::All => None,
            Changed::Objects(set) => Some(set),
        };
        set.into_iter().flatten().filter(move |r| r.kind == kind)
    }

    /// How many objects changed (None for `All`).
    pub fn count(&self) -> Option<usize> {
        match self {
            Changed::All => None,
            Changed::Objects(set) => Some(set.len()),
        }
    }
}

/// The cluster as of one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: u64,
    pub state: Arc<ClusterState>,
    pub changed: Changed,
}

/// Folds a source's changes into a [`ClusterState`] and hands out
/// snapshots: only once every kind of interest has been listed, never in
/// the middle of a relist, and naming only the objects that actually
/// changed (a relist that finds the same objects names none, so an API
/// server restart does not make components reprogram everything). A
/// snapshot with nothing changed still tells that the source has reached a
/// newer revision (the lab waits for agents to report its generation).
#[derive(Debug)]
pub struct Reflector {
    kinds: BTreeSet<Kind>,
    state: Arc<ClusterState>,
    listed: BTreeSet<Kind>,
    /// Kinds being relisted, with the keys seen so far.
    relisting: BTreeMap<Kind, BTreeSet<(String, String)>>,
    changed: BTreeSet<ObjectRef>,
    everything_changed: bool,
    revision: u64,
    published: Option<u64>,
}

impl Reflector {
    pub fn new(interest: &Interest) -> Reflector {
        Reflector {
            kinds: interest.kinds.clone(),
            state: Arc::new(ClusterState::default()),
            listed: BTreeSet::new(),
            relisting: BTreeMap::new(),
            changed: BTreeSet::new(),
            everything_changed: true,
            revision: 0,
            published: None,
        }
    }

    /// Applies a batch of changes.
    pub fn apply(&mut self, update: Update) {
        self.revision = self.revision.max(update.revision);
        for change in update.changes {
            self.apply_change(change);
        }
    }

    fn apply_change(&mut self, change: Change) {
        match change {
            Change::Applied(object) => {
                let r = ObjectRef::of(&object);
                if let Some(seen) = self.relisting.get_mut(&r.kind) {
                    seen.insert(r.key());
                }
                if Arc::make_mut(&mut self.state).apply(object) {
                    self.changed.insert(r);
                }
            }
            Change::Deleted(r) => {
                if Arc::make_mut(&mut self.state).remove(r.kind, &r.namespace, &r.name) {
                    self.changed.insert(r);
                }
            }
            Change::Relisting(kind) => {
                self.relisting.insert(kind, BTreeSet::new());
            }
            Change::Listed(kind) => {
                let Some(seen) = self.relisting.remove(&kind) else {
                    return;
                };
                let gone: Vec<(String, String)> = self
                    .state
                    .keys(kind)
                    .into_iter()
                    .filter(|k| !seen.contains(k))
                    .collect();
                if !gone.is_empty() {
                    let state = Arc::make_mut(&mut self.state);
                    for (ns, name) in gone {
                        state.remove(kind, &ns, &name);
                        self.changed.insert(ObjectRef::new(kind, ns, name));
                    }
                }
                self.listed.insert(kind);
            }
            Change::Config(config) => {
                if self.state.config != config {
                    Arc::make_mut(&mut self.state).config = config;
                    self.everything_changed = true;
                }
            }
        }
    }

    /// Every kind of interest listed, no relist half done.
    pub fn ready(&self) -> bool {
        self.relisting.is_empty() && self.kinds.iter().all(|k| self.listed.contains(k))
    }

    /// A snapshot, when ready and something changed or the revision moved
    /// since the last one.
    pub fn take_snapshot(&mut self) -> Option<Snapshot> {
        if !self.ready() {
            return None;
        }
        let changed = match self.published {
            None => Changed::All,
            Some(_) if self.everything_changed => Changed::All,
            Some(revision) if self.changed.is_empty() && revision >= self.revision => {
                return None;
            }
            Some(_) => Changed::Objects(std::mem::take(&mut self.changed)),
        };
        self.changed.clear();
        self.everything_changed = false;
        self.published = Some(self.revision);
        Some(Snapshot {
            revision: self.revision,
            state: self.state.clone(),
            changed,
        })
    }

    /// The state as folded so far (may be mid-relist; see [`Reflector::ready`]).
    pub fn state(&self) -> &Arc<ClusterState> {
        &self.state
    }

    /// The revision of the last batch applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }
}

/// A source and a reflector: snapshots for components that keep the
/// objects (routing, proxy, ingress).
pub struct Watch {
    source: Box<dyn Source>,
    reflector: Reflector,
}

impl Watch {
    pub fn new(source: Box<dyn Source>, interest: &Interest) -> Watch {
        Watch {
            source,
            reflector: Reflector::new(interest),
        }
    }

    /// Waits up to `timeout` for a snapshot that differs from the last
    /// one. Changes that arrive together are folded into one snapshot.
    /// Drop the previous snapshot before calling: the reflector then
    /// updates the state in place instead of copying it.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Snapshot>, SourceError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.source.next(left)? {
                Some(update) => {
                    self.reflector.apply(update);
                    // Take whatever else is already waiting before
                    // publishing, so a burst becomes one snapshot.
                    while let Some(more) = self.source.next(Duration::ZERO)? {
                        self.reflector.apply(more);
                    }
                    if let Some(snapshot) = self.reflector.take_snapshot() {
                        return Ok(Some(snapshot));
                    }
                }
                None if left.is_zero() => return Ok(None),
                None => {}
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    pub fn source(&self) -> &dyn Source {
        self.source.as_ref()
    }

    pub fn reflector(&self) -> &Reflector {
        &self.reflector
    }
}

/// What [`Watch::run`] hands its component.
#[derive(Debug)]
pub enum WatchEvent {
    /// The cluster changed.
    Snapshot(Snapshot),
    /// The source failed this time; what is programmed stays.
    SourceFailed(SourceError),
    /// Nothing happened within the wait the component asked for.
    Idle,
}

/// How often [`Watch::run`] looks at its stop flag at least.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// A failing source is asked again after this pause at the soonest.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

impl Watch {
    /// The loop of every component that takes snapshots: hands each
    /// snapshot, source failure or idle wake-up to `handle` (with the
    /// source, for its status), which returns how long it may wait at most
    /// before it is called again (its next periodic check). Returns once
    /// `stop` is set.
    pub fn run(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        handle: &mut dyn FnMut(WatchEvent, &dyn Source) -> Duration,
    ) {
        let mut wait = Duration::ZERO;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (event, failed) = match self.next(wait.min(STOP_CHECK)) {
                Ok(Some(snapshot)) => (WatchEvent::Snapshot(snapshot), false),
                Ok(None) => (WatchEvent::Idle, false),
                Err(err) => (WatchEvent::SourceFailed(err), true),
            };
            wait = handle(event, self.source.as_ref());
            if failed {
                std::thread::sleep(wait.min(ERROR_PAUSE));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Namespace, Pod, Service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    fn svc(ns: &str, name: &str, rv: &str, ip: &str) -> Object {
        Object::Service(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn update(revision: u64, changes: Vec<Change>) -> Update {
        Update { revision, changes }
    }

    #[test]
    fn no_snapshot_until_every_kind_is_listed() {
        let interest = Interest::new([Kind::Service, Kind::Namespace]);
        let mut r = Reflector::new(&interest);
        r.apply(update(
            1,
            vec![
                Change::Relisting(Kind::Service),
                Change::Applied(svc("a", "x", "1", "10.96.0.5")),
                Change::Listed(Kind::Service),
            ],
        ));
        assert!(r.take_snapshot().is_none(), "namespaces not listed yet");
        r.apply(update(
            2,
            vec![
                Change::Relisting(Kind::Namespace),
                Change::Listed(Kind::Namespace),
            ],
        ));
        let s = r.take_snapshot().expect("first snapshot");
        assert_eq!(s.changed, Changed::All);
        assert_eq!(s.revision, 2);
        assert_eq!(s.state.services.len(), 1);
        assert!(r.take_snapshot().is_none(), "nothing new");
    }

    #[test]
    fn relist_reports_only_real_changes() {
        let interest = Interest::new([Kind::Service]);
        let mut r = Reflector::new(&interest);
        r.apply(update(
            1,
            vec![
                Change::Relisting(Kind::Service),
                Change::Applied(svc("a", "x", "1", "10.96.0.5")),
                Change::Applied(svc("a", "y", "2", "10.96.0.6")),
                Change::Applied(svc("a", "z", "3", "10.96.0.7")),
                Change::Listed(Kind::Service),
            ],
        ));
        drop(r.take_snapshot());
        // A relist: x unchanged, y modified, z gone, w new.
        r.apply(update(
            2,
            vec![
                Change::Relisting(Kind::Service),
                Change::Applied(svc("a", "x", "1", "10.96.0.5")),
                Change::Applied(svc("a", "y", "9", "10.96.0.9")),
            ],
        ));
        assert!(r.take_snapshot().is_none(), "mid-relist");
        r.apply(update(
            3,
            vec![
                Change::Applied(svc("a", "w", "10", "10.96.0.10")),
                Change::Listed(Kind::Service),
            ],
        ));
        let s = r.take_snapshot().expect("snapshot after the relist");
        let names: Vec<&str> = s
            .changed
            .of_kind(Kind::Service)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["w", "y", "z"]);
        assert_eq!(s.state.services.len(), 3);
        // The same relist again changes nothing: a snapshot naming nothing.
        r.apply(update(
            4,
            vec![
                Change::Relisting(Kind::Service),
                Change::Applied(svc("a", "x", "1", "10.96.0.5")),
                Change::Applied(svc("a", "y", "9", "10.96.0.9")),
                Change::Applied(svc("a", "w", "10", "10.96.0.10")),
                Change::Listed(Kind::Service),
            ],
        ));
        let s = r.take_snapshot().expect("the revision moved");
        assert_eq!(s.changed, Changed::Objects(BTreeSet::new()));
        assert_eq!(s.revision, 4);
        assert!(r.take_snapshot().is_none(), "nothing since");
    }

    #[test]
    fn deletes_and_config_changes() {
        let interest = Interest::new([Kind::Service]);
        let mut r = Reflector::new(&interest);
        r.apply(update(
            1,
            vec![
                Change::Relisting(Kind::Service),
                Change::Applied(svc("a", "x", "1", "10.96.0.5")),
                Change::Listed(Kind::Service),
            ],
        ));
        drop(r.take_snapshot());
        r.apply(update(
            2,
            vec![Change::Deleted(ObjectRef::new(Kind::Service, "a", "x"))],
        ));
        let s = r.take_snapshot().unwrap();
        assert_eq!(
            s.changed,
            Changed::Objects([ObjectRef::new(Kind::Service, "a", "x")].into())
        );
        drop(s);
        r.apply(update(
            3,
            vec![Change::Deleted(ObjectRef::new(Kind::Service, "a", "x"))],
        ));
        assert_eq!(
            r.take_snapshot().unwrap().changed.count(),
            Some(0),
            "deleting what is gone changes nothing"
        );
        r.apply(update(
            4,
            vec![Change::Config(Some(crate::ClusterConfig {
                pod_cidr: "10.244.0.0/16".parse().unwrap(),
                service_cidr: "10.96.0.0/12".parse().unwrap(),
                node_slice_prefix: 24,
                cluster_domain: "cluster.local".into(),
                routing: crate::RoutingMode::Vxlan,
            }))],
        ));
        assert_eq!(r.take_snapshot().unwrap().changed, Changed::All);
    }

    #[test]
    fn held_snapshots_stay_unchanged() {
        let interest = Interest::new([Kind::Service]);
        let mut r = Reflector::new(&interest);
        r.apply(update(
            1,
            vec![
                Change::Relisting(Kind::Service),
                Change::Listed(Kind::Service),
            ],
        ));
        let first = r.take_snapshot().unwrap();
        r.apply(update(
            2,
            vec![Change::Applied(svc("a", "x", "1", "10.96.0.5"))],
        ));
        let second = r.take_snapshot().unwrap();
        assert!(first.state.services.is_empty());
        assert_eq!(second.state.services.len(), 1);
    }

    #[test]
    fn interest_filters_pods_by_node_and_strips() {
        let interest = Interest::new([Kind::Pod]).pods_of_node("node01");
        let pod = |node: &str| {
            Object::Pod(Pod {
                metadata: ObjectMeta {
                    name: Some("p".into()),
                    managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                    annotations: Some([(LAST_APPLIED.to_string(), "{}".to_string())].into()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    node_name: Some(node.into()),
                    ..Default::default()
                }),
                status: None,
            })
        };
        assert!(interest.prepare(pod("node02")).is_none());
        let kept = interest.prepare(pod("node01")).unwrap();
        assert!(kept.metadata().managed_fields.is_none());
        assert!(kept.metadata().annotations.is_none());
        let ns = Object::Namespace(Namespace::default());
        assert!(interest.prepare(ns).is_none(), "not a kind of interest");
        let both = interest.union(&Interest::new([Kind::Namespace]));
        assert_eq!(both.node, None);
        assert!(both.kinds.contains(&Kind::Pod) && both.kinds.contains(&Kind::Namespace));
    }

    #[test]
    fn status_metrics_text() {
        let s = SourceStatus {
            synced: true,
            error: None,
            restarts: [("services".to_string(), 2)].into(),
            last_contact_age: Some(0.5),
        };
        let text = s.render_metrics("podwire_x_source");
        assert!(text.contains("podwire_x_source_synced 1\n"), "{text}");
        assert!(
            text.contains("podwire_x_source_watch_restarts_total{resource=\"services\"} 2\n"),
            "{text}"
        );
    }
}

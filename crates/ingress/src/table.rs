//! The route table: Ingress rules of podwire's class compiled into host and
//! path lookups whose backends are already resolved to ready endpoints.
//!
//! Matching, in order (Ingress v1 semantics; see ARCHITECTURE.md):
//! 1. the request host (port stripped, case-insensitive) selects ONE group of
//!    rules: those of that exact host if any Ingress names it, else those of
//!    the wildcard `*.<rest>` (which matches exactly one label), else the rules
//!    without a host. A host that has rules is served by them alone, as
//!    ingress-nginx serves each host from its own server block: a path that
//!    none of them matches does not fall through to host-less rules;
//! 2. within the group an `Exact` path equal to the request path wins; else the
//!    longest `Prefix` path that is an element-wise prefix of it
//!    (`ImplementationSpecific` is treated as `Prefix`);
//! 3. nothing matched: the `defaultBackend` of the oldest Ingress that has
//!    one, then the controller-wide fallback, else 404.
//!
//! The same host + path + type in two Ingresses goes to the Ingress with the
//! oldest `creationTimestamp` (then namespace/name order); within one
//! Ingress the first listed wins.
//!
//! An Ingress is podwire's when its class (`spec.ingressClassName`, or the
//! legacy `kubernetes.io/ingress.class` annotation) names an IngressClass
//! whose controller is `podwire.io/ingress`, or is the configured class name;
//! an Ingress without a class is podwire's when one of podwire's
//! IngressClasses is annotated `ingressclass.kubernetes.io/is-default-class`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::annotations::{Annotations, RuleActions};
use podwire_model::ClusterState;
use podwire_model::k8s_openapi::api::networking::v1::IngressBackend;
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podwire_model::{Ingress, Service};

use crate::IngressError;

/// The IngressClass controller name podwire implements.
pub const INGRESS_CLASS_CONTROLLER: &str = "podwire.io/ingress";
/// The IngressClass name podwire takes as its own by default.
pub const DEFAULT_CLASS: &str = "podwire";
/// The legacy annotation naming an Ingress's class.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The EndpointSlice label naming the Service it belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The IngressClass annotation that makes a class the default for Ingresses
/// without one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// How the table is compiled.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// An IngressClass name that is ours even without an IngressClass object
    /// (besides every IngressClass whose controller is `podwire.io/ingress`).
    pub class: String,
    /// The controller-wide fallback when nothing (not even an Ingress's
    /// `defaultBackend`) matches.
    pub fallback: Option<BackendRef>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            class: DEFAULT_CLASS.to_string(),
            fallback: None,
        }
    }
}

/// A Service port named in an Ingress backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => f.write_str(name),
        }
    }
}

/// A Service and one of its ports: `NAMESPACE/SERVICE:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub port: PortRef,
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

impl FromStr for BackendRef {
    type Err = IngressError;

    fn from_str(s: &str) -> Result<BackendRef, IngressError> {
        let bad = || IngressError::BadBackend(s.to_string());
        let (namespace, rest) = s.split_once('/').ok_or_else(bad)?;
        let (service, port) = rest.split_once(':').ok_or_else(bad)?;
        if namespace.is_empty() || service.is_empty() || port.is_empty() {
            return Err(bad());
        }
        let port = match port.parse::<i32>() {
            Ok(n) if (1..=65535).contains(&n) => PortRef::Number(n),
            Ok(_) => return Err(bad()),
            Err(_) => PortRef::Name(port.to_string()),
        };
        Ok(BackendRef {
            namespace: namespace.to_string(),
            service: service.to_string(),
            port,
        })
    }
}

/// A backend resolved against Services and EndpointSlices.
#[derive(Debug)]
pub struct Backend {
    pub target: BackendRef,
    /// Ready endpoints (address + the Service port's target port), sorted.
    pub endpoints: Vec<SocketAddr>,
    /// Why there are no endpoints, when it is not just "none ready".
    pub problem: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    fn new(target: BackendRef, endpoints: Vec<SocketAddr>, problem: Option<String>) -> Backend {
        Backend {
            target,
            endpoints,
            problem,
            next: AtomicUsize::new(0),
        }
    }

    /// The next endpoint, round-robin; None when there is no ready endpoint.
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(self.endpoints[i])
    }
}

/// How a path rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathKind {
    Exact,
    /// `Prefix`, and `ImplementationSpecific` treated as `Prefix`.
    Prefix,
}

/// One compiled path rule.
#[derive(Debug, Clone)]
pub struct PathRule {
    /// The path as written in the Ingress.
    pub path: String,
    /// `pathType` as written (`Exact`, `Prefix`, `ImplementationSpecific`).
    pub path_type: String,
    pub kind: PathKind,
    pub backend: Arc<Backend>,
    /// `namespace/name` of the Ingress it came from.
    pub ingress: String,
    /// The rule's host as written (`*.foo.com`), `*` for any host: a bounded
    /// label for metrics.
    pub host: Arc<str>,
    /// Plain-HTTP requests get a 308 to HTTPS: the host has TLS in some
    /// Ingress and this rule's Ingress did not opt out.
    pub https_redirect: bool,
    /// What the Ingress's annotations add (regex path, rewrite, redirects).
    pub actions: Arc<RuleActions>,
}

/// The rules of one host (or of "any host").
#[derive(Debug, Default)]
struct HostRules {
    exact: HashMap<String, PathRule>,
    /// Regex paths (use-regex, rewrite-target), longest pattern first, as
    /// ingress-nginx orders its regex locations.
    regex: Vec<PathRule>,
    /// Keyed by the normalized prefix (no trailing slash; "" for "/"),
    /// matched longest first.
    prefix: BTreeMap<String, PathRule>,
}

impl HostRules {
    fn lookup(&self, path: &str) -> Option<&PathRule> {
        if let Some(rule) = self.exact.get(path) {
            return Some(rule);
        }
        if let Some(rule) = self
            .regex
            .iter()
            .find(|r| r.actions.regex.as_ref().is_some_and(|re| re.is_match(path)))
        {
            return Some(rule);
        }
        // Try the element-wise prefixes of the path, longest first.
        let mut candidate = path.trim_end_matches('/');
        loop {
            if let Some(rule) = self.prefix.get(candidate) {
                return Some(rule);
            }
            match candidate.rfind('/') {
                Some(i) => candidate = &candidate[..i],
                None => return None,
            }
        }
    }

    fn rules(&self) -> Vec<&PathRule> {
        let mut out: Vec<&PathRule> = self
            .exact
            .values()
            .chain(self.regex.iter())
            .chain(self.prefix.values())
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path).then(a.kind.cmp(&b.kind)));
        out
    }
}

/// The compiled routes of every Ingress of podwire's class.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: BTreeMap<String, HostRules>,
    /// Keyed by the part after `*.`.
    wildcard_hosts: BTreeMap<String, HostRules>,
    any_host: HostRules,
    default_backend: Option<PathRule>,
    fallback: Option<Arc<Backend>>,
    /// Ingresses of podwire's class that were compiled, `namespace/name`.
    pub ingresses: Vec<String>,
    /// What was left out or overridden, with the reason.
    pub notes: Vec<String>,
    /// Annotations podwire does not implement (or cannot use), per
    /// Ingress: reported as Events in Kubernetes mode.
    pub annotation_notes: Vec<AnnotationNote>,
}

/// One annotation an Ingress asked for that podwire ignores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AnnotationNote {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub note: String,
}

/// Which class names are podwire's, and whether podwire is the default class.
#[derive(Debug, Clone, Default)]
pub struct Classes {
    pub names: BTreeSet<String>,
    pub default: bool,
}

impl Classes {
    /// podwire's classes in `state`: `configured`, and every IngressClass
    /// whose controller is [`INGRESS_CLASS_CONTROLLER`].
    pub fn of(state: &ClusterState, configured: &str) -> Classes {
        let mut classes = Classes::default();
        classes.names.insert(configured.to_string());
        for (name, class) in &state.ingress_classes {
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller != Some(INGRESS_CLASS_CONTROLLER) {
                continue;
            }
            classes.names.insert(name.clone());
            let is_default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            classes.default |= is_default;
        }
        classes
    }

    /// Whether `ingress` is podwire's to serve.
    pub fn is_ours(&self, ingress: &Ingress) -> bool {
        let spec_class = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let legacy = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        match spec_class.or(legacy) {
            Some(class) => self.names.contains(class),
            None => self.default,
        }
    }
}

/// The hosts (as written: `a.com`, `*.a.com`) named in `spec.tls` of
/// `ingresses`.
pub fn tls_hosts<'a>(ingresses: impl Iterator<Item = &'a Ingress>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for ingress in ingresses {
        for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            for host in tls.hosts.iter().flatten() {
                out.insert(host.to_ascii_lowercase());
            }
        }
    }
    out
}

/// Age order of Ingresses: oldest creationTimestamp first (a missing one
/// counts as newest), then namespace/name.
fn age_key(ingress: &Ingress) -> (bool, Option<Time>, String, String) {
    let ts = ingress.metadata.creation_timestamp.clone();
    (
        ts.is_none(),
        ts,
        ingress.metadata.namespace.clone().unwrap_or_default(),
        ingress.metadata.name.clone().unwrap_or_default(),
    )
}

/// Splits `Host` into the lowercase name without the port.
pub(crate) fn host_name(host: &str) -> Cow<'_, str> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.');
    // Most clients send lower case: no allocation on the request path then.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

impl RouteTable {
    /// Compiles the Ingresses of podwire's class in `state`.
    pub fn compile(state: &ClusterState, options: &CompileOptions) -> RouteTable {
        let mut table = RouteTable::default();
        let mut resolver = Resolver {
            state,
            cache: HashMap::new(),
        };
        let ingresses = our_ingresses(state, &options.class);
        let tls = tls_hosts(ingresses.iter().copied());
        for ingress in ingresses {
            table.add_ingress(ingress, &tls, &mut resolver);
        }
        if let Some(fallback) = &options.fallback {
            table.fallback = Some(resolver.resolve(fallback));
        }
        table
    }

    fn add_ingress(
        &mut self,
        ingress: &Ingress,
        tls_hosts: &BTreeSet<String>,
        resolver: &mut Resolver<'_>,
    ) {
        let annotations = Annotations::parse(ingress.metadata.annotations.as_ref());
        let redirect_allowed = annotations.ssl_redirect != Some(false);
        let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
        let id = format!(
            "{namespace}/{}",
            ingress.metadata.name.as_deref().unwrap_or_default()
        );
        self.ingresses.push(id.clone());
        for note in &annotations.unsupported {
            self.notes.push(format!("{id}: {note}"));
            self.annotation_notes.push(AnnotationNote {
                namespace: namespace.clone(),
                name: ingress.metadata.name.clone().unwrap_or_default(),
                uid: ingress.metadata.uid.clone(),
                note: note.clone(),
            });
        }
        let Some(spec) = &ingress.spec else {
            self.notes.push(format!("{id}: no spec"));
            return;
        };
        if let Some(default) = &spec.default_backend {
            match backend_ref(&namespace, default) {
                Ok(target) => {
                    let rule = PathRule {
                        path: "*".to_string(),
                        path_type: "defaultBackend".to_string(),
                        kind: PathKind::Prefix,
                        backend: resolver.resolve(&target),
                        ingress: id.clone(),
                        host: Arc::from("*"),
                        https_redirect: false,
                        actions: Arc::default(),
                    };
                    match &self.default_backend {
                        Some(older) => self.notes.push(format!(
                            "{id}: defaultBackend {target} ignored: the older Ingress {} has one",
                            older.ingress
                        )),
                        None => self.default_backend = Some(rule),
                    }
                }
                Err(why) => self.notes.push(format!("{id}: defaultBackend {why}")),
            }
        }
        for rule in spec.rules.iter().flatten() {
            let host = rule.host.as_deref().map(str::to_ascii_lowercase);
            let Some(http) = &rule.http else {
                continue;
            };
            for p in &http.paths {
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        self.notes.push(format!(
                            "{id}: path {:?} has unknown pathType {other:?}: use Exact, Prefix or ImplementationSpecific",
                            p.path.as_deref().unwrap_or_default()
                        ));
                        continue;
                    }
                };
                let path = match p.path.as_deref() {
                    Some(path) if path.starts_with('/') => path.to_string(),
                    None | Some("") if p.path_type == "ImplementationSpecific" => "/".to_string(),
                    other => {
                        self.notes.push(format!(
                            "{id}: path {:?} ignored: a path must start with '/'",
                            other.unwrap_or_default()
                        ));
                        continue;
                    }
                };
                let target = match backend_ref(&namespace, &p.backend) {
                    Ok(t) => t,
                    Err(why) => {
                        self.notes.push(format!("{id}: path {path} {why}"));
                        continue;
                    }
                };
                let regex = if annotations.regex_paths() {
                    match Annotations::path_regex(&path) {
                        Ok(re) => Some(re),
                        Err(why) => {
                            self.notes
                                .push(format!("{id}: path {path:?} {why}: ignored"));
                            continue;
                        }
                    }
                } else {
                    None
                };
                let actions = Arc::new(RuleActions {
                    regex,
                    rewrite_target: annotations.rewrite_target.as_deref().map(Arc::from),
                    app_root: annotations.app_root.as_deref().map(Arc::from),
                    force_https: annotations.force_ssl_redirect,
                    permanent_redirect: annotations
                        .permanent_redirect
                        .as_ref()
                        .map(|(code, to)| (*code, Arc::from(to.as_str()))),
                });
                let compiled = PathRule {
                    path: path.clone(),
                    path_type: p.path_type.clone(),
                    kind,
                    backend: resolver.resolve(&target),
                    ingress: id.clone(),
                    host: Arc::from(host.as_deref().unwrap_or("*")),
                    https_redirect: redirect_allowed
                        && host.as_ref().is_some_and(|h| tls_hosts.contains(h)),
                    actions,
                };
                let group = match &host {
                    None => &mut self.any_host,
                    Some(h) => match h.strip_prefix("*.") {
                        Some(rest) => self.wildcard_hosts.entry(rest.to_string()).or_default(),
                        None => self.exact_hosts.entry(h.clone()).or_default(),
                    },
                };
                if compiled.actions.regex.is_some() && kind == PathKind::Prefix {
                    if let Some(winner) = group.regex.iter().find(|r| r.path == path) {
                        self.notes.push(format!(
                            "{id}: host {} regex path {path} ignored: already routed by {}",
                            host.as_deref().unwrap_or("*"),
                            winner.ingress
                        ));
                        continue;
                    }
                    group.regex.push(compiled);
                    // Stable: equal lengths keep the older Ingress first.
                    group.regex.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
                    continue;
                }
                let key = match kind {
                    PathKind::Exact => path.clone(),
                    PathKind::Prefix => path.trim_end_matches('/').to_string(),
                };
                let existing = match kind {
                    PathKind::Exact => group.exact.get(&key),
                    PathKind::Prefix => group.prefix.get(&key),
                }
                .map(|r| r.ingress.clone());
                if let Some(winner) = existing {
                    self.notes.push(format!(
                        "{id}: host {} path {path} ({}) ignored: already routed by {winner}, which is older or listed first",
                        host.as_deref().unwrap_or("*"),
                        p.path_type
                    ));
                    continue;
                }
                match kind {
                    PathKind::Exact => {
                        group.exact.insert(key, compiled);
                    }
                    PathKind::Prefix => {
                        group.prefix.insert(key, compiled);
                    }
                }
            }
        }
    }

    /// The rule serving `host` (the Host header, port allowed) and `path`
    /// (without the query string); None means 404.
    pub fn route(&self, host: &str, path: &str) -> Option<&PathRule> {
        let path = if path.is_empty() { "/" } else { path };
        let host = host_name(host);
        let group = match self.exact_hosts.get(&*host) {
            Some(group) => group,
            None => host
                .split_once('.')
                .filter(|(label, _)| !label.is_empty())
                .and_then(|(_, rest)| self.wildcard_hosts.get(rest))
                .unwrap_or(&self.any_host),
        };
        group.lookup(path).or(self.default_backend.as_ref())
    }

    /// The backend serving `host` and `path`, including the controller-wide
    /// fallback; None means 404.
    pub fn backend(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        self.route(host, path)
            .map(|r| &r.backend)
            .or(self.fallback.as_ref())
    }

    /// The controller-wide fallback (`--default-backend`).
    pub fn fallback(&self) -> Option<&Arc<Backend>> {
        self.fallback.as_ref()
    }

    /// True when no route at all exists.
    pub fn is_empty(&self) -> bool {
        self.exact_hosts.is_empty()
            && self.wildcard_hosts.is_empty()
            && self.any_host.exact.is_empty()
            && self.any_host.prefix.is_empty()
            && self.default_backend.is_none()
            && self.fallback.is_none()
    }
}

/// The Ingresses in `state` that are podwire's to serve, oldest first (the
/// order that decides conflicts over paths and TLS hosts).
pub fn our_ingresses<'a>(state: &'a ClusterState, class: &str) -> Vec<&'a Ingress> {
    let classes = Classes::of(state, class);
    let mut ours: Vec<&Ingress> = state
        .ingresses
        .values()
        .filter(|i| classes.is_ours(i))
        .collect();
    ours.sort_by_key(|i| age_key(i));
    ours
}

fn backend_ref(namespace: &str, backend: &IngressBackend) -> Result<BackendRef, String> {
    let Some(service) = &backend.service else {
        return Err(
            "has a resource backend, which podwire does not support: use a service backend"
                .to_string(),
        );
    };
    let port = match &service.port {
        Some(p) => match (p.number, &p.name) {
            (Some(n), _) => PortRef::Number(n),
            (None, Some(name)) if !name.is_empty() => PortRef::Name(name.clone()),
            _ => {
                return Err(format!(
                    "service {} has no port number or name",
                    service.name
                ));
            }
        },
        None => return Err(format!("service {} has no port", service.name)),
    };
    Ok(BackendRef {
        namespace: namespace.to_string(),
        service: service.name.clone(),
        port,
    })
}

/// Resolves backends to ready endpoints, once per distinct backend.
struct Resolver<'a> {
    state: &'a ClusterState,
    cache: HashMap<String, Arc<Backend>>,
}

impl Resolver<'_> {
    fn resolve(&mut self, target: &BackendRef) -> Arc<Backend> {
        let key = target.to_string();
        if let Some(b) = self.cache.get(&key) {
            return b.clone();
        }
        let backend = Arc::new(match self.endpoints(target) {
            Ok(endpoints) => Backend::new(target.clone(), endpoints, None),
            Err(problem) => {
                tracing::debug!("backend {target}: {problem}");
                Backend::new(target.clone(), Vec::new(), Some(problem))
            }
        });
        self.cache.insert(key, backend.clone());
        backend
    }

    fn endpoints(&self, target: &BackendRef) -> Result<Vec<SocketAddr>, String> {
        let key = (target.namespace.clone(), target.service.clone());
        let service: &Service = self
            .state
            .services
            .get(&key)
            .ok_or_else(|| "service not found".to_string())?;
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| match &target.port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .ok_or_else(|| format!("the service has no port {}", target.port))?;
        let port_name = port.name.as_deref().unwrap_or_default();
        let mut out = Vec::new();
        for slice in self.state.endpoint_slices.values() {
            if slice.metadata.namespace.as_deref() != Some(target.namespace.as_str())
                || slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(String::as_str)
                    != Some(target.service.as_str())
            {
                continue;
            }
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                // A missing `ready` means unknown, which the API says to treat as ready.
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        out.push(SocketAddr::new(ip, number));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<20} {:<22} {:<26} {:<24} ENDPOINTS",
            "HOST", "PATH", "TYPE", "BACKEND", "INGRESS"
        )?;
        let mut groups: Vec<(String, &HostRules)> = Vec::new();
        groups.extend(self.exact_hosts.iter().map(|(h, g)| (h.clone(), g)));
        groups.extend(
            self.wildcard_hosts
                .iter()
                .map(|(h, g)| (format!("*.{h}"), g)),
        );
        groups.push(("(any)".to_string(), &self.any_host));
        let line = |f: &mut fmt::Formatter<'_>,
                    host: &str,
                    path: &str,
                    kind: &str,
                    backend: &Backend,
                    source: &str| {
            let endpoints = if backend.endpoints.is_empty() {
                format!(
                    "none (503: {})",
                    backend.problem.as_deref().unwrap_or("no ready endpoint")
                )
            } else {
                backend
                    .endpoints
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            writeln!(
                f,
                "{host:<28} {path:<20} {kind:<22} {:<26} {source:<24} {endpoints}",
                backend.target.to_string()
            )
        };
        for (host, group) in groups {
            for rule in group.rules() {
                let mut kind = if rule.https_redirect {
                    format!("{} (http→308)", rule.path_type)
                } else {
                    rule.path_type.clone()
                };
                let extra = rule.actions.describe();
                if !extra.is_empty() {
                    kind = format!("{kind} [{extra}]");
                }
                line(f, &host, &rule.path, &kind, &rule.backend, &rule.ingress)?;
            }
        }
        if let Some(rule) = &self.default_backend {
            line(
                f,
                "(default)",
                "*",
                "defaultBackend",
                &rule.backend,
                &rule.ingress,
            )?;
        }
        match &self.fallback {
            Some(b) => line(f, "(fallback)", "*", "controller", b, "--default-backend")?,
            None => writeln!(f, "{:<28} {:<20} 404", "(fallback)", "*")?,
        }
        for note in &self.notes {
            writeln!(f, "# {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

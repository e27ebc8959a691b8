//! The few facts DNS needs of each object, kept per object so the zone can
//! follow a source's changes one object at a time ([`ZoneFacts::apply`])
//! without holding the objects themselves: 100k pods as k8s-openapi
//! structs are ~250 MB, and DNS needs only the hostname of the few that
//! set one (and, in verified mode, every pod's address and namespace).
//!
//! Reducing an object (pure) is `service_facts`, `slice_facts`,
//! `pod_facts`; turning the facts into a [`crate::Zone`] is `build.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use podwire_model::{
    Change, ClusterConfig, EndpointSlice, Kind, Namespace, Object, ObjectRef, Pod, Service,
};

use crate::wire;

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The pre-publishNotReadyAddresses annotation the specification still names.
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";

/// The kinds the zone is made of.
pub const KINDS: [Kind; 4] = [
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KindIn {
    ClusterIp(Vec<IpAddr>),
    Headless,
    External(Vec<u8>),
}

/// (name, protocol, port), lowercase.
pub(crate) type PortIn = (Box<str>, Box<str>, u16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceIn {
    pub kind: KindIn,
    pub ports: Vec<PortIn>,
    pub publish_not_ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceIn {
    /// The Service's name, lowercase.
    pub service: Box<str>,
    pub ports: Vec<PortIn>,
    /// (address, hostname, ready)
    pub endpoints: Vec<(IpAddr, Option<Box<str>>, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodIn {
    pub ips: Box<[IpAddr]>,
    /// (hostname, subdomain) of a ready pod that sets both.
    pub host: Option<Box<(Box<str>, Box<str>)>>,
}

/// An entry and the relist epoch it was last seen in.
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    pub facts: T,
    epoch: u32,
}

/// (namespace, name), lowercase namespace.
pub(crate) type Key = (Box<str>, Box<str>);

fn namespace_of(ns: Option<&String>) -> String {
    ns.filter(|n| !n.is_empty())
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_else(|| "default".into())
}

pub(crate) fn valid_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= 63 && !label.contains('.')
}

fn key(ns: &str, name: &str) -> Key {
    (ns.into(), name.into())
}

/// A Service's facts; Err(reason) when it gets no records, Ok(None) when
/// it has no spec yet.
fn service_facts(svc: &Service) -> Result<Option<ServiceIn>, String> {
    let ns = namespace_of(svc.metadata.namespace.as_ref());
    let name = svc
        .metadata
        .name
        .as_ref()
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_default();
    if !valid_label(&name) || !valid_label(&ns) {
        return Err(format!("service {ns}/{name}: not a DNS label"));
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(None);
    };
    let kind = match spec.type_.as_deref() {
        Some("ExternalName") => {
            let target = spec
                .external_name
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match wire::wire_from_text(&target).filter(|w| w.len() > 1) {
                Some(wire) => KindIn::External(wire),
                None => {
                    return Err(format!(
                        "service {ns}/{name}: externalName {target:?} is not a DNS name"
                    ));
                }
            }
        }
        None | Some("ClusterIP" | "NodePort" | "LoadBalancer") => {
            let ips: Vec<&String> = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
                Some(ips) => ips.iter().collect(),
                None => spec.cluster_ip.iter().collect(),
            };
            if ips.iter().any(|ip| ip.as_str() == "None") {
                KindIn::Headless
            } else {
                let parsed: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                if parsed.is_empty() {
                    // No address allocated yet: no record until it has one.
                    return Err(format!("service {ns}/{name}: no clusterIP yet"));
                }
                KindIn::ClusterIp(parsed)
            }
        }
        Some(other) => {
            return Err(format!(
                "service {ns}/{name}: unknown type {other:?} (known: ClusterIP, NodePort, LoadBalancer, ExternalName)"
            ));
        }
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name
                    .clone()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .into(),
                p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase()
                    .into(),
                u16::try_from(p.port).ok()?,
            ))
        })
        .collect();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true)
        || svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOLERATE_UNREADY))
            .is_some_and(|v| v == "true");
    Ok(Some(ServiceIn {
        kind,
        ports,
        publish_not_ready,
    }))
}

/// An EndpointSlice's facts; None when it belongs to no Service.
fn slice_facts(slice: &EndpointSlice) -> Option<SliceIn> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .map(|s| s.to_ascii_lowercase())?;
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name
                    .clone()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .into(),
                p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .to_ascii_lowercase()
                    .into(),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut endpoints = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        // nil means unknown, which consumers treat as ready (API docs).
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        let hostname: Option<Box<str>> = ep
            .hostname
            .as_ref()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| valid_label(h))
            .map(Into::into);
        for address in &ep.addresses {
            if let Ok(ip) = address.parse::<IpAddr>() {
                endpoints.push((ip, hostname.clone(), ready));
            }
        }
    }
    Some(SliceIn {
        service: service.into(),
        ports,
        endpoints,
    })
}

/// A Pod's facts; None for a finished pod or one without an address.
fn pod_facts(pod: &Pod) -> Option<PodIn> {
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    if ips.is_empty() {
        return None;
    }
    let spec = pod.spec.as_ref();
    let hostname = spec
        .and_then(|s| s.hostname.as_deref())
        .map(str::to_ascii_lowercase);
    let subdomain = spec
        .and_then(|s| s.subdomain.as_deref())
        .map(str::to_ascii_lowercase);
    let host = match (hostname, subdomain) {
        (Some(h), Some(s)) if valid_label(&h) && podwire_model::pod_is_ready(pod) => {
            Some(Box::new((h.into(), s.into())))
        }
        _ => None,
    };
    Some(PodIn {
        ips: ips.into_boxed_slice(),
        host,
    })
}

/// The facts of every object the zone is made of, keyed by object.
#[derive(Debug, Default)]
pub struct ZoneFacts {
    pub(crate) config: Option<ClusterConfig>,
    pub(crate) namespaces: BTreeMap<Box<str>, u32>,
    pub(crate) services: HashMap<Key, Entry<ServiceIn>>,
    pub(crate) slices: HashMap<Key, Entry<SliceIn>>,
    pub(crate) pods: HashMap<Key, Entry<PodIn>>,
    /// Objects left out of the zone, with the reason (and relist epoch).
    skipped: BTreeMap<ObjectRef, (String, u32)>,
    /// Keep every pod with an address (verified pod records), not only
    /// those lending a hostname.
    all_pods: bool,
    epochs: BTreeMap<Kind, u32>,
    relisting: BTreeSet<Kind>,
    listed: BTreeSet<Kind>,
}

/// Inserts, replaces or removes one entry; true when that changed anything.
fn put<T: PartialEq>(
    map: &mut HashMap<Key, Entry<T>>,
    key: Key,
    facts: Option<T>,
    epoch: u32,
) -> bool {
    match facts {
        Some(facts) => match map.get_mut(&key) {
            Some(entry) => {
                entry.epoch = epoch;
                if entry.facts == facts {
                    false
                } else {
                    entry.facts = facts;
                    true
                }
            }
            None => {
                map.insert(key, Entry { facts, epoch });
                true
            }
        },
        None => map.remove(&key).is_some(),
    }
}

impl ZoneFacts {
    /// `all_pods`: keep every pod's address (for verified pod records).
    pub fn new(all_pods: bool) -> ZoneFacts {
        ZoneFacts {
            all_pods,
            ..Default::default()
        }
    }

    /// Every kind of the zone has been listed and no relist is half done.
    pub fn synced(&self) -> bool {
        self.relisting.is_empty() && KINDS.iter().all(|k| self.listed.contains(k))
    }

    /// Objects left out and why (for logs and `dns plan`).
    pub fn skipped(&self) -> impl Iterator<Item = &String> {
        self.skipped.values().map(|(reason, _)| reason)
    }

    /// Services with records.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Folds one change in; true when the zone would differ.
    pub fn apply(&mut self, change: Change) -> bool {
        match change {
            Change::Applied(object) => self.upsert(&object),
            Change::Deleted(r) => {
                self.skipped.remove(&r);
                let ns = r.namespace.to_ascii_lowercase();
                let k = key(&ns, &r.name.to_ascii_lowercase());
                match r.kind {
                    Kind::Namespace => self
                        .namespaces
                        .remove(r.name.to_ascii_lowercase().as_str())
                        .is_some(),
                    Kind::Service => self.services.remove(&k).is_some(),
                    Kind::EndpointSlice => self.slices.remove(&key(&ns, &r.name)).is_some(),
                    Kind::Pod => self.pods.remove(&key(&ns, &r.name)).is_some(),
                    _ => false,
                }
            }
            Change::Relisting(kind) => {
                *self.epochs.entry(kind).or_default() += 1;
                self.relisting.insert(kind);
                false
            }
            Change::Listed(kind) => {
                self.relisting.remove(&kind);
                self.listed.insert(kind);
                let epoch = self.epoch(kind);
                let before = self.len(kind);
                match kind {
                    Kind::Namespace => self.namespaces.retain(|_, e| *e == epoch),
                    Kind::Service => self.services.retain(|_, e| e.epoch == epoch),
                    Kind::EndpointSlice => self.slices.retain(|_, e| e.epoch == epoch),
                    Kind::Pod => self.pods.retain(|_, e| e.epoch == epoch),
                    _ => {}
                }
                self.skipped
                    .retain(|r, (_, seen)| r.kind != kind || *seen == epoch);
                before != self.len(kind)
            }
            Change::Config(config) => {
                let changed = self.config != config;
                self.config = config;
                changed
            }
        }
    }

    fn epoch(&self, kind: Kind) -> u32 {
        self.epochs.get(&kind).copied().unwrap_or(0)
    }

    fn len(&self, kind: Kind) -> usize {
        match kind {
            Kind::Namespace => self.namespaces.len(),
            Kind::Service => self.services.len(),
            Kind::EndpointSlice => self.slices.len(),
            Kind::Pod => self.pods.len(),
            _ => 0,
        }
    }

    fn upsert(&mut self, object: &Object) -> bool {
        let r = ObjectRef::of(object);
        let epoch = self.epoch(r.kind);
        let ns = r.namespace.to_ascii_lowercase();
        match object {
            Object::Namespace(Namespace { metadata, .. }) => {
                let Some(name) = metadata.name.as_ref() else {
                    return false;
                };
                let name: Box<str> = name.to_ascii_lowercase().into();
                self.namespaces.insert(name, epoch).is_none()
            }
            Object::Service(svc) => {
                let k = key(&ns, &r.name.to_ascii_lowercase());
                let facts = match service_facts(svc) {
                    Ok(f) => {
                        self.skipped.remove(&r);
                        f
                    }
                    Err(reason) => {
                        self.skipped.insert(r, (reason, epoch));
                        None
                    }
                };
                put(&mut self.services, k, facts, epoch)
            }
            Object::EndpointSlice(slice) => put(
                &mut self.slices,
                key(&ns, &r.name),
                slice_facts(slice),
                epoch,
            ),
            Object::Pod(pod) => {
                let facts = pod_facts(pod).filter(|p| self.all_pods || p.host.is_some());
                put(&mut self.pods, key(&ns, &r.name), facts, epoch)
            }
            _ => false,
        }
    }

    /// Adds a whole object (one-shot building: tests, `dns plan`).
    pub fn add(&mut self, object: &Object) {
        self.upsert(object);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: serde_json::Value) -> Object {
        Object::from_json(&v).unwrap()
    }

    #[test]
    fn relists_drop_what_was_not_seen_and_report_changes() {
        let mut f = ZoneFacts::new(false);
        let svc = |name: &str, ip: &str| {
            object(serde_json::json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "a"}, "spec": {"clusterIP": ip}}))
        };
        for kind in KINDS {
            f.apply(Change::Relisting(kind));
        }
        assert!(f.apply(Change::Applied(svc("x", "10.96.0.5"))));
        assert!(f.apply(Change::Applied(svc("y", "10.96.0.6"))));
        assert!(!f.synced());
        for kind in KINDS {
            f.apply(Change::Listed(kind));
        }
        assert!(f.synced());
        assert!(
            !f.apply(Change::Applied(svc("x", "10.96.0.5"))),
            "same facts"
        );
        f.apply(Change::Relisting(Kind::Service));
        f.apply(Change::Applied(svc("x", "10.96.0.5")));
        assert!(!f.synced(), "mid-relist");
        assert!(f.apply(Change::Listed(Kind::Service)), "y is gone");
        assert_eq!(f.service_count(), 1);
        assert!(f.apply(Change::Deleted(ObjectRef::new(Kind::Service, "a", "x"))));
        assert_eq!(f.service_count(), 0);
    }

    #[test]
    fn only_pods_that_matter_are_kept() {
        let pod = |name: &str, spec: serde_json::Value| {
            object(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "a"}, "spec": spec,
                "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}}))
        };
        let plain = pod("plain", serde_json::json!({"containers": []}));
        let host = pod(
            "db-0",
            serde_json::json!({"hostname": "db-0", "subdomain": "db", "containers": []}),
        );
        let mut insecure = ZoneFacts::new(false);
        insecure.apply(Change::Applied(plain.clone()));
        insecure.apply(Change::Applied(host.clone()));
        assert_eq!(insecure.pods.len(), 1, "only the pod lending a hostname");
        let mut verified = ZoneFacts::new(true);
        verified.apply(Change::Applied(plain));
        verified.apply(Change::Applied(host));
        assert_eq!(verified.pods.len(), 2);
    }

    #[test]
    fn unknown_service_types_are_skipped_with_a_reason() {
        let mut f = ZoneFacts::new(false);
        f.apply(Change::Applied(object(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "odd", "namespace": "a"}, "spec": {"type": "Teleport", "clusterIP": "10.96.0.9"}}))));
        assert_eq!(f.service_count(), 0);
        let reason = f.skipped().next().unwrap();
        assert!(reason.contains("unknown type \"Teleport\""), "{reason}");
    }
}

//! Compiling the zone: Kubernetes objects (k8s-openapi types) are reduced one
//! at a time to the few facts DNS needs ([`ZoneBuilder`]), then turned into
//! the lookup tables of [`Zone`]. Pure: no I/O; [`crate::source`] feeds it
//! from the files store one object at a time, tests feed it from a
//! `ClusterState`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use podwire_model::{ClusterConfig, ClusterState, EndpointSlice, Namespace, Pod, Service};
use rustc_hash::FxHashMap;

use crate::wire;
use crate::zone::{Endpoint, Node, PodMode, Port, Reverse, Svc, SvcKind, Zone};

/// The default cluster domain.
pub const DEFAULT_ZONE: &str = "cluster.local";
/// The default record TTL (CoreDNS's).
pub const DEFAULT_TTL: u32 = 5;
/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The pre-publishNotReadyAddresses annotation the specification still names.
const TOLERATE_UNREADY: &str = "service.alpha.kubernetes.io/tolerate-unready-endpoints";
/// Namespaces every cluster has.
const BUILTIN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// How to compile the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneOptions {
    /// The cluster domain; None: the source's config (clusterDomain), else
    /// `cluster.local`.
    pub zone: Option<String>,
    pub ttl: u32,
    pub pods: PodMode,
}

impl Default for ZoneOptions {
    fn default() -> Self {
        ZoneOptions {
            zone: None,
            ttl: DEFAULT_TTL,
            pods: PodMode::Insecure,
        }
    }
}

#[derive(Debug)]
enum KindIn {
    ClusterIp(Vec<IpAddr>),
    Headless,
    External(Vec<u8>),
}

#[derive(Debug)]
struct ServiceIn {
    kind: KindIn,
    /// (name, protocol, port), lowercase.
    ports: Vec<(String, String, u16)>,
    publish_not_ready: bool,
}

#[derive(Debug)]
struct SliceIn {
    ns: u32,
    service: String,
    ports: Vec<(String, String, u16)>,
    /// (address, hostname, ready)
    endpoints: Vec<(IpAddr, Option<String>, bool)>,
}

#[derive(Debug)]
struct PodHost {
    ns: u32,
    ip: IpAddr,
    hostname: String,
    subdomain: String,
}

/// Collects the DNS-relevant facts of objects, one object at a time.
#[derive(Debug, Default)]
pub struct ZoneBuilder {
    config: Option<ClusterConfig>,
    ns_ids: BTreeMap<String, u32>,
    declared_namespaces: BTreeSet<u32>,
    services: BTreeMap<(u32, String), ServiceIn>,
    slices: Vec<SliceIn>,
    pod_ips: Vec<(IpAddr, u32)>,
    pod_hosts: Vec<PodHost>,
    skipped: Vec<String>,
}

fn namespace_of(ns: Option<&String>) -> String {
    ns.filter(|n| !n.is_empty())
        .map(|n| n.to_ascii_lowercase())
        .unwrap_or_else(|| "default".into())
}

fn valid_label(label: &str) -> bool {
    !label.is_empty() && label.len() <= 63 && !label.contains('.')
}

impl ZoneBuilder {
    pub fn new() -> ZoneBuilder {
        ZoneBuilder::default()
    }

    fn ns_id(&mut self, ns: String) -> u32 {
        let next = self.ns_ids.len() as u32;
        *self.ns_ids.entry(ns).or_insert(next)
    }

    /// The cluster configuration (domain, service range for kube-dns's IP).
    pub fn config(&mut self, config: Option<ClusterConfig>) {
        self.config = config;
    }

    pub fn namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            let id = self.ns_id(name.to_ascii_lowercase());
            self.declared_namespaces.insert(id);
        }
    }

    pub fn service(&mut self, svc: &Service) {
        let ns = namespace_of(svc.metadata.namespace.as_ref());
        let Some(name) = svc.metadata.name.as_ref().map(|n| n.to_ascii_lowercase()) else {
            return;
        };
        if !valid_label(&name) || !valid_label(&ns) {
            self.skipped
                .push(format!("service {ns}/{name}: not a DNS label"));
            return;
        }
        let ns_id = self.ns_id(ns.clone());
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec
                .external_name
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match wire::wire_from_text(&target).filter(|w| w.len() > 1) {
                Some(wire) => KindIn::External(wire),
                None => {
                    self.skipped.push(format!(
                        "service {ns}/{name}: externalName {target:?} is not a DNS name"
                    ));
                    return;
                }
            }
        } else {
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
                    self.skipped
                        .push(format!("service {ns}/{name}: no clusterIP yet"));
                    return;
                }
                KindIn::ClusterIp(parsed)
            }
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                    p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
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
        self.services.insert(
            (ns_id, name),
            ServiceIn {
                kind,
                ports,
                publish_not_ready,
            },
        );
    }

    pub fn endpoint_slice(&mut self, slice: &EndpointSlice) {
        let ns = namespace_of(slice.metadata.namespace.as_ref());
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(|s| s.to_ascii_lowercase())
        else {
            return;
        };
        let ns_id = self.ns_id(ns);
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default().to_ascii_lowercase(),
                    p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        let mut endpoints = Vec::new();
        for ep in slice.endpoints.iter().flatten() {
            // nil means unknown, which consumers treat as ready (API docs).
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let hostname = ep
                .hostname
                .as_ref()
                .map(|h| h.to_ascii_lowercase())
                .filter(|h| valid_label(h));
            for address in &ep.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    endpoints.push((ip, hostname.clone(), ready));
                }
            }
        }
        self.slices.push(SliceIn {
            ns: ns_id,
            service,
            ports,
            endpoints,
        });
    }

    pub fn pod(&mut self, pod: &Pod) {
        let ns = namespace_of(pod.metadata.namespace.as_ref());
        let status = pod.status.as_ref();
        if matches!(
            status.and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) {
            return;
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
        let ns_id = self.ns_id(ns);
        if ips.is_empty() {
            return;
        }
        for ip in &ips {
            self.pod_ips.push((*ip, ns_id));
        }
        let spec = pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.as_deref())
            .map(str::to_ascii_lowercase);
        let subdomain = spec
            .and_then(|s| s.subdomain.as_deref())
            .map(str::to_ascii_lowercase);
        if let (Some(hostname), Some(subdomain)) = (hostname, subdomain)
            && valid_label(&hostname)
            && podwire_model::pod_is_ready(pod)
        {
            for ip in ips {
                self.pod_hosts.push(PodHost {
                    ns: ns_id,
                    ip,
                    hostname: hostname.clone(),
                    subdomain: subdomain.clone(),
                });
            }
        }
    }

    /// Objects left out and why (for logs and `dns plan`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Compiles the zone. `serial` is the SOA serial (the store generation).
    pub fn build(mut self, options: &ZoneOptions, serial: u32) -> Zone {
        for ns in BUILTIN_NAMESPACES {
            self.ns_id(ns.to_string());
        }
        let domain = options
            .zone
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.cluster_domain.clone()))
            .unwrap_or_else(|| DEFAULT_ZONE.to_string())
            .to_ascii_lowercase();
        let origin = wire::wire_from_text(&domain)
            .or_else(|| wire::wire_from_text(DEFAULT_ZONE))
            .unwrap_or_else(|| vec![0]);
        let ttl = options.ttl;
        let rel = |labels: &[&str]| -> Option<Box<[u8]>> {
            let mut key = Vec::new();
            for label in labels {
                if label.is_empty() || label.len() > 63 {
                    return None;
                }
                key.push(label.len() as u8);
                key.extend_from_slice(label.as_bytes());
            }
            (key.len() + origin.len() <= wire::MAX_NAME).then(|| key.into_boxed_slice())
        };
        let full = |key: &[u8]| -> Box<[u8]> {
            let mut name = key.to_vec();
            name.extend_from_slice(&origin);
            name.into_boxed_slice()
        };

        let mut names: FxHashMap<Box<[u8]>, Node> = FxHashMap::default();
        let put = |names: &mut FxHashMap<Box<[u8]>, Node>, key: Option<Box<[u8]>>, node: Node| {
            if let Some(key) = key {
                let entry = names.entry(key).or_insert(node);
                if *entry == Node::Empty {
                    *entry = node;
                }
            }
        };
        put(&mut names, Some(Box::from(&b""[..])), Node::Apex);
        put(&mut names, rel(&["dns-version"]), Node::DnsVersion);
        put(&mut names, rel(&["dns"]), Node::Empty);
        put(&mut names, rel(&["ns", "dns"]), Node::NsDns);
        put(&mut names, rel(&["svc"]), Node::Empty);
        put(&mut names, rel(&["pod"]), Node::Empty);
        let ns_names: BTreeMap<u32, String> =
            self.ns_ids.iter().map(|(n, id)| (*id, n.clone())).collect();
        for ns in ns_names.values().filter(|n| valid_label(n)) {
            put(&mut names, rel(&[ns, "svc"]), Node::Empty);
            if options.pods != PodMode::Disabled {
                put(&mut names, rel(&[ns, "pod"]), Node::Empty);
            }
        }

        // Endpoints per Service.
        let mut slices_by_service: BTreeMap<(u32, &str), Vec<&SliceIn>> = BTreeMap::new();
        for slice in &self.slices {
            slices_by_service
                .entry((slice.ns, slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        let mut hosts_by_service: BTreeMap<(u32, &str), Vec<&PodHost>> = BTreeMap::new();
        for host in &self.pod_hosts {
            hosts_by_service
                .entry((host.ns, host.subdomain.as_str()))
                .or_default()
                .push(host);
        }

        let mut services: Vec<Svc> = Vec::with_capacity(self.services.len());
        let mut reverse: Vec<Reverse> = Vec::new();
        let mut kube_dns: Vec<IpAddr> = Vec::new();
        for ((ns_id, name), svc_in) in &self.services {
            let ns = &ns_names[ns_id];
            let Some(key) = rel(&[name, ns, "svc"]) else {
                continue;
            };
            let slices = slices_by_service
                .get(&(*ns_id, name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut endpoints: Vec<Endpoint> = slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|(_, _, ready)| *ready || svc_in.publish_not_ready)
                .map(|(ip, hostname, _)| Endpoint {
                    ip: *ip,
                    hostname: hostname.as_ref().map(|h| Box::from(h.as_bytes())),
                })
                .collect();
            // Pods naming this Service as their subdomain lend their hostname
            // to their endpoint (what the endpoints controller does).
            for host in hosts_by_service
                .get(&(*ns_id, name.as_str()))
                .into_iter()
                .flatten()
            {
                for ep in endpoints
                    .iter_mut()
                    .filter(|e| e.ip == host.ip && e.hostname.is_none())
                {
                    ep.hostname = Some(Box::from(host.hostname.as_bytes()));
                }
            }
            endpoints.sort();
            endpoints.dedup();
            let kind = match &svc_in.kind {
                KindIn::ClusterIp(ips) => SvcKind::ClusterIp(ips.clone().into_boxed_slice()),
                KindIn::Headless => {
                    if endpoints.is_empty() {
                        // No ready endpoints: the name does not exist.
                        continue;
                    }
                    SvcKind::Headless
                }
                KindIn::External(target) => SvcKind::External(target.clone().into_boxed_slice()),
            };
            if ns == "kube-system"
                && name == "kube-dns"
                && let SvcKind::ClusterIp(ips) = &kind
            {
                kube_dns = ips.to_vec();
            }
            let ports: Vec<Port> = svc_in
                .ports
                .iter()
                .map(|(pname, proto, port)| {
                    let endpoint_port = slices
                        .iter()
                        .flat_map(|s| s.ports.iter())
                        .find(|(n, p, _)| n == pname && p == proto)
                        .map_or(*port, |(_, _, ep)| *ep);
                    Port {
                        name: pname.as_str().into(),
                        protocol: proto.as_str().into(),
                        port: *port,
                        endpoint_port,
                    }
                })
                .collect();
            let id = services.len() as u32;
            for (idx, port) in ports.iter().enumerate() {
                if port.name.is_empty() || matches!(svc_in.kind, KindIn::External(_)) {
                    continue;
                }
                let port_label = format!("_{}", port.name);
                let proto_label = format!("_{}", port.protocol);
                put(
                    &mut names,
                    rel(&[&proto_label, name, ns, "svc"]),
                    Node::Empty,
                );
                put(
                    &mut names,
                    rel(&[&port_label, &proto_label, name, ns, "svc"]),
                    Node::Srv(id, idx as u16),
                );
            }
            if let SvcKind::ClusterIp(ips) = &kind {
                for ip in ips.iter() {
                    let (key, v6) = ip_key(*ip);
                    reverse.push(Reverse {
                        ip: key,
                        v6,
                        service: id,
                        endpoint: u32::MAX,
                    });
                }
            }
            if !matches!(kind, SvcKind::External(_)) {
                for (idx, ep) in endpoints.iter().enumerate() {
                    let (key, v6) = ip_key(ep.ip);
                    reverse.push(Reverse {
                        ip: key,
                        v6,
                        service: id,
                        endpoint: idx as u32,
                    });
                }
            }
            names.insert(key.clone(), Node::Service(id));
            services.push(Svc {
                name: full(&key),
                kind,
                ports: ports.into_boxed_slice(),
                endpoints: endpoints.into_boxed_slice(),
            });
        }
        reverse.sort();
        reverse.dedup();
        if kube_dns.is_empty()
            && let Some(ip) = self
                .config
                .as_ref()
                .and_then(|c| podwire_model::kube_dns_ip(c.service_cidr))
        {
            kube_dns.push(ip);
        }

        let namespaces: FxHashMap<Box<[u8]>, u32> = ns_names
            .iter()
            .map(|(id, n)| (Box::from(n.as_bytes()), *id))
            .collect();
        let mut pod_ips: Vec<(u128, u32)> = if options.pods == PodMode::Verified {
            self.pod_ips
                .iter()
                .map(|(ip, ns)| (ip_key(*ip).0, *ns))
                .collect()
        } else {
            Vec::new()
        };
        pod_ips.sort_unstable();
        pod_ips.dedup();
        let mname = full(&rel(&["ns", "dns"]).unwrap_or_default());
        let rname = full(&rel(&["hostmaster"]).unwrap_or_default());
        names.shrink_to_fit();
        Zone {
            origin: origin.clone(),
            ttl,
            serial,
            pods: options.pods,
            names,
            services,
            namespaces,
            pod_ips,
            reverse,
            kube_dns,
            mname: mname.to_vec(),
            rname: rname.to_vec(),
        }
    }
}

fn ip_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), false),
        IpAddr::V6(v6) => (u128::from(v6), true),
    }
}

impl Zone {
    /// Compiles a zone from a whole cluster state.
    pub fn from_state(state: &ClusterState, options: &ZoneOptions, serial: u32) -> Zone {
        let mut b = ZoneBuilder::new();
        b.config(state.config.clone());
        for ns in state.namespaces.values() {
            b.namespace(ns);
        }
        for svc in state.services.values() {
            b.service(svc);
        }
        for slice in state.endpoint_slices.values() {
            b.endpoint_slice(slice);
        }
        for pod in state.pods.values() {
            b.pod(pod);
        }
        b.build(options, serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_model::Object;

    fn state(objects: &[serde_json::Value]) -> ClusterState {
        let mut s = ClusterState::default();
        for o in objects {
            s.insert(Object::from_json(o).unwrap());
        }
        s
    }

    #[test]
    fn compiles_the_records_of_the_specification() {
        let s = state(&[
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "Web", "namespace": "apps"},
                "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "apps"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "db-1", "namespace": "apps", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                              {"addresses": ["10.244.1.6"], "conditions": {"ready": false}},
                              {"addresses": ["10.244.1.7"]}],
                "ports": [{"name": "pg", "port": 15432}]}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db-0", "namespace": "apps"},
                "spec": {"hostname": "db-0", "subdomain": "db", "containers": [{"name": "c"}]},
                "status": {"podIP": "10.244.1.5", "conditions": [{"type": "Ready", "status": "True"}]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gone", "namespace": "apps"},
                "spec": {"clusterIP": "None"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pending", "namespace": "apps"},
                "spec": {"ports": [{"port": 80}]}}),
        ]);
        let options = ZoneOptions {
            pods: PodMode::Verified,
            ..Default::default()
        };
        let zone = Zone::from_state(&s, &options, 7);
        let text = zone.to_string();
        for line in [
            "web.apps.svc.cluster.local. 5 IN A 10.96.0.20",
            "_http._tcp.web.apps.svc.cluster.local. 5 IN SRV 0 100 80 web.apps.svc.cluster.local.",
            "db.apps.svc.cluster.local. 5 IN A 10.244.1.5",
            "db.apps.svc.cluster.local. 5 IN A 10.244.1.7",
            "db-0.db.apps.svc.cluster.local. 5 IN A 10.244.1.5",
            "_pg._tcp.db.apps.svc.cluster.local. 5 IN SRV 0 50 15432 db-0.db.apps.svc.cluster.local.",
            "5.1.244.10.in-addr.arpa. 5 IN PTR db-0.db.apps.svc.cluster.local.",
            "20.0.96.10.in-addr.arpa. 5 IN PTR web.apps.svc.cluster.local.",
            "10-244-1-5.apps.pod.cluster.local. 5 IN A 10.244.1.5",
            "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("10.244.1.6"), "not ready: {text}");
        assert!(
            !text.contains("gone."),
            "headless without endpoints: {text}"
        );
        assert!(!text.contains("pending."), "no clusterIP yet: {text}");
        assert_eq!(zone.service_count(), 2);
    }

    #[test]
    fn domain_from_options_then_config_then_default() {
        let zone = ZoneBuilder::new().build(&ZoneOptions::default(), 0);
        assert_eq!(zone.origin(), b"\x07cluster\x05local\x00");
        let zone = ZoneBuilder::new().build(
            &ZoneOptions {
                zone: Some("Corp.Example".into()),
                ..Default::default()
            },
            0,
        );
        assert_eq!(zone.origin(), b"\x04corp\x07example\x00");
    }
}

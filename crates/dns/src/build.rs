//! Compiling the zone: the facts DNS keeps per object ([`ZoneFacts`],
//! `facts.rs`) turned into the lookup tables of [`Zone`]. Pure: no I/O; a
//! server's facts follow its source change by change, tests and the fuzz
//! target build from whole objects with [`ZoneBuilder`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use podwire_model::{ClusterConfig, ClusterState, EndpointSlice, Namespace, Object, Pod, Service};
use rustc_hash::FxHashMap;

use crate::facts::{Key, KindIn, ServiceIn, SliceIn, ZoneFacts, valid_label};
use crate::wire;
use crate::zone::{Endpoint, Node, PodMode, Port, Reverse, Svc, SvcKind, Zone};

/// The default cluster domain.
pub const DEFAULT_ZONE: &str = "cluster.local";
/// The default record TTL (CoreDNS's).
pub const DEFAULT_TTL: u32 = 5;
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

/// Collects the DNS-relevant facts of whole objects for a one-shot build
/// (tests, the fuzz target); a running server keeps a [`ZoneFacts`] that
/// follows its source instead.
#[derive(Debug)]
pub struct ZoneBuilder {
    facts: ZoneFacts,
}

impl Default for ZoneBuilder {
    fn default() -> Self {
        ZoneBuilder::new()
    }
}

impl ZoneBuilder {
    pub fn new() -> ZoneBuilder {
        ZoneBuilder {
            facts: ZoneFacts::new(true),
        }
    }

    /// The cluster configuration (domain, service range for kube-dns's IP).
    pub fn config(&mut self, config: Option<ClusterConfig>) {
        self.facts.config = config;
    }

    pub fn namespace(&mut self, ns: &Namespace) {
        self.facts.add(&Object::Namespace(ns.clone()));
    }

    pub fn service(&mut self, svc: &Service) {
        self.facts.add(&Object::Service(svc.clone()));
    }

    pub fn endpoint_slice(&mut self, slice: &EndpointSlice) {
        self.facts.add(&Object::EndpointSlice(slice.clone()));
    }

    pub fn pod(&mut self, pod: &Pod) {
        self.facts.add(&Object::Pod(pod.clone()));
    }

    /// Objects left out and why.
    pub fn skipped(&self) -> Vec<String> {
        self.facts.skipped().cloned().collect()
    }

    /// Compiles the zone. `serial` is the SOA serial.
    pub fn build(self, options: &ZoneOptions, serial: u32) -> Zone {
        self.facts.build(options, serial)
    }
}

impl ZoneFacts {
    /// Compiles the zone. `serial` is the SOA serial (the source's revision).
    pub fn build(&self, options: &ZoneOptions, serial: u32) -> Zone {
        // Namespace ids: the built-in ones, the declared ones, and those
        // of the objects that have records.
        let mut ns_ids: BTreeMap<&str, u32> = BTreeMap::new();
        let names_in_use = BUILTIN_NAMESPACES
            .iter()
            .copied()
            .chain(self.namespaces.keys().map(|n| &**n))
            .chain(self.services.keys().map(|k| &*k.0))
            .chain(self.slices.keys().map(|k| &*k.0))
            .chain(self.pods.keys().map(|k| &*k.0));
        for ns in names_in_use {
            let next = ns_ids.len() as u32;
            ns_ids.entry(ns).or_insert(next);
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
        let ns_names: BTreeMap<u32, &str> = ns_ids.iter().map(|(n, id)| (*id, *n)).collect();
        for ns in ns_names.values().filter(|n| valid_label(n)) {
            put(&mut names, rel(&[ns, "svc"]), Node::Empty);
            if options.pods != PodMode::Disabled {
                put(&mut names, rel(&[ns, "pod"]), Node::Empty);
            }
        }

        // Endpoints per Service.
        let mut slices_by_service: BTreeMap<(&str, &str), Vec<&SliceIn>> = BTreeMap::new();
        for ((ns, _), entry) in &self.slices {
            slices_by_service
                .entry((&**ns, &*entry.facts.service))
                .or_default()
                .push(&entry.facts);
        }
        // (ip, hostname) of the pods naming each (namespace, subdomain).
        let mut hosts_by_service: BTreeMap<(&str, &str), Vec<(IpAddr, &str)>> = BTreeMap::new();
        for ((ns, _), entry) in &self.pods {
            if let Some(host) = &entry.facts.host {
                let (hostname, subdomain) = &**host;
                for ip in entry.facts.ips.iter() {
                    hosts_by_service
                        .entry((&**ns, &**subdomain))
                        .or_default()
                        .push((*ip, &**hostname));
                }
            }
        }

        let mut sorted: Vec<(&Key, &ServiceIn)> =
            self.services.iter().map(|(k, e)| (k, &e.facts)).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut services: Vec<Svc> = Vec::with_capacity(sorted.len());
        let mut reverse: Vec<Reverse> = Vec::new();
        let mut kube_dns: Vec<IpAddr> = Vec::new();
        for ((ns, name), svc_in) in sorted {
            let (ns, name): (&str, &str) = (ns, name);
            let Some(key) = rel(&[name, ns, "svc"]) else {
                continue;
            };
            let slices = slices_by_service
                .get(&(ns, name))
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
            for (ip, hostname) in hosts_by_service.get(&(ns, name)).into_iter().flatten() {
                for ep in endpoints
                    .iter_mut()
                    .filter(|e| e.ip == *ip && e.hostname.is_none())
                {
                    ep.hostname = Some(Box::from(hostname.as_bytes()));
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
                        name: pname.clone(),
                        protocol: proto.clone(),
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
            self.pods
                .iter()
                .flat_map(|((ns, _), e)| {
                    let id = ns_ids.get(&**ns).copied().unwrap_or(u32::MAX);
                    e.facts.ips.iter().map(move |ip| (ip_key(*ip).0, id))
                })
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

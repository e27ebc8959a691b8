//! Lab manifests: the `Lab` settings document followed by ordinary Kubernetes
//! objects, their parsing and every check that must pass before a lab
//! creates anything.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use crate::names::{validate_label, validate_subdomain};
use crate::{ClusterConfig, Kind, ModelError, Object, RoutingMode};

/// apiVersion of the Lab document.
pub const LAB_API_VERSION: &str = "podwire.io/v1alpha1";
/// kind of the Lab document.
pub const LAB_KIND: &str = "Lab";

/// Namespaces that exist without being declared, as in a kubeadm cluster
/// (the lab puts its own services, e.g. kube-dns, in kube-system).
pub const BUILTIN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// A lab manifest: the first YAML document is the lab's settings, the rest
/// ordinary Kubernetes objects.
#[derive(Debug, Clone)]
pub struct LabManifest {
    pub spec: LabSpec,
    pub objects: Vec<Object>,
}

/// The lab's settings (the Lab document's metadata.name and spec).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabSpec {
    pub name: String,
    #[serde(rename = "podCIDR", alias = "podCidr")]
    pub pod_cidr: IpNet,
    pub node_slice_prefix: u8,
    #[serde(rename = "serviceCIDR", alias = "serviceCidr")]
    pub service_cidr: IpNet,
    pub cluster_domain: String,
    pub routing: RoutingMode,
    pub underlays: Vec<Underlay>,
    pub nodes: Vec<LabNode>,
    pub external: Option<ExternalHost>,
    /// Whether the lab runs cluster DNS (two `podwire dns` pods behind the
    /// kube-dns Service), as kubeadm installs CoreDNS. Default true.
    #[serde(default = "yes", rename = "clusterDNS")]
    pub cluster_dns: bool,
    /// Whether the lab runs the ingress controller (two `podwire ingress`
    /// pods behind the NodePort Service `ingress-podwire/podwire-ingress`,
    /// nodePorts 30800 and 30443) and its default IngressClass `podwire`.
    /// Default true.
    #[serde(default = "yes")]
    pub ingress: bool,
    /// TLS Secrets the lab issues from its own CA (`ca.crt` in the lab's
    /// state directory), as cert-manager would in a cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<LabCertificate>,
}

/// A `kubernetes.io/tls` Secret the lab creates, signed by the lab's CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabCertificate {
    /// The Secret's namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The Secret's name (what an Ingress's `spec.tls[].secretName` names).
    pub name: String,
    /// DNS names the certificate is valid for (`*.example.com` allowed).
    pub hosts: Vec<String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn yes() -> bool {
    true
}

/// One underlay switch (an L2 segment the nodes' eth0 sit on).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Underlay {
    pub name: String,
    pub subnet: Ipv4Net,
}

/// One node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabNode {
    pub name: String,
    /// The underlay the node sits on; None means the first underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
}

/// The host outside the cluster, reachable through the router.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalHost {
    pub name: String,
    pub subnet: Ipv4Net,
}

impl Default for LabSpec {
    /// The defaults of every field, with no nodes.
    fn default() -> Self {
        LabSpec {
            name: "default".into(),
            pod_cidr: IpNet::V4(Ipv4Net::new_assert([10, 244, 0, 0].into(), 16)),
            node_slice_prefix: 24,
            service_cidr: IpNet::V4(Ipv4Net::new_assert([10, 96, 0, 0].into(), 12)),
            cluster_domain: "cluster.local".into(),
            routing: RoutingMode::Vxlan,
            underlays: vec![Underlay {
                name: "underlay".into(),
                subnet: Ipv4Net::new_assert([192, 168, 56, 0].into(), 24),
            }],
            nodes: Vec::new(),
            external: Some(ExternalHost {
                name: "external".into(),
                subnet: Ipv4Net::new_assert([203, 0, 113, 0].into(), 24),
            }),
            cluster_dns: true,
            ingress: true,
            certificates: Vec::new(),
        }
    }
}

impl LabSpec {
    /// The network settings the cluster's components read.
    pub fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig {
            pod_cidr: self.pod_cidr,
            service_cidr: self.service_cidr,
            node_slice_prefix: self.node_slice_prefix,
            cluster_domain: self.cluster_domain.clone(),
            routing: self.routing,
        }
    }

    /// The underlay a node sits on (its own or the first one).
    pub fn underlay_of(&self, node: &LabNode) -> Option<&Underlay> {
        match &node.underlay {
            Some(name) => self.underlays.iter().find(|u| &u.name == name),
            None => self.underlays.first(),
        }
    }

    /// Every check on the settings; the first failure is returned.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_label("lab", &self.name)?;
        validate_domain(&self.cluster_domain)?;
        check_network_address("spec.podCIDR", self.pod_cidr)?;
        check_network_address("spec.serviceCIDR", self.service_cidr)?;
        check_overlap(
            "pod range (spec.podCIDR)",
            self.pod_cidr,
            "service range (spec.serviceCIDR)",
            self.service_cidr,
        )?;
        self.validate_slices()?;

        if self.nodes.is_empty() {
            return Err(ModelError::NoNodes);
        }
        if self.underlays.is_empty() {
            return Err(ModelError::NoUnderlays);
        }

        // Every subnet that must stay apart: underlays and the external
        // subnet among themselves and from the cluster's ranges.
        let mut nets: Vec<(String, IpNet)> = vec![
            ("pod range (spec.podCIDR)".into(), self.pod_cidr),
            ("service range (spec.serviceCIDR)".into(), self.service_cidr),
        ];
        let mut underlay_names = BTreeSet::new();
        for (i, u) in self.underlays.iter().enumerate() {
            validate_label("underlay", &u.name)?;
            if !underlay_names.insert(u.name.as_str()) {
                return Err(ModelError::DuplicateUnderlay {
                    name: u.name.clone(),
                });
            }
            check_network_address(&format!("spec.underlays[{i}].subnet"), IpNet::V4(u.subnet))?;
            nets.push((format!("underlay {:?}", u.name), IpNet::V4(u.subnet)));
        }
        if let Some(ext) = &self.external {
            validate_label("external host", &ext.name)?;
            check_network_address("spec.external.subnet", IpNet::V4(ext.subnet))?;
            nets.push((
                format!("external subnet of {:?}", ext.name),
                IpNet::V4(ext.subnet),
            ));
            check_hosts_fit(&format!("external subnet of {:?}", ext.name), ext.subnet, 1)?;
        }
        for (i, (a_name, a)) in nets.iter().enumerate() {
            for (b_name, b) in nets.iter().skip(i + 1) {
                check_overlap(a_name, *a, b_name, *b)?;
            }
        }

        let mut node_names = BTreeSet::new();
        let mut per_underlay: BTreeMap<&str, usize> = BTreeMap::new();
        for node in &self.nodes {
            validate_label("node", &node.name)?;
            if !node_names.insert(node.name.as_str()) {
                return Err(ModelError::DuplicateNode {
                    name: node.name.clone(),
                });
            }
            let underlay = self
                .underlay_of(node)
                .ok_or_else(|| ModelError::UnknownUnderlay {
                    node: node.name.clone(),
                    underlay: node.underlay.clone().unwrap_or_default(),
                    known: self
                        .underlays
                        .iter()
                        .map(|u| u.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            *per_underlay.entry(underlay.name.as_str()).or_default() += 1;
        }
        if let Some(ext) = &self.external
            && node_names.contains(ext.name.as_str())
        {
            return Err(ModelError::DuplicateNode {
                name: ext.name.clone(),
            });
        }
        for u in &self.underlays {
            let count = per_underlay.get(u.name.as_str()).copied().unwrap_or(0);
            check_hosts_fit(&format!("underlay {:?}", u.name), u.subnet, count)?;
        }
        self.validate_certificates()
    }

    /// Certificates: valid Secret names, DNS host names, no Secret twice.
    fn validate_certificates(&self) -> Result<(), ModelError> {
        let mut seen = BTreeSet::new();
        for (i, cert) in self.certificates.iter().enumerate() {
            let path = format!("spec.certificates[{i}]");
            let field = |field: &str, e: ModelError| ModelError::InvalidField {
                path: format!("{path}.{field}"),
                message: e.to_string(),
            };
            validate_label("namespace", &cert.namespace).map_err(|e| field("namespace", e))?;
            validate_subdomain("Secret", &cert.name).map_err(|e| field("name", e))?;
            if !seen.insert((cert.namespace.as_str(), cert.name.as_str())) {
                return Err(ModelError::InvalidField {
                    path,
                    message: format!(
                        "Secret {}/{} is listed twice; list each certificate once with all its hosts",
                        cert.namespace, cert.name
                    ),
                });
            }
            if cert.hosts.is_empty() {
                return Err(ModelError::InvalidField {
                    path: format!("{path}.hosts"),
                    message:
                        "is empty; name the host(s) the certificate is for, e.g. [web.example.com]"
                            .into(),
                });
            }
            for (j, host) in cert.hosts.iter().enumerate() {
                if let Some(reason) = certificate_host_problem(host) {
                    return Err(ModelError::InvalidField {
                        path: format!("{path}.hosts[{j}]"),
                        message: format!(
                            "{host:?} is not a DNS name ({reason}); write e.g. web.example.com or *.example.com"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks certificates against the manifest's objects: each Secret's
    /// namespace must exist (declared, built in, or in `existing`), and no
    /// declared object may be the same Secret.
    pub fn validate_certificates_with(
        &self,
        objects: &[Object],
        existing: &BTreeSet<String>,
    ) -> Result<(), ModelError> {
        for (i, cert) in self.certificates.iter().enumerate() {
            let path = format!("spec.certificates[{i}]");
            let declared = existing.contains(&cert.namespace)
                || BUILTIN_NAMESPACES.contains(&cert.namespace.as_str())
                || objects
                    .iter()
                    .any(|o| o.kind() == Kind::Namespace && o.name() == cert.namespace);
            if !declared {
                return Err(ModelError::InvalidField {
                    path: format!("{path}.namespace"),
                    message: format!(
                        "namespace {:?} is not declared; add a Namespace object for it to the manifest",
                        cert.namespace
                    ),
                });
            }
            if objects.iter().any(|o| {
                o.kind() == Kind::Secret && o.namespace() == cert.namespace && o.name() == cert.name
            }) {
                return Err(ModelError::InvalidField {
                    path,
                    message: format!(
                        "Secret {}/{} is also declared as an object; the lab creates certificate Secrets itself, so remove one of the two",
                        cert.namespace, cert.name
                    ),
                });
            }
        }
        Ok(())
    }

    fn validate_slices(&self) -> Result<(), ModelError> {
        let prefix = self.node_slice_prefix;
        let pod_prefix = self.pod_cidr.prefix_len();
        let max = match self.pod_cidr {
            IpNet::V4(_) => 30,
            IpNet::V6(_) => 126,
        };
        let fail = |reason: String| {
            Err(ModelError::SlicePrefix {
                prefix,
                pod_cidr: self.pod_cidr.to_string(),
                reason,
            })
        };
        if prefix < pod_prefix {
            return fail(format!(
                "a node's slice cannot be larger than the pod range; use a prefix of at least /{pod_prefix}"
            ));
        }
        if prefix > max {
            return fail(format!(
                "a slice must hold the bridge address and pods; use a prefix of at most /{max}"
            ));
        }
        let bits = u32::from(prefix - pod_prefix);
        // More than 2^63 slices always suffice.
        let slices = if bits >= 63 { u64::MAX } else { 1u64 << bits };
        if slices < self.nodes.len() as u64 {
            return fail(format!(
                "it gives {slices} slice(s) for {} nodes; use a longer prefix or a larger pod range",
                self.nodes.len()
            ));
        }
        Ok(())
    }
}

/// Why `host` cannot be a certificate's DNS name, if it cannot: DNS labels
/// (lower-case), optionally a leading `*.` wildcard over at least two labels.
fn certificate_host_problem(host: &str) -> Option<String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Some("empty or longer than 253 characters".into());
    }
    if host.starts_with("*.") && !name.contains('.') {
        return Some("a wildcard must cover a domain of two labels or more".into());
    }
    name.split('.')
        .find(|part| validate_label("host part", part).is_err())
        .map(|part| {
            if part.contains('*') {
                "only a leading `*.` may be a wildcard".to_string()
            } else {
                format!("part {part:?} is not a lower-case DNS label")
            }
        })
}

fn validate_domain(domain: &str) -> Result<(), ModelError> {
    let fail = |reason: String| {
        Err(ModelError::InvalidField {
            path: "spec.clusterDomain".into(),
            message: format!("{domain:?} is not a DNS domain ({reason}); use e.g. cluster.local"),
        })
    };
    if domain.is_empty() || domain.len() > 253 {
        return fail("empty or longer than 253 characters".into());
    }
    for part in domain.split('.') {
        if validate_label("domain part", part).is_err() {
            return fail(format!("part {part:?} is not a DNS label"));
        }
    }
    Ok(())
}

fn check_network_address(path: &str, net: IpNet) -> Result<(), ModelError> {
    if net.addr() != net.network() {
        return Err(ModelError::InvalidField {
            path: path.to_string(),
            message: format!("{net} has host bits set; did you mean {}?", net.trunc()),
        });
    }
    Ok(())
}

fn check_overlap(a_name: &str, a: IpNet, b_name: &str, b: IpNet) -> Result<(), ModelError> {
    if a.contains(&b.network()) || b.contains(&a.network()) {
        return Err(ModelError::Overlap {
            first: a_name.to_string(),
            first_net: a.to_string(),
            second: b_name.to_string(),
            second_net: b.to_string(),
        });
    }
    Ok(())
}

/// Hosts sit at .10, .11, ... (the router at .1); the last must stay below
/// the broadcast address.
fn check_hosts_fit(what: &str, subnet: Ipv4Net, count: usize) -> Result<(), ModelError> {
    let size: u64 = 1u64 << (32 - u32::from(subnet.prefix_len()));
    if (count as u64) + 11 > size {
        return Err(ModelError::SubnetTooSmall {
            what: what.to_string(),
            subnet: subnet.to_string(),
            count,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parsing

/// The Lab document as written; CIDRs stay text so errors can name the field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLabDoc {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default)]
    spec: RawSpec,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(rename = "podCIDR", alias = "podCidr")]
    pod_cidr: Option<String>,
    node_slice_prefix: Option<u8>,
    #[serde(rename = "serviceCIDR", alias = "serviceCidr")]
    service_cidr: Option<String>,
    cluster_domain: Option<String>,
    routing: Option<RoutingMode>,
    underlays: Option<Vec<RawNet>>,
    #[serde(default)]
    nodes: Vec<LabNode>,
    /// Missing: the default external host; `external: null`: none.
    #[serde(default, deserialize_with = "present")]
    external: Option<Option<RawNet>>,
    #[serde(rename = "clusterDNS")]
    cluster_dns: Option<bool>,
    ingress: Option<bool>,
    #[serde(default)]
    certificates: Vec<LabCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    name: String,
    subnet: String,
}

/// Distinguishes an explicit `null` (Some(None)) from a missing field (None).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn parse_net(path: &str, text: &str) -> Result<IpNet, ModelError> {
    text.trim().parse::<IpNet>().map_err(|_| ModelError::InvalidField {
        path: path.to_string(),
        message: format!("{text:?} is not a valid CIDR; write an address and a prefix length, e.g. 10.244.0.0/16"),
    })
}

fn parse_net4(path: &str, text: &str) -> Result<Ipv4Net, ModelError> {
    text.trim()
        .parse::<Ipv4Net>()
        .map_err(|_| ModelError::InvalidField {
            path: path.to_string(),
            message: format!("{text:?} is not a valid IPv4 CIDR; write e.g. 192.168.56.0/24"),
        })
}

fn spec_from_value(document: usize, value: serde_json::Value) -> Result<LabSpec, ModelError> {
    let raw: RawLabDoc = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ModelError::InvalidField {
            path: format!("document {document} (kind: Lab) {path}"),
            message: format!(
                "{}; compare with the built-in example lab (example-lab.yaml)",
                e.into_inner()
            ),
        }
    })?;
    let defaults = LabSpec::default();
    let spec = raw.spec;
    let underlays = match spec.underlays {
        None => defaults.underlays,
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, u)| {
                Ok(Underlay {
                    subnet: parse_net4(&format!("spec.underlays[{i}].subnet"), &u.subnet)?,
                    name: u.name,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?,
    };
    let external = match spec.external {
        None => defaults.external,
        Some(None) => None,
        Some(Some(e)) => Some(ExternalHost {
            subnet: parse_net4("spec.external.subnet", &e.subnet)?,
            name: e.name,
        }),
    };
    Ok(LabSpec {
        name: raw.metadata.name.unwrap_or(defaults.name),
        pod_cidr: match spec.pod_cidr {
            Some(t) => parse_net("spec.podCIDR", &t)?,
            None => defaults.pod_cidr,
        },
        node_slice_prefix: spec.node_slice_prefix.unwrap_or(defaults.node_slice_prefix),
        service_cidr: match spec.service_cidr {
            Some(t) => parse_net("spec.serviceCIDR", &t)?,
            None => defaults.service_cidr,
        },
        cluster_domain: spec.cluster_domain.unwrap_or(defaults.cluster_domain),
        routing: spec.routing.unwrap_or(defaults.routing),
        underlays,
        nodes: spec.nodes,
        external,
        cluster_dns: spec.cluster_dns.unwrap_or(defaults.cluster_dns),
        ingress: spec.ingress.unwrap_or(defaults.ingress),
        certificates: spec.certificates,
    })
}

/// One parsed document.
enum Document {
    Lab(LabSpec),
    Object(Box<Object>),
}

/// Splits the text into documents and parses each; empty documents are
/// skipped, `v1 List` documents are flattened. Numbers are 1-based.
fn parse_documents(yaml: &str) -> Result<Vec<(usize, Document)>, ModelError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let document = i + 1;
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| ModelError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value).map_err(|e| ModelError::Yaml {
            document,
            message: format!("cannot be read as a Kubernetes object ({e})"),
        })?;
        let api_version = json.get("apiVersion").and_then(|v| v.as_str());
        let kind = json.get("kind").and_then(|v| v.as_str());
        match (api_version, kind) {
            (None, _) => {
                return Err(ModelError::MissingTypeField {
                    document,
                    field: "apiVersion",
                });
            }
            (_, None) => {
                return Err(ModelError::MissingTypeField {
                    document,
                    field: "kind",
                });
            }
            (Some(LAB_API_VERSION), Some(LAB_KIND)) => {
                out.push((document, Document::Lab(spec_from_value(document, json)?)))
            }
            (Some("v1"), Some("List")) => {
                let items = json
                    .get("items")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                for item in &items {
                    out.push((document, Document::Object(Box::new(manifest_object(item)?))));
                }
            }
            (Some(av), Some(k)) if k == LAB_KIND || av == LAB_API_VERSION => {
                return Err(ModelError::UnknownKind {
                    api_version: av.into(),
                    kind: k.into(),
                });
            }
            _ => out.push((
                document,
                Document::Object(Box::new(manifest_object(&json)?)),
            )),
        }
    }
    Ok(out)
}

/// Parses one object of a manifest: a supported kind that users may declare.
fn manifest_object(json: &serde_json::Value) -> Result<Object, ModelError> {
    let object = Object::from_json(json)?;
    match object.kind() {
        Kind::Node => Err(ModelError::KindNotAllowed {
            kind: "Node".into(),
            reason: "nodes are declared in the Lab document's spec.nodes, and the lab writes their Node objects",
        }),
        Kind::EndpointSlice => Err(ModelError::KindNotAllowed {
            kind: "EndpointSlice".into(),
            reason: "the lab computes EndpointSlices from Services and ready pods",
        }),
        _ => Ok(object),
    }
}

/// Parses a whole lab file: the Lab document first, then objects; validates
/// the settings and the objects (names, duplicates, namespaces).
pub fn parse_lab(yaml: &str) -> Result<LabManifest, ModelError> {
    let (spec, objects) = parse_manifest(yaml)?;
    let spec = spec.ok_or_else(|| ModelError::FirstDocumentNotLab {
        found: objects
            .first()
            .map_or_else(|| "an empty file".to_string(), |o| o.describe()),
    })?;
    spec.validate()?;
    validate_objects(&objects, &BTreeSet::new())?;
    spec.validate_certificates_with(&objects, &BTreeSet::new())?;
    Ok(LabManifest { spec, objects })
}

/// Parses a file that may start with a Lab document (e.g. an edited copy of
/// the lab file given to `lab apply`, to add nodes); the objects get the
/// per-object checks of [`parse_objects`]. The spec is not validated here.
pub fn parse_manifest(yaml: &str) -> Result<(Option<LabSpec>, Vec<Object>), ModelError> {
    let mut spec = None;
    let mut objects = Vec::new();
    for (n, (document, doc)) in parse_documents(yaml)?.into_iter().enumerate() {
        match doc {
            Document::Lab(s) if n == 0 => spec = Some(s),
            Document::Lab(_) => return Err(ModelError::UnexpectedLab { document }),
            Document::Object(o) => objects.push(*o),
        }
    }
    check_objects(&objects)?;
    Ok((spec, objects))
}

/// Parses Kubernetes objects only (for `lab apply -f` / `lab delete -f`).
/// A Lab document is rejected: the settings are fixed when the lab is
/// created. Names and duplicates are checked; whether namespaces exist
/// depends on the cluster, so call [`validate_objects`] with its namespaces.
pub fn parse_objects(yaml: &str) -> Result<Vec<Object>, ModelError> {
    let mut objects = Vec::new();
    for (document, doc) in parse_documents(yaml)? {
        match doc {
            Document::Lab(_) => return Err(ModelError::UnexpectedLab { document }),
            Document::Object(o) => objects.push(*o),
        }
    }
    check_objects(&objects)?;
    Ok(objects)
}

/// Checks names and duplicates, without looking at namespaces.
fn check_objects(objects: &[Object]) -> Result<(), ModelError> {
    let mut seen = BTreeSet::new();
    for object in objects {
        let kind = object.kind();
        let name = object.name();
        let what = kind.name();
        match kind {
            Kind::Namespace | Kind::Node => validate_label(what, &name)?,
            Kind::Service => {
                validate_label(what, &name)?;
                // Services are DNS-1035 labels: their names become DNS names
                // and environment variables, so they must start with a letter.
                if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    return Err(ModelError::InvalidName {
                        what: what.into(),
                        name,
                        reason: "a Service name must start with a letter".into(),
                    });
                }
            }
            _ => validate_subdomain(what, &name)?,
        }
        if kind.namespaced() {
            validate_label("namespace", &object.namespace())?;
        }
        check_contents(object)?;
        if !seen.insert((kind, object.namespace(), name.clone())) {
            return Err(ModelError::DuplicateObject {
                kind: what.into(),
                namespace: object.namespace(),
                name,
            });
        }
    }
    Ok(())
}

/// The checks the API server would make that the lab relies on: pods have
/// containers to run, a Deployment's selector picks its own pods, Service
/// ports are valid. Anything else in the spec is passed through untouched.
fn check_contents(object: &Object) -> Result<(), ModelError> {
    let invalid = |message: String| ModelError::InvalidObject {
        kind: object.kind().name().into(),
        name: object.name(),
        message,
    };
    let check_pod_spec = |path: &str, spec: Option<&k8s_openapi::api::core::v1::PodSpec>| {
        let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
        if containers.is_empty() {
            return Err(invalid(format!(
                "{path}.containers is empty; a pod needs at least one container"
            )));
        }
        let mut names = BTreeSet::new();
        for (i, c) in containers.iter().enumerate() {
            validate_label("container", &c.name)
                .map_err(|e| invalid(format!("{path}.containers[{i}].name: {e}")))?;
            if !names.insert(c.name.as_str()) {
                return Err(invalid(format!(
                    "{path}.containers[{i}].name {:?} is used twice",
                    c.name
                )));
            }
        }
        Ok(())
    };
    match object {
        Object::Pod(pod) => check_pod_spec("spec", pod.spec.as_ref()),
        Object::Deployment(d) => {
            if d.spec.replicas.is_some_and(|r| r < 0) {
                return Err(invalid("spec.replicas is negative".into()));
            }
            check_pod_spec("spec.template.spec", d.spec.template.spec.as_ref())?;
            let selector = d.spec.selector.match_labels.clone().unwrap_or_default();
            if selector.is_empty() {
                return Err(invalid(
                    "spec.selector.matchLabels is empty; set it to the template's labels (e.g. app: NAME)".into(),
                ));
            }
            let labels = d
                .spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if let Some((k, v)) = selector.iter().find(|(k, v)| labels.get(*k) != Some(*v)) {
                return Err(invalid(format!(
                    "spec.selector.matchLabels {k}: {v} does not match spec.template.metadata.labels; the selector must select the template's pods"
                )));
            }
            Ok(())
        }
        Object::Service(svc) => {
            let ports = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_deref())
                .unwrap_or_default();
            let mut names = BTreeSet::new();
            for (i, p) in ports.iter().enumerate() {
                if !(1..=65535).contains(&p.port) {
                    return Err(invalid(format!(
                        "spec.ports[{i}].port {} is not in 1-65535",
                        p.port
                    )));
                }
                if let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) =
                    &p.target_port
                    && !(0..=65535).contains(t)
                {
                    return Err(invalid(format!(
                        "spec.ports[{i}].targetPort {t} is not in 1-65535"
                    )));
                }
                if ports.len() > 1 && p.name.as_deref().is_none_or(str::is_empty) {
                    return Err(invalid(format!(
                        "spec.ports[{i}] has no name; name every port when a Service has several"
                    )));
                }
                if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty())
                    && !names.insert(n)
                {
                    return Err(invalid(format!("spec.ports[{i}].name {n:?} is used twice")));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks a set of objects about to be applied: names, duplicates, and that
/// each namespaced object's namespace is declared (by a Namespace among the
/// objects, in `existing_namespaces`, or built in: [`BUILTIN_NAMESPACES`]).
pub fn validate_objects(
    objects: &[Object],
    existing_namespaces: &BTreeSet<String>,
) -> Result<(), ModelError> {
    check_objects(objects)?;
    let declared: BTreeSet<String> = objects
        .iter()
        .filter(|o| o.kind() == Kind::Namespace)
        .map(Object::name)
        .chain(existing_namespaces.iter().cloned())
        .chain(BUILTIN_NAMESPACES.iter().map(|s| s.to_string()))
        .collect();
    for object in objects.iter().filter(|o| o.kind().namespaced()) {
        let namespace = object.namespace();
        if !declared.contains(&namespace) {
            return Err(ModelError::UndeclaredNamespace {
                kind: object.kind().name().into(),
                namespace,
                name: object.name(),
            });
        }
    }
    Ok(())
}

/// The built-in example manifest (also in `crates/model/src/example-lab.yaml`).
pub fn builtin_example() -> &'static str {
    include_str!("example-lab.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: podwire.io/v1alpha1\nkind: Lab\nmetadata: {name: t}\n";

    fn lab(spec: &str) -> Result<LabManifest, ModelError> {
        parse_lab(&format!("{HEAD}spec:\n{spec}"))
    }

    fn lab_with_objects(objects: &str) -> Result<LabManifest, ModelError> {
        parse_lab(&format!(
            "{HEAD}spec:\n  nodes: [{{name: a}}]\n---\n{objects}"
        ))
    }

    #[test]
    fn example_parses_with_expected_content() {
        let m = parse_lab(builtin_example()).unwrap();
        let s = &m.spec;
        assert_eq!(s.name, "example");
        assert_eq!(s.pod_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(s.node_slice_prefix, 24);
        assert_eq!(s.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(s.cluster_domain, "cluster.local");
        assert_eq!(s.routing, RoutingMode::Vxlan);
        assert_eq!(s.underlays.len(), 1);
        assert_eq!(s.underlays[0].subnet.to_string(), "192.168.56.0/24");
        assert_eq!(
            s.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["controlplane", "node01", "node02"]
        );
        assert_eq!(
            s.external.as_ref().map(|e| e.name.as_str()),
            Some("external")
        );
        let kinds: Vec<(Kind, String, String)> = m
            .objects
            .iter()
            .map(|o| (o.kind(), o.namespace(), o.name()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Namespace, String::new(), "apps".into()),
                (Kind::Deployment, "apps".into(), "web".into()),
                (Kind::Service, "apps".into(), "web-service".into()),
                (Kind::Pod, "default".into(), "client".into()),
                (Kind::Ingress, "apps".into(), "web".into()),
            ]
        );
        assert!(s.cluster_dns && s.ingress);
        assert_eq!(
            s.certificates,
            [LabCertificate {
                namespace: "apps".into(),
                name: "web-tls".into(),
                hosts: vec!["web.example.com".into()],
            }]
        );
        let Object::Ingress(ing) = &m.objects[4] else {
            panic!("not an ingress")
        };
        let ing = ing.spec.as_ref().unwrap();
        assert_eq!(ing.ingress_class_name.as_deref(), Some("podwire"));
        let tls = &ing.tls.as_ref().unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("web-tls"));
        assert_eq!(
            tls.hosts.as_deref(),
            Some(&["web.example.com".to_string()][..])
        );
        let Object::Deployment(d) = &m.objects[1] else {
            panic!("not a deployment")
        };
        assert_eq!(d.spec.replicas, Some(2));
        let Object::Service(svc) = &m.objects[2] else {
            panic!("not a service")
        };
        let port = &svc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.node_port), (80, Some(30080)));
        assert_eq!(s.cluster_config().routing, RoutingMode::Vxlan);
    }

    #[test]
    fn defaults_apply() {
        let m = parse_lab(&format!(
            "{HEAD}spec:\n  nodes: [{{name: a}}, {{name: b, underlay: underlay}}]\n"
        ))
        .unwrap();
        let d = LabSpec::default();
        assert_eq!(m.spec.name, "t");
        assert_eq!(m.spec.pod_cidr, d.pod_cidr);
        assert_eq!(m.spec.service_cidr, d.service_cidr);
        assert_eq!(m.spec.underlays, d.underlays);
        assert_eq!(m.spec.external, d.external);
        assert_eq!(m.spec.routing, RoutingMode::Vxlan);
        let no_meta = parse_lab("apiVersion: podwire.io/v1alpha1\nkind: Lab\nspec: {nodes: [{name: a}], external: null}\n").unwrap();
        assert_eq!(no_meta.spec.name, "default");
        assert_eq!(no_meta.spec.external, None);
        // The spec round-trips through its own serde form (the lab may store it).
        let json = serde_json::to_value(&m.spec).unwrap();
        assert_eq!(json["podCIDR"], "10.244.0.0/16");
        assert_eq!(serde_json::from_value::<LabSpec>(json).unwrap(), m.spec);
    }

    #[test]
    fn first_document_must_be_lab() {
        let e = parse_lab("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(e, ModelError::FirstDocumentNotLab { .. }), "{e}");
        assert!(e.to_string().contains("kind: Lab"));
        assert!(matches!(
            parse_lab(""),
            Err(ModelError::FirstDocumentNotLab { .. })
        ));
        let two = format!("{HEAD}spec: {{nodes: [{{name: a}}]}}\n---\n{HEAD}");
        assert!(matches!(
            parse_lab(&two),
            Err(ModelError::UnexpectedLab { document: 2 })
        ));
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e =
            lab_with_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(e, ModelError::UnknownKind { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("ConfigMap") && msg.contains("networking.k8s.io/v1 Ingress"),
            "{msg}"
        );
        let e = lab_with_objects("apiVersion: apps/v2\nkind: Deployment\nmetadata: {name: x}\n")
            .unwrap_err();
        assert!(e.to_string().contains("apps/v2"), "{e}");
        let e = lab_with_objects("kind: Pod\nmetadata: {name: x}\n").unwrap_err();
        assert!(
            matches!(
                e,
                ModelError::MissingTypeField {
                    field: "apiVersion",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_lab("apiVersion: podwire.io/v1\nkind: Lab\n").unwrap_err();
        assert!(matches!(e, ModelError::UnknownKind { .. }), "{e}");
        let e = lab_with_objects("apiVersion: v1\nkind: Node\nmetadata: {name: x}\n").unwrap_err();
        assert!(matches!(e, ModelError::KindNotAllowed { .. }), "{e}");
    }

    #[test]
    fn invalid_yaml_and_fields() {
        let e = parse_lab("a: [").unwrap_err();
        assert!(matches!(e, ModelError::Yaml { document: 1, .. }), "{e}");
        let e = lab("  podCIDR: 10.244.0.0/33\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(
            matches!(&e, ModelError::InvalidField { path, .. } if path == "spec.podCIDR"),
            "{e}"
        );
        let e = lab("  serviceCIDR: banana\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(
            e.to_string().starts_with("spec.serviceCIDR: \"banana\""),
            "{e}"
        );
        let e = lab("  underlays: [{name: u, subnet: 10.0.0.0/40}]\n  nodes: [{name: a}]\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("spec.underlays[0].subnet"), "{e}");
        let e = lab("  podCIDRs: 10.0.0.0/8\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(e.to_string().contains("podCIDRs"), "{e}");
        let e = lab("  routing: bgp\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(e.to_string().contains("bgp"), "{e}");
        let e = lab("  podCIDR: 10.244.1.0/16\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(e.to_string().contains("did you mean 10.244.0.0/16"), "{e}");
        let e = lab("  clusterDomain: Bad_Domain\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(
            matches!(&e, ModelError::InvalidField { path, .. } if path == "spec.clusterDomain"),
            "{e}"
        );
    }

    #[test]
    fn overlapping_ranges() {
        let e = lab("  podCIDR: 10.0.0.0/8\n  serviceCIDR: 10.96.0.0/12\n  nodes: [{name: a}]\n")
            .unwrap_err();
        assert!(matches!(e, ModelError::Overlap { .. }), "{e}");
        assert!(e.to_string().contains("10.0.0.0/8") && e.to_string().contains("10.96.0.0/12"));
        let e = lab("  underlays: [{name: u1, subnet: 192.168.0.0/16}, {name: u2, subnet: 192.168.56.0/24}]\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(matches!(e, ModelError::Overlap { .. }), "{e}");
        let e = lab("  underlays: [{name: u1, subnet: 10.244.5.0/24}]\n  nodes: [{name: a}]\n")
            .unwrap_err();
        assert!(e.to_string().contains("pod range"), "{e}");
        let e = lab("  underlays: [{name: u1, subnet: 10.96.5.0/24}]\n  nodes: [{name: a}]\n")
            .unwrap_err();
        assert!(e.to_string().contains("service range"), "{e}");
        let e = lab("  external: {name: ext, subnet: 192.168.56.0/25}\n  nodes: [{name: a}]\n")
            .unwrap_err();
        assert!(matches!(e, ModelError::Overlap { .. }), "{e}");
    }

    #[test]
    fn slice_prefix_must_fit() {
        let e = lab("  nodeSlicePrefix: 8\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(
            matches!(e, ModelError::SlicePrefix { .. }) && e.to_string().contains("at least /16"),
            "{e}"
        );
        let e = lab("  nodeSlicePrefix: 31\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(e.to_string().contains("at most /30"), "{e}");
        let e = lab("  podCIDR: 10.244.0.0/24\n  nodeSlicePrefix: 25\n  nodes: [{name: a}, {name: b}, {name: c}]\n").unwrap_err();
        assert!(e.to_string().contains("2 slice(s) for 3 nodes"), "{e}");
        assert!(
            lab(
                "  podCIDR: 10.244.0.0/24\n  nodeSlicePrefix: 25\n  nodes: [{name: a}, {name: b}]\n"
            )
            .is_ok()
        );
    }

    #[test]
    fn node_errors() {
        assert!(matches!(lab("  nodes: []\n"), Err(ModelError::NoNodes)));
        assert!(matches!(
            lab("  routing: host-gw\n"),
            Err(ModelError::NoNodes)
        ));
        let e = lab("  nodes: [{name: a}, {name: a}]\n").unwrap_err();
        assert!(
            matches!(&e, ModelError::DuplicateNode { name } if name == "a"),
            "{e}"
        );
        let e = lab("  nodes: [{name: external}]\n").unwrap_err();
        assert!(matches!(e, ModelError::DuplicateNode { .. }), "{e}");
        let e = lab("  nodes: [{name: a, underlay: net9}]\n").unwrap_err();
        assert!(
            matches!(e, ModelError::UnknownUnderlay { .. }) && e.to_string().contains("underlay"),
            "{e}"
        );
        let e = lab("  nodes: [{name: Node_1}]\n").unwrap_err();
        assert!(matches!(e, ModelError::InvalidName { .. }), "{e}");
        let e = lab("  underlays: [{name: u, subnet: 192.168.56.0/28}]\n  nodes: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}]\n").unwrap_err();
        assert!(
            matches!(e, ModelError::SubnetTooSmall { count: 6, .. }),
            "{e}"
        );
        assert!(lab("  underlays: [{name: u, subnet: 192.168.56.0/28}]\n  nodes: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}]\n").is_ok());
        let e = lab("  underlays: [{name: u, subnet: 192.168.56.0/24}, {name: u, subnet: 192.168.57.0/24}]\n  nodes: [{name: a}]\n").unwrap_err();
        assert!(matches!(e, ModelError::DuplicateUnderlay { .. }), "{e}");
        assert!(matches!(
            lab("  underlays: []\n  nodes: [{name: a}]\n"),
            Err(ModelError::NoUnderlays)
        ));
    }

    #[test]
    fn object_errors() {
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n";
        let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec: {containers: [{name: c}]}\n";
        let e = lab_with_objects(&format!("{ns}---\n{pod}---\n{pod}")).unwrap_err();
        assert!(
            matches!(e, ModelError::DuplicateObject { .. }) && e.to_string().contains("apps/p"),
            "{e}"
        );
        let e = lab_with_objects(pod).unwrap_err();
        assert!(
            matches!(&e, ModelError::UndeclaredNamespace { namespace, .. } if namespace == "apps"),
            "{e}"
        );
        assert!(lab_with_objects(&format!("{ns}---\n{pod}")).is_ok());
        // default is implicit
        assert!(
            lab_with_objects(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n"
            )
            .is_ok()
        );
        let e = lab_with_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: P}\n").unwrap_err();
        assert!(matches!(e, ModelError::InvalidName { .. }), "{e}");
        let e = lab_with_objects("apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\n")
            .unwrap_err();
        assert!(matches!(e, ModelError::InvalidName { .. }), "{e}");
        let e = lab_with_objects(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 5}\n",
        )
        .unwrap_err();
        assert!(matches!(e, ModelError::InvalidObject { .. }), "{e}");
        let e = lab_with_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap_err();
        assert!(e.to_string().contains("at least one container"), "{e}");
        let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec: {containers: [{name: c}]}\n";
        let e = lab_with_objects(d).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(lab_with_objects(&d.replace("app: y", "app: x")).is_ok());
        let s = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}, {port: 81}]}\n";
        assert!(
            lab_with_objects(s)
                .unwrap_err()
                .to_string()
                .contains("no name")
        );
        // A Pod and a Service may share a name.
        assert!(lab_with_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: p}\n").is_ok());
    }

    #[test]
    fn parse_objects_rules() {
        let objs = parse_objects(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec: {containers: [{name: c}]}\n---\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 1);
        // Namespaces are checked against the cluster by validate_objects.
        assert!(validate_objects(&objs, &BTreeSet::new()).is_err());
        assert!(validate_objects(&objs, &BTreeSet::from(["apps".to_string()])).is_ok());
        let e = parse_objects(&format!("{HEAD}spec: {{nodes: [{{name: a}}]}}\n")).unwrap_err();
        assert!(
            matches!(e, ModelError::UnexpectedLab { document: 1 }),
            "{e}"
        );
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a}, spec: {containers: [{name: c}]}}\n- {apiVersion: v1, kind: Pod, metadata: {name: b}, spec: {containers: [{name: c}]}}\n";
        assert_eq!(parse_objects(list).unwrap().len(), 2);
        let (spec, objects) = parse_manifest(builtin_example()).unwrap();
        assert_eq!(spec.map(|s| s.nodes.len()), Some(3));
        assert_eq!(objects.len(), 5);
    }

    #[test]
    fn ingress_and_certificates_fields() {
        let m = lab("  nodes: [{name: a}]\n").unwrap();
        assert!(m.spec.ingress, "ingress defaults to on");
        assert!(m.spec.certificates.is_empty());
        let m = lab("  ingress: false\n  nodes: [{name: a}]\n  certificates: [{name: t, hosts: [a.example.com, '*.b.example.com']}]\n").unwrap();
        assert!(!m.spec.ingress);
        assert_eq!(m.spec.certificates[0].namespace, "default");
        // The stored form round-trips, certificates included.
        let json = serde_json::to_value(&m.spec).unwrap();
        assert_eq!(json["ingress"], false);
        assert_eq!(serde_json::from_value::<LabSpec>(json).unwrap(), m.spec);
        let stored_before = serde_json::json!({
            "name": "x", "podCIDR": "10.244.0.0/16", "nodeSlicePrefix": 24,
            "serviceCIDR": "10.96.0.0/12", "clusterDomain": "cluster.local",
            "routing": "vxlan", "underlays": [], "nodes": [], "external": null
        });
        let old: LabSpec = serde_json::from_value(stored_before).unwrap();
        assert!(old.ingress && old.cluster_dns && old.certificates.is_empty());
    }

    #[test]
    fn certificate_errors() {
        let cert = |c: &str| lab(&format!("  nodes: [{{name: a}}]\n  certificates: [{c}]\n"));
        let e = cert("{name: t, hosts: []}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.certificates[0].hosts: is empty"),
            "{e}"
        );
        let e = cert("{name: t, hosts: [ok.example.com, Bad_Host]}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.certificates[0].hosts[1]: \"Bad_Host\" is not a DNS name"),
            "{e}"
        );
        let e = cert("{name: t, hosts: ['a.*.example.com']}").unwrap_err();
        assert!(e.to_string().contains("only a leading `*.`"), "{e}");
        let e = cert("{name: t, hosts: ['*.com']}").unwrap_err();
        assert!(e.to_string().contains("two labels"), "{e}");
        let e = cert("{name: T, hosts: [a.b]}").unwrap_err();
        assert!(
            e.to_string().starts_with("spec.certificates[0].name"),
            "{e}"
        );
        let e = cert("{name: t, namespace: Apps, hosts: [a.b]}").unwrap_err();
        assert!(
            e.to_string().starts_with("spec.certificates[0].namespace"),
            "{e}"
        );
        let e = cert("{name: t, hosts: [a.b]}, {name: t, hosts: [c.d]}").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.certificates[1]: Secret default/t is listed twice"),
            "{e}"
        );
        let e = cert("{name: t, host: [a.b]}").unwrap_err();
        assert!(e.to_string().contains("host"), "{e}");
        let e = cert("{name: t, namespace: apps, hosts: [a.b]}").unwrap_err();
        assert!(
            e.to_string().contains("namespace \"apps\" is not declared"),
            "{e}"
        );
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n";
        let with = |objects: &str| {
            parse_lab(&format!(
                "{HEAD}spec:\n  nodes: [{{name: a}}]\n  certificates: [{{name: t, namespace: apps, hosts: [a.b]}}]\n---\n{objects}"
            ))
        };
        assert!(with(ns).is_ok());
        let e = with(&format!(
            "{ns}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: t, namespace: apps}}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("also declared as an object"), "{e}");
    }
}

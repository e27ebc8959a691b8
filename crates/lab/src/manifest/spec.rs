//! The Lab document's settings (`LabSpec`): its defaults and every check
//! on them that must pass before a lab creates anything.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};
use podwire_model::{ClusterConfig, Kind, Object, RoutingMode, validate_label, validate_subdomain};

use crate::error::ManifestError;

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
    pub fn validate(&self) -> Result<(), ManifestError> {
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
            return Err(ManifestError::NoNodes);
        }
        if self.underlays.is_empty() {
            return Err(ManifestError::NoUnderlays);
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
                return Err(ManifestError::DuplicateUnderlay {
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
                return Err(ManifestError::DuplicateNode {
                    name: node.name.clone(),
                });
            }
            let underlay =
                self.underlay_of(node)
                    .ok_or_else(|| ManifestError::UnknownUnderlay {
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
            return Err(ManifestError::DuplicateNode {
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
    fn validate_certificates(&self) -> Result<(), ManifestError> {
        let mut seen = BTreeSet::new();
        for (i, cert) in self.certificates.iter().enumerate() {
            let path = format!("spec.certificates[{i}]");
            let field = |field: &str, e: podwire_model::ModelError| ManifestError::InvalidField {
                path: format!("{path}.{field}"),
                message: e.to_string(),
            };
            validate_label("namespace", &cert.namespace).map_err(|e| field("namespace", e))?;
            validate_subdomain("Secret", &cert.name).map_err(|e| field("name", e))?;
            if !seen.insert((cert.namespace.as_str(), cert.name.as_str())) {
                return Err(ManifestError::InvalidField {
                    path,
                    message: format!(
                        "Secret {}/{} is listed twice; list each certificate once with all its hosts",
                        cert.namespace, cert.name
                    ),
                });
            }
            if cert.hosts.is_empty() {
                return Err(ManifestError::InvalidField {
                    path: format!("{path}.hosts"),
                    message:
                        "is empty; name the host(s) the certificate is for, e.g. [web.example.com]"
                            .into(),
                });
            }
            for (j, host) in cert.hosts.iter().enumerate() {
                if let Some(reason) = certificate_host_problem(host) {
                    return Err(ManifestError::InvalidField {
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
    ) -> Result<(), ManifestError> {
        for (i, cert) in self.certificates.iter().enumerate() {
            let path = format!("spec.certificates[{i}]");
            let declared = existing.contains(&cert.namespace)
                || BUILTIN_NAMESPACES.contains(&cert.namespace.as_str())
                || objects
                    .iter()
                    .any(|o| o.kind() == Kind::Namespace && o.name() == cert.namespace);
            if !declared {
                return Err(ManifestError::InvalidField {
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
                return Err(ManifestError::InvalidField {
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

    fn validate_slices(&self) -> Result<(), ManifestError> {
        let prefix = self.node_slice_prefix;
        let pod_prefix = self.pod_cidr.prefix_len();
        let max = match self.pod_cidr {
            IpNet::V4(_) => 30,
            IpNet::V6(_) => 126,
        };
        let fail = |reason: String| {
            Err(ManifestError::SlicePrefix {
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

fn validate_domain(domain: &str) -> Result<(), ManifestError> {
    let fail = |reason: String| {
        Err(ManifestError::InvalidField {
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

fn check_network_address(path: &str, net: IpNet) -> Result<(), ManifestError> {
    if net.addr() != net.network() {
        return Err(ManifestError::InvalidField {
            path: path.to_string(),
            message: format!("{net} has host bits set; did you mean {}?", net.trunc()),
        });
    }
    Ok(())
}

fn check_overlap(a_name: &str, a: IpNet, b_name: &str, b: IpNet) -> Result<(), ManifestError> {
    if a.contains(&b.network()) || b.contains(&a.network()) {
        return Err(ManifestError::Overlap {
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
fn check_hosts_fit(what: &str, subnet: Ipv4Net, count: usize) -> Result<(), ManifestError> {
    let size: u64 = 1u64 << (32 - u32::from(subnet.prefix_len()));
    if (count as u64) + 11 > size {
        return Err(ManifestError::SubnetTooSmall {
            what: what.to_string(),
            subnet: subnet.to_string(),
            count,
        });
    }
    Ok(())
}

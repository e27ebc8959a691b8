//! Parsing lab manifests: YAML documents (the Lab document first, then
//! Kubernetes objects, `v1 List`s flattened) and the checks the API server
//! would make on the objects before the lab creates anything.

use std::collections::BTreeSet;

use ipnet::{IpNet, Ipv4Net};
use podwire_model::{Kind, ModelError, Object, RoutingMode, validate_label, validate_subdomain};
use serde::Deserialize;

use super::spec::{
    BUILTIN_NAMESPACES, ExternalHost, LAB_API_VERSION, LAB_KIND, LabCertificate, LabManifest,
    LabNode, LabSpec, Underlay,
};
use crate::error::ManifestError;

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

fn parse_net(path: &str, text: &str) -> Result<IpNet, ManifestError> {
    text.trim().parse::<IpNet>().map_err(|_| ManifestError::InvalidField {
        path: path.to_string(),
        message: format!("{text:?} is not a valid CIDR; write an address and a prefix length, e.g. 10.244.0.0/16"),
    })
}

fn parse_net4(path: &str, text: &str) -> Result<Ipv4Net, ManifestError> {
    text.trim()
        .parse::<Ipv4Net>()
        .map_err(|_| ManifestError::InvalidField {
            path: path.to_string(),
            message: format!("{text:?} is not a valid IPv4 CIDR; write e.g. 192.168.56.0/24"),
        })
}

fn spec_from_value(document: usize, value: serde_json::Value) -> Result<LabSpec, ManifestError> {
    let raw: RawLabDoc = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ManifestError::InvalidField {
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
            .collect::<Result<Vec<_>, ManifestError>>()?,
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
fn parse_documents(yaml: &str) -> Result<Vec<(usize, Document)>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let document = i + 1;
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value).map_err(|e| ManifestError::Yaml {
            document,
            message: format!("cannot be read as a Kubernetes object ({e})"),
        })?;
        let api_version = json.get("apiVersion").and_then(|v| v.as_str());
        let kind = json.get("kind").and_then(|v| v.as_str());
        match (api_version, kind) {
            (None, _) => {
                return Err(ManifestError::MissingTypeField {
                    document,
                    field: "apiVersion",
                });
            }
            (_, None) => {
                return Err(ManifestError::MissingTypeField {
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
                }
                .into());
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
fn manifest_object(json: &serde_json::Value) -> Result<Object, ManifestError> {
    let object = Object::from_json(json)?;
    match object.kind() {
        Kind::Node => Err(ManifestError::KindNotAllowed {
            kind: "Node".into(),
            reason: "nodes are declared in the Lab document's spec.nodes, and the lab writes their Node objects",
        }),
        Kind::EndpointSlice => Err(ManifestError::KindNotAllowed {
            kind: "EndpointSlice".into(),
            reason: "the lab computes EndpointSlices from Services and ready pods",
        }),
        _ => Ok(object),
    }
}

/// Parses a whole lab file: the Lab document first, then objects; validates
/// the settings and the objects (names, duplicates, namespaces).
pub fn parse_lab(yaml: &str) -> Result<LabManifest, ManifestError> {
    let (spec, objects) = parse_manifest(yaml)?;
    let spec = spec.ok_or_else(|| ManifestError::FirstDocumentNotLab {
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
pub fn parse_manifest(yaml: &str) -> Result<(Option<LabSpec>, Vec<Object>), ManifestError> {
    let mut spec = None;
    let mut objects = Vec::new();
    for (n, (document, doc)) in parse_documents(yaml)?.into_iter().enumerate() {
        match doc {
            Document::Lab(s) if n == 0 => spec = Some(s),
            Document::Lab(_) => return Err(ManifestError::UnexpectedLab { document }),
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
pub fn parse_objects(yaml: &str) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for (document, doc) in parse_documents(yaml)? {
        match doc {
            Document::Lab(_) => return Err(ManifestError::UnexpectedLab { document }),
            Document::Object(o) => objects.push(*o),
        }
    }
    check_objects(&objects)?;
    Ok(objects)
}

/// Checks names and duplicates, without looking at namespaces.
fn check_objects(objects: &[Object]) -> Result<(), ManifestError> {
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
                    }
                    .into());
                }
            }
            _ => validate_subdomain(what, &name)?,
        }
        if kind.namespaced() {
            validate_label("namespace", &object.namespace())?;
        }
        check_contents(object)?;
        if !seen.insert((kind, object.namespace(), name.clone())) {
            return Err(ManifestError::DuplicateObject {
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
fn check_contents(object: &Object) -> Result<(), ManifestError> {
    let invalid = |message: String| -> ManifestError {
        ModelError::InvalidObject {
            kind: object.kind().name().into(),
            name: object.name(),
            message,
        }
        .into()
    };
    let check_pod_spec =
        |path: &str, spec: Option<&podwire_model::k8s_openapi::api::core::v1::PodSpec>| {
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
                if let Some(
                    podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
                        t,
                    ),
                ) = &p.target_port
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
) -> Result<(), ManifestError> {
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
            return Err(ManifestError::UndeclaredNamespace {
                kind: object.kind().name().into(),
                namespace,
                name: object.name(),
            });
        }
    }
    Ok(())
}

/// The built-in example manifest (`crates/lab/src/manifest/example-lab.yaml`).
pub fn builtin_example() -> &'static str {
    include_str!("example-lab.yaml")
}

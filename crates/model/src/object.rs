//! `Object` and `Kind`: the closed set of Kubernetes objects podwire handles,
//! with their identity (kind, namespace, name) and JSON form.

use k8s_openapi::Resource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    Deployment, EndpointSlice, Ingress, IngressClass, ModelError, Namespace, NetworkPolicy, Node,
    Pod, Secret, Service,
};

/// The kinds of [`Object`]; ordered so that sorting objects by kind puts
/// namespaces first and dependants later (the order a lab applies them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    Deployment,
    Ingress,
    Secret,
    IngressClass,
    NetworkPolicy,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 10] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Deployment,
        Kind::Ingress,
        Kind::Secret,
        Kind::IngressClass,
        Kind::NetworkPolicy,
    ];

    /// The lower-case plural resource name, as in API paths and the store's directories.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Deployment => "deployments",
            Kind::Ingress => "ingresses",
            Kind::Secret => "secrets",
            Kind::IngressClass => "ingressclasses",
            Kind::NetworkPolicy => "networkpolicies",
        }
    }

    /// The kind for an apiVersion/kind pair, or None for anything else.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// The kind for a resource name ("pods"), as the store's directories use.
    pub fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node | Kind::IngressClass)
    }

    /// The apiVersion objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::API_VERSION,
            Kind::Node => Node::API_VERSION,
            Kind::Pod => Pod::API_VERSION,
            Kind::Service => Service::API_VERSION,
            Kind::EndpointSlice => EndpointSlice::API_VERSION,
            Kind::Deployment => Deployment::API_VERSION,
            Kind::Ingress => Ingress::API_VERSION,
            Kind::Secret => Secret::API_VERSION,
            Kind::IngressClass => IngressClass::API_VERSION,
            Kind::NetworkPolicy => NetworkPolicy::API_VERSION,
        }
    }

    /// The kind's name as in `kind:` ("Pod").
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => Namespace::KIND,
            Kind::Node => Node::KIND,
            Kind::Pod => Pod::KIND,
            Kind::Service => Service::KIND,
            Kind::EndpointSlice => EndpointSlice::KIND,
            Kind::Deployment => Deployment::KIND,
            Kind::Ingress => Ingress::KIND,
            Kind::Secret => Secret::KIND,
            Kind::IngressClass => IngressClass::KIND,
            Kind::NetworkPolicy => NetworkPolicy::KIND,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Any object the lab and the components handle.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Deployment(Deployment),
    Ingress(Ingress),
    Secret(Secret),
    IngressClass(IngressClass),
    NetworkPolicy(NetworkPolicy),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Deployment(_) => Kind::Deployment,
            Object::Ingress(_) => Kind::Ingress,
            Object::Secret(_) => Kind::Secret,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Deployment(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
        }
    }

    /// The object's metadata, mutable (to default the namespace, set uids...).
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::EndpointSlice(o) => &mut o.metadata,
            Object::Deployment(o) => &mut o.metadata,
            Object::Ingress(o) => &mut o.metadata,
            Object::Secret(o) => &mut o.metadata,
            Object::IngressClass(o) => &mut o.metadata,
            Object::NetworkPolicy(o) => &mut o.metadata,
        }
    }

    /// "" for cluster-scoped kinds; "default" when a namespaced object has
    /// none, as kubectl does.
    pub fn namespace(&self) -> String {
        if !self.kind().namespaced() {
            return String::new();
        }
        match self.metadata().namespace.as_deref() {
            Some(ns) if !ns.is_empty() => ns.to_string(),
            _ => "default".to_string(),
        }
    }

    /// metadata.name ("" when missing; manifest validation rejects that).
    pub fn name(&self) -> String {
        self.metadata().name.clone().unwrap_or_default()
    }

    /// "Kind namespace/name" or "Kind name", for messages.
    pub fn describe(&self) -> String {
        let ns = self.namespace();
        if ns.is_empty() {
            format!("{} {}", self.kind(), self.name())
        } else {
            format!("{} {ns}/{}", self.kind(), self.name())
        }
    }

    /// The object as JSON, with apiVersion and kind set.
    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Object::Namespace(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Pod(o) => serde_json::to_value(o),
            Object::Service(o) => serde_json::to_value(o),
            Object::EndpointSlice(o) => serde_json::to_value(o),
            Object::Deployment(o) => serde_json::to_value(o),
            Object::Ingress(o) => serde_json::to_value(o),
            Object::Secret(o) => serde_json::to_value(o),
            Object::IngressClass(o) => serde_json::to_value(o),
            Object::NetworkPolicy(o) => serde_json::to_value(o),
        };
        // Serializing these plain data types cannot fail (no maps with
        // non-string keys, no custom serializers that error); keep a
        // fallback rather than a panic all the same.
        let mut value = value.unwrap_or_else(|err| {
            tracing::error!("cannot serialize {}: {err}", self.describe());
            serde_json::Value::Object(serde_json::Map::new())
        });
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), self.kind().api_version().into());
            map.insert("kind".into(), self.kind().name().into());
        }
        value
    }

    /// Parses any supported kind from JSON that carries apiVersion and kind.
    pub fn from_json(v: &serde_json::Value) -> Result<Object, ModelError> {
        let api_version = v
            .get("apiVersion")
            .and_then(|x| x.as_str())
            .unwrap_or_default();
        let kind_name = v.get("kind").and_then(|x| x.as_str()).unwrap_or_default();
        let kind =
            Kind::from_api(api_version, kind_name).ok_or_else(|| ModelError::UnknownKind {
                api_version: if api_version.is_empty() {
                    "(no apiVersion)".into()
                } else {
                    api_version.into()
                },
                kind: if kind_name.is_empty() {
                    "(no kind)".into()
                } else {
                    kind_name.into()
                },
            })?;
        let name = v
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or("(unnamed)")
            .to_string();
        let invalid = |err: serde_path_to_error::Error<serde_json::Error>| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            ModelError::InvalidObject {
                kind: kind.name().to_string(),
                name: name.clone(),
                // "." is what serde_path_to_error prints for the root.
                message: if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                },
            }
        };
        Ok(match kind {
            Kind::Namespace => Object::Namespace(parse(v).map_err(invalid)?),
            Kind::Node => Object::Node(parse(v).map_err(invalid)?),
            Kind::Pod => Object::Pod(parse(v).map_err(invalid)?),
            Kind::Service => Object::Service(parse(v).map_err(invalid)?),
            Kind::EndpointSlice => Object::EndpointSlice(parse(v).map_err(invalid)?),
            Kind::Deployment => Object::Deployment(parse(v).map_err(invalid)?),
            Kind::Ingress => Object::Ingress(parse(v).map_err(invalid)?),
            Kind::Secret => Object::Secret(parse(v).map_err(invalid)?),
            Kind::IngressClass => Object::IngressClass(parse(v).map_err(invalid)?),
            Kind::NetworkPolicy => Object::NetworkPolicy(parse(v).map_err(invalid)?),
        })
    }
}

/// Deserializes keeping the path of the failing field (`spec.containers[0].ports`).
fn parse<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
) -> Result<T, serde_path_to_error::Error<serde_json::Error>> {
    serde_path_to_error::deserialize(v)
}

macro_rules! from_impl {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Object { Object::$t(o) }
        }
    )*};
}
from_impl!(
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    Deployment,
    Ingress,
    Secret,
    IngressClass,
    NetworkPolicy
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_api(k.api_version(), k.name()), Some(k));
            assert_eq!(Kind::from_resource(k.resource()), Some(k));
        }
        assert_eq!(Kind::from_api("v1", "ConfigMap"), None);
        assert_eq!(Kind::from_api("apps/v1", "Pod"), None);
        assert!(!Kind::Node.namespaced());
        assert!(Kind::Secret.namespaced());
    }

    #[test]
    fn json_round_trip_and_namespace_default() {
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        let o = Object::from_json(&v).unwrap();
        assert_eq!(o.kind(), Kind::Pod);
        assert_eq!(o.namespace(), "default");
        assert_eq!(o.name(), "p");
        let back = o.to_json();
        assert_eq!(back["apiVersion"], "v1");
        assert_eq!(back["kind"], "Pod");
        let n = Object::from_json(
            &serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}}),
        )
        .unwrap();
        assert_eq!(n.namespace(), "");
    }

    #[test]
    fn unknown_kind_is_named() {
        let err = Object::from_json(&serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap"}))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ConfigMap") && msg.contains("apps/v1 Deployment"),
            "{msg}"
        );
    }

    #[test]
    fn schema_errors_name_the_object() {
        let err = Object::from_json(&serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": 3}})).unwrap_err();
        assert!(matches!(err, ModelError::InvalidObject { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("Pod p: spec.containers: invalid type"),
            "{err}"
        );
    }
}

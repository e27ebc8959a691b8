//! The manifest rules, one test per family of mistakes a user makes.

use std::collections::BTreeSet;

use podwire_model::{Kind, ModelError, Object, RoutingMode};

use super::*;
use crate::error::ManifestError;

const HEAD: &str = "apiVersion: podwire.io/v1alpha1\nkind: Lab\nmetadata: {name: t}\n";

fn lab(spec: &str) -> Result<LabManifest, ManifestError> {
    parse_lab(&format!("{HEAD}spec:\n{spec}"))
}

fn lab_with_objects(objects: &str) -> Result<LabManifest, ManifestError> {
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
    let no_meta = parse_lab(
        "apiVersion: podwire.io/v1alpha1\nkind: Lab\nspec: {nodes: [{name: a}], external: null}\n",
    )
    .unwrap();
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
    assert!(
        matches!(e, ManifestError::FirstDocumentNotLab { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("kind: Lab"));
    assert!(matches!(
        parse_lab(""),
        Err(ManifestError::FirstDocumentNotLab { .. })
    ));
    let two = format!("{HEAD}spec: {{nodes: [{{name: a}}]}}\n---\n{HEAD}");
    assert!(matches!(
        parse_lab(&two),
        Err(ManifestError::UnexpectedLab { document: 2 })
    ));
}

#[test]
fn unknown_kind_and_api_version() {
    let e = lab_with_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
    assert!(matches!(
        e,
        ManifestError::Model(ModelError::UnknownKind { .. })
    ));
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
            ManifestError::MissingTypeField {
                field: "apiVersion",
                ..
            }
        ),
        "{e}"
    );
    let e = parse_lab("apiVersion: podwire.io/v1\nkind: Lab\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::Model(ModelError::UnknownKind { .. })),
        "{e}"
    );
    let e = lab_with_objects("apiVersion: v1\nkind: Node\nmetadata: {name: x}\n").unwrap_err();
    assert!(matches!(e, ManifestError::KindNotAllowed { .. }), "{e}");
}

#[test]
fn invalid_yaml_and_fields() {
    let e = parse_lab("a: [").unwrap_err();
    assert!(matches!(e, ManifestError::Yaml { document: 1, .. }), "{e}");
    let e = lab("  podCIDR: 10.244.0.0/33\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(
        matches!(&e, ManifestError::InvalidField { path, .. } if path == "spec.podCIDR"),
        "{e}"
    );
    let e = lab("  serviceCIDR: banana\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(
        e.to_string().starts_with("spec.serviceCIDR: \"banana\""),
        "{e}"
    );
    let e =
        lab("  underlays: [{name: u, subnet: 10.0.0.0/40}]\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().starts_with("spec.underlays[0].subnet"), "{e}");
    let e = lab("  podCIDRs: 10.0.0.0/8\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().contains("podCIDRs"), "{e}");
    let e = lab("  routing: bgp\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().contains("bgp"), "{e}");
    let e = lab("  podCIDR: 10.244.1.0/16\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().contains("did you mean 10.244.0.0/16"), "{e}");
    let e = lab("  clusterDomain: Bad_Domain\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(
        matches!(&e, ManifestError::InvalidField { path, .. } if path == "spec.clusterDomain"),
        "{e}"
    );
}

#[test]
fn overlapping_ranges() {
    let e = lab("  podCIDR: 10.0.0.0/8\n  serviceCIDR: 10.96.0.0/12\n  nodes: [{name: a}]\n")
        .unwrap_err();
    assert!(matches!(e, ManifestError::Overlap { .. }), "{e}");
    assert!(e.to_string().contains("10.0.0.0/8") && e.to_string().contains("10.96.0.0/12"));
    let e = lab("  underlays: [{name: u1, subnet: 192.168.0.0/16}, {name: u2, subnet: 192.168.56.0/24}]\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(matches!(e, ManifestError::Overlap { .. }), "{e}");
    let e = lab("  underlays: [{name: u1, subnet: 10.244.5.0/24}]\n  nodes: [{name: a}]\n")
        .unwrap_err();
    assert!(e.to_string().contains("pod range"), "{e}");
    let e =
        lab("  underlays: [{name: u1, subnet: 10.96.5.0/24}]\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().contains("service range"), "{e}");
    let e = lab("  external: {name: ext, subnet: 192.168.56.0/25}\n  nodes: [{name: a}]\n")
        .unwrap_err();
    assert!(matches!(e, ManifestError::Overlap { .. }), "{e}");
}

#[test]
fn slice_prefix_must_fit() {
    let e = lab("  nodeSlicePrefix: 8\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::SlicePrefix { .. }) && e.to_string().contains("at least /16"),
        "{e}"
    );
    let e = lab("  nodeSlicePrefix: 31\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(e.to_string().contains("at most /30"), "{e}");
    let e = lab("  podCIDR: 10.244.0.0/24\n  nodeSlicePrefix: 25\n  nodes: [{name: a}, {name: b}, {name: c}]\n").unwrap_err();
    assert!(e.to_string().contains("2 slice(s) for 3 nodes"), "{e}");
    assert!(
        lab("  podCIDR: 10.244.0.0/24\n  nodeSlicePrefix: 25\n  nodes: [{name: a}, {name: b}]\n")
            .is_ok()
    );
}

#[test]
fn node_errors() {
    assert!(matches!(lab("  nodes: []\n"), Err(ManifestError::NoNodes)));
    assert!(matches!(
        lab("  routing: host-gw\n"),
        Err(ManifestError::NoNodes)
    ));
    let e = lab("  nodes: [{name: a}, {name: a}]\n").unwrap_err();
    assert!(
        matches!(&e, ManifestError::DuplicateNode { name } if name == "a"),
        "{e}"
    );
    let e = lab("  nodes: [{name: external}]\n").unwrap_err();
    assert!(matches!(e, ManifestError::DuplicateNode { .. }), "{e}");
    let e = lab("  nodes: [{name: a, underlay: net9}]\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::UnknownUnderlay { .. }) && e.to_string().contains("underlay"),
        "{e}"
    );
    let e = lab("  nodes: [{name: Node_1}]\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::Model(ModelError::InvalidName { .. })),
        "{e}"
    );
    let e = lab("  underlays: [{name: u, subnet: 192.168.56.0/28}]\n  nodes: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}]\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::SubnetTooSmall { count: 6, .. }),
        "{e}"
    );
    assert!(lab("  underlays: [{name: u, subnet: 192.168.56.0/28}]\n  nodes: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}]\n").is_ok());
    let e = lab("  underlays: [{name: u, subnet: 192.168.56.0/24}, {name: u, subnet: 192.168.57.0/24}]\n  nodes: [{name: a}]\n").unwrap_err();
    assert!(matches!(e, ManifestError::DuplicateUnderlay { .. }), "{e}");
    assert!(matches!(
        lab("  underlays: []\n  nodes: [{name: a}]\n"),
        Err(ManifestError::NoUnderlays)
    ));
}

#[test]
fn object_errors() {
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: apps}\n";
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec: {containers: [{name: c}]}\n";
    let e = lab_with_objects(&format!("{ns}---\n{pod}---\n{pod}")).unwrap_err();
    assert!(
        matches!(e, ManifestError::DuplicateObject { .. }) && e.to_string().contains("apps/p"),
        "{e}"
    );
    let e = lab_with_objects(pod).unwrap_err();
    assert!(
        matches!(&e, ManifestError::UndeclaredNamespace { namespace, .. } if namespace == "apps"),
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
    assert!(
        matches!(e, ManifestError::Model(ModelError::InvalidName { .. })),
        "{e}"
    );
    let e =
        lab_with_objects("apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\n").unwrap_err();
    assert!(
        matches!(e, ManifestError::Model(ModelError::InvalidName { .. })),
        "{e}"
    );
    let e =
        lab_with_objects("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 5}\n")
            .unwrap_err();
    assert!(
        matches!(e, ManifestError::Model(ModelError::InvalidObject { .. })),
        "{e}"
    );
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
        matches!(e, ManifestError::UnexpectedLab { document: 1 }),
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

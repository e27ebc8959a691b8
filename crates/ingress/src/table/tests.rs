//! Tests of the route table: the Kubernetes docs' path examples, hosts,
//! precedence, default backends, named ports and endpoint readiness.

use serde_json::json;

use super::*;
use podwire_model::EndpointSlice;

/// A Service `name` with ports http:80 and admin:9000, and a slice whose
/// endpoints are 10.0.<n>.1 (ready), 10.0.<n>.2 (not ready) with target
/// ports 8080 / 9090; `n` tells the Services apart.
fn service(state: &mut ClusterState, name: &str, n: u8) {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "admin", "port": 9000, "targetPort": 9090}
        ]}
    }))
    .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
        "endpoints": [
            {"addresses": [format!("10.0.{n}.1")], "conditions": {"ready": true}},
            {"addresses": [format!("10.0.{n}.2")], "conditions": {"ready": false}},
            {"addresses": [format!("10.0.{n}.3")]}
        ]
    }))
    .unwrap();
    state.services.insert(("default".into(), name.into()), svc);
    state
        .endpoint_slices
        .insert(("default".into(), format!("{name}-abc")), slice);
}

/// An Ingress of class podwire, or without a class when `spec` sets
/// `ingressClassName` to null.
fn ingress(state: &mut ClusterState, name: &str, created: &str, mut spec: serde_json::Value) {
    match spec.get("ingressClassName") {
        None => spec["ingressClassName"] = json!("podwire"),
        Some(serde_json::Value::Null) => {
            spec.as_object_mut().unwrap().remove("ingressClassName");
        }
        Some(_) => {}
    }
    let ing: Ingress = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": spec
    }))
    .unwrap();
    state.ingresses.insert(("default".into(), name.into()), ing);
}

fn path(p: &str, t: &str, svc: &str) -> serde_json::Value {
    json!({"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
}

/// A table of one Ingress with the given (path, type) rules for any host,
/// each routed to the Service named after its index (s0, s1, ...).
fn table_of(paths: &[(&str, &str)]) -> RouteTable {
    let mut state = ClusterState::default();
    let mut rules = Vec::new();
    for (i, (p, t)) in paths.iter().enumerate() {
        let name = format!("s{i}");
        service(&mut state, &name, i as u8);
        rules.push(path(p, t, &name));
    }
    ingress(
        &mut state,
        "ing",
        "2024-01-01T00:00:00Z",
        json!({"rules": [{"http": {"paths": rules}}]}),
    );
    RouteTable::compile(&state, &CompileOptions::default())
}

fn service_for(table: &RouteTable, host: &str, p: &str) -> Option<String> {
    table
        .route(host, p)
        .map(|r| r.backend.target.service.clone())
}

/// https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
#[test]
fn kubernetes_docs_path_examples() {
    // (rules, request, the index of the rule that matches or None)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<usize>);
    let cases: &[Case] = &[
        (&[("/", "Prefix")], "/", Some(0)),
        (&[("/", "Prefix")], "/anything/at/all", Some(0)),
        (&[("/foo", "Exact")], "/foo", Some(0)),
        (&[("/foo", "Exact")], "/bar", None),
        (&[("/foo", "Exact")], "/foo/", None),
        (&[("/foo/", "Exact")], "/foo", None),
        (&[("/foo", "Prefix")], "/foo", Some(0)),
        (&[("/foo", "Prefix")], "/foo/", Some(0)),
        (&[("/foo/", "Prefix")], "/foo", Some(0)),
        (&[("/foo/", "Prefix")], "/foo/", Some(0)),
        (&[("/aaa/bb", "Prefix")], "/aaa/bbb", None),
        (&[("/aaa/bbb", "Prefix")], "/aaa/bbb", Some(0)),
        (&[("/aaa/bbb/", "Prefix")], "/aaa/bbb", Some(0)),
        (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/", Some(0)),
        (&[("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", Some(0)),
        (&[("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
        (&[("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", Some(1)),
        (
            &[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")],
            "/aaa/bbb",
            Some(2),
        ),
        (
            &[("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")],
            "/ccc",
            Some(0),
        ),
        (&[("/aaa", "Prefix")], "/ccc", None),
        (&[("/foo", "Prefix"), ("/foo", "Exact")], "/foo", Some(1)),
        (&[("/foo", "Exact"), ("/foo", "Prefix")], "/foo", Some(0)),
        // Case-sensitive.
        (&[("/foo", "Exact")], "/FOO", None),
        (&[("/foo", "Prefix")], "/Foo/bar", None),
        // ImplementationSpecific is Prefix.
        (&[("/foo", "ImplementationSpecific")], "/foo/bar", Some(0)),
        (&[("/foo", "ImplementationSpecific")], "/foobar", None),
    ];
    for (rules, request, want) in cases {
        let table = table_of(rules);
        let got = service_for(&table, "any.example.com", request);
        assert_eq!(
            got,
            want.map(|i| format!("s{i}")),
            "rules {rules:?}, request {request}"
        );
    }
}

#[test]
fn hosts_exact_wildcard_and_any() {
    let mut state = ClusterState::default();
    for (i, s) in ["exact", "wild", "any"].iter().enumerate() {
        service(&mut state, s, i as u8);
    }
    ingress(
        &mut state,
        "ing",
        "2024-01-01T00:00:00Z",
        json!({"rules": [
            {"host": "foo.bar.com", "http": {"paths": [path("/", "Prefix", "exact")]}},
            {"host": "*.bar.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
            {"http": {"paths": [path("/api", "Prefix", "any")]}}
        ]}),
    );
    let t = RouteTable::compile(&state, &CompileOptions::default());
    let s = |h: &str, p: &str| service_for(&t, h, p);
    assert_eq!(s("foo.bar.com", "/"), Some("exact".into()));
    assert_eq!(s("FOO.bar.com:8080", "/x"), Some("exact".into()));
    assert_eq!(s("baz.bar.com", "/"), Some("wild".into()));
    // A wildcard matches exactly one label.
    assert_eq!(s("bar.com", "/"), None);
    assert_eq!(s("a.baz.bar.com", "/"), None);
    // Rules without a host match every host that has no rules of its own.
    assert_eq!(s("a.baz.bar.com", "/api/v1"), Some("any".into()));
    assert_eq!(s("10.0.0.1:80", "/api"), Some("any".into()));
    assert_eq!(s("other.com", "/"), None);
}

/// A host with rules is served by them alone (ingress-nginx's server block
/// per host): unmatched paths go to the default backend, not to the rules of
/// a wildcard or of any host.
#[test]
fn host_groups_do_not_fall_through() {
    let mut state = ClusterState::default();
    for (i, s) in ["exact", "wild", "any", "def"].iter().enumerate() {
        service(&mut state, s, i as u8);
    }
    ingress(
        &mut state,
        "ing",
        "2024-01-01T00:00:00Z",
        json!({"rules": [
            {"host": "foo.bar.com", "http": {"paths": [path("/foo", "Prefix", "exact")]}},
            {"host": "*.bar.com", "http": {"paths": [path("/wild", "Prefix", "wild")]}},
            {"http": {"paths": [path("/", "Prefix", "any")]}}
        ],
        "defaultBackend": {"service": {"name": "def", "port": {"number": 80}}}}),
    );
    let t = RouteTable::compile(&state, &CompileOptions::default());
    let s = |h: &str, p: &str| service_for(&t, h, p);
    assert_eq!(s("foo.bar.com", "/foo/x"), Some("exact".into()));
    assert_eq!(s("foo.bar.com", "/wild"), Some("def".into()));
    assert_eq!(s("foo.bar.com", "/"), Some("def".into()));
    assert_eq!(s("baz.bar.com", "/wild"), Some("wild".into()));
    assert_eq!(s("baz.bar.com", "/"), Some("def".into()));
    assert_eq!(s("elsewhere.org", "/anything"), Some("any".into()));
}

#[test]
fn oldest_ingress_wins_conflicts() {
    let mut state = ClusterState::default();
    service(&mut state, "old", 1);
    service(&mut state, "new", 2);
    let spec = |svc: &str| {
        json!({"rules": [{"host": "a.com", "http": {"paths": [path("/x", "Prefix", svc)]}}],
               "defaultBackend": {"service": {"name": svc, "port": {"number": 80}}}})
    };
    // "a-new" sorts first by name but is younger.
    ingress(&mut state, "a-new", "2024-06-01T00:00:00Z", spec("new"));
    ingress(&mut state, "b-old", "2024-01-01T00:00:00Z", spec("old"));
    let t = RouteTable::compile(&state, &CompileOptions::default());
    assert_eq!(service_for(&t, "a.com", "/x/y"), Some("old".into()));
    assert_eq!(service_for(&t, "z.com", "/"), Some("old".into()));
    assert!(t.notes.iter().any(|n| n.contains("default/a-new")));
}

#[test]
fn default_backends_and_fallback() {
    let mut state = ClusterState::default();
    service(&mut state, "web", 1);
    service(&mut state, "def", 2);
    service(&mut state, "fb", 3);
    ingress(
        &mut state,
        "ing",
        "2024-01-01T00:00:00Z",
        json!({"rules": [{"host": "a.com", "http": {"paths": [path("/web", "Exact", "web")]}}]}),
    );
    let fallback: BackendRef = "default/fb:http".parse().unwrap();
    let options = CompileOptions {
        fallback: Some(fallback),
        ..Default::default()
    };
    // No defaultBackend: the controller-wide fallback, and 404 without one.
    let t = RouteTable::compile(&state, &options);
    assert_eq!(
        t.backend("a.com", "/other")
            .map(|b| b.target.service.clone()),
        Some("fb".into())
    );
    let t = RouteTable::compile(&state, &CompileOptions::default());
    assert!(t.backend("a.com", "/other").is_none());
    // An Ingress's defaultBackend comes before the fallback.
    ingress(
        &mut state,
        "def",
        "2024-02-01T00:00:00Z",
        json!({"defaultBackend": {"service": {"name": "def", "port": {"name": "http"}}}}),
    );
    let t = RouteTable::compile(&state, &options);
    assert_eq!(
        t.backend("a.com", "/other")
            .map(|b| b.target.service.clone()),
        Some("def".into())
    );
    assert_eq!(
        t.backend("a.com", "/web").map(|b| b.target.service.clone()),
        Some("web".into())
    );
    assert!("fb:80".parse::<BackendRef>().is_err());
    assert!("ns/fb:0".parse::<BackendRef>().is_err());
}

#[test]
fn endpoints_ready_only_and_named_ports() {
    let mut state = ClusterState::default();
    service(&mut state, "web", 7);
    ingress(
        &mut state,
        "ing",
        "2024-01-01T00:00:00Z",
        json!({"rules": [{"http": {"paths": [
            path("/", "Prefix", "web"),
            {"path": "/admin", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"name": "admin"}}}},
            {"path": "/missing", "pathType": "Prefix",
             "backend": {"service": {"name": "nope", "port": {"number": 80}}}},
            {"path": "/badport", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 81}}}}
        ]}}]}),
    );
    let t = RouteTable::compile(&state, &CompileOptions::default());
    let eps = |p: &str| {
        t.backend("h", p)
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };
    // 10.0.7.2 is not ready; a missing condition counts as ready.
    assert_eq!(eps("/"), vec!["10.0.7.1:8080", "10.0.7.3:8080"]);
    assert_eq!(eps("/admin/x"), vec!["10.0.7.1:9090", "10.0.7.3:9090"]);
    assert!(eps("/missing").is_empty());
    assert!(eps("/badport").is_empty());
    let b = t.backend("h", "/").unwrap();
    let picks: Vec<_> = (0..4).map(|_| b.pick().unwrap().to_string()).collect();
    assert_eq!(picks[0], picks[2]);
    assert_ne!(picks[0], picks[1]);
    let plan = t.to_string();
    assert!(plan.contains("default/web:admin"), "{plan}");
    assert!(plan.contains("service not found"), "{plan}");
}

/// IngressClass objects: a class is ours by its controller; class-less
/// Ingresses only when one of our classes is the default.
#[test]
fn ingress_classes_and_the_default_annotation() {
    use podwire_model::IngressClass;
    let mut state = ClusterState::default();
    service(&mut state, "web", 1);
    let rules = |p: &str| json!([{"http": {"paths": [path(p, "Prefix", "web")]}}]);
    ingress(
        &mut state,
        "classless",
        "2024-01-01T00:00:00Z",
        json!({"ingressClassName": null, "rules": rules("/classless")}),
    );
    ingress(
        &mut state,
        "by-object",
        "2024-01-01T00:00:00Z",
        json!({"ingressClassName": "edge", "rules": rules("/edge")}),
    );
    ingress(
        &mut state,
        "legacy",
        "2024-01-01T00:00:00Z",
        json!({"ingressClassName": null, "rules": rules("/legacy")}),
    );
    state
        .ingresses
        .get_mut(&("default".into(), "legacy".into()))
        .unwrap()
        .metadata
        .annotations = Some(
        [(
            "kubernetes.io/ingress.class".to_string(),
            "edge".to_string(),
        )]
        .into(),
    );
    let class = |name: &str, controller: &str, default: Option<&str>| -> IngressClass {
        let mut v = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
        if let Some(d) = default {
            v["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: d});
        }
        serde_json::from_value(v).unwrap()
    };
    let routed = |state: &ClusterState| {
        let t = RouteTable::compile(state, &CompileOptions::default());
        ["/classless", "/edge", "/legacy"]
            .iter()
            .filter(|p| t.route("h", p).is_some())
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
    };
    // No IngressClass objects: only the configured name is ours, no default.
    assert!(routed(&state).is_empty());
    // "edge" is another controller's class.
    state.ingress_classes.insert(
        "edge".into(),
        class("edge", "k8s.io/ingress-nginx", Some("true")),
    );
    assert!(routed(&state).is_empty());
    // "edge" is ours (by controller) but not the default.
    state
        .ingress_classes
        .insert("edge".into(), class("edge", INGRESS_CLASS_CONTROLLER, None));
    assert_eq!(routed(&state), vec!["/edge", "/legacy"]);
    // Now the default: class-less Ingresses are ours too.
    state.ingress_classes.insert(
        "edge".into(),
        class("edge", INGRESS_CLASS_CONTROLLER, Some("true")),
    );
    assert_eq!(routed(&state), vec!["/classless", "/edge", "/legacy"]);
}

/// Hosts named in spec.tls redirect plain HTTP, unless their Ingress opts out.
#[test]
fn tls_hosts_redirect_unless_disabled() {
    let mut state = ClusterState::default();
    service(&mut state, "web", 1);
    ingress(
        &mut state,
        "secure",
        "2024-01-01T00:00:00Z",
        json!({"tls": [{"hosts": ["a.com", "*.w.com"], "secretName": "s"}],
        "rules": [
          {"host": "a.com", "http": {"paths": [path("/", "Prefix", "web")]}},
          {"host": "*.w.com", "http": {"paths": [path("/", "Prefix", "web")]}},
          {"host": "plain.com", "http": {"paths": [path("/", "Prefix", "web")]}}
        ]}),
    );
    ingress(
        &mut state,
        "optout",
        "2024-01-02T00:00:00Z",
        json!({"rules": [{"host": "a.com", "http": {"paths": [path("/api", "Prefix", "web")]}}]}),
    );
    state
        .ingresses
        .get_mut(&("default".into(), "optout".into()))
        .unwrap()
        .metadata
        .annotations = Some(
        [(
            "nginx.ingress.kubernetes.io/ssl-redirect".to_string(),
            "false".to_string(),
        )]
        .into(),
    );
    let t = RouteTable::compile(&state, &CompileOptions::default());
    let redirect = |h: &str, p: &str| t.route(h, p).unwrap().https_redirect;
    assert!(redirect("a.com", "/"));
    assert!(redirect("x.w.com", "/"));
    assert!(!redirect("plain.com", "/"));
    assert!(!redirect("a.com", "/api/v1"));
    assert_eq!(&*t.route("x.w.com", "/").unwrap().host, "*.w.com");
    assert!(t.to_string().contains("(http→308)"));
}

#[test]
fn only_our_class() {
    let mut state = ClusterState::default();
    service(&mut state, "web", 1);
    let mut spec = json!({"rules": [{"http": {"paths": [path("/", "Prefix", "web")]}}]});
    spec["ingressClassName"] = json!("nginx");
    ingress(&mut state, "theirs", "2024-01-01T00:00:00Z", spec.clone());
    let t = RouteTable::compile(&state, &CompileOptions::default());
    assert!(t.is_empty());
    spec["ingressClassName"] = json!("podwire");
    ingress(&mut state, "theirs", "2024-01-01T00:00:00Z", spec);
    let t = RouteTable::compile(&state, &CompileOptions::default());
    assert!(t.route("h", "/").is_some());
}

#[test]
fn annotations_make_regex_paths_and_unknown_ones_are_noted() {
    let mut state = ClusterState::default();
    service(&mut state, "web", 1);
    ingress(
        &mut state,
        "regex",
        "2024-01-01T00:00:00Z",
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [
            path("/v[0-9]+/items", "ImplementationSpecific", "web"),
            path("/static", "Exact", "web")
        ]}}]}),
    );
    let ing = state
        .ingresses
        .get_mut(&("default".into(), "regex".into()))
        .unwrap();
    ing.metadata.annotations = Some(
        [
            (
                "nginx.ingress.kubernetes.io/use-regex".to_string(),
                "true".to_string(),
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-body-size".to_string(),
                "8m".to_string(),
            ),
        ]
        .into(),
    );
    let table = RouteTable::compile(&state, &CompileOptions::default());
    assert!(table.route("a.example.com", "/v2/items/9").is_some());
    assert!(
        table.route("a.example.com", "/V12/ITEMS").is_some(),
        "case-insensitive"
    );
    assert!(table.route("a.example.com", "/vx/items").is_none());
    assert!(table.route("a.example.com", "/static").is_some());
    assert!(
        table
            .notes
            .iter()
            .any(|n| n.contains("proxy-body-size is not supported")),
        "{:?}",
        table.notes
    );
    let plan = table.to_string();
    assert!(plan.contains("[regex]"), "{plan}");
}

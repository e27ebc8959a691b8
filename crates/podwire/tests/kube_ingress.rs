//! `podwire ingress --source kube` against a real control plane, two
//! replicas under the podwire-ingress ServiceAccount of deploy/: both route
//! an Ingress created with kubectl, and exactly one (the Lease holder)
//! writes its status address.

mod kube_common;

use kube_common::{CONVERGE, Cluster, assert_not_forbidden, http_get, serve};
use podwire_testsupport::{Netns, eventually, poll};

fn objects(backend: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: apps}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: apps
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [{backend}], conditions: {{ready: true}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: apps
  annotations: {{nginx.ingress.kubernetes.io/proxy-body-size: 8m}}
spec:
  ingressClassName: podwire
  rules:
    - host: web.example.com
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{name: http}}}}}}}}
"#
    )
}

#[test]
fn two_replicas_route_and_one_leader_writes_the_status() {
    let c = Cluster::start();
    let backend = Netns::new("kbe");
    let backend_ip = c.cp.underlay_ip(40);
    c.cp.attach(&backend, "eth0", &format!("{backend_ip}/24"));
    let _web = serve(&c, &backend, 8080);
    c.apply(&objects(&backend_ip.to_string()));

    let kubeconfig = c.kubeconfig_for("ingress-podwire", "podwire-ingress");
    let replicas: Vec<(Netns, String)> = (1..=2u8)
        .map(|i| {
            let ns = Netns::new(&format!("king{i}"));
            let ip = c.cp.underlay_ip(40 + i);
            c.cp.attach(&ns, "eth0", &format!("{ip}/24"));
            (ns, ip.to_string())
        })
        .collect();
    let _procs: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, (ns, _))| {
            c.podwire(
                ns,
                &format!("ingress-{i}"),
                &[
                    "ingress",
                    "--source",
                    "kube",
                    "--kubeconfig",
                    &kubeconfig.display().to_string(),
                    "--listen",
                    "0.0.0.0:80",
                    "--metrics-listen",
                    "127.0.0.1:10254",
                    "--publish-service",
                    "ingress-podwire/podwire-ingress",
                    "--election-namespace",
                    "ingress-podwire",
                    "--identity",
                    &format!("replica-{i}"),
                ],
            )
        })
        .collect();

    // Both replicas route by Host to the backend.
    for (i, (ns, ip)) in replicas.iter().enumerate() {
        let body = poll(CONVERGE, || {
            http_get(ns, &format!("http://{ip}/"), Some("web.example.com"))
        });
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains(&format!("server={backend_ip}"))),
            "replica {i} did not route: {body:?}\n{}",
            c.log(&format!("ingress-{i}"))
        );
    }

    // The status shows the published Service's address...
    let published = c.kubectl(&[
        "get",
        "svc",
        "podwire-ingress",
        "-n",
        "ingress-podwire",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert!(
        eventually(CONVERGE, || c
            .kubectl(&["get", "ingress", "web", "-n", "apps"])
            .contains(published.trim())),
        "no ADDRESS: {}",
        c.kubectl(&["get", "ingress", "web", "-n", "apps"])
    );
    // ...written by exactly one replica, the Lease holder.
    let writers: Vec<usize> = (0..2)
        .filter(|i| {
            c.log(&format!("ingress-{i}"))
                .contains("status address written")
        })
        .collect();
    assert_eq!(writers.len(), 1, "writers: {writers:?}");
    let holder = c.kubectl(&[
        "get",
        "lease",
        "podwire-ingress-leader",
        "-n",
        "ingress-podwire",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder.trim(), format!("replica-{}", writers[0]));
    // An annotation podwire does not implement is reported, once, as an
    // Event on the Ingress.
    assert!(
        eventually(CONVERGE, || c
            .kubectl(&[
                "get",
                "events",
                "-n",
                "apps",
                "--field-selector",
                "reason=UnsupportedAnnotation"
            ])
            .contains("proxy-body-size")),
        "no Event: {}",
        c.kubectl(&["get", "events", "-n", "apps"])
    );
    for i in 0..2 {
        assert_not_forbidden(&c, &format!("ingress-{i}"));
    }
}

//! `podwire dns --source kube` against a real control plane, under the
//! podwire-dns ServiceAccount of deploy/: the DNS schema's records for
//! objects created with kubectl, and NXDOMAIN once they are gone.

mod kube_common;

use kube_common::{CONVERGE, Cluster, assert_not_forbidden, dig};
use podwire_testsupport::{Netns, eventually};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: apps}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: apps
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
  - addresses: [10.244.1.5]
    hostname: db-0
    conditions: {ready: true}
  - addresses: [10.244.2.6]
    conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: apps}
spec:
  type: ExternalName
  externalName: docs.example.org
"#;

#[test]
fn dns_answers_the_schema_for_objects_created_with_kubectl() {
    let c = Cluster::start();
    let ns = Netns::new("kdns");
    c.cp.attach(&ns, "eth0", &format!("{}/24", c.cp.underlay_ip(53)));
    let kubeconfig = c.kubeconfig_for("kube-system", "podwire-dns");
    let _dns = c.podwire(
        &ns,
        "dns",
        &[
            "dns",
            "--source",
            "kube",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--listen",
            "127.0.0.1:53",
            "--health-listen",
            "off",
            "--ready-listen",
            "127.0.0.1:8181",
            "--metrics-listen",
            "127.0.0.1:9153",
            "--resolv-conf",
            "/dev/null",
        ],
    );
    c.apply(OBJECTS);
    let web_ip = c.kubectl(&[
        "get",
        "svc",
        "web",
        "-n",
        "apps",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let q = |args: &[&str]| dig(&ns, "127.0.0.1", 53, args);

    // A: a ClusterIP Service.
    assert!(
        eventually(CONVERGE, || q(&["+short", "web.apps.svc.cluster.local"])
            .trim()
            == web_ip),
        "no A record for web: {}\n{}",
        q(&["web.apps.svc.cluster.local"]),
        c.log("dns")
    );
    // The kube-dns Service of deploy/ is there too.
    assert_eq!(
        q(&["+short", "kube-dns.kube-system.svc.cluster.local"]).trim(),
        "10.96.0.10"
    );
    // SRV for a named port, PTR for the ClusterIP.
    assert!(
        q(&["+short", "SRV", "_http._tcp.web.apps.svc.cluster.local"])
            .contains("80 web.apps.svc.cluster.local.")
    );
    assert_eq!(
        q(&["+short", "-x", &web_ip]).trim(),
        "web.apps.svc.cluster.local."
    );
    // Headless: the ready endpoints, the endpoint hostname, its SRV target.
    let headless = q(&["+short", "db.apps.svc.cluster.local"]);
    assert!(
        headless.contains("10.244.1.5") && headless.contains("10.244.2.6"),
        "{headless}"
    );
    assert_eq!(
        q(&["+short", "db-0.db.apps.svc.cluster.local"]).trim(),
        "10.244.1.5"
    );
    assert!(
        q(&["+short", "SRV", "_pg._tcp.db.apps.svc.cluster.local"])
            .contains("5432 db-0.db.apps.svc.cluster.local.")
    );
    // ExternalName: a CNAME.
    assert!(
        q(&["CNAME", "docs.apps.svc.cluster.local"]).contains("docs.example.org."),
        "{}",
        q(&["CNAME", "docs.apps.svc.cluster.local"])
    );
    // Deleted: NXDOMAIN.
    c.kubectl(&["delete", "svc", "web", "-n", "apps"]);
    assert!(
        eventually(CONVERGE, || q(&["web.apps.svc.cluster.local"])
            .contains("status: NXDOMAIN")),
        "{}",
        q(&["web.apps.svc.cluster.local"])
    );
    // Ready, and its metrics say the source is synced.
    let ready = ns.exec(&["curl", "-s", "http://127.0.0.1:8181/ready"]);
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "OK");
    let metrics = ns.exec(&["curl", "-s", "http://127.0.0.1:9153/metrics"]);
    assert!(String::from_utf8_lossy(&metrics.stdout).contains("podwire_dns_source_synced 1"));
    assert_not_forbidden(&c, "dns");
}

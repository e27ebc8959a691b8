//! Every component on the API survives a kube-apiserver restart: watches
//! resume (a relist when the server's history no longer reaches back),
//! nothing is reprogrammed wholesale, and what changed meanwhile is served.

mod kube_common;

use kube_common::{CONVERGE, Cluster, dig, http_get, serve};
use podwire_testsupport::{Netns, eventually, poll};

fn service(name: &str, backend: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [{backend}], conditions: {{ready: true}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}, namespace: default}}
spec:
  ingressClassName: podwire
  rules:
    - host: {name}.example.com
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}
"#
    )
}

#[test]
fn components_survive_an_api_server_restart() {
    let mut c = Cluster::start();
    let node = c.node("node-a", 11);
    let backend = Netns::new("krbe");
    let backend_ip = c.cp.underlay_ip(40);
    c.cp.attach(&backend, "eth0", &format!("{backend_ip}/24"));
    let _web = serve(&c, &backend, 8080);
    c.apply(&service("before", &backend_ip.to_string()));

    let agent_kc = c.kubeconfig_for("kube-system", "podwire-node");
    let dns_kc = c.kubeconfig_for("kube-system", "podwire-dns");
    let ingress_kc = c.kubeconfig_for("ingress-podwire", "podwire-ingress");
    let _agent = c.podwire(
        &node.ns,
        "agent",
        &[
            "agent",
            "--source=kube",
            "--kubeconfig",
            &agent_kc.display().to_string(),
            "--node=node-a",
            "--cluster-cidr=10.244.0.0/16",
            "--routing=host-gw",
        ],
    );
    let _dns = c.podwire(
        &node.ns,
        "dns",
        &[
            "dns",
            "--source=kube",
            "--kubeconfig",
            &dns_kc.display().to_string(),
            "--listen=127.0.0.1:5353",
            "--health-listen=off",
            "--ready-listen=off",
            "--metrics-listen=off",
            "--resolv-conf=/dev/null",
        ],
    );
    let _ingress = c.podwire(
        &node.ns,
        "ingress",
        &[
            "ingress",
            "--source=kube",
            "--kubeconfig",
            &ingress_kc.display().to_string(),
            "--listen=127.0.0.1:8000",
            "--metrics-listen=off",
        ],
    );
    let vip = |c: &Cluster, name: &str| {
        c.kubectl(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"])
    };
    let serving = |name: &str, vip: &str| {
        http_get(&node.ns, &format!("http://{vip}/"), None).is_some()
            && dig(
                &node.ns,
                "127.0.0.1",
                5353,
                &["+short", &format!("{name}.default.svc.cluster.local")],
            )
            .contains(vip)
            && http_get(
                &node.ns,
                "http://127.0.0.1:8000/",
                Some(&format!("{name}.example.com")),
            )
            .is_some()
    };
    let before = vip(&c, "before");
    assert!(
        eventually(CONVERGE, || serving("before", &before)),
        "not serving before the restart:\n{}\n{}\n{}",
        c.log("agent"),
        c.log("dns"),
        c.log("ingress")
    );
    let full_syncs = |c: &Cluster| c.log("agent").matches("full=true").count();
    let full_before = full_syncs(&c);

    c.cp.restart_apiserver();
    c.apply(&service("after", &backend_ip.to_string()));
    let after = vip(&c, "after");
    assert!(
        eventually(CONVERGE, || serving("after", &after)),
        "what changed meanwhile is not served:\n{}\n{}\n{}",
        c.log("agent"),
        c.log("dns"),
        c.log("ingress")
    );
    assert!(serving("before", &before), "lost what was there");
    // Watches resumed or relisted; the proxy sent only the difference.
    assert_eq!(
        full_syncs(&c),
        full_before,
        "a full reprogramming after the restart:\n{}",
        c.log("agent")
    );
    // The source said what happened and recovered.
    assert!(
        poll(CONVERGE, || c.log("agent").contains("again").then_some(())).is_some(),
        "{}",
        c.log("agent")
    );
}

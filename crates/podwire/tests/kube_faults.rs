//! Bad input in Kubernetes mode, each a clear log line and a status or
//! readiness that says so, with nothing already programmed torn down: an
//! unreachable API server, an expired token, a Node without a pod slice.
//! (A Service of an unknown type cannot be created through a real API
//! server; the proxy's and DNS's handling of one is unit-tested.)

mod kube_common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use kube_common::{CONVERGE, Cluster, status_file};
use podwire_testsupport::{ControlPlane, Netns, SERVICE_ACCOUNT_ISSUER, eventually, poll};

fn agent_args<'a>(kubeconfig: &'a str, node: &'a str, status: &'a str) -> Vec<&'a str> {
    vec![
        "agent",
        "--source=kube",
        "--kubeconfig",
        kubeconfig,
        "--node",
        node,
        "--cluster-cidr=10.244.0.0/16",
        "--routing=host-gw",
        "--status-file",
        status,
    ]
}

fn readyz(ns: &Netns) -> String {
    String::from_utf8_lossy(
        &ns.exec(&["curl", "-s", "http://127.0.0.1:10256/readyz"])
            .stdout,
    )
    .into_owned()
}

#[test]
fn an_unreachable_api_server_keeps_what_is_programmed_and_says_so() {
    let c = Cluster::start();
    let node = c.node("node-a", 11);
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  ports: [{port: 80}]\n",
    );
    let vip = c.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let kubeconfig = c.kubeconfig_for("kube-system", "podwire-node");
    let status = c.dir.join("agent.status").display().to_string();
    let kc = kubeconfig.display().to_string();
    let mut agent = c.podwire(&node.ns, "agent", &agent_args(&kc, "node-a", &status));
    let programmed = || {
        node.sh("nft list table inet podwire-proxy").contains(&vip)
            && node
                .sh("nft list table inet podwire-node")
                .contains("masquerade")
    };
    assert!(eventually(CONVERGE, programmed), "{}", c.log("agent"));
    agent.stop(std::time::Duration::from_secs(5));

    // The same agent pointed at a port nothing listens on.
    let wrong = std::fs::read_to_string(&kubeconfig)
        .expect("kubeconfig")
        .replace(":6443", ":6444");
    let wrong_path = c.dir.join("wrong-kubeconfig");
    std::fs::write(&wrong_path, wrong).expect("write");
    let wrong_kc = wrong_path.display().to_string();
    let _agent = c.podwire(
        &node.ns,
        "agent-wrong",
        &agent_args(&wrong_kc, "node-a", &status),
    );
    assert!(
        eventually(CONVERGE, || readyz(&node.ns)
            .contains("cannot reach the API server")),
        "readyz: {}\n{}",
        readyz(&node.ns),
        c.log("agent-wrong")
    );
    assert!(
        c.log("agent-wrong").contains(":6444"),
        "{}",
        c.log("agent-wrong")
    );
    let s = status_file(std::path::Path::new(&status)).expect("status");
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach the API server")),
        "{s}"
    );
    // Nothing was torn down: the Service still has its rules.
    assert!(
        node.sh("nft list table inet podwire-proxy").contains(&vip),
        "the proxy table lost {vip}"
    );
}

/// A ServiceAccount token signed with the control plane's own key, valid in
/// every way but its expiry (an hour ago).
fn expired_token(cp: &ControlPlane, namespace: &str, name: &str) -> String {
    let uid = cp.kubectl_ok(&[
        "get",
        "sa",
        name,
        "-n",
        namespace,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"alg":"ES256","typ":"JWT"}"#);
    let claims = serde_json::json!({
        "aud": [SERVICE_ACCOUNT_ISSUER],
        "iss": SERVICE_ACCOUNT_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now - 7200,
        "nbf": now - 7200,
        "exp": now - 3600,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid.trim()}},
    });
    let payload = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let pem = cp.service_account_key_pem();
    let der: Vec<u8> = {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("PEM body")
    };
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &der,
        &rng,
    )
    .expect("the service-account key is ECDSA P-256 PKCS#8");
    let signature = key.sign(&rng, signing_input.as_bytes()).expect("sign");
    format!("{signing_input}.{}", b64(signature.as_ref()))
}

#[test]
fn an_expired_token_is_named_and_dns_is_not_ready() {
    let c = Cluster::start();
    let ns = Netns::new("kexp");
    c.cp.attach(&ns, "eth0", &format!("{}/24", c.cp.underlay_ip(53)));
    let token = expired_token(&c.cp, "kube-system", "podwire-dns");
    let kubeconfig = c.cp.kubeconfig_for_token(&token, "expired");
    let _dns = c.podwire(
        &ns,
        "dns",
        &[
            "dns",
            "--source=kube",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--listen=127.0.0.1:5353",
            "--health-listen=off",
            "--ready-listen=127.0.0.1:8181",
            "--metrics-listen=off",
            "--resolv-conf=/dev/null",
        ],
    );
    let ready = || {
        let out = ns.exec(&[
            "curl",
            "-s",
            "-w",
            " %{http_code}",
            "http://127.0.0.1:8181/ready",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        eventually(CONVERGE, || ready().contains("401")),
        "ready: {}\n{}",
        ready(),
        c.log("dns")
    );
    assert!(ready().ends_with(" 503"), "{}", ready());
    assert!(
        c.log("dns")
            .contains("refused our credentials (401 Unauthorized)"),
        "{}",
        c.log("dns")
    );
    // The same account with a fresh token works.
    let fresh = c.kubeconfig_for("kube-system", "podwire-dns");
    drop(_dns);
    let _dns = c.podwire(
        &ns,
        "dns-fresh",
        &[
            "dns",
            "--source=kube",
            "--kubeconfig",
            &fresh.display().to_string(),
            "--listen=127.0.0.1:5353",
            "--health-listen=off",
            "--ready-listen=127.0.0.1:8181",
            "--metrics-listen=off",
            "--resolv-conf=/dev/null",
        ],
    );
    assert!(
        poll(CONVERGE, || ready().ends_with(" 200").then_some(())).is_some(),
        "{}",
        c.log("dns-fresh")
    );
}

#[test]
fn a_node_without_a_pod_slice_is_reported_until_it_gets_one() {
    // No controller manager: nobody hands out pod slices.
    let cp = ControlPlane::start();
    let c = Cluster {
        cp,
        dir: podwire_testsupport::TempDir::new("kube-test"),
    };
    c.apply_deploy();
    let node = c.node("node-a", 11);
    let kubeconfig = c.kubeconfig_for("kube-system", "podwire-node");
    let status = c.dir.join("agent.status").display().to_string();
    let kc = kubeconfig.display().to_string();
    let _agent = c.podwire(&node.ns, "agent", &agent_args(&kc, "node-a", &status));
    assert!(
        eventually(CONVERGE, || readyz(&node.ns).contains("no spec.podCIDR")),
        "readyz: {}\n{}",
        readyz(&node.ns),
        c.log("agent")
    );
    assert!(c.log("agent").contains("node-a has no spec.podCIDR"));
    let s = status_file(std::path::Path::new(&status)).expect("status");
    assert_eq!(s["ok"], false, "{s}");
    // Given one, the node is programmed and ready.
    c.kubectl(&[
        "patch",
        "node",
        "node-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"podCIDR":"10.244.7.0/24","podCIDRs":["10.244.7.0/24"]}}"#,
    ]);
    assert!(
        eventually(CONVERGE, || readyz(&node.ns).trim() == "ok"),
        "readyz: {}\n{}",
        readyz(&node.ns),
        c.log("agent")
    );
}

//! End-to-end tests of cluster DNS in a lab (issue 5, "Done when"): pods
//! resolve Services through the ordinary libc resolver (`getent hosts`,
//! `curl` by name) via the kube-dns Service at the service range's tenth
//! address, a Service created with `lab apply` answers as soon as apply
//! returns, and a deleted one stops answering. Each test brings up its own
//! lab and always runs `lab down` through the [`Lab`] guard. Needs root.
//!
//! Ignored until the lab runs `podwire dns` behind kube-dns and the service
//! proxy exists (the lab wiring is in crates/lab).

mod lab_common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use lab_common::*;

/// The addresses `getent hosts NAME` prints inside a pod (None when the
/// name does not resolve).
fn getent(lab: &Lab, namespace: &str, pod: &str, name: &str) -> Option<Vec<IpAddr>> {
    let run = lab.exec_pod(namespace, pod, &["getent", "hosts", name]);
    if !run.ok() {
        return None;
    }
    let ips: Vec<IpAddr> = run
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    (!ips.is_empty()).then_some(ips)
}

fn in_service_range(ip: &IpAddr) -> bool {
    // The example lab's serviceCIDR is 10.96.0.0/12.
    matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10 && (v4.octets()[1] & 0xF0) == 96)
}

const NEW_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: fresh-svc
  namespace: apps
spec:
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: 8080
";

#[test]
fn pods_resolve_services_through_libc_and_curl_by_name() {
    let lab = Lab::start("dns", None);
    // From another namespace: <svc>.<ns> through the search list.
    let ips = getent(&lab, "default", "client", "web-service.apps")
        .unwrap_or_else(|| panic!("web-service.apps does not resolve from default/client"));
    assert!(ips.iter().all(in_service_range), "a ClusterIP: {ips:?}");
    // The full name, the same answer.
    assert_eq!(
        getent(
            &lab,
            "default",
            "client",
            "web-service.apps.svc.cluster.local"
        ),
        Some(ips.clone())
    );
    // Inside the namespace: the bare name.
    let web = lab
        .pods()
        .into_iter()
        .find(|p| p.namespace == "apps" && p.name.starts_with("web-"))
        .expect("a web pod");
    assert_eq!(getent(&lab, "apps", &web.name, "web-service"), Some(ips));
    // The kube-dns Service itself has a name.
    let dns = getent(&lab, "default", "client", "kube-dns.kube-system").expect("kube-dns resolves");
    assert_eq!(dns, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
    // A wrong short name fails fast, as in a cluster: NXDOMAIN through the
    // whole search list and then from the outside world (the external
    // host's DNS is authoritative for it), never SERVFAIL or a timeout.
    let wrong = lab.exec_pod("default", "client", &["getent", "hosts", "nosuch"]);
    assert_eq!(wrong.code, Some(2), "getent's 'not found': {wrong:?}");
    assert!(
        wrong.elapsed < std::time::Duration::from_secs(4),
        "a wrong name must fail without a resolver timeout (5 s), took {:?}",
        wrong.elapsed
    );
    let dig = lab.exec_pod("default", "client", &["dig", "+search", "nosuch"]);
    assert!(dig.stdout.contains("status: NXDOMAIN"), "{}", dig.stdout);
    // curl by name reaches a web pod through the Service.
    let answer = lab.curl("default", "client", "http://web-service.apps/");
    assert!(
        answer
            .get("hostname")
            .is_some_and(|h| h.starts_with("web-")),
        "{answer:?}"
    );
}

#[test]
fn a_new_service_answers_once_apply_returns_and_a_deleted_one_stops() {
    let lab = Lab::start("dnsnew", None);
    assert_eq!(getent(&lab, "default", "client", "fresh-svc.apps"), None);

    lab.apply_text(NEW_SERVICE).expect_ok();
    let applied = Instant::now();
    // The very first lookup after apply returns must answer (the server
    // follows the store within ~20 ms; apply returns after the agents sync).
    let ips = getent(&lab, "default", "client", "fresh-svc.apps");
    let took = applied.elapsed();
    assert!(
        ips.as_ref()
            .is_some_and(|ips| ips.iter().all(in_service_range)),
        "fresh-svc.apps must resolve right after `lab apply` returns: {ips:?} ({took:?})"
    );
    eprintln!("fresh-svc.apps answered {took:?} after lab apply returned (including lab exec)");
    assert!(
        took < Duration::from_millis(100) + Duration::from_secs(2),
        "one lab exec of getent must not take {took:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fresh.yaml");
    std::fs::write(&file, NEW_SERVICE).expect("write manifest");
    lab.delete(&file).expect_ok();
    assert_eq!(
        getent(&lab, "default", "client", "fresh-svc.apps"),
        None,
        "a deleted Service must stop answering once `lab delete` returns"
    );
    // Others still answer.
    assert!(getent(&lab, "default", "client", "web-service.apps").is_some());
}

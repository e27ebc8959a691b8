//! The Kubernetes source against an API server that is not there: every
//! watcher backs off (no busy loop), the status says why, and the source
//! keeps the component informed through `next`.

use std::time::{Duration, Instant};

use podwire_model::{Interest, Kind, Source};
use podwire_source::{ClientSettings, ClusterSettings, Kube, KubeSource};

/// A kubeconfig naming a loopback port nothing listens on.
fn kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .expect("write kubeconfig");
    path
}

#[test]
fn an_unreachable_api_server_is_reported_and_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kube = Kube::connect(&ClientSettings {
        kubeconfig: Some(kubeconfig(dir.path())),
        api_server: None,
    })
    .expect("a client (nothing is sent yet)");
    let settings = ClusterSettings {
        cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
        ..ClusterSettings::default()
    };
    let mut source = KubeSource::start(&kube, Interest::new([Kind::Service, Kind::Node]), settings);
    let started = Instant::now();
    let mut errors = 0;
    while started.elapsed() < Duration::from_secs(3) {
        match source.next(Duration::from_millis(100)) {
            Err(e) => {
                errors += 1;
                let text = e.to_string();
                assert!(text.contains("cannot reach the API server"), "{text}");
            }
            Ok(Some(update)) => {
                assert!(
                    !update
                        .changes
                        .iter()
                        .any(|c| matches!(c, podwire_model::Change::Applied(_))),
                    "no objects without a server: {update:?}"
                );
            }
            Ok(None) => {}
        }
    }
    let status = source.status();
    assert!(!status.synced);
    let error = status.error.expect("the status says why");
    assert!(error.contains("127.0.0.1"), "{error}");
    // 3 s of 200 ms, 400 ms, 800 ms, 1.6 s backoff: at most 5 attempts per
    // watcher (a busy loop makes thousands).
    for (resource, n) in &status.restarts {
        assert!(*n <= 6, "{resource} restarted {n} times in 3 s");
    }
    assert!(errors >= 2, "errors reach the component: {errors}");
}

//! Where the real Kubernetes programs are: built once by `tools/k8s/build`
//! into a cache keyed by version, found again here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The variable that names the bin directory directly (skips the build
/// script, e.g. for a build kept elsewhere).
pub const K8S_BIN_ENV: &str = "PODWIRE_K8S_BIN";

/// The programs every control-plane test needs.
const PROGRAMS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// The directory holding kube-apiserver, kube-controller-manager,
/// kube-scheduler, kubectl, kube-proxy and etcd: `$PODWIRE_K8S_BIN` when
/// set, else what `<workspace>/tools/k8s/build` prints (it returns at once
/// when the build is cached). Panics with what to do when neither works:
/// tests that need the binaries fail loudly instead of skipping.
pub fn k8s_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(find_bin_dir).clone()
}

/// One program of [`k8s_bin_dir`] (panics when it is not there).
pub fn k8s_bin(name: &str) -> PathBuf {
    let path = k8s_bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run tools/k8s/build (or point {K8S_BIN_ENV} at a complete bin directory)",
        path.display()
    );
    path
}

/// The workspace root (this crate is `<root>/crates/testsupport`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testsupport sits two levels below the workspace root")
        .to_path_buf()
}

fn find_bin_dir() -> PathBuf {
    let dir = match std::env::var_os(K8S_BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => run_build_script(),
    };
    let missing: Vec<&str> = PROGRAMS
        .iter()
        .copied()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "the Kubernetes bin directory {} lacks {missing:?}: run tools/k8s/build \
         (or point {K8S_BIN_ENV} at a complete bin directory)",
        dir.display()
    );
    dir
}

fn run_build_script() -> PathBuf {
    let script = workspace_root().join("tools/k8s/build");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; run tools/k8s/build (it needs Go) or set {K8S_BIN_ENV}",
                script.display()
            )
        });
    let printed = String::from_utf8_lossy(&out.stdout);
    let dir = printed.lines().last().unwrap_or("").trim();
    assert!(
        out.status.success() && !dir.is_empty(),
        "{} failed ({}): run tools/k8s/build by hand to see why (it needs Go and the module \
         proxy), or set {K8S_BIN_ENV} to a directory with the Kubernetes programs",
        script.display(),
        out.status
    );
    PathBuf::from(dir)
}

//! Bad lab input (issue 3, "Done when"): an unknown kind, an invalid CIDR,
//! overlapping pod and service ranges, a slice size that does not fit, a
//! duplicate node name and a bad certificate request (issue 6) are each
//! refused with a clear error — non-zero exit, a message naming the
//! problem — before anything is created: no namespace, no state
//! directory, no process. A bad `lab apply` against a
//! running lab changes nothing. Manifests are in `tests/lab/bad-*.yaml`.

mod lab_common;

use std::path::Path;

use lab_common::*;

/// `lab up -f FILE` must fail with every one of `expected` in its error and
/// leave no trace of the lab.
fn refused(tag: &str, file: &str, expected: &[&str]) {
    let lab = Lab::new(tag);
    let up = lab.up(Some(&manifest(file)));
    assert!(
        up.code.is_some_and(|c| c != 0),
        "{file}: lab up must fail: {}",
        up.describe()
    );
    for word in expected {
        assert!(
            up.stderr.contains(word),
            "{file}: the error should mention {word:?}: {}",
            up.describe()
        );
    }
    // Only the "lab NAME: building FILE" line: no progress of any step.
    assert!(
        up.stdout.lines().all(|l| l.starts_with("lab ")),
        "{file}: nothing may be built before the input is checked: {}",
        up.describe()
    );
    lab.assert_gone();
}

#[test]
fn unknown_kind_is_refused() {
    refused(
        "in-kind",
        "bad-unknown-kind.yaml",
        &["unknown kind", "ConfigMap"],
    );
}

#[test]
fn invalid_cidr_is_refused() {
    refused(
        "in-cidr",
        "bad-invalid-cidr.yaml",
        &["spec.podCIDR", "10.244.0.0/33", "not a valid CIDR"],
    );
}

#[test]
fn overlapping_pod_and_service_ranges_are_refused() {
    refused(
        "in-overlap",
        "bad-overlapping-ranges.yaml",
        &["overlap", "10.100.0.0/16", "10.96.0.0/12"],
    );
}

#[test]
fn slices_too_small_for_the_nodes_are_refused() {
    refused(
        "in-slice",
        "bad-slice-too-many-nodes.yaml",
        &["nodeSlicePrefix", "/28", "10.244.0.0/26", "5 nodes"],
    );
}

#[test]
fn slices_larger_than_the_pod_range_are_refused() {
    refused(
        "in-slice2",
        "bad-slice-larger-than-range.yaml",
        &["nodeSlicePrefix", "/15", "10.244.0.0/16"],
    );
}

#[test]
fn duplicate_node_name_is_refused() {
    refused(
        "in-dup",
        "bad-duplicate-node.yaml",
        &["duplicate", "node02"],
    );
}

#[test]
fn certificate_for_a_host_that_is_no_dns_name_is_refused() {
    refused(
        "in-cert",
        "bad-certificate-host.yaml",
        &[
            "spec.certificates[0].hosts[1]",
            "Web_Example",
            "not a DNS name",
        ],
    );
}

#[test]
fn certificate_in_an_undeclared_namespace_is_refused() {
    refused(
        "in-certns",
        "bad-certificate-namespace.yaml",
        &["spec.certificates[0].namespace", "\"shop\" is not declared"],
    );
}

/// Every entry in `dir`, recursively, with file contents: a snapshot of a
/// lab's state directory.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = path.display().to_string();
            // Logs grow on their own; the socket is not a file.
            if name.ends_with(".log") || name.ends_with(".sock") {
                continue;
            }
            if path.is_dir() {
                out.push((name, Vec::new()));
                stack.push(path);
            } else {
                out.push((name, std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn apply_with_an_unknown_kind_changes_nothing() {
    let lab = Lab::start("in-apply", Some(&manifest("two-nodes.yaml")));
    let pods = lab.pods();
    let netns = lab.netns();
    let cluster = lab.dir().join("cluster");
    let nodes_dir = lab.dir().join("nodes");
    let state = (snapshot(&cluster), snapshot(&nodes_dir));

    let apply = lab.apply(&manifest("apply-unknown-kind.yaml"));
    assert!(
        apply.code.is_some_and(|c| c != 0),
        "lab apply must fail: {}",
        apply.describe()
    );
    assert!(
        apply.stderr.contains("ConfigMap"),
        "the error should name the unknown kind: {}",
        apply.describe()
    );
    assert_eq!(lab.pods(), pods, "lab get pods changed");
    assert_eq!(lab.netns(), netns, "the lab's namespaces changed");
    assert!(
        !lab.dir()
            .join("pods")
            .join("default")
            .join("extra")
            .exists(),
        "pod extra was started"
    );
    assert!(
        (snapshot(&cluster), snapshot(&nodes_dir)) == state,
        "the lab's cluster objects or IP allocations changed"
    );
    // And the lab still works.
    let web = lab.pod("default", "web");
    let answer = lab.curl("default", "client", &format!("http://{}:8080/", web.ip));
    assert_eq!(answer.get("hostname").map(String::as_str), Some("web"));
}

/// Found while writing these tests: the CLI prints every manifest error
/// twice (`error: manifest: X: X`), because the error's text already
/// contains its source and the CLI prints the source chain too.
#[test]
fn an_error_is_stated_once() {
    let lab = Lab::new("in-once");
    let up = lab.up(Some(&manifest("bad-invalid-cidr.yaml")));
    assert!(!up.ok());
    let needle = "\"10.244.0.0/33\" is not a valid CIDR";
    assert_eq!(
        up.stderr.matches(needle).count(),
        1,
        "the message should appear once: {}",
        up.describe()
    );
    lab.assert_gone();
}

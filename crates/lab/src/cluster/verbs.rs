//! The `lab` verbs on a lab with a real control plane: reads go to the API
//! through the real kubectl (get, logs, exec in a pod), a node is entered
//! through its init's namespaces (network, mount, PID, UTS), so what runs
//! there sees that node's files and processes only.

use std::os::unix::process::CommandExt;
use std::process::Command;

use podwire_model::{ClusterState, Object};

use crate::error::{LabError, Result};
use crate::paths::LabPaths;

use super::{lab_kubectl, node, user_kubeconfig};

/// Runs the real kubectl on the lab, in the foreground (its exit code).
pub fn kubectl(paths: &LabPaths, args: &[String]) -> Result<i32> {
    let k = lab_kubectl(paths)?;
    let status = Command::new(&k.program)
        .env("KUBECONFIG", user_kubeconfig(paths))
        .args(args)
        .status()
        .map_err(|e| LabError::io(format!("cannot run {}", k.program.display()), e))?;
    Ok(status.code().unwrap_or(1))
}

/// The kinds podwire reads, from the API, as one state (what the lab's
/// hints and `lab get -o` renderers take).
pub fn state(paths: &LabPaths) -> Result<ClusterState> {
    let all = lab_kubectl(paths)?.get_json(&[
        "nodes,namespaces,services,endpointslices,pods,deployments,ingresses,ingressclasses,networkpolicies",
        "-A",
    ])?;
    let mut state = ClusterState::default();
    for item in all["items"].as_array().into_iter().flatten() {
        if let Ok(object) = Object::from_json(item) {
            state.insert(object);
        }
    }
    Ok(state)
}

/// `lab exec POD -- CMD`: `kubectl exec`.
pub fn exec_pod(paths: &LabPaths, namespace: &str, pod: &str, argv: &[String]) -> Result<i32> {
    let mut args: Vec<String> = ["exec", "-n", namespace, pod, "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(argv.iter().cloned());
    kubectl(paths, &args)
}

/// `lab logs POD [-c C]`: `kubectl logs` (every container without -c).
pub fn logs(
    paths: &LabPaths,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<String> {
    let mut args = vec!["logs", "-n", namespace, pod];
    match container {
        Some(c) => args.extend(["-c", c]),
        None => args.push("--all-containers"),
    }
    lab_kubectl(paths)?.run(&args, None)
}

/// `lab exec --node NODE -- CMD`: inside the node's namespaces.
pub fn exec_node(paths: &LabPaths, name: &str, argv: &[String]) -> Result<i32> {
    let pid = node::init_pid(paths, name)?.to_string();
    let err = Command::new("nsenter")
        .args(["--target", &pid, "--net", "--mount", "--pid", "--uts", "--"])
        .args(argv)
        .exec();
    Err(LabError::io("cannot run nsenter", err))
}

//! The lab: a multi-node Kubernetes cluster network built from network
//! namespaces on one machine ("Kubernetes without Kubernetes"). Nodes, pods,
//! a switch, a router and an external host are namespaces; pods are created
//! through the CNI plugin exactly as a runtime does; every node runs the
//! podwire agent; one supervisor process per lab owns the long-running parts.
//! This file holds the `lab` verbs; each module's first lines say its part.

pub mod addons;
pub mod certs;
pub mod cluster;
pub mod control;
pub mod controllers;
pub mod controlplane;
pub mod error;
pub mod get;
pub mod graph;
pub mod health;
pub mod inspect;
pub mod kubelet;
pub mod manifest;
mod names;
pub mod netns;
pub mod nodes;
pub mod paths;
pub mod plan;
pub mod pods;
pub mod process;
pub mod reconcile;
pub mod record;
pub mod runtime;
pub mod spawn;
pub mod stamp;
pub mod supervisor;
pub mod teardown;
pub mod topology;
pub mod trace;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use cluster::ControlPlaneMode;
pub use error::{LabError, ManifestError, Result};
pub use manifest::{LabSpec, builtin_example};
use paths::{LabPaths, netns_path};
use spawn::Sandbox;

/// What VXLAN adds to every packet (outer Ethernet, IP, UDP and VXLAN
/// headers): pods on a VXLAN lab get the underlay's MTU minus this, as
/// Flannel sets it.
pub const VXLAN_OVERHEAD: u32 = 50;

/// `lab up`: validates the manifest before anything exists, starts the
/// supervisor in the background and streams its progress; returns when every
/// pod is running and reachable.
pub fn up(
    name: &str,
    manifest: &str,
    exe: &Path,
    control_plane: Option<ControlPlaneMode>,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    let paths = LabPaths::new(name)?;
    let parsed = manifest::parse_lab(manifest)?;
    parsed.spec.validate()?;
    plan::plan_lab(&parsed.spec)?;
    if paths.exists() || paths.dir.exists() {
        return Err(LabError::Exists(name.to_string()));
    }
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| LabError::io(format!("cannot create {}", paths.dir.display()), e))?;
    std::fs::write(paths.dir.join("manifest.yaml"), manifest)
        .map_err(|e| LabError::io("cannot save the manifest", e))?;
    record::save_record(&paths, &parsed.spec)?;
    let binaries = cluster::kubectl::find_binaries();
    let mode = match (control_plane, &binaries) {
        (Some(ControlPlaneMode::Kubernetes), None) => {
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Err(LabError::Invalid(
                "--control-plane kubernetes needs the Kubernetes programs: run tools/k8s/build (or set PODWIRE_K8S_BIN)".into(),
            ));
        }
        (Some(mode), _) => mode,
        (None, Some(_)) => ControlPlaneMode::Kubernetes,
        (None, None) => ControlPlaneMode::Files,
    };
    std::fs::write(paths.dir.join(cluster::MODE_FILE), mode.as_str())
        .map_err(|e| LabError::io("cannot record the lab's control plane", e))?;
    start_supervisor(&paths, exe)?;
    match control::request(&paths, "up", "", progress) {
        Ok(summary) => {
            let mut summary = summary.unwrap_or_default();
            if mode == ControlPlaneMode::Files {
                summary.push_str(if binaries.is_none() {
                    "\ncontrol plane: the embedded files store (the Kubernetes programs are not built; tools/k8s/build adds a real control plane and kubectl)"
                } else {
                    "\ncontrol plane: the embedded files store (--control-plane files)"
                });
            }
            Ok(summary)
        }
        Err(e) => {
            // A lab that failed half-way is removed whole.
            let _ = down(name);
            Err(e)
        }
    }
}

fn start_supervisor(paths: &LabPaths, exe: &Path) -> Result<()> {
    let log = std::fs::File::create(paths.supervisor_log())
        .map_err(|e| LabError::io("cannot create supervisor.log", e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| LabError::io("cannot duplicate supervisor.log", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["lab", "supervise", "--name", &paths.name])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: setsid is async-signal-safe; it detaches the supervisor from
    // the terminal so it outlives `lab up`.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| LabError::io("cannot start the lab supervisor", e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(paths.socket()).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(LabError::Failed(format!(
        "the lab supervisor did not start; see {}",
        paths.supervisor_log().display()
    )))
}

/// `lab down`: asks the supervisor to stop what it runs and remove
/// everything; when it does not answer, removes everything itself (from
/// the lab's records and the namespaces on the machine: processes are
/// found by namespace, so a dead supervisor changes nothing). Anything that
/// could not be removed is an error that names it.
pub fn down(name: &str) -> Result<String> {
    let paths = LabPaths::new(name)?;
    if !paths.dir.exists() && teardown::present_namespaces(&paths).is_empty() {
        return Err(LabError::NoSuchLab(name.to_string()));
    }
    // Read now: the supervisor removes the file with the state directory.
    let supervisor = supervisor_pid(&paths);
    let answered = control::down(&paths);
    let mut left = Vec::new();
    if let Some(pid) = supervisor
        && !ended(pid, &paths)
    {
        left.push(format!("process {pid} (the lab's supervisor)"));
    }
    // The supervisor's account stands: another pass could only peel what
    // it already tried (e.g. one of several mounts on a namespace file).
    left.extend(answered.unwrap_or_else(|_| teardown::teardown(&paths)));
    if left.is_empty() {
        Ok(format!("lab {name} removed"))
    } else {
        Err(LabError::Leftovers {
            lab: name.to_string(),
            left,
        })
    }
}

/// The supervisor's PID, if `supervisor.pid` names a live `lab supervise`
/// of this lab (never another process that reused the PID).
fn supervisor_pid(paths: &LabPaths) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(paths.supervisor_pid())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_supervisor(pid, paths).then_some(pid)
}

fn is_supervisor(pid: i32, paths: &LabPaths) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.contains(&b"supervise".as_slice())
        && args
            .windows(2)
            .any(|w| w[0] == b"--name" && w[1] == paths.name.as_bytes())
}

/// Waits a moment for the supervisor to exit after `down`, then kills it;
/// whether it is gone.
fn ended(pid: i32, paths: &LabPaths) -> bool {
    let gone = |pid| {
        // A zombie (the supervisor is not our child; init reaps it) is gone.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        matches!(state, None | Some("Z" | "X")) || !is_supervisor(pid, paths)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    std::thread::sleep(Duration::from_millis(100));
    gone(pid)
}

pub fn apply(name: &str, yaml: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let paths = existing(name)?;
    manifest::parse_manifest(yaml)?;
    control::request(&paths, "apply", yaml, progress).map(|_| ())
}

pub fn delete(name: &str, yaml: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let paths = existing(name)?;
    manifest::parse_manifest(yaml)?;
    control::request(&paths, "delete", yaml, progress).map(|_| ())
}

fn existing(name: &str) -> Result<LabPaths> {
    let paths = LabPaths::new(name)?;
    if !paths.exists() {
        return Err(LabError::NoSuchLab(name.to_string()));
    }
    Ok(paths)
}

/// The lab's cluster state as the components see it.
pub fn state(name: &str) -> Result<podwire_model::ClusterState> {
    let paths = existing(name)?;
    if ControlPlaneMode::of(&paths) == ControlPlaneMode::Kubernetes {
        return cluster::verbs::state(&paths);
    }
    Ok(podwire_model::Store::open(paths.cluster()).load()?)
}

/// `lab exec POD -- CMD`: runs inside the pod with its resolv.conf and hosts.
pub fn exec_pod(name: &str, namespace: &str, pod: &str, argv: &[String]) -> Result<i32> {
    let paths = existing(name)?;
    if ControlPlaneMode::of(&paths) == ControlPlaneMode::Kubernetes {
        return cluster::verbs::exec_pod(&paths, namespace, pod, argv);
    }
    let state = podwire_model::Store::open(paths.cluster()).load()?;
    let object = state
        .pods
        .get(&(namespace.to_string(), pod.to_string()))
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "pod {namespace}/{pod} not found in lab {name} (see `podwire lab get pods -A`)"
            ))
        })?;
    let hostname = object
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.to_string());
    runtime::exec_in(
        &runtime::pod_sandbox(&paths, namespace, pod, &hostname),
        argv,
    )
}

/// `lab exec --node NODE -- CMD`: runs inside a node (or the external host),
/// like `ssh node01`.
pub fn exec_node(name: &str, node: &str, argv: &[String]) -> Result<i32> {
    let paths = existing(name)?;
    let record = record::load_record(&paths)?;
    let kube = ControlPlaneMode::of(&paths) == ControlPlaneMode::Kubernetes;
    let ns = if record.spec.nodes.iter().any(|n| n.name == node) {
        if kube {
            return cluster::verbs::exec_node(&paths, node, argv);
        }
        paths.node_ns(node)
    } else if record
        .spec
        .external
        .as_ref()
        .is_some_and(|x| x.name == node)
    {
        paths.external_ns(node)
    } else if node == "router" {
        paths.router_ns()
    } else {
        let mut names: Vec<String> = record.spec.nodes.iter().map(|n| n.name.clone()).collect();
        names.extend(record.spec.external.iter().map(|x| x.name.clone()));
        names.push("router".into());
        return Err(LabError::Invalid(format!(
            "no node {node:?} in lab {name}: nodes are {}",
            names.join(", ")
        )));
    };
    runtime::exec_in(
        &Sandbox {
            netns: Some(netns_path(&ns)),
            hostname: Some(node.to_string()),
            binds: Vec::new(),
        },
        argv,
    )
}

/// `lab logs POD [-c CONTAINER]`: the output of the pod's containers (all
/// of them, in declaration order, without -c).
pub fn logs(name: &str, namespace: &str, pod: &str, container: Option<&str>) -> Result<String> {
    let paths = existing(name)?;
    if ControlPlaneMode::of(&paths) == ControlPlaneMode::Kubernetes {
        return cluster::verbs::logs(&paths, namespace, pod, container);
    }
    let state = podwire_model::Store::open(paths.cluster()).load()?;
    let object = state
        .pods
        .get(&(namespace.to_string(), pod.to_string()))
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "pod {namespace}/{pod} not found in lab {name} (see `podwire lab get pods -A`)"
            ))
        })?;
    let containers: Vec<String> = object
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let chosen: Vec<&String> = match container {
        None => containers.iter().collect(),
        Some(c) => match containers.iter().find(|n| n.as_str() == c) {
            Some(found) => vec![found],
            None => {
                return Err(LabError::Invalid(format!(
                    "container {c:?} is not in pod {namespace}/{pod}; its containers: {}",
                    containers.join(", ")
                )));
            }
        },
    };
    let dir = paths.pod_dir(namespace, pod);
    let mut out = String::new();
    for c in chosen {
        // A container that printed nothing yet may have no file.
        out.push_str(&std::fs::read_to_string(dir.join(format!("{c}.log"))).unwrap_or_default());
    }
    Ok(out)
}

/// `lab supervise`: the background process (started by `lab up`).
pub fn supervise(name: &str, exe: &Path) -> Result<()> {
    let paths = LabPaths::new(name)?;
    control::serve(paths, exe.to_path_buf())
}

/// Which control plane a lab runs.
pub fn mode(name: &str) -> Result<ControlPlaneMode> {
    Ok(ControlPlaneMode::of(&existing(name)?))
}

/// `lab kubectl -- ARGS`: the real kubectl on a lab with a real control
/// plane (its exit code).
pub fn kubectl(name: &str, args: &[String]) -> Result<i32> {
    let paths = existing(name)?;
    if ControlPlaneMode::of(&paths) != ControlPlaneMode::Kubernetes {
        return Err(LabError::Invalid(format!(
            "lab {name} runs the embedded files store, not a Kubernetes control plane: use `podwire lab get`, or `lab up --control-plane kubernetes` after tools/k8s/build"
        )));
    }
    cluster::verbs::kubectl(&paths, args)
}

/// `lab node-init SPEC`: a node's process 1 (started by the supervisor).
pub fn node_init(spec: &Path) -> Result<()> {
    cluster::nodeinit::run(spec)
}

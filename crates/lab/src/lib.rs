//! The lab: a multi-node Kubernetes cluster network built from network
//! namespaces on one machine ("Kubernetes without Kubernetes"). Nodes, pods,
//! a switch, a router and an external host are namespaces; pods are created
//! through the CNI plugin exactly as a runtime does; every node runs the
//! podwire agent; one supervisor process per lab owns the long-running parts.

pub mod certs;
pub mod controlplane;
pub mod error;
pub mod get;
pub mod netns;
pub mod paths;
pub mod runtime;
pub mod spawn;
pub mod supervisor;
pub mod topology;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use error::{LabError, Result};
use paths::{LabPaths, netns_path};
use spawn::Sandbox;

/// `lab up`: validates the manifest before anything exists, starts the
/// supervisor in the background and streams its progress; returns when every
/// pod is running and reachable.
pub fn up(
    name: &str,
    manifest: &str,
    exe: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<String> {
    let paths = LabPaths::new(name)?;
    let parsed = podwire_model::parse_lab(manifest)?;
    parsed.spec.validate()?;
    podwire_model::plan_lab(&parsed.spec)?;
    if paths.exists() || paths.dir.exists() {
        return Err(LabError::Exists(name.to_string()));
    }
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| LabError::io(format!("cannot create {}", paths.dir.display()), e))?;
    std::fs::write(paths.dir.join("manifest.yaml"), manifest)
        .map_err(|e| LabError::io("cannot save the manifest", e))?;
    supervisor::save_record(&paths, &parsed.spec)?;
    start_supervisor(&paths, exe)?;
    match supervisor::request(&paths, "up", "", progress) {
        Ok(summary) => Ok(summary.unwrap_or_default()),
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

/// `lab down`: asks the supervisor to remove everything; if it is gone,
/// removes everything from the lab's records.
pub fn down(name: &str) -> Result<String> {
    let paths = LabPaths::new(name)?;
    if !paths.dir.exists() {
        return Err(LabError::NoSuchLab(name.to_string()));
    }
    if supervisor::request(&paths, "down", "", &mut |_| {}).is_err() {
        if let Ok(pid) = std::fs::read_to_string(paths.supervisor_pid())
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("supervise") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        supervisor::teardown(&paths);
    }
    // Whatever happened above, nothing of the lab may remain.
    for ns in netns::recorded(&paths) {
        let _ = netns::delete(&paths, &ns);
    }
    let _ = std::fs::remove_dir_all(&paths.dir);
    Ok(format!("lab {name} removed"))
}

pub fn apply(name: &str, yaml: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let paths = existing(name)?;
    podwire_model::parse_manifest(yaml)?;
    supervisor::request(&paths, "apply", yaml, progress).map(|_| ())
}

pub fn delete(name: &str, yaml: &str, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let paths = existing(name)?;
    podwire_model::parse_manifest(yaml)?;
    supervisor::request(&paths, "delete", yaml, progress).map(|_| ())
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
    Ok(podwire_model::Store::open(paths.cluster()).load()?)
}

/// `lab exec POD -- CMD`: runs inside the pod with its resolv.conf and hosts.
pub fn exec_pod(name: &str, namespace: &str, pod: &str, argv: &[String]) -> Result<i32> {
    let paths = existing(name)?;
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
    let record = supervisor::load_record(&paths)?;
    let ns = if record.spec.nodes.iter().any(|n| n.name == node) {
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

/// `lab logs POD`: the output of the pod's containers.
pub fn logs(name: &str, namespace: &str, pod: &str, container: Option<&str>) -> Result<String> {
    let paths = existing(name)?;
    let dir = paths.pod_dir(namespace, pod);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|_| LabError::Invalid(format!("pod {namespace}/{pod} not found in lab {name}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("log"))
        .filter(|p| container.is_none_or(|c| p.file_stem().and_then(|s| s.to_str()) == Some(c)))
        .collect();
    files.sort();
    let mut out = String::new();
    for file in files {
        out.push_str(&std::fs::read_to_string(&file).unwrap_or_default());
    }
    Ok(out)
}

/// `lab supervise`: the background process (started by `lab up`).
pub fn supervise(name: &str, exe: &Path) -> Result<()> {
    let paths = LabPaths::new(name)?;
    supervisor::serve(paths, exe.to_path_buf())
}

//! The pod lifecycle, as kubelet and a container runtime carry it out: a
//! pod's sandbox and network through the CNI runtime, its containers as
//! processes (restarted per restartPolicy), its status, waiting until it is
//! ready (ports answer, httpGet readiness probes pass), and its teardown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use podwire_model::k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodIP,
    PodStatus,
};
use podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podwire_model::{ClusterConfig, ClusterState};

use crate::error::{LabError, Result};
use crate::paths::LabPaths;
use crate::process::Proc;
use crate::runtime::{self, pod_key};
use crate::stamp::{now, random_uid};

/// How long a pod's ports and readiness probes may take to answer.
const READY_WAIT: Duration = Duration::from_secs(10);

/// (namespace, pod, container).
type ContainerKey = (String, String, String);

/// Every container process of the lab's pods.
pub struct Pods {
    paths: LabPaths,
    exe: PathBuf,
    containers: BTreeMap<ContainerKey, Proc>,
}

/// The sandbox's container ID: the pod's UID, as CRI runtimes use one ID
/// per sandbox.
fn container_id(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Pods {
    pub fn new(paths: LabPaths, exe: PathBuf) -> Pods {
        Pods {
            paths,
            exe,
            containers: BTreeMap::new(),
        }
    }

    /// Runs a scheduled pod on its node (`host_ip`): sandbox, network,
    /// containers; returns the pod with its UID and Running status. On
    /// failure nothing of it is left.
    pub fn create(&mut self, mut pod: Pod, host_ip: IpAddr, config: &ClusterConfig) -> Result<Pod> {
        let (namespace, name) = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| LabError::Failed(format!("pod {namespace}/{name} was not scheduled")))?;
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(random_uid());
        }
        pod.metadata.creation_timestamp = Some(now());
        let ips = runtime::create_sandbox(&self.paths, config, &pod, &node, &container_id(&pod))?;
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let mut statuses = Vec::new();
        for container in &containers {
            match runtime::start_container(&self.paths, &self.exe, &pod, container) {
                Ok(child) => {
                    self.containers.insert(
                        (namespace.clone(), name.clone(), container.name.clone()),
                        Proc::new(child, &policy),
                    );
                }
                Err(e) => {
                    self.stop(&namespace, &name);
                    let _ = runtime::destroy_sandbox(&self.paths, &pod, &node, &container_id(&pod));
                    return Err(e);
                }
            }
            statuses.push(running_status(container));
        }
        let condition = |kind: &str| PodCondition {
            type_: kind.into(),
            status: "True".into(),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(host_ip.to_string()),
            pod_ip: ips.first().map(|ip| ip.to_string()),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
            start_time: Some(now()),
            conditions: Some(vec![
                condition("PodScheduled"),
                condition("Initialized"),
                condition("ContainersReady"),
                condition("Ready"),
            ]),
            container_statuses: Some(statuses),
            ..Default::default()
        });
        Ok(pod)
    }

    /// Stops a pod's containers and tears its sandbox and network down.
    pub fn delete(&mut self, pod: &Pod) -> Result<()> {
        let (namespace, name) = pod_key(pod);
        self.stop(&namespace, &name);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        runtime::destroy_sandbox(&self.paths, pod, &node, &container_id(pod))
    }

    fn stop(&mut self, namespace: &str, pod: &str) {
        let keys: Vec<_> = self
            .containers
            .keys()
            .filter(|(ns, p, _)| ns == namespace && p == pod)
            .cloned()
            .collect();
        for k in keys {
            if let Some(proc) = self.containers.remove(&k) {
                proc.stop();
            }
        }
    }

    /// A pod is ready when every declared container port answers from its
    /// node and every httpGet readiness probe passes, as kubelet runs them
    /// (e.g. the ingress controller's /healthz, 200 once its routes are
    /// loaded).
    pub fn wait_ready(&self, pod: &Pod) -> Result<()> {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            return Ok(());
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(());
        };
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return Ok(());
        };
        let node_ns = self.paths.node_ns(&node);
        for container in pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
        {
            for port in ready_ports(&container) {
                runtime::wait_reachable(&node_ns, SocketAddr::new(ip, port), READY_WAIT)?;
            }
            if let Some((port, path)) = readiness_probe(pod, &container)? {
                runtime::wait_http_ready(&node_ns, SocketAddr::new(ip, port), &path, READY_WAIT)?;
            }
        }
        Ok(())
    }

    /// Starts again every container that ended and whose pod's
    /// restartPolicy wants it back.
    pub fn reap(&mut self, state: &ClusterState) {
        let ended: Vec<ContainerKey> = self
            .containers
            .iter_mut()
            .filter_map(|(k, proc)| proc.wants_restart().then(|| k.clone()))
            .collect();
        for (ns, pod, container) in ended {
            let Some(p) = state.pods.get(&(ns.clone(), pod.clone())) else {
                continue;
            };
            let Some(spec) = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == container))
            else {
                continue;
            };
            if let Ok(child) = runtime::start_container(&self.paths, &self.exe, p, spec)
                && let Some(proc) = self.containers.get_mut(&(ns, pod, container))
            {
                proc.restarted(child);
            }
        }
    }

    /// Kills every container.
    pub fn stop_all(&mut self) {
        for (_, proc) in std::mem::take(&mut self.containers) {
            proc.stop();
        }
    }
}

fn running_status(container: &Container) -> ContainerStatus {
    ContainerStatus {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        image_id: String::new(),
        ready: true,
        restart_count: 0,
        started: Some(true),
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(now()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The TCP ports that must answer before a container counts as ready: its
/// declared ones, or the built-in server's 8080 when it runs no command.
fn ready_ports(container: &Container) -> Vec<u16> {
    let ports: Vec<i32> = match (&container.command, &container.ports) {
        (_, Some(ports)) => ports
            .iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| p.container_port)
            .collect(),
        (None, None) => vec![8080],
        (Some(_), None) => Vec::new(),
    };
    ports
        .into_iter()
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

/// The port and path of a container's httpGet readiness probe, if it has
/// one; a port name must be one of the container's ports.
fn readiness_probe(pod: &Pod, container: &Container) -> Result<Option<(u16, String)>> {
    let Some(get) = container
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
    else {
        return Ok(None);
    };
    let port = match &get.port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    };
    let port = port.and_then(|p| u16::try_from(p).ok()).ok_or_else(|| {
        LabError::Invalid(format!(
            "container {} of pod {}: readinessProbe.httpGet.port {:?} is not one of its ports",
            container.name,
            pod.metadata.name.clone().unwrap_or_default(),
            get.port
        ))
    })?;
    Ok(Some((port, get.path.clone().unwrap_or_else(|| "/".into()))))
}

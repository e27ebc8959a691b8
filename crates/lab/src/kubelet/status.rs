//! A pod's status computed from what the kubelet knows about it (pure):
//! phase by kubelet's rules, addresses, conditions with stable transition
//! times, and one ContainerStatus per container. The pod worker gathers
//! the facts ([`PodView`]); this module never does I/O, so every rule is
//! unit-tested.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// Completed, Error, or ContainerStatusUnknown.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
    pub container_id: Option<String>,
}

impl Termination {
    /// The reason kubelet gives an exit code.
    pub fn reason_for(exit_code: i32) -> &'static str {
        if exit_code == 0 { "Completed" } else { "Error" }
    }
}

/// A container's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Termination),
}

/// What the kubelet knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub container_id: Option<String>,
    pub state: RunState,
    pub last_termination: Option<Termination>,
    pub restart_count: i32,
    /// The readiness probe's verdict (true without a probe once running).
    pub ready: bool,
    /// Running and past its startup probe.
    pub started: bool,
    /// An init container with restartPolicy Always (a sidecar).
    pub sidecar: bool,
}

/// What the kubelet knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodView {
    pub host_ips: Vec<IpAddr>,
    pub pod_ips: Vec<IpAddr>,
    pub start_time: Option<Timestamp>,
    /// The sandbox exists with its network (PodReadyToStartContainers).
    pub sandbox_ready: bool,
    pub init_containers: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    /// The kubelet is stopping the pod for good (deletion): once nothing
    /// runs, the phase is terminal whatever the restartPolicy.
    pub stopping: bool,
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: t.started_at.map(time),
        finished_at: Some(time(t.finished_at)),
        container_id: t.container_id.clone(),
    }
}

/// The API form of one container's state.
pub fn container_status(c: &ContainerView) -> ContainerStatus {
    let state = match &c.state {
        RunState::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunState::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    };
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: c.container_id.clone(),
        ready: c.ready,
        started: Some(c.started),
        restart_count: c.restart_count,
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: c.last_termination.as_ref().map(terminated),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's phase by kubelet's rules.
pub fn phase(restart_policy: Option<&str>, view: &PodView) -> &'static str {
    let policy = restart_policy.unwrap_or("Always");
    // Init containers run to completion first; a failed one under Never
    // fails the pod.
    for c in view.init_containers.iter().filter(|c| !c.sidecar) {
        match &c.state {
            RunState::Terminated(t) if t.exit_code == 0 => {}
            RunState::Terminated(_) if policy == "Never" => return "Failed",
            _ => return "Pending",
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in &view.containers {
        match &c.state {
            RunState::Running { .. } => running += 1,
            RunState::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            // Waiting after having run (a crash loop) counts as stopped.
            RunState::Waiting { .. } if c.last_termination.is_some() => stopped += 1,
            RunState::Waiting { .. } => waiting += 1,
        }
    }
    if view.stopping && running == 0 {
        if stopped > 0 && stopped == succeeded && waiting == 0 {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if view.containers.is_empty() || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<String>,
    message: Option<String>,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(time(now));
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason },
        message: if ok { None } else { message },
        last_transition_time: Some(since),
        ..Default::default()
    }
}

fn names(list: &[&ContainerView]) -> String {
    let names: Vec<&str> = list.iter().map(|c| c.name.as_str()).collect();
    format!("[{}]", names.join(" "))
}

/// The whole status the kubelet writes for `pod`. `previous` is the last
/// status written (or the API's), for transition times and a terminal
/// phase, which never changes again.
pub fn pod_status(
    pod: &Pod,
    view: &PodView,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let spec = pod.spec.as_ref();
    let policy = spec.and_then(|s| s.restart_policy.as_deref());
    let old_phase = previous.and_then(|p| p.phase.as_deref());
    let phase = match old_phase {
        Some(p @ ("Succeeded" | "Failed")) => p,
        _ => phase(policy, view),
    };
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let uninitialized: Vec<&ContainerView> = view
        .init_containers
        .iter()
        .filter(|c| match &c.state {
            RunState::Terminated(t) => t.exit_code != 0,
            _ if c.sidecar => !c.started,
            _ => true,
        })
        .collect();
    let unready: Vec<&ContainerView> = view.containers.iter().filter(|c| !c.ready).collect();
    let (reason, message) = if terminal {
        ("PodCompleted".to_string(), None)
    } else {
        (
            "ContainersNotReady".to_string(),
            Some(format!(
                "containers with unready status: {}",
                names(&unready)
            )),
        )
    };
    let containers_ready = !terminal && unready.is_empty();
    // Readiness gates: conditions others set on the pod must be True too.
    let gates_open = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .map(|gates| {
            gates.iter().all(|g| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == g.condition_type && c.status == "True")
                    })
            })
        })
        .unwrap_or(true);
    let (ready_reason, ready_message) = if containers_ready && !gates_open {
        (
            "ReadinessGatesNotReady".to_string(),
            Some("the pod's readiness gates are not all True".to_string()),
        )
    } else {
        (reason.clone(), message.clone())
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            view.sandbox_ready,
            None,
            None,
            previous,
            now,
        ),
        condition(
            "Initialized",
            uninitialized.is_empty(),
            Some("ContainersNotInitialized".into()),
            Some(format!(
                "containers with incomplete status: {}",
                names(&uninitialized)
            )),
            previous,
            now,
        ),
        condition(
            "Ready",
            containers_ready && gates_open,
            Some(ready_reason),
            ready_message,
            previous,
            now,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            Some(reason),
            message,
            previous,
            now,
        ),
        condition("PodScheduled", true, None, None, previous, now),
    ];
    PodStatus {
        phase: Some(phase.to_string()),
        host_ip: view.host_ips.first().map(IpAddr::to_string),
        host_ips: Some(
            view.host_ips
                .iter()
                .map(|ip| HostIP { ip: ip.to_string() })
                .collect(),
        ),
        pod_ip: view.pod_ips.first().map(IpAddr::to_string),
        pod_ips: Some(
            view.pod_ips
                .iter()
                .map(|ip| PodIP { ip: ip.to_string() })
                .collect(),
        ),
        start_time: view.start_time.map(time),
        conditions: Some(conditions),
        init_container_statuses: (!view.init_containers.is_empty())
            .then(|| view.init_containers.iter().map(container_status).collect()),
        container_statuses: Some(view.containers.iter().map(container_status).collect()),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;

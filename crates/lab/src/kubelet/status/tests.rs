//! Unit tests of the pod-status rules.

use super::*;
use k8s_openapi::api::core::v1::PodSpec;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn running(name: &str, ready: bool) -> ContainerView {
    ContainerView {
        name: name.into(),
        image: "x".into(),
        container_id: Some("podwire://abc".into()),
        state: RunState::Running { started_at: at(0) },
        last_termination: None,
        restart_count: 0,
        ready,
        started: true,
        sidecar: false,
    }
}

fn ended(name: &str, code: i32) -> ContainerView {
    let t = Termination {
        exit_code: code,
        signal: None,
        reason: Termination::reason_for(code).into(),
        message: None,
        started_at: Some(at(0)),
        finished_at: at(1),
        container_id: None,
    };
    ContainerView {
        state: RunState::Terminated(t),
        ready: false,
        started: false,
        ..running(name, false)
    }
}

fn crash_looping(name: &str) -> ContainerView {
    let mut c = ended(name, 1);
    let RunState::Terminated(t) = c.state.clone() else {
        unreachable!()
    };
    c.last_termination = Some(t);
    c.restart_count = 3;
    c.state = RunState::Waiting {
        reason: "CrashLoopBackOff".into(),
        message: Some("back-off 40s".into()),
    };
    c
}

fn pod(policy: &str) -> Pod {
    Pod {
        spec: Some(PodSpec {
            restart_policy: Some(policy.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn view(containers: Vec<ContainerView>) -> PodView {
    PodView {
        host_ips: vec!["192.168.1.10".parse().unwrap()],
        pod_ips: vec!["10.244.1.5".parse().unwrap()],
        start_time: Some(at(0)),
        sandbox_ready: true,
        init_containers: Vec::new(),
        containers,
        stopping: false,
    }
}

fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
    s.conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == kind)
        .unwrap()
}

#[test]
fn phases_follow_kubelet() {
    let creating = ContainerView {
        state: RunState::Waiting {
            reason: "ContainerCreating".into(),
            message: None,
        },
        ..running("a", false)
    };
    assert_eq!(phase(None, &view(vec![creating])), "Pending");
    assert_eq!(phase(None, &view(vec![running("a", true)])), "Running");
    assert_eq!(
        phase(Some("Always"), &view(vec![crash_looping("a")])),
        "Running"
    );
    assert_eq!(
        phase(Some("Never"), &view(vec![ended("a", 0)])),
        "Succeeded"
    );
    assert_eq!(
        phase(Some("OnFailure"), &view(vec![ended("a", 0)])),
        "Succeeded"
    );
    assert_eq!(
        phase(Some("Never"), &view(vec![ended("a", 0), ended("b", 2)])),
        "Failed"
    );
    assert_eq!(
        phase(Some("OnFailure"), &view(vec![ended("a", 2)])),
        "Running"
    );
    assert_eq!(phase(Some("Always"), &view(vec![ended("a", 0)])), "Running");
    // A deleted pod ends terminal whatever its policy.
    let mut stopped = view(vec![ended("a", 143)]);
    stopped.stopping = true;
    assert_eq!(phase(Some("Always"), &stopped), "Failed");
    stopped.containers = vec![ended("a", 0)];
    assert_eq!(phase(Some("Always"), &stopped), "Succeeded");
}

#[test]
fn init_containers_gate_the_pod() {
    let mut v = view(vec![ContainerView {
        state: RunState::Waiting {
            reason: "PodInitializing".into(),
            message: None,
        },
        ..running("main", false)
    }]);
    v.init_containers = vec![running("init", false)];
    assert_eq!(phase(None, &v), "Pending");
    let s = pod_status(&pod("Always"), &v, None, at(5));
    let init = cond(&s, "Initialized");
    assert_eq!(init.status, "False");
    assert_eq!(
        init.message.as_deref(),
        Some("containers with incomplete status: [init]")
    );
    v.init_containers = vec![ended("init", 1)];
    assert_eq!(phase(Some("Never"), &v), "Failed");
    v.init_containers = vec![ended("init", 0)];
    v.containers = vec![running("main", true)];
    let s = pod_status(&pod("Always"), &v, None, at(5));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(cond(&s, "Initialized").status, "True");
    assert_eq!(s.init_container_statuses.as_ref().unwrap().len(), 1);
}

#[test]
fn readiness_and_transition_times() {
    let s1 = pod_status(
        &pod("Always"),
        &view(vec![running("web", false)]),
        None,
        at(10),
    );
    let ready = cond(&s1, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(
        ready.message.as_deref(),
        Some("containers with unready status: [web]")
    );
    assert_eq!(ready.last_transition_time, Some(Time(at(10))));
    // Unchanged: the time stays; changed: it moves.
    let s2 = pod_status(
        &pod("Always"),
        &view(vec![running("web", false)]),
        Some(&s1),
        at(20),
    );
    assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(at(10))));
    let s3 = pod_status(
        &pod("Always"),
        &view(vec![running("web", true)]),
        Some(&s2),
        at(30),
    );
    let ready = cond(&s3, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", None)
    );
    assert_eq!(ready.last_transition_time, Some(Time(at(30))));
    assert_eq!(cond(&s3, "PodScheduled").status, "True");
    assert_eq!(cond(&s3, "PodReadyToStartContainers").status, "True");
    assert_eq!(s3.pod_ip.as_deref(), Some("10.244.1.5"));
    assert_eq!(s3.host_ips.as_ref().unwrap()[0].ip, "192.168.1.10");
}

#[test]
fn a_terminal_phase_is_kept_and_completes_the_pod() {
    let done = pod_status(&pod("Never"), &view(vec![ended("a", 0)]), None, at(1));
    assert_eq!(done.phase.as_deref(), Some("Succeeded"));
    assert_eq!(cond(&done, "Ready").reason.as_deref(), Some("PodCompleted"));
    // Whatever the kubelet sees later, a finished pod stays finished.
    let again = pod_status(
        &pod("Never"),
        &view(vec![running("a", true)]),
        Some(&done),
        at(2),
    );
    assert_eq!(again.phase.as_deref(), Some("Succeeded"));
}

#[test]
fn container_statuses_carry_state_restarts_and_last_state() {
    let s = pod_status(&pod("Always"), &view(vec![crash_looping("c")]), None, at(1));
    let c = &s.container_statuses.as_ref().unwrap()[0];
    assert_eq!(c.restart_count, 3);
    assert!(!c.ready);
    let waiting = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
}

#[test]
fn readiness_gates_hold_ready_back() {
    let mut p = pod("Always");
    p.spec.as_mut().unwrap().readiness_gates =
        Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
            condition_type: "example.com/lb".into(),
        }]);
    let s = pod_status(&p, &view(vec![running("a", true)]), None, at(1));
    assert_eq!(cond(&s, "ContainersReady").status, "True");
    let ready = cond(&s, "Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));
}

//! One pod's life on this node, one task per pod uid: adopt what an
//! earlier kubelet left, create the sandbox and volumes, run the
//! containers (lifecycle.rs), report the status, and on deletion stop the
//! containers (preStop, SIGTERM, the grace period, SIGKILL), remove the
//! sandbox (CNI DEL) and delete the pod object with grace 0 and its uid as
//! precondition. A pod whose object vanished (force delete) is torn down
//! the same way without the API.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};

use super::containers::{self, Attempt};
use super::events::Involved;
use super::lifecycle::{Ctr, ProbeResult};
use super::sandbox::{self, Env};
use super::state::{PodRecord, read_json};
use super::status::{ContainerView, PodView, RunState, Termination, pod_status};
use super::volumes::{self, TokenFile};
use super::{Ctx, api};

/// How often a pod is looked at when nothing happens.
const TICK: Duration = Duration::from_millis(250);
/// The grace a pod whose object vanished gets (kubelet's minimum).
const VANISHED_GRACE: Duration = Duration::from_secs(2);
/// How long after SIGKILL the exits are waited for.
const AFTER_KILL: Duration = Duration::from_secs(5);

pub(crate) struct Worker {
    pub ctx: Arc<Ctx>,
    pub uid: String,
    pub pod: Pod,
    pub involved: Involved,
    rx: watch::Receiver<Option<Pod>>,
    pub record: Option<PodRecord>,
    sandbox_retry: Option<(Instant, Duration)>,
    pub volumes: Option<Vec<TokenFile>>,
    volume_retry: Option<Instant>,
    pub ctrs: Vec<Ctr>,
    last_sent: Option<PodStatus>,
    pub start_time: Timestamp,
    pub probe_tx: mpsc::UnboundedSender<ProbeResult>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
    /// The pod reached a terminal phase and its sandbox is gone.
    finished: bool,
    /// Counted in ctx.network_pods.
    counted: bool,
    /// The containers are being stopped for good (deletion).
    stopping: bool,
}

impl Worker {
    pub fn new(ctx: Arc<Ctx>, pod: Pod, rx: watch::Receiver<Option<Pod>>) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ctrs: Vec<Ctr> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Ctr::new(c.clone(), true))
            .collect();
        ctrs.extend(spec.containers.iter().map(|c| Ctr::new(c.clone(), false)));
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .map_or_else(Timestamp::now, |t| t.0);
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        Worker {
            involved: Involved::pod(&ns, &name, &uid),
            ctx,
            uid,
            pod,
            rx,
            record: None,
            sandbox_retry: None,
            volumes: None,
            volume_retry: None,
            ctrs,
            last_sent: None,
            start_time,
            probe_tx,
            probe_rx,
            finished: false,
            counted: false,
            stopping: false,
        }
    }

    fn env(&self) -> Env<'_> {
        self.ctx.sandbox_env()
    }

    fn label(&self) -> String {
        format!("{}/{}", self.involved.namespace, self.involved.name)
    }

    /// The pod's life; returns when it is gone.
    pub async fn run(mut self) {
        self.adopt();
        let terminal_at_start = is_terminal(self.pod.status.as_ref());
        if terminal_at_start && self.record.is_none() {
            // Finished before this kubelet saw it: nothing to run.
            self.last_sent = self.pod.status.clone();
            self.finished = true;
        }
        loop {
            let latest = self.rx.borrow_and_update().clone();
            let Some(pod) = latest else {
                tracing::info!(pod = %self.label(), "pod object gone: tearing down");
                self.stop_containers(VANISHED_GRACE).await;
                self.remove_sandbox().await;
                self.forget();
                return;
            };
            self.pod = pod;
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.delete().await;
                return;
            }
            if !self.finished {
                if !is_terminal(self.last_sent.as_ref()) {
                    self.sync().await;
                }
                self.report().await;
                if is_terminal(self.last_sent.as_ref()) {
                    // Kubelet ends what is left of a finished pod (sidecars)
                    // and releases its network; the object stays.
                    self.stop_containers(self.grace()).await;
                    self.report().await;
                    self.remove_sandbox().await;
                    self.finished = true;
                }
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        // The kubelet is stopping: leave the pod running.
                        return;
                    }
                }
                Some(result) = self.probe_rx.recv() => self.on_probe(result),
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// The grace period of a deletion (deletionGracePeriodSeconds, else
    /// the pod's terminationGracePeriodSeconds, else 30 s).
    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    async fn delete(&mut self) {
        tracing::info!(pod = %self.label(), grace = ?self.grace(), "pod deleted: stopping");
        if !self.finished {
            self.stop_containers(self.grace()).await;
            self.report().await;
            self.remove_sandbox().await;
        }
        let (ns, name) = (self.involved.namespace.clone(), self.involved.name.clone());
        for attempt in 0..5 {
            match api::delete_pod(&self.ctx, &ns, &name, &self.uid).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %self.label(), error = %e, "cannot delete the pod object");
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
        self.forget();
    }

    /// Removes everything of the pod on this node (its directory, logs).
    fn forget(&mut self) {
        if let Ok(mut pods) = self.ctx.pods.lock()
            && pods.get(&(self.involved.namespace.clone(), self.involved.name.clone()))
                == Some(&self.uid)
        {
            pods.remove(&(self.involved.namespace.clone(), self.involved.name.clone()));
        }
        let _ = std::fs::remove_dir_all(self.ctx.layout.pod(&self.uid));
    }

    /// Takes over what an earlier kubelet left for this pod.
    fn adopt(&mut self) {
        let layout = self.ctx.layout.clone();
        if let Some(record) = read_json::<PodRecord>(&layout.pod_record(&self.uid)) {
            let broken = record
                .netns
                .as_deref()
                .is_some_and(|ns| !crate::netns::exists(ns))
                || (!record.host_network && record.ips.is_empty());
            if broken {
                // Half made, or its namespace is gone: start over.
                sandbox::destroy(&self.env(), &record);
            } else {
                tracing::info!(pod = %self.label(), "adopting the pod's sandbox");
                self.count_network(&record);
                self.record = Some(record);
            }
        }
        for ctr in &mut self.ctrs {
            ctr.adopt(&layout, &self.uid);
        }
    }

    fn count_network(&mut self, record: &PodRecord) {
        if !record.host_network && !self.counted {
            self.ctx.network_pods.fetch_add(1, Ordering::Relaxed);
            self.counted = true;
        }
    }

    async fn sync(&mut self) {
        if self.record.is_none() && !self.ensure_sandbox().await {
            return;
        }
        if !self.ensure_volumes().await {
            return;
        }
        self.observe_exits();
        self.enforce_kills();
        self.run_probes();
        self.start_due().await;
    }

    async fn ensure_sandbox(&mut self) -> bool {
        if let Some((at, _)) = self.sandbox_retry
            && Instant::now() < at
        {
            return false;
        }
        let env_layout = self.ctx.clone();
        let pod = self.pod.clone();
        let result = tokio::task::spawn_blocking(move || {
            let env = env_layout.sandbox_env();
            sandbox::create(&env, &pod)
        })
        .await;
        match result {
            Ok(Ok(record)) => {
                tracing::info!(pod = %self.label(), ips = ?record.ips, "sandbox ready");
                self.count_network(&record);
                self.record = Some(record);
                self.sandbox_retry = None;
                true
            }
            Ok(Err(e)) => {
                let delay = self.sandbox_retry.map_or(Duration::from_secs(1), |(_, d)| {
                    (d * 2).min(Duration::from_secs(30))
                });
                self.sandbox_retry = Some((Instant::now() + delay, delay));
                let reason = if e.to_string().starts_with("network is not ready") {
                    "NetworkNotReady"
                } else {
                    "FailedCreatePodSandBox"
                };
                self.ctx.events.warning(
                    &self.involved,
                    reason,
                    format!("Failed to create pod sandbox: {e}"),
                );
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "sandbox task failed");
                false
            }
        }
    }

    async fn ensure_volumes(&mut self) -> bool {
        if let Some(tokens) = self.volumes.as_mut() {
            let pod = self.pod.clone();
            if let Err(e) = volumes::refresh_tokens(&self.ctx, &pod, tokens).await {
                tracing::warn!(pod = %self.label(), error = %e, "cannot refresh a token");
            }
            return true;
        }
        if self.volume_retry.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let facts = self.env_facts();
        match volumes::prepare(&self.ctx, &self.pod, &facts).await {
            Ok(tokens) => {
                self.volumes = Some(tokens);
                true
            }
            Err(e) => {
                self.volume_retry = Some(Instant::now() + Duration::from_secs(5));
                self.ctx.events.warning(&self.involved, "FailedMount", e);
                false
            }
        }
    }

    /// Stops every running container: preStop hooks and SIGTERM at once,
    /// SIGKILL when `grace` is over.
    pub async fn stop_containers(&mut self, grace: Duration) {
        self.stopping = true;
        let deadline = Instant::now() + grace;
        let running: Vec<usize> = (0..self.ctrs.len())
            .rev()
            .filter(|i| self.ctrs[*i].attempt.is_some())
            .collect();
        let mut hooks = Vec::new();
        for &i in &running {
            let name = self.ctrs[i].spec.name.clone();
            let about = self.involved.container(&name, self.ctrs[i].init);
            self.ctx
                .events
                .normal(&about, "Killing", format!("Stopping container {name}"));
            hooks.push(self.pre_stop(i, deadline));
        }
        futures::future::join_all(hooks).await;
        for &i in &running {
            if let Some(a) = &self.ctrs[i].attempt {
                containers::signal(&a.info, Signal::SIGTERM);
            }
        }
        let mut killed = false;
        let end = deadline + AFTER_KILL;
        loop {
            self.observe_exits();
            if self.ctrs.iter().all(|c| c.attempt.is_none()) || Instant::now() > end {
                break;
            }
            if !killed && Instant::now() >= deadline {
                for c in &self.ctrs {
                    if let Some(a) = &c.attempt {
                        containers::signal(&a.info, Signal::SIGKILL);
                    }
                }
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn remove_sandbox(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        if self.counted {
            self.ctx.network_pods.fetch_sub(1, Ordering::Relaxed);
            self.counted = false;
        }
        let ctx = self.ctx.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let env = ctx.sandbox_env();
            sandbox::destroy(&env, &record);
            let _ = std::fs::remove_file(ctx.layout.pod_record(&record.uid));
        })
        .await;
        tracing::info!(pod = %self.label(), "sandbox removed");
    }

    /// The facts the kubelet has, for the status.
    fn view(&self) -> PodView {
        let init_pending = self
            .ctrs
            .iter()
            .filter(|c| c.init && !c.sidecar)
            .any(|c| !matches!(&c.ended, Some(t) if t.exit_code == 0));
        let view = |c: &Ctr| -> ContainerView {
            let mut last = c.record.last_termination.clone();
            let state = if let Some(a) = &c.attempt {
                RunState::Running {
                    started_at: a.info.started_at,
                }
            } else if let Some((reason, message)) = &c.waiting {
                last = c.ended.clone().or(last);
                RunState::Waiting {
                    reason: reason.clone(),
                    message: message.clone(),
                }
            } else if let Some(t) = &c.ended {
                RunState::Terminated(t.clone())
            } else {
                RunState::Waiting {
                    reason: if !c.init && init_pending {
                        "PodInitializing"
                    } else {
                        "ContainerCreating"
                    }
                    .into(),
                    message: None,
                }
            };
            let running = c.attempt.is_some();
            ContainerView {
                name: c.spec.name.clone(),
                image: c.spec.image.clone().unwrap_or_default(),
                container_id: c
                    .attempt
                    .as_ref()
                    .map(|a: &Attempt| format!("podwire://{}", a.container_id))
                    .or_else(|| c.ended.as_ref().and_then(|t| t.container_id.clone())),
                state,
                last_termination: last,
                restart_count: c.record.restart_count,
                ready: running && c.started() && c.ready(),
                started: running && c.started(),
                sidecar: c.sidecar,
            }
        };
        PodView {
            host_ips: vec![self.ctx.cfg.node_ip],
            pod_ips: self
                .record
                .as_ref()
                .map(|r| r.ips.clone())
                .unwrap_or_default(),
            start_time: Some(self.start_time),
            sandbox_ready: self.record.is_some(),
            init_containers: self.ctrs.iter().filter(|c| c.init).map(view).collect(),
            containers: self.ctrs.iter().filter(|c| !c.init).map(view).collect(),
            stopping: self.stopping,
        }
    }

    /// Posts the status when it differs from what was posted last.
    async fn report(&mut self) {
        let previous = self.last_sent.as_ref().or(self.pod.status.as_ref());
        let status = pod_status(&self.pod, &self.view(), previous, Timestamp::now());
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        match api::patch_status(&self.ctx, &self.pod, &status).await {
            Ok(()) => self.last_sent = Some(status),
            Err(e) => {
                tracing::warn!(pod = %self.label(), error = %e, "cannot write the pod status")
            }
        }
    }

    /// A container ended: its termination as the status shows it.
    pub fn termination(
        info: Option<&super::state::ExitInfo>,
        attempt: Option<&Attempt>,
    ) -> Termination {
        let container_id = attempt.map(|a| format!("podwire://{}", a.container_id));
        let started_at = attempt.map(|a| a.info.started_at);
        match info {
            Some(info) => Termination {
                exit_code: info.exit_code,
                signal: info.signal,
                reason: if info.error.is_some() {
                    "StartError".into()
                } else {
                    Termination::reason_for(info.exit_code).into()
                },
                message: info.error.clone(),
                started_at,
                finished_at: info.finished_at,
                container_id,
            },
            None => Termination {
                exit_code: 137,
                signal: None,
                reason: "ContainerStatusUnknown".into(),
                message: Some(
                    "The container could not be located when the pod was terminated".into(),
                ),
                started_at,
                finished_at: Timestamp::now(),
                container_id,
            },
        }
    }
}

fn is_terminal(status: Option<&PodStatus>) -> bool {
    matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

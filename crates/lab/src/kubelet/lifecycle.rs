//! The containers of one pod worker: init containers in order (sidecars
//! started and left running), then the app containers; starts with their
//! environment, mounts and events (Pulled, Created, Started); exits
//! observed from the shims' files; restarts by restartPolicy with the
//! crash-loop back-off (BackOff events, CrashLoopBackOff); probes run on
//! their schedule, a failed liveness or startup probe kills the container
//! (Unhealthy, Killing), which then restarts like any exit.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::jiff::Timestamp;
use nix::sys::signal::Signal;

use super::containers::{self, Attempt, Observed, Started};
use super::env::{self, Facts, Sources};
use super::probes::{self, ExecTarget, Kind, Tracker};
use super::restart::{self, Next};
use super::sandbox;
use super::shim::ShimSpec;
use super::state::{ContainerRecord, Layout, write_json};
use super::status::Termination;
use super::worker::Worker;
use super::{api, volumes};

/// One container of the pod.
pub(crate) struct Ctr {
    pub spec: Container,
    pub init: bool,
    /// An init container with restartPolicy Always.
    pub sidecar: bool,
    pub record: ContainerRecord,
    /// The running attempt.
    pub attempt: Option<Attempt>,
    /// How the last attempt ended, while it is not started again.
    pub ended: Option<Termination>,
    /// Why it is not running (CrashLoopBackOff, CreateContainerConfigError).
    pub waiting: Option<(String, Option<String>)>,
    /// Not before this instant (a start that failed for its config).
    retry_at: Option<Instant>,
    pub probes: Vec<Tracker>,
    /// Where exec probes run (the attempt's sandbox and env).
    exec: ExecTarget,
    /// SIGTERM was sent; SIGKILL at this instant.
    kill_at: Option<Instant>,
    backoff_reported: bool,
}

/// A probe's outcome, sent back to the worker by the probe's task.
pub(crate) struct ProbeResult {
    ctr: usize,
    attempt: u32,
    probe: usize,
    outcome: Result<(), String>,
}

impl Ctr {
    pub fn new(spec: Container, init: bool) -> Ctr {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        Ctr {
            spec,
            init,
            sidecar,
            record: ContainerRecord::default(),
            attempt: None,
            ended: None,
            waiting: None,
            retry_at: None,
            probes: Vec::new(),
            exec: ExecTarget::default(),
            kill_at: None,
            backoff_reported: false,
        }
    }

    /// Restores the container's state from the files an earlier kubelet
    /// wrote (its process may still run).
    pub fn adopt(&mut self, layout: &Layout, uid: &str) {
        let Some(record) = super::state::read_json::<ContainerRecord>(
            &layout.container_record(uid, &self.spec.name),
        ) else {
            return;
        };
        if let Some(n) = record.attempt {
            let files = containers::files(layout, uid, &self.spec.name, n);
            let id = containers::container_id(uid, &self.spec.name, n);
            match containers::adopt(&files, n, id) {
                Ok(attempt) => {
                    self.probes = trackers(&self.spec, Instant::now());
                    self.attempt = Some(attempt);
                }
                Err(exit) => self.ended = Some(Worker::termination(exit.as_ref(), None)),
            }
        }
        self.record = record;
    }

    /// Past its startup probe (or it has none).
    pub fn started(&self) -> bool {
        self.probes
            .iter()
            .filter(|p| p.kind == Kind::Startup)
            .all(|p| p.verdict == Some(true))
    }

    /// Its readiness probe says ready (or it has none).
    pub fn ready(&self) -> bool {
        self.probes
            .iter()
            .filter(|p| p.kind == Kind::Readiness)
            .all(|p| p.verdict == Some(true))
    }
}

fn trackers(c: &Container, started: Instant) -> Vec<Tracker> {
    [
        (Kind::Startup, &c.startup_probe),
        (Kind::Liveness, &c.liveness_probe),
        (Kind::Readiness, &c.readiness_probe),
    ]
    .into_iter()
    .filter_map(|(kind, probe)| probe.as_ref().map(|p| Tracker::new(kind, c, p, started)))
    .collect()
}

fn since(t: Timestamp) -> Duration {
    Timestamp::now()
        .duration_since(t)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

impl Worker {
    fn save(&self, i: usize) {
        let c = &self.ctrs[i];
        let path = self.ctx.layout.container_record(&self.uid, &c.spec.name);
        if let Err(e) = write_json(&path, &c.record) {
            tracing::warn!(error = %e, "cannot record the container's state");
        }
    }

    /// The facts env variables and downward volumes may show.
    pub fn env_facts(&self) -> Facts {
        Facts {
            pod_ips: self
                .record
                .as_ref()
                .map(|r| r.ips.clone())
                .unwrap_or_default(),
            host_ips: vec![self.ctx.cfg.node_ip],
            api_service: self.ctx.api_service.lock().ok().and_then(|s| *s),
            node_cpus: self.ctx.machine.cpus,
            node_memory: self.ctx.machine.memory,
        }
    }

    /// Notes every attempt that ended.
    pub fn observe_exits(&mut self) {
        for i in 0..self.ctrs.len() {
            let name = self.ctrs[i].spec.name.clone();
            let Some(attempt) = self.ctrs[i].attempt.as_mut() else {
                continue;
            };
            let files = containers::files(&self.ctx.layout, &self.uid, &name, attempt.number);
            let exit = match containers::observe(&files, attempt) {
                Observed::Running => continue,
                Observed::Exited(info) => Some(info),
                Observed::Lost => None,
            };
            let c = &mut self.ctrs[i];
            let t = Worker::termination(exit.as_ref(), c.attempt.as_ref());
            tracing::info!(pod = %format!("{}/{}", self.involved.namespace, self.involved.name), container = %name, exit_code = t.exit_code, "container ended");
            c.ended = Some(t);
            c.attempt = None;
            c.probes.clear();
            c.kill_at = None;
        }
    }

    /// SIGKILL for containers whose stop grace is over.
    pub fn enforce_kills(&mut self) {
        for c in &mut self.ctrs {
            if let (Some(at), Some(a)) = (c.kill_at, &c.attempt)
                && Instant::now() >= at
            {
                containers::signal(&a.info, Signal::SIGKILL);
                c.kill_at = None;
            }
        }
    }

    /// Starts the probes that are due.
    pub fn run_probes(&mut self) {
        let pod_ip = self
            .record
            .as_ref()
            .and_then(|r| r.ips.first().copied())
            .unwrap_or(self.ctx.cfg.node_ip);
        let now = Instant::now();
        for (ci, c) in self.ctrs.iter_mut().enumerate() {
            let Some(attempt) = &c.attempt else {
                continue;
            };
            if c.kill_at.is_some() {
                continue;
            }
            let starting = c
                .probes
                .iter()
                .any(|p| p.kind == Kind::Startup && p.verdict != Some(true));
            for (pi, p) in c.probes.iter_mut().enumerate() {
                // Until the startup probe succeeds, the others wait.
                if (starting && p.kind != Kind::Startup) || !p.due(now) {
                    continue;
                }
                p.started(now);
                let (action, timeout, target) = (p.action.clone(), p.timeout, c.exec.clone());
                let tx = self.probe_tx.clone();
                let number = attempt.number;
                tokio::spawn(async move {
                    let outcome = probes::run(&action, pod_ip, timeout, &target).await;
                    let _ = tx.send(ProbeResult {
                        ctr: ci,
                        attempt: number,
                        probe: pi,
                        outcome,
                    });
                });
            }
        }
    }

    /// A probe answered: count it; Unhealthy on failure; a liveness or
    /// startup verdict of failure kills the container.
    pub fn on_probe(&mut self, r: ProbeResult) {
        let grace = self.pod_grace();
        let Some(c) = self.ctrs.get_mut(r.ctr) else {
            return;
        };
        if c.attempt.as_ref().map(|a| a.number) != Some(r.attempt) {
            return;
        }
        let Some(p) = c.probes.get_mut(r.probe) else {
            return;
        };
        let changed = p.record(r.outcome.is_ok());
        let (kind, probe_grace) = (p.kind, p.grace);
        let about = self.involved.container(&c.spec.name, c.init);
        if let Err(message) = &r.outcome {
            self.ctx.events.warning(
                &about,
                "Unhealthy",
                format!("{} probe failed: {message}", kind.title()),
            );
        }
        if changed == Some(false) && matches!(kind, Kind::Liveness | Kind::Startup) {
            let what = if kind == Kind::Liveness {
                "liveness"
            } else {
                "startup"
            };
            self.ctx.events.normal(
                &about,
                "Killing",
                format!(
                    "Container {} failed {what} probe, will be restarted",
                    c.spec.name
                ),
            );
            if let Some(a) = &c.attempt {
                containers::signal(&a.info, Signal::SIGTERM);
            }
            let grace = probe_grace.map_or(grace, |s| Duration::from_secs(s.max(0) as u64));
            c.kill_at = Some(Instant::now() + grace);
            for p in &mut c.probes {
                p.reset_failures();
            }
        }
    }

    fn pod_grace(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }

    /// Starts (or restarts) what the pod's state calls for.
    pub async fn start_due(&mut self) {
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone());
        let policy = policy.as_deref();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if c.init && !c.sidecar {
                match (&c.attempt, &c.ended) {
                    (Some(_), _) => return,
                    (None, Some(t)) if t.exit_code == 0 => continue,
                    // An init container's failure fails the pod under Never.
                    (None, Some(_)) if policy == Some("Never") => return,
                    (None, Some(_)) => {
                        self.restart(i).await;
                        return;
                    }
                    (None, None) => {
                        self.start(i).await;
                        return;
                    }
                }
            }
            if c.attempt.is_some() {
                if c.sidecar && !c.started() {
                    return;
                }
                continue;
            }
            let restart_policy = if c.sidecar { Some("Always") } else { policy };
            match &c.ended {
                None => self.start(i).await,
                Some(t) if restart::wants_restart(restart_policy, t.exit_code) => {
                    self.restart(i).await
                }
                Some(_) => {}
            }
            if self.ctrs[i].sidecar && !self.ctrs[i].started() {
                return;
            }
        }
    }

    /// Restarts an ended container now, or reports the back-off.
    async fn restart(&mut self, i: usize) {
        let c = &mut self.ctrs[i];
        let Some(t) = c.ended.clone() else {
            return;
        };
        let ran = t
            .started_at
            .and_then(|s| t.finished_at.duration_since(s).try_into().ok())
            .unwrap_or(Duration::ZERO);
        match c.record.backoff.next(ran, since(t.finished_at)) {
            Next::Now => self.start(i).await,
            Next::Wait(_) => {
                let delay = c.record.backoff.delay().as_secs();
                let (ns, pod, uid) = (&self.involved.namespace, &self.involved.name, &self.uid);
                let name = c.spec.name.clone();
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    Some(format!(
                        "back-off {delay}s restarting failed container={name} pod={pod}_{ns}({uid})"
                    )),
                ));
                if !c.backoff_reported {
                    c.backoff_reported = true;
                    let about = self.involved.container(&name, c.init);
                    self.ctx.events.warning(
                        &about,
                        "BackOff",
                        format!(
                            "Back-off restarting failed container {name} in pod {pod}_{ns}({uid})"
                        ),
                    );
                }
            }
        }
    }

    /// Fetches what the container's environment refers to.
    async fn sources(&self, c: &Container) -> Result<Sources, String> {
        let ns = &self.involved.namespace;
        let (maps, secrets) = env::references(c);
        let mut sources = Sources::default();
        for name in maps {
            let data = api::config_map(&self.ctx, ns, &name)
                .await
                .map_err(|e| e.to_string())?;
            sources.config_maps.insert(name, data.map(api::as_text));
        }
        for name in secrets {
            let data = api::secret(&self.ctx, ns, &name)
                .await
                .map_err(|e| e.to_string())?;
            sources.secrets.insert(name, data.map(api::as_text));
        }
        Ok(sources)
    }

    /// Starts the next attempt of container `i`.
    async fn start(&mut self, i: usize) {
        if self.ctrs[i].retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(record) = self.record.clone() else {
            return;
        };
        let spec = self.ctrs[i].spec.clone();
        let about = self.involved.container(&spec.name, self.ctrs[i].init);
        let env = match self
            .sources(&spec)
            .await
            .and_then(|s| env::container_env(&self.pod, &spec, &s, &self.env_facts()))
        {
            Ok(env) => env,
            Err(message) => {
                let c = &mut self.ctrs[i];
                c.waiting = Some(("CreateContainerConfigError".into(), Some(message.clone())));
                c.retry_at = Some(Instant::now() + Duration::from_secs(5));
                self.ctx
                    .events
                    .warning(&about, "Failed", format!("Error: {message}"));
                return;
            }
        };
        let hostname = sandbox::hostname(&self.pod);
        let mut vars: Vec<(String, String)> = vec![
            ("PATH".into(), containers::DEFAULT_PATH.into()),
            (
                "HOSTNAME".into(),
                if record.host_network {
                    self.ctx.cfg.node.clone()
                } else {
                    hostname
                },
            ),
            ("HOME".into(), "/root".into()),
        ];
        for (k, v) in env {
            vars.retain(|(n, _)| *n != k);
            vars.push((k, v));
        }
        let argv = containers::argv(&self.ctx.cfg.exe, &spec, &vars);
        let mut sandbox = sandbox::container_sandbox(&self.ctx.layout, &record, &self.pod);
        let (binds, warnings) = volumes::mounts(&self.ctx, &self.pod, &spec);
        for w in warnings {
            self.ctx.events.warning(&about, "FailedMount", w);
        }
        sandbox.binds.extend(binds);
        let c = &self.ctrs[i];
        let number = match c.record.attempt {
            Some(_) => c.record.restart_count as u32 + 1,
            None => 0,
        };
        let files = containers::files(&self.ctx.layout, &self.uid, &spec.name, number);
        let shim_spec = ShimSpec {
            argv: argv.clone(),
            env: vars.clone(),
            cwd: spec
                .working_dir
                .clone()
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into()),
            netns: sandbox.netns.clone(),
            hostname: sandbox.hostname.clone(),
            binds: sandbox.binds.clone(),
            log: files.log.clone(),
            pid_file: files.pid.clone(),
            exit_file: files.exit.clone(),
        };
        self.ctx.events.normal(
            &about,
            "Pulled",
            format!(
                "Container image \"{}\" already present on machine (podwire runs no images: this container runs `{}`)",
                spec.image.clone().unwrap_or_default(),
                argv.join(" ")
            ),
        );
        let id = containers::container_id(&self.uid, &spec.name, number);
        let exe = self.ctx.cfg.exe.clone();
        let launched = tokio::task::spawn_blocking(move || {
            let started = containers::launch(&exe, &files, &shim_spec, number, id);
            (started, files)
        })
        .await;
        let Ok((started, _files)) = launched else {
            return;
        };
        let c = &mut self.ctrs[i];
        // Each attempt counts: the restart count is the attempt's number.
        if let Some(t) = c.ended.take()
            && c.record.attempt.is_some()
        {
            let ran = t
                .started_at
                .and_then(|s| t.finished_at.duration_since(s).try_into().ok())
                .unwrap_or(Duration::ZERO);
            c.record.backoff.restarted(ran);
            c.record.last_termination = Some(t);
        }
        c.record.attempt = Some(number);
        c.record.restart_count = number as i32;
        c.waiting = None;
        c.backoff_reported = false;
        match started {
            Ok(Started::Running(attempt)) => {
                self.ctx.events.normal(
                    &about,
                    "Created",
                    format!("Created container: {}", spec.name),
                );
                self.ctx.events.normal(
                    &about,
                    "Started",
                    format!("Started container {}", spec.name),
                );
                c.probes = trackers(&spec, Instant::now());
                c.exec = ExecTarget { sandbox, env: vars };
                c.attempt = Some(attempt);
            }
            Ok(Started::Failed(info)) => {
                let message = info.error.clone().unwrap_or_default();
                self.ctx
                    .events
                    .warning(&about, "Failed", format!("Error: {message}"));
                c.ended = Some(Worker::termination(Some(&info), None));
            }
            Err(e) => {
                self.ctx
                    .events
                    .warning(&about, "Failed", format!("Error: {e}"));
                c.ended = Some(Termination {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".into(),
                    message: Some(e.to_string()),
                    started_at: None,
                    finished_at: Timestamp::now(),
                    container_id: None,
                });
            }
        }
        self.save(i);
    }

    /// Runs container `i`'s preStop hook, bounded by `deadline`.
    pub async fn pre_stop(&self, i: usize, deadline: Instant) {
        let c = &self.ctrs[i];
        let Some(hook) = c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(sleep) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(left)).await;
            return;
        }
        let Some(action) = probes::hook_action(&c.spec, hook) else {
            return;
        };
        let pod_ip = self
            .record
            .as_ref()
            .and_then(|r| r.ips.first().copied())
            .unwrap_or(self.ctx.cfg.node_ip);
        if let Err(message) = probes::run(&action, pod_ip, left, &c.exec).await {
            let about = self.involved.container(&c.spec.name, c.init);
            self.ctx.events.warning(
                &about,
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
    }
}

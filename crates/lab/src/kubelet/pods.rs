//! The pods bound to this node: one watch (fieldSelector
//! spec.nodeName=NODE) feeding one worker task per pod uid with the pod's
//! latest object (None once it is gone from the API, also when a relist no
//! longer shows it). After the first complete list, what an earlier
//! kubelet left for pods that no longer exist is removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::Ctx;
use super::containers;
use super::sandbox;
use super::state::{ContainerRecord, PodRecord, ProcessInfo, alive, read_json, recorded_pods};
use super::worker::Worker;

struct Dispatcher {
    ctx: Arc<Ctx>,
    workers: HashMap<String, watch::Sender<Option<Pod>>>,
    /// Pods whose worker finished (deleted): later events are echoes.
    done: HashSet<String>,
    relist: Option<HashSet<String>>,
    cleaned: bool,
}

impl Dispatcher {
    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(seen) = self.relist.as_mut() {
            seen.insert(uid.clone());
        }
        if self.done.contains(&uid) {
            return;
        }
        if let Some(tx) = self.workers.get(&uid) {
            if !tx.is_closed() {
                tx.send_replace(Some(pod));
                return;
            }
            self.workers.remove(&uid);
            self.done.insert(uid);
            return;
        }
        let key = (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        if let Ok(mut pods) = self.ctx.pods.lock() {
            pods.insert(key, uid.clone());
        }
        let (tx, rx) = watch::channel(Some(pod.clone()));
        self.workers.insert(uid, tx);
        tokio::spawn(Worker::new(self.ctx.clone(), pod, rx).run());
    }

    fn gone(&mut self, uid: &str) {
        if let Some(tx) = self.workers.get(uid) {
            tx.send_replace(None);
        }
    }

    fn listed(&mut self) {
        let Some(seen) = self.relist.take() else {
            return;
        };
        let missing: Vec<String> = self
            .workers
            .keys()
            .filter(|uid| !seen.contains(*uid))
            .cloned()
            .collect();
        for uid in missing {
            self.gone(&uid);
        }
        if !self.cleaned {
            self.cleaned = true;
            let orphans: Vec<String> = recorded_pods(&self.ctx.layout)
                .into_iter()
                .filter(|uid| !seen.contains(uid))
                .collect();
            if !orphans.is_empty() {
                let ctx = self.ctx.clone();
                tokio::task::spawn_blocking(move || remove_orphans(&ctx, &orphans));
            }
        }
        // Workers that finished are forgotten (their uids stay in `done`).
        let finished: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, tx)| tx.is_closed())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in finished {
            self.workers.remove(&uid);
            self.done.insert(uid);
        }
    }
}

/// Watches this node's pods until the stream ends (it retries with
/// back-off on its own; errors are logged once each).
pub async fn run(ctx: Arc<Ctx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.cfg.node));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut d = Dispatcher {
        ctx: ctx.clone(),
        workers: HashMap::new(),
        done: HashSet::new(),
        relist: None,
        cleaned: false,
    };
    let mut last_error = String::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(pod)) => d.apply(pod),
            Ok(watcher::Event::InitApply(pod)) => d.apply(pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid {
                    d.gone(&uid);
                }
            }
            Ok(watcher::Event::Init) => d.relist = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                d.listed();
                last_error.clear();
            }
            Err(e) => {
                let text = podwire_source::full_chain(&e);
                if text != last_error {
                    tracing::warn!(error = %text, "watching this node's pods failed; retrying");
                    last_error = text;
                }
            }
        }
    }
}

/// Removes what an earlier kubelet left for pods that no longer exist:
/// their containers (by process group), sandboxes and directories.
fn remove_orphans(ctx: &Ctx, uids: &[String]) {
    let env = ctx.sandbox_env();
    for uid in uids {
        let dir = ctx.layout.pod(uid);
        tracing::info!(uid, "removing a pod left by an earlier run");
        // Containers first (hostNetwork ones live outside any pod namespace).
        for entry in std::fs::read_dir(dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(record) =
                read_json::<ContainerRecord>(&ctx.layout.container_record(uid, &name))
            else {
                continue;
            };
            if let Some(n) = record.attempt {
                let files = containers::files(&ctx.layout, uid, &name, n);
                if let Some(info) = read_json::<ProcessInfo>(&files.pid) {
                    containers::signal(&info, nix::sys::signal::Signal::SIGKILL);
                    // Its shim records the exit; let it finish first.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while alive(info.shim_pid, info.shim_start_ticks) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        if let Some(record) = read_json::<PodRecord>(&ctx.layout.pod_record(uid)) {
            sandbox::destroy(&env, &record);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

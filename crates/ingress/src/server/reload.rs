//! The reload thread: compiles every cluster snapshot into routes and
//! certificates off the request path, and (when this replica leads) writes
//! the Ingresses' status and Warning Events for ignored annotations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use podwire_model::k8s_openapi::api::networking::v1::IngressLoadBalancerStatus;
use podwire_model::{Kind, ObjectRef, Watch, WatchEvent};
use rustls::sign::CertifiedKey;

use super::{Common, Config, STATUS_RETRY, StatusPublisher, compile};
use crate::status::pending;
use crate::{AnnotationNote, IngressError};

/// The thread that follows the cluster: each snapshot is compiled off the
/// request path and swapped in (requests never wait for it); when this
/// replica leads, Ingresses whose status differs from the published
/// address are written.
pub(super) struct Reloader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reloader {
    pub(super) fn spawn(
        mut watch: Watch,
        status: Option<StatusPublisher>,
        config: Config,
        generated: Arc<CertifiedKey>,
        common: &Common,
    ) -> Result<Reloader, IngressError> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (snapshot, metrics) = (common.snapshot.clone(), common.metrics.clone());
        let readiness = common.readiness.clone();
        let mut statuses = common.first_statuses.clone();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ingress-reload".into())
            .spawn(move || {
                let mut next_status = Instant::now();
                let mut was_leader = false;
                let mut last_error: Option<String> = None;
                // Notes already logged, annotation notes already reported.
                let mut logged: BTreeSet<String> = BTreeSet::new();
                let mut reported: BTreeSet<AnnotationNote> = BTreeSet::new();
                let mut events: Vec<AnnotationNote> = Vec::new();
                watch.run(&stopped, &mut |event, source| {
                    match event {
                        WatchEvent::Snapshot(s) => {
                            let started = Instant::now();
                            let next = compile(s.revision, &s.state, &config, &generated);
                            for note in &next.routes.notes {
                                if logged.insert(note.clone()) {
                                    tracing::warn!("{note}");
                                }
                            }
                            logged.retain(|n| next.routes.notes.contains(n));
                            events = next
                                .routes
                                .annotation_notes
                                .iter()
                                .filter(|n| !reported.contains(*n))
                                .cloned()
                                .collect();
                            tracing::info!(
                                generation = next.generation,
                                ingresses = next.routes.ingresses.len(),
                                ms =
                                    format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
                                "routes and certificates reloaded"
                            );
                            metrics.reloads.inc();
                            metrics
                                .generation
                                .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
                            snapshot.store(Arc::new(next));
                            if let Some(publish) = status.as_ref().and_then(|p| p.publish.as_ref())
                            {
                                statuses = pending(&s.state, &config.options.class, publish);
                                next_status = Instant::now();
                            }
                            if let Ok(mut r) = readiness.lock() {
                                r.synced = true;
                            }
                        }
                        WatchEvent::SourceFailed(err) => {
                            let text = err.to_string();
                            if last_error.as_deref() != Some(text.as_str()) {
                                tracing::warn!(
                                    "keeping the previous routes and certificates: {text}"
                                );
                            }
                            metrics.reload_failures.inc();
                            last_error = Some(text);
                        }
                        WatchEvent::Idle => {}
                    }
                    let source_status = source.status();
                    if source_status.error.is_none() {
                        last_error = None;
                    }
                    if let Ok(mut r) = readiness.lock() {
                        r.error = source_status.error;
                    }
                    let Some(p) = &status else {
                        return Duration::from_secs(1);
                    };
                    // Write at once on becoming leader or on a change, else
                    // retry what failed every second.
                    let leading = p.leader.is_leader();
                    if leading
                        && (!statuses.is_empty() || !events.is_empty())
                        && (!was_leader || Instant::now() >= next_status)
                    {
                        write_statuses(p, &mut statuses);
                        report_annotations(p, &mut events, &mut reported);
                        next_status = Instant::now() + STATUS_RETRY;
                    }
                    was_leader = leading;
                    STATUS_RETRY
                });
            })
            .map_err(IngressError::Runtime)?;
        Ok(Reloader { stop, thread })
    }

    pub(super) fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Reports each ignored annotation once as a Warning Event on its Ingress;
/// what fails is tried again next round.
fn report_annotations(
    publisher: &StatusPublisher,
    pending: &mut Vec<AnnotationNote>,
    reported: &mut BTreeSet<AnnotationNote>,
) {
    pending.retain(|n| {
        let object = ObjectRef::new(Kind::Ingress, n.namespace.clone(), n.name.clone());
        match publisher.writer.warn(
            &object,
            n.uid.as_deref(),
            "podwire-ingress",
            "UnsupportedAnnotation",
            &n.note,
        ) {
            Ok(()) => {
                reported.insert(n.clone());
                false
            }
            Err(err) => {
                tracing::warn!(ingress = %object, "cannot record an Event: {err}");
                true
            }
        }
    });
}

/// Writes the pending statuses; what fails stays pending for the next round.
fn write_statuses(
    publisher: &StatusPublisher,
    pending: &mut BTreeMap<(String, String), IngressLoadBalancerStatus>,
) {
    pending.retain(|(ns, name), status| {
        match publisher.writer.set_ingress_status(ns, name, status) {
            Ok(()) => {
                tracing::info!(
                    ingress = %format!("{ns}/{name}"),
                    leader = %publisher.leader.identity(),
                    "status address written"
                );
                false
            }
            Err(err) => {
                tracing::warn!(ingress = %format!("{ns}/{name}"), "cannot write the status: {err}");
                true
            }
        }
    });
}

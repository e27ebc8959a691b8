//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does: the holder renews `renewTime` every `retry`; when
//! it has not for `duration`, another candidate takes the Lease with an
//! update that carries the resourceVersion it read, so of two candidates
//! exactly one wins. A replica counts itself leader only while its last
//! successful renewal is younger than `duration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use podwire_model::Leadership;

use crate::client::Kube;

/// Which Lease, who we are, how long a term lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name, else the host name).
    pub identity: String,
    pub duration: Duration,
    pub retry: Duration,
}

impl LeaseSettings {
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> LeaseSettings {
        LeaseSettings {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// A running election; stops (and gives the Lease up) when dropped.
pub struct LeaderElection {
    identity: String,
    leading: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    release: Option<(Kube, LeaseSettings)>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("identity", &self.identity)
            .field("leading", &self.is_leader())
            .finish()
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Whether a Lease's holder let it lapse.
fn expired(spec: &LeaseSpec, fallback: Duration) -> bool {
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(fallback);
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
    age.as_secs_f64() > duration.as_secs_f64()
}

/// One round: Ok(true) when we hold the Lease after it.
async fn round(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let ours = |lease: Option<&Lease>| -> Lease {
        let previous = lease.and_then(|l| l.spec.clone()).unwrap_or_default();
        let ours_already = previous.holder_identity.as_deref() == Some(s.identity.as_str());
        Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(s.namespace.clone()),
                resource_version: lease.and_then(|l| l.metadata.resource_version.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(s.duration.as_secs() as i32),
                acquire_time: if ours_already {
                    previous.acquire_time.clone()
                } else {
                    Some(now())
                },
                renew_time: Some(now()),
                lease_transitions: Some(
                    previous.lease_transitions.unwrap_or(0)
                        + i32::from(!ours_already && lease.is_some()),
                ),
                ..Default::default()
            }),
        }
    };
    match api.get_opt(&s.name).await? {
        None => match api.create(&PostParams::default(), &ours(None)).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        },
        Some(lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.as_deref().unwrap_or_default();
            if holder != s.identity && !holder.is_empty() && !expired(&spec, s.duration) {
                return Ok(false);
            }
            match api
                .replace(&s.name, &PostParams::default(), &ours(Some(&lease)))
                .await
            {
                Ok(_) => Ok(true),
                // Someone else updated it first: they won this round.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

impl LeaderElection {
    /// Starts campaigning in the background.
    pub fn start(kube: &Kube, settings: LeaseSettings) -> LeaderElection {
        let leading = Arc::new(AtomicBool::new(false));
        let api: Api<Lease> = Api::namespaced(kube.client(), &settings.namespace);
        let flag = leading.clone();
        let s = settings.clone();
        let task = kube.handle().spawn(async move {
            let mut last_renewal: Option<Instant> = None;
            let mut last_error: Option<String> = None;
            loop {
                match round(&api, &s).await {
                    Ok(true) => {
                        if last_renewal.is_none() {
                            tracing::info!(lease = %format!("{}/{}", s.namespace, s.name), identity = %s.identity, "became the leader");
                        }
                        last_renewal = Some(Instant::now());
                        last_error = None;
                    }
                    Ok(false) => {
                        if last_renewal.take().is_some() {
                            tracing::info!(identity = %s.identity, "lost the leadership");
                        }
                    }
                    Err(e) => {
                        let text = crate::client::full_chain(&e);
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(lease = %format!("{}/{}", s.namespace, s.name), "leader election: {text}");
                        }
                        last_error = Some(text);
                    }
                }
                let leading_now = last_renewal.is_some_and(|t| t.elapsed() < s.duration);
                flag.store(leading_now, Ordering::Relaxed);
                tokio::time::sleep(s.retry).await;
            }
        });
        LeaderElection {
            identity: settings.identity.clone(),
            leading,
            task,
            release: Some((kube.clone(), settings)),
        }
    }

    /// Stops campaigning and, if leading, empties the Lease's holder so
    /// another replica takes over at once instead of after `duration`.
    pub fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.task.abort();
        let was_leading = self.leading.swap(false, Ordering::Relaxed);
        if let (true, Some((kube, s))) = (was_leading, self.release.take()) {
            let api: Api<Lease> = Api::namespaced(kube.client(), &s.namespace);
            let result = kube.block_on(async {
                let mut lease = api.get(&s.name).await?;
                if let Some(spec) = lease.spec.as_mut()
                    && spec.holder_identity.as_deref() == Some(s.identity.as_str())
                {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    api.replace(&s.name, &PostParams::default(), &lease).await?;
                }
                Ok::<(), kube::Error>(())
            });
            if let Err(e) = result {
                tracing::debug!("could not release the lease: {e}");
            }
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Leadership for LeaderElection {
    fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    fn identity(&self) -> String {
        self.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapsed_leases_are_expired() {
        let mut spec = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(now()),
            ..Default::default()
        };
        assert!(!expired(&spec, Duration::from_secs(15)));
        spec.renew_time = Some(MicroTime(
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(20),
        ));
        assert!(expired(&spec, Duration::from_secs(15)));
        spec.renew_time = None;
        assert!(expired(&spec, Duration::from_secs(15)));
    }
}

//! Events as kubelet records them (core/v1, source component "kubelet",
//! host the node), so `kubectl describe pod` shows Pulled, Created,
//! Started, Killing, Unhealthy and BackOff after the scheduler's
//! Scheduled. A repeat of the same event (same object, reason, message)
//! raises the count of the first one, as client-go's correlator does.
//! Posting never blocks the caller: each event is sent by a task of its
//! own, and failures are only logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Involved {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` for a container's events.
    pub field_path: Option<String>,
}

impl Involved {
    pub fn pod(namespace: &str, name: &str, uid: &str) -> Involved {
        Involved {
            kind: "Pod",
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            field_path: None,
        }
    }

    pub fn container(&self, container: &str, init: bool) -> Involved {
        let list = if init { "initContainers" } else { "containers" };
        Involved {
            field_path: Some(format!("spec.{list}{{{container}}}")),
            ..self.clone()
        }
    }
}

type Key = (Involved, String, String);

/// Posts events for one node.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
    /// The event already posted for a key, and its count.
    seen: Arc<Mutex<HashMap<Key, (String, i32)>>>,
}

impl Recorder {
    pub fn new(client: kube::Client, node: &str) -> Recorder {
        Recorder {
            client,
            node: node.into(),
            seen: Arc::default(),
        }
    }

    /// A Normal event.
    pub fn normal(&self, about: &Involved, reason: &str, message: String) {
        self.post(about, "Normal", reason, message);
    }

    /// A Warning event.
    pub fn warning(&self, about: &Involved, reason: &str, message: String) {
        self.post(about, "Warning", reason, message);
    }

    fn post(&self, about: &Involved, kind: &str, reason: &str, message: String) {
        tracing::info!(object = %format!("{}/{}", about.namespace, about.name), reason, %message, "event");
        let key: Key = (about.clone(), reason.to_string(), message.clone());
        let repeat = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            // Bounded: a kubelet with long-lived crash loops must not grow
            // without end; forgetting only costs a new event object.
            if seen.len() > 4096 {
                seen.clear();
            }
            match seen.get_mut(&key) {
                Some((name, count)) => {
                    *count += 1;
                    Some((name.clone(), *count))
                }
                None => None,
            }
        };
        let now = Time(Timestamp::now());
        let namespace = if about.namespace.is_empty() {
            "default".to_string()
        } else {
            about.namespace.clone()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let this = self.clone();
        let kind = kind.to_string();
        let reason = reason.to_string();
        let about = about.clone();
        tokio::spawn(async move {
            if let Some((name, count)) = repeat {
                let patch = json!({"count": count, "lastTimestamp": now});
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::debug!(error = %e, "cannot update event {name}");
                }
                return;
            }
            let stamp = Timestamp::now().as_nanosecond();
            let name = format!("{}.{:x}", about.name, stamp);
            let event = Event {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace),
                    ..Default::default()
                },
                involved_object: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some(about.kind.into()),
                    name: Some(about.name.clone()),
                    namespace: (!about.namespace.is_empty()).then(|| about.namespace.clone()),
                    uid: Some(about.uid.clone()),
                    field_path: about.field_path.clone(),
                    ..Default::default()
                },
                reason: Some(reason.clone()),
                message: Some(message.clone()),
                source: Some(EventSource {
                    component: Some("kubelet".into()),
                    host: Some(this.node.clone()),
                }),
                first_timestamp: Some(now.clone()),
                last_timestamp: Some(now),
                count: Some(1),
                type_: Some(kind),
                reporting_component: Some("kubelet".into()),
                reporting_instance: Some(this.node.clone()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &event).await {
                Ok(_) => {
                    if let Ok(mut seen) = this.seen.lock() {
                        seen.insert((about, reason, message), (name, 1));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot post event {reason}"),
            }
        });
    }
}

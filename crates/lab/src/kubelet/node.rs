//! The kubelet's Node: registration (labels, taints, pod ranges,
//! addresses, capacity, node info, the kubelet endpoint), the Lease in
//! kube-node-lease renewed every 10 s, and the status kept fresh: the
//! network checks run every 2 s and a changed Ready condition is posted at
//! once (else the status is posted every minute). The Node object and its
//! status are computed by pure functions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::error::{KubeletError, Result};
use super::health::{Checker, verdict};
use super::{Ctx, KUBELET_VERSION, KubeletConfig, RUNTIME_VERSION};

/// How often the Lease is renewed, and how long it lasts.
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
/// How often the network of a Ready node is checked.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often it is checked while the node is NotReady: a node waiting for
/// its network plugin turns Ready soon after the plugin is there.
const CHECK_EVERY_NOT_READY: Duration = Duration::from_millis(500);
/// How often an unchanged status is posted anyway.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Parses `--register-with-taints key=value:Effect,...` (value optional).
pub fn parse_taints(text: &str) -> std::result::Result<Vec<Taint>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let item = item.trim();
            let (kv, effect) = item.rsplit_once(':').ok_or_else(|| {
                format!("taint {item:?} has no effect: write key=value:NoSchedule")
            })?;
            if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                return Err(format!(
                    "taint {item:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"
                ));
            }
            let (key, value) = match kv.split_once('=') {
                Some((k, v)) => (k, Some(v.to_string())),
                None => (kv, None),
            };
            if key.is_empty() {
                return Err(format!("taint {item:?} has an empty key"));
            }
            Ok(Taint {
                key: key.into(),
                value,
                effect: effect.into(),
                time_added: None,
            })
        })
        .collect()
}

/// Parses `--node-labels k=v,...`.
pub fn parse_labels(text: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|item| {
            let (k, v) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("label {item:?} is not key=value"))?;
            if k.is_empty() {
                return Err(format!("label {item:?} has an empty key"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// What the machine has, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    pub cpus: u64,
    /// Bytes.
    pub memory: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

impl Machine {
    pub fn read() -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let memory = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            memory,
            kernel: read("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// Kubernetes' name of this machine's architecture.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn resources(m: &Machine) -> BTreeMap<String, Quantity> {
    [
        ("cpu", m.cpus.to_string()),
        ("memory", format!("{}Ki", m.memory / 1024)),
        ("pods", "110".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect()
}

/// The Node to register (pure).
pub fn node_object(cfg: &KubeletConfig, m: &Machine) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), cfg.node.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    labels.extend(cfg.labels.clone());
    let cidrs: Vec<String> = cfg
        .pod_cidrs
        .iter()
        .map(|c| c.trunc().to_string())
        .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: cidrs.first().cloned(),
            pod_cidrs: (!cidrs.is_empty()).then_some(cidrs),
            taints: (!cfg.taints.is_empty()).then(|| cfg.taints.clone()),
            ..Default::default()
        }),
        status: Some(node_status(cfg, m, &Ok(()), None, Timestamp::now())),
    }
}

/// The node's status (pure): `ready` is the network verdict; transition
/// times stay from `previous` while a condition keeps its status.
pub fn node_status(
    cfg: &KubeletConfig,
    m: &Machine,
    ready: &std::result::Result<(), String>,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let cond = |kind: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        NodeCondition {
            type_: kind.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(since),
        }
    };
    let ready_condition = match ready {
        Ok(()) => cond(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status".into(),
        ),
        Err(why) => cond("Ready", false, "KubeletNotReady", why.clone()),
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: cfg.node.clone(),
            },
        ]),
        capacity: Some(resources(m)),
        allocatable: Some(resources(m)),
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available".into(),
            ),
            cond(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure".into(),
            ),
            cond(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available".into(),
            ),
            ready_condition,
        ]),
        // The API server then proxies exec WebSockets to this kubelet
        // instead of translating them to SPDY (exec.rs).
        declared_features: Some(vec!["ExtendWebSocketsToKubelet".into()]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(cfg.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: m.boot_id.clone(),
            container_runtime_version: RUNTIME_VERSION.into(),
            kernel_version: m.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: m.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: m.os_image.clone(),
            system_uuid: m.machine_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node, or (after a restart) brings the existing one's labels
/// up to date; retries until the API answers. Returns the Node's uid.
pub(crate) async fn register(ctx: &Ctx) -> Result<String> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let node = node_object(&ctx.cfg, &ctx.machine);
    let mut delay = Duration::from_millis(500);
    loop {
        let outcome = match api.create(&PostParams::default(), &node).await {
            Ok(created) => Ok(created),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Ours from an earlier run: labels may change; taints and
                // pod ranges may not (NodeRestriction, immutability).
                let patch = json!({"metadata": {"labels": node.metadata.labels}});
                api.patch(&ctx.cfg.node, &PatchParams::default(), &Patch::Merge(patch))
                    .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(n) => {
                let uid = n.metadata.uid.unwrap_or_default();
                let cidr = n.spec.and_then(|s| s.pod_cidr);
                if let (Some(theirs), Some(ours)) = (&cidr, ctx.cfg.pod_cidrs.first())
                    && theirs != &ours.trunc().to_string()
                {
                    tracing::warn!(node = %ctx.cfg.node, %theirs, ours = %ours, "the Node keeps the pod range it was registered with; --pod-cidr differs");
                }
                tracing::info!(node = %ctx.cfg.node, "node registered");
                return Ok(uid);
            }
            Err(e) => {
                let err = ctx
                    .kube
                    .error("create", &format!("nodes/{}", ctx.cfg.node), e);
                if let podwire_model::SourceError::Forbidden { .. }
                | podwire_model::SourceError::Config { .. } = err
                {
                    return Err(KubeletError::Api(err));
                }
                tracing::warn!(error = %err, "cannot register the node yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Renews the node's Lease every 10 s, forever.
pub(crate) async fn lease_loop(ctx: Arc<Ctx>, node_uid: String) {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let name = ctx.cfg.node.clone();
    loop {
        let now = MicroTime(Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(now),
            ..Default::default()
        };
        let result = match api.get_opt(&name).await {
            Ok(Some(mut lease)) => {
                lease.spec = Some(spec);
                api.replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(drop)
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid: node_uid.clone(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                api.create(&PostParams::default(), &lease).await.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            let err = ctx
                .kube
                .error("update", &format!("leases/{name} in kube-node-lease"), e);
            tracing::warn!(error = %err, "cannot renew the node lease");
        }
        tokio::time::sleep(LEASE_RENEW).await;
    }
}

/// Checks the network (every 2 s, every 0.5 s while NotReady) and posts
/// the node's status when Ready changes (at once) or every minute.
pub(crate) async fn status_loop(ctx: Arc<Ctx>) {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut checker = Checker {
        conf_dir: ctx.cfg.cni_conf_dir.clone(),
        agent_url: ctx.cfg.agent_health.clone(),
        agent_seen_ready: false,
    };
    let mut last: Option<(std::result::Result<(), String>, Instant)> = None;
    let mut previous: Option<NodeStatus> = None;
    loop {
        let facts = checker
            .facts(ctx.network_pods.load(Ordering::Relaxed))
            .await;
        let ready = verdict(&facts);
        let due = match &last {
            None => true,
            Some((was, at)) => *was != ready || at.elapsed() >= REPORT_EVERY,
        };
        if due {
            let status = node_status(
                &ctx.cfg,
                &ctx.machine,
                &ready,
                previous.as_ref(),
                Timestamp::now(),
            );
            let patch = json!({"status": status});
            match api
                .patch_status(
                    &ctx.cfg.node,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => {
                    if last.as_ref().is_none_or(|(was, _)| *was != ready) {
                        match &ready {
                            Ok(()) => tracing::info!(node = %ctx.cfg.node, "node is Ready"),
                            Err(why) => {
                                tracing::warn!(node = %ctx.cfg.node, reason = %why, "node is NotReady")
                            }
                        }
                    }
                    last = Some((ready, Instant::now()));
                    previous = Some(status);
                }
                Err(e) => {
                    let err = ctx
                        .kube
                        .error("patch", &format!("nodes/{}/status", ctx.cfg.node), e);
                    tracing::warn!(error = %err, "cannot post the node status");
                }
            }
        }
        let ready_now = last.as_ref().is_some_and(|(ready, _)| ready.is_ok());
        tokio::time::sleep(if ready_now {
            CHECK_EVERY
        } else {
            CHECK_EVERY_NOT_READY
        })
        .await;
    }
}

#[cfg(test)]
mod tests;

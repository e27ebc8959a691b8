//! The lab supervisor: one background process per lab that owns every
//! long-running part (node agents, pod containers), restarts what dies, and
//! carries out `up`, `apply`, `delete` and `down` requests that arrive on
//! the lab's control socket, one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use podwire_model::k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podwire_model::k8s_openapi::jiff::Timestamp;
use podwire_model::{ClusterState, Kind, LabNode, LabPlan, LabSpec, Object, PlannedNode, Store};
use serde::{Deserialize, Serialize};

use crate::certs::{self, LabCa};
use crate::error::{LabError, Result};
use crate::paths::{LabPaths, netns_path};
use crate::spawn::{self, Sandbox};
use crate::{netns, runtime, topology};

/// Where the lab's ingress controller runs and what it is called, as
/// ingress-nginx's install manifests name theirs.
pub const INGRESS_NAMESPACE: &str = "ingress-podwire";
pub const INGRESS_NAME: &str = "podwire-ingress";
/// The IngressClass the lab installs (the controller's default `--class`).
pub const INGRESS_CLASS: &str = "podwire";
/// The nodePorts of the controller's Service on every node.
pub const INGRESS_HTTP_NODE_PORT: i32 = 30800;
pub const INGRESS_HTTPS_NODE_PORT: i32 = 30443;

/// A request on the control socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub op: String,
    #[serde(default)]
    pub yaml: String,
}

/// One reply line: progress, or the final word.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// What the lab persists about itself besides the cluster objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub spec: LabSpec,
}

pub fn save_record(paths: &LabPaths, spec: &LabSpec) -> Result<()> {
    let body = serde_json::to_vec_pretty(&LabRecord { spec: spec.clone() })
        .map_err(|e| LabError::Failed(e.to_string()))?;
    let tmp = paths.lab_file().with_extension("tmp");
    std::fs::write(&tmp, body).map_err(|e| LabError::io("cannot write lab.json", e))?;
    std::fs::rename(&tmp, paths.lab_file()).map_err(|e| LabError::io("cannot write lab.json", e))
}

pub fn load_record(paths: &LabPaths) -> Result<LabRecord> {
    let bytes =
        std::fs::read(paths.lab_file()).map_err(|_| LabError::NoSuchLab(paths.name.clone()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LabError::Failed(format!("corrupt {}: {e}", paths.lab_file().display())))
}

struct Proc {
    child: Child,
    restarts: i32,
    policy: String,
    started: Instant,
}

/// Everything the supervisor knows and owns.
pub struct Controller {
    paths: LabPaths,
    exe: PathBuf,
    spec: LabSpec,
    plan: LabPlan,
    store: Store,
    state: ClusterState,
    containers: BTreeMap<(String, String, String), Proc>,
    agents: BTreeMap<String, Proc>,
    /// Processes of the world outside the cluster (the external host's DNS).
    extras: Vec<Proc>,
}

type Progress<'a> = &'a mut dyn FnMut(&str);

fn now() -> Time {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or_default())
}

fn key(pod: &Pod) -> (String, String) {
    runtime::pod_key(pod)
}

fn container_id(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

impl Controller {
    pub fn new(paths: LabPaths, exe: PathBuf, spec: LabSpec) -> Result<Controller> {
        let plan = podwire_model::plan_lab(&spec)?;
        let store = Store::open(paths.cluster());
        Ok(Controller {
            paths,
            exe,
            spec,
            plan,
            store,
            state: ClusterState::default(),
            containers: BTreeMap::new(),
            agents: BTreeMap::new(),
            extras: Vec::new(),
        })
    }

    fn planned(&self, node: &str) -> Result<PlannedNode> {
        self.plan
            .nodes
            .iter()
            .find(|n| n.name == node)
            .cloned()
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "node {node:?} is not part of lab {}",
                    self.paths.name
                ))
            })
    }

    /// Builds the lab from its manifest.
    pub fn up(&mut self, objects: Vec<Object>, progress: Progress) -> Result<String> {
        let started = Instant::now();
        runtime::prepare_cni_bin(&self.paths, &self.exe)?;
        self.store.write_config(&self.spec.cluster_config())?;
        save_record(&self.paths, &self.spec)?;
        topology::build_base(&self.paths, &self.spec, &self.plan)?;
        progress(&format!(
            "switch and router up ({} underlay{}){}",
            self.spec.underlays.len(),
            if self.spec.underlays.len() == 1 {
                ""
            } else {
                "s"
            },
            self.plan
                .external
                .as_ref()
                .map(|x| format!(", external host {} at {}", x.name, x.ip.addr()))
                .unwrap_or_default()
        ));
        let default_ns = Object::Namespace(podwire_model::Namespace {
            metadata: podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("default".into()),
                creation_timestamp: Some(now()),
                ..Default::default()
            },
            ..Default::default()
        });
        self.store.put(&default_ns)?;
        self.state.insert(default_ns);
        for node in self.plan.nodes.clone() {
            self.add_node(&node, progress)?;
        }
        self.store.bump()?;
        self.start_external_dns(progress)?;
        let ca = LabCa::create(&self.paths.dir, &self.paths.name)?;
        progress(&format!(
            "lab CA in {} ({} certificate{})",
            LabCa::cert_path(&self.paths.dir).display(),
            self.spec.certificates.len(),
            if self.spec.certificates.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
        let mut all = self.system_objects()?;
        // An object the manifest declares itself replaces the lab's own
        // (e.g. a Deployment podwire-ingress with other replicas).
        all.retain(|sys| {
            !objects.iter().any(|o| {
                o.kind() == sys.kind() && o.namespace() == sys.namespace() && o.name() == sys.name()
            })
        });
        all.extend(objects);
        for cert in &self.spec.certificates {
            all.push(ca.secret(cert)?);
        }
        self.apply(all, progress)?;
        let pods = self.state.pods.len();
        Ok(format!(
            "lab {} is up in {:.1} s: {} nodes, {} pods, {} services ({} routing)",
            self.paths.name,
            started.elapsed().as_secs_f64(),
            self.plan.nodes.len(),
            pods,
            self.state.services.len(),
            match self.spec.routing {
                podwire_model::RoutingMode::HostGw => "host-gw",
                podwire_model::RoutingMode::Vxlan => "vxlan",
            }
        ))
    }

    fn add_node(&mut self, node: &PlannedNode, progress: Progress) -> Result<()> {
        topology::add_node(&self.paths, &self.spec, node)?;
        runtime::write_conflist(&self.paths, node, self.spec.routing)?;
        let mut object = podwire_model::node_object(node);
        object.metadata.creation_timestamp = Some(now());
        object
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "podwire.io/mac".into(),
                podwire_kernel::link::format_mac(&node.mac),
            );
        let object = Object::Node(object);
        self.store.put(&object)?;
        self.state.insert(object);
        self.start_agent(&node.name)?;
        progress(&format!(
            "node {} up: {} on {}, pods {}",
            node.name,
            node.ip.addr(),
            node.underlay,
            node.pod_cidr
        ));
        Ok(())
    }

    /// The external host serves the names of the world outside the cluster
    /// (a hosts file: `external.example.com` and friends), so pods resolve
    /// external names through cluster DNS forwarding without the lab ever
    /// sending a query off the machine.
    fn start_external_dns(&mut self, progress: Progress) -> Result<()> {
        let Some(ext) = self.plan.external.clone() else {
            return Ok(());
        };
        let dir = self.paths.dir.join("external");
        std::fs::create_dir_all(dir.join("store"))
            .map_err(|e| LabError::io("cannot create the external host's files", e))?;
        let ip = ext.ip.addr();
        let hosts = format!(
            "{ip}\t{name}.example.com {name}.example.org\n",
            name = ext.name
        );
        std::fs::write(dir.join("hosts"), hosts)
            .map_err(|e| LabError::io("cannot write the external host's hosts file", e))?;
        std::fs::write(dir.join("resolv.conf"), "")
            .map_err(|e| LabError::io("cannot write the external host's resolv.conf", e))?;
        let (log, log_err) = runtime::open_log(&dir.join("dns.log"))?;
        let sandbox = Sandbox {
            netns: Some(netns_path(&self.paths.external_ns(&ext.name))),
            hostname: Some(ext.name.clone()),
            binds: Vec::new(),
        };
        let mut cmd = spawn::command(&self.exe, &sandbox)?;
        cmd.arg("dns")
            .arg("--source")
            .arg(format!("files:{}", dir.join("store").display()))
            .arg("--zone")
            .arg("example.invalid")
            .arg("--hosts")
            .arg(dir.join("hosts"))
            .arg("--resolv-conf")
            .arg(dir.join("resolv.conf"))
            .args([
                "--listen",
                "0.0.0.0:53",
                "--health-listen",
                "off",
                "--ready-listen",
                "off",
                "--metrics-listen",
                "off",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io("cannot start the external host's DNS server", e))?;
        self.extras.push(Proc {
            child,
            restarts: 0,
            policy: "Always".into(),
            started: Instant::now(),
        });
        runtime::wait_reachable(
            &self.paths.external_ns(&ext.name),
            SocketAddr::new(IpAddr::V4(ip), 53),
            Duration::from_secs(5),
        )?;
        progress(&format!(
            "external host serves DNS for {}.example.com at {ip}",
            ext.name
        ));
        Ok(())
    }

    /// What the lab installs besides the manifest's objects: cluster DNS
    /// (as kubeadm does) and the ingress controller (as an ingress-nginx
    /// install manifest does), each unless the Lab spec turns it off.
    fn system_objects(&self) -> Result<Vec<Object>> {
        let mut objects = self.dns_objects()?;
        if self.spec.ingress {
            objects.extend(self.ingress_objects()?);
        }
        Ok(objects)
    }

    /// The ingress controller: namespace `ingress-podwire`, the default
    /// IngressClass `podwire`, two `podwire ingress` pods reading the lab's
    /// store, and the NodePort Service that makes them reachable on every
    /// node at 30800 (HTTP) and 30443 (HTTPS), as a bare-metal
    /// ingress-nginx is reached.
    fn ingress_objects(&self) -> Result<Vec<Object>> {
        let command = vec![
            self.exe.display().to_string(),
            "ingress".into(),
            "--source".into(),
            format!("files:{}", self.paths.cluster().display()),
            "--listen".into(),
            "0.0.0.0:80".into(),
            "--listen-tls".into(),
            "0.0.0.0:443".into(),
            "--metrics-listen".into(),
            "0.0.0.0:10254".into(),
            // Clients reach HTTPS at the nodePort, not at the pod's 443.
            "--https-redirect-port".into(),
            INGRESS_HTTPS_NODE_PORT.to_string(),
        ];
        let labels = serde_json::json!({
            "app.kubernetes.io/name": INGRESS_NAME,
            "app.kubernetes.io/component": "controller",
        });
        let namespace = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": INGRESS_NAMESPACE, "labels": {"app.kubernetes.io/name": INGRESS_NAME}},
        });
        let class = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {
                "name": INGRESS_CLASS,
                "labels": labels,
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
            },
            "spec": {"controller": "podwire.io/ingress"},
        });
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": INGRESS_NAME, "namespace": INGRESS_NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{
                            "name": "controller",
                            "command": command,
                            "ports": [
                                {"name": "http", "containerPort": 80, "protocol": "TCP"},
                                {"name": "https", "containerPort": 443, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 10254, "protocol": "TCP"},
                            ],
                            // 200 once the route table is loaded: `lab up`
                            // returns when the controller can route.
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                        }],
                    },
                },
            },
        });
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": INGRESS_NAME, "namespace": INGRESS_NAMESPACE, "labels": labels},
            "spec": {
                "type": "NodePort",
                "selector": labels,
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": INGRESS_HTTP_NODE_PORT},
                    {"name": "https", "port": 443, "protocol": "TCP", "targetPort": "https", "nodePort": INGRESS_HTTPS_NODE_PORT},
                ],
            },
        });
        [namespace, class, deployment, service]
            .iter()
            .map(|o| Object::from_json(o).map_err(LabError::from))
            .collect()
    }

    /// Cluster DNS, as kubeadm installs it: two replicas of `podwire dns`
    /// labelled k8s-app=kube-dns behind the kube-dns Service at the service
    /// range's tenth address.
    fn dns_objects(&self) -> Result<Vec<Object>> {
        let config = self.spec.cluster_config();
        let Some(dns_ip) =
            podwire_model::kube_dns_ip(config.service_cidr).filter(|_| self.spec.cluster_dns)
        else {
            return Ok(Vec::new());
        };
        let mut args = vec![
            "dns".to_string(),
            "--source".into(),
            format!("files:{}", self.paths.cluster().display()),
            "--zone".into(),
            config.cluster_domain.clone(),
            "--listen".into(),
            "0.0.0.0:53".into(),
        ];
        match &self.plan.external {
            Some(ext) => args.extend(["--upstream".into(), format!("{}:53", ext.ip.addr())]),
            None => args.extend(["--resolv-conf".into(), "/dev/null".into()]),
        }
        let mut command = vec![self.exe.display().to_string()];
        command.extend(args);
        let service = serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "clusterIP": dns_ip.to_string(),
                "selector": {"k8s-app": "kube-dns"},
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
                ]
            }
        });
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "coredns",
                            "command": command,
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}
                            ]
                        }]
                    }
                }
            }
        });
        Ok(vec![
            Object::from_json(&service)?,
            Object::from_json(&deployment)?,
        ])
    }

    fn start_agent(&mut self, node: &str) -> Result<()> {
        let sandbox = Sandbox {
            netns: Some(netns_path(&self.paths.node_ns(node))),
            hostname: Some(node.to_string()),
            binds: Vec::new(),
        };
        let log_path = self.paths.agent_log(node);
        let (log, log_err) = runtime::open_log(&log_path)?;
        let mut cmd = spawn::command(&self.exe, &sandbox)?;
        cmd.args(["agent", "--node", node, "--source"])
            .arg(format!("files:{}", self.paths.cluster().display()))
            .arg("--status-file")
            .arg(self.paths.agent_status(node))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("cannot start the agent of node {node}"), e))?;
        self.agents.insert(
            node.to_string(),
            Proc {
                child,
                restarts: 0,
                policy: "Always".into(),
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// Applies objects the way `kubectl apply` would, with the lab playing
    /// the controllers: scheduler, kubelet, deployment and endpoints.
    pub fn apply(&mut self, objects: Vec<Object>, progress: Progress) -> Result<()> {
        let namespaces: BTreeSet<String> = self
            .state
            .namespaces
            .keys()
            .cloned()
            .chain(
                podwire_model::BUILTIN_NAMESPACES
                    .iter()
                    .map(|s| s.to_string()),
            )
            .collect();
        podwire_model::validate_objects(&objects, &namespaces)?;
        let mut ordered = objects;
        ordered.sort_by_key(|o| match o.kind() {
            Kind::Namespace => 0,
            Kind::Node => 1,
            Kind::Secret => 2,
            Kind::Service => 3,
            Kind::Deployment => 4,
            Kind::Pod => 5,
            Kind::EndpointSlice => 6,
            Kind::IngressClass => 7,
            Kind::Ingress => 8,
        });
        let mut new_pods = Vec::new();
        for object in ordered {
            match object {
                Object::Service(service) => {
                    let mut all: Vec<_> = self.state.services.values().cloned().collect();
                    let key = (
                        service
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        service.metadata.name.clone().unwrap_or_default(),
                    );
                    all.retain(|s| {
                        (
                            s.metadata.namespace.clone().unwrap_or_default(),
                            s.metadata.name.clone().unwrap_or_default(),
                        ) != key
                    });
                    let mut service = service;
                    service.metadata.namespace = Some(key.0.clone());
                    if service.metadata.creation_timestamp.is_none() {
                        service.metadata.creation_timestamp = Some(now());
                    }
                    all.push(service);
                    podwire_model::allocate_service_addresses(
                        &mut all,
                        &self.spec.cluster_config(),
                    )?;
                    if let Some(service) = all.pop() {
                        let object = Object::Service(service);
                        self.store.put(&object)?;
                        self.state.insert(object);
                        progress(&format!("service {}/{} created", key.0, key.1));
                    }
                }
                Object::Deployment(deployment) => {
                    let mut deployment = deployment;
                    let namespace = deployment
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into());
                    deployment.metadata.namespace = Some(namespace.clone());
                    if deployment.metadata.creation_timestamp.is_none() {
                        deployment.metadata.creation_timestamp = Some(now());
                    }
                    let name = deployment.metadata.name.clone().unwrap_or_default();
                    let desired = podwire_model::expand_deployment(&deployment);
                    let desired_names: BTreeSet<String> = desired
                        .iter()
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    let owned: Vec<(String, String)> = self
                        .state
                        .pods
                        .iter()
                        .filter(|((ns, _), pod)| {
                            *ns == namespace
                                && pod.metadata.owner_references.as_ref().is_some_and(|refs| {
                                    refs.iter()
                                        .any(|r| r.kind == "Deployment" && r.name == name)
                                })
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for (ns, pod) in &owned {
                        if !desired_names.contains(pod) {
                            self.delete_pod(ns, pod)?;
                            progress(&format!("pod {ns}/{pod} deleted (scaled down)"));
                        }
                    }
                    for pod in desired {
                        if !self.state.pods.contains_key(&key(&pod)) {
                            new_pods.push(pod);
                        }
                    }
                    let object = Object::Deployment(deployment);
                    self.store.put(&object)?;
                    self.state.insert(object);
                }
                Object::Pod(pod) => {
                    let mut pod = pod;
                    if pod.metadata.namespace.is_none() {
                        pod.metadata.namespace = Some("default".into());
                    }
                    if !self.state.pods.contains_key(&key(&pod)) {
                        new_pods.push(pod);
                    }
                }
                other => {
                    let mut other = other;
                    if other.metadata().creation_timestamp.is_none() {
                        other.metadata_mut().creation_timestamp = Some(now());
                    }
                    self.store.put(&other)?;
                    self.state.insert(other);
                }
            }
        }
        // Schedule all new pods at once so they spread over the nodes.
        let nodes: Vec<String> = self.plan.nodes.iter().map(|n| n.name.clone()).collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for pod in self.state.pods.values() {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                *counts.entry(node).or_default() += 1;
            }
        }
        podwire_model::schedule(&mut new_pods, &nodes, &counts)?;
        let mut waits = Vec::new();
        for pod in new_pods {
            let (ns, name) = key(&pod);
            let created = self.create_pod(pod)?;
            progress(&format!(
                "pod {ns}/{name} running on {} at {}",
                created
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                created
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default()
            ));
            waits.push(created);
        }
        self.refresh_endpoints()?;
        let generation = self.store.bump()?;
        self.wait_agents(generation)?;
        for pod in waits {
            self.wait_ready(&pod)?;
        }
        Ok(())
    }

    /// Waits until every node agent has programmed routes for `generation`
    /// (or later); an agent that cannot is a failure with its diagnostic.
    fn wait_agents(&self, generation: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pending: Vec<String> = self.plan.nodes.iter().map(|n| n.name.clone()).collect();
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        while !pending.is_empty() {
            pending.retain(|node| {
                let status = std::fs::read(self.paths.agent_status(node))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<podwire_routing::AgentStatus>(&b).ok());
                match status {
                    Some(s) if s.generation >= generation && s.ok => {
                        errors.remove(node);
                        false
                    }
                    Some(s) if s.generation >= generation => {
                        errors.insert(node.clone(), s.error.unwrap_or_default());
                        true
                    }
                    _ => true,
                }
            });
            if pending.is_empty() {
                break;
            }
            // A node whose agent reported a failure for this generation will
            // retry, but the cause (e.g. host-gw across a router) will not go
            // away by itself: report it after a short grace period.
            if !errors.is_empty() && errors.len() == pending.len() || Instant::now() > deadline {
                let detail: Vec<String> = pending
                    .iter()
                    .map(|n| {
                        format!(
                            "node {n}: {}",
                            errors
                                .get(n)
                                .cloned()
                                .unwrap_or_else(|| "the agent did not report (see its log)".into())
                        )
                    })
                    .collect();
                return Err(LabError::Failed(format!(
                    "pod routes are not in place: {}",
                    detail.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Applies a changed Lab document: nodes may be added and certificates
    /// added or changed; every other setting is fixed when the lab comes up.
    /// Returns the certificate Secrets to create or replace (new, or whose
    /// hosts changed, or deleted since), for [`Controller::apply`] together
    /// with the document's `objects`.
    pub fn apply_lab(
        &mut self,
        spec: &LabSpec,
        objects: &[Object],
        progress: Progress,
    ) -> Result<Vec<Object>> {
        let mut fixed = spec.clone();
        fixed.name = self.spec.name.clone();
        fixed.nodes = self.spec.nodes.clone();
        fixed.certificates = self.spec.certificates.clone();
        if fixed != self.spec {
            return Err(LabError::Invalid(
                "only nodes and certificates can be added to a running lab: its ranges, routing, underlays, external host, clusterDNS and ingress are fixed at `lab up` (run `lab down` and `lab up` to change them)".into(),
            ));
        }
        let secrets = self.certificate_secrets(spec, objects, progress)?;
        let added: Vec<LabNode> = spec
            .nodes
            .iter()
            .filter(|n| !self.spec.nodes.iter().any(|m| m.name == n.name))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(secrets);
        }
        let mut next = self.spec.clone();
        next.nodes.extend(added.iter().cloned());
        next.validate()?;
        let plan = podwire_model::plan_lab(&next)?;
        self.spec = next;
        self.plan = plan;
        save_record(&self.paths, &self.spec)?;
        let names: Vec<String> = added.iter().map(|n| n.name.clone()).collect();
        let outcome = (|| -> Result<()> {
            for node in &added {
                let planned = self.planned(&node.name)?;
                self.add_node(&planned, progress)?;
            }
            let generation = self.store.bump()?;
            self.wait_agents(generation)
        })();
        if let Err(e) = outcome {
            // A node whose routes cannot work is not left half in the lab.
            for name in &names {
                let _ = self.remove_node(name);
            }
            self.store.bump()?;
            return Err(e);
        }
        Ok(secrets)
    }

    /// The Secrets of a Lab document's certificates that are missing or
    /// issued for other hosts; records the document's certificate list.
    /// Unchanged ones are left alone, so re-applying the lab file does not
    /// churn keys.
    fn certificate_secrets(
        &mut self,
        spec: &LabSpec,
        objects: &[Object],
        progress: Progress,
    ) -> Result<Vec<Object>> {
        let mut next = self.spec.clone();
        next.certificates = spec.certificates.clone();
        next.validate()?;
        let namespaces: BTreeSet<String> = self.state.namespaces.keys().cloned().collect();
        next.validate_certificates_with(objects, &namespaces)?;
        let wanted: Vec<_> = spec
            .certificates
            .iter()
            .filter(|cert| {
                self.state
                    .secrets
                    .get(&(cert.namespace.clone(), cert.name.clone()))
                    .is_none_or(|secret| !certs::is_current(secret, cert))
            })
            .collect();
        let mut secrets = Vec::new();
        if !wanted.is_empty() {
            let ca = LabCa::load(&self.paths.dir, &self.paths.name)?;
            for cert in wanted {
                secrets.push(ca.secret(cert)?);
                progress(&format!(
                    "certificate {}/{} issued for {}",
                    cert.namespace,
                    cert.name,
                    cert.hosts.join(", ")
                ));
            }
        }
        self.spec.certificates = spec.certificates.clone();
        save_record(&self.paths, &self.spec)?;
        Ok(secrets)
    }

    /// Removes the nodes a Lab document names (`lab delete -f` of a Lab).
    pub fn delete_nodes(&mut self, spec: &LabSpec, progress: Progress) -> Result<()> {
        for node in &spec.nodes {
            if self.spec.nodes.iter().any(|n| n.name == node.name) {
                self.remove_node(&node.name)?;
                progress(&format!("node {} removed", node.name));
            }
        }
        self.refresh_endpoints()?;
        self.store.bump()?;
        Ok(())
    }

    fn remove_node(&mut self, name: &str) -> Result<()> {
        let on_node: Vec<(String, String)> = self
            .state
            .pods
            .iter()
            .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
            .map(|(k, _)| k.clone())
            .collect();
        for (ns, pod) in on_node {
            self.delete_pod(&ns, &pod)?;
        }
        if let Some(mut agent) = self.agents.remove(name) {
            let _ = agent.child.kill();
            let _ = agent.child.wait();
        }
        topology::remove_node(&self.paths, name)?;
        let _ = std::fs::remove_dir_all(self.paths.node_dir(name));
        self.spec.nodes.retain(|n| n.name != name);
        self.plan.nodes.retain(|n| n.name != name);
        save_record(&self.paths, &self.spec)?;
        self.state.remove(Kind::Node, "", name);
        self.store.delete(Kind::Node, "", name)?;
        Ok(())
    }

    fn create_pod(&mut self, mut pod: Pod) -> Result<Pod> {
        let (namespace, name) = key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| LabError::Failed(format!("pod {namespace}/{name} was not scheduled")))?;
        let planned = self.planned(&node)?;
        if pod.metadata.uid.is_none() {
            pod.metadata.uid = Some(random_uid());
        }
        pod.metadata.creation_timestamp = Some(now());
        let ips = runtime::create_sandbox(
            &self.paths,
            &self.spec.cluster_config(),
            &pod,
            &node,
            &container_id(&pod),
        )?;
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
                        Proc {
                            child,
                            restarts: 0,
                            policy: policy.clone(),
                            started: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    self.stop_containers(&namespace, &name);
                    let _ = runtime::destroy_sandbox(&self.paths, &pod, &node, &container_id(&pod));
                    return Err(e);
                }
            }
            statuses.push(ContainerStatus {
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
            });
        }
        let condition = |kind: &str| PodCondition {
            type_: kind.into(),
            status: "True".into(),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            host_ip: Some(planned.ip.addr().to_string()),
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
        let object = Object::Pod(pod.clone());
        self.store.put(&object)?;
        self.state.insert(object);
        Ok(pod)
    }

    /// A pod is ready when every declared container port answers from its node.
    fn wait_ready(&self, pod: &Pod) -> Result<()> {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            return Ok(());
        };
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(());
        };
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
            return Ok(());
        };
        for container in pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default()
        {
            let ports: Vec<i32> = match (&container.command, &container.ports) {
                (_, Some(ports)) => ports
                    .iter()
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .map(|p| p.container_port)
                    .collect(),
                (None, None) => vec![8080],
                (Some(_), None) => Vec::new(),
            };
            for port in ports {
                let Ok(port) = u16::try_from(port) else {
                    continue;
                };
                runtime::wait_reachable(
                    &self.paths.node_ns(&node),
                    SocketAddr::new(ip, port),
                    Duration::from_secs(10),
                )?;
            }
            // An httpGet readiness probe, as kubelet runs it: e.g. the
            // ingress controller's /healthz, 200 once its routes are loaded.
            if let Some(get) = container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
            {
                use podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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
                runtime::wait_http_ready(
                    &self.paths.node_ns(&node),
                    SocketAddr::new(ip, port),
                    get.path.as_deref().unwrap_or("/"),
                    Duration::from_secs(10),
                )?;
            }
        }
        Ok(())
    }

    fn stop_containers(&mut self, namespace: &str, pod: &str) {
        let keys: Vec<_> = self
            .containers
            .keys()
            .filter(|(ns, p, _)| ns == namespace && p == pod)
            .cloned()
            .collect();
        for k in keys {
            if let Some(mut proc) = self.containers.remove(&k) {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
            }
        }
    }

    fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        self.stop_containers(namespace, name);
        let Some(pod) = self
            .state
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
        else {
            return Ok(());
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        runtime::destroy_sandbox(&self.paths, &pod, &node, &container_id(&pod))?;
        self.state.remove(Kind::Pod, namespace, name);
        self.store.delete(Kind::Pod, namespace, name)?;
        Ok(())
    }

    /// Deletes objects (the lab's `kubectl delete -f`).
    pub fn delete(&mut self, objects: Vec<Object>, progress: Progress) -> Result<()> {
        for object in objects {
            let (kind, namespace, name) = (object.kind(), object.namespace(), object.name());
            match kind {
                Kind::Pod => self.delete_pod(&namespace, &name)?,
                Kind::Deployment => {
                    let owned: Vec<(String, String)> = self
                        .state
                        .pods
                        .iter()
                        .filter(|((ns, _), pod)| {
                            *ns == namespace
                                && pod.metadata.owner_references.as_ref().is_some_and(|r| {
                                    r.iter().any(|r| r.kind == "Deployment" && r.name == name)
                                })
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for (ns, pod) in owned {
                        self.delete_pod(&ns, &pod)?;
                    }
                    self.state.remove(kind, &namespace, &name);
                    self.store.delete(kind, &namespace, &name)?;
                }
                Kind::Node => self.remove_node(&name)?,
                Kind::Namespace => {
                    let pods: Vec<(String, String)> = self
                        .state
                        .pods
                        .keys()
                        .filter(|(ns, _)| *ns == name)
                        .cloned()
                        .collect();
                    for (ns, pod) in pods {
                        self.delete_pod(&ns, &pod)?;
                    }
                    for kind in [Kind::Service, Kind::Deployment, Kind::Ingress, Kind::Secret] {
                        for (ns, n) in self.names_of(kind) {
                            if ns == name {
                                self.state.remove(kind, &ns, &n);
                                self.store.delete(kind, &ns, &n)?;
                            }
                        }
                    }
                    self.state.remove(kind, "", &name);
                    self.store.delete(kind, "", &name)?;
                }
                _ => {
                    self.state.remove(kind, &namespace, &name);
                    self.store.delete(kind, &namespace, &name)?;
                }
            }
            progress(&format!("{} deleted", object.describe()));
        }
        self.refresh_endpoints()?;
        self.store.bump()?;
        Ok(())
    }

    fn names_of(&self, kind: Kind) -> Vec<(String, String)> {
        match kind {
            Kind::Service => self.state.services.keys().cloned().collect(),
            Kind::Deployment => self.state.deployments.keys().cloned().collect(),
            Kind::Ingress => self.state.ingresses.keys().cloned().collect(),
            Kind::Secret => self.state.secrets.keys().cloned().collect(),
            Kind::Pod => self.state.pods.keys().cloned().collect(),
            Kind::EndpointSlice => self.state.endpoint_slices.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Recomputes EndpointSlices from Services and pods, as the controller does.
    fn refresh_endpoints(&mut self) -> Result<()> {
        let services: Vec<_> = self.state.services.values().cloned().collect();
        let pods: Vec<_> = self.state.pods.values().cloned().collect();
        let slices = podwire_model::endpoint_slices(&services, &pods);
        let mut keep = BTreeSet::new();
        for mut slice in slices {
            let key = (
                slice.metadata.namespace.clone().unwrap_or_default(),
                slice.metadata.name.clone().unwrap_or_default(),
            );
            slice.metadata.creation_timestamp = self
                .state
                .endpoint_slices
                .get(&key)
                .and_then(|old| old.metadata.creation_timestamp.clone())
                .or_else(|| Some(now()));
            let object = Object::EndpointSlice(slice);
            keep.insert((object.namespace(), object.name()));
            self.store.put(&object)?;
            self.state.insert(object);
        }
        for (ns, name) in self.names_of(Kind::EndpointSlice) {
            if !keep.contains(&(ns.clone(), name.clone())) {
                self.state.remove(Kind::EndpointSlice, &ns, &name);
                self.store.delete(Kind::EndpointSlice, &ns, &name)?;
            }
        }
        Ok(())
    }

    /// Restarts dead containers and agents according to their policy.
    pub fn reap(&mut self) {
        let mut restart = Vec::new();
        for (k, proc) in self.containers.iter_mut() {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let again = match proc.policy.as_str() {
                    "Never" => false,
                    "OnFailure" => !status.success(),
                    _ => true,
                };
                if again && proc.started.elapsed() > Duration::from_secs(1) {
                    restart.push(k.clone());
                }
            }
        }
        for (ns, pod, container) in restart {
            let Some(p) = self.state.pods.get(&(ns.clone(), pod.clone())).cloned() else {
                continue;
            };
            let Some(spec) = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == container).cloned())
            else {
                continue;
            };
            if let Ok(child) = runtime::start_container(&self.paths, &self.exe, &p, &spec)
                && let Some(proc) = self.containers.get_mut(&(ns, pod, container))
            {
                proc.child = child;
                proc.restarts += 1;
                proc.started = Instant::now();
            }
        }
        let dead_agents: Vec<String> = self
            .agents
            .iter_mut()
            .filter_map(|(node, proc)| match proc.child.try_wait() {
                Ok(Some(_)) if proc.started.elapsed() > Duration::from_secs(1) => {
                    Some(node.clone())
                }
                _ => None,
            })
            .collect();
        for node in dead_agents {
            let restarts = self.agents.get(&node).map(|p| p.restarts).unwrap_or(0);
            if self.start_agent(&node).is_ok()
                && let Some(p) = self.agents.get_mut(&node)
            {
                p.restarts = restarts + 1;
            }
        }
    }

    /// Stops everything and removes every namespace and file of the lab.
    pub fn down(&mut self) {
        for (_, mut proc) in std::mem::take(&mut self.containers) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        for (_, mut proc) in std::mem::take(&mut self.agents) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        for mut proc in std::mem::take(&mut self.extras) {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        teardown(&self.paths);
    }

    pub fn agent_pids(&self) -> Vec<u32> {
        self.agents.values().map(|p| p.child.id()).collect()
    }
}

/// Removes a lab from its records alone: every recorded namespace (and every
/// process inside), then the state directory. Used by the supervisor and by
/// `lab down` when the supervisor is gone.
pub fn teardown(paths: &LabPaths) {
    let names = netns::recorded(paths);
    // Pods first, so their processes die before the nodes' agents.
    let (pods, others): (Vec<_>, Vec<_>) = names.into_iter().partition(|n| n.contains("-p-"));
    for name in pods.into_iter().chain(others) {
        let _ = netns::delete(paths, &name);
    }
    let _ = std::fs::remove_dir_all(&paths.dir);
}

fn send(stream: &mut UnixStream, reply: &Reply) {
    if let Ok(line) = serde_json::to_string(reply) {
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.write_all(b"\n");
    }
}

/// The supervisor's main loop: serve requests until `down`.
pub fn serve(paths: LabPaths, exe: PathBuf) -> Result<()> {
    let record = load_record(&paths)?;
    let controller = Arc::new(Mutex::new(Controller::new(
        paths.clone(),
        exe,
        record.spec,
    )?));
    let _ = std::fs::remove_file(paths.socket());
    let listener = UnixListener::bind(paths.socket())
        .map_err(|e| LabError::io("cannot open the control socket", e))?;
    std::fs::write(paths.supervisor_pid(), std::process::id().to_string())
        .map_err(|e| LabError::io("cannot write supervisor.pid", e))?;
    {
        let controller = Arc::clone(&controller);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                if let Ok(mut c) = controller.lock() {
                    c.reap();
                }
            }
        });
    }
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                send(
                    &mut stream,
                    &Reply {
                        done: Some(false),
                        error: Some(format!("bad request: {e}")),
                        ..Default::default()
                    },
                );
                continue;
            }
        };
        let mut out = stream
            .try_clone()
            .map_err(|e| LabError::io("control socket", e))?;
        let mut progress = |msg: &str| {
            tracing::info!("{msg}");
            send(
                &mut out,
                &Reply {
                    progress: Some(msg.to_string()),
                    ..Default::default()
                },
            );
        };
        let Ok(mut c) = controller.lock() else { break };
        let outcome: Result<Option<String>> = match request.op.as_str() {
            "up" => std::fs::read_to_string(paths.dir.join("manifest.yaml"))
                .map_err(|e| LabError::io("cannot read the lab manifest", e))
                .and_then(|text| podwire_model::parse_lab(&text).map_err(LabError::from))
                .and_then(|m| c.up(m.objects, &mut progress).map(Some)),
            "apply" => podwire_model::parse_manifest(&request.yaml)
                .map_err(LabError::from)
                .and_then(|(lab, mut objs)| {
                    if let Some(spec) = &lab {
                        let secrets = c.apply_lab(spec, &objs, &mut progress)?;
                        objs.extend(secrets);
                    }
                    c.apply(objs, &mut progress).map(|_| None)
                }),
            "delete" => podwire_model::parse_manifest(&request.yaml)
                .map_err(LabError::from)
                .and_then(|(lab, objs)| {
                    c.delete(objs, &mut progress)?;
                    if let Some(spec) = &lab {
                        c.delete_nodes(spec, &mut progress)?;
                    }
                    Ok(None)
                }),
            "ping" => Ok(None),
            "down" => {
                c.down();
                send(
                    &mut stream,
                    &Reply {
                        done: Some(true),
                        summary: Some(format!("lab {} removed", paths.name)),
                        ..Default::default()
                    },
                );
                std::process::exit(0);
            }
            other => Err(LabError::Invalid(format!("unknown request {other:?}"))),
        };
        match outcome {
            Ok(summary) => send(
                &mut stream,
                &Reply {
                    done: Some(true),
                    summary,
                    ..Default::default()
                },
            ),
            Err(e) => send(
                &mut stream,
                &Reply {
                    done: Some(false),
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            ),
        }
    }
    Ok(())
}

/// Sends one request and streams the replies to `on_progress`.
pub fn request(
    paths: &LabPaths,
    op: &str,
    yaml: &str,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Option<String>> {
    let mut stream = UnixStream::connect(paths.socket())
        .map_err(|e| LabError::Failed(format!("the supervisor of lab {} does not answer ({e}); `podwire lab down --name {}` still removes it", paths.name, paths.name)))?;
    let line = serde_json::to_string(&Request {
        op: op.into(),
        yaml: yaml.into(),
    })
    .map_err(|e| LabError::Failed(e.to_string()))?;
    stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.write_all(b"\n"))
        .map_err(|e| LabError::io("control socket", e))?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| LabError::io("control socket", e))?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| LabError::Failed(format!("bad reply {line:?}: {e}")))?;
        if let Some(msg) = &reply.progress {
            on_progress(msg);
        }
        if let Some(done) = reply.done {
            return if done {
                Ok(reply.summary)
            } else {
                Err(LabError::Failed(reply.error.unwrap_or_default()))
            };
        }
    }
    Err(LabError::Failed(format!(
        "the supervisor of lab {} stopped answering; see {}",
        paths.name,
        paths.supervisor_log().display()
    )))
}

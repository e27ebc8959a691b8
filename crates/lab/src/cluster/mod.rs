//! A lab with a real control plane: etcd, kube-apiserver, the controller
//! manager and the scheduler run inside the control-plane node as kubeadm
//! lays them out; `podwire kubelet` runs on every node; podwire deploys
//! itself from `deploy/` (the podwire-node DaemonSet, DNS and ingress
//! Deployments) and the Lab's objects are applied through the API with
//! the real kubectl. The lab keeps only what no Kubernetes program does:
//! the wires (switch, router, external host, node namespaces) and the
//! nodes' init processes.

pub mod deploy;
pub mod kubectl;
pub mod node;
pub mod nodeinit;
pub mod relay;
pub mod verbs;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use podwire_model::{Object, RoutingMode};
use serde_json::Value;

use crate::certs::LabCa;
use crate::controllers::workload::CONTROL_PLANE_NAME;
use crate::controlplane::{API_PORT, ControlPlaneConfig};
use crate::error::{LabError, Result};
use crate::manifest::{LabNode, LabSpec};
use crate::nodes::Nodes;
use crate::paths::{LabPaths, netns_path};
use crate::plan::{LabPlan, PlannedNode, plan_lab};
use crate::record::save_record;
use crate::supervisor::Progress;
use crate::{addons, teardown, topology};

use kubectl::{Kubectl, not_ready};
use node::NodeSetup;

/// How long `lab up`/`apply` waits for the cluster to be up.
const READY_WAIT: Duration = Duration::from_secs(120);
/// The marker file naming a lab's control plane (`kubernetes` or `files`).
pub const MODE_FILE: &str = "control-plane";

/// Which control plane a lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPlaneMode {
    /// etcd, kube-apiserver, controller manager, scheduler; podwire kubelets.
    Kubernetes,
    /// The embedded files store, with the lab playing the control plane.
    Files,
}

impl ControlPlaneMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlPlaneMode::Kubernetes => "kubernetes",
            ControlPlaneMode::Files => "files",
        }
    }

    /// The mode a lab was made with (labs from before the marker: files).
    pub fn of(paths: &LabPaths) -> ControlPlaneMode {
        match std::fs::read_to_string(paths.dir.join(MODE_FILE)) {
            Ok(s) if s.trim() == "kubernetes" => ControlPlaneMode::Kubernetes,
            _ => ControlPlaneMode::Files,
        }
    }
}

/// The admin kubeconfig a user points kubectl at (through the loopback
/// relay).
pub fn user_kubeconfig(paths: &LabPaths) -> PathBuf {
    paths.dir.join("kubeconfig")
}

/// The lab's kubectl, when it has a real control plane.
pub fn lab_kubectl(paths: &LabPaths) -> Result<Kubectl> {
    let bin = kubectl::find_binaries().ok_or_else(|| {
        LabError::Failed(
            "the Kubernetes programs are gone (run tools/k8s/build or set PODWIRE_K8S_BIN)".into(),
        )
    })?;
    Ok(Kubectl::new(&bin, user_kubeconfig(paths)))
}

/// The node that runs the control plane: `controlplane`, else the first.
fn control_plane_node(plan: &LabPlan) -> Result<PlannedNode> {
    plan.nodes
        .iter()
        .find(|n| n.name == CONTROL_PLANE_NAME)
        .or(plan.nodes.first())
        .cloned()
        .ok_or_else(|| LabError::Invalid("a lab needs at least one node".into()))
}

/// The image a Lab container without one gets: the API requires one, and
/// the lab never runs images anyway (podwire's kubelet runs the command, or
/// the built-in server).
pub const LAB_IMAGE: &str = "podwire.io/lab:latest";

/// Gives every container of a Pod or Deployment without an image
/// [`LAB_IMAGE`] (Lab manifests may leave images out).
fn with_default_images(mut object: Value) -> Value {
    let pod_spec = match object["kind"].as_str() {
        Some("Pod") => &mut object["spec"],
        Some("Deployment") => &mut object["spec"]["template"]["spec"],
        _ => return object,
    };
    for list in ["containers", "initContainers"] {
        for c in pod_spec[list].as_array_mut().into_iter().flatten() {
            if c["image"].as_str().is_none_or(str::is_empty) {
                c["image"] = Value::from(LAB_IMAGE);
            }
        }
    }
    object
}

/// The supervisor's part in a lab with a real control plane.
pub struct KubeLab {
    paths: LabPaths,
    exe: PathBuf,
    bin: PathBuf,
    spec: LabSpec,
    plan: LabPlan,
    control_plane: ControlPlaneConfig,
    cp_node: PlannedNode,
    /// Per node, the process holding its init.
    inits: BTreeMap<String, Child>,
    /// The external host's DNS server.
    outside: Nodes,
    relay: Option<relay::Relay>,
}

impl KubeLab {
    pub fn new(paths: LabPaths, exe: PathBuf, spec: LabSpec) -> Result<KubeLab> {
        let bin = kubectl::find_binaries().ok_or_else(|| {
            LabError::Failed(
                "the Kubernetes programs are not built: run tools/k8s/build, or `lab up --control-plane files`".into(),
            )
        })?;
        let plan = plan_lab(&spec)?;
        let cp_node = control_plane_node(&plan)?;
        let control_plane = ControlPlaneConfig {
            dir: paths.dir.join("controlplane"),
            api_ip: IpAddr::V4(cp_node.ip.addr()),
            service_cidr: spec.service_cidr,
            cluster_cidr: spec.pod_cidr,
            node_cidr_mask: spec.node_slice_prefix,
            cluster_domain: spec.cluster_domain.clone(),
            node_lifecycle: true,
            etcd_on_node_address: true,
            extra_apiserver_args: Vec::new(),
        };
        Ok(KubeLab {
            outside: Nodes::new(paths.clone(), exe.clone()),
            paths,
            exe,
            bin,
            spec,
            plan,
            control_plane,
            cp_node,
            inits: BTreeMap::new(),
            relay: None,
        })
    }

    fn kubectl(&self) -> Kubectl {
        Kubectl::new(&self.bin, user_kubeconfig(&self.paths))
    }

    fn setup<'a>(&'a self, node: &'a PlannedNode) -> NodeSetup<'a> {
        NodeSetup {
            paths: &self.paths,
            exe: &self.exe,
            bin: &self.bin,
            node,
            control_plane: &self.control_plane,
            is_control_plane: node.name == self.cp_node.name,
            nameserver: self.plan.external.as_ref().map(|x| IpAddr::V4(x.ip.addr())),
            cluster_dns: deploy::cluster_dns(&self.spec),
            cluster_domain: &self.spec.cluster_domain,
        }
    }

    fn start_node(&mut self, node: &PlannedNode) -> Result<()> {
        topology::add_node(&self.paths, &self.spec, node)?;
        let child = self.setup(node).start()?;
        self.inits.insert(node.name.clone(), child);
        Ok(())
    }

    /// Builds the lab: wires, control plane, kubelets, podwire from
    /// deploy/, then the Lab's objects; returns once all of it is up.
    pub fn up(&mut self, objects: Vec<Object>, progress: Progress) -> Result<String> {
        let started = Instant::now();
        save_record(&self.paths, &self.spec)?;
        topology::build_base(&self.paths, &self.spec, &self.plan)?;
        progress(&format!(
            "switch and router up ({} underlay{})",
            self.spec.underlays.len(),
            if self.spec.underlays.len() == 1 {
                ""
            } else {
                "s"
            }
        ));
        if let Some(msg) = self.outside.start_external_dns(&self.plan)? {
            progress(&msg);
        }
        let ca = LabCa::create(&self.paths.dir, &self.paths.name)?;
        let ca_key = std::fs::read_to_string(LabCa::key_path(&self.paths.dir))
            .map_err(|e| LabError::io("cannot read the lab CA's key", e))?;
        self.control_plane.write_pki(&ca, &ca_key)?;
        let cp = self.cp_node.clone();
        self.start_node(&cp)?;
        progress(&format!(
            "control plane starting on node {} ({}): etcd, kube-apiserver :{API_PORT}, kube-controller-manager, kube-scheduler",
            cp.name,
            cp.ip.addr()
        ));
        let relay = relay::start(
            Path::new(&netns_path(&self.paths.node_ns(&cp.name))),
            SocketAddr::new(self.control_plane.api_ip, API_PORT),
        )?;
        self.write_user_kubeconfig(relay.local)?;
        self.relay = Some(relay);
        for node in self.plan.nodes.clone() {
            if node.name != cp.name {
                self.start_node(&node)?;
            }
            progress(&format!(
                "node {} up: {} on {}, pods {}, kubelet starting",
                node.name,
                node.ip.addr(),
                node.underlay,
                node.pod_cidr
            ));
        }
        self.wait_api()?;
        progress(&format!(
            "kube-apiserver ready at {} after {:.1} s",
            self.control_plane.api_url(),
            started.elapsed().as_secs_f64()
        ));
        // Registered, not Ready: as on any cluster, a node is NotReady
        // until its network plugin is installed (by the DaemonSet below).
        self.wait_nodes(false)?;
        progress(&format!(
            "{} nodes registered by their kubelets after {:.1} s",
            self.plan.nodes.len(),
            started.elapsed().as_secs_f64()
        ));
        let podwire = deploy::render(&deploy::DeployValues {
            spec: &self.spec,
            api_server: self.control_plane.api_url(),
            https_node_port: addons::INGRESS_HTTPS_NODE_PORT,
        })?;
        self.kubectl().apply(&podwire)?;
        progress("podwire applied from deploy/podwire.yaml (DaemonSet podwire-node, DNS, ingress)");
        // The Lab's pods spread over Ready nodes only.
        self.wait_nodes(true)?;
        progress(&format!(
            "nodes Ready (podwire-node installed the CNI plugin) after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        let mut objects = objects;
        for cert in &self.spec.certificates {
            objects.push(ca.secret(cert)?);
        }
        self.apply_objects(objects, progress)?;
        self.wait_ready(progress)?;
        Ok(format!(
            "lab {} is up in {:.1} s: {} nodes, Kubernetes control plane {} at {} ({} routing)\n\
             \n  export KUBECONFIG={} PATH={}:$PATH\n  kubectl get pods -A -o wide      # or: podwire lab kubectl{} -- get pods -A -o wide",
            self.paths.name,
            started.elapsed().as_secs_f64(),
            self.plan.nodes.len(),
            crate::kubelet::KUBELET_VERSION,
            self.control_plane.api_url(),
            match self.spec.routing {
                RoutingMode::HostGw => "host-gw",
                RoutingMode::Vxlan => "vxlan",
            },
            user_kubeconfig(&self.paths).display(),
            self.bin.display(),
            if self.paths.name == "lab" {
                String::new()
            } else {
                format!(" --name {}", self.paths.name)
            }
        ))
    }

    fn write_user_kubeconfig(&self, local: SocketAddr) -> Result<()> {
        let admin = std::fs::read_to_string(self.control_plane.admin_kubeconfig())
            .map_err(|e| LabError::io("cannot read the admin kubeconfig", e))?;
        let text = admin.replace(&self.control_plane.api_url(), &format!("https://{local}"));
        crate::certs::write_file(&user_kubeconfig(&self.paths), text.as_bytes(), 0o600)
    }

    fn wait_api(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let kubectl = self.kubectl();
        loop {
            match kubectl.run(&["get", "--raw", "/readyz"], None) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(LabError::Failed(format!(
                        "kube-apiserver did not become ready ({e}); see {}",
                        self.paths
                            .node_dir(&self.cp_node.name)
                            .join("logs")
                            .display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Waits until every node has registered (and is Ready, with
    /// `ready`), and gives the control-plane node its role label (kubeadm's
    /// mark-control-plane).
    fn wait_nodes(&self, ready: bool) -> Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        let kubectl = self.kubectl();
        let mut labelled = false;
        loop {
            let nodes = kubectl.get_json(&["nodes"]);
            let waiting: Vec<String> = match &nodes {
                Ok(all) => not_ready(all, self.plan.nodes.len())
                    .into_iter()
                    .filter(|w| ready || !w.ends_with("not Ready"))
                    .collect(),
                Err(e) => vec![e.to_string()],
            };
            let cp_registered = nodes.as_ref().is_ok_and(|all| {
                all["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n["metadata"]["name"] == self.cp_node.name.as_str())
            });
            if cp_registered && !labelled {
                kubectl.run(
                    &[
                        "label",
                        "node",
                        &self.cp_node.name,
                        &format!("{}=", crate::controllers::workload::CONTROL_PLANE_LABEL),
                        "--overwrite",
                    ],
                    None,
                )?;
                labelled = true;
            }
            if waiting.is_empty() && labelled {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "the nodes did not come up: {} (see the kubelet logs in {}/nodes/*/logs)",
                    waiting.join("; "),
                    self.paths.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every node is Ready and every workload and pod is.
    fn wait_ready(&self, progress: Progress) -> Result<()> {
        let deadline = Instant::now() + READY_WAIT;
        let kubectl = self.kubectl();
        let mut last = Vec::new();
        loop {
            let waiting = match kubectl.get_json(&["nodes,daemonsets,deployments,pods", "-A"]) {
                Ok(all) => not_ready(&all, self.plan.nodes.len()),
                Err(e) => vec![e.to_string()],
            };
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LabError::Failed(format!(
                    "the cluster is not up after {} s: {} (see `podwire lab kubectl -- get events -A`)",
                    READY_WAIT.as_secs(),
                    waiting.join("; ")
                )));
            }
            if waiting != last && waiting.len() <= 3 {
                progress(&format!("waiting: {}", waiting.join("; ")));
            }
            last = waiting;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `kubectl apply` of objects, namespaces first (kubectl applies a
    /// List in order).
    fn apply_objects(&self, objects: Vec<Object>, progress: Progress) -> Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let mut objects = objects;
        objects.sort_by_key(|o| o.kind() != podwire_model::Kind::Namespace);
        let items: Vec<Value> = objects
            .iter()
            .map(|o| with_default_images(o.to_json()))
            .collect();
        let out = self.kubectl().apply(&kubectl::list(items))?;
        for line in out.lines() {
            progress(line);
        }
        Ok(())
    }

    /// `lab apply`: new nodes of a Lab document join; objects go to the API.
    pub fn apply_document(
        &mut self,
        lab: Option<&LabSpec>,
        objects: Vec<Object>,
        progress: Progress,
    ) -> Result<()> {
        if let Some(spec) = lab {
            self.add_nodes(spec, progress)?;
        }
        self.apply_objects(objects, progress)?;
        self.wait_ready(progress)
    }

    fn add_nodes(&mut self, spec: &LabSpec, progress: Progress) -> Result<()> {
        let added: Vec<LabNode> = spec
            .nodes
            .iter()
            .filter(|n| !self.spec.nodes.iter().any(|m| m.name == n.name))
            .cloned()
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let mut next = self.spec.clone();
        next.nodes.extend(added.iter().cloned());
        next.validate()?;
        self.plan = plan_lab(&next)?;
        self.spec = next;
        save_record(&self.paths, &self.spec)?;
        for node in &added {
            let planned = self
                .plan
                .nodes
                .iter()
                .find(|n| n.name == node.name)
                .cloned()
                .ok_or_else(|| LabError::Failed(format!("node {} was not planned", node.name)))?;
            self.start_node(&planned)?;
            progress(&format!(
                "node {} up: {}, kubelet starting",
                planned.name,
                planned.ip.addr()
            ));
        }
        Ok(())
    }

    /// `lab delete`: objects through the API; the nodes a Lab document
    /// names leave (their Node object is deleted, so the controllers move
    /// their pods, then the machine goes).
    pub fn delete_document(
        &mut self,
        lab: Option<&LabSpec>,
        objects: Vec<Object>,
        progress: Progress,
    ) -> Result<()> {
        if !objects.is_empty() {
            let items: Vec<Value> = objects.iter().map(Object::to_json).collect();
            let body = serde_json::to_vec(&kubectl::list(items))
                .map_err(|e| LabError::Failed(e.to_string()))?;
            let out = self.kubectl().run(
                &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
                Some(&body),
            )?;
            for line in out.lines() {
                progress(line);
            }
        }
        let Some(spec) = lab else {
            return Ok(());
        };
        for node in &spec.nodes {
            if node.name == self.cp_node.name
                || !self.spec.nodes.iter().any(|n| n.name == node.name)
            {
                continue;
            }
            if let Some(mut init) = self.inits.remove(&node.name) {
                let _ = init.kill();
                let _ = init.wait();
            }
            self.kubectl()
                .run(&["delete", "node", &node.name, "--ignore-not-found"], None)?;
            topology::remove_node(&self.paths, &node.name)?;
            self.remove_pod_namespaces(&node.name);
            let _ = std::fs::remove_dir_all(self.paths.node_dir(&node.name));
            self.spec.nodes.retain(|n| n.name != node.name);
            self.plan.nodes.retain(|n| n.name != node.name);
            save_record(&self.paths, &self.spec)?;
            progress(&format!("node {} removed", node.name));
        }
        self.wait_ready(progress)
    }

    /// The files a node's kubelet made in /var/run/netns for its pods: the
    /// mounts went with the node's mount namespace.
    fn remove_pod_namespaces(&self, node: &str) {
        let prefix = node::pod_netns_prefix(&self.paths, node);
        for name in teardown::present_namespaces(&self.paths) {
            if name.starts_with(&prefix) {
                let _ = std::fs::remove_file(netns_path(&name));
            }
        }
    }

    /// Node inits keep their own programs running; a dead init (killed from
    /// outside) starts again, as a rebooted machine would.
    pub fn reap(&mut self) {
        let dead: Vec<String> = self
            .inits
            .iter_mut()
            .filter_map(|(name, child)| {
                matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone())
            })
            .collect();
        for name in dead {
            let Some(planned) = self.plan.nodes.iter().find(|n| n.name == name).cloned() else {
                continue;
            };
            tracing::warn!(node = %name, "the node's init ended; starting it again");
            if let Ok(child) = self.setup(&planned).start() {
                self.inits.insert(name, child);
            }
        }
    }

    /// Ends every node (their inits take all their processes along), the
    /// outside world, then removes the lab.
    pub fn down(&mut self) -> Vec<String> {
        for (_, mut init) in std::mem::take(&mut self.inits) {
            let _ = init.kill();
            let _ = init.wait();
        }
        self.outside.stop_all();
        for node in self.plan.nodes.clone() {
            self.remove_pod_namespaces(&node.name);
        }
        teardown::teardown(&self.paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_without_an_image_get_the_lab_image() {
        let pod = with_default_images(json!({"kind": "Pod", "spec": {"containers": [
            {"name": "a"}, {"name": "b", "image": "nginx"}
        ]}}));
        assert_eq!(pod["spec"]["containers"][0]["image"], LAB_IMAGE);
        assert_eq!(pod["spec"]["containers"][1]["image"], "nginx");
        let deploy =
            with_default_images(json!({"kind": "Deployment", "spec": {"template": {"spec": {
                "initContainers": [{"name": "i"}], "containers": [{"name": "c"}]
            }}}}));
        assert_eq!(
            deploy["spec"]["template"]["spec"]["initContainers"][0]["image"],
            LAB_IMAGE
        );
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"][0]["image"],
            LAB_IMAGE
        );
        let svc = json!({"kind": "Service", "spec": {}});
        assert_eq!(with_default_images(svc.clone()), svc);
    }
}

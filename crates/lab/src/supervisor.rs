//! The supervisor's controller: the one owner of a lab's cluster state. It
//! carries out `up`, `apply`, `delete` and `down` (arriving one at a time on
//! the control socket) by playing the control plane for the files store:
//! objects are checked, given addresses and names, written to the store,
//! and turned into nodes and pods through the node and pod lifecycles.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use podwire_model::k8s_openapi::api::core::v1::Pod;
use podwire_model::{ClusterState, Kind, Object, RoutingMode, Store};

use crate::addons::{self, Context};
use crate::certs::LabCa;
use crate::controllers::{allocate_service_addresses, api_server_slice, schedule};
use crate::error::{LabError, Result};
use crate::manifest::{BUILTIN_NAMESPACES, LabNode, LabSpec, validate_objects};
use crate::nodes::Nodes;
use crate::paths::LabPaths;
use crate::plan::{LabPlan, PlannedNode, plan_lab};
use crate::pods::Pods;
use crate::reconcile::{self, Key};
use crate::record::save_record;
use crate::runtime::pod_key;
use crate::stamp::now;
use crate::teardown;

/// Where progress lines go (the control socket's client).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// Everything the supervisor knows and owns.
pub struct Controller {
    paths: LabPaths,
    exe: PathBuf,
    spec: LabSpec,
    plan: LabPlan,
    store: Store,
    state: ClusterState,
    pods: Pods,
    nodes: Nodes,
}

impl Controller {
    pub fn new(paths: LabPaths, exe: PathBuf, spec: LabSpec) -> Result<Controller> {
        let plan = plan_lab(&spec)?;
        let store = Store::open(paths.cluster());
        Ok(Controller {
            pods: Pods::new(paths.clone(), exe.clone()),
            nodes: Nodes::new(paths.clone(), exe.clone()),
            paths,
            exe,
            spec,
            plan,
            store,
            state: ClusterState::default(),
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

    fn node_names(&self) -> Vec<String> {
        self.plan.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Writes an object to the store and to the supervisor's copy.
    fn put(&mut self, object: Object) -> Result<()> {
        self.store.put(&object)?;
        self.state.insert(object);
        Ok(())
    }

    fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Result<()> {
        self.state.remove(kind, namespace, name);
        self.store.delete(kind, namespace, name)?;
        Ok(())
    }

    /// Builds the lab from its manifest.
    pub fn up(&mut self, objects: Vec<Object>, progress: Progress) -> Result<String> {
        let started = Instant::now();
        crate::runtime::prepare_cni_bin(&self.paths, &self.exe)?;
        self.store.write_config(&self.spec.cluster_config())?;
        save_record(&self.paths, &self.spec)?;
        crate::topology::build_base(&self.paths, &self.spec, &self.plan)?;
        progress(&format!(
            "switch and router up ({}){}",
            plural(self.spec.underlays.len(), "underlay"),
            self.plan
                .external
                .as_ref()
                .map(|x| format!(", external host {} at {}", x.name, x.ip.addr()))
                .unwrap_or_default()
        ));
        for node in self.plan.nodes.clone() {
            self.add_node(&node, progress)?;
        }
        self.store.bump()?;
        if let Some(msg) = self.nodes.start_external_dns(&self.plan)? {
            progress(&msg);
        }
        let ca = LabCa::create(&self.paths.dir, &self.paths.name)?;
        progress(&format!(
            "lab CA in {} ({})",
            LabCa::cert_path(&self.paths.dir).display(),
            plural(self.spec.certificates.len(), "certificate")
        ));
        let system = addons::system_objects(&Context {
            spec: &self.spec,
            plan: &self.plan,
            exe: &self.exe,
            store: &self.paths.cluster(),
        })?;
        let mut all = addons::with_declared(system, objects);
        for cert in &self.spec.certificates {
            all.push(ca.secret(cert)?);
        }
        self.apply(all, progress)?;
        Ok(format!(
            "lab {} is up in {:.1} s: {} nodes, {} pods, {} services ({} routing)",
            self.paths.name,
            started.elapsed().as_secs_f64(),
            self.plan.nodes.len(),
            self.state.pods.len(),
            self.state.services.len(),
            match self.spec.routing {
                RoutingMode::HostGw => "host-gw",
                RoutingMode::Vxlan => "vxlan",
            }
        ))
    }

    fn add_node(&mut self, node: &PlannedNode, progress: Progress) -> Result<()> {
        let object = self.nodes.add(&self.spec, node)?;
        self.put(Object::Node(object))?;
        progress(&format!(
            "node {} up: {} on {}, pods {}",
            node.name,
            node.ip.addr(),
            node.underlay,
            node.pod_cidr
        ));
        Ok(())
    }

    /// Applies objects the way `kubectl apply` would, with the lab playing
    /// the control plane: allocators, Deployment controller, scheduler,
    /// kubelet and EndpointSlice controller.
    pub fn apply(&mut self, objects: Vec<Object>, progress: Progress) -> Result<()> {
        let namespaces: BTreeSet<String> = self
            .state
            .namespaces
            .keys()
            .cloned()
            .chain(BUILTIN_NAMESPACES.iter().map(|s| s.to_string()))
            .collect();
        validate_objects(&objects, &namespaces)?;
        let mut ordered = objects;
        ordered.sort_by_key(|o| match o.kind() {
            Kind::Namespace => 0,
            // Policies before the pods they select: no window without them.
            Kind::NetworkPolicy => 0,
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
                Object::Service(service) => self.apply_service(service, progress)?,
                Object::Deployment(mut deployment) => {
                    let namespace = Object::Deployment(deployment.clone()).namespace();
                    deployment.metadata.namespace = Some(namespace);
                    if deployment.metadata.creation_timestamp.is_none() {
                        deployment.metadata.creation_timestamp = Some(now());
                    }
                    let changes = reconcile::deployment_pods(&deployment, &self.state.pods);
                    for (ns, pod) in &changes.delete {
                        self.delete_pod(ns, pod)?;
                        progress(&format!("pod {ns}/{pod} deleted (scaled down)"));
                    }
                    new_pods.extend(changes.create);
                    self.put(Object::Deployment(deployment))?;
                }
                Object::Pod(mut pod) => {
                    if pod.metadata.namespace.is_none() {
                        pod.metadata.namespace = Some("default".into());
                    }
                    if !self.state.pods.contains_key(&pod_key(&pod)) {
                        new_pods.push(pod);
                    }
                }
                mut other => {
                    if other.metadata().creation_timestamp.is_none() {
                        other.metadata_mut().creation_timestamp = Some(now());
                    }
                    self.put(other)?;
                }
            }
        }
        // Schedule all new pods at once so they spread over the nodes.
        let counts = reconcile::pods_per_node(&self.state.pods);
        schedule(&mut new_pods, &self.node_names(), &counts)?;
        let mut waits = Vec::new();
        for pod in new_pods {
            let created = self.create_pod(pod)?;
            let (ns, name) = pod_key(&created);
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
        self.nodes.wait_agents(&self.node_names(), generation)?;
        for pod in waits {
            self.pods.wait_ready(&pod)?;
        }
        Ok(())
    }

    /// A Service with its ClusterIP and nodePorts, allocated against every
    /// other Service as the API server does.
    fn apply_service(
        &mut self,
        mut service: podwire_model::Service,
        progress: Progress,
    ) -> Result<()> {
        let object = Object::Service(service.clone());
        let key = (object.namespace(), object.name());
        service.metadata.namespace = Some(key.0.clone());
        if service.metadata.creation_timestamp.is_none() {
            service.metadata.creation_timestamp = Some(now());
        }
        let mut all: Vec<_> = self
            .state
            .services
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, s)| s.clone())
            .collect();
        all.push(service);
        allocate_service_addresses(&mut all, &self.spec.cluster_config())?;
        if let Some(service) = all.pop() {
            self.put(Object::Service(service))?;
            progress(&format!("service {}/{} created", key.0, key.1));
        }
        Ok(())
    }

    fn create_pod(&mut self, pod: Pod) -> Result<Pod> {
        let (namespace, name) = pod_key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| LabError::Failed(format!("pod {namespace}/{name} was not scheduled")))?;
        let host_ip = self.planned(&node)?.ip.addr().into();
        let pod = self
            .pods
            .create(pod, host_ip, &self.spec.cluster_config())?;
        self.put(Object::Pod(pod.clone()))?;
        Ok(pod)
    }

    fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        let Some(pod) = self
            .state
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
        else {
            return Ok(());
        };
        self.pods.delete(&pod)?;
        self.remove(Kind::Pod, namespace, name)
    }

    /// Applies a changed Lab document: nodes may be added and certificates
    /// added or changed; every other setting is fixed when the lab comes up.
    /// Returns the certificate Secrets to create or replace (new, or whose
    /// hosts changed), for [`Controller::apply`] together with the
    /// document's `objects`.
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
        let plan = plan_lab(&next)?;
        self.spec = next;
        self.plan = plan;
        save_record(&self.paths, &self.spec)?;
        let outcome = (|| -> Result<()> {
            for node in &added {
                let planned = self.planned(&node.name)?;
                self.add_node(&planned, progress)?;
            }
            self.refresh_endpoints()?;
            let generation = self.store.bump()?;
            self.nodes.wait_agents(&self.node_names(), generation)
        })();
        if let Err(e) = outcome {
            // A node whose routes cannot work is not left half in the lab.
            for node in &added {
                let _ = self.remove_node(&node.name);
            }
            self.refresh_endpoints()?;
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
        let wanted = addons::stale_certificates(&spec.certificates, &self.state.secrets);
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
        for (ns, pod) in reconcile::pods_on_node(&self.state.pods, name) {
            self.delete_pod(&ns, &pod)?;
        }
        self.nodes.remove(name)?;
        self.spec.nodes.retain(|n| n.name != name);
        self.plan.nodes.retain(|n| n.name != name);
        save_record(&self.paths, &self.spec)?;
        self.remove(Kind::Node, "", name)
    }

    /// Deletes objects (the lab's `kubectl delete -f`), with what each
    /// takes along: a Deployment its pods, a Namespace everything in it.
    pub fn delete(&mut self, objects: Vec<Object>, progress: Progress) -> Result<()> {
        for object in objects {
            let (kind, namespace, name) = (object.kind(), object.namespace(), object.name());
            match kind {
                Kind::Pod => self.delete_pod(&namespace, &name)?,
                Kind::Deployment => {
                    for (ns, pod) in reconcile::owned_pods(&self.state.pods, &namespace, &name) {
                        self.delete_pod(&ns, &pod)?;
                    }
                    self.remove(kind, &namespace, &name)?;
                }
                Kind::Node => self.remove_node(&name)?,
                Kind::Namespace => {
                    let (pods, others) = reconcile::namespace_contents(&self.state, &name);
                    for (ns, pod) in pods {
                        self.delete_pod(&ns, &pod)?;
                    }
                    for (kind, (ns, n)) in others {
                        self.remove(kind, &ns, &n)?;
                    }
                    self.remove(kind, "", &name)?;
                }
                _ => self.remove(kind, &namespace, &name)?,
            }
            progress(&format!("{} deleted", object.describe()));
        }
        self.refresh_endpoints()?;
        self.store.bump()?;
        Ok(())
    }

    /// Writes the EndpointSlices that changed, as the EndpointSlice
    /// controller (Services with selectors) and the API server (its own
    /// `kubernetes` Service) would.
    fn refresh_endpoints(&mut self) -> Result<()> {
        let api_server = self
            .state
            .services
            .contains_key(&key_of(crate::controllers::endpoints::API_SERVER_SERVICE))
            .then(|| api_server_slice(addons::api_server_address(&self.state)));
        let changes =
            reconcile::endpoint_changes(&self.state, api_server.into_iter().collect(), &now());
        for slice in changes.put {
            self.put(Object::EndpointSlice(slice))?;
        }
        for (ns, name) in changes.delete {
            self.remove(Kind::EndpointSlice, &ns, &name)?;
        }
        Ok(())
    }

    /// Restarts dead containers and agents according to their policy.
    pub fn reap(&mut self) {
        self.pods.reap(&self.state);
        self.nodes.reap();
    }

    /// Stops every process and removes every namespace and file of the lab;
    /// returns what could not be removed.
    pub fn down(&mut self) -> Vec<String> {
        self.pods.stop_all();
        self.nodes.stop_all();
        teardown::teardown(&self.paths)
    }
}

fn key_of((namespace, name): (&str, &str)) -> Key {
    (namespace.to_string(), name.to_string())
}

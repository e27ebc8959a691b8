//! The node lifecycle: a node's namespace and wires, its CNI configuration
//! and its agent process (started, restarted when it dies, stopped with the
//! node); waiting until every agent has programmed a store revision; and
//! the external host's DNS server, the one process outside the cluster.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use podwire_model::Node;

use crate::error::{LabError, Result};
use crate::health::{self, AgentReport, AgentState};
use crate::manifest::LabSpec;
use crate::paths::{LabPaths, netns_path};
use crate::plan::{LabPlan, PlannedNode, node_object};
use crate::process::Proc;
use crate::spawn::{self, Sandbox};
use crate::{runtime, stamp, topology};

/// How long `lab up`/`apply` waits for the agents to program a revision.
const AGENT_WAIT: Duration = Duration::from_secs(10);

/// The processes that make nodes work, and what they need to start.
pub struct Nodes {
    paths: LabPaths,
    exe: PathBuf,
    agents: BTreeMap<String, Proc>,
    /// Processes of the world outside the cluster (the external host's DNS).
    extras: Vec<Proc>,
}

impl Nodes {
    pub fn new(paths: LabPaths, exe: PathBuf) -> Nodes {
        Nodes {
            paths,
            exe,
            agents: BTreeMap::new(),
            extras: Vec::new(),
        }
    }

    /// Brings a node up (namespace, eth0 on its underlay, cni0, conflist,
    /// agent) and returns its Node object for the store.
    pub fn add(&mut self, spec: &LabSpec, node: &PlannedNode) -> Result<Node> {
        topology::add_node(&self.paths, spec, node)?;
        runtime::write_conflist(&self.paths, node, spec.routing)?;
        let mut object = node_object(node);
        object.metadata.creation_timestamp = Some(stamp::now());
        object
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                "podwire.io/mac".into(),
                podwire_kernel::link::format_mac(&node.mac),
            );
        self.start_agent(&node.name)?;
        Ok(object)
    }

    /// Stops the node's agent and removes its namespace, wires and files.
    /// Its pods must be gone first.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        if let Some(agent) = self.agents.remove(name) {
            agent.stop();
        }
        topology::remove_node(&self.paths, name)?;
        let _ = std::fs::remove_dir_all(self.paths.node_dir(name));
        Ok(())
    }

    fn agent_command(&self, node: &str) -> Result<std::process::Command> {
        let sandbox = Sandbox {
            netns: Some(netns_path(&self.paths.node_ns(node))),
            hostname: Some(node.to_string()),
            binds: Vec::new(),
        };
        let (log, log_err) = runtime::open_log(&self.paths.agent_log(node))?;
        let mut cmd = spawn::command(&self.exe, &sandbox)?;
        cmd.args(["agent", "--node", node, "--source"])
            .arg(format!("files:{}", self.paths.cluster().display()))
            .arg("--status-file")
            .arg(self.paths.agent_status(node))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        Ok(cmd)
    }

    fn start_agent(&mut self, node: &str) -> Result<()> {
        let child = self
            .agent_command(node)?
            .spawn()
            .map_err(|e| LabError::io(format!("cannot start the agent of node {node}"), e))?;
        self.agents
            .insert(node.to_string(), Proc::new(child, "Always"));
        Ok(())
    }

    /// Waits until every agent of `nodes` has programmed routes and service
    /// rules for store revision `generation` (or later); an agent that
    /// cannot is a failure with its own diagnostic.
    pub fn wait_agents(&self, nodes: &[String], generation: u64) -> Result<()> {
        let deadline = Instant::now() + AGENT_WAIT;
        let mut pending: Vec<String> = nodes.to_vec();
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        while !pending.is_empty() {
            pending.retain(|node| {
                let report = AgentReport::read(&self.paths.agent_status(node));
                match AgentReport::state_for(report.as_ref(), generation) {
                    AgentState::Ready => {
                        errors.remove(node);
                        false
                    }
                    AgentState::Failed(why) => {
                        errors.insert(node.clone(), why);
                        true
                    }
                    AgentState::Pending => true,
                }
            });
            if pending.is_empty() {
                break;
            }
            // A node whose agent reported a failure for this revision will
            // retry, but the cause (e.g. host-gw across a router) will not go
            // away by itself: report it after a short grace period.
            if !errors.is_empty() && errors.len() == pending.len() || Instant::now() > deadline {
                let detail: Vec<String> = pending
                    .iter()
                    .map(|n| {
                        let why = errors.get(n).cloned().unwrap_or_else(|| {
                            format!(
                                "the agent did not report ({}; see {})",
                                health::readyz(&self.paths.node_ns(n)),
                                self.paths.agent_log(n).display()
                            )
                        });
                        format!("node {n}: {why}")
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

    /// The external host serves the names of the world outside the cluster
    /// (a hosts file: `external.example.com` and friends), so pods resolve
    /// external names through cluster DNS forwarding without the lab ever
    /// sending a query off the machine. Returns what to tell the user.
    pub fn start_external_dns(&mut self, plan: &LabPlan) -> Result<Option<String>> {
        let Some(ext) = plan.external.clone() else {
            return Ok(None);
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
            // The lab's outside world: a name it does not know does not
            // exist (NXDOMAIN at once, as the internet answers), so a pod's
            // wrong short name fails fast after its search list.
            .args(["--authoritative", "."])
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
        self.extras.push(Proc::new(child, "Always"));
        runtime::wait_reachable(
            &self.paths.external_ns(&ext.name),
            SocketAddr::new(IpAddr::V4(ip), 53),
            Duration::from_secs(5),
        )?;
        Ok(Some(format!(
            "external host serves DNS for {}.example.com at {ip}",
            ext.name
        )))
    }

    /// Starts again every agent that died (after the restart backoff).
    pub fn reap(&mut self) {
        let dead: Vec<String> = self
            .agents
            .iter_mut()
            .filter_map(|(node, proc)| proc.wants_restart().then(|| node.clone()))
            .collect();
        for node in dead {
            let Ok(mut cmd) = self.agent_command(&node) else {
                continue;
            };
            if let (Ok(child), Some(proc)) = (cmd.spawn(), self.agents.get_mut(&node)) {
                proc.restarted(child);
            }
        }
    }

    /// Kills every agent and the external host's processes.
    pub fn stop_all(&mut self) {
        for (_, agent) in std::mem::take(&mut self.agents) {
            agent.stop();
        }
        for proc in std::mem::take(&mut self.extras) {
            proc.stop();
        }
    }
}

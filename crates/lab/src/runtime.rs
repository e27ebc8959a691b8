//! The lab as kubelet: for each pod it creates the sandbox namespace, runs
//! the `podwire` binary as a CNI plugin with the node's conflist exactly as a
//! container runtime does (libcni's rules: name and cniVersion injected,
//! runtimeConfig only for declared capabilities, prevResult chained, DEL in
//! reverse), writes the pod's resolv.conf and hosts, and starts its
//! containers as processes inside the pod's namespaces.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use podwire_kernel::Netns;
use podwire_model::k8s_openapi::api::core::v1::{Container, Pod};
use podwire_model::{ClusterConfig, RoutingMode};

/// The MTU of the lab's underlay links (veths on the switch bridges).
const UNDERLAY_MTU: u32 = 1500;
use serde_json::{Value, json};

use crate::error::{LabError, Result};
use crate::netns;
use crate::paths::{LabPaths, netns_path};
use crate::plan::PlannedNode;
use crate::spawn::{self, Sandbox};

/// The node's CNI configuration, as a runtime would find it in
/// /etc/cni/net.d: the one the node agent installs on a real node
/// (`podwire_cni::install`), with the lab's IPAM directory.
pub fn write_conflist(paths: &LabPaths, node: &PlannedNode, routing: RoutingMode) -> Result<()> {
    // With VXLAN every pod packet pays the 50-byte overlay header, so pods
    // get the overlay device's MTU (as Flannel does) instead of learning it
    // through dropped first packets and path-MTU discovery.
    let mtu = match routing {
        RoutingMode::Vxlan => UNDERLAY_MTU - crate::VXLAN_OVERHEAD,
        RoutingMode::HostGw => UNDERLAY_MTU,
    };
    let net = podwire_cni::install::NodeNetwork {
        pod_cidrs: vec![node.pod_cidr],
        mtu,
        ipam_data_dir: Some(paths.ipam_dir(&node.name)),
    };
    let path = paths.conflist(&node.name);
    let dir = path.parent().unwrap_or(Path::new("."));
    let text = serde_json::to_vec_pretty(&podwire_cni::install::conflist(&net))
        .map_err(|e| LabError::Failed(e.to_string()))?;
    std::fs::create_dir_all(dir)
        .and_then(|()| podwire_cni::install::write_if_changed(&path, &text, 0o644))
        .map(drop)
        .map_err(|e| LabError::io(format!("cannot write {}", path.display()), e))
}

/// Makes CNI_PATH hold the plugin types, all pointing at this binary.
pub fn prepare_cni_bin(paths: &LabPaths, exe: &Path) -> Result<()> {
    let dir = paths.cni_bin();
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io("cannot create the CNI bin directory", e))?;
    for name in ["podwire", "podwire-portmap", "podwire-loopback"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link)
            .map_err(|e| LabError::io(format!("cannot link {}", link.display()), e))?;
    }
    Ok(())
}

/// One CNI invocation context.
pub struct CniCall<'a> {
    pub paths: &'a LabPaths,
    pub node: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub pod: &'a str,
    pub runtime_config: Value,
}

impl CniCall<'_> {
    /// The lab's call as a general [`CniExec`]: the plugin runs in the
    /// node's namespace with the lab's plugin directory.
    fn exec(&self) -> CniExec<'_> {
        CniExec {
            bin_dir: self.paths.cni_bin(),
            plugin_netns: Some(netns_path(&self.paths.node_ns(self.node))),
            container_id: self.container_id,
            netns: self.netns,
            ifname: "eth0",
            args: format!(
                "K8S_POD_NAME={};IgnoreUnknown=1",
                self.pod.rsplit('/').next().unwrap_or_default()
            ),
            pod: self.pod,
            runtime_config: self.runtime_config.clone(),
        }
    }
}

/// How a runtime executes a conflist's plugins for one attachment (libcni's
/// RuntimeConf): the lab's [`CniCall`] and the kubelet both build one.
pub struct CniExec<'a> {
    /// Where the plugins are (also CNI_PATH, for delegated IPAM).
    pub bin_dir: PathBuf,
    /// The network namespace file the plugin process runs in (the node's);
    /// None: the caller's own.
    pub plugin_netns: Option<String>,
    pub container_id: &'a str,
    /// The sandbox's network namespace file (CNI_NETNS).
    pub netns: &'a str,
    pub ifname: &'a str,
    /// CNI_ARGS (`K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;IgnoreUnknown=1`).
    pub args: String,
    /// The pod as namespace/name, for error messages.
    pub pod: &'a str,
    pub runtime_config: Value,
}

fn exec_plugin(call: &CniExec, command: &str, conf: &Value) -> Result<Value> {
    let kind = conf["type"].as_str().unwrap_or_default();
    let program = call.bin_dir.join(kind);
    let sandbox = Sandbox {
        netns: call.plugin_netns.clone(),
        ..Default::default()
    };
    let mut cmd = spawn::command(&program, &sandbox)?;
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", &call.bin_dir)
        .env("CNI_ARGS", &call.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("cannot run CNI plugin {}", program.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io("waiting for the CNI plugin", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(LabError::Cni {
            command: command.into(),
            pod: call.pod.into(),
            detail: format!(
                "{} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| LabError::Cni {
        command: command.into(),
        pod: call.pod.into(),
        detail: e.to_string(),
    })
}

/// The per-plugin configurations of a conflist, as libcni builds them.
fn plugin_confs(conflist: &Value, runtime_config: &Value) -> Vec<Value> {
    let name = conflist["name"].clone();
    let version = conflist["cniVersion"].clone();
    conflist["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut plugin| {
            plugin["name"] = name.clone();
            plugin["cniVersion"] = version.clone();
            let mut rc = serde_json::Map::new();
            if let Some(caps) = plugin["capabilities"].as_object() {
                for (cap, on) in caps {
                    if on.as_bool() == Some(true)
                        && let Some(v) = runtime_config.get(cap)
                    {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
            if !rc.is_empty() {
                plugin["runtimeConfig"] = Value::Object(rc);
            }
            plugin
        })
        .collect()
}

fn read_conflist(call: &CniCall) -> Result<Value> {
    let path = call.paths.conflist(call.node);
    let text = std::fs::read(&path)
        .map_err(|e| LabError::io(format!("cannot read {}", path.display()), e))?;
    serde_json::from_slice(&text).map_err(|e| LabError::Invalid(format!("{}: {e}", path.display())))
}

/// ADD through the whole chain; returns the final result.
pub fn cni_add(call: &CniCall) -> Result<Value> {
    add_chain(&call.exec(), &read_conflist(call)?)
}

/// DEL through the chain in reverse; tolerant, as DEL must be.
pub fn cni_del(call: &CniCall) -> Result<()> {
    del_chain(&call.exec(), &read_conflist(call)?)
}

/// ADD through every plugin of `conflist`, each given the previous one's
/// result; returns the last result.
pub fn add_chain(call: &CniExec, conflist: &Value) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for mut conf in plugin_confs(conflist, &call.runtime_config) {
        if let Some(p) = &prev {
            conf["prevResult"] = p.clone();
        }
        prev = Some(exec_plugin(call, "ADD", &conf)?);
    }
    prev.ok_or_else(|| LabError::Failed("the conflist has no plugins".into()))
}

/// DEL through the plugins of `conflist` in reverse; every plugin runs even
/// when one fails (the first error is returned).
pub fn del_chain(call: &CniExec, conflist: &Value) -> Result<()> {
    let mut first_error = None;
    for conf in plugin_confs(conflist, &call.runtime_config)
        .into_iter()
        .rev()
    {
        if let Err(e) = exec_plugin(call, "DEL", &conf) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The addresses of a CNI result (`ips[].address`, prefix dropped).
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|ip| ip["address"].as_str())
                .filter_map(|a| a.parse::<IpNet>().ok())
                .map(|n| n.addr())
                .collect()
        })
        .unwrap_or_default()
}

/// The network configuration a runtime uses from a CNI config directory, as
/// libcni finds it: the files ending in .conflist, .conf or .json in name
/// order, the first that parses (a single-plugin .conf becomes a list of
/// one). Ok(None) when there is none; unreadable or invalid files are
/// skipped, as runtimes do.
pub fn find_conflist(dir: &Path) -> Result<Option<(PathBuf, Value)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LabError::io(format!("cannot read {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "conflist" | "conf" | "json"))
        })
        .collect();
    files.sort();
    for path in files {
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        let Ok(value) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        if let Some(list) = as_conflist(&path, value) {
            return Ok(Some((path, list)));
        }
    }
    Ok(None)
}

/// A parsed config file as a conflist, or None when it is not a usable one.
fn as_conflist(path: &Path, value: Value) -> Option<Value> {
    let is_list = path.extension().and_then(|x| x.to_str()) == Some("conflist");
    if is_list || value.get("plugins").is_some() {
        let plugins = value["plugins"].as_array()?;
        return (!plugins.is_empty() && value["name"].is_string()).then_some(value);
    }
    // A single plugin's configuration (libcni's ConfListFromConf).
    value["type"].as_str()?;
    Some(json!({
        "cniVersion": value["cniVersion"].clone(),
        "name": value["name"].clone(),
        "plugins": [value],
    }))
}

/// A pod's (namespace, name), with Kubernetes' default namespace.
pub fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Opens (appending) a process's log file, for both stdout and stderr.
pub fn open_log(path: &Path) -> Result<(std::fs::File, std::fs::File)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| LabError::io(format!("cannot open {}", path.display()), e))?;
    let err = log
        .try_clone()
        .map_err(|e| LabError::io(format!("cannot duplicate {}", path.display()), e))?;
    Ok((log, err))
}

/// The kube-dns Service address: the tenth address of the service range.
pub fn dns_service_ip(config: &ClusterConfig) -> IpAddr {
    match config.service_cidr {
        IpNet::V4(net) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(net.network()) + 10)),
        IpNet::V6(net) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(net.network()) + 10)),
    }
}

/// The resolv.conf kubelet writes for a ClusterFirst pod.
pub fn resolv_conf(config: &ClusterConfig, namespace: &str) -> String {
    let d = &config.cluster_domain;
    format!(
        "search {namespace}.svc.{d} svc.{d} {d}\nnameserver {}\noptions ndots:5\n",
        dns_service_ip(config)
    )
}

pub fn hosts_file(pod_ip: &str, hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n"
    )
}

/// The sandbox a pod's processes run in.
pub fn pod_sandbox(paths: &LabPaths, namespace: &str, pod: &str, hostname: &str) -> Sandbox {
    let dir = paths.pod_dir(namespace, pod);
    Sandbox {
        netns: Some(netns_path(&paths.pod_ns(namespace, pod))),
        hostname: Some(hostname.to_string()),
        binds: vec![
            (dir.join("resolv.conf"), PathBuf::from("/etc/resolv.conf")),
            (dir.join("hosts"), PathBuf::from("/etc/hosts")),
        ],
    }
}

/// The argv of a container: its command and args, or the built-in server
/// on its first port when it names no command.
pub fn container_argv(exe: &Path, container: &Container) -> Vec<String> {
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    if container.command.is_none() {
        let port = container
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .map(|p| p.container_port)
            .unwrap_or(8080);
        argv = vec![
            exe.display().to_string(),
            "serve".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
        ];
    }
    argv
}

/// Starts one container of a pod, its output appended to its log file.
pub fn start_container(
    paths: &LabPaths,
    exe: &Path,
    pod: &Pod,
    container: &Container,
) -> Result<Child> {
    let (namespace, name) = pod_key(pod);
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| name.clone());
    let argv = container_argv(exe, container);
    let (program, args) = argv.split_first().ok_or_else(|| {
        LabError::Invalid(format!(
            "container {} of pod {namespace}/{name} has an empty command",
            container.name
        ))
    })?;
    let log_path = paths
        .pod_dir(&namespace, &name)
        .join(format!("{}.log", container.name));
    let (log, log_err) = open_log(&log_path)?;
    let sandbox = pod_sandbox(paths, &namespace, &name, &hostname);
    let program_path = resolve_program(program);
    let mut cmd = spawn::command(&program_path, &sandbox)?;
    cmd.args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env("HOSTNAME", &hostname);
    for var in container.env.clone().unwrap_or_default() {
        cmd.env(&var.name, var.value.unwrap_or_default());
    }
    cmd.spawn().map_err(|e| {
        LabError::io(
            format!(
                "cannot start container {} of pod {namespace}/{name} ({program})",
                container.name
            ),
            e,
        )
    })
}

/// The file a program name runs: itself when it has a slash, else the
/// first match on $PATH (as execvp would find it).
pub fn resolve_program(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
    {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from(program)
}

/// Creates a pod's sandbox and network: namespace, CNI ADD, resolv.conf and
/// hosts. Returns the pod's IPs. On failure nothing is left behind.
pub fn create_sandbox(
    paths: &LabPaths,
    config: &ClusterConfig,
    pod: &Pod,
    node: &str,
    container_id: &str,
) -> Result<Vec<IpAddr>> {
    let (namespace, name) = pod_key(pod);
    let ns_name = paths.pod_ns(&namespace, &name);
    let dir = paths.pod_dir(&namespace, &name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("cannot create {}", dir.display()), e))?;
    if let Err(e) = netns::create(paths, &ns_name) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let call = CniCall {
        paths,
        node,
        container_id,
        netns: &netns_path(&ns_name),
        pod: &format!("{namespace}/{name}"),
        runtime_config: runtime_config(pod),
    };
    let result = match cni_add(&call) {
        Ok(r) => r,
        Err(e) => {
            let _ = netns::delete(paths, &ns_name);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let ips = result_ips(&result);
    let Some(first) = ips.first() else {
        let _ = cni_del(&call);
        let _ = netns::delete(paths, &ns_name);
        return Err(LabError::Cni {
            command: "ADD".into(),
            pod: format!("{namespace}/{name}"),
            detail: "the result has no IP".into(),
        });
    };
    let hostname = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| name.clone());
    let write = |file: &str, body: String| {
        std::fs::write(dir.join(file), body)
            .map_err(|e| LabError::io(format!("cannot write {file} of {namespace}/{name}"), e))
    };
    // dnsPolicy Default: the node's resolver, which in a lab has no
    // nameserver (cluster DNS itself must not loop back to itself).
    let dns_default = pod.spec.as_ref().and_then(|s| s.dns_policy.as_deref()) == Some("Default");
    write(
        "resolv.conf",
        if dns_default {
            String::new()
        } else {
            resolv_conf(config, &namespace)
        },
    )?;
    write("hosts", hosts_file(&first.to_string(), &hostname))?;
    Ok(ips)
}

/// The runtimeConfig a runtime derives from a pod: published ports.
pub fn runtime_config(pod: &Pod) -> Value {
    let mut mappings = Vec::new();
    for c in pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
    {
        for p in c.ports.unwrap_or_default() {
            if let Some(host_port) = p.host_port {
                mappings.push(json!({
                    "hostPort": host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol.unwrap_or_else(|| "TCP".into()).to_lowercase(),
                }));
            }
        }
    }
    json!({"portMappings": mappings})
}

/// Tears a pod's network down (CNI DEL) and removes its namespace (killing
/// anything still inside).
pub fn destroy_sandbox(paths: &LabPaths, pod: &Pod, node: &str, container_id: &str) -> Result<()> {
    let (namespace, name) = pod_key(pod);
    let ns_name = paths.pod_ns(&namespace, &name);
    netns::kill_processes_in(&ns_name);
    let call = CniCall {
        paths,
        node,
        container_id,
        netns: &netns_path(&ns_name),
        pod: &format!("{namespace}/{name}"),
        runtime_config: runtime_config(pod),
    };
    let del = cni_del(&call);
    netns::delete(paths, &ns_name)?;
    let _ = std::fs::remove_dir_all(paths.pod_dir(&namespace, &name));
    del
}

/// Waits until `addr` accepts a TCP connection from inside namespace `ns`.
pub fn wait_reachable(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let netns = Netns::open(netns_path(ns))?;
    let deadline = Instant::now() + timeout;
    let handle = std::thread::spawn(move || -> bool {
        let Ok(_inside) = netns.enter() else {
            return false;
        };
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    match handle.join() {
        Ok(true) => Ok(()),
        _ => Err(LabError::Failed(format!(
            "{addr} did not answer within {timeout:?} (seen from {ns})"
        ))),
    }
}

/// Waits until `GET http://addr/path` from inside namespace `ns` answers
/// with a status kubelet counts as ready (200-399), as an httpGet
/// readinessProbe.
pub fn wait_http_ready(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let netns = Netns::open(netns_path(ns))?;
    let deadline = Instant::now() + timeout;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: podwire-lab-probe\r\nConnection: close\r\n\r\n"
    );
    let handle = std::thread::spawn(move || -> Option<String> {
        let _inside = netns.enter().ok()?;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match http_status(addr, &request) {
                Ok(code) if (200..400).contains(&code) => return None,
                Ok(code) => last = format!("status {code}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(last)
    });
    match handle.join() {
        Ok(None) => Ok(()),
        Ok(Some(last)) => Err(LabError::Failed(format!(
            "readiness probe GET http://{addr}{path} did not succeed within {timeout:?} (seen from {ns}; last: {last})"
        ))),
        Err(_) => Err(LabError::Failed(format!(
            "readiness probe of {addr} failed (seen from {ns})"
        ))),
    }
}

/// One HTTP request; the status code of the answer.
fn http_status(addr: SocketAddr, request: &str) -> std::io::Result<u16> {
    use std::io::Read;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 32];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..])? {
            0 => break,
            n => len += n,
        }
    }
    // "HTTP/1.1 200 OK": the three digits after the first space.
    std::str::from_utf8(&head[..len])
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// Runs a command inside a pod (its network, resolv.conf, hosts, hostname)
/// and returns its exit code; stdio is the caller's.
pub fn exec_in(sandbox: &Sandbox, argv: &[String]) -> Result<i32> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| LabError::Invalid("nothing to run: give a command after --".into()))?;
    let mut cmd: Command = spawn::command(&resolve_program(program), sandbox)?;
    cmd.args(args);
    let status = cmd
        .status()
        .map_err(|e| LabError::io(format!("cannot run {program}"), e))?;
    Ok(status.code().unwrap_or(128 + 9))
}

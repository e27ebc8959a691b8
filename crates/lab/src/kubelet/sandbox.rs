//! A pod's sandbox, as a runtime makes one: a network namespace wired by
//! the CNI plugins of the node's configuration (hostNetwork pods use the
//! node's own), the resolv.conf of the pod's dnsPolicy, the kubelet's
//! managed hosts file and the hostname. The resolv.conf and hosts rules
//! are pure and unit-tested; creating and removing run blocking commands
//! (call them off the async threads).

use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::error::{KubeletError, Result};
use super::state::{Layout, PodRecord, write_atomic, write_json};
use crate::netns;
use crate::paths::netns_path;
use crate::runtime::{self, CniExec};
use crate::spawn::Sandbox;

/// What the DNS settings of a pod depend on besides the pod.
#[derive(Debug, Clone, Default)]
pub struct Dns {
    pub cluster_dns: Vec<IpAddr>,
    pub domain: String,
    /// The node's own resolv.conf (dnsPolicy Default).
    pub node_resolv: String,
}

#[derive(Default)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

fn parse_resolv(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => r.nameservers.extend(words.next().map(String::from)),
            Some("search" | "domain") => r.searches = words.map(String::from).collect(),
            Some("options") => r.options.extend(words.map(String::from)),
            _ => {}
        }
    }
    r
}

fn push_unique(list: &mut Vec<String>, value: String) {
    if !list.contains(&value) {
        list.push(value);
    }
}

/// The pod's resolv.conf by its dnsPolicy (ClusterFirst: cluster DNS with
/// the namespace's search list; a hostNetwork pod or a node without
/// --cluster-dns falls back to Default unless ClusterFirstWithHostNet;
/// Default: the node's; None: dnsConfig only) with dnsConfig merged in.
pub fn resolv_conf(pod: &Pod, dns: &Dns) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    } && !dns.cluster_dns.is_empty();
    let node = parse_resolv(&dns.node_resolv);
    let mut r = if cluster_first {
        let d = &dns.domain;
        let mut searches = vec![
            format!("{namespace}.svc.{d}"),
            format!("svc.{d}"),
            d.clone(),
        ];
        for s in node.searches {
            push_unique(&mut searches, s);
        }
        Resolv {
            nameservers: dns.cluster_dns.iter().map(IpAddr::to_string).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        Resolv::default()
    } else {
        node
    };
    if let Some(config) = &spec.dns_config {
        for ns in config.nameservers.iter().flatten() {
            push_unique(&mut r.nameservers, ns.clone());
        }
        for s in config.searches.iter().flatten() {
            push_unique(&mut r.searches, s.clone());
        }
        for o in config.options.iter().flatten() {
            let value = match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            // An option of the same name is replaced.
            let name = value.split(':').next().unwrap_or_default().to_string();
            r.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            r.options.push(value);
        }
    }
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for ns in r.nameservers.iter().take(3) {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    out
}

/// The pod's hostname: spec.hostname, else its name (at most 63
/// characters, as kubelet truncates).
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let mut name: String = name.chars().take(63).collect();
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

/// The kubelet-managed /etc/hosts of a pod with a network of its own.
pub fn hosts_file(pod: &Pod, ips: &[IpAddr], domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host = hostname(pod);
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let names = match &spec.subdomain {
        Some(sub) if !sub.is_empty() => format!(
            "{host}.{sub}.{}.svc.{domain}\t{host}",
            pod.metadata.namespace.clone().unwrap_or_default()
        ),
        _ => host,
    };
    for ip in ips {
        out.push_str(&format!("{ip}\t{names}\n"));
    }
    if let Some(aliases) = &spec.host_aliases {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

/// What creating a sandbox needs from the kubelet's settings.
pub struct Env<'a> {
    pub layout: &'a Layout,
    pub cni_conf_dir: &'a Path,
    pub cni_bin_dir: &'a Path,
    pub netns_prefix: &'a str,
    pub node_ip: IpAddr,
    pub dns: &'a Dns,
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn cni_exec<'a>(env: &Env, record: &'a PodRecord, path: &'a str) -> CniExec<'a> {
    CniExec {
        bin_dir: env.cni_bin_dir.to_path_buf(),
        plugin_netns: None,
        container_id: &record.sandbox_id,
        netns: path,
        ifname: "eth0",
        args: format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            record.namespace, record.name, record.sandbox_id, record.uid
        ),
        pod: "",
        runtime_config: serde_json::Value::Null,
    }
}

/// Creates the sandbox of `pod` (blocking). The record is written before
/// the namespace exists, so a crash at any point leaves something the next
/// kubelet removes. On failure nothing is left.
pub fn create(env: &Env, pod: &Pod) -> Result<PodRecord> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    let mut record = PodRecord {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
        host_network,
        netns: None,
        sandbox_id: random_id(),
        ips: vec![env.node_ip],
        conflist: None,
        created: Timestamp::now(),
    };
    let etc = env.layout.etc(&uid);
    write_atomic(
        &etc.join("resolv.conf"),
        resolv_conf(pod, env.dns).as_bytes(),
        0o644,
    )?;
    if host_network {
        write_json(&env.layout.pod_record(&uid), &record)?;
        return Ok(record);
    }
    let Some((_, conflist)) = runtime::find_conflist(env.cni_conf_dir)? else {
        return Err(KubeletError::Pod(format!(
            "network is not ready: no CNI configuration in {}",
            env.cni_conf_dir.display()
        )));
    };
    let ns_name = format!("{}{uid}", env.netns_prefix);
    record.netns = Some(ns_name.clone());
    record.conflist = Some(conflist.clone());
    record.ips.clear();
    write_json(&env.layout.pod_record(&uid), &record)?;
    if netns::exists(&ns_name) {
        // Ours from a run that died before recording its outcome.
        netns::remove(&ns_name);
    }
    let undo = |record: &PodRecord| {
        destroy(env, record);
        let _ = std::fs::remove_file(env.layout.pod_record(&record.uid));
    };
    if let Err(e) = netns::add(&ns_name) {
        undo(&record);
        return Err(e.into());
    }
    let path = netns_path(&ns_name);
    let mut call = cni_exec(env, &record, &path);
    let pod_label = format!("{namespace}/{name}");
    call.pod = &pod_label;
    call.runtime_config = runtime::runtime_config(pod);
    let result = runtime::add_chain(&call, &conflist);
    let ips = result.as_ref().map(runtime::result_ips).unwrap_or_default();
    if let Err(e) = result {
        undo(&record);
        return Err(e.into());
    }
    if ips.is_empty() {
        undo(&record);
        return Err(KubeletError::Pod(format!(
            "the CNI plugins gave pod {pod_label} no IP address"
        )));
    }
    record.ips = ips;
    write_atomic(
        &etc.join("hosts"),
        hosts_file(pod, &record.ips, &env.dns.domain).as_bytes(),
        0o644,
    )?;
    write_json(&env.layout.pod_record(&uid), &record)?;
    Ok(record)
}

/// Removes a sandbox (blocking): every process in its namespace, CNI DEL
/// with the configuration ADD used, the namespace. Errors are logged: DEL
/// tolerates what is gone, and nothing else can be done about the rest.
pub fn destroy(env: &Env, record: &PodRecord) {
    let Some(ns_name) = &record.netns else {
        return;
    };
    netns::kill_processes_in(ns_name);
    if let Some(conflist) = &record.conflist {
        let path = netns_path(ns_name);
        let pod_label = format!("{}/{}", record.namespace, record.name);
        let mut call = cni_exec(env, record, &path);
        call.pod = &pod_label;
        if let Err(e) = runtime::del_chain(&call, conflist) {
            tracing::warn!(pod = %pod_label, error = %e, "CNI DEL failed");
        }
    }
    netns::remove(ns_name);
}

/// Where a pod's processes run (without volume mounts).
pub fn container_sandbox(layout: &Layout, record: &PodRecord, pod: &Pod) -> Sandbox {
    let etc = layout.etc(&record.uid);
    let mut binds = vec![(etc.join("resolv.conf"), "/etc/resolv.conf".into())];
    if !record.host_network {
        binds.push((etc.join("hosts"), "/etc/hosts".into()));
    }
    Sandbox {
        netns: record.netns.as_deref().map(netns_path),
        hostname: (!record.host_network).then(|| hostname(pod)),
        binds,
    }
}

#[cfg(test)]
mod tests;

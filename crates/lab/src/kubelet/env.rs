//! A container's environment as kubelet builds it (pure): `envFrom`
//! (ConfigMaps and Secrets, with prefixes), then `env` (values with
//! `$(VAR)` expansion, fieldRef, resourceFieldRef, configMapKeyRef,
//! secretKeyRef, optional references honoured), then the `kubernetes`
//! Service's variables. The ConfigMaps and Secrets are fetched by the
//! caller ([`references`] says which), so every rule is unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

/// The data of the ConfigMaps and Secrets a container refers to, by name;
/// None: it does not exist.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

/// What the environment may mention besides the pod object.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub pod_ips: Vec<IpAddr>,
    pub host_ips: Vec<IpAddr>,
    /// The `kubernetes` Service (ClusterIP, port), when known.
    pub api_service: Option<(IpAddr, i32)>,
    /// The node's CPUs and memory (bytes): resourceFieldRef without limits.
    pub node_cpus: u64,
    pub node_memory: u64,
}

/// The ConfigMaps and Secrets (names) a container's environment reads.
pub fn references(container: &Container) -> (Vec<String>, Vec<String>) {
    let (mut maps, mut secrets) = (Vec::new(), Vec::new());
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            maps.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref {
            maps.push(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    maps.sort();
    maps.dedup();
    secrets.sort();
    secrets.dedup();
    (maps, secrets)
}

fn lookup<'a>(
    kind: &str,
    namespace: &str,
    all: &'a HashMap<String, Option<BTreeMap<String, String>>>,
    name: &str,
    optional: bool,
) -> Result<Option<&'a BTreeMap<String, String>>, String> {
    match all.get(name).and_then(Option::as_ref) {
        Some(data) => Ok(Some(data)),
        None if optional => Ok(None),
        None => Err(format!(
            "{kind} \"{name}\" not found in namespace {namespace}: create it, or mark the reference optional"
        )),
    }
}

/// Replaces `$(NAME)` with earlier variables (unknown names stay as they
/// are, `$$` is a literal `$`), as kubelet expands env values, command and
/// args.
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn set(vars: &mut Vec<(String, String)>, name: String, value: String) {
    vars.retain(|(k, _)| *k != name);
    vars.push((name, value));
}

/// The variables of the `kubernetes` Service that every container gets.
fn api_service_vars(ip: IpAddr, port: i32) -> Vec<(String, String)> {
    let url = format!("tcp://{}", std::net::SocketAddr::new(ip, port as u16));
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), ip.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.to_string()),
    ]
}

fn field(pod: &Pod, facts: &Facts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let join = |ips: &[IpAddr]| {
        ips.iter()
            .map(IpAddr::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_suffix("']")?
            .strip_prefix("['")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations", &meta.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => facts
            .pod_ips
            .first()
            .map(IpAddr::to_string)
            .unwrap_or_default(),
        "status.podIPs" => join(&facts.pod_ips),
        "status.hostIP" => facts
            .host_ips
            .first()
            .map(IpAddr::to_string)
            .unwrap_or_default(),
        "status.hostIPs" => join(&facts.host_ips),
        other => {
            return Err(format!(
                "fieldRef {other:?} is not supported by podwire's kubelet"
            ));
        }
    })
}

/// A resource quantity in base units ("500m" -> 0.5, "1Gi" -> 2^30).
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some(n * factor)
}

fn resource(
    container: &Container,
    facts: &Facts,
    name: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let (kind, resource) = name
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {name:?} is not limits.X or requests.X"))?;
    let res = container.resources.as_ref();
    let declared = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        _ => res.and_then(|r| r.requests.as_ref()),
    }
    .and_then(|m| m.get(resource))
    .and_then(|q| quantity(&q.0));
    // Without a limit, kubelet reports the node's allocatable amount.
    let value = match (declared, resource) {
        (Some(v), _) => v,
        (None, "cpu") if kind == "limits" => facts.node_cpus as f64,
        (None, "memory") if kind == "limits" => facts.node_memory as f64,
        (None, _) => 0.0,
    };
    let divisor = divisor
        .and_then(quantity)
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as u64))
}

/// The container's environment, in order; an error says which reference
/// cannot be resolved (the container then waits with
/// CreateContainerConfigError, as with kubelet).
pub fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
    facts: &Facts,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            lookup(
                "configmap",
                &namespace,
                &sources.config_maps,
                &r.name,
                r.optional == Some(true),
            )?
        } else if let Some(r) = &from.secret_ref {
            lookup(
                "secret",
                &namespace,
                &sources.secrets,
                &r.name,
                r.optional == Some(true),
            )?
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            set(&mut vars, format!("{prefix}{k}"), v.clone());
        }
    }
    for EnvVar {
        name,
        value,
        value_from,
    } in container.env.iter().flatten()
    {
        let value = match (value, value_from) {
            (Some(v), _) => Some(expand(v, &vars)),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    Some(field(pod, facts, &f.field_path)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource(
                        container,
                        facts,
                        &r.resource,
                        r.divisor.as_ref().map(|q| q.0.as_str()),
                    )?)
                } else if let Some(r) = &from.config_map_key_ref {
                    key(
                        &namespace,
                        "ConfigMap",
                        &sources.config_maps,
                        &r.name,
                        &r.key,
                        r.optional,
                    )?
                } else if let Some(r) = &from.secret_key_ref {
                    key(
                        &namespace,
                        "Secret",
                        &sources.secrets,
                        &r.name,
                        &r.key,
                        r.optional,
                    )?
                } else {
                    None
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            set(&mut vars, name.clone(), v);
        }
    }
    if let Some((ip, port)) = facts.api_service {
        for (k, v) in api_service_vars(ip, port) {
            if !vars.iter().any(|(n, _)| *n == k) {
                vars.push((k, v));
            }
        }
    }
    Ok(vars)
}

fn key(
    namespace: &str,
    kind: &str,
    all: &HashMap<String, Option<BTreeMap<String, String>>>,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    let optional = optional == Some(true);
    match all.get(name).and_then(Option::as_ref) {
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind} {namespace}/{name}: add it, or mark the reference optional"
            )),
        },
        None if optional => Ok(None),
        None => Err(format!(
            "{} \"{name}\" not found in namespace {namespace}: create it, or mark the reference optional",
            kind.to_lowercase()
        )),
    }
}

#[cfg(test)]
mod tests;

//! `trace --explain`: the plan-level view of a destination — which Service
//! it is, its ports, and every endpoint the proxy could choose (from the
//! EndpointSlices, with the pod and node behind each address). Pure.

use podwire_model::ClusterState;

use super::places::{Place, place_of_ip};

/// The plan-level lines for Service `key` (namespace, name).
pub fn explain_service(state: &ClusterState, all: &[Place], key: &(String, String)) -> Vec<String> {
    let mut out = Vec::new();
    let Some(svc) = state.services.get(key) else {
        return out;
    };
    let spec = svc.spec.clone().unwrap_or_default();
    out.push(format!(
        "Service {}/{}: type {}, ClusterIP {}{}",
        key.0,
        key.1,
        spec.type_.as_deref().unwrap_or("ClusterIP"),
        spec.cluster_ip.as_deref().unwrap_or("none"),
        match spec.session_affinity.as_deref() {
            Some("ClientIP") => ", sessionAffinity ClientIP",
            _ => "",
        }
    ));
    for p in spec.ports.iter().flatten() {
        let target = p
            .target_port
            .as_ref()
            .map(|t| match t {
                podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
                podwire_model::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
            })
            .unwrap_or_else(|| p.port.to_string());
        out.push(format!(
            "  port {}{} {}/{} → targetPort {target}{}",
            p.name
                .as_deref()
                .map(|n| format!("{n} "))
                .unwrap_or_default(),
            p.port,
            p.protocol.as_deref().unwrap_or("TCP"),
            p.port,
            p.node_port
                .map(|n| format!(", nodePort {n} on every node"))
                .unwrap_or_default()
        ));
    }
    let mut endpoints = Vec::new();
    for slice in crate::inspect::slices_of(state, &key.0, &key.1) {
        let ports: Vec<String> = slice
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.map(|n| n.to_string()).unwrap_or_default())
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            for addr in &ep.addresses {
                let who = addr
                    .parse()
                    .ok()
                    .and_then(|ip| place_of_ip(all, ip))
                    .map(|p| p.label.clone())
                    .unwrap_or_default();
                endpoints.push(format!(
                    "  endpoint {addr}:{} {who}{}",
                    ports.join(","),
                    if ready {
                        ""
                    } else {
                        " (not ready: never chosen)"
                    }
                ));
            }
        }
    }
    if endpoints.is_empty() {
        out.push("  no endpoints: a new connection is rejected (TCP reset)".into());
    } else {
        out.push(format!(
            "  {} endpoint(s); the proxy picks one at random per connection (numgen):",
            endpoints.len()
        ));
        endpoints.sort();
        out.extend(endpoints);
    }
    out
}

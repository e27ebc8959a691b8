//! Fuzzes ingress request routing (host + path) against a slow, obviously
//! correct model of the Ingress v1 rules: the input is a list of rules and
//! requests; every request must be routed to the rule the model picks (or
//! to none), and compiling and printing the table must never panic.
//!
//! Input: lines. `R<type><host>\t<path>` adds a rule (type E = Exact,
//! P = Prefix, I = ImplementationSpecific; an empty host means any host);
//! `Q<host>\t<path>` is a request. Other lines are ignored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podwire_ingress::{CompileOptions, RouteTable};
use podwire_model::{ClusterState, Object};

struct Rule {
    host: Option<String>,
    path: String,
    exact: bool,
}

/// The request host as the model sees it: no port, no trailing dot, lower case.
fn model_host(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(inner) = host.strip_prefix('[') {
        inner.split(']').next().unwrap_or(inner)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
            _ => host,
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').collect()
}

/// Which rule (by index) serves the request, per the Ingress documentation.
fn model_route(rules: &[Rule], host: &str, path: &str) -> Option<usize> {
    let host = model_host(host);
    let path = if path.is_empty() { "/" } else { path };
    let in_group = |want: &dyn Fn(&Option<String>) -> bool| -> Vec<usize> {
        (0..rules.len()).filter(|i| want(&rules[*i].host)).collect()
    };
    let mut group = in_group(&|h| h.as_deref() == Some(host.as_str()));
    if group.is_empty() {
        if let Some((label, rest)) = host.split_once('.')
            && !label.is_empty()
        {
            let wildcard = format!("*.{rest}");
            group = in_group(&|h| h.as_deref() == Some(wildcard.as_str()));
        }
    }
    if group.is_empty() {
        group = in_group(&|h| h.is_none());
    }
    // Exact: equal paths; the first listed wins a duplicate.
    if let Some(i) = group
        .iter()
        .find(|i| rules[**i].exact && rules[**i].path == path)
    {
        return Some(*i);
    }
    // Prefix: element-wise; the longest wins, the first listed among equals.
    let request = segments(path);
    let mut best: Option<(usize, usize)> = None;
    for &i in &group {
        if rules[i].exact {
            continue;
        }
        let rule = segments(&rules[i].path);
        if request.starts_with(&rule) {
            let len = rules[i].path.trim_end_matches('/').len();
            if best.is_none_or(|(_, l)| len > l) {
                best = Some((i, len));
            }
        }
    }
    best.map(|(i, _)| i)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut rules: Vec<Rule> = Vec::new();
    let mut queries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let (kind, rest) = match line.char_indices().nth(1) {
            Some((i, _)) => line.split_at(i),
            None => continue,
        };
        let host_and_path = |text: &str| -> (String, String) {
            let (host, path) = text.split_once('\t').unwrap_or((text, "/"));
            (host.to_string(), path.to_string())
        };
        match kind {
            "R" if rules.len() < 64 => {
                let mut chars = rest.chars();
                let exact = match chars.next() {
                    Some('E') => true,
                    Some('P') | Some('I') => false,
                    _ => continue,
                };
                let (host, path) = host_and_path(chars.as_str());
                if path.starts_with('/') {
                    rules.push(Rule {
                        host: (!host.is_empty()).then(|| host.to_ascii_lowercase()),
                        path,
                        exact,
                    });
                }
            }
            "Q" => queries.push(host_and_path(rest)),
            _ => {}
        }
    }
    // One Ingress rule per model rule, each to its own Service "s<i>".
    let spec_rules: Vec<_> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut rule = serde_json::json!({"http": {"paths": [{
                "path": r.path,
                "pathType": if r.exact { "Exact" } else { "Prefix" },
                "backend": {"service": {"name": format!("s{i}"), "port": {"number": 80}}}
            }]}});
            if let Some(h) = &r.host {
                rule["host"] = serde_json::json!(h);
            }
            rule
        })
        .collect();
    let ingress = serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "fuzz", "namespace": "default"},
        "spec": {"ingressClassName": "podwire", "rules": spec_rules}});
    let mut state = ClusterState::default();
    state.insert(Object::from_json(&ingress).expect("the fuzz Ingress is well-formed"));
    let table = RouteTable::compile(&state, &CompileOptions::default());
    let _ = table.to_string();
    for (host, path) in &queries {
        let got = table
            .route(host, path)
            .map(|r| r.backend.target.service.clone());
        let want = model_route(&rules, host, path).map(|i| format!("s{i}"));
        assert_eq!(got, want, "host {host:?} path {path:?}");
    }
});

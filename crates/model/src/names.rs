//! Name rules (DNS-1123 labels and subdomains) that objects podwire reads
//! must follow.

use crate::ModelError;

/// Checks that `name` is a DNS-1123 label: what Kubernetes requires for
/// namespaces, nodes and services, and what we require for lab names, since
/// they end up as hostnames and interface/namespace name parts.
pub fn validate_label(what: &str, name: &str) -> Result<(), ModelError> {
    label_problem(name).map_or(Ok(()), |reason| {
        Err(ModelError::InvalidName {
            what: what.to_string(),
            name: name.to_string(),
            reason,
        })
    })
}

/// Checks that `name` is a DNS-1123 subdomain (dot-separated labels, at most
/// 253 characters): what Kubernetes requires for pods, deployments, secrets
/// and ingresses.
pub fn validate_subdomain(what: &str, name: &str) -> Result<(), ModelError> {
    let fail = |reason: String| {
        Err(ModelError::InvalidName {
            what: what.to_string(),
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty".to_string());
    }
    if name.len() > 253 {
        return fail(format!(
            "it is {} characters long, the limit is 253",
            name.len()
        ));
    }
    for part in name.split('.') {
        if let Some(reason) = label_problem(part) {
            return fail(format!("part {part:?}: {reason}"));
        }
    }
    Ok(())
}

fn label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_string());
    }
    if name.len() > 63 {
        return Some(format!(
            "it is {} characters long, the limit is 63",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!("it contains {c:?}"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("it starts or ends with '-'".to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(validate_label("node", "node01").is_ok());
        assert!(validate_label("node", "a").is_ok());
        assert!(validate_label("node", "Node01").is_err());
        assert!(validate_label("node", "-a").is_err());
        assert!(validate_label("node", "a-").is_err());
        assert!(validate_label("node", "").is_err());
        assert!(validate_label("node", "a.b").is_err());
        assert!(validate_label("node", &"a".repeat(64)).is_err());
    }

    #[test]
    fn subdomains() {
        assert!(validate_subdomain("secret", "tls.example-com").is_ok());
        assert!(validate_subdomain("secret", "a..b").is_err());
        assert!(validate_subdomain("secret", "a/b").is_err());
    }
}

//! Name rules (DNS-1123 labels and subdomains) and the small deterministic
//! hash that derived names (pods, slices, MACs) are built from.

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

/// 64-bit FNV-1a over the parts, with a separator so ("ab","c") != ("a","bc").
/// Stable across builds and platforms, which std's hasher does not promise;
/// derived names must not change between podwire versions or runs.
pub(crate) fn hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The alphabet Kubernetes uses for generated name suffixes: no vowels (no
/// accidental words) and no look-alike characters.
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `len` characters of the safe alphabet derived from `value`.
pub(crate) fn safe_suffix(mut value: u64, len: usize) -> String {
    let base = SAFE_ALPHABET.len() as u64;
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        let idx = (value % base) as usize;
        out.push(char::from(SAFE_ALPHABET.get(idx).copied().unwrap_or(b'x')));
        value /= base;
    }
    out
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

    #[test]
    fn hash_separates_parts() {
        assert_ne!(hash(&["ab", "c"]), hash(&["a", "bc"]));
        assert_eq!(hash(&["x"]), hash(&["x"]));
    }

    #[test]
    fn suffix_has_length_and_alphabet() {
        let s = safe_suffix(hash(&["web", "0"]), 5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
    }
}

//! The small deterministic hash that the lab's derived names (Deployment
//! pods, EndpointSlices, node MACs) are built from, and the suffix alphabet
//! Kubernetes uses for generated names.

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

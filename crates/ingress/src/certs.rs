//! TLS certificates of the HTTPS listener: `kubernetes.io/tls` Secrets named
//! in the `spec.tls` of podwire's Ingresses, compiled into an SNI lookup
//! (exact host, then a `*.` wildcard covering it, then the default
//! certificate). A missing or broken Secret leaves its hosts on the default
//! certificate, as ingress-nginx does, and says why in the plan.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use podwire_model::{ClusterState, Ingress, Secret};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::IngressError;

/// The Secret type that holds a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// A Secret named `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for SecretRef {
    type Err = IngressError;

    fn from_str(s: &str) -> Result<SecretRef, IngressError> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(SecretRef {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(IngressError::BadSecret(s.to_string())),
        }
    }
}

/// One host's certificate as the plan shows it.
#[derive(Debug, Clone)]
pub struct CertEntry {
    /// As written in spec.tls (`a.com`, `*.a.com`).
    pub host: String,
    pub secret: SecretRef,
    pub ingress: String,
    /// Why the default certificate is served instead, if it is.
    pub problem: Option<String>,
}

/// Certificates by SNI name.
#[derive(Debug)]
pub struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// Where the default certificate comes from.
    pub default_source: String,
    pub entries: Vec<CertEntry>,
}

impl CertTable {
    /// A table serving only `default` (before anything is loaded).
    pub fn only_default(default: Arc<CertifiedKey>, source: &str) -> CertTable {
        CertTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
            default_source: source.to_string(),
            entries: Vec::new(),
        }
    }

    /// Compiles the certificates of `ingresses` (oldest first: the first
    /// Ingress naming a host decides its certificate). `default_secret`
    /// replaces `generated` as the default when it loads.
    pub fn compile(
        state: &ClusterState,
        ingresses: &[&Ingress],
        default_secret: Option<&SecretRef>,
        generated: Arc<CertifiedKey>,
    ) -> CertTable {
        let mut table = CertTable::only_default(generated, "generated self-signed certificate");
        if let Some(secret) = default_secret {
            match load_secret(state, secret) {
                Ok(key) => {
                    table.default = key;
                    table.default_source = format!("Secret {secret}");
                }
                Err(problem) => {
                    table.default_source = format!(
                        "generated self-signed certificate (Secret {secret} unusable: {problem})"
                    );
                }
            }
        }
        let mut loaded: HashMap<String, Result<Arc<CertifiedKey>, String>> = HashMap::new();
        for ingress in ingresses {
            let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
            let id = format!(
                "{namespace}/{}",
                ingress.metadata.name.as_deref().unwrap_or_default()
            );
            for tls in ingress.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
                let Some(name) = tls.secret_name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let secret = SecretRef {
                    namespace: namespace.clone(),
                    name: name.to_string(),
                };
                let key = loaded
                    .entry(secret.to_string())
                    .or_insert_with(|| load_secret(state, &secret))
                    .clone();
                for host in tls.hosts.iter().flatten() {
                    let host = host.to_ascii_lowercase();
                    let (map, key_name) = match host.strip_prefix("*.") {
                        Some(rest) => (&mut table.wildcard, rest.to_string()),
                        None => (&mut table.exact, host.clone()),
                    };
                    let problem = if map.contains_key(&key_name)
                        || table
                            .entries
                            .iter()
                            .any(|e| e.host == host && e.problem.is_none())
                    {
                        Some("another, older Ingress names a certificate for this host".to_string())
                    } else {
                        match &key {
                            Ok(k) => {
                                map.insert(key_name, k.clone());
                                None
                            }
                            Err(problem) => Some(problem.clone()),
                        }
                    };
                    table.entries.push(CertEntry {
                        host,
                        secret: secret.clone(),
                        ingress: id.clone(),
                        problem,
                    });
                }
            }
        }
        table
    }

    /// The certificate for the SNI name the client sent (None: no SNI, e.g.
    /// a connection by IP address).
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        name.split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, rest)| self.wildcard.get(rest))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl fmt::Display for CertTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<32} {:<24} STATUS",
            "TLS HOST", "SECRET", "INGRESS"
        )?;
        for e in &self.entries {
            let status = match &e.problem {
                None => "ok".to_string(),
                Some(p) => format!("default certificate served: {p}"),
            };
            writeln!(
                f,
                "{:<28} {:<32} {:<24} {status}",
                e.host,
                e.secret.to_string(),
                e.ingress
            )?;
        }
        writeln!(f, "{:<28} {}", "(default)", self.default_source)
    }
}

/// Loads a `kubernetes.io/tls` Secret from `state`.
fn load_secret(state: &ClusterState, secret: &SecretRef) -> Result<Arc<CertifiedKey>, String> {
    let object = state
        .secrets
        .get(&(secret.namespace.clone(), secret.name.clone()))
        .ok_or_else(|| format!("Secret {secret} not found"))?;
    secret_key(object).map(Arc::new)
}

/// The certificate chain and key of a `kubernetes.io/tls` Secret.
pub fn secret_key(secret: &Secret) -> Result<CertifiedKey, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(format!(
            "Secret has type {kind}, not {TLS_SECRET_TYPE}: create it with `kubectl create secret tls`"
        ));
    }
    let field = |name: &str| -> Result<Vec<u8>, String> {
        if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(name)) {
            return Ok(bytes.0.clone());
        }
        if let Some(text) = secret.string_data.as_ref().and_then(|d| d.get(name)) {
            return Ok(text.clone().into_bytes());
        }
        Err(format!("Secret has no {name}"))
    };
    certified_key_from_pem(&field("tls.crt")?, &field("tls.key")?)
}

/// Builds a rustls key from PEM text: the certificate chain (leaf first) and
/// a PKCS#8, PKCS#1 or SEC1 private key.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key is not a usable key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not belong to the certificate in tls.crt: {e}"))?;
    Ok(certified)
}

/// A self-signed certificate for connections whose SNI matches nothing,
/// made at startup like ingress-nginx's "Fake Certificate".
pub fn generated_default() -> Result<Arc<CertifiedKey>, IngressError> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["podwire-ingress-default.invalid".to_string()])
            .map_err(|e| IngressError::Certificate(e.to_string()))?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| IngressError::Certificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![generated.cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pem_pair(hosts: &[&str]) -> (String, String) {
        let k = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (k.cert.pem(), k.signing_key.serialize_pem())
    }

    fn tls_secret(state: &mut ClusterState, name: &str, cert: &str, key: &str) {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert, "tls.key": key}
        }))
        .unwrap();
        state.secrets.insert(("default".into(), name.into()), s);
    }

    fn ingress(name: &str, tls: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"tls": tls}
        }))
        .unwrap()
    }

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn sni_exact_then_wildcard_then_default() {
        let mut state = ClusterState::default();
        let (a_crt, a_key) = pem_pair(&["a.com"]);
        let (w_crt, w_key) = pem_pair(&["*.w.com"]);
        tls_secret(&mut state, "a", &a_crt, &a_key);
        tls_secret(&mut state, "w", &w_crt, &w_key);
        let first = ingress(
            "first",
            json!([{"hosts": ["a.com"], "secretName": "a"},
                   {"hosts": ["*.w.com", "x.w.com"], "secretName": "w"},
                   {"hosts": ["broken.com"], "secretName": "missing"}]),
        );
        let second = ingress("second", json!([{"hosts": ["A.com"], "secretName": "w"}]));
        let generated = generated_default().unwrap();
        let t = CertTable::compile(&state, &[&first, &second], None, generated.clone());
        let a = leaf(&t.resolve(Some("a.com")));
        let w = leaf(&t.resolve(Some("y.w.com")));
        assert_ne!(a, w);
        assert_eq!(leaf(&t.resolve(Some("A.COM."))), a);
        assert_eq!(leaf(&t.resolve(Some("x.w.com"))), w);
        // One label only, and nothing for unknown or missing names.
        assert_eq!(leaf(&t.resolve(Some("a.b.w.com"))), leaf(&generated));
        assert_eq!(leaf(&t.resolve(Some("broken.com"))), leaf(&generated));
        assert_eq!(leaf(&t.resolve(None)), leaf(&generated));
        let plan = t.to_string();
        assert!(plan.contains("Secret default/missing not found"), "{plan}");
        assert!(plan.contains("older Ingress"), "{plan}");
    }

    #[test]
    fn default_secret_and_bad_secrets() {
        let mut state = ClusterState::default();
        let (crt, key) = pem_pair(&["d.com"]);
        let (_, other_key) = pem_pair(&["e.com"]);
        tls_secret(&mut state, "d", &crt, &key);
        tls_secret(&mut state, "mismatch", &crt, &other_key);
        tls_secret(&mut state, "garbage", "not pem", "nope");
        let d: SecretRef = "default/d".parse().unwrap();
        let t = CertTable::compile(&state, &[], Some(&d), generated_default().unwrap());
        assert_eq!(t.default_source, "Secret default/d");
        let want = CertificateDer::pem_slice_iter(crt.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(leaf(&t.resolve(Some("zzz"))), want.to_vec());
        let problem = |name: &str| secret_key(&state.secrets[&("default".into(), name.into())]);
        assert!(problem("mismatch").unwrap_err().contains("does not belong"));
        assert!(problem("garbage").unwrap_err().contains("no certificate"));
        assert!("nope".parse::<SecretRef>().is_err());
        assert!("a/b/c".parse::<SecretRef>().is_err());
    }
}

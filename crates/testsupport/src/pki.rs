//! The control plane's certificates and kubeconfig files: one throwaway CA
//! (ECDSA P-256, made with rcgen) that signs the API server's serving
//! certificate and every client certificate, as kubeadm lays them out.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate and its private key, both PEM (the key as PKCS#8).
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl CertPair {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub(crate) fn write(&self, dir: &Path, name: &str) {
        write(&dir.join(format!("{name}.crt")), &self.cert_pem);
        write(&dir.join(format!("{name}.key")), &self.key_pem);
    }
}

/// The certificate authority of one control plane.
pub struct Ca {
    pair: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A fresh self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Ca {
        let key = KeyPair::generate().expect("generate the CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ca {
            pair,
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn serving(&self, common_name: &str, dns: &[&str], ips: &[IpAddr]) -> CertPair {
        let sans: Vec<String> = dns
            .iter()
            .map(|d| d.to_string())
            .chain(ips.iter().map(IpAddr::to_string))
            .collect();
        let mut params = CertificateParams::new(sans).expect("valid subject alternative names");
        params.distinguished_name = name(common_name, None);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes takes the user from the CN and the
    /// group from O (one group here; rcgen keeps one value per attribute).
    pub fn client(&self, user: &str, group: Option<&str>) -> CertPair {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, group);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> CertPair {
        let key = KeyPair::generate().expect("generate a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a certificate with the test CA");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A key pair for signing service-account tokens: (private key PKCS#8 PEM,
/// public key PEM). kube-apiserver and kube-controller-manager take ECDSA
/// P-256 keys in both forms.
pub(crate) fn service_account_key() -> (String, String) {
    let key = KeyPair::generate().expect("generate the service-account key");
    (key.serialize_pem(), key.public_key_pem())
}

/// Who a kubeconfig speaks as.
pub(crate) enum Credentials<'a> {
    Cert(&'a CertPair),
    Token(&'a str),
}

/// A kubeconfig with everything embedded (one cluster, user, context).
pub(crate) fn kubeconfig(server: &str, ca_pem: &str, user: &str, creds: Credentials<'_>) -> String {
    let user_fields = match creds {
        Credentials::Cert(pair) => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            BASE64.encode(&pair.cert_pem),
            BASE64.encode(&pair.key_pem)
        ),
        // JSON strings are valid YAML scalars: safe for any token text.
        Credentials::Token(token) => format!("    token: {}\n", json_string(token)),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: podwire\n  \
           cluster:\n    \
             server: {server}\n    \
             certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user}\n  \
           user:\n\
         {user_fields}\
         contexts:\n\
         - name: podwire\n  \
           context:\n    \
             cluster: podwire\n    \
             user: {user}\n\
         current-context: podwire\n",
        ca = BASE64.encode(ca_pem),
        user = json_string(user),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a file that only root may read (keys and tokens live in these).
pub(crate) fn write(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_quotes_names_and_embeds_base64() {
        let text = kubeconfig(
            "https://10.0.0.2:6443",
            "CA",
            "a\"b",
            Credentials::Token("t.k-n_"),
        );
        assert!(
            text.contains("certificate-authority-data: Q0E=\n"),
            "{text}"
        );
        assert!(text.contains("- name: \"a\\\"b\"\n"), "{text}");
        assert!(text.contains("    token: \"t.k-n_\"\n"), "{text}");
        assert!(
            text.contains("    user: \"a\\\"b\"\ncurrent-context: podwire\n"),
            "{text}"
        );
    }
}

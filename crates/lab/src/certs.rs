//! The lab's certificate authority: created at `lab up` in the lab's state
//! directory (`ca.crt`, `ca.key`), it signs the `kubernetes.io/tls` Secrets
//! a Lab document asks for in `spec.certificates`, the way cert-manager
//! would issue them in a cluster. Clients trust the lab with
//! `curl --cacert <state dir>/ca.crt`.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use podwire_model::k8s_openapi::ByteString;
use podwire_model::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use podwire_model::{Object, Secret};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::error::{LabError, Result};
use crate::manifest::LabCertificate;

/// The annotation that records which hosts a lab-issued Secret is for, so
/// re-applying the same Lab document leaves unchanged certificates alone.
pub const HOSTS_ANNOTATION: &str = "podwire.io/certificate-hosts";
/// The annotation that marks a Secret as issued by the lab's CA.
pub const ISSUER_ANNOTATION: &str = "podwire.io/issuer";

/// The lab's CA: its certificate (PEM) and an issuer that signs with its key.
pub struct LabCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_error(what: &str, e: rcgen::Error) -> LabError {
    LabError::Failed(format!("lab CA: {what}: {e}"))
}

/// The CA's subject; an issuer rebuilt from the key file must carry exactly
/// this name (rcgen reads no certificates back without x509-parser).
fn ca_params(lab: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "podwire");
    dn.push(DnType::CommonName, format!("podwire lab {lab} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

/// From the start of last year to ten years ahead: long enough for any lab,
/// and a calendar-year boundary keeps clock skew between namespaces (there
/// is none, but clients check) out of the picture.
fn set_validity(params: &mut CertificateParams) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Mean Gregorian year: close enough to pick the calendar year.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
}

impl LabCa {
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.crt")
    }
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("ca.key")
    }

    /// Creates a new CA for lab `lab` and writes `ca.crt` (0644) and
    /// `ca.key` (0600) into `dir`.
    pub fn create(dir: &Path, lab: &str) -> Result<LabCa> {
        let key = KeyPair::generate().map_err(|e| ca_error("cannot generate a key", e))?;
        let cert = ca_params(lab)
            .self_signed(&key)
            .map_err(|e| ca_error("cannot sign its certificate", e))?;
        let cert_pem = cert.pem();
        write_file(&Self::key_path(dir), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&Self::cert_path(dir), cert_pem.as_bytes(), 0o644)?;
        Ok(LabCa {
            cert_pem,
            issuer: Issuer::new(ca_params(lab), key),
        })
    }

    /// Loads the CA that [`LabCa::create`] wrote into `dir`.
    pub fn load(dir: &Path, lab: &str) -> Result<LabCa> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path)
                .map_err(|e| LabError::io(format!("cannot read {}", path.display()), e))
        };
        let cert_pem = read(Self::cert_path(dir))?;
        let key = KeyPair::from_pem(&read(Self::key_path(dir))?)
            .map_err(|e| ca_error("cannot read its key", e))?;
        Ok(LabCa {
            cert_pem,
            issuer: Issuer::new(ca_params(lab), key),
        })
    }

    /// A server certificate and its new key (both PEM) for `hosts`
    /// (DNS names or IP addresses).
    pub fn issue(&self, hosts: &[String]) -> Result<(String, String)> {
        let cn = hosts.first().cloned().unwrap_or_default();
        self.issue_for(&cn, None, hosts, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate: Kubernetes takes the user from the CN and the
    /// group from O (`system:node:node01` in `system:nodes`).
    pub fn client(&self, user: &str, group: Option<&str>) -> Result<(String, String)> {
        self.issue_for(user, group, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server certificate with its own common name (the API server's,
    /// a kubelet's) for these names and addresses.
    pub fn serving(&self, common_name: &str, hosts: &[String]) -> Result<(String, String)> {
        self.issue_for(
            common_name,
            None,
            hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn issue_for(
        &self,
        common_name: &str,
        organization: Option<&str>,
        hosts: &[String],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::new(hosts.to_vec())
            .map_err(|e| ca_error(&format!("cannot make a certificate for {hosts:?}"), e))?;
        let mut dn = DistinguishedName::new();
        if let Some(org) = organization {
            dn.push(DnType::OrganizationName, org);
        }
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let key = KeyPair::generate().map_err(|e| ca_error("cannot generate a key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| ca_error(&format!("cannot sign a certificate for {common_name}"), e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// The `kubernetes.io/tls` Secret for one certificate of the Lab
    /// document: `tls.crt`, `tls.key` and, as cert-manager adds, `ca.crt`.
    pub fn secret(&self, cert: &LabCertificate) -> Result<Object> {
        let (crt, key) = self.issue(&cert.hosts)?;
        let data: BTreeMap<String, ByteString> = [
            ("tls.crt", crt),
            ("tls.key", key),
            ("ca.crt", self.cert_pem.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        Ok(Object::Secret(Secret {
            metadata: ObjectMeta {
                name: Some(cert.name.clone()),
                namespace: Some(cert.namespace.clone()),
                annotations: Some(BTreeMap::from([
                    (HOSTS_ANNOTATION.to_string(), cert.hosts.join(",")),
                    (ISSUER_ANNOTATION.to_string(), "lab-ca".to_string()),
                ])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }))
    }
}

/// Whether `secret` already is the lab's certificate for exactly `cert`'s hosts.
pub fn is_current(secret: &Secret, cert: &LabCertificate) -> bool {
    let annotations = secret.metadata.annotations.as_ref();
    annotations
        .and_then(|a| a.get(ISSUER_ANNOTATION))
        .map(String::as_str)
        == Some("lab-ca")
        && annotations.and_then(|a| a.get(HOSTS_ANNOTATION)) == Some(&cert.hosts.join(","))
}

/// Writes a file with this mode (keys 0600), replacing what was there.
pub fn write_file(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    let what = || format!("cannot write {}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LabError::io(what(), e))?;
    file.write_all(body).map_err(|e| LabError::io(what(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_that_a_reloaded_ca_still_signs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LabCa::create(dir.path(), "t").unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(LabCa::key_path(dir.path()))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        let cert = LabCertificate {
            namespace: "apps".into(),
            name: "web-tls".into(),
            hosts: vec!["web.example.com".into(), "*.web.example.com".into()],
        };
        let Object::Secret(secret) = ca.secret(&cert).unwrap() else {
            panic!("not a secret")
        };
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = secret.data.clone().unwrap();
        let crt = String::from_utf8(data["tls.crt"].0.clone()).unwrap();
        let key = String::from_utf8(data["tls.key"].0.clone()).unwrap();
        assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"), "{crt}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert_eq!(data["ca.crt"].0, ca.cert_pem.as_bytes());
        assert!(is_current(&secret, &cert));
        let other = LabCertificate {
            hosts: vec!["web.example.com".into()],
            ..cert.clone()
        };
        assert!(!is_current(&secret, &other));
        // JSON as in the store: base64 data, as the API server would return.
        let json = Object::Secret(secret).to_json();
        assert!(
            json["data"]["tls.crt"]
                .as_str()
                .is_some_and(|s| s.starts_with("LS0t"))
        );

        let again = LabCa::load(dir.path(), "t").unwrap();
        assert_eq!(again.cert_pem, ca.cert_pem);
        assert!(again.issue(&["a.example.com".into()]).is_ok());
    }

    /// The certificates verify against the CA with an independent verifier
    /// (openssl), which also shows the issuer rebuilt by `load` signs with
    /// the same name and key identifier as the CA certificate.
    #[test]
    fn openssl_verifies_the_chain() {
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            eprintln!("openssl not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        LabCa::create(dir.path(), "t").unwrap();
        let ca = LabCa::load(dir.path(), "t").unwrap();
        let (crt, _) = ca.issue(&["web.example.com".into()]).unwrap();
        let leaf = dir.path().join("leaf.crt");
        std::fs::write(&leaf, crt).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(LabCa::cert_path(dir.path()))
            .args([
                "-verify_hostname",
                "web.example.com",
                "-purpose",
                "sslserver",
            ])
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

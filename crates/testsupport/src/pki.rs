//! A certificate and its key as tests get them from the control plane's CA
//! (the CA, the certificates and the kubeconfigs themselves are the lab's
//! `controlplane` layout, shared with `podwire lab`).

/// A certificate and its private key, both PEM (the key as PKCS#8).
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    pub key_pem: String,
}

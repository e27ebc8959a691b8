//! The benchmark's own client: a CA and leaf certificate for the routed
//! hosts, and one plain or TLS connection sending GETs and reading
//! Content-Length responses (route checks and the idle-connection test).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::HOSTS;

pub struct Certs {
    pub ca_der: Vec<u8>,
    pub leaf_pem: String,
    pub key_pem: String,
}

/// A CA and a leaf for the three hosts (ECDSA P-256), as a cluster's
/// cert-manager would issue them.
pub fn make_certs() -> Result<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "podwire bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOSTS[0]);
    let leaf = leaf_params.signed_by(&leaf_key, &*ca)?;
    Ok(Certs {
        ca_der: ca.der().to_vec(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

pub fn tls_client(certs: &Certs) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(certs.ca_der.clone()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------- clients

/// A client connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    pub fn open(port: u16, tls: Option<(&Arc<rustls::ClientConfig>, &str)>) -> Result<Conn> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("connect to 127.0.0.1:{port}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(match tls {
            None => Conn::Plain(tcp),
            Some((config, host)) => {
                let name = rustls_pki_types::ServerName::try_from(host.to_string())?;
                let conn = rustls::ClientConnection::new(config.clone(), name)?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        })
    }

    /// TLS version and cipher suite, once the handshake is done.
    pub fn negotiated(&self) -> Option<String> {
        let Conn::Tls(s) = self else { return None };
        let version = s.conn.protocol_version()?;
        let suite = s.conn.negotiated_cipher_suite()?;
        let group = s
            .conn
            .negotiated_key_exchange_group()
            .map(|g| format!(", {:?}", g.name()))
            .unwrap_or_default();
        Some(format!("{version:?}, {:?}{group}", suite.suite()))
    }

    /// One GET; returns the status and the body.
    pub fn get(&mut self, host: &str, path: &str) -> Result<(u16, String)> {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podwire-bench\r\n\r\n");
        match self {
            Conn::Plain(s) => {
                s.write_all(request.as_bytes())?;
                read_response(s)
            }
            Conn::Tls(s) => {
                s.write_all(request.as_bytes())?;
                s.flush()?;
                read_response(s.as_mut())
            }
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body.
pub fn read_response(s: &mut impl Read) -> Result<(u16, String)> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 64 * 1024, "response head over 64 KiB");
        let n = s.read(&mut chunk).context("read response")?;
        ensure!(n > 0, "connection closed before a full response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .with_context(|| format!("no Content-Length in {head:?}"))?;
    let want = head_end + 4 + length;
    while buf.len() < want {
        let n = s.read(&mut chunk).context("read response body")?;
        ensure!(n > 0, "connection closed in the response body");
        buf.extend_from_slice(&chunk[..n]);
    }
    ensure!(buf.len() == want, "bytes after the response");
    Ok((
        status,
        String::from_utf8_lossy(&buf[head_end + 4..]).into_owned(),
    ))
}

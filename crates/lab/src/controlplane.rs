//! A real Kubernetes control plane as kubeadm lays one out: certificates
//! and keys under `pki/`, kubeconfigs for the admin, the controller
//! manager, the scheduler and each node's kubelet, and the flags of etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler. Pure apart
//! from writing those files; who starts the processes where is the
//! caller's business (the lab in its `controlplane` node, the test harness
//! in a namespace of its own).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::IpNet;

use crate::certs::{LabCa, write_file};
use crate::error::{LabError, Result};

/// The API server's secure port.
pub const API_PORT: u16 = 6443;
/// Who signs and whom ServiceAccount tokens are for (kubeadm's value).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The programs of a control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
    ];

    /// The program's file name.
    pub fn program(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
        }
    }

    /// The port its health endpoint answers on (https for all but etcd).
    pub fn health_port(self) -> u16 {
        match self {
            Component::Etcd => 2379,
            Component::ApiServer => API_PORT,
            Component::ControllerManager => 10257,
            Component::Scheduler => 10259,
        }
    }
}

/// Everything the flags and certificates depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneConfig {
    /// Where pki/, kubeconfigs/ and etcd/ live.
    pub dir: PathBuf,
    /// The API server's (and etcd's) address: the control-plane node's.
    pub api_ip: IpAddr,
    pub service_cidr: IpNet,
    pub cluster_cidr: IpNet,
    pub node_cidr_mask: u8,
    pub cluster_domain: String,
    /// The node lifecycle controller (NotReady, taints, evictions): on
    /// when kubelets send heartbeats.
    pub node_lifecycle: bool,
    /// etcd also listens on the API address (kubeadm's layout: 2379/2380 on
    /// the node's address), not only on loopback.
    pub etcd_on_node_address: bool,
    /// Flags appended to the API server's.
    pub extra_apiserver_args: Vec<String>,
}

/// Who a kubeconfig speaks as.
pub enum Credentials<'a> {
    /// A client certificate and key (PEM).
    Cert {
        cert_pem: &'a str,
        key_pem: &'a str,
    },
    Token(&'a str),
}

/// A kubeconfig with everything embedded (one cluster, user, context).
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, creds: Credentials<'_>) -> String {
    let user_fields = match creds {
        Credentials::Cert { cert_pem, key_pem } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            BASE64.encode(cert_pem),
            BASE64.encode(key_pem)
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
    serde_json::Value::String(s.to_string()).to_string()
}

/// The first address of a range (the `kubernetes` Service's).
pub fn first_address(net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(n.network()) + 1)),
        IpNet::V6(n) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(n.network()) + 1)),
    }
}

impl ControlPlaneConfig {
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    fn pki_file(&self, name: &str) -> String {
        self.pki().join(name).display().to_string()
    }

    pub fn kubeconfig_path(&self, name: &str) -> PathBuf {
        self.dir.join("kubeconfigs").join(format!("{name}.conf"))
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig_path("admin")
    }

    pub fn api_url(&self) -> String {
        match self.api_ip {
            IpAddr::V6(ip) => format!("https://[{ip}]:{API_PORT}"),
            ip => format!("https://{ip}:{API_PORT}"),
        }
    }

    fn write(&self, path: &Path, text: &str, mode: u32) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LabError::io(format!("cannot create {}", dir.display()), e))?;
        }
        write_file(path, text.as_bytes(), mode)
    }

    fn write_pair(&self, name: &str, (cert, key): (String, String)) -> Result<()> {
        self.write(&self.pki().join(format!("{name}.crt")), &cert, 0o644)?;
        self.write(&self.pki().join(format!("{name}.key")), &key, 0o600)
    }

    /// A kubeconfig named `name` for `user` (in `group`) with a client
    /// certificate from `ca`.
    pub fn write_kubeconfig(
        &self,
        ca: &LabCa,
        name: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<PathBuf> {
        let (cert_pem, key_pem) = ca.client(user, group)?;
        let text = kubeconfig(
            &self.api_url(),
            &ca.cert_pem,
            user,
            Credentials::Cert {
                cert_pem: &cert_pem,
                key_pem: &key_pem,
            },
        );
        let path = self.kubeconfig_path(name);
        self.write(&path, &text, 0o600)?;
        Ok(path)
    }

    /// A kubeconfig speaking with a bearer token.
    pub fn write_token_kubeconfig(&self, ca: &LabCa, name: &str, token: &str) -> Result<PathBuf> {
        let text = kubeconfig(
            &self.api_url(),
            &ca.cert_pem,
            name,
            Credentials::Token(token),
        );
        let path = self.kubeconfig_path(name);
        self.write(&path, &text, 0o600)?;
        Ok(path)
    }

    /// Every certificate, key and kubeconfig the control plane needs,
    /// signed by `ca` (also the cluster's CA: `pki/ca.crt`).
    pub fn write_pki(&self, ca: &LabCa, ca_key_pem: &str) -> Result<()> {
        self.write(&self.pki().join("ca.crt"), &ca.cert_pem, 0o644)?;
        self.write(&self.pki().join("ca.key"), ca_key_pem, 0o600)?;
        // ServiceAccount tokens are signed with their own key (ECDSA P-256,
        // which kube-apiserver and the controller manager both read).
        let sa = rcgen::KeyPair::generate()
            .map_err(|e| LabError::Failed(format!("cannot make the service-account key: {e}")))?;
        self.write(&self.pki().join("sa.key"), &sa.serialize_pem(), 0o600)?;
        self.write(&self.pki().join("sa.pub"), &sa.public_key_pem(), 0o644)?;
        let mut hosts: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        hosts.push(format!("kubernetes.default.svc.{}", self.cluster_domain));
        hosts.push(self.api_ip.to_string());
        hosts.push("127.0.0.1".into());
        hosts.push(first_address(self.service_cidr).to_string());
        self.write_pair("apiserver", ca.serving("kube-apiserver", &hosts)?)?;
        self.write_pair(
            "apiserver-kubelet-client",
            ca.client("kube-apiserver-kubelet-client", Some("system:masters"))?,
        )?;
        // As kubeadm: the API server's authentication ConfigMap then holds
        // a request-header CA, which the controller manager and scheduler
        // read (without it they log an error every second). A second CA,
        // as kubeadm has one: the API server trusts it only for that.
        let front_dir = self.pki().join("front-proxy");
        std::fs::create_dir_all(&front_dir)
            .map_err(|e| LabError::io(format!("cannot create {}", front_dir.display()), e))?;
        let front = LabCa::create(&front_dir, "front-proxy")?;
        self.write(
            &self.pki().join("front-proxy-ca.crt"),
            &front.cert_pem,
            0o644,
        )?;
        self.write_pair(
            "front-proxy-client",
            front.client("front-proxy-client", None)?,
        )?;
        for (name, user, group) in [
            ("admin", "kubernetes-admin", Some("system:masters")),
            ("controller-manager", "system:kube-controller-manager", None),
            ("scheduler", "system:kube-scheduler", None),
        ] {
            self.write_kubeconfig(ca, name, user, group)?;
        }
        Ok(())
    }

    /// A node's kubelet credentials (`system:node:<node>` in
    /// `system:nodes`, what the Node authorizer knows) and its serving
    /// certificate for `ip`: (kubeconfig, serving cert, serving key).
    pub fn write_kubelet(
        &self,
        ca: &LabCa,
        node: &str,
        ip: IpAddr,
    ) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let kubeconfig = self.write_kubeconfig(
            ca,
            &format!("kubelet-{node}"),
            &format!("system:node:{node}"),
            Some("system:nodes"),
        )?;
        let name = format!("kubelet-{node}-serving");
        self.write_pair(
            &name,
            ca.serving(node, &[node.to_string(), ip.to_string()])?,
        )?;
        Ok((
            kubeconfig,
            self.pki().join(format!("{name}.crt")),
            self.pki().join(format!("{name}.key")),
        ))
    }

    /// The flags of one component.
    pub fn args(&self, component: Component) -> Vec<String> {
        match component {
            Component::Etcd => self.etcd_args(),
            Component::ApiServer => self.apiserver_args(),
            Component::ControllerManager => self.controller_manager_args(),
            Component::Scheduler => self.scheduler_args(),
        }
    }

    fn etcd_args(&self) -> Vec<String> {
        let (client, peer) = if self.etcd_on_node_address {
            (
                format!("http://127.0.0.1:2379,http://{}:2379", self.api_ip),
                format!("http://{}:2380", self.api_ip),
            )
        } else {
            (
                "http://127.0.0.1:2379".to_string(),
                "http://127.0.0.1:2380".to_string(),
            )
        };
        vec![
            "--name=default".to_string(),
            format!("--data-dir={}", self.dir.join("etcd").display()),
            format!("--listen-client-urls={client}"),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            // A throwaway cluster: fsync would only slow every write.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ]
    }

    fn apiserver_args(&self) -> Vec<String> {
        let p = |f: &str| self.pki_file(f);
        let mut args = vec![
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            format!("--secure-port={API_PORT}"),
            "--bind-address=0.0.0.0".into(),
            format!("--advertise-address={}", self.api_ip),
            format!("--service-cluster-ip-range={}", self.service_cidr),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--authorization-mode=Node,RBAC".into(),
            // As kubeadm: a kubelet may only write its own Node and Pods.
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
            // Nodes are reached at their underlay address; their hostnames
            // resolve nowhere.
            "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
            // Its own self-signed fallbacks would go to /var/run/kubernetes.
            format!("--cert-dir={}", p("apiserver-generated")),
            // Fewer controllers and endpoints to start: a faster /readyz.
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
        ];
        args.extend(self.extra_apiserver_args.iter().cloned());
        args
    }

    fn controller_manager_args(&self) -> Vec<String> {
        let p = |f: &str| self.pki_file(f);
        let kubeconfig = self
            .kubeconfig_path("controller-manager")
            .display()
            .to_string();
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--use-service-account-credentials=true".into(),
            // Node.spec.podCIDRs, as kubeadm has it (a kubelet that
            // registers with a slice keeps it).
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={}", self.cluster_cidr),
            format!("--node-cidr-mask-size={}", self.node_cidr_mask),
            format!("--service-cluster-ip-range={}", self.service_cidr),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            if self.node_lifecycle {
                "--controllers=*".to_string()
            } else {
                // Nodes that send no heartbeats would be tainted
                // unreachable and their pods evicted.
                "--controllers=*,-node-lifecycle-controller".to_string()
            },
            "--profiling=false".into(),
            // With its client-side default (20 requests/s) the
            // ServiceAccount and token requests of
            // --use-service-account-credentials take five seconds before
            // the controllers run (measured: 9 s -> 4 s to ready).
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=1000".into(),
        ]
    }

    fn scheduler_args(&self) -> Vec<String> {
        let kubeconfig = self.kubeconfig_path("scheduler").display().to_string();
        vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            // Pods come in bursts (a lab's manifest); the default 50/s paces them.
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=1000".into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> ControlPlaneConfig {
        ControlPlaneConfig {
            dir: dir.to_path_buf(),
            api_ip: "192.168.56.10".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            node_cidr_mask: 24,
            cluster_domain: "cluster.local".into(),
            node_lifecycle: true,
            etcd_on_node_address: true,
            extra_apiserver_args: vec!["--v=1".into()],
        }
    }

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
    }

    #[test]
    fn flags_follow_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let api = c.args(Component::ApiServer);
        assert!(api.contains(&"--advertise-address=192.168.56.10".to_string()));
        assert!(api.contains(&"--service-cluster-ip-range=10.96.0.0/12".to_string()));
        assert_eq!(api.last().map(String::as_str), Some("--v=1"));
        let cm = c.args(Component::ControllerManager);
        assert!(cm.contains(&"--controllers=*".to_string()));
        assert!(cm.contains(&"--cluster-cidr=10.244.0.0/16".to_string()));
        let etcd = c.args(Component::Etcd);
        assert!(
            etcd.iter().any(
                |a| a == "--listen-client-urls=http://127.0.0.1:2379,http://192.168.56.10:2379"
            )
        );
        assert_eq!(first_address(c.service_cidr).to_string(), "10.96.0.1");
        assert_eq!(c.api_url(), "https://192.168.56.10:6443");
    }

    #[test]
    fn pki_and_kubeconfigs_are_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let ca = LabCa::create(dir.path(), "t").unwrap();
        let key = std::fs::read_to_string(LabCa::key_path(dir.path())).unwrap();
        c.write_pki(&ca, &key).unwrap();
        for f in [
            "ca.crt",
            "apiserver.crt",
            "apiserver.key",
            "sa.key",
            "sa.pub",
            "front-proxy-ca.crt",
        ] {
            assert!(c.pki().join(f).is_file(), "{f}");
        }
        let admin = std::fs::read_to_string(c.admin_kubeconfig()).unwrap();
        assert!(
            admin.contains("server: https://192.168.56.10:6443"),
            "{admin}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(c.pki().join("apiserver.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let (kc, crt, _) = c
            .write_kubelet(&ca, "node01", "192.168.56.11".parse().unwrap())
            .unwrap();
        assert!(kc.is_file() && crt.is_file());
    }
}

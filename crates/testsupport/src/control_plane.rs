//! A real, throwaway Kubernetes control plane for tests: etcd and
//! kube-apiserver (and optionally kube-controller-manager and
//! kube-scheduler), the real programs, running inside a network namespace
//! of their own. That namespace holds a bridge, the "underlay switch", with
//! the API server's address on it; tests plug their node namespaces into it
//! with [`ControlPlane::attach`]. Nothing runs in, or sends traffic through,
//! the host's own namespace, and everything (processes, namespace, files)
//! is gone when the value drops, even when the test panics.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use podwire_lab::certs::LabCa;
use podwire_lab::controlplane::{ControlPlaneConfig, first_address};

use crate::k8s::k8s_bin_dir;
use crate::netns::Netns;
use crate::pki::CertPair;
use crate::poll::poll_every;
use crate::process::{Process, run_with_timeout, tail};
use crate::tempdir::TempDir;

pub use podwire_lab::controlplane::{API_PORT, SERVICE_ACCOUNT_ISSUER};

/// The name of the underlay bridge inside the control plane's namespace.
pub const UNDERLAY_BRIDGE: &str = "pwsw0";

/// How long one kubectl run may take before it is killed.
const KUBECTL_LIMIT: Duration = Duration::from_secs(60);

/// How long SIGTERM gets before SIGKILL when a component is stopped.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often readiness is checked while starting.
const READY_POLL: Duration = Duration::from_millis(100);

/// The programs of a control plane, for [`ControlPlane::log_tail`] and
/// [`ControlPlane::log_path`].
pub use podwire_lab::controlplane::Component;

/// Settings of a [`ControlPlane`], builder style; [`ControlPlaneBuilder::start`]
/// brings it up.
#[derive(Clone, Debug)]
pub struct ControlPlaneBuilder {
    controller_manager: bool,
    scheduler: bool,
    service_cidr: String,
    cluster_cidr: String,
    node_cidr_mask: u8,
    underlay: Option<Ipv4Addr>,
    ready_timeout: Duration,
    apiserver_args: Vec<String>,
    node_lifecycle: bool,
}

impl Default for ControlPlaneBuilder {
    fn default() -> Self {
        ControlPlaneBuilder {
            controller_manager: false,
            scheduler: false,
            service_cidr: "10.96.0.0/12".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask: 24,
            underlay: None,
            ready_timeout: Duration::from_secs(60),
            apiserver_args: Vec::new(),
            node_lifecycle: false,
        }
    }
}

impl ControlPlaneBuilder {
    /// Also run kube-controller-manager (default off): Node podCIDRs,
    /// ServiceAccounts and their tokens, EndpointSlices, Deployments, ...
    /// Everything but the node lifecycle controller, since test nodes send
    /// no heartbeats.
    pub fn with_controller_manager(mut self, on: bool) -> Self {
        self.controller_manager = on;
        self
    }

    /// Also run kube-scheduler (default off).
    pub fn with_scheduler(mut self, on: bool) -> Self {
        self.scheduler = on;
        self
    }

    /// The Service IP range (default 10.96.0.0/12).
    pub fn service_cidr(mut self, cidr: &str) -> Self {
        self.service_cidr = cidr.into();
        self
    }

    /// The pod range nodes get their podCIDRs from (default 10.244.0.0/16).
    pub fn cluster_cidr(mut self, cidr: &str) -> Self {
        self.cluster_cidr = cidr.into();
        self
    }

    /// The size of each node's podCIDR (default 24).
    pub fn node_cidr_mask(mut self, bits: u8) -> Self {
        self.node_cidr_mask = bits;
        self
    }

    /// The underlay subnet, as the network address of a /24; the API server
    /// is its `.2`. Default: a 10.200-239.x.0/24 derived from the process
    /// id and a counter, so parallel tests get different ones.
    pub fn underlay(mut self, network: Ipv4Addr) -> Self {
        self.underlay = Some(network);
        self
    }

    /// How long each component may take to become ready (default 60 s).
    pub fn ready_timeout(mut self, limit: Duration) -> Self {
        self.ready_timeout = limit;
        self
    }

    /// Run the controller manager's node lifecycle controller (default
    /// off): for tests whose nodes have a kubelet sending heartbeats, so
    /// Ready nodes lose the API's not-ready taint as on a real cluster.
    pub fn with_node_lifecycle(mut self, on: bool) -> Self {
        self.node_lifecycle = on;
        self
    }

    /// One more kube-apiserver flag (`--name=value`), e.g. a feature gate.
    pub fn apiserver_arg(mut self, flag: &str) -> Self {
        self.apiserver_args.push(flag.into());
        self
    }

    /// Creates the namespace, certificates and kubeconfigs, starts the
    /// components and waits until each is ready. Panics with the failing
    /// component's log when one does not come up.
    pub fn start(self) -> ControlPlane {
        ControlPlane::launch(self)
    }
}

/// A running control plane; see the module documentation. Built with
/// [`ControlPlane::builder`] or [`ControlPlane::start`].
pub struct ControlPlane {
    settings: ControlPlaneBuilder,
    api_ip: Ipv4Addr,
    underlay: Ipv4Addr,
    bin: PathBuf,
    ca: LabCa,
    ca_key_pem: String,
    /// The layout the lab uses too: certificates, kubeconfigs, flags.
    layout: ControlPlaneConfig,
    service_account_key: String,
    etcd: Option<Process>,
    apiserver: Option<Process>,
    controller_manager: Option<Process>,
    scheduler: Option<Process>,
    startup_time: Duration,
    admin_kubeconfig: PathBuf,
    ports: AtomicUsize,
    // Declared last so they drop after the processes: the namespace goes,
    // then the files.
    ns: Netns,
    dir: TempDir,
}

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

impl ControlPlane {
    /// The default settings: etcd and kube-apiserver only.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// etcd and kube-apiserver with the default settings, ready.
    pub fn start() -> ControlPlane {
        ControlPlane::builder().start()
    }

    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler
    /// with the default settings, ready.
    pub fn start_full() -> ControlPlane {
        ControlPlane::builder()
            .with_controller_manager(true)
            .with_scheduler(true)
            .start()
    }

    fn launch(settings: ControlPlaneBuilder) -> ControlPlane {
        let started = Instant::now();
        let bin = k8s_bin_dir();
        let instance = INSTANCES.fetch_add(1, Ordering::SeqCst);
        let underlay = settings
            .underlay
            .unwrap_or_else(|| default_underlay(std::process::id(), instance));
        let [a, b, c, _] = underlay.octets();
        let api_ip = Ipv4Addr::new(a, b, c, 2);
        sweep_stale_dirs_once();
        let dir = TempDir::new(&format!("{TEMP_TAG}{}", std::process::id()));
        let ns = Netns::with_prefix("pwcp", "cp");
        ns.exec_ok(&["ip", "link", "add", UNDERLAY_BRIDGE, "type", "bridge"]);
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{api_ip}/24"),
            "dev",
            UNDERLAY_BRIDGE,
        ]);
        ns.exec_ok(&["ip", "link", "set", UNDERLAY_BRIDGE, "up"]);
        for sub in ["pki", "logs", "kubeconfigs", "kubectl-cache"] {
            std::fs::create_dir_all(dir.join(sub))
                .unwrap_or_else(|e| panic!("cannot create {sub} in the control plane dir: {e}"));
        }
        let ca = LabCa::create(&dir.join("pki"), "podwire-test")
            .unwrap_or_else(|e| panic!("cannot make the test CA: {e}"));
        let ca_key_pem = std::fs::read_to_string(LabCa::key_path(&dir.join("pki")))
            .unwrap_or_else(|e| panic!("cannot read the test CA key: {e}"));
        let parse = |cidr: &str| {
            cidr.parse()
                .unwrap_or_else(|e| panic!("{cidr:?} is not a CIDR: {e}"))
        };
        let layout = ControlPlaneConfig {
            dir: dir.path().to_path_buf(),
            api_ip: IpAddr::V4(api_ip),
            service_cidr: parse(&settings.service_cidr),
            cluster_cidr: parse(&settings.cluster_cidr),
            node_cidr_mask: settings.node_cidr_mask,
            cluster_domain: "cluster.local".into(),
            // Test nodes send no heartbeats: the lifecycle controller would
            // taint them unreachable and evict their pods.
            node_lifecycle: settings.node_lifecycle,
            etcd_on_node_address: false,
            extra_apiserver_args: settings.apiserver_args.clone(),
        };
        layout
            .write_pki(&ca, &ca_key_pem)
            .unwrap_or_else(|e| panic!("cannot write the control plane's certificates: {e}"));
        let service_account_key = std::fs::read_to_string(layout.pki().join("sa.key"))
            .unwrap_or_else(|e| panic!("cannot read the service-account key: {e}"));
        let mut cp = ControlPlane {
            settings,
            api_ip,
            underlay,
            bin,
            ca,
            ca_key_pem,
            layout,
            service_account_key,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            scheduler: None,
            startup_time: Duration::ZERO,
            admin_kubeconfig: dir.join("kubeconfigs/admin.conf"),
            ports: AtomicUsize::new(0),
            ns,
            dir,
        };
        cp.start_etcd();
        // etcd needs no wait: the API server retries it. The other
        // components do: before RBAC's bootstrap policy exists they are
        // forbidden to read their own configuration, and exit.
        cp.start_apiserver();
        if cp.settings.controller_manager {
            cp.controller_manager =
                Some(cp.spawn(Component::ControllerManager, &cp.controller_manager_args()));
        }
        if cp.settings.scheduler {
            cp.scheduler = Some(cp.spawn(Component::Scheduler, &cp.scheduler_args()));
        }
        // Both start together; waiting for one lets the other get ready.
        if cp.settings.controller_manager {
            cp.wait_controller_manager();
        }
        if cp.settings.scheduler {
            cp.wait_healthz(Component::Scheduler, 10259);
        }
        cp.startup_time = started.elapsed();
        cp
    }

    // --- addresses and files -------------------------------------------

    /// The API server's address on the underlay (`.2` of the subnet).
    pub fn api_ip(&self) -> Ipv4Addr {
        self.api_ip
    }

    /// `https://<api_ip>:6443`.
    pub fn api_url(&self) -> String {
        format!("https://{}:{API_PORT}", self.api_ip)
    }

    /// The underlay subnet's network address (a /24).
    pub fn underlay_network(&self) -> Ipv4Addr {
        self.underlay
    }

    /// Host `host` of the underlay subnet, e.g. `underlay_ip(10)` for a
    /// node's address (`.2` is the API server's).
    pub fn underlay_ip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.underlay.octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The Service range the API server allocates from.
    pub fn service_cidr(&self) -> &str {
        &self.settings.service_cidr
    }

    /// The range the controller manager gives node podCIDRs from.
    pub fn cluster_cidr(&self) -> &str {
        &self.settings.cluster_cidr
    }

    /// The first address of the Service range (the `kubernetes` Service).
    pub fn first_service_ip(&self) -> IpAddr {
        first_address(self.layout.service_cidr)
    }

    /// The control plane's namespace (etcd and the components run here).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The control plane's temp dir (pki/, logs/, kubeconfigs/, etcd/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig (CN kubernetes-admin, group system:masters),
    /// pointing at [`ControlPlane::api_url`]: usable from the control
    /// plane's namespace and from every attached one.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The CA certificate, PEM: clients verify the API server with it and
    /// the API server accepts client certificates it signed.
    pub fn ca_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The CA's private key, PEM (to sign more certificates, e.g. a
    /// kubelet's serving certificate).
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    /// The CA certificate's file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The service-account signing key (PKCS#8 PEM, ECDSA P-256, ES256
    /// tokens), so a test can forge a token, e.g. an expired one.
    pub fn service_account_key_pem(&self) -> &str {
        &self.service_account_key
    }

    /// A new client certificate signed by the CA (user = CN, group = O).
    pub fn client_cert(&self, user: &str, group: Option<&str>) -> CertPair {
        let (cert_pem, key_pem) = self
            .ca
            .client(user, group)
            .unwrap_or_else(|e| panic!("cannot issue a client certificate: {e}"));
        CertPair { cert_pem, key_pem }
    }

    /// A kubeconfig for the API server speaking as `user` (in `group`) with
    /// a client certificate; written as `kubeconfigs/<name>.conf`.
    pub fn kubeconfig_for_user(&self, user: &str, group: Option<&str>, name: &str) -> PathBuf {
        self.layout
            .write_kubeconfig(&self.ca, name, user, group)
            .unwrap_or_else(|e| panic!("cannot write kubeconfig {name}: {e}"))
    }

    /// A kubelet's credentials for node `node` at `ip`, as kubeadm lays
    /// them out: a kubeconfig speaking as `system:node:<node>` (group
    /// `system:nodes`) and a serving certificate for `ip`, signed by the CA
    /// (which is also the CA of the API server's kubelet client
    /// certificate, [`ControlPlane::ca_path`]): (kubeconfig, cert, key).
    pub fn kubelet_credentials(&self, node: &str, ip: IpAddr) -> (PathBuf, PathBuf, PathBuf) {
        self.layout
            .write_kubelet(&self.ca, node, ip)
            .unwrap_or_else(|e| panic!("cannot write the kubelet credentials of {node}: {e}"))
    }

    /// A kubeconfig with this bearer token (and the CA), written as
    /// `kubeconfigs/<name>.conf`.
    pub fn kubeconfig_for_token(&self, token: &str, name: &str) -> PathBuf {
        self.layout
            .write_token_kubeconfig(&self.ca, name, token)
            .unwrap_or_else(|e| panic!("cannot write kubeconfig {name}: {e}"))
    }

    /// How long bringing the control plane up took (namespace,
    /// certificates, every component ready).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Process ids of the running components (etcd, API server, controller
    /// manager, scheduler; those that run).
    pub fn pids(&self) -> Vec<u32> {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .into_iter()
        .flatten()
        .map(Process::pid)
        .collect()
    }

    /// A component's log file (stdout and stderr; restarts append).
    pub fn log_path(&self, component: Component) -> PathBuf {
        self.dir.join(format!("logs/{}.log", component.program()))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: Component, lines: usize) -> String {
        tail(&self.log_path(component), lines)
    }

    // --- the underlay ----------------------------------------------------

    /// Plugs `other` into the underlay bridge: a veth whose end in `other`
    /// is named `ifname`, carries `address` ("a.b.c.d/24", normally in the
    /// underlay subnet, see [`ControlPlane::underlay_ip`]) and is up.
    /// Attached namespaces reach the API server and each other.
    pub fn attach(&self, other: &Netns, ifname: &str, address: &str) {
        let port = format!("pwport{}", self.ports.fetch_add(1, Ordering::SeqCst));
        self.ns.exec_ok(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "netns",
            other.name(),
        ]);
        self.ns
            .exec_ok(&["ip", "link", "set", &port, "master", UNDERLAY_BRIDGE, "up"]);
        other.exec_ok(&["ip", "addr", "add", address, "dev", ifname]);
        other.exec_ok(&["ip", "link", "set", ifname, "up"]);
    }

    // --- kubectl -----------------------------------------------------------

    /// The real kubectl, run inside the control plane's namespace with the
    /// admin kubeconfig (killed after 60 s).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.ns, self.admin_kubeconfig(), args, None)
    }

    /// [`ControlPlane::kubectl`] that must succeed: its stdout, or a panic
    /// with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        expect_success(&out, args)
    }

    /// kubectl with `stdin` as its input (admin, control plane namespace).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.ns, self.admin_kubeconfig(), args, Some(stdin))
    }

    /// kubectl inside another namespace (e.g. an attached node) with
    /// another kubeconfig (e.g. from [`ControlPlane::kubeconfig_for_token`]).
    pub fn kubectl_in(&self, netns: &Netns, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_with(netns, kubeconfig, args, None)
    }

    /// `kubectl apply -f -` of `yaml` as admin; its stdout, or a panic.
    pub fn apply(&self, yaml: &str) -> String {
        let args = ["apply", "-f", "-"];
        let out = self.kubectl_stdin(&args, yaml);
        expect_success(&out, &args)
    }

    /// A token of ServiceAccount `namespace/service_account`
    /// (`kubectl create token`, one hour).
    pub fn create_token(&self, namespace: &str, service_account: &str) -> String {
        self.kubectl_ok(&["create", "token", service_account, "-n", namespace])
            .trim()
            .to_string()
    }

    fn kubectl_with(
        &self,
        netns: &Netns,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Output {
        let mut cmd = netns.command(self.bin.join("kubectl"));
        // A cache of our own: the machine's ~/.kube/cache is keyed by
        // address, and addresses repeat across test runs.
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .args(args);
        run_with_timeout(cmd, stdin.map(str::as_bytes), KUBECTL_LIMIT)
    }

    // --- lifecycle -----------------------------------------------------------

    /// Stops the API server (SIGTERM, then SIGKILL); etcd keeps running.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(STOP_GRACE);
        }
    }

    /// Starts the API server with the flags it had and waits until
    /// /readyz answers ok. Does nothing when it runs.
    pub fn start_apiserver(&mut self) {
        if self.apiserver.as_mut().is_some_and(Process::is_running) {
            return;
        }
        self.apiserver = Some(self.spawn(Component::ApiServer, &self.apiserver_args()));
        self.wait_apiserver();
    }

    /// Stops and starts the API server (etcd and its data stay), ready.
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    fn start_etcd(&mut self) {
        self.etcd = Some(self.spawn(Component::Etcd, &self.layout.args(Component::Etcd)));
    }

    fn apiserver_args(&self) -> Vec<String> {
        self.layout.args(Component::ApiServer)
    }

    fn controller_manager_args(&self) -> Vec<String> {
        self.layout.args(Component::ControllerManager)
    }

    fn scheduler_args(&self) -> Vec<String> {
        self.layout.args(Component::Scheduler)
    }

    /// `ip netns exec <ns> <program> args`, output appended to its log.
    fn spawn(&self, component: Component, args: &[String]) -> Process {
        let log_path = self.log_path(component);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_path.display()));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup {}: {e}", log_path.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(self.bin.join(component.program()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        Process::spawn(component.program(), cmd)
    }

    fn process_mut(&mut self, component: Component) -> Option<&mut Process> {
        match component {
            Component::Etcd => self.etcd.as_mut(),
            Component::ApiServer => self.apiserver.as_mut(),
            Component::ControllerManager => self.controller_manager.as_mut(),
            Component::Scheduler => self.scheduler.as_mut(),
        }
    }

    /// Polls `check` until it holds; panics with the component's log when
    /// it exits or the time runs out.
    fn wait_ready(
        &mut self,
        component: Component,
        what: &str,
        mut check: impl FnMut(&Self) -> bool,
    ) {
        let limit = self.settings.ready_timeout;
        let mut exited = None;
        let ready = poll_every(limit, READY_POLL, || {
            // Everything waits on etcd: if it died, say so, not "timeout".
            for c in [Component::Etcd, component] {
                if let Some(p) = self.process_mut(c)
                    && !p.is_running()
                {
                    exited = Some((c, p.exit_status()));
                    return Some(false);
                }
            }
            check(self).then_some(true)
        });
        if ready == Some(true) {
            return;
        }
        let (why, culprit) = match exited {
            Some((c, Some(status))) => (format!("{} exited ({status})", c.program()), c),
            Some((c, None)) => (format!("{} exited", c.program()), c),
            None => (format!("not within {limit:?}"), component),
        };
        let mut logs = format!(
            "--- {} log (last 40 lines) ---\n{}",
            culprit.program(),
            self.log_tail(culprit, 40)
        );
        if culprit != Component::Etcd {
            logs.push_str(&format!(
                "\n--- etcd log (last 10 lines) ---\n{}",
                self.log_tail(Component::Etcd, 10)
            ));
        }
        panic!(
            "control plane: {what}: {why} (binaries from {}; all logs in {})\n{logs}",
            self.bin.display(),
            self.dir.join("logs").display()
        );
    }

    fn wait_apiserver(&mut self) {
        self.wait_ready(Component::ApiServer, "kube-apiserver /readyz", |cp| {
            let out = cp.kubectl(&["get", "--raw", "/readyz"]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok"
        });
    }

    fn wait_healthz(&mut self, component: Component, port: u16) {
        let url = format!("https://127.0.0.1:{port}/healthz");
        self.wait_ready(component, &format!("{} {url}", component.program()), |cp| {
            // Its serving certificate is self-signed; only "is it up" matters.
            let out = cp.ns.exec(&["curl", "-sk", "--max-time", "2", &url]);
            out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok"
        });
    }

    fn wait_controller_manager(&mut self) {
        self.wait_healthz(Component::ControllerManager, 10257);
        // Healthy is not working: the ServiceAccount controller has made the
        // default namespace's account once it has synced.
        self.wait_ready(
            Component::ControllerManager,
            "ServiceAccount default/default (made by the controller manager)",
            |cp| {
                cp.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                    .status
                    .success()
            },
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The API server's shutdown talks to etcd (it removes its lease
        // endpoint): with etcd gone first it hangs until SIGKILL. So the
        // components go first, together (one grace period, not three), then
        // etcd; the namespace and the temp dir (etcd's data) go after, in
        // field order.
        let mut components: Vec<Process> = [
            self.scheduler.take(),
            self.controller_manager.take(),
            self.apiserver.take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for p in &mut components {
            if p.is_running() {
                crate::process::signal(p.pid(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in &mut components {
            p.stop(deadline.saturating_duration_since(Instant::now()));
        }
        if let Some(mut etcd) = self.etcd.take() {
            etcd.stop(STOP_GRACE);
        }
    }
}

/// Control-plane temp dirs are `podwire-cp<pid>-XXXXXX`.
const TEMP_TAG: &str = "cp";

/// Removes the temp dirs (etcd data, 64 MB of preallocated WAL each) of
/// test processes that were killed before their control planes dropped.
/// Their programs died with them (PR_SET_PDEATHSIG) and their namespaces
/// are swept by [`Netns`]. Once per test process.
fn sweep_stale_dirs_once() {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        let prefix = format!("podwire-{TEMP_TAG}");
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

fn expect_success(out: &Output, args: &[&str]) -> String {
    assert!(
        out.status.success(),
        "kubectl {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// 10.Y.Z.0 with Y in 200..=239: 10240 subnets, none overlapping the
/// default Service (10.96.0.0/12) or pod (10.244.0.0/16) ranges.
fn default_underlay(pid: u32, instance: usize) -> Ipv4Addr {
    let n = (pid as usize % 160) * 64 + instance % 64;
    Ipv4Addr::new(10, 200 + (n / 256) as u8, (n % 256) as u8, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_underlays_stay_in_their_range_and_differ() {
        let a = default_underlay(4242, 0);
        let b = default_underlay(4242, 1);
        assert_ne!(a, b);
        for (pid, i) in [(0, 0), (159, 63), (u32::MAX, usize::MAX)] {
            let [x, y, _, w] = default_underlay(pid, i).octets();
            assert_eq!((x, w), (10, 0));
            assert!((200..=239).contains(&y), "{y}");
        }
    }
}

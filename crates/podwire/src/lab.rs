//! `podwire lab ...`: the command-line face of the lab, kubectl-shaped where
//! kubectl has the same verb.

use std::io::Read;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use podwire_lab::get::{Output, Query};

#[derive(Args)]
pub struct LabArgs {
    /// Which lab (several can run side by side).
    #[arg(long, global = true, default_value = "lab")]
    name: String,
    #[command(subcommand)]
    command: LabCmd,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab (the built-in example when no file is given) and return
    /// once every pod is running and reachable.
    Up {
        #[arg(short = 'f', long = "filename")]
        file: Option<String>,
        /// kubernetes: etcd, kube-apiserver, controller manager and
        /// scheduler in the controlplane node, podwire as kubelet and
        /// deployed from deploy/ (needs tools/k8s/build); files: the
        /// embedded files store; auto: kubernetes when the programs are built.
        #[arg(long, default_value = "auto", value_parser = ["auto", "kubernetes", "files"])]
        control_plane: String,
    },
    /// Remove every namespace, link, rule, process and file of the lab
    /// (exits non-zero, naming each, if something could not be removed).
    Down,
    /// List objects: nodes, pods, svc, endpoints, ingress, ingressclasses,
    /// secrets, deployments, namespaces.
    Get {
        resource: String,
        #[arg(short = 'n', long = "namespace")]
        namespace: Option<String>,
        #[arg(short = 'A', long = "all-namespaces")]
        all: bool,
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Create or update objects from a YAML file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Delete the objects named in a YAML file (`-` for stdin).
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Run a command inside a pod (with its resolv.conf and hosts), or inside
    /// a node or the external host with --node.
    Exec {
        pod: Option<String>,
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a pod's container output.
    Logs {
        pod: String,
        #[arg(short = 'n', long = "namespace", default_value = "default")]
        namespace: String,
        #[arg(short = 'c', long = "container")]
        container: Option<String>,
    },
    /// The real kubectl on the lab (labs with a Kubernetes control plane):
    /// `podwire lab kubectl -- get pods -A`.
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send a real probe from SRC (a pod, a node or `external`) to DEST (a
    /// pod, a Service name, an IP or a hostname) and report, hop by hop,
    /// what the kernel did with it (nftables trace events).
    Trace {
        src: String,
        /// DEST[:PORT] (port 80 when omitted).
        dest: String,
        /// tcp (a SYN), udp or icmp.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Also print the plan-level view (the Service, its endpoints).
        #[arg(long)]
        explain: bool,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
    /// Draw the lab: underlays, router, external host, nodes (eth0 IP and
    /// MAC, cni0), pods, VXLAN tunnels or host-gw routes as the nodes'
    /// kernels hold them, Services and their endpoints; optionally a trace.
    /// SVG on stdout, or a file (`-o lab.html`: a page embedding the SVG).
    Graph {
        /// Write here; the format follows the extension (.svg, .html).
        #[arg(short = 'o', long = "output")]
        output: Option<std::path::PathBuf>,
        /// svg or html (default: from -o's extension, else svg).
        #[arg(long, value_parser = ["svg", "html"])]
        format: Option<String>,
        /// Run `lab trace SRC DEST[:PORT]` (TCP) and draw its path.
        #[arg(long, num_args = 2, value_names = ["SRC", "DEST"])]
        trace: Option<Vec<String>>,
    },
    /// List the labs on this machine.
    List,
    /// Print the built-in example manifest.
    Example,
    /// The lab's background supervisor (started by `lab up`).
    #[command(hide = true)]
    Supervise,
    /// A node's process 1 (started by the supervisor).
    #[command(hide = true)]
    NodeInit { spec: std::path::PathBuf },
}

fn read_file(file: &str) -> Result<String> {
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))
}

/// Rust starts with SIGPIPE ignored, so printing into a closed pipe (`lab
/// get pods -A | head -1`) fails and `print!` panics. A command-line tool
/// ends quietly instead, as `ls` does: SIGPIPE's default action. Not the
/// supervisor: it must outlive a client that goes away mid-request.
fn end_quietly_on_closed_pipe() {
    // SAFETY: resetting one signal's disposition to its default touches no
    // Rust state; nothing here installed a handler for it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn run(args: LabArgs) -> Result<()> {
    if !matches!(args.command, LabCmd::Supervise | LabCmd::NodeInit { .. }) {
        end_quietly_on_closed_pipe();
    }
    let name = args.name.as_str();
    let exe = std::env::current_exe().context("cannot find the podwire binary")?;
    let mut progress = |msg: &str| println!("  {msg}");
    match args.command {
        LabCmd::Up {
            file,
            control_plane,
        } => {
            let mode = match control_plane.as_str() {
                "kubernetes" => Some(podwire_lab::ControlPlaneMode::Kubernetes),
                "files" => Some(podwire_lab::ControlPlaneMode::Files),
                _ => None,
            };
            let manifest = match &file {
                Some(f) => read_file(f)?,
                None => podwire_lab::builtin_example().to_string(),
            };
            println!(
                "lab {name}: building {}",
                file.as_deref().unwrap_or("the built-in example")
            );
            let summary = podwire_lab::up(name, &manifest, &exe, mode, &mut progress)?;
            println!("{summary}");
            print_hints(name)?;
        }
        LabCmd::Down => println!("{}", podwire_lab::down(name)?),
        LabCmd::Get {
            resource,
            namespace,
            all,
            output,
        } => {
            if podwire_lab::mode(name)? == podwire_lab::ControlPlaneMode::Kubernetes {
                // The real thing answers: kubectl get, same flags.
                let mut kargs = vec!["get".to_string(), resource];
                match (all, namespace) {
                    (true, _) => kargs.push("-A".into()),
                    (false, Some(ns)) => kargs.extend(["-n".into(), ns]),
                    (false, None) => {}
                }
                if let Some(o) = output {
                    kargs.extend(["-o".into(), o]);
                }
                std::process::exit(podwire_lab::kubectl(name, &kargs)?);
            }
            let output = match output.as_deref() {
                None => Output::Table,
                Some("wide") => Output::Wide,
                Some("yaml") => Output::Yaml,
                Some(other) => bail!("unknown output format {other:?}: use wide or yaml"),
            };
            let namespace = if all {
                None
            } else {
                Some(namespace.unwrap_or_else(|| "default".into()))
            };
            let state = podwire_lab::state(name)?;
            print!(
                "{}",
                podwire_lab::get::render(
                    &state,
                    &Query {
                        resource,
                        namespace,
                        output
                    }
                )?
            );
        }
        LabCmd::Apply { file } => {
            podwire_lab::apply(name, &read_file(&file)?, &mut progress)?;
            println!("applied");
        }
        LabCmd::Delete { file } => {
            podwire_lab::delete(name, &read_file(&file)?, &mut progress)?;
            println!("deleted");
        }
        LabCmd::Exec {
            pod,
            namespace,
            node,
            command,
        } => {
            let code = match (pod, node) {
                (_, Some(node)) => podwire_lab::exec_node(name, &node, &command)?,
                (Some(pod), None) => podwire_lab::exec_pod(name, &namespace, &pod, &command)?,
                (None, None) => bail!("name a pod, or a node with --node"),
            };
            std::process::exit(code);
        }
        LabCmd::Logs {
            pod,
            namespace,
            container,
        } => {
            print!(
                "{}",
                podwire_lab::logs(name, &namespace, &pod, container.as_deref())?
            );
        }
        LabCmd::Trace {
            src,
            dest,
            proto,
            explain,
            timeout,
        } => {
            let request = podwire_lab::trace::TraceRequest {
                src,
                dest,
                proto: podwire_lab::trace::Proto::parse(&proto)?,
                explain,
                timeout: std::time::Duration::from_secs_f64(timeout.clamp(0.1, 60.0)),
            };
            print!("{}", podwire_lab::trace::trace(name, &request)?);
        }
        LabCmd::Graph {
            output,
            format,
            trace,
        } => graph(name, output, format, trace)?,
        LabCmd::List => {
            for lab in podwire_lab::paths::list_labs() {
                println!("{lab}");
            }
        }
        LabCmd::Example => print!("{}", podwire_lab::builtin_example()),
        LabCmd::Supervise => podwire_lab::supervise(name, &exe)?,
        LabCmd::Kubectl { args } => std::process::exit(podwire_lab::kubectl(name, &args)?),
        LabCmd::NodeInit { spec } => podwire_lab::node_init(&spec)?,
    }
    Ok(())
}

/// `lab graph`: the picture (with a trace drawn on it) to stdout or a file.
fn graph(
    name: &str,
    output: Option<std::path::PathBuf>,
    format: Option<String>,
    trace: Option<Vec<String>>,
) -> Result<()> {
    use podwire_lab::graph::{self, Format};
    let format = match (&format, &output) {
        (Some(f), _) => Format::parse(f)?,
        (None, Some(path)) => Format::of_path(path).unwrap_or(Format::Svg),
        (None, None) => Format::Svg,
    };
    let request = match trace.as_deref() {
        Some([src, dest]) => Some(podwire_lab::trace::TraceRequest {
            src: src.clone(),
            dest: dest.clone(),
            proto: podwire_lab::trace::Proto::Tcp,
            explain: false,
            timeout: std::time::Duration::from_secs(2),
        }),
        Some(_) => bail!("--trace takes SRC and DEST[:PORT]"),
        None => None,
    };
    let picture = graph::picture(name, request.as_ref())?;
    let text = graph::render(&picture, format);
    match output {
        Some(path) => {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "lab {name}: wrote {} ({} nodes, {} pods, {} services{})",
                path.display(),
                picture.nodes.len(),
                picture.pods.len(),
                picture.services.len(),
                picture
                    .trace
                    .as_ref()
                    .map(|t| format!("; trace: {}", t.verdict))
                    .unwrap_or_default()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// How to try the lab that just came up, with its real addresses.
fn print_hints(name: &str) -> Result<()> {
    let state = podwire_lab::state(name)?;
    let flag = if name == "lab" {
        String::new()
    } else {
        format!(" --name {name}")
    };
    println!("\nTry it:");
    if podwire_lab::mode(name)? == podwire_lab::ControlPlaneMode::Kubernetes {
        println!("  podwire lab kubectl{flag} -- get nodes -o wide");
        println!("  podwire lab kubectl{flag} -- get ds,deploy,pods -n kube-system -o wide");
    }
    println!("  podwire lab get pods -A -o wide{flag}");
    let web = state.pods.values().find_map(|p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        let port = p
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.command.is_none())?
            .ports
            .as_ref()?
            .first()?
            .container_port;
        Some((p.metadata.name.clone().unwrap_or_default(), ip, port))
    });
    let client = state
        .pods
        .values()
        .find(|p| p.metadata.name.as_deref() == Some("client"));
    if let (Some((pod, ip, port)), Some(_)) = (&web, client) {
        println!(
            "  podwire lab exec client{flag} -- curl -s http://{ip}:{port}/      # reaches {pod} across nodes, no NAT"
        );
    }
    if client.is_some() {
        // The lab's own Services (kube-dns, `kubernetes`) are not the user's.
        let services = state.services.iter().filter(|((ns, name), _)| {
            ns != "kube-system" && (ns.as_str(), name.as_str()) != ("default", "kubernetes")
        });
        for (_, svc) in services.take(1) {
            let name = svc.metadata.name.clone().unwrap_or_default();
            let ns = svc.metadata.namespace.clone().unwrap_or_default();
            let qualified = if ns == "default" {
                name.clone()
            } else {
                format!("{name}.{ns}")
            };
            println!(
                "  podwire lab exec client{flag} -- curl -s http://{qualified}/      # a Service by name (cluster DNS + proxy)"
            );
            println!("  podwire lab exec client{flag} -- getent hosts {qualified}");
            let node_port = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.iter().find_map(|p| p.node_port));
            if let (Some(np), Some(node)) = (node_port, state.node_infos().get(1)) {
                println!(
                    "  podwire lab exec --node external{flag} -- curl -s http://{}:{np}/      # NodePort from outside",
                    node.internal_ip
                );
            }
        }
    }
    let paths = podwire_lab::paths::LabPaths::new(name)?;
    let external = podwire_lab::record::load_record(&paths)?.spec.external;
    if let Some(ext) = &external {
        print_ingress_hints(&state, &paths, &ext.name, &flag);
    }
    if let Some(ext) = external {
        println!(
            "  podwire lab exec --node {}{flag} -- ping -c1 {}",
            ext.name,
            state
                .node_infos()
                .first()
                .map(|n| n.internal_ip.to_string())
                .unwrap_or_default()
        );
    }
    println!("  podwire lab exec --node node01{flag} -- ip route");
    println!("  podwire lab down{flag}");
    Ok(())
}

/// curl through the ingress controller's NodePorts from the external host,
/// by Host header and (when the Ingress has TLS for the host) with SNI,
/// trusting the lab's CA.
fn print_ingress_hints(
    state: &podwire_model::ClusterState,
    paths: &podwire_lab::paths::LabPaths,
    external: &str,
    flag: &str,
) {
    use podwire_lab::addons::{INGRESS_NAME, INGRESS_NAMESPACE};
    let Some(controller) = state
        .services
        .get(&(INGRESS_NAMESPACE.to_string(), INGRESS_NAME.to_string()))
    else {
        return;
    };
    let node_port = |port: &str| {
        controller
            .spec
            .as_ref()?
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(port))?
            .node_port
    };
    let nodes = state.node_infos();
    let Some(node) = nodes.get(1).or(nodes.first()) else {
        return;
    };
    let ip = node.internal_ip;
    // The first Ingress rule with a host: what the example lab's apps/web is.
    let Some((host, tls)) = state.ingresses.values().find_map(|ing| {
        let spec = ing.spec.as_ref()?;
        let host = spec.rules.as_ref()?.iter().find_map(|r| r.host.clone())?;
        let tls = spec
            .tls
            .iter()
            .flatten()
            .any(|t| t.secret_name.is_some() && t.hosts.iter().flatten().any(|h| *h == host));
        Some((host, tls))
    }) else {
        return;
    };
    if let Some(http) = node_port("http") {
        println!(
            "  podwire lab exec --node {external}{flag} -- curl -s -H 'Host: {host}' http://{ip}:{http}/      # through the ingress controller"
        );
    }
    if let (true, Some(https)) = (tls, node_port("https")) {
        println!(
            "  podwire lab exec --node {external}{flag} -- curl -s --cacert {} --resolve {host}:{https}:{ip} https://{host}:{https}/      # TLS with SNI",
            paths.ca_cert().display()
        );
    }
}

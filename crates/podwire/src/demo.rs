//! `podwire demo`: the main job until the lab exists. It plays a container
//! runtime: creates an isolated "host" namespace and two pod namespaces,
//! runs this binary as the CNI plugin for each pod (environment + netconf on
//! stdin, exactly as a runtime does), then shows pod-to-pod traffic without
//! NAT and a published port reached from the other pod, the host's address
//! and the host's 127.0.0.1. Nothing touches the machine's own namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use podwire_kernel::Netns;
use serde_json::{Value, json};

const HOST_NS: &str = "pwdemo-host";
const PODS: [&str; 2] = ["pwdemo-a", "pwdemo-b"];
const STATE: &str = "/run/podwire-demo";

fn ip_netns(args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .arg("netns")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .context("cannot run `ip` (install iproute2)")?;
    if !status.success() {
        bail!("ip netns {} failed", args.join(" "));
    }
    Ok(())
}

fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// A command that will run inside the network namespace at `path`.
fn in_netns(program: &Path, path: &str) -> Result<(Command, Netns)> {
    let ns = Netns::open(path)?;
    let fd = ns.raw_fd();
    let mut cmd = Command::new(program);
    // SAFETY: setns is async-signal-safe and `fd` stays open in the parent
    // (the returned Netns) until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            setns(BorrowedFd::borrow_raw(fd), CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok((cmd, ns))
}

fn cni(exe: &Path, cni_path: &Path, command: &str, pod: &str, conf: &Value) -> Result<Value> {
    let (mut cmd, _ns) = in_netns(exe, &netns_path(HOST_NS))?;
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", netns_path(pod))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run the CNI plugin")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("CNI {command} for {pod} failed: {text}");
    }
    Ok(if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

fn netconf(data_dir: &Path, mappings: Value) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "demo",
        "type": "podwire",
        "bridge": "pwdemo0",
        "isDefaultGateway": true,
        "ipMasq": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "ipam": {"type": "podwire", "ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": data_dir},
    })
}

/// One HTTP GET from inside namespace `ns`, returning the body.
fn http_get_from(ns: &str, addr: SocketAddr) -> Result<String> {
    let ns = Netns::open(netns_path(ns))?;
    let handle = std::thread::spawn(move || -> Result<String> {
        let _inside = ns.enter()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string())
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?
}

fn cleanup() {
    for name in PODS.iter().chain([HOST_NS].iter()) {
        let _ = ip_netns(&["delete", name]);
    }
    let _ = std::fs::remove_dir_all(STATE);
}

struct Cleanup {
    keep: bool,
    server: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        if !self.keep {
            cleanup();
        }
    }
}

pub fn run(keep: bool, only_cleanup: bool) -> Result<()> {
    cleanup();
    if only_cleanup {
        println!("removed the demo's namespaces and state");
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the podwire binary")?;
    let mut guard = Cleanup { keep, server: None };
    let cni_path = PathBuf::from(STATE).join("bin");
    let data_dir = PathBuf::from(STATE).join("ipam");
    std::fs::create_dir_all(&cni_path)?;
    std::os::unix::fs::symlink(&exe, cni_path.join("podwire"))
        .context("cannot link the plugin into CNI_PATH")?;
    for name in [HOST_NS].iter().chain(PODS.iter()) {
        ip_netns(&["add", name])?;
    }
    // A real host has its loopback up; a fresh namespace does not.
    ip_netns(&["exec", HOST_NS, "ip", "link", "set", "lo", "up"])?;
    println!("namespaces: host {HOST_NS}, pods {}", PODS.join(", "));

    let mut ips = Vec::new();
    for (i, pod) in PODS.iter().enumerate() {
        let mappings = if i == 0 {
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        } else {
            json!([])
        };
        let started = Instant::now();
        let result = cni(&exe, &cni_path, "ADD", pod, &netconf(&data_dir, mappings))?;
        let address = result["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!(
            "CNI ADD {pod}: {address} via {} on bridge pwdemo0 ({:.1} ms)",
            result["ips"][0]["gateway"].as_str().unwrap_or("-"),
            started.elapsed().as_secs_f64() * 1000.0
        );
        ips.push(address.split('/').next().unwrap_or_default().to_string());
    }

    let (mut server_cmd, _ns) = in_netns(&exe, &netns_path(PODS[0]))?;
    guard.server = Some(
        server_cmd
            .args(["serve", "--listen", "0.0.0.0:80"])
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the pod's server")?,
    );
    let pod_a: SocketAddr = format!("{}:80", ips[0]).parse()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get_from(PODS[1], pod_a).is_err() {
        if Instant::now() > deadline {
            bail!("the server in {} did not come up", PODS[0]);
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let checks: [(&str, &str, String); 4] = [
        (PODS[1], "pod b -> pod a directly", format!("{}:80", ips[0])),
        (
            PODS[1],
            "pod b -> published port on the host's bridge IP",
            "10.88.0.1:8080".into(),
        ),
        (
            HOST_NS,
            "host -> published port on its own address",
            "10.88.0.1:8080".into(),
        ),
        (
            HOST_NS,
            "host -> published port on 127.0.0.1",
            "127.0.0.1:8080".into(),
        ),
    ];
    let mut failed = 0;
    for (from, what, target) in checks {
        let addr: SocketAddr = target.parse()?;
        match http_get_from(from, addr) {
            Ok(body) => println!("ok   {what} ({target}): {body}"),
            Err(err) => {
                failed += 1;
                println!("FAIL {what} ({target}): {err:#}");
            }
        }
    }
    println!(
        "pod b's address is {}: the direct request above shows client={} (no NAT)",
        ips[1], ips[1]
    );

    if !keep {
        for (i, pod) in PODS.iter().enumerate() {
            let mappings = if i == 0 {
                json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
            } else {
                json!([])
            };
            cni(&exe, &cni_path, "DEL", pod, &netconf(&data_dir, mappings))?;
            println!("CNI DEL {pod}: done");
        }
    } else {
        println!(
            "kept: inspect with `ip netns exec {HOST_NS} nft list table inet podwire-cni`; remove with `podwire demo --cleanup`"
        );
    }
    drop(guard);
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

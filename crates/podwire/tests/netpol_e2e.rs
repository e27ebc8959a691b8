//! NetworkPolicy end to end on a lab, as the upstream e2e suite checks it:
//! namespaces x, y, z with pods a, b, c spread over two nodes, each serving
//! TCP and UDP on 80 and 81; for each case every pod probes every pod on
//! all four (protocol, port) pairs and the whole truth table is compared
//! with the expected one. Probes run in parallel from threads that entered
//! the source pod's network namespace (no process per probe).
//!
//! One lab for all cases (unique name, `lab down` from a Drop guard even on
//! failure); traffic only inside the lab's namespaces. Needs root.

mod lab_common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lab_common::*;

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const CHECKS: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];
const PROBE: Duration = Duration::from_millis(1500);

fn manifest() -> String {
    let mut m = String::from(
        r#"
apiVersion: podwire.io/v1alpha1
kind: Lab
metadata: {name: netpol}
spec:
  podCIDR: 10.244.0.0/16
  nodeSlicePrefix: 24
  serviceCIDR: 10.96.0.0/12
  clusterDomain: cluster.local
  routing: vxlan
  ingress: false
  underlays: [{name: underlay, subnet: 192.168.56.0/24}]
  nodes: [{name: node01}, {name: node02}]
  external: {name: external, subnet: 203.0.113.0/24}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  type: NodePort
  clusterIP: 10.96.100.20
  selector: {pod: a}
  ports: [{name: http, port: 80, targetPort: 80, nodePort: 30081}]
"#,
    );
    for ns in NAMESPACES {
        m.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n"
        ));
    }
    for (i, ns) in NAMESPACES.iter().enumerate() {
        for (j, pod) in PODS.iter().enumerate() {
            m.push_str(&pod_yaml(ns, pod, &format!("pod: {pod}"), (i + j) % 2));
        }
    }
    m
}

/// A matrix pod: TCP 80 and 81 from the built-in server, UDP 80 and 81
/// echoed by socat; every port named as the upstream suite names them.
fn pod_yaml(ns: &str, pod: &str, labels: &str, node: usize) -> String {
    let node = ["node01", "node02"][node];
    format!(
        r#"---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  containers:
  - {{name: c80, ports: [{{name: serve-80-tcp, containerPort: 80}}]}}
  - {{name: c81, ports: [{{name: serve-81-tcp, containerPort: 81}}]}}
  - name: u80
    command: [socat, "UDP4-RECVFROM:80,fork", PIPE]
    ports: [{{name: serve-80-udp, containerPort: 80, protocol: UDP}}]
  - name: u81
    command: [socat, "UDP4-RECVFROM:81,fork", PIPE]
    ports: [{{name: serve-81-udp, containerPort: 81, protocol: UDP}}]
"#
    )
}

struct Net {
    lab: Lab,
    ips: BTreeMap<(String, String), String>,
}

fn enter(netns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{netns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn probe(proto: &str, addr: SocketAddr) -> bool {
    match proto {
        "tcp" => TcpStream::connect_timeout(&addr, PROBE).is_ok(),
        // Datagrams are sent again (socat answers one at a time), from
        // one socket, until an echo comes or 2 s have passed.
        _ => UdpSocket::bind("0.0.0.0:0").is_ok_and(|s| {
            let _ = s.set_read_timeout(Some(Duration::from_millis(400)));
            let mut b = [0u8; 16];
            (0..5).any(|_| s.send_to(b"probe", addr).is_ok() && s.recv_from(&mut b).is_ok())
        }),
    }
}

/// Runs `targets` probes from inside pod `from`'s namespace, in parallel.
fn probe_from(netns: &str, targets: Vec<(String, SocketAddr)>) -> Vec<bool> {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        enter(&netns).expect("enter the pod's namespace");
        // Threads started here inherit the pod's namespace.
        let handles: Vec<_> = targets
            .into_iter()
            .map(|(proto, addr)| std::thread::spawn(move || probe(&proto, addr)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
    .join()
    .expect("probe thread")
}

type Key = (String, String, &'static str, u16);

impl Net {
    fn refresh(&mut self) {
        self.ips = self
            .lab
            .pods()
            .into_iter()
            .filter(|p| NAMESPACES.contains(&p.namespace.as_str()))
            .map(|p| ((p.namespace.clone(), p.name.clone()), p.ip.clone()))
            .collect();
    }

    fn ip(&self, ns: &str, pod: &str) -> &str {
        &self.ips[&(ns.to_string(), pod.to_string())]
    }

    /// Every pod to every pod on every (protocol, port): (src, dst, proto, port) -> reached.
    fn matrix(&self) -> BTreeMap<Key, bool> {
        let mut handles = Vec::new();
        for sns in NAMESPACES {
            for spod in PODS {
                let mut targets = Vec::new();
                let mut keys = Vec::new();
                for dns in NAMESPACES {
                    for dpod in PODS {
                        for (proto, port) in CHECKS {
                            let addr = format!("{}:{port}", self.ip(dns, dpod))
                                .parse()
                                .expect("addr");
                            targets.push((proto.to_string(), addr));
                            keys.push((
                                format!("{sns}/{spod}"),
                                format!("{dns}/{dpod}"),
                                proto,
                                port,
                            ));
                        }
                    }
                }
                let netns = self.lab.pod_netns(sns, spod);
                handles.push(std::thread::spawn(move || {
                    keys.into_iter()
                        .zip(probe_from(&netns, targets))
                        .collect::<Vec<_>>()
                }));
            }
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("prober"))
            .collect()
    }

    /// Asserts the whole truth table; on failure prints every difference.
    fn expect(&self, case: &str, want: impl Fn(&str, &str, &str, u16) -> bool) {
        let got = self.matrix();
        let wrong: Vec<String> = got
            .iter()
            .filter(|((s, d, p, port), reached)| want(s, d, p, *port) != **reached)
            .map(|((s, d, p, port), reached)| {
                format!(
                    "  {s} -> {d} {p}/{port}: got {}, want {}",
                    ok(*reached),
                    ok(!*reached)
                )
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "{case}: {} of {} probes differ from the truth table:\n{}",
            wrong.len(),
            got.len(),
            wrong.join("\n")
        );
        eprintln!("{case}: {} probes as expected", got.len());
    }

    fn apply(&self, yaml: &str) {
        self.lab.apply_text(yaml).expect_ok();
    }

    fn delete(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("netpol-{}.yaml", std::process::id()));
        std::fs::write(&path, yaml).expect("write");
        let run = self.lab.delete(&path);
        let _ = std::fs::remove_file(&path);
        run.expect_ok();
    }
}

fn ok(b: bool) -> &'static str {
    if b { "reached" } else { "blocked" }
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

fn ns_of(pod: &str) -> &str {
    pod.split('/').next().unwrap_or("")
}

/// A DNS query for kubernetes.default.svc.cluster.local (A).
fn dns_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["kubernetes", "default", "svc", "cluster", "local"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dns_answers(netns: &str) -> bool {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        enter(&netns).expect("enter");
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        s.send_to(&dns_query(), "10.96.0.10:53").expect("send");
        let mut b = [0u8; 512];
        s.recv_from(&mut b).is_ok()
    })
    .join()
    .unwrap_or(false)
}

#[test]
fn network_policy_matrix() {
    let lab = Lab::new("netpol");
    let file = std::env::temp_dir().join(format!("netpol-lab-{}.yaml", std::process::id()));
    std::fs::write(&file, manifest()).expect("manifest");
    let up = lab.up(Some(&file));
    let _ = std::fs::remove_file(&file);
    up.expect_ok();
    let mut net = Net {
        lab,
        ips: BTreeMap::new(),
    };
    net.refresh();
    let started = Instant::now();

    net.expect("no policy", |_, _, _, _| true);

    // Default deny ingress in x.
    let deny_x = policy(
        "x",
        "default-deny",
        "{podSelector: {}, policyTypes: [Ingress]}",
    );
    net.apply(&deny_x);
    net.expect("default deny ingress", |s, d, _, _| {
        ns_of(d) != "x" || s == d
    });
    net.delete(&deny_x);

    // Default deny egress in x, DNS allowed.
    let deny_out = policy(
        "x",
        "deny-egress",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}",
    );
    net.apply(&deny_out);
    net.expect("default deny egress with DNS", |s, d, _, _| {
        ns_of(s) != "x" || s == d
    });
    assert!(
        dns_answers(&net.lab.pod_netns("x", "a")),
        "DNS from x/a still answers"
    );
    net.delete(&deny_out);

    // Allow from a namespace.
    let from_y = policy(
        "x",
        "from-y",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    net.apply(&from_y);
    net.expect("allow from namespace y", |s, d, _, _| {
        ns_of(d) != "x" || ns_of(s) == "y" || s == d
    });
    net.delete(&from_y);

    // A pod in a namespace (AND) vs a pod OR a namespace (two peers).
    let and = policy(
        "x",
        "and",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    net.apply(&and);
    net.expect("y/b only (AND)", |s, d, _, _| {
        d != "x/a" || s == "y/b" || s == d
    });
    net.delete(&and);
    let or = policy(
        "x",
        "or",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]}",
    );
    net.apply(&or);
    net.expect("all of y or x/b (two peers)", |s, d, _, _| {
        d != "x/a" || ns_of(s) == "y" || s == "x/b" || s == d
    });
    net.delete(&or);

    // ipBlock with except: the pod range minus y/b.
    let block = policy(
        "x",
        "block",
        &format!(
            "{{podSelector: {{matchLabels: {{pod: a}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}}}]}}]}}",
            net.ip("y", "b")
        ),
    );
    net.apply(&block);
    net.expect("ipBlock except y/b", |s, d, _, _| d != "x/a" || s != "y/b");
    net.delete(&block);

    // Named ports (resolved on the destination pod) and endPort ranges.
    let named = policy(
        "x",
        "named",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]}]}",
    );
    net.apply(&named);
    net.expect("named ports", |s, d, p, port| {
        d != "x/a" || s == d || (p == "tcp" && port == 81) || (p == "udp" && port == 80)
    });
    net.delete(&named);
    let range = policy(
        "x",
        "range",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80, endPort: 81, protocol: UDP}]}]}",
    );
    net.apply(&range);
    net.expect("endPort", |s, d, p, _| d != "x/a" || s == d || p == "udp");
    net.delete(&range);

    // Namespace labels changing: z gains the label the policy admits.
    let team = policy(
        "x",
        "team",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]}",
    );
    net.apply(&team);
    net.expect("no namespace is blue", |s, d, _, _| {
        ns_of(d) != "x" || s == d
    });
    net.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: z, labels: {ns: z, team: blue}}\n",
    );
    net.expect("z turned blue", |s, d, _, _| {
        ns_of(d) != "x" || ns_of(s) == "z" || s == d
    });
    net.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: z, labels: {ns: z}}\n");
    net.delete(&team);

    // Service traffic to an isolated pod: ClusterIP from an allowed and a
    // refused pod, NodePort from the external host.
    let web = policy(
        "x",
        "web",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    net.apply(&web);
    let vip: SocketAddr = "10.96.100.20:80".parse().expect("vip");
    let via_vip =
        |ns: &str, pod: &str| probe_from(&net.lab.pod_netns(ns, pod), vec![("tcp".into(), vip)])[0];
    assert!(
        via_vip("y", "c"),
        "ClusterIP from y reaches the isolated pod"
    );
    assert!(!via_vip("z", "c"), "ClusterIP from z is refused after DNAT");
    let node_ip = net.lab.node("node01").internal_ip.clone();
    let nodeport = |lab: &Lab| {
        lab.exec_node(
            "external",
            &[
                "curl",
                "-s",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{node_ip}:30081/"),
            ],
        )
        .stdout
        .trim()
            == "200"
    };
    assert!(
        !nodeport(&net.lab),
        "NodePort from outside is refused by the policy"
    );
    let open = policy(
        "x",
        "web-open",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{}]}",
    );
    net.apply(&open);
    assert!(
        nodeport(&net.lab),
        "NodePort reaches x/a once a policy admits everyone"
    );
    net.delete(&open);
    net.delete(&web);

    // Policies changing while traffic runs: an open connection of a flow
    // that stays allowed survives; the change is in effect at once.
    let keep = policy(
        "x",
        "keep",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    net.apply(&keep);
    let target: SocketAddr = format!("{}:80", net.ip("x", "a")).parse().expect("addr");
    let netns = net.lab.pod_netns("y", "b");
    let mut conn = std::thread::spawn(move || {
        enter(&netns).expect("enter");
        TcpStream::connect_timeout(&target, PROBE)
    })
    .join()
    .expect("thread")
    .expect("y/b connects to x/a");
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let request = |conn: &mut TcpStream| -> bool {
        let mut buf = [0u8; 2048];
        conn.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok()
            && conn.read(&mut buf).is_ok_and(|n| n > 0)
    };
    assert!(request(&mut conn));
    let deny_z = policy(
        "x",
        "keep",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}, namespaceSelector: {matchLabels: {ns: y}}}]}]}",
    );
    // `lab apply` returns once every agent reports the new revision, so
    // its duration bounds how long the update takes to be in effect.
    let t0 = Instant::now();
    net.apply(&deny_z);
    let took = t0.elapsed();
    assert!(
        !probe_from(&net.lab.pod_netns("y", "c"), vec![("tcp".into(), target)])[0],
        "y/c is refused as soon as `lab apply` returns"
    );
    eprintln!(
        "policy update in effect when `lab apply` returned, {:.0} ms after it started",
        took.as_secs_f64() * 1000.0
    );
    assert!(took < Duration::from_secs(1), "update took {took:?}");
    assert!(
        request(&mut conn),
        "the open connection of y/b survives the update"
    );
    net.delete(&deny_z);

    // Pods created after the policy are isolated at once.
    net.apply(&deny_x);
    net.apply(&pod_yaml("x", "late", "pod: late", 1));
    net.refresh();
    let late: SocketAddr = format!("{}:80", net.ip("x", "late")).parse().expect("addr");
    assert!(!probe_from(&net.lab.pod_netns("y", "a"), vec![("tcp".into(), late)])[0]);
    net.delete(&deny_x);
    assert!(probe_from(&net.lab.pod_netns("y", "a"), vec![("tcp".into(), late)])[0]);

    // Bad input: rejected alone, with a reason in `agent plan`; others stay.
    let bad = policy(
        "x",
        "bad",
        "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]}",
    );
    net.apply(&bad);
    net.apply(&from_y);
    net.expect("bad policy rejected, from-y enforced", |s, d, _, _| {
        ns_of(d) != "x" || ns_of(s) == "y" || s == d
    });
    let plan = net
        .lab
        .exec_node(
            "node01",
            &[
                podwire(),
                "agent",
                "plan",
                "--node",
                "node01",
                "--source",
                &format!("files:{LABS_ROOT}/{}/cluster", net.lab.name),
            ],
        )
        .expect_ok();
    assert!(
        plan.stdout.contains("# policy x/bad")
            && plan
                .stdout
                .contains("REJECTED: ingress[0]: peer 0: ipBlock \"10.0.0.0/40\" is not a CIDR")
            && plan.stdout.contains("table inet podwire-policy")
            && plan
                .stdout
                .contains("add chain inet podwire-policy forward"),
        "{}",
        plan.describe()
    );
    // /metrics: policies by state, drops in the name of x/from-y (the
    // first policy by name isolating x/a, x/c) once counters are read.
    let metrics = poll(Duration::from_secs(10), || {
        let m = net
            .lab
            .exec_node(
                "node01",
                &["curl", "-s", "-m", "2", "http://127.0.0.1:10249/metrics"],
            )
            .stdout;
        (m.contains("podwire_policy_policies{state=\"rejected\"} 1")
            && m.contains("podwire_policy_drops_total{namespace=\"x\",policy=\"from-y\",direction=\"ingress\"}"))
        .then_some(m)
    });
    assert!(metrics.is_some(), "no policy metrics on node01");
    eprintln!("all cases in {:.1} s", started.elapsed().as_secs_f64());
}

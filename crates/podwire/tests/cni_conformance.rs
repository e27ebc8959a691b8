//! Conformance with the reference plugins: the same netconf (apart from the
//! "type" fields) given to /usr/lib/cni/bridge + host-local and to podwire,
//! each in its own isolated host namespace, must give results of the same
//! shape and the same kernel state (addresses, routes, bridge addresses,
//! IP sequence). Also: podwire continuing a host-local store, and podwire
//! delegating IPAM to the host-local binary found in CNI_PATH.
//! Every test is skipped, with a note, when the reference plugins are absent.

mod common;

use common::kstate;
use common::*;
use serde_json::{Value, json};

/// The reference plugins speak up to 1.0.0.
const VERSION: &str = "1.0.0";

fn skip() -> bool {
    if reference_available() {
        return false;
    }
    eprintln!(
        "note: {REFERENCE_DIR}/bridge or host-local is missing; skipping the conformance test"
    );
    true
}

/// The same network twice: `reference` runs bridge + host-local, `podwire`
/// runs podwire with its own IPAM. Each side has its own host namespace, so
/// both use the same bridge name and subnet and must end up identical.
struct Pair {
    reference: World,
    podwire: World,
    ref_conf: Value,
    pw_conf: Value,
    pods: Vec<(Netns, Netns)>,
}

/// One ADD on both sides.
struct Added {
    ref_result: Value,
    pw_result: Value,
    index: usize,
}

impl Pair {
    /// `extra` is merged into both netconfs; `ipam_extra` into both ipam
    /// objects.
    fn new(tag: &str, bridge: &str, subnet: &str, extra: Value, ipam_extra: Value) -> Pair {
        let reference = World::new(&format!("{tag}r"));
        let podwire = World::new(&format!("{tag}w"));
        let mut ref_conf = reference_conf(VERSION, tag, bridge, subnet, &reference.data_dir());
        let mut pw_conf = podwire_conf(VERSION, tag, bridge, subnet, &podwire.data_dir());
        for conf in [&mut ref_conf, &mut pw_conf] {
            for (k, v) in extra.as_object().expect("extra") {
                conf[k] = v.clone();
            }
            for (k, v) in ipam_extra.as_object().expect("ipam_extra") {
                conf["ipam"][k] = v.clone();
            }
        }
        Pair {
            reference,
            podwire,
            ref_conf,
            pw_conf,
            pods: Vec::new(),
        }
    }

    fn id(index: usize) -> String {
        format!("ctr{index}")
    }

    /// ADD a new container on both sides; both must succeed or both fail.
    fn add(&mut self) -> Result<Added, (PluginOutput, PluginOutput)> {
        let index = self.pods.len();
        let rp = Netns::new("cf-r");
        let wp = Netns::new("cf-w");
        let r = self.reference.run(
            &self.reference.call("ADD", &Self::id(index), &rp.path()),
            &self.ref_conf,
        );
        let w = self.podwire.run(
            &self.podwire.call("ADD", &Self::id(index), &wp.path()),
            &self.pw_conf,
        );
        self.pods.push((rp, wp));
        match (r.success(), w.success()) {
            (true, true) => Ok(Added {
                ref_result: r.json(),
                pw_result: w.json(),
                index,
            }),
            (false, false) => Err((r, w)),
            _ => panic!("only one side succeeded:\nreference: {r:?}\npodwire: {w:?}"),
        }
    }

    fn del(&self, index: usize) {
        let (rp, wp) = &self.pods[index];
        self.reference
            .run(
                &self.reference.call("DEL", &Self::id(index), &rp.path()),
                &self.ref_conf,
            )
            .expect_ok("reference DEL");
        self.podwire
            .run(
                &self.podwire.call("DEL", &Self::id(index), &wp.path()),
                &self.pw_conf,
            )
            .expect_ok("podwire DEL");
        assert!(kstate::link(rp, "eth0").is_none());
        assert!(kstate::link(wp, "eth0").is_none());
    }

    /// Compares one ADD's results and the kernel state they left.
    fn compare(&self, added: &Added, bridge: &str) {
        let (rp, wp) = &self.pods[added.index];
        let (r, w) = (&added.ref_result, &added.pw_result);
        let ctx = format!("ADD #{}\nreference: {r}\npodwire:   {w}", added.index);
        assert_eq!(w["cniVersion"], r["cniVersion"], "{ctx}");

        // Interfaces: bridge, host veth, container (with sandbox), in order.
        let ri = r["interfaces"].as_array().expect("reference interfaces");
        let wi = w["interfaces"].as_array().expect("podwire interfaces");
        assert_eq!(wi.len(), ri.len(), "interface count\n{ctx}");
        assert_eq!(wi.len(), 3, "{ctx}");
        assert_eq!(wi[0]["name"], ri[0]["name"], "{ctx}");
        assert_eq!(wi[0]["name"], bridge, "{ctx}");
        assert!(wi[1]["name"].as_str().unwrap_or("").starts_with("veth"));
        assert_eq!(wi[2]["name"], ri[2]["name"], "{ctx}");
        for (i, (a, b)) in ri.iter().zip(wi).enumerate() {
            assert_eq!(
                a.get("sandbox").is_some(),
                b.get("sandbox").is_some(),
                "sandbox on interface {i}\n{ctx}"
            );
            assert_eq!(a.get("mac").is_some(), b.get("mac").is_some(), "{ctx}");
        }
        assert_eq!(wi[2]["sandbox"], wp.path().as_str(), "{ctx}");

        // IPs, routes and DNS are identical (same subnet on both sides).
        assert_eq!(w["ips"], r["ips"], "ips\n{ctx}");
        assert_eq!(w.get("routes"), r.get("routes"), "routes\n{ctx}");
        assert_eq!(w.get("dns"), r.get("dns"), "dns\n{ctx}");

        // The kernel agrees, and agrees across the two sides.
        assert_eq!(
            kstate::global_addrs(wp, "eth0"),
            kstate::global_addrs(rp, "eth0"),
            "container addresses\n{ctx}"
        );
        for family in ["-4", "-6"] {
            assert_eq!(
                kstate::routes(wp, family),
                kstate::routes(rp, family),
                "container routing table ({family})\n{ctx}"
            );
        }
        assert_eq!(
            kstate::global_addrs(&self.podwire.host, bridge),
            kstate::global_addrs(&self.reference.host, bridge),
            "bridge addresses\n{ctx}"
        );
        let ports = |world: &World| -> Vec<String> {
            kstate::link_names(&world.host)
                .into_iter()
                .filter(|n| n.starts_with("veth"))
                .filter(|n| kstate::link(&world.host, n).is_some_and(|l| l["master"] == bridge))
                .collect()
        };
        assert_eq!(
            ports(&self.podwire).len(),
            ports(&self.reference).len(),
            "bridge ports\n{ctx}"
        );
    }

    /// The result's MACs are the kernel's (the reference refetches the
    /// bridge after adding the port, whose MAC it may adopt).
    fn macs_match_kernel(&self, added: &Added, result: &Value, world: &World, pod: &Netns) {
        let ifs = result["interfaces"].as_array().expect("interfaces");
        let kernel = [
            kstate::link(&world.host, ifs[0]["name"].as_str().unwrap()),
            kstate::link(&world.host, ifs[1]["name"].as_str().unwrap()),
            kstate::link(pod, ifs[2]["name"].as_str().unwrap()),
        ];
        for (i, link) in kernel.iter().enumerate() {
            let link = link
                .as_ref()
                .unwrap_or_else(|| panic!("interface {i} of {result} does not exist"));
            assert_eq!(
                ifs[i]["mac"], link["address"],
                "ADD #{}: result MAC of {} is not the kernel's: {result}",
                added.index, ifs[i]["name"]
            );
        }
    }

    fn check_macs(&self, added: &Added) {
        let (rp, wp) = &self.pods[added.index];
        self.macs_match_kernel(added, &added.ref_result, &self.reference, rp);
        self.macs_match_kernel(added, &added.pw_result, &self.podwire, wp);
    }

    fn address(added: &Added) -> String {
        added.pw_result["ips"][0]["address"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[test]
fn five_adds_give_the_same_results_and_kernel_state() {
    if skip() {
        return;
    }
    let mut pair = Pair::new("cfa", "pwp201", "10.220.1.0/24", json!({}), json!({}));
    let mut seq = Vec::new();
    for _ in 0..5 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.compare(&added, "pwp201");
        seq.push(Pair::address(&added));
    }
    assert_eq!(
        seq,
        [
            "10.220.1.2/24",
            "10.220.1.3/24",
            "10.220.1.4/24",
            "10.220.1.5/24",
            "10.220.1.6/24"
        ]
    );
    assert_eq!(
        kstate::global_addrs(&pair.podwire.host, "pwp201"),
        ["10.220.1.1/24"]
    );
    // Both bridges reach every container.
    for i in 2..=6 {
        pair.podwire.host.ok(&format!("ping -c1 -W2 10.220.1.{i}"));
        pair.reference
            .host
            .ok(&format!("ping -c1 -W2 10.220.1.{i}"));
    }
}

#[test]
fn result_macs_are_the_kernels() {
    if skip() {
        return;
    }
    let mut pair = Pair::new("cfm", "pwp202", "10.220.2.0/24", json!({}), json!({}));
    for _ in 0..3 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.check_macs(&added);
    }
}

#[test]
fn is_default_gateway_behaves_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new(
        "cfd",
        "pwp203",
        "10.220.3.0/24",
        json!({"isDefaultGateway": true}),
        json!({}),
    );
    let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
    pair.compare(&added, "pwp203");
    assert_eq!(
        added.pw_result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.220.3.1"}])
    );
    let (_, wp) = &pair.pods[0];
    let default = kstate::routes(wp, "-4")
        .into_iter()
        .find(|r| r["dst"] == "default")
        .expect("a default route in the pod");
    assert_eq!(default["gateway"], "10.220.3.1");
    assert_eq!(default["dev"], "eth0");
}

#[test]
fn is_gateway_false_behaves_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new(
        "cfg",
        "pwp204",
        "10.220.4.0/24",
        json!({"isGateway": false}),
        json!({}),
    );
    let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
    pair.compare(&added, "pwp204");
    assert!(kstate::global_addrs(&pair.podwire.host, "pwp204").is_empty());
}

#[test]
fn ipam_routes_behave_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new(
        "cfr",
        "pwp205",
        "10.220.5.0/24",
        json!({}),
        json!({"routes": [{"dst": "192.168.250.0/24"}]}),
    );
    for _ in 0..2 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.compare(&added, "pwp205");
        assert_eq!(
            added.pw_result["routes"],
            json!([{"dst": "192.168.250.0/24"}])
        );
        let (_, wp) = &pair.pods[added.index];
        let route = kstate::routes(wp, "-4")
            .into_iter()
            .find(|r| r["dst"] == "192.168.250.0/24")
            .expect("the ipam route in the pod");
        assert_eq!(route["gateway"], "10.220.5.1", "via the IP's gateway");
    }
}

#[test]
fn range_start_and_end_behave_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new(
        "cfs",
        "pwp206",
        "10.220.6.0/24",
        json!({}),
        json!({"ranges": [[{"subnet": "10.220.6.0/24", "rangeStart": "10.220.6.100", "rangeEnd": "10.220.6.102"}]]}),
    );
    let mut seq = Vec::new();
    for _ in 0..3 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.compare(&added, "pwp206");
        seq.push(Pair::address(&added));
    }
    assert_eq!(
        seq,
        ["10.220.6.100/24", "10.220.6.101/24", "10.220.6.102/24"]
    );
    // Exhausted on both sides. podwire leaves nothing behind for the failure
    // (the reference bridge keeps the veth it made before asking IPAM, so
    // only the store is compared with it).
    let files_before = (pair.reference.ip_files("cfs"), pair.podwire.ip_files("cfs"));
    let links_before = kstate::link_names(&pair.podwire.host);
    let Err((r, w)) = pair.add() else {
        panic!("a fourth ADD must fail on both sides");
    };
    assert!(r.json()["code"].as_u64().is_some() && w.json()["code"].as_u64().is_some());
    assert_eq!(
        (pair.reference.ip_files("cfs"), pair.podwire.ip_files("cfs")),
        files_before
    );
    assert_eq!(kstate::link_names(&pair.podwire.host), links_before);
    assert!(kstate::link(&pair.pods[3].1, "eth0").is_none());
    // As a runtime does after a failed ADD: DEL it (the reference's veth goes).
    pair.del(3);
    // Freeing the middle one makes it the next address on both sides.
    pair.del(1);
    let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
    pair.compare(&added, "pwp206");
    assert_eq!(Pair::address(&added), "10.220.6.101/24");
}

#[test]
fn del_then_add_continues_round_robin_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new("cfo", "pwp207", "10.220.7.0/24", json!({}), json!({}));
    for _ in 0..3 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.compare(&added, "pwp207");
    }
    pair.del(0);
    assert_eq!(pair.podwire.ip_files("cfo"), pair.reference.ip_files("cfo"));
    let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
    pair.compare(&added, "pwp207");
    assert_eq!(
        Pair::address(&added),
        "10.220.7.5/24",
        "continues after the last reserved, not at the freed .2"
    );
    pair.del(2);
    pair.del(3);
    let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
    pair.compare(&added, "pwp207");
    assert_eq!(Pair::address(&added), "10.220.7.6/24");
    assert_eq!(pair.podwire.ip_files("cfo"), pair.reference.ip_files("cfo"));
}

#[test]
fn dual_stack_default_gateway_behaves_the_same() {
    if skip() {
        return;
    }
    let mut pair = Pair::new(
        "cfv",
        "pwp210",
        "10.220.10.0/24",
        json!({"isDefaultGateway": true}),
        json!({"ranges": [[{"subnet": "10.220.10.0/24"}], [{"subnet": "fd00:220:10::/64"}]]}),
    );
    for _ in 0..2 {
        let added = pair.add().unwrap_or_else(|(r, w)| panic!("{r:?} {w:?}"));
        pair.compare(&added, "pwp210");
    }
    assert_eq!(
        pair.podwire.ip_files("cfv"),
        [
            "10.220.10.2",
            "10.220.10.3",
            "fd00:220:10::2",
            "fd00:220:10::3"
        ]
    );
    let (_, wp) = &pair.pods[1];
    let v6 = default_route_of(wp, "-6");
    assert_eq!(v6["gateway"], "fd00:220:10::1");
    assert_eq!(
        kstate::global_addrs(&pair.podwire.host, "pwp210"),
        ["10.220.10.1/24", "fd00:220:10::1/64"]
    );
}

fn default_route_of(pod: &Netns, family: &str) -> Value {
    kstate::routes(pod, family)
        .into_iter()
        .find(|r| r["dst"] == "default")
        .unwrap_or_else(|| panic!("no {family} default route in {}", pod.name))
}

#[test]
fn podwire_continues_a_host_local_store() {
    if skip() {
        return;
    }
    let world = World::new("cft");
    let ref_conf = reference_conf(VERSION, "cft", "pwp208", "10.220.8.0/24", &world.data_dir());
    let pw_conf = podwire_conf(VERSION, "cft", "pwp208", "10.220.8.0/24", &world.data_dir());
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("cft-p")).collect();
    for (i, pod) in pods.iter().take(2).enumerate() {
        let r = world
            .run(
                &world.call("ADD", &format!("ref{i}"), &pod.path()),
                &ref_conf,
            )
            .expect_ok("reference ADD")
            .json();
        assert_eq!(r["ips"][0]["address"], format!("10.220.8.{}/24", i + 2));
    }
    let host_local_file =
        std::fs::read_to_string(world.data.path().join("cft/10.220.8.2")).unwrap();

    // podwire, same dataDir: the next address after host-local's cursor.
    let w = world
        .run(&world.call("ADD", "pw0", &pods[2].path()), &pw_conf)
        .expect_ok("podwire ADD")
        .json();
    assert_eq!(w["ips"][0]["address"], "10.220.8.4/24");
    assert_eq!(kstate::global_addrs(&pods[2], "eth0"), ["10.220.8.4/24"]);
    assert_eq!(
        world.ip_files("cft"),
        ["10.220.8.2", "10.220.8.3", "10.220.8.4"]
    );
    let ours = std::fs::read_to_string(world.data.path().join("cft/10.220.8.4")).unwrap();
    assert_eq!(ours, "pw0\r\neth0", "same file format as host-local");
    assert_eq!(host_local_file, "ref0\r\neth0");

    // DEL of a host-local container through podwire frees its address and
    // removes its interfaces.
    world
        .run(&world.call("DEL", "ref0", &pods[0].path()), &pw_conf)
        .expect_ok("podwire DEL of a reference container");
    assert_eq!(world.ip_files("cft"), ["10.220.8.3", "10.220.8.4"]);
    assert!(kstate::link(&pods[0], "eth0").is_none());
    // The other containers keep working.
    world.host.ok("ping -c1 -W2 10.220.8.3");
    world.host.ok("ping -c1 -W2 10.220.8.4");

    // And host-local sees podwire's cursor in turn.
    let r = world
        .run(&world.call("ADD", "ref9", &pods[3].path()), &ref_conf)
        .expect_ok("reference ADD after podwire")
        .json();
    assert_eq!(r["ips"][0]["address"], "10.220.8.5/24");
}

#[test]
fn podwire_delegates_ipam_to_host_local_in_cni_path() {
    if skip() {
        return;
    }
    let world = World::new("cfl");
    assert!(
        world.cni_dir.path().join("host-local").exists(),
        "the World puts host-local in CNI_PATH"
    );
    let mut conf = podwire_conf(VERSION, "cfl", "pwp209", "10.220.9.0/24", &world.data_dir());
    conf["ipam"]["type"] = json!("host-local");
    conf["ipam"]["routes"] = json!([{"dst": "192.168.250.0/24"}]);
    let pods = [Netns::new("cfl-p"), Netns::new("cfl-p")];
    for (i, pod) in pods.iter().enumerate() {
        let result = world
            .run(&world.call("ADD", &format!("c{i}"), &pod.path()), &conf)
            .expect_ok("ADD with delegated IPAM")
            .json();
        let want = format!("10.220.9.{}/24", i + 2);
        assert_eq!(result["ips"][0]["address"], want.as_str(), "{result}");
        assert_eq!(result["ips"][0]["gateway"], "10.220.9.1");
        assert_eq!(result["routes"], json!([{"dst": "192.168.250.0/24"}]));
        assert_eq!(kstate::global_addrs(pod, "eth0"), [want]);
        assert!(
            kstate::routes(pod, "-4")
                .iter()
                .any(|r| r["dst"] == "192.168.250.0/24" && r["gateway"] == "10.220.9.1")
        );
    }
    // host-local wrote the store.
    assert_eq!(world.ip_files("cfl"), ["10.220.9.2", "10.220.9.3"]);
    assert_eq!(
        std::fs::read_to_string(world.data.path().join("cfl/last_reserved_ip.0")).unwrap(),
        "10.220.9.3"
    );
    world.host.ok("ping -c1 -W2 10.220.9.2");

    world
        .run(&world.call("DEL", "c0", &pods[0].path()), &conf)
        .expect_ok("DEL with delegated IPAM");
    assert_eq!(world.ip_files("cfl"), ["10.220.9.3"]);
    assert!(kstate::link(&pods[0], "eth0").is_none());
    world
        .run(&world.call("DEL", "c0", &pods[0].path()), &conf)
        .expect_ok("second DEL with delegated IPAM");
    world
        .run(&world.call("DEL", "c1", &pods[1].path()), &conf)
        .expect_ok("DEL");
    assert!(world.ip_files("cfl").is_empty());
    assert!(world.host_links("veth").is_empty());
}

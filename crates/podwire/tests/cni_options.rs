//! Every option of the podwire bridge plugin, checked on real kernel state
//! read back with `ip -j`, `bridge -j`, `nft -j` and `conntrack`, and with
//! traffic between namespaces the tests create: bridge name, isGateway,
//! isDefaultGateway, forceAddress, ipMasq, mtu, hairpinMode, promiscMode,
//! vlan, enabledad, dual-stack ranges, runtimeConfig.mac, requested IPs
//! (runtimeConfig.ips, args.cni.ips, CNI_ARGS IP=) and macspoofchk.

mod common;

use std::time::Duration;

use common::kstate;
use common::*;
use serde_json::{Value, json};

/// Whether podwire implements macspoofchk. When false the test expects the
/// spec's code 2 (unsupported field) and nothing left behind; when true it
/// checks the spoof filter on the kernel and with traffic.
const MACSPOOFCHK_SUPPORTED: bool = true;

fn conf(world: &World, name: &str, bridge: &str, subnet: &str, extra: Value) -> Value {
    let mut conf = podwire_conf("1.1.0", name, bridge, subnet, &world.data_dir());
    for (k, v) in extra.as_object().expect("extra is an object") {
        conf[k] = v.clone();
    }
    conf
}

fn add(world: &World, id: &str, pod: &Netns, conf: &Value) -> Value {
    world
        .run(&world.call("ADD", id, &pod.path()), conf)
        .expect_ok(&format!("ADD {id}"))
        .json()
}

fn del(world: &World, id: &str, pod: &Netns, conf: &Value) {
    world
        .run(&world.call("DEL", id, &pod.path()), conf)
        .expect_ok(&format!("DEL {id}"));
}

/// The host veth named in an ADD result.
fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .expect("host veth in the result")
        .to_string()
}

fn default_route(pod: &Netns, family: &str) -> Option<Value> {
    kstate::routes(pod, family)
        .into_iter()
        .find(|r| r["dst"] == "default")
}

#[test]
fn bridge_name_defaults_to_cni0() {
    let root_had_cni0 = std::path::Path::new("/sys/class/net/cni0").exists();
    let world = World::new("odef");
    let pod = Netns::new("odef-p");
    let mut conf = conf(&world, "odef", "unused", "10.230.1.0/24", json!({}));
    conf.as_object_mut().unwrap().remove("bridge");
    let result = add(&world, "c1", &pod, &conf);
    assert_eq!(result["interfaces"][0]["name"], "cni0");
    let cni0 = kstate::link(&world.host, "cni0").expect("cni0 in the test's host ns");
    assert_eq!(cni0["linkinfo"]["info_kind"], "bridge");
    let veth = kstate::link(&world.host, &host_veth(&result)).unwrap();
    assert_eq!(veth["master"], "cni0");
    assert_eq!(kstate::global_addrs(&world.host, "cni0"), ["10.230.1.1/24"]);
    world.host.ok("ping -c1 -W2 10.230.1.2");
    assert_eq!(
        std::path::Path::new("/sys/class/net/cni0").exists(),
        root_had_cni0,
        "the machine's own namespace is not touched"
    );
    del(&world, "c1", &pod, &conf);
}

#[test]
fn is_gateway_puts_the_gateway_on_the_bridge() {
    let world = World::new("ogw");
    let pod = Netns::new("ogw-p");
    let conf = conf(&world, "ogw", "pwp302", "10.230.2.0/24", json!({}));
    let result = add(&world, "c1", &pod, &conf);
    assert_eq!(result["ips"][0]["gateway"], "10.230.2.1");
    assert_eq!(
        kstate::global_addrs(&world.host, "pwp302"),
        ["10.230.2.1/24"]
    );
    assert_eq!(
        world.host.ok("cat /proc/sys/net/ipv4/ip_forward").trim(),
        "1"
    );
    assert!(
        default_route(&pod, "-4").is_none(),
        "isGateway alone adds no default route"
    );
    pod.ok("ping -c1 -W2 10.230.2.1");
    world.host.ok("ping -c1 -W2 10.230.2.2");
}

#[test]
fn without_is_gateway_the_bridge_has_no_address() {
    let world = World::new("onogw");
    let pod = Netns::new("onogw-p");
    let conf = conf(
        &world,
        "onogw",
        "pwp303",
        "10.230.3.0/24",
        json!({"isGateway": false}),
    );
    add(&world, "c1", &pod, &conf);
    assert!(kstate::global_addrs(&world.host, "pwp303").is_empty());
    assert!(default_route(&pod, "-4").is_none());
    assert_eq!(kstate::global_addrs(&pod, "eth0"), ["10.230.3.2/24"]);
}

#[test]
fn is_default_gateway_adds_the_default_route() {
    let world = World::new("odgw");
    let pod = Netns::new("odgw-p");
    let conf = conf(
        &world,
        "odgw",
        "pwp304",
        "10.230.4.0/24",
        json!({"isGateway": false, "isDefaultGateway": true}),
    );
    let result = add(&world, "c1", &pod, &conf);
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.230.4.1"}])
    );
    let default = default_route(&pod, "-4").expect("default route in the pod");
    assert_eq!(default["gateway"], "10.230.4.1");
    assert_eq!(default["dev"], "eth0");
    // isDefaultGateway implies isGateway.
    assert_eq!(
        kstate::global_addrs(&world.host, "pwp304"),
        ["10.230.4.1/24"]
    );
    pod.ok("ping -c1 -W2 10.230.4.1");
}

#[test]
fn force_address_replaces_another_address_in_the_subnet() {
    let world = World::new("ofa");
    let pod = Netns::new("ofa-p");
    world
        .host
        .ok("ip link add pwp305 type bridge && ip addr add 10.230.5.100/24 dev pwp305 && ip link set pwp305 up");
    let plain = conf(&world, "ofa", "pwp305", "10.230.5.0/24", json!({}));
    let out = world.run(&world.call("ADD", "c1", &pod.path()), &plain);
    assert_eq!(out.error_code(), 7, "{out:?}");
    let v = out.json();
    let text = format!("{} {}", v["msg"], v["details"]);
    assert!(text.contains("forceAddress"), "{v}");
    assert_eq!(
        kstate::global_addrs(&world.host, "pwp305"),
        ["10.230.5.100/24"],
        "the failed ADD keeps the bridge's address"
    );
    assert!(world.ip_files("ofa").is_empty(), "no IP files left");
    assert!(world.host_links("veth").is_empty(), "no veth left");
    assert!(kstate::link(&pod, "eth0").is_none());

    let forced = conf(
        &world,
        "ofa",
        "pwp305",
        "10.230.5.0/24",
        json!({"forceAddress": true}),
    );
    add(&world, "c1", &pod, &forced);
    assert_eq!(
        kstate::global_addrs(&world.host, "pwp305"),
        ["10.230.5.1/24"],
        "the old address is replaced by the gateway"
    );
    pod.ok("ping -c1 -W2 10.230.5.1");
}

/// A namespace "outside" the host, linked to it by a veth:
/// host 10.230.(100+n).1/24 <-> outside 10.230.(100+n).2/24, with a route
/// back to the pod subnet so that unmasqueraded replies could come back.
fn outside(world: &World, n: u8, pod_subnet: &str) -> Netns {
    let out = Netns::new(&format!("o{n}-out"));
    world.host.ok(&format!(
        "ip link add pwo{n}h type veth peer name pwo{n}o netns {} && \
         ip addr add 10.230.{}.1/24 dev pwo{n}h && ip link set pwo{n}h up",
        out.name,
        100 + u16::from(n)
    ));
    out.ok(&format!(
        "ip addr add 10.230.{}.2/24 dev pwo{n}o && ip link set pwo{n}o up && \
         ip route add {pod_subnet} via 10.230.{}.1",
        100 + u16::from(n),
        100 + u16::from(n)
    ));
    out
}

/// Connects from the pod to a server outside; returns the client address
/// the server saw.
fn seen_from_outside(pod: &Netns, outside: &Netns, outside_addr: &str) -> String {
    let server = kstate::tcp_serve_once(outside, 8080);
    assert_eq!(kstate::tcp_request(pod, outside_addr, 8080), "pong");
    server.finish(Duration::from_secs(10)).trim().to_string()
}

#[test]
fn ip_masq_hides_the_pod_address_from_the_outside() {
    let world = World::new("omq");
    let pod = Netns::new("omq-p");
    let out = outside(&world, 6, "10.230.6.0/24");
    let conf = conf(
        &world,
        "omq",
        "pwp306",
        "10.230.6.0/24",
        json!({"isDefaultGateway": true, "ipMasq": true}),
    );
    add(&world, "c1", &pod, &conf);
    let masq = kstate::nft_map(&world.host, "masq4");
    assert_eq!(masq.len(), 1, "{masq:?}");
    assert!(masq[0].contains("\"10.230.6.2\""), "{masq:?}");

    assert_eq!(
        seen_from_outside(&pod, &out, "10.230.106.2"),
        "10.230.106.1",
        "the outside sees the host's address"
    );
    let ct = world
        .host
        .ok("conntrack -L -p tcp --dport 8080 2>/dev/null");
    assert!(
        ct.contains("src=10.230.6.2 dst=10.230.106.2")
            && ct.contains("src=10.230.106.2 dst=10.230.106.1"),
        "conntrack shows the masqueraded tuple: {ct}"
    );
    kstate::retry_ok(&pod, "ping -c1 -W1 10.230.106.2", 3);
    // Traffic inside the pod subnet is not masqueraded.
    world.host.ok("ping -c1 -W2 10.230.6.2");

    del(&world, "c1", &pod, &conf);
    assert!(kstate::nft_map(&world.host, "masq4").is_empty());
}

#[test]
fn without_ip_masq_the_outside_sees_the_pod_address() {
    let world = World::new("onmq");
    let pod = Netns::new("onmq-p");
    let out = outside(&world, 7, "10.230.16.0/24");
    let conf = conf(
        &world,
        "onmq",
        "pwp316",
        "10.230.16.0/24",
        json!({"isDefaultGateway": true}),
    );
    add(&world, "c1", &pod, &conf);
    assert!(kstate::nft_map(&world.host, "masq4").is_empty());
    assert_eq!(
        seen_from_outside(&pod, &out, "10.230.107.2"),
        "10.230.16.2",
        "without ipMasq the pod's own address leaves the host"
    );
}

#[test]
fn mtu_applies_to_bridge_host_veth_and_pod() {
    let world = World::new("omtu");
    let pod = Netns::new("omtu-p");
    let conf = conf(
        &world,
        "omtu",
        "pwp307",
        "10.230.7.0/24",
        json!({"mtu": 1400}),
    );
    let result = add(&world, "c1", &pod, &conf);
    let mtu = |ns: &Netns, dev: &str| kstate::link(ns, dev).expect(dev)["mtu"].clone();
    assert_eq!(mtu(&world.host, "pwp307"), 1400);
    assert_eq!(mtu(&world.host, &host_veth(&result)), 1400);
    assert_eq!(mtu(&pod, "eth0"), 1400);
    assert_eq!(result["interfaces"][2]["mtu"], 1400);
    // Full-size packets pass without fragmentation.
    pod.ok("ping -c1 -W2 -M do -s 1372 10.230.7.1");
}

#[test]
fn hairpin_mode_is_set_on_the_port_only_when_asked() {
    let world = World::new("ohp");
    let pods = [Netns::new("ohp-p"), Netns::new("ohp-p")];
    let on = conf(
        &world,
        "ohp",
        "pwp308",
        "10.230.8.0/24",
        json!({"hairpinMode": true}),
    );
    let off = conf(&world, "ohp-off", "pwp318", "10.230.18.0/24", json!({}));
    let r_on = add(&world, "c1", &pods[0], &on);
    let r_off = add(&world, "c1", &pods[1], &off);
    let hairpin = |result: &Value| {
        kstate::link(&world.host, &host_veth(result)).expect("host veth")["linkinfo"]
            ["info_slave_data"]["hairpin"]
            .clone()
    };
    assert_eq!(hairpin(&r_on), true);
    assert_eq!(hairpin(&r_off), false);
}

#[test]
fn promisc_mode_is_set_on_the_bridge_only_when_asked() {
    let world = World::new("opr");
    let pods = [Netns::new("opr-p"), Netns::new("opr-p")];
    let on = conf(
        &world,
        "opr",
        "pwp309",
        "10.230.9.0/24",
        json!({"promiscMode": true}),
    );
    let off = conf(&world, "opr-off", "pwp319", "10.230.19.0/24", json!({}));
    add(&world, "c1", &pods[0], &on);
    add(&world, "c1", &pods[1], &off);
    let on = kstate::link(&world.host, "pwp309").unwrap();
    let off = kstate::link(&world.host, "pwp319").unwrap();
    assert!(kstate::has_flag(&on, "PROMISC"), "{on}");
    assert!(on["promiscuity"].as_u64().unwrap_or(0) >= 1, "{on}");
    assert!(!kstate::has_flag(&off, "PROMISC"), "{off}");
}

/// Whether this kernel has bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING).
fn kernel_has_vlan_filtering(ns: &Netns) -> bool {
    let out = ns.sh("ip link add pwvprobe type bridge vlan_filtering 1");
    let _ = ns.sh("ip link del pwvprobe");
    out.status.success()
}

#[test]
fn vlan_turns_on_filtering_and_makes_the_port_an_untagged_pvid() {
    let world = World::new("ovl");
    let pod = Netns::new("ovl-p");
    let conf = conf(
        &world,
        "ovl",
        "pwp310",
        "10.230.10.0/24",
        json!({"vlan": 100}),
    );
    if !kernel_has_vlan_filtering(&world.host) {
        eprintln!(
            "note: this kernel has no bridge VLAN filtering; checking only that \
             the vlan ADD fails cleanly"
        );
        let out = world.run(&world.call("ADD", "c1", &pod.path()), &conf);
        assert!(!out.success(), "{out:?}");
        assert!(out.json()["code"].as_u64().is_some(), "{out:?}");
        assert!(world.ip_files("ovl").is_empty());
        assert!(world.host_links("veth").is_empty());
        assert!(kstate::link(&pod, "eth0").is_none());
        return;
    }
    let result = add(&world, "c1", &pod, &conf);
    let br = kstate::link(&world.host, "pwp310").unwrap();
    assert_eq!(br["linkinfo"]["info_data"]["vlan_filtering"], 1, "{br}");
    let veth = host_veth(&result);
    let vlans = kstate::json(&world.host, &format!("bridge -j vlan show dev {veth}"));
    let port = vlans
        .as_array()
        .and_then(|a| a.iter().find(|p| p["ifname"] == veth.as_str()))
        .unwrap_or_else(|| panic!("no vlans for {veth}: {vlans}"));
    let entries = port["vlans"].as_array().expect("vlans");
    let v100 = entries
        .iter()
        .find(|v| v["vlan"] == 100)
        .unwrap_or_else(|| panic!("vlan 100 not on {veth}: {port}"));
    let flags = v100["flags"].as_array().cloned().unwrap_or_default();
    assert!(flags.contains(&json!("PVID")), "{port}");
    assert!(flags.contains(&json!("Egress Untagged")), "{port}");
    for other in entries.iter().filter(|v| v["vlan"] != 100) {
        let f = other["flags"].as_array().cloned().unwrap_or_default();
        assert!(
            !f.contains(&json!("PVID")),
            "only vlan 100 is the PVID: {port}"
        );
    }
    // The gateway on the bridge is in the same VLAN.
    pod.ok("ping -c1 -W2 10.230.10.1");
}

fn v6_addr(pod: &Netns, prefix: &str) -> Value {
    kstate::addr_info(pod, "eth0")
        .into_iter()
        .find(|a| a["local"].as_str().is_some_and(|l| l.starts_with(prefix)))
        .unwrap_or_else(|| panic!("no {prefix} address on eth0"))
}

#[test]
fn enabledad_false_makes_ipv6_usable_at_once() {
    let world = World::new("odad0");
    let pod = Netns::new("odad0-p");
    let mut conf = conf(&world, "odad0", "pwp311", "10.230.11.0/24", json!({}));
    conf["ipam"]["ranges"] =
        json!([[{"subnet": "10.230.11.0/24"}], [{"subnet": "fd00:230:11::/64"}]]);
    add(&world, "c1", &pod, &conf);
    let addr = v6_addr(&pod, "fd00:230:11:");
    assert_eq!(addr["nodad"], true, "added without DAD: {addr}");
    assert!(addr.get("tentative").is_none(), "{addr}");
    assert!(addr.get("dadfailed").is_none(), "{addr}");
    // Usable at once: the host reaches it without waiting.
    kstate::retry_ok(&world.host, "ping -6 -c1 -W1 fd00:230:11::2", 3);
}

#[test]
fn enabledad_true_runs_duplicate_address_detection() {
    let world = World::new("odad1");
    let pod = Netns::new("odad1-p");
    let mut conf = conf(
        &world,
        "odad1",
        "pwp321",
        "10.230.21.0/24",
        json!({"enabledad": true}),
    );
    conf["ipam"]["ranges"] =
        json!([[{"subnet": "10.230.21.0/24"}], [{"subnet": "fd00:230:21::/64"}]]);
    add(&world, "c1", &pod, &conf);
    let returned = std::time::Instant::now();
    let addr = v6_addr(&pod, "fd00:230:21:");
    let read_after = returned.elapsed();
    assert!(addr.get("nodad").is_none(), "DAD is not skipped: {addr}");
    // DAD probes for at least retrans_time (1 s) after the address is
    // added, so a read within that second must see it tentative.
    if read_after < Duration::from_millis(900) {
        assert_eq!(
            addr["tentative"], true,
            "right after ADD the address is still being probed: {addr}"
        );
    }
    let done = kstate::wait_until(Duration::from_secs(10), || {
        v6_addr(&pod, "fd00:230:21:").get("tentative").is_none()
    });
    assert!(done, "DAD finishes: {}", v6_addr(&pod, "fd00:230:21:"));
    assert!(v6_addr(&pod, "fd00:230:21:").get("dadfailed").is_none());
}

#[test]
fn dual_stack_gives_two_reachable_addresses() {
    let world = World::new("ods");
    let pod = Netns::new("ods-p");
    let mut conf = conf(&world, "ods", "pwp312", "10.230.12.0/24", json!({}));
    conf["ipam"]["ranges"] =
        json!([[{"subnet": "10.230.12.0/24"}], [{"subnet": "fd00:230:12::/64"}]]);
    let result = add(&world, "c1", &pod, &conf);
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["10.230.12.2/24", "fd00:230:12::2/64"]);
    assert_eq!(result["ips"][1]["gateway"], "fd00:230:12::1");
    assert_eq!(
        kstate::global_addrs(&pod, "eth0"),
        ["10.230.12.2/24", "fd00:230:12::2/64"]
    );
    assert_eq!(
        kstate::global_addrs(&world.host, "pwp312"),
        ["10.230.12.1/24", "fd00:230:12::1/64"]
    );
    assert_eq!(
        world
            .host
            .ok("cat /proc/sys/net/ipv6/conf/all/forwarding")
            .trim(),
        "1"
    );
    kstate::retry_ok(&world.host, "ping -c1 -W1 10.230.12.2", 3);
    kstate::retry_ok(&world.host, "ping -6 -c1 -W1 fd00:230:12::2", 5);
    kstate::retry_ok(&pod, "ping -6 -c1 -W1 fd00:230:12::1", 5);
    assert_eq!(world.ip_files("ods"), ["10.230.12.2", "fd00:230:12::2"]);
    del(&world, "c1", &pod, &conf);
    assert!(world.ip_files("ods").is_empty());
}

#[test]
fn runtime_config_mac_sets_the_pod_mac() {
    let world = World::new("omac");
    let pod = Netns::new("omac-p");
    let mut conf = conf(&world, "omac", "pwp313", "10.230.13.0/24", json!({}));
    conf["runtimeConfig"] = json!({"mac": "0a:58:0a:e6:0d:42"});
    let result = add(&world, "c1", &pod, &conf);
    let eth0 = kstate::link(&pod, "eth0").unwrap();
    assert_eq!(eth0["address"], "0a:58:0a:e6:0d:42");
    assert_eq!(result["interfaces"][2]["mac"], "0a:58:0a:e6:0d:42");
    world.host.ok("ping -c1 -W2 10.230.13.2");
}

#[test]
fn requested_ips_from_every_source_are_given_exactly() {
    let world = World::new("oreq");
    let base = conf(&world, "oreq", "pwp314", "10.230.14.0/24", json!({}));
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("oreq-p")).collect();

    let mut runtime = base.clone();
    runtime["runtimeConfig"] = json!({"ips": ["10.230.14.50/24"]});
    let mut args = base.clone();
    args["args"] = json!({"cni": {"ips": ["10.230.14.51"]}});
    let cases: [(&str, Value, &str); 3] = [
        ("rc", runtime, ""),
        ("args", args, ""),
        (
            "cniargs",
            base.clone(),
            "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.230.14.52",
        ),
    ];
    for (i, (id, conf, cni_args)) in cases.iter().enumerate() {
        let mut call = world.call("ADD", id, &pods[i].path());
        call.args = cni_args.to_string();
        let result = world.run(&call, conf).expect_ok(id).json();
        let want = format!("10.230.14.{}/24", 50 + i);
        assert_eq!(result["ips"][0]["address"], want.as_str(), "{id}");
        assert_eq!(kstate::global_addrs(&pods[i], "eth0"), [want], "{id}");
    }
    assert_eq!(
        world.ip_files("oreq"),
        ["10.230.14.50", "10.230.14.51", "10.230.14.52"]
    );
    // A requested address that is taken is refused, and nothing is left.
    let extra = Netns::new("oreq-x");
    let mut call = world.call("ADD", "dup", &extra.path());
    call.args = "IP=10.230.14.50".into();
    let out = world.run(&call, &base);
    assert!(!out.success(), "{out:?}");
    assert!(out.stdout.contains("10.230.14.50"), "{out:?}");
    assert!(kstate::link(&extra, "eth0").is_none());
    assert_eq!(world.ip_files("oreq").len(), 3);
    world.host.ok("ping -c1 -W2 10.230.14.52");
}

#[test]
fn macspoofchk() {
    let world = World::new("omsc");
    let pod = Netns::new("omsc-p");
    let conf = conf(
        &world,
        "omsc",
        "pwp315",
        "10.230.15.0/24",
        json!({"macspoofchk": true}),
    );
    let out = world.run(&world.call("ADD", "c1", &pod.path()), &conf);
    if !MACSPOOFCHK_SUPPORTED {
        assert_eq!(out.error_code(), 2, "unsupported field: {out:?}");
        assert!(out.stdout.contains("macspoofchk"), "{out:?}");
        assert!(world.ip_files("omsc").is_empty());
        assert!(kstate::link(&pod, "eth0").is_none());
        assert!(world.host_links("veth").is_empty());
        return;
    }
    let result = out.expect_ok("ADD with macspoofchk").json();
    let veth = host_veth(&result);
    let mac = kstate::link(&pod, "eth0").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let ports = kstate::nft_set(&world.host, "bridge", "spoof_ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(ports[0].contains(&veth), "{ports:?}");
    let allowed = kstate::nft_set(&world.host, "bridge", "spoof_allowed");
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert!(
        allowed[0].contains(&mac) && allowed[0].contains(&veth),
        "{allowed:?}"
    );
    kstate::retry_ok(&pod, "ping -c1 -W1 10.230.15.1", 3);

    // A spoofed source MAC is dropped on the bridge ...
    pod.ok("ip neigh flush dev eth0 && ip link set dev eth0 address 0a:58:de:ad:be:ef");
    let spoofed = pod.sh("ping -c2 -W1 10.230.15.1");
    assert!(!spoofed.status.success(), "a spoofed MAC gets through");
    // ... and the real one passes again.
    pod.ok(&format!(
        "ip neigh flush dev eth0 && ip link set dev eth0 address {mac}"
    ));
    kstate::retry_ok(&pod, "ping -c1 -W1 10.230.15.1", 3);

    del(&world, "c1", &pod, &conf);
    assert!(kstate::nft_set(&world.host, "bridge", "spoof_ports").is_empty());
    assert!(kstate::nft_set(&world.host, "bridge", "spoof_allowed").is_empty());
}

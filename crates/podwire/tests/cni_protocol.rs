//! The CNI protocol as a runtime sees it: the podwire binary run with the
//! spec's environment and a netconf on stdin, for every command (ADD, DEL,
//! CHECK, VERSION, GC, STATUS), every supported cniVersion, chained
//! conflists, and every error with its spec code — each checked against the
//! kernel state and files it leaves behind, not against what the plugin says.

mod common;

use common::kstate::{self, Snapshot};
use common::*;
use serde_json::{Value, json};

const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Checks a failed call against the spec's error object: non-zero exit, a
/// JSON object on stdout with cniVersion, code, msg (and details only when
/// there are some), nothing of it on stderr. Returns the object.
fn spec_error(out: &PluginOutput, code: u64) -> Value {
    assert_ne!(out.code, 0, "expected failure, got success: {}", out.stdout);
    let v = out.json();
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("error is not an object: {v}"));
    for key in obj.keys() {
        assert!(
            ["cniVersion", "code", "msg", "details"].contains(&key.as_str()),
            "unexpected key {key} in {v}"
        );
    }
    assert!(
        v["cniVersion"]
            .as_str()
            .is_some_and(|s| SUPPORTED.contains(&s)),
        "cniVersion missing or unsupported in {v}"
    );
    assert_eq!(v["code"], code, "wrong code: {v} (stderr {})", out.stderr);
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "msg missing in {v}"
    );
    if let Some(details) = v.get("details") {
        assert!(
            details.as_str().is_some_and(|d| !d.is_empty()),
            "details present but not a non-empty string: {v}"
        );
    }
    assert!(
        !out.stderr.contains("\"code\"") && !out.stderr.contains("\"cniVersion\""),
        "the error object belongs on stdout only, stderr had: {}",
        out.stderr
    );
    v
}

/// `msg` and `details` of an error object, joined, for content checks.
fn error_text(v: &Value) -> String {
    format!(
        "{} {}",
        v["msg"].as_str().unwrap_or(""),
        v["details"].as_str().unwrap_or("")
    )
}

/// The container's addresses as `ip -j` reports them.
fn pod_addrs(pod: &Netns) -> Vec<String> {
    kstate::global_addrs(pod, "eth0")
}

// ---------------------------------------------------------------------------
// ADD / DEL / CHECK in every version
// ---------------------------------------------------------------------------

#[test]
fn add_and_del_answer_in_every_version() {
    let world = World::new("pver");
    for (i, version) in SUPPORTED.iter().enumerate() {
        let pod = Netns::new("pver-p");
        let conf = podwire_conf(
            version,
            "pver",
            "pwp101",
            "10.210.1.0/24",
            &world.data_dir(),
        );
        let id = format!("ctr-{i}");
        let add = world
            .run(&world.call("ADD", &id, &pod.path()), &conf)
            .expect_ok(&format!("ADD {version}"));
        let result = add.json();
        assert_eq!(result["cniVersion"], *version, "{result}");
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{result}");
        let want = format!("10.210.1.{}/24", i + 2);
        assert_eq!(ips[0]["address"], want.as_str(), "{result}");
        if version.starts_with("0.3.") {
            assert_eq!(ips[0]["version"], "4", "0.3.x ips carry version: {result}");
        } else {
            assert!(
                ips[0].get("version").is_none(),
                "{version} ips have no version field: {result}"
            );
        }
        let ifs = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifs.len(), 3, "{result}");
        assert_eq!(ips[0]["interface"], 2, "{result}");
        assert_eq!(ifs[2]["name"], "eth0");
        assert_eq!(ifs[2]["sandbox"], pod.path().as_str());
        // What the result says is what the kernel has.
        assert_eq!(pod_addrs(&pod), vec![want.clone()], "{version}");
        let eth0 = kstate::link(&pod, "eth0").expect("eth0 in the pod");
        assert_eq!(eth0["address"], ifs[2]["mac"], "{version}");
        assert!(kstate::has_flag(&eth0, "UP"));
        let veth = ifs[1]["name"].as_str().expect("host veth name");
        let host_veth = kstate::link(&world.host, veth).expect("host veth");
        assert_eq!(host_veth["master"], "pwp101", "{version}");
        assert_eq!(world.ip_files("pver").len(), 1, "{version}");
        if !version.starts_with("0.3.") {
            let mut check = conf.clone();
            check["prevResult"] = result.clone();
            world
                .run(&world.call("CHECK", &id, &pod.path()), &check)
                .expect_ok(&format!("CHECK {version}"));
        }

        world
            .run(&world.call("DEL", &id, &pod.path()), &conf)
            .expect_ok(&format!("DEL {version}"));
        assert!(kstate::link(&pod, "eth0").is_none(), "{version}");
        assert!(kstate::link(&world.host, veth).is_none(), "{version}");
        assert!(world.ip_files("pver").is_empty(), "{version}");
        // DEL is idempotent in every version.
        world
            .run(&world.call("DEL", &id, &pod.path()), &conf)
            .expect_ok(&format!("second DEL {version}"));
    }
}

#[test]
fn check_passes_after_add_and_fails_once_the_address_is_gone() {
    let world = World::new("pchk");
    let pod = Netns::new("pchk-p");
    let conf = podwire_conf(
        "1.1.0",
        "pchk",
        "pwp102",
        "10.210.2.0/24",
        &world.data_dir(),
    );
    let add = world
        .run(&world.call("ADD", "c1", &pod.path()), &conf)
        .expect_ok("ADD");
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = add.json();
    world
        .run(&world.call("CHECK", "c1", &pod.path()), &check_conf)
        .expect_ok("CHECK right after ADD");

    pod.ok("ip addr del 10.210.2.2/24 dev eth0");
    let out = world.run(&world.call("CHECK", "c1", &pod.path()), &check_conf);
    assert_ne!(out.code, 0, "CHECK must fail without the address");
    let v = out.json();
    assert!(v["code"].as_u64().is_some(), "{v}");
    assert!(
        error_text(&v).contains("10.210.2.2"),
        "the error names the missing address: {v}"
    );

    world
        .run(&world.call("DEL", "c1", &pod.path()), &conf)
        .expect_ok("DEL");
    assert!(world.ip_files("pchk").is_empty());
}

#[test]
fn check_is_not_defined_for_0_3_x() {
    let world = World::new("pc03");
    let pod = Netns::new("pc03-p");
    let new = podwire_conf(
        "1.0.0",
        "pc03",
        "pwp103",
        "10.210.3.0/24",
        &world.data_dir(),
    );
    let add = world
        .run(&world.call("ADD", "c1", &pod.path()), &new)
        .expect_ok("ADD");
    for version in ["0.3.0", "0.3.1"] {
        let mut conf = new.clone();
        conf["cniVersion"] = json!(version);
        conf["prevResult"] = add.json();
        let out = world.run(&world.call("CHECK", "c1", &pod.path()), &conf);
        let v = spec_error(&out, 1);
        assert_eq!(v["cniVersion"], version, "the error answers in {version}");
    }
}

#[test]
fn gc_and_status_are_not_defined_for_1_0_0() {
    let world = World::new("pgc10");
    let conf = podwire_conf(
        "1.0.0",
        "pgc10",
        "pwp104",
        "10.210.4.0/24",
        &world.data_dir(),
    );
    for command in ["GC", "STATUS"] {
        let mut call = world.call(command, "", "");
        call.ifname = String::new();
        let mut stdin = conf.clone();
        stdin["cni.dev/valid-attachments"] = json!([]);
        let out = world.run(&call, &stdin);
        spec_error(&out, 1);
    }
    assert!(kstate::tree(world.data.path()).is_empty());
}

// ---------------------------------------------------------------------------
// VERSION
// ---------------------------------------------------------------------------

#[test]
fn version_lists_supported_versions_and_answers_in_the_asked_one() {
    let world = World::new("pvers");
    let mut call = world.call("VERSION", "", "");
    call.ifname = String::new();
    call.cni_path = String::new();
    for version in SUPPORTED {
        let out = call.run(
            &podwire(),
            &world.host,
            &json!({"cniVersion": version}).to_string(),
        );
        let out = out.expect_ok(&format!("VERSION {version}"));
        let v = out.json();
        assert_eq!(v["cniVersion"], version, "{v}");
        assert_eq!(v["supportedVersions"], json!(SUPPORTED), "{v}");
    }
    // With no netconf at all the answer still lists the versions.
    let v = call
        .run(&podwire(), &world.host, "")
        .expect_ok("VERSION")
        .json();
    assert_eq!(v["supportedVersions"], json!(SUPPORTED), "{v}");
    assert!(
        v["cniVersion"]
            .as_str()
            .is_some_and(|s| SUPPORTED.contains(&s))
    );
}

// ---------------------------------------------------------------------------
// GC
// ---------------------------------------------------------------------------

/// Two masqueraded attachments; GC lists only the first under `key`: the
/// second loses its IP file and its nft elements, the first keeps both.
fn gc_keeps_only_listed(key: &str, tag: &str, bridge: &str, subnet_prefix: &str) {
    let world = World::new(tag);
    let pod_a = Netns::new(&format!("{tag}-a"));
    let pod_b = Netns::new(&format!("{tag}-b"));
    let mut conf = podwire_conf(
        "1.1.0",
        tag,
        bridge,
        &format!("{subnet_prefix}.0/24"),
        &world.data_dir(),
    );
    conf["ipMasq"] = json!(true);
    let ip_a = format!("{subnet_prefix}.2");
    let ip_b = format!("{subnet_prefix}.3");
    world
        .run(&world.call("ADD", "keep", &pod_a.path()), &conf)
        .expect_ok("ADD keep");
    world
        .run(&world.call("ADD", "drop", &pod_b.path()), &conf)
        .expect_ok("ADD drop");
    assert_eq!(world.ip_files(tag), vec![ip_a.clone(), ip_b.clone()]);
    let masq = kstate::nft_map(&world.host, "masq4");
    assert_eq!(masq.len(), 2, "{masq:?}");
    assert!(masq.iter().any(|e| e.contains(&format!("\"{ip_a}\""))));
    assert!(masq.iter().any(|e| e.contains(&format!("\"{ip_b}\""))));

    let mut gc = conf.clone();
    gc[key] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let mut call = world.call("GC", "", "");
    call.ifname = String::new();
    world.run(&call, &gc).expect_ok("GC");

    assert_eq!(world.ip_files(tag), vec![ip_a.clone()], "after GC");
    let masq = kstate::nft_map(&world.host, "masq4");
    assert_eq!(masq.len(), 1, "after GC: {masq:?}");
    assert!(
        masq[0].contains(&format!("\"{ip_a}\"")),
        "the listed attachment keeps its element: {masq:?}"
    );
    // The kept container still works.
    world.host.ok(&format!("ping -c1 -W2 {ip_a}"));

    // An empty list releases everything.
    gc[key] = json!([]);
    world.run(&call, &gc).expect_ok("GC with an empty list");
    assert!(world.ip_files(tag).is_empty());
    assert!(kstate::nft_map(&world.host, "masq4").is_empty());
}

#[test]
fn gc_with_valid_attachments_releases_unlisted_only() {
    gc_keeps_only_listed("cni.dev/valid-attachments", "pgcv", "pwp105", "10.210.5");
}

#[test]
fn gc_with_draft_attachments_key_releases_unlisted_only() {
    gc_keeps_only_listed("cni.dev/attachments", "pgca", "pwp106", "10.210.6");
}

// ---------------------------------------------------------------------------
// STATUS
// ---------------------------------------------------------------------------

fn status_call(world: &World) -> Call {
    let mut call = world.call("STATUS", "", "");
    call.ifname = String::new();
    call
}

#[test]
fn status_is_ok_normally_and_50_when_the_store_is_not_writable() {
    let world = World::new("pst");
    let conf = podwire_conf("1.1.0", "pst", "pwp107", "10.210.7.0/24", &world.data_dir());
    let out = world.run(&status_call(&world), &conf).expect_ok("STATUS");
    assert!(
        out.stdout.trim().is_empty(),
        "STATUS prints nothing: {out:?}"
    );

    // A dataDir below a regular file can never be created.
    let file = world.data.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let mut bad = conf.clone();
    bad["ipam"]["dataDir"] = json!(file.join("store").display().to_string());
    let out = world.run(&status_call(&world), &bad);
    spec_error(&out, 50);
    assert!(file.is_file(), "STATUS must not replace the file");
}

#[test]
fn status_is_50_when_the_range_is_exhausted() {
    let world = World::new("pstx");
    let pod = Netns::new("pstx-p");
    let mut conf = podwire_conf(
        "1.1.0",
        "pstx",
        "pwp108",
        "10.210.8.0/24",
        &world.data_dir(),
    );
    conf["ipam"]["ranges"] = json!([[{
        "subnet": "10.210.8.0/24", "rangeStart": "10.210.8.10", "rangeEnd": "10.210.8.10"
    }]]);
    world
        .run(&status_call(&world), &conf)
        .expect_ok("STATUS before");
    world
        .run(&world.call("ADD", "only", &pod.path()), &conf)
        .expect_ok("ADD");
    assert_eq!(world.ip_files("pstx"), vec!["10.210.8.10"]);
    let out = world.run(&status_call(&world), &conf);
    spec_error(&out, 50);
    world
        .run(&world.call("DEL", "only", &pod.path()), &conf)
        .expect_ok("DEL");
    world
        .run(&status_call(&world), &conf)
        .expect_ok("STATUS after DEL");
}

// ---------------------------------------------------------------------------
// Chaining
// ---------------------------------------------------------------------------

#[test]
fn conflist_podwire_then_portmap_and_del_in_reverse() {
    let world = World::new("pch");
    let pod = Netns::new("pch-p");
    let state = tempfile::tempdir().unwrap();
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": "pch",
        "plugins": [
            {
                "type": "podwire",
                "bridge": "pwp109",
                "isGateway": true,
                "ipam": {"type": "podwire", "ranges": [[{"subnet": "10.210.9.0/24"}]], "dataDir": world.data_dir()},
            },
            {
                "type": "podwire-portmap",
                "capabilities": {"portMappings": true},
                "stateDir": state.path().display().to_string(),
            },
        ],
    });
    let runtime_config = json!({
        "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]
    });
    // What the runtime hands the plugins.
    let first = kstate::plugin_conf(&conflist, &conflist["plugins"][0], &runtime_config, None);
    assert!(
        first.get("runtimeConfig").is_none(),
        "no capability, no runtimeConfig"
    );
    let call = world.call("ADD", "c1", &pod.path());
    let first_result = world.run(&call, &first).expect_ok("ADD podwire").json();
    let second = kstate::plugin_conf(
        &conflist,
        &conflist["plugins"][1],
        &runtime_config,
        Some(&first_result),
    );
    assert_eq!(second["runtimeConfig"], runtime_config);
    let result = world
        .run(&call, &second)
        .expect_ok("ADD podwire-portmap")
        .json();
    assert_eq!(
        result, first_result,
        "portmap passes the previous result through"
    );
    assert_eq!(result["ips"][0]["address"], "10.210.9.2/24");

    // The mapping is programmed and works: the host reaches the pod's
    // port through its own address.
    let ports = kstate::nft_map(&world.host, "hostports4");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(
        ports[0].contains("18080") && ports[0].contains("10.210.9.2") && ports[0].contains("8080"),
        "{ports:?}"
    );
    let server = kstate::tcp_serve_once(&pod, 8080);
    assert_eq!(
        kstate::tcp_request(&world.host, "10.210.9.1", 18080),
        "pong"
    );
    drop(server);

    // CHECK of the whole list, each with the final result.
    for plugin in conflist["plugins"].as_array().unwrap() {
        let conf = kstate::plugin_conf(&conflist, plugin, &runtime_config, Some(&result));
        world
            .run(&world.call("CHECK", "c1", &pod.path()), &conf)
            .expect_ok(&format!("CHECK {}", plugin["type"]));
    }

    kstate::conflist_del(
        &world,
        &world.call("DEL", "c1", &pod.path()),
        &conflist,
        &runtime_config,
        Some(&result),
    )
    .unwrap_or_else(|out| panic!("DEL failed: {out:?}"));
    assert!(kstate::nft_map(&world.host, "hostports4").is_empty());
    assert!(world.ip_files("pch").is_empty());
    assert!(kstate::link(&pod, "eth0").is_none());
    assert!(world.host_links("veth").is_empty());
}

#[test]
fn conflist_with_loopback_alone_brings_lo_up() {
    let world = World::new("plo");
    let pod = Netns::new("plo-p");
    pod.ok("ip link set lo down");
    assert!(!kstate::has_flag(&kstate::link(&pod, "lo").unwrap(), "UP"));
    let conflist = json!({
        "cniVersion": "1.1.0",
        "name": "plo",
        "plugins": [{"type": "podwire-loopback"}],
    });
    let call = world.call("ADD", "c1", &pod.path());
    let result = kstate::conflist_add(&world, &call, &conflist, &json!({}))
        .unwrap_or_else(|out| panic!("ADD failed: {out:?}"));
    let lo = kstate::link(&pod, "lo").unwrap();
    assert!(kstate::has_flag(&lo, "UP"), "{lo}");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["interfaces"][0]["name"], "lo");
    assert_eq!(result["interfaces"][0]["sandbox"], pod.path().as_str());
    pod.ok("ping -c1 -W1 127.0.0.1");
    let conf = kstate::plugin_conf(
        &conflist,
        &conflist["plugins"][0],
        &json!({}),
        Some(&result),
    );
    world
        .run(&world.call("CHECK", "c1", &pod.path()), &conf)
        .expect_ok("CHECK");
    kstate::conflist_del(
        &world,
        &world.call("DEL", "c1", &pod.path()),
        &conflist,
        &json!({}),
        Some(&result),
    )
    .unwrap_or_else(|out| panic!("DEL failed: {out:?}"));
    // Nothing was created on the host.
    assert_eq!(kstate::link_names(&world.host), vec!["lo"]);
}

// ---------------------------------------------------------------------------
// Errors: spec codes, and nothing changed on the host
// ---------------------------------------------------------------------------

/// A world with one attachment already in place (so a bridge, IP files and
/// nft elements exist) and an empty pod for the failing calls.
struct Fixture {
    world: World,
    pod: Netns,
    _base: Netns,
    conf: Value,
}

impl Fixture {
    fn new(tag: &str, bridge: &str, subnet: &str) -> Fixture {
        let world = World::new(tag);
        let base = Netns::new(&format!("{tag}-b"));
        let pod = Netns::new(&format!("{tag}-p"));
        let mut conf = podwire_conf("1.1.0", tag, bridge, subnet, &world.data_dir());
        conf["ipMasq"] = json!(true);
        world
            .run(&world.call("ADD", "base", &base.path()), &conf)
            .expect_ok("baseline ADD");
        assert_eq!(world.ip_files(tag).len(), 1);
        assert_eq!(world.nft_elements(), 1);
        Fixture {
            world,
            pod,
            _base: base,
            conf,
        }
    }

    fn snapshot(&self) -> Snapshot {
        kstate::snapshot(&self.world, &self.pod)
    }

    fn add(&self) -> Call {
        self.world.call("ADD", "c1", &self.pod.path())
    }

    /// Runs podwire with `call` and raw `stdin`; asserts the spec error and
    /// that neither the host nor the pod changed.
    fn fails(&self, call: &Call, stdin: &str, code: u64) -> Value {
        let before = self.snapshot();
        let out = call.run(&podwire(), &self.world.host, stdin);
        let v = spec_error(&out, code);
        assert_eq!(
            self.snapshot(),
            before,
            "a failed call changed the host: {v}"
        );
        v
    }
}

#[test]
fn bad_json_is_code_6() {
    let fx = Fixture::new("pej", "pwp110", "10.210.10.0/24");
    for stdin in ["{not json", "", "[1, 2]", "\"text\""] {
        let v = fx.fails(&fx.add(), stdin, 6);
        assert!(v.get("details").is_some(), "decode errors say why: {v}");
    }
}

#[test]
fn missing_environment_variables_are_code_4_and_each_is_named() {
    let fx = Fixture::new("pev", "pwp111", "10.210.11.0/24");
    let stdin = fx.conf.to_string();
    let all = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"];
    let mut none = fx.add();
    none.container_id.clear();
    none.netns.clear();
    none.ifname.clear();
    none.cni_path.clear();
    let v = fx.fails(&none, &stdin, 4);
    for var in all {
        assert!(error_text(&v).contains(var), "{var} not named in {v}");
    }
    assert_eq!(v["cniVersion"], "1.1.0", "answers in the netconf's version");
    for missing in all {
        let mut call = fx.add();
        match missing {
            "CNI_CONTAINERID" => call.container_id.clear(),
            "CNI_NETNS" => call.netns.clear(),
            "CNI_IFNAME" => call.ifname.clear(),
            _ => call.cni_path.clear(),
        }
        let v = fx.fails(&call, &stdin, 4);
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(msg.contains(missing), "{missing} not named in {v}");
        for other in all.iter().filter(|o| **o != missing) {
            assert!(!msg.contains(other), "{other} is set but named in {v}");
        }
    }
    // An unknown command is an invalid environment too.
    let mut foo = fx.add();
    foo.command = "FOO".into();
    let v = fx.fails(&foo, &stdin, 4);
    assert!(error_text(&v).contains("FOO"), "{v}");
    // CHECK needs the same four; DEL can do without CNI_NETNS.
    let mut check = fx.add();
    check.command = "CHECK".into();
    check.netns.clear();
    let v = fx.fails(&check, &stdin, 4);
    assert!(error_text(&v).contains("CNI_NETNS"), "{v}");
    let mut del = fx.world.call("DEL", "ghost", "");
    del.cni_path.clear();
    let v = fx.fails(&del, &stdin, 4);
    assert!(error_text(&v).contains("CNI_PATH"), "{v}");
    assert!(
        !v["msg"].as_str().unwrap_or("").contains("CNI_NETNS"),
        "{v}"
    );
}

#[test]
fn unknown_cni_version_is_code_1() {
    let fx = Fixture::new("peu", "pwp112", "10.210.12.0/24");
    for version in ["0.2.0", "9.9.9", "1.0", ""] {
        let mut conf = fx.conf.clone();
        conf["cniVersion"] = json!(version);
        fx.fails(&fx.add(), &conf.to_string(), 1);
    }
}

#[test]
fn invalid_cidr_in_ranges_is_code_7() {
    let fx = Fixture::new("pec", "pwp113", "10.210.13.0/24");
    for subnet in [
        "10.210.13.0/33",
        "10.210.13.0",
        "not-a-cidr",
        "10.210.13.5/24",
    ] {
        let mut conf = fx.conf.clone();
        conf["ipam"]["ranges"] = json!([[{"subnet": subnet}]]);
        let v = fx.fails(&fx.add(), &conf.to_string(), 7);
        assert!(error_text(&v).contains(subnet), "{subnet} not named: {v}");
    }
}

#[test]
fn range_start_outside_the_subnet_is_code_7() {
    let fx = Fixture::new("pes", "pwp114", "10.210.14.0/24");
    let mut conf = fx.conf.clone();
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.210.14.0/24", "rangeStart": "10.210.15.10"}]]);
    let v = fx.fails(&fx.add(), &conf.to_string(), 7);
    assert!(error_text(&v).contains("rangeStart"), "{v}");
    let mut conf = fx.conf.clone();
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.210.14.0/24", "rangeEnd": "10.210.99.1"}]]);
    fx.fails(&fx.add(), &conf.to_string(), 7);
}

#[test]
fn bad_container_id_is_code_4() {
    let fx = Fixture::new("pei", "pwp115", "10.210.15.0/24");
    for id in ["bad/id", "-x", "a b", "semi;colon", "../etc"] {
        let mut call = fx.add();
        call.container_id = id.into();
        let v = fx.fails(&call, &fx.conf.to_string(), 4);
        assert!(error_text(&v).contains("CNI_CONTAINERID"), "{id}: {v}");
    }
}

#[test]
fn bad_ifname_is_code_4() {
    let fx = Fixture::new("pef", "pwp116", "10.210.16.0/24");
    for ifname in ["eth/0", "abcdefghijklmnop", "a b", "eth:0", ".", ".."] {
        let mut call = fx.add();
        call.ifname = ifname.into();
        let v = fx.fails(&call, &fx.conf.to_string(), 4);
        assert!(error_text(&v).contains("CNI_IFNAME"), "{ifname}: {v}");
    }
}

#[test]
fn unknown_plugin_type_is_code_7() {
    let fx = Fixture::new("pet", "pwp117", "10.210.17.0/24");
    let mut conf = fx.conf.clone();
    conf["type"] = json!("no-such-plugin");
    let v = fx.fails(&fx.add(), &conf.to_string(), 7);
    assert!(error_text(&v).contains("no-such-plugin"), "{v}");
}

#[test]
fn missing_netns_is_code_3() {
    let fx = Fixture::new("pen", "pwp118", "10.210.18.0/24");
    let mut call = fx.add();
    call.netns = "/var/run/netns/podwire-test-no-such-netns".into();
    let v = fx.fails(&call, &fx.conf.to_string(), 3);
    assert!(error_text(&v).contains("no-such-netns"), "{v}");
    // Also for the chained plugins that enter the namespace.
    let mut lo = fx.conf.clone();
    lo["type"] = json!("podwire-loopback");
    fx.fails(&call, &lo.to_string(), 3);
}

#[test]
fn error_replies_answer_in_the_asked_version() {
    let fx = Fixture::new("pea", "pwp119", "10.210.19.0/24");
    for version in SUPPORTED {
        let mut conf = fx.conf.clone();
        conf["cniVersion"] = json!(version);
        conf["ipam"]["ranges"] = json!([[{"subnet": "bogus"}]]);
        let v = fx.fails(&fx.add(), &conf.to_string(), 7);
        assert_eq!(v["cniVersion"], version, "{v}");
    }
    // The baseline attachment is untouched by all of it.
    fx.world.host.ok("ping -c1 -W2 10.210.19.2");
}

#[test]
fn invalid_bridge_names_are_code_7() {
    let fx = Fixture::new("pebr", "pwp120", "10.210.20.0/24");
    for name in [
        "abcdefghijklmnop",
        "a-much-longer-bridge-name",
        "../x",
        "a/b",
        "br x",
        "br\tx",
        "br:0",
        ".",
        "..",
        "br\u{0}x",
    ] {
        let mut conf = fx.conf.clone();
        conf["bridge"] = json!(name);
        let v = fx.fails(&fx.add(), &conf.to_string(), 7);
        assert!(error_text(&v).contains("bridge"), "{name:?}: {v}");
        // DEL names the same configuration error instead of failing later.
        let del = fx.world.call("DEL", "c1", &fx.pod.path());
        fx.fails(&del, &conf.to_string(), 7);
    }
}

#[test]
fn cni_netns_that_is_not_a_network_namespace_is_code_4() {
    let fx = Fixture::new("penn", "pwp121", "10.210.21.0/24");
    let scratch = podwire_testsupport::TempDir::new("cni-netns");
    let file = scratch.path().join("not-a-netns");
    std::fs::write(&file, b"").expect("regular file");
    let dir = scratch.path().display().to_string();
    let file = file.display().to_string();
    for path in [file.as_str(), dir.as_str(), "/proc/self/ns/uts"] {
        for kind in ["podwire", "podwire-loopback"] {
            let mut conf = fx.conf.clone();
            conf["type"] = json!(kind);
            let mut call = fx.add();
            call.netns = path.to_string();
            let v = fx.fails(&call, &conf.to_string(), 4);
            assert!(error_text(&v).contains("CNI_NETNS"), "{path} {kind}: {v}");
            assert!(error_text(&v).contains(path), "{path} {kind}: {v}");
            call.command = "CHECK".into();
            let mut check = conf.clone();
            check["prevResult"] = json!({"cniVersion": "1.1.0", "ips": []});
            fx.fails(&call, &check.to_string(), 4);
        }
        // DEL never fails for it: there is nothing in such a namespace.
        let del = Call {
            command: "DEL".into(),
            netns: path.to_string(),
            ..fx.add()
        };
        let before = fx.snapshot();
        del.run(&podwire(), &fx.world.host, &fx.conf.to_string())
            .expect_ok(&format!("DEL with CNI_NETNS={path}"));
        assert_eq!(
            fx.snapshot(),
            before,
            "DEL of an unknown container changed the host"
        );
    }
}

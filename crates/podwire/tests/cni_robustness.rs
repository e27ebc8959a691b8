//! Robustness of the `podwire` CNI plugin, run as a runtime runs it: many
//! concurrent ADDs into one network, hundreds of ADD/DEL cycles, DEL in every
//! awkward situation (twice, unknown container, namespace gone, no
//! namespace), an exhausted range, SIGKILL in the middle of ADD followed by
//! GC, rollback of failed ADDs, and malformed or random input. Every test
//! checks the kernel and disk state it leaves: IPAM files, attachment
//! records, veths on the bridge and the nftables map elements.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::rp::{self, ChildGuard, Prng};
use common::*;
use serde_json::{Value, json};

const V: &str = "1.1.0";

fn ips_of(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `podwire_conf` with masquerade and one published TCP port.
fn conf_with_firewall(world: &World, name: &str, bridge: &str, subnet: &str, port: u16) -> Value {
    let mut conf = podwire_conf(V, name, bridge, subnet, &world.data_dir());
    conf["ipMasq"] = json!(true);
    conf["capabilities"] = json!({"portMappings": true});
    conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
    conf
}

fn gc_conf(conf: &Value) -> Value {
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    if let Some(obj) = gc.as_object_mut() {
        obj.remove("runtimeConfig");
    }
    gc
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.sh(&format!("ip link show dev {name}")).status.success()
}

/// Asserts the network holds nothing: no IP file, no attachment record, no
/// veth in the host namespace, no port on the bridge, no map element.
fn assert_empty(world: &World, network: &str, bridge: &str) {
    assert_eq!(world.ip_files(network), Vec::<String>::new(), "IP files");
    assert_eq!(
        rp::state_files(world, network),
        Vec::<String>::new(),
        "attachment records"
    );
    assert_eq!(world.host_links("veth"), Vec::<String>::new(), "host veths");
    assert_eq!(
        rp::bridge_ports(world, bridge),
        Vec::<String>::new(),
        "bridge ports"
    );
    assert_eq!(world.nft_elements(), 0, "nftables map elements");
}

/// A host snapshot without the IPAM round-robin cursors, which a failed
/// allocation may legitimately advance (host-local does the same).
fn snapshot_without_cursors(world: &World) -> String {
    rp::host_snapshot(world)
        .lines()
        .filter(|l| !l.contains("last_reserved_ip."))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sixty_four_concurrent_adds_get_distinct_addresses_and_del_frees_all() {
    const N: usize = 64;
    let world = World::new("r64");
    let conf = podwire_conf(V, "r64", "pwr1", "10.210.0.0/24", &world.data_dir());
    let pods: Vec<Netns> = (0..N).map(|i| Netns::new(&format!("r64-{i}"))).collect();

    let results: Vec<PluginOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (world, conf) = (&world, &conf);
                s.spawn(move || world.run(&world.call("ADD", &format!("c{i}"), &pod.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = BTreeSet::new();
    for (i, out) in results.into_iter().enumerate() {
        let out = out.expect_ok(&format!("concurrent ADD c{i}"));
        let got = ips_of(&out.json());
        assert_eq!(got.len(), 1, "c{i}: {}", out.stdout);
        assert!(got[0].starts_with("10.210.0."), "c{i}: {}", out.stdout);
        // The address really is on the pod's eth0.
        let addr = pods[i].ok("ip -o -4 addr show dev eth0");
        assert!(addr.contains(&format!("{}/24", got[0])), "c{i}: {addr}");
        ips.insert(got[0].clone());
    }
    assert_eq!(ips.len(), N, "addresses handed out twice: {ips:?}");
    let files: BTreeSet<String> = world.ip_files("r64").into_iter().collect();
    assert_eq!(files, ips, "IP files differ from the results");
    assert_eq!(world.host_links("veth").len(), N);
    let ports = rp::bridge_ports(&world, "pwr1");
    assert_eq!(ports.len(), N, "veths on pwr1: {ports:?}");
    assert!(ports.iter().all(|p| p.starts_with("veth")), "{ports:?}");
    assert_eq!(rp::state_files(&world, "r64").len(), N);

    let dels: Vec<PluginOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (world, conf) = (&world, &conf);
                s.spawn(move || world.run(&world.call("DEL", &format!("c{i}"), &pod.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in dels.into_iter().enumerate() {
        out.expect_ok(&format!("concurrent DEL c{i}"));
        assert!(!has_link(&pods[i], "eth0"), "c{i} still has eth0");
    }
    assert_empty(&world, "r64", "pwr1");
}

#[test]
fn five_hundred_add_del_cycles_at_sixteen_way_concurrency_leave_nothing() {
    const THREADS: usize = 16;
    const CYCLES: usize = 500;
    let world = World::new("r500");
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let world = &world;
            s.spawn(move || {
                let cycles = CYCLES / THREADS + usize::from(t < CYCLES % THREADS);
                let port = 20000 + t as u16;
                let conf = conf_with_firewall(world, "r500", "pwr2", "10.211.0.0/24", port);
                for k in 0..cycles {
                    let pod = Netns::new(&format!("r500-{t}-{k}"));
                    let id = format!("s{t}-{k}");
                    let add = world.run(&world.call("ADD", &id, &pod.path()), &conf);
                    let add = add.expect_ok(&format!("ADD {id}"));
                    assert_eq!(ips_of(&add.json()).len(), 1, "{id}: {}", add.stdout);
                    if k == 0 {
                        // This container's elements exist until its DEL.
                        assert!(world.nft_elements() >= 3, "{id}: no map elements");
                    }
                    world
                        .run(&world.call("DEL", &id, &pod.path()), &conf)
                        .expect_ok(&format!("DEL {id}"));
                    drop(pod);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    eprintln!("{CYCLES} ADD/DEL cycles at {THREADS}-way concurrency took {elapsed:?}");
    assert!(rp::nft_table_exists(&world), "the table was never created");
    assert_empty(&world, "r500", "pwr2");
}

#[test]
fn del_twice_succeeds() {
    let world = World::new("rdel2");
    let pod = Netns::new("rdel2-p");
    let conf = conf_with_firewall(&world, "rdel2", "pwr3", "10.212.0.0/24", 18080);
    world
        .run(&world.call("ADD", "c1", &pod.path()), &conf)
        .expect_ok("ADD");
    assert_eq!(world.ip_files("rdel2").len(), 1);
    assert!(world.nft_elements() > 0);
    for round in 1..=2 {
        let del = world.run(&world.call("DEL", "c1", &pod.path()), &conf);
        del.expect_ok(&format!("DEL #{round}"));
        assert_empty(&world, "rdel2", "pwr3");
        assert!(!has_link(&pod, "eth0"));
    }
}

#[test]
fn del_of_a_container_never_added_succeeds_and_touches_nothing() {
    let world = World::new("rdelu");
    let pod = Netns::new("rdelu-p");
    let other = Netns::new("rdelu-o");
    let conf = conf_with_firewall(&world, "rdelu", "pwr4", "10.212.1.0/24", 18080);
    // Nothing exists yet: no store, no records, no table, no bridge.
    world
        .run(&world.call("DEL", "ghost", &pod.path()), &conf)
        .expect_ok("DEL on an empty host");
    assert_empty(&world, "rdelu", "pwr4");

    world
        .run(&world.call("ADD", "real", &other.path()), &conf)
        .expect_ok("ADD real");
    let before = rp::host_snapshot(&world);
    world
        .run(&world.call("DEL", "ghost", &pod.path()), &conf)
        .expect_ok("DEL of an unknown container");
    rp::assert_same(
        &before,
        &rp::host_snapshot(&world),
        "DEL ghost changed the host",
    );
    assert!(has_link(&other, "eth0"));
    world
        .run(&world.call("DEL", "real", &other.path()), &conf)
        .expect_ok("DEL real");
    assert_empty(&world, "rdelu", "pwr4");
}

#[test]
fn del_after_the_pod_namespace_is_gone_releases_everything() {
    let world = World::new("rdelg");
    let pod = Netns::new("rdelg-p");
    let conf = conf_with_firewall(&world, "rdelg", "pwr5", "10.212.2.0/24", 18080);
    let path = pod.path();
    world
        .run(&world.call("ADD", "c1", &path), &conf)
        .expect_ok("ADD");
    assert_eq!(world.ip_files("rdelg"), vec!["10.212.2.2"]);
    drop(pod);
    assert!(!Path::new(&path).exists());
    world
        .run(&world.call("DEL", "c1", &path), &conf)
        .expect_ok("DEL with a namespace that no longer exists");
    assert_eq!(world.ip_files("rdelg"), Vec::<String>::new());
    assert_eq!(rp::state_files(&world, "rdelg"), Vec::<String>::new());
    assert_eq!(world.nft_elements(), 0);
    // The kernel destroys the namespace (and the veth pair) asynchronously.
    assert!(
        rp::wait_for(100, Duration::from_millis(20), || world
            .host_links("veth")
            .is_empty()),
        "host veth left: {:?}",
        world.host_links("veth")
    );
    // And the address can be handed out again.
    let pod2 = Netns::new("rdelg-p2");
    let add = world
        .run(&world.call("ADD", "c2", &pod2.path()), &conf)
        .expect_ok("ADD after DEL");
    assert_eq!(ips_of(&add.json()).len(), 1);
    world
        .run(&world.call("DEL", "c2", &pod2.path()), &conf)
        .expect_ok("DEL c2");
    assert_empty(&world, "rdelg", "pwr5");
}

#[test]
fn del_with_an_empty_cni_netns_succeeds_and_removes_the_pair() {
    let world = World::new("rdele");
    let pod = Netns::new("rdele-p");
    let conf = conf_with_firewall(&world, "rdele", "pwr6", "10.212.3.0/24", 18080);
    world
        .run(&world.call("ADD", "c1", &pod.path()), &conf)
        .expect_ok("ADD");
    assert!(has_link(&pod, "eth0"));
    // An empty value is not passed at all, as runtimes do.
    world
        .run(&world.call("DEL", "c1", ""), &conf)
        .expect_ok("DEL without CNI_NETNS");
    assert_empty(&world, "rdele", "pwr6");
    assert!(!has_link(&pod, "eth0"), "the pod kept its end of the pair");
}

#[test]
fn exhausted_range_fails_clearly_and_leaves_nothing() {
    let world = World::new("rfull");
    let mut conf = conf_with_firewall(&world, "rfull", "pwr7", "10.213.0.0/29", 18080);
    conf["runtimeConfig"] = json!({});
    conf["ipam"]["ranges"] = json!([[{
        "subnet": "10.213.0.0/29",
        "rangeStart": "10.213.0.2",
        "rangeEnd": "10.213.0.3",
    }]]);
    let pods: Vec<Netns> = (0..3).map(|i| Netns::new(&format!("rfull-{i}"))).collect();
    for (i, pod) in pods.iter().take(2).enumerate() {
        world
            .run(&world.call("ADD", &format!("c{i}"), &pod.path()), &conf)
            .expect_ok("ADD within the range");
    }
    assert_eq!(world.ip_files("rfull"), vec!["10.213.0.2", "10.213.0.3"]);
    let before = rp::host_snapshot(&world);
    let elements = world.nft_elements();

    let third = world.run(&world.call("ADD", "c2", &pods[2].path()), &conf);
    assert_eq!(
        third.code, 1,
        "third ADD: {} {}",
        third.stdout, third.stderr
    );
    let err = third.json();
    assert!(err["code"].as_u64().is_some(), "{err}");
    let text = format!("{} {}", err["msg"], err["details"]);
    assert!(
        text.contains("10.213.0.2-10.213.0.3"),
        "the error does not name the range: {text}"
    );
    assert!(
        text.contains("no free address"),
        "the error does not say why: {text}"
    );
    rp::assert_same(
        &before,
        &rp::host_snapshot(&world),
        "the failed ADD changed the host",
    );
    assert_eq!(world.nft_elements(), elements);
    assert_eq!(rp::bridge_ports(&world, "pwr7").len(), 2);
    assert_eq!(rp::state_files(&world, "rfull").len(), 2);
    assert!(!has_link(&pods[2], "eth0"));

    // Freeing one address makes room again.
    world
        .run(&world.call("DEL", "c0", &pods[0].path()), &conf)
        .expect_ok("DEL c0");
    let again = world
        .run(&world.call("ADD", "c2", &pods[2].path()), &conf)
        .expect_ok("ADD after a DEL");
    assert_eq!(ips_of(&again.json()), vec!["10.213.0.2"]);
    for (i, pod) in pods.iter().enumerate().skip(1) {
        world
            .run(&world.call("DEL", &format!("c{i}"), &pod.path()), &conf)
            .expect_ok("DEL");
    }
    assert_empty(&world, "rfull", "pwr7");
}

/// How a test makes an ADD stall at a chosen point.
enum Stall {
    /// `ipam.resolvConf` is a FIFO nobody writes: the ADD blocks right after
    /// the IP file is written, before any link exists.
    AfterIpam,
    /// `nft` on PATH is a stand-in that never returns: the ADD blocks while
    /// creating the firewall table, after the veth pair exists.
    InFirewallSetup,
    /// The attachment record's temporary file is a FIFO: the ADD blocks
    /// while saving the record, which happens right after IPAM and before
    /// any link or map element exists.
    BeforeStateSave,
}

/// Starts an ADD that stalls at `stall`, SIGKILLs it there, checks what it
/// left, then runs GC with no valid attachment and expects nothing left.
fn sigkill_mid_add_then_gc(tag: &str, bridge: &str, subnet: &str, stall: Stall) {
    let world = World::new(tag);
    let pod = Netns::new(&format!("{tag}-p"));
    let mut conf = conf_with_firewall(&world, tag, bridge, subnet, 18080);
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut fake_bin = None;
    match stall {
        Stall::AfterIpam => {
            let fifo = scratch.path().join("resolv.conf");
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("mkfifo");
            conf["ipam"]["resolvConf"] = json!(fifo);
        }
        Stall::InFirewallSetup => {
            let nft = scratch.path().join("nft");
            std::fs::write(&nft, "#!/bin/sh\nexec sleep 60\n").expect("write fake nft");
            std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod fake nft");
            fake_bin = Some(scratch.path().to_path_buf());
        }
        Stall::BeforeStateSave => {
            let dir = world.data.path().join("podwire-state").join(tag);
            std::fs::create_dir_all(&dir).expect("state dir");
            nix::unistd::mkfifo(
                &dir.join("c1:eth0.tmp"),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .expect("mkfifo");
        }
    }
    let host_veth = podwire_cni::bridge::host_veth_name(tag, "c1", "eth0");
    let call = world.call("ADD", "c1", &pod.path());
    let mut add = rp::spawn_plugin(
        &world,
        &call,
        conf.to_string().as_bytes(),
        "podwire",
        fake_bin.as_deref(),
    );
    // Wait (bounded) until the ADD reached the stall point.
    let reached = rp::wait_for(500, Duration::from_millis(10), || match stall {
        Stall::AfterIpam => !world.ip_files(tag).is_empty(),
        Stall::InFirewallSetup => world.host_links(&host_veth).len() == 1,
        Stall::BeforeStateSave => !world.ip_files(tag).is_empty(),
    });
    assert!(add.running(), "the ADD was expected to stall, but it ended");
    assert!(reached, "the ADD never reached its stall point");
    // Give it time to block where it is meant to, then kill -9.
    std::thread::sleep(Duration::from_millis(100));
    assert!(add.running(), "the ADD ended instead of stalling");
    add.kill();
    let (status, _, _) = add
        .wait_timeout(Duration::from_secs(5))
        .expect("killed ADD did not end");
    assert!(status.code().is_none(), "ADD was not killed: {status:?}");

    // The kill really left a half-done attachment behind.
    assert_eq!(world.ip_files(tag).len(), 1, "no IP file after the kill");
    match stall {
        Stall::AfterIpam => assert!(world.host_links("veth").is_empty()),
        Stall::InFirewallSetup => {
            assert_eq!(world.host_links("veth"), vec![host_veth.clone()]);
            assert_eq!(world.nft_elements(), 0);
        }
        Stall::BeforeStateSave => {
            assert!(world.host_links("veth").is_empty());
            assert_eq!(world.nft_elements(), 0);
            // Our FIFO is not the plugin's doing.
            let dir = world.data.path().join("podwire-state").join(tag);
            std::fs::remove_file(dir.join("c1:eth0.tmp")).expect("remove fifo");
        }
    }
    // Once links exist, the attachment record (what GC undoes) exists too.
    if matches!(stall, Stall::InFirewallSetup) {
        assert_eq!(
            rp::state_files(&world, tag).len(),
            1,
            "no attachment record after the kill"
        );
    }

    let gc = world.run(&world.call("GC", "", ""), &gc_conf(&conf));
    gc.expect_ok("GC");
    assert_eq!(
        world.ip_files(tag),
        Vec::<String>::new(),
        "IP files after GC"
    );
    assert_eq!(rp::state_files(&world, tag), Vec::<String>::new());
    assert_eq!(world.nft_elements(), 0, "map elements left after GC");
    assert_eq!(
        world.host_links("veth"),
        Vec::<String>::new(),
        "host veth left after GC"
    );
}

#[test]
fn sigkill_right_after_ipam_then_gc_leaves_no_allocation() {
    sigkill_mid_add_then_gc("rkill1", "pwr8", "10.214.0.0/24", Stall::AfterIpam);
}

#[test]
fn sigkill_during_firewall_setup_then_gc_leaves_nothing() {
    sigkill_mid_add_then_gc("rkill2", "pwr9", "10.214.1.0/24", Stall::InFirewallSetup);
}

#[test]
fn sigkill_while_the_attachment_record_is_saved_then_gc_leaves_nothing() {
    sigkill_mid_add_then_gc("rkill3", "pwr10", "10.214.2.0/24", Stall::BeforeStateSave);
}

#[test]
fn add_into_a_namespace_that_already_has_eth0_rolls_back() {
    let world = World::new("rrb1");
    let pod = Netns::new("rrb1-p");
    let other = Netns::new("rrb1-o");
    let conf = conf_with_firewall(&world, "rrb1", "pwr11", "10.215.0.0/24", 18080);
    world
        .run(&world.call("ADD", "ok", &other.path()), &conf)
        .expect_ok("ADD of another container");
    // eth0 taken by a veth pair that lives entirely inside the pod.
    pod.ok("ip link add eth0 type veth peer name pweth0peer");
    let pod_before = rp::ns_snapshot(&pod);
    let before = snapshot_without_cursors(&world);
    let elements = world.nft_elements();

    let out = world.run(&world.call("ADD", "c1", &pod.path()), &conf);
    assert_eq!(out.code, 1, "ADD over an existing eth0: {}", out.stdout);
    let text = out.json().to_string();
    assert!(
        text.contains("eth0"),
        "the error does not name eth0: {text}"
    );
    rp::assert_same(
        &before,
        &snapshot_without_cursors(&world),
        "the failed ADD left something behind",
    );
    assert_eq!(world.nft_elements(), elements);
    assert_eq!(world.ip_files("rrb1").len(), 1);
    assert_eq!(rp::state_files(&world, "rrb1").len(), 1);
    // The pod's own eth0 is untouched.
    rp::assert_same(&pod_before, &rp::ns_snapshot(&pod), "the pod changed");

    world
        .run(&world.call("DEL", "ok", &other.path()), &conf)
        .expect_ok("DEL");
    assert_empty(&world, "rrb1", "pwr11");
}

#[test]
fn add_whose_firewall_setup_fails_rolls_back_the_veth_and_the_address() {
    let world = World::new("rrb2");
    let pod = Netns::new("rrb2-p");
    let other = Netns::new("rrb2-o");
    // A first container without firewall needs: bridge and gateway exist.
    let plain = podwire_conf(V, "rrb2", "pwr12", "10.215.1.0/24", &world.data_dir());
    world
        .run(&world.call("ADD", "ok", &other.path()), &plain)
        .expect_ok("ADD without firewall");
    let conf = conf_with_firewall(&world, "rrb2", "pwr12", "10.215.1.0/24", 18080);
    let scratch = tempfile::tempdir().expect("tempdir");
    let nft = scratch.path().join("nft");
    std::fs::write(
        &nft,
        "#!/bin/sh\necho 'nft: simulated failure' >&2\nexit 1\n",
    )
    .expect("write fake nft");
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let before = snapshot_without_cursors(&world);
    let pod_before = rp::ns_snapshot(&pod);

    let call = world.call("ADD", "c1", &pod.path());
    let out = rp::spawn_plugin(
        &world,
        &call,
        conf.to_string().as_bytes(),
        "podwire",
        Some(scratch.path()),
    )
    .output(Duration::from_secs(30), "ADD");
    assert_eq!(out.code, 1, "ADD with a failing nft: {}", out.stdout);
    assert!(out.json()["msg"].as_str().is_some(), "{}", out.stdout);
    rp::assert_same(
        &before,
        &snapshot_without_cursors(&world),
        "the failed ADD left something behind",
    );
    rp::assert_same(&pod_before, &rp::ns_snapshot(&pod), "the pod changed");
    assert_eq!(world.ip_files("rrb2").len(), 1);
    assert_eq!(world.nft_elements(), 0);

    world
        .run(&world.call("DEL", "ok", &other.path()), &plain)
        .expect_ok("DEL");
    assert_empty(&world, "rrb2", "pwr12");
}

/// A plugin's environment, variable by variable.
type EnvVars = Vec<(&'static str, String)>;

/// Runs the podwire plugin in the world's host namespace with exactly the
/// environment `env` (empty values are set, not left out).
fn run_raw(world: &World, env: &[(&str, &str)], stdin: &str) -> PluginOutput {
    let mut cmd = rp::command_in(&world.host.path(), &world.cni_dir.path().join("podwire"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in env {
        cmd.env(key, value);
    }
    ChildGuard::spawn(cmd, Some(stdin.as_bytes())).output(Duration::from_secs(30), "plugin")
}

#[test]
fn malformed_input_gets_its_spec_code_and_changes_nothing() {
    let world = World::new("rbad");
    let pod = Netns::new("rbad-p");
    let fresh = Netns::new("rbad-f");
    let good = conf_with_firewall(&world, "rbad", "pwr13", "10.216.0.0/24", 18080);
    world
        .run(&world.call("ADD", "c1", &pod.path()), &good)
        .expect_ok("ADD");
    let before = rp::host_snapshot(&world);
    let pod_before = rp::ns_snapshot(&pod);
    let fresh_before = rp::ns_snapshot(&fresh);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c.to_string()
    };
    let good_text = good.to_string();
    let bad_json = good_text[..good_text.len() / 2].to_string();
    let bad_version = with(&|c| c["cniVersion"] = json!("9.9.9"));
    let bad_cidr = with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "10.216.0.0/33"}]]));
    let not_cidr = with(&|c| c["ipam"]["ranges"] = json!([[{"subnet": "banana"}]]));
    let outside = with(&|c| {
        c["ipam"]["ranges"] = json!([[{"subnet": "10.216.0.0/24", "rangeStart": "10.217.0.5"}]])
    });
    let cni_path = world.cni_dir.path().display().to_string();
    let (pod_ns, fresh_ns) = (pod.path(), fresh.path());
    // The full environment of an ADD into `fresh` and a DEL of c1.
    let add = |id: &'static str| -> EnvVars {
        vec![
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", fresh_ns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", cni_path.clone()),
        ]
    };
    let del = |id: &'static str| -> EnvVars {
        vec![
            ("CNI_COMMAND", "DEL".into()),
            ("CNI_CONTAINERID", id.into()),
            ("CNI_NETNS", pod_ns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", cni_path.clone()),
        ]
    };
    let without = |mut env: EnvVars, key: &str| {
        env.retain(|(k, _)| *k != key);
        env
    };
    let set = |mut env: EnvVars, key: &str, value: &str| {
        for (k, v) in env.iter_mut() {
            if *k == key {
                *v = value.to_string();
            }
        }
        env
    };
    let cases: Vec<(&str, EnvVars, &str, u64)> = vec![
        ("ADD bad JSON", add("c2"), &bad_json, 6),
        ("DEL bad JSON", del("c1"), &bad_json, 6),
        ("ADD not an object", add("c2"), "[1]", 6),
        ("ADD empty stdin", add("c2"), "", 6),
        (
            "ADD without CNI_NETNS",
            without(add("c2"), "CNI_NETNS"),
            &good_text,
            4,
        ),
        (
            "ADD without CNI_CONTAINERID",
            without(add("c2"), "CNI_CONTAINERID"),
            &good_text,
            4,
        ),
        (
            "DEL without CNI_IFNAME",
            without(del("c1"), "CNI_IFNAME"),
            &good_text,
            4,
        ),
        (
            "DEL without CNI_CONTAINERID",
            without(del("c1"), "CNI_CONTAINERID"),
            &good_text,
            4,
        ),
        (
            "ADD without CNI_PATH",
            without(add("c2"), "CNI_PATH"),
            &good_text,
            4,
        ),
        (
            "empty CNI_COMMAND",
            set(add("c2"), "CNI_COMMAND", ""),
            &good_text,
            4,
        ),
        (
            "unknown CNI_COMMAND",
            set(add("c2"), "CNI_COMMAND", "FROB"),
            &good_text,
            4,
        ),
        ("ADD unknown version", add("c2"), &bad_version, 1),
        ("DEL unknown version", del("c1"), &bad_version, 1),
        ("ADD prefix /33", add("c2"), &bad_cidr, 7),
        ("ADD subnet banana", add("c2"), &not_cidr, 7),
        ("DEL subnet banana", del("c1"), &not_cidr, 7),
        ("ADD range outside subnet", add("c2"), &outside, 7),
        ("DEL range outside subnet", del("c1"), &outside, 7),
        ("ADD container ID with /", add("bad/id"), &good_text, 4),
        ("ADD container ID with space", add("a b"), &good_text, 4),
        ("ADD container ID starting with -", add("-x"), &good_text, 4),
        ("DEL container ID ../c1", del("../c1"), &good_text, 4),
    ];
    for (what, env, stdin, code) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_raw(&world, &env, stdin);
        assert_eq!(out.code, 1, "{what}: exit {} {}", out.code, out.stdout);
        let err = out.json();
        assert_eq!(err["code"], code, "{what}: {err}");
        assert!(
            err["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no msg in {err}"
        );
        rp::assert_same(&before, &rp::host_snapshot(&world), what);
        rp::assert_same(&pod_before, &rp::ns_snapshot(&pod), what);
        rp::assert_same(&fresh_before, &rp::ns_snapshot(&fresh), what);
    }
    world
        .run(&world.call("DEL", "c1", &pod.path()), &good)
        .expect_ok("DEL");
    assert_empty(&world, "rbad", "pwr13");
}

#[test]
fn ipam_type_naming_another_podwire_plugin_fails_without_recursing() {
    // podwire-portmap and podwire-loopback are the podwire binary too: an
    // IPAM delegation to them must not run the bridge plugin again.
    let world = World::new("rrec");
    let pod = Netns::new("rrec-p");
    for kind in ["podwire-loopback", "podwire-portmap"] {
        let mut conf = podwire_conf(V, "rrec", "pwr14", "10.216.1.0/24", &world.data_dir());
        conf["ipam"]["type"] = json!(kind);
        let call = world.call("ADD", "c1", &pod.path());
        let mut add = rp::spawn_plugin(&world, &call, conf.to_string().as_bytes(), "podwire", None);
        let pgid = add.id();
        let mut most = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while add.running() && Instant::now() < deadline {
            let n = processes_in_group(pgid);
            most = most.max(n);
            if n > 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = !add.running();
        add.kill();
        let out = add.wait_timeout(Duration::from_secs(5));
        assert!(
            most <= 4,
            "ipam type {kind}: the plugin re-ran itself ({most} processes in its group)"
        );
        assert!(finished, "ipam type {kind}: the ADD did not end");
        let (status, stdout, _) = out.expect("exit status");
        assert_eq!(status.code(), Some(1), "ipam type {kind}");
        let err: Value = serde_json::from_slice(&stdout).expect("error JSON");
        assert!(err["code"].as_u64().is_some(), "{err}");
        assert_eq!(world.ip_files("rrec"), Vec::<String>::new());
        assert!(world.host_links("veth").is_empty());
    }
}

/// How many processes have process group `pgid` (read from /proc).
fn processes_in_group(pgid: u32) -> usize {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .and_then(|g| g.parse::<u32>().ok())
                == Some(pgid)
        })
        .count()
}

// ------------------------------------------- damaged or missing records

/// The attachment record of (network, container, eth0) in the world.
fn record_path(world: &World, network: &str, id: &str) -> std::path::PathBuf {
    world
        .data
        .path()
        .join("podwire-state")
        .join(network)
        .join(format!("{id}:eth0.json"))
}

/// ADDs `id` into `pod` and returns the result.
fn add_ok(world: &World, conf: &Value, id: &str, pod: &Netns) -> Value {
    world
        .run(&world.call("ADD", id, &pod.path()), conf)
        .expect_ok(&format!("ADD {id}"))
        .json()
}

/// The published port is free again: another container can take it, and
/// gives it back.
fn assert_port_free(world: &World, conf: &Value, tag: &str) {
    let pod = Netns::new(&format!("{tag}-n"));
    add_ok(world, conf, "next", &pod);
    world
        .run(&world.call("DEL", "next", &pod.path()), conf)
        .expect_ok("DEL next");
}

#[test]
fn del_with_an_empty_truncated_or_garbage_record_removes_everything() {
    for (i, kind) in ["empty", "truncated", "garbage"].into_iter().enumerate() {
        let tag = format!("rcor{i}");
        let bridge = format!("pwr{}", 16 + i);
        let world = World::new(&tag);
        let pod = Netns::new(&format!("{tag}-p"));
        let conf = conf_with_firewall(&world, &tag, &bridge, &format!("10.219.{i}.0/24"), 18080);
        add_ok(&world, &conf, "c1", &pod);
        assert!(world.nft_elements() >= 3);
        let path = record_path(&world, &tag, "c1");
        let good = std::fs::read(&path).expect("record after ADD");
        let damaged: Vec<u8> = match kind {
            "empty" => Vec::new(),
            "truncated" => good[..good.len() / 2].to_vec(),
            _ => b"{\"containerId\": [1, 2".to_vec(),
        };
        std::fs::write(&path, damaged).expect("damage the record");

        for round in 1..=2 {
            world
                .run(&world.call("DEL", "c1", &pod.path()), &conf)
                .expect_ok(&format!("DEL #{round} with a {kind} record"));
        }
        assert_empty(&world, &tag, &bridge);
        assert!(!has_link(&pod, "eth0"), "{kind}: the pod kept eth0");
        assert_port_free(&world, &conf, &tag);
        assert_empty(&world, &tag, &bridge);
    }
}

#[test]
fn gc_undoes_an_attachment_whose_record_is_corrupt() {
    let world = World::new("rcgc");
    let pod = Netns::new("rcgc-p");
    let keep = Netns::new("rcgc-k");
    let conf = conf_with_firewall(&world, "rcgc", "pwr19", "10.219.3.0/24", 18080);
    let mut kept_conf = conf.clone();
    kept_conf["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]});
    add_ok(&world, &kept_conf, "k1", &keep);
    let kept_elements = world.nft_elements();
    add_ok(&world, &conf, "c1", &pod);
    std::fs::write(record_path(&world, "rcgc", "c1"), b"").expect("empty the record");

    let mut gc = gc_conf(&conf);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "k1", "ifname": "eth0"}]);
    world.run(&world.call("GC", "", ""), &gc).expect_ok("GC");
    assert!(!has_link(&pod, "eth0"), "GC left the pair of c1");
    assert_eq!(world.host_links("veth").len(), 1, "GC left c1's host veth");
    assert_eq!(
        rp::state_files(&world, "rcgc"),
        vec!["k1:eth0.json".to_string()],
        "GC left the corrupt record"
    );
    assert_eq!(world.ip_files("rcgc").len(), 1);
    assert_eq!(world.nft_elements(), kept_elements, "GC left c1's elements");
    assert!(has_link(&keep, "eth0"), "GC touched a valid attachment");
    // The freed address may go to a new container: no old hostport rule
    // may point at it, and the port is free.
    assert_port_free(&world, &conf, "rcgc");
    world
        .run(&world.call("DEL", "k1", &keep.path()), &kept_conf)
        .expect_ok("DEL k1");
    assert_empty(&world, "rcgc", "pwr19");
}

#[test]
fn del_without_a_record_uses_prev_result_and_frees_the_host_port() {
    let world = World::new("rnorec");
    let pod = Netns::new("rnorec-p");
    let conf = conf_with_firewall(&world, "rnorec", "pwr20", "10.219.4.0/24", 18080);
    let result = add_ok(&world, &conf, "c1", &pod);
    std::fs::remove_file(record_path(&world, "rnorec", "c1")).expect("remove the record");
    let mut del = conf.clone();
    del["prevResult"] = result;
    world
        .run(&world.call("DEL", "c1", &pod.path()), &del)
        .expect_ok("DEL with prevResult and no record");
    assert_empty(&world, "rnorec", "pwr20");
    assert!(!has_link(&pod, "eth0"));
    assert_port_free(&world, &conf, "rnorec");
}

#[test]
fn del_without_a_record_or_prev_result_still_removes_the_elements() {
    let world = World::new("rnone");
    let pod = Netns::new("rnone-p");
    let conf = conf_with_firewall(&world, "rnone", "pwr21", "10.219.5.0/24", 18080);
    add_ok(&world, &conf, "c1", &pod);
    std::fs::remove_file(record_path(&world, "rnone", "c1")).expect("remove the record");
    // The namespace is gone too: only the container ID is left to go on.
    let path = pod.path();
    drop(pod);
    world
        .run(&world.call("DEL", "c1", &path), &conf)
        .expect_ok("DEL with nothing but the container ID");
    assert_eq!(world.nft_elements(), 0, "elements left");
    assert!(
        rp::wait_for(100, Duration::from_millis(20), || world
            .host_links("veth")
            .is_empty()),
        "host veth left"
    );
    assert_empty(&world, "rnone", "pwr21");
    assert_port_free(&world, &conf, "rnone");
}

#[test]
fn gc_removes_the_elements_of_an_attachment_whose_record_is_gone() {
    let world = World::new("rgcnr");
    let pod = Netns::new("rgcnr-p");
    let conf = conf_with_firewall(&world, "rgcnr", "pwr22", "10.219.6.0/24", 18080);
    add_ok(&world, &conf, "c1", &pod);
    std::fs::remove_file(record_path(&world, "rgcnr", "c1")).expect("remove the record");
    world
        .run(&world.call("GC", "", ""), &gc_conf(&conf))
        .expect_ok("GC");
    assert!(!has_link(&pod, "eth0"), "GC left the pair");
    assert_empty(&world, "rgcnr", "pwr22");
    assert_port_free(&world, &conf, "rgcnr");
}

#[test]
fn elements_are_found_by_their_owner_when_record_and_lease_are_both_gone() {
    let world = World::new("rtag");
    let pod = Netns::new("rtag-p");
    let conf = conf_with_firewall(&world, "rtag", "pwr25", "10.219.9.0/24", 18080);
    let result = add_ok(&world, &conf, "c1", &pod);
    // Nothing on disk names c1 any more, and its namespace is gone.
    std::fs::remove_file(record_path(&world, "rtag", "c1")).expect("remove the record");
    for ip in ips_of(&result) {
        std::fs::remove_file(world.data.path().join("rtag").join(ip)).expect("remove the lease");
    }
    drop(pod);
    world
        .run(&world.call("GC", "", ""), &gc_conf(&conf))
        .expect_ok("GC");
    assert_eq!(world.nft_elements(), 0, "elements left");
    assert_port_free(&world, &conf, "rtag");
    assert!(
        rp::wait_for(100, Duration::from_millis(20), || world
            .host_links("veth")
            .is_empty()),
        "host veth left"
    );
    assert_empty(&world, "rtag", "pwr25");
}

#[test]
fn a_zero_byte_temporary_record_is_removed_by_del_and_by_gc() {
    let world = World::new("rtmp");
    let pod = Netns::new("rtmp-p");
    let conf = conf_with_firewall(&world, "rtmp", "pwr23", "10.219.7.0/24", 18080);
    add_ok(&world, &conf, "c1", &pod);
    let dir = world.data.path().join("podwire-state").join("rtmp");
    // What a kill during the record write leaves.
    std::fs::write(dir.join("c1:eth0.tmp"), b"").expect("tmp file");
    world
        .run(&world.call("DEL", "c1", &pod.path()), &conf)
        .expect_ok("DEL");
    assert_empty(&world, "rtmp", "pwr23");

    std::fs::write(dir.join("c2:eth0.tmp"), b"").expect("tmp file");
    world
        .run(&world.call("GC", "", ""), &gc_conf(&conf))
        .expect_ok("GC");
    assert_empty(&world, "rtmp", "pwr23");
}

#[test]
fn portmap_del_and_gc_get_past_a_corrupt_record() {
    let world = World::new("rpmc");
    let pod = Netns::new("rpmc-p");
    let bridge_conf = podwire_conf(V, "rpmc", "pwr24", "10.219.8.0/24", &world.data_dir());
    let result = add_ok(&world, &bridge_conf, "c1", &pod);
    let state = world.data.path().join("portmap-state");
    let portmap = |prev: &Value| {
        json!({
            "cniVersion": V,
            "name": "rpmc",
            "type": "podwire-portmap",
            "stateDir": state,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 18090, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18091, "containerPort": 53, "protocol": "udp"},
            ]},
            "prevResult": prev,
        })
    };
    let record = state.join("rpmc").join("c1:eth0.json");
    for (round, damage) in [&b""[..], &b"{\"ips\": [\"10."[..]].into_iter().enumerate() {
        let conf = portmap(&result);
        add_ok(&world, &conf, "c1", &pod);
        assert!(world.nft_elements() >= 3, "round {round}");
        std::fs::write(&record, damage).expect("damage the record");
        if round == 0 {
            // DEL with neither a readable record nor prevResult.
            let mut del = conf.clone();
            del["prevResult"] = Value::Null;
            world
                .run(&world.call("DEL", "c1", &pod.path()), &del)
                .expect_ok("portmap DEL with an empty record");
        } else {
            let mut gc = gc_conf(&conf);
            if let Some(obj) = gc.as_object_mut() {
                obj.remove("prevResult");
            }
            world
                .run(&world.call("GC", "", ""), &gc)
                .expect_ok("portmap GC with a truncated record");
        }
        assert_eq!(world.nft_elements(), 0, "round {round}: elements left");
        let left: Vec<_> = std::fs::read_dir(state.join("rpmc"))
            .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "round {round}: records left: {left:?}");
    }
    world
        .run(&world.call("DEL", "c1", &pod.path()), &bridge_conf)
        .expect_ok("DEL");
    assert_empty(&world, "rpmc", "pwr24");
}

// ---------------------------------------------------------------- fuzzing

const WORDS: &[&str] = &[
    "",
    "podwire",
    "eth0",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "10.218.0.0/24",
    "10.218.0.5",
    "10.218.0.0/33",
    "fd00::/64",
    "fd00::5",
    "::",
    "0.0.0.0/0",
    "255.255.255.255",
    "1.1.0",
    "1.0.0",
    "0.4.0",
    "0.3.1",
    "0.2.0",
    "aa:bb:cc:dd:ee:ff",
    "zz",
    "..",
    "a/b",
    "\u{0}",
    "\u{fffd}\u{1F600}",
    "-1",
    "9999999999999999999999",
    "true",
];

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
    "forceAddress",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "enabledad",
    "macspoofchk",
    "ipam",
    "dns",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "ips",
    "mac",
    "interfaces",
    "address",
    "interface",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "cni",
    "nameservers",
    "vlanTrunk",
];

fn random_string(rng: &mut Prng) -> String {
    if rng.chance(60) {
        return rng.pick(WORDS).to_string();
    }
    let alphabet: Vec<char> = "abcXYZ019./:-_;= \\\"\u{e9}\u{2603}\n\t{}[]"
        .chars()
        .collect();
    let len = rng.below(24);
    (0..len).map(|_| *rng.pick(&alphabet)).collect()
}

fn random_value(rng: &mut Prng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next_u64() % 70000),
        3 => json!(-(rng.below(1000) as i64)),
        4 => json!(f64::from(rng.below(1000) as u32) / 7.0),
        5 => json!(random_string(rng)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Replaces, removes or adds one value somewhere inside `v`.
fn mutate(rng: &mut Prng, v: &mut Value, depth: usize) {
    match v {
        Value::Object(m) if !m.is_empty() && (depth < 4 && rng.chance(60)) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            if let Some(child) = m.get_mut(&key) {
                mutate(rng, child, depth + 1);
            }
        }
        Value::Array(a) if !a.is_empty() && (depth < 4 && rng.chance(60)) => {
            let i = rng.below(a.len());
            mutate(rng, &mut a[i], depth + 1);
        }
        Value::Object(m) => match rng.below(3) {
            0 if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                m.remove(rng.pick(&keys));
            }
            1 => {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth));
            }
            _ => *v = random_value(rng, depth),
        },
        _ => *v = random_value(rng, depth),
    }
}

/// Keeps every file the plugin may write inside the test's directories and
/// every IPAM delegation away from plugins that are not IPAM plugins.
fn pin(v: &mut Value, world: &World) {
    let Some(obj) = v.as_object_mut() else {
        return;
    };
    obj.insert(
        "stateDir".into(),
        json!(world.data.path().join("fuzz-state")),
    );
    if let Some(ipam) = obj.get_mut("ipam").and_then(Value::as_object_mut) {
        ipam.insert("dataDir".into(), json!(world.data_dir()));
        ipam.remove("resolvConf");
        let delegated = ipam
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty() && t != "podwire");
        if delegated {
            ipam.insert("type".into(), json!("podwire"));
        }
    }
}

fn base_confs(world: &World) -> Vec<Value> {
    let data = world.data_dir();
    let mut full = podwire_conf(V, "rfuzz", "pwr15", "10.218.0.0/24", &data);
    full["ipMasq"] = json!(true);
    full["isDefaultGateway"] = json!(true);
    full["mtu"] = json!(1400);
    full["capabilities"] = json!({"portMappings": true, "ips": true, "mac": true});
    full["runtimeConfig"] = json!({
        "portMappings": [
            {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 15353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ],
        "ips": ["10.218.0.9/24"],
        "mac": "0a:58:0a:da:00:09",
    });
    full["ipam"]["routes"] =
        json!([{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.218.0.1"}]);
    full["ipam"]["ranges"] = json!([
        [{"subnet": "10.218.0.0/24", "rangeStart": "10.218.0.2", "rangeEnd": "10.218.0.50", "gateway": "10.218.0.1"}],
        [{"subnet": "fd00:218::/64"}],
    ]);
    full["dns"] = json!({"nameservers": ["10.218.0.10"], "search": ["svc"]});
    full["args"] = json!({"cni": {"ips": ["10.218.0.7"]}});
    let prev = json!({
        "cniVersion": V,
        "interfaces": [
            {"name": "pwr15", "mac": "0a:00:00:00:00:01"},
            {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/none"},
        ],
        "ips": [{"address": "10.218.0.20/24", "gateway": "10.218.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    });
    let portmap = json!({
        "cniVersion": V,
        "name": "rfuzz",
        "type": "podwire-portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 18081, "containerPort": 81}]},
        "prevResult": prev,
    });
    let mut checked = full.clone();
    checked["prevResult"] = prev.clone();
    let gc = json!({
        "cniVersion": V,
        "name": "rfuzz",
        "type": "podwire",
        "ipam": {"type": "podwire", "subnet": "10.218.0.0/24", "dataDir": data},
        "cni.dev/valid-attachments": [{"containerID": "f1", "ifname": "eth0"}],
    });
    let loopback = json!({"cniVersion": "0.4.0", "name": "lo", "type": "podwire-loopback"});
    vec![full, portmap, checked, gc, loopback]
}

fn random_cni_args(rng: &mut Prng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(5) {
        let piece: String = match rng.below(8) {
            0 => format!("IP=10.218.0.{}", rng.below(300)),
            1 => "IgnoreUnknown=1".into(),
            2 => format!("K8S_POD_NAME={}", random_string(rng)),
            3 => "=".into(),
            4 => random_string(rng),
            5 => format!("IP={}", random_string(rng)),
            6 => "IP=fd00:218::5,10.218.0.6".into(),
            _ => ";;".into(),
        };
        out.extend_from_slice(piece.as_bytes());
        if rng.chance(80) {
            out.push(b';');
        }
    }
    if rng.chance(10) {
        // Not UTF-8 at all.
        out.extend_from_slice(&[0xff, 0xfe, b'=', 0x80]);
    }
    out.retain(|b| *b != 0);
    out
}

#[test]
fn random_netconfs_and_cni_args_never_crash_the_plugin() {
    use std::os::unix::ffi::OsStrExt;
    const RUNS: usize = 400;
    let world = World::new("rfuzz");
    let pod = Netns::new("rfuzz-p");
    let bases = base_confs(&world);
    let mut rng = Prng(0x5eed_2024_0bad_cafe);
    let commands = [
        "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "", "DEL\n",
    ];
    let plugin = world.cni_dir.path().join("podwire");
    let mut outcomes = [0usize; 2];
    for run in 0..RUNS {
        let mut conf = rng.pick(&bases).clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut conf, 0);
        }
        pin(&mut conf, &world);
        let mut stdin = conf.to_string().into_bytes();
        if rng.chance(25) {
            // Byte-level damage; re-pin whatever still parses.
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(stdin.len().max(1));
                match rng.below(3) {
                    0 if !stdin.is_empty() => stdin[i] = rng.next_u64() as u8,
                    1 => stdin.insert(i.min(stdin.len()), *rng.pick(b"{}[]\",:\\0e-")),
                    _ => stdin.truncate(i),
                }
            }
            if let Ok(mut v) = serde_json::from_slice::<Value>(&stdin) {
                pin(&mut v, &world);
                stdin = v.to_string().into_bytes();
            }
        }
        let command = *rng.pick(&commands);
        let container = if rng.chance(85) {
            format!("f{}", rng.below(4))
        } else {
            random_string(&mut rng).replace('\0', "")
        };
        let netns = match rng.below(6) {
            0 => String::new(),
            1 => "/var/run/netns/pw-does-not-exist".into(),
            _ => pod.path(),
        };
        let ifname = if rng.chance(85) {
            "eth0".to_string()
        } else {
            random_string(&mut rng).replace('\0', "")
        };
        let args = random_cni_args(&mut rng);

        let mut cmd = rp::command_in(&world.host.path(), &plugin);
        // CNI_COMMAND is always set (maybe empty): without it the binary is
        // the command-line tool, not a plugin.
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_PATH", world.cni_dir.path())
            .env("CNI_COMMAND", command)
            .env("CNI_ARGS", std::ffi::OsStr::from_bytes(&args));
        for (key, value) in [
            ("CNI_CONTAINERID", &container),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", &ifname),
        ] {
            if !value.is_empty() {
                cmd.env(key, value);
            }
        }
        let repro = format!(
            "run {run}: CNI_COMMAND={command:?} CNI_CONTAINERID={container:?} CNI_NETNS={netns:?} \
             CNI_IFNAME={ifname:?} CNI_ARGS={:?} stdin={:?}",
            String::from_utf8_lossy(&args),
            String::from_utf8_lossy(&stdin)
        );
        let mut child = ChildGuard::spawn(cmd, Some(&stdin));
        let Some((status, stdout, stderr)) = child.wait_timeout(Duration::from_secs(20)) else {
            panic!("the plugin hung: {repro}");
        };
        let stderr = String::from_utf8_lossy(&stderr);
        let code = status.code().unwrap_or_else(|| {
            panic!("the plugin died by a signal ({status:?}): {repro}\nstderr: {stderr}")
        });
        assert!(
            code == 0 || code == 1,
            "exit code {code}: {repro}\nstderr: {stderr}"
        );
        outcomes[code as usize] += 1;
        let text = String::from_utf8_lossy(&stdout);
        if code == 1 || !text.trim().is_empty() {
            let v: Value = serde_json::from_slice(&stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}: {repro}"));
            if code == 1 {
                assert!(v["code"].as_u64().is_some(), "no code: {v}: {repro}");
                assert!(v["msg"].as_str().is_some(), "no msg: {v}: {repro}");
            }
        }
    }
    eprintln!(
        "{RUNS} random invocations: {} succeeded, {} failed cleanly",
        outcomes[0], outcomes[1]
    );
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

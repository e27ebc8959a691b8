//! The shortest end-to-end check of the plugin: one ADD, a ping through the
//! bridge, one DEL, nothing left behind.

mod common;

use common::*;

#[test]
fn add_ping_del_leaves_nothing() {
    let world = World::new("smoke");
    let pod = Netns::new("smoke-p");
    let conf = podwire_conf(
        "1.1.0",
        "smoke",
        "pwsmoke0",
        "10.201.0.0/24",
        &world.data_dir(),
    );
    let add = world
        .run(&world.call("ADD", "ctr1", &pod.path()), &conf)
        .expect_ok("ADD");
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(result["ips"][0]["address"], "10.201.0.2/24");
    assert_eq!(result["ips"][0]["gateway"], "10.201.0.1");
    assert_eq!(result["interfaces"][2]["sandbox"], pod.path());
    world.host.ok("ping -c1 -W1 10.201.0.2");
    pod.ok("ping -c1 -W1 10.201.0.1");
    assert_eq!(world.ip_files("smoke"), vec!["10.201.0.2"]);
    world
        .run(&world.call("DEL", "ctr1", &pod.path()), &conf)
        .expect_ok("DEL");
    assert!(world.ip_files("smoke").is_empty());
    assert!(world.host_links("veth").is_empty());
    assert!(!pod.ok("ip -o link").contains("eth0"));
}

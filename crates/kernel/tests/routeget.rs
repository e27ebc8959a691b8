//! Route lookups (`Netlink::route_get`) in a namespace this test creates
//! (unique name, removed by a guard even on failure): a gateway route, a
//! connected route, a local address, and routes whose type refuses the
//! packet (unreachable, blackhole), whose lookups the kernel refuses with an
//! errno that names the type. Needs root.

mod common;

use std::net::IpAddr;

use common::{Namespaces, sh};

use podwire_kernel::{Netlink, Netns};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn decisions_name_gateway_device_and_refusing_route_types() {
    let ns = format!("pwrg{}", std::process::id());
    let _guard = Namespaces(vec![ns.clone()]);
    sh(&format!(
        "ip netns add {ns}; ip -n {ns} link set lo up; \
         ip -n {ns} link add rg0 type veth peer name rg1; \
         ip -n {ns} link set rg0 up; ip -n {ns} link set rg1 up; \
         ip -n {ns} addr add 10.78.0.1/24 dev rg0; \
         ip -n {ns} route add 10.79.0.0/16 via 10.78.0.254; \
         ip -n {ns} route add unreachable 10.79.5.0/24; \
         ip -n {ns} route add blackhole 10.79.6.7/32"
    ));
    let netns = Netns::open(format!("/var/run/netns/{ns}")).unwrap();
    let mut nl = Netlink::in_netns(&netns).unwrap();
    let rg0 = nl.link_by_name("rg0").unwrap().unwrap().index;

    let via = nl.route_get(ip("10.79.1.1"), None, None, None).unwrap();
    assert_eq!(via.kind, "unicast");
    assert_eq!(via.table, Some(254));
    assert_eq!(via.gateway, Some(ip("10.78.0.254")));
    assert_eq!(via.oif, Some(rg0));

    let connected = nl.route_get(ip("10.78.0.9"), None, None, None).unwrap();
    assert_eq!(
        (connected.kind.as_str(), connected.gateway),
        ("unicast", None)
    );
    assert_eq!(connected.prefsrc, Some(ip("10.78.0.1")));

    let local = nl.route_get(ip("10.78.0.1"), None, None, None).unwrap();
    // The table is the kernel's to name: with no policy rules it merges
    // the local table into main and says `main`, as `ip route get` shows.
    assert_eq!(local.kind, "local");

    let unreachable = nl.route_get(ip("10.79.5.5"), None, None, None).unwrap();
    assert_eq!(unreachable.kind, "unreachable");
    let blackhole = nl.route_get(ip("10.79.6.7"), None, None, None).unwrap();
    assert_eq!(blackhole.kind, "blackhole");

    // No route at all stays an error: nothing matched.
    assert!(nl.route_get(ip("192.0.2.1"), None, None, None).is_err());
}

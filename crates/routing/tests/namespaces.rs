//! The routing agent's kernel effects, in namespaces the tests create: pod
//! to pod across nodes in both modes (without NAT), egress masquerade,
//! idempotent and incremental apply (a node leaving takes its route,
//! neighbour and FDB entry with it), host-gw across a router failing with
//! a clear diagnostic while vxlan works there, and the agent loop reacting
//! to the files source.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Ns, World, seen_from, wait_for, watch_sources};
use podwire_model::{FilesSource, Object, RoutingMode, Store, Watch};
use podwire_routing::{
    AgentOptions, Mode, RoutingAgent, RoutingError, interest, plan, plan_for, run_agent_until,
    teardown,
};

fn plans(
    world: &World,
    mode: RoutingMode,
    only: Option<&[&str]>,
) -> Vec<podwire_routing::RoutePlan> {
    let state = world.state(mode, only);
    world
        .nodes
        .iter()
        .filter(|n| only.is_none_or(|names| names.contains(&n.name.as_str())))
        .map(|n| plan(&state, &n.name).expect("plan"))
        .collect()
}

fn apply_all(world: &World, plans: &[podwire_routing::RoutePlan]) {
    for plan in plans {
        let node = world.node(&plan.node);
        let report = node
            .ns
            .apply(plan, None)
            .unwrap_or_else(|e| panic!("apply on {}: {e}", plan.node));
        assert!(!report.is_empty(), "a first apply changes something");
    }
}

/// Pings between every pair of pods, and checks the receiver saw the
/// sender's pod IP (no NAT).
fn assert_pods_reach_each_other(world: &World) {
    let pod_ips: Vec<_> = world.nodes.iter().map(|n| n.pod_ip).collect();
    for node in &world.nodes {
        watch_sources(&node.pod, &pod_ips);
    }
    for from in &world.nodes {
        for to in &world.nodes {
            if from.name == to.name {
                continue;
            }
            assert!(
                from.pod.ping(to.pod_ip, None),
                "pod on {} cannot reach pod on {} ({})",
                from.name,
                to.name,
                to.pod_ip
            );
            assert!(
                seen_from(&to.pod, from.pod_ip) > 0,
                "pod on {} did not see {}'s pod IP {} (NATed?)",
                to.name,
                from.name,
                from.pod_ip
            );
        }
    }
}

fn assert_idempotent(world: &World, plans: &[podwire_routing::RoutePlan]) {
    for plan in plans {
        let ns = &world.node(&plan.node).ns;
        let before = ns.routing_snapshot();
        let report = ns.apply(plan, Some(plan)).expect("second apply");
        assert!(
            report.is_empty(),
            "second apply on {} changed {:?}",
            plan.node,
            report.changes
        );
        // Even without a previous plan only the nft table is reloaded,
        // to the same text.
        let report = ns.apply(plan, None).expect("apply after restart");
        assert_eq!(
            report.changes.len(),
            1,
            "a restarted agent only reloads its table: {:?}",
            report.changes
        );
        assert_eq!(
            before,
            ns.routing_snapshot(),
            "kernel state changed on {}",
            plan.node
        );
    }
}

#[test]
fn host_gw_pods_reach_each_other_without_nat_and_egress_is_masqueraded() {
    let world = World::one_subnet(3);
    let plans = plans(&world, RoutingMode::HostGw, None);
    apply_all(&world, &plans);

    let node1 = world.node("node01");
    let routes = node1.ns.ok("ip route show proto 112");
    assert!(
        routes.contains("10.244.2.0/24 via 192.168.56.12"),
        "{routes}"
    );
    assert!(
        routes.contains("10.244.3.0/24 via 192.168.56.13"),
        "{routes}"
    );
    assert_eq!(node1.ns.ok("sysctl -n net.ipv4.ip_forward").trim(), "1");
    assert!(node1.ns.sh("ip link show podwire.1").status.code() != Some(0));

    assert_pods_reach_each_other(&world);

    // Egress: the external host has no route to pods; it answers because it
    // sees the node's address.
    watch_sources(&world.external, &[node1.ip, node1.pod_ip]);
    assert!(
        node1.pod.ping(world.external_ip, None),
        "pod cannot reach the external host (masquerade missing?)"
    );
    assert!(seen_from(&world.external, node1.ip) > 0);
    assert_eq!(seen_from(&world.external, node1.pod_ip), 0);

    assert_idempotent(&world, &plans);
}

#[test]
fn vxlan_pods_reach_each_other_without_nat_and_apply_is_idempotent() {
    let world = World::one_subnet(3);
    let plans = plans(&world, RoutingMode::Vxlan, None);
    apply_all(&world, &plans);

    let node1 = world.node("node01");
    let link = node1.ns.ok("ip -d link show podwire.1");
    for needle in [
        "mtu 1450",
        "link/ether 02:70:c0:a8:38:0b",
        "vxlan id 1",
        "local 192.168.56.11",
        "dev eth0",
        "dstport 8472",
        "nolearning",
    ] {
        assert!(link.contains(needle), "missing {needle:?} in {link}");
    }
    assert!(
        link.contains("state UP") || link.contains("UNKNOWN") || link.contains(",UP"),
        "{link}"
    );
    let addr = node1.ns.ok("ip -4 addr show dev podwire.1");
    assert!(addr.contains("inet 10.244.1.0/32"), "{addr}");
    let routes = node1.ns.ok("ip route show proto 112");
    assert!(
        routes.contains("10.244.2.0/24 via 10.244.2.0 dev podwire.1 onlink"),
        "{routes}"
    );
    let neigh = node1.ns.ok("ip neigh show dev podwire.1");
    assert!(
        neigh.contains("10.244.2.0 lladdr 02:70:c0:a8:38:0c PERMANENT"),
        "{neigh}"
    );
    let fdb = node1.ns.ok("bridge fdb show dev podwire.1");
    assert!(
        fdb.contains("02:70:c0:a8:38:0c dst 192.168.56.12 self permanent"),
        "{fdb}"
    );

    assert_pods_reach_each_other(&world);
    assert_idempotent(&world, &plans);

    // The node's own traffic into the overlay leaves from podwire.1's address.
    assert!(node1.ns.ping(world.node("node02").pod_ip, None));

    let report = node1.ns.run(|| {
        let mut nl = podwire_kernel::Netlink::new().expect("netlink");
        teardown(&mut nl)
    });
    let report = report.expect("teardown");
    assert!(!report.is_empty());
    let left = node1.ns.routing_snapshot();
    assert!(left.trim().is_empty(), "teardown left: {left}");
}

#[test]
fn a_node_leaving_takes_its_route_neighbour_and_fdb_entry_with_it() {
    let world = World::one_subnet(3);
    let full = plans(&world, RoutingMode::Vxlan, None);
    apply_all(&world, &full);
    let node1 = world.node("node01");
    let before = &full[0];
    assert_eq!(before.node, "node01");

    let state = world.state(RoutingMode::Vxlan, Some(&["node01", "node02"]));
    let shrunk = plan(&state, "node01").expect("plan");
    let report = node1.ns.apply(&shrunk, Some(before)).expect("apply");
    let changes = report.changes.join("\n");
    assert!(changes.contains("deleted route 10.244.3.0/24"), "{changes}");
    assert!(
        changes.contains("deleted neighbour 10.244.3.0"),
        "{changes}"
    );
    assert!(
        changes.contains("deleted fdb 02:70:c0:a8:38:0d"),
        "{changes}"
    );
    assert_eq!(report.changes.len(), 3, "{changes}");

    let snapshot = node1.ns.routing_snapshot();
    assert!(!snapshot.contains("10.244.3.0"), "{snapshot}");
    assert!(!snapshot.contains("02:70:c0:a8:38:0d"), "{snapshot}");
    assert!(
        snapshot.contains("10.244.2.0/24 via 10.244.2.0"),
        "{snapshot}"
    );
    assert!(node1.pod.ping(world.node("node02").pod_ip, None));

    // It comes back: everything is programmed again.
    let report = node1.ns.apply(before, Some(&shrunk)).expect("rejoin");
    assert_eq!(report.changes.len(), 3, "{:?}", report.changes);
    assert!(node1.pod.ping(world.node("node03").pod_ip, None));

    // host-gw: the same for plain routes, and switching modes removes the
    // overlay device.
    let host_gw = world.state(RoutingMode::HostGw, Some(&["node01", "node02"]));
    let plan_hg = plan(&host_gw, "node01").expect("plan");
    let report = node1
        .ns
        .apply(&plan_hg, Some(before))
        .expect("switch to host-gw");
    let changes = report.changes.join("\n");
    assert!(
        changes.contains("deleted VXLAN device podwire.1"),
        "{changes}"
    );
    let routes = node1.ns.ok("ip route show proto 112");
    assert_eq!(
        routes.trim(),
        "10.244.2.0/24 via 192.168.56.12 dev eth0",
        "{routes}"
    );
}

#[test]
fn host_gw_across_a_router_fails_clearly_while_vxlan_works() {
    let world = World::two_subnets();
    let node1 = world.node("node01");
    let node2 = world.node("node02");

    let state = world.state(RoutingMode::HostGw, None);
    let plan1 = plan(&state, "node01").expect("plan");
    let err = node1
        .ns
        .apply(&plan1, None)
        .expect_err("host-gw across a router");
    let RoutingError::Incomplete(errors) = &err else {
        panic!("expected Incomplete, got {err}");
    };
    assert!(
        matches!(errors.as_slice(), [RoutingError::HostGwUnreachable { .. }]),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(
            "host-gw cannot reach node02 (192.168.57.12): it is not on this node's underlay subnet 192.168.56.0/24"
        ),
        "{text}"
    );
    assert!(text.contains("use routing: vxlan"), "{text}");

    let plans = plans(&world, RoutingMode::Vxlan, None);
    apply_all(&world, &plans);
    assert!(
        node1.pod.ping(node2.pod_ip, None),
        "vxlan across the router does not carry pod traffic"
    );
    watch_sources(&node2.pod, &[node1.pod_ip]);
    assert!(node1.pod.ping(node2.pod_ip, None));
    assert!(
        seen_from(&node2.pod, node1.pod_ip) > 0,
        "pod IP NATed across the router"
    );
}

/// Writes the world's nodes (all, or `only`) into a files source.
fn write_store(store: &Store, world: &World, mode: RoutingMode, only: &[&str]) {
    store
        .write_config(&common::config(mode))
        .expect("write config");
    for node in &world.nodes {
        if only.contains(&node.name.as_str()) {
            store
                .put(&Object::Node(common::node_object(
                    &node.name, node.ip, node.cidr,
                )))
                .expect("put node");
        } else {
            store
                .delete(podwire_model::Kind::Node, "", &node.name)
                .expect("delete node");
        }
    }
    store.bump().expect("bump generation");
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn the_agent_follows_nodes_joining_and_leaving() {
    let world = World::one_subnet(3);
    let dir = common::TempDir::new("store");
    let store = Store::open(&dir.path);
    write_store(&store, &world, RoutingMode::Vxlan, &["node01", "node02"]);

    let mut opts = AgentOptions::new("node01");
    opts.underlay_device = "eth0".into();
    let files_watch = || {
        Watch::new(
            Box::new(FilesSource::new(store.clone(), interest())),
            &interest(),
        )
    };

    // The dry run, from outside the node: MTU assumed 1500.
    let state = store.load().expect("load");
    let dry = plan_for(&opts, &state).expect("plan_for");
    assert_eq!(dry.mode, Mode::Vxlan);
    assert_eq!(dry.peers.len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    // Stops the agent thread even when an assertion below fails.
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let agent = {
        let stop = Arc::clone(&stop);
        let opts = opts.clone();
        let path = world.node("node01").ns.path();
        let mut watch = files_watch();
        std::thread::spawn(move || {
            let ns = podwire_kernel::Netns::open(path).expect("open node netns");
            let _inside = ns.enter().expect("enter node netns");
            run_agent_until(&opts, &mut watch, &stop)
        })
    };
    let node1 = world.node("node01");
    let has = |needle: &str| node1.ns.routing_snapshot().contains(needle);

    let first = wait_for(Duration::from_secs(5), || {
        has("10.244.2.0/24 via 10.244.2.0")
    });
    assert!(first.is_some(), "agent did not program node02");

    write_store(
        &store,
        &world,
        RoutingMode::Vxlan,
        &["node01", "node02", "node03"],
    );
    let joined = wait_for(Duration::from_secs(5), || {
        has("10.244.3.0/24 via 10.244.3.0") && has("dst 192.168.56.13")
    });
    assert!(
        joined.is_some(),
        "agent did not program the node that joined"
    );

    write_store(&store, &world, RoutingMode::Vxlan, &["node01", "node02"]);
    let left = wait_for(Duration::from_secs(5), || {
        !has("10.244.3.0") && !has("dst 192.168.56.13")
    });
    assert!(left.is_some(), "agent did not remove the node that left");
    eprintln!("agent reaction: join {joined:?}, leave {left:?}");

    stop.store(true, Ordering::Relaxed);
    let result = agent.join().expect("agent thread");
    assert!(result.is_ok(), "agent failed: {result:?}");
    assert!(node1.ns.routing_snapshot().contains("10.244.2.0/24"));
}

#[test]
fn the_agent_once_reports_a_missing_node_clearly() {
    let dir = common::TempDir::new("store");
    let ns = Ns::new("lonely");
    // A store the lab has written once, without cluster settings.
    let store = Store::open(&dir.path);
    store.bump().expect("bump");
    let opts = AgentOptions::new("node09");
    let mut watch = Watch::new(Box::new(FilesSource::new(store, interest())), &interest());
    let snapshot = watch
        .next(Duration::from_secs(5))
        .expect("source")
        .expect("a snapshot");
    let err = ns
        .run(|| RoutingAgent::new(opts.clone(), None)?.reconcile(&snapshot))
        .expect_err("no cluster state");
    assert!(matches!(err, RoutingError::NoClusterConfig), "{err}");
}

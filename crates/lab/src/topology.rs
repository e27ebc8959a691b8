//! The lab's wires: a switch namespace holding one bridge per underlay
//! subnet (no uplink to the host), a router namespace joining the underlays
//! and the external host's subnet, and one namespace per node with `eth0` on
//! its underlay and a `cni0` bridge holding the first address of its slice.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use podwire_kernel::route::Route;
use podwire_kernel::{Netlink, Netns, sysctl};

use crate::error::{LabError, Result};
use crate::manifest::LabSpec;
use crate::netns;
use crate::paths::{LabPaths, netns_path};
use crate::plan::{LabPlan, PlannedNode};

/// Name of the switch-side end of a node's cable: stable per node name and
/// within the 15-character limit.
fn switch_port(node: &str) -> String {
    let mut hash: u32 = 0x811c9dc5;
    for b in node.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x01000193);
    }
    format!("n{hash:08x}")
}

fn underlay_index(spec: &LabSpec, underlay: &str) -> Result<usize> {
    spec.underlays
        .iter()
        .position(|u| u.name == underlay)
        .ok_or_else(|| LabError::Invalid(format!("unknown underlay {underlay:?}")))
}

fn open(name: &str) -> Result<(Netns, Netlink)> {
    let ns = Netns::open(netns_path(name))?;
    let nl = Netlink::in_netns(&ns)?;
    Ok((ns, nl))
}

/// Creates a bridge (idempotent) and brings it up; returns its index.
fn ensure_bridge(nl: &mut Netlink, name: &str) -> Result<u32> {
    if nl.link_by_name(name)?.is_none() {
        nl.create_bridge(name, None, false)?;
    }
    let link = nl
        .link_by_name(name)?
        .ok_or_else(|| LabError::Failed(format!("bridge {name} vanished")))?;
    nl.set_link(link.index, Some(true), None, None)?;
    Ok(link.index)
}

/// A cable from `bridge` in the switch to `inner_name` inside namespace
/// `inner_ns`, with the inner end addressed and up.
#[allow(clippy::too_many_arguments)]
fn cable(
    switch: &mut Netlink,
    bridge: u32,
    port: &str,
    inner: &Netns,
    inner_nl: &mut Netlink,
    inner_name: &str,
    mac: Option<[u8; 6]>,
    address: Ipv4Net,
) -> Result<u32> {
    switch.create_veth(port, inner_name, inner.raw_fd(), None, mac)?;
    let link = switch
        .link_by_name(port)?
        .ok_or_else(|| LabError::Failed(format!("{port} vanished")))?;
    switch.set_link(link.index, Some(true), Some(bridge), None)?;
    let inner_link = inner_nl
        .link_by_name(inner_name)?
        .ok_or_else(|| LabError::Failed(format!("{inner_name} vanished")))?;
    inner_nl.add_address(inner_link.index, &IpNet::V4(address), true)?;
    inner_nl.set_link(inner_link.index, Some(true), None, None)?;
    Ok(inner_link.index)
}

fn forwarding_on(ns: &Netns) -> Result<()> {
    ns.run(|| sysctl::ensure("net/ipv4/ip_forward", "1"))??;
    Ok(())
}

/// The switch, the router and the external host.
pub fn build_base(paths: &LabPaths, spec: &LabSpec, plan: &LabPlan) -> Result<()> {
    netns::create(paths, &paths.switch_ns())?;
    netns::create(paths, &paths.router_ns())?;
    let (_sw_ns, mut sw) = open(&paths.switch_ns())?;
    let (rt_ns, mut rt) = open(&paths.router_ns())?;
    for (i, underlay) in spec.underlays.iter().enumerate() {
        let bridge = ensure_bridge(&mut sw, &format!("u{i}"))?;
        let router_ip = plan
            .router_ips
            .iter()
            .find(|(name, _)| *name == underlay.name)
            .map(|(_, ip)| *ip)
            .ok_or_else(|| {
                LabError::Failed(format!(
                    "no router address planned for underlay {}",
                    underlay.name
                ))
            })?;
        cable(
            &mut sw,
            bridge,
            &format!("r{i}"),
            &rt_ns,
            &mut rt,
            &format!("u{i}"),
            None,
            router_ip,
        )?;
    }
    if let Some(ext) = &plan.external {
        let bridge = ensure_bridge(&mut sw, "ux")?;
        let router_ip = Ipv4Net::new(ext.gateway, ext.ip.prefix_len())
            .map_err(|e| LabError::Failed(e.to_string()))?;
        cable(
            &mut sw, bridge, "rx", &rt_ns, &mut rt, "ux", None, router_ip,
        )?;
        let name = paths.external_ns(&ext.name);
        netns::create(paths, &name)?;
        let (x_ns, mut x) = open(&name)?;
        let index = cable(&mut sw, bridge, "x0", &x_ns, &mut x, "eth0", None, ext.ip)?;
        x.add_route(&Route {
            dst: default_v4(),
            gateway: Some(IpAddr::V4(ext.gateway)),
            oif: Some(index),
        })?;
    }
    forwarding_on(&rt_ns)?;
    Ok(())
}

fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

/// One node: namespace, `eth0` on its underlay with its MAC and address, a
/// default route through the router, forwarding on, and `cni0`.
pub fn add_node(paths: &LabPaths, spec: &LabSpec, node: &PlannedNode) -> Result<()> {
    let index = underlay_index(spec, &node.underlay)?;
    let name = paths.node_ns(&node.name);
    netns::create(paths, &name)?;
    let (_sw_ns, mut sw) = open(&paths.switch_ns())?;
    let bridge = sw.link_by_name(&format!("u{index}"))?.ok_or_else(|| {
        LabError::Failed(format!(
            "underlay bridge u{index} is missing: is the lab up?"
        ))
    })?;
    let (node_ns, mut nl) = open(&name)?;
    let eth0 = cable(
        &mut sw,
        bridge.index,
        &switch_port(&node.name),
        &node_ns,
        &mut nl,
        "eth0",
        Some(node.mac),
        node.ip,
    )?;
    nl.add_route(&Route {
        dst: default_v4(),
        gateway: Some(IpAddr::V4(node.gateway)),
        oif: Some(eth0),
    })?;
    forwarding_on(&node_ns)?;
    let cni0 = ensure_bridge(&mut nl, "cni0")?;
    let gateway = first_address(&node.pod_cidr)?;
    match nl.add_address(cni0, &gateway, true) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The first address of a slice with the slice's prefix (the pods' gateway).
pub fn first_address(slice: &IpNet) -> Result<IpNet> {
    let first = slice
        .hosts()
        .next()
        .ok_or_else(|| LabError::Invalid(format!("pod slice {slice} has no host addresses")))?;
    IpNet::new(first, slice.prefix_len()).map_err(|e| LabError::Failed(e.to_string()))
}

/// Removes a node: its switch port and namespace (with its processes).
pub fn remove_node(paths: &LabPaths, node: &str) -> Result<()> {
    if let Ok((_ns, mut sw)) = open(&paths.switch_ns()) {
        sw.delete_link(&switch_port(node))?;
    }
    netns::delete(paths, &paths.node_ns(node))
}

//! The thin, idempotent half of the node agent: make the kernel of the
//! calling thread's network namespace match a `RoutePlan`.
//!
//! The kernel's own state is the reference, not the previous plan: every
//! apply reads the routes tagged `proto 112`, the neighbours and FDB entries
//! of `podwire.1`, and writes only what differs, then removes what is
//! podwire's and no longer planned. So a second apply changes nothing, a
//! restarted agent cleans up after nodes that left while it was down, and
//! an entry someone deleted by hand comes back at the next re-assert. The
//! previous plan is only used to skip reloading an unchanged nft table.
//!
//! Order matters for traffic in flight: a new peer gets its FDB entry and
//! neighbour before its route (the first routed packet finds both); a
//! leaving peer loses its route first.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use podwire_kernel::neigh::FdbEntry;
use podwire_kernel::vxlan::{RouteSpec, VxlanConfig};
use podwire_kernel::{Netlink, nft, sysctl};
use serde::Serialize;

use crate::error::{RoutingError, subnets_text};
use crate::masq;
use crate::plan::{Mode, ROUTE_PROTOCOL, RoutePlan, VXLAN_DEVICE, VxlanDevice, format_mac};

/// What one apply changed, one line per change, for the agent's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub changes: Vec<String>,
}

impl ApplyReport {
    /// True when the kernel already matched the plan.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn note(&mut self, change: String) {
        tracing::info!(change = %change, "routing change");
        self.changes.push(change);
    }
}

/// Makes the calling thread's namespace match `plan`: ip_forward, the VXLAN
/// device (vxlan) or its absence (host-gw), routes, neighbours, FDB entries
/// and the `inet podwire-node` table.
///
/// `nl` must be a socket of the calling thread's namespace: sysctls and
/// `nft` act on the thread's namespace, netlink on the socket's. Pass the
/// plan applied last as `previous` (None after a start) so an unchanged
/// nft table is not reloaded.
///
/// Every peer is attempted even when one fails (one unreachable node must
/// not cut the others off); the failures come back together as
/// `RoutingError::Incomplete`.
pub fn apply(
    plan: &RoutePlan,
    nl: &mut Netlink,
    previous: Option<&RoutePlan>,
) -> Result<ApplyReport, RoutingError> {
    let mut report = ApplyReport::default();
    let mut errors = Vec::new();

    sysctl::ensure("net/ipv4/ip_forward", "1").map_err(|e| {
        RoutingError::kernel(
            "turning on net.ipv4.ip_forward (the node must forward pod traffic)",
            e,
        )
    })?;

    let device_index = match &plan.vxlan {
        Some(device) => Some(ensure_vxlan(nl, device, &mut report)?),
        None => {
            remove_stale_vxlan(nl, &mut report)?;
            None
        }
    };

    if let Some(index) = device_index {
        sync_fdb(nl, plan, index, &mut report, &mut errors);
        sync_neighbours(nl, plan, index, &mut report, &mut errors);
    }
    sync_routes(nl, plan, device_index, &mut report, &mut errors)?;
    if let Some(index) = device_index {
        // Entries of peers that left go after their routes.
        prune_neighbours(nl, plan, index, &mut report, &mut errors);
        prune_fdb(nl, plan, index, &mut report, &mut errors);
    }

    if let Err(err) = sync_nft(plan, previous, &mut report) {
        errors.push(err);
    }

    if errors.is_empty() {
        Ok(report)
    } else {
        Err(RoutingError::Incomplete(errors))
    }
}

/// Removes everything podwire's routing put in this namespace: its routes,
/// its VXLAN device (with its neighbours and FDB) and its nft table. For
/// tests and for an operator undoing a node; the agent never calls it.
pub fn teardown(nl: &mut Netlink) -> Result<ApplyReport, RoutingError> {
    let mut report = ApplyReport::default();
    remove_stale_vxlan(nl, &mut report)?;
    let routes = nl
        .route_specs(false)
        .map_err(|e| RoutingError::kernel("listing routes", e))?;
    for route in routes.iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
        if nl
            .delete_route_to(route.dst, Some(ROUTE_PROTOCOL))
            .map_err(|e| RoutingError::kernel(format!("deleting route {}", route.dst), e))?
        {
            report.note(format!("deleted route {}", route.dst));
        }
    }
    let exists = nft::table_exists(nft::Family::Inet, masq::TABLE_NAME)
        .map_err(|e| RoutingError::kernel("checking the nft table inet podwire-node", e))?;
    if exists {
        nft::apply_script(&masq::delete_script())
            .map_err(|e| RoutingError::kernel("deleting the nft table inet podwire-node", e))?;
        report.note("deleted nft table inet podwire-node".to_string());
    }
    Ok(report)
}

fn ensure_vxlan(
    nl: &mut Netlink,
    device: &VxlanDevice,
    report: &mut ApplyReport,
) -> Result<u32, RoutingError> {
    let underlay = nl
        .link_by_name(&device.underlay_device)
        .map_err(|e| {
            RoutingError::kernel(
                format!("looking up underlay device {}", device.underlay_device),
                e,
            )
        })?
        .ok_or_else(|| RoutingError::UnderlayMissing {
            device: device.underlay_device.clone(),
        })?;
    let config = VxlanConfig {
        name: device.name.clone(),
        vni: device.vni,
        local: device.local,
        underlay_index: underlay.index,
        port: device.port,
        learning: false,
        mtu: device.mtu,
        mac: device.mac,
    };
    let what = |step: &str| format!("{step} VXLAN device {}", device.name);

    let mut existing = nl
        .vxlan_by_name(&device.name)
        .map_err(|e| RoutingError::kernel(what("looking up"), e))?;
    if let Some(link) = &existing {
        if link.kind.as_deref() != Some("vxlan") {
            return Err(RoutingError::NameTaken {
                name: device.name.clone(),
                kind: link.kind.clone().unwrap_or_else(|| "plain".to_string()),
            });
        }
        if !link.same_tunnel(&config) {
            // VNI, source address and port cannot change in place; the
            // device's routes, neighbours and FDB go with it and are
            // re-added below.
            nl.delete_link_index(link.index)
                .map_err(|e| RoutingError::kernel(what("deleting outdated"), e))?;
            report.note(format!(
                "deleted VXLAN device {} (its tunnel settings changed)",
                device.name
            ));
            existing = None;
        }
    }
    let link = match existing {
        Some(link) => link,
        None => {
            nl.create_vxlan(&config)
                .map_err(|e| RoutingError::kernel(what("creating"), e))?;
            report.note(format!(
                "created VXLAN device {} (vni {}, local {}, dev {}, dstport {}, mtu {}, mac {})",
                device.name,
                device.vni,
                device.local,
                device.underlay_device,
                device.port,
                device.mtu,
                format_mac(&device.mac)
            ));
            nl.vxlan_by_name(&device.name)
                .map_err(|e| RoutingError::kernel(what("looking up new"), e))?
                .ok_or_else(|| {
                    RoutingError::kernel(
                        what("finding new"),
                        podwire_kernel::Error::LinkNotFound(device.name.clone()),
                    )
                })?
        }
    };
    if link.mtu != device.mtu {
        nl.set_mtu(link.index, device.mtu)
            .map_err(|e| RoutingError::kernel(what("setting the MTU of"), e))?;
        report.note(format!("set mtu {} on {}", device.mtu, device.name));
    }
    if link.mac != Some(device.mac) {
        nl.set_mac(link.index, device.mac)
            .map_err(|e| RoutingError::kernel(what("setting the MAC of"), e))?;
        report.note(format!(
            "set mac {} on {}",
            format_mac(&device.mac),
            device.name
        ));
    }

    let wanted = IpNet::V4(device.address);
    let addresses = nl
        .addresses(link.index)
        .map_err(|e| RoutingError::kernel(what("listing the addresses of"), e))?;
    for stale in addresses
        .iter()
        .filter(|a| matches!(a, IpNet::V4(_)) && **a != wanted)
    {
        // A slice this node no longer owns.
        nl.delete_address(link.index, stale)
            .map_err(|e| RoutingError::kernel(format!("deleting address {stale}"), e))?;
        report.note(format!("deleted address {stale} from {}", device.name));
    }
    if !addresses.contains(&wanted) {
        nl.add_address(link.index, &wanted, true)
            .map_err(|e| RoutingError::kernel(format!("adding address {wanted}"), e))?;
        report.note(format!("added address {wanted} to {}", device.name));
    }
    if !link.up {
        nl.set_link(link.index, Some(true), None, None)
            .map_err(|e| RoutingError::kernel(what("bringing up"), e))?;
        report.note(format!("set {} up", device.name));
    }
    Ok(link.index)
}

/// host-gw (or a switch from vxlan): the overlay device must not linger.
fn remove_stale_vxlan(nl: &mut Netlink, report: &mut ApplyReport) -> Result<(), RoutingError> {
    let existing = nl
        .vxlan_by_name(VXLAN_DEVICE)
        .map_err(|e| RoutingError::kernel(format!("looking up {VXLAN_DEVICE}"), e))?;
    if let Some(link) = existing
        && link.kind.as_deref() == Some("vxlan")
    {
        nl.delete_link_index(link.index)
            .map_err(|e| RoutingError::kernel(format!("deleting {VXLAN_DEVICE}"), e))?;
        report.note(format!(
            "deleted VXLAN device {VXLAN_DEVICE} (routing is not vxlan)"
        ));
    }
    Ok(())
}

fn sync_fdb(
    nl: &mut Netlink,
    plan: &RoutePlan,
    index: u32,
    report: &mut ApplyReport,
    errors: &mut Vec<RoutingError>,
) {
    let existing = match nl.fdb_entries(index) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(RoutingError::kernel(
                format!("listing the FDB of {VXLAN_DEVICE}"),
                e,
            ));
            return;
        }
    };
    for peer in &plan.peers {
        let Some(vtep) = peer.vtep else { continue };
        let dst = IpAddr::V4(peer.node_ip);
        let current: Vec<&FdbEntry> = existing.iter().filter(|e| e.mac == vtep.mac).collect();
        if current.len() == 1 && current[0].dst == Some(dst) && current[0].is_permanent() {
            continue;
        }
        match nl.replace_fdb(index, vtep.mac, dst) {
            Ok(()) => report.note(format!(
                "fdb {} dst {dst} ({})",
                format_mac(&vtep.mac),
                peer.node
            )),
            Err(e) => errors.push(RoutingError::kernel(
                format!(
                    "programming the FDB entry for {} ({} -> {dst})",
                    peer.node,
                    format_mac(&vtep.mac)
                ),
                e,
            )),
        }
        // REPLACE swaps the first remote of an entry; any other remote is
        // stale (a node that changed its IP) and would get copies of frames.
        for extra in current
            .iter()
            .filter(|e| e.dst.is_some() && e.dst != Some(dst))
        {
            if let Err(e) = nl.delete_fdb(index, extra.mac, extra.dst) {
                errors.push(RoutingError::kernel(
                    format!("deleting a stale FDB remote of {}", peer.node),
                    e,
                ));
            }
        }
    }
}

fn prune_fdb(
    nl: &mut Netlink,
    plan: &RoutePlan,
    index: u32,
    report: &mut ApplyReport,
    errors: &mut Vec<RoutingError>,
) {
    let existing = match nl.fdb_entries(index) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(RoutingError::kernel(
                format!("listing the FDB of {VXLAN_DEVICE}"),
                e,
            ));
            return;
        }
    };
    let wanted: Vec<[u8; 6]> = plan
        .peers
        .iter()
        .filter_map(|p| p.vtep.map(|v| v.mac))
        .collect();
    // Learning is off and the device is podwire's, so every entry that is
    // not planned is a leftover of a node that left.
    for entry in existing.iter().filter(|e| !wanted.contains(&e.mac)) {
        match nl.delete_fdb(index, entry.mac, entry.dst) {
            Ok(true) => report.note(format!(
                "deleted fdb {}{}",
                format_mac(&entry.mac),
                entry.dst.map(|d| format!(" dst {d}")).unwrap_or_default()
            )),
            Ok(false) => {}
            Err(e) => errors.push(RoutingError::kernel(
                format!("deleting FDB entry {}", format_mac(&entry.mac)),
                e,
            )),
        }
    }
}

fn sync_neighbours(
    nl: &mut Netlink,
    plan: &RoutePlan,
    index: u32,
    report: &mut ApplyReport,
    errors: &mut Vec<RoutingError>,
) {
    let existing = match nl.neighbours(index) {
        Ok(list) => list,
        Err(e) => {
            errors.push(RoutingError::kernel(
                format!("listing the neighbours of {VXLAN_DEVICE}"),
                e,
            ));
            return;
        }
    };
    for peer in &plan.peers {
        let Some(vtep) = peer.vtep else { continue };
        let ip = IpAddr::V4(vtep.ip);
        let up_to_date = existing
            .iter()
            .any(|n| n.ip == ip && n.mac == Some(vtep.mac) && n.is_permanent());
        if up_to_date {
            continue;
        }
        match nl.replace_neighbour(index, ip, vtep.mac) {
            Ok(()) => report.note(format!(
                "neighbour {ip} lladdr {} ({})",
                format_mac(&vtep.mac),
                peer.node
            )),
            Err(e) => errors.push(RoutingError::kernel(
                format!("programming the neighbour entry for {} ({ip})", peer.node),
                e,
            )),
        }
    }
}

fn prune_neighbours(
    nl: &mut Netlink,
    plan: &RoutePlan,
    index: u32,
    report: &mut ApplyReport,
    errors: &mut Vec<RoutingError>,
) {
    let existing = match nl.neighbours(index) {
        Ok(list) => list,
        Err(e) => {
            errors.push(RoutingError::kernel(
                format!("listing the neighbours of {VXLAN_DEVICE}"),
                e,
            ));
            return;
        }
    };
    let wanted: Vec<IpAddr> = plan
        .peers
        .iter()
        .filter_map(|p| p.vtep.map(|v| IpAddr::V4(v.ip)))
        .collect();
    // Only permanent entries are podwire's; the kernel manages the others.
    for neighbour in existing
        .iter()
        .filter(|n| n.is_permanent() && !wanted.contains(&n.ip))
    {
        match nl.delete_neighbour(index, neighbour.ip) {
            Ok(true) => report.note(format!("deleted neighbour {}", neighbour.ip)),
            Ok(false) => {}
            Err(e) => errors.push(RoutingError::kernel(
                format!("deleting neighbour {}", neighbour.ip),
                e,
            )),
        }
    }
}

fn sync_routes(
    nl: &mut Netlink,
    plan: &RoutePlan,
    device_index: Option<u32>,
    report: &mut ApplyReport,
    errors: &mut Vec<RoutingError>,
) -> Result<(), RoutingError> {
    let existing: BTreeMap<IpNet, RouteSpec> = nl
        .route_specs(false)
        .map_err(|e| RoutingError::kernel("listing routes", e))?
        .into_iter()
        .map(|r| (r.dst, r))
        .collect();

    let mut wanted = Vec::new();
    for peer in &plan.peers {
        let spec = RouteSpec {
            dst: IpNet::V4(peer.pod_cidr),
            gateway: Some(IpAddr::V4(peer.via)),
            oif: device_index,
            onlink: device_index.is_some(),
            protocol: ROUTE_PROTOCOL,
        };
        wanted.push(spec.dst);
        if existing
            .get(&spec.dst)
            .is_some_and(|r| same_route(r, &spec))
        {
            continue;
        }
        match nl.replace_route(&spec) {
            Ok(()) => report.note(format!(
                "route {} via {}{} ({})",
                spec.dst,
                peer.via,
                if device_index.is_some() {
                    format!(" dev {VXLAN_DEVICE} onlink")
                } else {
                    String::new()
                },
                peer.node
            )),
            Err(e) if plan.mode == Mode::HostGw && gateway_errno(&e) => {
                let subnets = underlay_subnets(nl, &plan.underlay_device);
                let ip = IpAddr::V4(peer.node_ip);
                if unreachable_gateway(&e, ip, &subnets) {
                    errors.push(RoutingError::HostGwUnreachable {
                        node: peer.node.clone(),
                        ip,
                        subnets: subnets_text(&subnets),
                    });
                } else {
                    errors.push(RoutingError::kernel(
                        format!(
                            "programming the route to {}'s pods ({} via {})",
                            peer.node, spec.dst, peer.via
                        ),
                        e,
                    ));
                }
            }
            Err(e) => errors.push(RoutingError::kernel(
                format!(
                    "programming the route to {}'s pods ({} via {})",
                    peer.node, spec.dst, peer.via
                ),
                e,
            )),
        }
    }

    for route in existing
        .values()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && !wanted.contains(&r.dst))
    {
        match nl.delete_route_to(route.dst, Some(ROUTE_PROTOCOL)) {
            Ok(true) => report.note(format!("deleted route {}", route.dst)),
            Ok(false) => {}
            Err(e) => errors.push(RoutingError::kernel(
                format!("deleting the route to {}", route.dst),
                e,
            )),
        }
    }
    Ok(())
}

/// Whether the kernel's route already is the planned one. A host-gw route
/// names no device: the kernel picks (and reports) the underlay's.
fn same_route(current: &RouteSpec, wanted: &RouteSpec) -> bool {
    current.protocol == wanted.protocol
        && current.gateway == wanted.gateway
        && current.onlink == wanted.onlink
        && (wanted.oif.is_none() || current.oif == wanted.oif)
}

/// Errnos the kernel gives a gateway it cannot use.
fn gateway_errno(err: &podwire_kernel::Error) -> bool {
    matches!(err.errno(), Some(libc::ENETUNREACH) | Some(libc::EINVAL))
}

/// Whether a failed host-gw route means "the node is not on our segment":
/// ENETUNREACH is the kernel's answer to a gateway outside every connected
/// subnet ("Nexthop has invalid gateway"); EINVAL counts only when the
/// gateway is indeed outside the underlay's subnets, so another invalid
/// argument is not misreported as a topology problem.
fn unreachable_gateway(err: &podwire_kernel::Error, gateway: IpAddr, subnets: &[IpNet]) -> bool {
    match err.errno() {
        Some(libc::ENETUNREACH) => true,
        Some(libc::EINVAL) => !subnets.iter().any(|s| s.contains(&gateway)),
        _ => false,
    }
}

/// The IPv4 subnets of the underlay device, for the host-gw diagnostic.
fn underlay_subnets(nl: &mut Netlink, device: &str) -> Vec<IpNet> {
    let Ok(Some(link)) = nl.link_by_name(device) else {
        return Vec::new();
    };
    nl.addresses(link.index)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| matches!(a, IpNet::V4(_)))
        .collect()
}

fn sync_nft(
    plan: &RoutePlan,
    previous: Option<&RoutePlan>,
    report: &mut ApplyReport,
) -> Result<(), RoutingError> {
    let exists = nft::table_exists(nft::Family::Inet, masq::TABLE_NAME)
        .map_err(|e| RoutingError::kernel("checking the nft table inet podwire-node", e))?;
    let unchanged = previous.is_some_and(|p| p.nft == plan.nft);
    if exists && unchanged {
        return Ok(());
    }
    nft::apply_script(&masq::replace_script(&plan.nft))
        .map_err(|e| RoutingError::kernel("loading the masquerade table inet podwire-node", e))?;
    report.note(format!(
        "loaded nft table inet podwire-node (masquerade pods of {} leaving it)",
        plan.cluster_cidr
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(gw: &str, oif: Option<u32>, onlink: bool) -> RouteSpec {
        RouteSpec {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif,
            onlink,
            protocol: ROUTE_PROTOCOL,
        }
    }

    #[test]
    fn host_gw_routes_match_whatever_device_the_kernel_chose() {
        let wanted = spec("192.168.56.12", None, false);
        assert!(same_route(&spec("192.168.56.12", Some(2), false), &wanted));
        assert!(!same_route(&spec("192.168.56.13", Some(2), false), &wanted));
    }

    #[test]
    fn only_gateways_off_the_segment_are_called_unreachable() {
        let subnets: Vec<IpNet> = vec!["192.168.56.11/24".parse().unwrap()];
        let errno = |code| podwire_kernel::Error::Netlink {
            op: "replace route".into(),
            source: std::io::Error::from_raw_os_error(code),
        };
        let far: IpAddr = "192.168.57.12".parse().unwrap();
        let near: IpAddr = "192.168.56.12".parse().unwrap();
        assert!(unreachable_gateway(
            &errno(libc::ENETUNREACH),
            near,
            &subnets
        ));
        assert!(unreachable_gateway(&errno(libc::EINVAL), far, &subnets));
        assert!(!unreachable_gateway(&errno(libc::EINVAL), near, &subnets));
        assert!(!unreachable_gateway(&errno(libc::EEXIST), far, &subnets));
    }

    #[test]
    fn vxlan_routes_must_use_the_device_onlink() {
        let wanted = spec("10.244.2.0", Some(9), true);
        assert!(same_route(&spec("10.244.2.0", Some(9), true), &wanted));
        assert!(!same_route(&spec("10.244.2.0", Some(9), false), &wanted));
        assert!(!same_route(&spec("10.244.2.0", Some(3), true), &wanted));
        let mut foreign = spec("10.244.2.0", Some(9), true);
        foreign.protocol = 4;
        assert!(!same_route(&foreign, &wanted));
    }
}

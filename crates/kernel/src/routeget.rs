//! Route lookups as `ip route get` does them (RTM_GETROUTE without a dump):
//! which table, gateway and device the kernel picks for one packet, either
//! sent from this namespace or arriving on a device (`iif`).

use std::net::IpAddr;

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Netlink, Result};

/// What the kernel decided for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// `unicast`, `local`, `unreachable`, `blackhole`, `prohibit`, ...
    pub kind: String,
    /// The routing table that decided; `None` when the kernel refused the
    /// lookup (it names the route type, not its table).
    pub table: Option<u32>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn kind_name(kind: RouteType) -> String {
    match kind {
        RouteType::Unicast => "unicast".into(),
        RouteType::Local => "local".into(),
        RouteType::Broadcast => "broadcast".into(),
        RouteType::BlackHole => "blackhole".into(),
        RouteType::Unreachable => "unreachable".into(),
        RouteType::Prohibit => "prohibit".into(),
        RouteType::Throw => "throw".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Netlink {
    /// The route for a packet to `dst` (from `src`, arriving on `iif` when
    /// given: a forwarding decision). An error is the kernel's answer
    /// (e.g. ENETUNREACH: no route at all).
    pub fn route_get(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
        mark: Option<u32>,
    ) -> Result<RouteDecision> {
        match self.route_lookup(dst, src, iif, mark) {
            Ok(decision) => Ok(decision),
            // A route that refuses the packet (unreachable, prohibit,
            // blackhole, throw) makes the lookup itself fail, even with
            // `fibmatch`; the kernel's errno names the route type (its
            // fib_props table), so that is what we report.
            Err(err) => match refusing_route_kind(&err) {
                Some(kind) => Ok(RouteDecision {
                    kind: kind.into(),
                    table: None,
                    gateway: None,
                    oif: None,
                    prefsrc: None,
                }),
                None => Err(err),
            },
        }
    }

    fn route_lookup(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
        iif: Option<u32>,
        mark: Option<u32>,
    ) -> Result<RouteDecision> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(route_address(dst)));
        if let Some(src) = src {
            msg.header.source_prefix_length = if src.is_ipv4() { 32 } else { 128 };
            msg.attributes
                .push(RouteAttribute::Source(route_address(src)));
        }
        if let Some(iif) = iif {
            msg.attributes.push(RouteAttribute::Iif(iif));
        }
        if let Some(mark) = mark {
            msg.attributes.push(RouteAttribute::Mark(mark));
        }
        let replies = self.query(
            RouteNetlinkMessage::GetRoute(msg),
            0,
            &format!("route get {dst}"),
        )?;
        let mut decision = RouteDecision {
            kind: "unspec".into(),
            table: Some(u32::from(RouteHeader::RT_TABLE_MAIN)),
            gateway: None,
            oif: None,
            prefsrc: None,
        };
        if let Some(RouteNetlinkMessage::NewRoute(reply)) = replies.into_iter().next() {
            decision.kind = kind_name(reply.header.kind);
            decision.table = Some(u32::from(reply.header.table));
            for a in &reply.attributes {
                match a {
                    RouteAttribute::Table(t) => decision.table = Some(*t),
                    RouteAttribute::Gateway(g) => decision.gateway = addr(g),
                    RouteAttribute::Oif(o) => decision.oif = Some(*o),
                    RouteAttribute::PrefSource(p) => decision.prefsrc = addr(p),
                    _ => {}
                }
            }
        }
        Ok(decision)
    }
}

/// The route type whose lookup fails with this error (`ENETUNREACH`, no
/// route at all, is not one: nothing matched).
fn refusing_route_kind(err: &crate::Error) -> Option<&'static str> {
    let crate::Error::Netlink { source, .. } = err else {
        return None;
    };
    match source.raw_os_error()? {
        libc::EHOSTUNREACH => Some("unreachable"),
        libc::EACCES => Some("prohibit"),
        libc::EINVAL => Some("blackhole"),
        libc::EAGAIN => Some("throw"),
        _ => None,
    }
}

//! VXLAN devices, and the route operations an overlay (or host-gw) agent
//! needs beyond `route.rs`: replace-in-place, `onlink` next hops, an owner
//! tag (the route protocol number) and delete-by-destination.
//!
//! The device is created the way Flannel creates `flannel.1`: a fixed VNI,
//! the node's underlay IP as source, bound to the underlay device, learning
//! off (every remote MAC is programmed statically through the FDB), an MTU
//! reduced by the encapsulation overhead and a deterministic MAC so that a
//! restarted agent (or a peer that cached the MAC) sees the same VTEP.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::format_mac;
use crate::rtnl::CREATE_EXCL;
use crate::{Error, Netlink, Result};

/// What a VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub name: String,
    pub vni: u32,
    /// The underlay source address of encapsulated packets.
    pub local: Ipv4Addr,
    /// The underlay device the tunnel is bound to.
    pub underlay_index: u32,
    /// The UDP destination port (8472 is the Linux/Flannel default, 4789 IANA's).
    pub port: u16,
    pub learning: bool,
    pub mtu: u32,
    pub mac: [u8; 6],
}

/// An existing VXLAN device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub name: String,
    /// The link kind; anything but `vxlan` means the name is taken by
    /// something else.
    pub kind: Option<String>,
    pub vni: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub underlay_index: Option<u32>,
    pub port: Option<u16>,
    pub learning: Option<bool>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
}

impl VxlanLink {
    /// Whether the attributes that cannot be changed in place (VNI, source,
    /// underlay, port, learning) are those of `config`. MTU, MAC and state
    /// can be fixed with a SETLINK; the rest needs a new device.
    pub fn same_tunnel(&self, config: &VxlanConfig) -> bool {
        self.kind.as_deref() == Some("vxlan")
            && self.vni == Some(config.vni)
            && self.local == Some(config.local)
            && self.underlay_index == Some(config.underlay_index)
            && self.port == Some(config.port)
            && self.learning.unwrap_or(true) == config.learning
    }
}

fn parse_vxlan(msg: LinkMessage) -> VxlanLink {
    let mut link = VxlanLink {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        vni: None,
        local: None,
        underlay_index: None,
        port: None,
        learning: None,
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&bytes);
                link.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        NlLinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        NlLinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            for attr in attrs {
                                match attr {
                                    InfoVxlan::Id(vni) => link.vni = Some(vni),
                                    InfoVxlan::Local(ip) => link.local = Some(ip),
                                    InfoVxlan::Link(index) => link.underlay_index = Some(index),
                                    InfoVxlan::Port(port) => link.port = Some(port),
                                    InfoVxlan::Learning(on) => link.learning = Some(on),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// One route with everything an agent compares and owns: `onlink` (the
/// gateway need not be on a connected subnet, used for VXLAN next hops) and
/// `protocol`, the owner tag that lets an agent find its own routes again
/// after a restart without touching anyone else's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    /// RTPROT_* number (`ip route ... proto N`).
    pub protocol: u8,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " oif {oif}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn family_of(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    }
}

pub(crate) fn route_message(spec: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(&spec.dst);
    msg.header.destination_prefix_length = spec.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(spec.protocol);
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if spec.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if spec.onlink {
        msg.header.flags |= RouteFlags::Onlink;
    }
    if spec.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_address(
                spec.dst.network(),
            )));
    }
    if let Some(gw) = spec.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(route_address(gw)));
    }
    if let Some(oif) = spec.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

fn is_missing(err: &Error) -> bool {
    matches!(
        err.errno(),
        Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::ENODEV)
    )
}

impl Netlink {
    /// Creates a VXLAN device (`ip link add NAME address MAC mtu MTU type
    /// vxlan id VNI local IP dev UNDERLAY dstport PORT nolearning`), down.
    /// Fails with EEXIST when the name is taken.
    pub fn create_vxlan(&mut self, config: &VxlanConfig) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(config.name.clone()));
        msg.attributes.push(LinkAttribute::Mtu(config.mtu));
        msg.attributes
            .push(LinkAttribute::Address(config.mac.to_vec()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Vxlan),
            NlLinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(config.vni),
                InfoVxlan::Local(config.local),
                InfoVxlan::Link(config.underlay_index),
                InfoVxlan::Port(config.port),
                InfoVxlan::Learning(config.learning),
            ])),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            CREATE_EXCL,
            &format!(
                "create vxlan {} (vni {}, local {}, dstport {}, mac {})",
                config.name,
                config.vni,
                config.local,
                config.port,
                format_mac(&config.mac)
            ),
        )
    }

    /// The link called `name` with its VXLAN attributes, or None.
    pub fn vxlan_by_name(&mut self, name: &str) -> Result<Option<VxlanLink>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.query(
            RouteNetlinkMessage::GetLink(msg),
            0,
            &format!("get link {name}"),
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(m) => Some(parse_vxlan(m)),
                _ => None,
            })),
            Err(err) if is_missing(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Sets a link's MAC address.
    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set mac {} on link {index}", format_mac(&mac)),
        )
    }

    /// Adds a route or replaces the one with the same destination (`ip
    /// route replace`): idempotent, and a changed next hop is updated in
    /// place with no window where the destination is unrouted.
    pub fn replace_route(&mut self, spec: &RouteSpec) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route_message(spec)),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace route {spec}"),
        )
    }

    /// Deletes the main-table route to `dst` whatever its next hop, limited
    /// to routes tagged `protocol` when given; Ok(false) when there is none.
    pub fn delete_route_to(&mut self, dst: IpNet, protocol: Option<u8>) -> Result<bool> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family_of(&dst);
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // NOWHERE and type 0 are the kernel's wildcards for a delete.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = protocol.map(RouteProtocol::from).unwrap_or_default();
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(dst.network())));
        }
        match self.request(
            RouteNetlinkMessage::DelRoute(msg),
            0,
            &format!("delete route {dst}"),
        ) {
            Ok(()) => Ok(true),
            Err(err) if is_missing(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The main-table routes of one family with their flags and protocol.
    pub fn route_specs(&mut self, v6: bool) -> Result<Vec<RouteSpec>> {
        let mut req = RouteMessage::default();
        req.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let replies = self.dump(RouteNetlinkMessage::GetRoute(req), "list routes")?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let mut table = u32::from(msg.header.table);
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                        dst = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                        dst = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                        gateway = Some(IpAddr::V4(*ip))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                        gateway = Some(IpAddr::V6(*ip))
                    }
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let unspecified = if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            let Ok(dst) = IpNet::new(
                dst.unwrap_or(unspecified),
                msg.header.destination_prefix_length,
            ) else {
                continue;
            };
            out.push(RouteSpec {
                dst,
                gateway,
                oif,
                onlink: msg.header.flags.contains(RouteFlags::Onlink),
                protocol: u8::from(msg.header.protocol),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VxlanConfig {
        VxlanConfig {
            name: "podwire.1".into(),
            vni: 1,
            local: Ipv4Addr::new(192, 168, 56, 11),
            underlay_index: 2,
            port: 8472,
            learning: false,
            mtu: 1450,
            mac: [2, 0x70, 192, 168, 56, 11],
        }
    }

    #[test]
    fn same_tunnel_ignores_what_setlink_can_fix() {
        let cfg = config();
        let mut link = VxlanLink {
            index: 5,
            name: cfg.name.clone(),
            kind: Some("vxlan".into()),
            vni: Some(1),
            local: Some(cfg.local),
            underlay_index: Some(2),
            port: Some(8472),
            learning: Some(false),
            mtu: 1500,
            mac: None,
            up: false,
        };
        assert!(link.same_tunnel(&cfg));
        link.local = Some(Ipv4Addr::new(192, 168, 56, 12));
        assert!(!link.same_tunnel(&cfg));
        link.local = Some(cfg.local);
        link.kind = Some("bridge".into());
        assert!(!link.same_tunnel(&cfg));
    }

    #[test]
    fn onlink_routes_carry_the_flag_and_owner() {
        let spec = RouteSpec {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some("10.244.2.0".parse().unwrap()),
            oif: Some(9),
            onlink: true,
            protocol: 112,
        };
        let msg = route_message(&spec);
        assert!(msg.header.flags.contains(RouteFlags::Onlink));
        assert_eq!(u8::from(msg.header.protocol), 112);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert_eq!(
            spec.to_string(),
            "10.244.2.0/24 via 10.244.2.0 oif 9 onlink proto 112"
        );
    }
}

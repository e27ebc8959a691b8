//! Routes in the main table.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::CREATE_EXCL;
use crate::{Netlink, Result};

/// One route: destination, optional gateway, optional output link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn message(route: &Route) -> RouteMessage {
    crate::vxlan::route_message(&crate::vxlan::RouteSpec {
        dst: route.dst,
        gateway: route.gateway,
        oif: route.oif,
        onlink: false,
        protocol: RTPROT_BOOT,
    })
}

/// `proto boot`: what `ip route add` uses by default.
const RTPROT_BOOT: u8 = 3;

impl Netlink {
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(message(route)),
            CREATE_EXCL,
            &format!("add route {}", describe(route)),
        )
    }

    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelRoute(message(route)),
            0,
            &format!("delete route {}", describe(route)),
        )
    }

    /// Routes of the main table for one family (`v6` selects IPv6).
    pub fn routes(&mut self, v6: bool) -> Result<Vec<Route>> {
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
            if msg.header.table != RouteHeader::RT_TABLE_MAIN {
                continue;
            }
            let mut dst = None;
            let mut gateway = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
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
            let unspecified: IpAddr = if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let Ok(dst) = IpNet::new(
                dst.unwrap_or(unspecified),
                msg.header.destination_prefix_length,
            ) else {
                continue;
            };
            out.push(Route { dst, gateway, oif });
        }
        Ok(out)
    }
}

fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gw) => format!("{} via {gw}", route.dst),
        None => route.dst.to_string(),
    }
}

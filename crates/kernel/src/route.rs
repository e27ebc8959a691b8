//! Routes in the main table.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::RouteMessage;

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
        Ok(self
            .route_specs(v6)?
            .into_iter()
            .map(|spec| Route {
                dst: spec.dst,
                gateway: spec.gateway,
                oif: spec.oif,
            })
            .collect())
    }
}

fn describe(route: &Route) -> String {
    match route.gateway {
        Some(gw) => format!("{} via {gw}", route.dst),
        None => route.dst.to_string(),
    }
}

//! Interface addresses.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::CREATE_EXCL;
use crate::{Netlink, Result};

fn family(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn message(index: u32, net: &IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(&net.addr());
    msg.header.prefix_len = net.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes.push(AddressAttribute::Local(net.addr()));
    msg.attributes.push(AddressAttribute::Address(net.addr()));
    msg
}

impl Netlink {
    /// Adds an address; EEXIST is returned as an error for the caller to judge.
    /// `no_dad` skips IPv6 duplicate address detection, so the address is
    /// usable at once instead of after about a second of probing.
    pub fn add_address(&mut self, index: u32, net: &IpNet, no_dad: bool) -> Result<()> {
        let mut msg = message(index, net);
        if let IpNet::V4(v4) = net {
            if v4.prefix_len() < 31 {
                msg.attributes
                    .push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        } else if no_dad {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            CREATE_EXCL,
            &format!("add address {net}"),
        )
    }

    pub fn delete_address(&mut self, index: u32, net: &IpNet) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelAddress(message(index, net)),
            0,
            &format!("delete address {net}"),
        )
    }

    /// The addresses on one link (global and link scope), as address/prefix.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>> {
        let mut req = AddressMessage::default();
        req.header.index = index;
        let replies = self.dump(RouteNetlinkMessage::GetAddress(req), "list addresses")?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if msg.header.index != index {
                continue;
            }
            let mut addr = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr
                && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
            {
                out.push(net);
            }
        }
        Ok(out)
    }
}

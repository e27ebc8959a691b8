//! Neighbours (the ARP/ND table) and bridge-FDB entries of a device.
//!
//! An overlay needs both, programmed statically: a permanent neighbour tells
//! the kernel the MAC of a remote VTEP's overlay address (so it never ARPs
//! across the overlay), and an FDB entry on the VXLAN device tells the VXLAN
//! driver which underlay IP owns that MAC (so it never floods). Both are
//! written with NLM_F_REPLACE, so writing the same entry twice is a no-op and
//! a changed entry (a node that got a new IP) is updated in place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::link::format_mac;
use crate::{Error, Netlink, Result};

/// NUD_PERMANENT: never expires, never re-probed.
pub const NUD_PERMANENT: u16 = 0x80;
/// NUD_NOARP: a valid entry that needs no resolution (`bridge fdb` adds it
/// together with PERMANENT).
pub const NUD_NOARP: u16 = 0x40;

/// One entry of the ARP/ND table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// The raw NUD_* state bits.
    pub state: u16,
}

impl Neighbour {
    pub fn is_permanent(&self) -> bool {
        self.state & NUD_PERMANENT != 0
    }
}

/// One forwarding-database entry of a device (for a VXLAN device: which
/// underlay IP a MAC lives behind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// The remote underlay IP (VXLAN), if the entry has one.
    pub dst: Option<IpAddr>,
    /// The raw NUD_* state bits.
    pub state: u16,
    /// The raw NTF_* flags (NTF_SELF = 0x02 for entries of the device itself).
    pub flags: u8,
}

impl FdbEntry {
    pub fn is_permanent(&self) -> bool {
        self.state & NUD_PERMANENT != 0
    }
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// NDA_DST decoded whatever the message family: in AF_BRIDGE replies
/// netlink-packet-route cannot know the address family and hands back bytes.
fn address_of(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            ))),
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        },
        _ => None,
    }
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    if bytes.len() != 6 {
        return None;
    }
    mac.copy_from_slice(bytes);
    Some(mac)
}

fn is_missing(err: &Error) -> bool {
    matches!(
        err.errno(),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ESRCH)
    )
}

fn neighbour_message(ifindex: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(&ip);
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}

fn fdb_message(ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = ifindex;
    // NTF_SELF: the entry belongs to the device's own table (the VXLAN
    // driver's), not to a bridge master above it.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(dst) = dst {
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    }
    msg
}

impl Netlink {
    /// Adds or replaces a permanent neighbour `ip -> mac` on `ifindex`
    /// (`ip neigh replace IP lladdr MAC dev DEV nud permanent`).
    pub fn replace_neighbour(&mut self, ifindex: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = neighbour_message(ifindex, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!(
                "replace neighbour {ip} lladdr {} on link {ifindex}",
                format_mac(&mac)
            ),
        )
    }

    /// Deletes the neighbour `ip` on `ifindex`; Ok(false) when it was not there.
    pub fn delete_neighbour(&mut self, ifindex: u32, ip: IpAddr) -> Result<bool> {
        match self.request(
            RouteNetlinkMessage::DelNeighbour(neighbour_message(ifindex, ip)),
            0,
            &format!("delete neighbour {ip} on link {ifindex}"),
        ) {
            Ok(()) => Ok(true),
            Err(err) if is_missing(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The IPv4 and IPv6 neighbours of one link.
    pub fn neighbours(&mut self, ifindex: u32) -> Result<Vec<Neighbour>> {
        let mut req = NeighbourMessage::default();
        // With strict checking the kernel filters on NDA_IFINDEX itself; the
        // check below keeps older kernels (which ignore it) correct.
        req.attributes.push(NeighbourAttribute::IfIndex(ifindex));
        let replies = self.dump(RouteNetlinkMessage::GetNeighbour(req), "list neighbours")?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewNeighbour(msg) = reply else {
                continue;
            };
            if msg.header.ifindex != ifindex
                || !matches!(
                    msg.header.family,
                    AddressFamily::Inet | AddressFamily::Inet6
                )
            {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(addr) => ip = address_of(addr),
                    NeighbourAttribute::LinkLayerAddress(bytes) => mac = mac_of(bytes),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(Neighbour {
                    ifindex,
                    ip,
                    mac,
                    state: u16::from(msg.header.state),
                });
            }
        }
        Ok(out)
    }

    /// Adds or replaces a permanent FDB entry `mac -> dst` on the device
    /// itself (`bridge fdb replace MAC dev DEV dst IP self permanent`).
    pub fn replace_fdb(&mut self, ifindex: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let mut msg = fdb_message(ifindex, mac, Some(dst));
        msg.header.state = NeighbourState::Permanent;
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!(
                "replace fdb {} dst {dst} on link {ifindex}",
                format_mac(&mac)
            ),
        )
    }

    /// Deletes the FDB entry for `mac` (only its remote `dst` when given);
    /// Ok(false) when it was not there.
    pub fn delete_fdb(&mut self, ifindex: u32, mac: [u8; 6], dst: Option<IpAddr>) -> Result<bool> {
        match self.request(
            RouteNetlinkMessage::DelNeighbour(fdb_message(ifindex, mac, dst)),
            0,
            &format!("delete fdb {} on link {ifindex}", format_mac(&mac)),
        ) {
            Ok(()) => Ok(true),
            Err(err) if is_missing(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The FDB entries of one device's own table (NTF_SELF).
    pub fn fdb_entries(&mut self, ifindex: u32) -> Result<Vec<FdbEntry>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        // ndm_ifindex of an AF_BRIDGE dump selects the port device.
        req.header.ifindex = ifindex;
        let replies = self.dump(RouteNetlinkMessage::GetNeighbour(req), "list fdb")?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewNeighbour(msg) = reply else {
                continue;
            };
            if msg.header.ifindex != ifindex || msg.header.family != AddressFamily::Bridge {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(bytes) => mac = mac_of(bytes),
                    NeighbourAttribute::Destination(addr) => dst = address_of(addr),
                    _ => {}
                }
            }
            if let Some(mac) = mac {
                out.push(FdbEntry {
                    ifindex,
                    mac,
                    dst,
                    state: u16::from(msg.header.state),
                    flags: msg.header.flags.bits(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_family_destinations_are_decoded_from_bytes() {
        assert_eq!(
            address_of(&NeighbourAddress::Other(vec![192, 168, 56, 11])),
            Some(IpAddr::V4(Ipv4Addr::new(192, 168, 56, 11)))
        );
        assert_eq!(address_of(&NeighbourAddress::Other(vec![1, 2, 3])), None);
        assert_eq!(mac_of(&[1, 2, 3, 4, 5, 6]), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(mac_of(&[1, 2, 3]), None);
    }

    #[test]
    fn fdb_messages_target_the_device_itself() {
        let msg = fdb_message(7, [2, 0, 0, 0, 0, 1], Some("10.0.0.1".parse().unwrap()));
        assert_eq!(msg.header.family, AddressFamily::Bridge);
        assert_eq!(msg.header.flags, NeighbourFlags::Own);
        assert_eq!(msg.header.ifindex, 7);
        assert_eq!(msg.attributes.len(), 2);
    }
}

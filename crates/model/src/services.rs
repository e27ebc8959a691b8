//! Service addresses every component agrees on: kube-dns's ClusterIP is a
//! fixed address of the service range (cluster DNS serves it, pods'
//! resolv.conf names it, the lab's allocator keeps it free).

use std::net::IpAddr;

use ipnet::IpNet;

/// kube-dns's ClusterIP is this many addresses into the service range (.10),
/// so it is never handed out to another Service.
pub const KUBE_DNS_HOST_OFFSET: u32 = 10;

/// The address `offset` hosts into `net`, if it lies inside.
pub fn nth_address(net: IpNet, offset: u128) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            if host_bits < 128 && offset >= (1u128 << host_bits) {
                return None;
            }
            let base = u128::from(u32::from(n.network()));
            u32::try_from(base + offset)
                .ok()
                .map(|a| IpAddr::V4(a.into()))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            if host_bits < 128 && offset >= (1u128 << host_bits) {
                return None;
            }
            u128::from(n.network())
                .checked_add(offset)
                .map(|a| IpAddr::V6(a.into()))
        }
    }
}

/// kube-dns's ClusterIP for a service range (10.96.0.10 for 10.96.0.0/12).
pub fn kube_dns_ip(service_cidr: IpNet) -> Option<IpAddr> {
    nth_address(service_cidr, u128::from(KUBE_DNS_HOST_OFFSET))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_inside_the_range_only() {
        let v4: IpNet = "10.96.0.0/12".parse().unwrap();
        assert_eq!(kube_dns_ip(v4), Some("10.96.0.10".parse().unwrap()));
        assert_eq!(nth_address(v4, 1), Some("10.96.0.1".parse().unwrap()));
        assert_eq!(nth_address("10.96.0.0/29".parse().unwrap(), 8), None);
        let v6: IpNet = "fd00:10:96::/112".parse().unwrap();
        assert_eq!(kube_dns_ip(v6), Some("fd00:10:96::a".parse().unwrap()));
    }
}

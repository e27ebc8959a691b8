//! The plugin's firewall plan: one nftables table, `inet podwire-cni`, per
//! network namespace. Its chains and rules are fixed and only refer to maps;
//! what a container adds (masquerade, published ports, hairpin) are map
//! elements, so an ADD or DEL is one small netlink batch and never rewrites
//! rules. Chains specific to one network (its subnets) are created once, by
//! the first ADD that needs them.

use std::net::IpAddr;

use ipnet::IpNet;
use podwire_kernel::nft::{Element, ElementData, Field, Verdict};

use crate::error::{Error, Result};
use crate::netconf::PortMapping;

pub const TABLE: &str = "podwire-cni";
pub const FAMILY: &str = "inet";
/// MAC spoof checking must see bridged frames, which only the bridge family
/// does; its table has the same name and is created only when asked for.
pub const SPOOF_FAMILY: &str = "bridge";

/// The bridge-family table for `macspoofchk`: frames entering the bridge from
/// a guarded port must carry that port's container MAC.
pub fn spoof_script() -> String {
    let t = format!("{SPOOF_FAMILY} {TABLE}");
    format!(
        "table {t} {{\n\tset spoof_ports {{ type ifname; }}\n\tset spoof_allowed {{ type ether_addr . ifname; }}\n\tchain prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n}}\nflush chain {t} prerouting\nadd rule {t} prerouting iifname @spoof_ports ether saddr . iifname != @spoof_allowed drop\n"
    )
}

/// An element and the map it goes in: what one attachment owns spans
/// several maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub set: String,
    pub element: Element,
}

impl MapEntry {
    fn new(set: impl Into<String>, element: Element) -> MapEntry {
        MapEntry {
            set: set.into(),
            element,
        }
    }
}

/// The spoof-check elements of one port.
pub fn spoof_elements(host_veth: &str, mac: [u8; 6]) -> Vec<MapEntry> {
    let port = Field::IfName(host_veth.to_string());
    vec![
        MapEntry::new("spoof_ports", Element::keyed(std::slice::from_ref(&port))),
        MapEntry::new("spoof_allowed", Element::keyed(&[Field::Mac(mac), port])),
    ]
}

/// The fixed part of the table, safe to load again at any time: it declares
/// maps without touching their elements and rewrites only fixed chains.
pub fn base_script() -> String {
    let t = format!("{FAMILY} {TABLE}");
    let mut s = String::new();
    s.push_str(&format!("table {t} {{\n"));
    for (name, kind) in [
        ("masq4", "ipv4_addr : verdict"),
        ("masq6", "ipv6_addr : verdict"),
        ("hairpin4", "ipv4_addr : verdict"),
        ("hairpin6", "ipv6_addr : verdict"),
        (
            "hostports4",
            "inet_proto . inet_service : ipv4_addr . inet_service",
        ),
        (
            "hostports6",
            "inet_proto . inet_service : ipv6_addr . inet_service",
        ),
        (
            "hostports4_ip",
            "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
        ),
        (
            "hostports6_ip",
            "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
        ),
    ] {
        s.push_str(&format!("\tmap {name} {{ type {kind}; }}\n"));
    }
    s.push_str("\tchain prerouting { type nat hook prerouting priority -100; policy accept; }\n");
    s.push_str("\tchain output { type nat hook output priority -100; policy accept; }\n");
    s.push_str("\tchain postrouting { type nat hook postrouting priority 100; policy accept; }\n");
    s.push_str("\tchain hostports { }\n");
    s.push_str("}\n");
    let rules: &[(&str, &str)] = &[
        (
            "hostports",
            "dnat ip to ip daddr . meta l4proto . th dport map @hostports4_ip",
        ),
        (
            "hostports",
            "dnat ip to meta l4proto . th dport map @hostports4",
        ),
        (
            "hostports",
            "dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostports6_ip",
        ),
        (
            "hostports",
            "dnat ip6 to meta l4proto . th dport map @hostports6",
        ),
        ("prerouting", "fib daddr type local jump hostports"),
        ("output", "fib daddr type local jump hostports"),
        ("postrouting", "ct status dnat ip daddr vmap @hairpin4"),
        ("postrouting", "ct status dnat ip6 daddr vmap @hairpin6"),
        // Host processes reaching 127.0.0.1:hostPort: the reply must come back
        // to a real address.
        (
            "postrouting",
            "ct status dnat ip saddr 127.0.0.0/8 masquerade",
        ),
        ("postrouting", "ip saddr vmap @masq4"),
        ("postrouting", "ip6 saddr vmap @masq6"),
    ];
    for chain in ["hostports", "prerouting", "output", "postrouting"] {
        s.push_str(&format!("flush chain {t} {chain}\n"));
        for (c, rule) in rules {
            if *c == chain {
                s.push_str(&format!("add rule {t} {chain} {rule}\n"));
            }
        }
    }
    s
}

/// A short, stable, chain-name-safe id for one network and its subnets.
pub fn network_id(name: &str, subnets: &[IpNet]) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    };
    feed(name.as_bytes());
    for s in subnets {
        feed(s.to_string().as_bytes());
    }
    let safe: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(24)
        .collect();
    format!("{safe}-{:08x}", hash as u32)
}

pub fn masq_chain(netid: &str) -> String {
    format!("masq-{netid}")
}

pub fn hairpin_chain(netid: &str) -> String {
    format!("hairpin-{netid}")
}

/// The chains of one network: where its containers' traffic is masqueraded
/// (leaving the subnet, not multicast) and which sources are masqueraded when
/// they reach a published port of the same network (hairpin).
pub fn network_script(netid: &str, subnets: &[IpNet]) -> String {
    let t = format!("{FAMILY} {TABLE}");
    let masq = masq_chain(netid);
    let hairpin = hairpin_chain(netid);
    let mut s = format!("table {t} {{\n\tchain {masq} {{ }}\n\tchain {hairpin} {{ }}\n}}\n");
    s.push_str(&format!("flush chain {t} {masq}\n"));
    for subnet in subnets {
        let (fam, net) = family_and_net(subnet);
        s.push_str(&format!("add rule {t} {masq} {fam} daddr {net} return\n"));
    }
    s.push_str(&format!(
        "add rule {t} {masq} ip daddr 224.0.0.0/4 return\n"
    ));
    s.push_str(&format!("add rule {t} {masq} ip6 daddr ff00::/8 return\n"));
    s.push_str(&format!("add rule {t} {masq} masquerade\n"));
    s.push_str(&format!("flush chain {t} {hairpin}\n"));
    for subnet in subnets {
        let (fam, net) = family_and_net(subnet);
        s.push_str(&format!(
            "add rule {t} {hairpin} {fam} saddr {net} masquerade\n"
        ));
    }
    s
}

fn family_and_net(subnet: &IpNet) -> (&'static str, IpNet) {
    match subnet {
        IpNet::V4(_) => ("ip", subnet.trunc()),
        IpNet::V6(_) => ("ip6", subnet.trunc()),
    }
}

/// The maps of the inet table that hold per-container elements.
pub const CONTAINER_MAPS: [&str; 8] = [
    "masq4",
    "masq6",
    "hairpin4",
    "hairpin6",
    "hostports4",
    "hostports6",
    "hostports4_ip",
    "hostports6_ip",
];

/// The sets of the bridge table that hold per-port spoof-check elements.
pub const SPOOF_SETS: [&str; 2] = ["spoof_ports", "spoof_allowed"];

/// Owner tags stay short: they ride along with every element.
const TAG_LEN: usize = 127;

fn short_hash(parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for (i, part) in parts.iter().enumerate() {
        for b in part.bytes().chain((i + 1 < parts.len()).then_some(0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    format!("#{hash:016x}")
}

/// The start of every owner tag of one plugin type and network
/// (`<plugin> <network> `), for GC to find that network's elements.
pub fn owner_prefix(plugin: &str, network: &str) -> String {
    let net = if network.len() <= 40 {
        network.to_string()
    } else {
        short_hash(&[network])
    };
    format!("{plugin} {net} ")
}

/// The owner tag every element of one attachment carries: plugin type,
/// network, container ID and interface (a hash of the last two when they do
/// not fit). Elements then say whom they belong to, so DEL and GC can find
/// them when the attachment record is lost or damaged.
pub fn owner_tag(plugin: &str, network: &str, container_id: &str, ifname: &str) -> String {
    let prefix = owner_prefix(plugin, network);
    let plain = format!("{container_id} {ifname}");
    if prefix.len() + plain.len() <= TAG_LEN {
        format!("{prefix}{plain}")
    } else {
        format!("{prefix}{}", short_hash(&[container_id, ifname]))
    }
}

/// The container address an element of `set` names: the key of a
/// masquerade or hairpin element, the value (DNAT target) of a hostport.
pub fn element_ip(set: &str, element: &Element) -> Option<IpAddr> {
    let bytes = match &element.data {
        _ if !set.starts_with("hostports") => &element.key,
        ElementData::Value(value) => value,
        _ => return None,
    };
    if set.ends_with('4') || set.ends_with("4_ip") {
        let octets: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
        Some(IpAddr::from(octets))
    } else {
        let octets: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        Some(IpAddr::from(octets))
    }
}

/// (protocol, host port) of a hostport element's key.
pub fn hostport_of(set: &str, key: &[u8]) -> Option<(u8, u16)> {
    let skip = match set {
        "hostports4" | "hostports6" => 0,
        "hostports4_ip" => 4,
        "hostports6_ip" => 16,
        _ => return None,
    };
    let proto = *key.get(skip)?;
    let port = key.get(skip + 4..skip + 6)?;
    Some((proto, u16::from_be_bytes([port[0], port[1]])))
}

/// The host port (interface name) a spoof-check element guards.
pub fn spoof_ifname(set: &str, key: &[u8]) -> Option<String> {
    let name = match set {
        "spoof_ports" => key.get(..16)?,
        "spoof_allowed" => key.get(8..24)?,
        _ => return None,
    };
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

pub fn protocol_number(protocol: &str) -> Result<u8> {
    match protocol.to_ascii_lowercase().as_str() {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "sctp" => Ok(132),
        other => Err(Error::config(
            format!("unsupported port mapping protocol {other:?}"),
            "use tcp, udp or sctp",
        )),
    }
}

/// Validates port mappings before anything is created.
pub fn validate_mappings(mappings: &[PortMapping]) -> Result<()> {
    for m in mappings {
        protocol_number(&m.protocol)?;
        if m.host_port == 0 || m.container_port == 0 {
            return Err(Error::config(
                format!("invalid port mapping {}:{}", m.host_port, m.container_port),
                "hostPort and containerPort must be between 1 and 65535",
            ));
        }
        if let Some(ip) = &m.host_ip
            && !ip.is_empty()
            && ip.parse::<IpAddr>().is_err()
        {
            return Err(Error::config(
                format!("invalid hostIP {ip:?} in a port mapping"),
                "give an IPv4 or IPv6 address",
            ));
        }
    }
    Ok(())
}

/// The map elements one container owns.
pub fn container_elements(
    netid: &str,
    ips: &[IpAddr],
    ip_masq: bool,
    mappings: &[PortMapping],
) -> Result<Vec<MapEntry>> {
    let mut out = Vec::new();
    for ip in ips {
        let v4 = ip.is_ipv4();
        let suffix = if v4 { "4" } else { "6" };
        if ip_masq {
            out.push(MapEntry::new(
                format!("masq{suffix}"),
                Element::keyed(&[Field::Addr(*ip)]).with_verdict(Verdict::Jump(masq_chain(netid))),
            ));
        }
        let mut any_mapping = false;
        for m in mappings {
            let proto = protocol_number(&m.protocol)?;
            let target = [Field::Addr(*ip), Field::Port(m.container_port)];
            let host_ip = match m.host_ip.as_deref().filter(|h| !h.is_empty()) {
                Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                    Error::config(format!("invalid hostIP {text:?}"), "give an IP address")
                })?),
                None => None,
            };
            match host_ip {
                Some(h) if h.is_ipv4() != v4 => continue,
                Some(h) => out.push(MapEntry::new(
                    format!("hostports{suffix}_ip"),
                    Element::keyed(&[
                        Field::Addr(h),
                        Field::Proto(proto),
                        Field::Port(m.host_port),
                    ])
                    .with_value(&target),
                )),
                None => out.push(MapEntry::new(
                    format!("hostports{suffix}"),
                    Element::keyed(&[Field::Proto(proto), Field::Port(m.host_port)])
                        .with_value(&target),
                )),
            }
            any_mapping = true;
        }
        if any_mapping {
            out.push(MapEntry::new(
                format!("hairpin{suffix}"),
                Element::keyed(&[Field::Addr(*ip)])
                    .with_verdict(Verdict::Jump(hairpin_chain(netid))),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_kernel::nft::encode_concat;

    fn pm(host: u16, cport: u16, proto: &str, host_ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: cport,
            protocol: proto.into(),
            host_ip: host_ip.map(String::from),
        }
    }

    #[test]
    fn masquerade_and_mappings_become_elements() {
        let ips: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let els = container_elements(
            "n-1",
            &ips,
            true,
            &[
                pm(8080, 80, "tcp", None),
                pm(53, 53, "udp", Some("127.0.0.1")),
            ],
        )
        .unwrap();
        let sets: Vec<&str> = els.iter().map(|e| e.set.as_str()).collect();
        assert_eq!(
            sets,
            vec![
                "masq4",
                "hostports4",
                "hostports4_ip",
                "hairpin4",
                "masq6",
                "hostports6",
                "hairpin6"
            ]
        );
        assert_eq!(
            els[0].element.data,
            ElementData::Verdict(Verdict::Jump("masq-n-1".into()))
        );
        assert_eq!(
            els[1].element.key,
            encode_concat(&[Field::Proto(6), Field::Port(8080)])
        );
        assert_eq!(
            els[1].element.data,
            ElementData::Value(encode_concat(&[Field::Addr(ips[0]), Field::Port(80)]))
        );
        assert_eq!(els[2].element.key[..4], [127, 0, 0, 1]);
    }

    #[test]
    fn spoof_check_guards_one_port_with_its_mac() {
        let els = spoof_elements("veth1", [2, 0, 0, 0, 0, 1]);
        assert_eq!(els[0].element.key[..6], *b"veth1\0");
        assert_eq!(els[1].element.key[..8], [2, 0, 0, 0, 0, 1, 0, 0]);
        assert!(spoof_script().contains("ether saddr . iifname != @spoof_allowed drop"));
    }

    #[test]
    fn owner_tags_fit_and_name_their_attachment() {
        let c = owner_tag("podwire", "podnet", "abc", "eth0");
        assert_eq!(c, "podwire podnet abc eth0");
        assert!(c.starts_with(&owner_prefix("podwire", "podnet")));
        assert_ne!(c, owner_tag("podwire-portmap", "podnet", "abc", "eth0"));
        let id = "f".repeat(64);
        let c = owner_tag("podwire-portmap", "podnet", &id, "eth0");
        assert!(c.contains(&id), "{c}");
        let long = "a".repeat(300);
        let c = owner_tag("podwire", &long, &long, "eth0");
        assert!(c.len() <= 127, "{c}");
        assert!(c.starts_with(&owner_prefix("podwire", &long)));
        assert_ne!(c, owner_tag("podwire", &long, &long, "eth1"));
    }

    #[test]
    fn addresses_and_ports_are_read_back_from_raw_elements() {
        let ip: IpAddr = "10.1.0.5".parse().unwrap();
        let ip6: IpAddr = "fd00::5".parse().unwrap();
        let els = container_elements(
            "n",
            &[ip, ip6],
            true,
            &[
                pm(8080, 80, "udp", None),
                pm(53, 53, "tcp", Some("fd00::1")),
            ],
        )
        .unwrap();
        for e in &els {
            let key = &e.element.key;
            let got = element_ip(&e.set, &e.element).unwrap();
            assert_eq!(got.is_ipv4(), e.set.contains('4'), "{}", e.set);
            assert!(got == ip || got == ip6, "{}", e.set);
            if e.set.starts_with("hostports") {
                let (proto, port) = hostport_of(&e.set, key).unwrap();
                assert!((proto, port) == (17, 8080) || (proto, port) == (6, 53));
            }
        }
        let spoof = spoof_elements("vethabc", [2, 0, 0, 0, 0, 1]);
        for e in &spoof {
            assert_eq!(
                spoof_ifname(&e.set, &e.element.key).as_deref(),
                Some("vethabc")
            );
        }
    }

    #[test]
    fn nothing_without_masquerade_or_mappings() {
        let ips: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap()];
        assert!(
            container_elements("n", &ips, false, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_mappings_are_config_errors() {
        assert!(validate_mappings(&[pm(1, 2, "icmp", None)]).is_err());
        assert!(validate_mappings(&[pm(0, 2, "tcp", None)]).is_err());
        assert!(validate_mappings(&[pm(1, 2, "tcp", Some("nope"))]).is_err());
        validate_mappings(&[pm(1, 2, "TCP", Some("10.0.0.1"))]).unwrap();
    }

    #[test]
    fn scripts_name_the_network_chains() {
        let subnets: Vec<IpNet> = vec!["10.1.0.7/24".parse().unwrap()];
        let id = network_id("my net!", &subnets);
        assert!(id.starts_with("mynet-"));
        assert_eq!(id, network_id("my net!", &subnets));
        assert_ne!(id, network_id("my net!", &["10.2.0.0/24".parse().unwrap()]));
        let s = network_script(&id, &subnets);
        assert!(s.contains(&format!(
            "add rule inet podwire-cni masq-{id} ip daddr 10.1.0.0/24 return"
        )));
        assert!(s.contains(&format!(
            "add rule inet podwire-cni hairpin-{id} ip saddr 10.1.0.0/24 masquerade"
        )));
        let base = base_script();
        assert!(base.contains("map hostports4_ip"));
        assert_eq!(base.matches("flush chain").count(), 4);
    }
}

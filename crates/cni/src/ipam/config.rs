//! The netconf's "ipam" object: parsing, host-local's defaults and validation,
//! so the allocator only ever sees ranges that are safe to walk.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::{Error, Result};

/// host-local's default store location; sharing it lets a node switch plugins.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The parsed and validated IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<RouteConfig>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
}

/// One address is allocated from each range set; the ranges in a set are
/// alternatives of the same IP family.
pub type RangeSet = Vec<Range>;

/// One contiguous, inclusive block of allocatable addresses inside a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

// Addresses are parsed from strings by hand rather than through ipnet's serde
// impls so that errors can name the offending field and value.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default)]
    subnet: Option<String>,
    #[serde(default)]
    range_start: Option<String>,
    #[serde(default)]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    #[serde(default)]
    routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    resolv_conf: Option<String>,
}

impl IpamConfig {
    /// `ipam` is the netconf's "ipam" object. Accepts `ranges` (array of range
    /// sets, each an array of {subnet, rangeStart, rangeEnd, gateway}), and
    /// host-local's legacy single-range form (top-level
    /// subnet/rangeStart/rangeEnd/gateway), `routes` [{dst, gw}], `dataDir`
    /// (default /var/lib/cni/networks), `resolvConf`.
    pub fn from_json(ipam: &serde_json::Value) -> Result<IpamConfig> {
        let raw: RawIpam = serde_json::from_value(ipam.clone()).map_err(|e| {
            Error::config(
                "invalid ipam configuration: fix the \"ipam\" object of the network config",
                e.to_string(),
            )
        })?;

        let mut raw_sets = Vec::new();
        // host-local puts the legacy top-level range first, ahead of `ranges`.
        if non_empty(&raw.legacy.subnet).is_some() {
            raw_sets.push(vec![raw.legacy]);
        }
        raw_sets.extend(raw.ranges.unwrap_or_default());
        if raw_sets.is_empty() {
            return Err(Error::config(
                "ipam has no address ranges: add \"ranges\": [[{\"subnet\": \"<cidr>\"}]] to the ipam config",
                "",
            ));
        }

        let mut ranges = Vec::with_capacity(raw_sets.len());
        for (set_idx, raw_set) in raw_sets.iter().enumerate() {
            ranges.push(parse_range_set(set_idx, raw_set)?);
        }
        for i in 0..ranges.len() {
            for j in i + 1..ranges.len() {
                for a in &ranges[i] {
                    for b in &ranges[j] {
                        if overlaps(a, b) {
                            return Err(Error::config(
                                format!(
                                    "ipam range sets {i} and {j} overlap ({} and {}): every range set must use distinct addresses",
                                    describe(a),
                                    describe(b)
                                ),
                                "",
                            ));
                        }
                    }
                }
            }
        }

        let routes = raw
            .routes
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, r)| parse_route(i, r))
            .collect::<Result<Vec<_>>>()?;

        Ok(IpamConfig {
            ranges,
            routes,
            data_dir: non_empty(&raw.data_dir)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            resolv_conf: non_empty(&raw.resolv_conf).map(PathBuf::from),
        })
    }
}

impl Range {
    /// Whether `ip` is one of this range's allocatable addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.range_start)
            && to_u128(ip) >= to_u128(self.range_start)
            && to_u128(ip) <= to_u128(self.range_end)
    }
}

/// Go's net.IP decodes "" as "unset", so host-local configs may carry empty strings.
fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_ip(set_idx: usize, field: &str, value: &str) -> Result<IpAddr> {
    value.parse().map_err(|_| {
        Error::config(
            format!("ipam range set {set_idx}: {field} {value:?} is not an IP address: use a plain address such as 10.22.0.10"),
            "",
        )
    })
}

fn parse_range_set(set_idx: usize, raw_set: &[RawRange]) -> Result<RangeSet> {
    if raw_set.is_empty() {
        return Err(Error::config(
            format!(
                "ipam range set {set_idx} is empty: give it at least one {{\"subnet\": \"<cidr>\"}}"
            ),
            "",
        ));
    }
    let set = raw_set
        .iter()
        .map(|r| parse_range(set_idx, r))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if !same_family(a.range_start, b.range_start) {
                return Err(Error::config(
                    format!(
                        "ipam range set {set_idx} mixes IPv4 and IPv6 ({} and {}): put each family in its own range set",
                        a.subnet, b.subnet
                    ),
                    "",
                ));
            }
            if overlaps(a, b) {
                return Err(Error::config(
                    format!(
                        "ipam range set {set_idx} has overlapping ranges ({} and {}): make the ranges disjoint",
                        describe(a),
                        describe(b)
                    ),
                    "",
                ));
            }
        }
    }
    Ok(set)
}

fn parse_range(set_idx: usize, raw: &RawRange) -> Result<Range> {
    let subnet_str = non_empty(&raw.subnet).ok_or_else(|| {
        Error::config(
            format!("ipam range set {set_idx}: a range has no \"subnet\": add one such as \"10.22.0.0/24\""),
            "",
        )
    })?;
    let subnet: IpNet = subnet_str.parse().map_err(|_| {
        Error::config(
            format!("ipam range set {set_idx}: subnet {subnet_str:?} is not a CIDR: write it as address/prefix, e.g. 10.22.0.0/24"),
            "",
        )
    })?;
    if subnet.addr() != subnet.network() {
        return Err(Error::config(
            format!(
                "ipam range set {set_idx}: subnet {subnet_str} has host bits set: use the network address {}",
                subnet.trunc()
            ),
            "",
        ));
    }

    let (first, last) = usable_bounds(&subnet);
    let inside = |field: &str, ip: IpAddr| -> Result<IpAddr> {
        if !subnet.contains(&ip) {
            return Err(Error::config(
                format!(
                    "ipam range set {set_idx}: {field} {ip} is outside subnet {subnet}: pick an address inside the subnet"
                ),
                "",
            ));
        }
        Ok(ip)
    };
    let usable = |field: &str, ip: IpAddr| -> Result<IpAddr> {
        let ip = inside(field, ip)?;
        if to_u128(ip) < to_u128(first) || to_u128(ip) > to_u128(last) {
            return Err(Error::config(
                format!(
                    "ipam range set {set_idx}: {field} {ip} is the network or broadcast address of {subnet}: use an address between {first} and {last}"
                ),
                "",
            ));
        }
        Ok(ip)
    };

    let range_start = match non_empty(&raw.range_start) {
        Some(s) => usable("rangeStart", parse_ip(set_idx, "rangeStart", s)?)?,
        None => first,
    };
    let range_end = match non_empty(&raw.range_end) {
        Some(s) => usable("rangeEnd", parse_ip(set_idx, "rangeEnd", s)?)?,
        None => last,
    };
    if to_u128(range_start) > to_u128(range_end) {
        return Err(Error::config(
            format!(
                "ipam range set {set_idx}: rangeStart {range_start} is after rangeEnd {range_end}: swap them"
            ),
            "",
        ));
    }
    let gateway = match non_empty(&raw.gateway) {
        Some(s) => Some(inside("gateway", parse_ip(set_idx, "gateway", s)?)?),
        // Point-to-point subnets have no spare address for a gateway.
        None if is_tiny(&subnet) => None,
        None => Some(from_u128(to_u128(subnet.network()) + 1, subnet.network())),
    };
    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

fn parse_route(idx: usize, raw: &RawRoute) -> Result<RouteConfig> {
    let dst: IpNet = raw.dst.trim().parse().map_err(|_| {
        Error::config(
            format!("ipam route {idx}: dst {:?} is not a CIDR: write it as address/prefix, e.g. 0.0.0.0/0", raw.dst),
            "",
        )
    })?;
    let gw = match non_empty(&raw.gw) {
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            Error::config(
                format!("ipam route {idx}: gw {s:?} is not an IP address: use a plain address or omit it"),
                "",
            )
        })?),
        None => None,
    };
    Ok(RouteConfig { dst, gw })
}

/// /31, /32, /127 and /128 have no network or broadcast address to reserve.
fn is_tiny(subnet: &IpNet) -> bool {
    subnet.max_prefix_len() - subnet.prefix_len() <= 1
}

/// The first and last address that may be handed out: host-local's defaults
/// for rangeStart and rangeEnd.
fn usable_bounds(subnet: &IpNet) -> (IpAddr, IpAddr) {
    let net = subnet.network();
    if is_tiny(subnet) {
        return (net, subnet.broadcast());
    }
    let first = from_u128(to_u128(net) + 1, net);
    let last = match subnet {
        IpNet::V4(n) => from_u128(to_u128(IpAddr::V4(n.broadcast())) - 1, net),
        // IPv6 has no broadcast address.
        IpNet::V6(n) => IpAddr::V6(n.broadcast()),
    };
    (first, last)
}

fn overlaps(a: &Range, b: &Range) -> bool {
    same_family(a.range_start, b.range_start)
        && to_u128(a.range_start) <= to_u128(b.range_end)
        && to_u128(b.range_start) <= to_u128(a.range_end)
}

/// A short human form of a range: the subnet alone when the defaults apply.
pub(crate) fn describe(r: &Range) -> String {
    if (r.range_start, r.range_end) == usable_bounds(&r.subnet) {
        r.subnet.to_string()
    } else {
        format!("{}-{} in {}", r.range_start, r.range_end, r.subnet)
    }
}

pub(crate) fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Addresses as integers make range walking and size arithmetic trivial.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of `to_u128`, in the family of `like`. Callers stay within the
/// family's range, so the IPv4 truncation never loses bits.
pub(crate) fn from_u128(v: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4((v as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(v.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use serde_json::json;

    fn one(subnet: serde_json::Value) -> Result<IpamConfig> {
        IpamConfig::from_json(&json!({"type": "host-local", "ranges": [[subnet]]}))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn config_err(v: serde_json::Value, needle: &str) {
        let err = IpamConfig::from_json(&v).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig, "{err}");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
    }

    #[test]
    fn ipv4_defaults() {
        let cfg = one(json!({"subnet": "10.22.0.0/24"})).unwrap();
        let r = &cfg.ranges[0][0];
        assert_eq!(r.range_start, ip("10.22.0.1"));
        assert_eq!(r.range_end, ip("10.22.0.254"));
        assert_eq!(r.gateway, Some(ip("10.22.0.1")));
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/cni/networks"));
        assert_eq!(cfg.resolv_conf, None);
        assert!(cfg.routes.is_empty());
    }

    #[test]
    fn ipv6_defaults() {
        let cfg = one(json!({"subnet": "fd00::/120"})).unwrap();
        let r = &cfg.ranges[0][0];
        assert_eq!(r.range_start, ip("fd00::1"));
        assert_eq!(r.range_end, ip("fd00::ff"));
        assert_eq!(r.gateway, Some(ip("fd00::1")));
    }

    #[test]
    fn tiny_subnets() {
        let r = one(json!({"subnet": "10.0.0.4/31"})).unwrap().ranges[0][0].clone();
        assert_eq!(
            (r.range_start, r.range_end),
            (ip("10.0.0.4"), ip("10.0.0.5"))
        );
        assert_eq!(r.gateway, None);
        let r = one(json!({"subnet": "10.0.0.4/32"})).unwrap().ranges[0][0].clone();
        assert_eq!(
            (r.range_start, r.range_end),
            (ip("10.0.0.4"), ip("10.0.0.4"))
        );
        let r = one(json!({"subnet": "fd00::4/127"})).unwrap().ranges[0][0].clone();
        assert_eq!((r.range_start, r.range_end), (ip("fd00::4"), ip("fd00::5")));
        let r = one(json!({"subnet": "fd00::4/128"})).unwrap().ranges[0][0].clone();
        assert_eq!((r.range_start, r.range_end), (ip("fd00::4"), ip("fd00::4")));
        let r = one(json!({"subnet": "0.0.0.0/0"})).unwrap().ranges[0][0].clone();
        assert_eq!(r.range_end, ip("255.255.255.254"));
        let r = one(json!({"subnet": "::/0"})).unwrap().ranges[0][0].clone();
        assert_eq!(r.range_end, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn full_form_and_legacy() {
        let cfg = IpamConfig::from_json(&json!({
            "type": "host-local",
            "subnet": "10.1.0.0/16",
            "rangeStart": "10.1.1.0",
            "rangeEnd": "10.1.1.255",
            "gateway": "10.1.0.254",
            "ranges": [[{"subnet": "fd00::/64", "rangeStart": "", "gateway": "fd00::fe"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}],
            "dataDir": "/tmp/x",
            "resolvConf": "/etc/resolv.conf"
        }))
        .unwrap();
        assert_eq!(cfg.ranges.len(), 2);
        assert_eq!(
            cfg.ranges[0][0],
            Range {
                subnet: "10.1.0.0/16".parse().unwrap(),
                range_start: ip("10.1.1.0"),
                range_end: ip("10.1.1.255"),
                gateway: Some(ip("10.1.0.254")),
            }
        );
        assert_eq!(cfg.ranges[1][0].range_start, ip("fd00::1"));
        assert_eq!(cfg.ranges[1][0].gateway, Some(ip("fd00::fe")));
        assert_eq!(cfg.routes[0].gw, None);
        assert_eq!(cfg.routes[1].gw, Some(ip("10.1.0.1")));
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn validation_errors() {
        config_err(json!({"type": "host-local"}), "no address ranges");
        config_err(json!({"ranges": []}), "no address ranges");
        config_err(json!({"ranges": [[]]}), "range set 0 is empty");
        config_err(json!({"ranges": "x"}), "invalid ipam configuration");
        config_err(
            json!({"ranges": [[{"rangeStart": "10.0.0.1"}]]}),
            "no \"subnet\"",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0"}]]}),
            "is not a CIDR",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}),
            "is not a CIDR",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.5/24"}]]}),
            "use the network address 10.0.0.0/24",
        );
        let bad = |field: &str, value: &str, needle: &str| {
            config_err(
                json!({"ranges": [[{"subnet": "10.0.0.0/24", field: value}]]}),
                needle,
            )
        };
        bad("rangeStart", "nope", "not an IP address");
        bad("rangeStart", "10.0.1.1", "outside subnet");
        bad("rangeEnd", "10.0.1.1", "outside subnet");
        bad("gateway", "10.0.1.1", "outside subnet");
        bad("rangeStart", "10.0.0.0", "network or broadcast");
        bad("rangeEnd", "10.0.0.255", "network or broadcast");
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}]]}),
            "is after rangeEnd",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}),
            "overlapping ranges",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            "mixes IPv4 and IPv6",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.128/25"}]]}),
            "range sets 0 and 1 overlap",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "x"}]}),
            "route 0",
        );
        config_err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}),
            "gw \"x\"",
        );
    }

    #[test]
    fn split_subnet_in_one_set_is_fine() {
        let cfg = one(json!({"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99"})).unwrap();
        assert_eq!(cfg.ranges[0].len(), 1);
        IpamConfig::from_json(&json!({"ranges": [[
            {"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.99"},
            {"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100"}
        ]]}))
        .unwrap();
    }
}

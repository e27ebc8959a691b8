//! The CNI result: one internal shape (SPEC 1.1) printed in the version the
//! caller asked for, and parsed back from any supported version when it
//! arrives as `prevResult` or from a delegated IPAM plugin.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use crate::error::{Code, Error, Result};
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        if !self.nameservers.is_empty() {
            map.insert("nameservers".into(), json!(self.nameservers));
        }
        if let Some(domain) = &self.domain {
            map.insert("domain".into(), json!(domain));
        }
        if !self.search.is_empty() {
            map.insert("search".into(), json!(self.search));
        }
        if !self.options.is_empty() {
            map.insert("options".into(), json!(self.options));
        }
        Value::Object(map)
    }

    pub fn from_json(value: &Value) -> Dns {
        let strings = |key: &str| -> Vec<String> {
            value
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Dns {
            nameservers: strings("nameservers"),
            domain: value
                .get("domain")
                .and_then(Value::as_str)
                .map(String::from),
            search: strings("search"),
            options: strings("options"),
        }
    }
}

/// A successful ADD's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// The result as JSON in `version`'s shape.
    pub fn to_json(&self, version: Version) -> Value {
        let v11 = version >= Version::new(1, 1, 0);
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    m.insert("mac".into(), json!(i.mac));
                }
                if let (true, Some(mtu)) = (v11, i.mtu) {
                    m.insert("mtu".into(), json!(mtu));
                }
                if let Some(sandbox) = &i.sandbox {
                    m.insert("sandbox".into(), json!(sandbox));
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = Map::new();
                if version.ip_has_version_field() {
                    m.insert(
                        "version".into(),
                        json!(if ip.address.addr().is_ipv4() {
                            "4"
                        } else {
                            "6"
                        }),
                    );
                }
                if let Some(index) = ip.interface {
                    m.insert("interface".into(), json!(index));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    m.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    m.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(m)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.to_string()));
        if !interfaces.is_empty() {
            out.insert("interfaces".into(), Value::Array(interfaces));
        }
        if !ips.is_empty() {
            out.insert("ips".into(), Value::Array(ips));
        }
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        out.insert("dns".into(), self.dns.to_json());
        Value::Object(out)
    }

    /// Parses a result of any supported version (prevResult, delegated IPAM).
    pub fn from_json(value: &Value) -> Result<CniResult> {
        let bad = |what: &str| {
            Error::new(
                Code::Decode,
                format!("invalid result: {what}"),
                value.to_string(),
            )
        };
        let mut result = CniResult::default();
        if let Some(list) = value.get("interfaces").and_then(Value::as_array) {
            for i in list {
                result.interfaces.push(Interface {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    mac: i
                        .get("mac")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    mtu: i
                        .get("mtu")
                        .and_then(Value::as_u64)
                        .and_then(|m| u32::try_from(m).ok()),
                    sandbox: i.get("sandbox").and_then(Value::as_str).map(String::from),
                });
            }
        }
        if let Some(list) = value.get("ips").and_then(Value::as_array) {
            for ip in list {
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<IpNet>().ok())
                    .ok_or_else(|| bad("an ip without a valid address"))?;
                let gateway = match ip.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("invalid gateway"))?),
                    None => None,
                };
                let interface = ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize);
                result.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        if let Some(list) = value.get("routes").and_then(Value::as_array) {
            for r in list {
                let dst = r
                    .get("dst")
                    .and_then(Value::as_str)
                    .and_then(|d| d.parse::<IpNet>().ok())
                    .ok_or_else(|| bad("a route without a valid dst"))?;
                let gw = match r.get("gw").and_then(Value::as_str) {
                    Some(g) => Some(g.parse::<IpAddr>().map_err(|_| bad("invalid route gw"))?),
                    None => None,
                };
                result.routes.push(Route { dst, gw });
            }
        }
        if let Some(dns) = value.get("dns") {
            result.dns = Dns::from_json(dns);
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1500),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:00".into(),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/x".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.0.2/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::2/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn shape_follows_the_version() {
        let r = sample();
        let old = r.to_json(Version::parse("0.3.1").unwrap());
        assert_eq!(old["cniVersion"], "0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = r.to_json(Version::parse("1.0.0").unwrap());
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert_eq!(v1["ips"][0]["gateway"], "10.1.0.1");
        assert!(v1["ips"][1].get("gateway").is_none());
        assert_eq!(v1["interfaces"][1]["sandbox"], "/var/run/netns/x");
        let v11 = r.to_json(Version::parse("1.1.0").unwrap());
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
    }

    #[test]
    fn round_trips_through_json() {
        let r = sample();
        for v in crate::version::SUPPORTED {
            let json = r.to_json(Version::parse(v).unwrap());
            let back = CniResult::from_json(&json).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
        }
        assert!(CniResult::from_json(&json!({"ips": [{"address": "nope"}]})).is_err());
    }
}

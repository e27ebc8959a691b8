//! The network configuration a runtime passes on stdin: common fields, the
//! bridge plugin's options (same names and meanings as the reference bridge
//! plugin), runtimeConfig and prevResult.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Code, Error, Result};
use crate::result::CniResult;
use crate::version::Version;

/// One published port (`portMappings` capability).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// The raw, typed view of a netconf as it arrives.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    plugin_type: String,
    #[serde(default)]
    capabilities: HashMap<String, bool>,
    #[serde(default)]
    runtime_config: RuntimeConfig,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default)]
    dns: Option<Value>,
    #[serde(default)]
    ipam: Option<Value>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: Option<u16>,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    state_dir: Option<String>,
    #[serde(default)]
    vlan_trunk: Option<Value>,
    #[serde(default)]
    cni: Option<Value>,
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub version_text: String,
    pub name: String,
    pub plugin_type: String,
    pub capabilities: HashMap<String, bool>,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<CniResult>,
    /// IPs requested through `args.cni.ips`.
    pub args_ips: Vec<IpAddr>,
    pub dns: Option<Value>,
    pub ipam: Option<Value>,
    pub bridge: BridgeOptions,
    pub state_dir: Option<String>,
    /// The netconf exactly as received, for delegating to another plugin.
    pub raw: Vec<u8>,
}

/// The bridge plugin's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeOptions {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub vlan: Option<u16>,
    pub macspoofchk: bool,
    pub enabledad: bool,
}

/// The longest network name: it is a directory name under the IPAM store.
const MAX_NAME_LEN: usize = 255;

/// Refuses the free-form sections (kept as JSON for later stages) when their
/// shape is wrong, so a netconf the reference plugins would fail to decode
/// is refused before anything is set up rather than half-read.
fn check_shapes(wire: &Wire) -> Result<()> {
    let wrong = |field: &str, want: &str, got: &Value| {
        Err(Error::config(
            format!("{field} must be {want}"),
            format!("got {}", truncated(got)),
        ))
    };
    let string_lists = |field: &str, section: &Value, keys: &[&str]| -> Result<()> {
        for key in keys {
            match section.get(*key) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
                Some(other) => return wrong(&format!("{field}.{key}"), "a list of strings", other),
            }
        }
        Ok(())
    };
    if let Some(dns) = wire.dns.as_ref().filter(|v| !v.is_null()) {
        if !dns.is_object() {
            return wrong("dns", "an object", dns);
        }
        string_lists("dns", dns, &["nameservers", "search", "options"])?;
        if let Some(domain) = dns.get("domain").filter(|v| !v.is_null() && !v.is_string()) {
            return wrong("dns.domain", "a string", domain);
        }
    }
    if let Some(args) = wire
        .args
        .as_ref()
        .filter(|v| !v.is_null() && !v.is_object())
    {
        return wrong("args", "an object", args);
    }
    if let Some(prev) = wire.prev_result.as_ref().filter(|v| !v.is_null()) {
        if !prev.is_object() {
            return wrong("prevResult", "an object (a CNI result)", prev);
        }
        for key in ["ips", "interfaces", "routes"] {
            if let Some(v) = prev.get(key).filter(|v| !v.is_null() && !v.is_array()) {
                return wrong(&format!("prevResult.{key}"), "a list", v);
            }
        }
    }
    if let Some(ipam) = wire.ipam.as_ref().filter(|v| !v.is_null()) {
        if !ipam.is_object() {
            return wrong("ipam", "an object", ipam);
        }
        if let Some(t) = ipam.get("type").filter(|v| !v.is_null() && !v.is_string()) {
            return wrong("ipam.type", "a string (an IPAM plugin's name)", t);
        }
    }
    Ok(())
}

/// A JSON value for an error message, cut short.
fn truncated(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Reads only the version, for VERSION and for shaping an error reply.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(String::from)
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            Error::new(
                Code::Decode,
                "cannot decode the network configuration on stdin",
                e.to_string(),
            )
        })?;
        if !value.is_object() {
            return Err(Error::new(
                Code::Decode,
                "the network configuration must be a JSON object",
                value.to_string(),
            ));
        }
        let wire: Wire = serde_json::from_value(value)
            .map_err(|e| Error::config("invalid network configuration", e.to_string()))?;
        let version = Version::parse(&wire.cni_version)?;
        if wire.name.is_empty() {
            return Err(Error::config(
                "the network configuration has no \"name\"",
                "set \"name\" to the network's name",
            ));
        }
        if !wire
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            || wire.name.starts_with('.')
        {
            return Err(Error::config(
                format!("invalid network name {:?}", wire.name),
                "a network name contains only letters, digits, '_', '.' and '-'",
            ));
        }
        if wire.name.len() > MAX_NAME_LEN {
            return Err(Error::config(
                format!("network name of {} characters is too long", wire.name.len()),
                format!(
                    "a network name has at most {MAX_NAME_LEN} characters (it names the IPAM directory)"
                ),
            ));
        }
        check_shapes(&wire)?;
        if wire.vlan_trunk.is_some() {
            return Err(Error::new(
                Code::UnsupportedField,
                "vlanTrunk is not supported by podwire",
                "use vlan for one untagged VLAN",
            ));
        }
        if let Some(vlan) = wire.vlan
            && (vlan == 0 || vlan > 4094)
        {
            return Err(Error::config(
                format!("invalid vlan {vlan}"),
                "a VLAN ID lies between 1 and 4094",
            ));
        }
        if let Some(mtu) = wire.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Error::config(
                format!("invalid mtu {mtu}"),
                "an MTU lies between 68 and 65535",
            ));
        }
        if let Some(bridge) = wire.bridge.as_deref().filter(|b| !b.is_empty()) {
            validate_bridge_name(bridge)?;
        }
        let prev_result = match &wire.prev_result {
            Some(v) if !v.is_null() => Some(CniResult::from_json(v)?),
            _ => None,
        };
        let args_ips = match wire
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        {
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| parse_requested_ip(v.as_str().unwrap_or_default()))
                .collect::<Result<Vec<_>>>()?,
            Some(other) => {
                return Err(Error::config(
                    "args.cni.ips must be a list of IP addresses",
                    other.to_string(),
                ));
            }
            None => Vec::new(),
        };
        let _ = wire.cni;
        Ok(NetConf {
            version,
            version_text: wire.cni_version.clone(),
            name: wire.name,
            plugin_type: wire.plugin_type,
            capabilities: wire.capabilities,
            runtime_config: wire.runtime_config,
            prev_result,
            args_ips,
            dns: wire.dns,
            ipam: wire.ipam,
            bridge: BridgeOptions {
                bridge: wire
                    .bridge
                    .filter(|b| !b.is_empty())
                    .unwrap_or_else(|| "cni0".into()),
                is_gateway: wire.is_gateway || wire.is_default_gateway,
                is_default_gateway: wire.is_default_gateway,
                force_address: wire.force_address,
                ip_masq: wire.ip_masq,
                mtu: wire.mtu,
                hairpin_mode: wire.hairpin_mode,
                promisc_mode: wire.promisc_mode,
                vlan: wire.vlan,
                macspoofchk: wire.macspoofchk,
                enabledad: wire.enabledad,
            },
            state_dir: wire.state_dir,
            raw: stdin.to_vec(),
        })
    }

    /// IPs requested for this container, from runtimeConfig.ips, args.cni.ips
    /// and CNI_ARGS `IP=` (comma-separated), without duplicates.
    pub fn requested_ips(&self, cni_args_ip: Option<&str>) -> Result<Vec<IpAddr>> {
        let mut out: Vec<IpAddr> = Vec::new();
        let runtime = self
            .runtime_config
            .ips
            .iter()
            .map(|s| parse_requested_ip(s))
            .collect::<Result<Vec<_>>>()?;
        let from_args = match cni_args_ip {
            Some(text) => text
                .split(',')
                .filter(|s| !s.is_empty())
                .map(parse_requested_ip)
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        for ip in runtime
            .into_iter()
            .chain(self.args_ips.iter().copied())
            .chain(from_args)
        {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

/// The kernel's rules for an interface name (dev_valid_name): at most 15
/// bytes, not `.` or `..`, no `/`, `:` or whitespace; NUL would cut the name
/// short on its way through netlink.
fn validate_bridge_name(name: &str) -> Result<()> {
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            format!("invalid bridge name {name:?}"),
            "\"bridge\" needs 1 to 15 bytes, not '.' or '..', without '/', ':', spaces or NUL",
        ))
    }
}

/// A requested IP may come as an address or as address/prefix.
fn parse_requested_ip(text: &str) -> Result<IpAddr> {
    let addr = text.split('/').next().unwrap_or_default();
    addr.parse::<IpAddr>().map_err(|_| {
        Error::config(
            format!("invalid requested IP {text:?}"),
            "give an IPv4 or IPv6 address",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetConf> {
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn decode_errors_versus_config_errors() {
        assert_eq!(parse("{").unwrap_err().code, Code::Decode);
        assert_eq!(parse("[]").unwrap_err().code, Code::Decode);
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#)
                .unwrap_err()
                .code,
            Code::InvalidConfig
        );
        assert_eq!(
            parse(r#"{"cniVersion":"9.9.9","name":"n"}"#)
                .unwrap_err()
                .code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0"}"#).unwrap_err().code,
            Code::InvalidConfig
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"a/b"}"#)
                .unwrap_err()
                .code,
            Code::InvalidConfig
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","vlan":5000}"#)
                .unwrap_err()
                .code,
            Code::InvalidConfig
        );
        assert_eq!(
            parse(r#"{"cniVersion":"1.0.0","name":"n","vlanTrunk":[]}"#)
                .unwrap_err()
                .code,
            Code::UnsupportedField
        );
    }

    #[test]
    fn free_form_sections_of_the_wrong_shape_are_refused() {
        // Found by bench/abuse: each of these was accepted and set up a
        // container while ignoring the section.
        for (field, bad) in [
            ("ipam.type", r#""ipam":{"type":5}"#),
            ("ipam", r#""ipam":"x""#),
            ("dns", r#""dns":"10.0.0.10""#),
            ("dns.nameservers", r#""dns":{"nameservers":"10.0.0.10"}"#),
            ("dns.search", r#""dns":{"search":[1]}"#),
            ("prevResult", r#""prevResult":"garbage""#),
            ("prevResult.ips", r#""prevResult":{"ips":"x"}"#),
            ("args", r#""args":"x""#),
        ] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n",{bad}}}"#);
            let err = parse(&text).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{bad}");
            assert!(err.msg.starts_with(field), "{bad}: {err}");
        }
        parse(r#"{"cniVersion":"1.0.0","name":"n","dns":{"nameservers":["10.0.0.10"]},"args":{},"prevResult":null,"ipam":{"type":"podwire"}}"#).unwrap();
        let long = format!(r#"{{"cniVersion":"1.0.0","name":"{}"}}"#, "x".repeat(256));
        assert_eq!(parse(&long).unwrap_err().code, Code::InvalidConfig);
        let longest = format!(r#"{{"cniVersion":"1.0.0","name":"{}"}}"#, "x".repeat(255));
        parse(&longest).unwrap();
    }

    #[test]
    fn bridge_names_follow_the_kernel_rules() {
        for bad in [
            "abcdefghijklmnop",
            "../x",
            "a/b",
            "br x",
            "br\\tx",
            "br:0",
            ".",
            "..",
            "br\\u0000x",
        ] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","bridge":"{bad}"}}"#);
            let err = parse(&text).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{bad}");
            assert!(err.msg.contains("bridge"), "{bad}: {err}");
        }
        for good in ["cni0", "abcdefghijklmno", "br-1.2_x", ""] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","bridge":"{good}"}}"#);
            parse(&text).unwrap();
        }
    }

    #[test]
    fn bridge_defaults_and_default_gateway_implies_gateway() {
        let c =
            parse(r#"{"cniVersion":"1.0.0","name":"n","type":"podwire","isDefaultGateway":true}"#)
                .unwrap();
        assert_eq!(c.bridge.bridge, "cni0");
        assert!(c.bridge.is_gateway);
        assert!(!c.bridge.ip_masq);
    }

    #[test]
    fn requested_ips_from_every_source() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":["10.0.0.5/24"]},"args":{"cni":{"ips":["10.0.0.6"]}}}"#,
        )
        .unwrap();
        let ips = c.requested_ips(Some("10.0.0.7,10.0.0.5")).unwrap();
        assert_eq!(ips.len(), 3);
        assert!(c.requested_ips(Some("nope")).is_err());
    }

    #[test]
    fn port_mappings_parse() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"udp","hostIP":"127.0.0.1"},{"hostPort":1,"containerPort":2}]}}"#,
        )
        .unwrap();
        assert_eq!(c.runtime_config.port_mappings[0].protocol, "udp");
        assert_eq!(c.runtime_config.port_mappings[1].protocol, "tcp");
        assert!(parse(r#"{"cniVersion":"1.0.0","name":"n","runtimeConfig":{"portMappings":[{"hostPort":99999,"containerPort":2}]}}"#).is_err());
    }
}

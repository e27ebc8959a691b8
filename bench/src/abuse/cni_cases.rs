//! The malformed network configurations the abuse feeds the CNI plugin:
//! broken JSON, wrong top-level types, missing fields, every field of the
//! bridge and IPAM sections with a wrong type or an impossible value, bad
//! port mappings and results. Each is derived from one good netconf so a
//! single fault is in each; none may crash the plugin or change the host.

use serde_json::{Value, json};

/// (what is wrong, the bytes on stdin).
pub type Case = (String, Vec<u8>);

/// The good netconf with `path` (keys separated by `.`) set to `value`, or
/// removed when `value` is None.
fn with(good: &Value, path: &str, value: Option<Value>) -> Vec<u8> {
    let mut conf = good.clone();
    let mut keys: Vec<&str> = path.split('.').collect();
    let last = keys.pop().unwrap_or_default();
    let mut at = &mut conf;
    for key in keys {
        at = &mut at[key];
    }
    match value {
        Some(v) => at[last] = v,
        None => {
            if let Some(obj) = at.as_object_mut() {
                obj.remove(last);
            }
        }
    }
    conf.to_string().into_bytes()
}

/// Every malformed input, from `good` (a netconf that ADDs fine).
pub fn malformed(good: &Value) -> Vec<Case> {
    let text = good.to_string();
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut cases: Vec<Case> = vec![
        ("empty stdin".into(), Vec::new()),
        ("only whitespace".into(), b"  \n\t ".to_vec()),
        ("a lone {".into(), b"{".to_vec()),
        ("a lone }".into(), b"}".to_vec()),
        ("truncated at 1/4".into(), bytes[..n / 4].to_vec()),
        ("truncated at 1/2".into(), bytes[..n / 2].to_vec()),
        ("truncated at 3/4".into(), bytes[..n * 3 / 4].to_vec()),
        ("last byte missing".into(), bytes[..n - 1].to_vec()),
        ("a JSON array".into(), b"[1, 2]".to_vec()),
        ("JSON null".into(), b"null".to_vec()),
        ("a JSON number".into(), b"42".to_vec()),
        ("a JSON string".into(), b"\"podwire\"".to_vec()),
        ("JSON true".into(), b"true".to_vec()),
        ("trailing garbage".into(), [bytes, b"x"].concat()),
        ("two objects".into(), [bytes, b"{}"].concat()),
        (
            "single-quoted keys".into(),
            text.replace('"', "'").into_bytes(),
        ),
        (
            "a comment inside".into(),
            text.replacen('{', "{/* c */", 1).into_bytes(),
        ),
        ("NUL byte".into(), {
            let mut b = bytes.to_vec();
            b[n / 2] = 0;
            b
        }),
        (
            "invalid UTF-8 in a string".into(),
            text.replacen("abuse-", "abuse-\u{1}", 1)
                .into_bytes()
                .into_iter()
                .map(|b| if b == 1 { 0xff } else { b })
                .collect(),
        ),
        (
            "UTF-8 BOM first".into(),
            [&[0xef, 0xbb, 0xbf][..], bytes].concat(),
        ),
        (
            "raw newline in a string".into(),
            text.replacen("abuse-", "abuse-\n", 1).into_bytes(),
        ),
        (
            "lone surrogate in name".into(),
            text.replacen("abuse-", "abuse-\\ud800", 1).into_bytes(),
        ),
        (
            "unterminated string".into(),
            b"{\"cniVersion\": \"1.1.0".to_vec(),
        ),
        ("nested 100,000 deep".into(), {
            let mut b =
                b"{\"cniVersion\":\"1.1.0\",\"name\":\"x\",\"type\":\"podwire\",\"dns\":".to_vec();
            b.extend(std::iter::repeat_n(b'[', 100_000));
            b.extend(std::iter::repeat_n(b']', 100_000));
            b.push(b'}');
            b
        }),
        (
            "mtu 1e999".into(),
            text.replacen("\"ipMasq\":true", "\"ipMasq\":true,\"mtu\":1e999", 1)
                .into_bytes(),
        ),
        ("an empty object".into(), b"{}".to_vec()),
    ];
    let fields: Vec<(&str, Option<Value>)> = vec![
        ("cniVersion", None),
        ("name", None),
        ("type", None),
        ("ipam", None),
        ("ipam.ranges", None),
        ("cniVersion", Some(json!(1))),
        ("cniVersion", Some(json!(""))),
        ("cniVersion", Some(json!("9.9.9"))),
        ("cniVersion", Some(json!("1.1.0.0"))),
        ("cniVersion", Some(json!("0.1.0"))),
        ("name", Some(json!(42))),
        ("name", Some(json!(""))),
        ("name", Some(json!("a/b"))),
        ("name", Some(json!("../../etc"))),
        ("name", Some(json!("x".repeat(1 << 20)))),
        ("type", Some(json!(7))),
        ("type", Some(json!(""))),
        ("type", Some(json!("../../bin/sh"))),
        ("type", Some(json!("no-such-plugin"))),
        ("bridge", Some(json!(5))),
        ("bridge", Some(json!(["pwab0"]))),
        ("isGateway", Some(json!("yes"))),
        ("ipMasq", Some(json!(1))),
        ("mtu", Some(json!("1500"))),
        ("mtu", Some(json!(-1))),
        ("mtu", Some(json!(100_000))),
        ("mtu", Some(json!(1.5))),
        ("mtu", Some(json!(10))),
        ("hairpinMode", Some(json!("true"))),
        ("promiscMode", Some(json!([]))),
        ("vlan", Some(json!(5000))),
        ("vlan", Some(json!(-3))),
        ("vlan", Some(json!(0))),
        ("vlanTrunk", Some(json!([{"id": 5}]))),
        ("macspoofchk", Some(json!("yes"))),
        ("enabledad", Some(json!(3))),
        ("forceAddress", Some(json!("no"))),
        ("ipam", Some(json!("podwire"))),
        ("ipam", Some(json!([]))),
        ("ipam.type", Some(json!(5))),
        ("ipam.type", Some(json!("podwire-loopback"))),
        ("ipam.ranges", Some(json!({}))),
        ("ipam.ranges", Some(json!([]))),
        ("ipam.ranges", Some(json!([[]]))),
        ("ipam.ranges", Some(json!("10.80.0.0/24"))),
        ("ipam.ranges", Some(json!([[{"subnet": "banana"}]]))),
        ("ipam.ranges", Some(json!([[{"subnet": "10.80.0.0/33"}]]))),
        ("ipam.ranges", Some(json!([[{"subnet": "10.80.0.0/-1"}]]))),
        ("ipam.ranges", Some(json!([[{"subnet": "10.80.0.1"}]]))),
        ("ipam.ranges", Some(json!([[{"subnet": "300.1.1.0/24"}]]))),
        ("ipam.ranges", Some(json!([[{"subnet": 10}]]))),
        ("ipam.ranges", Some(json!([[{}]]))),
        (
            "ipam.ranges",
            Some(json!([[{"subnet": "10.80.0.0/24", "rangeStart": "10.81.0.5"}]])),
        ),
        (
            "ipam.ranges",
            Some(
                json!([[{"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.9", "rangeEnd": "10.80.0.3"}]]),
            ),
        ),
        (
            "ipam.ranges",
            Some(json!([[{"subnet": "10.80.0.0/24", "gateway": "10.81.0.1"}]])),
        ),
        (
            "ipam.ranges",
            Some(json!([[{"subnet": "10.80.0.0/24", "gateway": "nope"}]])),
        ),
        (
            "ipam.ranges",
            Some(json!([[{"subnet": "10.80.0.0/24", "rangeStart": "fd00::5"}]])),
        ),
        (
            "ipam.ranges",
            Some(json!([[{"subnet": "10.80.0.0/24"}], [{"subnet": "10.80.0.0/25"}]])),
        ),
        // The legacy flat range is valid beside `ranges` (host-local puts it
        // first, a second range set): malformed only when it is no CIDR.
        ("ipam.subnet", Some(json!("10.80.0.0/33"))),
        ("ipam.subnet", Some(json!(24))),
        ("ipam.routes", Some(json!("0.0.0.0/0"))),
        ("ipam.routes", Some(json!([{"dst": "nope"}]))),
        (
            "ipam.routes",
            Some(json!([{"dst": "0.0.0.0/0", "gw": "x"}])),
        ),
        ("ipam.routes", Some(json!([{"gw": "10.80.0.1"}]))),
        ("ipam.dataDir", Some(json!(5))),
        ("dns", Some(json!("10.0.0.10"))),
        ("dns", Some(json!({"nameservers": "10.0.0.10"}))),
        ("runtimeConfig", Some(json!("x"))),
        ("runtimeConfig.portMappings", Some(json!({}))),
        ("runtimeConfig.portMappings", Some(json!([1]))),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 0, "containerPort": 80}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 70000, "containerPort": 80}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": -1, "containerPort": 80}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 8080, "containerPort": "80"}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 8080, "containerPort": 0}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "xyz"}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 8080, "containerPort": 80, "hostIP": "not-an-ip"}])),
        ),
        (
            "runtimeConfig.portMappings",
            Some(json!([{"hostPort": 8080}])),
        ),
        ("runtimeConfig.ips", Some(json!(["10.80.0.5/33"]))),
        ("runtimeConfig.ips", Some(json!("10.80.0.5"))),
        ("runtimeConfig.mac", Some(json!("zz:zz"))),
        ("capabilities", Some(json!("all"))),
        ("prevResult", Some(json!("garbage"))),
        ("prevResult", Some(json!({"ips": "x"}))),
        ("prevResult", Some(json!({"ips": [{"address": "nope"}]}))),
        ("args", Some(json!("x"))),
        ("args", Some(json!({"cni": {"ips": "10.80.0.5"}}))),
        ("args", Some(json!({"cni": {"ips": ["not-an-ip"]}}))),
    ];
    for (path, value) in fields {
        let label = match &value {
            None => format!("no {path}"),
            Some(v) => {
                let shown = v.to_string();
                let shown = if shown.len() > 40 {
                    format!(
                        "{}... ({} bytes)",
                        shown.chars().take(20).collect::<String>(),
                        shown.len()
                    )
                } else {
                    shown
                };
                format!("{path} = {shown}")
            }
        };
        cases.push((label, with(good, path, value)));
    }
    cases
}

/// Bridge names the kernel refuses (16+ bytes, a path, a space).
pub const BAD_BRIDGES: [&str; 5] = [
    "abcdefghijklmnop",
    "a-much-longer-bridge-name",
    "../x",
    "br x",
    "a/b",
];

#[cfg(test)]
mod tests {
    use super::malformed;
    use serde_json::json;

    #[test]
    fn every_case_differs_from_the_good_netconf() {
        let good = json!({"cniVersion": "1.1.0", "name": "abuse-x", "type": "podwire",
            "ipMasq": true, "ipam": {"type": "podwire", "ranges": [[{"subnet": "10.80.0.0/24"}]]},
            "runtimeConfig": {"portMappings": []}});
        let cases = malformed(&good);
        assert!(cases.len() >= 95, "{}", cases.len());
        let text = good.to_string().into_bytes();
        for (label, bytes) in &cases {
            assert_ne!(bytes, &text, "{label} is the good netconf");
        }
    }
}

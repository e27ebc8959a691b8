//! Fuzz target: everything the CNI plugin parses from a runtime before it
//! touches the kernel — CNI_ARGS, the netconf, its IPAM section, a
//! prevResult, GC's attachment list, the environment as a whole — must
//! return a value or a spec error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podwire_cni::{env, ipam, netconf, result, valid_attachments};

fuzz_target!(|data: &[u8]| {
    // First line: CNI_ARGS; the rest: the netconf.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (args, conf) = data.split_at(split);
    let args = String::from_utf8_lossy(args);
    let _ = env::parse_args(&args);
    let _ = env::validate_container_id(&args);
    let _ = env::validate_ifname(&args);
    let vars = |name: &str| match name {
        "CNI_COMMAND" => Some("CHECK".to_string()),
        "CNI_ARGS" => Some(args.to_string()),
        "CNI_CONTAINERID" => Some(args.chars().take(64).collect()),
        "CNI_IFNAME" => Some(args.chars().take(15).collect()),
        "CNI_NETNS" | "CNI_PATH" => Some("/nonexistent".to_string()),
        _ => None,
    };
    let _ = env::Env::from_vars(vars);
    let _ = valid_attachments(conf);
    if let Ok(parsed) = netconf::NetConf::parse(conf) {
        let _ = parsed.requested_ips(Some(&args));
        if let Some(ipam_section) = &parsed.ipam {
            let _ = ipam::IpamConfig::from_json(ipam_section);
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(conf) {
        let _ = ipam::IpamConfig::from_json(&value);
        if let Ok(r) = result::CniResult::from_json(&value) {
            for v in podwire_cni::version::SUPPORTED {
                if let Ok(version) = podwire_cni::version::Version::parse(v) {
                    let _ = r.to_json(version);
                }
            }
        }
    }
});

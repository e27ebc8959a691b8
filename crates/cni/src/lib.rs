//! CNI (SPEC 1.1.0) for podwire: the protocol (environment, netconf, results,
//! errors, versions) and the plugins served by the one `podwire` binary:
//! `podwire` (bridge + in-process IPAM + port mappings + loopback),
//! `podwire-portmap` (chained port publishing) and `podwire-loopback`.

pub mod bridge;
pub mod delegate;
pub mod env;
pub mod error;
pub mod firewall;
pub mod fw;
pub mod install;
pub mod ipam;
pub mod log;
pub mod loopback;
pub mod netconf;
pub mod portmap;
pub mod result;
pub mod state;
pub mod version;

use serde_json::{Value, json};

use env::{Command, Env};
use error::{Code, Error, Result};
use netconf::NetConf;

/// The plugin types this binary answers to (the netconf's `type`).
pub const PLUGIN_TYPES: &[&str] = &["podwire", "podwire-portmap", "podwire-loopback"];

/// What the process prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: String,
}

/// Runs one CNI command: `vars` reads the environment, `stdin` is the netconf.
/// Never panics on any input; every failure becomes a spec error.
pub fn run(vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let reply_version = netconf::peek_version(stdin)
        .filter(|v| version::SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| version::LATEST.to_string());
    match dispatch(vars, stdin) {
        Ok(Some(value)) => Outcome {
            exit_code: 0,
            stdout: value.to_string(),
        },
        Ok(None) => Outcome {
            exit_code: 0,
            stdout: String::new(),
        },
        Err(err) => {
            tracing::error!(code = err.code as u32, "{err}");
            Outcome {
                exit_code: 1,
                stdout: err.to_json(&reply_version).to_string(),
            }
        }
    }
}

fn dispatch(vars: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<Value>> {
    let env = Env::from_vars(vars)?;
    if env.command == Command::Version {
        let asked = netconf::peek_version(stdin)
            .filter(|v| version::SUPPORTED.contains(&v.as_str()))
            .unwrap_or_else(|| version::LATEST.to_string());
        return Ok(Some(
            json!({"cniVersion": asked, "supportedVersions": version::SUPPORTED}),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Check if !conf.version.has_check() => {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("CHECK is not defined for cniVersion {}", conf.version),
                "CHECK needs cniVersion 0.4.0 or later",
            ));
        }
        Command::Gc | Command::Status if !conf.version.has_gc_and_status() => {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!(
                    "{} is not defined for cniVersion {}",
                    if env.command == Command::Gc {
                        "GC"
                    } else {
                        "STATUS"
                    },
                    conf.version
                ),
                "GC and STATUS need cniVersion 1.1.0",
            ));
        }
        _ => {}
    }
    let kind = conf.plugin_type.as_str();
    if !PLUGIN_TYPES.contains(&kind) {
        return Err(Error::config(
            format!("podwire does not serve plugin type {kind:?}"),
            format!(
                "the podwire binary serves types {}",
                PLUGIN_TYPES.join(", ")
            ),
        ));
    }
    let to_json = |r: result::CniResult| Some(r.to_json(conf.version));
    match (kind, env.command) {
        ("podwire", Command::Add) => bridge::add(&conf, &env).map(to_json),
        ("podwire", Command::Del) => bridge::del(&conf, &env).map(|_| None),
        ("podwire", Command::Check) => bridge::check(&conf, &env).map(|_| None),
        ("podwire", Command::Gc) => {
            bridge::gc(&conf, &env, &valid_attachments(stdin)?).map(|_| None)
        }
        ("podwire", Command::Status) => bridge::status(&conf, &env).map(|_| None),
        ("podwire-portmap", Command::Add) => portmap::add(&conf, &env).map(to_json),
        ("podwire-portmap", Command::Del) => portmap::del(&conf, &env).map(|_| None),
        ("podwire-portmap", Command::Check) => portmap::check(&conf, &env).map(|_| None),
        ("podwire-portmap", Command::Gc) => {
            portmap::gc(&conf, &valid_attachments(stdin)?).map(|_| None)
        }
        ("podwire-loopback", Command::Add) => loopback::add(&conf, &env).map(to_json),
        ("podwire-loopback", Command::Check) => loopback::check(&env).map(|_| None),
        // Deleting the namespace removes lo; nothing to free or collect.
        ("podwire-loopback", Command::Del | Command::Gc) => Ok(None),
        (_, Command::Status) => Ok(None),
        (_, _) => Ok(None),
    }
}

/// GC's list of attachments to keep: `cni.dev/valid-attachments` (SPEC 1.1),
/// also accepted under its draft name `cni.dev/attachments`.
pub fn valid_attachments(stdin: &[u8]) -> Result<Vec<(String, String)>> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        Error::new(
            Code::Decode,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let list = value
        .get("cni.dev/valid-attachments")
        .or_else(|| value.get("cni.dev/attachments"));
    let Some(list) = list else {
        return Err(Error::config(
            "GC needs cni.dev/valid-attachments",
            "the runtime lists the attachments to keep; an empty list releases everything",
        ));
    };
    let Some(items) = list.as_array() else {
        return Err(Error::config(
            "cni.dev/valid-attachments must be a list",
            list.to_string(),
        ));
    };
    items
        .iter()
        .map(|item| {
            let id = item.get("containerID").and_then(Value::as_str);
            let ifname = item.get("ifname").and_then(Value::as_str);
            match (id, ifname) {
                (Some(id), Some(ifname)) => Ok((id.to_string(), ifname.to_string())),
                _ => Err(Error::config(
                    "each valid attachment needs containerID and ifname",
                    item.to_string(),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> Outcome {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(|k| map.get(k).cloned(), stdin.as_bytes())
    }

    #[test]
    fn version_answers_in_the_asked_version() {
        let out = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(out.exit_code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
        let out = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(out.exit_code, 0);
    }

    #[test]
    fn errors_are_spec_json_with_codes() {
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let cases = [
            ("not json", 6),
            (r#"{"cniVersion":"0.2.0","name":"n","type":"podwire"}"#, 1),
            (r#"{"cniVersion":"1.0.0","name":"n","type":"nope"}"#, 7),
        ];
        for (stdin, code) in cases {
            let out = run_with(&env, stdin);
            assert_eq!(out.exit_code, 1, "{stdin}");
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(v["code"], code, "{stdin}: {v}");
            assert!(v["msg"].as_str().is_some());
        }
        let out = run_with(&[("CNI_COMMAND", "ADD")], "{}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["code"], 4);
    }

    #[test]
    fn check_gc_status_need_their_versions() {
        let env = [
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ];
        let out = run_with(
            &env,
            r#"{"cniVersion":"0.3.1","name":"n","type":"podwire"}"#,
        );
        assert!(out.stdout.contains("\"code\":1"));
        let out = run_with(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            r#"{"cniVersion":"1.0.0","name":"n","type":"podwire"}"#,
        );
        assert!(out.stdout.contains("\"code\":1"));
    }

    #[test]
    fn valid_attachments_under_both_names() {
        let a = valid_attachments(
            br#"{"cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(a, vec![("a".to_string(), "eth0".to_string())]);
        let b = valid_attachments(br#"{"cni.dev/attachments":[]}"#).unwrap();
        assert!(b.is_empty());
        assert!(valid_attachments(br#"{}"#).is_err());
        assert!(valid_attachments(br#"{"cni.dev/attachments":[{"containerID":"a"}]}"#).is_err());
    }
}

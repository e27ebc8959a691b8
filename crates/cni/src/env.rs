//! The CNI environment: the command and its parameters, validated per command
//! as SPEC 1.1 requires, naming every missing or invalid variable at once.

use std::path::PathBuf;

use crate::error::{Code, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn parse(text: &str) -> Result<Command> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::new(
                    Code::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                    "expected one of ADD, DEL, CHECK, VERSION, GC, STATUS",
                ));
            }
        })
    }

    /// The variables this command cannot run without.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }
}

/// The validated environment of one plugin invocation.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the CNI_* variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let command_text = get("CNI_COMMAND").unwrap_or_default();
        if command_text.is_empty() {
            return Err(Error::new(
                Code::InvalidEnvironment,
                "missing environment variable CNI_COMMAND",
                "a CNI runtime must set CNI_COMMAND",
            ));
        }
        let command = Command::parse(&command_text)?;
        let value = |name: &str| get(name).unwrap_or_default();
        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|name| value(name).is_empty())
            .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                Code::InvalidEnvironment,
                format!("missing environment variables: {}", missing.join(", ")),
                format!(
                    "CNI_COMMAND={command_text} needs {}",
                    command.required().join(", ")
                ),
            ));
        }
        let env = Env {
            command,
            container_id: value("CNI_CONTAINERID"),
            netns: value("CNI_NETNS"),
            ifname: value("CNI_IFNAME"),
            args: parse_args(&value("CNI_ARGS"))?,
            path: std::env::split_paths(&value("CNI_PATH"))
                .filter(|p| !p.as_os_str().is_empty())
                .collect(),
        };
        if !env.container_id.is_empty() {
            validate_container_id(&env.container_id)?;
        }
        if !env.ifname.is_empty() {
            validate_ifname(&env.ifname)?;
        }
        Ok(env)
    }

    /// The value of one CNI_ARGS key.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Opens CNI_NETNS. A path that does not exist (or cannot be opened) means
/// the container is gone: code 3. A path that exists but is no network
/// namespace (a regular file, a directory, a uts namespace...) is a bad
/// value of the variable: code 4, naming it, as the spec asks.
pub fn open_netns(path: &str) -> Result<podwire_kernel::Netns> {
    podwire_kernel::Netns::open_network(path).map_err(|e| match e {
        podwire_kernel::Error::Invalid(what) => Error::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_NETNS {path:?}: {what}"),
            "CNI_NETNS must be the path of the container's network namespace, such as /var/run/netns/<name> or /proc/<pid>/ns/net",
        ),
        other => Error::new(
            Code::ContainerUnknown,
            format!("cannot open the container's network namespace {path}"),
            other.to_string(),
        ),
    })
}

/// CNI_ARGS is `K=V;K2=V2`; an entry without `=` is malformed.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::new(
                Code::InvalidEnvironment,
                format!("invalid CNI_ARGS entry {pair:?}"),
                "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
            ));
        };
        if key.is_empty() {
            return Err(Error::new(
                Code::InvalidEnvironment,
                format!("invalid CNI_ARGS entry {pair:?}: empty key"),
                "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
            ));
        }
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// SPEC: a container ID is non-empty and only alphanumerics, `_`, `.`, `-`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_CONTAINERID {id:?}"),
            "a container ID must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
        ))
    }
}

/// SPEC: an interface name is at most 15 bytes, not `.`/`..`, and has no
/// `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            Code::InvalidEnvironment,
            format!("invalid CNI_IFNAME {name:?}"),
            "an interface name has 1 to 15 characters, is not '.' or '..', and contains no '/', ':' or spaces",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<Env> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_all_four_and_names_the_missing() {
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert!(err.msg.contains("CNI_CONTAINERID"));
        assert!(err.msg.contains("CNI_NETNS"));
        assert!(err.msg.contains("CNI_PATH"));
        assert!(!err.msg.contains("CNI_IFNAME"));
    }

    #[test]
    fn del_does_not_need_netns_and_version_needs_nothing() {
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ])
        .unwrap();
        env(&[("CNI_COMMAND", "VERSION")]).unwrap();
        env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).unwrap();
        assert_eq!(
            env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code,
            Code::InvalidEnvironment
        );
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnvironment);
    }

    #[test]
    fn container_ids_and_ifnames_are_validated() {
        validate_container_id("abc-1.2_3").unwrap();
        for bad in ["", "-abc", "a b", "a/b", "a;b", "ü"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        validate_ifname("eth0").unwrap();
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cni_netns_must_be_a_network_namespace() {
        open_netns("/proc/self/ns/net").unwrap();
        let err = open_netns("/proc/self/ns/uts").unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert!(
            err.msg.contains("CNI_NETNS") && err.msg.contains("uts"),
            "{err}"
        );
        assert_eq!(open_netns("/").unwrap_err().code, Code::InvalidEnvironment);
        let err = open_netns("/var/run/netns/podwire-no-such-netns").unwrap_err();
        assert_eq!(err.code, Code::ContainerUnknown);
    }

    #[test]
    fn cni_args_parse() {
        let args = parse_args("IP=10.0.0.5;K8S_POD_NAME=web;IgnoreUnknown=1").unwrap();
        assert_eq!(args[0], ("IP".into(), "10.0.0.5".into()));
        assert_eq!(args.len(), 3);
        assert!(parse_args("novalue").is_err());
        assert!(parse_args("=x").is_err());
        assert!(parse_args("").unwrap().is_empty());
    }
}

//! Running another plugin binary (a delegated IPAM such as host-local, dhcp
//! or static) the way the spec says: same environment, same netconf on
//! stdin, its result or error passed through.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::env::Env;
use crate::error::{Code, Error, Result};

/// Finds `plugin` in CNI_PATH.
pub fn find(env: &Env, plugin: &str) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(Error::config(
            format!("invalid plugin type {plugin:?}"),
            "a plugin type is a file name in CNI_PATH",
        ));
    }
    env.path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::config(
                format!("plugin {plugin:?} not found in CNI_PATH"),
                format!(
                    "searched {}",
                    env.path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs `plugin` with `command` and the netconf; returns its stdout JSON
/// (Null when it printed nothing, as DEL may).
pub fn exec(env: &Env, plugin: &str, command: &str, netconf: &[u8]) -> Result<Value> {
    let path = find(env, plugin)?;
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run {}", path.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(netconf)
            .map_err(|e| Error::io(format!("cannot write to {}", path.display()), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {}", path.display()), e))?;
    let value: Value = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).map_err(|e| {
            Error::new(
                Code::Decode,
                format!("{plugin} printed something that is not JSON"),
                e.to_string(),
            )
        })?
    };
    if output.status.success() {
        return Ok(value);
    }
    let code = match value.get("code").and_then(Value::as_u64).unwrap_or(100) {
        1 => Code::IncompatibleVersion,
        2 => Code::UnsupportedField,
        3 => Code::ContainerUnknown,
        4 => Code::InvalidEnvironment,
        5 => Code::Io,
        6 => Code::Decode,
        7 => Code::InvalidConfig,
        11 => Code::TryAgainLater,
        50 => Code::PluginNotAvailable,
        51 => Code::LimitedConnectivity,
        _ => Code::Internal,
    };
    Err(Error::new(
        code,
        format!(
            "{plugin} {command} failed: {}",
            value
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("no message")
        ),
        value
            .get("details")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    ))
}

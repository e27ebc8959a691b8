//! CNI errors: every failure maps to one of the spec's error codes, so a
//! runtime can tell "try again" from "your config is wrong".

use serde::Serialize;

/// The error codes of CNI SPEC 1.1.0, section "Error".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    ContainerUnknown = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    PluginNotAvailable = 50,
    LimitedConnectivity = 51,
    /// Plugin-specific codes start at 100 per the spec.
    Internal = 100,
}

/// One CNI failure: the spec's code, a short message and details for a person.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
    pub fn config(msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(Code::InvalidConfig, msg, details)
    }
    pub fn io(msg: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::new(Code::Io, msg, err.to_string())
    }
    pub fn internal(msg: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Self::new(Code::Internal, msg, err.to_string())
    }

    /// The JSON object the spec prints on stdout for a failed command.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| serde_json::json!({"code": self.code as u32, "msg": self.msg}))
    }
}

impl From<podwire_kernel::Error> for Error {
    fn from(err: podwire_kernel::Error) -> Self {
        Error::new(Code::Internal, "kernel operation failed", err.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

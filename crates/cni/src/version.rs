//! CNI specification versions podwire speaks, and what each one allows.

use crate::error::{Code, Error, Result};

/// Every version podwire accepts, oldest first. The reply always uses the
/// version the caller asked for.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const LATEST: &str = "1.1.0";

/// A parsed, supported CNI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version> {
        if !SUPPORTED.contains(&text) {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("unsupported cniVersion {text:?}"),
                format!("podwire supports {}", SUPPORTED.join(", ")),
            ));
        }
        let mut parts = text.split('.').map(|p| p.parse::<u8>().unwrap_or(0));
        Ok(Version {
            major: parts.next().unwrap_or(0),
            minor: parts.next().unwrap_or(0),
            patch: parts.next().unwrap_or(0),
        })
    }

    pub const fn new(major: u8, minor: u8, patch: u8) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// 0.3.x results carry a "version" field on each IP.
    pub fn ip_has_version_field(self) -> bool {
        self < Version::new(0, 4, 0)
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Version::new(0, 4, 0)
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::new(1, 1, 0)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in SUPPORTED {
            assert_eq!(Version::parse(v).unwrap().to_string(), *v);
        }
        for bad in ["0.1.0", "0.2.0", "2.0.0", "", "1.0", "abc"] {
            assert_eq!(
                Version::parse(bad).unwrap_err().code,
                Code::IncompatibleVersion
            );
        }
    }

    #[test]
    fn capabilities_by_version() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.3.1").ip_has_version_field());
        assert!(!v("0.4.0").ip_has_version_field());
        assert!(!v("0.3.1").has_check());
        assert!(v("0.4.0").has_check());
        assert!(!v("1.0.0").has_gc_and_status());
        assert!(v("1.1.0").has_gc_and_status());
    }
}

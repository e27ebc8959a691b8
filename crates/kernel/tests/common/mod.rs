//! What the kernel crate's namespace tests share: a guard that removes the
//! named network namespaces a test created (even when it fails) and a shell
//! step that must succeed. The crate sits below podwire-testsupport (which
//! depends on it), so it keeps this small copy of its own.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Deletes these named namespaces (`ip netns`) on drop.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `script` with `sh -e`; the test fails when it does.
pub fn sh(script: &str) {
    let ok = Command::new("sh")
        .args(["-ec", script])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{script}");
}

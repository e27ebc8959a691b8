//! A child placed by `process::Placement` in a namespace this test creates
//! (unique name, removed by a guard even on failure): it sees that
//! namespace's links (also through a remounted /sys), its own hostname and
//! a file bind-mounted over /etc/resolv.conf, while this process keeps
//! its own. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Namespaces, sh};
use podwire_kernel::process::Placement;

#[test]
fn a_child_enters_its_namespaces_and_the_parent_stays() {
    let name = format!("pwp{}", std::process::id());
    let _guard = Namespaces(vec![name.clone()]);
    sh(&format!(
        "ip netns add {name}; ip -n {name} link add pwv0 type veth peer name pwv1"
    ));
    let dir = std::env::temp_dir().join(format!("pw-place-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.96.0.10\n").unwrap();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();

    let place = Placement::new(
        Some(Path::new(&format!("/run/netns/{name}"))),
        Some("pod-under-test"),
        &[(resolv.clone(), PathBuf::from("/etc/resolv.conf"))],
    )
    .expect("prepare");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "cat /proc/sys/kernel/hostname; cat /etc/resolv.conf; ls /sys/class/net; ip -o link",
    ]);
    place.install(&mut cmd);
    let out = cmd.output().expect("run the child");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "pod-under-test", "{text}");
    assert_eq!(lines[1], "nameserver 10.96.0.10", "{text}");
    // /sys/class/net lists exactly the namespace's links.
    assert_eq!(lines[2..5], ["lo", "pwv0", "pwv1"], "{text}");
    assert!(text.contains(" pwv0@pwv1:"), "{text}");

    // The parent kept its hostname, its resolv.conf and its namespace.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    assert_eq!(
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        host_resolv
    );
    assert!(!Path::new("/sys/class/net/pwv0").exists());
}

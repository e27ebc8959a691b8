//! nftables trace events from two namespaces on one listener: a real TCP
//! connection between namespaces this test creates (unique names, removed
//! by a guard even on failure), traced with `meta nftrace set 1` on its
//! source port. Needs root; touches nothing outside its namespaces.

mod common;

use std::net::TcpListener;

use common::{Namespaces, sh};
use std::time::Duration;

use podwire_kernel::Netns;
use podwire_kernel::nftrace::{TraceKind, TraceListener};

fn trace_table(port: u16) -> String {
    format!(
        "table inet pwtrace {{\n chain pre {{ type filter hook prerouting priority -500; \
         tcp sport {port} meta nftrace set 1; tcp dport {port} meta nftrace set 1; }}\n \
         chain out {{ type filter hook output priority -500; \
         tcp sport {port} meta nftrace set 1; tcp dport {port} meta nftrace set 1; }}\n \
         chain post {{ type filter hook postrouting priority 500; }}\n}}\n"
    )
}

#[test]
fn events_of_every_watched_namespace_arrive_in_order_on_one_socket() {
    let tag = format!("pwk{}", std::process::id());
    let (a, b) = (format!("{tag}a"), format!("{tag}b"));
    let _guard = Namespaces(vec![a.clone(), b.clone()]);
    sh(&format!(
        "ip netns add {a}; ip netns add {b}; \
         ip link add {tag}x netns {a} type veth peer name {tag}y netns {b}; \
         ip -n {a} addr add 10.77.0.1/24 dev {tag}x; ip -n {b} addr add 10.77.0.2/24 dev {tag}y; \
         ip -n {a} link set {tag}x up; ip -n {b} link set {tag}y up; \
         ip -n {a} link set lo up; ip -n {b} link set lo up"
    ));
    let port = 40000 + (std::process::id() % 20000) as u16;
    for ns in [&a, &b] {
        sh(&format!(
            "echo '{}' | ip netns exec {ns} nft -f -",
            trace_table(port)
        ));
    }
    let na = Netns::open(format!("/var/run/netns/{a}")).unwrap();
    let nb = Netns::open(format!("/var/run/netns/{b}")).unwrap();
    let mut listener = TraceListener::new().unwrap();
    let ida = listener.watch(&na).unwrap();
    let idb = listener.watch(&nb).unwrap();
    assert_ne!(ida, idb);
    // A connection from a known source port.
    let server = nb
        .run(|| TcpListener::bind("10.77.0.2:8081"))
        .unwrap()
        .unwrap();
    let stream = na
        .run(|| {
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::empty(),
                None,
            )
            .unwrap();
            let local = nix::sys::socket::SockaddrIn::new(10, 77, 0, 1, port);
            nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &local).unwrap();
            let peer = nix::sys::socket::SockaddrIn::new(10, 77, 0, 2, 8081);
            nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &peer).unwrap();
            sock
        })
        .unwrap();
    let events = listener
        .collect(Duration::from_millis(200), Duration::from_secs(2))
        .unwrap();
    drop(stream);
    drop(server);
    let from = |id| events.iter().filter(|e| e.nsid == Some(id)).count();
    assert!(from(ida) > 0 && from(idb) > 0, "{events:#?}");
    // The SYN leaves A before it reaches B; the SYN-ACK comes back to A.
    let syn_a = events
        .iter()
        .position(|e| e.nsid == Some(ida) && e.packet.is_some_and(|p| p.tcp_flags == 0x02))
        .expect("SYN in A");
    let syn_b = events
        .iter()
        .position(|e| e.nsid == Some(idb) && e.packet.is_some_and(|p| p.tcp_flags == 0x02))
        .expect("SYN in B");
    assert!(syn_a < syn_b, "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.nsid == Some(ida) && e.packet.is_some_and(|p| p.tcp_flags == 0x12)),
        "SYN-ACK back in A: {events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == TraceKind::Policy && e.chain == "post")
    );
    let p = events[syn_b].packet.unwrap();
    assert_eq!((p.sport, p.dport), (port, 8081));
}

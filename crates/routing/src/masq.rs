//! The node's egress masquerade: one nftables table, `inet podwire-node`,
//! owned by podwire and replaced as a whole in one `nft -f` transaction.
//!
//! The rules are Flannel's (`FLANNEL-POSTRTG`, iptables and nftables modes
//! alike), in the same order, with the cluster pod range `C` and this
//! node's slice `S`:
//!
//! 1. `ip saddr C ip daddr C return`: pod to pod is never NATed, so the
//!    receiver sees the sender's pod IP.
//! 2. `ip saddr C ip daddr 224.0.0.0/4 return`, then
//!    `ip saddr C masquerade`: pods leaving the cluster range leave with
//!    the node's address (Flannel writes this as one rule with
//!    `ip daddr != 224.0.0.0/4`).
//! 3. `ip saddr != C ip daddr S return`: traffic from outside to this
//!    node's own pods keeps its client address.
//! 4. `ip saddr != C ip daddr C masquerade`: traffic from outside (or
//!    from the node itself) forwarded to another node's pods is NATed to
//!    this node, so the reply comes back the same way.
//!
//! Differences from Flannel: no `meta mark 0x4000 return` for kube-proxy's
//! masquerade mark (podwire's service proxy does its own NAT in its own
//! table), IPv4 only, and the table lives in the `inet` family so one
//! table serves both families once IPv6 is added.

use std::fmt::Write;

use ipnet::Ipv4Net;

/// The table's family and name, as `nft` spells them.
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "podwire-node";

/// The table text for a cluster pod range and this node's slice.
pub fn table(cluster: Ipv4Net, slice: Ipv4Net) -> String {
    let c = cluster.trunc();
    let s = slice.trunc();
    let mut out = String::new();
    // Infallible: writing to a String cannot fail.
    let _ = write!(
        out,
        "table {TABLE_FAMILY} {TABLE_NAME} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {c} ip daddr {c} return comment \"pod to pod: never NAT\"\n\
         \t\tip saddr {c} ip daddr 224.0.0.0/4 return comment \"multicast\"\n\
         \t\tip saddr {c} masquerade fully-random comment \"pods leaving the cluster range\"\n\
         \t\tip saddr != {c} ip daddr {s} return comment \"to this node's pods: keep the client IP\"\n\
         \t\tip saddr != {c} ip daddr {c} masquerade fully-random comment \"to other nodes' pods: reply through this node\"\n\
         \t}}\n\
         }}\n"
    );
    out
}

/// The `nft -f` script that replaces the table atomically: creating the
/// table first makes the delete valid when it does not exist yet, and the
/// whole script is one transaction, so there is no moment without rules.
pub fn replace_script(table_text: &str) -> String {
    format!(
        "table {TABLE_FAMILY} {TABLE_NAME} {{}}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n{table_text}"
    )
}

/// The script that removes the table (idempotent).
pub fn delete_script() -> String {
    format!("table {TABLE_FAMILY} {TABLE_NAME} {{}}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_any_masquerade() {
        let text = table(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        );
        let rules: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("ip "))
            .collect();
        assert_eq!(rules.len(), 5);
        assert!(rules[0].starts_with("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return"));
        assert!(rules[2].starts_with("ip saddr 10.244.0.0/16 masquerade fully-random"));
        assert!(rules[3].starts_with("ip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return"));
        assert!(text.contains("type nat hook postrouting priority srcnat; policy accept;"));
    }

    #[test]
    fn host_bits_are_dropped_from_ranges() {
        let text = table(
            "10.244.3.7/16".parse().unwrap(),
            "10.244.1.9/24".parse().unwrap(),
        );
        assert!(text.contains("ip saddr 10.244.0.0/16"));
        assert!(text.contains("ip daddr 10.244.1.0/24 return"));
    }

    #[test]
    fn replace_script_is_one_transaction_that_works_from_nothing() {
        let script = replace_script("table inet podwire-node {\n}\n");
        assert!(script.starts_with("table inet podwire-node {}\ndelete table inet podwire-node\n"));
        assert!(script.ends_with("table inet podwire-node {\n}\n"));
    }
}

//! Address allocation over the store: host-local's round-robin walk, requested
//! addresses, release, GC and free-space checks.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::config::{IpamConfig, Range, RangeSet, describe, from_u128, to_u128};
use super::store::{Entry, Store};
use crate::error::{Code, Error, Result};

/// One address handed to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The IP with its subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `IpamConfig::ranges`.
    pub range_set: usize,
}

/// Allocates one address from every range set (in range-set order), under the
/// store lock. `requested` are IPs asked for by runtimeConfig.ips /
/// args.cni.ips / CNI_ARGS IP= (each must fall inside one range set's ranges,
/// else a config error; each range set gets at most one; a requested IP
/// already held by another container is an error naming the holder).
pub fn allocate(
    cfg: &IpamConfig,
    network: &str,
    container_id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<Vec<Allocation>> {
    let wanted = assign_requested(cfg, network, requested)?;
    let store = Store::create(&cfg.data_dir, network)?;
    let entries = store.entries()?;

    // host-local refuses a second ADD for the same attachment rather than
    // silently handing out another address.
    if let Some(held) = entries
        .iter()
        .find(|e| e.held_by(container_id, ifname) && set_of(cfg, e.ip).is_some())
    {
        return Err(Error::new(
            Code::Internal,
            format!(
                "container {container_id} ifname {ifname} already holds {} in network {network}: DEL it first",
                held.ip
            ),
            "",
        ));
    }

    let mut taken: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();
    let mut done: Vec<Allocation> = Vec::with_capacity(cfg.ranges.len());
    for (idx, set) in cfg.ranges.iter().enumerate() {
        let attachment = (container_id, ifname);
        let result = match wanted[idx] {
            Some(ip) => reserve_requested(&store, &entries, network, attachment, ip),
            None => reserve_next(&store, &mut taken, idx, set, attachment),
        }
        .and_then(|ip| {
            taken.insert(ip);
            finish(&store, idx, set, ip).inspect_err(|_| undo(&store, ip))
        });
        match result {
            Ok(a) => done.push(a),
            Err(e) => {
                // A partial result would leak leases the runtime never learns about.
                for a in &done {
                    undo(&store, a.address.addr());
                }
                return Err(e);
            }
        }
    }
    for a in &done {
        tracing::debug!(network, container_id, ifname, address = %a.address, "allocated address");
    }
    Ok(done)
}

/// Records the cursor and builds the result for a freshly written lease.
fn finish(store: &Store, idx: usize, set: &RangeSet, ip: IpAddr) -> Result<Allocation> {
    store.set_last_reserved(idx, ip)?;
    let range = range_of(set, ip).ok_or_else(|| {
        Error::internal(
            "allocated address is outside its range set",
            format!("{ip} in range set {idx}"),
        )
    })?;
    let address = IpNet::new(ip, range.subnet.prefix_len())
        .map_err(|e| Error::internal("cannot build allocated address", e))?;
    Ok(Allocation {
        address,
        gateway: range.gateway,
        range_set: idx,
    })
}

fn undo(store: &Store, ip: IpAddr) {
    if let Err(e) = store.remove(ip) {
        tracing::warn!(%ip, error = %e, "cannot roll back IPAM lease");
    }
}

/// Maps each requested IP to its range set, rejecting what host-local rejects
/// before anything touches the disk.
fn assign_requested(
    cfg: &IpamConfig,
    network: &str,
    requested: &[IpAddr],
) -> Result<Vec<Option<IpAddr>>> {
    let mut wanted: Vec<Option<IpAddr>> = vec![None; cfg.ranges.len()];
    for &ip in requested {
        let Some(idx) = set_of(cfg, ip) else {
            let sets: Vec<String> = cfg.ranges.iter().map(describe_set).collect();
            return Err(Error::config(
                format!(
                    "requested IP {ip} is not inside any range of network {network} ({}): request an address from the configured ranges",
                    sets.join("; ")
                ),
                "",
            ));
        };
        if is_gateway(&cfg.ranges[idx], ip) {
            return Err(Error::config(
                format!(
                    "requested IP {ip} is the gateway of network {network}: request another address"
                ),
                "",
            ));
        }
        match wanted[idx] {
            Some(prev) if prev != ip => {
                return Err(Error::config(
                    format!(
                        "requested IPs {prev} and {ip} both fall in range set {idx} ({}) of network {network}: request at most one address per range set",
                        describe_set(&cfg.ranges[idx])
                    ),
                    "",
                ));
            }
            _ => wanted[idx] = Some(ip),
        }
    }
    Ok(wanted)
}

fn reserve_requested(
    store: &Store,
    entries: &[Entry],
    network: &str,
    (container_id, ifname): (&str, &str),
    ip: IpAddr,
) -> Result<IpAddr> {
    if store.reserve(ip, container_id, ifname)? {
        return Ok(ip);
    }
    let holder = entries
        .iter()
        .find(|e| e.ip == ip)
        .map(Entry::describe_holder)
        .unwrap_or_else(|| "another container".to_string());
    Err(Error::new(
        Code::Internal,
        format!(
            "requested IP {ip} is already allocated to {holder} in network {network}: request a different address or DEL that container first"
        ),
        "",
    ))
}

/// host-local's round robin: continue after the set's last reserved address,
/// walk the ranges in order and wrap around, skipping gateways and leases.
fn reserve_next(
    store: &Store,
    taken: &mut HashSet<IpAddr>,
    idx: usize,
    set: &RangeSet,
    (container_id, ifname): (&str, &str),
) -> Result<IpAddr> {
    let gateways: HashSet<IpAddr> = set.iter().filter_map(|r| r.gateway).collect();
    let exhausted = || {
        let usable = usable_count(set, &gateways);
        Error::new(
            Code::Internal,
            format!(
                "no free address in range set {} (all {usable} usable addresses are allocated): delete unused containers or widen the range",
                describe_set(set)
            ),
            "",
        )
    };
    // Counting first keeps a full but huge (IPv6) set from being walked.
    if free_count(set, &gateways, taken) == 0 {
        return Err(exhausted());
    }

    let start = match store
        .last_reserved(idx)
        .and_then(|ip| position_of(set, ip).map(|ri| (ri, ip)))
    {
        Some(pos) => advance(set, pos),
        None => (0, set[0].range_start),
    };
    let mut pos = start;
    loop {
        let ip = pos.1;
        if !gateways.contains(&ip) && !taken.contains(&ip) {
            if store.reserve(ip, container_id, ifname)? {
                return Ok(ip);
            }
            // Someone bypassed the lock; O_EXCL kept us from stealing the address.
            taken.insert(ip);
        }
        pos = advance(set, pos);
        if pos == start {
            return Err(exhausted());
        }
    }
}

/// The next address in walk order: (range index, address).
fn advance(set: &RangeSet, (ri, ip): (usize, IpAddr)) -> (usize, IpAddr) {
    if ip == set[ri].range_end {
        let next = (ri + 1) % set.len();
        (next, set[next].range_start)
    } else {
        (ri, from_u128(to_u128(ip) + 1, ip))
    }
}

fn position_of(set: &RangeSet, ip: IpAddr) -> Option<usize> {
    set.iter().position(|r| r.contains(ip))
}

fn range_of(set: &RangeSet, ip: IpAddr) -> Option<&Range> {
    set.iter().find(|r| r.contains(ip))
}

fn set_of(cfg: &IpamConfig, ip: IpAddr) -> Option<usize> {
    cfg.ranges.iter().position(|s| position_of(s, ip).is_some())
}

fn is_gateway(set: &RangeSet, ip: IpAddr) -> bool {
    set.iter().any(|r| r.gateway == Some(ip))
}

fn describe_set(set: &RangeSet) -> String {
    set.iter().map(describe).collect::<Vec<_>>().join(", ")
}

fn total_count(set: &RangeSet) -> u128 {
    set.iter()
        .map(|r| (to_u128(r.range_end) - to_u128(r.range_start)).saturating_add(1))
        .fold(0u128, u128::saturating_add)
}

fn usable_count(set: &RangeSet, gateways: &HashSet<IpAddr>) -> u128 {
    let gws = gateways
        .iter()
        .filter(|ip| position_of(set, **ip).is_some())
        .count();
    total_count(set).saturating_sub(gws as u128)
}

fn free_count(set: &RangeSet, gateways: &HashSet<IpAddr>, taken: &HashSet<IpAddr>) -> u128 {
    let used = taken
        .iter()
        .filter(|ip| !gateways.contains(ip) && position_of(set, **ip).is_some())
        .count();
    usable_count(set, gateways).saturating_sub(used as u128)
}

/// Releases every address held by (container_id, ifname); Ok(empty) for
/// unknown containers or a missing store directory.
pub fn release(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>> {
    let Some(store) = Store::open_existing(data_dir, network)? else {
        return Ok(Vec::new());
    };
    let mut released = Vec::new();
    for e in store.entries()? {
        if e.held_by(container_id, ifname) {
            store.remove(e.ip)?;
            released.push(e.ip);
        }
    }
    if !released.is_empty() {
        tracing::debug!(
            network,
            container_id,
            ifname,
            ?released,
            "released addresses"
        );
    }
    Ok(released)
}

/// Addresses currently held by (container_id, ifname) (for CHECK).
pub fn allocated(
    data_dir: &Path,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpAddr>> {
    let Some(store) = Store::open_existing(data_dir, network)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .entries()?
        .into_iter()
        .filter(|e| e.held_by(container_id, ifname))
        .map(|e| e.ip)
        .collect())
}

/// Releases every allocation whose (container_id, ifname) is not in `valid`
/// (CNI GC). Returns the released (ip, container_id, ifname).
pub fn gc(
    data_dir: &Path,
    network: &str,
    valid: &[(String, String)],
) -> Result<Vec<(IpAddr, String, String)>> {
    let Some(store) = Store::open_existing(data_dir, network)? else {
        return Ok(Vec::new());
    };
    let mut released = Vec::new();
    for e in store.entries()? {
        if valid.iter().any(|(id, ifname)| e.held_by(id, ifname)) {
            continue;
        }
        store.remove(e.ip)?;
        released.push((e.ip, e.container_id, e.ifname.unwrap_or_default()));
    }
    Ok(released)
}

/// Every allocation in the store: (ip, container_id, ifname) — used by STATUS
/// and tests. Legacy leases that record no ifname report an empty one.
pub fn list(data_dir: &Path, network: &str) -> Result<Vec<(IpAddr, String, String)>> {
    let Some(store) = Store::open_existing(data_dir, network)? else {
        return Ok(Vec::new());
    };
    Ok(store
        .entries()?
        .into_iter()
        .map(|e| (e.ip, e.container_id, e.ifname.unwrap_or_default()))
        .collect())
}

/// Whether every range set still has a free address (for CNI STATUS).
pub fn has_free_address(cfg: &IpamConfig, network: &str) -> Result<bool> {
    let taken: HashSet<IpAddr> = match Store::open_existing(&cfg.data_dir, network)? {
        Some(store) => store.entries()?.into_iter().map(|e| e.ip).collect(),
        None => HashSet::new(),
    };
    Ok(cfg.ranges.iter().all(|set| {
        let gateways: HashSet<IpAddr> = set.iter().filter_map(|r| r.gateway).collect();
        free_count(set, &gateways, &taken) > 0
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;
    use std::path::PathBuf;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(dir: &Path, ranges: serde_json::Value) -> IpamConfig {
        IpamConfig::from_json(&json!({
            "type": "host-local",
            "ranges": ranges,
            "dataDir": dir,
        }))
        .unwrap()
    }

    fn small(dir: &Path) -> IpamConfig {
        // .10-.13 with gateway .1 outside the range: 4 usable addresses.
        cfg(
            dir,
            json!([[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.13"}]]),
        )
    }

    fn alloc1(c: &IpamConfig, id: &str) -> Result<IpAddr> {
        allocate(c, "net", id, "eth0", &[]).map(|a| a[0].address.addr())
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join("net"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn first_allocation_skips_gateway_and_writes_store() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path(), json!([[{"subnet": "10.22.0.0/24"}]]));
        let a = allocate(&c, "net", "ctr1", "eth0", &[]).unwrap();
        assert_eq!(
            a,
            vec![Allocation {
                address: "10.22.0.2/24".parse().unwrap(),
                gateway: Some(ip("10.22.0.1")),
                range_set: 0,
            }]
        );
        let d = tmp.path().join("net");
        assert_eq!(
            fs::read_to_string(d.join("10.22.0.2")).unwrap(),
            "ctr1\r\neth0"
        );
        assert_eq!(
            fs::read_to_string(d.join("last_reserved_ip.0")).unwrap(),
            "10.22.0.2"
        );
        assert_eq!(
            files(tmp.path()),
            ["10.22.0.2", "last_reserved_ip.0", "lock"]
        );
    }

    #[test]
    fn gateway_inside_custom_range_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(
            tmp.path(),
            json!([[{"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.12", "gateway": "10.22.0.11"}]]),
        );
        assert_eq!(alloc1(&c, "a").unwrap(), ip("10.22.0.10"));
        assert_eq!(alloc1(&c, "b").unwrap(), ip("10.22.0.12"));
        let err = alloc1(&c, "c").unwrap_err();
        assert!(err.msg.contains("all 2 usable addresses"), "{err}");
    }

    #[test]
    fn round_robin_continues_after_last_and_wraps() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        assert_eq!(alloc1(&c, "a").unwrap(), ip("10.22.0.10"));
        assert_eq!(alloc1(&c, "b").unwrap(), ip("10.22.0.11"));
        assert_eq!(alloc1(&c, "c").unwrap(), ip("10.22.0.12"));
        assert_eq!(
            release(tmp.path(), "net", "a", "eth0").unwrap(),
            [ip("10.22.0.10")]
        );
        // Not the freed .10: round robin avoids reusing an address right away.
        assert_eq!(alloc1(&c, "d").unwrap(), ip("10.22.0.13"));
        // Wraps around to the start.
        assert_eq!(alloc1(&c, "e").unwrap(), ip("10.22.0.10"));
        release(tmp.path(), "net", "c", "eth0").unwrap();
        assert_eq!(alloc1(&c, "f").unwrap(), ip("10.22.0.12"));
    }

    #[test]
    fn walks_multiple_ranges_in_a_set() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(
            tmp.path(),
            json!([[
                {"subnet": "10.22.0.0/24", "rangeStart": "10.22.0.10", "rangeEnd": "10.22.0.11"},
                {"subnet": "10.23.0.0/24", "rangeStart": "10.23.0.20", "rangeEnd": "10.23.0.20", "gateway": "10.23.0.254"}
            ]]),
        );
        let got: Vec<Allocation> = ["a", "b", "c"]
            .iter()
            .map(|id| allocate(&c, "net", id, "eth0", &[]).unwrap().remove(0))
            .collect();
        assert_eq!(got[0].address, "10.22.0.10/24".parse::<IpNet>().unwrap());
        assert_eq!(got[1].address, "10.22.0.11/24".parse::<IpNet>().unwrap());
        assert_eq!(got[2].address, "10.23.0.20/24".parse::<IpNet>().unwrap());
        assert_eq!(got[2].gateway, Some(ip("10.23.0.254")));
        release(tmp.path(), "net", "a", "eth0").unwrap();
        assert_eq!(alloc1(&c, "d").unwrap(), ip("10.22.0.10"));
    }

    #[test]
    fn stale_cursor_outside_the_set_restarts_at_range_start() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        fs::create_dir_all(tmp.path().join("net")).unwrap();
        fs::write(tmp.path().join("net/last_reserved_ip.0"), "192.168.9.9").unwrap();
        assert_eq!(alloc1(&c, "a").unwrap(), ip("10.22.0.10"));
    }

    #[test]
    fn requested_ips() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        let a = allocate(&c, "net", "a", "eth0", &[ip("10.22.0.12")]).unwrap();
        assert_eq!(a[0].address.addr(), ip("10.22.0.12"));
        // A requested address moves the cursor just like host-local.
        assert_eq!(alloc1(&c, "b").unwrap(), ip("10.22.0.13"));

        let err = allocate(&c, "net", "c", "eth0", &[ip("10.22.0.12")]).unwrap_err();
        assert!(
            err.msg
                .contains("already allocated to container a ifname eth0"),
            "{err}"
        );

        let err = allocate(&c, "net", "c", "eth0", &[ip("10.22.0.50")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.msg.contains("not inside any range"), "{err}");

        let err = allocate(
            &c,
            "net",
            "c",
            "eth0",
            &[ip("10.22.0.10"), ip("10.22.0.11")],
        )
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(
            err.msg.contains("at most one address per range set"),
            "{err}"
        );

        let c2 = cfg(tmp.path(), json!([[{"subnet": "10.22.0.0/24"}]]));
        let err = allocate(&c2, "net", "c", "eth0", &[ip("10.22.0.1")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.msg.contains("gateway"), "{err}");
        assert_eq!(list(tmp.path(), "net").unwrap().len(), 2);
    }

    #[test]
    fn duplicate_add_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        alloc1(&c, "a").unwrap();
        let err = alloc1(&c, "a").unwrap_err();
        assert!(
            err.msg.contains(
                "container a ifname eth0 already holds 10.22.0.10 in network net: DEL it first"
            ),
            "{err}"
        );
        // Another interface of the same container is a different attachment.
        allocate(&c, "net", "a", "eth1", &[]).unwrap();
    }

    #[test]
    fn dual_stack_allocates_from_every_set() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(
            tmp.path(),
            json!([[{"subnet": "10.22.0.0/24"}], [{"subnet": "fd00:22::/64"}]]),
        );
        let a = allocate(&c, "net", "a", "eth0", &[ip("fd00:22::abcd")]).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].address, "10.22.0.2/24".parse::<IpNet>().unwrap());
        assert_eq!(a[0].range_set, 0);
        assert_eq!(a[1].address, "fd00:22::abcd/64".parse::<IpNet>().unwrap());
        assert_eq!(a[1].gateway, Some(ip("fd00:22::1")));
        assert_eq!(a[1].range_set, 1);
        let b = allocate(&c, "net", "b", "eth0", &[]).unwrap();
        assert_eq!(b[1].address.addr(), ip("fd00:22::abce"));
        assert!(tmp.path().join("net/fd00:22::abcd").is_file());
        assert_eq!(
            fs::read_to_string(tmp.path().join("net/last_reserved_ip.1")).unwrap(),
            "fd00:22::abce"
        );
        let mut rel = release(tmp.path(), "net", "a", "eth0").unwrap();
        rel.sort();
        assert_eq!(rel, [ip("10.22.0.2"), ip("fd00:22::abcd")]);
        assert!(has_free_address(&c, "net").unwrap());
    }

    #[test]
    fn exhaustion_rolls_back_and_leaves_no_new_files() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(
            tmp.path(),
            json!([
                [{"subnet": "10.22.0.0/24"}],
                [{"subnet": "10.30.0.0/24", "rangeStart": "10.30.0.5", "rangeEnd": "10.30.0.5"}]
            ]),
        );
        allocate(&c, "net", "a", "eth0", &[]).unwrap();
        assert!(!has_free_address(&c, "net").unwrap());
        let before = files(tmp.path());
        let err = allocate(&c, "net", "b", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, Code::Internal);
        assert_eq!(
            err.msg,
            "no free address in range set 10.30.0.5-10.30.0.5 in 10.30.0.0/24 (all 1 usable addresses are allocated): delete unused containers or widen the range"
        );
        assert_eq!(files(tmp.path()), before);
        assert_eq!(list(tmp.path(), "net").unwrap().len(), 2);
    }

    #[test]
    fn exhaustion_message_for_a_full_slash_24() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path(), json!([[{"subnet": "10.22.0.0/24"}]]));
        fs::create_dir_all(tmp.path().join("net")).unwrap();
        for i in 2..=254 {
            fs::write(tmp.path().join(format!("net/10.22.0.{i}")), "x\r\neth0").unwrap();
        }
        assert!(!has_free_address(&c, "net").unwrap());
        let err = alloc1(&c, "a").unwrap_err();
        assert_eq!(
            err.msg,
            "no free address in range set 10.22.0.0/24 (all 253 usable addresses are allocated): delete unused containers or widen the range"
        );
    }

    #[test]
    fn tiny_subnets_allocate_every_address() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg(tmp.path(), json!([[{"subnet": "10.0.0.4/31"}]]));
        assert_eq!(alloc1(&c, "a").unwrap(), ip("10.0.0.4"));
        assert_eq!(alloc1(&c, "b").unwrap(), ip("10.0.0.5"));
        assert!(alloc1(&c, "c").is_err());
        let c = cfg(tmp.path(), json!([[{"subnet": "fd00::9/128"}]]));
        let a = allocate(&c, "net6", "a", "eth0", &[]).unwrap();
        assert_eq!(a[0].address, "fd00::9/128".parse::<IpNet>().unwrap());
        assert_eq!(a[0].gateway, None);
        assert!(allocate(&c, "net6", "b", "eth0", &[]).is_err());
    }

    #[test]
    fn release_matches_id_and_ifname_only() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        allocate(&c, "net", "a", "eth0", &[]).unwrap();
        allocate(&c, "net", "a", "eth1", &[]).unwrap();
        allocate(&c, "net", "b", "eth0", &[]).unwrap();
        assert_eq!(
            allocated(tmp.path(), "net", "a", "eth1").unwrap(),
            [ip("10.22.0.11")]
        );
        assert_eq!(
            release(tmp.path(), "net", "a", "eth1").unwrap(),
            [ip("10.22.0.11")]
        );
        assert_eq!(
            list(tmp.path(), "net").unwrap(),
            [
                (ip("10.22.0.10"), "a".to_string(), "eth0".to_string()),
                (ip("10.22.0.12"), "b".to_string(), "eth0".to_string()),
            ]
        );
        assert!(
            release(tmp.path(), "net", "zzz", "eth0")
                .unwrap()
                .is_empty()
        );
        assert!(
            release(tmp.path(), "other", "a", "eth0")
                .unwrap()
                .is_empty()
        );
        assert!(!tmp.path().join("other").exists());
        assert!(
            allocated(tmp.path(), "other", "a", "eth0")
                .unwrap()
                .is_empty()
        );
        assert!(list(tmp.path(), "other").unwrap().is_empty());
        let err = release(tmp.path(), "..", "a", "eth0").unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        let err = allocate(&c, "a/b", "a", "eth0", &[]).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
    }

    #[test]
    fn legacy_files_with_only_an_id() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        let d = tmp.path().join("net");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("10.22.0.10"), "old\n").unwrap();
        fs::write(d.join("10.22.0.11"), "  other  ").unwrap();
        assert_eq!(
            allocated(tmp.path(), "net", "old", "eth7").unwrap(),
            [ip("10.22.0.10")]
        );
        assert!(alloc1(&c, "old").is_err(), "legacy lease counts as held");
        assert_eq!(alloc1(&c, "new").unwrap(), ip("10.22.0.12"));
        assert_eq!(
            list(tmp.path(), "net").unwrap()[0],
            (ip("10.22.0.10"), "old".to_string(), String::new())
        );
        assert_eq!(
            release(tmp.path(), "net", "old", "eth0").unwrap(),
            [ip("10.22.0.10")]
        );
        assert!(d.join("10.22.0.11").exists());
    }

    #[test]
    fn gc_releases_only_invalid_attachments() {
        let tmp = tempfile::tempdir().unwrap();
        let c = small(tmp.path());
        allocate(&c, "net", "a", "eth0", &[]).unwrap();
        allocate(&c, "net", "a", "eth1", &[]).unwrap();
        allocate(&c, "net", "b", "eth0", &[]).unwrap();
        fs::write(tmp.path().join("net/10.22.0.13"), "legacy").unwrap();
        let valid = vec![
            ("a".to_string(), "eth0".to_string()),
            ("legacy".to_string(), "eth0".to_string()),
        ];
        let released = gc(tmp.path(), "net", &valid).unwrap();
        assert_eq!(
            released,
            [
                (ip("10.22.0.11"), "a".to_string(), "eth1".to_string()),
                (ip("10.22.0.12"), "b".to_string(), "eth0".to_string()),
            ]
        );
        let left: Vec<IpAddr> = list(tmp.path(), "net")
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(left, [ip("10.22.0.10"), ip("10.22.0.13")]);
        assert_eq!(gc(tmp.path(), "net", &[]).unwrap().len(), 2);
        assert!(list(tmp.path(), "net").unwrap().is_empty());
        assert!(gc(tmp.path(), "missing", &[]).unwrap().is_empty());
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let tmp = tempfile::tempdir().unwrap();
        let dir: PathBuf = tmp.path().to_path_buf();
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let c = cfg(&dir, json!([[{"subnet": "10.40.0.0/24"}]]));
                    (0..4)
                        .map(|i| alloc1(&c, &format!("ctr-{t}-{i}")).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for ip in h.join().unwrap() {
                assert!(all.insert(ip), "{ip} allocated twice");
            }
        }
        assert_eq!(all.len(), 64);
        assert_eq!(list(&dir, "net").unwrap().len(), 64);
        assert!(!all.contains(&ip("10.40.0.1")));
    }

    #[test]
    fn continues_a_hand_written_host_local_store() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("net");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("10.22.0.2"), "ctr1\r\neth0").unwrap();
        fs::write(d.join("last_reserved_ip.0"), "10.22.0.2").unwrap();
        fs::write(d.join("lock"), "").unwrap();
        let c = cfg(tmp.path(), json!([[{"subnet": "10.22.0.0/24"}]]));
        assert_eq!(alloc1(&c, "ctr2").unwrap(), ip("10.22.0.3"));
        assert_eq!(
            release(tmp.path(), "net", "ctr1", "eth0").unwrap(),
            [ip("10.22.0.2")]
        );
        assert_eq!(
            list(tmp.path(), "net").unwrap(),
            [(ip("10.22.0.3"), "ctr2".to_string(), "eth0".to_string())]
        );
    }

    /// Runs the reference plugin, if installed, to prove the layouts match.
    fn host_local(command: &str, dir: &Path, id: &str) -> Option<serde_json::Value> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let bin = Path::new("/usr/lib/cni/host-local");
        if !bin.exists() {
            eprintln!("skipping: {} is not installed", bin.display());
            return None;
        }
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": "net",
            "type": "bridge",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": dir}
        });
        let mut child = Command::new(bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        Some(serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null))
    }

    #[test]
    fn interoperates_with_reference_host_local() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(res) = host_local("ADD", tmp.path(), "hl1") else {
            return;
        };
        assert_eq!(res["ips"][0]["address"], "10.99.0.2/24");
        assert_eq!(
            list(tmp.path(), "net").unwrap(),
            [(ip("10.99.0.2"), "hl1".to_string(), "eth0".to_string())]
        );
        let c = cfg(tmp.path(), json!([[{"subnet": "10.99.0.0/24"}]]));
        assert_eq!(alloc1(&c, "pw1").unwrap(), ip("10.99.0.3"));
        // And host-local continues after our cursor and sees our lease.
        let res = host_local("ADD", tmp.path(), "hl2").unwrap();
        assert_eq!(res["ips"][0]["address"], "10.99.0.4/24");
        host_local("DEL", tmp.path(), "pw1").unwrap();
        assert_eq!(
            release(tmp.path(), "net", "hl2", "eth0").unwrap(),
            [ip("10.99.0.4")]
        );
        assert_eq!(
            list(tmp.path(), "net").unwrap(),
            [(ip("10.99.0.2"), "hl1".to_string(), "eth0".to_string())]
        );
    }
}

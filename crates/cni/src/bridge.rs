//! The `podwire` plugin: the reference bridge plugin's recipe (bridge, veth,
//! addresses, routes, gateway, masquerade) with IPAM and port mappings done
//! in the same process, all through netlink. A failed ADD undoes what it did.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use podwire_kernel::link::{Link, parse_mac};
use podwire_kernel::route::Route as KRoute;
use podwire_kernel::{Netlink, Netns, sysctl};
use serde_json::Value;

use crate::env::Env;
use crate::error::{Code, Error, Result};
use crate::firewall;
use crate::ipam;
use crate::netconf::{BridgeOptions, NetConf, PortMapping};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route};
use crate::state::{self, Attachment};
use crate::{delegate, fw};

/// Where the addresses come from.
enum Ipam {
    Local(ipam::IpamConfig),
    Delegated(String),
}

fn ipam_of(conf: &NetConf) -> Result<Ipam> {
    let Some(ipam) = &conf.ipam else {
        return Err(Error::config(
            "the network configuration has no \"ipam\" section",
            "add \"ipam\": {\"type\": \"podwire\", \"ranges\": [[{\"subnet\": \"10.22.0.0/16\"}]]}",
        ));
    };
    match ipam.get("type").and_then(Value::as_str).unwrap_or("") {
        "" | "podwire" => Ok(Ipam::Local(ipam::IpamConfig::from_json(ipam)?)),
        other if crate::PLUGIN_TYPES.contains(&other) => Err(Error::config(
            format!("ipam type {other:?} is not an IPAM plugin"),
            "use \"podwire\" (or no type) for podwire's own IPAM, or host-local, dhcp, static",
        )),
        other => Ok(Ipam::Delegated(other.to_string())),
    }
}

/// The directory for attachment records: explicit `stateDir`, else beside the
/// IPAM store, else the default.
pub fn state_dir(conf: &NetConf) -> PathBuf {
    if let Some(dir) = &conf.state_dir {
        return PathBuf::from(dir);
    }
    if let Some(dir) = conf
        .ipam
        .as_ref()
        .and_then(|i| i.get("dataDir"))
        .and_then(Value::as_str)
    {
        return Path::new(dir).join("podwire-state");
    }
    PathBuf::from(state::DEFAULT_STATE_DIR)
}

/// The host end's name: stable for one attachment, so DEL can find it even
/// without state, and unique enough across containers.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in network
        .bytes()
        .chain([0])
        .chain(container_id.bytes())
        .chain([0])
        .chain(ifname.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("veth{:08x}", (hash ^ (hash >> 32)) as u32)
}

struct IpamOutcome {
    ips: Vec<IpConfig>,
    routes: Vec<Route>,
    dns: Dns,
}

fn ipam_add(conf: &NetConf, env: &Env, ipam: &Ipam) -> Result<IpamOutcome> {
    match ipam {
        Ipam::Local(cfg) => {
            let requested = conf.requested_ips(env.arg("IP"))?;
            let allocations =
                ipam::allocate(cfg, &conf.name, &env.container_id, &env.ifname, &requested)?;
            let ips = allocations
                .iter()
                .map(|a| IpConfig {
                    address: a.address,
                    gateway: a.gateway,
                    interface: None,
                })
                .collect::<Vec<_>>();
            let routes = cfg
                .routes
                .iter()
                .map(|r| Route {
                    dst: r.dst,
                    gw: r.gw,
                })
                .collect();
            let dns = match &cfg.resolv_conf {
                Some(path) => {
                    let d = ipam::read_resolv_conf(path)?;
                    Dns {
                        nameservers: d.nameservers,
                        domain: d.domain,
                        search: d.search,
                        options: d.options,
                    }
                }
                None => Dns::default(),
            };
            Ok(IpamOutcome { ips, routes, dns })
        }
        Ipam::Delegated(plugin) => {
            let value = delegate::exec(env, plugin, "ADD", &conf.raw)?;
            let result = CniResult::from_json(&value)?;
            if result.ips.is_empty() {
                return Err(Error::internal(
                    format!("IPAM plugin {plugin} returned no IP"),
                    value,
                ));
            }
            Ok(IpamOutcome {
                ips: result.ips,
                routes: result.routes,
                dns: result.dns,
            })
        }
    }
}

fn ipam_del(conf: &NetConf, env: &Env, ipam: &Ipam) -> Result<()> {
    match ipam {
        Ipam::Local(cfg) => {
            ipam::release(&cfg.data_dir, &conf.name, &env.container_id, &env.ifname).map(|_| ())
        }
        Ipam::Delegated(plugin) => delegate::exec(env, plugin, "DEL", &conf.raw).map(|_| ()),
    }
}

/// Undo steps of a half-done ADD, run in reverse on failure.
#[derive(Default)]
struct Undo {
    ipam: bool,
    host_veth: Option<String>,
    firewall: Option<Attachment>,
}

pub fn add(conf: &NetConf, env: &Env) -> Result<CniResult> {
    let opts = &conf.bridge;
    let ipam = ipam_of(conf)?;
    let mappings = conf.runtime_config.port_mappings.clone();
    firewall::validate_mappings(&mappings)?;
    let peer_mac = match &conf.runtime_config.mac {
        Some(text) => Some(parse_mac(text).ok_or_else(|| {
            Error::config(
                format!("invalid runtimeConfig.mac {text:?}"),
                "give a MAC as aa:bb:cc:dd:ee:ff",
            )
        })?),
        None => None,
    };
    let netns = crate::env::open_netns(&env.netns)?;
    let mut undo = Undo::default();
    let outcome = ipam_add(conf, env, &ipam)?;
    undo.ipam = true;
    // The record exists before anything else does, so a plugin killed at any
    // later point leaves something GC and DEL can undo.
    let subnets: Vec<IpNet> = outcome.ips.iter().map(|i| i.address.trunc()).collect();
    let record = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_veth: Some(host_veth_name(&conf.name, &env.container_id, &env.ifname)),
        netid: firewall::network_id(&conf.name, &subnets),
        ips: outcome.ips.iter().map(|i| i.address.addr()).collect(),
        ip_masq: opts.ip_masq,
        port_mappings: mappings.clone(),
        spoof_mac: None,
    };
    if let Err(err) = state::save(&state_dir(conf), &conf.name, &record) {
        rollback(conf, env, &ipam, undo);
        return Err(err);
    }
    undo.firewall = Some(record);
    match add_with(
        conf, env, opts, &netns, peer_mac, &outcome, &mappings, &mut undo,
    ) {
        Ok(result) => Ok(result),
        Err(err) => {
            rollback(conf, env, &ipam, undo);
            Err(err)
        }
    }
}

fn rollback(conf: &NetConf, env: &Env, ipam: &Ipam, undo: Undo) {
    if let Some(att) = &undo.firewall
        && let Err(e) = fw::remove(att)
    {
        tracing::warn!(error = %e, "rollback: removing firewall elements failed");
    }
    if let Some(name) = &undo.host_veth
        && let Err(e) = Netlink::new().and_then(|mut nl| nl.delete_link(name))
    {
        tracing::warn!(error = %e, "rollback: deleting {name} failed");
    }
    if undo.ipam
        && let Err(e) = ipam_del(conf, env, ipam)
    {
        tracing::warn!(error = %e, "rollback: releasing addresses failed");
    }
    let _ = state::remove(&state_dir(conf), &conf.name, &env.container_id, &env.ifname);
}

#[allow(clippy::too_many_arguments)]
fn add_with(
    conf: &NetConf,
    env: &Env,
    opts: &BridgeOptions,
    netns: &Netns,
    peer_mac: Option<[u8; 6]>,
    outcome: &IpamOutcome,
    mappings: &[PortMapping],
    undo: &mut Undo,
) -> Result<CniResult> {
    let mut host = Netlink::new()?;
    let bridge = ensure_bridge(&mut host, opts)?;
    if opts.is_gateway {
        ensure_gateways(&mut host, &bridge, opts, &outcome.ips)?;
        if outcome.ips.iter().any(|ip| ip.address.addr().is_ipv4()) {
            sysctl::ensure("net/ipv4/ip_forward", "1")?;
        }
        if outcome.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
            sysctl::ensure("net/ipv6/conf/all/forwarding", "1")?;
        }
    }

    let host_name = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    let mtu = opts.mtu;
    host.create_veth(&host_name, &env.ifname, netns.raw_fd(), mtu, peer_mac)
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => Error::internal(
                format!("interface {} or {host_name} already exists", env.ifname),
                format!("container {} already has {} in this namespace, or a previous ADD was not deleted: run DEL first", env.container_id, env.ifname),
            ),
            _ => e.into(),
        })?;
    undo.host_veth = Some(host_name.clone());
    let host_link = host
        .link_by_name(&host_name)?
        .ok_or_else(|| Error::internal("veth vanished after creation", &host_name))?;
    host.set_link(host_link.index, Some(true), Some(bridge.index), None)?;
    // A bridge without a fixed MAC takes the lowest of its ports' MACs, so
    // its address is only final once this port is attached.
    let bridge = host.link_by_index(bridge.index)?.unwrap_or(bridge);
    // A container reaching its own published port is DNATed back out of the
    // port it came in on; with bridge netfilter active that needs hairpin.
    if opts.hairpin_mode || !mappings.is_empty() {
        host.set_bridge_port_hairpin(host_link.index, true)?;
    }
    if let Some(vid) = opts.vlan {
        host.add_bridge_vlan(host_link.index, vid, false)?;
    }

    // Inside the container.
    let mut ctr = Netlink::in_netns(netns)?;
    let ctr_link = ctr.link_by_name(&env.ifname)?.ok_or_else(|| {
        Error::internal("container interface vanished after creation", &env.ifname)
    })?;
    if !opts.enabledad && outcome.ips.iter().any(|ip| ip.address.addr().is_ipv6()) {
        // As the reference plugin: no duplicate address detection on this
        // interface at all (link-local included), so IPv6 works at once.
        let path = format!("net/ipv6/conf/{}/accept_dad", env.ifname);
        netns.run(|| sysctl::ensure(&path, "0"))??;
    }
    for ip in &outcome.ips {
        ctr.add_address(ctr_link.index, &ip.address, !opts.enabledad)
            .map_err(|e| {
                Error::internal(format!("cannot add {} to {}", ip.address, env.ifname), e)
            })?;
    }
    ctr.set_link(ctr_link.index, Some(true), None, None)?;
    ctr.loopback_up()?;

    let mut routes: Vec<Route> = Vec::new();
    if opts.is_default_gateway {
        for ip in &outcome.ips {
            if let Some(gw) = ip.gateway {
                let dst: IpNet = if gw.is_ipv4() {
                    "0.0.0.0/0".parse().unwrap_or_default()
                } else {
                    IpNet::V6(Default::default())
                };
                if !routes.iter().any(|r| r.dst == dst) {
                    routes.push(Route { dst, gw: Some(gw) });
                }
            }
        }
    }
    for r in &outcome.routes {
        if !routes.iter().any(|x| x.dst == r.dst) {
            routes.push(r.clone());
        }
    }
    for r in &routes {
        let gw = r.gw.or_else(|| {
            outcome
                .ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == r.dst.addr().is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        let kr = KRoute {
            dst: r.dst,
            gateway: gw,
            oif: Some(ctr_link.index),
        };
        match ctr.add_route(&kr) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::internal(
                    format!("cannot add route {} in the container", r.dst),
                    e,
                ));
            }
        }
    }

    // Firewall: masquerade and published ports as map elements.
    let mut att = undo
        .firewall
        .clone()
        .ok_or_else(|| Error::internal("attachment record missing", &env.container_id))?;
    att.spoof_mac = opts.macspoofchk.then(|| ctr_link.mac_string());
    if att.spoof_mac.is_some() {
        state::save(&state_dir(conf), &conf.name, &att)?;
        undo.firewall = Some(att.clone());
    }
    let subnets: Vec<IpNet> = outcome.ips.iter().map(|i| i.address.trunc()).collect();
    if att.ip_masq || !att.port_mappings.is_empty() || att.spoof_mac.is_some() {
        fw::install(&att, &subnets, &owner(conf, &env.container_id, &env.ifname))?;
        if !att.port_mappings.is_empty() && att.ips.iter().any(IpAddr::is_ipv4) {
            // Lets host processes reach 127.0.0.1:hostPort: the DNATed packet
            // keeps its loopback source until masquerade rewrites it.
            sysctl::ensure(
                &format!("net/ipv4/conf/{}/route_localnet", bridge.name),
                "1",
            )?;
        }
    }
    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac_string(),
                mtu: Some(bridge.mtu),
                sandbox: None,
            },
            Interface {
                name: host_name,
                mac: host_link.mac_string(),
                mtu: Some(host_link.mtu),
                sandbox: None,
            },
            Interface {
                name: env.ifname.clone(),
                mac: ctr_link.mac_string(),
                mtu: Some(ctr_link.mtu),
                sandbox: Some(env.netns.clone()),
            },
        ],
        ips: outcome
            .ips
            .iter()
            .map(|ip| IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: outcome.dns.clone(),
    };
    if let Some(dns) = &conf.dns {
        let extra = Dns::from_json(dns);
        if result.dns.is_empty() {
            result.dns = extra;
        }
    }
    Ok(result)
}

fn ensure_bridge(host: &mut Netlink, opts: &BridgeOptions) -> Result<Link> {
    let existing = host.link_by_name(&opts.bridge)?;
    let link = match existing {
        Some(link) => link,
        None => {
            match host.create_bridge(&opts.bridge, opts.mtu, opts.vlan.is_some()) {
                Ok(()) => {}
                // Another ADD created it first.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) if opts.vlan.is_some() && e.errno() == Some(libc::EOPNOTSUPP) => {
                    return Err(Error::new(
                        Code::UnsupportedField,
                        format!(
                            "cannot create bridge {} with VLAN filtering: this kernel does not support it",
                            opts.bridge
                        ),
                        "the kernel lacks CONFIG_BRIDGE_VLAN_FILTERING; remove \"vlan\" from the configuration",
                    ));
                }
                Err(e) => {
                    return Err(Error::internal(
                        format!("cannot create bridge {}", opts.bridge),
                        e,
                    ));
                }
            }
            host.link_by_name(&opts.bridge)?
                .ok_or_else(|| Error::internal("bridge vanished after creation", &opts.bridge))?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::config(
            format!(
                "{} exists and is not a bridge (kind {})",
                opts.bridge,
                link.kind.as_deref().unwrap_or("unknown")
            ),
            "choose another \"bridge\" name or remove that interface",
        ));
    }
    if !link.up || (opts.promisc_mode && !link.promisc) {
        host.set_link(
            link.index,
            Some(true),
            None,
            opts.promisc_mode.then_some(true),
        )?;
    }
    if let Some(vid) = opts.vlan {
        host.set_bridge_vlan_filtering(link.index, true)?;
        if opts.is_gateway {
            host.add_bridge_vlan(link.index, vid, true)?;
        }
    }
    Ok(link)
}

fn ensure_gateways(
    host: &mut Netlink,
    bridge: &Link,
    opts: &BridgeOptions,
    ips: &[IpConfig],
) -> Result<()> {
    let existing = host.addresses(bridge.index)?;
    for ip in ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len())
            .map_err(|e| Error::internal("invalid gateway prefix", e))?;
        if existing.contains(&want) {
            continue;
        }
        for other in existing
            .iter()
            .filter(|e| e.addr().is_ipv4() == gw.is_ipv4())
        {
            let overlaps = other.contains(&gw) || want.contains(&other.addr());
            if !overlaps || other.addr().is_ipv6() && other.addr().to_string().starts_with("fe80") {
                continue;
            }
            if opts.force_address {
                host.delete_address(bridge.index, other)?;
            } else {
                return Err(Error::config(
                    format!(
                        "bridge {} already has address {other}, not the gateway {want}",
                        bridge.name
                    ),
                    "set \"forceAddress\": true to replace it, or use the bridge's subnet",
                ));
            }
        }
        match host.add_address(bridge.index, &want, true) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(Error::internal(
                    format!("cannot add gateway {want} to {}", bridge.name),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// The owner tag on every element of one attachment of this plugin.
fn owner(conf: &NetConf, container_id: &str, ifname: &str) -> String {
    firewall::owner_tag(&conf.plugin_type, &conf.name, container_id, ifname)
}

/// DEL never gives up on an attachment: with a readable record it undoes
/// exactly what the record says; without one (missing, empty, truncated,
/// garbage) it finds the same things by what is deterministic or carried by
/// the objects themselves: the host veth's name (a hash of network,
/// container and interface), the elements' owner tags, the addresses
/// IPAM holds for the container and those in prevResult.
pub fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let ipam = ipam_of(conf)?;
    let dir = state_dir(conf);
    let record = state::read(&dir, &conf.name, &env.container_id, &env.ifname);
    let fallback_veth = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    match &record {
        state::Record::Found(att) => fw::remove(att)?,
        other => {
            if let state::Record::Corrupt(why) = other {
                tracing::warn!(%why, "attachment record is unreadable; deleting what can be found without it");
            }
            let ips = attachment_ips(conf, env, &ipam)?;
            let keep = live_elements(&dir, &conf.name, |c, i| {
                c != env.container_id || i != env.ifname
            })?;
            let me = owner(conf, &env.container_id, &env.ifname);
            fw::sweep(&fw::Sweep {
                maps: &firewall::CONTAINER_MAPS,
                owner: &|tag| tag == me,
                ips: &ips,
                host_veths: std::slice::from_ref(&fallback_veth),
                keep: &keep,
            })?;
        }
    }
    // The container end first: deleting it removes the pair. When the
    // namespace is gone (or CNI_NETNS is no namespace at all), so is the
    // pair; the host name is a fallback.
    let mut deleted = false;
    if !env.netns.is_empty() {
        match crate::env::open_netns(&env.netns) {
            Ok(netns) => {
                let mut ctr = Netlink::in_netns(&netns)?;
                deleted = ctr.delete_link(&env.ifname)?;
            }
            Err(e) => tracing::debug!(error = %e, "container namespace not usable for DEL"),
        }
    }
    if !deleted {
        let name = match &record {
            state::Record::Found(att) => att.host_veth.clone().unwrap_or(fallback_veth),
            _ => fallback_veth,
        };
        Netlink::new()?.delete_link(&name)?;
    }
    ipam_del(conf, env, &ipam)?;
    state::remove(&dir, &conf.name, &env.container_id, &env.ifname)
}

/// The addresses one attachment holds when its record cannot tell: what the
/// IPAM store holds for it, and what prevResult says unless the store gives
/// that address to someone else now.
fn attachment_ips(conf: &NetConf, env: &Env, ipam: &Ipam) -> Result<Vec<IpAddr>> {
    let held = match ipam {
        Ipam::Local(cfg) => ipam::list(&cfg.data_dir, &conf.name)?,
        Ipam::Delegated(_) => Vec::new(),
    };
    let mine = |cid: &str, ifname: &str| {
        cid == env.container_id && (ifname.is_empty() || ifname == env.ifname)
    };
    let mut ips: Vec<IpAddr> = held
        .iter()
        .filter(|(_, cid, ifname)| mine(cid, ifname))
        .map(|(ip, _, _)| *ip)
        .collect();
    if let Some(prev) = &conf.prev_result {
        for ip in prev_result_ips(prev, &env.ifname) {
            let taken = held
                .iter()
                .any(|(held_ip, cid, ifname)| *held_ip == ip && !mine(cid, ifname));
            if !taken && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    Ok(ips)
}

/// The container's addresses in a previous result: those on `ifname` in a
/// sandbox, or on no interface in particular.
fn prev_result_ips(prev: &CniResult, ifname: &str) -> Vec<IpAddr> {
    prev.ips
        .iter()
        .filter(
            |ip| match ip.interface.and_then(|i| prev.interfaces.get(i)) {
                Some(iface) => iface.sandbox.is_some() && iface.name == ifname,
                None => true,
            },
        )
        .map(|ip| ip.address.addr())
        .collect()
}

/// The elements of every readable record of the network that `alive`
/// accepts (by container ID and interface).
fn live_elements(
    dir: &Path,
    network: &str,
    alive: impl Fn(&str, &str) -> bool,
) -> Result<Vec<firewall::MapEntry>> {
    let mut out = Vec::new();
    for entry in state::scan(dir, network)? {
        if let state::Record::Found(att) = &entry.record
            && alive(&att.container_id, &att.ifname)
        {
            out.extend(firewall::container_elements(
                &att.netid,
                &att.ips,
                att.ip_masq,
                &att.port_mappings,
            )?);
        }
    }
    Ok(out)
}

pub fn check(conf: &NetConf, env: &Env) -> Result<()> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        Error::config(
            "CHECK needs prevResult",
            "the runtime passes the ADD result as prevResult",
        )
    })?;
    let ipam = ipam_of(conf)?;
    let netns = crate::env::open_netns(&env.netns)?;
    let mut ctr = Netlink::in_netns(&netns)?;
    let link = ctr.link_by_name(&env.ifname)?.ok_or_else(|| {
        Error::internal(
            format!("interface {} is missing in the container", env.ifname),
            env.netns.clone(),
        )
    })?;
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && i.sandbox.is_some())
        && !want.mac.is_empty()
        && want.mac != link.mac_string()
    {
        return Err(Error::internal(
            format!(
                "{} has MAC {}, expected {}",
                env.ifname,
                link.mac_string(),
                want.mac
            ),
            "the interface was changed after ADD",
        ));
    }
    let have = ctr.addresses(link.index)?;
    for ip in &prev.ips {
        if !have.contains(&ip.address) {
            return Err(Error::internal(
                format!("address {} is missing on {}", ip.address, env.ifname),
                "run DEL and ADD again",
            ));
        }
    }
    for route in &prev.routes {
        let table = ctr.routes(route.dst.addr().is_ipv6())?;
        if !table.iter().any(|r| r.dst == route.dst.trunc()) {
            return Err(Error::internal(
                format!("route {} is missing in the container", route.dst),
                "run DEL and ADD again",
            ));
        }
    }
    match &ipam {
        Ipam::Local(cfg) => {
            let held = ipam::allocated(&cfg.data_dir, &conf.name, &env.container_id, &env.ifname)?;
            for ip in &prev.ips {
                if !held.contains(&ip.address.addr()) {
                    return Err(Error::internal(
                        format!("IPAM does not hold {} for this container", ip.address),
                        "run DEL and ADD again",
                    ));
                }
            }
        }
        Ipam::Delegated(plugin) => {
            delegate::exec(env, plugin, "CHECK", &conf.raw)?;
        }
    }
    let mut host = Netlink::new()?;
    let bridge = host.link_by_name(&conf.bridge.bridge)?.ok_or_else(|| {
        Error::internal(
            format!("bridge {} is missing", conf.bridge.bridge),
            "run DEL and ADD again",
        )
    })?;
    let host_name = host_veth_name(&conf.name, &env.container_id, &env.ifname);
    if let Some(veth) = host.link_by_name(&host_name)?
        && veth.master != Some(bridge.index)
    {
        return Err(Error::internal(
            format!("{host_name} is not attached to {}", bridge.name),
            "run DEL and ADD again",
        ));
    }
    if let Some(att) = state::load(&state_dir(conf), &conf.name, &env.container_id, &env.ifname)? {
        fw::check(&att)?;
    }
    Ok(())
}

/// CNI GC: undoes every attachment not in `valid`, whatever is left of it:
/// readable records exactly, corrupt records and leftover temporary files by
/// their file name (container ID and interface), IPAM leases by their
/// holder, and elements by their owner tag.
pub fn gc(conf: &NetConf, env: &Env, valid: &[(String, String)]) -> Result<()> {
    let ipam = ipam_of(conf)?;
    let dir = state_dir(conf);
    let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
    let entries = state::scan(&dir, &conf.name)?;
    let held = match &ipam {
        Ipam::Local(cfg) => ipam::list(&cfg.data_dir, &conf.name)?,
        Ipam::Delegated(_) => Vec::new(),
    };
    // Legacy leases name no interface: they belong to any of the container's.
    let lease_valid = |cid: &str, ifname: &str| {
        valid
            .iter()
            .any(|(c, i)| c == cid && (ifname.is_empty() || i == ifname))
    };
    let mut stale_ips: Vec<IpAddr> = held
        .iter()
        .filter(|(_, cid, ifname)| !lease_valid(cid, ifname))
        .map(|(ip, _, _)| *ip)
        .collect();
    let mut stale_veths: Vec<String> = held
        .iter()
        .filter(|(_, cid, ifname)| !lease_valid(cid, ifname) && !ifname.is_empty())
        .map(|(_, cid, ifname)| host_veth_name(&conf.name, cid, ifname))
        .collect();
    let keep = live_elements(&dir, &conf.name, is_valid)?;
    for entry in entries
        .iter()
        .filter(|e| !is_valid(&e.container_id, &e.ifname))
    {
        stale_veths.push(host_veth_name(
            &conf.name,
            &entry.container_id,
            &entry.ifname,
        ));
        if let state::Record::Found(att) = &entry.record {
            fw::remove(att)?;
            stale_ips.extend(att.ips.iter().copied());
            stale_veths.extend(att.host_veth.clone());
        }
    }
    let valid_tags: Vec<String> = valid
        .iter()
        .map(|(cid, ifname)| owner(conf, cid, ifname))
        .collect();
    let prefix = firewall::owner_prefix(&conf.plugin_type, &conf.name);
    let removed = fw::sweep(&fw::Sweep {
        maps: &firewall::CONTAINER_MAPS,
        owner: &|tag| tag.starts_with(&prefix) && !valid_tags.iter().any(|v| v == tag),
        ips: &stale_ips,
        host_veths: &stale_veths,
        keep: &keep,
    })?;
    if removed > 0 {
        tracing::info!(removed, "GC removed firewall elements of stale attachments");
    }
    stale_veths.sort();
    stale_veths.dedup();
    if !stale_veths.is_empty() {
        let mut host = Netlink::new()?;
        for name in &stale_veths {
            host.delete_link(name)?;
        }
    }
    for entry in entries
        .iter()
        .filter(|e| !is_valid(&e.container_id, &e.ifname))
    {
        state::remove(&dir, &conf.name, &entry.container_id, &entry.ifname)?;
    }
    match &ipam {
        Ipam::Local(cfg) => {
            for (ip, cid, ifname) in ipam::gc(&cfg.data_dir, &conf.name, valid)? {
                tracing::info!(%ip, container = %cid, %ifname, "GC released an address");
            }
        }
        Ipam::Delegated(plugin) => {
            delegate::exec(env, plugin, "GC", &conf.raw)?;
        }
    }
    Ok(())
}

/// CNI STATUS: can this network take another ADD, and is it healthy?
pub fn status(conf: &NetConf, env: &Env) -> Result<()> {
    match ipam_of(conf)? {
        Ipam::Local(cfg) => {
            let store = cfg.data_dir.join(&conf.name);
            if let Err(e) = std::fs::create_dir_all(&store) {
                return Err(Error::new(
                    Code::PluginNotAvailable,
                    format!("IPAM store {} is not usable", store.display()),
                    e.to_string(),
                ));
            }
            let probe = store.join(".status-probe");
            if let Err(e) = std::fs::write(&probe, b"") {
                return Err(Error::new(
                    Code::PluginNotAvailable,
                    format!("IPAM store {} is not writable", store.display()),
                    e.to_string(),
                ));
            }
            let _ = std::fs::remove_file(&probe);
            if !ipam::has_free_address(&cfg, &conf.name)? {
                return Err(Error::new(
                    Code::PluginNotAvailable,
                    format!("network {} has no free address left", conf.name),
                    "delete unused containers or widen the range",
                ));
            }
            let holders = ipam::list(&cfg.data_dir, &conf.name)?;
            if !holders.is_empty() && Netlink::new()?.link_by_name(&conf.bridge.bridge)?.is_none() {
                return Err(Error::new(
                    Code::LimitedConnectivity,
                    format!(
                        "bridge {} is missing while {} containers hold addresses",
                        conf.bridge.bridge,
                        holders.len()
                    ),
                    "existing containers have no connectivity until the bridge is recreated",
                ));
            }
            Ok(())
        }
        Ipam::Delegated(plugin) => delegate::exec(env, &plugin, "STATUS", &conf.raw).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_kernel::link::format_mac;

    #[test]
    fn host_veth_names_are_stable_and_short() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert_ne!(a, host_veth_name("net", "c2", "eth0"));
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
        assert!(a.len() <= 15);
    }

    #[test]
    fn format_mac_round_trips() {
        let mac = parse_mac("0a:1b:2c:3d:4e:5f").unwrap();
        assert_eq!(format_mac(&mac), "0a:1b:2c:3d:4e:5f");
        assert!(parse_mac("0a:1b").is_none());
    }
}

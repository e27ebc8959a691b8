//! `podwire-portmap`: port publishing as a chained plugin, a drop-in for the
//! reference portmap. It reads the container's addresses from prevResult and
//! programs the same map elements the `podwire` plugin uses directly.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::env::Env;
use crate::error::{Error, Result};
use crate::netconf::NetConf;
use crate::result::CniResult;
use crate::state::{self, Attachment};
use crate::{firewall, fw};

fn state_dir(conf: &NetConf) -> PathBuf {
    PathBuf::from(
        conf.state_dir
            .clone()
            .unwrap_or_else(|| state::DEFAULT_STATE_DIR.to_string()),
    )
}

fn netid(conf: &NetConf) -> String {
    format!("pm-{}", firewall::network_id(&conf.name, &[]))
}

/// Addresses of the container interface in prevResult.
fn container_ips(prev: &CniResult) -> Vec<IpAddr> {
    prev.ips
        .iter()
        .filter(
            |ip| match ip.interface.and_then(|i| prev.interfaces.get(i)) {
                Some(iface) => iface.sandbox.is_some(),
                None => true,
            },
        )
        .map(|ip| ip.address.addr())
        .collect()
}

pub fn add(conf: &NetConf, env: &Env) -> Result<CniResult> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        Error::config(
            "podwire-portmap must be chained after a plugin that assigns addresses",
            "put it after podwire (or bridge) in a conflist",
        )
    })?;
    let mappings = conf.runtime_config.port_mappings.clone();
    firewall::validate_mappings(&mappings)?;
    if mappings.is_empty() {
        return Ok(prev);
    }
    let ips = container_ips(&prev);
    let subnets: Vec<ipnet::IpNet> = prev.ips.iter().map(|ip| ip.address.trunc()).collect();
    let att = Attachment {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        host_veth: None,
        netid: netid(conf),
        ips,
        ip_masq: false,
        port_mappings: mappings,
        spoof_mac: None,
    };
    fw::install(&att, &subnets, &owner(conf, &env.container_id, &env.ifname))?;
    if let Err(e) = prepare_host_side(&prev) {
        let _ = fw::remove(&att);
        return Err(e);
    }
    if let Err(e) = state::save(&state_dir(conf), &conf.name, &att) {
        let _ = fw::remove(&att);
        return Err(e);
    }
    Ok(prev)
}

/// What the published ports need from the host side of the previous
/// plugin's interfaces: `route_localnet` on the bridge, so host processes
/// reach 127.0.0.1:hostPort, and hairpin on the container's bridge port, so
/// the container reaches its own published port.
fn prepare_host_side(prev: &CniResult) -> Result<()> {
    let mut nl = podwire_kernel::Netlink::new()?;
    for iface in prev.interfaces.iter().filter(|i| i.sandbox.is_none()) {
        let Some(link) = nl.link_by_name(&iface.name)? else {
            continue;
        };
        if link.kind.as_deref() == Some("bridge") {
            podwire_kernel::sysctl::ensure(
                &format!("net/ipv4/conf/{}/route_localnet", link.name),
                "1",
            )?;
        } else if link.master.is_some() {
            nl.set_bridge_port_hairpin(link.index, true)?;
        }
    }
    Ok(())
}

/// The maps `podwire-portmap` fills (never masquerade: that is the
/// previous plugin's).
const PORTMAP_MAPS: [&str; 6] = [
    "hairpin4",
    "hairpin6",
    "hostports4",
    "hostports6",
    "hostports4_ip",
    "hostports6_ip",
];

fn owner(conf: &NetConf, container_id: &str, ifname: &str) -> String {
    firewall::owner_tag(&conf.plugin_type, &conf.name, container_id, ifname)
}

/// The elements of the network's readable records that `alive` accepts.
fn live_elements(
    dir: &std::path::Path,
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

/// Removes the attachment's elements: exactly those of its record, or,
/// when the record is missing or unreadable, those carrying its owner
/// tag or (elements from before tags) prevResult's addresses.
pub fn del(conf: &NetConf, env: &Env) -> Result<()> {
    let dir = state_dir(conf);
    match state::read(&dir, &conf.name, &env.container_id, &env.ifname) {
        state::Record::Found(att) => fw::remove(&att)?,
        other => {
            if let state::Record::Corrupt(why) = &other {
                tracing::warn!(%why, "attachment record is unreadable; deleting what can be found without it");
            }
            let ips = conf
                .prev_result
                .as_ref()
                .map(container_ips)
                .unwrap_or_default();
            let keep = live_elements(&dir, &conf.name, |c, i| {
                c != env.container_id || i != env.ifname
            })?;
            let me = owner(conf, &env.container_id, &env.ifname);
            fw::sweep(&fw::Sweep {
                maps: &PORTMAP_MAPS,
                owner: &|tag| tag == me,
                ips: &ips,
                host_veths: &[],
                keep: &keep,
            })?;
        }
    }
    state::remove(&dir, &conf.name, &env.container_id, &env.ifname)
}

pub fn check(conf: &NetConf, env: &Env) -> Result<()> {
    if let Some(att) = state::load(&state_dir(conf), &conf.name, &env.container_id, &env.ifname)? {
        fw::check(&att)?;
    }
    Ok(())
}

/// Removes the elements of every attachment not in `valid`: recorded ones
/// exactly, the rest by their owner tag.
pub fn gc(conf: &NetConf, valid: &[(String, String)]) -> Result<()> {
    let dir = state_dir(conf);
    let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
    let entries = state::scan(&dir, &conf.name)?;
    let mut stale_ips = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| !is_valid(&e.container_id, &e.ifname))
    {
        if let state::Record::Found(att) = &entry.record {
            fw::remove(att)?;
            stale_ips.extend(att.ips.iter().copied());
        }
    }
    let keep = live_elements(&dir, &conf.name, is_valid)?;
    let valid_tags: Vec<String> = valid
        .iter()
        .map(|(cid, ifname)| owner(conf, cid, ifname))
        .collect();
    let prefix = firewall::owner_prefix(&conf.plugin_type, &conf.name);
    fw::sweep(&fw::Sweep {
        maps: &PORTMAP_MAPS,
        owner: &|tag| tag.starts_with(&prefix) && !valid_tags.iter().any(|v| v == tag),
        ips: &stale_ips,
        host_veths: &[],
        keep: &keep,
    })?;
    for entry in entries
        .iter()
        .filter(|e| !is_valid(&e.container_id, &e.ifname))
    {
        state::remove(&dir, &conf.name, &entry.container_id, &entry.ifname)?;
    }
    Ok(())
}

//! Applies the firewall plan of one attachment to the kernel: structural
//! chains once per namespace and network (through `nft -f`), then the
//! attachment's map elements in one netlink transaction.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use podwire_kernel::conntrack;
use podwire_kernel::nft::{self, Element, ElementData, Family, Transaction};

use crate::error::{Error, Result};
use crate::firewall::{self, FAMILY, MapEntry, TABLE};
use crate::state::Attachment;

fn nft_error(what: &str, err: podwire_kernel::Error) -> Error {
    Error::internal(format!("nftables: {what}"), err)
}

/// Adds `entries`, each tagged with `owner`, in one transaction.
fn adding(entries: Vec<MapEntry>, owner: &str) -> Transaction {
    let owner: Arc<str> = owner.into();
    let mut tx = Transaction::new();
    for MapEntry { set, mut element } in entries {
        element.owner = Some(owner.clone());
        tx.add(&set, [element]);
    }
    tx
}

/// Removes `entries` in one transaction; missing ones are fine (DEL is
/// idempotent).
fn destroying(entries: Vec<MapEntry>) -> Transaction {
    let mut tx = Transaction::new();
    for MapEntry { set, element } in entries {
        tx.destroy(&set, [element]);
    }
    tx
}

/// Makes sure the table and this network's chains exist, then adds the
/// attachment's elements, each with `owner` (see
/// [`firewall::owner_tag`]) as its owner tag.
pub fn install(att: &Attachment, subnets: &[IpNet], owner: &str) -> Result<()> {
    install_spoof_check(att, owner)?;
    let elements =
        firewall::container_elements(&att.netid, &att.ips, att.ip_masq, &att.port_mappings)?;
    if elements.is_empty() {
        return Ok(());
    }
    let chain = firewall::masq_chain(&att.netid);
    if !nft::chain_exists(Family::Inet, TABLE, &chain)
        .map_err(|e| nft_error("looking up chains", e))?
    {
        let script = format!(
            "{}{}",
            firewall::base_script(),
            firewall::network_script(&att.netid, subnets)
        );
        nft::apply_script(&script)
            .map_err(|e| nft_error(&format!("creating table {FAMILY} {TABLE}"), e))?;
    }
    nft::commit(Family::Inet, TABLE, &adding(elements, owner)).map_err(|e| match e.errno() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => Error::internal(
            "a published host port is already taken by another container",
            format!(
                "port mappings {:?}: choose another hostPort",
                att.port_mappings
            ),
        ),
        _ => nft_error("adding elements", e),
    })?;
    Ok(())
}

/// Removes the attachment's elements (missing ones are fine) and flushes
/// UDP conntrack entries of its published ports.
pub fn remove(att: &Attachment) -> Result<()> {
    if let Some(elements) = spoof_elements(att)
        && nft::table_exists(Family::Bridge, TABLE)
            .map_err(|e| nft_error("looking up the bridge table", e))?
    {
        nft::commit(Family::Bridge, TABLE, &destroying(elements))
            .map_err(|e| nft_error("deleting spoof-check elements", e))?;
    }
    let elements =
        firewall::container_elements(&att.netid, &att.ips, att.ip_masq, &att.port_mappings)?;
    if elements.is_empty() {
        return Ok(());
    }
    if !nft::table_exists(Family::Inet, TABLE).map_err(|e| nft_error("looking up the table", e))? {
        return Ok(());
    }
    let elements = owned_elements(elements)?;
    nft::commit(Family::Inet, TABLE, &destroying(elements))
        .map_err(|e| nft_error("deleting elements", e))?;
    for m in att
        .port_mappings
        .iter()
        .filter(|m| m.protocol.eq_ignore_ascii_case("udp"))
    {
        for ip in &att.ips {
            if let Err(e) = conntrack::flush_udp_port(m.host_port, Some(*ip)) {
                tracing::warn!(error = %e, port = m.host_port, "flushing UDP conntrack entries failed");
            }
        }
    }
    Ok(())
}

/// Keeps the elements that are really this attachment's. A published port's
/// key (protocol . port) can belong to another container, e.g. when this ADD
/// was refused because the port was taken: only an element whose value
/// points at this container's address is deleted. Other keys hold this
/// container's own address and are deleted as they are.
fn owned_elements(entries: Vec<MapEntry>) -> Result<Vec<MapEntry>> {
    let mut kernel: std::collections::BTreeMap<String, Vec<Element>> = Default::default();
    let mut out = Vec::new();
    for entry in entries {
        if !matches!(entry.element.data, ElementData::Value(_)) {
            out.push(entry);
            continue;
        }
        if !kernel.contains_key(&entry.set) {
            let list = nft::list_elements(Family::Inet, TABLE, &entry.set)
                .map_err(|e| nft_error("listing elements", e))?;
            kernel.insert(entry.set.clone(), list);
        }
        if kernel
            .get(&entry.set)
            .is_some_and(|list| list.iter().any(|held| held.same_entry(&entry.element)))
        {
            out.push(entry);
        }
    }
    Ok(out)
}

fn spoof_elements(att: &Attachment) -> Option<Vec<MapEntry>> {
    let mac = podwire_kernel::link::parse_mac(att.spoof_mac.as_deref()?)?;
    Some(firewall::spoof_elements(att.host_veth.as_deref()?, mac))
}

fn install_spoof_check(att: &Attachment, owner: &str) -> Result<()> {
    let Some(elements) = spoof_elements(att) else {
        return Ok(());
    };
    if !nft::chain_exists(Family::Bridge, TABLE, "prerouting")
        .map_err(|e| nft_error("looking up chains", e))?
    {
        nft::apply_script(&firewall::spoof_script()).map_err(|e| {
            nft_error(
                &format!("creating table {} {TABLE}", firewall::SPOOF_FAMILY),
                e,
            )
        })?;
    }
    nft::commit(Family::Bridge, TABLE, &adding(elements, owner))
        .map_err(|e| nft_error("adding spoof-check elements", e))?;
    Ok(())
}

/// What to remove when no readable record says exactly what an attachment
/// added: elements are recognised by what they carry themselves.
pub struct Sweep<'a> {
    /// The maps of the inet table to look at (see
    /// [`firewall::CONTAINER_MAPS`]): a plugin only touches the maps it
    /// fills.
    pub maps: &'a [&'a str],
    /// Elements whose owner tag this accepts.
    pub owner: &'a dyn Fn(&str) -> bool,
    /// Elements without an owner tag (added before tags existed) that
    /// name one of these container addresses.
    pub ips: &'a [IpAddr],
    /// Spoof-check elements of these host ports.
    pub host_veths: &'a [String],
    /// Elements that live attachments own: kept whatever the rest says, so
    /// an address or port handed out again is never taken from its new
    /// owner.
    pub keep: &'a [MapEntry],
}

/// Removes every element [`Sweep`] describes, in one transaction per map,
/// and flushes UDP conntrack entries of removed hostports. Returns how many
/// elements were removed.
pub fn sweep(what: &Sweep) -> Result<usize> {
    let mut removed = 0;
    if nft::table_exists(Family::Inet, TABLE).map_err(|e| nft_error("looking up the table", e))? {
        for &set in what.maps {
            let keep: Vec<&Element> = what
                .keep
                .iter()
                .filter(|e| e.set == set)
                .map(|e| &e.element)
                .collect();
            let doomed: Vec<Element> = nft::list_elements(Family::Inet, TABLE, set)
                .map_err(|e| nft_error("listing elements", e))?
                .into_iter()
                .filter(|e| match &e.owner {
                    Some(owner) => (what.owner)(owner),
                    None => firewall::element_ip(set, e).is_some_and(|ip| what.ips.contains(&ip)),
                })
                .filter(|e| !keep.iter().any(|k| k.same_entry(e)))
                .collect();
            let udp: Vec<(u16, IpAddr)> = doomed
                .iter()
                .filter_map(|e| match firewall::hostport_of(set, &e.key) {
                    Some((17, port)) => Some((port, firewall::element_ip(set, e)?)),
                    _ => None,
                })
                .collect();
            removed += doomed.len();
            let mut tx = Transaction::new();
            tx.destroy(set, doomed);
            nft::commit(Family::Inet, TABLE, &tx).map_err(|e| nft_error("deleting elements", e))?;
            for (port, ip) in udp {
                if let Err(err) = conntrack::flush_udp_port(port, Some(ip)) {
                    tracing::warn!(error = %err, port, "flushing UDP conntrack entries failed");
                }
            }
        }
    }
    if nft::table_exists(Family::Bridge, TABLE)
        .map_err(|e| nft_error("looking up the bridge table", e))?
    {
        for set in firewall::SPOOF_SETS {
            let doomed: Vec<Element> = nft::list_elements(Family::Bridge, TABLE, set)
                .map_err(|e| nft_error("listing spoof-check elements", e))?
                .into_iter()
                .filter(|e| {
                    e.owner.as_deref().is_some_and(what.owner)
                        || firewall::spoof_ifname(set, &e.key)
                            .is_some_and(|name| what.host_veths.contains(&name))
                })
                .collect();
            removed += doomed.len();
            let mut tx = Transaction::new();
            tx.destroy(set, doomed);
            nft::commit(Family::Bridge, TABLE, &tx)
                .map_err(|e| nft_error("deleting spoof-check elements", e))?;
        }
    }
    Ok(removed)
}

/// CHECK: the attachment's elements are programmed.
pub fn check(att: &Attachment) -> Result<()> {
    let elements =
        firewall::container_elements(&att.netid, &att.ips, att.ip_masq, &att.port_mappings)?;
    for element in &elements {
        if nft::count_elements(Family::Inet, TABLE, &element.set)
            .map_err(|e| nft_error("listing elements", e))?
            == 0
        {
            return Err(Error::internal(
                format!(
                    "nftables map {} of table {FAMILY} {TABLE} is missing this container's entries",
                    element.set
                ),
                "run DEL and ADD again",
            ));
        }
    }
    Ok(())
}

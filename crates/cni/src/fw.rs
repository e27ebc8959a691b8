//! Applies the firewall plan of one attachment to the kernel: structural
//! chains once per namespace and network (through `nft -f`), then the
//! attachment's map elements in one netlink transaction.

use ipnet::IpNet;
use podwire_kernel::conntrack;
use podwire_kernel::nft::{self, ElementBatch, Family};

use crate::error::{Error, Result};
use crate::firewall::{self, FAMILY, TABLE};
use crate::state::Attachment;

fn nft_error(what: &str, err: podwire_kernel::Error) -> Error {
    Error::internal(format!("nftables: {what}"), err)
}

/// Makes sure the table and this network's chains exist, then adds the
/// attachment's elements.
pub fn install(att: &Attachment, subnets: &[IpNet]) -> Result<()> {
    install_spoof_check(att)?;
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
    let batch = ElementBatch {
        add: elements,
        delete: Vec::new(),
    };
    nft::apply_elements(Family::Inet, TABLE, &batch).map_err(|e| match e.errno() {
        Some(libc::EBUSY) | Some(libc::EEXIST) => Error::internal(
            "a published host port is already taken by another container",
            format!(
                "port mappings {:?}: choose another hostPort",
                att.port_mappings
            ),
        ),
        _ => nft_error("adding elements", e),
    })
}

/// Removes the attachment's elements (missing ones are fine) and flushes
/// UDP conntrack entries of its published ports.
pub fn remove(att: &Attachment) -> Result<()> {
    if let Some(elements) = spoof_elements(att)
        && nft::table_exists(Family::Bridge, TABLE)
            .map_err(|e| nft_error("looking up the bridge table", e))?
    {
        let batch = ElementBatch {
            add: Vec::new(),
            delete: elements,
        };
        nft::apply_elements(Family::Bridge, TABLE, &batch)
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
    let batch = ElementBatch {
        add: Vec::new(),
        delete: elements,
    };
    nft::apply_elements(Family::Inet, TABLE, &batch)
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
fn owned_elements(elements: Vec<nft::Element>) -> Result<Vec<nft::Element>> {
    let mut kernel: std::collections::BTreeMap<String, Vec<nft::RawElement>> = Default::default();
    let mut out = Vec::new();
    for element in elements {
        if !matches!(element.data, nft::ElementData::Value(_)) {
            out.push(element);
            continue;
        }
        if !kernel.contains_key(&element.set) {
            let list = nft::list_elements(Family::Inet, TABLE, &element.set)
                .map_err(|e| nft_error("listing elements", e))?;
            kernel.insert(element.set.clone(), list);
        }
        if kernel
            .get(&element.set)
            .is_some_and(|list| list.iter().any(|raw| raw.is(&element)))
        {
            out.push(element);
        }
    }
    Ok(out)
}

fn spoof_elements(att: &Attachment) -> Option<Vec<nft::Element>> {
    let mac = podwire_kernel::link::parse_mac(att.spoof_mac.as_deref()?)?;
    Some(firewall::spoof_elements(att.host_veth.as_deref()?, mac))
}

fn install_spoof_check(att: &Attachment) -> Result<()> {
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
    let batch = ElementBatch {
        add: elements,
        delete: Vec::new(),
    };
    nft::apply_elements(Family::Bridge, TABLE, &batch)
        .map_err(|e| nft_error("adding spoof-check elements", e))
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

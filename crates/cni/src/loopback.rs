//! `podwire-loopback`: brings `lo` up in the container (the reference
//! loopback plugin's job). The `podwire` plugin also does this on every ADD.

use podwire_kernel::{Netlink, Netns};

use crate::env::Env;
use crate::error::{Error, Result};
use crate::netconf::NetConf;
use crate::result::{CniResult, Interface, IpConfig};

fn open(env: &Env) -> Result<Netns> {
    crate::env::open_netns(&env.netns)
}

pub fn add(conf: &NetConf, env: &Env) -> Result<CniResult> {
    let netns = open(env)?;
    let mut nl = Netlink::in_netns(&netns)?;
    nl.loopback_up()?;
    if let Some(prev) = &conf.prev_result {
        return Ok(prev.clone());
    }
    let ips = nl
        .link_by_name("lo")?
        .map(|lo| nl.addresses(lo.index))
        .transpose()?
        .unwrap_or_default();
    Ok(CniResult {
        interfaces: vec![Interface {
            name: "lo".into(),
            mac: "00:00:00:00:00:00".into(),
            mtu: None,
            sandbox: Some(env.netns.clone()),
        }],
        ips: ips
            .into_iter()
            .map(|address| IpConfig {
                address,
                gateway: None,
                interface: Some(0),
            })
            .collect(),
        ..Default::default()
    })
}

pub fn check(env: &Env) -> Result<()> {
    let netns = open(env)?;
    let mut nl = Netlink::in_netns(&netns)?;
    match nl.link_by_name("lo")? {
        Some(lo) if lo.up => Ok(()),
        _ => Err(Error::internal(
            "lo is down in the container",
            "run ADD again",
        )),
    }
}

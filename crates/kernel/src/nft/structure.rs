//! Structural changes: tables, chains and rules. They are rare and go
//! through `nft -f -` in one transaction so their text stays readable;
//! only chain deletion (the proxy and the policy drop chains no verdict
//! names any more, often hundreds at once) is a netlink batch.

use std::io::Write;
use std::process::{Command, Stdio};

use super::query::{NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE};
use super::{Attrs, Family, run_batch};
use crate::own::OwnPort;
use crate::{Error, Result};

const NFT_MSG_DELCHAIN: u16 = 5;

/// Loads an nftables script with `nft -f -` in the calling process's
/// namespace: one transaction, all or nothing.
pub fn apply_script(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Nft(format!(
                "cannot run nft ({e}): install the nftables package"
            ))
        })?;
    // nft's netlink socket is bound to its pid: its changes are ours.
    let _own = OwnPort::register(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Nft(format!("writing to nft: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("waiting for nft: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Nft(format!(
            "nft -f rejected the ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Deletes a table if it exists, in one `nft` transaction.
pub fn delete_table(family: &str, table: &str) -> Result<()> {
    apply_script(&format!(
        "table {family} {table} {{}}\ndelete table {family} {table}\n"
    ))
}

/// Deletes chains of `table` (which must be empty of references: chains
/// still named by a verdict map element fail with EBUSY) in one
/// transaction.
pub fn delete_chains(family: Family, table: &str, chains: &[String]) -> Result<()> {
    let messages: Vec<(u16, u16, Vec<u8>)> = chains
        .iter()
        .map(|chain| {
            let mut body = Attrs::new();
            body.put_str(NFTA_CHAIN_TABLE, table);
            body.put_str(NFTA_CHAIN_NAME, chain);
            (NFT_MSG_DELCHAIN, 0, body.buf)
        })
        .collect();
    run_batch(family, &messages, "delete nftables chains").map(|_| ())
}

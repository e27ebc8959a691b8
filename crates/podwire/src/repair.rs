//! Repairs in `podwire agent`: a watcher thread listens to the kernel's
//! nftables and route-netlink notifications in the node's namespace
//! ([`podwire_kernel::notify`]), keeps those caused by someone else
//! ([`podwire_kernel::own`]: not one of the agent's sockets, not an `nft`
//! it ran) that touch what the agent owns, and hands them to the agent's
//! loop, which repairs the owning part at once:
//!
//! | change by someone else | part | repair |
//! |---|---|---|
//! | `inet podwire-proxy` (table, chain, rule, set, element) | proxy | full resync (flush + fill) |
//! | `inet podwire-node` | masquerade | routing plan re-applied, nft table reloaded |
//! | `inet podwire-policy` | policy | full sync |
//! | a route with protocol 112 deleted; `podwire.1` deleted or down | routing | plan re-applied |
//! | notifications lost (socket overflow) | every part | as above, at most every 30 s |
//!
//! A burst is collected until 50 ms pass without a notification (500 ms
//! at most), so it becomes one repair. Each repair is one log line (what
//! changed, who changed it) and one count in
//! `podwire_agent_repairs_total{part,what}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use podwire_kernel::notify::{ChangeListener, Commit, NftObject, Notification};
use podwire_policy::PolicyAgent;
use podwire_proxy::ServiceProxy;
use podwire_routing::{ROUTE_PROTOCOL, RoutingAgent, VXLAN_DEVICE};

/// A burst ends when nothing arrives for this long.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// ... or after this long in any case.
const MAX_BURST: Duration = Duration::from_millis(500);
/// Lost notifications repair everything, but not more often than this
/// (our own full resyncs are large bursts).
const OVERFLOW_REPAIR_EVERY: Duration = Duration::from_secs(30);
/// NFPROTO_INET: podwire's tables are all in the inet family.
const INET: u8 = 1;

/// The part of the agent that owns what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Proxy,
    Routing,
    Masquerade,
    Policy,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Proxy => "proxy",
            Part::Routing => "routing",
            Part::Masquerade => "masquerade",
            Part::Policy => "policy",
        }
    }

    const ALL: [Part; 4] = [Part::Proxy, Part::Routing, Part::Masquerade, Part::Policy];
}

fn part_of_table(family: u8, table: &str) -> Option<Part> {
    if family != INET {
        return None;
    }
    match table {
        podwire_proxy::layout::TABLE => Some(Part::Proxy),
        podwire_routing::masq::TABLE_NAME => Some(Part::Masquerade),
        podwire_policy::layout::TABLE => Some(Part::Policy),
        _ => None,
    }
}

/// A part to repair and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub part: Part,
    /// The most significant kind of object touched: table, chain, set,
    /// rule, element, route, link ("unknown" when notifications were lost).
    pub what: &'static str,
    /// What changed ("3 rules deleted (chain services) in inet podwire-proxy").
    pub detail: String,
    /// Who changed it ("nft (pid 1234)", "netlink port 5678").
    pub by: String,
    /// When the watcher had the whole burst.
    pub noticed: Instant,
}

/// Changes of one kind to one part: (rank, what, verb) -> (count, names).
type Tally = BTreeMap<(u8, &'static str, &'static str), (usize, BTreeSet<String>)>;

fn rank(object: NftObject) -> u8 {
    match object {
        NftObject::Table => 0,
        NftObject::Chain => 1,
        NftObject::Set => 2,
        NftObject::Rule => 3,
        NftObject::Element => 4,
        NftObject::Other => 5,
    }
}

fn who(portid: u32, commits: &HashMap<u32, &Commit>) -> String {
    match commits.get(&portid) {
        Some(Commit {
            pid: Some(pid),
            comm: Some(comm),
            ..
        }) => format!("{comm} (pid {pid})"),
        Some(Commit { pid: Some(pid), .. }) => format!("pid {pid}"),
        _ => format!("netlink port {portid}"),
    }
}

fn plural(what: &str, n: usize) -> String {
    if n == 1 {
        what.to_string()
    } else {
        format!("{what}s")
    }
}

/// What a batch of notifications asks to repair: one entry per part that
/// someone other than `own` touched. `link_up_now` says whether a device
/// is present and up at this moment (the only look at the kernel).
pub fn classify(
    batch: &[Notification],
    own: &dyn Fn(u32) -> bool,
    link_up_now: &dyn Fn(&str) -> bool,
) -> Vec<Foreign> {
    let noticed = Instant::now();
    let commits: HashMap<u32, &Commit> = batch
        .iter()
        .filter_map(|n| match n {
            Notification::Commit(c) => Some((c.portid, c)),
            _ => None,
        })
        .collect();
    let mut tallies: BTreeMap<Part, (Tally, BTreeSet<String>, String)> = BTreeMap::new();
    let mut overflow = false;
    let mut vxlan_last: Option<(bool, bool, u32)> = None;
    let mut note = |part: Part,
                    key: (u8, &'static str, &'static str),
                    name: String,
                    by: String,
                    table: Option<&str>| {
        let entry = tallies.entry(part).or_default();
        if let Some(t) = table {
            entry.2 = format!("inet {t}");
        }
        let slot = entry.0.entry(key).or_default();
        slot.0 += 1;
        if !name.is_empty() && slot.1.len() < 5 {
            slot.1.insert(name);
        }
        entry.1.insert(by);
    };
    for n in batch {
        match n {
            Notification::Nft(c) if !own(c.portid) => {
                let Some(part) = part_of_table(c.family, &c.table) else {
                    continue;
                };
                // The packet path keeps affinity entries itself.
                if part == Part::Proxy
                    && c.object == NftObject::Element
                    && c.name.as_deref().is_some_and(|s| s.starts_with("aff"))
                {
                    continue;
                }
                let verb = if c.removed { "deleted" } else { "added" };
                let name = match (c.object, &c.name) {
                    (NftObject::Chain | NftObject::Rule, Some(n)) => format!("chain {n}"),
                    (NftObject::Set | NftObject::Element, Some(n)) => format!("set {n}"),
                    _ => String::new(),
                };
                let by = who(c.portid, &commits);
                let key = (rank(c.object), c.object.as_str(), verb);
                note(part, key, name, by, Some(&c.table));
            }
            Notification::Route {
                removed: true,
                dst,
                protocol,
                portid,
                ..
            } if *protocol == ROUTE_PROTOCOL && !own(*portid) => {
                let by = who(*portid, &commits);
                note(
                    Part::Routing,
                    (10, "route", "deleted"),
                    dst.to_string(),
                    by,
                    None,
                );
            }
            Notification::Link {
                removed,
                name,
                up,
                portid,
                ..
            } if name == VXLAN_DEVICE && !own(*portid) => {
                // Link notifications mostly carry port 0 whoever asked
                // (the kernel sends them from the device's state change),
                // so only the burst's last word counts, checked against
                // the device as it is now.
                vxlan_last = Some((*removed, *up, *portid));
            }
            Notification::Overflow => overflow = true,
            _ => {}
        }
    }
    if let Some((removed, up, portid)) = vxlan_last
        && (removed || !up)
        && !link_up_now(VXLAN_DEVICE)
    {
        let verb = if removed { "deleted" } else { "set down" };
        let by = if portid == 0 {
            "unknown (the kernel does not say for links)".to_string()
        } else {
            who(portid, &commits)
        };
        note(
            Part::Routing,
            (9, "link", verb),
            VXLAN_DEVICE.into(),
            by,
            None,
        );
    }
    let mut out: Vec<Foreign> = tallies
        .into_iter()
        .map(|(part, (tally, by, table))| {
            let what = tally.keys().next().map(|k| k.1).unwrap_or("unknown");
            let mut detail = tally
                .iter()
                .map(|((_, what, verb), (count, names))| {
                    let mut s = format!("{count} {} {verb}", plural(what, *count));
                    if !names.is_empty() {
                        let list: Vec<&str> = names.iter().map(String::as_str).collect();
                        let _ = write!(s, " ({})", list.join(", "));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ");
            if !table.is_empty() {
                let _ = write!(detail, " in {table}");
            }
            Foreign {
                part,
                what,
                detail,
                by: by.into_iter().collect::<Vec<_>>().join(", "),
                noticed,
            }
        })
        .collect();
    if overflow {
        for part in Part::ALL {
            if !out.iter().any(|f| f.part == part) {
                out.push(Foreign {
                    part,
                    what: "unknown",
                    detail: "change notifications were lost".into(),
                    by: "unknown".into(),
                    noticed,
                });
            }
        }
    }
    out
}

/// The watcher thread and what it found so far.
pub struct Watcher {
    inbox: Arc<Mutex<Vec<Foreign>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Listens in the calling thread's namespace (the node's).
    pub fn start() -> Result<Watcher> {
        let listener =
            ChangeListener::new(false).context("listening to nftables and route notifications")?;
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("repair-watch".into())
            .spawn({
                let (inbox, stop) = (inbox.clone(), stop.clone());
                move || watch(listener, &inbox, &stop)
            })
            .context("starting the repair watcher")?;
        Ok(Watcher {
            inbox,
            stop,
            thread: Some(thread),
        })
    }

    /// What was found since the last call.
    pub fn take(&self) -> Vec<Foreign> {
        match self.inbox.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(mut l: ChangeListener, inbox: &Mutex<Vec<Foreign>>, stop: &AtomicBool) {
    let mut last_error: Option<String> = None;
    let mut last_overflow: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        match l.wait(Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "change notifications unreadable; periodic checks only");
                }
                last_error = Some(text);
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        }
        let started = Instant::now();
        let mut batch = Vec::new();
        loop {
            match l.read() {
                Ok(more) => batch.extend(more),
                Err(e) => {
                    tracing::debug!(error = %e, "reading change notifications");
                    break;
                }
            }
            if started.elapsed() >= MAX_BURST || !matches!(l.wait(DEBOUNCE), Ok(true)) {
                break;
            }
        }
        if batch.iter().any(|n| matches!(n, Notification::Overflow)) {
            let now = Instant::now();
            if last_overflow.is_some_and(|t| now.duration_since(t) < OVERFLOW_REPAIR_EVERY) {
                batch.retain(|n| !matches!(n, Notification::Overflow));
            } else {
                last_overflow = Some(now);
            }
        }
        let found = classify(&batch, &podwire_kernel::own::is_own, &|name| {
            podwire_kernel::Netlink::new()
                .and_then(|mut nl| nl.link_by_name(name))
                .is_ok_and(|l| l.is_some_and(|l| l.up))
        });
        if !found.is_empty() {
            match inbox.lock() {
                Ok(mut list) => list.extend(found),
                Err(poisoned) => poisoned.into_inner().extend(found),
            }
        }
    }
}

/// Counts of repairs by (part, what), rendered for `/metrics`.
#[derive(Default)]
pub struct Repairs {
    counts: BTreeMap<(Part, &'static str), u64>,
}

impl Repairs {
    /// Repairs each part named in `found` once, logs one line per repair
    /// and counts it.
    pub fn run(
        &mut self,
        found: Vec<Foreign>,
        routing: &mut Option<RoutingAgent>,
        proxy: &mut Option<ServiceProxy>,
        policy: &mut Option<PolicyAgent>,
    ) {
        let mut by_part: BTreeMap<Part, Vec<Foreign>> = BTreeMap::new();
        for f in found {
            by_part.entry(f.part).or_default().push(f);
        }
        for (part, list) in by_part {
            let result: Option<Result<Duration, String>> = match part {
                Part::Proxy => proxy
                    .as_mut()
                    .and_then(ServiceProxy::repair)
                    .map(|r| r.map_err(|e| e.to_string())),
                Part::Routing | Part::Masquerade => routing
                    .as_mut()
                    // The device went away because the plan has none
                    // (host-gw): nothing to repair.
                    .filter(|r| {
                        part != Part::Routing
                            || list.iter().any(|f| f.what != "link")
                            || r.owns_link(VXLAN_DEVICE)
                    })
                    .and_then(|r| r.repair(part == Part::Masquerade))
                    .map(|r| r.map_err(|e| e.to_string())),
                Part::Policy => policy
                    .as_mut()
                    .and_then(PolicyAgent::repair)
                    .map(|r| r.map_err(|e| e.to_string())),
            };
            // The part does not run here, or has programmed nothing yet.
            let Some(result) = result else {
                continue;
            };
            let whats: BTreeSet<&'static str> = list.iter().map(|f| f.what).collect();
            for what in &whats {
                *self.counts.entry((part, what)).or_default() += 1;
            }
            let what = whats.into_iter().collect::<Vec<_>>().join(",");
            let change = list
                .iter()
                .map(|f| f.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let by = list
                .iter()
                .map(|f| f.by.as_str())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ");
            // From the end of the burst to the start of the repair.
            let queued = list
                .iter()
                .map(|f| f.noticed)
                .min()
                .map(|t| {
                    t.elapsed()
                        .saturating_sub(result.as_ref().copied().unwrap_or_default())
                })
                .unwrap_or_default();
            match result {
                Ok(took) => tracing::warn!(
                    part = part.as_str(),
                    what = %what,
                    change = %change,
                    by = %by,
                    queued_ms = queued.as_secs_f64() * 1000.0,
                    ms = took.as_secs_f64() * 1000.0,
                    "repaired a change made by someone else"
                ),
                Err(e) => tracing::warn!(
                    part = part.as_str(),
                    what = %what,
                    change = %change,
                    by = %by,
                    error = %e,
                    "repair after a change by someone else failed; retrying"
                ),
            }
        }
    }

    /// `podwire_agent_repairs_total{part,what}` in the text format.
    pub fn metrics(&self) -> String {
        let mut s = String::from(
            "# HELP podwire_agent_repairs_total Repairs after someone else changed podwire's \
             tables, routes or devices.\n# TYPE podwire_agent_repairs_total counter\n",
        );
        for ((part, what), n) in &self.counts {
            let _ = writeln!(
                s,
                "podwire_agent_repairs_total{{part=\"{}\",what=\"{what}\"}} {n}",
                part.as_str()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podwire_kernel::notify::NftChange;

    fn nft(object: NftObject, removed: bool, table: &str, name: &str, portid: u32) -> Notification {
        Notification::Nft(NftChange {
            object,
            removed,
            family: INET,
            table: table.into(),
            name: (!name.is_empty()).then(|| name.into()),
            portid,
        })
    }

    fn commit(portid: u32, pid: u32, comm: &str) -> Notification {
        Notification::Commit(Commit {
            portid,
            pid: Some(pid),
            comm: Some(comm.into()),
        })
    }

    #[test]
    fn a_foreign_flush_of_the_proxy_table_is_one_repair_naming_who() {
        let batch = vec![
            nft(NftObject::Rule, true, "podwire-proxy", "services", 900),
            nft(NftObject::Rule, true, "podwire-proxy", "services", 900),
            nft(NftObject::Rule, true, "podwire-proxy", "nodeports", 900),
            commit(900, 4321, "nft"),
        ];
        let found = classify(&batch, &|_| false, &|_| false);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!((f.part, f.what), (Part::Proxy, "rule"));
        assert_eq!(
            f.detail,
            "3 rules deleted (chain nodeports, chain services) in inet podwire-proxy"
        );
        assert_eq!(f.by, "nft (pid 4321)");
    }

    #[test]
    fn our_own_changes_and_other_tables_are_left_alone() {
        let batch = vec![
            nft(NftObject::Table, true, "podwire-proxy", "", 7),
            nft(NftObject::Element, false, "podwire-proxy", "aff4", 8),
            nft(NftObject::Chain, true, "somebody-else", "x", 8),
            Notification::Route {
                removed: true,
                dst: "10.244.2.0/24".parse().unwrap(),
                protocol: 4,
                table: 254,
                oif: None,
                portid: 8,
            },
        ];
        assert!(classify(&batch, &|p| p == 7, &|_| true).is_empty());
    }

    #[test]
    fn the_most_significant_change_names_the_repair() {
        let batch = vec![
            nft(NftObject::Rule, true, "podwire-node", "postrouting", 5),
            nft(NftObject::Table, true, "podwire-node", "", 5),
            nft(NftObject::Set, true, "podwire-policy", "ingress4", 5),
            Notification::Route {
                removed: true,
                dst: "10.244.2.0/24".parse().unwrap(),
                protocol: ROUTE_PROTOCOL,
                table: 254,
                oif: Some(3),
                portid: 6,
            },
            Notification::Link {
                removed: true,
                name: VXLAN_DEVICE.into(),
                index: 3,
                up: false,
                portid: 6,
            },
        ];
        let found = classify(&batch, &|_| false, &|_| false);
        let parts: Vec<(Part, &str)> = found.iter().map(|f| (f.part, f.what)).collect();
        assert_eq!(
            parts,
            [
                (Part::Routing, "link"),
                (Part::Masquerade, "table"),
                (Part::Policy, "set")
            ]
        );
        assert_eq!(
            found[0].detail,
            "1 link deleted (podwire.1), 1 route deleted (10.244.2.0/24)"
        );
        assert_eq!(found[0].by, "netlink port 6");
    }

    fn link(removed: bool, up: bool) -> Notification {
        Notification::Link {
            removed,
            name: VXLAN_DEVICE.into(),
            index: 3,
            up,
            portid: 0,
        }
    }

    #[test]
    fn the_vxlan_device_counts_by_its_last_state_and_as_it_is_now() {
        // Created down, then set up (the agent's own sequence): nothing.
        let batch = [link(false, false), link(false, true)];
        assert!(classify(&batch, &|_| false, &|_| true).is_empty());
        // Set down by someone, still down now: a repair.
        let found = classify(&[link(false, false)], &|_| false, &|_| false);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].part, found[0].what), (Part::Routing, "link"));
        assert_eq!(found[0].detail, "1 link set down (podwire.1)");
        // Down in the notification but up again by now: nothing.
        assert!(classify(&[link(false, false)], &|_| false, &|_| true).is_empty());
        // Another device: nothing.
        let other = Notification::Link {
            removed: true,
            name: "eth9".into(),
            index: 9,
            up: false,
            portid: 0,
        };
        assert!(classify(&[other], &|_| false, &|_| false).is_empty());
    }

    #[test]
    fn lost_notifications_repair_every_part() {
        let found = classify(&[Notification::Overflow], &|_| false, &|_| true);
        assert_eq!(found.len(), 4);
        assert!(found.iter().all(|f| f.what == "unknown"));
    }

    #[test]
    fn repairs_are_counted_by_part_and_what() {
        let mut r = Repairs::default();
        r.counts.insert((Part::Proxy, "rule"), 2);
        assert!(
            r.metrics()
                .contains("podwire_agent_repairs_total{part=\"proxy\",what=\"rule\"} 2\n")
        );
    }
}

//! The CNI part of the abuse: ADD/DEL churn at 16-way concurrency, SIGKILL
//! at random points of ADD followed by GC and DEL, malformed netconfs, bad
//! bridge names, CNI_NETNS that is no network namespace, and DEL with a
//! corrupt or missing attachment record. Each scenario has its own host
//! namespace and network, and reads back what is left when it is done.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::Row;
use super::cni_cases::{BAD_BRIDGES, malformed};
use super::cni_host::{Container, Exit, Host, command_in, ns_snapshot};
use crate::ns::{TempDir, check_interrupted};
use crate::plugin::{CniCommand, ips};
use crate::stats::Stats;

const PART: &str = "cni";

/// How hard the CNI part pushes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub podwire: PathBuf,
    /// ADD/DEL cycles in the churn.
    pub cycles: usize,
    /// Threads running cycles at once.
    pub concurrency: usize,
    /// ADDs killed with SIGKILL.
    pub kills: usize,
    /// Seeds where in an ADD each kill lands.
    pub seed: u64,
    /// Prints each malformed input's outcome to stderr.
    pub verbose: bool,
}

/// Runs every CNI scenario; one row each (two for the kills).
pub fn run(s: &Settings) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    eprintln!(
        "cni: {} ADD/DEL cycles at {}-way concurrency...",
        s.cycles, s.concurrency
    );
    rows.push(churn(s).context("ADD/DEL churn")?);
    check_interrupted()?;
    eprintln!("cni: {} SIGKILLs during ADD, then GC and DEL...", s.kills);
    rows.extend(kills(s).context("kill -9 during ADD")?);
    check_interrupted()?;
    eprintln!("cni: malformed netconfs, bridge names, CNI_NETNS kinds...");
    rows.extend(bad_input(s).context("malformed input")?);
    check_interrupted()?;
    eprintln!("cni: DEL with corrupt and missing attachment records...");
    rows.extend(records(s).context("corrupt records")?);
    Ok(rows)
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// ADD then DEL, `cycles` times over `concurrency` threads, every container
/// in a namespace of its own; each thread publishes its own host port.
fn churn(s: &Settings) -> Result<Row> {
    let host = Host::new(&s.podwire, "churn", "pwab1", "10.80.0.0/16")?;
    let failures = Mutex::new(Vec::<String>::new());
    let adds = Mutex::new(Vec::<Duration>::new());
    let dels = Mutex::new(Vec::<Duration>::new());
    let elements_seen = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..s.concurrency {
            let (host, failures, adds, dels, elements_seen) =
                (&host, &failures, &adds, &dels, &elements_seen);
            let cycles = s.cycles / s.concurrency + usize::from(t < s.cycles % s.concurrency);
            scope.spawn(move || {
                let conf = host.conf(20000 + u16::try_from(t).unwrap_or(0));
                let fail = |what: String| {
                    if let Ok(mut f) = failures.lock() {
                        f.push(what);
                    }
                };
                for k in 0..cycles {
                    if check_interrupted().is_err() {
                        return;
                    }
                    let c = match Container::create() {
                        Ok(c) => c,
                        Err(err) => return fail(format!("container namespace: {err:#}")),
                    };
                    match host.add(&c, &conf) {
                        Ok(add) if add.ok() && add.json().is_some_and(|v| !ips(&v).is_empty()) => {
                            if let Ok(mut a) = adds.lock() {
                                a.push(add.elapsed);
                            }
                        }
                        Ok(add) => fail(format!("ADD {}: {}", c.id, add.describe())),
                        Err(err) => fail(format!("ADD {}: {err:#}", c.id)),
                    }
                    if t == 0 && k == 0 {
                        // Proof the firewall part ran: this container's elements.
                        elements_seen.store(host.nft_elements().unwrap_or(0), Ordering::SeqCst);
                    }
                    match host.del(&c, &conf) {
                        Ok(del) if del.ok() => {
                            if let Ok(mut d) = dels.lock() {
                                d.push(del.elapsed);
                            }
                        }
                        Ok(del) => fail(format!("DEL {}: {}", c.id, del.describe())),
                        Err(err) => fail(format!("DEL {}: {err:#}", c.id)),
                    }
                }
            });
        }
    });
    check_interrupted()?;
    let took = started.elapsed();
    let left = host.settled_leftovers()?;
    let failures = failures.into_inner().unwrap_or_default();
    let adds = adds.into_inner().unwrap_or_default();
    let dels = dels.into_inner().unwrap_or_default();
    let median = |v: &[Duration]| Stats::of(v).map_or(0.0, |s| s.median_ms);
    let elements = elements_seen.load(Ordering::SeqCst);
    let mut measured = format!(
        "{}/{} ADD ok, {}/{} DEL ok in {:.1} s (median ADD {:.1} ms, DEL {:.1} ms; {} nft elements \
         for one container mid-run); left: {left}",
        adds.len(),
        s.cycles,
        dels.len(),
        s.cycles,
        took.as_secs_f64(),
        median(&adds),
        median(&dels),
        elements,
    );
    if let Some(first) = failures.first() {
        measured.push_str(&format!(
            "; {} failed, first: {first}",
            plural(failures.len(), "call")
        ));
    }
    Ok(Row::new(
        PART,
        format!(
            "{} ADD/DEL, {}-way, same netconf, own netns each",
            s.cycles, s.concurrency
        ),
        measured,
        "every call ok; nothing leaked",
        failures.is_empty()
            && adds.len() == s.cycles
            && dels.len() == s.cycles
            && elements > 0
            && left.is_empty(),
    ))
}

/// splitmix64: repeatable kill points without another crate.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Starts `kills` ADDs and SIGKILLs each at a random point within 1.2x a
/// normal ADD's time (measured first), then runs GC with no valid
/// attachment and a DEL per container, reading what is left after each.
fn kills(s: &Settings) -> Result<Vec<Row>> {
    let host = Host::new(&s.podwire, "kill", "pwab2", "10.81.0.0/16")?;
    let conf = host.conf(18070);
    // A few whole ADDs: the bridge and table exist, and the window is known.
    let mut times = Vec::new();
    for _ in 0..5 {
        let c = Container::create()?;
        let add = host.add(&c, &conf)?;
        ensure!(add.ok(), "warm-up ADD: {}", add.describe());
        times.push(add.elapsed);
        let del = host.del(&c, &conf)?;
        ensure!(del.ok(), "warm-up DEL: {}", del.describe());
    }
    let add_ms = Stats::of(&times).map_or(5.0, |s| s.median_ms);
    let window_us = (add_ms * 1.2 * 1000.0) as u64;
    let mut rng = Prng(s.seed);
    let stdin = conf.to_string();
    let mut containers = Vec::with_capacity(s.kills);
    let (mut killed, mut finished, mut other) = (0usize, 0usize, Vec::new());
    for _ in 0..s.kills {
        check_interrupted()?;
        let c = Container::create()?;
        let delay = Duration::from_micros(rng.next() % window_us.max(1));
        let mut child = host
            .exec(CniCommand::Add, &c.id, c.ns.path())
            .command()
            .spawn()
            .context("spawn ADD")?;
        let spawned = Instant::now();
        if let Some(mut pipe) = child.stdin.take() {
            // A plugin killed before it read its stdin breaks the pipe.
            let _ = pipe.write_all(stdin.as_bytes());
        }
        std::thread::sleep(delay.saturating_sub(spawned.elapsed()));
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid")?);
        let _ = kill(pid, Signal::SIGKILL);
        let output = child.wait_with_output().context("wait for a killed ADD")?;
        let exit = Exit::from_output(output, spawned.elapsed());
        match (exit.signal, exit.code) {
            (Some(9), _) => killed += 1,
            (_, Some(0)) => finished += 1,
            _ => other.push(exit.describe()),
        }
        containers.push(c);
    }
    check_interrupted()?;
    let after_kills = host.leftovers()?;
    let gc = host.gc()?;
    let after_gc = host.settled_leftovers()?;
    let paired = containers
        .iter()
        .filter(|c| has_eth0(c.ns.raw_fd()))
        .count();
    let mut del_failures = Vec::new();
    for c in &containers {
        let del = host.del(c, &conf)?;
        if !del.ok() {
            del_failures.push(format!("{}: {}", c.id, del.describe()));
        }
    }
    let after_del = host.settled_leftovers()?;
    drop(containers);

    let mut measured = format!(
        "{} SIGKILLed, {} finished first (kills at 0-{:.1} ms, ADD median {add_ms:.1} ms, seed {}); \
         left by the kills: {after_kills}; GC {}; after GC: {after_gc}, {} container(s) still with \
         eth0; DEL {}/{} exit 0; after DEL: {after_del}",
        killed,
        finished,
        window_us as f64 / 1000.0,
        s.seed,
        if gc.ok() {
            "exit 0".to_string()
        } else {
            gc.describe()
        },
        paired,
        s.kills - del_failures.len(),
        s.kills,
    );
    if let Some(first) = other.first() {
        measured.push_str(&format!(
            "; {} ended otherwise, first: {first}",
            other.len()
        ));
    }
    if let Some(first) = del_failures.first() {
        measured.push_str(&format!("; first failed DEL: {first}"));
    }
    let kill_row = Row::new(
        PART,
        format!("{} kill -9 at random points of ADD, then GC + DEL", s.kills),
        measured,
        "after GC and DEL nothing leaked",
        gc.ok()
            && after_gc.is_empty()
            && paired == 0
            && del_failures.is_empty()
            && after_del.is_empty()
            && killed > 0
            && other.is_empty(),
    );
    let tmp_row = Row::new(
        PART,
        "0-byte <id>:<ifname>.tmp left by a kill",
        format!(
            "{} after the kills, {} after GC, {} after DEL",
            after_kills.tmp_records, after_gc.tmp_records, after_del.tmp_records
        ),
        "removed by GC",
        after_gc.tmp_records == 0 && after_del.tmp_records == 0,
    );
    Ok(vec![kill_row, tmp_row])
}

fn has_eth0(fd: std::os::fd::RawFd) -> bool {
    command_in(fd, "ip")
        .args(["link", "show", "dev", "eth0"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `text` cut to 160 characters: a report line, not the whole input.
fn short(text: &str) -> String {
    if text.chars().count() <= 160 {
        return text.to_string();
    }
    let cut: String = text.chars().take(160).collect();
    format!("{cut}...")
}

/// The first line only one of two snapshots has, marked - or +.
fn first_difference(before: &str, after: &str) -> Option<String> {
    let b: std::collections::BTreeSet<&str> = before.lines().collect();
    let a: std::collections::BTreeSet<&str> = after.lines().collect();
    b.difference(&a)
        .next()
        .map(|l| format!("- {l}"))
        .or_else(|| a.difference(&b).next().map(|l| format!("+ {l}")))
}

/// How the plugin answered a run of bad inputs.
#[derive(Default)]
struct Tally {
    /// CNI error code -> count.
    codes: BTreeMap<u64, usize>,
    /// Ended by a signal, an exit other than 0/1, or without a proper error.
    broken: Vec<String>,
    /// Exited 0.
    accepted: Vec<String>,
    /// Changed the host or a container namespace.
    changed: Vec<String>,
}

impl Tally {
    /// Files one exit; `proper` says which codes are right for this input.
    fn file(&mut self, label: &str, exit: &Exit, proper: &[u64]) {
        match (exit.signal, exit.code) {
            (Some(sig), _) => self.broken.push(format!("{label}: signal {sig}")),
            (_, Some(0)) => self.accepted.push(label.to_string()),
            (_, Some(1)) => match (exit.cni_code(), exit.json()) {
                (Some(code), Some(v)) if v["msg"].as_str().is_some_and(|m| !m.is_empty()) => {
                    *self.codes.entry(code).or_default() += 1;
                    if !proper.contains(&code) {
                        self.broken
                            .push(format!("{label}: code {code}: {}", v["msg"]));
                    }
                }
                _ => self
                    .broken
                    .push(format!("{label}: no CNI error: {}", exit.describe())),
            },
            _ => self.broken.push(format!("{label}: {}", exit.describe())),
        }
    }

    fn codes(&self) -> String {
        let parts: Vec<String> = self
            .codes
            .iter()
            .map(|(code, n)| format!("code {code} x{n}"))
            .collect();
        if parts.is_empty() {
            "no error codes".into()
        } else {
            parts.join(", ")
        }
    }

    fn problems(&self) -> String {
        let mut out = String::new();
        for (what, list) in [
            ("broken", &self.broken),
            ("accepted", &self.accepted),
            ("changed the host", &self.changed),
        ] {
            if let Some(first) = list.first() {
                out.push_str(&format!("; {} {what}, first: {}", list.len(), short(first)));
            }
        }
        out
    }

    fn clean(&self, accepted_ok: bool) -> bool {
        self.broken.is_empty()
            && self.changed.is_empty()
            && (accepted_ok || self.accepted.is_empty())
    }
}

/// Malformed netconfs (ADD and DEL), bad bridge names and CNI_NETNS paths
/// that are no network namespace, against a network that already holds one
/// container: nothing may crash, each gets the spec's code, nothing changes.
fn bad_input(s: &Settings) -> Result<Vec<Row>> {
    let host = Host::new(&s.podwire, "bad", "pwab3", "10.82.0.0/24")?;
    let existing = Container::create()?;
    let good = host.conf(18080);
    let add = host.add(&existing, &good)?;
    ensure!(
        add.ok(),
        "ADD of the container already there: {}",
        add.describe()
    );
    let fresh = Container::create()?;
    let before = host.snapshot()?;
    let states = |host: &Host| -> Result<(String, String, String)> {
        Ok((
            host.snapshot()?,
            ns_snapshot(&existing.ns)?,
            ns_snapshot(&fresh.ns)?,
        ))
    };
    let start = std::cell::RefCell::new(states(&host)?);
    ensure!(before == start.borrow().0, "the host changed on its own");
    // An accepted ADD (already counted as such) and its DEL may leave the
    // network's chains behind: the next case starts from what is there then.
    let check = |tally: &mut Tally, label: &str, accepted: bool| -> Result<()> {
        let now = states(&host)?;
        if accepted {
            *start.borrow_mut() = now;
            return Ok(());
        }
        let diff = {
            let start = start.borrow();
            (now != *start).then(|| {
                [(&start.0, &now.0), (&start.1, &now.1), (&start.2, &now.2)]
                    .into_iter()
                    .find_map(|(a, b)| first_difference(a, b))
                    .unwrap_or_default()
            })
        };
        if let Some(diff) = diff {
            tally.changed.push(format!("{label} ({diff})"));
            // Counted once: later cases are judged from here.
            *start.borrow_mut() = now;
        }
        Ok(())
    };

    // Decode (6), config (7), version (1) or unsupported field (2).
    let proper = [1, 2, 6, 7];
    let cases = malformed(&host.conf(18081));
    let (mut adds, mut dels) = (Tally::default(), Tally::default());
    for (label, stdin) in &cases {
        check_interrupted()?;
        let exit = host.call(CniCommand::Add, &fresh.id, fresh.ns.path(), stdin)?;
        if s.verbose {
            eprintln!("ADD {label}: {}", short(&exit.describe()));
        }
        adds.file(label, &exit, &proper);
        let accepted = exit.ok();
        if accepted {
            // Undo it, so the next case starts from the same host.
            let _ = host.call(CniCommand::Del, &fresh.id, fresh.ns.path(), stdin);
        }
        check(&mut adds, label, accepted)?;
        let exit = host.call(CniCommand::Del, &fresh.id, fresh.ns.path(), stdin)?;
        if s.verbose {
            eprintln!("DEL {label}: {}", short(&exit.describe()));
        }
        dels.file(label, &exit, &proper);
        check(&mut dels, label, false)?;
    }
    let mut rows = vec![Row::new(
        PART,
        format!("{} malformed netconfs, each as ADD and DEL", cases.len()),
        format!(
            "ADD: {} refused ({}); DEL: {} refused ({}), {} accepted (nothing to undo){}{}",
            adds.codes.values().sum::<usize>(),
            adds.codes(),
            dels.codes.values().sum::<usize>(),
            dels.codes(),
            dels.accepted.len(),
            adds.problems(),
            dels.problems(),
        ),
        "no signal; CNI error 1/2/6/7; host unchanged",
        adds.clean(false) && dels.clean(true),
    )];

    let mut bridges = Tally::default();
    for name in BAD_BRIDGES {
        let mut conf = host.conf(18082);
        conf["bridge"] = json!(name);
        let stdin = conf.to_string();
        for command in [CniCommand::Add, CniCommand::Del] {
            let label = format!("{} bridge {name:?}", command.as_str());
            let exit = host.call(command, &fresh.id, fresh.ns.path(), stdin.as_bytes())?;
            bridges.file(&label, &exit, &[7]);
            check(&mut bridges, &label, false)?;
        }
    }
    rows.push(Row::new(
        PART,
        format!(
            "{} invalid bridge names (16+ chars, ../x, br x, a/b), ADD and DEL",
            BAD_BRIDGES.len()
        ),
        format!("{}{}", bridges.codes(), bridges.problems()),
        "code 7, host unchanged",
        bridges.clean(false) && bridges.codes.get(&7) == Some(&(2 * BAD_BRIDGES.len())),
    ));

    let scratch = TempDir::create("abuse-netns")?;
    let file = scratch.path().join("not-a-netns");
    std::fs::write(&file, b"").context("write a regular file")?;
    let dir = scratch.path().to_path_buf();
    let uts = PathBuf::from("/proc/self/ns/uts");
    let mut netns = Tally::default();
    let mut del_ok = 0;
    for (kind, path) in [("file", &file), ("directory", &dir), ("uts ns", &uts)] {
        let conf = host.conf(18083).to_string();
        let exit = host.call(CniCommand::Add, &fresh.id, path, conf.as_bytes())?;
        netns.file(&format!("ADD {kind}"), &exit, &[4]);
        check(&mut netns, &format!("ADD {kind}"), false)?;
        let exit = host.call(CniCommand::Del, &fresh.id, path, conf.as_bytes())?;
        if exit.ok() {
            del_ok += 1;
        } else {
            netns
                .broken
                .push(format!("DEL {kind}: {}", exit.describe()));
        }
        check(&mut netns, &format!("DEL {kind}"), false)?;
    }
    rows.push(Row::new(
        PART,
        "CNI_NETNS a regular file / a directory / /proc/self/ns/uts",
        format!(
            "ADD: {}; DEL: {del_ok}/3 exit 0{}",
            netns.codes(),
            netns.problems()
        ),
        "ADD code 4 (invalid CNI_NETNS), DEL exit 0, host unchanged",
        netns.clean(false) && netns.codes.get(&4) == Some(&3) && del_ok == 3,
    ));

    let del = host.del(&existing, &good)?;
    ensure!(
        del.ok(),
        "DEL of the container already there: {}",
        del.describe()
    );
    Ok(rows)
}

/// Whether `host_port` can be published again: a new container takes it
/// (ADD ok) and gives it back (DEL ok).
fn port_free(host: &Host, host_port: u16) -> Result<bool> {
    let c = Container::create()?;
    let conf = host.conf(host_port);
    let add = host.add(&c, &conf)?;
    let del = host.del(&c, &conf)?;
    Ok(add.ok() && del.ok())
}

/// One ADD whose record is then damaged (or removed, with prevResult on the
/// DEL): DEL twice, then what is left and whether the port is free.
fn damaged_del(host: &Host, damage: &str, host_port: u16) -> Result<(bool, String)> {
    let c = Container::create()?;
    let conf = host.conf(host_port);
    let add = host.add(&c, &conf)?;
    ensure!(add.ok(), "ADD: {}", add.describe());
    let elements = host.nft_elements()?;
    let record = host.record(&c.id);
    let good = std::fs::read(&record).with_context(|| format!("read {}", record.display()))?;
    let mut del_conf = conf.clone();
    match damage {
        "empty" => std::fs::write(&record, b"")?,
        "truncated" => std::fs::write(&record, &good[..good.len() / 2])?,
        "garbage" => std::fs::write(&record, b"{\"containerId\": [1, 2")?,
        _ => {
            std::fs::remove_file(&record)?;
            del_conf["prevResult"] = add.json().unwrap_or(Value::Null);
        }
    }
    let first = host.del(&c, &del_conf)?;
    let second = host.del(&c, &del_conf)?;
    let left = host.settled_leftovers()?;
    let eth0 = has_eth0(c.ns.raw_fd());
    let free = port_free(host, host_port)?;
    let after = host.settled_leftovers()?;
    let ok = first.ok() && second.ok() && left.is_empty() && !eth0 && free && after.is_empty();
    let exits = |e: &Exit| {
        if e.ok() {
            "exit 0".to_string()
        } else {
            e.describe()
        }
    };
    Ok((
        ok,
        format!(
            "{damage}: {elements} elements before; DEL {}, again {}; left: {}{}; port {}",
            exits(&first),
            exits(&second),
            if left.is_empty() {
                "nothing".to_string()
            } else {
                left.to_string()
            },
            if eth0 { ", pod kept eth0" } else { "" },
            if free { "free" } else { "NOT free" },
        ),
    ))
}

/// DEL with an empty, truncated or garbage record, and with the record
/// gone but prevResult given.
fn records(s: &Settings) -> Result<Vec<Row>> {
    let host = Host::new(&s.podwire, "rec", "pwab4", "10.83.0.0/24")?;
    let mut corrupt = Vec::new();
    let mut all_ok = true;
    for (i, damage) in ["empty", "truncated", "garbage"].into_iter().enumerate() {
        let (ok, text) = damaged_del(&host, damage, 18090 + u16::try_from(i)?)?;
        all_ok &= ok;
        corrupt.push(text);
    }
    let (missing_ok, missing) = damaged_del(&host, "record removed, prevResult given", 18095)?;
    Ok(vec![
        Row::new(
            PART,
            "DEL with a corrupt record (empty, truncated, garbage)",
            corrupt.join("; "),
            "exit 0, everything removed, port free",
            all_ok,
        ),
        Row::new(
            PART,
            "DEL with the record missing, prevResult given",
            missing,
            "elements removed, host port free again",
            missing_ok,
        ),
    ])
}

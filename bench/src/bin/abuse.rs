//! The abuse bench (`bench/abuse`): repeats issue 14's abuse of the CNI
//! plugin, DNS over TCP and the ingress's request parsing, and prints one
//! row per check with the figure measured and whether it meets the issue's
//! target (or JSON with `--json`). Exits 1 when any check fails.
//!
//! Safety: CNI plugins run only in host namespaces the bench creates, DNS
//! and ingress only on loopback; namespaces, temp dirs and processes are
//! removed on exit, failure or Ctrl-C.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podwire_bench::abuse::{self, Report, cni, dns, ingress};
use podwire_bench::ns;

const USAGE: &str = "\
usage: abuse [--only LIST] [--cycles N] [--concurrency N] [--kills N] [--seed N]
             [--dns-clients N] [--dns-hold S] [--json] [--verbose] [--podwire PATH]

Repeats issue 14's abuse against podwire and prints what it measured (run as root).
  --only LIST        comma-separated subset of: cni,dns,ingress (default all)
  --cycles N         CNI ADD/DEL cycles (default 1000)
  --concurrency N    CNI cycles running at once (default 16)
  --kills N          CNI ADDs killed with SIGKILL (default 50)
  --seed N           where in each ADD the kills land (default 14)
  --dns-clients N    busy DNS-over-TCP clients (default 1030)
  --dns-hold S       seconds the DNS flood lasts once every client is in (default 16)
  --json             print the rows as JSON
  --verbose          print each malformed netconf's outcome to stderr
  --podwire PATH     the podwire binary (default: next to this binary)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Cni,
    Dns,
    Ingress,
}

impl Part {
    const ALL: [Part; 3] = [Part::Cni, Part::Dns, Part::Ingress];

    fn key(self) -> &'static str {
        match self {
            Part::Cni => "cni",
            Part::Dns => "dns",
            Part::Ingress => "ingress",
        }
    }
}

struct Args {
    only: Vec<Part>,
    cni: cni::Settings,
    dns: dns::Settings,
    json: bool,
}

fn parse_args() -> Result<Args> {
    let podwire = std::env::current_exe()
        .context("locate this binary")?
        .with_file_name("podwire");
    let mut args = Args {
        only: Part::ALL.to_vec(),
        cni: cni::Settings {
            podwire: podwire.clone(),
            cycles: 1000,
            concurrency: 16,
            kills: 50,
            seed: 14,
            verbose: false,
        },
        dns: dns::Settings {
            podwire,
            clients: 1030,
            interval: Duration::from_secs(4),
            hold: Duration::from_secs(16),
        },
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .with_context(|| format!("{name} needs a value\n{USAGE}"))
        };
        let number = |name: &str, text: String| -> Result<usize> {
            text.parse()
                .with_context(|| format!("{name} takes a number, not {text:?}"))
        };
        match arg.as_str() {
            "--only" => {
                args.only = value("--only")?
                    .split(',')
                    .map(|key| {
                        Part::ALL
                            .into_iter()
                            .find(|p| p.key() == key.trim())
                            .with_context(|| format!("unknown part {key:?}\n{USAGE}"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--cycles" => args.cni.cycles = number("--cycles", value("--cycles")?)?,
            "--concurrency" => {
                args.cni.concurrency = number("--concurrency", value("--concurrency")?)?;
            }
            "--kills" => args.cni.kills = number("--kills", value("--kills")?)?,
            "--seed" => args.cni.seed = number("--seed", value("--seed")?)? as u64,
            "--dns-clients" => args.dns.clients = number("--dns-clients", value("--dns-clients")?)?,
            "--dns-hold" => {
                args.dns.hold =
                    Duration::from_secs(number("--dns-hold", value("--dns-hold")?)? as u64);
            }
            "--json" => args.json = true,
            "--verbose" => args.cni.verbose = true,
            "--podwire" => {
                let path = PathBuf::from(value("--podwire")?);
                args.cni.podwire = path.clone();
                args.dns.podwire = path;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        args.cni.cycles >= 1 && args.cni.concurrency >= 1 && args.cni.kills >= 1,
        "--cycles, --concurrency and --kills must be at least 1"
    );
    ensure!(args.dns.clients >= 1, "--dns-clients must be at least 1");
    // The CNI_PATH symlinks must not depend on the working directory.
    let podwire = args.cni.podwire.canonicalize().with_context(|| {
        format!(
            "podwire binary {} not found (cargo build --release -p podwire)",
            args.cni.podwire.display()
        )
    })?;
    args.cni.podwire = podwire.clone();
    args.dns.podwire = podwire;
    Ok(args)
}

fn run(args: &Args) -> Result<Report> {
    if args.only.contains(&Part::Cni) {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the CNI part needs root (network namespaces); --only dns,ingress runs without"
        );
    }
    let mut report = Report::default();
    for &part in &args.only {
        ns::check_interrupted()?;
        let started = Instant::now();
        let rows = match part {
            Part::Cni => cni::run(&args.cni)?,
            Part::Dns => {
                eprintln!(
                    "dns: {} TCP clients, one query every {} s each...",
                    args.dns.clients,
                    args.dns.interval.as_secs()
                );
                dns::run(&args.dns)?
            }
            Part::Ingress => {
                eprintln!("ingress: malformed request framing...");
                ingress::run(&args.dns.podwire)?
            }
        };
        report.rows.extend(rows);
        report
            .durations
            .push((part.key(), started.elapsed().as_secs_f64()));
    }
    Ok(report)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(err) => {
            eprintln!("abuse bench: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(err) = ns::install_interrupt_handler() {
        eprintln!("abuse bench: {err:#}");
        return std::process::ExitCode::FAILURE;
    }
    for gone in ns::sweep(false) {
        eprintln!("removed leftover {gone}");
    }
    let result = run(&args);
    // The guards have run by now; this only catches what they could not.
    for gone in ns::sweep(true) {
        eprintln!("removed leftover {gone}");
    }
    let failed = result.as_ref().is_ok_and(|r| r.passed() < r.rows.len());
    let code = podwire_bench::finish("abuse", result, args.json, abuse::print_table);
    if failed && code == std::process::ExitCode::SUCCESS {
        return std::process::ExitCode::FAILURE;
    }
    code
}

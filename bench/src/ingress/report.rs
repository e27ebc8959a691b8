//! The benchmark's report: rows of min / median / max per proxy with the
//! podwire/nginx ratio, the targets, and the printed table.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Serialize;

use super::idle::Idle;
use super::wrk::Wrk;
use crate::stats::Summary;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub podwire: Option<Summary>,
    pub nginx: Option<Summary>,
    /// podwire median / nginx median.
    pub ratio: Option<f64>,
    pub decimals: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub ratio: f64,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub proxy: String,
    pub tls: bool,
    pub run: usize,
    /// wrk connections: the loaded runs' count, or 1 for the unloaded ones.
    pub connections: usize,
    /// A connection per request (`Connection: close`).
    pub close: bool,
    pub wrk: Wrk,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub wrk: String,
    pub nginx: String,
    pub proxy_cpu: String,
    pub load_cpu: String,
    pub workers: usize,
    pub runs: usize,
    pub seconds: u64,
    pub connections: usize,
    pub url: String,
    pub tls: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    pub ceiling: Option<Summary>,
    pub targets: Vec<Target>,
    pub idle: Vec<Idle>,
    pub all_runs: Vec<Run>,
    pub ceiling_runs: Vec<Wrk>,
    pub notes: Vec<String>,
}

pub fn row(name: &str, decimals: usize, pw: &[f64], ngx: &[f64]) -> Row {
    let podwire = Summary::of(pw);
    let nginx = Summary::of(ngx);
    let ratio = match (podwire, nginx) {
        (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
        _ => None,
    };
    Row {
        name: name.to_string(),
        podwire,
        nginx,
        ratio,
        decimals,
    }
}

/// The podwire/nginx ratios the benchmark aims for: requests/s at least
/// this much of nginx's...
pub const RPS_TARGET: f64 = 1.1;
/// ...and p99 latency at most this much of nginx's.
pub const P99_TARGET: f64 = 1.0;

/// What the runs were, for the table.
pub struct Plan {
    pub protocols: Vec<bool>,
    /// wrk -c of the loaded runs (keep-alive and close).
    pub connections: usize,
    pub unloaded: bool,
    pub close: bool,
    /// Idle connections held per proxy.
    pub idle: usize,
}

/// Reads one figure from a wrk run.
type Pick = fn(&Wrk) -> f64;
type Metric = (&'static str, usize, Pick);

/// What each loaded pass reports, per proxy.
const LOADED: [Metric; 9] = [
    ("requests/s", 0, |w| w.rps),
    ("latency p50 ms", 3, |w| w.p50_ms),
    ("latency p90 ms", 3, |w| w.p90_ms),
    ("latency p99 ms", 3, |w| w.p99_ms),
    ("proxy CPU % (its processes)", 0, |w| w.proxy_cpu_pct),
    ("wrk+backend CPU busy %", 0, |w| w.load_cpu_busy_pct),
    ("requests per proxy CPU-s", 0, |w| {
        w.rps / (w.proxy_cpu_pct / 100.0).max(1e-6)
    }),
    ("TCP segments per request", 2, |w| w.segments_per_request),
    ("proxy ctx switches per request", 3, |w| {
        w.proxy_switches_per_request
    }),
];

/// The rows and targets of a run: per protocol the keep-alive pass, the
/// unloaded (-c1) latencies and the connection-per-request pass, then the
/// idle-connection memory and each proxy's CPU with no traffic
/// (`idle_cpu`: CPU seconds and wall seconds, podwire then nginx).
pub fn tables(
    plan: &Plan,
    runs: &[Run],
    idle: &[Idle],
    idle_cpu: [(f64, f64); 2],
) -> (Vec<Row>, Vec<Target>) {
    let pick = |who: &str, tls: bool, connections: usize, close: bool, f: fn(&Wrk) -> f64| {
        runs.iter()
            .filter(|r| {
                r.proxy == who && r.tls == tls && r.connections == connections && r.close == close
            })
            .map(|r| f(&r.wrk))
            .collect::<Vec<f64>>()
    };
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for &tls in &plan.protocols {
        let p = if tls { "TLS" } else { "HTTP" };
        let mut passes = vec![("", false)];
        if plan.close {
            passes.push(("close: ", true));
        }
        for (label, close) in passes {
            for (name, decimals, f) in LOADED {
                let r = row(
                    &format!("{p} {label}{name}"),
                    decimals,
                    &pick("podwire", tls, plan.connections, close, f),
                    &pick("nginx", tls, plan.connections, close, f),
                );
                if let Some(ratio) = r.ratio {
                    if name == "requests/s" {
                        targets.push(Target {
                            name: format!("{p} {label}requests/s >= {RPS_TARGET}x nginx"),
                            ratio,
                            met: ratio >= RPS_TARGET,
                        });
                    } else if name == "latency p99 ms" {
                        targets.push(Target {
                            name: format!("{p} {label}p99 <= {P99_TARGET}x nginx"),
                            ratio,
                            met: ratio <= P99_TARGET,
                        });
                    }
                }
                rows.push(r);
            }
            if !close && plan.unloaded {
                let unloaded: [(&str, Pick); 2] = [
                    ("unloaded (-c1) p50 ms", |w| w.p50_ms),
                    ("unloaded (-c1) p99 ms", |w| w.p99_ms),
                ];
                for (name, f) in unloaded {
                    rows.push(row(
                        &format!("{p} {name}"),
                        3,
                        &pick("podwire", tls, 1, false, f),
                        &pick("nginx", tls, 1, false, f),
                    ));
                }
            }
        }
    }
    for &tls in &plan.protocols {
        let p = if tls { "TLS" } else { "HTTP" };
        if idle.iter().all(|r| r.tls != tls) {
            continue;
        }
        let get = |who: &str, f: &dyn Fn(&Idle) -> f64| -> Vec<f64> {
            idle.iter()
                .filter(|r| r.proxy == who && r.tls == tls)
                .map(f)
                .collect()
        };
        type IdleMetric = (String, usize, fn(&Idle) -> f64);
        let n = plan.idle;
        let metrics: [IdleMetric; 4] = [
            (format!("{p} RSS before idle, MB"), 1, |r| {
                r.rss_before_kb as f64 / 1024.0
            }),
            (format!("{p} RSS with {n} idle, MB"), 1, |r| {
                r.rss_after_kb as f64 / 1024.0
            }),
            (format!("{p} PSS with {n} idle, MB"), 1, |r| {
                r.pss_after_kb as f64 / 1024.0
            }),
            (format!("{p} RSS per idle conn, KB"), 1, |r| {
                (r.rss_after_kb as f64 - r.rss_before_kb as f64) / r.connections.max(1) as f64
            }),
        ];
        for (name, decimals, f) in metrics {
            rows.push(row(&name, decimals, &get("podwire", &f), &get("nginx", &f)));
        }
    }
    let idle_pct = |i: usize| -> Vec<f64> {
        let (cpu, wall) = idle_cpu[i];
        if wall > 0.0 {
            vec![cpu / wall * 100.0]
        } else {
            Vec::new()
        }
    };
    rows.push(row(
        "proxy CPU % with no traffic",
        2,
        &idle_pct(0),
        &idle_pct(1),
    ));
    (rows, targets)
}

pub fn version_line(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_string()
        })
        .unwrap_or_default()
}

pub fn print_table(r: &Report) {
    println!(
        "\ningress on 127.0.0.1: {} -t1 -c{} -d{}s --latency, keep-alive, GET {} (route 6 of 3 hosts x 3 paths); {} runs, interleaved",
        r.wrk, r.connections, r.seconds, r.url, r.runs
    );
    println!(
        "proxies on CPU {} ({} worker{} each), wrk + backend nginx on CPU {}; podwire with PODWIRE_LOG=warn (no access log), {} with access_log off",
        r.proxy_cpu,
        r.workers,
        if r.workers == 1 { "" } else { "s" },
        r.load_cpu,
        r.nginx
    );
    for (who, params) in &r.tls {
        println!("TLS {who}: {params} (as a rustls client negotiates it)");
    }
    println!(
        "\n{:<36} {:>30}   {:>30}   {:>7}",
        "", "podwire: min / median / max", "nginx: min / median / max", "ratio"
    );
    let cell = |s: Option<Summary>, d: usize| match s {
        Some(s) => format!("{:>9.d$} {:>10.d$} {:>9.d$}", s.min, s.median, s.max, d = d),
        None => format!("{:>30}", "-"),
    };
    for row in &r.rows {
        println!(
            "{:<36} {}   {}   {:>7}",
            row.name,
            cell(row.podwire, row.decimals),
            cell(row.nginx, row.decimals),
            row.ratio.map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
    if let Some(c) = r.ceiling {
        println!(
            "{:<36} {}   (wrk straight to the backend: the most CPU {} allows)",
            "backend alone requests/s",
            cell(Some(c), 0),
            r.load_cpu
        );
    }
    println!();
    for t in &r.targets {
        println!(
            "target {:<24} ratio {:.2}: {}",
            t.name,
            t.ratio,
            if t.met { "met" } else { "NOT met" }
        );
    }
    for note in &r.notes {
        println!("note: {note}");
    }
}

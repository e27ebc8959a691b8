//! The Kubernetes-mode benchmark's results: what one +1 Service round
//! measured, the rows (min / median / p99 / max, ratio, target) built from
//! the rounds, and the printed table. Included by `src/bin/kube.rs` with
//! `#[path]`; pure (no namespaces, no API).

use std::time::Duration;

use podwire_bench::stats::Summary;
use serde::Serialize;

use crate::{ADD_RATIO_TARGET, ADD_TARGET_MS, DNS_TARGET_MS, PROBE_LIMIT};

// ---------------------------------------------------------------- report

/// min / median / p99 (nearest rank) / max of a series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Dist {
    pub runs: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Option<Dist> {
        let s = Summary::of(values)?;
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = ((0.99 * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(Dist {
            runs: s.runs,
            min: s.min,
            median: s.median,
            p99: v[rank - 1],
            max: s.max,
        })
    }
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub podwire: Option<Dist>,
    pub kube_proxy: Option<Dist>,
    /// kube-proxy / podwire: the median of per-run ratios where runs are
    /// paired (same write), else the ratio of medians.
    pub ratio: Option<f64>,
    pub target: Option<String>,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(name: impl Into<String>, unit: &'static str) -> Row {
        Row {
            name: name.into(),
            unit,
            podwire: None,
            kube_proxy: None,
            ratio: None,
            target: None,
            met: None,
        }
    }

    pub fn podwire(mut self, v: &[f64]) -> Row {
        self.podwire = Dist::of(v);
        self
    }

    pub fn kube_proxy(mut self, v: &[f64]) -> Row {
        self.kube_proxy = Dist::of(v);
        if self.ratio.is_none()
            && let (Some(p), Some(k)) = (self.podwire, self.kube_proxy)
            && p.median > 0.0
        {
            self.ratio = Some(k.median / p.median);
        }
        self
    }

    pub fn paired_ratio(mut self, podwire: &[Option<f64>], peer: &[Option<f64>]) -> Row {
        let ratios: Vec<f64> = podwire
            .iter()
            .zip(peer)
            .filter_map(|(p, k)| match (p, k) {
                (Some(p), Some(k)) if *p > 0.0 => Some(k / p),
                _ => None,
            })
            .collect();
        self.ratio = Summary::of(&ratios).map(|s| s.median);
        self
    }

    pub fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some(text.into());
        self.met = Some(met);
        self
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub setup: Vec<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub legend: Vec<String>,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn some(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

pub fn k(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// What one +1 run measured, in ms.
#[derive(Default)]
pub struct Run {
    pub api: Option<f64>,
    pub podwire: Option<f64>,
    pub kube_proxy: Option<f64>,
    pub kube_proxy0: Option<f64>,
    pub dns: Option<f64>,
    pub ingress: Option<f64>,
    pub podwire_apply: Option<f64>,
    pub kube_proxy_sync: Option<f64>,
    /// The EndpointSlice written after its Service.
    pub ep: Option<Timed>,
}

/// What a write measured against the proxies, in ms from just before the
/// request: (API round trip, podwire, kube-proxy, kube-proxy min-sync 0,
/// extra probes..., podwire's apply ms=, kube-proxy's sync ms).
pub struct Timed {
    pub api: f64,
    pub podwire: Option<f64>,
    pub kube_proxy: Option<f64>,
    pub kube_proxy0: Option<f64>,
    pub extra: Vec<Option<f64>>,
    pub podwire_apply: Option<f64>,
    pub kube_proxy_sync: Option<f64>,
}

/// The rows of one scale's +1 runs.
pub fn scale_rows(scale: usize, runs: &[Run], min_sync_zero: bool, report: &mut Report) {
    let col = |f: &dyn Fn(&Run) -> Option<f64>| runs.iter().map(f).collect::<Vec<_>>();
    let ep = |f: fn(&Timed) -> Option<f64>| col(&|r: &Run| r.ep.as_ref().and_then(f));
    let series: [(&str, Vec<Option<f64>>); 6] = [
        ("podwire (Service write)", col(&|r| r.podwire)),
        ("kube-proxy (Service write)", col(&|r| r.kube_proxy)),
        ("podwire (slice write)", ep(|t| t.podwire)),
        ("kube-proxy (slice write)", ep(|t| t.kube_proxy)),
        ("dns", col(&|r| r.dns)),
        ("ingress", col(&|r| r.ingress)),
    ];
    let timeouts: Vec<String> = series
        .iter()
        .map(|(n, v)| (n, v.iter().filter(|x| x.is_none()).count()))
        .filter(|(_, c)| *c > 0)
        .map(|(n, c)| format!("{n}: {c}"))
        .collect();
    if !timeouts.is_empty() {
        report.notes.push(format!(
            "at {}: probes that never succeeded within {PROBE_LIMIT:?}: {}",
            k(scale),
            timeouts.join(", ")
        ));
    }
    let add_row = |name: String, pw: &[Option<f64>], kp: &[Option<f64>]| {
        let mut row = Row::new(name, "ms")
            .podwire(&some(pw))
            .kube_proxy(&some(kp))
            .paired_ratio(pw, kp);
        if let (Some(p), Some(ratio)) = (row.podwire, row.ratio) {
            row = row.target(
                format!("<={ADD_TARGET_MS:.0} ms, >={ADD_RATIO_TARGET:.0}x"),
                p.median <= ADD_TARGET_MS && ratio >= ADD_RATIO_TARGET,
            );
        }
        row
    };
    let after = |api: &dyn Fn(&Run) -> Option<f64>, e2e: &dyn Fn(&Run) -> Option<f64>| {
        runs.iter()
            .filter_map(|r| Some(e2e(r)? - api(r)?))
            .collect::<Vec<_>>()
    };
    let (pw, kp) = (&series[0].1, &series[1].1);
    report.rows.push(add_row(
        format!("+1 Service at {}: Service write -> connect", k(scale)),
        pw,
        kp,
    ));
    report.rows.push(
        Row::new("  after the create call returned", "ms")
            .podwire(&after(&|r| r.api, &|r| r.podwire))
            .kube_proxy(&after(&|r| r.api, &|r| r.kube_proxy)),
    );
    report.rows.push(
        Row::new("  the proxy's own apply (log ms= / metrics)", "ms")
            .podwire(&some(&col(&|r| r.podwire_apply)))
            .kube_proxy(&some(&col(&|r| r.kube_proxy_sync))),
    );
    report
        .rows
        .push(Row::new("  API round trip of the create", "ms").podwire(&some(&col(&|r| r.api))));
    if min_sync_zero {
        report.rows.push(
            Row::new("  vs kube-proxy --iptables-min-sync-period=0", "ms")
                .podwire(&some(pw))
                .kube_proxy(&some(&col(&|r| r.kube_proxy0)))
                .paired_ratio(pw, &col(&|r| r.kube_proxy0)),
        );
    }
    let (pw, kp) = (&series[2].1, &series[3].1);
    report.rows.push(add_row(
        format!("+1 Service at {}: slice write -> connect", k(scale)),
        pw,
        kp,
    ));
    let ep_api = |r: &Run| r.ep.as_ref().map(|t| t.api);
    report.rows.push(
        Row::new("  after the create call returned", "ms")
            .podwire(&after(&ep_api, &|r| r.ep.as_ref()?.podwire))
            .kube_proxy(&after(&ep_api, &|r| r.ep.as_ref()?.kube_proxy)),
    );
    report.rows.push(
        Row::new("  the proxy's own apply (log ms= / metrics)", "ms")
            .podwire(&some(&ep(|t| t.podwire_apply)))
            .kube_proxy(&some(&ep(|t| t.kube_proxy_sync))),
    );
    report.rows.push(
        Row::new("  API round trip of the create", "ms").podwire(&some(&ep(|t| Some(t.api)))),
    );
    if min_sync_zero {
        let kp0 = ep(|t| t.kube_proxy0);
        report.rows.push(
            Row::new("  vs kube-proxy --iptables-min-sync-period=0", "ms")
                .podwire(&some(pw))
                .kube_proxy(&some(&kp0))
                .paired_ratio(pw, &kp0),
        );
    }
    let dns = some(&series[4].1);
    let dns_med = Summary::of(&dns).map_or(f64::INFINITY, |s| s.median);
    report.rows.push(
        Row::new(format!("DNS new Service at {}", k(scale)), "ms")
            .podwire(&dns)
            .target(format!("<={DNS_TARGET_MS:.0} ms"), dns_med <= DNS_TARGET_MS),
    );
    report.rows.push(
        Row::new(format!("ingress new route at {}", k(scale)), "ms").podwire(&some(&series[5].1)),
    );
}

pub fn print_table(r: &Report) {
    println!();
    for s in &r.setup {
        println!("{s}");
    }
    println!(
        "\n{:<48} {:>5} {:>38}   {:>38}   {:>7}  target",
        "",
        "",
        "podwire: min / median / p99 / max",
        "kube-proxy: min / median / p99 / max",
        "ratio"
    );
    let cell = |d: Option<Dist>| match d {
        Some(d) => {
            let p = if d.max >= 100.0 { 0 } else { 1 };
            let p = if d.max < 10.0 { 2 } else { p };
            format!(
                "{:>9.p$} {:>9.p$} {:>9.p$} {:>9.p$}",
                d.min, d.median, d.p99, d.max
            )
        }
        None => format!("{:>39}", "-"),
    };
    for row in &r.rows {
        let target = match (&row.target, row.met) {
            (Some(t), Some(m)) => format!("{t} {}", if m { "met" } else { "MISSED" }),
            _ => String::new(),
        };
        println!(
            "{:<48} {:>5} {}   {}   {:>7}  {}",
            row.name,
            row.unit,
            cell(row.podwire),
            cell(row.kube_proxy),
            row.ratio.map_or("-".into(), |x| format!("{x:.1}x")),
            target
        );
    }
    println!();
    for n in &r.notes {
        println!("note: {n}");
    }
    println!();
    for l in &r.legend {
        println!("- {l}");
    }
}

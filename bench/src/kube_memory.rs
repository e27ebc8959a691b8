//! The Kubernetes-mode benchmark's memory rows: resident memory of the
//! agent beside kube-proxy, of podwire dns and ingress, and of podwire dns
//! holding 10k Services + 100k pods (grown by watch, then after a restart).
//! Included by `src/bin/kube.rs` with `#[path]`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use podwire_bench::ns::check_interrupted;
use podwire_bench::stats::Summary;

use crate::DNS_RSS_TARGET_MB;
use crate::kube_env::{Component, Env, Poller, Probe};
use crate::kube_report::{Report, Row, k};

/// RSS samples (MB) of a component and its peak.
pub fn rss(env: &mut Env, c: Component, samples: usize) -> Result<(Vec<f64>, f64)> {
    let pid = env.pid(c)?;
    let mut v = Vec::new();
    let mut peak = 0.0;
    for i in 0..samples {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        let (r, hwm) = crate::kube_env::rss_mb(pid)?;
        v.push(r);
        peak = hwm;
    }
    Ok((v, peak))
}

pub fn memory_rows(env: &mut Env, label: &str, report: &mut Report) -> Result<()> {
    let (agent, agent_peak) = rss(env, Component::Agent, 5)?;
    let (kp, kp_peak) = rss(env, Component::KubeProxy, 5)?;
    report.rows.push(
        Row::new(format!("RSS {label}: agent vs kube-proxy"), "MB")
            .podwire(&agent)
            .kube_proxy(&kp),
    );
    report.rows.push(
        Row::new(format!("  peak RSS {label} (VmHWM)"), "MB")
            .podwire(&[agent_peak])
            .kube_proxy(&[kp_peak]),
    );
    Ok(())
}

pub fn service_memory_rows(env: &mut Env, label: &str, report: &mut Report) -> Result<()> {
    let (dns, dns_peak) = rss(env, Component::Dns, 5)?;
    let (ing, ing_peak) = rss(env, Component::Ingress, 5)?;
    report
        .rows
        .push(Row::new(format!("RSS {label}: podwire dns"), "MB").podwire(&dns));
    report.notes.push(format!(
        "podwire dns peak RSS {label}: {dns_peak:.1} MB; podwire ingress peak {ing_peak:.1} MB"
    ));
    report
        .rows
        .push(Row::new(format!("RSS {label}: podwire ingress"), "MB").podwire(&ing));
    Ok(())
}

/// The DNS memory test: `pods` pods with addresses, then a restart of
/// podwire dns to time its zone load.
pub fn dns_pods(
    env: &mut Env,
    pods: usize,
    services: usize,
    last: &str,
    report: &mut Report,
) -> Result<()> {
    eprintln!("creating {pods} pods with status.podIP through the API (this takes minutes)");
    let took = env.api.create_pods(0, pods)?;
    report.notes.push(format!(
        "creating {pods} pods + their pods/status: {:.0} s ({:.0} writes/s)",
        took.as_secs_f64(),
        pods as f64 * 2.0 / took.as_secs_f64()
    ));
    // The running server has them once its zone stops changing.
    let started = Instant::now();
    let mut last_gen = None;
    let mut stable_since = Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        check_interrupted()?;
        let generation = env
            .metrics(Component::Dns)
            .ok()
            .and_then(|m| crate::kube_env::metric(&m, "podwire_dns_zone_generation"));
        if generation != last_gen {
            last_gen = generation;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let label = format!("{} svc + {} pods", k(services), k(pods));
    let (running, running_peak) = rss(env, Component::Dns, 5)?;
    let running_med = Summary::of(&running).map_or(0.0, |s| s.median);
    report.rows.push(
        Row::new(format!("RSS {label}: podwire dns (grown by watch)"), "MB")
            .podwire(&running)
            .target(
                format!("<={DNS_RSS_TARGET_MB:.0} MB"),
                running_med <= DNS_RSS_TARGET_MB,
            ),
    );
    eprintln!("restarting podwire dns with {label}");
    env.stop(Component::Dns);
    let stop = Arc::new(AtomicBool::new(false));
    let p = Poller::start(
        env.svc.path(),
        Probe::Dns {
            server: crate::kube_env::DNS_ADDR.parse()?,
            name: crate::kube_env::dns_name(last),
        },
        Duration::from_millis(5),
        Duration::from_secs(300),
        stop,
    );
    let t0 = Instant::now();
    env.spawn(Component::Dns)?;
    let loaded = p
        .wait()?
        .context("the restarted podwire dns never answered")?;
    let load_s = loaded.saturating_duration_since(t0).as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (fresh, fresh_peak) = rss(env, Component::Dns, 5)?;
    let fresh_med = Summary::of(&fresh).map_or(0.0, |s| s.median);
    report.rows.push(
        Row::new(format!("RSS {label}: podwire dns after a restart"), "MB")
            .podwire(&fresh)
            .target(
                format!("<={DNS_RSS_TARGET_MB:.0} MB"),
                fresh_med <= DNS_RSS_TARGET_MB,
            ),
    );
    report.rows.push(
        Row::new(format!("  peak RSS {label}: dns grown / restarted"), "MB")
            .podwire(&[running_peak, fresh_peak]),
    );
    report.rows.push(
        Row::new(format!("zone load at {label}: dns start -> answers"), "s").podwire(&[load_s]),
    );
    Ok(())
}

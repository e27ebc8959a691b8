//! wrk runs: the Lua script that sends every connection to 127.0.0.1 while
//! the URL's host stays the Host header and SNI, the parsed results, and
//! what the proxy's CPU, the loopback and the scheduler did during a run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::proc::{
    busy_pct, clock_ticks_per_second, context_switches, cpu_jiffies, cpu_ticks, tcp_out_segs,
};
use super::{BENCH_HOST, BENCH_PATH, HOSTS, PATHS};
use crate::ns::check_interrupted;

/// Connects to 127.0.0.1 whatever host the URL names, so the URL's host is
/// both the Host header and the TLS server name (SNI).
pub const WRK_SCRIPT: &str = "\
-- bench/ingress: every connection goes to 127.0.0.1; the URL's host stays
-- the Host header and the TLS server name.
wrk.resolve = function(host, service)
   wrk.addrs = wrk.lookup(\"127.0.0.1\", service)
end
";

#[derive(Debug, Clone, Serialize)]
pub struct Wrk {
    pub rps: f64,
    pub p50_ms: f64,
    pub p75_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub socket_errors: u64,
    /// Proxy CPU time over wall time, percent of one CPU.
    pub proxy_cpu_pct: f64,
    /// How busy the proxy's CPU and the CPU of wrk + backend were (all
    /// processes, interrupts and softirqs included), percent.
    pub proxy_cpu_busy_pct: f64,
    pub load_cpu_busy_pct: f64,
    /// TCP segments sent (by everyone on loopback) per completed request.
    pub segments_per_request: f64,
    /// Context switches of the proxy's threads per completed request.
    pub proxy_switches_per_request: f64,
}

pub fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        "h" => n * 3600e3,
        _ => return None,
    })
}

pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let pct = |label: &str| -> Result<f64> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(label))
            .and_then(|v| parse_duration_ms(v.trim()))
            .with_context(|| format!("no {label} latency in wrk output:\n{text}"))
    };
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses"))
    {
        bail!("wrk saw error responses ({}):\n{text}", line.trim());
    }
    Ok(Wrk {
        rps,
        p50_ms: pct("50%")?,
        p75_ms: pct("75%")?,
        p90_ms: pct("90%")?,
        p99_ms: pct("99%")?,
        requests,
        socket_errors,
        proxy_cpu_pct: 0.0,
        proxy_cpu_busy_pct: 0.0,
        load_cpu_busy_pct: 0.0,
        segments_per_request: 0.0,
        proxy_switches_per_request: 0.0,
    })
}

pub struct Load<'a> {
    pub script: &'a Path,
    pub cpu: &'a str,
    pub proxy_cpu: &'a str,
    pub connections: usize,
    /// `-H 'Connection: close'`: a new connection (and TLS handshake) per
    /// request.
    pub close: bool,
}

/// One wrk run against `port`; `pids` are the proxy's processes, whose CPU
/// time is measured over the run.
pub fn wrk(load: &Load, tls: bool, port: u16, seconds: u64, pids: &[u32]) -> Result<Wrk> {
    check_interrupted()?;
    let url = format!(
        "{}://{}:{port}{}",
        if tls { "https" } else { "http" },
        HOSTS[BENCH_HOST],
        PATHS[BENCH_PATH].2
    );
    let ticks = cpu_ticks(pids);
    let (proxy_before, load_before) = (cpu_jiffies(load.proxy_cpu), cpu_jiffies(load.cpu));
    let (segs, switches) = (tcp_out_segs(), context_switches(pids));
    let started = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", load.cpu, "wrk", "-t1"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{seconds}s"))
        .args(if load.close {
            &["-H", "Connection: close"][..]
        } else {
            &[]
        })
        .arg("--latency")
        .arg("-s")
        .arg(load.script)
        .arg(&url)
        .stdin(Stdio::null())
        .output()
        .context("cannot run wrk (apt-get install wrk)")?;
    let wall = started.elapsed().as_secs_f64();
    let used = cpu_ticks(pids).saturating_sub(ticks) as f64 / clock_ticks_per_second();
    let proxy_busy = busy_pct(proxy_before, cpu_jiffies(load.proxy_cpu));
    let load_busy = busy_pct(load_before, cpu_jiffies(load.cpu));
    let segs = tcp_out_segs().zip(segs).map(|(a, b)| a.saturating_sub(b));
    let switches = context_switches(pids).saturating_sub(switches);
    check_interrupted()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk {url} failed ({}): {}{}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut result = parse_wrk(&text).with_context(|| format!("wrk {url}"))?;
    result.proxy_cpu_pct = used / wall * 100.0;
    result.proxy_cpu_busy_pct = proxy_busy;
    result.load_cpu_busy_pct = load_busy;
    let requests = result.requests.max(1) as f64;
    result.segments_per_request = segs.unwrap_or(0) as f64 / requests;
    result.proxy_switches_per_request = switches as f64 / requests;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ms, parse_wrk};

    const WRK: &str = "\
Running 10s test @ http://app2.bench.test:4000/api/v1/items
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us  12.00ms   90.00%
    Req/Sec    53.00k     2.00k   60.00k    70.00%
  Latency Distribution
     50%  574.00us
     75%    1.10ms
     90%    2.00ms
     99%    1.50s
  530000 requests in 10.00s, 60.12MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
Requests/sec:  53000.50
Transfer/sec:      6.01MB
";

    #[test]
    fn parses_wrk_output() {
        let w = parse_wrk(WRK).expect("parses");
        assert_eq!(w.rps, 53000.5);
        assert_eq!(w.p50_ms, 0.574);
        assert_eq!(w.p75_ms, 1.1);
        assert_eq!(w.p90_ms, 2.0);
        assert_eq!(w.p99_ms, 1500.0);
        assert_eq!(w.requests, 530_000);
        assert_eq!(w.socket_errors, 3);
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 5\nRequests/sec",
        );
        assert!(parse_wrk(&bad).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("250.00us"), Some(0.25));
        assert_eq!(parse_duration_ms("2.00m"), Some(120_000.0));
        assert_eq!(parse_duration_ms("12"), None);
    }
}

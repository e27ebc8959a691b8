//! The idle-connection test: N keep-alive connections opened against a
//! fresh proxy, one request each, then held while the proxy's memory is
//! read; a second request on each shows they were really kept.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::client::Conn;
use super::proc::memory_kb;
use super::world::{Proxy, World};
use super::{BENCH_HOST, BENCH_PATH, HOSTS, PATHS, expected_body};
use crate::ns::check_interrupted;

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub proxy: String,
    pub tls: bool,
    pub connections: usize,
    /// Connections that still answered a second request after the measurement.
    pub held: usize,
    pub open_seconds: f64,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub pss_before_kb: u64,
    pub pss_after_kb: u64,
}

pub fn hold_idle(world: &World, proxy: &mut Proxy, tls: bool, n: usize) -> Result<Idle> {
    let port = if tls {
        proxy.tls_port.context("no TLS listener")?
    } else {
        proxy.http_port
    };
    let host = HOSTS[BENCH_HOST];
    let path = PATHS[BENCH_PATH].2;
    let want = expected_body(&world.ports, BENCH_HOST, BENCH_PATH);
    let tls_client = tls.then_some((&world.client, host));
    // One request first, so both proxies have their backend connection and
    // first-use allocations before the baseline.
    let (status, _) = Conn::open(port, tls_client)?.get(host, path)?;
    ensure!(status == 200, "{} answered {status}", proxy.name);
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before_kb, pss_before_kb) = memory_kb(&proxy.proc.pids());
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        if i % 100 == 0 {
            check_interrupted()?;
            proxy.proc.check_running()?;
        }
        let mut conn = Conn::open(port, tls_client)
            .with_context(|| format!("{} connection {}", proxy.name, i + 1))?;
        let (status, body) = conn
            .get(host, path)
            .with_context(|| format!("{} connection {}", proxy.name, i + 1))?;
        ensure!(
            status == 200 && body == want,
            "{} connection {}: {status} {body:?}",
            proxy.name,
            i + 1
        );
        conns.push(conn);
    }
    let open_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let (rss_after_kb, pss_after_kb) = memory_kb(&proxy.proc.pids());
    // Were they really held? A second request on every connection.
    let mut held = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        if i % 100 == 0 {
            check_interrupted()?;
        }
        if matches!(conn.get(host, path), Ok((200, ref body)) if *body == want) {
            held += 1;
        }
    }
    drop(conns);
    Ok(Idle {
        proxy: proxy.name.to_string(),
        tls,
        connections: n,
        held,
        open_seconds,
        rss_before_kb,
        rss_after_kb,
        pss_before_kb,
        pss_after_kb,
    })
}

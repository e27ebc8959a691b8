//! `podwire serve`: the built-in pod workload. Answers every HTTP request
//! with the server's hostname, the address the request arrived on and the
//! client address it saw, so a test can tell which pod answered and whether
//! the source was NATed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};

pub fn run(listen: &str) -> Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "serving");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(err) = answer(stream) {
                        tracing::debug!(%err, "connection ended");
                    }
                });
            }
            Err(err) => tracing::warn!(%err, "accept failed"),
        }
    }
    Ok(())
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn answer(stream: TcpStream) -> Result<()> {
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut keep_alive = request_line.contains("HTTP/1.1");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("connection:") && lower.contains("close") {
                keep_alive = false;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body = format!(
            "hostname={} server={} client={} path={}\n",
            hostname(),
            local.ip(),
            peer.ip(),
            path
        );
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            body.len(),
            if keep_alive { "keep-alive" } else { "close" }
        );
        // One write: a second small segment would wait (Nagle) for the
        // ACK of the first, which a client with a kept-alive connection
        // (e.g. the ingress controller's pool) delays by up to 40 ms.
        writer.write_all(format!("{head}{body}").as_bytes())?;
        if !keep_alive {
            return Ok(());
        }
    }
}

//! nginx twice: the backend answering `backend <port>` on every route's
//! port, and the proxy configured with the same hosts and paths as the
//! Ingress, keep-alive upstream pools and the forwarded headers podwire sets.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use super::proc::{Proc, write};
use super::{HOSTS, PATHS, Ports};

pub const NGINX_COMMON: &str = "\
    access_log off;
    server_tokens off;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
";

pub fn nginx_main(dir: &Path, workers: usize, connections: u64) -> String {
    format!(
        "worker_processes {workers};\npid {d}/nginx.pid;\n\
         error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n",
        d = dir.display()
    )
}

/// The backend: one nginx worker answering `backend <port>` on every route's port.
pub fn start_backend(dir: &Path, ports: &Ports, cpu: &str) -> Result<Proc> {
    let mut conf = nginx_main(dir, 1, 4096);
    conf.push_str("http {\n");
    conf.push_str(&NGINX_COMMON.replace("{dir}", &dir.display().to_string()));
    conf.push_str("    server {\n");
    for port in ports.iter().flatten() {
        writeln!(conf, "        listen 127.0.0.1:{port};")?;
    }
    conf.push_str("        location / { return 200 \"backend $server_port\\n\"; }\n    }\n}\n");
    start_nginx("backend nginx", dir, &conf, cpu)
}

/// nginx as the ingress: the same hosts and paths as the Ingress, each to
/// an upstream with a keep-alive pool, the same forwarded headers podwire
/// sets (X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP, Host unchanged), and
/// a default server answering 404.
pub fn start_nginx_proxy(
    dir: &Path,
    ports: &Ports,
    http_port: u16,
    tls_port: Option<u16>,
    workers: usize,
    nofile: u64,
    cpu: &str,
) -> Result<Proc> {
    let d = dir.display().to_string();
    // As many connections as the open-file limit (inherited) allows.
    let mut conf = nginx_main(dir, workers, nofile);
    conf.push_str("http {\n");
    conf.push_str(&NGINX_COMMON.replace("{dir}", &d));
    conf.push_str(
        "    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $http_host;
    proxy_set_header X-Forwarded-Port $server_port;
",
    );
    // nginx 1.22 leaves TLS 1.3 out of its default ssl_protocols; podwire
    // (rustls) speaks 1.3, so both get 1.2 and 1.3.
    if tls_port.is_some() {
        writeln!(
            conf,
            "    ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n    ssl_protocols TLSv1.2 TLSv1.3;"
        )?;
    }
    for (h, row) in ports.iter().enumerate() {
        for (p, port) in row.iter().enumerate() {
            writeln!(
                conf,
                "    upstream u{h}{p} {{ server 127.0.0.1:{port}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 600s; }}"
            )?;
        }
    }
    let listen = |conf: &mut String, default: &str| -> Result<()> {
        writeln!(conf, "        listen 127.0.0.1:{http_port}{default};")?;
        if let Some(port) = tls_port {
            writeln!(conf, "        listen 127.0.0.1:{port} ssl{default};")?;
        }
        Ok(())
    };
    for (h, host) in HOSTS.iter().enumerate() {
        conf.push_str("    server {\n");
        listen(&mut conf, "")?;
        writeln!(conf, "        server_name {host};")?;
        for (p, (_, path, _)) in PATHS.iter().enumerate() {
            // Ingress Prefix semantics: the path itself and everything under it.
            if *path == "/" {
                writeln!(conf, "        location / {{ proxy_pass http://u{h}{p}; }}")?;
            } else {
                writeln!(
                    conf,
                    "        location = {path} {{ proxy_pass http://u{h}{p}; }}\n        location {path}/ {{ proxy_pass http://u{h}{p}; }}"
                )?;
            }
        }
        conf.push_str("    }\n");
    }
    conf.push_str("    server {\n");
    listen(&mut conf, " default_server")?;
    conf.push_str("        server_name _;\n        return 404;\n    }\n}\n");
    start_nginx("nginx", dir, &conf, cpu)
}

pub fn start_nginx(name: &str, dir: &Path, conf: &str, cpu: &str) -> Result<Proc> {
    let path = dir.join("nginx.conf");
    write(&path, conf)?;
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", cpu, "nginx", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"]);
    Proc::spawn(name, cmd, &dir.join("nginx.log"))
}

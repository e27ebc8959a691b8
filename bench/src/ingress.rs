//! The parts of the ingress benchmark (`bench/ingress`, `src/bin/ingress.rs`
//! runs them): the processes it starts and measures, the HTTP/TLS client that
//! checks routes and holds idle connections, the nginx configurations, the
//! world both proxies serve, wrk runs, the idle-connection test and the table.

pub mod client;
pub mod idle;
pub mod nginx;
pub mod proc;
pub mod report;
pub mod world;
pub mod wrk;

/// Routed hosts and paths: 3 hosts x 3 paths, each route its own Service
/// and backend port. (name, rule path, request path).
pub const HOSTS: [&str; 3] = ["app1.bench.test", "app2.bench.test", "app3.bench.test"];
pub const PATHS: [(&str, &str, &str); 3] = [
    ("root", "/", "/"),
    ("static", "/static", "/static/app.css"),
    ("api", "/api/v1", "/api/v1/items"),
];
/// The benchmarked route: the second host's third path (not the first rule).
pub const BENCH_HOST: usize = 1;
pub const BENCH_PATH: usize = 2;
pub const NAMESPACE: &str = "bench";
pub const SECRET: &str = "bench-tls";

/// Backend port per (host, path).
pub type Ports = [[u16; 3]; 3];

pub fn service_name(h: usize, p: usize) -> String {
    format!("app{}-{}", h + 1, PATHS[p].0)
}

pub fn expected_body(ports: &Ports, h: usize, p: usize) -> String {
    format!("backend {}\n", ports[h][p])
}

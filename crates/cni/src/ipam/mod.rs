//! In-process IPAM with the semantics and on-disk layout of the reference
//! host-local plugin, so the bridge plugin needs no IPAM binary and a node can
//! switch between podwire and host-local without losing leases.

mod allocator;
mod config;
mod resolv;
mod store;

pub use allocator::{Allocation, allocate, allocated, gc, has_free_address, list, release};
pub use config::{DEFAULT_DATA_DIR, IpamConfig, Range, RangeSet, RouteConfig};
pub use resolv::{Dns, read_resolv_conf};

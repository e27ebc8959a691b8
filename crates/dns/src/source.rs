//! Loading the zone from the files store one object at a time.
//!
//! `Store::load` keeps every object of the cluster in memory as k8s-openapi
//! structs (kilobytes per pod); with 100k pods that alone is hundreds of MB.
//! DNS needs a few facts per object, so this walks the store's layout
//! (`<root>/<resource>/<namespace>/<name>.json`, see `podwire_model::Store`)
//! itself, parses each file, hands it to the [`ZoneBuilder`] and drops it.
//! A snapshot is consistent when the generation is the same before and
//! after the walk, as with `Store::load_consistent`.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use podwire_model::{EndpointSlice, Kind, Namespace, Pod, Service, Store};

use crate::build::{ZoneBuilder, ZoneOptions};
use crate::error::DnsError;
use crate::zone::Zone;

/// The resources the zone is made of.
const RESOURCES: [Kind; 4] = [
    Kind::Namespace,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Pod,
];

/// A compiled zone and what it was compiled from.
#[derive(Debug)]
pub struct Loaded {
    pub generation: u64,
    pub zone: Zone,
    /// Objects skipped, with the reason.
    pub skipped: Vec<String>,
    pub objects: usize,
}

/// Loads a consistent snapshot of the store and compiles it. Retries (five
/// times) while the generation moves during the walk; then takes the last
/// walk, and the watcher reloads when it sees the newer generation.
pub fn load(store: &Store, options: &ZoneOptions) -> Result<Loaded, DnsError> {
    let mut last = None;
    for _ in 0..5 {
        let before = store.generation();
        let walked = walk(store)?;
        if store.generation() == before {
            return Ok(finish(before, walked, options));
        }
        last = Some((before, walked));
    }
    match last {
        Some((generation, walked)) => Ok(finish(generation, walked, options)),
        None => {
            let generation = store.generation();
            Ok(finish(generation, walk(store)?, options))
        }
    }
}

fn finish(
    generation: u64,
    (builder, objects): (ZoneBuilder, usize),
    options: &ZoneOptions,
) -> Loaded {
    let skipped = builder.skipped().to_vec();
    let zone = builder.build(options, generation as u32);
    Loaded {
        generation,
        zone,
        skipped,
        objects,
    }
}

fn walk(store: &Store) -> Result<(ZoneBuilder, usize), DnsError> {
    let mut builder = ZoneBuilder::new();
    builder.config(store.read_config().map_err(DnsError::Store)?);
    let mut objects = 0usize;
    for kind in RESOURCES {
        let dir = store.root().join(kind.resource());
        for ns_dir in list(&dir)? {
            if !ns_dir.is_dir() {
                continue;
            }
            for file in list(&ns_dir)? {
                let Some(fname) = file.file_name().and_then(|f| f.to_str()) else {
                    continue;
                };
                if fname.starts_with('.') || !fname.ends_with(".json") {
                    continue;
                }
                let bytes = match fs::read(&file) {
                    Ok(b) => b,
                    // Deleted since the listing: the generation check retries.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(DnsError::io("cannot read", &file, e)),
                };
                match add(&mut builder, kind, &bytes) {
                    Ok(()) => objects += 1,
                    Err(message) => {
                        tracing::warn!("ignoring {}: {message}", file.display());
                    }
                }
            }
        }
    }
    Ok((builder, objects))
}

fn add(builder: &mut ZoneBuilder, kind: Kind, bytes: &[u8]) -> Result<(), String> {
    // The store writes apiVersion and kind into every file; the typed
    // deserializers check them, so a misplaced file is refused here.
    match kind {
        Kind::Namespace => builder.namespace(&parse::<Namespace>(bytes)?),
        Kind::Service => builder.service(&parse::<Service>(bytes)?),
        Kind::EndpointSlice => builder.endpoint_slice(&parse::<EndpointSlice>(bytes)?),
        Kind::Pod => builder.pod(&parse::<Pod>(bytes)?),
        _ => {}
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn list(dir: &Path) -> Result<Vec<std::path::PathBuf>, DnsError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut out = Vec::new();
            for entry in entries {
                match entry {
                    Ok(e) => out.push(e.path()),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(DnsError::io("cannot list", dir, e)),
                }
            }
            Ok(out)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(DnsError::io("cannot list", dir, e)),
    }
}

//! The files store as a [`Source`]: waits for the store's generation to
//! move, then walks `<resource>/<namespace>/<name>.json` one file at a
//! time and reports every object of interest as a relist, in batches of at
//! most [`BATCH`] changes.
//!
//! Objects are read one at a time and never all held at once (100k pods as
//! k8s-openapi structs are hundreds of MB); a reflector or cluster DNS
//! folds them as they come. A walk is consistent when the generation is
//! the same before and after it; otherwise it starts again (a few times,
//! then the newer generation is walked on the next call anyway).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::source::{Change, Interest, Source, SourceStatus, Update};
use crate::{
    Deployment, EndpointSlice, Ingress, IngressClass, Kind, ModelError, Namespace, NetworkPolicy,
    Node, Object, Pod, Secret, Service, SourceError, Store,
};

/// Changes per batch: bounds what a walk holds in memory at once.
pub const BATCH: usize = 1024;
/// How often the generation file is read while nothing happens.
const POLL: Duration = Duration::from_millis(10);
/// Walks restarted because the store moved underneath, before one is taken as is.
const MAX_RESTARTS: u32 = 4;

/// A walk in progress.
#[derive(Debug)]
struct Walk {
    generation: u64,
    restarts: u32,
    /// Namespace directories still to list, with their kind.
    dirs: Vec<(Kind, PathBuf)>,
    /// Files of the current directory still to read.
    files: Vec<(Kind, PathBuf)>,
    /// The relist markers and config still to send (the first batch).
    head: Vec<Change>,
}

/// The files store, read as a source.
#[derive(Debug)]
pub struct FilesSource {
    store: Store,
    interest: Interest,
    seen: Option<u64>,
    walk: Option<Walk>,
    status: SourceStatus,
    last_contact: Option<Instant>,
}

impl FilesSource {
    pub fn new(store: Store, interest: Interest) -> FilesSource {
        FilesSource {
            store,
            interest,
            seen: None,
            walk: None,
            status: SourceStatus::default(),
            last_contact: None,
        }
    }

    fn error(&self, source: ModelError) -> SourceError {
        SourceError::Store {
            dir: self.store.root().to_path_buf(),
            source: Box::new(source),
        }
    }

    fn start_walk(&mut self, generation: u64, restarts: u32) -> Result<(), SourceError> {
        let config = self.store.read_config().map_err(|e| self.error(e))?;
        let mut head = vec![Change::Config(config)];
        let mut dirs = Vec::new();
        for kind in &self.interest.kinds {
            head.push(Change::Relisting(*kind));
            let kind_dir = self.store.root().join(kind.resource());
            for ns_dir in list(&kind_dir).map_err(|e| self.error(e))? {
                if ns_dir.is_dir() {
                    dirs.push((*kind, ns_dir));
                }
            }
        }
        // Popped from the end: reverse so kinds come in interest order.
        dirs.reverse();
        self.walk = Some(Walk {
            generation,
            restarts,
            dirs,
            files: Vec::new(),
            head,
        });
        Ok(())
    }

    /// The next batch of the walk in progress.
    fn continue_walk(&mut self) -> Result<Update, SourceError> {
        let Some(mut walk) = self.walk.take() else {
            return Ok(Update::default());
        };
        let mut changes = std::mem::take(&mut walk.head);
        while changes.len() < BATCH {
            if let Some((kind, file)) = walk.files.pop() {
                if let Some(object) = self.read(kind, &file) {
                    changes.extend(self.interest.prepare(object).map(Change::Applied));
                }
                continue;
            }
            let Some((kind, dir)) = walk.dirs.pop() else {
                break;
            };
            let mut files: Vec<(Kind, PathBuf)> = list(&dir)
                .map_err(|e| self.error(e))?
                .into_iter()
                .filter(|f| {
                    f.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| !n.starts_with('.') && n.ends_with(".json"))
                })
                .map(|f| (kind, f))
                .collect();
            files.reverse();
            walk.files = files;
        }
        let revision = walk.generation;
        if !walk.files.is_empty() || !walk.dirs.is_empty() {
            self.walk = Some(walk);
            return Ok(Update { revision, changes });
        }
        // The walk is complete: was the store still at that generation?
        let now = self.store.generation();
        if now != walk.generation && walk.restarts < MAX_RESTARTS {
            // Relisting markers in the next batch reset what was seen.
            self.start_walk(now, walk.restarts + 1)?;
            return Ok(Update { revision, changes });
        }
        changes.extend(self.interest.kinds.iter().map(|k| Change::Listed(*k)));
        self.seen = Some(walk.generation);
        self.status.synced = true;
        Ok(Update { revision, changes })
    }

    /// One stored object; None (with a warning and the error in the
    /// status) when the file is gone or does not hold a valid object.
    fn read(&mut self, kind: Kind, path: &Path) -> Option<Object> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            // Deleted since the listing: the generation check covers it.
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                self.note_bad_file(path, &e.to_string());
                return None;
            }
        };
        match parse(kind, &bytes) {
            Ok(object) => Some(object),
            Err(message) => {
                self.note_bad_file(path, &message);
                None
            }
        }
    }

    fn note_bad_file(&mut self, path: &Path, message: &str) {
        let text = format!(
            "{} is not a valid stored object ({message}); it is left out until rewritten",
            path.display()
        );
        if self.status.error.as_deref() != Some(text.as_str()) {
            tracing::warn!("{text}");
        }
        self.status.error = Some(text);
    }
}

/// Parses a stored file straight into its kind's type (the store writes
/// apiVersion and kind into every file; the typed deserializers check them).
fn parse(kind: Kind, bytes: &[u8]) -> Result<Object, String> {
    fn typed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
    Ok(match kind {
        Kind::Namespace => Object::Namespace(typed::<Namespace>(bytes)?),
        Kind::Node => Object::Node(typed::<Node>(bytes)?),
        Kind::Pod => Object::Pod(typed::<Pod>(bytes)?),
        Kind::Service => Object::Service(typed::<Service>(bytes)?),
        Kind::EndpointSlice => Object::EndpointSlice(typed::<EndpointSlice>(bytes)?),
        Kind::Deployment => Object::Deployment(typed::<Deployment>(bytes)?),
        Kind::Ingress => Object::Ingress(typed::<Ingress>(bytes)?),
        Kind::Secret => Object::Secret(typed::<Secret>(bytes)?),
        Kind::IngressClass => Object::IngressClass(typed::<IngressClass>(bytes)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(typed::<NetworkPolicy>(bytes)?),
    })
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            let mut out = Vec::new();
            for entry in entries {
                match entry {
                    Ok(e) => out.push(e.path()),
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(ModelError::io("cannot list", dir, e)),
                }
            }
            out.sort();
            Ok(out)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ModelError::io("cannot list", dir, e)),
    }
}

impl Source for FilesSource {
    fn next(&mut self, timeout: Duration) -> Result<Option<Update>, SourceError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.walk.is_some() {
                return self.continue_walk().map(Some);
            }
            // Generation 0: the writer has not finished its first batch.
            let generation = self.store.generation();
            self.last_contact = Some(Instant::now());
            if generation >= 1 && self.seen != Some(generation) {
                if let Err(e) = self.start_walk(generation, 0) {
                    // Retried at the next call: the store may be mid-write.
                    self.status.error = Some(e.to_string());
                    return Err(e);
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL.min(deadline - now));
        }
    }

    fn describe(&self) -> String {
        format!("files:{}", self.store.root().display())
    }

    fn status(&self) -> SourceStatus {
        let mut status = self.status.clone();
        status.last_contact_age = self.last_contact.map(|t| t.elapsed().as_secs_f64());
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Changed, Reflector, Watch};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(ns: &str, name: &str, node: &str) -> Object {
        Object::Pod(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: None,
        })
    }

    fn drain(source: &mut FilesSource) -> Vec<Update> {
        let mut out = Vec::new();
        while let Some(u) = source.next(Duration::ZERO).unwrap() {
            out.push(u);
        }
        out
    }

    #[test]
    fn waits_for_the_first_generation_then_relists_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        for i in 0..(BATCH + 10) {
            store.put(&pod("a", &format!("p{i}"), "n1")).unwrap();
        }
        let mut source = FilesSource::new(store.clone(), Interest::new([Kind::Pod]));
        assert!(
            source.next(Duration::from_millis(30)).unwrap().is_none(),
            "generation 0"
        );
        assert!(!source.status().synced);
        store.bump().unwrap();
        let updates = drain(&mut source);
        assert!(updates.len() >= 2, "split into batches");
        assert!(updates.iter().all(|u| u.changes.len() <= BATCH + 2));
        let applied = updates
            .iter()
            .flat_map(|u| &u.changes)
            .filter(|c| matches!(c, Change::Applied(_)))
            .count();
        assert_eq!(applied, BATCH + 10);
        assert!(matches!(
            updates.last().unwrap().changes.last(),
            Some(Change::Listed(Kind::Pod))
        ));
        assert!(source.status().synced);
        assert!(drain(&mut source).is_empty(), "nothing until the next bump");
    }

    #[test]
    fn watch_reports_changes_node_filter_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        store.put(&pod("a", "mine", "n1")).unwrap();
        store.put(&pod("a", "theirs", "n2")).unwrap();
        store.bump().unwrap();
        let interest = Interest::new([Kind::Pod, Kind::Service]).pods_of_node("n1");
        let mut watch = Watch::new(
            Box::new(FilesSource::new(store.clone(), interest.clone())),
            &interest,
        );
        let first = watch.next(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(first.changed, Changed::All);
        assert_eq!(
            first
                .state
                .pods
                .keys()
                .map(|k| k.1.as_str())
                .collect::<Vec<_>>(),
            ["mine"]
        );
        drop(first);
        // A bump with nothing changed yields a snapshot naming nothing.
        store.bump().unwrap();
        let s = watch.next(Duration::from_secs(1)).unwrap().unwrap();
        assert_eq!(s.changed.count(), Some(0));
        assert_eq!(s.revision, 2);
        drop(s);
        // One pod deleted, one added; a corrupt file is left out and reported.
        store.delete(Kind::Pod, "a", "mine").unwrap();
        store.put(&pod("a", "new", "n1")).unwrap();
        fs::write(dir.path().join("pods/a/broken.json"), "{").unwrap();
        store.bump().unwrap();
        let s = watch.next(Duration::from_secs(1)).unwrap().unwrap();
        let changed: Vec<&str> = s
            .changed
            .of_kind(Kind::Pod)
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(changed, ["mine", "new"]);
        let error = watch.source().status().error.unwrap();
        assert!(error.contains("broken.json"), "{error}");
    }

    #[test]
    fn reflector_state_matches_store_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        store.put(&pod("a", "x", "n1")).unwrap();
        store
            .put(&Object::Namespace(Namespace {
                metadata: ObjectMeta {
                    name: Some("a".into()),
                    ..Default::default()
                },
                ..Default::default()
            }))
            .unwrap();
        store.bump().unwrap();
        let interest = Interest::new(Kind::ALL);
        let mut source = FilesSource::new(store.clone(), interest.clone());
        let mut reflector = Reflector::new(&interest);
        for u in drain(&mut source) {
            reflector.apply(u);
        }
        let snapshot = reflector.take_snapshot().unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(snapshot.state.pods, loaded.pods);
        assert_eq!(snapshot.state.namespaces, loaded.namespaces);
    }
}

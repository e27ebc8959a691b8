//! The on-disk store (the "files" source): a directory the lab writes and
//! components watch. Every file is replaced atomically (tmp file + rename),
//! and `generation` is bumped after each batch, so a reader that sees the
//! same generation before and after loading has a consistent snapshot.
//!
//! Layout:
//! ```text
//! <root>/config.json                                  ClusterConfig
//! <root>/<resource>/<namespace or _cluster>/<name>.json
//! <root>/generation                                   decimal counter
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{ClusterConfig, ClusterState, Kind, ModelError, Object};

/// Directory name used for cluster-scoped objects (nodes, namespaces): "_"
/// cannot start a namespace name, so it never collides with a namespace.
const CLUSTER_DIR: &str = "_cluster";
const CONFIG_FILE: &str = "config.json";
const GENERATION_FILE: &str = "generation";

/// A handle on a store directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root`; the directory need not exist yet (writers
    /// create it, readers see an empty cluster).
    pub fn open(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes config.json. Does not bump the generation.
    pub fn write_config(&self, config: &ClusterConfig) -> Result<(), ModelError> {
        let path = self.root.join(CONFIG_FILE);
        let text = serde_json::to_vec_pretty(config).map_err(|e| ModelError::StoredFile {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&path, &text)
    }

    /// The path of an object's file.
    pub fn object_path(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, ModelError> {
        check_path_part(kind, "name", name)?;
        let dir = if kind.namespaced() {
            let ns = if namespace.is_empty() {
                "default"
            } else {
                namespace
            };
            check_path_part(kind, "namespace", ns)?;
            ns
        } else {
            CLUSTER_DIR
        };
        Ok(self
            .root
            .join(kind.resource())
            .join(dir)
            .join(format!("{name}.json")))
    }

    /// Adds or replaces an object (atomically). Does not bump the generation.
    pub fn put(&self, object: &Object) -> Result<(), ModelError> {
        let path = self.object_path(object.kind(), &object.namespace(), &object.name())?;
        let text =
            serde_json::to_vec_pretty(&object.to_json()).map_err(|e| ModelError::StoredFile {
                path: path.clone(),
                message: e.to_string(),
            })?;
        write_atomic(&path, &text)
    }

    /// Removes an object; Ok(false) when it was not there. Does not bump.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<bool, ModelError> {
        let path = self.object_path(kind, namespace, name)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ModelError::io("cannot delete", path, e)),
        }
    }

    /// Increments the generation after a batch of put/delete and returns the
    /// new value. Only one writer (the lab) is expected.
    pub fn bump(&self) -> Result<u64, ModelError> {
        let next = self.generation().saturating_add(1);
        write_atomic(
            &self.root.join(GENERATION_FILE),
            format!("{next}\n").as_bytes(),
        )?;
        Ok(next)
    }

    /// The current generation; 0 when the file is missing (or unreadable,
    /// with a warning, so a watcher simply reloads later).
    pub fn generation(&self) -> u64 {
        let path = self.root.join(GENERATION_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(
                    "{} does not hold a number ({:?}); treating it as 0",
                    path.display(),
                    text.trim()
                );
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(
                    "cannot read {}: {e}; treating the generation as 0",
                    path.display()
                );
                0
            }
        }
    }

    /// Reads config.json; None when it does not exist.
    pub fn read_config(&self) -> Result<Option<ClusterConfig>, ModelError> {
        let path = self.root.join(CONFIG_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ModelError::StoredFile {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ModelError::io("cannot read", path, e)),
        }
    }

    /// Loads everything. A missing root is an empty cluster; files that are
    /// not `<name>.json` in a known resource directory are ignored with a
    /// warning; a `.json` file that does not parse is an error (writes are
    /// atomic, so it means someone else wrote it).
    pub fn load(&self) -> Result<ClusterState, ModelError> {
        let mut state = ClusterState {
            config: self.read_config()?,
            ..Default::default()
        };
        for entry in read_dir_or_empty(&self.root)? {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name == CONFIG_FILE
                || file_name == GENERATION_FILE
                || file_name.starts_with('.')
            {
                continue;
            }
            let path = entry.path();
            let Some(kind) = Kind::from_resource(&file_name).filter(|_| path.is_dir()) else {
                tracing::warn!(
                    "ignoring {}: not a resource directory of the store",
                    path.display()
                );
                continue;
            };
            for ns_entry in read_dir_or_empty(&path)? {
                let ns_path = ns_entry.path();
                if !ns_path.is_dir() {
                    tracing::warn!(
                        "ignoring {}: expected a namespace directory",
                        ns_path.display()
                    );
                    continue;
                }
                for file in read_dir_or_empty(&ns_path)? {
                    let file_path = file.path();
                    let fname = file.file_name().to_string_lossy().into_owned();
                    // Our own in-flight temporary files.
                    if fname.starts_with('.') {
                        continue;
                    }
                    if !fname.ends_with(".json") {
                        tracing::warn!("ignoring {}: not a .json object file", file_path.display());
                        continue;
                    }
                    let object = read_object(&file_path)?;
                    if object.kind() != kind {
                        tracing::warn!(
                            "ignoring {}: holds a {}, not a {}",
                            file_path.display(),
                            object.kind(),
                            kind
                        );
                        continue;
                    }
                    state.insert(object);
                }
            }
        }
        Ok(state)
    }

    /// Loads a consistent snapshot: retries (a bounded number of times) while
    /// the generation changes during the load. Returns the generation the
    /// snapshot belongs to.
    pub fn load_consistent(&self) -> Result<(u64, ClusterState), ModelError> {
        let mut last = None;
        for _ in 0..5 {
            let before = self.generation();
            let state = self.load()?;
            if self.generation() == before {
                return Ok((before, state));
            }
            last = Some((before, state));
        }
        // Still churning; the caller will see a newer generation and reload.
        match last {
            Some(snapshot) => Ok(snapshot),
            None => Ok((self.generation(), self.load()?)),
        }
    }
}

fn check_path_part(kind: Kind, what: &str, value: &str) -> Result<(), ModelError> {
    // Names are validated as DNS-1123 elsewhere; here we only guard the
    // filesystem against names that would escape or hide in the store.
    if value.is_empty() || value.starts_with('.') || value.contains(['/', '\\', '\0']) {
        return Err(ModelError::InvalidName {
            what: format!("{kind} {what}"),
            name: value.to_string(),
            reason: "it cannot be stored as a file name".to_string(),
        });
    }
    Ok(())
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<fs::DirEntry>, ModelError> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let mut entries = rd
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ModelError::io("cannot list", dir, e))?;
            entries.sort_by_key(|e| e.file_name());
            Ok(entries)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ModelError::io("cannot list", dir, e)),
    }
}

fn read_object(path: &Path) -> Result<Object, ModelError> {
    let bytes = fs::read(path).map_err(|e| ModelError::io("cannot read", path, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ModelError::StoredFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Object::from_json(&value).map_err(|e| ModelError::StoredFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes via a temporary file in the same directory and renames it over the
/// target, so readers see the old or the new content, never a partial file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| ModelError::io("cannot create directory", dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| ModelError::io("cannot create", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| ModelError::io("cannot write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| ModelError::io("cannot sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ModelError::io("cannot rename into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Namespace, Node, Pod, RoutingMode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: ns.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("state"));
        assert_eq!(store.generation(), 0);
        assert!(store.load().unwrap().pods.is_empty());

        let config = ClusterConfig {
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            node_slice_prefix: 24,
            cluster_domain: "cluster.local".into(),
            routing: RoutingMode::Vxlan,
        };
        store.write_config(&config).unwrap();
        store
            .put(&Object::Namespace(Namespace {
                metadata: meta(None, "apps"),
                ..Default::default()
            }))
            .unwrap();
        store
            .put(&Object::Node(Node {
                metadata: meta(None, "node01"),
                ..Default::default()
            }))
            .unwrap();
        store
            .put(&Object::Pod(Pod {
                metadata: meta(Some("apps"), "web-1"),
                ..Default::default()
            }))
            .unwrap();
        store
            .put(&Object::Pod(Pod {
                metadata: meta(None, "client"),
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(store.generation(), 0, "put does not bump");
        assert_eq!(store.bump().unwrap(), 1);
        assert!(dir.path().join("state/pods/apps/web-1.json").is_file());
        assert!(
            dir.path()
                .join("state/nodes/_cluster/node01.json")
                .is_file()
        );

        // Unknown files are ignored.
        fs::write(dir.path().join("state/README"), "hi").unwrap();
        fs::write(dir.path().join("state/pods/apps/notes.txt"), "hi").unwrap();

        let state = store.load().unwrap();
        assert_eq!(state.config, Some(config));
        assert_eq!(state.pods.len(), 2);
        assert!(
            state
                .pods
                .contains_key(&("default".into(), "client".into()))
        );
        assert!(state.namespaces.contains_key("apps"));
        assert!(state.nodes.contains_key("node01"));

        assert!(store.delete(Kind::Pod, "apps", "web-1").unwrap());
        assert!(!store.delete(Kind::Pod, "apps", "web-1").unwrap());
        assert_eq!(store.bump().unwrap(), 2);
        let (generation, state) = store.load_consistent().unwrap();
        assert_eq!(generation, 2);
        assert_eq!(state.pods.len(), 1);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        fs::create_dir_all(dir.path().join("pods/default")).unwrap();
        fs::write(dir.path().join("pods/default/x.json"), "{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
    }

    #[test]
    fn unsafe_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path());
        let pod = Pod {
            metadata: meta(None, "../evil"),
            ..Default::default()
        };
        assert!(matches!(
            store.put(&Object::Pod(pod)),
            Err(ModelError::InvalidName { .. })
        ));
    }
}

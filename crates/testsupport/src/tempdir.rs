//! Temporary directories for stores, certificates and logs, removed when
//! the guard drops (even when the test panics).

use std::path::{Path, PathBuf};

/// A directory under the system temp dir, named `podwire-<tag>-XXXXXX`,
/// removed with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    inner: tempfile::TempDir,
}

impl TempDir {
    /// A new empty directory; `tag` shows in its name, for whoever looks
    /// at a leftover.
    pub fn new(tag: &str) -> TempDir {
        let inner = tempfile::Builder::new()
            .prefix(&format!("podwire-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {tag}: {e}"));
        TempDir { inner }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// A path inside the directory.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.inner.path().join(relative)
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        self.inner.path()
    }
}

//! Starting processes the way a container runtime places them: inside a
//! network namespace, with a private mount namespace where the pod's own
//! resolv.conf and hosts are bind-mounted over /etc, and a UTS namespace
//! carrying the pod's (or node's) hostname. The system calls themselves
//! are `podwire_kernel::process`'s.

use std::path::{Path, PathBuf};
use std::process::Command;

use podwire_kernel::process::Placement;

use crate::error::Result;

/// Where and how a process runs.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// Path of the network namespace file.
    pub netns: Option<String>,
    pub hostname: Option<String>,
    /// (source file, target file) bind mounts, e.g. the pod's resolv.conf
    /// over /etc/resolv.conf.
    pub binds: Vec<(PathBuf, PathBuf)>,
}

/// A `Command` for `program` that will run inside `sandbox`.
pub fn command(program: &Path, sandbox: &Sandbox) -> Result<Command> {
    let mut cmd = Command::new(program);
    apply(&mut cmd, sandbox)?;
    Ok(cmd)
}

/// Puts an existing `Command` into `sandbox`.
pub fn apply(cmd: &mut Command, sandbox: &Sandbox) -> Result<()> {
    Placement::new(
        sandbox.netns.as_deref().map(Path::new),
        sandbox.hostname.as_deref(),
        &sandbox.binds,
    )?
    .install(cmd);
    Ok(())
}

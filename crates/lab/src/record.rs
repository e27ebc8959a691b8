//! What a lab keeps about itself besides the cluster objects: its settings
//! (`lab.json`), read by every `lab` command and by a restarted supervisor.

use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::manifest::LabSpec;
use crate::paths::LabPaths;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub spec: LabSpec,
}

/// Writes `lab.json` (temp file + rename: readers never see half of it).
pub fn save_record(paths: &LabPaths, spec: &LabSpec) -> Result<()> {
    let body = serde_json::to_vec_pretty(&LabRecord { spec: spec.clone() })
        .map_err(|e| LabError::Failed(e.to_string()))?;
    let tmp = paths.lab_file().with_extension("tmp");
    std::fs::write(&tmp, body).map_err(|e| LabError::io("cannot write lab.json", e))?;
    std::fs::rename(&tmp, paths.lab_file()).map_err(|e| LabError::io("cannot write lab.json", e))
}

pub fn load_record(paths: &LabPaths) -> Result<LabRecord> {
    let bytes =
        std::fs::read(paths.lab_file()).map_err(|_| LabError::NoSuchLab(paths.name.clone()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LabError::Failed(format!("corrupt {}: {e}", paths.lab_file().display())))
}

//! What the commands that look at a running lab (`lab trace`, `lab graph`)
//! start from: its record, plan, cluster state and control plane, and the
//! EndpointSlices that belong to one Service.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use podwire_model::ClusterState;

use crate::ControlPlaneMode;
use crate::error::{LabError, Result};
use crate::manifest::LabSpec;
use crate::paths::LabPaths;
use crate::plan::LabPlan;

/// A running lab as these commands read it.
pub struct RunningLab {
    pub paths: LabPaths,
    pub spec: LabSpec,
    pub plan: LabPlan,
    pub state: ClusterState,
    pub mode: ControlPlaneMode,
}

impl RunningLab {
    /// Reads lab `lab`; an error when there is no such lab.
    pub fn open(lab: &str) -> Result<RunningLab> {
        let paths = LabPaths::new(lab)?;
        if !paths.exists() {
            return Err(LabError::NoSuchLab(lab.to_string()));
        }
        let spec = crate::record::load_record(&paths)?.spec;
        let plan = crate::plan::plan_lab(&spec)?;
        let state = crate::state(lab)?;
        let mode = ControlPlaneMode::of(&paths);
        Ok(RunningLab {
            paths,
            spec,
            plan,
            state,
            mode,
        })
    }
}

/// The EndpointSlices of Service `namespace/name` (by the
/// `kubernetes.io/service-name` label, as the proxy reads them).
pub fn slices_of<'a>(
    state: &'a ClusterState,
    namespace: &'a str,
    name: &'a str,
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    state.endpoint_slices.values().filter(move |slice| {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        slice.metadata.namespace.as_deref() == Some(namespace)
            && owner.map(String::as_str) == Some(name)
    })
}

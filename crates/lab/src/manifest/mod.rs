//! Lab manifests: the `Lab` settings document followed by ordinary
//! Kubernetes objects. Only the lab reads them (the components see the
//! objects through the store), so they live here and not in the model.

mod parse;
mod spec;
#[cfg(test)]
mod tests;

pub use parse::{builtin_example, parse_lab, parse_manifest, parse_objects, validate_objects};
pub use spec::{
    BUILTIN_NAMESPACES, ExternalHost, LAB_API_VERSION, LAB_KIND, LabCertificate, LabManifest,
    LabNode, LabSpec, Underlay,
};

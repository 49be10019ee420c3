//! What gpupool knows of the cluster, as plain data: nodes, pods, DaemonSets, ConfigMaps and
//! pools, reduced at watch time to the fields gpupool decides on (the conversions from
//! Kubernetes objects live in `crate::index`), what it remembers between reconciles, and
//! `Observed`, everything one reconcile of one pool reads. Nothing here decides anything.

mod config_maps;
mod daemonsets;
mod dra;
mod nodes;
mod observed;
mod pods;
mod pools;
mod remembered;

pub use config_maps::ConfigMapFacts;
pub use daemonsets::{DaemonSetFacts, PoolOwner, Rollout, format_taint_keys, parse_taint_keys};
pub use dra::{DeviceKind, DeviceTaint, DraDevice, DraGpus, DraNode, IncompletePool};
pub use nodes::{
    NodeCondition, NodeFacts, NodeReadiness, NodeTaint, TaintKey, ValidationRecord,
    ValidationResult,
};
pub use observed::Observed;
pub use pods::{
    ContainerFailure, ContainerHealth, PodFacts, PodPhase, PodRole, Termination, ValidationTarget,
};
pub use pools::PoolRef;
pub use remembered::{ProblemClock, ProblemClocks, Rejection};

use crate::api::Reason;

/// A problem only a change by an admin can fix; reported as Stalled, retried slowly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub reason: Reason,
    pub message: String,
}

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Something gpupool cannot read (its list was refused), so it cannot decide for the pools that
/// depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The kind of object (`ConfigMap`, `Node`, ...).
    pub resource: String,
    pub namespace: Option<String>,
    /// The HTTP status of the refusal (401, 403).
    pub code: u16,
    pub message: String,
}

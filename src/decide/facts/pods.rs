//! The pods gpupool runs (device-plugin pods of its DaemonSets, validation pods), reduced at
//! watch time to what it decides on. Terminating pods count: a plugin pod that is shutting down
//! still holds the node's device-plugin socket, so no other plugin may start there until it is
//! gone.

use k8s_openapi::jiff::Timestamp;

use super::ObjectId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRole {
    Plugin,
    Validation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A pod gpupool runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    pub id: ObjectId,
    pub uid: String,
    pub role: PodRole,
    /// The node it is bound to, once scheduled.
    pub node: Option<String>,
    /// The `gpupool.io/pool` label: which pool it belongs to.
    pub pool_key: Option<String>,
    pub deleting: bool,
    pub phase: PodPhase,
    pub ready: bool,
    pub created: Option<Timestamp>,
    /// Plugin pods: the plugin they run (annotation `gpupool.io/plugin`, see `plugin_identity`).
    pub plugin: Option<String>,
    /// Validation pods: what they validate (from their annotations).
    pub validates: Option<ValidationTarget>,
    /// When its container started (`status.startTime`).
    pub started: Option<Timestamp>,
    /// How its container ended, once it did.
    pub finished: Option<Termination>,
    /// The scheduler found no free `nvidia.com/gpu` for it.
    pub waiting_for_gpu: bool,
}

/// What a validation pod validates: a node on one boot, with one plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationTarget {
    pub node: String,
    pub boot_id: String,
    pub plugin: String,
    /// 1 for the first try on this boot and plugin.
    pub attempt: u32,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub at: Option<Timestamp>,
}

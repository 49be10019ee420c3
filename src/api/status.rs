//! The `GpuPool` status: what gpupool observed and decided, in the shape of the Kubernetes API
//! conventions (conditions keyed by type, `observedGeneration`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::{ConditionStatus, ConditionType};

/// What gpupool observed and decided for the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes selected by `spec.nodeSelector`.
    #[serde(default)]
    pub nodes: i32,
    /// Selected nodes that can run GPU work now: Ready, schedulable, with the expected
    /// `nvidia.com/gpu` allocatable.
    #[serde(default)]
    pub nodes_with_gpus: i32,
    /// Sum of `nvidia.com/gpu` capacity over the selected nodes.
    #[serde(default)]
    pub gpus_capacity: i64,
    /// Sum of `nvidia.com/gpu` allocatable over the selected nodes.
    #[serde(default)]
    pub gpus_allocatable: i64,
    /// What the nodes should have, and in which resource (see `CapacityStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<super::CapacityStatus>,
    /// How the nodes' image was classified: Standard, Specialized, Mixed, or Unknown (no nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_image: Option<String>,
    /// The readiness gate, when `spec.readinessGate` is set (or was, until its taint is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gate: Option<super::GateStatus>,
    /// Validation results, when `spec.validation` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<super::ValidationStatus>,
    /// The device plugin gpupool runs (or deliberately does not run) for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginStatus>,
    /// Nodes that keep the pool from being fully ready, or need an admin's look (at most 20,
    /// sorted by name; `problemNodesTotal` has the full count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub problem_nodes: Vec<ProblemNode>,
    /// How many nodes have problems, including those not listed in `problemNodes`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub problem_nodes_total: i32,
    /// Ready, DevicePluginReady and GpusSchedulable are always present; Reconciling, Stalled and
    /// Conflict only while they are True.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// The device plugin for the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginStatus {
    /// Managed: gpupool runs the plugin DaemonSet. Skipped: it runs none, see `reason`.
    pub mode: PluginMode,
    /// Why this mode (CamelCase).
    pub reason: String,
    /// Why this mode, in words: what was detected on which nodes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The DaemonSet gpupool manages for the pool, as namespace/name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon_set: Option<String>,
    /// The plugin image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Nodes that should run the plugin pod.
    #[serde(default)]
    pub desired: i32,
    /// Nodes whose plugin pod is ready.
    #[serde(default)]
    pub ready: i32,
    /// Nodes running the current pod template.
    #[serde(default)]
    pub updated: i32,
    /// The plugin's rollout (`spec.rollout` strategy GpuVerified): what is replaced where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::RolloutStatus>,
}

/// Whether gpupool runs the device plugin for a pool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PluginMode {
    #[default]
    Managed,
    Skipped,
}

impl PluginMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginMode::Managed => "Managed",
            PluginMode::Skipped => "Skipped",
        }
    }
}

/// A node that needs attention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProblemNode {
    pub name: String,
    /// CamelCase reason, e.g. NoGpuCapacity, FewerGpusThanExpected, AllocatableBelowCapacity,
    /// NotReady, Cordoned, WaitingForGpus, SelectedByOtherPool, ForeignDevicePlugin.
    pub reason: String,
    pub message: String,
    /// When this node's problem began: a problem counts as progress (Reconciling) for the
    /// operator's grace period from then, and as a failure (Stalled) after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// A status condition, as the Kubernetes API conventions define it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// CamelCase, machine-readable.
    pub reason: String,
    /// What happened and what to do next.
    pub message: String,
}

impl GpuPoolStatus {
    /// The condition of this type, if present.
    pub fn condition(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_.as_str())
    }

    /// Whether the condition of this type is present and True.
    pub fn is_true(&self, type_: ConditionType) -> bool {
        self.condition(type_).is_some_and(Condition::is_true)
    }
}

impl Condition {
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True.as_str()
    }

    pub fn has_status(&self, status: ConditionStatus) -> bool {
        self.status == status.as_str()
    }
}

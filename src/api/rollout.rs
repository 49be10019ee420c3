//! How a change of the device plugin reaches the pool's nodes (`spec.rollout`), and the rollout
//! as it stands (`status.devicePlugin.rollout`).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DevicePluginSpec, Mig, Sharing};

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

fn default_progress_deadline() -> i32 {
    600
}

/// How a plugin change (image, environment, resources, sharing or MIG config: anything of the
/// plugin's pod but its tolerations) reaches the nodes. Absent: `GpuVerified` with the defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "type(self.maxUnavailable) == int ? self.maxUnavailable >= 1 : self.maxUnavailable.matches('^([1-9][0-9]?|100)%$')",
     "message": "spec.rollout.maxUnavailable must be a whole number of nodes (at least 1) or a percentage from 1% to 100%"},
]))]
pub struct RolloutSpec {
    /// `GpuVerified` (default): gpupool replaces the plugin node by node and moves on only once
    /// a replaced node's GPUs are back (its new plugin pod ready, its GPUs allocatable again,
    /// validation passed when the pool validates). `DaemonSet`: the DaemonSet's own
    /// RollingUpdate, judged by pod readiness alone.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Nodes of the pool without GPU service for the update at once: a number, or a percentage
    /// of the pool's nodes (rounded down, at least 1).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrString,
    /// How long a replaced node may take to serve its GPUs again before the rollout halts.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub progress_deadline_seconds: i32,
    /// What a halted rollout does: `Halt` (default) touches no further node; `Rollback` also puts
    /// the last plugin that served the pool's GPUs back on the nodes already replaced.
    #[serde(default)]
    pub on_failure: RolloutFailurePolicy,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: RolloutStrategy::default(),
            max_unavailable: default_max_unavailable(),
            progress_deadline_seconds: default_progress_deadline(),
            on_failure: RolloutFailurePolicy::default(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutStrategy {
    #[default]
    GpuVerified,
    DaemonSet,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutFailurePolicy {
    #[default]
    Halt,
    Rollback,
}

/// Where a plugin rollout stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutState {
    /// Every node runs the target plugin.
    #[default]
    Complete,
    /// Nodes are being replaced, `maxUnavailable` at a time.
    Progressing,
    /// A replaced node did not serve its GPUs within the deadline: no further node is touched.
    Halted,
    /// Halted, and the last plugin that served the pool's GPUs is put back (`onFailure:
    /// Rollback`), until the spec changes.
    RolledBack,
}

/// A node being replaced: since when, and how many GPUs it had before.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutNode {
    pub name: String,
    /// When gpupool took its previous plugin off.
    pub since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Its allocatable GPUs then: what it must have again. 0: it had no GPU service then, and
    /// is done once the new plugin runs there.
    #[serde(default)]
    pub gpus_before: i64,
}

/// A node that halted a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HaltedNode {
    pub name: String,
    /// What it shows: its plugin pod, its GPUs, its validation.
    pub message: String,
}

/// A plugin the pool ran, with what it was made from (to put it back).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginRevision {
    /// A hash of the plugin's container and config.
    pub revision: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<Mig>,
}

/// A plugin rollout as it stands: also its record, from which gpupool resumes after a restart.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub state: RolloutState,
    /// The revision the nodes are being brought to (the spec's, or the last good one after a
    /// rollback), and its image.
    pub target_revision: String,
    pub target_image: String,
    /// The revision of the spec that halted (kept until the spec changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted_revision: Option<String>,
    /// Nodes running the target revision.
    #[serde(default)]
    pub updated: i32,
    /// Nodes left to replace: in service and running another plugin, or being replaced (a node
    /// out of service is replaced once it is back; one without a plugin pod gets the target from
    /// the DaemonSet).
    #[serde(default)]
    pub left: i32,
    /// Nodes being replaced now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_progress: Vec<RolloutNode>,
    /// Nodes that did not serve their GPUs again within the deadline, and what they show.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halted: Vec<HaltedNode>,
    /// The last revision that served the pool's GPUs on every node it was rolled to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<PluginRevision>,
}

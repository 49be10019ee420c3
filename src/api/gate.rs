//! The readiness gate and the validation workload of a pool (`spec.readinessGate`,
//! `spec.validation`) and what gpupool reports about them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The default gate taint key.
pub const DEFAULT_GATE_TAINT: &str = "gpupool.io/gpu-not-ready";
/// NVIDIA's CUDA vectorAdd sample, as the NVIDIA device plugin's README runs it to check GPU jobs
/// (NVIDIA/k8s-device-plugin README, "Running GPU Jobs"); it prints `Test PASSED` and exits 0.
pub const DEFAULT_VALIDATION_IMAGE: &str = "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0";

fn default_gate_taint() -> String {
    DEFAULT_GATE_TAINT.into()
}

fn default_validation_image() -> String {
    DEFAULT_VALIDATION_IMAGE.into()
}

fn default_timeout() -> i32 {
    300
}

fn default_max_concurrent() -> i32 {
    5
}

/// Keeps GPU work off a node (a NoSchedule taint) until its GPUs are really usable: Ready,
/// schedulable, its plugin pod ready (or its platform's plugin), `nvidia.com/gpu` allocatable as
/// expected, and the validation workload passed when `spec.validation` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadinessGate {
    /// The taint key (effect NoSchedule). Nodes join with it (AKS `--node-taints`, Karpenter
    /// `startupTaints`). A key under `startup-taint.cluster-autoscaler.kubernetes.io/` is one the
    /// cluster autoscaler ignores when it simulates a scale-up.
    #[serde(default = "default_gate_taint")]
    #[schemars(length(min = 1, max = 316))]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    ))]
    pub taint_key: String,
    /// Bootstrap: the taint is only ever removed (once a node is ready). Continuous: also put
    /// back on a node that stops being ready for longer than the grace period.
    #[serde(default)]
    pub mode: GateMode,
    /// Decide and report, but write no node.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum GateMode {
    #[default]
    Bootstrap,
    Continuous,
}

/// A GPU workload run once on every node (per boot, per plugin) before it counts as ready: the
/// manual procedure's "run a GPU job and read its log", by itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validation {
    /// The image; it must exit 0 when the GPU works. The AKS article's
    /// `mcr.microsoft.com/azuredocs/samples-tf-mnist-demo:gpu` (args `--max_steps 500`) works too.
    #[serde(default = "default_validation_image")]
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
    ))]
    pub image: String,
    /// The command (the image's entrypoint when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<String>,
    /// How long a validation pod may run before it counts as failed.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub timeout_seconds: i32,
    /// Validation pods in flight at once in the pool.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_concurrent: i32,
}

/// The gate as gpupool applies it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// The taint key gpupool manages (kept here so a gate removed from the spec is cleaned up).
    pub taint_key: String,
    pub mode: GateMode,
    #[serde(default)]
    pub dry_run: bool,
    /// Pool nodes carrying the taint now.
    #[serde(default)]
    pub gated_nodes: i32,
    /// Dry run: what gpupool would do now (at most 20 nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would: Vec<String>,
}

/// Validation results over the pool's nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationStatus {
    /// Nodes whose validation passed on their current boot with the current plugin.
    #[serde(default)]
    pub validated: i32,
    /// Nodes being validated or waiting for their turn.
    #[serde(default)]
    pub pending: i32,
    /// Nodes waiting for a free GPU to validate on.
    #[serde(default)]
    pub waiting_for_gpu: i32,
    /// Nodes whose last validation failed (retried with backoff).
    #[serde(default)]
    pub failed: i32,
}

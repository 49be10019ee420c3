//! The `GpuPool` API (`gpupool.io/v1alpha1`): spec, status and the CRD generated from them.
//!
//! Validation lives in the schema (patterns, bounds, enums) and in CEL rules, so the API server
//! rejects a bad GpuPool at admission with a message that names the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod capacity;
mod conditions;
mod gate;
mod rollout;
mod selector;
mod status;

pub use capacity::{
    AksMigProfile, CapacityStatus, DraCapacity, GpusPerNode, Health, Mig, MigResource, MigStrategy,
    ProductCount, Sharing, TimeSlicing,
};
pub use conditions::{ConditionStatus, ConditionType, Reason};
pub use gate::{
    DEFAULT_GATE_TAINT, DEFAULT_VALIDATION_IMAGE, GateMode, GateStatus, ReadinessGate, Validation,
    ValidationStatus,
};
pub use rollout::{
    HaltedNode, PluginRevision, RolloutFailurePolicy, RolloutNode, RolloutSpec, RolloutState,
    RolloutStatus, RolloutStrategy,
};
pub use status::{Condition, DevicePluginStatus, GpuPoolStatus, PluginMode, ProblemNode};

pub const GROUP: &str = "gpupool.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "GpuPool";
/// A Kubernetes quantity ("100m", "128Mi", 2), validated as the built-in types are, since a CRD
/// schema does not check quantities by itself. (The pattern applies to the string form only.)
fn quantity_schema() -> serde_json::Value {
    serde_json::json!({
        "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        "x-kubernetes-int-or-string": true
    })
}

pub const API_VERSION_FULL: &str = "gpupool.io/v1alpha1";

/// A pool of GPU nodes that gpupool makes ready to run GPU work: it deploys the NVIDIA device
/// plugin to the pool's nodes (unless their image already ships one) and reports whether the
/// nodes' `nvidia.com/gpu` resources are schedulable.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "GpuPool",
    plural = "gpupools",
    status = "GpuPoolStatus",
    shortname = "gpool",
    category = "gpu",
    derive = "PartialEq",
    doc = "A pool of GPU nodes that gpupool makes ready to run GPU work (see spec and status).",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether every node of the pool has schedulable GPUs"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes","description":"Nodes selected by the pool"}"#,
    printcolumn = r#"{"name":"GPU-Nodes","type":"integer","jsonPath":".status.nodesWithGpus","description":"Nodes with schedulable GPUs"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.gpusAllocatable","description":"Allocatable nvidia.com/gpu over the pool's nodes"}"#,
    printcolumn = r#"{"name":"Plugin","type":"string","jsonPath":".status.devicePlugin.mode","description":"Managed: gpupool runs the device plugin; Skipped: the node image ships it"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Why the pool is (not) ready"}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","priority":1,"jsonPath":".status.devicePlugin.rollout.state","description":"The device plugin's rollout: Complete, Progressing, Halted or RolledBack"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","priority":1,"jsonPath":".status.devicePlugin.rollout.updated","description":"Nodes running the rollout's target plugin"}"#,
    printcolumn = r#"{"name":"Left","type":"integer","priority":1,"jsonPath":".status.devicePlugin.rollout.left","description":"Nodes still running another plugin"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.devicePlugin) || !has(self.devicePlugin.image) || self.nodeImage != 'Specialized'",
     "message": "spec.devicePlugin.image has no effect when spec.nodeImage is Specialized (the node image ships the device plugin); remove it or set nodeImage to Auto or Standard"},
    {"rule": "!(has(self.sharing) || has(self.mig)) || self.nodeImage != 'Specialized'",
     "message": "spec.sharing and spec.mig configure gpupool's device plugin, which a Specialized pool does not run; remove them or set nodeImage to Auto or Standard"},
    {"rule": "!has(self.sharing) || !has(self.mig) || self.mig.strategy != 'mixed'",
     "message": "spec.sharing.timeSlicing shares nvidia.com/gpu, which spec.mig.strategy mixed does not advertise (its devices are nvidia.com/mig-*): use strategy single, or no sharing"},
    {"rule": "!(has(self.sharing) || has(self.mig)) || !has(self.devicePlugin) || !has(self.devicePlugin.env) || !self.devicePlugin.env.exists(e, e.name in ['CONFIG_FILE', 'MIG_STRATEGY'])",
     "message": "spec.devicePlugin.env must not set CONFIG_FILE or MIG_STRATEGY when spec.sharing or spec.mig is set: gpupool sets the plugin's config from those fields"},
    {"rule": "!has(self.mig) || !has(self.mig.profile) || self.mig.strategy != 'none'",
     "message": "spec.mig.profile needs spec.mig.strategy single or mixed: with none the plugin advertises no MIG device"},
    {"rule": "!has(self.allocation) || self.allocation != 'Dra' || !(has(self.devicePlugin) || has(self.sharing) || has(self.mig))",
     "message": "spec.devicePlugin, spec.sharing and spec.mig configure the device plugin, which a pool with spec.allocation Dra does not run: remove them (the DRA driver's own configuration decides sharing and MIG)"},
    {"rule": "!has(self.allocation) || self.allocation != 'Dra' || self.nodeImage != 'Specialized'",
     "message": "spec.nodeImage Specialized means the node image ships the device plugin, which a pool with spec.allocation Dra must not run: use nodeImage Auto or Standard"},
]))]
pub struct GpuPoolSpec {
    /// Which nodes form the pool, as a standard label selector (matchLabels and/or
    /// matchExpressions). It must select something: an empty selector would claim every node of
    /// the cluster. On AKS select the node pool, e.g. `matchLabels: {kubernetes.azure.com/agentpool: gpu}`.
    pub node_selector: PoolSelector,

    /// Whether the nodes' image already ships the NVIDIA device plugin. `Auto` (default) decides per
    /// node from the AKS label `kubernetes.azure.com/node-image-version` (a GPU-dedicated image
    /// definition such as `AKSUbuntu-1804gpucontainerd-…` ships the plugin); `Standard` always
    /// deploys the plugin; `Specialized` never does (AKS specialized GPU image, `--gpu-driver none`
    /// pools with their own plugin, or a managed GPU add-on).
    #[serde(default)]
    pub node_image: NodeImage,

    /// How the pool's GPUs reach pods. `Auto` (default): the NVIDIA device plugin
    /// (`nvidia.com/gpu`), except on nodes where NVIDIA's GPU DRA driver publishes
    /// ResourceSlices: those get no plugin and are counted from their slices. `DevicePlugin`:
    /// the device plugin on every node (a DRA driver on a node keeps the plugin off it and is
    /// reported). `Dra`: NVIDIA's GPU DRA driver (installed separately): gpupool runs no plugin,
    /// counts GPUs from the ResourceSlices, validates through a ResourceClaim, and labels each
    /// node `gpupool.io/dra=<pool>` once no device plugin runs there, for the driver's kubelet
    /// plugin to select. Changing it hands the nodes over one by one (`spec.rollout` paces it).
    #[serde(default)]
    pub allocation: Allocation,

    /// How the device plugin DaemonSet is run on the pool's nodes (ignored when no plugin is deployed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_plugin: Option<DevicePluginSpec>,

    /// The GPUs each node must have (e.g. 4 for Standard_NC24); with sharing or MIG the expected
    /// allocatable is derived from it. A node with fewer is reported and keeps the pool from
    /// being Ready. When unset, each node's count comes from a provisioner's GPU-count label
    /// (AKS node auto-provisioning's `karpenter.azure.com/sku-gpu-count`) or its VM size
    /// (`node.kubernetes.io/instance-type`, Azure's documented GPU sizes), else at least one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub expected_gpus_per_node: Option<i32>,

    /// Keep GPU work off nodes (a taint) until their GPUs are usable. Absent: gpupool never
    /// touches node taints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gate: Option<ReadinessGate>,

    /// Run a GPU workload on every node before it counts as ready. Absent: no validation pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,

    /// Share each GPU between several pods (time-slicing). Expected allocatable becomes the
    /// physical GPUs times `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,

    /// How MIG devices are advertised (for node pools created with a GPU instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<Mig>,

    /// More node conditions that report GPU faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,

    /// How a change of the device plugin reaches the nodes. Absent: node by node, verified by
    /// GPUs, one node at a time, halting after 10 minutes without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// A standard Kubernetes label selector. The requirements are ANDed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
     "message": "spec.nodeSelector must not be empty: set matchLabels or matchExpressions (an empty selector would select every node), e.g. matchLabels: {kubernetes.azure.com/agentpool: gpu}"},
]))]
pub struct PoolSelector {
    /// Labels a node must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 63, "pattern": "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"}))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.all(k, k.size() <= 316 && k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$'))",
         "message": "spec.nodeSelector.matchLabels: every key must be a valid label key ([prefix/]name, name at most 63 characters of alphanumerics, '-', '_' or '.')"},
    ]))]
    pub match_labels: BTreeMap<String, String>,

    /// Label requirements a node must meet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a label selector: `key operator values`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
     "message": "spec.nodeSelector.matchExpressions[].values must be non-empty for operators In and NotIn and must be empty for Exists and DoesNotExist"},
]))]
pub struct SelectorRequirement {
    /// The label key.
    #[schemars(length(min = 1, max = 316))]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
    ))]
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// The values for In and NotIn; empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("items" = {"type": "string", "maxLength": 63, "pattern": "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"}))]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What the pool's node image provides.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum NodeImage {
    /// Detect per node from `kubernetes.azure.com/node-image-version`.
    #[default]
    Auto,
    /// A standard image: gpupool deploys the device plugin.
    Standard,
    /// An image that ships the device plugin: gpupool deploys none.
    Specialized,
}

/// Which NVIDIA software advertises the pool's GPUs to the scheduler.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Allocation {
    /// The device plugin, or DRA on nodes where the DRA driver already publishes GPUs.
    #[default]
    Auto,
    /// The NVIDIA device plugin (`nvidia.com/gpu` and friends).
    DevicePlugin,
    /// Dynamic Resource Allocation through NVIDIA's GPU DRA driver (`gpu.nvidia.com`).
    Dra,
}

/// How the NVIDIA device plugin DaemonSet is run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePluginSpec {
    /// The device plugin image. Defaults to the operator's `--default-plugin-image`
    /// (`nvcr.io/nvidia/k8s-device-plugin:v0.18.0`). The AKS article's
    /// `mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11` also works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
    ))]
    pub image: Option<String>,

    /// Tolerations added to the plugin pods, beside the ones gpupool derives from the NoSchedule
    /// and NoExecute taints found on the pool's nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<PluginToleration>,

    /// PriorityClass of the plugin pods. Defaults to `system-node-critical`, so the plugin is not
    /// evicted before the workloads that need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub priority_class_name: Option<String>,

    /// Compute resources of the plugin container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<PluginResources>,

    /// Environment variables of the plugin container (e.g. `DEVICE_LIST_STRATEGY`,
    /// `PASS_DEVICE_SPECS`): `name` with `value` or `valueFrom.fieldRef`. Secrets, ConfigMaps and
    /// resource fields are not accepted: the plugin needs none, and a GpuPool must not become a
    /// way to read them on every GPU node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<PluginEnvVar>,
}

/// An environment variable of the plugin container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(transparent)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.valueFrom) || !has(self.valueFrom.secretKeyRef)",
     "message": "spec.devicePlugin.env[].valueFrom.secretKeyRef is not allowed: the device plugin reads no Secrets; set value or valueFrom.fieldRef"},
    {"rule": "!has(self.valueFrom) || !has(self.valueFrom.configMapKeyRef)",
     "message": "spec.devicePlugin.env[].valueFrom.configMapKeyRef is not allowed: set value or valueFrom.fieldRef"},
    {"rule": "!has(self.valueFrom) || !has(self.valueFrom.resourceFieldRef)",
     "message": "spec.devicePlugin.env[].valueFrom.resourceFieldRef is not allowed: set value or valueFrom.fieldRef"},
    {"rule": "!has(self.valueFrom) || !has(self.valueFrom.fileKeyRef)",
     "message": "spec.devicePlugin.env[].valueFrom.fileKeyRef is not allowed: set value or valueFrom.fieldRef"},
]))]
pub struct PluginEnvVar(pub EnvVar);

/// Requests and limits of the plugin container, e.g. `requests: {cpu: 10m, memory: 32Mi}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginResources {
    /// The most the plugin container may use.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[schemars(extend("additionalProperties" = quantity_schema()))]
    pub limits: BTreeMap<String, Quantity>,
    /// What the scheduler reserves for the plugin container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    #[schemars(extend("additionalProperties" = quantity_schema()))]
    pub requests: BTreeMap<String, Quantity>,
}

impl PluginResources {
    pub fn to_requirements(&self) -> ResourceRequirements {
        ResourceRequirements {
            limits: (!self.limits.is_empty()).then(|| self.limits.clone()),
            requests: (!self.requests.is_empty()).then(|| self.requests.clone()),
            claims: None,
        }
    }
}

/// A toleration for the plugin pods.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
     "message": "spec.devicePlugin.tolerations[].value must be empty when operator is Exists"},
    {"rule": "self.operator != 'Equal' || (has(self.key) && self.key != '')",
     "message": "spec.devicePlugin.tolerations[].key is required when operator is Equal"},
]))]
pub struct PluginToleration {
    /// The taint key; empty with operator Exists tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 316))]
    pub key: Option<String>,
    /// Equal (default) or Exists.
    #[serde(default)]
    pub operator: TolerationOperator,
    /// The taint value, for operator Equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute; empty matches every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// For NoExecute: how long the pod stays bound after the taint appears; unset means forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub toleration_seconds: Option<i64>,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum TolerationOperator {
    #[default]
    Equal,
    Exists,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

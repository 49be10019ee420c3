//! What a pool's GPUs are and how they are shared: GPU sharing (`spec.sharing`), MIG
//! (`spec.mig`) and GPU health (`spec.health`), and what gpupool reports about them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the pool's GPUs are shared by pods: the NVIDIA device plugin's `sharing` config, rendered
/// by gpupool into a ConfigMap for the pool's plugin. (CUDA MPS is not offered: it needs NVIDIA's
/// privileged MPS control daemon on every node, see the README.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sharing {
    /// CUDA time-slicing: each GPU is advertised `replicas` times; pods take turns on it, with
    /// no memory or fault isolation between them.
    pub time_slicing: TimeSlicing,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeSlicing {
    /// How many pods may share one GPU (the plugin requires at least 2).
    #[schemars(range(min = 2, max = 1024))]
    pub replicas: i32,
    /// Advertise the shared GPUs as `nvidia.com/gpu.shared` instead of `nvidia.com/gpu`, so pods
    /// ask for a shared GPU explicitly.
    #[serde(default)]
    pub rename_by_default: bool,
    /// Fail a pod that asks for more than one shared GPU (more replicas of one GPU give it no
    /// more compute).
    #[serde(default)]
    pub fail_requests_greater_than_one: bool,
}

/// Multi-Instance GPU: how the plugin advertises the MIG devices of the nodes (AKS partitions
/// the GPUs of a node pool created with `--gpu-instance-profile`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mig {
    /// `none`: MIG devices are not advertised. `single`: every MIG device as `nvidia.com/gpu`.
    /// `mixed`: as `nvidia.com/mig-<profile>` (e.g. `nvidia.com/mig-1g.10gb`), and
    /// `nvidia.com/gpu` is 0 by design.
    pub strategy: MigStrategy,
    /// The AKS GPU instance profile of the node pool (`az aks nodepool add
    /// --gpu-instance-profile`): how many MIG devices each GPU is split into, and their profile
    /// name, so that a missing one is noticed. Unset: at least one MIG device per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<AksMigProfile>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MigStrategy {
    #[default]
    None,
    Single,
    Mixed,
}

impl MigStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MigStrategy::None => "none",
            MigStrategy::Single => "single",
            MigStrategy::Mixed => "mixed",
        }
    }
}

/// AKS GPU instance profiles: GPU-instance profile 19, 14, 9, 5 or 0 on every GPU of the node
/// (AgentBaker `mig-partition.sh`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AksMigProfile {
    MIG1g,
    MIG2g,
    MIG3g,
    MIG4g,
    MIG7g,
}

/// Where GPU faults are read from, besides `nvidia.com/gpu` itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// More node condition types that report a GPU fault when True (for your own
    /// node-problem-detector checks). The AKS ones are always read: GPUMissing, XIDErrors
    /// (GPUXIDErrors), NVLinkStatusInactive, GPUClockThrottling, IBLinkFlapping,
    /// UnhealthyNvidiaDevicePlugin, UnhealthyNvidiaDCGMServices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("items" = {"type": "string", "minLength": 1, "maxLength": 316,
        "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"}))]
    pub node_conditions: Vec<String>,
}

impl super::GpuPoolSpec {
    /// The node condition types the pool counts as GPU faults beyond AKS's own.
    pub fn fault_conditions(&self) -> &[String] {
        self.health
            .as_ref()
            .map(|h| h.node_conditions.as_slice())
            .unwrap_or_default()
    }
}

/// What the pool's GPUs amount to (status).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityStatus {
    /// The resource the pool's GPUs are counted in: `nvidia.com/gpu`, `nvidia.com/gpu.shared`
    /// (time-slicing renamed), or `nvidia.com/mig-*` (MIG mixed: the sum of every profile).
    pub resource: String,
    /// What the in-service nodes should have allocatable in total, each node's expectation
    /// derived from `spec.expectedGpusPerNode`, a provisioner's GPU-count label or the VM size.
    pub expected: i64,
    /// Physical GPUs behind them, where known (with sharing: expected / replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_gpus: Option<i64>,
    /// Time-slicing in effect: how many pods share a GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// VM sizes of the pool's nodes whose GPU count gpupool does not know (at most 10): their
    /// nodes are expected to have at least one; set `spec.expectedGpusPerNode` to be exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_sizes: Vec<String>,
    /// MIG mixed: allocatable per `nvidia.com/mig-<profile>` resource over the pool's nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub mig_resources: Vec<MigResource>,
    /// The nodes whose GPUs NVIDIA's GPU DRA driver publishes (ResourceSlices), when there are any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dra: Option<DraCapacity>,
}

/// The pool's GPUs as the DRA driver publishes them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DraCapacity {
    /// The DRA driver (`gpu.nvidia.com`).
    pub driver: String,
    /// The DeviceClasses that select its devices (e.g. `gpu.nvidia.com`, `mig.nvidia.com`):
    /// what a ResourceClaim names to get one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_classes: Vec<String>,
    /// Nodes counted from their ResourceSlices.
    pub nodes: i32,
    /// Physical GPUs in their complete slice pools.
    pub gpus: i64,
    /// Of those, GPUs no device taint keeps from new claims.
    pub usable: i64,
    /// How many nodes have how many GPUs (e.g. 48 nodes with 8, 2 with 7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["gpus"]))]
    pub gpus_per_node: Vec<GpusPerNode>,
    /// The GPU product names published, with how many nodes show each (a pool of H100 nodes
    /// with one A100 among them shows two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub products: Vec<ProductCount>,
    /// MIG devices published per profile: `capacity` published, `allocatable` untainted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub mig_devices: Vec<MigResource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpusPerNode {
    pub gpus: i64,
    pub nodes: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductCount {
    pub name: String,
    pub nodes: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigResource {
    pub name: String,
    pub capacity: i64,
    pub allocatable: i64,
}

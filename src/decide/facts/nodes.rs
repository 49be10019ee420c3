//! The few facts about a Node that gpupool decides on (read from the Node in
//! `crate::index::convert`), and the validation record gpupool keeps on it.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::decide::names::{GPU_RESOURCE, MIG_RESOURCE_PREFIX};

/// A node as gpupool sees it: plain data, built from the API object at watch time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<NodeTaint>,
    pub unschedulable: bool,
    pub ready: NodeReadiness,
    /// When the node's Ready condition last changed status.
    pub ready_since: Option<Timestamp>,
    /// `nvidia.com/gpu` capacity; None when the node reports none at all.
    pub gpu_capacity: Option<i64>,
    pub gpu_allocatable: Option<i64>,
    /// Other `nvidia.com/*` resources (`nvidia.com/gpu.shared`, `nvidia.com/mig-1g.10gb`, ...):
    /// name -> (capacity, allocatable).
    pub other_gpu_resources: BTreeMap<String, (i64, i64)>,
    /// Node conditions other than the kubelet's own (node-problem-detector's GPU checks among
    /// them), without their heartbeat times.
    pub conditions: Vec<NodeCondition>,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    /// `status.nodeInfo.bootID`: a new one means the node rebooted.
    pub boot_id: String,
    /// The last validation result gpupool recorded on the node (annotation `gpupool.io/validation`).
    pub validation: Option<ValidationRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeCondition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTaint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeReadiness {
    Ready,
    NotReady,
    Unknown,
}

/// A taint key and effect the plugin tolerates (whatever the value: values change, the key says
/// what the taint is for).
pub type TaintKey = (String, String);

impl NodeFacts {
    /// (capacity, allocatable) of any `nvidia.com/*` resource, zero when not reported.
    pub fn resource(&self, name: &str) -> (i64, i64) {
        if name == GPU_RESOURCE {
            return (self.gpus_capacity(), self.gpus_allocatable());
        }
        self.other_gpu_resources
            .get(name)
            .copied()
            .unwrap_or((0, 0))
    }

    /// (capacity, allocatable) summed over the MIG resources (`nvidia.com/mig-*`).
    pub fn mig_total(&self) -> (i64, i64) {
        self.other_gpu_resources
            .iter()
            .filter(|(name, _)| name.starts_with(MIG_RESOURCE_PREFIX))
            .fold((0, 0), |(c, a), (_, (rc, ra))| {
                (c.saturating_add(*rc), a.saturating_add(*ra))
            })
    }

    /// `nvidia.com/gpu` allocatable, treating "not reported" as zero.
    pub fn gpus_allocatable(&self) -> i64 {
        self.gpu_allocatable.unwrap_or(0)
    }

    pub fn gpus_capacity(&self) -> i64 {
        self.gpu_capacity.unwrap_or(0)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValidationResult {
    Passed,
    Failed,
}

/// A validation result, as recorded on the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ValidationRecord {
    pub pool: String,
    pub boot_id: String,
    pub plugin: String,
    pub result: ValidationResult,
    pub attempts: u32,
    pub at: Timestamp,
    /// The pod (uid) the result came from, so one pod's result is recorded once.
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub message: String,
}

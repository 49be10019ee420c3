//! A DaemonSet as gpupool sees it: its own plugin DaemonSets and other device plugins.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;

use super::{ObjectId, TaintKey};

/// The GpuPool that controls a DaemonSet (its controller owner reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOwner {
    pub name: String,
    pub uid: String,
}

/// How far the DaemonSet controller got with a DaemonSet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
}

/// A DaemonSet, reduced at watch time to what gpupool decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSetFacts {
    pub id: ObjectId,
    pub uid: String,
    pub deleting: bool,
    /// Set when a GpuPool controls it.
    pub pool_owner: Option<PoolOwner>,
    /// The desired-state hash gpupool put on it (ours only).
    pub desired_hash: Option<String>,
    /// Field managers other than gpupool that own fields of its spec (ours only): someone edited it.
    pub spec_editors: Vec<String>,
    /// The taint keys its plugin tolerates beyond the base ones (ours only).
    pub tolerated: BTreeSet<TaintKey>,
    pub rollout: Rollout,
    /// The pod template of a device plugin (ours included: when its pool is gone it counts as
    /// foreign until collected), to tell where its pods run. None for other DaemonSets.
    pub plugin_pod: Option<PodSpec>,
    /// The labels its pods are selected by (device plugins gpupool does not own), to find the
    /// pods still terminating once it is deleted.
    pub pod_selector: BTreeMap<String, String>,
}

impl DaemonSetFacts {
    /// Whether this is a device plugin a pool must keep its own plugin away from: one gpupool
    /// does not control, or one whose GpuPool is gone (its pods run until the garbage collector
    /// removes them, so a younger overlapping pool must not take its nodes before that).
    pub fn is_foreign_plugin(&self, live_pool_uids: &std::collections::HashSet<&str>) -> bool {
        match &self.pool_owner {
            Some(owner) => !live_pool_uids.contains(owner.uid.as_str()),
            None => self.plugin_pod.is_some(),
        }
    }

    /// Whether the GpuPool with this uid controls it.
    pub fn controlled_by(&self, pool_uid: &str) -> bool {
        self.pool_owner.as_ref().is_some_and(|o| o.uid == pool_uid)
    }
}

/// `key:effect,key:effect`, sorted (taint keys hold no `:` or `,`).
pub fn format_taint_keys(keys: &BTreeSet<TaintKey>) -> String {
    keys.iter()
        .map(|(k, e)| format!("{k}:{e}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_taint_keys(text: &str) -> BTreeSet<TaintKey> {
    text.split(',')
        .filter_map(|pair| pair.split_once(':'))
        .filter(|(k, e)| !k.is_empty() && !e.is_empty())
        .map(|(k, e)| (k.to_string(), e.to_string()))
        .collect()
}

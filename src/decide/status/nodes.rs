//! How each node of a pool stands, and the pool's nodes summed up: who serves GPUs, who is
//! waiting, who fails, and the problem nodes an admin should look at.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{ProblemNode, Reason};
use crate::decide::claims::NodeClaims;
use crate::decide::nodes::{NodeFacts, NodeReadiness};

/// How one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeHealth {
    /// Ready, schedulable, with the GPUs it should have.
    Serving,
    /// Serving, but an admin should look (e.g. some GPUs unhealthy).
    Degraded(Reason, String),
    /// Joined recently and has no GPUs yet: progressing until the grace period ends.
    Waiting(Timestamp),
    /// Cannot run GPU work.
    Failing(Reason, String),
    /// Cordoned or being deleted: deliberately out of service, not counted against the pool.
    OutOfService(Reason, String),
}

/// What a node's health is judged against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expectations {
    pub expected_gpus: Option<i32>,
    pub now: Timestamp,
    pub grace: Duration,
}

pub(super) fn node_health(node: &NodeFacts, e: Expectations) -> NodeHealth {
    if node.deleting {
        return NodeHealth::OutOfService(Reason::Deleting, "the node is being deleted".into());
    }
    if node.unschedulable {
        return NodeHealth::OutOfService(
            Reason::Cordoned,
            "the node is cordoned (spec.unschedulable); uncordon it to run GPU work there".into(),
        );
    }
    if node.ready != NodeReadiness::Ready {
        return NodeHealth::Failing(
            Reason::NotReady,
            "the node is not Ready: check the kubelet (kubectl describe node)".into(),
        );
    }
    let required = i64::from(e.expected_gpus.unwrap_or(1).max(1));
    let (capacity, allocatable) = (node.gpus_capacity(), node.gpus_allocatable());
    if allocatable < required {
        let grace_ends = node.created.and_then(|c| {
            c.checked_add(SignedDuration::try_from(e.grace).unwrap_or(SignedDuration::MAX))
                .ok()
        });
        if let Some(ends) = grace_ends.filter(|ends| *ends > e.now) {
            return NodeHealth::Waiting(ends);
        }
        return missing_gpus(capacity, allocatable, required, e.expected_gpus.is_some());
    }
    if allocatable < capacity {
        return NodeHealth::Degraded(
            Reason::AllocatableBelowCapacity,
            format!(
                "{allocatable} of {capacity} nvidia.com/gpu allocatable: some GPUs are unhealthy"
            ),
        );
    }
    NodeHealth::Serving
}

fn missing_gpus(capacity: i64, allocatable: i64, required: i64, explicit: bool) -> NodeHealth {
    if capacity == 0 {
        NodeHealth::Failing(
            Reason::NoGpuCapacity,
            "the node reports no nvidia.com/gpu capacity: the device plugin is not running there or found no GPU (check the plugin pod's log and the NVIDIA driver)".into(),
        )
    } else if explicit {
        NodeHealth::Failing(
            Reason::FewerGpusThanExpected,
            format!(
                "{allocatable} nvidia.com/gpu allocatable (capacity {capacity}), spec.expectedGpusPerNode is {required}: GPUs may have fallen off the bus or be unhealthy"
            ),
        )
    } else {
        NodeHealth::Failing(
            Reason::NoAllocatableGpus,
            format!(
                "capacity {capacity} nvidia.com/gpu but none allocatable: the device plugin reports the GPUs unhealthy (check the plugin pod's log and nvidia-smi)"
            ),
        )
    }
}

/// The pool's nodes summed up. Name lists are sorted: the same nodes always give the same
/// status (the node cache's order changes as nodes come and go), so nothing is rewritten.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeSummary {
    /// Nodes that can run GPU work now.
    pub serving: Vec<String>,
    /// Nodes neither cordoned nor being deleted.
    pub in_service: usize,
    pub failing: Vec<(String, Reason)>,
    pub waiting: Vec<String>,
    /// When the first waiting node's grace period ends.
    pub next_grace_end: Option<Timestamp>,
    pub problems: BTreeMap<String, ProblemNode>,
    pub gpus_capacity: i64,
    pub gpus_allocatable: i64,
}

impl NodeSummary {
    fn problem(&mut self, node: &str, reason: Reason, message: String) {
        self.problems
            .entry(node.to_string())
            .or_insert(ProblemNode {
                name: node.into(),
                reason: reason.to_string(),
                message,
            });
    }
}

pub(super) fn summarize(nodes: &[&NodeFacts], e: Expectations, claims: &NodeClaims) -> NodeSummary {
    let mut s = NodeSummary::default();
    for node in nodes {
        // Saturating: a node may report any integer the API server accepts (up to i64::MAX).
        s.gpus_capacity = s.gpus_capacity.saturating_add(node.gpus_capacity());
        s.gpus_allocatable = s.gpus_allocatable.saturating_add(node.gpus_allocatable());
        let health = node_health(node, e);
        if !matches!(health, NodeHealth::OutOfService(..)) {
            s.in_service += 1;
        }
        match health {
            NodeHealth::Serving => s.serving.push(node.name.clone()),
            NodeHealth::Degraded(reason, message) => {
                s.serving.push(node.name.clone());
                s.problem(&node.name, reason, message);
            }
            NodeHealth::Waiting(ends) => {
                s.waiting.push(node.name.clone());
                s.next_grace_end = Some(s.next_grace_end.map_or(ends, |t| t.min(ends)));
                let message =
                    format!("joined recently and has no nvidia.com/gpu yet; expected by {ends}");
                s.problem(&node.name, Reason::WaitingForGpus, message);
            }
            NodeHealth::Failing(reason, message) => {
                s.failing.push((node.name.clone(), reason));
                s.problem(&node.name, reason, message);
            }
            NodeHealth::OutOfService(reason, message) => s.problem(&node.name, reason, message),
        }
    }
    s.serving.sort();
    s.failing.sort();
    s.waiting.sort();
    claim_problems(&mut s, claims);
    s
}

fn claim_problems(s: &mut NodeSummary, claims: &NodeClaims) {
    for (node, pool) in &claims.served_by_other_pool {
        let message = format!(
            "also selected by the older GpuPool {pool}, which serves it; make the selectors disjoint"
        );
        s.problem(node, Reason::SelectedByOtherPool, message);
    }
    for (node, pools) in &claims.also_selected_by {
        let message = format!(
            "also selected by GpuPool {}; this pool serves it; make the selectors disjoint",
            pools.join(", ")
        );
        s.problem(node, Reason::SelectedByOtherPool, message);
    }
    for (node, plugins) in &claims.foreign_plugins {
        let message = format!(
            "device plugin DaemonSet {} (not managed by gpupool) runs here",
            plugins.join(", ")
        );
        s.problem(node, Reason::ForeignDevicePlugin, message);
    }
}

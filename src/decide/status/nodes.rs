//! How each node of a pool stands, and the pool's nodes summed up: who serves GPUs, who is
//! waiting, who fails, and the problem nodes an admin should look at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{ProblemNode, Reason};
use crate::decide::claims::NodeClaims;
use crate::decide::model::ProblemClocks;
use crate::decide::nodes::{NodeFacts, NodeReadiness};

/// How one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeHealth {
    /// Ready, schedulable, with the GPUs it should have.
    Serving,
    /// Serving, but an admin should look (e.g. some GPUs unhealthy).
    Degraded(Reason, String),
    /// Cannot run GPU work yet, but its problem began less than a grace period ago (it joined,
    /// rebooted, or its plugin restarted): progress until `until`.
    Waiting {
        reason: Reason,
        message: String,
        since: Timestamp,
        until: Timestamp,
    },
    /// Cannot run GPU work, for longer than the grace period.
    Failing {
        reason: Reason,
        message: String,
        since: Timestamp,
    },
    /// Cordoned or being deleted: deliberately out of service, not counted against the pool.
    OutOfService(Reason, String),
}

/// What a node's health is judged against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expectations<'a> {
    pub expected_gpus: Option<i32>,
    pub now: Timestamp,
    pub grace: Duration,
    /// When each problem node's problem began, as last reported.
    pub previous: &'a ProblemClocks,
    /// Whether gpupool reported on the pool before. Without that history a problem's start is
    /// unknown and taken to be the node's creation; with it, a problem not reported before
    /// began now.
    pub history: bool,
}

impl Expectations<'_> {
    /// When this node's current problem began: kept from the previous status while the problem
    /// stays of the same kind; else the node's own record (its Ready transition, its creation
    /// for a node that just joined); else now.
    fn problem_since(&self, node: &NodeFacts, reason: Reason, own: Option<Timestamp>) -> Timestamp {
        let same_kind = |r: &str| {
            r.parse::<Reason>()
                .is_ok_and(|r| gpu_problem(r) == gpu_problem(reason))
        };
        let unknown = if self.history { None } else { node.created };
        self.previous
            .get(&node.name)
            .filter(|p| same_kind(&p.reason))
            .map(|p| p.since)
            .or(own)
            .or(unknown)
            .unwrap_or(self.now)
    }

    fn grace_ends(&self, since: Timestamp) -> Timestamp {
        since
            .checked_add(SignedDuration::try_from(self.grace).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX)
    }
}

/// NotReady is one kind of problem; every way of lacking GPUs is another.
fn gpu_problem(reason: Reason) -> bool {
    reason != Reason::NotReady
}

pub(super) fn node_health(node: &NodeFacts, e: Expectations, dra: bool) -> NodeHealth {
    if node.deleting {
        return NodeHealth::OutOfService(Reason::Deleting, "the node is being deleted".into());
    }
    if node.unschedulable {
        return NodeHealth::OutOfService(
            Reason::Cordoned,
            "the node is cordoned (spec.unschedulable); uncordon it to run GPU work there".into(),
        );
    }
    let (reason, message, own_since) = if node.ready != NodeReadiness::Ready {
        let message =
            "the node is not Ready: check the kubelet (kubectl describe node)".to_string();
        (Reason::NotReady, message, node.ready_since)
    } else if dra {
        // GPUs published through DRA: nvidia.com/gpu stays 0 by design.
        return NodeHealth::Serving;
    } else {
        match gpu_shortfall(node, e.expected_gpus) {
            Ok(None) => return NodeHealth::Serving,
            Ok(Some(degraded)) => return degraded,
            Err((reason, message)) => {
                // A node that just joined has had no GPUs since it was created.
                let joined = node.created.filter(|c| e.grace_ends(*c) > e.now);
                (reason, message, joined)
            }
        }
    };
    let since = e.problem_since(node, reason, own_since);
    let until = e.grace_ends(since);
    if until > e.now {
        NodeHealth::Waiting {
            reason,
            message,
            since,
            until,
        }
    } else {
        NodeHealth::Failing {
            reason,
            message,
            since,
        }
    }
}

/// Ok(None): the GPUs it should have; Ok(Some(degraded)): enough, but some unhealthy;
/// Err: not enough, and why.
fn gpu_shortfall(
    node: &NodeFacts,
    expected: Option<i32>,
) -> Result<Option<NodeHealth>, (Reason, String)> {
    let required = i64::from(expected.unwrap_or(1).max(1));
    let (capacity, allocatable) = (node.gpus_capacity(), node.gpus_allocatable());
    if allocatable >= required {
        return Ok((allocatable < capacity).then(|| {
            NodeHealth::Degraded(
                Reason::AllocatableBelowCapacity,
                format!("{allocatable} of {capacity} nvidia.com/gpu allocatable: some GPUs are unhealthy"),
            )
        }));
    }
    Err(if capacity == 0 {
        (
            Reason::NoGpuCapacity,
            "the node reports no nvidia.com/gpu capacity: the device plugin is not running there or found no GPU (check the plugin pod's log and the NVIDIA driver)".into(),
        )
    } else if expected.is_some() {
        (
            Reason::FewerGpusThanExpected,
            format!(
                "{allocatable} nvidia.com/gpu allocatable (capacity {capacity}), spec.expectedGpusPerNode is {required}: GPUs may have fallen off the bus or be unhealthy"
            ),
        )
    } else {
        (
            Reason::NoAllocatableGpus,
            format!(
                "capacity {capacity} nvidia.com/gpu but none allocatable: the device plugin reports the GPUs unhealthy (check the plugin pod's log and nvidia-smi)"
            ),
        )
    })
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
    pub waiting: Vec<(String, Reason)>,
    /// When the first waiting node's grace period ends.
    pub next_grace_end: Option<Timestamp>,
    pub problems: BTreeMap<String, ProblemNode>,
    pub gpus_capacity: i64,
    pub gpus_allocatable: i64,
}

impl NodeSummary {
    pub(super) fn problem(
        &mut self,
        node: &str,
        reason: Reason,
        message: String,
        since: Option<Timestamp>,
    ) {
        self.problems
            .entry(node.to_string())
            .or_insert(ProblemNode {
                name: node.into(),
                reason: reason.to_string(),
                message,
                // Whole seconds, as the API server stores times: the same problem, the same status.
                since: since.map(|t| Time(Timestamp::from_second(t.as_second()).unwrap_or(t))),
            });
    }
}

pub(super) fn summarize(
    nodes: &[&NodeFacts],
    e: Expectations,
    claims: &NodeClaims,
    dra_nodes: &BTreeSet<&str>,
) -> NodeSummary {
    let mut s = NodeSummary::default();
    for node in nodes {
        // Saturating: a node may report any integer the API server accepts (up to i64::MAX).
        s.gpus_capacity = s.gpus_capacity.saturating_add(node.gpus_capacity());
        s.gpus_allocatable = s.gpus_allocatable.saturating_add(node.gpus_allocatable());
        let health = node_health(node, e, dra_nodes.contains(node.name.as_str()));
        if !matches!(health, NodeHealth::OutOfService(..)) {
            s.in_service += 1;
        }
        match health {
            NodeHealth::Serving => s.serving.push(node.name.clone()),
            NodeHealth::Degraded(reason, message) => {
                s.serving.push(node.name.clone());
                s.problem(&node.name, reason, message, None);
            }
            NodeHealth::Waiting {
                reason,
                message,
                since,
                until,
            } => {
                s.waiting.push((node.name.clone(), reason));
                s.next_grace_end = Some(s.next_grace_end.map_or(until, |t| t.min(until)));
                let (reason, message) = waiting_problem(reason, message, since, until);
                s.problem(&node.name, reason, message, Some(since));
            }
            NodeHealth::Failing {
                reason,
                message,
                since,
            } => {
                s.failing.push((node.name.clone(), reason));
                s.problem(&node.name, reason, message, Some(since));
            }
            NodeHealth::OutOfService(reason, message) => {
                s.problem(&node.name, reason, message, None)
            }
        }
    }
    s.serving.sort();
    s.failing.sort();
    s.waiting.sort();
    claim_problems(&mut s, claims);
    s
}

/// A node within its grace period: lacking GPUs reads as WaitingForGpus (it joined, or its
/// plugin restarted); NotReady stays NotReady (it is rebooting), both say until when.
fn waiting_problem(
    reason: Reason,
    message: String,
    since: Timestamp,
    until: Timestamp,
) -> (Reason, String) {
    match reason {
        Reason::NotReady => (
            reason,
            format!("{message}; not Ready since {since}, counted as progress until {until}"),
        ),
        _ => (
            Reason::WaitingForGpus,
            format!(
                "no usable nvidia.com/gpu since {since} (joined or restarting); expected by {until}"
            ),
        ),
    }
}

fn claim_problems(s: &mut NodeSummary, claims: &NodeClaims) {
    for (node, pool) in &claims.served_by_other_pool {
        let message = format!(
            "also selected by the older GpuPool {pool}, which serves it; make the selectors disjoint"
        );
        s.problem(node, Reason::SelectedByOtherPool, message, None);
    }
    for (node, pools) in &claims.also_selected_by {
        let message = format!(
            "also selected by GpuPool {}; this pool serves it; make the selectors disjoint",
            pools.join(", ")
        );
        s.problem(node, Reason::SelectedByOtherPool, message, None);
    }
    for (node, plugins) in &claims.foreign_plugins {
        let message = format!(
            "device plugin DaemonSet {} (not managed by gpupool) runs here",
            plugins.join(", ")
        );
        s.problem(node, Reason::ForeignDevicePlugin, message, None);
    }
}

//! The pool's status: counts, problem nodes and conditions, from what was observed and what the
//! apply step achieved. Conditions follow the Kubernetes conventions and kstatus: Ready,
//! DevicePluginReady and GpusSchedulable are always present; Reconciling, Stalled and Conflict
//! only while True; lastTransitionTime moves only when a status flips.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    Condition, DevicePluginStatus, GpuPoolStatus, PluginMode, PoolSelector, ProblemNode,
};
use crate::decide::claims::NodeClaims;
use crate::decide::image::PluginDecision;
use crate::decide::name_list;
use crate::decide::nodes::{NodeFacts, NodeReadiness};
use crate::decide::selector::describe;

pub const READY: &str = "Ready";
pub const DEVICE_PLUGIN_READY: &str = "DevicePluginReady";
pub const GPUS_SCHEDULABLE: &str = "GpusSchedulable";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const CONFLICT: &str = "Conflict";
/// At most this many nodes are listed in `status.problemNodes`.
pub const MAX_PROBLEM_NODES: usize = 20;

/// A problem only a change by an admin can fix; reported as Stalled, retried slowly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub reason: &'static str,
    pub message: String,
}

/// The managed DaemonSet as it stands after the apply step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// No plugin is deployed for this pool (its mode is Skipped).
    NotDeployed,
    /// Created or being replaced; not visible yet.
    Pending {
        name: String,
    },
    Live(LiveDaemonSet),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveDaemonSet {
    /// namespace/name
    pub name: String,
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
}

/// What the status is computed from.
pub struct StatusInputs<'a> {
    pub generation: Option<i64>,
    pub previous: &'a [Condition],
    pub now: Timestamp,
    pub grace: Duration,
    /// How long the plugin may take to roll out before it counts as stuck.
    pub rollout_deadline: Duration,
    pub expected_gpus: Option<i32>,
    pub selector: &'a PoolSelector,
    pub nodes: &'a [&'a NodeFacts],
    pub plugin: &'a PluginDecision,
    pub claims: &'a NodeClaims,
    pub daemonset: &'a PluginState,
    pub image: Option<String>,
    pub stall: Option<&'a Stall>,
}

/// The computed status, and when to look again because a node's grace period ends.
pub struct StatusOutcome {
    pub status: GpuPoolStatus,
    pub recheck_after: Option<Duration>,
    /// Nodes that can run GPU work now (for the time-to-GPUs metric).
    pub serving: Vec<String>,
}

/// How one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeHealth {
    /// Ready, schedulable, with the GPUs it should have.
    Serving,
    /// Serving, but an admin should look (e.g. some GPUs unhealthy).
    Degraded(&'static str, String),
    /// Joined recently and has no GPUs yet: progressing until the grace period ends.
    Waiting(Timestamp),
    /// Cannot run GPU work.
    Failing(&'static str, String),
    /// Cordoned or being deleted: deliberately out of service, not counted against the pool.
    OutOfService(&'static str, String),
}

fn node_health(
    node: &NodeFacts,
    expected: Option<i32>,
    now: Timestamp,
    grace: Duration,
) -> NodeHealth {
    if node.deleting {
        return NodeHealth::OutOfService("Deleting", "the node is being deleted".into());
    }
    if node.unschedulable {
        return NodeHealth::OutOfService(
            "Cordoned",
            "the node is cordoned (spec.unschedulable); uncordon it to run GPU work there".into(),
        );
    }
    if node.ready != NodeReadiness::Ready {
        return NodeHealth::Failing(
            "NotReady",
            "the node is not Ready: check the kubelet (kubectl describe node)".into(),
        );
    }
    let required = i64::from(expected.unwrap_or(1).max(1));
    let (capacity, allocatable) = (node.gpus_capacity(), node.gpus_allocatable());
    if allocatable < required {
        let grace_ends = node.created.and_then(|c| {
            c.checked_add(SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX))
                .ok()
        });
        if let Some(ends) = grace_ends.filter(|ends| *ends > now) {
            return NodeHealth::Waiting(ends);
        }
        return if capacity == 0 {
            NodeHealth::Failing(
                "NoGpuCapacity",
                "the node reports no nvidia.com/gpu capacity: the device plugin is not running there or found no GPU (check the plugin pod's log and the NVIDIA driver)".into(),
            )
        } else if expected.is_some() {
            NodeHealth::Failing(
                "FewerGpusThanExpected",
                format!(
                    "{allocatable} nvidia.com/gpu allocatable (capacity {capacity}), spec.expectedGpusPerNode is {required}: GPUs may have fallen off the bus or be unhealthy"
                ),
            )
        } else {
            NodeHealth::Failing(
                "NoAllocatableGpus",
                format!(
                    "capacity {capacity} nvidia.com/gpu but none allocatable: the device plugin reports the GPUs unhealthy (check the plugin pod's log and nvidia-smi)"
                ),
            )
        };
    }
    if allocatable < capacity {
        return NodeHealth::Degraded(
            "AllocatableBelowCapacity",
            format!(
                "{allocatable} of {capacity} nvidia.com/gpu allocatable: some GPUs are unhealthy"
            ),
        );
    }
    NodeHealth::Serving
}

pub fn compute_status(i: &StatusInputs) -> StatusOutcome {
    let mut problems: BTreeMap<String, ProblemNode> = BTreeMap::new();
    let mut problem = |name: &str, reason: &str, message: String| {
        problems.entry(name.to_string()).or_insert(ProblemNode {
            name: name.into(),
            reason: reason.into(),
            message,
        });
    };

    let mut serving = 0;
    let mut serving_nodes = Vec::new();
    let mut in_service = 0;
    let mut failing: Vec<(String, &'static str)> = Vec::new();
    let mut waiting: Vec<String> = Vec::new();
    let mut next_grace_end: Option<Timestamp> = None;
    for node in i.nodes {
        match node_health(node, i.expected_gpus, i.now, i.grace) {
            NodeHealth::Serving => {
                serving_nodes.push(node.name.clone());
                serving += 1;
                in_service += 1;
            }
            NodeHealth::Degraded(reason, message) => {
                serving_nodes.push(node.name.clone());
                serving += 1;
                in_service += 1;
                problem(&node.name, reason, message);
            }
            NodeHealth::Waiting(ends) => {
                in_service += 1;
                waiting.push(node.name.clone());
                next_grace_end = Some(next_grace_end.map_or(ends, |t: Timestamp| t.min(ends)));
                problem(
                    &node.name,
                    "WaitingForGpus",
                    format!("joined recently and has no nvidia.com/gpu yet; expected by {ends}"),
                );
            }
            NodeHealth::Failing(reason, message) => {
                in_service += 1;
                failing.push((node.name.clone(), reason));
                problem(&node.name, reason, message);
            }
            NodeHealth::OutOfService(reason, message) => problem(&node.name, reason, message),
        }
    }
    // The nodes come in cache order, which changes as nodes come and go: sort the names the
    // messages list, so the same nodes always give the same status (and no needless write).
    failing.sort();
    waiting.sort();
    for (node, pool) in &i.claims.served_by_other_pool {
        problem(
            node,
            "SelectedByOtherPool",
            format!(
                "also selected by the older GpuPool {pool}, which serves it; make the selectors disjoint"
            ),
        );
    }
    for (node, pools) in &i.claims.also_selected_by {
        problem(
            node,
            "SelectedByOtherPool",
            format!(
                "also selected by GpuPool {}; this pool serves it; make the selectors disjoint",
                pools.join(", ")
            ),
        );
    }
    for (node, plugins) in &i.claims.foreign_plugins {
        problem(
            node,
            "ForeignDevicePlugin",
            format!(
                "device plugin DaemonSet {} (not managed by gpupool) runs here",
                plugins.join(", ")
            ),
        );
    }

    // Saturating: a node may report any integer the API server accepts (up to i64::MAX), and a
    // plain sum of two such would overflow (a panic in debug builds, a negative count in release).
    let gpus_capacity: i64 = i
        .nodes
        .iter()
        .fold(0, |sum, n| sum.saturating_add(n.gpus_capacity()));
    let gpus_allocatable: i64 = i
        .nodes
        .iter()
        .fold(0, |sum, n| sum.saturating_add(n.gpus_allocatable()));

    // DevicePluginReady
    let duplicate_on: Vec<String> = if i.plugin.mode == PluginMode::Skipped {
        i.claims.foreign_plugins.keys().cloned().collect()
    } else {
        Vec::new()
    };
    let mut progressing: Vec<String> = Vec::new();
    let mut next_deadline: Option<Timestamp> = None;
    let not_ready_since = i
        .previous
        .iter()
        .find(|c| c.type_ == DEVICE_PLUGIN_READY && c.status == "False")
        .map(|c| c.last_transition_time.0);
    let plugin_cond: (bool, &str, String) = if let Some(stall) = i.stall {
        (false, stall.reason, stall.message.clone())
    } else if !duplicate_on.is_empty() {
        let plugins: Vec<String> = i
            .claims
            .foreign_plugins
            .values()
            .flatten()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        (
            false,
            "DuplicateDevicePlugin",
            format!(
                "the node image ships the device plugin, yet DaemonSet {} also runs on {}: two plugins on one node make nvidia.com/gpu unreliable (the AKS article warns against this); delete that DaemonSet or keep it off these nodes",
                plugins.join(", "),
                name_list(&duplicate_on, 10)
            ),
        )
    } else {
        match i.daemonset {
            PluginState::NotDeployed => (true, i.plugin.reason, i.plugin.message.clone()),
            PluginState::Pending { name } => {
                progressing.push(format!("DaemonSet {name} is being created"));
                (
                    false,
                    "DaemonSetPending",
                    format!("DaemonSet {name} is being created"),
                )
            }
            PluginState::Live(ds) if ds.observed_generation < ds.generation => {
                progressing.push(format!("DaemonSet {} is rolling out", ds.name));
                (
                    false,
                    "DaemonSetProgressing",
                    format!(
                        "the DaemonSet controller has not yet picked up the latest spec of {}",
                        ds.name
                    ),
                )
            }
            PluginState::Live(ds) if ds.updated < ds.desired || ds.ready < ds.desired => {
                // Pods need time to be created, pulled and started; past the rollout deadline
                // (measured from when the plugin stopped being ready) it is a failure, not progress.
                let since = not_ready_since.unwrap_or(i.now);
                let deadline = since
                    .checked_add(
                        SignedDuration::try_from(i.rollout_deadline).unwrap_or(SignedDuration::MAX),
                    )
                    .unwrap_or(Timestamp::MAX);
                let namespace = ds.name.split('/').next().unwrap_or_default();
                let counts = format!(
                    "{} of {} plugin pods updated, {} ready",
                    ds.updated, ds.desired, ds.ready
                );
                if deadline > i.now {
                    progressing.push(format!("DaemonSet {} is rolling out", ds.name));
                    next_deadline = Some(deadline);
                    (
                        false,
                        "DaemonSetProgressing",
                        format!("{} rolling out: {counts}", ds.name),
                    )
                } else if ds.updated < ds.desired {
                    (
                        false,
                        "DaemonSetRolloutStuck",
                        format!(
                            "{}: {counts} for longer than {}: the DaemonSet controller cannot create the pods; its FailedCreate events (kubectl -n {namespace} describe daemonset {}) name the cause, e.g. a missing PriorityClass (spec.devicePlugin.priorityClassName), a quota or an admission policy",
                            ds.name,
                            humantime::format_duration(i.rollout_deadline),
                            ds.name.split('/').nth(1).unwrap_or_default()
                        ),
                    )
                } else {
                    (
                        false,
                        "PluginPodsNotReady",
                        format!(
                            "{}: {counts} for longer than {}: check the pods with kubectl -n {namespace} get pods -l name=nvidia-device-plugin-ds and their logs (image pull errors, crash loops)",
                            ds.name,
                            humantime::format_duration(i.rollout_deadline)
                        ),
                    )
                }
            }
            PluginState::Live(ds) => (
                true,
                "DaemonSetReady",
                format!("{} plugin pods of {} are ready", ds.ready, ds.name),
            ),
        }
    };

    // GpusSchedulable
    let hard_failures: Vec<&(String, &str)> = failing.iter().collect();
    let gpus_cond: (bool, &str, String) = if i.nodes.is_empty() {
        (
            false,
            "NoNodes",
            format!(
                "the selector {} matches no nodes: the pool is scaled to zero, or the selector names a label the nodes lack",
                describe(i.selector)
            ),
        )
    } else if !hard_failures.is_empty() {
        let all_not_ready = hard_failures.iter().all(|(_, r)| *r == "NotReady");
        let listed: Vec<String> = hard_failures
            .iter()
            .map(|(n, r)| format!("{n} ({r})"))
            .collect();
        (
            false,
            if all_not_ready {
                "NodesNotReady"
            } else {
                "GpusMissing"
            },
            format!(
                "{} of {} nodes cannot run GPU work: {}; see status.problemNodes",
                hard_failures.len(),
                i.nodes.len(),
                name_list(&listed, 10)
            ),
        )
    } else if !waiting.is_empty() {
        progressing.push(format!("waiting for GPUs on {}", name_list(&waiting, 10)));
        (
            false,
            "WaitingForGpus",
            format!(
                "{} nodes joined recently and have no nvidia.com/gpu yet: {}",
                waiting.len(),
                name_list(&waiting, 10)
            ),
        )
    } else if in_service == 0 {
        (
            false,
            "AllNodesCordoned",
            format!("all {} nodes are cordoned or being deleted", i.nodes.len()),
        )
    } else {
        (
            true,
            "GpusSchedulable",
            format!("{serving} nodes with {gpus_allocatable} allocatable nvidia.com/gpu"),
        )
    };

    let mut conditions: Vec<(&str, bool, String, String)> = Vec::new();
    let ready: (bool, &str, String) = if let Some(stall) = i.stall {
        (false, stall.reason, stall.message.clone())
    } else if i.nodes.is_empty() && plugin_cond.0 {
        (true, "NoNodes", gpus_cond.2.clone())
    } else if !plugin_cond.0 {
        (false, plugin_cond.1, plugin_cond.2.clone())
    } else if !gpus_cond.0 {
        (false, gpus_cond.1, gpus_cond.2.clone())
    } else {
        (
            true,
            "Ready",
            format!(
                "{serving} nodes with {gpus_allocatable} allocatable nvidia.com/gpu; device plugin {}",
                i.plugin.mode.as_str()
            ),
        )
    };
    // kstatus (Flux) reads Reconciling and Stalled: a pool that is not Ready and not making
    // progress is Stalled, so GitOps tools show it as failed rather than in progress forever.
    let stalled: Option<(String, String)> = match i.stall {
        Some(stall) => Some((stall.reason.into(), stall.message.clone())),
        None if !ready.0 && progressing.is_empty() => Some((ready.1.into(), ready.2.clone())),
        None => None,
    };
    conditions.push((READY, ready.0, ready.1.to_string(), ready.2));
    conditions.push((
        DEVICE_PLUGIN_READY,
        plugin_cond.0,
        plugin_cond.1.to_string(),
        plugin_cond.2,
    ));
    conditions.push((
        GPUS_SCHEDULABLE,
        gpus_cond.0,
        gpus_cond.1.to_string(),
        gpus_cond.2,
    ));
    if !progressing.is_empty() && i.stall.is_none() {
        let reason = if waiting.is_empty() || progressing.len() > 1 {
            "Progressing"
        } else {
            "WaitingForGpus"
        };
        conditions.push((RECONCILING, true, reason.into(), progressing.join("; ")));
    }
    if let Some((reason, message)) = stalled {
        conditions.push((STALLED, true, reason, message));
    }
    if i.claims.has_conflicts() {
        conditions.push((
            CONFLICT,
            true,
            conflict_reason(i.claims).into(),
            conflict_message(i.claims),
        ));
    }

    let problem_count = problems.len();
    let status = GpuPoolStatus {
        observed_generation: i.generation,
        nodes: i.nodes.len() as i32,
        nodes_with_gpus: serving,
        gpus_capacity,
        gpus_allocatable,
        node_image: Some(i.plugin.detected.to_string()),
        device_plugin: Some(device_plugin_status(i)),
        problem_nodes: problems.into_values().take(MAX_PROBLEM_NODES).collect(),
        problem_nodes_total: problem_count as i32,
        conditions: conditions
            .into_iter()
            .map(|(type_, ok, reason, message)| {
                condition(i.previous, i.generation, i.now, type_, ok, reason, message)
            })
            .collect(),
    };
    let next_check = match (next_grace_end, next_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let recheck_after = next_check.map(|end| {
        let secs = end.duration_since(i.now).as_secs_f64().max(0.0);
        Duration::from_secs_f64(secs) + Duration::from_secs(1)
    });
    StatusOutcome {
        status,
        recheck_after,
        serving: serving_nodes,
    }
}

fn conflict_reason(claims: &NodeClaims) -> &'static str {
    if claims.foreign_plugins.is_empty() {
        "NodesSelectedByOtherPools"
    } else if claims.served_by_other_pool.is_empty() && claims.also_selected_by.is_empty() {
        "ForeignDevicePlugin"
    } else {
        "NodesSelectedByOtherPoolsAndForeignDevicePlugin"
    }
}

fn conflict_message(claims: &NodeClaims) -> String {
    let mut parts = Vec::new();
    let mut by_pool: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (node, pool) in &claims.served_by_other_pool {
        by_pool.entry(pool).or_default().push(node.clone());
    }
    for (pool, nodes) in by_pool {
        parts.push(format!(
            "{} also selected by the older GpuPool {pool}, which serves them",
            name_list(&nodes, 10)
        ));
    }
    let mut by_pools: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, pools) in &claims.also_selected_by {
        by_pools
            .entry(pools.join(", "))
            .or_default()
            .push(node.clone());
    }
    for (pools, nodes) in by_pools {
        parts.push(format!(
            "{} also selected by GpuPool {pools}; this pool serves them",
            name_list(&nodes, 10)
        ));
    }
    let mut by_plugin: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, plugins) in &claims.foreign_plugins {
        by_plugin
            .entry(plugins.join(", "))
            .or_default()
            .push(node.clone());
    }
    for (plugins, nodes) in by_plugin {
        parts.push(format!("device plugin DaemonSet {plugins}, not managed by gpupool, runs on {}; gpupool adds no second plugin there", name_list(&nodes, 10)));
    }
    format!(
        "{}. Make GpuPool selectors disjoint and remove hand-applied device plugins to resolve this",
        parts.join("; ")
    )
}

fn device_plugin_status(i: &StatusInputs) -> DevicePluginStatus {
    let (name, desired, ready, updated) = match i.daemonset {
        PluginState::NotDeployed => (None, 0, 0, 0),
        PluginState::Pending { name } => (Some(name.clone()), 0, 0, 0),
        PluginState::Live(ds) => (Some(ds.name.clone()), ds.desired, ds.ready, ds.updated),
    };
    DevicePluginStatus {
        mode: i.plugin.mode,
        reason: i.plugin.reason.into(),
        message: i.plugin.message.clone(),
        daemon_set: name,
        image: if i.plugin.mode == PluginMode::Managed {
            i.image.clone()
        } else {
            None
        },
        desired,
        ready,
        updated,
    }
}

/// A condition that keeps its lastTransitionTime unless its status flips.
fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    type_: &str,
    ok: bool,
    reason: String,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    Condition {
        type_: type_.into(),
        status: status.into(),
        observed_generation: generation,
        last_transition_time,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NodeImage;
    use crate::decide::image::decide_plugin;
    use crate::decide::testing::{gpu_node, selector};

    const GRACE: Duration = Duration::from_secs(600);

    fn now() -> Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn live(desired: i32, ready: i32) -> PluginState {
        PluginState::Live(LiveDaemonSet {
            name: "gpu-resources/nvidia-device-plugin-gpu".into(),
            generation: 1,
            observed_generation: 1,
            desired,
            ready,
            updated: desired,
        })
    }

    struct Case {
        nodes: Vec<NodeFacts>,
        daemonset: PluginState,
        claims: NodeClaims,
        expected: Option<i32>,
        stall: Option<Stall>,
        previous: Vec<Condition>,
        mode: NodeImage,
    }

    impl Case {
        fn new(nodes: Vec<NodeFacts>) -> Case {
            let n = nodes.len() as i32;
            Case {
                nodes,
                daemonset: live(n, n),
                claims: NodeClaims::default(),
                expected: None,
                stall: None,
                previous: vec![],
                mode: NodeImage::Standard,
            }
        }
        fn run(&self) -> StatusOutcome {
            let refs: Vec<&NodeFacts> = self.nodes.iter().collect();
            let plugin = decide_plugin(self.mode, &refs, None);
            let sel = selector(&[("agentpool", "gpu")]);
            compute_status(&StatusInputs {
                generation: Some(2),
                previous: &self.previous,
                now: now(),
                grace: GRACE,
                rollout_deadline: Duration::from_secs(300),
                expected_gpus: self.expected,
                selector: &sel,
                nodes: &refs,
                plugin: &plugin,
                claims: &self.claims,
                daemonset: &self.daemonset,
                image: Some("img".into()),
                stall: self.stall.as_ref(),
            })
        }
    }

    fn cond<'a>(s: &'a GpuPoolStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    fn old_node(name: &str, cap: i64, alloc: i64) -> NodeFacts {
        let mut n = gpu_node(name, cap, alloc);
        n.created = Some("2026-11-23T10:00:00Z".parse().unwrap());
        n
    }

    #[test]
    fn healthy_pool_is_ready_with_counts() {
        let out = Case::new(vec![old_node("a", 2, 2), old_node("b", 2, 2)]).run();
        let s = out.status;
        assert_eq!(
            (
                s.nodes,
                s.nodes_with_gpus,
                s.gpus_capacity,
                s.gpus_allocatable
            ),
            (2, 2, 4, 4)
        );
        assert_eq!(cond(&s, READY).unwrap().status, "True");
        assert_eq!(
            cond(&s, DEVICE_PLUGIN_READY).unwrap().reason,
            "DaemonSetReady"
        );
        assert_eq!(cond(&s, GPUS_SCHEDULABLE).unwrap().status, "True");
        assert!(
            cond(&s, RECONCILING).is_none()
                && cond(&s, STALLED).is_none()
                && cond(&s, CONFLICT).is_none()
        );
        assert_eq!(s.observed_generation, Some(2));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
        assert!(s.problem_nodes.is_empty());
        assert_eq!(out.recheck_after, None);
    }

    #[test]
    fn a_ready_plugin_with_zero_gpus_is_not_ready_and_names_the_node() {
        let s = Case::new(vec![old_node("a", 1, 1), old_node("gpu-lost", 0, 0)])
            .run()
            .status;
        assert_eq!(cond(&s, DEVICE_PLUGIN_READY).unwrap().status, "True");
        let ready = cond(&s, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "GpusMissing")
        );
        assert!(
            ready.message.contains("gpu-lost (NoGpuCapacity)"),
            "{}",
            ready.message
        );
        assert_eq!(s.problem_nodes[0].name, "gpu-lost");
        assert_eq!(s.problem_nodes[0].reason, "NoGpuCapacity");
        assert!(cond(&s, RECONCILING).is_none(), "a failure is not progress");
    }

    #[test]
    fn a_new_node_without_gpus_is_progressing_until_the_grace_period_ends() {
        let mut fresh = gpu_node("fresh", 0, 0);
        fresh.created = Some("2026-11-23T11:58:00Z".parse().unwrap());
        let out = Case::new(vec![old_node("a", 1, 1), fresh.clone()]).run();
        let s = &out.status;
        assert_eq!(cond(s, READY).unwrap().reason, "WaitingForGpus");
        assert_eq!(cond(s, RECONCILING).unwrap().status, "True");
        assert_eq!(s.problem_nodes[0].reason, "WaitingForGpus");
        // 8 minutes of grace left (+1 s so the recheck lands after the deadline).
        assert_eq!(out.recheck_after, Some(Duration::from_secs(8 * 60 + 1)));

        fresh.created = Some("2026-11-23T11:40:00Z".parse().unwrap());
        let s = Case::new(vec![old_node("a", 1, 1), fresh]).run().status;
        assert_eq!(cond(&s, READY).unwrap().reason, "GpusMissing");
        assert!(cond(&s, RECONCILING).is_none());
    }

    #[test]
    fn expected_gpus_and_unhealthy_gpus() {
        let mut case = Case::new(vec![old_node("four", 4, 4), old_node("two", 4, 2)]);
        case.expected = Some(4);
        let s = case.run().status;
        assert_eq!(cond(&s, READY).unwrap().reason, "GpusMissing");
        assert_eq!(s.problem_nodes[0].reason, "FewerGpusThanExpected");

        // Without an expectation, one unhealthy GPU is a warning, not a failure.
        let s = Case::new(vec![old_node("four", 4, 4), old_node("two", 4, 2)])
            .run()
            .status;
        assert_eq!(cond(&s, READY).unwrap().status, "True");
        assert_eq!(s.problem_nodes[0].reason, "AllocatableBelowCapacity");
        let s = Case::new(vec![old_node("none", 4, 0)]).run().status;
        assert_eq!(s.problem_nodes[0].reason, "NoAllocatableGpus");
    }

    #[test]
    fn cordoned_nodes_are_reported_but_do_not_fail_the_pool() {
        let mut cordoned = old_node("cordoned", 0, 0);
        cordoned.unschedulable = true;
        let s = Case::new(vec![old_node("a", 1, 1), cordoned.clone()])
            .run()
            .status;
        assert_eq!(cond(&s, READY).unwrap().status, "True");
        assert_eq!(s.problem_nodes[0].reason, "Cordoned");
        let s = Case::new(vec![cordoned]).run().status;
        assert_eq!(cond(&s, READY).unwrap().reason, "AllNodesCordoned");
    }

    #[test]
    fn not_ready_nodes() {
        let mut down = old_node("down", 1, 1);
        down.ready = NodeReadiness::NotReady;
        let s = Case::new(vec![old_node("a", 1, 1), down]).run().status;
        assert_eq!(cond(&s, READY).unwrap().reason, "NodesNotReady");
    }

    #[test]
    fn an_empty_pool_says_so_and_is_not_failing() {
        let mut case = Case::new(vec![]);
        case.daemonset = live(0, 0);
        let s = case.run().status;
        let ready = cond(&s, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "NoNodes")
        );
        assert!(ready.message.contains("agentpool=gpu"), "{}", ready.message);
        assert_eq!(cond(&s, GPUS_SCHEDULABLE).unwrap().reason, "NoNodes");
        assert!(cond(&s, STALLED).is_none() && cond(&s, RECONCILING).is_none());
    }

    #[test]
    fn rollout_and_unready_plugin_pods() {
        let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
        case.daemonset = PluginState::Live(LiveDaemonSet {
            name: "ns/ds".into(),
            generation: 2,
            observed_generation: 1,
            desired: 2,
            ready: 2,
            updated: 2,
        });
        let s = case.run().status;
        assert_eq!(
            cond(&s, DEVICE_PLUGIN_READY).unwrap().reason,
            "DaemonSetProgressing"
        );
        assert_eq!(cond(&s, RECONCILING).unwrap().status, "True");
        assert_eq!(cond(&s, READY).unwrap().status, "False");

        // Pods starting up are progress, until the rollout deadline...
        case.daemonset = live(2, 1);
        let out = case.run();
        assert_eq!(
            cond(&out.status, DEVICE_PLUGIN_READY).unwrap().reason,
            "DaemonSetProgressing"
        );
        assert_eq!(cond(&out.status, RECONCILING).unwrap().status, "True");
        assert_eq!(
            out.recheck_after,
            Some(Duration::from_secs(301)),
            "looked at again when the deadline passes"
        );
        // ...after which, with the plugin not ready since long before, they are a failure.
        let mut earlier = out.status.conditions.clone();
        for c in &mut earlier {
            c.last_transition_time = Time("2026-11-23T11:00:00Z".parse().unwrap());
        }
        case.previous = earlier;
        let s = case.run().status;
        let plugin = cond(&s, DEVICE_PLUGIN_READY).unwrap();
        assert_eq!(plugin.reason, "PluginPodsNotReady");
        assert!(plugin.message.contains("5m"), "{}", plugin.message);
        assert!(
            cond(&s, RECONCILING).is_none(),
            "pods that do not get ready are not progress"
        );
        // Pods that cannot even be created (updated < desired) are a stuck rollout.
        case.daemonset = PluginState::Live(LiveDaemonSet {
            name: "ns/ds".into(),
            generation: 1,
            observed_generation: 1,
            desired: 1,
            ready: 0,
            updated: 0,
        });
        let s = case.run().status;
        let plugin = cond(&s, DEVICE_PLUGIN_READY).unwrap();
        assert_eq!(plugin.reason, "DaemonSetRolloutStuck");
        assert!(
            plugin.message.contains("PriorityClass"),
            "{}",
            plugin.message
        );
        case.daemonset = live(2, 1);
        case.previous.clear();
        assert_eq!(case.run().status.device_plugin.unwrap().ready, 1);

        case.daemonset = PluginState::Pending {
            name: "ns/ds".into(),
        };
        let s = case.run().status;
        assert_eq!(
            cond(&s, DEVICE_PLUGIN_READY).unwrap().reason,
            "DaemonSetPending"
        );
    }

    #[test]
    fn stalled_only_while_true_and_ready_names_the_reason() {
        let mut case = Case::new(vec![old_node("a", 1, 1)]);
        case.stall = Some(Stall {
            reason: "DaemonSetRejected",
            message: "the API server rejected it: x".into(),
        });
        let s = case.run().status;
        assert_eq!(cond(&s, STALLED).unwrap().status, "True");
        assert_eq!(cond(&s, READY).unwrap().reason, "DaemonSetRejected");
        assert!(
            cond(&s, RECONCILING).is_none(),
            "Stalled and Reconciling never both"
        );
        case.stall = None;
        assert!(cond(&case.run().status, STALLED).is_none());
    }

    /// For kstatus every not-Ready pool shows exactly one of Reconciling and Stalled.
    #[test]
    fn not_ready_means_reconciling_or_stalled() {
        let failing = Case::new(vec![old_node("a", 1, 1), old_node("lost", 0, 0)])
            .run()
            .status;
        let stalled = cond(&failing, STALLED).expect("a failure stalls");
        assert_eq!(stalled.reason, "GpusMissing");
        assert!(stalled.message.contains("lost"), "{}", stalled.message);
        assert!(cond(&failing, RECONCILING).is_none());

        let mut fresh = gpu_node("fresh", 0, 0);
        fresh.created = Some("2026-11-23T11:59:00Z".parse().unwrap());
        let waiting = Case::new(vec![fresh]).run().status;
        assert!(cond(&waiting, RECONCILING).is_some() && cond(&waiting, STALLED).is_none());

        let mut cordoned = old_node("c", 1, 1);
        cordoned.unschedulable = true;
        let all_cordoned = Case::new(vec![cordoned]).run().status;
        assert_eq!(cond(&all_cordoned, READY).unwrap().status, "False");
        assert_eq!(
            cond(&all_cordoned, STALLED).unwrap().reason,
            "AllNodesCordoned",
            "it will not get better by itself"
        );
        assert!(cond(&all_cordoned, RECONCILING).is_none());

        let healthy = Case::new(vec![old_node("a", 1, 1)]).run().status;
        assert!(cond(&healthy, STALLED).is_none() && cond(&healthy, RECONCILING).is_none());
    }

    #[test]
    fn last_transition_time_moves_only_on_flips() {
        let case = Case::new(vec![old_node("a", 1, 1)]);
        let first = case.run().status;
        let mut earlier = first.conditions.clone();
        for c in &mut earlier {
            c.last_transition_time = Time("2026-01-01T00:00:00Z".parse().unwrap());
            c.message = "an older message".into();
        }
        let mut again = Case::new(vec![old_node("a", 1, 1)]);
        again.previous = earlier.clone();
        let s = again.run().status;
        assert_eq!(
            cond(&s, READY).unwrap().last_transition_time,
            earlier[0].last_transition_time,
            "same status keeps the time"
        );

        let mut flipped = Case::new(vec![old_node("a", 0, 0)]);
        flipped.previous = earlier;
        let s = flipped.run().status;
        assert_eq!(
            cond(&s, READY).unwrap().last_transition_time.0,
            now(),
            "a flip takes the current time"
        );
        assert_eq!(
            cond(&s, DEVICE_PLUGIN_READY)
                .unwrap()
                .last_transition_time
                .0,
            "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_status() {
        let case = Case::new(vec![old_node("a", 1, 1), old_node("b", 0, 0)]);
        let first = case.run().status;
        let mut again = Case::new(vec![old_node("a", 1, 1), old_node("b", 0, 0)]);
        again.previous = first.conditions.clone();
        assert_eq!(again.run().status, first, "no change, so no status write");
    }

    #[test]
    fn node_order_does_not_change_the_status() {
        let mut fresh_a = gpu_node("fresh-a", 0, 0);
        fresh_a.created = Some("2026-11-23T11:58:00Z".parse().unwrap());
        let mut fresh_b = fresh_a.clone();
        fresh_b.name = "fresh-b".into();
        let waiting = |nodes: Vec<NodeFacts>| Case::new(nodes).run().status;
        assert_eq!(
            waiting(vec![fresh_a.clone(), fresh_b.clone()]),
            waiting(vec![fresh_b, fresh_a])
        );
        let failing = |nodes: Vec<NodeFacts>| Case::new(nodes).run().status;
        assert_eq!(
            failing(vec![old_node("a", 0, 0), old_node("b", 0, 0)]),
            failing(vec![old_node("b", 0, 0), old_node("a", 0, 0)])
        );
    }

    #[test]
    fn conflicts_are_reported_with_nodes_and_pools() {
        let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
        case.claims
            .served_by_other_pool
            .insert("b".into(), "older".into());
        case.claims.foreign_plugins.insert(
            "a".into(),
            vec!["gpu-resources/nvidia-device-plugin-daemonset".into()],
        );
        let s = case.run().status;
        let c = cond(&s, CONFLICT).unwrap();
        assert_eq!(c.reason, "NodesSelectedByOtherPoolsAndForeignDevicePlugin");
        assert!(
            c.message
                .contains("b also selected by the older GpuPool older"),
            "{}",
            c.message
        );
        assert!(
            c.message
                .contains("gpu-resources/nvidia-device-plugin-daemonset"),
            "{}",
            c.message
        );
        assert_eq!(
            cond(&s, READY).unwrap().status,
            "True",
            "GPUs are still served"
        );
        let reasons: Vec<_> = s
            .problem_nodes
            .iter()
            .map(|p| (p.name.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![("a", "ForeignDevicePlugin"), ("b", "SelectedByOtherPool")]
        );
    }

    #[test]
    fn a_foreign_plugin_on_a_specialized_pool_is_a_duplicate() {
        let mut case = Case::new(vec![old_node("a", 1, 1)]);
        case.mode = NodeImage::Specialized;
        case.daemonset = PluginState::NotDeployed;
        case.claims.foreign_plugins.insert(
            "a".into(),
            vec!["gpu-resources/nvidia-device-plugin-daemonset".into()],
        );
        let s = case.run().status;
        assert_eq!(
            cond(&s, DEVICE_PLUGIN_READY).unwrap().reason,
            "DuplicateDevicePlugin"
        );
        assert_eq!(cond(&s, READY).unwrap().status, "False");
        assert_eq!(s.device_plugin.unwrap().mode, PluginMode::Skipped);
    }

    #[test]
    fn problem_nodes_are_bounded_but_counted() {
        let nodes: Vec<NodeFacts> = (0..50)
            .map(|i| old_node(&format!("n{i:02}"), 0, 0))
            .collect();
        let s = Case::new(nodes).run().status;
        assert_eq!(s.problem_nodes.len(), MAX_PROBLEM_NODES);
        assert_eq!(s.problem_nodes_total, 50);
        let msg = &cond(&s, READY).unwrap().message;
        assert!(msg.contains("and 40 more"), "{msg}");
    }

    #[test]
    fn gpu_sums_saturate_instead_of_overflowing() {
        let huge = old_node("huge-0", i64::MAX, i64::MAX);
        let huge2 = old_node("huge-1", i64::MAX, i64::MAX);
        let out = Case::new(vec![huge, huge2]).run();
        assert_eq!(out.status.gpus_capacity, i64::MAX);
        assert_eq!(out.status.gpus_allocatable, i64::MAX);
    }
}

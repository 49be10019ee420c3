//! Tests of `report`: the status and events of pools in the situations an admin meets.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{Condition, GpuPool, GpuPoolSpec, NodeImage, PluginMode, Reason};
use crate::decide::applied::PluginState;
use crate::decide::facts::{NodeReadiness, ObjectId, Rollout, Stall};
use crate::decide::plugin::PluginPlan;
use crate::decide::plugin::action::DaemonSetAction;
use crate::decide::plugin::claims::NodeClaims;
use crate::decide::plugin::mode::decide_plugin;
use crate::decide::testing::{gpu_node, selector, settings};

fn now() -> Timestamp {
    "2026-11-23T12:00:00Z".parse().unwrap()
}

fn ds_id() -> ObjectId {
    ObjectId {
        namespace: "gpu-resources".into(),
        name: "nvidia-device-plugin-gpu".into(),
    }
}

fn live_with(rollout: Rollout) -> PluginState {
    PluginState::Live {
        id: ds_id(),
        rollout,
    }
}

fn live(desired: i32, ready: i32) -> PluginState {
    live_with(Rollout {
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
    previous_problems: Vec<crate::api::ProblemNode>,
    mode: NodeImage,
    dra: std::collections::BTreeSet<String>,
    clocks: Option<ProblemClocks>,
    at: Timestamp,
    plugin_nodes: usize,
    placement: crate::decide::plugin::placement::Placement,
    failed_writes: Vec<crate::decide::applied::FailedWrite>,
    pods: Vec<crate::decide::facts::PodFacts>,
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
            previous_problems: vec![],
            mode: NodeImage::Standard,
            dra: Default::default(),
            clocks: None,
            at: now(),
            plugin_nodes: 0,
            placement: Default::default(),
            failed_writes: vec![],
            pods: vec![],
        }
    }

    fn run(&self) -> StatusOutcome {
        let mut pool = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                node_image: self.mode,
                device_plugin: None,
                expected_gpus_per_node: self.expected,
                ..Default::default()
            },
        );
        pool.metadata.generation = Some(2);
        pool.status = Some(GpuPoolStatus {
            // A status written before is the pool's history.
            observed_generation: (!self.previous.is_empty()).then_some(2),
            conditions: self.previous.clone(),
            problem_nodes: self.previous_problems.clone(),
            ..GpuPoolStatus::default()
        });
        let observed = Observed {
            pool: Arc::new(pool),
            nodes: self.nodes.iter().cloned().map(Arc::new).collect(),
            strays: vec![],
            other_pools: vec![],
            plugin_daemonsets: vec![],
            pods: self.pods.iter().cloned().map(Arc::new).collect(),
            dra: Default::default(),
            dra_api: true,
            device_classes: Vec::new(),
            pool_uids: Default::default(),
            rejection: None,
            problem_clocks: self.clocks.clone().map(Arc::new),
            plugin_configs: vec![],
            gpu_busy: Default::default(),
            now: self.at,
            pods_by_node: Default::default(),
        };
        let refs: Vec<&NodeFacts> = self.nodes.iter().collect();
        let plan = Plan {
            dra: Default::default(),
            plugin: PluginPlan {
                decision: decide_plugin(self.mode, &refs, &self.dra, None),
                claims: self.claims.clone(),
                image: "img".into(),
                delete_stale: vec![],
                daemonset: DaemonSetAction::Nothing,
                live: None,
                placement: self.placement.clone(),
                leftover_pods: vec![],
                plugin_nodes: self.plugin_nodes,
                expected: self
                    .nodes
                    .iter()
                    .map(|n| {
                        let e = crate::decide::capacity::expected(n, &observed.pool.spec, true);
                        (n.name.clone(), e)
                    })
                    .collect(),
                config: None,
                config_map: crate::decide::plugin::config::ConfigMapAction::Nothing,
                tolerated: Default::default(),
                revision: String::new(),
                rollout: None,
            },
            readiness: Default::default(),
        };
        let mut applied = Applied::kept(self.daemonset.clone(), self.stall.clone());
        applied.failed_writes = self.failed_writes.clone();
        let mut settings = settings();
        settings.gpu_grace_period = Duration::from_secs(600);
        report(&observed, &plan, &applied, &settings)
    }
}

fn cond(s: &GpuPoolStatus, t: ConditionType) -> Option<&Condition> {
    s.condition(t)
}

fn state_of(s: &GpuPoolStatus, t: ConditionType) -> ConditionStatus {
    cond(s, t)
        .expect("condition present")
        .status
        .parse()
        .expect("a known status")
}

fn reason_of(s: &GpuPoolStatus, t: ConditionType) -> Reason {
    cond(s, t)
        .expect("condition present")
        .reason
        .parse()
        .expect("a known reason")
}

fn old_node(name: &str, cap: i64, alloc: i64) -> NodeFacts {
    let mut n = gpu_node(name, cap, alloc);
    n.created = Some("2026-11-23T10:00:00Z".parse().unwrap());
    n
}

#[test]
fn hand_overs_are_progress_that_names_the_nodes_and_what_they_wait_for() {
    use crate::decide::plugin::placement::HandOver;
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
    case.placement.hand_overs = vec![
        HandOver {
            node: "a".into(),
            pods: vec![],
            held_by: Some("older".into()),
        },
        HandOver {
            node: "b".into(),
            pods: vec![crate::decide::facts::ObjectId {
                namespace: "gpu-resources".into(),
                name: "nvidia-device-plugin-older-x".into(),
            }],
            held_by: None,
        },
    ];
    let s = case.run().status;
    let message = &cond(&s, ConditionType::Reconciling)
        .expect("hand-overs are progress")
        .message;
    assert!(
        message.contains("once the previous plugin pods there are gone: b"),
        "{message}"
    );
    assert!(
        message
            .contains("waiting for the pools whose plugin they carry to release 1: a (pool older)"),
        "{message}"
    );
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
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::True);
    assert_eq!(
        reason_of(&s, ConditionType::DevicePluginReady),
        Reason::DaemonSetReady
    );
    assert_eq!(
        state_of(&s, ConditionType::GpusSchedulable),
        ConditionStatus::True
    );
    assert!(
        cond(&s, ConditionType::Reconciling).is_none()
            && cond(&s, ConditionType::Stalled).is_none()
            && cond(&s, ConditionType::Conflict).is_none()
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
    assert_eq!(
        state_of(&s, ConditionType::DevicePluginReady),
        ConditionStatus::True
    );
    let ready = cond(&s, ConditionType::Ready).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        (
            ConditionStatus::False.as_str(),
            Reason::GpusMissing.as_str()
        )
    );
    assert!(
        ready.message.contains("gpu-lost (NoGpuCapacity)"),
        "{}",
        ready.message
    );
    assert_eq!(s.problem_nodes[0].name, "gpu-lost");
    assert_eq!(s.problem_nodes[0].reason, Reason::NoGpuCapacity.as_str());
    assert!(
        cond(&s, ConditionType::Reconciling).is_none(),
        "a failure is not progress"
    );
}

#[test]
fn a_new_node_without_gpus_is_progressing_until_the_grace_period_ends() {
    let mut fresh = gpu_node("fresh", 0, 0);
    fresh.created = Some("2026-11-23T11:58:00Z".parse().unwrap());
    let out = Case::new(vec![old_node("a", 1, 1), fresh.clone()]).run();
    let s = &out.status;
    assert_eq!(reason_of(s, ConditionType::Ready), Reason::WaitingForGpus);
    assert_eq!(
        state_of(s, ConditionType::Reconciling),
        ConditionStatus::True
    );
    assert_eq!(s.problem_nodes[0].reason, Reason::WaitingForGpus.as_str());
    // 8 minutes of grace left (+1 s so the recheck lands after the deadline).
    assert_eq!(out.recheck_after, Some(Duration::from_secs(8 * 60 + 1)));

    fresh.created = Some("2026-11-23T11:40:00Z".parse().unwrap());
    let s = Case::new(vec![old_node("a", 1, 1), fresh]).run().status;
    assert_eq!(reason_of(&s, ConditionType::Ready), Reason::GpusMissing);
    assert!(cond(&s, ConditionType::Reconciling).is_none());
}

#[test]
fn expected_gpus_and_unhealthy_gpus() {
    let mut case = Case::new(vec![old_node("four", 4, 4), old_node("two", 4, 2)]);
    case.expected = Some(4);
    let s = case.run().status;
    assert_eq!(reason_of(&s, ConditionType::Ready), Reason::GpusMissing);
    assert_eq!(
        s.problem_nodes[0].reason,
        Reason::FewerGpusThanExpected.as_str()
    );

    // Without an expectation two GPUs are enough to schedule on, but the plugin marks two
    // unhealthy: the GPUs are schedulable, not healthy, and the pool not Ready.
    let s = Case::new(vec![old_node("four", 4, 4), old_node("two", 4, 2)])
        .run()
        .status;
    assert_eq!(
        state_of(&s, ConditionType::GpusSchedulable),
        ConditionStatus::True
    );
    assert_eq!(
        state_of(&s, ConditionType::GpusHealthy),
        ConditionStatus::False
    );
    assert_eq!(reason_of(&s, ConditionType::Ready), Reason::UnhealthyGpus);
    assert_eq!(
        s.problem_nodes[0].reason,
        Reason::AllocatableBelowCapacity.as_str()
    );
    assert!(
        cond(&s, ConditionType::GpusHealthy)
            .unwrap()
            .message
            .contains("two"),
        "names the node"
    );
    let s = Case::new(vec![old_node("none", 4, 0)]).run().status;
    assert_eq!(
        s.problem_nodes[0].reason,
        Reason::NoAllocatableGpus.as_str()
    );
}

#[test]
fn a_new_daemonset_is_not_ready_before_it_counts_the_labelled_nodes() {
    // Just created: the DaemonSet controller says 0 of 0 before it sees the node labels.
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
    case.daemonset = live(0, 0);
    case.plugin_nodes = 2;
    let s = case.run().status;
    assert_eq!(
        reason_of(&s, ConditionType::DevicePluginReady),
        Reason::DaemonSetProgressing
    );
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::False);
    assert_eq!(
        state_of(&s, ConditionType::Reconciling),
        ConditionStatus::True
    );
    case.daemonset = live(2, 2);
    assert_eq!(
        state_of(&case.run().status, ConditionType::Ready),
        ConditionStatus::True
    );
}

#[test]
fn gpu_fault_conditions_make_the_gpus_unhealthy_and_name_node_and_condition() {
    let mut faulty = old_node("faulty", 8, 8);
    faulty.conditions = vec![crate::decide::facts::NodeCondition {
        type_: "XIDErrors".into(),
        status: "True".into(),
        reason: "XIDErrors".into(),
        message: "XID 79 (GPU has fallen off the bus) in kernel log".into(),
        since: Some("2026-11-23T11:00:00Z".parse().unwrap()),
    }];
    let mut healthy = old_node("healthy", 8, 8);
    healthy.conditions = vec![crate::decide::facts::NodeCondition {
        type_: "GPUMissing".into(),
        status: "False".into(),
        reason: "NoGPUMissing".into(),
        message: String::new(),
        since: None,
    }];
    let s = Case::new(vec![faulty, healthy]).run().status;
    assert_eq!(
        reason_of(&s, ConditionType::Ready),
        Reason::GpuFaultsReported
    );
    let health = cond(&s, ConditionType::GpusHealthy).unwrap();
    assert!(
        health.message.contains("faulty (XIDErrors)") && !health.message.contains("healthy ("),
        "{}",
        health.message
    );
    assert_eq!(s.problem_nodes.len(), 1);
    assert_eq!(s.problem_nodes[0].reason, "XIDErrors");
    assert!(s.problem_nodes[0].message.contains("fallen off the bus"));
    assert_eq!(state_of(&s, ConditionType::Stalled), ConditionStatus::True);
}

#[test]
fn capacity_says_what_is_expected_in_which_resource_and_which_sizes_are_unknown() {
    let mut h100 = old_node("h100", 8, 8);
    h100.labels.insert(
        crate::decide::names::INSTANCE_TYPE_LABEL.into(),
        "Standard_ND96isr_H100_v5".into(),
    );
    let mut odd = old_node("odd", 2, 2);
    odd.labels.insert(
        crate::decide::names::INSTANCE_TYPE_LABEL.into(),
        "Standard_ND96is_flex_H100_v5".into(),
    );
    let s = Case::new(vec![h100, odd]).run().status;
    let capacity = s.capacity.clone().unwrap();
    assert_eq!(capacity.resource, "nvidia.com/gpu");
    assert_eq!(
        capacity.expected, 9,
        "8 for the H100 size, at least 1 for the unknown"
    );
    assert_eq!(capacity.unknown_sizes, vec!["Standard_ND96is_flex_H100_v5"]);
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::True);
}

#[test]
fn cordoned_nodes_are_reported_but_do_not_fail_the_pool() {
    let mut cordoned = old_node("cordoned", 0, 0);
    cordoned.unschedulable = true;
    let s = Case::new(vec![old_node("a", 1, 1), cordoned.clone()])
        .run()
        .status;
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::True);
    assert_eq!(s.problem_nodes[0].reason, Reason::Cordoned.as_str());
    let s = Case::new(vec![cordoned]).run().status;
    assert_eq!(
        reason_of(&s, ConditionType::Ready),
        Reason::AllNodesCordoned
    );
}

#[test]
fn not_ready_nodes() {
    let mut down = old_node("down", 1, 1);
    down.ready = NodeReadiness::NotReady;
    let s = Case::new(vec![old_node("a", 1, 1), down]).run().status;
    assert_eq!(reason_of(&s, ConditionType::Ready), Reason::NodesNotReady);
}

/// A node that joined a minute ago, served its GPUs and lost them now gets its whole grace
/// period from the loss, not from its creation (under the full suite's load the readiness test
/// saw a Continuous gate close 3.8 s after a loss with a 4 s grace, because the node was young).
#[test]
fn a_young_node_that_loses_its_gpus_gets_the_grace_period_from_the_loss() {
    let mut young = gpu_node("young", 1, 0);
    young.created = Some("2026-11-23T11:59:00Z".parse().unwrap());
    let mut case = Case::new(vec![old_node("a", 1, 1), young]);
    case.previous = Case::new(vec![old_node("a", 1, 1)]).run().status.conditions;
    let out = case.run();
    assert_eq!(
        out.status.problem_nodes[0].since.as_ref().map(|t| t.0),
        Some(now())
    );
    assert_eq!(
        out.recheck_after,
        Some(Duration::from_secs(10 * 60 + 1)),
        "the whole grace period, from now"
    );
}

/// A reboot or a plugin restart is progress for a grace period from when that problem began,
/// and a failure only after it (#10.5).
#[test]
fn transient_node_trouble_is_progress_until_it_outlasts_the_grace_period() {
    let history = |case: &mut Case| {
        case.previous = Case::new(vec![old_node("a", 1, 1)]).run().status.conditions;
    };
    let mut rebooting = old_node("rebooting", 1, 1);
    rebooting.ready = NodeReadiness::NotReady;
    rebooting.ready_since = Some("2026-11-23T11:59:00Z".parse().unwrap());
    let mut case = Case::new(vec![old_node("a", 1, 1), rebooting.clone()]);
    history(&mut case);
    let out = case.run();
    assert_eq!(
        reason_of(&out.status, ConditionType::Reconciling),
        Reason::WaitingForGpus
    );
    assert!(cond(&out.status, ConditionType::Stalled).is_none());
    assert_eq!(
        out.status.problem_nodes[0].reason,
        Reason::NotReady.as_str()
    );
    assert_eq!(
        out.recheck_after,
        Some(Duration::from_secs(9 * 60 + 1)),
        "looked at when the grace ends"
    );
    rebooting.ready_since = Some("2026-11-23T11:40:00Z".parse().unwrap());
    let mut case = Case::new(vec![old_node("a", 1, 1), rebooting]);
    history(&mut case);
    assert_eq!(
        reason_of(&case.run().status, ConditionType::Stalled),
        Reason::NodesNotReady
    );

    // The plugin restarted: GPUs at 0 on a node that had them. Progress from now on...
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("restarting", 0, 0)]);
    history(&mut case);
    let first = case.run().status;
    assert!(cond(&first, ConditionType::Stalled).is_none());
    assert_eq!(
        first.problem_nodes[0].since.as_ref().map(|t| t.0),
        Some(now())
    );
    // ...and still, later, counted from when it began (kept in the status)...
    let mut later = first.problem_nodes.clone();
    later[0].since = Some(Time("2026-11-23T11:55:00Z".parse().unwrap()));
    case.previous_problems = later.clone();
    assert!(cond(&case.run().status, ConditionType::Reconciling).is_some());
    // ...until it has lasted longer than the grace period.
    later[0].since = Some(Time("2026-11-23T11:45:00Z".parse().unwrap()));
    case.previous_problems = later;
    let s = case.run().status;
    assert_eq!(reason_of(&s, ConditionType::Stalled), Reason::GpusMissing);
    assert_eq!(
        s.problem_nodes[0].since.as_ref().map(|t| t.0),
        Some("2026-11-23T11:45:00Z".parse().unwrap())
    );
}

#[test]
fn an_empty_pool_says_so_and_is_not_failing() {
    let mut case = Case::new(vec![]);
    case.daemonset = live(0, 0);
    let s = case.run().status;
    let ready = cond(&s, ConditionType::Ready).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        (ConditionStatus::True.as_str(), Reason::NoNodes.as_str())
    );
    assert!(ready.message.contains("agentpool=gpu"), "{}", ready.message);
    assert_eq!(
        reason_of(&s, ConditionType::GpusSchedulable),
        Reason::NoNodes
    );
    assert!(
        cond(&s, ConditionType::Stalled).is_none()
            && cond(&s, ConditionType::Reconciling).is_none()
    );
}

#[test]
fn a_new_spec_or_a_new_daemonset_is_progress() {
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
    case.daemonset = live_with(Rollout {
        generation: 2,
        observed_generation: 1,
        desired: 2,
        ready: 2,
        updated: 2,
    });
    let s = case.run().status;
    assert_eq!(
        reason_of(&s, ConditionType::DevicePluginReady),
        Reason::DaemonSetProgressing
    );
    assert_eq!(
        state_of(&s, ConditionType::Reconciling),
        ConditionStatus::True
    );
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::False);
    case.daemonset = PluginState::Pending { id: ds_id() };
    let s = case.run().status;
    assert_eq!(
        reason_of(&s, ConditionType::DevicePluginReady),
        Reason::DaemonSetPending
    );
}

#[test]
fn plugin_pods_are_progress_until_the_rollout_deadline() {
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
    // Pods starting up are progress, until the rollout deadline...
    case.daemonset = live(2, 1);
    let out = case.run();
    assert_eq!(
        reason_of(&out.status, ConditionType::DevicePluginReady),
        Reason::DaemonSetProgressing
    );
    assert_eq!(
        state_of(&out.status, ConditionType::Reconciling),
        ConditionStatus::True
    );
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
    let plugin = cond(&s, ConditionType::DevicePluginReady).unwrap();
    assert_eq!(plugin.reason, Reason::PluginPodsNotReady.as_str());
    assert!(plugin.message.contains("5m"), "{}", plugin.message);
    assert!(
        cond(&s, ConditionType::Reconciling).is_none(),
        "pods that do not get ready are not progress"
    );
    // Pods that cannot even be created (updated < desired) are a stuck rollout.
    case.daemonset = live_with(Rollout {
        generation: 1,
        observed_generation: 1,
        desired: 1,
        ready: 0,
        updated: 0,
    });
    let s = case.run().status;
    let plugin = cond(&s, ConditionType::DevicePluginReady).unwrap();
    assert_eq!(plugin.reason, Reason::DaemonSetRolloutStuck.as_str());
    assert!(
        plugin.message.contains("PriorityClass"),
        "{}",
        plugin.message
    );
    case.daemonset = live(2, 1);
    case.previous.clear();
    assert_eq!(case.run().status.device_plugin.unwrap().ready, 1);
}

#[test]
fn stalled_only_while_true_and_ready_names_the_reason() {
    let mut case = Case::new(vec![old_node("a", 1, 1)]);
    case.stall = Some(Stall {
        reason: Reason::DaemonSetRejected,
        message: "the API server rejected it: x".into(),
    });
    let s = case.run().status;
    assert_eq!(state_of(&s, ConditionType::Stalled), ConditionStatus::True);
    assert_eq!(
        reason_of(&s, ConditionType::Ready),
        Reason::DaemonSetRejected
    );
    assert!(
        cond(&s, ConditionType::Reconciling).is_none(),
        "Stalled and Reconciling never both"
    );
    case.stall = None;
    assert!(cond(&case.run().status, ConditionType::Stalled).is_none());
}

/// For kstatus every not-Ready pool shows exactly one of Reconciling and Stalled.
#[test]
fn not_ready_means_reconciling_or_stalled() {
    let failing = Case::new(vec![old_node("a", 1, 1), old_node("lost", 0, 0)])
        .run()
        .status;
    let stalled = cond(&failing, ConditionType::Stalled).expect("a failure stalls");
    assert_eq!(stalled.reason, Reason::GpusMissing.as_str());
    assert!(stalled.message.contains("lost"), "{}", stalled.message);
    assert!(cond(&failing, ConditionType::Reconciling).is_none());

    let mut fresh = gpu_node("fresh", 0, 0);
    fresh.created = Some("2026-11-23T11:59:00Z".parse().unwrap());
    let waiting = Case::new(vec![fresh]).run().status;
    assert!(
        cond(&waiting, ConditionType::Reconciling).is_some()
            && cond(&waiting, ConditionType::Stalled).is_none()
    );

    let mut cordoned = old_node("c", 1, 1);
    cordoned.unschedulable = true;
    let all_cordoned = Case::new(vec![cordoned]).run().status;
    assert_eq!(
        state_of(&all_cordoned, ConditionType::Ready),
        ConditionStatus::False
    );
    assert_eq!(
        reason_of(&all_cordoned, ConditionType::Stalled),
        Reason::AllNodesCordoned,
        "it will not get better by itself"
    );
    assert!(cond(&all_cordoned, ConditionType::Reconciling).is_none());

    let healthy = Case::new(vec![old_node("a", 1, 1)]).run().status;
    assert!(
        cond(&healthy, ConditionType::Stalled).is_none()
            && cond(&healthy, ConditionType::Reconciling).is_none()
    );
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
        cond(&s, ConditionType::Ready).unwrap().last_transition_time,
        earlier[0].last_transition_time,
        "same status keeps the time"
    );

    let mut flipped = Case::new(vec![old_node("a", 0, 0)]);
    flipped.previous = earlier;
    let s = flipped.run().status;
    assert_eq!(
        cond(&s, ConditionType::Ready)
            .unwrap()
            .last_transition_time
            .0,
        now(),
        "a flip takes the current time"
    );
    assert_eq!(
        cond(&s, ConditionType::DevicePluginReady)
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
    again.previous_problems = first.problem_nodes.clone();
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
    let c = cond(&s, ConditionType::Conflict).unwrap();
    assert_eq!(
        c.reason,
        Reason::NodesSelectedByOtherPoolsAndForeignDevicePlugin.as_str()
    );
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
        state_of(&s, ConditionType::Ready),
        ConditionStatus::True,
        "GPUs are still served"
    );
    let reasons: Vec<_> = s
        .problem_nodes
        .iter()
        .map(|p| (p.name.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("a", Reason::ForeignDevicePlugin.as_str()),
            ("b", Reason::SelectedByOtherPool.as_str())
        ]
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
        reason_of(&s, ConditionType::DevicePluginReady),
        Reason::DuplicateDevicePlugin
    );
    assert_eq!(state_of(&s, ConditionType::Ready), ConditionStatus::False);
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
    let msg = &cond(&s, ConditionType::Ready).unwrap().message;
    assert!(msg.contains("and 40 more"), "{msg}");
}

#[test]
fn every_problem_node_keeps_its_clock_not_only_the_twenty_listed() {
    let nodes: Vec<NodeFacts> = (0..30)
        .map(|i| old_node(&format!("n{i:02}"), 0, 0))
        .collect();
    let mut case = Case::new(nodes);
    case.previous = Case::new(vec![old_node("a", 1, 1)]).run().status.conditions;
    let first = case.run();
    assert_eq!(first.problem_clocks.len(), 30);
    case.previous = first.status.conditions.clone();
    case.previous_problems = first.status.problem_nodes.clone();
    case.at = now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(20))
        .unwrap();
    // After a restart only the status is left: the 10 nodes it does not list start again.
    let restarted = case.run();
    assert_eq!(restarted.problem_clocks.get("n05").unwrap().since, now());
    assert_eq!(restarted.problem_clocks.get("n29").unwrap().since, case.at);
    // Kept by the operator, every node's problem began when it was first seen.
    case.clocks = Some(first.problem_clocks.clone());
    let kept = case.run();
    assert_eq!(kept.problem_clocks.get("n29").unwrap().since, now());
    assert!(
        kept.recheck_after
            .is_none_or(|d| d > Duration::from_secs(60)),
        "no node's grace period is still running: {:?}",
        kept.recheck_after
    );
}

#[test]
fn gpu_sums_saturate_instead_of_overflowing() {
    let huge = old_node("huge-0", i64::MAX, i64::MAX);
    let huge2 = old_node("huge-1", i64::MAX, i64::MAX);
    let out = Case::new(vec![huge, huge2]).run();
    assert_eq!(out.status.gpus_capacity, i64::MAX);
    assert_eq!(out.status.gpus_allocatable, i64::MAX);
}

#[test]
fn a_node_whose_write_fails_is_named_and_the_status_follows_the_others() {
    use crate::decide::applied::{FailedWrite, WRITE_ATTEMPTS_BEFORE_STALL};
    let refused = |attempts| FailedWrite {
        target: "node b".into(),
        code: Some(422),
        message: "denied by policy no-gpupool-on-b".into(),
        attempts,
    };
    let mut case = Case::new(vec![old_node("a", 1, 1), old_node("b", 1, 1)]);
    case.failed_writes = vec![refused(1)];
    let first = case.run();
    assert_eq!(
        first.status.gpus_allocatable, 2,
        "the status follows the nodes"
    );
    assert_eq!(
        state_of(&first.status, ConditionType::Ready),
        ConditionStatus::True
    );
    let reconciling = cond(&first.status, ConditionType::Reconciling).expect("progress");
    assert!(
        reconciling
            .message
            .contains("node b (denied by policy no-gpupool-on-b)"),
        "{}",
        reconciling.message
    );
    assert!(cond(&first.status, ConditionType::Stalled).is_none());

    case.failed_writes = vec![refused(WRITE_ATTEMPTS_BEFORE_STALL)];
    let stuck = case.run();
    assert_eq!(stuck.status.gpus_allocatable, 2);
    assert_eq!(
        reason_of(&stuck.status, ConditionType::Stalled),
        Reason::WriteRejected
    );
    assert_eq!(
        reason_of(&stuck.status, ConditionType::Ready),
        Reason::WriteRejected
    );
    let stalled = cond(&stuck.status, ConditionType::Stalled).unwrap();
    assert!(
        stalled
            .message
            .contains("node b (422: denied by policy no-gpupool-on-b)"),
        "{}",
        stalled.message
    );
    assert!(cond(&stuck.status, ConditionType::Reconciling).is_none());
}

#[test]
fn a_pool_that_depends_on_a_refused_list_says_what_it_cannot_read_and_keeps_the_rest() {
    let case = Case::new(vec![old_node("a", 1, 1)]);
    let before = case.run().status;
    assert_eq!(
        state_of(&before, ConditionType::Ready),
        ConditionStatus::True
    );
    let mut pool = GpuPool::new(
        "p",
        GpuPoolSpec {
            node_selector: selector(&[("agentpool", "gpu")]),
            ..Default::default()
        },
    );
    pool.metadata.generation = Some(3);
    pool.status = Some(before.clone());
    let refused = crate::decide::facts::Unreadable {
        resource: "ConfigMap".into(),
        namespace: Some("gpu-resources".into()),
        code: 403,
        message: "configmaps is forbidden".into(),
    };
    let later = now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60))
        .unwrap();
    let outcome = report_unreadable(&pool, &[refused], later);
    let s = &outcome.status;
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(reason_of(s, ConditionType::Ready), Reason::Forbidden);
    assert_eq!(state_of(s, ConditionType::Ready), ConditionStatus::False);
    assert_eq!(state_of(s, ConditionType::Stalled), ConditionStatus::True);
    let stalled = cond(s, ConditionType::Stalled).unwrap();
    assert!(
        stalled
            .message
            .contains("ConfigMaps in namespace gpu-resources (403: configmaps is forbidden)")
            && stalled.message.contains("gpupool-operator-plugins"),
        "{}",
        stalled.message
    );
    assert_eq!(
        cond(s, ConditionType::GpusSchedulable),
        cond(&before, ConditionType::GpusSchedulable),
        "what is not known anew stays as it was"
    );
    assert_eq!(s.gpus_allocatable, before.gpus_allocatable);
    assert!(cond(s, ConditionType::Reconciling).is_none());
    assert!(
        outcome
            .events
            .iter()
            .any(|e| e.reason == Reason::NotReady && e.note.starts_with("Forbidden: ")),
        "{:?}",
        outcome.events
    );
}

/// #20 (found on a real kubelet): a crash-looping plugin makes its DaemonSet's ready count flap
/// with every restart; DevicePluginReady follows the pods instead, and stays False with one
/// reason (its lastTransitionTime, from which the rollout deadline counts, does not move).
#[test]
fn a_crash_looping_plugin_keeps_device_plugin_ready_false_while_the_daemonset_flaps() {
    use crate::decide::facts::{ContainerHealth, Termination};
    let mut pod = crate::decide::testing::plugin_pod("gpu-resources", "p-a", Some("a"), "gpu");
    pod.container = ContainerHealth {
        restarts: 4,
        waiting: Some(("CrashLoopBackOff".into(), "back-off 40s".into())),
        last_exit: Some(Termination {
            exit_code: 1,
            reason: "Error".into(),
            message: "invalid device discovery strategy".into(),
            at: None,
        }),
        running: false,
    };
    let mut case = Case::new(vec![old_node("a", 0, 0)]);
    case.pods = vec![pod];
    case.daemonset = live(1, 0);
    let first = case.run();
    assert_eq!(
        reason_of(&first.status, ConditionType::DevicePluginReady),
        Reason::PluginPodsNotReady
    );
    assert_eq!(
        state_of(&first.status, ConditionType::Stalled),
        ConditionStatus::True
    );
    let plugin = cond(&first.status, ConditionType::DevicePluginReady)
        .unwrap()
        .clone();
    assert!(
        plugin.message.contains("1 nodes past the grace period: a"),
        "{}",
        plugin.message
    );
    // The pod ran for a moment and the DaemonSet counted it ready: nothing flips.
    case.previous = first.status.conditions.clone();
    case.daemonset = live(1, 1);
    case.at = case
        .at
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(30))
        .unwrap();
    let second = case.run();
    let again = cond(&second.status, ConditionType::DevicePluginReady).unwrap();
    assert_eq!(again.reason, plugin.reason);
    assert_eq!(again.last_transition_time, plugin.last_transition_time);
}

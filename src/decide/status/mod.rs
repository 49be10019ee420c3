//! `report`: the pool's status (counts, problem nodes, conditions) and the events to publish,
//! from what was observed, planned and applied. Conditions follow the Kubernetes conventions
//! and kstatus: Ready, DevicePluginReady and GpusSchedulable are always present; Reconciling,
//! Stalled and Conflict only while True; lastTransitionTime moves only when a status flips.

mod conditions;
mod events;
mod gpus;
mod nodes;
mod plugin;
mod readiness;
#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::{ConditionStatus, ConditionType, GpuPool, GpuPoolStatus, Reason, RolloutSpec};
use crate::decide::Settings;
use crate::decide::applied::{Applied, writes_retrying};
use crate::decide::facts::{NodeFacts, Observed, ProblemClocks, Unreadable};
use crate::decide::plan::Plan;
use crate::decide::scheduling::describe;
use crate::decide::text::name_list;
use conditions::{Assessment, condition, conflict_assessment, rollup};
pub use events::{PoolEvent, pool_events};
use gpus::{capacity_status, counted_resource, gpus_assessment, health_assessment};
use nodes::{Expectations, NodeSummary, summarize};
use plugin::{PluginInputs, device_plugin_status, plugin_assessment};

/// At most this many nodes are listed in `status.problemNodes`.
pub const MAX_PROBLEM_NODES: usize = 20;

/// The computed status, the events to publish, and when to look again.
#[derive(Clone, Debug)]
pub struct StatusOutcome {
    pub status: GpuPoolStatus,
    pub events: Vec<PoolEvent>,
    /// When a grace period or a rollout deadline ends, so the pool is looked at then.
    pub recheck_after: Option<Duration>,
    /// Nodes that can run GPU work now (for the time-to-GPUs metric).
    pub serving: Vec<String>,
    /// When every problem node's problem began (the status lists only the first 20).
    pub problem_clocks: ProblemClocks,
}

pub fn report(o: &Observed, plan: &Plan, applied: &Applied, settings: &Settings) -> StatusOutcome {
    let pool = &o.pool;
    let previous = pool.status.clone().unwrap_or_default();
    let nodes: Vec<&NodeFacts> = o.nodes.iter().map(AsRef::as_ref).collect();
    let summary = node_summary(o, plan, settings, &previous, &nodes);
    let components = components(o, plan, applied, settings, &summary, &previous);
    let recheck_at = components
        .iter()
        .filter_map(|(_, a)| a.recheck_at)
        .chain(
            [summary.next_grace_end, readiness::next_check(plan)]
                .into_iter()
                .flatten(),
        )
        .min();
    let stalled_by_write = applied.stall().is_some();
    let mut assessed = rollup(
        components,
        stalled_by_write,
        &summary,
        plan.plugin.decision.mode,
    );
    assessed.extend(
        conflict_assessment(&plan.plugin.claims, &plan.dra.both)
            .map(|c| (ConditionType::Conflict, c)),
    );
    let status = GpuPoolStatus {
        observed_generation: pool.metadata.generation,
        nodes: nodes.len() as i32,
        nodes_with_gpus: summary.serving.len() as i32,
        gpus_capacity: summary.gpus_capacity,
        gpus_allocatable: summary.gpus_allocatable,
        capacity: Some(capacity_status(o, plan, &summary)),
        node_image: Some(plan.plugin.decision.detected.to_string()),
        readiness_gate: readiness::gate_status(o, plan),
        validation: readiness::validation_status(plan),
        device_plugin: Some(device_plugin_status(
            &plan.plugin.decision,
            &applied.state,
            &plan.plugin.image,
            plan.plugin.rollout.as_ref(),
        )),
        problem_nodes_total: summary.problems.len() as i32,
        problem_nodes: summary
            .problems
            .values()
            .take(MAX_PROBLEM_NODES)
            .cloned()
            .collect(),
        conditions: assessed
            .into_iter()
            .map(|(t, a)| condition(&previous.conditions, pool.metadata.generation, o.now, t, a))
            .collect(),
    };
    let mut events = pool_events(pool.status.as_ref(), &status, applied.change.as_ref());
    events.extend(readiness::readiness_events(o, plan, &applied.nodes_written));
    StatusOutcome {
        events,
        status,
        recheck_after: recheck_at.map(|at| until(o.now, at)),
        problem_clocks: ProblemClocks::of(summary.problems.values()),
        serving: summary.serving,
    }
}

/// The status of a pool gpupool cannot decide for, because a list it depends on is refused
/// (RBAC): `Ready` and `Stalled` say what it cannot read and what to do; the counts, problem
/// nodes and the other conditions stay as last known.
pub fn report_unreadable(
    pool: &GpuPool,
    unreadable: &[Unreadable],
    now: Timestamp,
) -> StatusOutcome {
    let previous = pool.status.clone().unwrap_or_default();
    let listed: Vec<String> = unreadable
        .iter()
        .map(|u| {
            let place = u
                .namespace
                .as_ref()
                .map_or("cluster-wide".to_string(), |ns| {
                    format!("in namespace {ns}")
                });
            format!("{}s {place} ({}: {})", u.resource, u.code, u.message)
        })
        .collect();
    let message = format!(
        "the operator may not list {}, so it cannot decide for this pool: check its RBAC (deploy/rbac.yaml, the chart's rbac.yaml; in the plugin namespace, the Role gpupool-operator-plugins and its binding)",
        listed.join("; ")
    );
    let generation = pool.metadata.generation;
    let blocked = |t, ok| {
        let a = if ok {
            Assessment::ok(Reason::Forbidden, message.clone())
        } else {
            Assessment::failed(Reason::Forbidden, message.clone())
        };
        condition(&previous.conditions, generation, now, t, a)
    };
    let mut conditions = vec![blocked(ConditionType::Ready, false)];
    for t in [
        ConditionType::DevicePluginReady,
        ConditionType::GpusSchedulable,
        ConditionType::GpusHealthy,
    ] {
        conditions.push(
            previous
                .condition(t)
                .cloned()
                .unwrap_or_else(|| blocked(t, false)),
        );
    }
    conditions.extend(
        previous
            .conditions
            .iter()
            .filter(|c| {
                c.type_ == ConditionType::GpusValidated.as_str()
                    || c.type_ == ConditionType::Conflict.as_str()
            })
            .cloned(),
    );
    conditions.push(blocked(ConditionType::Stalled, true));
    let status = GpuPoolStatus {
        observed_generation: generation,
        conditions,
        ..previous.clone()
    };
    StatusOutcome {
        events: pool_events(pool.status.as_ref(), &status, None),
        problem_clocks: ProblemClocks::of(status.problem_nodes.iter()),
        status,
        recheck_after: None,
        serving: Vec::new(),
    }
}

/// How each node stands, summed up, with the problems of validation and the gate.
fn node_summary(
    o: &Observed,
    plan: &Plan,
    settings: &Settings,
    previous: &GpuPoolStatus,
    nodes: &[&NodeFacts],
) -> NodeSummary {
    let clocks = o.problem_clocks();
    let fault_conditions = o.pool.spec.fault_conditions();
    let expectations = Expectations {
        expected: &plan.plugin.expected,
        fault_conditions,
        now: o.now,
        grace: settings.gpu_grace_period,
        previous: &clocks,
        history: previous.observed_generation.is_some(),
    };
    let mut summary = summarize(nodes, expectations, &plan.plugin.claims, &plan.dra);
    nodes::plugin_pod_problems(o, &mut summary);
    nodes::dra_problems(&plan.dra, &mut summary);
    if let Some(rollout) = &plan.plugin.rollout {
        nodes::rollout_problems(rollout, &mut summary);
    }
    readiness::readiness_problems(o, plan, &mut summary);
    summary
}

/// The conditions Ready is rolled up from: the plugin, the GPUs, and validation when set.
fn components(
    o: &Observed,
    plan: &Plan,
    applied: &Applied,
    settings: &Settings,
    summary: &NodeSummary,
    previous: &GpuPoolStatus,
) -> Vec<(ConditionType, Assessment)> {
    let stall = applied.stall();
    let crashing = |nodes: &[(String, Reason)]| -> Vec<String> {
        nodes
            .iter()
            .filter(|(_, r)| *r == Reason::PluginPodFailing)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut plugin = plugin_assessment(&PluginInputs {
        pods_failing: crashing(&summary.failing),
        pods_failing_in_grace: crashing(&summary.waiting),
        rollout: plan.plugin.rollout.as_ref(),
        progress_deadline_seconds: o
            .pool
            .spec
            .rollout
            .as_ref()
            .map_or(RolloutSpec::default().progress_deadline_seconds, |r| {
                r.progress_deadline_seconds
            }),
        decision: &plan.plugin.decision,
        claims: &plan.plugin.claims,
        state: &applied.state,
        stall: stall.as_ref(),
        not_ready_since: false_since(previous, ConditionType::DevicePluginReady),
        rollout_deadline: settings.rollout_deadline,
        now: o.now,
        plugin_nodes: plan.plugin.plugin_nodes,
    });
    if let Some(stall) = &plan.dra.stall {
        plugin = Assessment::failed(stall.reason, stall.message.clone());
    }
    let retrying = writes_retrying(&applied.failed_writes).filter(|_| stall.is_none());
    for progress in hand_over_progress(plan).into_iter().chain(retrying) {
        plugin.progressing = Some(
            plugin
                .progressing
                .map_or(progress.clone(), |p| format!("{p}; {progress}")),
        );
    }
    let gpus = gpus_assessment(
        summary,
        o.nodes.len(),
        &describe(&o.pool.spec.node_selector),
        &counted_resource(o, plan),
    );
    let mut components = vec![
        (ConditionType::DevicePluginReady, plugin),
        (ConditionType::GpusSchedulable, gpus),
        (ConditionType::GpusHealthy, health_assessment(summary)),
    ];
    components.extend(
        readiness::validation_assessment(o, plan, &settings.plugin_namespace)
            .map(|a| (ConditionType::GpusValidated, a)),
    );
    components
}

/// Nodes waiting for another plugin's pods to go before this pool's plugin starts there, and a
/// namespace move waiting for the old pods: progress, said in Reconciling.
fn hand_over_progress(plan: &Plan) -> Option<String> {
    let (held, freeing): (Vec<_>, Vec<_>) = plan
        .plugin
        .placement
        .hand_overs
        .iter()
        .partition(|h| h.held_by.is_some());
    let mut parts = Vec::new();
    if !freeing.is_empty() {
        let nodes: Vec<String> = freeing.iter().map(|h| h.node.clone()).collect();
        parts.push(format!(
            "handing {} over to this pool's plugin once the previous plugin pods there are gone: {}",
            nodes.len(),
            name_list(&nodes, 10)
        ));
    }
    if !held.is_empty() {
        let nodes: Vec<String> = held
            .iter()
            .map(|h| {
                format!(
                    "{} (pool {})",
                    h.node,
                    h.held_by.as_deref().unwrap_or_default()
                )
            })
            .collect();
        parts.push(format!(
            "waiting for the pools whose plugin they carry to release {}: {}",
            nodes.len(),
            name_list(&nodes, 10)
        ));
    }
    let moving: Vec<String> = plan.dra.moving.keys().cloned().collect();
    if !moving.is_empty() || !plan.dra.queued.is_empty() {
        let to = match plan.dra.allocation {
            crate::api::Allocation::DevicePlugin => "the device plugin",
            _ => "the DRA driver",
        };
        let mut part = format!(
            "moving {} nodes to {to}: {}",
            moving.len(),
            name_list(&moving, 10)
        );
        if !plan.dra.queued.is_empty() {
            part.push_str(&format!(
                "; {} more wait for spec.rollout.maxUnavailable",
                plan.dra.queued.len()
            ));
        }
        parts.push(part);
    }
    if !plan.plugin.leftover_pods.is_empty() {
        let pods: Vec<String> = plan
            .plugin
            .leftover_pods
            .iter()
            .map(ToString::to_string)
            .collect();
        parts.push(format!(
            "waiting for the pool's plugin pods in the previous plugin namespace to go: {}",
            name_list(&pods, 10)
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// When the condition last turned False, if it is False.
fn false_since(previous: &GpuPoolStatus, type_: ConditionType) -> Option<Timestamp> {
    previous
        .condition(type_)
        .filter(|c| c.has_status(ConditionStatus::False))
        .map(|c| c.last_transition_time.0)
}

/// From now until `at`, plus a second so the next look lands after it.
fn until(now: Timestamp, at: Timestamp) -> Duration {
    let secs = at.duration_since(now).as_secs_f64().max(0.0);
    Duration::from_secs_f64(secs) + Duration::from_secs(1)
}

//! What the status says about the readiness gate and validation: `status.readinessGate`,
//! `status.validation`, the `GpusValidated` condition, the problem nodes and the events.

use k8s_openapi::jiff::Timestamp;

use crate::api::{GateStatus, Reason, ValidationStatus};
use crate::decide::facts::{Observed, ValidationRecord, ValidationResult};
use crate::decide::plan::{NodeUpdate, Plan};
use crate::decide::readiness::gate::{TaintChange, carries};
use crate::decide::readiness::validation::NodeValidation;
use crate::decide::text::name_list;

use super::conditions::Assessment;
use super::events::PoolEvent;
use super::nodes::NodeSummary;

/// At most this many dry-run changes are listed.
const MAX_LISTED: usize = 20;

/// `status.readinessGate`: the gate the spec names, or one being lifted.
pub(super) fn gate_status(o: &Observed, plan: &Plan) -> Option<GateStatus> {
    let r = &plan.readiness;
    let (key, mode, dry_run) = match &o.pool.spec.readiness_gate {
        Some(gate) => (gate.taint_key.clone(), gate.mode, gate.dry_run),
        // Removed from the spec: reported until its taint is off every node, so it is cleaned up
        // even if the operator restarts meanwhile.
        None if !r.lift.is_empty() => {
            let before = o.pool.status.as_ref()?.readiness_gate.clone()?;
            (before.taint_key, before.mode, before.dry_run)
        }
        None => return None,
    };
    let changes = r
        .gate
        .as_ref()
        .map(|g| g.changes.as_slice())
        .unwrap_or_default();
    let carrying = o.nodes.iter().filter(|n| carries(n, &key)).count();
    let added = changes.iter().filter(|c| c.add).count();
    let removed = changes.len() - added + r.lift.iter().filter(|c| c.key == key).count();
    Some(GateStatus {
        taint_key: key,
        mode,
        dry_run,
        gated_nodes: i32::try_from((carrying + added).saturating_sub(removed)).unwrap_or(i32::MAX),
        would: r
            .gate
            .iter()
            .flat_map(|g| &g.would)
            .take(MAX_LISTED)
            .map(ToString::to_string)
            .collect(),
    })
}

/// `status.validation`.
pub(super) fn validation_status(plan: &Plan) -> Option<ValidationStatus> {
    let states = &plan.readiness.validation.as_ref()?.states;
    let count = |f: fn(&NodeValidation) -> bool| {
        i32::try_from(states.values().filter(|s| f(s)).count()).unwrap_or(i32::MAX)
    };
    Some(ValidationStatus {
        validated: count(|s| matches!(s, NodeValidation::Passed)),
        pending: count(|s| {
            matches!(
                s,
                NodeValidation::Running | NodeValidation::Queued | NodeValidation::AwaitingGpus
            )
        }),
        waiting_for_gpu: count(|s| matches!(s, NodeValidation::WaitingForGpu { .. })),
        failed: count(|s| matches!(s, NodeValidation::Failed { .. })),
    })
}

/// `GpusValidated`, when the pool validates.
pub(super) fn validation_assessment(
    o: &Observed,
    plan: &Plan,
    namespace: &str,
) -> Option<Assessment> {
    o.pool.spec.validation.as_ref()?;
    if let Some(stall) = &plan.readiness.validation_stall {
        return Some(Assessment::failed(stall.reason, stall.message.clone()));
    }
    let states = &plan.readiness.validation.as_ref()?.states;
    let named = |f: &dyn Fn(&NodeValidation) -> bool| -> Option<String> {
        let names: Vec<String> = states
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(n, _)| n.clone())
            .collect();
        (!names.is_empty()).then(|| name_list(&names, 10))
    };
    let failed = named(&|s| matches!(s, NodeValidation::Failed { .. }));
    let pending = named(&|s| matches!(s, NodeValidation::Running | NodeValidation::Queued));
    let awaiting = named(&|s| matches!(s, NodeValidation::AwaitingGpus));
    let waiting = named(&|s| {
        matches!(
            s,
            NodeValidation::WaitingForGpu {
                passed_before: false
            }
        )
    });
    Some(match (failed, pending, awaiting, waiting) {
        (Some(list), ..) => Assessment::failed(
            Reason::ValidationFailed,
            format!(
                "the GPU validation failed on {list}: see status.problemNodes for the error and the failed pod (kubectl -n {namespace} get pods -l app.kubernetes.io/component=gpu-validation,gpupool.io/pool={}); retried with backoff",
                o.pool_key()
            ),
        ),
        (None, Some(list), ..) => Assessment::progressing(
            Reason::ValidationPending,
            format!("validating the GPUs of {list}"),
            format!("validating GPUs on {list}"),
        ),
        (None, None, Some(list), _) => Assessment::progressing(
            Reason::ValidationPending,
            format!(
                "{list} not validated yet: validation starts once their GPUs are ready (see status.problemNodes)"
            ),
            format!("waiting for the GPUs of {list} to validate them"),
        ),
        (None, None, None, Some(list)) => Assessment::progressing(
            Reason::ValidationWaitingForGpu,
            format!("every GPU of {list} is in use: validation waits for a free one"),
            format!("waiting for a free GPU to validate {list}"),
        ),
        (None, None, None, None) => {
            let validated = states
                .values()
                .filter(|s| matches!(s, NodeValidation::Passed))
                .count();
            Assessment::ok(
                Reason::GpusValidated,
                format!("{validated} nodes passed the GPU validation"),
            )
        }
    })
}

/// Problem nodes of the plugin pods, validation and the gate (after those of the nodes' own
/// health).
pub(super) fn readiness_problems(o: &Observed, plan: &Plan, s: &mut NodeSummary) {
    let r = &plan.readiness;
    for (node, state) in r.validation.iter().flat_map(|v| &v.states) {
        let (reason, message) = match state {
            NodeValidation::Failed {
                message,
                retry_at,
                attempts,
                pod,
            } => (
                Reason::ValidationFailed,
                format!(
                    "GPU validation failed ({attempts} attempt{}): {message}; next attempt at {retry_at}{}",
                    if *attempts == 1 { "" } else { "s" },
                    pod.as_ref()
                        .map(|p| format!("; its log: kubectl -n {} logs {}", p.namespace, p.name))
                        .unwrap_or_default()
                ),
            ),
            NodeValidation::Running | NodeValidation::Queued => (
                Reason::ValidationPending,
                "GPU validation running or queued".to_string(),
            ),
            NodeValidation::WaitingForGpu { passed_before } => (
                Reason::ValidationWaitingForGpu,
                format!(
                    "every GPU is in use; validation waits for a free one{}",
                    if *passed_before {
                        " (it passed before)"
                    } else {
                        ""
                    }
                ),
            ),
            NodeValidation::Passed | NodeValidation::AwaitingGpus => continue,
        };
        s.problem(node, reason, message, None);
    }
    let Some(gate) = &o.pool.spec.readiness_gate else {
        return;
    };
    for node in o.nodes.iter().filter(|n| carries(n, &gate.taint_key)) {
        if let Some(Err(not_ready)) = r.nodes.get(&node.name) {
            let message = format!(
                "kept out of GPU work by {}: {}",
                gate.taint_key, not_ready.why
            );
            s.problem(&node.name, Reason::Gated, message, Some(not_ready.since));
        }
    }
}

/// Events about the gate's writes (or, in dry run, what it would write) and validation results.
/// The gate's and validation's events, from the node writes that went through (a write the
/// rate limit deferred, the API refused or found unneeded is announced when it is made, once).
pub(super) fn readiness_events(
    o: &Observed,
    plan: &Plan,
    written: &[NodeUpdate],
) -> Vec<PoolEvent> {
    let mut events = gate_events(written);
    events.extend(dry_run_event(o, plan));
    events.extend(validation_events(written));
    events
}

fn gate_events(written: &[NodeUpdate]) -> Vec<PoolEvent> {
    let changes: Vec<&TaintChange> = written.iter().filter_map(|u| u.taint.as_ref()).collect();
    let nodes = |add: bool| -> Vec<String> {
        changes
            .iter()
            .filter(|c| c.add == add)
            .map(|c| c.node.clone())
            .collect()
    };
    let (opened, closed) = (nodes(false), nodes(true));
    let mut events = Vec::new();
    if !opened.is_empty() {
        let note = format!(
            "removed the readiness gate taint from {}",
            name_list(&opened, 20)
        );
        events.push(event(false, Reason::GateOpened, note));
    }
    if !closed.is_empty() {
        let note = format!(
            "put the readiness gate taint on {}: not GPU-ready for longer than the grace period",
            name_list(&closed, 20)
        );
        events.push(event(true, Reason::GateClosed, note));
    }
    events
}

/// What a dry run would do, when that changed since the last status said it.
fn dry_run_event(o: &Observed, plan: &Plan) -> Option<PoolEvent> {
    let would: Vec<String> = plan
        .readiness
        .gate
        .iter()
        .flat_map(|g| &g.would)
        .map(ToString::to_string)
        .collect();
    let said_before = o
        .pool
        .status
        .as_ref()
        .and_then(|s| s.readiness_gate.as_ref())
        .map(|g| g.would.clone())
        .unwrap_or_default();
    let now: Vec<String> = would.iter().take(MAX_LISTED).cloned().collect();
    (!would.is_empty() && now != said_before).then(|| {
        event(
            false,
            Reason::GateDryRun,
            format!("dry run, would {}", name_list(&would, 20)),
        )
    })
}

fn validation_events(written: &[NodeUpdate]) -> Vec<PoolEvent> {
    let records: Vec<(&String, &ValidationRecord)> = written
        .iter()
        .filter_map(|u| Some((&u.node, u.record.as_ref()?)))
        .collect();
    [
        (ValidationResult::Passed, false, Reason::ValidationPassed),
        (ValidationResult::Failed, true, Reason::ValidationFailed),
    ]
    .into_iter()
    .filter_map(|(result, warning, reason)| {
        let nodes: Vec<String> = records
            .iter()
            .filter(|(_, rec)| rec.result == result)
            .map(|(n, rec)| match rec.message.as_str() {
                "" => n.to_string(),
                message => format!("{n} ({message})"),
            })
            .collect();
        let verb = if warning { "failed" } else { "passed" };
        (!nodes.is_empty()).then(|| {
            let note = format!("GPU validation {verb}: {}", name_list(&nodes, 10));
            event(warning, reason, note)
        })
    })
    .collect()
}

fn event(warning: bool, reason: Reason, note: String) -> PoolEvent {
    PoolEvent {
        warning,
        reason,
        note: super::events::truncate(&note),
    }
}

/// When to look at the pool again for the gate or validation: a failed node's retry, a running
/// validation's timeout, a Continuous gate's grace period ending.
pub(super) fn next_check(plan: &Plan) -> Option<Timestamp> {
    let r = &plan.readiness;
    let retries = r
        .validation
        .iter()
        .flat_map(|v| v.states.values())
        .filter_map(|s| match s {
            NodeValidation::Failed { retry_at, .. } => Some(*retry_at),
            _ => None,
        });
    let timeouts = r.validation.iter().filter_map(|v| v.next_check);
    let graces = r.gate.iter().filter_map(|g| g.next_check);
    retries.chain(timeouts).chain(graces).min()
}

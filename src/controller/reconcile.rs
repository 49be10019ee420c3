//! One reconcile of one pool: observe → plan → apply → report, then publish what changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{debug, info};

use crate::api::{ConditionType, GpuPool};
use crate::decide::applied::{Applied, FailedWrite, PluginState};
use crate::decide::plugin::action::DaemonSetAction;
use crate::decide::plugin::gpu_use_wanted;
use crate::decide::{StatusOutcome, plan, plan_cleanup, report, report_unreadable};

use super::apply::{TransientError, apply_cleanup, apply_daemonsets, apply_nodes, write_status};
use super::context::Context;
use super::finalizer;
use super::observe::{gpu_busy, observe};

/// A replaced DaemonSet is recreated once its deletion is visible; the watch usually brings that
/// first, this is the fallback.
const PENDING_RETRY: Duration = Duration::from_secs(2);
/// The soonest a pool with node writes left is looked at again.
const MIN_NODE_WRITE_RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Apply(#[from] TransientError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("updating the finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("{0}")]
    Writes(String),
}

impl ReconcileError {
    fn writes(failed: &[FailedWrite]) -> ReconcileError {
        let listed: Vec<String> = failed
            .iter()
            .map(|f| format!("{}: {}", f.target, f.message))
            .collect();
        ReconcileError::Writes(format!(
            "{} writes failed: {}",
            failed.len(),
            crate::decide::text::name_list(&listed, 5)
        ))
    }
}

pub async fn reconcile(pool: Arc<GpuPool>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // A pool whose last reconcile failed waits out its backoff, whatever events come meanwhile
    // (a spec change or its deletion does not wait).
    if let Some(wait) = ctx.backing_off(&pool) {
        return Ok(Action::requeue(wait));
    }
    let started = Instant::now();
    let result = reconcile_pool(pool, &ctx).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    result
}

async fn reconcile_pool(pool: Arc<GpuPool>, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = pool.name_any();
    if let Err(unreadable) = ctx.caches_for(&pool).await {
        return report_unreadable_pool(ctx, &pool, &unreadable).await;
    }
    if pool.metadata.deletion_timestamp.is_some() {
        return clean_up(ctx, pool).await;
    }
    let mut observed = observe(ctx, ctx.as_written(pool));
    let ask = gpu_use_wanted(&observed, &ctx.settings);
    if !ask.is_empty() {
        observed.gpu_busy = gpu_busy(&ctx.client, &ask).await;
    }
    let plan = plan(&observed, &ctx.settings);
    let applied = apply_daemonsets(&ctx.client, &ctx.settings.plugin_namespace, &plan).await?;
    if !finalizer::has_finalizer(&observed.pool)
        && finalizer::add(&ctx.client, &observed.pool)
            .await
            .map_err(ReconcileError::Finalizer)?
            == finalizer::Patched::Stale
    {
        // No finalizer, so no node writes: they would outlive a pool that is going.
        return Ok(Action::requeue(PENDING_RETRY));
    }
    let mut applied = apply_nodes(ctx, &name, &plan, applied).await;
    ctx.keep(&observed.pool, || {
        ctx.count_failed_writes(&name, &mut applied.failed_writes)
    });
    let outcome = report(&observed, &plan, &applied, &ctx.settings);
    let written = publish(ctx, &observed.pool, &outcome).await?;
    ctx.keep(&observed.pool, || {
        remember(ctx, &name, &observed, &plan, &applied, &outcome)
    });
    if !applied.failed_writes.is_empty() {
        // The status says what failed; the error backs the pool off.
        return Err(ReconcileError::writes(&applied.failed_writes));
    }
    ctx.reset_retry(&name);
    let next = next_look(&applied, &outcome, ctx.resync, ctx.settings.stall_retry);
    log_outcome(&name, &applied, &outcome, written, next);
    Ok(Action::requeue(next))
}

/// What the operator keeps of a reconcile for the next ones and for its metrics (only while the
/// pool exists: see `Context::keep`).
fn remember(
    ctx: &Context,
    name: &str,
    observed: &crate::decide::Observed,
    plan: &crate::decide::Plan,
    applied: &Applied,
    outcome: &StatusOutcome,
) {
    // A refused DaemonSet is remembered, so the same write waits for a spec change or the stall
    // retry; a write that went through (or none needed) forgets it.
    if applied.rejected.is_some()
        || applied.change.is_some()
        || plan.plugin.daemonset == DaemonSetAction::Nothing
    {
        ctx.record_rejection(name, applied.rejected.clone());
    }
    count_node_writes(ctx, name, &applied.nodes_written);
    ctx.remember_problem_clocks(name, outcome.problem_clocks.clone());
    // Members: the nodes selected, and those that left with a gate taint still to lift (the
    // write was deferred or failed): the next reconcile must still know they were the pool's.
    let lifted: std::collections::HashSet<&str> = applied
        .nodes_written
        .iter()
        .filter(|u| u.taint.as_ref().is_some_and(|t| !t.add))
        .map(|u| u.node.as_str())
        .collect();
    let leaving =
        plan.readiness.lift.iter().map(|l| &l.node).filter(|n| {
            !lifted.contains(n.as_str()) && observed.strays.iter().any(|s| &s.name == *n)
        });
    let selected: Vec<String> = observed.nodes.iter().map(|n| n.name.clone()).collect();
    ctx.metrics.set_pool(name, &outcome.status);
    ctx.record_gpu_waits(name, &selected, &outcome.serving);
    let members = selected.iter().chain(leaving).cloned();
    let serving =
        plan.plugin.decision.mode == crate::api::PluginMode::Managed && plan.plugin.live.is_some();
    ctx.wake(ctx.members.record(name, members, serving));
}

/// A pool that depends on a watch the API server refuses: nothing is decided or written but its
/// status, which says so; it is woken when the watch lists again, and looked at every minute.
async fn report_unreadable_pool(
    ctx: &Context,
    pool: &Arc<GpuPool>,
    unreadable: &[crate::decide::facts::Unreadable],
) -> Result<Action, ReconcileError> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let outcome = report_unreadable(pool, unreadable, now);
    publish(ctx, pool, &outcome).await?;
    ctx.keep(pool, || {
        ctx.metrics.set_pool(&pool.name_any(), &outcome.status)
    });
    Ok(Action::requeue(ctx.settings.stall_retry))
}

/// A deleted pool: its plugin comes off its nodes before the finalizer goes.
async fn clean_up(ctx: &Context, pool: Arc<GpuPool>) -> Result<Action, ReconcileError> {
    let name = pool.name_any();
    // What is kept for the pool is dropped when its deletion reaches the pool watch: that is
    // also when the pools it shared nodes with are woken.
    if !finalizer::has_finalizer(&pool) {
        return Ok(Action::await_change());
    }
    let observed = observe(ctx, pool);
    let cleanup = plan_cleanup(&observed);
    if cleanup.is_done() {
        let _ = finalizer::remove(&ctx.client, &observed.pool)
            .await
            .map_err(ReconcileError::Finalizer)?;
        ctx.node_writer.forget(&name);
        info!(pool = %name, "deleted: its device plugin is off every node");
        return Ok(Action::await_change());
    }
    let failed = apply_cleanup(ctx, &name, &cleanup).await?;
    if !failed.is_empty() {
        return Err(ReconcileError::writes(&failed));
    }
    debug!(pool = %name, pods_left = cleanup.pods_left.len(), "deleting: waiting for its plugin pods to go");
    // Pod deletions wake the pool at once; this is the fallback.
    Ok(Action::requeue(PENDING_RETRY))
}

/// Writes the status (only when it changed) and publishes the events. Returns whether the
/// status was written.
async fn publish(
    ctx: &Context,
    pool: &GpuPool,
    outcome: &StatusOutcome,
) -> Result<bool, ReconcileError> {
    let changed = pool.status.as_ref() != Some(&outcome.status);
    if changed {
        write_status(&ctx.client, &pool.name_any(), &outcome.status)
            .await
            .map_err(ReconcileError::Status)?;
        ctx.wrote_status(pool, &outcome.status);
    }
    for event in &outcome.events {
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.to_string(),
            note: Some(event.note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.events.publish(ev, pool.object_ref(&()));
    }
    Ok(changed)
}

/// When to look at the pool again (a spec change or an event wakes it sooner).
fn next_look(
    applied: &Applied,
    outcome: &StatusOutcome,
    resync: Duration,
    stall_retry: Duration,
) -> Duration {
    if let Some(due) = applied.node_writes_due {
        // Not sooner than that: a pool waiting for its share of the writes must not spin.
        due.max(MIN_NODE_WRITE_RETRY)
    } else if applied.stall.is_some() {
        stall_retry
    } else if matches!(applied.state, PluginState::Pending { .. }) {
        PENDING_RETRY
    } else {
        outcome.recheck_after.map_or(resync, |t| t.min(resync))
    }
}

/// One line per reconcile: info when something was written, debug otherwise.
fn log_outcome(
    pool: &str,
    applied: &Applied,
    outcome: &StatusOutcome,
    written: bool,
    next: Duration,
) {
    let s = &outcome.status;
    let ready = s.condition(ConditionType::Ready);
    let (ready, reason) = ready.map_or(("Unknown", ""), |c| (c.status.as_str(), c.reason.as_str()));
    let daemonset = applied
        .change
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    if written || applied.change.is_some() {
        info!(pool = %pool, nodes = s.nodes, gpus = s.gpus_allocatable, ready, reason, daemonset, status_written = written, requeue = ?next, "reconciled");
    } else {
        debug!(pool = %pool, nodes = s.nodes, gpus = s.gpus_allocatable, ready, reason, requeue = ?next, "reconciled, nothing to change");
    }
}

/// Transient errors: exponential backoff per pool, never a hot loop.
pub fn error_policy(pool: Arc<GpuPool>, _error: &ReconcileError, ctx: Arc<Context>) -> Action {
    // A pool deleted meanwhile gets no backoff kept for it.
    let delay = ctx.keep(&pool, || ctx.back_off(&pool));
    Action::requeue(delay.unwrap_or(Duration::from_secs(1)))
}

/// The gate and validation counters, from the node writes that went through.
fn count_node_writes(ctx: &Context, pool: &str, written: &[crate::decide::plan::NodeUpdate]) {
    for update in written {
        if let Some(taint) = &update.taint {
            ctx.metrics.gate_written(pool, taint.add);
        }
        if let Some(record) = &update.record {
            let passed = record.result == crate::decide::facts::ValidationResult::Passed;
            ctx.metrics.validated(pool, passed);
        }
    }
}

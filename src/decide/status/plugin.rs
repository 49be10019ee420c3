//! `DevicePluginReady`: whether the device plugin runs where it should, and
//! `status.devicePlugin`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::RolloutState;
use crate::api::{DevicePluginStatus, PluginMode, Reason};
use crate::decide::applied::PluginState;
use crate::decide::facts::{Rollout, Stall};
use crate::decide::plugin::claims::NodeClaims;
use crate::decide::plugin::mode::PluginDecision;
use crate::decide::plugin::rollout::RolloutPlan;
use crate::decide::text::name_list;

use super::conditions::Assessment;

/// What the plugin condition is judged from.
pub(super) struct PluginInputs<'a> {
    pub decision: &'a PluginDecision,
    pub claims: &'a NodeClaims,
    pub state: &'a PluginState,
    pub stall: Option<&'a Stall>,
    /// When DevicePluginReady last turned False (the rollout deadline counts from there).
    pub not_ready_since: Option<Timestamp>,
    pub rollout_deadline: Duration,
    pub now: Timestamp,
    /// Nodes the plugin should run on (see `Plan::plugin_nodes`).
    pub plugin_nodes: usize,
    /// Nodes whose plugin pod the kubelet cannot run (crash loop, image pull): past their grace
    /// period, and within it.
    pub pods_failing: Vec<String>,
    pub pods_failing_in_grace: Vec<String>,
    /// The plugin's GPU-verified rollout, when gpupool runs it (then the DaemonSet's own count of
    /// updated pods says nothing: its strategy is OnDelete).
    pub rollout: Option<&'a RolloutPlan>,
    pub progress_deadline_seconds: i32,
}

pub(super) fn plugin_assessment(i: &PluginInputs) -> Assessment {
    if let Some(stall) = i.stall {
        return Assessment::failed(stall.reason, stall.message.clone());
    }
    if i.decision.mode == PluginMode::Skipped && !i.claims.foreign_plugins.is_empty() {
        return duplicate_plugin(i.claims);
    }
    // A crash-looping plugin makes its DaemonSet's ready count flap with every restart: judged
    // by the pods themselves, DevicePluginReady stays False (and its rollout deadline keeps
    // counting) until they run.
    if !i.pods_failing.is_empty() {
        return Assessment::failed(
            Reason::PluginPodsNotReady,
            format!(
                "the kubelet cannot run the device plugin on {} nodes past the grace period: {}; see status.problemNodes for each pod's error and log",
                i.pods_failing.len(),
                name_list(&i.pods_failing, 10)
            ),
        );
    }
    if !i.pods_failing_in_grace.is_empty() {
        let nodes = name_list(&i.pods_failing_in_grace, 10);
        return Assessment::progressing(
            Reason::PluginPodsNotReady,
            format!(
                "the device plugin restarts on {} nodes within their grace period (a GPU driver still installing does this): {nodes}; see status.problemNodes",
                i.pods_failing_in_grace.len()
            ),
            format!("waiting for the device plugin to run on {nodes}"),
        );
    }
    if let Some(assessment) = i.rollout.and_then(|r| rollout_assessment(r, i)) {
        return assessment;
    }
    match i.state {
        PluginState::NotDeployed => Assessment::ok(i.decision.reason, i.decision.message.clone()),
        PluginState::Pending { id } => {
            let message = format!("DaemonSet {id} is being created");
            Assessment::progressing(Reason::DaemonSetPending, message.clone(), message)
        }
        PluginState::Live { id, rollout } if rollout.observed_generation < rollout.generation => {
            Assessment::progressing(
                Reason::DaemonSetProgressing,
                format!("the DaemonSet controller has not yet picked up the latest spec of {id}"),
                format!("DaemonSet {id} is rolling out"),
            )
        }
        // Nodes just labelled for the plugin: the DaemonSet controller has not counted them yet
        // (a new DaemonSet says "0 of 0 ready" before then).
        PluginState::Live { id, rollout }
            if usize::try_from(rollout.desired).unwrap_or(0) < i.plugin_nodes =>
        {
            unscheduled(i, &id.to_string(), rollout)
        }
        PluginState::Live { id, rollout }
            if (rollout.updated < rollout.desired && i.rollout.is_none())
                || rollout.ready < rollout.desired =>
        {
            rolling_out(i, &id.to_string(), &id.namespace, &id.name, rollout)
        }
        PluginState::Live { id, rollout } => Assessment::ok(
            Reason::DaemonSetReady,
            format!("{} plugin pods of {id} are ready", rollout.ready),
        ),
    }
}

fn duplicate_plugin(claims: &NodeClaims) -> Assessment {
    let nodes: Vec<String> = claims.foreign_plugins.keys().cloned().collect();
    let plugins: BTreeSet<&String> = claims.foreign_plugins.values().flatten().collect();
    let plugins: Vec<&str> = plugins.into_iter().map(String::as_str).collect();
    Assessment::failed(
        Reason::DuplicateDevicePlugin,
        format!(
            "the node image ships the device plugin, yet DaemonSet {} also runs on {}: two plugins on one node make nvidia.com/gpu unreliable (the AKS article warns against this); delete that DaemonSet or keep it off these nodes",
            plugins.join(", "),
            name_list(&nodes, 10)
        ),
    )
}

/// Fewer plugin pods scheduled than nodes labelled for them: the DaemonSet controller has not
/// caught up yet (progress), or, past the rollout deadline, something keeps the pods off.
fn unscheduled(i: &PluginInputs, id: &str, r: &Rollout) -> Assessment {
    let counts = format!(
        "{} of the {} nodes labelled for it have a plugin pod scheduled",
        r.desired, i.plugin_nodes
    );
    let deadline = i
        .not_ready_since
        .unwrap_or(i.now)
        .checked_add(SignedDuration::try_from(i.rollout_deadline).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if deadline > i.now {
        let mut a = Assessment::progressing(
            Reason::DaemonSetProgressing,
            format!("{id}: {counts}"),
            format!("DaemonSet {id} is rolling out"),
        );
        a.recheck_at = Some(deadline);
        a
    } else {
        Assessment::failed(
            Reason::DaemonSetRolloutStuck,
            format!(
                "{id}: {counts} for longer than {}: a taint or a scheduling rule keeps the DaemonSet's pods off the others (kubectl describe daemonset)",
                humantime::format_duration(i.rollout_deadline)
            ),
        )
    }
}

/// Pods need time to be created, pulled and started; past the rollout deadline (counted from
/// when the plugin stopped being ready) it is a failure, not progress.
fn rolling_out(i: &PluginInputs, id: &str, namespace: &str, name: &str, r: &Rollout) -> Assessment {
    let since = i.not_ready_since.unwrap_or(i.now);
    let deadline = since
        .checked_add(SignedDuration::try_from(i.rollout_deadline).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let counts = format!(
        "{} of {} plugin pods updated, {} ready",
        r.updated, r.desired, r.ready
    );
    let waited = humantime::format_duration(i.rollout_deadline);
    if deadline > i.now {
        let mut a = Assessment::progressing(
            Reason::DaemonSetProgressing,
            format!("{id} rolling out: {counts}"),
            format!("DaemonSet {id} is rolling out"),
        );
        a.recheck_at = Some(deadline);
        a
    } else if r.updated < r.desired {
        Assessment::failed(
            Reason::DaemonSetRolloutStuck,
            format!(
                "{id}: {counts} for longer than {waited}: the DaemonSet controller cannot create the pods; its FailedCreate events (kubectl -n {namespace} describe daemonset {name}) name the cause, e.g. a missing PriorityClass (spec.devicePlugin.priorityClassName), a quota or an admission policy"
            ),
        )
    } else {
        Assessment::failed(
            Reason::PluginPodsNotReady,
            format!(
                "{id}: {counts} for longer than {waited}: check the pods with kubectl -n {namespace} get pods -l name=nvidia-device-plugin-ds and their logs (image pull errors, crash loops)"
            ),
        )
    }
}

/// DevicePluginReady while a GPU-verified rollout is not complete.
fn rollout_assessment(r: &RolloutPlan, i: &PluginInputs) -> Option<Assessment> {
    let s = &r.status;
    let total = s.updated + s.left;
    let revision = |rev: &str| rev.chars().take(10).collect::<String>();
    let replacing: Vec<String> = s.in_progress.iter().map(|n| n.name.clone()).collect();
    match s.state {
        RolloutState::Complete => None,
        // Nothing being replaced and nothing in the way: the DaemonSet's own state says more.
        RolloutState::Progressing if replacing.is_empty() && r.blocked_by.is_empty() => None,
        RolloutState::Progressing if replacing.is_empty() => {
            let nodes = name_list(&r.blocked_by, 10);
            Some(Assessment::progressing(
                Reason::PluginRollingOut,
                format!(
                    "rolling the device plugin out to {} (revision {}): {} of {total} nodes run it; waiting, because nodes without GPU service use up spec.rollout.maxUnavailable: {nodes}",
                    s.target_image,
                    revision(&s.target_revision),
                    s.updated
                ),
                format!("the plugin rollout waits for {nodes} to serve GPUs"),
            ))
        }
        RolloutState::Progressing => {
            let nodes = name_list(&replacing, 10);
            Some(Assessment::progressing(
                Reason::PluginRollingOut,
                format!(
                    "rolling the device plugin out to {} (revision {}) node by node: {} of {total} nodes run it; replacing {nodes}, each must serve its GPUs again within {} s",
                    s.target_image,
                    revision(&s.target_revision),
                    s.updated,
                    i.progress_deadline_seconds
                ),
                format!("replacing the device plugin on {nodes}"),
            ))
        }
        RolloutState::Halted => {
            let halted: Vec<String> = s
                .halted
                .iter()
                .map(|h| format!("{} ({})", h.name, h.message))
                .collect();
            let back = s.last_good.as_ref().map_or(String::new(), |g| {
                format!(
                    ", or set spec.rollout.onFailure: Rollback to put the last good plugin {} back",
                    g.image
                )
            });
            Some(Assessment::failed(
                Reason::PluginRolloutHalted,
                format!(
                    "the device plugin rollout to {} (revision {}) halted: {} node(s) did not serve their GPUs within {} s of getting it: {}; no further node is touched ({} still run the previous plugin). Fix spec.devicePlugin (image, env) or the sharing/MIG config and gpupool rolls the fix out{back}",
                    s.target_image,
                    revision(&s.target_revision),
                    halted.len(),
                    i.progress_deadline_seconds,
                    name_list(&halted, 5),
                    s.left
                ),
            ))
        }
        RolloutState::RolledBack => Some(Assessment::failed(
            Reason::PluginRolledBack,
            format!(
                "the device plugin rollout of revision {} halted, and the last good plugin {} (revision {}) is put back: {} of {total} nodes run it{}. Fix spec.devicePlugin (image, env) or the sharing/MIG config to roll out again",
                revision(s.halted_revision.as_deref().unwrap_or_default()),
                s.target_image,
                revision(&s.target_revision),
                s.updated,
                if replacing.is_empty() {
                    String::new()
                } else {
                    format!(", replacing {}", name_list(&replacing, 10))
                }
            ),
        )),
    }
}

pub(super) fn device_plugin_status(
    decision: &PluginDecision,
    state: &PluginState,
    image: &str,
    plan_rollout: Option<&RolloutPlan>,
) -> DevicePluginStatus {
    let (name, rollout) = match state {
        PluginState::NotDeployed => (None, Rollout::default()),
        PluginState::Pending { id } => (Some(id.to_string()), Rollout::default()),
        PluginState::Live { id, rollout } => (Some(id.to_string()), rollout.clone()),
    };
    DevicePluginStatus {
        mode: decision.mode,
        reason: decision.reason.to_string(),
        message: decision.message.clone(),
        daemon_set: name,
        image: (decision.mode == PluginMode::Managed).then(|| image.to_string()),
        desired: rollout.desired,
        ready: rollout.ready,
        updated: rollout.updated,
        rollout: plan_rollout.map(|r| r.status.clone()),
    }
}

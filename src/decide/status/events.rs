//! Which Kubernetes Events a reconcile publishes on the GpuPool: what an admin wants to see in
//! `kubectl describe gpupool` (DaemonSet writes, mode changes, conflicts, Ready flips), and
//! nothing in steady state.

use crate::api::{ConditionType, GpuPoolStatus, Reason};
use crate::decide::applied::DaemonSetChange;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
}

pub fn pool_events(
    previous: Option<&GpuPoolStatus>,
    next: &GpuPoolStatus,
    change: Option<&DaemonSetChange>,
) -> Vec<PoolEvent> {
    let mut events = Vec::new();
    if let Some(change) = change {
        events.push(PoolEvent {
            warning: matches!(change, DaemonSetChange::Replaced { .. }),
            reason: change.reason(),
            note: change.to_string(),
        });
    }
    events.extend(mode_change(previous, next));
    events.extend(rollout_change(previous, next));
    let conflict = next.condition(ConditionType::Conflict);
    if let Some(conflict) = conflict.filter(|_| {
        previous
            .and_then(|p| p.condition(ConditionType::Conflict))
            .is_none()
    }) {
        events.push(PoolEvent {
            warning: true,
            reason: Reason::Conflict,
            note: truncate(&conflict.message),
        });
    }
    let ready_flip = ready_flip(previous, next);
    let flipped = ready_flip.is_some();
    events.extend(ready_flip);
    // A pool that just turned NotReady already says why; a later change of the reason (or a
    // stall while Ready stays False) gets its own event.
    let stalled = next.condition(ConditionType::Stalled);
    let stalled_before = previous.and_then(|p| p.condition(ConditionType::Stalled));
    if let Some(stalled) =
        stalled.filter(|s| !flipped && stalled_before.map(|b| &b.reason) != Some(&s.reason))
    {
        events.push(PoolEvent {
            warning: true,
            reason: Reason::Stalled,
            note: truncate(&format!("{}: {}", stalled.reason, stalled.message)),
        });
    }
    events
}

fn mode_change(previous: Option<&GpuPoolStatus>, next: &GpuPoolStatus) -> Option<PoolEvent> {
    let mode = |s: &GpuPoolStatus| s.device_plugin.as_ref().map(|d| d.mode);
    let (before, after) = (mode(previous?)?, mode(next)?);
    (before != after).then(|| PoolEvent {
        warning: false,
        reason: Reason::PluginModeChanged,
        note: format!(
            "device plugin mode {} -> {} ({})",
            before.as_str(),
            after.as_str(),
            next.device_plugin
                .as_ref()
                .map(|d| d.reason.as_str())
                .unwrap_or_default()
        ),
    })
}

/// A plugin rollout that starts, halts, is rolled back or completes.
fn rollout_change(previous: Option<&GpuPoolStatus>, next: &GpuPoolStatus) -> Option<PoolEvent> {
    use crate::api::RolloutState;
    let rollout = |s: &GpuPoolStatus| s.device_plugin.as_ref()?.rollout.clone();
    let after = rollout(next)?;
    let before = previous.and_then(rollout);
    let same = before
        .as_ref()
        .is_some_and(|b| b.state == after.state && b.target_revision == after.target_revision);
    if same {
        return None;
    }
    let image = &after.target_image;
    let (warning, reason, note) = match after.state {
        RolloutState::Progressing => (
            false,
            Reason::PluginRollingOut,
            format!(
                "rolling the device plugin out to {image} node by node, verified by GPUs: {} nodes to replace",
                after.left
            ),
        ),
        RolloutState::Halted => (
            true,
            Reason::PluginRolloutHalted,
            format!(
                "the device plugin rollout to {image} halted on {}: {}",
                after
                    .halted
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                after
                    .halted
                    .first()
                    .map(|h| h.message.as_str())
                    .unwrap_or_default()
            ),
        ),
        RolloutState::RolledBack => (
            true,
            Reason::PluginRolledBack,
            format!("the device plugin rollout halted; putting the last good plugin {image} back"),
        ),
        // A pool's first plugin is no rollout.
        RolloutState::Complete if before.is_none() => return None,
        RolloutState::Complete => (
            false,
            Reason::PluginRolloutComplete,
            format!(
                "every node runs the device plugin {image} and serves its GPUs ({} nodes)",
                after.updated
            ),
        ),
    };
    Some(PoolEvent {
        warning,
        reason,
        note: truncate(&note),
    })
}

/// A Ready flip, or a new pool turning Ready (a new pool that is not Ready yet is no news).
fn ready_flip(previous: Option<&GpuPoolStatus>, next: &GpuPoolStatus) -> Option<PoolEvent> {
    let ready = next.condition(ConditionType::Ready)?;
    let before = previous.and_then(|p| p.condition(ConditionType::Ready));
    let flipped = match before {
        Some(b) => b.status != ready.status,
        None => ready.is_true(),
    };
    flipped.then(|| PoolEvent {
        warning: !ready.is_true(),
        reason: if ready.is_true() {
            Reason::Ready
        } else {
            Reason::NotReady
        },
        note: truncate(&format!("{}: {}", ready.reason, ready.message)),
    })
}

/// Event notes are limited to 1 kB.
pub(super) fn truncate(s: &str) -> String {
    if s.len() <= 1000 {
        return s.to_string();
    }
    let mut end = 997;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Condition, ConditionStatus, DevicePluginStatus, PluginMode};
    use crate::decide::facts::ObjectId;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cond(t: ConditionType, status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_: t.to_string(),
            status: status.to_string(),
            observed_generation: Some(1),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            reason: reason.into(),
            message: format!("{reason} message"),
        }
    }

    fn status(conditions: Vec<Condition>, mode: PluginMode) -> GpuPoolStatus {
        GpuPoolStatus {
            conditions,
            device_plugin: Some(DevicePluginStatus {
                mode,
                reason: "R".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn steady_state_publishes_nothing() {
        let s = status(
            vec![
                cond(ConditionType::Ready, ConditionStatus::True, "Ready"),
                cond(ConditionType::Conflict, ConditionStatus::True, "X"),
            ],
            PluginMode::Managed,
        );
        assert!(pool_events(Some(&s), &s, None).is_empty());
    }

    #[test]
    fn ready_flips_writes_mode_changes_and_new_conflicts_are_published() {
        let before = status(
            vec![cond(ConditionType::Ready, ConditionStatus::True, "Ready")],
            PluginMode::Managed,
        );
        let after = status(
            vec![
                cond(ConditionType::Ready, ConditionStatus::False, "GpusMissing"),
                cond(
                    ConditionType::Conflict,
                    ConditionStatus::True,
                    "ForeignDevicePlugin",
                ),
            ],
            PluginMode::Skipped,
        );
        let change = DaemonSetChange::Removed(ObjectId {
            namespace: "gpu-resources".into(),
            name: "nvidia-device-plugin-gpu".into(),
        });
        let reasons: Vec<_> = pool_events(Some(&before), &after, Some(&change))
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(
            reasons,
            vec![
                Reason::DaemonSetRemoved,
                Reason::PluginModeChanged,
                Reason::Conflict,
                Reason::NotReady
            ]
        );
    }

    #[test]
    fn a_new_pool_announces_ready_but_not_an_initial_not_ready() {
        let fresh_ready = status(
            vec![cond(ConditionType::Ready, ConditionStatus::True, "Ready")],
            PluginMode::Managed,
        );
        assert_eq!(
            pool_events(None, &fresh_ready, None)[0].reason,
            Reason::Ready
        );
        let fresh_waiting = status(
            vec![cond(
                ConditionType::Ready,
                ConditionStatus::False,
                "WaitingForGpus",
            )],
            PluginMode::Managed,
        );
        assert!(pool_events(None, &fresh_waiting, None).is_empty());
    }

    #[test]
    fn stalled_is_published_once_per_reason() {
        let before = status(
            vec![
                cond(
                    ConditionType::Ready,
                    ConditionStatus::False,
                    "DaemonSetRejected",
                ),
                cond(
                    ConditionType::Stalled,
                    ConditionStatus::True,
                    "DaemonSetRejected",
                ),
            ],
            PluginMode::Managed,
        );
        assert!(pool_events(Some(&before), &before, None).is_empty());
        let fresh = status(
            vec![cond(ConditionType::Ready, ConditionStatus::True, "Ready")],
            PluginMode::Managed,
        );
        let reasons: Vec<_> = pool_events(Some(&fresh), &before, None)
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, vec![Reason::NotReady], "the flip says it once");
        let waiting = status(
            vec![cond(
                ConditionType::Ready,
                ConditionStatus::False,
                "WaitingForGpus",
            )],
            PluginMode::Managed,
        );
        let reasons: Vec<_> = pool_events(Some(&waiting), &before, None)
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(
            reasons,
            vec![Reason::Stalled],
            "stalling while not Ready is news"
        );
    }

    #[test]
    fn long_notes_are_cut_to_the_api_limit() {
        assert!(truncate(&"é".repeat(2000)).len() <= 1000);
    }
}

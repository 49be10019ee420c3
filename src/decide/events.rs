//! Which Kubernetes Events a reconcile publishes on the GpuPool: what an admin wants to see in
//! `kubectl describe gpupool` (DaemonSet writes, mode changes, conflicts, Ready flips), and
//! nothing in steady state.

use crate::api::{Condition, GpuPoolStatus};
use crate::decide::status::{CONFLICT, READY, STALLED};

/// A write the apply step made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonSetChange {
    Created(String),
    Updated(String),
    Replaced {
        name: String,
        edited_by: Vec<String>,
    },
    Removed(String),
}

impl std::fmt::Display for DaemonSetChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonSetChange::Created(n) => write!(f, "created DaemonSet {n}"),
            DaemonSetChange::Updated(n) => write!(f, "updated DaemonSet {n}"),
            DaemonSetChange::Replaced { name, edited_by } => {
                write!(
                    f,
                    "replacing DaemonSet {name}: its spec was edited by {}, and gpupool owns it",
                    edited_by.join(", ")
                )
            }
            DaemonSetChange::Removed(n) => write!(f, "removed DaemonSet {n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolEvent {
    pub warning: bool,
    /// CamelCase.
    pub reason: &'static str,
    pub note: String,
}

fn find<'a>(s: Option<&'a GpuPoolStatus>, t: &str) -> Option<&'a Condition> {
    s?.conditions.iter().find(|c| c.type_ == t)
}

pub fn pool_events(
    previous: Option<&GpuPoolStatus>,
    next: &GpuPoolStatus,
    change: Option<&DaemonSetChange>,
) -> Vec<PoolEvent> {
    let mut events = Vec::new();
    if let Some(change) = change {
        let reason = match change {
            DaemonSetChange::Created(_) => "DaemonSetCreated",
            DaemonSetChange::Updated(_) => "DaemonSetUpdated",
            DaemonSetChange::Replaced { .. } => "DaemonSetReplaced",
            DaemonSetChange::Removed(_) => "DaemonSetRemoved",
        };
        events.push(PoolEvent {
            warning: matches!(change, DaemonSetChange::Replaced { .. }),
            reason,
            note: change.to_string(),
        });
    }
    let mode = |s: Option<&GpuPoolStatus>| s.and_then(|s| s.device_plugin.as_ref()).map(|d| d.mode);
    if let (Some(before), Some(after)) = (mode(previous), mode(Some(next)))
        && before != after
    {
        let reason = next
            .device_plugin
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default();
        events.push(PoolEvent {
            warning: false,
            reason: "PluginModeChanged",
            note: format!(
                "device plugin mode {} -> {} ({reason})",
                before.as_str(),
                after.as_str()
            ),
        });
    }
    if let Some(conflict) = find(Some(next), CONFLICT)
        && find(previous, CONFLICT).is_none()
    {
        events.push(PoolEvent {
            warning: true,
            reason: "Conflict",
            note: truncate(&conflict.message),
        });
    }
    let ready = find(Some(next), READY);
    let ready_before = find(previous, READY).map(|c| c.status.as_str());
    let ready_flipped = ready.is_some_and(|r| {
        ready_before != Some(r.status.as_str()) && (ready_before.is_some() || r.status == "True")
    });
    if let Some(ready) = ready.filter(|_| ready_flipped) {
        let (warning, reason) = if ready.status == "True" {
            (false, "Ready")
        } else {
            (true, "NotReady")
        };
        events.push(PoolEvent {
            warning,
            reason,
            note: truncate(&format!("{}: {}", ready.reason, ready.message)),
        });
    }
    // A pool that just turned NotReady already says why; a later change of the reason (or a
    // stall while Ready stays False) gets its own event.
    if let Some(stalled) = find(Some(next), STALLED)
        && find(previous, STALLED).map(|c| &c.reason) != Some(&stalled.reason)
        && !ready_flipped
    {
        events.push(PoolEvent {
            warning: true,
            reason: "Stalled",
            note: truncate(&format!("{}: {}", stalled.reason, stalled.message)),
        });
    }
    events
}

/// Event notes are limited to 1 kB.
fn truncate(s: &str) -> String {
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
    use crate::api::{DevicePluginStatus, PluginMode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cond(t: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: t.into(),
            status: status.into(),
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
            vec![cond(READY, "True", "Ready"), cond(CONFLICT, "True", "X")],
            PluginMode::Managed,
        );
        assert!(pool_events(Some(&s), &s, None).is_empty());
    }

    #[test]
    fn ready_flips_writes_mode_changes_and_new_conflicts_are_published() {
        let before = status(vec![cond(READY, "True", "Ready")], PluginMode::Managed);
        let after = status(
            vec![
                cond(READY, "False", "GpusMissing"),
                cond(CONFLICT, "True", "ForeignDevicePlugin"),
            ],
            PluginMode::Skipped,
        );
        let change = DaemonSetChange::Removed("gpu-resources/nvidia-device-plugin-gpu".into());
        let reasons: Vec<_> = pool_events(Some(&before), &after, Some(&change))
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(
            reasons,
            vec![
                "DaemonSetRemoved",
                "PluginModeChanged",
                "Conflict",
                "NotReady"
            ]
        );
    }

    #[test]
    fn a_new_pool_announces_ready_but_not_an_initial_not_ready() {
        let fresh_ready = status(vec![cond(READY, "True", "Ready")], PluginMode::Managed);
        assert_eq!(pool_events(None, &fresh_ready, None)[0].reason, "Ready");
        let fresh_waiting = status(
            vec![cond(READY, "False", "WaitingForGpus")],
            PluginMode::Managed,
        );
        assert!(pool_events(None, &fresh_waiting, None).is_empty());
    }

    #[test]
    fn stalled_is_published_once_per_reason() {
        let before = status(
            vec![
                cond(READY, "False", "DaemonSetRejected"),
                cond(STALLED, "True", "DaemonSetRejected"),
            ],
            PluginMode::Managed,
        );
        assert!(pool_events(Some(&before), &before, None).is_empty());
        let fresh = status(vec![cond(READY, "True", "Ready")], PluginMode::Managed);
        let reasons: Vec<_> = pool_events(Some(&fresh), &before, None)
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, vec!["NotReady"], "the flip says it once");
        let waiting = status(
            vec![cond(READY, "False", "WaitingForGpus")],
            PluginMode::Managed,
        );
        let reasons: Vec<_> = pool_events(Some(&waiting), &before, None)
            .iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, vec!["Stalled"], "stalling while not Ready is news");
    }

    #[test]
    fn long_notes_are_cut_to_the_api_limit() {
        assert!(truncate(&"é".repeat(2000)).len() <= 1000);
    }
}

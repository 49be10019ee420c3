//! What the apply step achieved, as the report reads it: the DaemonSet as it stands after the
//! writes, what was written, and what the API server refused.

use crate::api::Reason;
use crate::decide::facts::{ObjectId, Rejection, Rollout, Stall};
use crate::decide::plan::NodeUpdate;

/// The managed DaemonSet as it stands after the apply step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginState {
    /// No plugin is deployed for this pool (its mode is Skipped).
    NotDeployed,
    /// Created or being replaced; not visible yet.
    Pending {
        id: ObjectId,
    },
    Live {
        id: ObjectId,
        rollout: Rollout,
    },
}

/// What the apply step achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub state: PluginState,
    /// A write the API server refused in a way only an admin can fix.
    pub stall: Option<Stall>,
    pub change: Option<DaemonSetChange>,
    /// The node updates that changed a node.
    pub nodes_written: Vec<NodeUpdate>,
    /// Node writes left for the next reconcile (a big scale-up is written in batches).
    /// Node writes left for later (the rate limit allowed no more now): look again after this.
    pub node_writes_due: Option<std::time::Duration>,
    /// The DaemonSet write the API server refused, if it did.
    pub rejected: Option<Rejection>,
    /// Node and pod writes that failed in this reconcile (the others went on).
    pub failed_writes: Vec<FailedWrite>,
}

impl Applied {
    /// Nothing written: the DaemonSet stands as it is.
    pub fn kept(state: PluginState, stall: Option<Stall>) -> Applied {
        Applied {
            state,
            stall,
            change: None,
            nodes_written: Vec::new(),
            node_writes_due: None,
            rejected: None,
            failed_writes: Vec::new(),
        }
    }

    /// The stall of a DaemonSet write, else of writes that kept failing past their retries.
    pub fn stall(&self) -> Option<Stall> {
        self.stall
            .clone()
            .or_else(|| writes_stall(&self.failed_writes))
    }
}

/// Reconciles in a row a write may fail before the pool reports it `Stalled`: before that it is
/// progress (a conflict, a restarting API server), retried with the pool's backoff.
pub const WRITE_ATTEMPTS_BEFORE_STALL: u32 = 3;

/// A write the API server did not take (or did not answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedWrite {
    /// What was written: `node <name>`, `pod <namespace>/<name>`.
    pub target: String,
    /// The HTTP status, if the API server answered.
    pub code: Option<u16>,
    pub message: String,
    /// Reconciles in a row in which this write failed, this one included.
    pub attempts: u32,
}

impl FailedWrite {
    fn reason(&self) -> Reason {
        match self.code {
            Some(403) => Reason::Forbidden,
            Some(400 | 422) => Reason::WriteRejected,
            Some(409) => Reason::WriteConflict,
            _ => Reason::ApiUnavailable,
        }
    }
}

/// What failing writes say while they are still retried (Reconciling).
pub fn writes_retrying(failed: &[FailedWrite]) -> Option<String> {
    (!failed.is_empty()).then(|| {
        let listed: Vec<String> = failed
            .iter()
            .map(|f| format!("{} ({})", f.target, f.message))
            .collect();
        format!(
            "retrying {} writes the API server did not take: {}",
            failed.len(),
            crate::decide::text::name_list(&listed, 5)
        )
    })
}

/// Writes that failed past their retries: Stalled, with the reason the API gave the first of
/// them and what to do about it.
pub fn writes_stall(failed: &[FailedWrite]) -> Option<Stall> {
    let stuck: Vec<&FailedWrite> = failed
        .iter()
        .filter(|f| f.attempts >= WRITE_ATTEMPTS_BEFORE_STALL)
        .collect();
    let reason = stuck.first()?.reason();
    let listed: Vec<String> = stuck
        .iter()
        .map(|f| match f.code {
            Some(code) => format!("{} ({code}: {})", f.target, f.message),
            None => format!("{} ({})", f.target, f.message),
        })
        .collect();
    let advice = match reason {
        Reason::Forbidden => "check the operator's RBAC (deploy/rbac.yaml, the chart's rbac.yaml)",
        Reason::WriteRejected => {
            "an admission policy or webhook refuses them: change it, or the object it objects to"
        }
        Reason::WriteConflict => "another controller keeps changing them at the same time",
        _ => "the API server is overloaded or out of reach: see its health and the operator's log",
    };
    Some(Stall {
        reason,
        message: format!(
            "{} writes failed {} times in a row, still retried with backoff: {}; {advice}",
            stuck.len(),
            WRITE_ATTEMPTS_BEFORE_STALL,
            crate::decide::text::name_list(&listed, 5)
        ),
    })
}

/// A write the apply step made to the pool's DaemonSet, for logs and events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonSetChange {
    Created(ObjectId),
    Updated(ObjectId),
    Replaced {
        id: ObjectId,
        edited_by: Vec<String>,
    },
    Removed(ObjectId),
}

impl DaemonSetChange {
    pub fn reason(&self) -> Reason {
        match self {
            DaemonSetChange::Created(_) => Reason::DaemonSetCreated,
            DaemonSetChange::Updated(_) => Reason::DaemonSetUpdated,
            DaemonSetChange::Replaced { .. } => Reason::DaemonSetReplaced,
            DaemonSetChange::Removed(_) => Reason::DaemonSetRemoved,
        }
    }
}

impl std::fmt::Display for DaemonSetChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonSetChange::Created(id) => write!(f, "created DaemonSet {id}"),
            DaemonSetChange::Updated(id) => write!(f, "updated DaemonSet {id}"),
            DaemonSetChange::Replaced { id, edited_by } => write!(
                f,
                "replacing DaemonSet {id}: its spec was edited by {}, and gpupool owns it",
                edited_by.join(", ")
            ),
            DaemonSetChange::Removed(id) => write!(f, "removed DaemonSet {id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(target: &str, code: Option<u16>, attempts: u32) -> FailedWrite {
        FailedWrite {
            target: target.into(),
            code,
            message: "refused".into(),
            attempts,
        }
    }

    #[test]
    fn failing_writes_are_progress_until_their_retries_are_spent() {
        let first = [failure("node a", Some(403), 1)];
        assert!(writes_stall(&first).is_none());
        assert!(
            writes_retrying(&first)
                .unwrap()
                .contains("node a (refused)")
        );
        let third = [
            failure("node a", Some(403), WRITE_ATTEMPTS_BEFORE_STALL),
            failure("node b", Some(409), 1),
        ];
        let stall = writes_stall(&third).expect("a stall after the retries");
        assert_eq!(stall.reason, Reason::Forbidden);
        assert!(
            stall.message.contains("node a (403: refused)"),
            "{}",
            stall.message
        );
        assert!(!stall.message.contains("node b"), "{}", stall.message);
        assert!(stall.message.contains("RBAC"), "{}", stall.message);
    }

    #[test]
    fn the_api_answer_decides_the_reason() {
        let reason = |code| {
            writes_stall(&[failure("node a", code, WRITE_ATTEMPTS_BEFORE_STALL)])
                .unwrap()
                .reason
        };
        assert_eq!(reason(Some(403)), Reason::Forbidden);
        assert_eq!(reason(Some(422)), Reason::WriteRejected);
        assert_eq!(reason(Some(400)), Reason::WriteRejected);
        assert_eq!(reason(Some(409)), Reason::WriteConflict);
        assert_eq!(reason(Some(503)), Reason::ApiUnavailable);
        assert_eq!(reason(Some(429)), Reason::ApiUnavailable);
        assert_eq!(reason(None), Reason::ApiUnavailable);
    }

    #[test]
    fn a_daemonset_stall_comes_first() {
        let mut applied = Applied::kept(
            PluginState::NotDeployed,
            Some(Stall {
                reason: Reason::DaemonSetRejected,
                message: "no".into(),
            }),
        );
        applied.failed_writes = vec![failure("node a", Some(403), 5)];
        assert_eq!(applied.stall().unwrap().reason, Reason::DaemonSetRejected);
        applied.stall = None;
        assert_eq!(applied.stall().unwrap().reason, Reason::Forbidden);
    }
}

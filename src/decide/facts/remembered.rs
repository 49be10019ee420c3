//! What gpupool remembers of a pool between reconciles (kept in the operator, rebuilt from the
//! pool's status after a restart).

use super::Stall;

/// A DaemonSet the API server refused in a way only an admin can fix, remembered so that the
/// same write is not tried again on every unrelated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The desired-state hash of the refused DaemonSet.
    pub hash: String,
    pub at: k8s_openapi::jiff::Timestamp,
    pub stall: Stall,
}

/// When each problem node's current problem began (and what it was then), for every problem
/// node of a pool: the status lists only the first 20, and a grace period (or the readiness
/// gate's) must end for the 21st node too. The operator keeps these between reconciles; after a
/// restart they are rebuilt from the status, so nodes past the first 20 start their grace
/// period again (late, never early).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProblemClocks(std::collections::HashMap<String, ProblemClock>);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProblemClock {
    pub reason: String,
    pub since: k8s_openapi::jiff::Timestamp,
}

impl ProblemClocks {
    pub fn of<'a>(problems: impl IntoIterator<Item = &'a crate::api::ProblemNode>) -> Self {
        ProblemClocks(
            problems
                .into_iter()
                .filter_map(|p| {
                    let clock = ProblemClock {
                        reason: p.reason.clone(),
                        since: p.since.as_ref()?.0,
                    };
                    Some((p.name.clone(), clock))
                })
                .collect(),
        )
    }

    pub fn get(&self, node: &str) -> Option<&ProblemClock> {
        self.0.get(node)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

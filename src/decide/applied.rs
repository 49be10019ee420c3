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
        }
    }
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

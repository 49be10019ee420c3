//! Device plugins gpupool does not own that were deleted: their pods may take seconds to
//! terminate, and until the last one is gone the nodes it ran on still have a plugin. gpupool does
//! not watch other DaemonSets' pods (only its own), so it keeps each such DaemonSet as a tombstone
//! (here) and lists its pods every few seconds until none is left (`watches::clear_tombstones`);
//! then the pools look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::decide::facts::{DaemonSetFacts, ObjectId};

use super::locking::lock;

#[derive(Default)]
pub struct Tombstones {
    deleted: Mutex<HashMap<ObjectId, Arc<DaemonSetFacts>>>,
}

impl Tombstones {
    pub fn bury(&self, ds: Arc<DaemonSetFacts>) {
        lock(&self.deleted).insert(ds.id.clone(), ds);
    }

    /// The deleted plugins whose pods may still run, as if still there.
    pub fn all(&self) -> Vec<Arc<DaemonSetFacts>> {
        lock(&self.deleted).values().cloned().collect()
    }

    pub fn remove(&self, id: &ObjectId) {
        lock(&self.deleted).remove(id);
    }
}

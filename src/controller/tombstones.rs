//! Device plugins gpupool does not own that were deleted: their pods may take seconds to
//! terminate, and until the last one is gone the nodes it ran on still have a plugin. gpupool does
//! not watch other DaemonSets' pods (only its own), so it keeps each such DaemonSet as a tombstone
//! and lists its pods every few seconds until none is left; then the pools look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::decide::model::{DaemonSetFacts, ObjectId};

use super::context::{Context, lock};

/// How often the pods of deleted foreign plugins are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(2);

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

    fn remove(&self, id: &ObjectId) {
        lock(&self.deleted).remove(id);
    }
}

/// Lists the pods of each tombstone until none is left, then wakes every pool.
pub async fn clear(client: Client, ctx: Arc<Context>) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        for ds in ctx.tombstones.all() {
            match pods_left(&client, &ds).await {
                Ok(0) => {
                    info!(daemonset = %ds.id, "the deleted device plugin's pods are gone");
                    ctx.tombstones.remove(&ds.id);
                    ctx.wake(
                        ctx.pools
                            .state()
                            .iter()
                            .map(|p| kube::ResourceExt::name_any(p.as_ref())),
                    );
                }
                Ok(n) => {
                    debug!(daemonset = %ds.id, pods = n, "the deleted device plugin's pods are still terminating")
                }
                Err(e) => {
                    warn!(daemonset = %ds.id, error = %e, "cannot list the deleted device plugin's pods; trying again")
                }
            }
        }
    }
}

async fn pods_left(client: &Client, ds: &DaemonSetFacts) -> Result<usize, kube::Error> {
    if ds.pod_selector.is_empty() {
        return Ok(0);
    }
    let selector: Vec<String> = ds
        .pod_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ds.id.namespace);
    let pods = api
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?;
    Ok(pods.items.len())
}

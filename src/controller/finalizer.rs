//! The pool's finalizer: a deleted pool stays until gpupool has taken its plugin off its nodes
//! (DaemonSets deleted, node labels removed, plugin pods gone), so deleting a pool, in the
//! background or in the foreground (Argo CD prunes that way), never leaves a node with two
//! plugins or a label nobody removes. kube-runtime's `finalizer` helper has no way to say
//! "not yet, look again shortly" other than an error, so these are the two patches it would make.

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::GpuPool;
use crate::decide::names::FINALIZER;

pub fn has_finalizer(pool: &GpuPool) -> bool {
    pool.finalizers().iter().any(|f| f == FINALIZER)
}

/// Whether a patch of the finalizers took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Done,
    /// The pool is gone, being deleted, or changed since it was read: nothing was patched, and
    /// nothing that needs the finalizer may be written; the pool's next version says more.
    Stale,
}

/// Adds the finalizer (a JSON patch that fails if the object changed meanwhile).
pub async fn add(client: &Client, pool: &GpuPool) -> Result<Patched, kube::Error> {
    let api: Api<GpuPool> = Api::all(client.clone());
    let patch = if pool.finalizers().is_empty() {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] }
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": pool.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER }
        ])
    };
    patch_json(&api, pool, patch).await
}

/// Removes the finalizer once the cleanup is done.
pub async fn remove(client: &Client, pool: &GpuPool) -> Result<Patched, kube::Error> {
    let api: Api<GpuPool> = Api::all(client.clone());
    let Some(index) = pool.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(Patched::Done);
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path }
    ]);
    patch_json(&api, pool, patch).await
}

async fn patch_json(
    api: &Api<GpuPool>,
    pool: &GpuPool,
    patch: serde_json::Value,
) -> Result<Patched, kube::Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    match api
        .patch(
            &pool.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(Patched::Done),
        // Gone already, being deleted (no new finalizers then), or changed meanwhile (the test
        // op failed): the pool's next event shows which.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 422 => Ok(Patched::Stale),
        Err(e) => Err(e),
    }
}

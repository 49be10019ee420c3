//! `apply`: the writes a plan calls for, in order, and the status write. The one place where API
//! errors are sorted into those only an admin can fix (a [`Stall`], retried slowly) and
//! transient ones (retried with backoff).

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{API_VERSION_FULL, GpuPool, GpuPoolStatus, KIND, Reason};
use crate::decide::applied::{Applied, DaemonSetChange, FailedWrite, PluginState};
use crate::decide::facts::{DaemonSetFacts, ObjectId, Rejection, Stall};
use crate::decide::names::{DESIRED_HASH_ANNOTATION, MANAGER};
use crate::decide::plan::node_updates;
use crate::decide::plugin::action::DaemonSetAction;
use crate::decide::plugin::config::ConfigMapAction;
use crate::decide::readiness::validation::ValidationPlan;
use crate::decide::{Cleanup, Plan};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::resource::v1::ResourceClaimTemplate;
use kube::api::PostParams;

use super::context::Context;
use super::node_batch::{failed, write_nodes};

#[derive(Debug, thiserror::Error)]
#[error("transient API error: {0}")]
pub struct TransientError(#[source] pub kube::Error);

/// Which write failed, to say what an admin should do about it.
enum Write<'a> {
    ApplyDaemonSet {
        namespace: &'a str,
    },
    ApplyConfigMap {
        namespace: &'a str,
    },
    DeleteStale {
        id: &'a ObjectId,
        namespace: &'a str,
    },
}

/// Classifies an API error: a rejection only a change by an admin can fix becomes a Stall.
fn stall_for(err: &kube::Error, write: Write) -> Option<Stall> {
    let kube::Error::Api(status) = err else {
        return None;
    };
    let (reason, message) = match (status.code, write) {
        (403, Write::DeleteStale { id, namespace }) => (
            Reason::StaleDaemonSet,
            format!(
                "this pool's DaemonSet {id} is left in the previous plugin namespace and the operator may not delete it (its RBAC covers {namespace} only); delete it: kubectl -n {} delete daemonset {}",
                id.namespace, id.name
            ),
        ),
        (_, Write::DeleteStale { .. }) => return None,
        (404, Write::ApplyConfigMap { namespace }) => (
            Reason::PluginNamespaceNotFound,
            format!(
                "namespace {namespace} does not exist: create it (kubectl create namespace {namespace}) or start the operator with --plugin-namespace naming an existing one"
            ),
        ),
        (403, Write::ApplyConfigMap { namespace }) => (
            Reason::Forbidden,
            format!(
                "the operator may not write the plugin's ConfigMap in {namespace}: {}; check its Role there",
                status.message
            ),
        ),
        (_, Write::ApplyConfigMap { .. }) => return None,
        // An apply creates what is missing, so a 404 can only mean the namespace is.
        (404, Write::ApplyDaemonSet { namespace }) => (
            Reason::PluginNamespaceNotFound,
            format!(
                "namespace {namespace} does not exist: create it (kubectl create namespace {namespace}) or start the operator with --plugin-namespace naming an existing one"
            ),
        ),
        (403, Write::ApplyDaemonSet { .. }) => (
            Reason::Forbidden,
            format!(
                "the operator may not apply DaemonSets: {}; check its ClusterRole",
                status.message
            ),
        ),
        (400 | 422, Write::ApplyDaemonSet { .. }) => (
            Reason::DaemonSetRejected,
            format!(
                "the API server rejected the device plugin DaemonSet: {}; fix spec.devicePlugin",
                status.message
            ),
        ),
        _ => return None,
    };
    Some(Stall { reason, message })
}

fn live_state(live: Option<&DaemonSetFacts>) -> PluginState {
    live.map_or(PluginState::NotDeployed, |ds| PluginState::Live {
        id: ds.id.clone(),
        rollout: ds.rollout.clone(),
    })
}

/// Carries out the rest of the plan, which the pool's finalizer must already guard (node
/// writes outlive the pool unless its cleanup undoes them): the node writes (labels, gate
/// taints, validation records), then the validation pods. A write that fails does not stop the
/// others: it is reported (`Applied::failed_writes`) and the pool's status still follows the rest.
pub async fn apply_nodes(ctx: &Context, pool: &str, plan: &Plan, mut applied: Applied) -> Applied {
    let updates = plan.node_updates();
    let writes = write_nodes(ctx, pool, &updates).await;
    applied.nodes_written = writes.changed;
    applied.node_writes_due = writes.due;
    applied.failed_writes = writes.failed;
    if let Some(validation) = &plan.readiness.validation {
        applied
            .failed_writes
            .extend(apply_validation_pods(&ctx.client, validation).await);
    }
    applied
}

/// A deleted pool's cleanup: its DaemonSets deleted, its node labels and gate taints removed.
/// Returns the node writes that failed.
pub async fn apply_cleanup(
    ctx: &Context,
    pool: &str,
    cleanup: &Cleanup,
) -> Result<Vec<FailedWrite>, TransientError> {
    for id in &cleanup.delete_daemonsets {
        delete(&ctx.client, id, &DeleteParams::background())
            .await
            .map_err(TransientError)?;
    }
    let updates = node_updates(
        &cleanup.label_changes,
        &cleanup.dra_label_changes,
        &cleanup.taint_changes,
        &[],
    );
    Ok(write_nodes(ctx, pool, &updates).await.failed)
}

/// Validation pods: finished and stale ones deleted, new ones created (both idempotent).
/// Returns the writes that failed.
async fn apply_validation_pods(client: &Client, plan: &ValidationPlan) -> Vec<FailedWrite> {
    let mut failures = Vec::new();
    for id in &plan.delete {
        let api: Api<Pod> = Api::namespaced(client.clone(), &id.namespace);
        match api.delete(&id.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => failures.push(failed(format!("pod {id}"), &e)),
        }
    }
    if let Some(template) = &plan.claim_template {
        let namespace = template.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<ResourceClaimTemplate> = Api::namespaced(client.clone(), namespace);
        match api.create(&PostParams::default(), template).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let name = template.metadata.name.as_deref().unwrap_or_default();
                failures.push(failed(
                    format!("resourceclaimtemplate {namespace}/{name}"),
                    &e,
                ));
            }
        }
    }
    for pod in &plan.create {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        match api.create(&PostParams::default(), pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                failures.push(failed(format!("pod {namespace}/{name}"), &e));
            }
        }
    }
    failures
}

/// Carries out the plan's workloads: stale DaemonSets first, then the pool's own. Both are
/// owned by the pool (garbage-collected with it), so they need no finalizer: a new pool's plugin
/// goes out before anything else.
pub async fn apply_daemonsets(
    client: &Client,
    namespace: &str,
    plan: &Plan,
) -> Result<Applied, TransientError> {
    let live = plan.plugin.live.as_deref();
    if let Some(stall) = delete_stale(client, namespace, &plan.plugin.delete_stale).await? {
        return Ok(Applied::kept(live_state(live), Some(stall)));
    }
    // The config first: the pods the DaemonSet (re)starts read it.
    if let Some(stall) = apply_config_map(client, namespace, &plan.plugin.config_map).await? {
        return Ok(Applied::kept(live_state(live), Some(stall)));
    }
    let keep = Applied::kept;
    Ok(match &plan.plugin.daemonset {
        DaemonSetAction::Nothing => keep(live_state(live), None),
        DaemonSetAction::Wait { id } => keep(PluginState::Pending { id: id.clone() }, None),
        DaemonSetAction::Blocked(stall) => keep(live_state(live), Some(stall.clone())),
        DaemonSetAction::Apply(ds) => match apply_daemonset(client, ds).await {
            Ok(DaemonSetFacts { id, rollout, .. }) => Applied {
                change: Some(match live {
                    Some(_) => DaemonSetChange::Updated(id.clone()),
                    None => DaemonSetChange::Created(id.clone()),
                }),
                ..Applied::kept(PluginState::Live { id, rollout }, None)
            },
            Err(e) => match stall_for(&e, Write::ApplyDaemonSet { namespace }) {
                Some(stall) => Applied {
                    rejected: Some(Rejection {
                        hash: ds
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
                            .cloned()
                            .unwrap_or_default(),
                        at: k8s_openapi::jiff::Timestamp::now(),
                        stall: stall.clone(),
                    }),
                    ..keep(PluginState::NotDeployed, Some(stall))
                },
                None => return Err(TransientError(e)),
            },
        },
        DaemonSetAction::Replace { id, uid, edited_by } => {
            replace(client, id, uid, edited_by).await?
        }
        DaemonSetAction::Delete { id } => {
            delete(client, id, &DeleteParams::background())
                .await
                .map_err(TransientError)?;
            Applied {
                change: Some(DaemonSetChange::Removed(id.clone())),
                ..Applied::kept(PluginState::NotDeployed, None)
            }
        }
    })
}

/// Deletes a DaemonSet someone else edited, orphaning its pods: the new DaemonSet adopts them,
/// so GPU service does not stop.
async fn replace(
    client: &Client,
    id: &ObjectId,
    uid: &str,
    edited_by: &[String],
) -> Result<Applied, TransientError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    delete(client, id, &params).await.map_err(TransientError)?;
    Ok(Applied {
        change: Some(DaemonSetChange::Replaced {
            id: id.clone(),
            edited_by: edited_by.to_vec(),
        }),
        ..Applied::kept(PluginState::Pending { id: id.clone() }, None)
    })
}

/// Deletes this pool's DaemonSets left in another namespace; a stall when the operator may not.
async fn delete_stale(
    client: &Client,
    namespace: &str,
    stale: &[ObjectId],
) -> Result<Option<Stall>, TransientError> {
    for id in stale {
        if let Err(e) = delete(client, id, &DeleteParams::background()).await {
            return match stall_for(&e, Write::DeleteStale { id, namespace }) {
                Some(stall) => Ok(Some(stall)),
                None => Err(TransientError(e)),
            };
        }
        tracing::info!(daemonset = %id, "removed this pool's DaemonSet from the previous plugin namespace");
    }
    Ok(None)
}

/// The plugin's ConfigMap: applied (server-side) or deleted as the plan says.
async fn apply_config_map(
    client: &Client,
    namespace: &str,
    action: &ConfigMapAction,
) -> Result<Option<Stall>, TransientError> {
    let result = match action {
        ConfigMapAction::Nothing => return Ok(None),
        ConfigMapAction::Apply(cm) => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
            let name = cm.metadata.name.as_deref().unwrap_or_default();
            api.patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(cm.as_ref()),
            )
            .await
            .map(drop)
        }
        ConfigMapAction::Delete(id) => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &id.namespace);
            match api.delete(&id.name, &DeleteParams::background()).await {
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                other => other.map(drop),
            }
        }
    };
    match result {
        Ok(()) => Ok(None),
        Err(e) => match stall_for(&e, Write::ApplyConfigMap { namespace }) {
            Some(stall) => Ok(Some(stall)),
            None => Err(TransientError(e)),
        },
    }
}

/// Server-side apply of the desired DaemonSet; returns what the API server made of it.
async fn apply_daemonset(client: &Client, ds: &DaemonSet) -> Result<DaemonSetFacts, kube::Error> {
    let namespace = ds.metadata.namespace.as_deref().unwrap_or_default();
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let applied = api
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(ds),
        )
        .await?;
    Ok(DaemonSetFacts::from_daemonset(&applied))
}

async fn delete(client: &Client, id: &ObjectId, params: &DeleteParams) -> Result<(), kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), &id.namespace);
    match api.delete(&id.name, params).await {
        Ok(_) => Ok(()),
        // Already gone (or replaced meanwhile: the uid precondition failed): the next pass sees it.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes the status with server-side apply, so fields gpupool stops reporting disappear.
pub async fn write_status(
    client: &Client,
    pool: &str,
    status: &GpuPoolStatus,
) -> Result<(), kube::Error> {
    let api: Api<GpuPool> = Api::all(client.clone());
    let body = json!({ "apiVersion": API_VERSION_FULL, "kind": KIND, "status": status });
    api.patch_status(
        pool,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

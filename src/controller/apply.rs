//! The write side of a reconcile: carry out a DaemonSet action and write the status, each one API
//! call at most. Errors are sorted into those only an admin can fix (a [`Stall`]) and transient
//! ones (retried with backoff).

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Client};
use serde_json::json;

use crate::api::{API_VERSION_FULL, GpuPool, GpuPoolStatus, KIND};
use crate::decide::action::DaemonSetAction;
use crate::decide::events::DaemonSetChange;
use crate::decide::status::{LiveDaemonSet, PluginState, Stall};

/// The field manager gpupool writes with.
pub const MANAGER: &str = "gpupool-operator";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("transient API error: {0}")]
    Transient(#[source] kube::Error),
}

/// What the apply step achieved.
pub struct Applied {
    pub state: PluginState,
    pub stall: Option<Stall>,
    /// The write made, for logs and events.
    pub change: Option<DaemonSetChange>,
}

pub fn live_state(ds: &DaemonSet) -> LiveDaemonSet {
    let status = ds.status.as_ref();
    LiveDaemonSet {
        name: format!(
            "{}/{}",
            ds.metadata.namespace.as_deref().unwrap_or_default(),
            ds.metadata.name.as_deref().unwrap_or_default()
        ),
        generation: ds.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        desired: status.map_or(0, |s| s.desired_number_scheduled),
        ready: status.map_or(0, |s| s.number_ready),
        updated: status.and_then(|s| s.updated_number_scheduled).unwrap_or(0),
    }
}

/// Classifies an API error: a rejection only a change by an admin can fix becomes a Stall.
fn stall_for(err: &kube::Error, namespace: &str, what: &str) -> Option<Stall> {
    let kube::Error::Api(status) = err else {
        return None;
    };
    match status.code {
        // An apply creates what is missing, so a 404 can only mean the namespace is.
        404 => Some(Stall {
            reason: "PluginNamespaceNotFound",
            message: format!(
                "namespace {namespace} does not exist: create it (kubectl create namespace {namespace}) or start the operator with --plugin-namespace naming an existing one"
            ),
        }),
        403 => Some(Stall {
            reason: "Forbidden",
            message: format!(
                "the operator may not {what}: {}; check its ClusterRole",
                status.message
            ),
        }),
        400 | 422 => Some(Stall {
            reason: "DaemonSetRejected",
            message: format!(
                "the API server rejected the device plugin DaemonSet: {}; fix spec.devicePlugin",
                status.message
            ),
        }),
        _ => None,
    }
}

pub async fn apply_daemonset(
    client: &Client,
    namespace: &str,
    action: DaemonSetAction,
    live: Option<&DaemonSet>,
) -> Result<Applied, ApplyError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let keep = |state, stall| Applied {
        state,
        stall,
        change: None,
    };
    match action {
        DaemonSetAction::Nothing => Ok(keep(
            live.map_or(PluginState::NotDeployed, |ds| {
                PluginState::Live(live_state(ds))
            }),
            None,
        )),
        DaemonSetAction::Wait => {
            let name = live.map(|ds| live_state(ds).name).unwrap_or_default();
            Ok(keep(PluginState::Pending { name }, None))
        }
        DaemonSetAction::Blocked(stall) => Ok(keep(PluginState::NotDeployed, Some(stall))),
        DaemonSetAction::Apply(ds) => {
            let name = ds.metadata.name.clone().unwrap_or_default();
            let params = PatchParams::apply(MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(&*ds)).await {
                Ok(applied) => Ok(Applied {
                    state: PluginState::Live(live_state(&applied)),
                    stall: None,
                    change: Some(if live.is_some() {
                        DaemonSetChange::Updated(format!("{namespace}/{name}"))
                    } else {
                        DaemonSetChange::Created(format!("{namespace}/{name}"))
                    }),
                }),
                Err(e) => match stall_for(&e, namespace, "apply DaemonSets") {
                    Some(stall) => Ok(keep(PluginState::NotDeployed, Some(stall))),
                    None => Err(ApplyError::Transient(e)),
                },
            }
        }
        DaemonSetAction::Replace {
            namespace: ns,
            name,
            edited_by,
        } => {
            let uid = live.and_then(|ds| ds.metadata.uid.clone());
            let params = DeleteParams {
                // The pods stay and the new DaemonSet adopts them: no gap in GPU service.
                propagation_policy: Some(PropagationPolicy::Orphan),
                preconditions: uid.map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            delete(client, &ns, &name, &params).await?;
            Ok(Applied {
                state: PluginState::Pending {
                    name: format!("{ns}/{name}"),
                },
                stall: None,
                change: Some(DaemonSetChange::Replaced {
                    name: format!("{ns}/{name}"),
                    edited_by,
                }),
            })
        }
        DaemonSetAction::Delete {
            namespace: ns,
            name,
        } => {
            delete(client, &ns, &name, &DeleteParams::background()).await?;
            Ok(Applied {
                state: PluginState::NotDeployed,
                stall: None,
                change: Some(DaemonSetChange::Removed(format!("{ns}/{name}"))),
            })
        }
    }
}

pub async fn delete(
    client: &Client,
    namespace: &str,
    name: &str,
    params: &DeleteParams,
) -> Result<(), ApplyError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, params).await {
        Ok(_) => Ok(()),
        // Already gone (or replaced meanwhile: the uid precondition failed): the next pass sees it.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(ApplyError::Transient(e)),
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

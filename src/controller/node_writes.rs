//! Writes to Node objects (the device-plugin label; the readiness gate's taints): each one a
//! read-modify-write of that node guarded by its resourceVersion and retried on conflict, so a
//! concurrent writer (the cluster autoscaler, kubectl) never loses a label or taint; and all of
//! them through one rate limiter, so a 1,000-node scale-up does not flood the API server.

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::decide::model::MANAGER;

/// What one node write should do to the node as it is now (read fresh before every attempt).
pub trait NodeEdit {
    /// The labels to set (Some) or remove (None), or None when nothing is to change.
    fn labels(
        &self,
        _current: &std::collections::BTreeMap<String, String>,
    ) -> Option<Vec<(String, Option<String>)>> {
        None
    }
    /// The complete new taint list, or None when the taints stay.
    fn taints(&self, _current: &[Taint]) -> Option<Vec<Taint>> {
        None
    }
}

/// What a node write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Changed,
    /// The node no longer needed the change (someone else made it, or its state moved on).
    Unchanged,
    /// The node is gone.
    Gone,
}

const MAX_ATTEMPTS: usize = 5;

pub struct NodeWriter {
    client: Client,
    limiter: DefaultDirectRateLimiter,
}

impl NodeWriter {
    pub fn new(client: Client, per_second: u32, burst: u32) -> NodeWriter {
        let quota =
            Quota::per_second(NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN));
        NodeWriter {
            client,
            limiter: RateLimiter::direct(quota),
        }
    }

    /// Applies `edit` to the node as it is now; a conflict (someone wrote in between) reads the
    /// node again and decides anew.
    pub async fn write(
        &self,
        name: &str,
        edit: &(impl NodeEdit + Sync),
    ) -> Result<Written, kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        for _ in 0..MAX_ATTEMPTS {
            let Some(node) = api.get_opt(name).await? else {
                return Ok(Written::Gone);
            };
            let Some(patch) = patch_for(&node, edit) else {
                return Ok(Written::Unchanged);
            };
            self.limiter.until_ready().await;
            let params = PatchParams {
                field_manager: Some(MANAGER.into()),
                ..PatchParams::default()
            };
            match api.patch(name, &params, &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(Written::Changed),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Written::Gone),
                Err(e) => return Err(e),
            }
        }
        Err(kube::Error::Api(
            kube::core::Status::failure(
                &format!("node {name} kept changing under {MAX_ATTEMPTS} attempts to write it"),
                "Conflict",
            )
            .with_code(409)
            .boxed(),
        ))
    }
}

/// A merge patch carrying the resourceVersion read, so the API server refuses it (409) if the
/// node changed in between.
fn patch_for(node: &Node, edit: &impl NodeEdit) -> Option<serde_json::Value> {
    let labels = edit.labels(node.metadata.labels.as_ref().unwrap_or(&Default::default()));
    let current_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    let taints = edit.taints(current_taints);
    if labels.is_none() && taints.is_none() {
        return None;
    }
    let mut patch = json!({ "metadata": { "resourceVersion": node.metadata.resource_version } });
    if let Some(labels) = labels {
        let map: serde_json::Map<String, serde_json::Value> = labels
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.map_or(serde_json::Value::Null, serde_json::Value::String),
                )
            })
            .collect();
        patch["metadata"]["labels"] = serde_json::Value::Object(map);
    }
    if let Some(taints) = taints {
        patch["spec"] = json!({ "taints": taints });
    }
    Some(patch)
}

/// Moves one node's device-plugin label from `from` to `to`, only while it still says `from`.
pub struct LabelEdit<'a> {
    pub key: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

impl NodeEdit for LabelEdit<'_> {
    fn labels(
        &self,
        current: &std::collections::BTreeMap<String, String>,
    ) -> Option<Vec<(String, Option<String>)>> {
        (current.get(self.key).map(String::as_str) == self.from)
            .then(|| vec![(self.key.to_string(), self.to.map(str::to_string))])
    }
}

//! Writes to Node objects (the device-plugin label; the readiness gate's taints): each one a
//! read-modify-write of that node guarded by its resourceVersion and retried on conflict, so a
//! concurrent writer (the cluster autoscaler, kubectl) never loses a label or taint; and all of
//! them through one rate limiter, so a 1,000-node scale-up does not flood the API server. A write
//! that puts a pool's device-plugin label on a node first asks the API server whether the node is
//! free (no plugin pod on it, no other pool's DaemonSet behind its current label).
//!
//! A label-only write may skip the read: it is made from the cached node, guarded by the cached
//! resourceVersion (a node changed since is refused with 409 and then read), and hands a node to
//! a pool without asking the API server only where the cache cannot be wrong about plugin pods
//! (`WriteHint::vouched`: no version of the node since a consistent point carried a label a
//! gpupool DaemonSet selects on). That is one request a node for a new pool, where the read path
//! costs three (get, list pods, patch).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::decide::facts::NodeFacts;
use crate::decide::names::{
    DEVICE_PLUGIN_LABEL, DRA_LABEL, MANAGED_BY, MANAGER, PLUGIN_POD_LABEL, POOL_LABEL,
    VALIDATION_ANNOTATION,
};
use crate::decide::plan::NodeUpdate;
use crate::index::WriteHint;
use crate::index::slim::SlimPod;

use super::locking::lock;
use super::write_schedule::WriteSchedule;

/// String maps changed by a node write: keys to set (Some) or remove (None).
type MapChanges = Vec<(String, Option<String>)>;

/// What one node write should do to the node as it is now (read fresh before every attempt).
/// Each method returns None when nothing is to change.
pub trait NodeEdit {
    fn labels(&self, _current: &BTreeMap<String, String>) -> Option<MapChanges> {
        None
    }
    fn annotations(&self, _current: &BTreeMap<String, String>) -> Option<MapChanges> {
        None
    }
    /// The complete new taint list.
    fn taints(&self, _current: &[Taint]) -> Option<Vec<Taint>> {
        None
    }
    /// The pool this write puts the device-plugin label on the node for, if it does.
    fn hands_to(&self, _current: &BTreeMap<String, String>) -> Option<String> {
        None
    }
    /// Whether this write labels the node for the DRA driver.
    fn gives_to_dra(&self, _current: &BTreeMap<String, String>) -> bool {
        false
    }
    /// Whether this write changes labels only (which the cache keeps whole, unlike taints with
    /// their times, or annotations), so it can be made from the cached node.
    fn labels_only(&self) -> bool {
        false
    }
}

/// A node as the caches show it, for a write made without reading it first.
pub struct CachedNode {
    pub facts: std::sync::Arc<NodeFacts>,
    pub hint: WriteHint,
    /// The pod cache shows a gpupool plugin pod on the node (terminating ones included).
    pub plugin_pod: bool,
}

/// What a node write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Changed,
    /// The node no longer needed the change (someone else made it, or its state moved on).
    Unchanged,
    /// The node is gone.
    Gone,
    /// Not written: the node still runs a device-plugin pod, or its label names a pool whose
    /// DaemonSet runs (the reconcile's caches had not seen it yet).
    Occupied,
    /// Not written: the cached node was older than the API server's (a kubelet's status update
    /// raced the write). The next reconcile writes from the newer one, which the watch brings
    /// within moments: one more patch instead of reading the node and listing its pods.
    Stale,
}

/// A node whose writes from the cache were refused this often in a row (it keeps changing)
/// is read first again.
const MAX_STALE: u32 = 2;

const MAX_ATTEMPTS: usize = 5;

pub struct NodeWriter {
    client: Client,
    schedule: Mutex<WriteSchedule>,
    /// Nodes whose last writes from the cache were refused as stale, and how often in a row.
    stale: Mutex<std::collections::HashMap<String, u32>>,
}

impl NodeWriter {
    pub fn new(client: Client, per_second: u32, burst: u32) -> NodeWriter {
        NodeWriter {
            client,
            schedule: Mutex::new(WriteSchedule::new(per_second, burst)),
            stale: Mutex::default(),
        }
    }

    /// `pool` wants `wanted` writes, at most `batch` now. Never waits: returns how many it may
    /// make now and, if some are left, when to come back for them (its slots are kept till then).
    pub fn take(&self, pool: &str, wanted: usize, batch: usize) -> (usize, Option<Duration>) {
        // A panic while holding the lock leaves the schedule consistent enough to go on.
        let mut schedule = lock(&self.schedule);
        let grant = schedule.take(pool, wanted, batch, Instant::now());
        (grant.now, grant.come_back)
    }

    /// `writes` granted by `take` were not made: they go back to the rate.
    pub fn refund(&self, writes: usize) {
        if writes > 0 {
            lock(&self.schedule).refund(writes, Instant::now());
        }
    }

    /// The pool is gone: its reserved slots are not waited for.
    pub fn forget(&self, pool: &str) {
        let mut schedule = lock(&self.schedule);
        schedule.forget(pool);
    }

    /// Applies `edit` to the node as it is now (its write token already taken, see `take`); a
    /// conflict (someone wrote in between) reads the node again and decides anew. With `cached`,
    /// a label-only write is first tried on the cached node (see the module's comment).
    pub async fn write(
        &self,
        name: &str,
        edit: &(impl NodeEdit + Sync),
        cached: Option<&CachedNode>,
    ) -> Result<Written, kube::Error> {
        let result = self.write_node(name, edit, cached).await;
        if let Err(kube::Error::Api(status)) = &result
            && status.code == 429
        {
            lock(&self.schedule).throttled(Instant::now());
            tracing::info!(
                node = name,
                rate = lock(&self.schedule).rate(),
                "the API server throttles node writes: slowing down"
            );
        }
        result
    }

    async fn write_node(
        &self,
        name: &str,
        edit: &(impl NodeEdit + Sync),
        cached: Option<&CachedNode>,
    ) -> Result<Written, kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let refused = lock(&self.stale).get(name).copied().unwrap_or(0);
        if let Some(patch) = cached
            .filter(|_| refused < MAX_STALE)
            .and_then(|c| cached_patch(c, edit))
        {
            let result = api
                .patch(name, &merge_params(), &Patch::Merge(&patch))
                .await;
            let mut stale = lock(&self.stale);
            match result {
                Ok(_) => {
                    stale.remove(name);
                    return Ok(Written::Changed);
                }
                // The node changed since the cache saw it.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    *stale.entry(name.to_string()).or_default() += 1;
                    return Ok(Written::Stale);
                }
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Written::Gone),
                Err(e) => return Err(e),
            }
        }
        lock(&self.stale).remove(name);
        for _ in 0..MAX_ATTEMPTS {
            let Some(node) = api.get_opt(name).await? else {
                return Ok(Written::Gone);
            };
            let no_labels = BTreeMap::new();
            let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
            if let Some(pool) = edit.hands_to(labels)
                && let Some(occupant) = self
                    .occupant(name, labels.get(DEVICE_PLUGIN_LABEL), &pool)
                    .await?
            {
                tracing::debug!(node = name, pool, occupant, "not handed over yet");
                return Ok(Written::Occupied);
            }
            // The DRA driver starts once its label is there: no device plugin pod may be left.
            if edit.gives_to_dra(labels)
                && let Some(occupant) = self.plugin_pod_on(name).await?
            {
                tracing::debug!(node = name, occupant, "not handed to the DRA driver yet");
                return Ok(Written::Occupied);
            }
            let Some(patch) = patch_for(&node, edit) else {
                return Ok(Written::Unchanged);
            };
            match api
                .patch(name, &merge_params(), &Patch::Merge(&patch))
                .await
            {
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

    /// What still holds a node that is about to get `pool`'s device-plugin label, read from the
    /// API server rather than from caches that may not have seen a plugin pod the DaemonSet
    /// controller created a moment ago: a gpupool plugin pod on the node (terminating or not),
    /// or a live DaemonSet of the pool whose label (`holder`) the node carries now.
    async fn occupant(
        &self,
        node: &str,
        holder: Option<&String>,
        pool: &str,
    ) -> Result<Option<String>, kube::Error> {
        let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        if let Some(holder) = holder.filter(|h| h.as_str() != pool) {
            let daemonsets: Api<DaemonSet> = Api::all(self.client.clone());
            let live = daemonsets
                .list_metadata(
                    &ListParams::default().labels(&format!("{managed},{POOL_LABEL}={holder}")),
                )
                .await?
                .items
                .into_iter()
                .find(|ds| ds.metadata.deletion_timestamp.is_none());
            if let Some(ds) = live {
                return Ok(Some(format!(
                    "DaemonSet {}/{} of pool {holder}",
                    ds.metadata.namespace.unwrap_or_default(),
                    ds.metadata.name.unwrap_or_default()
                )));
            }
        }
        self.plugin_pod_on(node).await
    }

    /// The nodes gpupool's device-plugin pods are on (terminating ones included), from one
    /// consistent list: what a batch of hand-overs asks once instead of once a node.
    pub async fn plugin_pod_nodes(
        &self,
    ) -> Result<std::collections::BTreeSet<String>, kube::Error> {
        let pods: Api<SlimPod> = Api::all(self.client.clone());
        let plugins = ListParams::default().labels(&format!(
            "{}={},{}={}",
            MANAGED_BY.0, MANAGED_BY.1, PLUGIN_POD_LABEL.0, PLUGIN_POD_LABEL.1
        ));
        Ok(pods
            .list(&plugins)
            .await?
            .items
            .into_iter()
            .filter_map(|pod| pod.0.spec.and_then(|s| s.node_name))
            .collect())
    }

    /// A gpupool device-plugin pod on the node (terminating or not), as the API server says.
    async fn plugin_pod_on(&self, node: &str) -> Result<Option<String>, kube::Error> {
        let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default()
            .labels(&format!(
                "{managed},{}={}",
                PLUGIN_POD_LABEL.0, PLUGIN_POD_LABEL.1
            ))
            .fields(&format!("spec.nodeName={node}"));
        Ok(pods
            .list_metadata(&on_node)
            .await?
            .items
            .into_iter()
            .next()
            .map(|pod| {
                format!(
                    "pod {}/{}",
                    pod.metadata.namespace.unwrap_or_default(),
                    pod.metadata.name.unwrap_or_default()
                )
            }))
    }
}

fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// The patch of a label-only write made from the cached node, where the cache can be trusted
/// for it: it must know the node's resourceVersion, and a write that gives the node to a plugin
/// or the DRA driver needs the node vouched for and no plugin pod cached there.
fn cached_patch(cached: &CachedNode, edit: &impl NodeEdit) -> Option<serde_json::Value> {
    let labels = &cached.facts.labels;
    let gives = edit.hands_to(labels).is_some() || edit.gives_to_dra(labels);
    if !edit.labels_only()
        || cached.hint.resource_version.is_empty()
        || (gives && (!cached.hint.vouched || cached.plugin_pod))
    {
        return None;
    }
    let changes = edit.labels(labels)?;
    Some(json!({
        "metadata": {
            "resourceVersion": cached.hint.resource_version,
            "labels": map_of(changes),
        }
    }))
}

fn map_of(changes: MapChanges) -> serde_json::Value {
    changes
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.map_or(serde_json::Value::Null, serde_json::Value::String),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A merge patch carrying the resourceVersion read, so the API server refuses it (409) if the
/// node changed in between.
fn patch_for(node: &Node, edit: &impl NodeEdit) -> Option<serde_json::Value> {
    let empty = BTreeMap::new();
    let labels = edit.labels(node.metadata.labels.as_ref().unwrap_or(&empty));
    let annotations = edit.annotations(node.metadata.annotations.as_ref().unwrap_or(&empty));
    let taints = edit.taints(
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default(),
    );
    if labels.is_none() && annotations.is_none() && taints.is_none() {
        return None;
    }
    let mut patch = json!({ "metadata": { "resourceVersion": node.metadata.resource_version } });
    if let Some(labels) = labels {
        patch["metadata"]["labels"] = map_of(labels);
    }
    if let Some(annotations) = annotations {
        patch["metadata"]["annotations"] = map_of(annotations);
    }
    if let Some(taints) = taints {
        patch["spec"] = json!({ "taints": taints });
    }
    Some(patch)
}

/// One node's share of a plan: its device-plugin label (only while it still has the value the
/// plan saw), its gate taint, its validation record.
pub struct UpdateEdit<'a>(pub &'a NodeUpdate);

impl NodeEdit for UpdateEdit<'_> {
    /// Each label only while it still has the value the plan saw; and never a device-plugin
    /// label on a node labelled for the DRA driver, nor the other way round (the one going
    /// must be gone first).
    fn labels(&self, current: &BTreeMap<String, String>) -> Option<MapChanges> {
        let mut changes = MapChanges::new();
        if let Some(change) = &self.0.label
            && current.get(DEVICE_PLUGIN_LABEL) == change.from.as_ref()
            && (change.to.is_none() || !current.contains_key(DRA_LABEL))
        {
            changes.push((DEVICE_PLUGIN_LABEL.to_string(), change.to.clone()));
        }
        if let Some(change) = &self.0.dra_label
            && current.get(DRA_LABEL) == change.from.as_ref()
            && (change.to.is_none() || !current.contains_key(DEVICE_PLUGIN_LABEL))
        {
            changes.push((DRA_LABEL.to_string(), change.to.clone()));
        }
        (!changes.is_empty()).then_some(changes)
    }

    fn gives_to_dra(&self, current: &BTreeMap<String, String>) -> bool {
        self.0.dra_label.as_ref().is_some_and(|change| {
            change.to.is_some()
                && current.get(DRA_LABEL) == change.from.as_ref()
                && !current.contains_key(DEVICE_PLUGIN_LABEL)
        })
    }

    fn labels_only(&self) -> bool {
        self.0.taint.is_none() && self.0.record.is_none()
    }

    fn annotations(&self, current: &BTreeMap<String, String>) -> Option<MapChanges> {
        let record = serde_json::to_string(self.0.record.as_ref()?).ok()?;
        (current.get(VALIDATION_ANNOTATION) != Some(&record))
            .then(|| vec![(VALIDATION_ANNOTATION.to_string(), Some(record))])
    }

    fn hands_to(&self, current: &BTreeMap<String, String>) -> Option<String> {
        let change = self.0.label.as_ref()?;
        (current.get(DEVICE_PLUGIN_LABEL) == change.from.as_ref())
            .then(|| change.to.clone())
            .flatten()
    }

    fn taints(&self, current: &[Taint]) -> Option<Vec<Taint>> {
        let change = self.0.taint.as_ref()?;
        let has = current
            .iter()
            .any(|t| t.key == change.key && t.effect == "NoSchedule");
        match (change.add, has) {
            (true, false) => {
                let mut taints = current.to_vec();
                taints.push(Taint {
                    key: change.key.clone(),
                    value: None,
                    effect: "NoSchedule".into(),
                    time_added: None,
                });
                Some(taints)
            }
            (false, true) => Some(
                current
                    .iter()
                    .filter(|t| !(t.key == change.key && t.effect == "NoSchedule"))
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }
}

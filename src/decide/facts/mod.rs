//! Plain data the decisions and the shell share: a DaemonSet as gpupool sees it, what the apply
//! step achieved, and problems only an admin can fix.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::PodSpec;

use crate::api::{API_VERSION_FULL, KIND, Reason};
use crate::decide::daemonset::parse_taint_keys;
use crate::decide::scheduling::TaintKey;

/// The field manager gpupool writes with.
pub const MANAGER: &str = "gpupool-operator";

/// A problem only a change by an admin can fix; reported as Stalled, retried slowly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub reason: Reason,
    pub message: String,
}

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The GpuPool that controls a DaemonSet (its controller owner reference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolOwner {
    pub name: String,
    pub uid: String,
}

/// How far the DaemonSet controller got with a DaemonSet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub ready: i32,
    pub updated: i32,
}

/// A DaemonSet, reduced at watch time to what gpupool decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSetFacts {
    pub id: ObjectId,
    pub uid: String,
    pub deleting: bool,
    /// Set when a GpuPool controls it.
    pub pool_owner: Option<PoolOwner>,
    /// The desired-state hash gpupool put on it (ours only).
    pub desired_hash: Option<String>,
    /// Field managers other than gpupool that own fields of its spec (ours only): someone edited it.
    pub spec_editors: Vec<String>,
    /// The taint keys its plugin tolerates beyond the base ones (ours only).
    pub tolerated: BTreeSet<TaintKey>,
    pub rollout: Rollout,
    /// The pod template of a device plugin (ours included: when its pool is gone it counts as
    /// foreign until collected), to tell where its pods run. None for other DaemonSets.
    pub plugin_pod: Option<PodSpec>,
    /// The labels its pods are selected by (device plugins gpupool does not own), to find the
    /// pods still terminating once it is deleted.
    pub pod_selector: BTreeMap<String, String>,
}

impl DaemonSetFacts {
    pub fn from_daemonset(ds: &DaemonSet) -> DaemonSetFacts {
        let meta = &ds.metadata;
        let pool_owner = pool_owner(ds);
        let ours = pool_owner.is_some();
        let status = ds.status.as_ref();
        DaemonSetFacts {
            id: ObjectId {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            },
            uid: meta.uid.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            desired_hash: ours
                .then(|| {
                    meta.annotations
                        .as_ref()?
                        .get(DESIRED_HASH_ANNOTATION)
                        .cloned()
                })
                .flatten(),
            spec_editors: if ours { spec_editors(ds) } else { Vec::new() },
            tolerated: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(TOLERATED_TAINTS_ANNOTATION))
                .filter(|_| ours)
                .map(|text| parse_taint_keys(text))
                .unwrap_or_default(),
            rollout: Rollout {
                generation: meta.generation.unwrap_or(0),
                observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
                desired: status.map_or(0, |s| s.desired_number_scheduled),
                ready: status.map_or(0, |s| s.number_ready),
                updated: status.and_then(|s| s.updated_number_scheduled).unwrap_or(0),
            },
            plugin_pod: (ours || is_device_plugin(ds))
                .then(|| ds.spec.as_ref()?.template.spec.clone())
                .flatten(),
            pod_selector: ds
                .spec
                .as_ref()
                .filter(|_| !ours && is_device_plugin(ds))
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default(),
            pool_owner,
        }
    }

    /// Whether this is a device plugin a pool must keep its own plugin away from: one gpupool
    /// does not control, or one whose GpuPool is gone (its pods run until the garbage collector
    /// removes them, so a younger overlapping pool must not take its nodes before that).
    pub fn is_foreign_plugin(&self, live_pool_uids: &std::collections::HashSet<&str>) -> bool {
        match &self.pool_owner {
            Some(owner) => !live_pool_uids.contains(owner.uid.as_str()),
            None => self.plugin_pod.is_some(),
        }
    }

    /// Whether the GpuPool with this uid controls it.
    pub fn controlled_by(&self, pool_uid: &str) -> bool {
        self.pool_owner.as_ref().is_some_and(|o| o.uid == pool_uid)
    }
}

/// Annotation holding a hash of everything gpupool set, to tell "nothing to do" without a diff.
pub const DESIRED_HASH_ANNOTATION: &str = "gpupool.io/desired-hash";
/// Annotation listing the taint keys the plugin tolerates beyond its base tolerations.
pub const TOLERATED_TAINTS_ANNOTATION: &str = "gpupool.io/tolerated-taints";

fn pool_owner(ds: &DaemonSet) -> Option<PoolOwner> {
    ds.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == KIND && r.api_version == API_VERSION_FULL && r.controller == Some(true))
        .map(|r| PoolOwner {
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
}

/// Field managers other than ours that own anything in the DaemonSet's spec (status writes by the
/// DaemonSet controller go through the status subresource and do not count).
fn spec_editors(ds: &DaemonSet) -> Vec<String> {
    let mut managers: Vec<String> = ds
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() != Some(MANAGER))
        .filter(|m| m.subresource.as_deref().unwrap_or("").is_empty())
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:spec").is_some())
        })
        .map(|m| m.manager.clone().unwrap_or_else(|| "(unnamed)".into()))
        .collect();
    managers.sort();
    managers.dedup();
    managers
}

/// Whether a DaemonSet runs an NVIDIA device plugin (by image, or by the names the AKS article,
/// the plugin's manifests and the GPU Operator use).
pub fn is_device_plugin(ds: &DaemonSet) -> bool {
    let named = ds
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.contains("nvidia-device-plugin"));
    let images = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .into_iter()
        .flat_map(|p| p.containers.iter())
        .filter_map(|c| c.image.as_deref());
    named || images.into_iter().any(|i| i.contains("k8s-device-plugin"))
}

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

/// A DaemonSet the API server refused in a way only an admin can fix, remembered so that the
/// same write is not tried again on every unrelated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The desired-state hash of the refused DaemonSet.
    pub hash: String,
    pub at: k8s_openapi::jiff::Timestamp,
    pub stall: Stall,
}

/// What the apply step achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub state: PluginState,
    /// A write the API server refused in a way only an admin can fix.
    pub stall: Option<Stall>,
    pub change: Option<DaemonSetChange>,
    /// The node updates that changed a node.
    pub nodes_written: Vec<crate::decide::plan::NodeUpdate>,
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

/// "a, b, c and 4 more": node lists in messages stay readable at 5,000 nodes.
pub fn name_list(names: &[String], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..max].join(", "), names.len() - max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference,
    };

    fn ds(name: &str, image: &str) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn managed(
        manager: &str,
        subresource: Option<&str>,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            subresource: subresource.map(Into::into),
            fields_v1: Some(FieldsV1(fields)),
            ..ManagedFieldsEntry::default()
        }
    }

    #[test]
    fn device_plugins_are_recognised_by_image_or_name() {
        assert!(is_device_plugin(&ds(
            "nvidia-device-plugin-daemonset",
            "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11"
        )));
        assert!(is_device_plugin(&ds(
            "whatever",
            "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
        )));
        assert!(!is_device_plugin(&ds(
            "kube-proxy",
            "registry.k8s.io/kube-proxy:v1.36.3"
        )));
        let facts =
            DaemonSetFacts::from_daemonset(&ds("kube-proxy", "registry.k8s.io/kube-proxy:v1.36.3"));
        assert!(facts.pool_owner.is_none() && facts.plugin_pod.is_none());
        assert!(!facts.is_foreign_plugin(&Default::default()));
    }

    #[test]
    fn a_plugin_whose_pool_is_gone_stays_foreign_until_collected() {
        let mut ours = ds(
            "nvidia-device-plugin-gpu",
            "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
        );
        ours.metadata.owner_references = Some(vec![OwnerReference {
            api_version: API_VERSION_FULL.into(),
            kind: KIND.into(),
            name: "gpu".into(),
            uid: "old-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        let facts = DaemonSetFacts::from_daemonset(&ours);
        assert!(
            !facts.is_foreign_plugin(&["old-uid"].into()),
            "its pool exists"
        );
        assert!(
            facts.is_foreign_plugin(&Default::default()),
            "its pool is gone"
        );
        assert!(facts.controlled_by("old-uid"));
    }

    #[test]
    fn spec_edits_by_others_are_found_but_not_status_or_metadata_writes() {
        let mut d = ds("nvidia-device-plugin-gpu", "img");
        d.metadata.owner_references = Some(vec![OwnerReference {
            api_version: API_VERSION_FULL.into(),
            kind: KIND.into(),
            name: "gpu".into(),
            uid: "uid".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        d.metadata.managed_fields = Some(vec![
            managed(MANAGER, None, serde_json::json!({"f:spec": {}})),
            managed(
                "kube-controller-manager",
                Some("status"),
                serde_json::json!({"f:status": {}}),
            ),
            managed("kubectl-label", None, serde_json::json!({"f:metadata": {}})),
            managed(
                "kubectl-edit",
                None,
                serde_json::json!({"f:spec": {"f:template": {}}}),
            ),
        ]);
        assert_eq!(
            DaemonSetFacts::from_daemonset(&d).spec_editors,
            vec!["kubectl-edit".to_string()]
        );
    }

    #[test]
    fn name_lists_are_bounded() {
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        assert_eq!(name_list(&names, 10), "n0, n1, n2, n3, n4");
        assert_eq!(name_list(&names, 2), "n0, n1 and 3 more");
    }
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

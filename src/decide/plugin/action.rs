//! What to do to the cluster's DaemonSets to reach the desired one, decided from the watched
//! facts alone: no diff against the API server and no write when nothing changed.

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::api::Reason;
use crate::decide::facts::{DaemonSetFacts, ObjectId, Stall};
use crate::decide::names::DESIRED_HASH_ANNOTATION;

#[derive(Clone, Debug, PartialEq)]
pub enum DaemonSetAction {
    /// Live matches desired (or both are absent).
    Nothing,
    /// Create or update it with server-side apply.
    Apply(Box<DaemonSet>),
    /// Someone else changed its spec: fields they added would survive an apply, so delete it
    /// (orphaning its pods, which the new DaemonSet adopts: no gap in GPU service) and create it
    /// again on the next pass.
    Replace {
        id: ObjectId,
        uid: String,
        edited_by: Vec<String>,
    },
    /// The pool no longer wants a plugin: remove ours.
    Delete { id: ObjectId },
    /// The old object (or its pods) is on its way out; wait for it to go.
    Wait { id: ObjectId },
    /// The name is taken by a DaemonSet that is not this pool's: an admin must resolve it.
    Blocked(Stall),
}

fn hash(ds: &DaemonSet) -> Option<&str> {
    ds.metadata
        .annotations
        .as_ref()?
        .get(DESIRED_HASH_ANNOTATION)
        .map(String::as_str)
}

pub fn daemonset_action(
    desired: Option<&DaemonSet>,
    live: Option<&DaemonSetFacts>,
    pool_uid: &str,
) -> DaemonSetAction {
    match (desired, live) {
        (None, None) => DaemonSetAction::Nothing,
        (Some(want), None) => DaemonSetAction::Apply(Box::new(want.clone())),
        (_, Some(have)) if have.deleting => DaemonSetAction::Wait {
            id: have.id.clone(),
        },
        (None, Some(have)) if have.controlled_by(pool_uid) => DaemonSetAction::Delete {
            id: have.id.clone(),
        },
        (None, Some(_)) => DaemonSetAction::Nothing,
        (Some(want), Some(have)) => update_action(want, have, pool_uid),
    }
}

fn update_action(want: &DaemonSet, have: &DaemonSetFacts, pool_uid: &str) -> DaemonSetAction {
    match &have.pool_owner {
        Some(owner) if owner.uid == pool_uid => {}
        // A GpuPool of the same name was deleted and created again: the garbage collector
        // removes the old DaemonSet shortly.
        Some(_) => {
            return DaemonSetAction::Wait {
                id: have.id.clone(),
            };
        }
        None => {
            return DaemonSetAction::Blocked(Stall {
                reason: Reason::DaemonSetNameTaken,
                message: format!(
                    "DaemonSet {} exists but is not managed by this GpuPool; delete or rename it so gpupool can create its device plugin there",
                    have.id
                ),
            });
        }
    }
    if !have.spec_editors.is_empty() {
        return DaemonSetAction::Replace {
            id: have.id.clone(),
            uid: have.uid.clone(),
            edited_by: have.spec_editors.clone(),
        };
    }
    match hash(want) {
        Some(h) if have.desired_hash.as_deref() == Some(h) => DaemonSetAction::Nothing,
        _ => DaemonSetAction::Apply(Box::new(want.clone())),
    }
}

/// DaemonSets of this pool left in another namespace (the plugin namespace setting changed):
/// they go before anything else, so that no node ever runs two plugins.
pub fn stale_daemonsets<'a>(
    daemonsets: impl IntoIterator<Item = &'a DaemonSetFacts>,
    pool_uid: &str,
    namespace: &str,
) -> Vec<ObjectId> {
    let mut stale: Vec<ObjectId> = daemonsets
        .into_iter()
        .filter(|ds| ds.controlled_by(pool_uid) && ds.id.namespace != namespace && !ds.deleting)
        .map(|ds| ds.id.clone())
        .collect();
    stale.sort();
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::{PoolOwner, Rollout};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn id(namespace: &str) -> ObjectId {
        ObjectId {
            namespace: namespace.into(),
            name: "nvidia-device-plugin-gpu".into(),
        }
    }

    fn live(hash: &str, owner_uid: Option<&str>) -> DaemonSetFacts {
        DaemonSetFacts {
            id: id("gpu-resources"),
            uid: "ds-uid".into(),
            deleting: false,
            pool_owner: owner_uid.map(|uid| PoolOwner {
                name: "gpu".into(),
                uid: uid.into(),
            }),
            desired_hash: Some(hash.into()),
            spec_editors: vec![],
            rollout: Rollout::default(),
            plugin_pod: None,
            pod_selector: Default::default(),
            tolerated: Default::default(),
        }
    }

    fn desired(hash: &str) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                annotations: Some([(DESIRED_HASH_ANNOTATION.to_string(), hash.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
        }
    }

    #[test]
    fn no_write_when_the_hash_matches() {
        let want = desired("h1");
        assert_eq!(
            daemonset_action(Some(&want), Some(&live("h1", Some("uid"))), "uid"),
            DaemonSetAction::Nothing
        );
        assert!(matches!(
            daemonset_action(Some(&want), Some(&live("h0", Some("uid"))), "uid"),
            DaemonSetAction::Apply(_)
        ));
        assert!(matches!(
            daemonset_action(Some(&want), None, "uid"),
            DaemonSetAction::Apply(_)
        ));
    }

    #[test]
    fn edits_by_others_are_undone_by_replacing() {
        let mut edited = live("h1", Some("uid"));
        edited.spec_editors = vec!["kubectl-edit".into()];
        assert_eq!(
            daemonset_action(Some(&desired("h1")), Some(&edited), "uid"),
            DaemonSetAction::Replace {
                id: id("gpu-resources"),
                uid: "ds-uid".into(),
                edited_by: vec!["kubectl-edit".into()]
            }
        );
    }

    #[test]
    fn only_our_own_daemonset_is_deleted() {
        assert_eq!(
            daemonset_action(None, Some(&live("h", Some("uid"))), "uid"),
            DaemonSetAction::Delete {
                id: id("gpu-resources")
            }
        );
        assert_eq!(
            daemonset_action(None, Some(&live("h", None)), "uid"),
            DaemonSetAction::Nothing
        );
        assert_eq!(
            daemonset_action(None, None, "uid"),
            DaemonSetAction::Nothing
        );
    }

    #[test]
    fn a_name_taken_by_someone_else_blocks_and_a_predecessor_is_awaited() {
        let want = desired("h");
        assert!(matches!(
            daemonset_action(Some(&want), Some(&live("h", None)), "uid"),
            DaemonSetAction::Blocked(s) if s.reason == Reason::DaemonSetNameTaken
        ));
        assert_eq!(
            daemonset_action(Some(&want), Some(&live("h", Some("old-uid"))), "uid"),
            DaemonSetAction::Wait {
                id: id("gpu-resources")
            }
        );
        let mut going = live("h", Some("uid"));
        going.deleting = true;
        assert_eq!(
            daemonset_action(Some(&want), Some(&going), "uid"),
            DaemonSetAction::Wait {
                id: id("gpu-resources")
            }
        );
    }

    #[test]
    fn daemonsets_left_in_another_namespace_are_stale() {
        let mut old = live("h", Some("uid"));
        old.id = id("old-plugins");
        let mut going = old.clone();
        going.id.name = "going".into();
        going.deleting = true;
        let mut foreign = old.clone();
        foreign.id.name = "someone-elses".into();
        foreign.pool_owner = None;
        let current = live("h", Some("uid"));
        assert_eq!(
            stale_daemonsets([&old, &going, &foreign, &current], "uid", "gpu-resources"),
            vec![id("old-plugins")]
        );
    }
}

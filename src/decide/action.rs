//! What to do to the cluster's DaemonSet to reach the desired one, decided from the cached live
//! object alone: no diff against the API server and no write when nothing changed.

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::decide::daemonset::DESIRED_HASH_ANNOTATION;
use crate::decide::status::Stall;

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
        namespace: String,
        name: String,
        edited_by: Vec<String>,
    },
    /// The pool no longer wants a plugin: remove ours.
    Delete { namespace: String, name: String },
    /// The old object is on its way out (being deleted); wait for it to go.
    Wait,
    /// The name is taken by a DaemonSet that is not this pool's: an admin must resolve it.
    Blocked(Stall),
}

/// The owner UID of the pool controlling this DaemonSet, if any.
pub fn controller_uid(ds: &DaemonSet) -> Option<&str> {
    ds.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Field managers other than ours that own anything in the DaemonSet's spec (status writes by the
/// DaemonSet controller go through the status subresource and do not count).
pub fn foreign_spec_managers(ds: &DaemonSet, our_manager: &str) -> Vec<String> {
    let mut managers: Vec<String> = ds
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() != Some(our_manager))
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

fn hash(ds: &DaemonSet) -> Option<&str> {
    ds.metadata
        .annotations
        .as_ref()?
        .get(DESIRED_HASH_ANNOTATION)
        .map(String::as_str)
}

pub fn daemonset_action(
    desired: Option<&DaemonSet>,
    live: Option<&DaemonSet>,
    pool_uid: &str,
    our_manager: &str,
) -> DaemonSetAction {
    let id = |ds: &DaemonSet| {
        (
            ds.metadata.namespace.clone().unwrap_or_default(),
            ds.metadata.name.clone().unwrap_or_default(),
        )
    };
    match (desired, live) {
        (None, None) => DaemonSetAction::Nothing,
        (Some(want), None) => DaemonSetAction::Apply(Box::new(want.clone())),
        (_, Some(have)) if have.metadata.deletion_timestamp.is_some() => DaemonSetAction::Wait,
        (None, Some(have)) => {
            if controller_uid(have) == Some(pool_uid) {
                let (namespace, name) = id(have);
                DaemonSetAction::Delete { namespace, name }
            } else {
                DaemonSetAction::Nothing
            }
        }
        (Some(want), Some(have)) => {
            match controller_uid(have) {
                Some(uid) if uid == pool_uid => {}
                // A GpuPool of the same name was deleted and created again: the garbage collector
                // removes the old DaemonSet shortly.
                Some(_) if crate::decide::owned_by_gpupool(have) => return DaemonSetAction::Wait,
                _ => {
                    let (namespace, name) = id(have);
                    return DaemonSetAction::Blocked(Stall {
                        reason: "DaemonSetNameTaken",
                        message: format!(
                            "DaemonSet {namespace}/{name} exists but is not managed by this GpuPool; delete or rename it so gpupool can create its device plugin there"
                        ),
                    });
                }
            }
            let editors = foreign_spec_managers(have, our_manager);
            if !editors.is_empty() {
                let (namespace, name) = id(have);
                return DaemonSetAction::Replace {
                    namespace,
                    name,
                    edited_by: editors,
                };
            }
            if hash(have) == hash(want) && hash(want).is_some() {
                DaemonSetAction::Nothing
            } else {
                DaemonSetAction::Apply(Box::new(want.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference, Time,
    };

    const MANAGER: &str = "gpupool-operator";

    fn ds(hash: &str, owner_uid: Option<&str>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("nvidia-device-plugin-gpu".into()),
                namespace: Some("gpu-resources".into()),
                annotations: Some([(DESIRED_HASH_ANNOTATION.to_string(), hash.to_string())].into()),
                owner_references: owner_uid.map(|uid| {
                    vec![OwnerReference {
                        api_version: "gpupool.io/v1alpha1".into(),
                        kind: "GpuPool".into(),
                        name: "gpu".into(),
                        uid: uid.into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
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
    fn no_write_when_the_hash_matches() {
        let want = ds("h1", Some("uid"));
        assert_eq!(
            daemonset_action(Some(&want), Some(&want), "uid", MANAGER),
            DaemonSetAction::Nothing
        );
        let old = ds("h0", Some("uid"));
        assert!(matches!(
            daemonset_action(Some(&want), Some(&old), "uid", MANAGER),
            DaemonSetAction::Apply(_)
        ));
        assert!(matches!(
            daemonset_action(Some(&want), None, "uid", MANAGER),
            DaemonSetAction::Apply(_)
        ));
    }

    #[test]
    fn edits_by_others_are_undone_by_replacing() {
        let want = ds("h1", Some("uid"));
        let mut edited = want.clone();
        edited.metadata.managed_fields = Some(vec![
            managed(MANAGER, None, serde_json::json!({"f:spec": {}})),
            managed(
                "kube-controller-manager",
                Some("status"),
                serde_json::json!({"f:status": {}}),
            ),
            managed(
                "kubectl-edit",
                None,
                serde_json::json!({"f:spec": {"f:template": {}}}),
            ),
        ]);
        assert_eq!(
            daemonset_action(Some(&want), Some(&edited), "uid", MANAGER),
            DaemonSetAction::Replace {
                namespace: "gpu-resources".into(),
                name: "nvidia-device-plugin-gpu".into(),
                edited_by: vec!["kubectl-edit".into()]
            }
        );
        // Metadata-only changes (a label added by someone) are left alone.
        let mut labelled = want.clone();
        labelled.metadata.managed_fields = Some(vec![managed(
            "kubectl-label",
            None,
            serde_json::json!({"f:metadata": {}}),
        )]);
        assert_eq!(
            daemonset_action(Some(&want), Some(&labelled), "uid", MANAGER),
            DaemonSetAction::Nothing
        );
    }

    #[test]
    fn only_our_own_daemonset_is_deleted() {
        let ours = ds("h", Some("uid"));
        assert!(matches!(
            daemonset_action(None, Some(&ours), "uid", MANAGER),
            DaemonSetAction::Delete { .. }
        ));
        let theirs = ds("h", None);
        assert_eq!(
            daemonset_action(None, Some(&theirs), "uid", MANAGER),
            DaemonSetAction::Nothing
        );
        assert_eq!(
            daemonset_action(None, None, "uid", MANAGER),
            DaemonSetAction::Nothing
        );
    }

    #[test]
    fn a_name_taken_by_someone_else_blocks_and_a_predecessor_is_awaited() {
        let want = ds("h", Some("uid"));
        let theirs = ds("h", None);
        assert!(
            matches!(daemonset_action(Some(&want), Some(&theirs), "uid", MANAGER), DaemonSetAction::Blocked(s) if s.reason == "DaemonSetNameTaken")
        );
        let predecessor = ds("h", Some("old-uid"));
        assert_eq!(
            daemonset_action(Some(&want), Some(&predecessor), "uid", MANAGER),
            DaemonSetAction::Wait
        );
        let mut going = want.clone();
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(
            daemonset_action(Some(&want), Some(&going), "uid", MANAGER),
            DaemonSetAction::Wait
        );
    }
}

//! DaemonSet → `DaemonSetFacts`.

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::api::{API_VERSION_FULL, KIND};
use crate::decide::facts::{DaemonSetFacts, ObjectId, PoolOwner, Rollout, parse_taint_keys};
use crate::decide::names::{DESIRED_HASH_ANNOTATION, MANAGER, TOLERATED_TAINTS_ANNOTATION};

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
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
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
}

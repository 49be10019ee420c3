//! The functional core: pure decisions over plain data, no API server. The controller observes the
//! cluster, calls [`decide`], applies the resulting DaemonSet action, then calls
//! [`status::compute_status`] with what the apply achieved.

pub mod action;
pub mod claims;
pub mod daemonset;
pub mod events;
pub mod image;
pub mod nodes;
#[cfg(test)]
mod proptests;
pub mod scheduling;
pub mod selector;
pub mod status;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::ResourceExt;

use crate::api::{API_VERSION_FULL, GpuPool, KIND, PluginMode};
use claims::{ForeignPlugin, NodeClaims, PoolRef, claim_nodes};
use daemonset::{PluginPlacement, desired_daemonset};
use image::{PluginDecision, decide_plugin};
use nodes::NodeFacts;
use scheduling::tolerations_for_taints;

/// Operator settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub plugin_namespace: String,
    pub default_plugin_image: String,
    pub gpu_grace_period: std::time::Duration,
    /// How long the plugin DaemonSet may take to become ready before it counts as stuck.
    pub rollout_deadline: std::time::Duration,
}

/// What gpupool wants for one pool.
#[derive(Clone, Debug)]
pub struct Decision {
    pub plugin: PluginDecision,
    pub claims: NodeClaims,
    /// The device-plugin DaemonSet, or None when the pool gets no plugin.
    pub desired: Option<DaemonSet>,
    pub image: String,
}

/// Decides the plugin mode, who serves which node, and the desired DaemonSet for `pool`, given
/// its nodes, every pool (for overlaps) and the device plugins gpupool does not own.
pub fn decide(
    pool: &GpuPool,
    nodes: &[&NodeFacts],
    pools: &[PoolRef],
    foreign: &[ForeignPlugin],
    settings: &Settings,
) -> Decision {
    let previous_mode = pool
        .status
        .as_ref()
        .and_then(|s| s.device_plugin.as_ref())
        .map(|d| d.mode);
    let plugin = decide_plugin(pool.spec.node_image, nodes, previous_mode);
    let this = PoolRef {
        name: pool.name_any(),
        created: pool.creation_timestamp().map(|t| t.0),
        selector: pool.spec.node_selector.clone(),
    };
    let claims = claim_nodes(&this, nodes, pools, foreign);
    let excluded = claims.excluded_nodes();
    let served = nodes.iter().filter(|n| !excluded.contains(&n.name));
    let placement = PluginPlacement {
        pool: &this.name,
        pool_uid: pool.metadata.uid.as_deref().unwrap_or_default(),
        namespace: &settings.plugin_namespace,
        default_image: &settings.default_plugin_image,
        spec: pool.spec.device_plugin.as_ref(),
        selector: &pool.spec.node_selector,
        allowed_image_versions: plugin.allowed_image_versions.as_ref(),
        excluded_nodes: &excluded,
        taint_tolerations: tolerations_for_taints(served.flat_map(|n| n.taints.iter())),
    };
    let desired = (plugin.mode == PluginMode::Managed).then(|| desired_daemonset(&placement));
    Decision {
        image: placement.image(),
        plugin,
        claims,
        desired,
    }
}

/// Whether a GpuPool controls this DaemonSet.
pub fn owned_by_gpupool(ds: &DaemonSet) -> bool {
    ds.owner_references()
        .iter()
        .any(|r| r.kind == KIND && r.api_version == API_VERSION_FULL && r.controller == Some(true))
}

/// Whether a DaemonSet is a device plugin some pool must keep its own plugin away from: one
/// gpupool does not own, or one whose owning GpuPool is gone (its pods run until the garbage
/// collector removes them, so a younger overlapping pool must not take its nodes before that).
pub fn is_foreign_plugin(
    ds: &DaemonSet,
    live_pool_uids: &std::collections::HashSet<String>,
) -> bool {
    if owned_by_gpupool(ds) {
        action::controller_uid(ds).is_none_or(|uid| !live_pool_uids.contains(uid))
    } else {
        is_device_plugin(ds)
    }
}

/// Whether a DaemonSet runs an NVIDIA device plugin (by image or by the names the article, the
/// plugin's manifests and the GPU Operator use).
pub fn is_device_plugin(ds: &DaemonSet) -> bool {
    let name = ds.name_any();
    let images = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .filter_map(|c| c.image.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    name.contains("nvidia-device-plugin") || images.iter().any(|i| i.contains("k8s-device-plugin"))
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
pub(crate) mod testing {
    //! Builders for plain test data.
    use std::collections::BTreeMap;

    use crate::api::PoolSelector;
    use crate::decide::claims::PoolRef;
    use crate::decide::nodes::{NodeFacts, NodeReadiness, NodeTaint};

    pub fn node(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: vec![],
            unschedulable: false,
            ready: NodeReadiness::Ready,
            gpu_capacity: None,
            gpu_allocatable: None,
            created: None,
            deleting: false,
        }
    }

    pub fn node_labelled(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
        let mut n = node(name);
        n.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n
    }

    pub fn gpu_node(name: &str, capacity: i64, allocatable: i64) -> NodeFacts {
        let mut n = node_labelled(name, &[("agentpool", "gpu")]);
        n.gpu_capacity = Some(capacity);
        n.gpu_allocatable = Some(allocatable);
        n
    }

    pub fn taint(key: &str, value: &str, effect: &str) -> NodeTaint {
        NodeTaint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    pub fn selector(labels: &[(&str, &str)]) -> PoolSelector {
        PoolSelector {
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: vec![],
        }
    }

    pub fn pool_ref(name: &str, created_secs: i64, labels: &[(&str, &str)]) -> PoolRef {
        PoolRef {
            name: name.into(),
            created: Some(k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap()),
            selector: selector(labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GpuPoolSpec, NodeImage};
    use crate::decide::testing::{gpu_node, selector, taint};
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

    fn settings() -> Settings {
        Settings {
            plugin_namespace: "gpu-resources".into(),
            default_plugin_image: daemonset::DEFAULT_PLUGIN_IMAGE.into(),
            gpu_grace_period: std::time::Duration::from_secs(600),
            rollout_deadline: std::time::Duration::from_secs(300),
        }
    }

    fn pool(node_image: NodeImage) -> GpuPool {
        let mut p = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                node_image,
                device_plugin: None,
                expected_gpus_per_node: None,
            },
        );
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[test]
    fn taints_of_served_nodes_become_tolerations() {
        let mut a = gpu_node("a", 1, 1);
        a.taints.push(taint("sku", "gpu", "NoSchedule"));
        let d = decide(&pool(NodeImage::Standard), &[&a], &[], &[], &settings());
        let ds = d.desired.unwrap();
        let tols = ds.spec.unwrap().template.spec.unwrap().tolerations.unwrap();
        assert!(tols.iter().any(|t| t.key.as_deref() == Some("sku")));
    }

    #[test]
    fn specialized_pools_get_no_daemonset() {
        let a = gpu_node("a", 1, 1);
        let d = decide(&pool(NodeImage::Specialized), &[&a], &[], &[], &settings());
        assert!(d.desired.is_none());
        assert_eq!(d.plugin.mode, PluginMode::Skipped);
    }

    #[test]
    fn device_plugins_are_recognised_by_image_or_name() {
        let ds = |name: &str, image: &str| DaemonSet {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
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
        };
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
        assert!(!owned_by_gpupool(&ds("x", "y")));
    }

    #[test]
    fn a_plugin_whose_pool_is_gone_stays_foreign_until_collected() {
        let mut pool = pool(NodeImage::Standard);
        pool.metadata.uid = Some("old-uid".into());
        let mut a = gpu_node("a", 1, 1);
        a.taints.clear();
        let orphan = decide(&pool, &[&a], &[], &[], &settings()).desired.unwrap();
        let live: std::collections::HashSet<String> = ["old-uid".to_string()].into();
        assert!(
            !is_foreign_plugin(&orphan, &live),
            "its pool exists: it is that pool's own"
        );
        assert!(
            is_foreign_plugin(&orphan, &Default::default()),
            "its pool is gone: keep away until the GC removes it"
        );
    }

    #[test]
    fn name_lists_are_bounded() {
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        assert_eq!(name_list(&names, 10), "n0, n1, n2, n3, n4");
        assert_eq!(name_list(&names, 2), "n0, n1 and 3 more");
    }
}

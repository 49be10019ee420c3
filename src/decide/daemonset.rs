//! The device-plugin DaemonSet gpupool wants for a pool: the AKS article's manifest, field by
//! field, plus placement (the pool's nodes only), tolerations for the pool's taints, the spec's
//! extras and an owner reference.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, HostPathVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, PodTemplateSpec, SecurityContext,
    Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    API_VERSION_FULL, DevicePluginSpec, KIND, PluginToleration, PoolSelector, TolerationOperator,
};
use crate::decide::model::DESIRED_HASH_ANNOTATION;
use crate::decide::nodes::NODE_IMAGE_LABEL;
use crate::decide::scheduling::base_tolerations;
use crate::decide::selector::affinity_requirements;

/// The default plugin image: the one the current AKS GPU article uses.
pub const DEFAULT_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.0";
pub const DEFAULT_PRIORITY_CLASS: &str = "system-node-critical";
/// Label on our DaemonSets and their pods naming the pool (a label-safe form of its name).
pub const POOL_LABEL: &str = "gpupool.io/pool";
const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
const NAME_PREFIX: &str = "nvidia-device-plugin-";
const MAX_NAME: usize = 63;

/// The DaemonSet name for a pool. Pool names can be 253 characters with dots; DaemonSet names are
/// kept to 63 so the pod names derived from them stay legal everywhere. Long names keep a readable
/// prefix and end in a hash of the full name, so distinct pools never share a DaemonSet.
pub fn daemonset_name(pool: &str) -> String {
    format!(
        "{NAME_PREFIX}{}",
        pool_key_with_room(pool, MAX_NAME - NAME_PREFIX.len())
    )
}

/// A label-value-safe (at most 63 characters) key for the pool.
pub fn pool_key(pool: &str) -> String {
    pool_key_with_room(pool, MAX_NAME)
}

fn pool_key_with_room(pool: &str, room: usize) -> String {
    if pool.len() <= room {
        return pool.to_string();
    }
    let hash = format!("{:016x}", fnv1a(pool.as_bytes()));
    let keep = room - 9; // '-' and 8 hex digits
    let prefix = pool[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &hash[..8])
}

/// FNV-1a 64: stable across releases (unlike std's hasher), so names and hashes never change
/// under a running pool.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hasher, bytes);
    std::hash::Hasher::finish(&hasher)
}

/// Everything the desired DaemonSet depends on.
#[derive(Clone, Debug)]
pub struct PluginPlacement<'a> {
    pub pool: &'a str,
    pub pool_uid: &'a str,
    pub namespace: &'a str,
    pub default_image: &'a str,
    pub spec: Option<&'a DevicePluginSpec>,
    pub selector: &'a PoolSelector,
    /// From image detection (Auto): only nodes without the image label or with these versions.
    pub allowed_image_versions: Option<&'a BTreeSet<String>>,
    /// Nodes another pool or a foreign plugin serves.
    pub excluded_nodes: &'a [String],
    /// Tolerations for the pool's taints.
    pub taint_tolerations: Vec<Toleration>,
}

impl PluginPlacement<'_> {
    pub fn image(&self) -> String {
        self.spec
            .and_then(|s| s.image.clone())
            .unwrap_or_else(|| self.default_image.to_string())
    }
}

pub fn desired_daemonset(p: &PluginPlacement) -> DaemonSet {
    let key = pool_key(p.pool);
    let selector_labels: BTreeMap<String, String> = [
        ("name".to_string(), "nvidia-device-plugin-ds".to_string()),
        (POOL_LABEL.to_string(), key.clone()),
    ]
    .into();
    let mut pod_labels = selector_labels.clone();
    pod_labels.insert(
        "app.kubernetes.io/name".into(),
        "nvidia-device-plugin".into(),
    );
    pod_labels.insert("app.kubernetes.io/managed-by".into(), "gpupool".into());
    let mut ds_labels = pod_labels.clone();
    ds_labels.remove("name");

    let spec = p.spec.cloned().unwrap_or_default();
    let mut tolerations = base_tolerations();
    tolerations.extend(p.taint_tolerations.iter().cloned());
    for extra in spec.tolerations.iter().map(to_toleration) {
        if !tolerations.contains(&extra) {
            tolerations.push(extra);
        }
    }

    let container = Container {
        name: "nvidia-device-plugin-ctr".into(),
        image: Some(p.image()),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        resources: spec.resources.as_ref().map(|r| r.to_requirements()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "device-plugin".into(),
            mount_path: DEVICE_PLUGIN_PATH.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    let mut ds = DaemonSet {
        metadata: ObjectMeta {
            name: Some(daemonset_name(p.pool)),
            namespace: Some(p.namespace.to_string()),
            labels: Some(ds_labels),
            owner_references: Some(vec![OwnerReference {
                api_version: API_VERSION_FULL.into(),
                kind: KIND.into(),
                name: p.pool.to_string(),
                uid: p.pool_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels),
                match_expressions: None,
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    // The article's legacy critical add-on marker; priorityClassName does the real work.
                    annotations: Some(
                        [(
                            "scheduler.alpha.kubernetes.io/critical-pod".to_string(),
                            String::new(),
                        )]
                        .into(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    affinity: Some(node_affinity(p)),
                    tolerations: Some(tolerations),
                    priority_class_name: Some(
                        spec.priority_class_name
                            .clone()
                            .unwrap_or_else(|| DEFAULT_PRIORITY_CLASS.into()),
                    ),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "device-plugin".into(),
                        host_path: Some(HostPathVolumeSource {
                            path: DEVICE_PLUGIN_PATH.into(),
                            type_: None,
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    let hash = desired_hash(&ds);
    ds.metadata.annotations = Some([(DESIRED_HASH_ANNOTATION.to_string(), hash)].into());
    ds
}

/// Hash of the desired object (before the hash annotation is added).
fn desired_hash(ds: &DaemonSet) -> String {
    // Serializing k8s-openapi types is deterministic (fixed field order, sorted maps), and
    // cannot fail: they hold no maps with non-string keys and no failing Serialize impls.
    let json = serde_json::to_vec(ds).expect("a DaemonSet serializes to JSON");
    format!("{:016x}", fnv1a(&json))
}

/// The pool's selector as required node affinity; in Auto mode, restricted to nodes whose image
/// gpupool has seen to be standard; minus nodes someone else serves.
fn node_affinity(p: &PluginPlacement) -> Affinity {
    let base = affinity_requirements(p.selector);
    let mut terms: Vec<Vec<NodeSelectorRequirement>> = match p.allowed_image_versions {
        None => vec![base],
        Some(versions) => {
            let mut unlabelled = base.clone();
            unlabelled.push(NodeSelectorRequirement {
                key: NODE_IMAGE_LABEL.into(),
                operator: "DoesNotExist".into(),
                values: None,
            });
            let mut terms = vec![unlabelled];
            if !versions.is_empty() {
                let mut standard = base;
                standard.push(NodeSelectorRequirement {
                    key: NODE_IMAGE_LABEL.into(),
                    operator: "In".into(),
                    values: Some(versions.iter().cloned().collect()),
                });
                terms.push(standard);
            }
            terms
        }
    };
    // One requirement per excluded node (ANDed within the term): the API server accepts a
    // `metadata.name` field requirement only with exactly one value ("must be only one value
    // when `operator` is 'In' or 'NotIn' for node field selector"), so a single NotIn listing
    // two nodes would make the whole DaemonSet invalid.
    let fields = (!p.excluded_nodes.is_empty()).then(|| {
        p.excluded_nodes
            .iter()
            .map(|node| NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "NotIn".into(),
                values: Some(vec![node.clone()]),
            })
            .collect::<Vec<_>>()
    });
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms
                    .drain(..)
                    .map(|exprs| NodeSelectorTerm {
                        match_expressions: Some(exprs),
                        match_fields: fields.clone(),
                    })
                    .collect(),
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

fn to_toleration(t: &PluginToleration) -> Toleration {
    Toleration {
        key: t.key.clone(),
        operator: Some(match t.operator {
            TolerationOperator::Equal => "Equal".into(),
            TolerationOperator::Exists => "Exists".into(),
        }),
        value: t.value.clone(),
        effect: t.effect.map(|e| e.as_str().to_string()),
        toleration_seconds: t.toleration_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaintEffect, TolerationOperator};
    use crate::decide::scheduling::tolerations_for_taints;
    use crate::decide::testing::{selector, taint};
    use k8s_openapi::api::core::v1::EnvVar;

    fn placement<'a>(
        sel: &'a PoolSelector,
        spec: Option<&'a DevicePluginSpec>,
    ) -> PluginPlacement<'a> {
        PluginPlacement {
            pool: "gpu",
            pool_uid: "uid-1",
            namespace: "gpu-resources",
            default_image: DEFAULT_PLUGIN_IMAGE,
            spec,
            selector: sel,
            allowed_image_versions: None,
            excluded_nodes: &[],
            taint_tolerations: vec![],
        }
    }

    fn affinity_terms(ds: &DaemonSet) -> Vec<NodeSelectorTerm> {
        crate::decide::scheduling::required_node_terms(pod(ds))
            .map(<[NodeSelectorTerm]>::to_vec)
            .unwrap_or_default()
    }

    fn pod(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    /// The AKS article's manifest (brief §1 step 3), field by field.
    #[test]
    fn keeps_every_field_of_the_seed_manifest() {
        let sel = selector(&[("kubernetes.azure.com/agentpool", "gpu")]);
        let ds = desired_daemonset(&placement(&sel, None));
        let spec = ds.spec.as_ref().unwrap();
        assert_eq!(ds.metadata.namespace.as_deref(), Some("gpu-resources"));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap()["name"],
            "nvidia-device-plugin-ds"
        );
        let template_meta = spec.template.metadata.as_ref().unwrap();
        assert_eq!(
            template_meta.labels.as_ref().unwrap()["name"],
            "nvidia-device-plugin-ds"
        );
        assert_eq!(
            template_meta.annotations.as_ref().unwrap()["scheduler.alpha.kubernetes.io/critical-pod"],
            ""
        );
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("RollingUpdate")
        );

        let pod = pod(&ds);
        let tols = pod.tolerations.as_ref().unwrap();
        assert!(
            tols.iter()
                .any(|t| t.key.as_deref() == Some("CriticalAddonsOnly")
                    && t.operator.as_deref() == Some("Exists")
                    && t.effect.is_none())
        );
        assert!(
            tols.iter()
                .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                    && t.operator.as_deref() == Some("Exists")
                    && t.effect.as_deref() == Some("NoSchedule"))
        );

        let c = &pod.containers[0];
        assert_eq!(c.name, "nvidia-device-plugin-ctr");
        assert_eq!(c.image.as_deref(), Some(DEFAULT_PLUGIN_IMAGE));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(
            (mount.name.as_str(), mount.mount_path.as_str()),
            ("device-plugin", DEVICE_PLUGIN_PATH)
        );
        let vol = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(vol.name, "device-plugin");
        assert_eq!(vol.host_path.as_ref().unwrap().path, DEVICE_PLUGIN_PATH);
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );

        let owner = &ds.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("GpuPool", "gpu", Some(true))
        );
    }

    #[test]
    fn placement_is_the_pool_selector_minus_excluded_nodes() {
        let sel = selector(&[("kubernetes.azure.com/agentpool", "gpu")]);
        let excluded = vec!["n3".to_string(), "n7".to_string()];
        let mut p = placement(&sel, None);
        p.excluded_nodes = &excluded;
        let ds = desired_daemonset(&p);
        let terms = affinity_terms(&ds);
        assert_eq!(terms.len(), 1);
        let expr = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (expr.key.as_str(), expr.operator.as_str()),
            ("kubernetes.azure.com/agentpool", "In")
        );
        // One single-valued requirement per node: the only form the API server accepts.
        let fields = terms[0].match_fields.as_ref().unwrap();
        assert_eq!(fields.len(), 2);
        for (field, node) in fields.iter().zip(&excluded) {
            assert_eq!(
                (field.key.as_str(), field.operator.as_str()),
                ("metadata.name", "NotIn")
            );
            assert_eq!(field.values, Some(vec![node.clone()]));
        }
    }

    #[test]
    fn auto_mode_only_admits_images_seen_to_be_standard() {
        let sel = selector(&[("agentpool", "gpu")]);
        let versions: BTreeSet<String> =
            ["AKSUbuntu-2204gen2containerd-202405.03.0".to_string()].into();
        let mut p = placement(&sel, None);
        p.allowed_image_versions = Some(&versions);
        let ds = desired_daemonset(&p);
        let terms = affinity_terms(&ds);
        assert_eq!(terms.len(), 2, "no image label OR a standard image");
        let last = |t: &NodeSelectorTerm| {
            t.match_expressions
                .as_ref()
                .unwrap()
                .last()
                .unwrap()
                .clone()
        };
        assert_eq!(last(&terms[0]).operator, "DoesNotExist");
        assert_eq!(last(&terms[1]).operator, "In");
        assert_eq!(
            last(&terms[1]).values.unwrap(),
            vec!["AKSUbuntu-2204gen2containerd-202405.03.0".to_string()]
        );

        let empty = BTreeSet::new();
        p.allowed_image_versions = Some(&empty);
        let ds = desired_daemonset(&p);
        let terms = affinity_terms(&ds);
        assert_eq!(terms.len(), 1, "an In term needs values");
    }

    #[test]
    fn spec_extras_and_taint_tolerations_are_added() {
        let sel = selector(&[("agentpool", "gpu")]);
        let spec = DevicePluginSpec {
            image: Some("mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11".into()),
            tolerations: vec![PluginToleration {
                key: Some("team".into()),
                operator: TolerationOperator::Equal,
                value: Some("ml".into()),
                effect: Some(TaintEffect::NoExecute),
                toleration_seconds: Some(30),
            }],
            priority_class_name: Some("gpu-critical".into()),
            resources: None,
            env: vec![EnvVar {
                name: "FAIL_ON_INIT_ERROR".into(),
                value: Some("false".into()),
                value_from: None,
            }],
        };
        let mut p = placement(&sel, Some(&spec));
        p.taint_tolerations = tolerations_for_taints(&[taint("sku", "gpu", "NoSchedule")]);
        let ds = desired_daemonset(&p);
        let pod = pod(&ds);
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("gpu-critical"));
        assert_eq!(
            pod.containers[0].env.as_ref().unwrap()[0].name,
            "FAIL_ON_INIT_ERROR"
        );
        let keys: Vec<_> = pod
            .tolerations
            .as_ref()
            .unwrap()
            .iter()
            .map(|t| t.key.clone().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec!["CriticalAddonsOnly", "nvidia.com/gpu", "sku", "team"]
        );
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[3].toleration_seconds,
            Some(30)
        );
    }

    #[test]
    fn the_name_hash_is_fnv1a_64() {
        // Published FNV-1a test vectors: names of existing DaemonSets must never change.
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn names_stay_legal_and_distinct_for_long_pool_names() {
        assert_eq!(daemonset_name("gpu"), "nvidia-device-plugin-gpu");
        let long_a = format!("{}.a", "x".repeat(250));
        let long_b = format!("{}.b", "x".repeat(250));
        let (a, b) = (daemonset_name(&long_a), daemonset_name(&long_b));
        assert!(a.len() <= 63 && b.len() <= 63, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, daemonset_name(&long_a), "stable");
        let dotted = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        let name = daemonset_name(&dotted);
        assert!(!name.contains(".-") && !name.contains("--"), "{name}");
        assert!(pool_key(&long_a).len() <= 63);
        assert_eq!(pool_key("gpu"), "gpu");
    }

    #[test]
    fn the_hash_changes_with_the_spec_and_only_then() {
        let sel = selector(&[("agentpool", "gpu")]);
        let hash = |ds: &DaemonSet| {
            ds.metadata.annotations.as_ref().unwrap()[DESIRED_HASH_ANNOTATION].clone()
        };
        let a = desired_daemonset(&placement(&sel, None));
        let b = desired_daemonset(&placement(&sel, None));
        assert_eq!(hash(&a), hash(&b));
        let spec = DevicePluginSpec {
            image: Some("example.com/plugin:2".into()),
            ..DevicePluginSpec::default()
        };
        let c = desired_daemonset(&placement(&sel, Some(&spec)));
        assert_ne!(hash(&a), hash(&c));
    }
}

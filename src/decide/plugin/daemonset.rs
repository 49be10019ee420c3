//! The device-plugin DaemonSet gpupool wants for a pool: the AKS article's manifest, field by
//! field, plus placement (the nodes gpupool labelled for the pool), tolerations for the pool's
//! taints, the spec's extras, no API credentials and an owner reference.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, EnvVar, HostPathVolumeSource,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    PodTemplateSpec, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{DevicePluginSpec, MigStrategy, PluginToleration, TolerationOperator};
use crate::decide::facts::{TaintKey, format_taint_keys};
use crate::decide::names::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, DESIRED_HASH_ANNOTATION, DEVICE_PLUGIN_LABEL, MANAGED_BY,
    PLUGIN_POD_LABEL, POOL_LABEL, TOLERATED_TAINTS_ANNOTATION, VALIDATES_PLUGIN, config_map_name,
    daemonset_name, fnv1a, pool_key,
};
use crate::decide::plugin::config::{CONFIG_DIR, PluginConfig};
use crate::decide::scheduling::{base_tolerations, tolerations_for};

const CONFIG_VOLUME: &str = "plugin-config";

/// The default plugin image: the one the current AKS GPU article uses.
pub const DEFAULT_PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.0";
pub const DEFAULT_PRIORITY_CLASS: &str = "system-node-critical";
const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";

/// Everything the desired DaemonSet depends on.
#[derive(Clone, Debug)]
pub struct PluginPlacement<'a> {
    pub pool: &'a str,
    pub pool_uid: &'a str,
    pub namespace: &'a str,
    pub image: &'a str,
    pub spec: Option<&'a DevicePluginSpec>,
    /// Taint keys the plugin tolerates beyond its base tolerations. Kept once added (recorded on
    /// the DaemonSet): a startup taint that comes and goes must not restart every plugin pod twice.
    pub tolerated: &'a BTreeSet<TaintKey>,
    /// The plugin's config file (sharing, MIG), when the pool needs one.
    pub config: Option<&'a PluginConfig>,
    /// gpupool replaces the plugin pods itself (a GPU-verified rollout): the DaemonSet's
    /// update strategy is OnDelete. Else its own RollingUpdate.
    pub on_delete: bool,
}

pub fn desired_daemonset(p: &PluginPlacement) -> DaemonSet {
    let key = pool_key(p.pool);
    let selector: BTreeMap<String, String> = [
        (
            PLUGIN_POD_LABEL.0.to_string(),
            PLUGIN_POD_LABEL.1.to_string(),
        ),
        (POOL_LABEL.to_string(), key.clone()),
    ]
    .into();
    let mut pod_labels = selector.clone();
    pod_labels.insert(
        "app.kubernetes.io/name".into(),
        "nvidia-device-plugin".into(),
    );
    pod_labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    let mut ds_labels = pod_labels.clone();
    ds_labels.remove(PLUGIN_POD_LABEL.0);
    let mut ds = DaemonSet {
        metadata: ObjectMeta {
            name: Some(daemonset_name(p.pool)),
            namespace: Some(p.namespace.to_string()),
            labels: Some(ds_labels),
            owner_references: Some(vec![crate::decide::names::pool_owner(p.pool, p.pool_uid)]),
            ..ObjectMeta::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            update_strategy: Some(if p.on_delete {
                DaemonSetUpdateStrategy {
                    type_: Some("OnDelete".into()),
                    rolling_update: None,
                }
            } else {
                DaemonSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    // Never a surge pod next to the old one.
                    rolling_update: Some(RollingUpdateDaemonSet {
                        max_unavailable: Some(IntOrString::Int(1)),
                        max_surge: Some(IntOrString::Int(0)),
                    }),
                }
            }),
            template: pod_template(p, &key, pod_labels),
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    let hash = desired_hash(&ds);
    ds.metadata.annotations = Some(
        [
            (DESIRED_HASH_ANNOTATION.to_string(), hash),
            (
                TOLERATED_TAINTS_ANNOTATION.to_string(),
                format_taint_keys(p.tolerated),
            ),
        ]
        .into(),
    );
    ds
}

fn pod_template(
    p: &PluginPlacement,
    key: &str,
    labels: BTreeMap<String, String>,
) -> PodTemplateSpec {
    let annotations = [
        // The article's legacy critical add-on marker; priorityClassName does the real work.
        (
            "scheduler.alpha.kubernetes.io/critical-pod".to_string(),
            String::new(),
        ),
        // Which plugin a pod runs: a node validated with another one is validated again, and
        // not before its pod runs this one.
        (
            VALIDATES_PLUGIN.to_string(),
            plugin_identity(p.image, p.spec, p.config),
        ),
    ]
    .into_iter()
    // The config's hash: a config change (and only that) rolls the plugin.
    .chain(
        p.config
            .map(|c| (CONFIG_HASH_ANNOTATION.to_string(), c.hash.clone())),
    )
    .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec(p, key)),
    }
}

fn pod_spec(p: &PluginPlacement, key: &str) -> PodSpec {
    let spec = p.spec.cloned().unwrap_or_default();
    let mut tolerations = base_tolerations();
    tolerations.extend(tolerations_for(p.tolerated));
    for extra in spec.tolerations.iter().map(to_toleration) {
        if !tolerations.contains(&extra) {
            tolerations.push(extra);
        }
    }
    PodSpec {
        affinity: Some(node_affinity(key)),
        tolerations: Some(tolerations),
        priority_class_name: Some(
            spec.priority_class_name
                .clone()
                .unwrap_or_else(|| DEFAULT_PRIORITY_CLASS.into()),
        ),
        // The plugin talks to the kubelet over its socket only; it needs no API credentials.
        automount_service_account_token: Some(false),
        containers: vec![plugin_container(p.image, &spec, p.config)],
        volumes: Some(
            [Volume {
                name: "device-plugin".into(),
                host_path: Some(HostPathVolumeSource {
                    path: DEVICE_PLUGIN_PATH.into(),
                    // The kubelet's directory, never one created by the plugin.
                    type_: Some("Directory".into()),
                }),
                ..Volume::default()
            }]
            .into_iter()
            .chain(p.config.map(|_| Volume {
                name: CONFIG_VOLUME.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(p.pool),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }))
            .collect(),
        ),
        ..PodSpec::default()
    }
}

fn plugin_container(
    image: &str,
    spec: &DevicePluginSpec,
    config: Option<&PluginConfig>,
) -> Container {
    let mut env: Vec<EnvVar> = spec.env.iter().map(|e| e.0.clone()).collect();
    let mut mounts = vec![VolumeMount {
        name: "device-plugin".into(),
        mount_path: DEVICE_PLUGIN_PATH.into(),
        ..VolumeMount::default()
    }];
    let mut add_capabilities = None;
    if let Some(config) = config {
        env.push(env_var(
            "CONFIG_FILE",
            &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ));
        mounts.push(VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        if config.mig != MigStrategy::None {
            // What NVIDIA's own chart gives the plugin for MIG (and AKS's MIG guide asks of a
            // custom plugin DaemonSet): every MIG device monitored, and CAP_SYS_ADMIN to read
            // the MIG configuration.
            env.push(env_var("NVIDIA_MIG_MONITOR_DEVICES", "all"));
            add_capabilities = Some(vec!["SYS_ADMIN".to_string()]);
        }
    }
    Container {
        name: "nvidia-device-plugin-ctr".into(),
        image: Some(image.to_string()),
        env: (!env.is_empty()).then_some(env),
        resources: spec.resources.as_ref().map(|r| r.to_requirements()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: add_capabilities,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        // A plugin that exits (no GPU, no NVML, a MIG layout it refuses) says why on its last
        // log lines; the kubelet keeps them as the container's termination message, which
        // gpupool quotes in the node's problem (PluginPodFailing).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// What identifies the plugin a pod runs: its container (image, environment, resources) and its
/// config, not where it is scheduled or what it tolerates.
pub fn plugin_identity(
    image: &str,
    spec: Option<&DevicePluginSpec>,
    config: Option<&PluginConfig>,
) -> String {
    let container = plugin_container(image, &spec.cloned().unwrap_or_default(), config);
    let mut json = serde_json::to_vec(&container).expect("a Container serializes to JSON");
    json.extend(config.map(|c| c.hash.as_bytes()).unwrap_or_default());
    format!("{:016x}", fnv1a(&json))
}

/// Hash of the desired object (before the hash annotation is added).
fn desired_hash(ds: &DaemonSet) -> String {
    // Serializing k8s-openapi types is deterministic (fixed field order, sorted maps), and
    // cannot fail: they hold no maps with non-string keys and no failing Serialize impls.
    let json = serde_json::to_vec(ds).expect("a DaemonSet serializes to JSON");
    format!("{:016x}", fnv1a(&json))
}

/// The plugin runs exactly on the nodes gpupool labelled for this pool (see `placement`). The
/// pool's selector is not repeated here: then the template does not change when it does, and
/// a node leaves the pool when its label goes.
fn node_affinity(key: &str) -> Affinity {
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: DEVICE_PLUGIN_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec![key.to_string()]),
                    }]),
                    match_fields: None,
                }],
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
    use crate::api::{PluginEnvVar, TaintEffect, TolerationOperator};
    use crate::decide::facts::{format_taint_keys, parse_taint_keys};
    use crate::decide::names::{daemonset_name, fnv1a, pool_key};
    use k8s_openapi::api::core::v1::EnvVar;

    const NO_TAINTS: &BTreeSet<TaintKey> = &BTreeSet::new();

    fn placement<'a>(
        spec: Option<&'a DevicePluginSpec>,
        tolerated: &'a BTreeSet<TaintKey>,
    ) -> PluginPlacement<'a> {
        PluginPlacement {
            pool: "gpu",
            pool_uid: "uid-1",
            namespace: "gpu-resources",
            image: spec
                .and_then(|s| s.image.as_deref())
                .unwrap_or(DEFAULT_PLUGIN_IMAGE),
            spec,
            tolerated,
            config: None,
            on_delete: false,
        }
    }

    fn pod(ds: &DaemonSet) -> &PodSpec {
        ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    /// The AKS article's manifest (brief §1 step 3), field by field.
    #[test]
    fn keeps_every_field_of_the_seed_manifest() {
        let ds = desired_daemonset(&placement(None, NO_TAINTS));
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
        let has = |key: &str, effect: Option<&str>| {
            tols.iter().any(|t| {
                t.key.as_deref() == Some(key)
                    && t.operator.as_deref() == Some("Exists")
                    && t.effect.as_deref() == effect
            })
        };
        assert!(has("CriticalAddonsOnly", None) && has("nvidia.com/gpu", Some("NoSchedule")));
        let c = &pod.containers[0];
        assert_eq!(
            (c.name.as_str(), c.image.as_deref()),
            ("nvidia-device-plugin-ctr", Some(DEFAULT_PLUGIN_IMAGE))
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError"),
            "the plugin's last log lines say why it exited"
        );
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
        assert_eq!(
            (
                vol.name.as_str(),
                vol.host_path.as_ref().unwrap().path.as_str()
            ),
            ("device-plugin", DEVICE_PLUGIN_PATH)
        );
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
    fn the_plugin_has_no_credentials_and_mounts_only_the_kubelets_directory() {
        let ds = desired_daemonset(&placement(None, NO_TAINTS));
        let pod = pod(&ds);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(
            pod.volumes.as_ref().unwrap()[0]
                .host_path
                .as_ref()
                .unwrap()
                .type_
                .as_deref(),
            Some("Directory")
        );
    }

    #[test]
    fn placement_is_the_pools_node_label_only() {
        let ds = desired_daemonset(&placement(None, NO_TAINTS));
        let terms = crate::decide::scheduling::required_node_terms(pod(&ds)).unwrap();
        assert_eq!(terms.len(), 1);
        let expr = terms[0].match_expressions.as_ref().unwrap();
        assert_eq!(expr.len(), 1);
        assert_eq!(
            (expr[0].key.as_str(), expr[0].operator.as_str()),
            (DEVICE_PLUGIN_LABEL, "In")
        );
        assert_eq!(expr[0].values, Some(vec!["gpu".to_string()]));
        assert!(terms[0].match_fields.is_none());
    }

    #[test]
    fn spec_extras_and_taint_tolerations_are_added() {
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
            env: vec![PluginEnvVar(EnvVar {
                name: "DEVICE_LIST_STRATEGY".into(),
                value: Some("envvar".into()),
                value_from: None,
            })],
        };
        let tolerated: BTreeSet<TaintKey> = [("sku".to_string(), "NoSchedule".to_string())].into();
        let ds = desired_daemonset(&placement(Some(&spec), &tolerated));
        let pod = pod(&ds);
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("gpu-critical"));
        assert_eq!(
            pod.containers[0].env.as_ref().unwrap()[0].name,
            "DEVICE_LIST_STRATEGY"
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
        assert_eq!(
            ds.metadata.annotations.as_ref().unwrap()[TOLERATED_TAINTS_ANNOTATION],
            "sku:NoSchedule"
        );
    }

    #[test]
    fn tolerated_taint_keys_round_trip_through_the_annotation() {
        let keys: BTreeSet<TaintKey> = [
            ("sku".to_string(), "NoSchedule".to_string()),
            (
                "kubernetes.azure.com/scalesetpriority".to_string(),
                "NoSchedule".to_string(),
            ),
        ]
        .into();
        assert_eq!(parse_taint_keys(&format_taint_keys(&keys)), keys);
        assert!(parse_taint_keys("").is_empty());
        assert!(parse_taint_keys("garbage,:x,y:").is_empty());
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
        let hash = |ds: &DaemonSet| {
            ds.metadata.annotations.as_ref().unwrap()[DESIRED_HASH_ANNOTATION].clone()
        };
        let a = desired_daemonset(&placement(None, NO_TAINTS));
        let b = desired_daemonset(&placement(None, NO_TAINTS));
        assert_eq!(hash(&a), hash(&b));
        let spec = DevicePluginSpec {
            image: Some("nvcr.io/nvidia/k8s-device-plugin:v0.19.0".into()),
            ..DevicePluginSpec::default()
        };
        let c = desired_daemonset(&placement(Some(&spec), NO_TAINTS));
        assert_ne!(hash(&a), hash(&c));
    }
}

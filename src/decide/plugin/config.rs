//! The NVIDIA device plugin's config file for a pool (`spec.sharing`, `spec.mig`): rendered into
//! a ConfigMap owned by the pool, next to its DaemonSet, mounted into the plugin and passed with
//! `CONFIG_FILE`. The DaemonSet's pod template carries the config's hash, so a config change
//! rolls the plugin, and only a config change does. Format: NVIDIA/k8s-device-plugin
//! `api/config/v1` (version v1, `flags.migStrategy`, `sharing.timeSlicing`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::api::{GpuPoolSpec, MigStrategy};
use crate::decide::facts::{ConfigMapFacts, ObjectId};
use crate::decide::names::{
    CONFIG_COMPONENT, CONFIG_KEY, DESIRED_HASH_ANNOTATION, GPU_RESOURCE, MANAGED_BY, POOL_LABEL,
    config_map_name, fnv1a, pool_key,
};

/// Where the plugin finds the ConfigMap's file.
pub const CONFIG_DIR: &str = "/etc/gpupool/device-plugin";

/// A pool's plugin config, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    pub text: String,
    pub hash: String,
    pub mig: MigStrategy,
}

/// The config the pool's plugin needs, or None when it needs none (no sharing, no MIG).
pub fn plugin_config(spec: &GpuPoolSpec) -> Option<PluginConfig> {
    let mig = spec.mig.as_ref().map_or(MigStrategy::None, |m| m.strategy);
    if spec.sharing.is_none() && mig == MigStrategy::None {
        return None;
    }
    let mut config = json!({
        "version": "v1",
        "flags": {"migStrategy": mig.as_str()},
    });
    if let Some(sharing) = &spec.sharing {
        let ts = &sharing.time_slicing;
        config["sharing"] = json!({"timeSlicing": {
            "renameByDefault": ts.rename_by_default,
            "failRequestsGreaterThanOne": ts.fail_requests_greater_than_one,
            "resources": [{"name": GPU_RESOURCE, "replicas": ts.replicas}],
        }});
    }
    let text = yaml_serde::to_string(&config).expect("a JSON value serializes to YAML");
    Some(PluginConfig {
        hash: format!("{:016x}", fnv1a(text.as_bytes())),
        text,
        mig,
    })
}

pub fn desired_config_map(
    pool: &str,
    pool_uid: &str,
    namespace: &str,
    config: &PluginConfig,
) -> ConfigMap {
    let labels: BTreeMap<String, String> = [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (
            CONFIG_COMPONENT.0.to_string(),
            CONFIG_COMPONENT.1.to_string(),
        ),
        (POOL_LABEL.to_string(), pool_key(pool)),
    ]
    .into();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(pool)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some([(DESIRED_HASH_ANNOTATION.to_string(), config.hash.clone())].into()),
            owner_references: Some(vec![crate::decide::names::pool_owner(pool, pool_uid)]),
            ..ObjectMeta::default()
        },
        data: Some([(CONFIG_KEY.to_string(), config.text.clone())].into()),
        ..ConfigMap::default()
    }
}

/// What to do to the pool's plugin ConfigMap.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigMapAction {
    Nothing,
    Apply(Box<ConfigMap>),
    Delete(ObjectId),
}

/// Apply when missing, stale or edited; delete when the pool needs no config any more.
pub fn config_map_action(
    desired: Option<ConfigMap>,
    live: Option<&ConfigMapFacts>,
) -> ConfigMapAction {
    let hash = |cm: &ConfigMap| {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
            .cloned()
    };
    match (desired, live) {
        (Some(cm), Some(live))
            if hash(&cm).is_some()
                && live.desired_hash == hash(&cm)
                && live.content_hash == hash(&cm) =>
        {
            ConfigMapAction::Nothing
        }
        (Some(cm), _) => ConfigMapAction::Apply(Box::new(cm)),
        (None, Some(live)) => ConfigMapAction::Delete(live.id.clone()),
        (None, None) => ConfigMapAction::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AksMigProfile, Mig, Sharing, TimeSlicing};
    use crate::decide::facts::ConfigMapFacts;

    fn spec() -> GpuPoolSpec {
        GpuPoolSpec::default()
    }

    #[test]
    fn time_slicing_renders_the_plugins_own_format() {
        assert_eq!(
            plugin_config(&spec()),
            None,
            "no sharing, no MIG: no config"
        );
        let mut s = spec();
        s.sharing = Some(Sharing {
            time_slicing: TimeSlicing {
                replicas: 4,
                rename_by_default: true,
                fail_requests_greater_than_one: true,
            },
        });
        let config = plugin_config(&s).unwrap();
        let parsed: serde_json::Value = yaml_serde::from_str(&config.text).unwrap();
        assert_eq!(
            parsed,
            json!({
                "version": "v1",
                "flags": {"migStrategy": "none"},
                "sharing": {"timeSlicing": {
                    "renameByDefault": true,
                    "failRequestsGreaterThanOne": true,
                    "resources": [{"name": "nvidia.com/gpu", "replicas": 4}],
                }},
            })
        );
        s.mig = Some(Mig {
            strategy: MigStrategy::Single,
            profile: Some(AksMigProfile::MIG1g),
        });
        let with_mig = plugin_config(&s).unwrap();
        assert_ne!(with_mig.hash, config.hash);
        assert!(
            with_mig.text.contains("migStrategy: single"),
            "{}",
            with_mig.text
        );
    }

    #[test]
    fn the_config_map_is_written_only_when_missing_stale_or_edited_and_removed_when_unneeded() {
        let mut s = spec();
        s.mig = Some(Mig {
            strategy: MigStrategy::Mixed,
            profile: None,
        });
        let config = plugin_config(&s).unwrap();
        let desired = desired_config_map("gpu", "uid", "gpu-resources", &config);
        let live = ConfigMapFacts::from_config_map(&desired);
        assert_eq!(
            config_map_action(Some(desired.clone()), Some(&live)),
            ConfigMapAction::Nothing
        );
        let mut edited = desired.clone();
        edited
            .data
            .as_mut()
            .unwrap()
            .insert(CONFIG_KEY.into(), "version: v1\n".into());
        let edited = ConfigMapFacts::from_config_map(&edited);
        assert!(matches!(
            config_map_action(Some(desired.clone()), Some(&edited)),
            ConfigMapAction::Apply(_)
        ));
        assert!(matches!(
            config_map_action(Some(desired), None),
            ConfigMapAction::Apply(_)
        ));
        assert_eq!(
            config_map_action(None, Some(&live)),
            ConfigMapAction::Delete(live.id.clone())
        );
    }
}

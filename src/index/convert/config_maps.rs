//! ConfigMap → `ConfigMapFacts`.

use k8s_openapi::api::core::v1::ConfigMap;

use crate::decide::facts::{ConfigMapFacts, ObjectId};
use crate::decide::names::{CONFIG_KEY, DESIRED_HASH_ANNOTATION, POOL_LABEL, hash_hex};

impl ConfigMapFacts {
    pub fn from_config_map(cm: &ConfigMap) -> ConfigMapFacts {
        let meta = &cm.metadata;
        ConfigMapFacts {
            id: ObjectId {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            },
            pool_key: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(POOL_LABEL))
                .cloned(),
            desired_hash: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_HASH_ANNOTATION))
                .cloned(),
            content_hash: cm
                .data
                .as_ref()
                .and_then(|d| d.get(CONFIG_KEY))
                .map(|text| hash_hex(text.as_bytes())),
        }
    }
}

//! The functional core: pure decisions over plain data, no API server. A reconcile is
//! `plan` (what to write, from what was observed) and `report` (the status, from what was
//! observed, planned and applied); the shell in `controller` observes and applies.

pub mod action;
pub mod capacity;
pub mod claims;
pub mod daemonset;
pub mod gate;
pub mod health;
pub mod image;
pub mod model;
pub mod nodes;
pub mod placement;
pub mod plan;
pub mod plugin_config;
pub mod pods;
#[cfg(test)]
mod proptests;
pub mod readiness;
pub mod scheduling;
pub mod selector;
pub mod sizes;
pub mod status;
pub mod validation;

pub use plan::{Cleanup, Observed, Plan, plan, plan_cleanup};
pub use status::{StatusOutcome, report};

/// Operator settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub plugin_namespace: String,
    pub default_plugin_image: String,
    pub gpu_grace_period: std::time::Duration,
    /// How long the plugin DaemonSet may take to become ready before it counts as stuck.
    pub rollout_deadline: std::time::Duration,
    /// Image repositories plugin images may come from (`registry/path`, no tag or digest).
    pub allowed_plugin_images: Vec<String>,
    /// How long a write the API server refused is not tried again (unless the spec changes).
    pub stall_retry: std::time::Duration,
    /// Image repositories validation images may come from.
    pub allowed_validation_images: Vec<String>,
    /// The first wait before a failed validation is tried again (it doubles, up to 10 min).
    pub validation_retry: std::time::Duration,
}

/// What the validation image may be by default: NVIDIA's CUDA samples and the AKS article's.
pub const DEFAULT_ALLOWED_VALIDATION_IMAGES: [&str; 2] = [
    "nvcr.io/nvidia/k8s/cuda-sample",
    "mcr.microsoft.com/azuredocs/samples-tf-mnist-demo",
];

/// What the device plugin image may be by default: NVIDIA's registry and the AKS mirror.
pub const DEFAULT_ALLOWED_PLUGIN_IMAGES: [&str; 2] = [
    "nvcr.io/nvidia/k8s-device-plugin",
    "mcr.microsoft.com/oss/nvidia/k8s-device-plugin",
];

impl Settings {
    /// Whether the image's repository (the reference without `:tag` and `@digest`) is allowed.
    pub fn image_allowed(&self, image: &str) -> bool {
        let repository = image_repository(image);
        self.allowed_plugin_images
            .iter()
            .any(|allowed| allowed == repository)
    }
}

/// `registry:port/path/name:tag@sha256:…` → `registry:port/path/name`.
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(r, _)| r);
    match without_digest.rsplit_once(':') {
        // A colon after the last slash starts the tag; before it, it is a registry port.
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => without_digest,
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
            ready_since: None,
            gpu_capacity: None,
            gpu_allocatable: None,
            other_gpu_resources: Default::default(),
            conditions: vec![],
            created: None,
            deleting: false,
            boot_id: "boot-0".into(),
            validation: None,
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
            uid: format!("uid-{name}"),
            node_image: crate::api::NodeImage::Standard,
            serving: true,
            created: Some(k8s_openapi::jiff::Timestamp::from_second(created_secs).unwrap()),
            selector: selector(labels),
        }
    }

    pub fn settings() -> crate::decide::Settings {
        crate::decide::Settings {
            plugin_namespace: "gpu-resources".into(),
            default_plugin_image: crate::decide::daemonset::DEFAULT_PLUGIN_IMAGE.into(),
            gpu_grace_period: std::time::Duration::from_secs(600),
            rollout_deadline: std::time::Duration::from_secs(300),
            allowed_plugin_images: crate::decide::DEFAULT_ALLOWED_PLUGIN_IMAGES
                .map(String::from)
                .to_vec(),
            stall_retry: std::time::Duration::from_secs(60),
            allowed_validation_images: crate::decide::DEFAULT_ALLOWED_VALIDATION_IMAGES
                .map(String::from)
                .to_vec(),
            validation_retry: std::time::Duration::from_secs(30),
        }
    }
}

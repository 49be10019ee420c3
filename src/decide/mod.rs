//! The functional core: pure decisions over plain data, no API server. A reconcile is `plan`
//! (what to write, from what was observed) and `report` (the status, from what was observed,
//! planned and applied); the shell in `controller` observes and applies.
//!
//! The folders, each depending only on those listed before it:
//! - `names`, `text`, `settings`: the names gpupool reads and writes, message wording, options;
//! - `facts`: what gpupool knows (nodes, pods, DaemonSets, ConfigMaps, pools), and `Observed`;
//! - `moves`: guarded node label writes and the `maxUnavailable` budget;
//! - `scheduling`: selectors, taints and tolerations (where a pod may run);
//! - `capacity`: what each node should have (VM sizes, sharing, MIG) and GPU health;
//! - `dra`: which nodes NVIDIA's GPU DRA driver serves, and moving nodes between it and the plugin;
//! - `plugin`: the plugin mode, which pool serves which node, the DaemonSet and its config;
//! - `readiness`: each node's GPU readiness, the readiness gate and validation;
//! - `plan`: `Plan` = the plugin plan + the readiness plan, and the cleanup of a deleted pool;
//! - `applied`, `status`: what the shell wrote, and the status and events reported from it.

pub mod applied;
pub mod capacity;
pub mod dra;
pub mod facts;
pub mod moves;
pub mod names;
pub mod plan;
pub mod plugin;
#[cfg(test)]
mod proptests;
pub mod readiness;
#[cfg(test)]
mod scale;
pub mod scheduling;
pub mod settings;
pub mod status;
pub mod text;

pub use facts::Observed;
pub use plan::{Cleanup, Plan, plan, plan_cleanup};
pub use settings::{
    DEFAULT_ALLOWED_PLUGIN_IMAGES, DEFAULT_ALLOWED_VALIDATION_IMAGES, Settings, image_repository,
};
pub use status::{StatusOutcome, report, report_unreadable};

#[cfg(test)]
pub(crate) mod testing {
    //! Builders for plain test data.
    use std::collections::BTreeMap;

    use crate::api::{PoolSelector, SelectorOperator, SelectorRequirement};
    use crate::decide::facts::{NodeFacts, NodeReadiness, NodeTaint, PoolRef};
    use crate::decide::facts::{ObjectId, PodFacts, PodPhase, PodRole};

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
            gate_key: None,
        }
    }

    /// A running, ready plugin pod of `pool_key` on `node`.
    pub fn plugin_pod(namespace: &str, name: &str, node: Option<&str>, pool_key: &str) -> PodFacts {
        PodFacts {
            id: ObjectId {
                namespace: namespace.into(),
                name: name.into(),
            },
            uid: name.into(),
            role: PodRole::Plugin,
            node: node.map(Into::into),
            pool_key: Some(pool_key.into()),
            deleting: false,
            phase: PodPhase::Running,
            ready: true,
            created: None,
            plugin: None,
            validates: None,
            started: None,
            finished: None,
            waiting_for_gpu: false,
            container: Default::default(),
        }
    }

    /// Labels from pairs.
    pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A selector requirement.
    pub fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// What a reconcile of `pool` observes in an empty cluster.
    pub fn observed(pool: std::sync::Arc<crate::api::GpuPool>) -> crate::decide::Observed {
        crate::decide::Observed {
            pool_uids: pool.metadata.uid.iter().cloned().collect(),
            pool,
            nodes: vec![],
            strays: vec![],
            other_pools: vec![],
            plugin_daemonsets: vec![],
            pods: vec![],
            dra: Default::default(),
            dra_api: true,
            device_classes: Vec::new(),
            rejection: None,
            problem_clocks: None,
            plugin_configs: vec![],
            gpu_busy: Default::default(),
            now: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            pods_by_node: Default::default(),
        }
    }

    pub fn settings() -> crate::decide::Settings {
        crate::decide::Settings {
            plugin_namespace: "gpu-resources".into(),
            default_plugin_image: crate::decide::plugin::daemonset::DEFAULT_PLUGIN_IMAGE.into(),
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

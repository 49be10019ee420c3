//! The functional core: pure decisions over plain data, no API server. A reconcile is
//! `plan` (what to write, from what was observed) and `report` (the status, from what was
//! observed, planned and applied); the shell in `controller` observes and applies.

pub mod action;
pub mod claims;
pub mod daemonset;
pub mod image;
pub mod model;
pub mod nodes;
pub mod plan;
#[cfg(test)]
mod proptests;
pub mod scheduling;
pub mod selector;
pub mod status;

pub use plan::{Observed, Plan, plan};
pub use status::{StatusOutcome, report};

/// Operator settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub plugin_namespace: String,
    pub default_plugin_image: String,
    pub gpu_grace_period: std::time::Duration,
    /// How long the plugin DaemonSet may take to become ready before it counts as stuck.
    pub rollout_deadline: std::time::Duration,
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
            uid: format!("uid-{name}"),
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
        }
    }
}

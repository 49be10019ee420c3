//! Other pools, as far as node ownership is concerned (see `plugin::claims`).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{GpuPool, NodeImage, PluginMode, PoolSelector};

/// Another pool, as far as node ownership is concerned.
#[derive(Clone, Debug)]
pub struct PoolRef {
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    pub selector: PoolSelector,
    pub node_image: NodeImage,
    /// Its plugin runs: its status says Managed and its DaemonSet exists (the API server
    /// accepted it and it is not being deleted).
    pub serving: bool,
    /// Its readiness gate's taint key, if it gates its nodes.
    pub gate_key: Option<String>,
}

impl PoolRef {
    /// The pool as a rival; `has_daemonset` says whether its own DaemonSet exists.
    pub fn of(pool: &GpuPool, has_daemonset: bool) -> PoolRef {
        let managed = pool
            .status
            .as_ref()
            .and_then(|s| s.device_plugin.as_ref())
            .is_some_and(|d| d.mode == PluginMode::Managed);
        PoolRef {
            name: pool.name_any(),
            uid: pool.metadata.uid.clone().unwrap_or_default(),
            created: pool.creation_timestamp().map(|t| t.0),
            selector: pool.spec.node_selector.clone(),
            node_image: pool.spec.node_image,
            serving: managed && has_daemonset,
            gate_key: pool
                .spec
                .readiness_gate
                .as_ref()
                .map(|g| g.taint_key.clone()),
        }
    }
}

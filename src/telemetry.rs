//! Prometheus metrics, with the controller-runtime names dashboards already know, plus per-pool
//! gauges. Label values are bounded: the controller name, a result, and pool names (a deleted
//! pool's series are removed).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{ConditionType, GpuPoolStatus, PluginMode};

pub const CONTROLLER: &str = "gpupool";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

/// How a per-pool gauge is read off the pool's status.
type ReadStatus = fn(&GpuPoolStatus) -> i64;
/// A per-pool gauge: its name, its help, and how it is read.
type PoolGaugeSpec = (&'static str, &'static str, ReadStatus);

const POOL_GAUGES: &[PoolGaugeSpec] = &[
    ("gpupool_pool_nodes", "Nodes selected by the pool", |s| {
        s.nodes.into()
    }),
    (
        "gpupool_pool_nodes_with_gpus",
        "Nodes of the pool with schedulable GPUs",
        |s| s.nodes_with_gpus.into(),
    ),
    (
        "gpupool_pool_gpus_capacity",
        "nvidia.com/gpu capacity over the pool's nodes",
        |s| s.gpus_capacity,
    ),
    (
        "gpupool_pool_gpus_allocatable",
        "nvidia.com/gpu allocatable over the pool's nodes",
        |s| s.gpus_allocatable,
    ),
    (
        "gpupool_pool_ready",
        "1 when the pool's Ready condition is True",
        |s| s.is_true(ConditionType::Ready).into(),
    ),
    (
        "gpupool_pool_problem_nodes",
        "Nodes of the pool with a problem (status.problemNodesTotal)",
        |s| s.problem_nodes_total.into(),
    ),
    (
        "gpupool_pool_gated_nodes",
        "Nodes of the pool carrying its readiness gate taint (kept out of GPU work)",
        |s| {
            s.readiness_gate
                .as_ref()
                .map_or(0, |g| g.gated_nodes.into())
        },
    ),
    (
        "gpupool_pool_validated_nodes",
        "Nodes of the pool whose GPU validation passed on their current boot and plugin",
        |s| s.validation.as_ref().map_or(0, |v| v.validated.into()),
    ),
    (
        "gpupool_pool_validation_pending_nodes",
        "Nodes of the pool not validated yet (running, queued, or waiting for their GPUs)",
        |s| s.validation.as_ref().map_or(0, |v| v.pending.into()),
    ),
    (
        "gpupool_pool_validation_waiting_for_gpu_nodes",
        "Nodes of the pool whose validation waits for a free GPU",
        |s| {
            s.validation
                .as_ref()
                .map_or(0, |v| v.waiting_for_gpu.into())
        },
    ),
    (
        "gpupool_pool_validation_failed_nodes",
        "Nodes of the pool whose last GPU validation failed",
        |s| s.validation.as_ref().map_or(0, |v| v.failed.into()),
    ),
    (
        "gpupool_pool_plugin_managed",
        "1 when gpupool runs the device plugin for the pool",
        |s| {
            s.device_plugin
                .as_ref()
                .is_some_and(|d| d.mode == PluginMode::Managed)
                .into()
        },
    ),
];

pub struct Metrics {
    registry: Registry,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_time: Family<ControllerLabels, Histogram>,
    pool_gauges: Vec<(Family<PoolLabels, Gauge>, ReadStatus)>,
    node_gpu_wait: Histogram,
    relists: Family<KindLabels, Counter>,
    validations: Family<PoolResultLabels, Counter>,
    gate_writes: Family<PoolActionLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolResultLabels {
    pool: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolActionLabels {
    pool: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ControllerLabels, Counter>::default();
        let reconcile_time = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        // Registered without a prefix so the names are exactly controller-runtime's.
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            reconcile_time.clone(),
        );
        let pool_gauges = POOL_GAUGES
            .iter()
            .map(|(name, help, read)| {
                let family = Family::<PoolLabels, Gauge>::default();
                registry.register(*name, *help, family.clone());
                (family, *read)
            })
            .collect();
        let node_gpu_wait = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "gpupool_node_gpu_wait_seconds",
            "Time from a node joining a pool without GPUs to its nvidia.com/gpu being schedulable",
            node_gpu_wait.clone(),
        );
        let relists = Family::<KindLabels, Counter>::default();
        registry.register(
            "gpupool_watch_relists",
            "Complete re-lists of a watched kind after its watch expired (410 Gone)",
            relists.clone(),
        );
        let validations = Family::<PoolResultLabels, Counter>::default();
        registry.register(
            "gpupool_validations",
            "GPU validations finished, by pool and result (Passed, Failed)",
            validations.clone(),
        );
        let gate_writes = Family::<PoolActionLabels, Counter>::default();
        registry.register(
            "gpupool_gate_taint_writes",
            "Readiness gate taints written, by pool and action (removed: a node opened for GPU work; added: closed)",
            gate_writes.clone(),
        );
        Metrics {
            registry,
            relists,
            validations,
            gate_writes,
            reconcile_total,
            reconcile_errors,
            reconcile_time,
            pool_gauges,
            node_gpu_wait,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, ok: bool, took: Duration) {
        let controller = CONTROLLER.to_string();
        let result = if ok { "success" } else { "error" };
        self.reconcile_total
            .get_or_create(&ResultLabels {
                controller: controller.clone(),
                result: result.into(),
            })
            .inc();
        if !ok {
            self.reconcile_errors
                .get_or_create(&ControllerLabels {
                    controller: controller.clone(),
                })
                .inc();
        }
        self.reconcile_time
            .get_or_create(&ControllerLabels { controller })
            .observe(took.as_secs_f64());
    }

    pub fn set_pool(&self, pool: &str, status: &GpuPoolStatus) {
        let labels = PoolLabels { pool: pool.into() };
        for (family, read) in &self.pool_gauges {
            family.get_or_create(&labels).set(read(status));
        }
    }

    pub fn forget_pool(&self, pool: &str) {
        let labels = PoolLabels { pool: pool.into() };
        for (family, _) in &self.pool_gauges {
            family.remove(&labels);
        }
        for result in ["Passed", "Failed"] {
            self.validations.remove(&PoolResultLabels {
                pool: pool.into(),
                result: result.into(),
            });
        }
        for action in ["added", "removed"] {
            self.gate_writes.remove(&PoolActionLabels {
                pool: pool.into(),
                action: action.into(),
            });
        }
    }

    /// A validation result recorded on a node.
    pub fn validated(&self, pool: &str, passed: bool) {
        let result = if passed { "Passed" } else { "Failed" };
        self.validations
            .get_or_create(&PoolResultLabels {
                pool: pool.into(),
                result: result.into(),
            })
            .inc();
    }

    /// A gate taint written to a node.
    pub fn gate_written(&self, pool: &str, added: bool) {
        let action = if added { "added" } else { "removed" };
        self.gate_writes
            .get_or_create(&PoolActionLabels {
                pool: pool.into(),
                action: action.into(),
            })
            .inc();
    }

    pub fn relisted(&self, kind: &str) {
        self.relists
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn node_got_gpus(&self, waited: Duration) {
        self.node_gpu_wait.observe(waited.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Condition, ConditionStatus, DevicePluginStatus, Reason};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn names_match_controller_runtime_and_deleted_pools_disappear() {
        let m = Metrics::default();
        m.reconciled(true, Duration::from_millis(3));
        m.reconciled(false, Duration::from_millis(3));
        let status = GpuPoolStatus {
            nodes: 3,
            gpus_allocatable: 12,
            device_plugin: Some(DevicePluginStatus {
                mode: PluginMode::Managed,
                ..Default::default()
            }),
            conditions: vec![Condition {
                type_: ConditionType::Ready.to_string(),
                status: ConditionStatus::True.to_string(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                reason: Reason::Ready.to_string(),
                message: String::new(),
            }],
            ..Default::default()
        };
        m.set_pool("gpu", &status);
        let text = m.encode();
        for line in [
            r#"controller_runtime_reconcile_total{controller="gpupool",result="success"} 1"#,
            r#"controller_runtime_reconcile_total{controller="gpupool",result="error"} 1"#,
            r#"controller_runtime_reconcile_errors_total{controller="gpupool"} 1"#,
            r#"controller_runtime_reconcile_time_seconds_count{controller="gpupool"} 2"#,
            r#"gpupool_pool_nodes{pool="gpu"} 3"#,
            r#"gpupool_pool_gpus_allocatable{pool="gpu"} 12"#,
            r#"gpupool_pool_ready{pool="gpu"} 1"#,
            r#"gpupool_pool_plugin_managed{pool="gpu"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        m.forget_pool("gpu");
        assert!(!m.encode().contains(r#"pool="gpu""#));
    }
}

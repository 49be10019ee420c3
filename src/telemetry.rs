//! Prometheus metrics, with the controller-runtime names dashboards already know, plus per-pool
//! gauges, whether this replica leads, and the process's own `process_*` figures. Label values
//! are bounded: the controller name, a result, and pool names (a deleted pool's series are
//! removed).

use std::time::Duration;

use procfs::process::Stat;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{ConditionType, GpuPoolStatus, PluginMode, RolloutState};

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
    (
        "gpupool_pool_plugin_ready",
        "1 when the pool's DevicePluginReady condition is True",
        |s| s.is_true(ConditionType::DevicePluginReady).into(),
    ),
    (
        "gpupool_pool_plugin_pods_desired",
        "Nodes that should run the pool's plugin pod (status.devicePlugin.desired)",
        |s| s.device_plugin.as_ref().map_or(0, |d| d.desired.into()),
    ),
    (
        "gpupool_pool_plugin_pods_ready",
        "Nodes whose plugin pod is ready (status.devicePlugin.ready)",
        |s| s.device_plugin.as_ref().map_or(0, |d| d.ready.into()),
    ),
    (
        "gpupool_pool_plugin_pods_updated",
        "Nodes running the current plugin pod template (status.devicePlugin.updated)",
        |s| s.device_plugin.as_ref().map_or(0, |d| d.updated.into()),
    ),
    (
        "gpupool_pool_plugin_rollout_halted",
        "1 when the pool's device plugin rollout halted (a replaced node did not serve its GPUs in time) or was rolled back",
        |s| {
            s.device_plugin
                .as_ref()
                .and_then(|d| d.rollout.as_ref())
                .is_some_and(|r| matches!(r.state, RolloutState::Halted | RolloutState::RolledBack))
                .into()
        },
    ),
    (
        "gpupool_pool_plugin_rollout_nodes_left",
        "Nodes of the pool still running another device plugin than the rollout's target",
        |s| {
            s.device_plugin
                .as_ref()
                .and_then(|d| d.rollout.as_ref())
                .map_or(0, |r| r.left.into())
        },
    ),
    // Stalled is gpupool's own verdict that waiting will not help (an admin must act): alerting
    // on it pages for what the status calls stuck, not for a rollout or a node still booting.
    (
        "gpupool_pool_stalled",
        "1 when the pool's Stalled condition is True (not Ready and not making progress)",
        |s| s.is_true(ConditionType::Stalled).into(),
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
    leader: Gauge,
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

/// controller-runtime's reconcile metrics, registered without a prefix so the names are exactly
/// controller-runtime's.
type ReconcileFamilies = (
    Family<ResultLabels, Counter>,
    Family<ControllerLabels, Counter>,
    Family<ControllerLabels, Histogram>,
);

fn reconcile_metrics(registry: &mut Registry) -> ReconcileFamilies {
    let total = Family::<ResultLabels, Counter>::default();
    let errors = Family::<ControllerLabels, Counter>::default();
    let time = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.001, 2.0, 16))
    });
    registry.register(
        "controller_runtime_reconcile",
        "Total number of reconciliations per controller",
        total.clone(),
    );
    registry.register(
        "controller_runtime_reconcile_errors",
        "Total number of reconciliation errors per controller",
        errors.clone(),
    );
    registry.register(
        "controller_runtime_reconcile_time_seconds",
        "Length of time per reconciliation per controller",
        time.clone(),
    );
    // As controller-runtime does: the counters exist at 0 from the start, so rate() and the
    // alerts on errors see "no errors" instead of no series until the first one.
    for result in ["success", "error"] {
        let _ = total.get_or_create(&ResultLabels {
            controller: CONTROLLER.into(),
            result: result.into(),
        });
    }
    let _ = errors.get_or_create(&ControllerLabels {
        controller: CONTROLLER.into(),
    });
    (total, errors, time)
}

/// Registers `metric` under `name` and hands it back.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let (reconcile_total, reconcile_errors, reconcile_time) = reconcile_metrics(&mut registry);
        let pool_gauges = POOL_GAUGES
            .iter()
            .map(|(name, help, read)| {
                let family = Family::<PoolLabels, Gauge>::default();
                registry.register(*name, *help, family.clone());
                (family, *read)
            })
            .collect();
        let r = &mut registry;
        let node_gpu_wait = registered(
            r,
            "gpupool_node_gpu_wait_seconds",
            "Time from a node joining a pool without GPUs to its nvidia.com/gpu being schedulable",
            Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        );
        let relists = registered(
            r,
            "gpupool_watch_relists",
            "Complete re-lists of a watched kind after its watch expired (410 Gone)",
            Family::<KindLabels, Counter>::default(),
        );
        let validations = registered(
            r,
            "gpupool_validations",
            "GPU validations finished, by pool and result (Passed, Failed)",
            Family::<PoolResultLabels, Counter>::default(),
        );
        let gate_writes = registered(
            r,
            "gpupool_gate_taint_writes",
            "Readiness gate taints written, by pool and action (removed: a node opened for GPU work; added: closed)",
            Family::<PoolActionLabels, Counter>::default(),
        );
        let leader = registered(
            r,
            "gpupool_leader",
            "1 while this replica leads (holds the leader Lease, or runs without leader election), else 0",
            Gauge::default(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            leader,
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

    /// A watch of `kind` delivered a complete list: its first (the series starts at 0, so a
    /// dashboard sees every watched kind), or a re-list after its watch expired (counted).
    pub fn watch_listed(&self, kind: &str, relist: bool) {
        let counter = self
            .relists
            .get_or_create(&KindLabels { kind: kind.into() });
        if relist {
            counter.inc();
        }
    }

    pub fn node_got_gpus(&self, waited: Duration) {
        self.node_gpu_wait.observe(waited.as_secs_f64());
    }

    /// Whether this replica leads now: it reconciles and writes.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(leading.into());
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

/// The operator process's memory, CPU time and start time, read from `/proc` at each scrape under
/// the names every Prometheus client library uses (`process_*`), so the usual dashboards find them.
#[derive(Debug)]
struct ProcessCollector;

/// One reading of the process's figures.
#[derive(Debug, Clone, PartialEq)]
struct ProcessSample {
    resident_memory_bytes: u64,
    cpu_seconds: f64,
    start_time_seconds: f64,
}

impl ProcessSample {
    fn read() -> Option<ProcessSample> {
        let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
        let boot_time = procfs::boot_time_secs().ok()?;
        Some(ProcessSample::of(
            &stat,
            boot_time,
            procfs::ticks_per_second(),
            procfs::page_size(),
        ))
    }

    /// From `/proc/self/stat` (utime, stime and starttime in clock ticks, rss in pages) and the
    /// boot time in Unix seconds.
    fn of(stat: &Stat, boot_time: u64, ticks_per_second: u64, page_size: u64) -> ProcessSample {
        let ticks = ticks_per_second.max(1) as f64;
        ProcessSample {
            resident_memory_bytes: stat.rss.saturating_mul(page_size),
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            start_time_seconds: boot_time as f64 + stat.starttime as f64 / ticks,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Without /proc (not Linux) the process series are left out; the rest is still served.
        let Some(sample) = ProcessSample::read() else {
            return Ok(());
        };
        let memory = ConstGauge::new(sample.resident_memory_bytes);
        memory.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            memory.metric_type(),
        )?)?;
        // A counter: the text format appends _total (process_cpu_seconds_total).
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let start = ConstGauge::new(sample.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
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

    fn condition(type_: ConditionType, status: ConditionStatus) -> Condition {
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            reason: String::new(),
            message: String::new(),
        }
    }

    /// The value of one sample line, e.g. `gpupool_pool_stalled{pool="a"}`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn stalled_and_plugin_rollout_gauges_follow_the_status() {
        let m = Metrics::default();
        let stuck = GpuPoolStatus {
            device_plugin: Some(DevicePluginStatus {
                mode: PluginMode::Managed,
                desired: 4,
                ready: 1,
                updated: 3,
                ..Default::default()
            }),
            conditions: vec![
                condition(ConditionType::Ready, ConditionStatus::False),
                condition(ConditionType::DevicePluginReady, ConditionStatus::False),
                condition(ConditionType::Stalled, ConditionStatus::True),
            ],
            ..Default::default()
        };
        m.set_pool("stuck", &stuck);
        let rolled_out = GpuPoolStatus {
            device_plugin: Some(DevicePluginStatus {
                mode: PluginMode::Managed,
                desired: 2,
                ready: 2,
                updated: 2,
                ..Default::default()
            }),
            conditions: vec![
                condition(ConditionType::Ready, ConditionStatus::True),
                condition(ConditionType::DevicePluginReady, ConditionStatus::True),
            ],
            ..Default::default()
        };
        m.set_pool("fine", &rolled_out);
        let text = m.encode();
        for (series, value) in [
            (r#"gpupool_pool_stalled{pool="stuck"}"#, 1.0),
            (r#"gpupool_pool_plugin_ready{pool="stuck"}"#, 0.0),
            (r#"gpupool_pool_plugin_pods_desired{pool="stuck"}"#, 4.0),
            (r#"gpupool_pool_plugin_pods_ready{pool="stuck"}"#, 1.0),
            (r#"gpupool_pool_plugin_pods_updated{pool="stuck"}"#, 3.0),
            (r#"gpupool_pool_stalled{pool="fine"}"#, 0.0),
            (r#"gpupool_pool_plugin_ready{pool="fine"}"#, 1.0),
            (r#"gpupool_pool_plugin_pods_ready{pool="fine"}"#, 2.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        // The pool recovers: the same series, new values.
        m.set_pool("stuck", &rolled_out);
        let text = m.encode();
        assert_eq!(
            sample(&text, r#"gpupool_pool_stalled{pool="stuck"}"#),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, r#"gpupool_pool_plugin_ready{pool="stuck"}"#),
            Some(1.0)
        );
    }

    #[test]
    fn leader_gauge_is_served_from_the_start_and_follows_leadership() {
        let m = Metrics::default();
        // A standby must report 0, not nothing: "no replica leads" is sum(gpupool_leader) == 0.
        assert_eq!(sample(&m.encode(), "gpupool_leader"), Some(0.0));
        m.set_leader(true);
        assert_eq!(sample(&m.encode(), "gpupool_leader"), Some(1.0));
        m.set_leader(false);
        assert_eq!(sample(&m.encode(), "gpupool_leader"), Some(0.0));
    }

    #[test]
    fn process_figures_are_parsed_from_proc() {
        use procfs::FromRead;
        // A command name with a space and a parenthesis of its own: fields are counted from the
        // last ')'. utime 150 + stime 50 ticks; started 4200 ticks after boot; 5000 pages.
        let stat = "12345 (gpupool (op) x) S 1 12345 12345 0 -1 4194560 2000 0 0 0 150 50 0 0 \
                    20 0 8 0 4200 123456789 5000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let stat = Stat::from_read(stat.as_bytes()).expect("a valid stat line");
        assert_eq!(
            ProcessSample::of(&stat, 1_700_000_000, 100, 4096),
            ProcessSample {
                resident_memory_bytes: 5000 * 4096,
                cpu_seconds: 2.0,
                start_time_seconds: 1_700_000_042.0,
            }
        );
        assert!(Stat::from_read("12345 (x) S 1 2".as_bytes()).is_err());
    }

    #[test]
    fn process_figures_of_this_process_are_live() {
        let first = ProcessSample::read().expect("/proc/self is readable on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            first.resident_memory_bytes > 1 << 20,
            "a test process holds more than 1 MiB: {first:?}"
        );
        // Tick rounding and clock granularity allow a little slack.
        assert!(
            first.start_time_seconds <= now + 1.0 && first.start_time_seconds > now - 24.0 * 3600.0,
            "this test process started within the day: {first:?}, now {now}"
        );
        // Burning CPU moves the counter: utime and stime are the fields read.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut spin = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                spin = std::hint::black_box(spin.wrapping_add(i));
            }
            let later = ProcessSample::read().unwrap();
            if later.cpu_seconds >= first.cpu_seconds + 0.05 {
                assert_eq!(later.start_time_seconds, first.start_time_seconds);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CPU time did not grow while spinning: {first:?} -> {later:?}"
            );
        }
        let text = Metrics::default().encode();
        for line in [
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_start_time_seconds gauge",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        for series in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
        ] {
            assert!(
                sample(&text, series).is_some_and(|v| v > 0.0),
                "{series} in\n{text}"
            );
        }
    }

    #[test]
    fn error_and_relist_counters_exist_at_zero_before_the_first_event() {
        let m = Metrics::default();
        let text = m.encode();
        for series in [
            r#"controller_runtime_reconcile_total{controller="gpupool",result="success"}"#,
            r#"controller_runtime_reconcile_total{controller="gpupool",result="error"}"#,
            r#"controller_runtime_reconcile_errors_total{controller="gpupool"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        let relists = r#"gpupool_watch_relists_total{kind="Node"}"#;
        assert_eq!(sample(&text, relists), None, "no watch has listed yet");
        m.watch_listed("Node", false);
        assert_eq!(sample(&m.encode(), relists), Some(0.0), "first list");
        m.watch_listed("Node", true);
        m.watch_listed("Node", true);
        assert_eq!(sample(&m.encode(), relists), Some(2.0), "two re-lists");
    }
}

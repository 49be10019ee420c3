//! What the benchmark measured: the [`Report`], its human-readable form, and its JSON
//! [`Summary`] with stable keys for tooling.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::Error;

/// A set of latencies, with nearest-rank percentiles.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    pub samples: Vec<Duration>,
}

impl Latencies {
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.samples.clone();
        v.sort();
        v
    }
    /// Nearest-rank percentile (zero without samples).
    pub fn percentile(&self, p: f64) -> Duration {
        let v = self.sorted();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }
    pub fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }
    fn millis(&self) -> MillisSummary {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        MillisSummary {
            p50: ms(self.p50()),
            p99: ms(self.p99()),
            max: ms(self.max()),
        }
    }
}

/// CPU seconds and memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

/// Requests by (verb, resource[/subresource]).
pub type RequestCounts = BTreeMap<(String, String), u64>;

/// What was measured with: pinned versions of the plane (hack/versions.env) and the operator's
/// own `--version`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub kwok: String,
    pub gpupool: String,
}

/// What it was measured on, from /proc.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes: usize,
    pub pools: usize,
    pub setup_nodes: Duration,
    pub operator_synced: Duration,
    /// Pools created back to back: create → first sight of its DaemonSet.
    pub pool_to_daemonset: Latencies,
    /// From the first pool created to every pool's status current and correct.
    pub all_pools_current: Duration,
    pub plugin_pods_ready: Duration,
    /// Extra pools created one a second on a settled cluster: create → first sight of its
    /// DaemonSet.
    pub pool_to_daemonset_spaced: Latencies,
    pub gpu_change_to_status: Latencies,
    pub cold_start_synced: Duration,
    pub cold_start_current: Duration,
    /// The first operator process (pools, GPU changes and the quiet period).
    pub operator: ProcStats,
    /// The restarted operator, up to a few seconds after the cold start converged.
    pub operator_cold: ProcStats,
    pub quiet: Duration,
    /// Operator requests per phase (the keys of `cpu`).
    pub requests: BTreeMap<&'static str, RequestCounts>,
    /// CPU seconds of each plane component and the operator, per phase.
    pub cpu: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// Reconciles counted by the operator's own metrics (first process), and their total time.
    pub reconciles: Option<(f64, f64)>,
    /// Reconciles during the quiet period (nothing changed but heartbeats: ideally none).
    pub quiet_reconciles: Option<f64>,
    /// Node update events a watch of the benchmark's own received during the quiet period: what
    /// the operator's node watch had to take in (kwok's heartbeats).
    pub quiet_node_events: u64,
    /// The GPU-verified rollout phase (None when not run).
    pub rollout: Option<RolloutReport>,
    /// The new-pool phase (None when not run).
    pub new_pool: Option<NewPoolReport>,
    /// The DRA phase (None when not run).
    pub dra: Option<DraReport>,
    pub versions: Versions,
    pub machine: Machine,
}

/// The GPU-verified rollout phase: `pools` pools of `nodes` nodes in all get a new plugin image
/// at once; then one pool gets a broken one.
#[derive(Debug, Clone, Default)]
pub struct RolloutReport {
    pub pools: usize,
    pub nodes: usize,
    pub max_unavailable: u32,
    /// From the first image patch to the last pool's first status with its rollout Complete.
    pub complete: Duration,
    /// The same, per pool.
    pub pool_complete: Latencies,
    /// The most nodes of one rolled pool without allocatable GPUs at once (any Node event).
    pub max_nodes_without_gpus: usize,
    /// Nodes of the rolled pools that lost their GPUs at least once (each replaced node once).
    pub nodes_replaced: usize,
    /// Nodes of the pools not rolled that lost their GPUs (none expected).
    pub quiet_nodes_lost_gpus: usize,
    /// Registrations of a new plugin with the simulated kubelets, and two plugins on one node
    /// at once (none expected).
    pub registrations: usize,
    pub two_plugins: usize,
    /// The operator's requests and writes during the rollout (until the last pool Complete).
    pub requests: u64,
    pub writes: u64,
    /// Writes during the rollout and the halt that concern a pool not rolled (none expected), and
    /// writes no pool can be named for.
    pub quiet_pool_writes: u64,
    pub unattributed_writes: u64,
    /// The simulated device manager: listing 5,000 nodes and plugin pods, its node writes when it
    /// started (none expected: every node shows its plugin's GPUs), and its idle window.
    pub simulation_synced: Duration,
    pub simulation_initial_writes: usize,
    pub idle: Duration,
    /// The pool rolled to a broken plugin with `progressDeadlineSeconds` = `halt_deadline`: from
    /// its patch to its first status Halted; the most of its nodes without GPUs at once; the
    /// nodes its status names as halted.
    pub halt_deadline: u32,
    pub halt: Option<Duration>,
    pub halt_max_nodes_without_gpus: usize,
    pub halted_nodes: Vec<String>,
    /// Anything the operator reported that the benchmark did not expect (e.g. Complete with
    /// nodes not updated).
    pub notes: Vec<String>,
}

impl RolloutReport {
    fn per_node(&self, n: u64) -> f64 {
        if self.nodes == 0 {
            0.0
        } else {
            n as f64 / self.nodes as f64
        }
    }

    pub fn requests_per_node(&self) -> f64 {
        self.per_node(self.requests)
    }

    pub fn writes_per_node(&self) -> f64 {
        self.per_node(self.writes)
    }

    fn summary(&self) -> RolloutSummary {
        RolloutSummary {
            pools: self.pools,
            nodes: self.nodes,
            complete_s: self.complete.as_secs_f64(),
            max_nodes_without_gpus: self.max_nodes_without_gpus,
            requests_per_node: self.requests_per_node(),
            writes_per_node: self.writes_per_node(),
            quiet_pool_writes: self.quiet_pool_writes,
            halt_s: self.halt.map(|d| d.as_secs_f64()),
        }
    }
}

/// The new-pool phase (#26): `nodes` nodes join, a plain DaemonSet runs over them (the floor),
/// then one GpuPool selecting them.
#[derive(Debug, Clone, Default)]
pub struct NewPoolReport {
    pub nodes: usize,
    /// From the first node's create request until every one was Ready.
    pub nodes_ready: Duration,
    /// The floor: from the plain DaemonSet's create request until a Ready pod of it was seen on
    /// every node; and from its deletion until its pods were gone.
    pub floor: Duration,
    pub floor_gone: Duration,
    /// From the pool's create request until its plugin pod was seen Ready on every node.
    pub plugin_everywhere: Duration,
    /// From the pool's create request until its status was current (every node and GPU counted)
    /// and Ready.
    pub pool_ready: Duration,
    /// The operator's requests and CPU seconds from the pool's create request until its plugin was
    /// Ready on every node.
    pub requests: RequestCounts,
    pub operator_cpu_s: f64,
    /// The operator's VmHWM and VmRSS at the end of the phase.
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    /// One node's allocatable changed in the big pool → its status shows it.
    pub gpu_change_to_status: Latencies,
    /// More nodes joining the pool (`--new-pool-grow`; None when not run).
    pub grow: Option<GrowReport>,
}

/// `nodes` more nodes join a pool's agent pool, all at once.
#[derive(Debug, Clone, Default)]
pub struct GrowReport {
    pub nodes: usize,
    /// From the first node's create request until the plugin was Ready on the last one.
    pub all: Duration,
    /// Per node: its create request → its plugin pod Ready.
    pub node_to_plugin: Latencies,
    /// The operator's requests and CPU seconds in that window.
    pub requests: RequestCounts,
    pub operator_cpu_s: f64,
}

/// Requests per node by `"verb resource"`, and `"total"`.
pub fn requests_per_node(requests: &RequestCounts, nodes: usize) -> BTreeMap<String, f64> {
    let per = |n: u64| n as f64 / nodes.max(1) as f64;
    let mut out: BTreeMap<String, f64> = requests
        .iter()
        .map(|((verb, resource), n)| (format!("{verb} {resource}"), per(*n)))
        .collect();
    out.insert("total".into(), per(requests.values().sum()));
    out
}

impl NewPoolReport {
    fn summary(&self) -> NewPoolSummary {
        NewPoolSummary {
            nodes: self.nodes,
            floor_s: self.floor.as_secs_f64(),
            plugin_everywhere_s: self.plugin_everywhere.as_secs_f64(),
            pool_ready_s: self.pool_ready.as_secs_f64(),
            requests_per_node: requests_per_node(&self.requests, self.nodes),
            operator_cpu_s: self.operator_cpu_s,
            peak_rss_mib: self.peak_rss_kib as f64 / 1024.0,
            alloc_to_status_ms: self.gpu_change_to_status.millis(),
            grow: self.grow.as_ref().map(|g| GrowSummary {
                nodes: g.nodes,
                all_s: g.all.as_secs_f64(),
                node_to_plugin_ms: g.node_to_plugin.millis(),
                requests_per_node: requests_per_node(&g.requests, g.nodes),
                operator_cpu_s: g.operator_cpu_s,
            }),
        }
    }
}

/// The DRA phase (#23): a pool with `allocation: Dra` over `nodes` nodes, the driver's pods on
/// them, then one ResourceSlice per node.
#[derive(Debug, Clone, Default)]
pub struct DraReport {
    pub nodes: usize,
    pub slices: usize,
    /// Devices (GPUs) in all the slices.
    pub devices: usize,
    /// From the pool's create request until the driver's pod was seen Ready on every node, and
    /// the operator's requests in that window.
    pub driver_everywhere: Duration,
    pub driver_requests: RequestCounts,
    /// From the first slice's create request until the last one's returned, and until the
    /// pool's status was Ready with every node and GPU counted from them.
    pub slices_created: Duration,
    pub slices_to_ready: Duration,
    /// The operator's CPU seconds and requests in that window.
    pub operator_cpu_s: f64,
    pub slice_requests: RequestCounts,
    /// The operator's VmRSS before the slices (once the driver ran everywhere and the pool's
    /// status was current), after them (once the pool counted every one), and after the quiet
    /// period; its VmHWM after the slices.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_after_quiet_kib: u64,
    pub peak_rss_kib: u64,
    /// The quiet period after: its length, the operator's CPU seconds, requests and reconciles.
    pub quiet: Duration,
    pub quiet_cpu_s: f64,
    pub quiet_requests: RequestCounts,
    pub quiet_reconciles: Option<f64>,
}

fn writes(requests: &RequestCounts) -> u64 {
    requests
        .iter()
        .filter(|((verb, _), _)| !matches!(verb.as_str(), "get" | "list" | "watch"))
        .map(|(_, n)| n)
        .sum()
}

impl DraReport {
    /// RSS after the slices minus before, per slice (negative when the allocator gave memory
    /// back meanwhile).
    pub fn kib_per_slice(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.slices.max(1) as f64
    }

    pub fn kib_per_device(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.devices.max(1) as f64
    }

    pub fn quiet_cpu_percent(&self) -> f64 {
        if self.quiet.is_zero() {
            0.0
        } else {
            self.quiet_cpu_s / self.quiet.as_secs_f64() * 100.0
        }
    }

    pub fn quiet_writes(&self) -> u64 {
        writes(&self.quiet_requests)
    }

    fn summary(&self) -> DraSummary {
        let mib = |kib: u64| kib as f64 / 1024.0;
        DraSummary {
            nodes: self.nodes,
            slices: self.slices,
            devices: self.devices,
            driver_everywhere_s: self.driver_everywhere.as_secs_f64(),
            driver_requests_per_node: requests_per_node(&self.driver_requests, self.nodes),
            slices_created_s: self.slices_created.as_secs_f64(),
            slices_to_ready_s: self.slices_to_ready.as_secs_f64(),
            operator_cpu_s: self.operator_cpu_s,
            requests_per_slice: requests_per_node(&self.slice_requests, self.slices),
            rss_before_mib: mib(self.rss_before_kib),
            rss_after_mib: mib(self.rss_after_kib),
            rss_after_quiet_mib: mib(self.rss_after_quiet_kib),
            peak_rss_mib: mib(self.peak_rss_kib),
            kib_per_slice: self.kib_per_slice(),
            kib_per_device: self.kib_per_device(),
            quiet_s: self.quiet.as_secs_f64(),
            quiet_cpu_percent: self.quiet_cpu_percent(),
            quiet_requests: self.quiet_requests.values().sum(),
            quiet_writes: self.quiet_writes(),
            quiet_reconciles: self.quiet_reconciles.map(|n| n as u64),
        }
    }
}

/// Name of the quiet period in `requests` and `cpu`.
pub(super) const QUIET: &str = "quiet";
/// The operator's name in `cpu`.
pub(super) const OPERATOR: &str = "gpupool-operator";

impl Report {
    /// Writes counted by the operator during the quiet period.
    pub fn quiet_writes(&self) -> u64 {
        self.requests.get(QUIET).map_or(0, writes)
    }

    /// Operator CPU during the quiet period, in % of one core.
    pub fn quiet_cpu_percent(&self) -> f64 {
        let seconds = self
            .cpu
            .get(QUIET)
            .and_then(|per| per.get(OPERATOR))
            .copied()
            .unwrap_or(0.0);
        if self.quiet.is_zero() {
            0.0
        } else {
            seconds / self.quiet.as_secs_f64() * 100.0
        }
    }

    /// Node events per second in the quiet period, and the operator's CPU per node event (µs):
    /// when nothing else happens, the cost of taking in one heartbeat.
    pub fn quiet_node_event_rate(&self) -> (f64, f64) {
        if self.quiet.is_zero() || self.quiet_node_events == 0 {
            return (0.0, 0.0);
        }
        let rate = self.quiet_node_events as f64 / self.quiet.as_secs_f64();
        let cpu_s = self.quiet_cpu_percent() / 100.0 * self.quiet.as_secs_f64();
        (rate, cpu_s / self.quiet_node_events as f64 * 1e6)
    }

    /// The summary `--json` writes.
    pub fn summary(&self) -> Summary {
        let mib = |kib: u64| kib as f64 / 1024.0;
        Summary {
            nodes: self.nodes,
            pools: self.pools,
            allocatable_to_status_ms: self.gpu_change_to_status.millis(),
            pool_to_daemonset_ms: self.pool_to_daemonset.millis(),
            pool_to_daemonset_spaced_ms: self.pool_to_daemonset_spaced.millis(),
            cold_start_s: self.cold_start_current.as_secs_f64(),
            peak_rss_mib: mib(self.operator.peak_rss_kib),
            cold_start_peak_rss_mib: mib(self.operator_cold.peak_rss_kib),
            quiet_cpu_percent: self.quiet_cpu_percent(),
            quiet_node_events_per_s: self.quiet_node_event_rate().0,
            quiet_cpu_us_per_node_event: self.quiet_node_event_rate().1,
            quiet_writes: self.quiet_writes(),
            reconciles: self.reconciles.map_or(0, |(count, _)| count as u64),
            quiet_reconciles: self.quiet_reconciles.map_or(0, |count| count as u64),
            rollout: self.rollout.as_ref().map(RolloutReport::summary),
            new_pool: self.new_pool.as_ref().map(NewPoolReport::summary),
            dra: self.dra.as_ref().map(DraReport::summary),
            versions: self.versions.clone(),
            machine: self.machine.clone(),
        }
    }

    /// Writes [`Report::summary`] as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(&self.summary()).map_err(|e| Error::Config {
            what: "serializing the benchmark summary".into(),
            detail: e.to_string(),
        })?;
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

/// The benchmark's numbers for tooling (`--json`); the keys are stable.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub nodes: usize,
    pub pools: usize,
    pub allocatable_to_status_ms: MillisSummary,
    pub pool_to_daemonset_ms: MillisSummary,
    pub pool_to_daemonset_spaced_ms: MillisSummary,
    pub cold_start_s: f64,
    pub peak_rss_mib: f64,
    pub cold_start_peak_rss_mib: f64,
    pub quiet_cpu_percent: f64,
    /// Node update events per second in the quiet period (0 when not counted), and the
    /// operator's CPU per such event in µs.
    pub quiet_node_events_per_s: f64,
    pub quiet_cpu_us_per_node_event: f64,
    pub quiet_writes: u64,
    pub reconciles: u64,
    pub quiet_reconciles: u64,
    /// The GPU-verified rollout phase (null when not run).
    pub rollout: Option<RolloutSummary>,
    /// The new-pool phase (null when not run).
    pub new_pool: Option<NewPoolSummary>,
    /// The DRA phase (null when not run).
    pub dra: Option<DraSummary>,
    pub versions: Versions,
    pub machine: Machine,
}

/// The DRA phase in the summary: nodes, slices (one per node) and devices; seconds from the
/// pool's creation until the driver ran on every node, with the operator's requests per node;
/// seconds from the first slice until the pool was Ready with all of them counted, with the
/// operator's CPU seconds and requests per slice; the operator's RSS before and after the slices
/// and after the quiet period, its peak, and the difference per slice and per device; the quiet
/// period's length, the operator's CPU (% of a core), requests, writes and reconciles in it.
#[derive(Debug, Clone, Serialize)]
pub struct DraSummary {
    pub nodes: usize,
    pub slices: usize,
    pub devices: usize,
    pub driver_everywhere_s: f64,
    pub driver_requests_per_node: BTreeMap<String, f64>,
    pub slices_created_s: f64,
    pub slices_to_ready_s: f64,
    pub operator_cpu_s: f64,
    pub requests_per_slice: BTreeMap<String, f64>,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub rss_after_quiet_mib: f64,
    pub peak_rss_mib: f64,
    pub kib_per_slice: f64,
    pub kib_per_device: f64,
    pub quiet_s: f64,
    pub quiet_cpu_percent: f64,
    pub quiet_requests: u64,
    pub quiet_writes: u64,
    pub quiet_reconciles: Option<u64>,
}

/// The new-pool phase in the summary: nodes; seconds until a plain DaemonSet (the floor) and
/// then the pool's plugin were Ready on every node, and until the pool's status was current and
/// Ready; the operator's requests per node (`"verb resource"` and `"total"`) and CPU seconds until
/// the plugin was everywhere; its peak RSS at the end of the phase; one node's allocatable change
/// → the pool's status; and the nodes that joined later (null when not run).
#[derive(Debug, Clone, Serialize)]
pub struct NewPoolSummary {
    pub nodes: usize,
    pub floor_s: f64,
    pub plugin_everywhere_s: f64,
    pub pool_ready_s: f64,
    pub requests_per_node: BTreeMap<String, f64>,
    pub operator_cpu_s: f64,
    pub peak_rss_mib: f64,
    pub alloc_to_status_ms: MillisSummary,
    pub grow: Option<GrowSummary>,
}

/// Nodes joining the big pool: how many, seconds from the first one's creation until the plugin
/// was Ready on the last, per node (create → plugin Ready), requests per node and CPU seconds.
#[derive(Debug, Clone, Serialize)]
pub struct GrowSummary {
    pub nodes: usize,
    pub all_s: f64,
    pub node_to_plugin_ms: MillisSummary,
    pub requests_per_node: BTreeMap<String, f64>,
    pub operator_cpu_s: f64,
}

/// The rollout phase in the summary: pools and nodes rolled, seconds until every pool was
/// Complete, the most nodes of a pool without GPUs at once, the operator's requests and writes
/// per replaced node, writes concerning pools not rolled, seconds until the broken pool halted.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutSummary {
    pub pools: usize,
    pub nodes: usize,
    pub complete_s: f64,
    pub max_nodes_without_gpus: usize,
    pub requests_per_node: f64,
    pub writes_per_node: f64,
    pub quiet_pool_writes: u64,
    pub halt_s: Option<f64>,
}

/// p50, p99 and max of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MillisSummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn latencies_s(l: &Latencies) -> String {
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    format!("p50 {}, p99 {}, max {}", s(l.p50()), s(l.p99()), s(l.max()))
}

fn latencies(l: &Latencies) -> String {
    format!(
        "p50 {}, p99 {}, max {}",
        ms(l.p50()),
        ms(l.p99()),
        ms(l.max())
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.versions;
        let m = &self.machine;
        let scale = if self.pools > 0 {
            format!("{} nodes, {} pools", self.nodes, self.pools)
        } else {
            "no pool phases (--pools 0)".to_owned()
        };
        writeln!(
            f,
            "gpupool benchmark: {scale} (gpupool {}, Kubernetes {}, etcd {}, kwok {}; {} cores, {} MiB, Linux {})",
            v.gpupool, v.kubernetes, v.etcd, v.kwok, m.cores, m.memory_mib, m.kernel
        )?;
        if self.nodes > 0 {
            write!(
                f,
                "setup: {} nodes created in {:.1} s; ",
                self.nodes,
                self.setup_nodes.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "operator caches synced {:.2} s after start",
            self.operator_synced.as_secs_f64()
        )?;
        if self.pools > 0 {
            self.fmt_latencies(f)?;
            self.fmt_operator(f)?;
            self.fmt_rollout(f)?;
        }
        self.fmt_new_pool(f)?;
        self.fmt_dra(f)?;
        self.fmt_requests_and_cpu(f)
    }
}

/// Requests by verb and resource on one line: `; get nodes: 5 (1.00 per node)`.
fn requests_line(requests: &RequestCounts, nodes: usize) -> String {
    let mut line = String::new();
    for ((verb, resource), n) in requests {
        let _ = write!(
            line,
            "; {verb} {resource}: {n} ({:.2}/node)",
            *n as f64 / nodes.max(1) as f64
        );
    }
    line
}

impl Report {
    fn fmt_latencies(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.pool_to_daemonset;
        writeln!(
            f,
            "1. pool created -> DaemonSet applied ({} pools): {}",
            l.samples.len(),
            latencies(l)
        )?;
        writeln!(
            f,
            "   first pool created -> every pool's status current: {:.2} s; every plugin pod ready: {:.1} s",
            self.all_pools_current.as_secs_f64(),
            self.plugin_pods_ready.as_secs_f64()
        )?;
        let l = &self.pool_to_daemonset_spaced;
        writeln!(
            f,
            "   one pool a second ({} pools): {}",
            l.samples.len(),
            latencies(l)
        )?;
        let l = &self.gpu_change_to_status;
        writeln!(
            f,
            "2. node nvidia.com/gpu allocatable changed -> pool status shows it ({} changes): {}",
            l.samples.len(),
            latencies(l)
        )?;
        writeln!(
            f,
            "3. cold start -> every pool's status current: {:.2} s (caches synced after {:.2} s)",
            self.cold_start_current.as_secs_f64(),
            self.cold_start_synced.as_secs_f64()
        )
    }

    fn fmt_operator(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "4. operator: peak RSS {} (RSS at end {}), CPU {:.2} s; after cold start: peak RSS {}, CPU {:.2} s",
            mib(self.operator.peak_rss_kib),
            mib(self.operator.rss_kib),
            self.operator.cpu_seconds,
            mib(self.operator_cold.peak_rss_kib),
            self.operator_cold.cpu_seconds
        )?;
        if let Some((count, seconds)) = self.reconciles {
            let each = if count > 0.0 {
                seconds * 1e3 / count
            } else {
                0.0
            };
            writeln!(
                f,
                "   reconciles (operator metrics, first process): {count:.0}, {seconds:.3} s in total ({each:.2} ms each)",
            )?;
        }
        Ok(())
    }

    fn fmt_rollout(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = &self.rollout else {
            return Ok(());
        };
        writeln!(
            f,
            "6. GPU-verified rollout, {} pools x {} nodes ({} nodes, maxUnavailable {}) at once: every pool Complete after {:.1} s (per pool {})",
            r.pools,
            r.nodes / r.pools.max(1),
            r.nodes,
            r.max_unavailable,
            r.complete.as_secs_f64(),
            latencies_s(&r.pool_complete)
        )?;
        writeln!(
            f,
            "   most nodes of a pool without GPUs at once: {} (node watch); nodes that lost GPUs: {} in the pools rolled, {} in the others; {} plugin registrations; two plugins on a node: {}",
            r.max_nodes_without_gpus,
            r.nodes_replaced,
            r.quiet_nodes_lost_gpus,
            r.registrations,
            r.two_plugins
        )?;
        writeln!(
            f,
            "   operator: {} requests ({:.2} per node), {} writes ({:.2} per node); writes concerning the pools not rolled: {} (unattributed: {})",
            r.requests,
            r.requests_per_node(),
            r.writes,
            r.writes_per_node(),
            r.quiet_pool_writes,
            r.unattributed_writes
        )?;
        writeln!(
            f,
            "   simulated device manager: listed in {:.2} s, {} writes at start, then {} s idle (CPU in the table below)",
            r.simulation_synced.as_secs_f64(),
            r.simulation_initial_writes,
            r.idle.as_secs()
        )?;
        if let Some(halt) = r.halt {
            writeln!(
                f,
                "   broken plugin (progressDeadlineSeconds {}): Halted after {:.1} s; nodes without GPUs at once {}; halted nodes {:?}",
                r.halt_deadline,
                halt.as_secs_f64(),
                r.halt_max_nodes_without_gpus,
                r.halted_nodes
            )?;
        }
        for note in &r.notes {
            writeln!(f, "   NOTE: {note}")?;
        }
        Ok(())
    }

    fn fmt_new_pool(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = &self.new_pool else {
            return Ok(());
        };
        let s = |d: Duration| d.as_secs_f64();
        let ratio = if r.floor.is_zero() {
            0.0
        } else {
            s(r.plugin_everywhere) / s(r.floor)
        };
        writeln!(
            f,
            "7. new pool over {} nodes (joined and Ready in {:.1} s):",
            r.nodes,
            s(r.nodes_ready)
        )?;
        writeln!(
            f,
            "   floor (a plain DaemonSet of the plugin's pod template, nodeSelector on the agent pool): a Ready pod on every node after {:.2} s (its pods gone {:.1} s after its deletion)",
            s(r.floor),
            s(r.floor_gone)
        )?;
        writeln!(
            f,
            "   GpuPool created -> its plugin Ready on every node: {:.2} s ({ratio:.1}x the floor); status current and Ready: {:.2} s",
            s(r.plugin_everywhere),
            s(r.pool_ready)
        )?;
        let total: u64 = r.requests.values().sum();
        writeln!(
            f,
            "   operator until then: {:.2} CPU-s, {total} requests ({:.2}/node){}",
            r.operator_cpu_s,
            total as f64 / r.nodes.max(1) as f64,
            requests_line(&r.requests, r.nodes)
        )?;
        let l = &r.gpu_change_to_status;
        writeln!(
            f,
            "   node nvidia.com/gpu allocatable changed -> pool status shows it ({} changes): {}",
            l.samples.len(),
            latencies(l)
        )?;
        if let Some(g) = &r.grow {
            let total: u64 = g.requests.values().sum();
            writeln!(
                f,
                "   {} more nodes join: plugin Ready on all {:.1} s after the first was created; per node (created -> plugin Ready) {}; operator {:.2} CPU-s, {total} requests ({:.2}/node){}",
                g.nodes,
                s(g.all),
                latencies_s(&g.node_to_plugin),
                g.operator_cpu_s,
                total as f64 / g.nodes.max(1) as f64,
                requests_line(&g.requests, g.nodes)
            )?;
        }
        writeln!(
            f,
            "   operator at the end: peak RSS {}, RSS {}",
            mib(r.peak_rss_kib),
            mib(r.rss_kib)
        )
    }

    fn fmt_dra(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = &self.dra else {
            return Ok(());
        };
        let s = |d: Duration| d.as_secs_f64();
        writeln!(
            f,
            "8. DRA pool over {} nodes ({} ResourceSlices, {} GPUs):",
            r.nodes, r.slices, r.devices
        )?;
        let total: u64 = r.driver_requests.values().sum();
        writeln!(
            f,
            "   GpuPool (allocation: Dra) created -> the driver Ready on every node: {:.2} s; operator {total} requests ({:.2}/node){}",
            s(r.driver_everywhere),
            total as f64 / r.nodes.max(1) as f64,
            requests_line(&r.driver_requests, r.nodes)
        )?;
        let total: u64 = r.slice_requests.values().sum();
        writeln!(
            f,
            "   first slice created -> pool Ready with every GPU counted: {:.2} s (slices created in {:.1} s); operator {:.2} CPU-s, {total} requests{}",
            s(r.slices_to_ready),
            s(r.slices_created),
            r.operator_cpu_s,
            requests_line(&r.slice_requests, r.slices).replace("/node", "/slice")
        )?;
        writeln!(
            f,
            "   operator RSS: {} before the slices, {} after ({:+.2} KiB per slice, {:+.2} KiB per GPU), {} after the quiet period; peak {}",
            mib(r.rss_before_kib),
            mib(r.rss_after_kib),
            r.kib_per_slice(),
            r.kib_per_device(),
            mib(r.rss_after_quiet_kib),
            mib(r.peak_rss_kib)
        )?;
        writeln!(
            f,
            "   quiet {} s: operator CPU {:.2}% of a core, {} requests, {} writes, {} reconciles",
            r.quiet.as_secs(),
            r.quiet_cpu_percent(),
            r.quiet_requests.values().sum::<u64>(),
            r.quiet_writes(),
            r.quiet_reconciles
                .map_or_else(|| "?".to_owned(), |n| format!("{n:.0}"))
        )
    }

    fn fmt_requests_and_cpu(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pools > 0 {
            let (rate, per_event) = self.quiet_node_event_rate();
            writeln!(
                f,
                "5. operator API requests in a quiet period of {} s: {} writes; operator CPU {:.2}% of a core; {} reconciles; {:.1} node events/s, {:.0} µs of operator CPU each",
                self.quiet.as_secs(),
                self.quiet_writes(),
                self.quiet_cpu_percent(),
                self.quiet_reconciles
                    .map_or_else(|| "?".to_owned(), |n| format!("{n:.0}")),
                rate,
                per_event
            )?;
        } else {
            writeln!(f, "operator API requests per phase:")?;
        }
        for (phase, counts) in &self.requests {
            let total: u64 = counts.values().sum();
            let mut line = format!("   {phase}: {total} requests");
            for ((verb, resource), n) in counts {
                let _ = write!(line, "; {verb} {resource}: {n}");
            }
            writeln!(f, "{line}")?;
        }
        writeln!(f, "CPU seconds per phase:")?;
        for (phase, per) in &self.cpu {
            let mut line = format!("   {phase}:");
            for (component, secs) in per {
                let _ = write!(line, " {component} {secs:.1}");
            }
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_the_stable_keys() {
        let mut report = Report {
            quiet: Duration::from_secs(10),
            ..Report::default()
        };
        report.pool_to_daemonset.samples =
            vec![Duration::from_millis(30), Duration::from_millis(10)];
        report
            .cpu
            .insert(QUIET, BTreeMap::from([(OPERATOR.to_owned(), 0.5)]));
        report.reconciles = Some((42.0, 1.0));
        report.quiet_node_events = 200;
        assert!(serde_json::to_value(report.summary()).unwrap()["rollout"].is_null());
        report.rollout = Some(RolloutReport {
            pools: 2,
            nodes: 100,
            complete: Duration::from_secs(90),
            max_nodes_without_gpus: 1,
            requests: 550,
            writes: 250,
            halt: Some(Duration::from_secs(31)),
            ..RolloutReport::default()
        });
        assert!(serde_json::to_value(report.summary()).unwrap()["new_pool"].is_null());
        report.new_pool = Some(NewPoolReport {
            nodes: 100,
            floor: Duration::from_secs(2),
            plugin_everywhere: Duration::from_secs(5),
            requests: RequestCounts::from([
                (("patch".into(), "nodes".into()), 100),
                (("get".into(), "nodes".into()), 50),
            ]),
            operator_cpu_s: 0.5,
            ..NewPoolReport::default()
        });
        let json = serde_json::to_value(report.summary()).unwrap();
        for key in [
            "/allocatable_to_status_ms/p50",
            "/pool_to_daemonset_ms/p99",
            "/pool_to_daemonset_spaced_ms/max",
            "/cold_start_s",
            "/peak_rss_mib",
            "/cold_start_peak_rss_mib",
            "/quiet_cpu_percent",
            "/quiet_node_events_per_s",
            "/quiet_cpu_us_per_node_event",
            "/quiet_writes",
            "/reconciles",
            "/quiet_reconciles",
            "/versions/kubernetes",
            "/versions/etcd",
            "/versions/kwok",
            "/versions/gpupool",
            "/machine/cores",
            "/machine/memory_mib",
            "/machine/kernel",
            "/rollout/pools",
            "/rollout/nodes",
            "/rollout/complete_s",
            "/rollout/max_nodes_without_gpus",
            "/rollout/requests_per_node",
            "/rollout/writes_per_node",
            "/rollout/quiet_pool_writes",
            "/rollout/halt_s",
            "/new_pool/nodes",
            "/new_pool/floor_s",
            "/new_pool/plugin_everywhere_s",
            "/new_pool/pool_ready_s",
            "/new_pool/requests_per_node/total",
            "/new_pool/operator_cpu_s",
            "/new_pool/peak_rss_mib",
            "/new_pool/alloc_to_status_ms/p99",
            "/new_pool/grow",
        ] {
            assert!(json.pointer(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["pool_to_daemonset_ms"]["p50"], 10.0);
        assert_eq!(json["pool_to_daemonset_ms"]["max"], 30.0);
        assert_eq!(json["quiet_cpu_percent"], 5.0);
        // 0.5 CPU-s over 200 events in 10 s: 20 events/s, 2,500 µs each.
        assert_eq!(json["quiet_node_events_per_s"], 20.0);
        assert_eq!(json["quiet_cpu_us_per_node_event"], 2500.0);
        assert_eq!(json["reconciles"], 42);
        assert_eq!(json["rollout"]["requests_per_node"], 5.5);
        assert_eq!(json["rollout"]["halt_s"], 31.0);
        assert_eq!(json["new_pool"]["requests_per_node"]["patch nodes"], 1.0);
        assert_eq!(json["new_pool"]["requests_per_node"]["get nodes"], 0.5);
        assert_eq!(json["new_pool"]["requests_per_node"]["total"], 1.5);
        assert!(json["new_pool"]["grow"].is_null());
        assert!(json["dra"].is_null());
        report.dra = Some(DraReport {
            nodes: 4,
            slices: 4,
            devices: 16,
            rss_before_kib: 1000,
            rss_after_kib: 1160,
            quiet: Duration::from_secs(10),
            quiet_cpu_s: 0.1,
            quiet_requests: RequestCounts::from([(("patch".into(), "nodes".into()), 1)]),
            ..DraReport::default()
        });
        let json = serde_json::to_value(report.summary()).unwrap();
        for key in [
            "/dra/nodes",
            "/dra/slices",
            "/dra/devices",
            "/dra/driver_everywhere_s",
            "/dra/driver_requests_per_node/total",
            "/dra/slices_to_ready_s",
            "/dra/operator_cpu_s",
            "/dra/requests_per_slice/total",
            "/dra/rss_before_mib",
            "/dra/rss_after_mib",
            "/dra/kib_per_slice",
            "/dra/kib_per_device",
            "/dra/quiet_cpu_percent",
            "/dra/quiet_writes",
            "/dra/quiet_reconciles",
        ] {
            assert!(json.pointer(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["dra"]["kib_per_slice"], 40.0);
        assert_eq!(json["dra"]["kib_per_device"], 10.0);
        assert_eq!(json["dra"]["quiet_cpu_percent"], 1.0);
        assert_eq!(json["dra"]["quiet_writes"], 1);
    }
}

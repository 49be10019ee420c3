//! The readiness-gate benchmark behind `cargo run --release -p testenv --bin gate-bench`: a
//! scale-up of N GPU nodes that join at once with the gate taint, into one GpuPool with a
//! readiness gate; their plugin pods come up, then their GPUs register (spread over
//! `--register-over-seconds`, as plugins on real machines come up over tens of seconds; 0: all
//! in the same instant). Measured from the outside:
//!
//! 1. a node's `nvidia.com/gpu` allocatable first seen → its gate taint first seen gone (p50,
//!    p99, max; both through one Node watch);
//! 2. the operator's API requests during the scale-up, per verb and resource, and node patches
//!    per node (audit log);
//! 3. its requests during a quiet period afterwards (there must be no writes);
//! 4. its peak RSS and CPU seconds.
//!
//! With `--validation` each node also runs a validation pod (finished after a second by the
//! simulated kubelet), so the latency includes scheduling and running it.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;

use super::audit::count_requests;
use super::observe::gpupool_resource;
use super::operator::Operator;
use super::procfs::{machine, proc_stats};
use super::report::{Latencies, Machine, MillisSummary, ProcStats, RequestCounts, Versions};
use super::{PLUGIN_NAMESPACE, log, setup};
use crate::nodes::{self, GpuNode};
use crate::simulate::ValidationPods;
use crate::{ControlPlane, Error, poll_until};

const GATE: &str = "gpupool.io/gpu-not-ready";
const POOL: &str = "gate";
const AGENTPOOL: &str = "gate";

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gate-bench",
    about = "gpupool's readiness gate under a scale-up, on a private control plane"
)]
pub struct GateBenchOptions {
    /// GPU nodes joining at once, tainted with the gate.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub nodes: usize,
    /// The nodes' GPUs register spread evenly over this many seconds (0: all at once).
    #[arg(long = "register-over-seconds", value_name = "S", default_value = "20", value_parser = super::seconds)]
    pub register_over: Duration,
    /// Also validate every node (spec.validation), the simulated pods passing after a second.
    #[arg(long)]
    pub validation: bool,
    /// Quiet period after the scale-up in which the operator's requests are counted, in seconds.
    #[arg(long = "quiet-seconds", value_name = "S", default_value = "60", value_parser = super::seconds)]
    pub quiet: Duration,
    /// Node creations in flight at once.
    #[arg(long, value_name = "C", default_value_t = 32)]
    pub create_concurrency: usize,
    /// The operator binary (a release build for real numbers).
    #[arg(long, value_name = "PATH", default_value_os_t = super::default_operator_binary())]
    pub operator: PathBuf,
    /// Also write a JSON summary with stable keys here (see [`GateSummary`]).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Upper bound for every wait, in seconds.
    #[arg(long = "timeout-seconds", value_name = "S", default_value = "600", value_parser = super::seconds)]
    pub timeout: Duration,
}

impl GateBenchOptions {
    /// The command line's defaults with `nodes` and the operator binary set.
    pub fn new(nodes: usize, operator: PathBuf) -> Self {
        use clap::Parser as _;
        GateBenchOptions {
            nodes,
            operator,
            ..GateBenchOptions::parse_from(["gate-bench"])
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GateReport {
    pub nodes: usize,
    pub register_over: Duration,
    pub validation: bool,
    /// Node's GPUs allocatable → its gate taint gone.
    pub allocatable_to_open: Latencies,
    /// From the first GPU registered to the last node opened.
    pub all_open: Duration,
    /// Operator requests during the scale-up (GPUs registering until every node open).
    pub scale_up_requests: RequestCounts,
    /// Operator requests in the quiet period after it.
    pub quiet_requests: RequestCounts,
    pub quiet: Duration,
    pub operator: ProcStats,
    pub versions: Versions,
    pub machine: Machine,
}

impl GateReport {
    fn count(requests: &RequestCounts, verb: &str, resource: &str) -> u64 {
        requests
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Node patches per node during the scale-up (the gate's writes; the device-plugin label
    /// was written when the nodes joined, before).
    pub fn node_patches_per_node(&self) -> f64 {
        Self::count(&self.scale_up_requests, "patch", "nodes") as f64 / self.nodes.max(1) as f64
    }

    /// Writes in the quiet period.
    pub fn quiet_writes(&self) -> u64 {
        self.quiet_requests
            .iter()
            .filter(|((verb, _), _)| !matches!(verb.as_str(), "get" | "list" | "watch"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn summary(&self) -> GateSummary {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        GateSummary {
            nodes: self.nodes,
            register_over_s: self.register_over.as_secs_f64(),
            validation: self.validation,
            allocatable_to_open_ms: MillisSummary {
                p50: ms(self.allocatable_to_open.p50()),
                p99: ms(self.allocatable_to_open.p99()),
                max: ms(self.allocatable_to_open.max()),
            },
            all_open_s: self.all_open.as_secs_f64(),
            node_patches_per_node: self.node_patches_per_node(),
            node_gets_per_node: Self::count(&self.scale_up_requests, "get", "nodes") as f64
                / self.nodes.max(1) as f64,
            quiet_writes: self.quiet_writes(),
            peak_rss_mib: self.operator.peak_rss_kib as f64 / 1024.0,
            cpu_seconds: self.operator.cpu_seconds,
            versions: self.versions.clone(),
            machine: self.machine.clone(),
        }
    }
}

/// [`GateReport`] with stable keys, for tooling (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct GateSummary {
    pub nodes: usize,
    pub register_over_s: f64,
    pub validation: bool,
    pub allocatable_to_open_ms: MillisSummary,
    pub all_open_s: f64,
    pub node_patches_per_node: f64,
    pub node_gets_per_node: f64,
    pub quiet_writes: u64,
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
    pub versions: Versions,
    pub machine: Machine,
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        writeln!(
            f,
            "gpupool readiness gate: {} nodes join tainted, GPUs registering over {} s{}",
            self.nodes,
            self.register_over.as_secs(),
            if self.validation {
                ", each validated"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "1. GPUs allocatable -> gate taint removed: p50 {}, p99 {}, max {} ({} nodes); every node open {:.1} s after the first GPU registered",
            ms(self.allocatable_to_open.p50()),
            ms(self.allocatable_to_open.p99()),
            ms(self.allocatable_to_open.max()),
            self.allocatable_to_open.samples.len(),
            self.all_open.as_secs_f64()
        )?;
        writeln!(
            f,
            "2. operator requests during the scale-up ({:.2} node patches per node):",
            self.node_patches_per_node()
        )?;
        for ((verb, resource), n) in &self.scale_up_requests {
            writeln!(f, "     {verb:>6} {resource}: {n}")?;
        }
        writeln!(
            f,
            "3. quiet {} s afterwards: {} writes, {} requests",
            self.quiet.as_secs(),
            self.quiet_writes(),
            self.quiet_requests.values().sum::<u64>()
        )?;
        for ((verb, resource), n) in &self.quiet_requests {
            writeln!(f, "     {verb:>6} {resource}: {n}")?;
        }
        writeln!(
            f,
            "4. operator: peak RSS {:.1} MiB, {:.1} CPU seconds",
            self.operator.peak_rss_kib as f64 / 1024.0,
            self.operator.cpu_seconds
        )?;
        writeln!(
            f,
            "versions: gpupool {}, Kubernetes {}, etcd {}, kwok {}; machine: {} cores, {} MiB",
            self.versions.gpupool,
            self.versions.kubernetes,
            self.versions.etcd,
            self.versions.kwok,
            self.machine.cores,
            self.machine.memory_mib
        )
    }
}

/// When each node was first seen with GPUs allocatable, and first seen open after that.
#[derive(Default)]
struct NodeTimes {
    allocatable: HashMap<String, Instant>,
    open: HashMap<String, Instant>,
}

/// Runs the benchmark. Progress goes to stderr.
pub async fn run(opts: GateBenchOptions) -> Result<GateReport, Error> {
    if opts.nodes == 0 {
        return Err(Error::Config {
            what: "--nodes 0".into(),
            detail: "need at least one node".into(),
        });
    }
    if !opts.operator.is_file() {
        return Err(Error::Config {
            what: format!("--operator {}", opts.operator.display()),
            detail: "not found: build it with `cargo build --release --bin gpupool-operator` or pass --operator".into(),
        });
    }
    let user = format!(
        "system:serviceaccount:{}:{}",
        super::OPERATOR_NAMESPACE,
        super::OPERATOR_SA
    );
    log("starting the control plane");
    let plane = ControlPlane::start_with(super::plane_options_for(
        Duration::from_secs(60),
        240,
        &user,
    ))
    .await?;
    let result = measure(&plane, &opts, &user).await;
    match &result {
        Ok(report) => {
            if let Some(path) = &opts.json {
                let json =
                    serde_json::to_string_pretty(&report.summary()).map_err(|e| Error::Config {
                        what: "the JSON summary".into(),
                        detail: e.to_string(),
                    })?;
                std::fs::write(path, json)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            }
        }
        Err(_) => log(format!("control plane logs:\n{}", plane.logs_tail(20))),
    }
    result
}

async fn measure(
    plane: &ControlPlane,
    opts: &GateBenchOptions,
    user: &str,
) -> Result<GateReport, Error> {
    let kubeconfig = setup::operator_identity(plane).await?;
    let client = plane.client().await;
    let _kubelet = opts
        .validation
        .then(|| ValidationPods::spawn_with_run_time(client.clone(), Duration::from_secs(1)));
    let mut op = Operator::start(plane, &opts.operator, &kubeconfig, "operator")?;
    op.wait_synced(opts.timeout).await?;
    create_pool(&client, opts.validation).await?;
    let times = watch_nodes(&client);

    log(format!("{} nodes join with the gate taint", opts.nodes));
    create_nodes(&client, opts).await?;
    wait_plugins_ready(&client, opts).await?;

    log(format!(
        "their GPUs register over {} s",
        opts.register_over.as_secs()
    ));
    let scale_up = Instant::now();
    register_gpus(&client, opts).await?;
    let last_open = wait_all_open(&times, opts).await?;
    let scale_up_end = Instant::now();
    log(format!(
        "every node open {:.1} s after the first GPU registered",
        last_open.saturating_duration_since(scale_up).as_secs_f64()
    ));

    log(format!("quiet period: {} s", opts.quiet.as_secs()));
    let quiet_start = Instant::now();
    tokio::time::sleep(opts.quiet).await;
    let quiet_end = Instant::now();
    let operator = proc_stats(op.pid()).ok_or_else(|| Error::Command {
        what: "reading the operator's /proc entry".into(),
        detail: format!("process {} is gone", op.pid()),
    })?;
    // Counted once every request received so far is in the log (written in batches).
    crate::audit::flush(plane).await?;
    let audit = plane.audit_log_path();
    let samples = {
        let t = times.lock().unwrap_or_else(|e| e.into_inner());
        t.open
            .iter()
            .filter_map(|(node, open)| {
                Some(open.saturating_duration_since(*t.allocatable.get(node)?))
            })
            .collect()
    };
    Ok(GateReport {
        nodes: opts.nodes,
        register_over: opts.register_over,
        validation: opts.validation,
        allocatable_to_open: Latencies { samples },
        all_open: last_open.saturating_duration_since(scale_up),
        scale_up_requests: count_requests(&audit, user, scale_up, scale_up_end),
        quiet_requests: count_requests(&audit, user, quiet_start, quiet_end),
        quiet: opts.quiet,
        operator,
        versions: super::versions(&opts.operator)?,
        machine: machine(),
    })
}

async fn create_pool(client: &kube::Client, validation: bool) -> Result<(), Error> {
    let mut spec = serde_json::json!({
        "nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": AGENTPOOL}},
        "readinessGate": {"taintKey": GATE, "mode": "Bootstrap"},
    });
    if validation {
        spec["validation"] = serde_json::json!({"maxConcurrent": 100});
    }
    let pool: DynamicObject = setup::object(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": "GpuPool",
        "metadata": {"name": POOL},
        "spec": spec,
    }))?;
    Api::<DynamicObject>::all_with(client.clone(), &gpupool_resource())
        .create(&PostParams::default(), &pool)
        .await?;
    Ok(())
}

fn node_name(j: usize) -> String {
    format!("gate-node-{j}")
}

fn is_open(node: &Node) -> bool {
    !node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == GATE))
}

/// Records, per node, the first sight of allocatable GPUs and the first sight of the taint gone
/// after that.
fn watch_nodes(client: &kube::Client) -> Arc<Mutex<NodeTimes>> {
    let times = Arc::new(Mutex::new(NodeTimes::default()));
    let seen = times.clone();
    let api: Api<Node> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut events = watcher(
            api,
            watcher::Config::default()
                .labels(&format!("kubernetes.azure.com/agentpool={AGENTPOOL}")),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        while let Some(event) = events.next().await {
            let Ok(node) = event else { continue };
            let now = Instant::now();
            let name = node.metadata.name.clone().unwrap_or_default();
            let gpus = nodes::gpu_resources(&node).1.unwrap_or(0) > 0;
            let mut t = seen.lock().unwrap_or_else(|e| e.into_inner());
            if gpus {
                t.allocatable.entry(name.clone()).or_insert(now);
            }
            if gpus && is_open(&node) {
                t.open.entry(name).or_insert(now);
            }
        }
    });
    times
}

async fn create_nodes(client: &kube::Client, opts: &GateBenchOptions) -> Result<(), Error> {
    futures::stream::iter(0..opts.nodes)
        .map(|j| async move {
            let node = GpuNode::aks(&node_name(j), AGENTPOOL)
                .taint(GATE, "true", "NoSchedule")
                .no_gpus_yet();
            nodes::create_node(client, &node).await.map(drop)
        })
        .buffer_unordered(opts.create_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Every node Ready and its plugin pod ready: what happens before a plugin registers GPUs.
async fn wait_plugins_ready(client: &kube::Client, opts: &GateBenchOptions) -> Result<(), Error> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), PLUGIN_NAMESPACE);
    let name = format!("nvidia-device-plugin-{POOL}");
    let want = i32::try_from(opts.nodes).unwrap_or(i32::MAX);
    poll_until(
        "every plugin pod ready",
        opts.timeout,
        Duration::from_secs(1),
        || async {
            let ds = api.get_opt(&name).await.ok()??;
            (ds.status?.number_ready >= want).then_some(())
        },
    )
    .await?;
    log("every plugin pod is ready");
    Ok(())
}

/// Node j's GPUs register at `j / N` of the window.
async fn register_gpus(client: &kube::Client, opts: &GateBenchOptions) -> Result<(), Error> {
    let start = tokio::time::Instant::now();
    let n = opts.nodes as f64;
    futures::stream::iter(0..opts.nodes)
        .map(|j| async move {
            let due = start + opts.register_over.mul_f64(j as f64 / n);
            tokio::time::sleep_until(due).await;
            nodes::set_gpus(client, &node_name(j), 1, 1).await
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Waits until every node was seen open; returns when the last one was.
async fn wait_all_open(
    times: &Arc<Mutex<NodeTimes>>,
    opts: &GateBenchOptions,
) -> Result<Instant, Error> {
    poll_until(
        "every node's gate taint removed",
        opts.timeout,
        Duration::from_millis(100),
        || async {
            let t = times.lock().unwrap_or_else(|e| e.into_inner());
            (t.open.len() >= opts.nodes)
                .then(|| t.open.values().max().copied())
                .flatten()
        },
    )
    .await
}

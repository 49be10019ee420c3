//! The scale benchmark behind `cargo run --release -p testenv --bin bench`: a private control
//! plane with N kwok GPU nodes spread over P GpuPools, and the gpupool operator as its own
//! (release-built) process, measured from the outside.
//!
//! It reports
//! 1. pool created → its DaemonSet applied (p50/p99, first sight through a DaemonSet watch);
//! 2. a node's `nvidia.com/gpu` allocatable changed → the pool's status shows it (p50/p99, first
//!    sight through a GpuPool watch; one node at a time);
//! 3. operator cold start (every pool's status removed while it is down) → every pool's status
//!    current (observedGeneration == generation, counts correct);
//! 4. operator peak RSS (VmHWM) and CPU seconds (utime+stime), and the plane's CPU per component;
//! 5. API requests made by the operator, per verb and resource, in each phase and during a quiet
//!    period — from the API server's audit log: the operator runs as its own ServiceAccount and
//!    the audit policy records exactly that user's requests.
//!
//! The GpuPool API is used as plain JSON so that this crate does not depend on gpupool.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::nodes::{self, GpuNode};
use crate::{ChildProcess, ControlPlane, Options, http};

const PLUGIN_NAMESPACE: &str = "gpu-resources";
const OPERATOR_NAMESPACE: &str = "gpupool-bench";
const OPERATOR_SA: &str = "operator";
const POOL_PREFIX: &str = "bench-pool-";
const NODE_PREFIX: &str = "bench-node-";
const GPU_COUNTS: [u32; 4] = [1, 2, 4, 8];

/// What to run; also the `bench` command line (every field a flag, defaults here only).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bench", about = "gpupool at scale on a private control plane")]
pub struct BenchOptions {
    /// Simulated GPU nodes.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub nodes: usize,
    /// GpuPools; node j belongs to pool j mod P.
    #[arg(long, value_name = "P", default_value_t = 100)]
    pub pools: usize,
    /// Quiet period in which the operator's API requests are counted, in seconds.
    #[arg(long = "quiet-seconds", value_name = "S", default_value = "300", value_parser = seconds)]
    pub quiet: Duration,
    /// Nodes whose nvidia.com/gpu allocatable is changed, one at a time (down, then back up).
    #[arg(long, value_name = "K", default_value_t = 50)]
    pub samples: usize,
    /// Node creations in flight at once.
    #[arg(long, value_name = "C", default_value_t = 32)]
    pub create_concurrency: usize,
    /// Pause between pool creations, in milliseconds (0: back to back, as `kubectl apply -f dir/`).
    #[arg(long = "pool-interval-ms", value_name = "MS", default_value = "0", value_parser = millis)]
    pub pool_interval: Duration,
    /// The operator binary (a release build for real numbers).
    #[arg(long, value_name = "PATH", default_value_os_t = default_operator_binary())]
    pub operator: PathBuf,
    /// kwok node status heartbeat period, in seconds.
    #[arg(long = "heartbeat-seconds", value_name = "S", default_value = "60", value_parser = positive_seconds)]
    pub heartbeat: Duration,
    /// kwok node lease duration in seconds, renewed every quarter (the node lifecycle
    /// controller's grace period is raised to match).
    #[arg(long = "lease-seconds", value_name = "S", default_value_t = 240, value_parser = clap::value_parser!(u32).range(4..))]
    pub lease_seconds: u32,
    /// Upper bound for every wait, in seconds.
    #[arg(long = "timeout-seconds", value_name = "S", default_value = "900", value_parser = seconds)]
    pub timeout: Duration,
}

impl BenchOptions {
    /// The defaults of the command line with `nodes`, `pools` and the operator binary set.
    pub fn new(nodes: usize, pools: usize, operator: PathBuf) -> Self {
        use clap::Parser as _;
        BenchOptions {
            nodes,
            pools,
            operator,
            ..BenchOptions::parse_from(["bench"])
        }
    }
}

fn seconds(value: &str) -> Result<Duration, std::num::ParseIntError> {
    value.parse().map(Duration::from_secs)
}

fn millis(value: &str) -> Result<Duration, std::num::ParseIntError> {
    value.parse().map(Duration::from_millis)
}

fn positive_seconds(value: &str) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(s) => Ok(Duration::from_secs(s)),
        Err(e) => Err(e.to_string()),
    }
}

/// The operator binary of this workspace's release build.
pub fn default_operator_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/gpupool-operator")
}

/// p50/p99/max of a set of latencies.
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
    /// Nearest-rank percentile.
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
}

/// CPU seconds and peak RSS of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
}

/// Requests by (verb, resource[/subresource]).
pub type RequestCounts = BTreeMap<(String, String), u64>;

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub nodes: usize,
    pub pools: usize,
    pub setup_nodes: Duration,
    pub operator_synced: Duration,
    pub pool_to_daemonset: Latencies,
    /// From the first pool created to every pool's status current and correct.
    pub all_pools_current: Duration,
    pub plugin_pods_ready: Duration,
    pub gpu_change_to_status: Latencies,
    pub cold_start_synced: Duration,
    pub cold_start_current: Duration,
    /// The first operator process (phases 1, 2 and the quiet period).
    pub operator: ProcStats,
    /// The restarted operator, up to a few seconds after the cold start converged.
    pub operator_cold: ProcStats,
    pub quiet: Duration,
    /// Operator requests per phase: "pools", "gpu-changes", "quiet", "cold-start".
    pub requests: BTreeMap<&'static str, RequestCounts>,
    /// CPU seconds of each plane component and the operator, per phase.
    pub cpu: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// Reconciles counted by the operator's own metrics (first process), and their total time.
    pub reconciles: Option<(f64, f64)>,
}

impl Report {
    /// Writes counted by the operator during the quiet period.
    pub fn quiet_writes(&self) -> u64 {
        self.requests
            .get("quiet")
            .map(|c| {
                c.iter()
                    .filter(|((verb, _), _)| !matches!(verb.as_str(), "get" | "list" | "watch"))
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "gpupool benchmark: {} nodes, {} pools",
            self.nodes, self.pools
        )?;
        writeln!(
            f,
            "setup: {} nodes created in {:.1} s; operator caches synced {:.2} s after start",
            self.nodes,
            self.setup_nodes.as_secs_f64(),
            self.operator_synced.as_secs_f64()
        )?;
        let l = &self.pool_to_daemonset;
        writeln!(
            f,
            "1. pool created -> DaemonSet applied ({} pools): p50 {}, p99 {}, max {}",
            l.samples.len(),
            ms(l.p50()),
            ms(l.p99()),
            ms(l.max())
        )?;
        writeln!(
            f,
            "   first pool created -> every pool's status current: {:.2} s; every plugin pod ready: {:.1} s",
            self.all_pools_current.as_secs_f64(),
            self.plugin_pods_ready.as_secs_f64()
        )?;
        let l = &self.gpu_change_to_status;
        writeln!(
            f,
            "2. node nvidia.com/gpu allocatable changed -> pool status shows it ({} changes): p50 {}, p99 {}, max {}",
            l.samples.len(),
            ms(l.p50()),
            ms(l.p99()),
            ms(l.max())
        )?;
        writeln!(
            f,
            "3. cold start -> every pool's status current: {:.2} s (caches synced after {:.2} s)",
            self.cold_start_current.as_secs_f64(),
            self.cold_start_synced.as_secs_f64()
        )?;
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
            writeln!(
                f,
                "   reconciles (operator metrics, first process): {count:.0}, {seconds:.3} s in total ({:.2} ms each)",
                if count > 0.0 {
                    seconds * 1e3 / count
                } else {
                    0.0
                }
            )?;
        }
        writeln!(
            f,
            "5. operator API requests in a quiet period of {} s: {} writes",
            self.quiet.as_secs(),
            self.quiet_writes()
        )?;
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

fn gpupool_resource() -> ApiResource {
    ApiResource {
        group: "gpupool.io".into(),
        version: "v1alpha1".into(),
        api_version: "gpupool.io/v1alpha1".into(),
        kind: "GpuPool".into(),
        plural: "gpupools".into(),
    }
}

fn pool_name(i: usize) -> String {
    format!("{POOL_PREFIX}{i}")
}

fn node_name(j: usize) -> String {
    format!("{NODE_PREFIX}{j}")
}

fn agentpool(i: usize) -> String {
    format!("bench{i}")
}

/// What each pool's status must say, from the bench's own book-keeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Expected {
    nodes: i64,
    allocatable: i64,
}

/// The fields of a pool's status the bench checks.
#[derive(Debug, Clone, Default)]
struct Seen {
    generation: Option<i64>,
    observed_generation: Option<i64>,
    nodes: Option<i64>,
    allocatable: Option<i64>,
    plugin_desired: Option<i64>,
    plugin_ready: Option<i64>,
}

impl Seen {
    fn of(obj: &DynamicObject) -> Seen {
        let status = obj.data.get("status");
        let int = |path: &[&str]| {
            let mut v = status?;
            for p in path {
                v = v.get(p)?;
            }
            v.as_i64()
        };
        Seen {
            generation: obj.metadata.generation,
            observed_generation: int(&["observedGeneration"]),
            nodes: int(&["nodes"]),
            allocatable: int(&["gpusAllocatable"]),
            plugin_desired: int(&["devicePlugin", "desired"]),
            plugin_ready: int(&["devicePlugin", "ready"]),
        }
    }
    fn current(&self, want: &Expected) -> bool {
        self.observed_generation.is_some()
            && self.observed_generation == self.generation
            && self.nodes == Some(want.nodes)
            && self.allocatable == Some(want.allocatable)
    }
}

/// The latest state of every GpuPool, from a watch, with the time each change arrived.
#[derive(Default)]
struct PoolBoard {
    pools: Mutex<HashMap<String, (Seen, Instant)>>,
}

impl PoolBoard {
    fn get(&self, name: &str) -> Option<(Seen, Instant)> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}

fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        cpu_seconds: cpu_seconds(pid)?,
        peak_rss_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// Counts the operator's requests in the audit log that the API server received in
/// `[from, to)`. Watches count once, when their response started; everything else when it
/// completed.
fn count_requests(audit_log: &Path, user: &str, from: Instant, to: Instant) -> RequestCounts {
    // Audit timestamps are wall-clock: map the Instants onto the system clock.
    let now_i = Instant::now();
    let now_s = std::time::SystemTime::now();
    let wall = |i: Instant| {
        let before = now_i.saturating_duration_since(i);
        now_s - before
    };
    let (from_w, to_w) = (wall(from), wall(to));
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    let mut counts = RequestCounts::new();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev.pointer("/user/username").and_then(|v| v.as_str()) != Some(user) {
            continue;
        }
        let verb = ev.get("verb").and_then(|v| v.as_str()).unwrap_or("");
        let stage = ev.get("stage").and_then(|v| v.as_str()).unwrap_or("");
        let counted_stage = if verb == "watch" {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        if stage != counted_stage {
            continue;
        }
        let Some(received) = ev
            .get("requestReceivedTimestamp")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
        else {
            continue;
        };
        let received = std::time::SystemTime::from(received);
        if received < from_w || received >= to_w {
            continue;
        }
        let resource = ev
            .pointer("/objectRef/resource")
            .and_then(|v| v.as_str())
            .unwrap_or("(non-resource)");
        let resource = match ev
            .pointer("/objectRef/subresource")
            .and_then(|v| v.as_str())
        {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        *counts.entry((verb.to_owned(), resource)).or_insert(0) += 1;
    }
    counts
}

/// CPU seconds of every component and the operator right now.
fn cpu_snapshot(plane: &ControlPlane, operator: Option<u32>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, pid) in plane.component_pids() {
        if let Some(s) = cpu_seconds(pid) {
            *out.entry(name.to_owned()).or_insert(0.0) += s;
        }
    }
    if let Some(pid) = operator
        && let Some(s) = cpu_seconds(pid)
    {
        out.insert("gpupool-operator".into(), s);
    }
    // SAFETY: getrusage on RUSAGE_SELF with a valid out pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        out.insert(
            "bench (this process)".into(),
            secs(usage.ru_utime) + secs(usage.ru_stime),
        );
    }
    out
}

fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| {
            // A restarted process starts from zero.
            let base = before.get(k).copied().unwrap_or(0.0);
            (k.clone(), if *v >= base { v - base } else { *v })
        })
        .collect()
}

/// Waits until `f` returns Some, polling every `every`; errors naming `what` after `timeout`.
async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(every).await;
    }
}

struct Operator {
    process: ChildProcess,
    metrics_addr: String,
    started: Instant,
}

fn start_operator(
    plane: &ControlPlane,
    binary: &Path,
    kubeconfig: &Path,
    name: &str,
) -> Result<Operator, String> {
    let metrics_addr = format!(
        "127.0.0.1:{}",
        crate::free_port().map_err(|e| e.to_string())?
    );
    let mut cmd = std::process::Command::new(binary);
    cmd.env("KUBECONFIG", kubeconfig)
        .env("GPUPOOL_LOG", "info")
        .args(["run", "--metrics-addr", &metrics_addr]);
    let started = Instant::now();
    let process = ChildProcess::spawn(
        name,
        cmd,
        &plane.dir().join("logs").join(format!("{name}.log")),
    )
    .map_err(|e| format!("starting the operator {}: {e}", binary.display()))?;
    Ok(Operator {
        process,
        metrics_addr,
        started,
    })
}

/// Time from the operator's start until its /readyz says the caches are synced.
async fn wait_synced(op: &mut Operator, timeout: Duration) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = op.process.try_wait() {
            return Err(format!(
                "the operator exited ({status}):\n{}",
                op.process.log_tail(30)
            ));
        }
        if let Ok((200, _)) = http::get(&format!("http://{}/readyz", op.metrics_addr)).await {
            return Ok(op.started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the operator's caches did not sync within {timeout:?}:\n{}",
                op.process.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `controller_runtime_reconcile_total` summed and `controller_runtime_reconcile_time_seconds_sum`.
async fn reconcile_metrics(addr: &str) -> Option<(f64, f64)> {
    let (_, body) = http::get(&format!("http://{addr}/metrics")).await.ok()?;
    let sum = |prefix: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("controller_runtime_reconcile_total"),
        sum("controller_runtime_reconcile_time_seconds_sum"),
    ))
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Runs the benchmark. Progress goes to stderr; the report is returned.
pub async fn run(opts: BenchOptions) -> Result<Report, String> {
    if opts.pools == 0 || opts.nodes < opts.pools {
        return Err("need at least one pool and at least as many nodes as pools".into());
    }
    if !opts.operator.is_file() {
        return Err(format!(
            "operator binary {} not found: build it with `cargo build --release --bin gpupool-operator` or pass --operator",
            opts.operator.display()
        ));
    }
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}");
    let policy = format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n  users: [\"{user}\"]\n- level: None\n"
    );
    log("starting the control plane");
    let plane = ControlPlane::start_with(Options {
        node_status_heartbeat: opts.heartbeat,
        node_lease_duration_seconds: opts.lease_seconds,
        audit_policy: Some(policy),
        apiserver_args: Vec::new(),
        // Leases renewed every lease/4: give the node lifecycle controller matching patience,
        // or nodes go Unknown (and get tainted) merely because the plane is busy.
        controller_manager_args: vec![format!(
            "--node-monitor-grace-period={}s",
            (u64::from(opts.lease_seconds) * 3 / 4).max(40) + 60
        )],
    })
    .await
    .map_err(|e| e.to_string())?;
    let result = run_on(&plane, &opts, &user).await;
    if result.is_err() {
        log(format!("control plane logs:\n{}", plane.logs_tail(20)));
    }
    result
}

async fn run_on(plane: &ControlPlane, opts: &BenchOptions, user: &str) -> Result<Report, String> {
    let client = plane.client().await;
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/gpupool.yaml");
    plane
        .apply_crd(&crd, "gpupools.gpupool.io")
        .map_err(|e| e.to_string())?;
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in [PLUGIN_NAMESPACE, OPERATOR_NAMESPACE] {
        let body: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))
            .map_err(|e| e.to_string())?;
        ns_api
            .create(&PostParams::default(), &body)
            .await
            .map_err(|e| e.to_string())?;
    }
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": OPERATOR_SA}}))
            .map_err(|e| e.to_string())?;
    Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &sa)
        .await
        .map_err(|e| e.to_string())?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gpupool-bench-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}],
    }))
    .map_err(|e| e.to_string())?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .map_err(|e| e.to_string())?;
    let kubeconfig = plane
        .kubeconfig_for_service_account(OPERATOR_NAMESPACE, OPERATOR_SA)
        .await
        .map_err(|e| e.to_string())?;

    // Nodes: node j belongs to pool j % P, with 1, 2, 4 or 8 GPUs.
    let mut report = Report {
        nodes: opts.nodes,
        pools: opts.pools,
        quiet: opts.quiet,
        ..Report::default()
    };
    let mut gpus: Vec<(u32, u32)> = (0..opts.nodes)
        .map(|j| {
            let g = GPU_COUNTS[(j / opts.pools) % GPU_COUNTS.len()];
            (g, g)
        })
        .collect();
    log(format!("creating {} nodes", opts.nodes));
    let started = Instant::now();
    let created = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(0..opts.nodes)
        .map(|j| {
            let client = client.clone();
            let created = &created;
            let node = GpuNode::aks(&node_name(j), &agentpool(j % opts.pools))
                .gpus(gpus[j].0)
                .taint("sku", "gpu", "NoSchedule");
            async move {
                nodes::create_node(&client, &node)
                    .await
                    .map_err(|e| format!("creating node {}: {e}", node.name))?;
                let n = created.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    log(format!("  {n} nodes"));
                }
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(opts.create_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    report.setup_nodes = started.elapsed();
    log(format!(
        "nodes created in {:.1} s",
        report.setup_nodes.as_secs_f64()
    ));
    // kwok marks them Ready; wait for that so phase 1 does not race node initialisation.
    let node_api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    until(
        "every node Ready",
        opts.timeout,
        Duration::from_secs(1),
        || async {
            let mut ready = 0;
            let mut token: Option<String> = None;
            loop {
                let mut lp = ListParams::default().limit(1000);
                if let Some(t) = &token {
                    lp = lp.continue_token(t);
                }
                let full = node_api.list(&lp).await.ok()?;
                ready += full.items.iter().filter(|n| nodes::is_ready(n)).count();
                token = full.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
            (ready >= opts.nodes).then_some(())
        },
    )
    .await?;
    log("every node is Ready");

    // Watches: DaemonSets (first sight per name) and GpuPools (latest status per pool).
    let ds_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let ds_seen = ds_seen.clone();
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), PLUGIN_NAMESPACE);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(ds) = ev {
                    let now = Instant::now();
                    if let Some(name) = ds.metadata.name {
                        ds_seen
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(name)
                            .or_insert(now);
                    }
                }
            }
        });
    }
    let board = Arc::new(PoolBoard::default());
    {
        let board = board.clone();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &gpupool_resource());
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(obj) = ev {
                    let now = Instant::now();
                    if let Some(name) = obj.metadata.name.clone() {
                        board
                            .pools
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(name, (Seen::of(&obj), now));
                    }
                }
            }
        });
    }

    let expected = |gpus: &[(u32, u32)]| -> Vec<Expected> {
        let mut out = vec![Expected::default(); opts.pools];
        for (j, (_, alloc)) in gpus.iter().enumerate() {
            let e = &mut out[j % opts.pools];
            e.nodes += 1;
            e.allocatable += i64::from(*alloc);
        }
        out
    };

    log("starting the operator");
    let mut cpu_mark = cpu_snapshot(plane, None);
    let mut op = start_operator(plane, &opts.operator, &kubeconfig, "operator")?;
    report.operator_synced = wait_synced(&mut op, opts.timeout).await?;
    let op_pid = op.process.id();
    log(format!(
        "operator caches synced after {:.2} s",
        report.operator_synced.as_secs_f64()
    ));
    let mut phase_mark = op.started;
    let end_phase = |report: &mut Report,
                     cpu_mark: &mut BTreeMap<String, f64>,
                     name: &'static str,
                     pid: Option<u32>,
                     from: Instant| {
        let now = Instant::now();
        let snap = cpu_snapshot(plane, pid);
        report.cpu.insert(name, cpu_delta(cpu_mark, &snap));
        *cpu_mark = snap;
        (name, from, now)
    };
    let mut windows: Vec<(&'static str, Instant, Instant)> = Vec::new();
    windows.push(end_phase(
        &mut report,
        &mut cpu_mark,
        "0 operator start",
        Some(op_pid),
        phase_mark,
    ));

    // Phase 1: pools created back to back (or paced); DaemonSet first sight per pool.
    log(format!("phase 1: creating {} pools", opts.pools));
    phase_mark = Instant::now();
    let pools_api: Api<DynamicObject> = Api::all_with(client.clone(), &gpupool_resource());
    let mut created_at = Vec::with_capacity(opts.pools);
    let first_created = Instant::now();
    for i in 0..opts.pools {
        let body: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool",
            "metadata": {"name": pool_name(i)},
            "spec": {"nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": agentpool(i)}}},
        }))
        .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        pools_api
            .create(&PostParams::default(), &body)
            .await
            .map_err(|e| format!("creating pool {i}: {e}"))?;
        created_at.push(t0);
        if !opts.pool_interval.is_zero() {
            tokio::time::sleep(opts.pool_interval).await;
        }
    }
    let want = expected(&gpus);
    until(
        "a DaemonSet for every pool",
        opts.timeout,
        Duration::from_millis(20),
        || async {
            let seen = ds_seen.lock().unwrap_or_else(|e| e.into_inner());
            (0..opts.pools)
                .all(|i| seen.contains_key(&format!("nvidia-device-plugin-{}", pool_name(i))))
                .then_some(())
        },
    )
    .await?;
    {
        let seen = ds_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (i, t0) in created_at.iter().enumerate() {
            let at = seen[&format!("nvidia-device-plugin-{}", pool_name(i))];
            report
                .pool_to_daemonset
                .samples
                .push(at.saturating_duration_since(*t0));
        }
    }
    let last_current = until(
        "every pool's status current",
        opts.timeout,
        Duration::from_millis(20),
        || async {
            let mut last = first_created;
            for (i, w) in want.iter().enumerate() {
                let (seen, at) = board.get(&pool_name(i))?;
                if !seen.current(w) {
                    return None;
                }
                last = last.max(at);
            }
            Some(last)
        },
    )
    .await?;
    report.all_pools_current = last_current.saturating_duration_since(first_created);
    log(format!(
        "every pool current {:.2} s after the first was created; waiting for the plugin pods",
        report.all_pools_current.as_secs_f64()
    ));
    let pods_ready = until(
        "every plugin pod ready",
        opts.timeout,
        Duration::from_millis(200),
        || async {
            let mut last = first_created;
            for (i, w) in want.iter().enumerate() {
                let (seen, at) = board.get(&pool_name(i))?;
                if seen.plugin_ready != Some(w.nodes) || seen.plugin_desired != Some(w.nodes) {
                    return None;
                }
                last = last.max(at);
            }
            Some(last)
        },
    )
    .await?;
    report.plugin_pods_ready = pods_ready.saturating_duration_since(first_created);
    log(format!(
        "every plugin pod ready after {:.1} s",
        report.plugin_pods_ready.as_secs_f64()
    ));
    windows.push(end_phase(
        &mut report,
        &mut cpu_mark,
        "1 pools",
        Some(op_pid),
        phase_mark,
    ));

    // Phase 2: one node at a time, allocatable down by one until the pool shows it, then back
    // up until the pool shows that (so the cluster is healthy again for the quiet period).
    log(format!(
        "phase 2: changing nvidia.com/gpu allocatable on {} nodes (down, then back up)",
        opts.samples
    ));
    phase_mark = Instant::now();
    let stride = (opts.nodes / opts.samples.max(1)).max(1);
    for k in 0..opts.samples {
        let j = (k * stride + k % opts.pools) % opts.nodes;
        let (cap, alloc) = gpus[j];
        for new_alloc in [alloc - 1, alloc] {
            gpus[j] = (cap, new_alloc);
            let want = expected(&gpus)[j % opts.pools].clone();
            let pool = pool_name(j % opts.pools);
            let t0 = Instant::now();
            nodes::set_gpus(&client, &node_name(j), cap, new_alloc)
                .await
                .map_err(|e| format!("set_gpus {}: {e}", node_name(j)))?;
            let at = until(
                &format!("{pool} to show {} allocatable GPUs", want.allocatable),
                Duration::from_secs(60),
                Duration::from_millis(2),
                || async {
                    let (seen, at) = board.get(&pool)?;
                    (seen.allocatable == Some(want.allocatable) && at >= t0).then_some(at)
                },
            )
            .await?;
            report
                .gpu_change_to_status
                .samples
                .push(at.saturating_duration_since(t0));
        }
    }
    // Let every pool settle (statuses current, nothing in flight) before the quiet period.
    until(
        "every pool current after the GPU changes",
        opts.timeout,
        Duration::from_millis(100),
        || async {
            let want = expected(&gpus);
            (0..opts.pools)
                .all(|i| {
                    board
                        .get(&pool_name(i))
                        .is_some_and(|(s, _)| s.current(&want[i]))
                })
                .then_some(())
        },
    )
    .await?;
    windows.push(end_phase(
        &mut report,
        &mut cpu_mark,
        "2 gpu changes",
        Some(op_pid),
        phase_mark,
    ));

    // Quiet period: nothing changes but kwok's heartbeats.
    log(format!("quiet period: {} s", opts.quiet.as_secs()));
    phase_mark = Instant::now();
    tokio::time::sleep(opts.quiet).await;
    windows.push(end_phase(
        &mut report,
        &mut cpu_mark,
        "quiet",
        Some(op_pid),
        phase_mark,
    ));
    report.reconciles = reconcile_metrics(&op.metrics_addr).await;
    report.operator = proc_stats(op_pid).ok_or("cannot read the operator's /proc entry")?;

    // Phase 3: cold start. The operator dies, every status is removed, it starts again.
    log("phase 3: cold start");
    op.process.kill();
    for i in 0..opts.pools {
        pools_api
            .patch_status(
                &pool_name(i),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"status": null})),
            )
            .await
            .map_err(|e| format!("clearing the status of pool {i}: {e}"))?;
    }
    let want = expected(&gpus);
    until(
        "every status cleared",
        opts.timeout,
        Duration::from_millis(20),
        || async {
            (0..opts.pools)
                .all(|i| {
                    board
                        .get(&pool_name(i))
                        .is_some_and(|(s, _)| s.observed_generation.is_none())
                })
                .then_some(())
        },
    )
    .await?;
    cpu_mark = cpu_snapshot(plane, None);
    phase_mark = Instant::now();
    let mut op2 = start_operator(plane, &opts.operator, &kubeconfig, "operator-cold")?;
    let op2_pid = op2.process.id();
    let started2 = op2.started;
    let synced = wait_synced(&mut op2, opts.timeout);
    let current = until(
        "every pool's status current after the cold start",
        opts.timeout,
        Duration::from_millis(5),
        || async {
            let mut last = started2;
            for (i, w) in want.iter().enumerate() {
                let (seen, at) = board.get(&pool_name(i))?;
                if !seen.current(w) || at < started2 {
                    return None;
                }
                last = last.max(at);
            }
            Some(last)
        },
    );
    // Poll both: readiness is only for the report.
    let (synced, current) = tokio::join!(synced, current);
    report.cold_start_synced = synced?;
    report.cold_start_current = current?.saturating_duration_since(started2);
    // Let it settle a little, then read its resources.
    tokio::time::sleep(Duration::from_secs(3)).await;
    windows.push(end_phase(
        &mut report,
        &mut cpu_mark,
        "3 cold start",
        Some(op2_pid),
        phase_mark,
    ));
    report.operator_cold =
        proc_stats(op2_pid).ok_or("cannot read the restarted operator's /proc entry")?;
    // Audit batches are written every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let audit = plane.audit_log_path();
    for (name, from, to) in &windows {
        report
            .requests
            .insert(name, count_requests(&audit, user, *from, *to));
    }
    op2.process.stop(Duration::from_secs(5)).await;
    Ok(report)
}

//! The scale benchmark behind `cargo run --release -p testenv --bin bench`: a private control
//! plane with N kwok GPU nodes spread over P GpuPools, and the gpupool operator as its own
//! (release-built) process, measured from the outside.
//!
//! It reports
//! 1. pool created → its DaemonSet applied (p50/p99, first sight through a DaemonSet watch), for
//!    P pools created back to back and for `--spaced-pools` more created one a second;
//! 2. a node's `nvidia.com/gpu` allocatable changed → the pool's status shows it (p50/p99, first
//!    sight through a GpuPool watch; one node at a time);
//! 3. operator cold start (every pool's status removed while it is down) → every pool's status
//!    current (observedGeneration == generation, counts correct);
//! 4. operator peak RSS (VmHWM) and CPU seconds (utime+stime), and the plane's CPU per component;
//! 5. API requests made by the operator, per verb and resource, in each phase and during a quiet
//!    period — from the API server's audit log: the operator runs as its own ServiceAccount and
//!    the audit policy records exactly that user's requests;
//! 6. a GPU-verified plugin rollout: the nodes' GPUs follow their plugin pods from then on
//!    ([`crate::simulate::PluginGpus`] in this process), `--rollout-pools` pools get a new plugin
//!    image at once; until every one reports its rollout Complete, the most nodes of a pool
//!    without GPUs at once (from a Node watch), the requests per replaced node, the writes
//!    attributable to the pools not rolled (none expected); then one pool is rolled to a broken
//!    plugin and the time until it halts is measured.
//!
//! 7. with `--new-pool-nodes N`: a new pool over N nodes that had none (#26; `newpool.rs`): the
//!    floor (a plain DaemonSet of the plugin's pod template over the same nodes, run by the
//!    benchmark), then the time until the pool's plugin is Ready on every node, the operator's
//!    requests per node and CPU seconds until then, and one node's allocatable change in that big
//!    pool → its status.
//!
//! 8. with `--dra-nodes N`: a pool with `allocation: Dra` over N nodes that NVIDIA's GPU DRA
//!    driver serves (#23; `dra.rs`): the time until the driver runs on every node, then until the
//!    pool is Ready with every node's ResourceSlice counted, the operator's RSS before and after
//!    the slices (memory per slice), and its CPU and writes in a quiet period afterwards.
//!
//! `--pools 0` runs none of phases 1–6 (and creates no `--nodes`): only the phases turned on by
//! their own flags, e.g. `--pools 0 --new-pool-nodes 5000` or `--pools 0 --dra-nodes 5000`.
//!
//! `--json PATH` also writes a [`Summary`] of these numbers with stable keys, with the versions
//! measured and the machine measured on.

mod audit;
mod dra;
pub mod gate;
mod newpool;
mod observe;
mod operator;
mod phases;
mod pods;
mod procfs;
mod report;
mod rollout;
mod setup;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use report::{
    DraReport, DraSummary, GrowReport, GrowSummary, Latencies, Machine, MillisSummary,
    NewPoolReport, NewPoolSummary, ProcStats, Report, RequestCounts, RolloutReport, RolloutSummary,
    Summary, Versions, requests_per_node,
};

use crate::{ControlPlane, Error, Options};

const PLUGIN_NAMESPACE: &str = "gpu-resources";
const OPERATOR_NAMESPACE: &str = "gpupool-bench";
const OPERATOR_SA: &str = "operator";
const GPU_COUNTS: [u32; 4] = [1, 2, 4, 8];
/// The plugin image the pools are created with, the one the rollout brings, and a broken one
/// (registers no GPU: [`crate::simulate::BROKEN_PLUGIN_TAG`]).
const PLUGIN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0";
const ROLLOUT_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.0";
const BROKEN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.2-broken";
/// Pace of the spaced pools.
const SPACED_POOL_INTERVAL: Duration = Duration::from_secs(1);

/// What to run; also the `bench` command line (every field a flag, defaults here only).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "bench", about = "gpupool at scale on a private control plane")]
pub struct BenchOptions {
    /// Simulated GPU nodes.
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub nodes: usize,
    /// GpuPools; node j belongs to pool j mod P. 0: none of the pool phases (1-6) and no
    /// `--nodes`; only the phases turned on by their own flags (`--new-pool-nodes`,
    /// `--dra-nodes`).
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
    /// Extra pools created one a second after the burst (each selecting an agent pool without
    /// nodes), for the latency of a single change on a settled cluster.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub spaced_pools: usize,
    /// Also write a JSON summary with stable keys here (see [`Summary`]).
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Pools whose plugin image changes at once in the rollout phase (the first R; default half
    /// of --pools; 0: no rollout phase).
    #[arg(long, value_name = "R")]
    pub rollout_pools: Option<usize>,
    /// `spec.rollout.maxUnavailable` of the pools rolled.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub rollout_max_unavailable: u32,
    /// `spec.rollout.progressDeadlineSeconds` of the pool then rolled to a broken plugin (pool 0,
    /// maxUnavailable 1), which must halt at its first node (30-86400; 0: no halt case).
    #[arg(long = "halt-deadline-seconds", value_name = "S", default_value_t = 30)]
    pub halt_deadline_seconds: u32,
    /// Seconds with the simulated device manager following every node before the rollout starts:
    /// its CPU cost when nothing but heartbeats happens.
    #[arg(long = "rollout-idle-seconds", value_name = "S", default_value = "30", value_parser = seconds)]
    pub rollout_idle: Duration,
    /// The new-pool phase (last): N more GPU nodes of their own agent pool, a plain DaemonSet
    /// over them (the floor), then one GpuPool selecting them (0: no new-pool phase).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub new_pool_nodes: usize,
    /// Nodes of the new pool whose nvidia.com/gpu allocatable is changed, one at a time (down,
    /// then back up).
    #[arg(long, value_name = "K", default_value_t = 10)]
    pub new_pool_samples: usize,
    /// Then M more nodes join the new pool's agent pool: per node, created -> plugin Ready
    /// (0: not measured).
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub new_pool_grow: usize,
    /// The DRA phase (after the new-pool phase): N more GPU nodes served by NVIDIA's GPU DRA
    /// driver, one pool with `allocation: Dra` over them, then one ResourceSlice per node (0: no
    /// DRA phase).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub dra_nodes: usize,
    /// Quiet period after the DRA pool counted every slice, in seconds.
    #[arg(long = "dra-quiet-seconds", value_name = "S", default_value = "60", value_parser = seconds)]
    pub dra_quiet: Duration,
    /// Upper bound for every wait, in seconds.
    #[arg(long = "timeout-seconds", value_name = "S", default_value = "900", value_parser = seconds)]
    pub timeout: Duration,
}

impl BenchOptions {
    /// Pools rolled in the rollout phase.
    pub fn rolled_pools(&self) -> usize {
        self.rollout_pools.unwrap_or(self.pools / 2).min(self.pools)
    }

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

fn pool_name(i: usize) -> String {
    format!("bench-pool-{i}")
}

fn agentpool(i: usize) -> String {
    format!("bench{i}")
}

fn spaced_pool_name(k: usize) -> String {
    format!("bench-spaced-{k}")
}

fn spaced_agentpool(k: usize) -> String {
    format!("benchspaced{k}")
}

fn node_name(j: usize) -> String {
    format!("bench-node-{j}")
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Runs the benchmark. Progress goes to stderr; the report is returned (and written as JSON to
/// `--json`, if given).
pub async fn run(opts: BenchOptions) -> Result<Report, Error> {
    if opts.pools > 0 && opts.nodes < opts.pools {
        return Err(Error::Config {
            what: format!("--nodes {} --pools {}", opts.nodes, opts.pools),
            detail: "need at least as many nodes as pools".into(),
        });
    }
    if opts.pools == 0 && opts.new_pool_nodes == 0 && opts.dra_nodes == 0 {
        return Err(Error::Config {
            what: "--pools 0".into(),
            detail: "nothing to run: turn a phase on (--new-pool-nodes N, --dra-nodes N)".into(),
        });
    }
    if opts.halt_deadline_seconds != 0 && !(30..=86400).contains(&opts.halt_deadline_seconds) {
        return Err(Error::Config {
            what: format!("--halt-deadline-seconds {}", opts.halt_deadline_seconds),
            detail: "progressDeadlineSeconds is 30..86400 (or 0: no halt case)".into(),
        });
    }
    if !opts.operator.is_file() {
        return Err(Error::Config {
            what: format!("--operator {}", opts.operator.display()),
            detail: "not found: build it with `cargo build --release --bin gpupool-operator` or pass --operator".into(),
        });
    }
    let user = format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}");
    log("starting the control plane");
    let plane = ControlPlane::start_with(plane_options(&opts, &user)).await?;
    let result = measure(&plane, &opts, user).await;
    match &result {
        Ok(report) => {
            if let Some(path) = &opts.json {
                report.write_json(path)?;
            }
        }
        Err(_) => log(format!("control plane logs:\n{}", plane.logs_tail(20))),
    }
    result
}

/// Auditing of exactly the operator's requests, and kwok timings for thousands of nodes.
fn plane_options(opts: &BenchOptions, user: &str) -> Options {
    plane_options_for(opts.heartbeat, opts.lease_seconds, user)
}

fn plane_options_for(heartbeat: Duration, lease_seconds: u32, user: &str) -> Options {
    let policy = crate::audit::policy_for_user(user);
    Options {
        node_status_heartbeat: heartbeat,
        node_lease_duration_seconds: lease_seconds,
        audit_policy: Some(policy),
        // Leases renewed every lease/4: give the node lifecycle controller matching patience,
        // or nodes go Unknown (and get tainted) merely because the plane is busy.
        controller_manager_args: vec![format!(
            "--node-monitor-grace-period={}s",
            (u64::from(lease_seconds) * 3 / 4).max(40) + 60
        )],
        ..Options::default()
    }
}

/// Setup, then every phase.
async fn measure(plane: &ControlPlane, opts: &BenchOptions, user: String) -> Result<Report, Error> {
    let kubeconfig = setup::operator_identity(plane).await?;
    let client = plane.client().await;
    // Node j belongs to pool j % P, with 1, 2, 4 or 8 GPUs; no such nodes without pools.
    let nodes = if opts.pools == 0 { 0 } else { opts.nodes };
    let gpus: Vec<(u32, u32)> = (0..nodes)
        .map(|j| {
            let g = GPU_COUNTS[(j / opts.pools) % GPU_COUNTS.len()];
            (g, g)
        })
        .collect();
    let mut setup_nodes = Duration::ZERO;
    if nodes > 0 {
        setup_nodes = setup::create_nodes(&client, opts, &gpus).await?;
        setup::wait_nodes_ready(&client, opts).await?;
    }

    let mut bench = phases::Bench::new(plane, opts, client);
    bench.user = user;
    bench.gpus = gpus;
    bench.report = Report {
        nodes,
        pools: opts.pools,
        quiet: opts.quiet,
        setup_nodes,
        versions: versions(&opts.operator)?,
        machine: procfs::machine(),
        ..Report::default()
    };
    bench.run(&kubeconfig).await
}

/// The pinned plane versions from hack/versions.env, and the operator's own version.
fn versions(operator: &Path) -> Result<Versions, Error> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../versions.env");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
            .ok_or_else(|| Error::Config {
                what: path.display().to_string(),
                detail: format!("no {key}=..."),
            })
    };
    Ok(Versions {
        kubernetes: value("KUBERNETES_VERSION")?,
        etcd: value("ETCD_VERSION")?,
        kwok: value("KWOK_VERSION")?,
        gpupool: operator::version(operator)?,
    })
}

//! `gpupool-operator`: the command line.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use gpupool::client::operator_client;
use gpupool::controller::{self, RunOptions};
use gpupool::decide::plugin::daemonset::DEFAULT_PLUGIN_IMAGE;
use gpupool::decide::{DEFAULT_ALLOWED_PLUGIN_IMAGES, DEFAULT_ALLOWED_VALIDATION_IMAGES, Settings};
use gpupool::leader::{self, Fence};
use gpupool::server::{self, Health};
use gpupool::telemetry::Metrics;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Kubernetes operator that makes GPU node pools ready to run GPU work: it deploys the NVIDIA
/// device plugin to each GpuPool's nodes (unless their image ships one) and reports whether the
/// nodes' nvidia.com/gpu resources are schedulable.
#[derive(Parser, Debug)]
#[command(name = "gpupool-operator", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "GPUPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `gpupool=debug,kube=info`).
    #[arg(long, global = true, env = "GPUPOOL_LOG", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator against the cluster of $KUBECONFIG (or in-cluster config).
    Run(Box<RunArgs>),
    /// Print the GpuPool CustomResourceDefinition (YAML).
    Crd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace of the device-plugin DaemonSets (must exist).
    #[arg(
        long,
        env = "GPUPOOL_PLUGIN_NAMESPACE",
        default_value = "gpu-resources"
    )]
    plugin_namespace: String,
    /// Device plugin image for pools whose spec.devicePlugin.image is unset.
    #[arg(long, env = "GPUPOOL_DEFAULT_PLUGIN_IMAGE", default_value = DEFAULT_PLUGIN_IMAGE)]
    default_plugin_image: String,
    /// Image repositories a device plugin image may come from (comma-separated, no tag). The
    /// plugin decides what other pods' containers get on a node: whoever picks its image owns
    /// the node, so a pool naming an image from elsewhere is Stalled (ImageNotAllowed).
    #[arg(long, env = "GPUPOOL_ALLOWED_PLUGIN_IMAGES", value_delimiter = ',', default_values_t = DEFAULT_ALLOWED_PLUGIN_IMAGES.map(String::from))]
    allowed_plugin_images: Vec<String>,
    /// Image repositories a validation image (spec.validation.image) may come from.
    #[arg(long, env = "GPUPOOL_ALLOWED_VALIDATION_IMAGES", value_delimiter = ',', default_values_t = DEFAULT_ALLOWED_VALIDATION_IMAGES.map(String::from))]
    allowed_validation_images: Vec<String>,
    /// The first wait before a failed validation is tried again on a node (it doubles after
    /// every failure, up to 10 minutes).
    #[arg(long, env = "GPUPOOL_VALIDATION_RETRY", default_value = "30s", value_parser = humantime::parse_duration)]
    validation_retry: Duration,
    /// Node writes (device-plugin labels, readiness-gate taints) per second, over all pools, at
    /// most: the API server's 429s halve it for a while.
    #[arg(long, env = "GPUPOOL_NODE_WRITES_PER_SECOND", default_value_t = 200)]
    node_writes_per_second: u32,
    /// Node writes allowed in a burst above that rate.
    #[arg(long, env = "GPUPOOL_NODE_WRITE_BURST", default_value_t = 400)]
    node_write_burst: u32,
    /// How long a node that joined may have no nvidia.com/gpu before it counts as failed rather
    /// than progressing (GPUs can take minutes to register).
    #[arg(long, env = "GPUPOOL_GPU_GRACE_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    gpu_grace_period: Duration,
    /// How long the plugin DaemonSet may take to get every pod updated and ready before the pool
    /// reports it stuck (a missing PriorityClass, image pull errors, crash loops) instead of progressing.
    #[arg(long, env = "GPUPOOL_ROLLOUT_DEADLINE", default_value = "5m", value_parser = humantime::parse_duration)]
    rollout_deadline: Duration,
    /// Every pool is re-checked at least this often, even without events.
    #[arg(long, env = "GPUPOOL_RESYNC_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Pools reconciled at once: a cold start or a resync reconciles every pool, and a bound
    /// keeps the memory of that peak small.
    #[arg(long, env = "GPUPOOL_MAX_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Threads that run the operator's work. 1 (the default) runs everything on one thread:
    /// watch events cost no cross-thread wake-ups, which is most of an idle operator's CPU;
    /// more only help a very busy operator with a CPU limit above one core.
    #[arg(long, env = "GPUPOOL_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    worker_threads: u16,
    /// How the watches get their initial state: `auto` streams it (Kubernetes' WatchList, on by
    /// default from 1.34) where the API server is 1.34 or later and pages it elsewhere; `on` and
    /// `off` force one way (`off` for an API server with the WatchList feature turned off).
    #[arg(long, env = "GPUPOOL_WATCH_LIST", value_enum, default_value_t = WatchListArg::Auto)]
    watch_list: WatchListArg,
    /// A pool's first node, DaemonSet or pod event is handled at once; further events within
    /// this window are coalesced into one more reconcile at its end.
    #[arg(long, env = "GPUPOOL_DEBOUNCE", default_value = "200ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "GPUPOOL_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Elect a leader through a Lease, so that of several replicas only one writes.
    #[arg(long, env = "GPUPOOL_LEADER_ELECT", default_value_t = false)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "GPUPOOL_LEASE_NAME", default_value = "gpupool-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (defaults to $POD_NAMESPACE, else gpupool-system).
    #[arg(long, env = "GPUPOOL_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long a leader's Lease stays valid without renewal; a standby takes over after it.
    #[arg(long, env = "GPUPOOL_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long in-flight reconciles get to finish after SIGTERM or once leadership is lost.
    #[arg(long, env = "GPUPOOL_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// How long one API request (other than a watch) may take before it is given up; writes
    /// also end when the leader's renew deadline does.
    #[arg(long, env = "GPUPOOL_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Label selector of the NVIDIA GPU DRA driver's kubelet plugin pods (any namespace): a DRA
    /// node serves GPUs only while the driver's pod there is ready.
    #[arg(long, env = "GPUPOOL_DRA_DRIVER_POD_SELECTOR", default_value = controller::DEFAULT_DRA_DRIVER_POD_SELECTOR)]
    dra_driver_pod_selector: String,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum WatchListArg {
    Auto,
    On,
    Off,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(args) => usize::from(args.worker_threads),
        _ => 1,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(async_main(cli)),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn async_main(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Crd => match gpupool::crd::crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot serialize the CRD: {e}");
                std::process::ExitCode::from(1)
            }
        },
        Command::Run(args) => {
            init_logging(cli.log_format, &cli.log_level);
            match run(*args).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    std::process::ExitCode::from(1)
                }
            }
        }
    }
}

/// What a stop request is awaited on.
type Stop = tokio::sync::watch::Receiver<bool>;

async fn stopped(mut stop: Stop) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn run(args: RunArgs) -> Result<(), String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot reach the cluster (KUBECONFIG or in-cluster config): {e}"))?;
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gpupool".into());
        format!("{host}-{}", std::process::id())
    });
    info!(
        plugin_namespace = %args.plugin_namespace,
        default_plugin_image = %args.default_plugin_image,
        leader_elect = args.leader_elect,
        %identity,
        "gpupool-operator {} starting", env!("CARGO_PKG_VERSION")
    );
    let options = run_options(&args, &identity)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let signalled = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signalled.send(true);
    });
    let listener = server::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("cannot listen on --metrics-addr {}: {e}", args.metrics_addr))?;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let server = tokio::spawn(server::serve(
        listener,
        options.metrics.clone(),
        options.health.clone(),
        stopped(stop.clone()),
    ));
    let fence = if args.leader_elect {
        Fence::closed()
    } else {
        Fence::always_open()
    };
    let client = operator_client(config.clone(), fence.clone(), args.request_timeout)
        .map_err(|e| format!("cannot build an API client: {e}"))?;
    let result = if args.leader_elect {
        // The Lease's own client: never fenced (it renews what opens the fence), bounded alike.
        let lease_client = operator_client(config, Fence::always_open(), args.request_timeout)
            .map_err(|e| format!("cannot build an API client: {e}"))?;
        let result = lead(&args, identity, lease_client, fence, client, options, stop).await;
        // Leadership lost: the endpoint stops too (it answers for a leader no more).
        let _ = stop_tx.send(true);
        result
    } else {
        options
            .health
            .leadership_known
            .store(true, Ordering::Release);
        options.health.leader.store(true, Ordering::Release);
        options.metrics.set_leader(true);
        run_controller(client, options, stopped(stop), args.shutdown_timeout).await;
        Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    info!("gpupool-operator stopped");
    result
}

fn run_options(args: &RunArgs, identity: &str) -> Result<RunOptions, String> {
    let settings = Settings {
        plugin_namespace: args.plugin_namespace.clone(),
        default_plugin_image: args.default_plugin_image.clone(),
        gpu_grace_period: args.gpu_grace_period,
        rollout_deadline: args.rollout_deadline,
        allowed_plugin_images: args.allowed_plugin_images.clone(),
        // A write the API server refused is not retried sooner (unless the spec changes).
        stall_retry: Duration::from_secs(60),
        allowed_validation_images: args.allowed_validation_images.clone(),
        validation_retry: args.validation_retry,
    };
    if !settings.image_allowed(&args.default_plugin_image) {
        return Err(format!(
            "--default-plugin-image {} is not from an allowed repository (--allowed-plugin-images {})",
            args.default_plugin_image,
            args.allowed_plugin_images.join(",")
        ));
    }
    Ok(RunOptions {
        settings,
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::default()),
        instance: Some(identity.to_string()),
        resync: args.resync_period,
        debounce: args.debounce,
        concurrency: args.max_concurrent_reconciles,
        node_writes_per_second: args.node_writes_per_second,
        node_write_burst: args.node_write_burst,
        dra_driver_pods: args.dra_driver_pod_selector.clone(),
        watch_list: match args.watch_list {
            WatchListArg::Auto => controller::WatchList::Auto,
            WatchListArg::On => controller::WatchList::On,
            WatchListArg::Off => controller::WatchList::Off,
        },
    })
}

/// With leader election: waits for the Lease, runs the controller while it is held (its writes
/// fenced by the renew deadline), and exits when it is lost.
async fn lead(
    args: &RunArgs,
    identity: String,
    lease_client: kube::Client,
    fence: Arc<Fence>,
    client: kube::Client,
    options: RunOptions,
    stop: Stop,
) -> Result<(), String> {
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "gpupool-system".into());
    let duration = args.lease_duration.as_secs().max(2);
    let grace = (duration / 3).max(1);
    let lease = format!("{namespace}/{}", args.lease_name);
    let manager = LeaseManagerBuilder::new(lease_client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(|e| format!("leader election: cannot use Lease {lease}: {e}"))?;
    let deadline =
        leader::renew_deadline(Duration::from_secs(duration), Duration::from_secs(grace));
    tokio::spawn(leader::fence_on_lease(
        lease_client,
        namespace,
        args.lease_name.clone(),
        identity,
        deadline,
        fence.clone(),
    ));
    let (leading, lease_task) = manager.watch().await;
    options
        .health
        .leadership_known
        .store(true, Ordering::Release);
    info!(%lease, "waiting for leadership");
    let outcome = lead_while_leader(
        args,
        leading.clone(),
        &fence,
        deadline,
        client,
        options,
        stop,
    )
    .await;
    if outcome.is_err() {
        // Lost: another replica may lead already, and the API server may be out of reach.
        lease_task.abort();
        return outcome;
    }
    // Closing the channel releases the Lease, so a standby takes over without waiting for expiry.
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("released the leader Lease"),
        Ok(Ok(Err(e))) => warn!("releasing the leader Lease: {e}"),
        _ => warn!("releasing the leader Lease timed out"),
    }
    outcome
}

/// Once leader, runs the controller until the Lease is lost or a stop is requested; a lost
/// Lease is an error (this replica restarts as a standby). Lost means another replica holds it,
/// or this one's renew deadline passed without a renewal (cut off from the API server).
async fn lead_while_leader(
    args: &RunArgs,
    mut leading: tokio::sync::watch::Receiver<bool>,
    fence: &Arc<Fence>,
    deadline: Duration,
    client: kube::Client,
    options: RunOptions,
    stop: Stop,
) -> Result<(), String> {
    let became_leader = tokio::select! {
        r = leading.wait_for(|leader| *leader) => r.is_ok(),
        _ = stopped(stop.clone()) => false,
    };
    if !became_leader {
        return Ok(());
    }
    info!("became leader");
    options.health.leader.store(true, Ordering::Release);
    options.metrics.set_leader(true);
    let stop_for_lost = stop.clone();
    let metrics = options.metrics.clone();
    let fence = fence.clone();
    let lost_or_stopped = async move {
        tokio::select! {
            _ = leading.wait_for(|leader| !*leader) => {},
            _ = fence.lost(deadline) => warn!("no Lease renewal within the renew deadline: leadership lost"),
            _ = stopped(stop_for_lost) => {},
        }
        // From here on the controller winds down and the Lease is about to go: this replica
        // no longer counts as the leader, even while in-flight reconciles finish.
        metrics.set_leader(false);
    };
    run_controller(client, options, lost_or_stopped, args.shutdown_timeout).await;
    if *stop.borrow() {
        Ok(())
    } else {
        // Another replica may be writing already: stop at once and restart as a standby.
        Err("lost leadership; exiting so that this replica restarts as a standby".to_string())
    }
}

/// Runs the controller until `until` resolves (a stop request, or leadership lost); then
/// in-flight reconciles get `grace` to finish.
async fn run_controller(
    client: kube::Client,
    options: RunOptions,
    until: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    grace: Duration,
) {
    let (ended_tx, mut ended) = tokio::sync::watch::channel(false);
    let until = async move {
        until.await;
        let _ = ended_tx.send(true);
    };
    let controller = controller::run(client, options, until);
    tokio::pin!(controller);
    tokio::select! {
        _ = &mut controller => return,
        _ = ended.wait_for(|e| *e) => {},
    }
    if tokio::time::timeout(grace, controller).await.is_err() {
        warn!("in-flight reconciles did not finish within {grace:?}; exiting anyway");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    info!("shutdown requested; finishing in-flight reconciles");
}

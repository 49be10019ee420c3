//! `gpupool-operator`: the command line.

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use gpupool::controller::{self, RunOptions};
use gpupool::decide::Settings;
use gpupool::decide::daemonset::DEFAULT_PLUGIN_IMAGE;
use tracing::info;
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
    Run(RunArgs),
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
    /// How long a node that joined may have no nvidia.com/gpu before it counts as failed rather
    /// than progressing (GPUs can take minutes to register).
    #[arg(long, env = "GPUPOOL_GPU_GRACE_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    gpu_grace_period: Duration,
    /// Every pool is re-checked at least this often, even without events.
    #[arg(long, env = "GPUPOOL_RESYNC_PERIOD", default_value = "10m", value_parser = humantime::parse_duration)]
    resync_period: Duration,
    /// Node events within this window are coalesced into one reconcile per pool.
    #[arg(long, env = "GPUPOOL_DEBOUNCE", default_value = "200ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Human,
    Json,
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", gpupool::crd::crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(cli.log_format, &cli.log_level);
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!(
                        "gpupool-operator: cannot reach the cluster (KUBECONFIG or in-cluster config): {e}"
                    );
                    return std::process::ExitCode::from(2);
                }
            };
            info!(
                plugin_namespace = %args.plugin_namespace,
                default_plugin_image = %args.default_plugin_image,
                "gpupool-operator {} starting", env!("CARGO_PKG_VERSION")
            );
            let options = RunOptions {
                settings: Settings {
                    plugin_namespace: args.plugin_namespace,
                    default_plugin_image: args.default_plugin_image,
                    gpu_grace_period: args.gpu_grace_period,
                },
                resync: args.resync_period,
                debounce: args.debounce,
            };
            controller::run(client, options, shutdown_signal()).await;
            info!("gpupool-operator stopped");
            std::process::ExitCode::SUCCESS
        }
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

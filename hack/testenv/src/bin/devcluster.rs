//! `devcluster`: a small simulated AKS cluster on a private control plane, for demos and manual
//! testing of gpupool.
//!
//! ```text
//! cargo run -p testenv --bin devcluster -- [--state-dir DIR] [--register-gpus-after SECONDS]
//!                                          [--ready-file PATH]
//! ```
//!
//! Nodes:
//! - `system` pool: 2 CPU nodes;
//! - `gpu` pool: 3 standard-image GPU nodes tainted `sku=gpu:NoSchedule`, 1 GPU each, registered
//!   without `nvidia.com/gpu` until `--register-gpus-after` seconds have passed (what a device
//!   plugin coming up does);
//! - `gpuspecial` pool: 2 GPU nodes on the GPU-dedicated AKS image, 1 GPU each, registered.
//! - `gpugated` pool: 3 standard-image GPU nodes that join with the readiness gate taint
//!   `gpupool.io/gpu-not-ready:NoSchedule` (as AKS node initialization taints or Karpenter
//!   `startupTaints` put it), their GPUs registering like the `gpu` pool's; the third node's GPU
//!   is broken: its validation pods fail with the CUDA sample's error (label
//!   `gpupool.io/simulate-validation=fail`).
//! - `gpuh100` pool: 2 `Standard_ND96isr_H100_v5` nodes (8 H100 each); one shows 7 of its 8
//!   GPUs (one fell off the bus), which gpupool catches from the VM size alone.
//! - `gpuroll` pool: 3 `Standard_NC12s_v3` nodes (2 GPUs each) tainted `sku=gpu:NoSchedule`
//!   whose GPUs follow their device-plugin pod, as [`testenv::simulate::PluginGpus`] plays the
//!   kubelet's device manager: a node shows its GPUs only while a plugin pod runs there, none
//!   while it is replaced, and a plugin whose image tag contains
//!   [`testenv::simulate::BROKEN_PLUGIN_TAG`] registers none usable (NVIDIA k8s-device-plugin
//!   #1645), for the demo's GPU-verified rollouts.
//! - `gpudra` pool: 2 `Standard_ND96isr_H100_v5` nodes for DRA (8 H100 each, no
//!   `nvidia.com/gpu`, NFD's NVIDIA PCI label) joining with the readiness gate's taint; NVIDIA's
//!   GPU DRA driver is installed as its chart would be with the README's values (DeviceClasses,
//!   the kubelet-plugin DaemonSet in `dra-driver-nvidia-gpu`, selecting the nodes gpupool labels
//!   `gpupool.io/dra=gpudra`, tolerating the gate's and the AKS `sku` taint), and
//!   [`testenv::simulate::dra::DraDriver`] publishes a node's GPUs as ResourceSlices while the
//!   driver's pod runs there.
//!
//! GPU validation pods (`app.kubernetes.io/component=gpu-validation`) finish after 3 s with the
//! CUDA sample's "Test PASSED", as [`testenv::simulate::ValidationPods`] plays their kubelet;
//! deleted device-plugin pods take 3 s to terminate.
//!
//! The admin kubeconfig is written to `<state-dir>/kubeconfig` (and printed); `--ready-file` gets
//! the kubeconfig path once everything is up, so a script can wait for that file. Ctrl-C or
//! SIGTERM tears everything down (and the kernel kills the control plane should this process die
//! any other way).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use testenv::nodes::{self, GpuNode};
use testenv::simulate::dra::{self, DraDriver, DraGpus};
use testenv::simulate::{PluginGpus, SIMULATE_VALIDATION_LABEL, ValidationPods};
use testenv::{ControlPlane, Error};

/// A small simulated AKS cluster on a private control plane, for demos and manual testing of
/// gpupool. Ctrl-C or SIGTERM tears everything down.
#[derive(Debug, Parser)]
#[command(name = "devcluster")]
struct Args {
    /// Where to write the kubeconfig (default: a temp dir, removed on exit).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// When the 'gpu' pool's device plugin "registers" nvidia.com/gpu=1, in seconds (fractions
    /// allowed, not negative).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds)]
    register_gpus_after: Duration,
    /// Write the kubeconfig path here once the cluster is up.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("not a non-negative number of seconds: {value}"))
}

const SYSTEM_NODES: [&str; 2] = [
    "aks-system-31415926-vmss000000",
    "aks-system-31415926-vmss000001",
];
const GPU_NODES: [&str; 3] = [
    "aks-gpu-27182818-vmss000000",
    "aks-gpu-27182818-vmss000001",
    "aks-gpu-27182818-vmss000002",
];
const SPECIAL_NODES: [&str; 2] = [
    "aks-gpuspecial-16180339-vmss000000",
    "aks-gpuspecial-16180339-vmss000001",
];
const GATED_NODES: [&str; 3] = [
    "aks-gpugated-14142135-vmss000000",
    "aks-gpugated-14142135-vmss000001",
    "aks-gpugated-14142135-vmss000002",
];
const H100_NODES: [&str; 2] = [
    "aks-gpuh100-17320508-vmss000000",
    "aks-gpuh100-17320508-vmss000001",
];
const ROLL_NODES: [&str; 3] = [
    "aks-gpuroll-22360679-vmss000000",
    "aks-gpuroll-22360679-vmss000001",
    "aks-gpuroll-22360679-vmss000002",
];
/// The nodes whose GPUs follow their plugin pod ([`PluginGpus`]).
const ROLL_SELECTOR: &str = "kubernetes.azure.com/agentpool=gpuroll";
const DRA_NODES: [&str; 2] = [
    "aks-gpudra-24494897-vmss000000",
    "aks-gpudra-24494897-vmss000001",
];
/// The nodes the simulated DRA driver serves ([`DraDriver`]).
const DRA_SELECTOR: &str = "kubernetes.azure.com/agentpool=gpudra";
/// What gpupool labels a node of the `gpudra` pool with once no plugin pod is left on it
/// (`gpupool.io/dra=<pool>`): the driver's kubelet plugin selects its nodes by it, as the
/// README's chart values do.
const DRA_NODE_LABEL: (&str, &str) = ("gpupool.io/dra", "gpudra");
/// The gate's taint, on the gated pools' nodes when they join.
const GATE_TAINT: &str = "gpupool.io/gpu-not-ready";
/// The H100 node with one GPU missing.
const SHORT_NODE: &str = "aks-gpuh100-17320508-vmss000001";
/// The node whose GPU fails validation.
const BROKEN_NODE: &str = "aks-gpugated-14142135-vmss000002";

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devcluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    // Listen for signals first, so a Ctrl-C during startup also tears down cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("listening for SIGTERM", e))?;

    let (_temp_state, state_dir) = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating state dir {}", dir.display()), e))?;
            (None, dir.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("gpupool-devcluster-")
                .tempdir()
                .map_err(|e| Error::io("creating a temp state dir", e))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };

    eprintln!("devcluster: starting the control plane...");
    let started = std::time::Instant::now();
    let plane = tokio::select! {
        plane = ControlPlane::start() => plane?,
        _ = tokio::signal::ctrl_c() => return Err(Error::Interrupted("starting the control plane")),
        _ = sigterm.recv() => return Err(Error::Interrupted("starting the control plane")),
    };
    eprintln!(
        "devcluster: control plane up in {:.1?} (logs in {})",
        started.elapsed(),
        plane.dir().join("logs").display()
    );

    let result = serve(&plane, &args, &state_dir, &mut sigterm).await;
    if let Some(ready) = &args.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    if result.is_err() {
        eprintln!("{}", plane.logs_tail(15));
    }
    eprintln!("devcluster: stopping the control plane");
    drop(plane);
    result
}

async fn serve(
    plane: &ControlPlane,
    args: &Args,
    state_dir: &Path,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<(), Error> {
    let client = plane.client().await;
    create_nodes(&client).await?;
    wait_nodes_ready(&client).await?;
    lose_one_gpu(&client).await?;
    // GPU validation pods finish as on real GPU nodes (see testenv::simulate).
    let _validation = ValidationPods::spawn(client.clone());
    // The 'gpuroll' nodes' GPUs follow their plugin pods from the start.
    let plugin_gpus = PluginGpus::spawn_selecting(client.clone(), ROLL_SELECTOR);
    plugin_gpus.wait_synced(Duration::from_secs(60)).await?;
    // NVIDIA's GPU DRA driver, for the 'gpudra' nodes gpupool hands to it.
    install_dra_driver(&client).await?;
    let _dra_driver = DraDriver::spawn_selecting(client.clone(), DRA_SELECTOR);

    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::copy(plane.kubeconfig_path(), &kubeconfig)
        .map_err(|e| Error::io(format!("writing {}", kubeconfig.display()), e))?;
    println!("{}", kubeconfig.display());
    println!("export KUBECONFIG={}", kubeconfig.display());
    if let Some(ready) = &args.ready_file {
        write_atomically(ready, &format!("{}\n", kubeconfig.display()))?;
    }
    eprintln!(
        "devcluster: {} nodes ready; the 'gpu' pool registers its GPUs in {:?}. Ctrl-C to stop.",
        SYSTEM_NODES.len()
            + GPU_NODES.len()
            + SPECIAL_NODES.len()
            + GATED_NODES.len()
            + H100_NODES.len()
            + ROLL_NODES.len()
            + DRA_NODES.len(),
        args.register_gpus_after
    );

    let register = async {
        tokio::time::sleep(args.register_gpus_after).await;
        for name in GPU_NODES.iter().chain(&GATED_NODES) {
            nodes::set_gpus(&client, name, 1, 1).await?;
        }
        eprintln!("devcluster: device plugin registered nvidia.com/gpu=1 on the 'gpu' pool");
        Ok::<(), Error>(())
    };
    tokio::pin!(register);
    let mut registered = false;
    loop {
        tokio::select! {
            r = &mut register, if !registered => {
                r?;
                registered = true;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

async fn create_nodes(client: &kube::Client) -> Result<(), Error> {
    for name in SYSTEM_NODES {
        nodes::create_cpu_node(client, name, "system").await?;
    }
    for name in GPU_NODES {
        let node = GpuNode::aks(name, "gpu")
            .taint("sku", "gpu", "NoSchedule")
            .no_gpus_yet();
        nodes::create_node(client, &node).await?;
    }
    for name in SPECIAL_NODES {
        nodes::create_node(client, &GpuNode::aks(name, "gpuspecial").specialized()).await?;
    }
    for name in GATED_NODES {
        let mut node = GpuNode::aks(name, "gpugated")
            .instance_type("Standard_NC24ads_A100_v4")
            .taint(GATE_TAINT, "true", "NoSchedule")
            .no_gpus_yet();
        if name == BROKEN_NODE {
            node = node.label(SIMULATE_VALIDATION_LABEL, "fail");
        }
        nodes::create_node(client, &node).await?;
    }
    for name in H100_NODES {
        let node = GpuNode::aks(name, "gpuh100")
            .instance_type("Standard_ND96isr_H100_v5")
            .gpus(8);
        nodes::create_node(client, &node).await?;
    }
    for name in ROLL_NODES {
        let node = GpuNode::aks(name, "gpuroll")
            .instance_type("Standard_NC12s_v3")
            .gpus(2)
            .taint("sku", "gpu", "NoSchedule")
            .gpus_follow_plugin();
        nodes::create_node(client, &node).await?;
    }
    for name in DRA_NODES {
        let node = dra::dra_node(name, "gpudra", 8)
            .instance_type("Standard_ND96isr_H100_v5")
            .taint(GATE_TAINT, "true", "NoSchedule");
        dra::create_dra_node(client, &node, &DraGpus::h100_80gb(8)).await?;
    }
    Ok(())
}

/// The DRA driver's cluster pieces as `helm install` with the README's values puts them: its
/// kubelet plugin goes only where gpupool hands a node to it, and tolerates the AKS GPU taint
/// and the readiness gate's (it must run on a gated node to open it).
async fn install_dra_driver(client: &kube::Client) -> Result<(), Error> {
    let install = dra::Install::default()
        .node_selector(DRA_NODE_LABEL.0, DRA_NODE_LABEL.1)
        .tolerate("sku")
        .tolerate(GATE_TAINT);
    dra::install(client, &install).await
}

/// One GPU fell off the bus: the plugin still counts 8, one is not allocatable. Written once the
/// node is Ready (kwok's initialization rewrites a new node's status, and could undo it), and
/// again until the node shows it.
async fn lose_one_gpu(client: &kube::Client) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    testenv::poll_until(
        "the short H100 node to show 7 allocatable GPUs",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            nodes::set_gpus(client, SHORT_NODE, 8, 7).await.ok()?;
            let node = api.get(SHORT_NODE).await.ok()?;
            let allocatable = node.status?.allocatable?;
            (allocatable.get("nvidia.com/gpu")?.0 == "7").then_some(())
        },
    )
    .await
}

async fn wait_nodes_ready(client: &kube::Client) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    let every = Duration::from_millis(200);
    testenv::poll_until(
        "every node to be Ready",
        Duration::from_secs(60),
        every,
        || async {
            let list = api.list(&Default::default()).await.ok()?;
            list.items.iter().all(nodes::is_ready).then_some(())
        },
    )
    .await
}

fn write_atomically(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

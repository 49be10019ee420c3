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
//!
//! The admin kubeconfig is written to `<state-dir>/kubeconfig` (and printed); `--ready-file` gets
//! the kubeconfig path once everything is up, so a script can wait for that file. Ctrl-C or
//! SIGTERM tears everything down (and the kernel kills the control plane should this process die
//! any other way).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use testenv::ControlPlane;
use testenv::nodes::{self, GpuNode};

const USAGE: &str =
    "usage: devcluster [--state-dir DIR] [--register-gpus-after SECONDS] [--ready-file PATH]

  --state-dir DIR              where to write the kubeconfig (default: a temp dir, removed on exit)
  --register-gpus-after SECS   when the 'gpu' pool's device plugin \"registers\" nvidia.com/gpu=1
                               (default 10; a negative value is not accepted)
  --ready-file PATH            write the kubeconfig path here once the cluster is up";

#[derive(Debug)]
struct Args {
    state_dir: Option<PathBuf>,
    register_gpus_after: Duration,
    ready_file: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        state_dir: None,
        register_gpus_after: Duration::from_secs(10),
        ready_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--state-dir" => args.state_dir = Some(PathBuf::from(value()?)),
            "--ready-file" => args.ready_file = Some(PathBuf::from(value()?)),
            "--register-gpus-after" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| {
                        format!("--register-gpus-after: not a number of seconds: {v}")
                    })?;
                args.register_gpus_after = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
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

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("devcluster: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("devcluster: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Listen for signals first, so a Ctrl-C during startup also tears down cleanly.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;

    let (_temp_state, state_dir) = match &args.state_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("creating state dir {}: {e}", dir.display()))?;
            (None, dir.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("gpupool-devcluster-")
                .tempdir()
                .map_err(|e| format!("creating a temp state dir: {e}"))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };

    eprintln!("devcluster: starting the control plane...");
    let started = std::time::Instant::now();
    let plane = tokio::select! {
        plane = ControlPlane::start() => plane.map_err(|e| e.to_string())?,
        _ = tokio::signal::ctrl_c() => return Err("interrupted during startup".into()),
        _ = sigterm.recv() => return Err("terminated during startup".into()),
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
) -> Result<(), String> {
    let client = plane.client().await;
    create_nodes(&client).await?;
    wait_nodes_ready(&client).await?;

    let kubeconfig = state_dir.join("kubeconfig");
    std::fs::copy(plane.kubeconfig_path(), &kubeconfig)
        .map_err(|e| format!("writing {}: {e}", kubeconfig.display()))?;
    println!("{}", kubeconfig.display());
    println!("export KUBECONFIG={}", kubeconfig.display());
    if let Some(ready) = &args.ready_file {
        write_atomically(ready, &format!("{}\n", kubeconfig.display()))?;
    }
    eprintln!(
        "devcluster: {} nodes ready; the 'gpu' pool registers its GPUs in {:?}. Ctrl-C to stop.",
        SYSTEM_NODES.len() + GPU_NODES.len() + SPECIAL_NODES.len(),
        args.register_gpus_after
    );

    let register = async {
        tokio::time::sleep(args.register_gpus_after).await;
        for name in GPU_NODES {
            nodes::set_gpus(&client, name, 1, 1)
                .await
                .map_err(|e| format!("registering the GPU of {name}: {e}"))?;
        }
        eprintln!("devcluster: device plugin registered nvidia.com/gpu=1 on the 'gpu' pool");
        Ok::<(), String>(())
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

async fn create_nodes(client: &kube::Client) -> Result<(), String> {
    for name in SYSTEM_NODES {
        nodes::create_cpu_node(client, name, "system")
            .await
            .map_err(|e| format!("creating node {name}: {e}"))?;
    }
    for name in GPU_NODES {
        let node = GpuNode::aks(name, "gpu")
            .taint("sku", "gpu", "NoSchedule")
            .no_gpus_yet();
        nodes::create_node(client, &node)
            .await
            .map_err(|e| format!("creating node {name}: {e}"))?;
    }
    for name in SPECIAL_NODES {
        nodes::create_node(client, &GpuNode::aks(name, "gpuspecial").specialized())
            .await
            .map_err(|e| format!("creating node {name}: {e}"))?;
    }
    Ok(())
}

async fn wait_nodes_ready(client: &kube::Client) -> Result<(), String> {
    let api: Api<Node> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| format!("listing nodes: {e}"))?;
        let not_ready: Vec<String> = list
            .items
            .iter()
            .filter(|n| !nodes::is_ready(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        if not_ready.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("nodes not Ready after 60s: {not_ready:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn write_atomically(path: &Path, contents: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

//! gpupool on a real node: a real kubelet, containerd and runc (`testenv::real_node`) run the
//! plugin DaemonSet gpupool renders — the real NVIDIA device plugin v0.18.0, over a mock NVML of
//! 8 A100s on GPU nodes — and `nvidia.com/gpu` comes from the kubelet's device manager: no test
//! here writes a Node's status. What the kwok tests simulate (a plugin that registers GPUs, a
//! restart that drops allocatable, a validation container that passes) is done here by the real
//! components.
//!
//! One real node runs per machine (`RealNode::start` takes a machine-wide lock), so the tests
//! take turns; each deletes its pool and its Node at the end. Needs root and what
//! `hack/real-node/build.sh` builds; `GPUPOOL_SKIP_REAL_NODE=1` skips them.

mod support;

use std::time::{Duration, Instant};

use gpupool::api::GpuPool;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::real::*;
use support::*;
use testenv::real_node::RealNodeOptions;
use testenv::wait_for;

/// The operator's grace period in this binary: a node without its GPUs for longer is failing.
const GRACE: Duration = Duration::from_secs(20);

async fn real_env() -> Env {
    env_with(&["--gpu-grace-period", "20s"]).await
}

fn problem<'a>(pool: &'a GpuPool, node: &str) -> Option<&'a gpupool::api::ProblemNode> {
    pool.status
        .as_ref()?
        .problem_nodes
        .iter()
        .find(|p| p.name == node)
}

/// gpupool's default plugin DaemonSet on a real GPU node (8 mock A100s, `Standard_ND96asr_v4`,
/// AKS's `sku=gpu:NoSchedule`): the pod runs under the kubelet with the rendered securityContext
/// (no capabilities, no privilege escalation), the kubelet's device-plugin folder (hostPath) and
/// priority class; the plugin registers 8 GPUs with the kubelet's device manager, and the pool
/// goes Ready with 8 GPUs expected from the VM size alone.
#[tokio::test]
async fn the_rendered_plugin_runs_under_the_kubelet_and_the_pool_goes_ready() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_gpu("aks-realgpu-10000000-vmss000000", "realgpu").taint(
            "sku",
            "gpu",
            "NoSchedule",
        ),
    )
    .await;
    let nodes = node_timeline(&env.client, node.name()).await;
    let started = Instant::now();
    create_pool(&env.client, PoolYaml::new("realgpu").agentpool("realgpu")).await;
    let pool = wait_condition(&env, "realgpu", "Ready", "True", Some("Ready")).await;
    eprintln!("pool Ready {:?} after it was created", started.elapsed());
    let status = pool.status.clone().unwrap();
    assert_eq!(
        (status.gpus_capacity, status.gpus_allocatable, status.nodes_with_gpus),
        (8, 8, 1)
    );
    let capacity = status.capacity.clone().unwrap();
    assert_eq!((capacity.resource.as_str(), capacity.expected), ("nvidia.com/gpu", 8));
    // The GPUs came from the kubelet's device manager: the Node is the kubelet's (not kwok's),
    // and the plugin's socket is in the kubelet's folder on the host.
    let n: Node = Api::<Node>::all(env.client.clone())
        .get(node.name())
        .await
        .unwrap();
    assert!(
        !n.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(testenv::nodes::KWOK_ANNOTATION.0)
    );
    assert!(
        std::path::Path::new("/var/lib/kubelet/device-plugins/nvidia-gpu.sock").exists(),
        "the plugin serves its socket in the kubelet's folder (hostPath)"
    );
    let before: Vec<NodeMoment> = nodes
        .all()
        .into_iter()
        .filter(|m| m.gpus("nvidia.com/gpu") != (0, 0))
        .collect();
    assert_eq!(
        before.first().map(|m| m.gpus("nvidia.com/gpu")),
        Some((8, 8)),
        "the device manager registered all 8 at once:\n{before:?}"
    );

    // The pod as the kubelet ran it: the rendered securityContext applied by runc, the mounts
    // and the priority the API server resolved from the class.
    let pod = running_plugin_pod(&env, "realgpu").await;
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(spec.priority, Some(2_000_001_000));
    let pid = container_pid(&node, &pod);
    assert_eq!(
        proc_status(pid, "CapEff"),
        "0000000000000000",
        "capabilities: drop ALL"
    );
    assert_eq!(
        proc_status(pid, "NoNewPrivs"),
        "1",
        "allowPrivilegeEscalation: false"
    );
    let mounts = mounts(pid);
    assert!(
        mounts.contains_key("/var/lib/kubelet/device-plugins"),
        "{mounts:?}"
    );
    assert!(
        !mounts.contains_key("/var/run/secrets/kubernetes.io/serviceaccount"),
        "no API credentials: {mounts:?}"
    );
    let log = node
        .pod_log(
            PLUGIN_NAMESPACE,
            &pod.metadata.name.clone().unwrap(),
            "nvidia-device-plugin-ctr",
        )
        .unwrap_or_default();
    assert!(
        log.contains("Registered device plugin for 'nvidia.com/gpu' with Kubelet"),
        "{log}"
    );
    finish(&env, "realgpu", node).await;
}

#[tokio::test]
async fn explore_crash_loop() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_cpu("aks-realcpu-10000000-vmss000000", "realcpu"),
    )
    .await;
    create_pool(&env.client, PoolYaml::new("realcpu").agentpool("realcpu")).await;
    let pools = pool_timeline(&env.client, "realcpu").await;
    let mark = Instant::now();
    tokio::time::sleep(Duration::from_secs(40)).await;
    eprintln!("{}", pools.print_since(mark));
    let pool = get_pool(&env.client, "realcpu").await;
    eprintln!("{}", yaml_serde::to_string(&pool.status).unwrap());
    let pod = plugin_pods(&env.client, "realcpu").await;
    eprintln!("{}", yaml_serde::to_string(&pod[0].status).unwrap());
    finish(&env, "realcpu", node).await;
}

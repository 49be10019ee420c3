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
const GRACE: Duration = Duration::from_secs(10);

async fn real_env() -> Env {
    env_with(&["--gpu-grace-period", "10s"]).await
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
        (
            status.gpus_capacity,
            status.gpus_allocatable,
            status.nodes_with_gpus
        ),
        (8, 8, 1)
    );
    let capacity = status.capacity.clone().unwrap();
    assert_eq!(
        (capacity.resource.as_str(), capacity.expected),
        ("nvidia.com/gpu", 8)
    );
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

/// Waits until the pool names `node` among its problem nodes with `reason`, its message holding
/// every one of `says`; returns the message.
async fn wait_problem(env: &Env, pool: &str, node: &str, reason: &str, says: &[&str]) -> String {
    let what = format!("problem node {node}: {reason} saying {says:?}");
    let p = wait_pool(env, pool, &what, |p| {
        problem(p, node)
            .is_some_and(|n| n.reason == reason && says.iter().all(|s| n.message.contains(s)))
    })
    .await;
    let message = problem(&p, node).unwrap().message.clone();
    eprintln!("  {node}: {reason}: {message}");
    message
}

/// Time-slicing ×4 on the real plugin: the kubelet advertises 32 `nvidia.com/gpu` on the node's 8
/// GPUs, and gpupool counts them whole (32 expected, 8 physical), not as too many; the config
/// reaches the plugin through the ConfigMap volume. With `renameByDefault` the plugin rolls and
/// advertises `nvidia.com/gpu.shared`: gpupool counts that, and its validation pod, given a
/// shared GPU by the kubelet, passes. (Before #20 the validation pod asked for `nvidia.com/gpu`,
/// which the node no longer offers: it waited for a free GPU forever.)
#[tokio::test]
async fn time_slicing_is_counted_whole_and_renamed_gpus_are_validated() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_gpu("aks-realts-10000000-vmss000000", "realts"),
    )
    .await;
    let nodes = node_timeline(&env.client, node.name()).await;
    create_pool(
        &env.client,
        PoolYaml::new("realts")
            .agentpool("realts")
            .extra_spec("  sharing:\n    timeSlicing:\n      replicas: 4\n  validation: {}\n"),
    )
    .await;
    let pool = wait_pool(&env, "realts", "Ready, validated", |p| {
        condition(p, "Ready").is_some_and(|c| c.status == "True")
            && p.status
                .as_ref()
                .and_then(|s| s.validation.as_ref())
                .is_some_and(|v| v.validated == 1)
    })
    .await;
    let status = pool.status.clone().unwrap();
    let capacity = status.capacity.clone().unwrap();
    assert_eq!(
        (
            capacity.resource.as_str(),
            capacity.expected,
            capacity.physical_gpus,
            capacity.replicas
        ),
        ("nvidia.com/gpu", 32, Some(8), Some(4))
    );
    assert_eq!((status.gpus_capacity, status.gpus_allocatable), (32, 32));
    assert!(
        status.problem_nodes.is_empty(),
        "{:?}",
        status.problem_nodes
    );
    assert_eq!(
        nodes.all().last().unwrap().gpus("nvidia.com/gpu"),
        (32, 32),
        "the kubelet advertises 4 x 8"
    );
    let pod = running_plugin_pod(&env, "realts").await;
    let pid = container_pid(&node, &pod);
    let mounts = mounts(pid);
    assert!(
        mounts
            .get("/etc/gpupool/device-plugin")
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "the config volume, read-only: {mounts:?}"
    );
    let log = node
        .pod_log(
            PLUGIN_NAMESPACE,
            &pod.metadata.name.clone().unwrap(),
            "nvidia-device-plugin-ctr",
        )
        .unwrap_or_default();
    assert!(
        log.contains("\"replicas\": 4"),
        "the plugin read the config:\n{log}"
    );

    patch_pool(
        &env.client,
        "realts",
        json!({"spec": {"sharing": {"timeSlicing": {"renameByDefault": true}}}}),
    )
    .await;
    let pool = wait_pool(
        &env,
        "realts",
        "counting nvidia.com/gpu.shared, validated",
        |p| {
            let s = p.status.as_ref();
            condition(p, "Ready").is_some_and(|c| c.status == "True")
                && s.and_then(|s| s.capacity.as_ref())
                    .is_some_and(|c| c.resource == "nvidia.com/gpu.shared" && c.expected == 32)
                && s.and_then(|s| s.validation.as_ref())
                    .is_some_and(|v| v.validated == 1 && v.waiting_for_gpu == 0)
                && s.is_some_and(|s| s.gpus_allocatable == 32 && s.problem_nodes.is_empty())
        },
    )
    .await;
    let pod = running_plugin_pod(&env, "realts").await;
    let plugin = pod.metadata.annotations.clone().unwrap()["gpupool.io/plugin"].clone();
    let last = nodes.all().last().cloned().unwrap();
    assert_eq!(
        last.validation
            .as_ref()
            .map(|v| (v["result"].clone(), v["plugin"].clone())),
        Some((json!("Passed"), json!(plugin))),
        "validated with the renamed plugin: {last}"
    );
    assert_eq!(last.gpus("nvidia.com/gpu.shared"), (32, 32));
    // The kubelet keeps the resource the plugin no longer registers, with nothing allocatable
    // (for 5 minutes, then at 0): gpupool does not count it.
    eprintln!(
        "  after renameByDefault: nvidia.com/gpu {:?}, nvidia.com/gpu.shared {:?}; pool allocatable {}",
        last.gpus("nvidia.com/gpu"),
        last.gpus("nvidia.com/gpu.shared"),
        pool.status.unwrap().gpus_allocatable
    );
    finish(&env, "realts", node).await;
}

/// MIG on the mock's A100s, which run with MIG mode off (the mock NVML has no MIG devices, and the
/// plugin's MIG paths under /proc/driver/nvidia cannot be mounted by runc): what a node pool
/// looks like when spec.mig does not match its GPUs. `mixed`: the kubelet advertises 8 whole
/// `nvidia.com/gpu` and no `nvidia.com/mig-1g.5gb`; MIG enabled on two GPUs without devices:
/// 6. `single` with MIG-enabled GPUs without devices: the plugin refuses to start and
/// crash-loops; `single` with MIG off: 8 `nvidia.com/gpu` where 56 MIG devices are expected.
/// gpupool names each (NoMigDevices, PluginPodFailing with the plugin's own error) instead of
/// "the plugin is not running" or "GPUs fell off the bus". The plugin runs with CAP_SYS_ADMIN.
#[tokio::test]
async fn mig_that_does_not_match_the_gpus_is_named() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_gpu("aks-realmig-10000000-vmss000000", "realmig"),
    )
    .await;
    let name = node.name().to_string();
    let nodes = node_timeline(&env.client, &name).await;
    create_pool(
        &env.client,
        PoolYaml::new("realmig")
            .agentpool("realmig")
            .extra_spec("  mig:\n    strategy: mixed\n    profile: MIG1g\n"),
    )
    .await;
    eprintln!("mixed, MIG off:");
    wait_problem(
        &env,
        "realmig",
        &name,
        "NoMigDevices",
        &[
            "advertises 8 whole nvidia.com/gpu and no nvidia.com/mig-1g.5gb",
            "MIG mode is off",
        ],
    )
    .await;
    let pool = get_pool(&env.client, "realmig").await;
    let capacity = pool.status.unwrap().capacity.unwrap();
    assert_eq!(
        (capacity.resource.as_str(), capacity.expected),
        ("nvidia.com/mig-1g.5gb", 56)
    );
    let last = nodes.all().last().cloned().unwrap();
    assert_eq!(last.gpus("nvidia.com/gpu"), (8, 8));
    assert!(
        !last
            .resources
            .keys()
            .any(|k| k.starts_with("nvidia.com/mig-")),
        "{last}"
    );
    let pod = running_plugin_pod(&env, "realmig").await;
    let caps = proc_status(container_pid(&node, &pod), "CapEff");
    assert_eq!(caps, "0000000000200000", "CAP_SYS_ADMIN only, for MIG");

    eprintln!("mixed, MIG enabled on GPUs 0 and 1 (no MIG devices):");
    let env_0_1 = json!([{"name": "MIG_MOCK_ENABLED", "value": "0,1"}]);
    patch_pool(
        &env.client,
        "realmig",
        json!({"spec": {"devicePlugin": {"env": env_0_1}}}),
    )
    .await;
    wait_problem(
        &env,
        "realmig",
        &name,
        "NoMigDevices",
        &["advertises 6 whole nvidia.com/gpu"],
    )
    .await;

    eprintln!("single, MIG enabled on GPUs 0 and 1 (no MIG devices):");
    patch_pool(
        &env.client,
        "realmig",
        json!({"spec": {"mig": {"strategy": "single"}}}),
    )
    .await;
    wait_problem(
        &env,
        "realmig",
        &name,
        "PluginPodFailing",
        &[
            "device plugin pod gpu-resources/nvidia-device-plugin-realmig-",
            "invalid MIG configuration",
            "device 0 has no MIG devices configured",
            "does not fit spec.mig.strategy",
            "--previous",
        ],
    )
    .await;

    eprintln!("single, MIG off:");
    patch_pool(
        &env.client,
        "realmig",
        json!({"spec": {"devicePlugin": null}}),
    )
    .await;
    wait_problem(
        &env,
        "realmig",
        &name,
        "NoMigDevices",
        &["has 8 nvidia.com/gpu, its 8 GPUs advertised whole, where 56 MIG devices are expected"],
    )
    .await;
    let pool = wait_condition(&env, "realmig", "Stalled", "True", None).await;
    eprintln!(
        "  Ready: {:?}",
        condition(&pool, "Ready").map(|c| (&c.reason, &c.message))
    );
    finish(&env, "realmig", node).await;
}

/// The real plugin (upstream's build) on a node without GPUs, with its default
/// FAIL_ON_INIT_ERROR=true: it finds no NVML, exits, and the kubelet restarts it with back-off
/// (NVIDIA/k8s-device-plugin #9, #17). gpupool names the node's problem as the plugin pod's
/// failure — the pod, CrashLoopBackOff, its restarts, the plugin's own last error with what it
/// means, and the `kubectl logs --previous` to read — within the grace period and after it, and
/// the pool is Stalled once the grace period is over. With FAIL_ON_INIT_ERROR=false (the AKS
/// article's setting) the plugin runs and registers nothing: the node has no GPUs, and says so.
/// With an image the node cannot pull, the kubelet's pull error is named (kwok runs any image).
#[tokio::test]
async fn a_crash_looping_plugin_on_a_node_without_gpus_is_named() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_cpu("aks-realcpu-10000000-vmss000000", "realcpu"),
    )
    .await;
    let name = node.name().to_string();
    let created = Instant::now();
    create_pool(&env.client, PoolYaml::new("realcpu").agentpool("realcpu")).await;
    let pools = pool_timeline(&env.client, "realcpu").await;
    let says = [
        "device plugin pod gpu-resources/nvidia-device-plugin-realcpu-",
        ": CrashLoopBackOff, restarted",
        "last exit code 1: error starting plugins: error getting plugins: unable to create plugins: failed to construct resource managers: invalid device discovery strategy",
        "the plugin finds no NVIDIA driver (NVML) on the node",
        "its log: kubectl -n gpu-resources logs nvidia-device-plugin-realcpu-",
        " --previous",
    ];
    let message = wait_problem(&env, "realcpu", &name, "PluginPodFailing", &says).await;
    assert!(created.elapsed() < GRACE, "named within the grace period");
    let pod = message
        .split("logs ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    // What the message tells the admin to run: `kubectl logs --previous`, through the API
    // server and the kubelet.
    let log = Api::<Pod>::namespaced(env.client.clone(), PLUGIN_NAMESPACE)
        .logs(
            &pod,
            &kube::api::LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        log.contains("invalid device discovery strategy"),
        "the pod named is the one: {log}"
    );
    let pool = wait_condition(&env, "realcpu", "Stalled", "True", None).await;
    let schedulable = condition(&pool, "GpusSchedulable").unwrap();
    assert_eq!(schedulable.reason, "GpusMissing");
    assert!(
        schedulable
            .message
            .contains(&format!("{name} (PluginPodFailing)")),
        "{}",
        schedulable.message
    );
    assert!(
        !pools.all().iter().any(|m| m.is("Ready", "True")),
        "never Ready:\n{}",
        pools.print_since(created)
    );
    eprintln!("  pool over time:\n{}", pools.print_since(created));

    eprintln!("FAIL_ON_INIT_ERROR=false:");
    patch_pool(
        &env.client,
        "realcpu",
        json!({"spec": {"devicePlugin": {"env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}]}}}),
    )
    .await;
    wait_problem(
        &env,
        "realcpu",
        &name,
        "NoGpuCapacity",
        &["the node reports no nvidia.com/gpu"],
    )
    .await;
    let pod = running_plugin_pod(&env, "realcpu").await;
    let restarts = pod.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0);

    // An image the node cannot pull (an allowed repository, a tag no registry here serves).
    eprintln!("devicePlugin.image the node cannot pull:");
    patch_pool(
        &env.client,
        "realcpu",
        json!({"spec": {"devicePlugin": {"image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}}}),
    )
    .await;
    let message = wait_problem(
        &env,
        "realcpu",
        &name,
        "PluginPodFailing",
        &[
            "device plugin pod gpu-resources/nvidia-device-plugin-realcpu-",
            "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
            "check spec.devicePlugin.image and that the node can pull it",
        ],
    )
    .await;
    assert!(
        message.contains(": ErrImagePull") || message.contains(": ImagePullBackOff"),
        "{message}"
    );
    finish(&env, "realcpu", node).await;
}

/// The readiness gate and validation on a real node. The node registers with the gate taint
/// (kubelet `registerWithTaints`); gpupool's plugin (tolerating it) registers 8 GPUs; the
/// validation pod, scheduled onto the node, is given a GPU by the kubelet's device manager
/// (the plugin's Allocate sets NVIDIA_VISIBLE_DEVICES, without which the sample fails) and
/// passes; only then, with the GPUs allocatable, the taint goes — checked on every version of the
/// Node. Then a workload holds all 8 GPUs and the plugin changes (so the node is validated
/// again): the validation pod waits, unscheduled, and takes nothing; the pool says so; the gate
/// stays open (the node passed before); once the workload is gone, the validation passes.
#[tokio::test]
async fn the_gate_opens_after_validation_and_validation_never_takes_a_busy_gpu() {
    if skip() {
        return;
    }
    const GATE: &str = "gpupool.io/gpu-not-ready";
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_gpu("aks-realgate-10000000-vmss000000", "realgate").taint(
            GATE,
            "",
            "NoSchedule",
        ),
    )
    .await;
    let name = node.name().to_string();
    let nodes = node_timeline(&env.client, &name).await;
    let first = nodes.all().first().cloned().unwrap();
    assert!(
        first.tainted(GATE),
        "registered with the gate taint: {first}"
    );
    create_pool(
        &env.client,
        PoolYaml::new("realgate")
            .agentpool("realgate")
            .extra_spec("  readinessGate: {}\n  validation: {}\n"),
    )
    .await;
    wait_pool(&env, "realgate", "Ready, the gate open", |p| {
        condition(p, "Ready").is_some_and(|c| c.status == "True")
            && p.status
                .as_ref()
                .and_then(|s| s.readiness_gate.as_ref())
                .is_some_and(|g| g.gated_nodes == 0)
    })
    .await;
    let seen = nodes.all();
    let opened = seen
        .iter()
        .position(|m| !m.tainted(GATE))
        .unwrap_or_else(|| panic!("the taint never went:\n{seen:?}"));
    let at = &seen[opened];
    assert_eq!(
        at.gpus("nvidia.com/gpu"),
        (8, 8),
        "opened with the GPUs allocatable: {at}"
    );
    assert!(
        at.validation
            .as_ref()
            .is_some_and(|v| v["result"] == "Passed"),
        "opened with the validation passed (one write): {at}"
    );
    assert!(
        seen[..opened].iter().all(|m| m.tainted(GATE)),
        "tainted until then"
    );
    let registered = seen
        .iter()
        .position(|m| m.gpus("nvidia.com/gpu") == (8, 8))
        .unwrap();
    eprintln!(
        "  GPUs allocatable at {:?}, gate opened at {:?}",
        seen[registered].at, at.at
    );

    // A workload holds every GPU; a new plugin (its env changed) must be validated again.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), PLUGIN_NAMESPACE);
    let holder: Pod = serde_json::from_value(json!({
        "metadata": { "name": "holds-every-gpu" },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": name },
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "work",
                "image": node.images().busybox.tag,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo $NVIDIA_VISIBLE_DEVICES; exec sleep 3600"],
                "resources": { "limits": { "nvidia.com/gpu": "8" } },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &holder).await.unwrap();
    let running = wait_for("the workload to run", TIMEOUT, || async {
        pods.get("holds-every-gpu")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let holder_container = running.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone();
    patch_pool(
        &env.client,
        "realgate",
        json!({"spec": {"devicePlugin": {"env": [{"name": "GPUPOOL_TEST_PLUGIN", "value": "2"}]}}}),
    )
    .await;
    let pool = wait_pool(&env, "realgate", "validation waiting for a free GPU", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.waiting_for_gpu == 1)
    })
    .await;
    let waiting = problem(&pool, &name).expect("the node is named");
    assert_eq!(waiting.reason, "ValidationWaitingForGpu");
    assert!(
        waiting.message.contains("it passed before"),
        "{}",
        waiting.message
    );
    let validation: Vec<Pod> = pods
        .list(
            &kube::api::ListParams::default()
                .labels("app.kubernetes.io/component=gpu-validation,gpupool.io/pool=realgate"),
        )
        .await
        .unwrap()
        .items;
    let [pending] = validation.as_slice() else {
        panic!("one validation pod: {validation:?}")
    };
    let status = pending.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(
        pending.spec.as_ref().unwrap().node_name.is_none(),
        "not bound: it takes no GPU"
    );
    let scheduled = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert!(
        scheduled
            .message
            .unwrap_or_default()
            .contains("Insufficient nvidia.com/gpu"),
        "unschedulable for want of a GPU"
    );
    assert!(
        !nodes.all().last().unwrap().tainted(GATE),
        "the gate stays open"
    );
    let holder = pods.get("holds-every-gpu").await.unwrap();
    assert_eq!(
        holder.status.unwrap().container_statuses.unwrap()[0].container_id,
        holder_container,
        "the workload keeps running, untouched"
    );

    pods.delete("holds-every-gpu", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_pool(&env, "realgate", "validated again", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.validated == 1 && v.waiting_for_gpu == 0)
            && condition(p, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    finish(&env, "realgate", node).await;
}

/// Waits (at most the grace period) until the node shows its 8 GPUs allocatable and Ready and
/// the pool is Ready with them, then checks every status gpupool wrote since `mark`: never
/// Stalled, and never not Ready without saying it is making progress (Reconciling).
async fn recovers_as_progress(
    env: &Env,
    pool: &str,
    nodes: &Timeline<NodeMoment>,
    pools: &Timeline<PoolMoment>,
    what: &str,
    mark: Instant,
) {
    let ready_again = wait_for(
        &format!("{what}: the pool Ready with 8 GPUs again"),
        GRACE,
        || async {
            let back = nodes
                .all()
                .last()
                .is_some_and(|m| m.gpus("nvidia.com/gpu") == (8, 8) && m.ready);
            let p = get_pool(&env.client, pool).await;
            (back
                && condition(&p, "Ready").is_some_and(|c| c.status == "True")
                && p.status.as_ref().is_some_and(|s| s.gpus_allocatable == 8))
            .then_some(mark.elapsed())
        },
    )
    .await;
    assert!(
        ready_again <= GRACE,
        "{what}: Ready again after {ready_again:?}, past the grace period"
    );
    // Let late writes land: a status written after the node came back is part of the story.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = pools.since(mark);
    eprintln!(
        "{what}: Ready again {ready_again:?} later\n  node:\n{}  pool:\n{}",
        nodes.print_since(mark),
        pools.print_since(mark)
    );
    for m in &seen {
        assert!(
            !m.is("Stalled", "True"),
            "{what}: Stalled within the grace period: {m}\n{}",
            pools.print_since(mark)
        );
        assert!(
            m.is("Ready", "True") || m.is("Reconciling", "True"),
            "{what}: not Ready and not Reconciling: {m}\n{}",
            pools.print_since(mark)
        );
    }
}

/// The plugin pod deleted, the kubelet restarted, containerd restarted, the kubelet stopped for
/// 5 s — on a real node: whatever the kubelet's device manager does with `nvidia.com/gpu`
/// meanwhile (allocatable 0 for about a second after the plugin pod's deletion; nothing at all
/// for the others, where the simulation believed a drop), gpupool reports progress
/// (Reconciling) and never Stalled, and the pool is Ready with its 8 GPUs again within the grace
/// period.
#[tokio::test]
async fn plugin_kubelet_and_containerd_restarts_are_progress_not_stalls() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let node = start_node(
        env.plane,
        RealNodeOptions::aks_gpu("aks-realrst-10000000-vmss000000", "realrst"),
    )
    .await;
    create_pool(&env.client, PoolYaml::new("realrst").agentpool("realrst")).await;
    wait_condition(&env, "realrst", "Ready", "True", Some("Ready")).await;
    let nodes = node_timeline(&env.client, node.name()).await;
    let pools = pool_timeline(&env.client, "realrst").await;

    let mark = Instant::now();
    let old = running_plugin_pod(&env, "realrst").await;
    Api::<Pod>::namespaced(env.client.clone(), PLUGIN_NAMESPACE)
        .delete(
            &old.metadata.name.clone().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    let gone = wait_for("the old plugin pod to go", TIMEOUT, || async {
        (!plugin_pods(&env.client, "realrst")
            .await
            .iter()
            .any(|p| p.metadata.uid == old.metadata.uid))
        .then(|| mark.elapsed())
    })
    .await;
    // kwok keeps a deleted plugin pod Terminating for 3 s (testenv's plugin_pod_termination);
    // the real one takes about as long (2.7 s here).
    eprintln!("  the deleted plugin pod was gone {gone:?} later (the plugin exits on SIGTERM)");
    recovers_as_progress(&env, "realrst", &nodes, &pools, "plugin pod deleted", mark).await;

    let mark = Instant::now();
    node.restart_kubelet().await.unwrap();
    recovers_as_progress(&env, "realrst", &nodes, &pools, "kubelet restarted", mark).await;

    let mark = Instant::now();
    node.restart_containerd().await.unwrap();
    recovers_as_progress(
        &env,
        "realrst",
        &nodes,
        &pools,
        "containerd restarted",
        mark,
    )
    .await;

    let mark = Instant::now();
    node.stop_kubelet(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    node.start_kubelet().await.unwrap();
    recovers_as_progress(
        &env,
        "realrst",
        &nodes,
        &pools,
        "kubelet stopped for 5 s",
        mark,
    )
    .await;
    finish(&env, "realrst", node).await;
}

// --- the plugin's own reading of gpupool's configs (no node) ------------------------------------

/// What the real plugin binary makes of a config file: the merged config it would run with, or
/// its refusal. It needs no GPU for that: it prints the config, then looks for NVML, finds none
/// here and exits (FAIL_ON_INIT_ERROR); on a machine with a GPU it would go on, so it is stopped
/// after 20 s. Its kubelet socket is in `dir`, so it never touches /var/lib/kubelet.
fn plugin_reads(
    bin: &std::path::Path,
    config: &str,
    dir: &std::path::Path,
) -> Result<serde_json::Value, String> {
    let file = dir.join(format!(
        "{:016x}.yaml",
        gpupool::decide::names::fnv1a(config.as_bytes())
    ));
    std::fs::write(&file, config).unwrap();
    let mut child = std::process::Command::new(bin)
        .arg("--config-file")
        .arg(&file)
        .arg("--kubelet-socket")
        .arg(dir.join("kubelet.sock"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the plugin binary runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    match log.split_once("Running with config:\n") {
        Some((_, rest)) => serde_json::Deserializer::from_str(rest)
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| format!("unparsable config in:\n{log}")),
        None => Err(log
            .lines()
            .rev()
            .find(|l| l.starts_with('E'))
            .unwrap_or(&log)
            .to_string()),
    }
}

/// A Node as AKS registers a Standard_ND96asr_v4 (8 A100 40GB), as gpupool sees it.
fn nd96asr_node() -> gpupool::decide::facts::NodeFacts {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n", "labels": {
            "node.kubernetes.io/instance-type": "Standard_ND96asr_v4",
            "kubernetes.azure.com/accelerator": "nvidia"}},
        "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}},
    }))
    .unwrap();
    gpupool::decide::facts::NodeFacts::from_node(&node)
}

/// For every `sharing`/`mig` combination (replicas at and beyond the API's bounds, renamed or
/// not, failing requests for more than one or not; no MIG, each strategy with and without each
/// AKS profile), the API server says whether the GpuPool is accepted (a server-side dry run, so
/// the CRD's schema and CEL rules decide); for each accepted one, the config gpupool renders is
/// fed to the real NVIDIA device plugin (v0.18.0), which must accept it, and the config it runs
/// with must be what gpupool's status expects: the MIG strategy, the replicas, the resource name
/// (`nvidia.com/gpu`, or `nvidia.com/gpu.shared` with renameByDefault), the count per GPU. A
/// combination the plugin refuses must have been refused at admission — as replicas 1 is (the
/// plugin's "number of replicas must be >= 2"), which shows the check can tell.
#[tokio::test]
async fn the_real_plugin_reads_every_config_gpupool_renders_as_gpupool_counts_it() {
    if skip() {
        return;
    }
    let env = real_env().await;
    let bin = testenv::real_node::device_plugin_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let node = nd96asr_node();
    let api: Api<GpuPool> = Api::all(env.client.clone());
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };

    let mut sharings: Vec<Option<(i32, bool, bool)>> = vec![None];
    for replicas in [1, 2, 4, 1024, 1025] {
        for rename in [false, true] {
            for fail in [false, true] {
                sharings.push(Some((replicas, rename, fail)));
            }
        }
    }
    let mut migs: Vec<Option<(&str, Option<&str>)>> = vec![None];
    for strategy in ["none", "single", "mixed"] {
        for profile in [
            None,
            Some("MIG1g"),
            Some("MIG2g"),
            Some("MIG3g"),
            Some("MIG4g"),
            Some("MIG7g"),
        ] {
            migs.push(Some((strategy, profile)));
        }
    }
    let mut read: std::collections::BTreeMap<String, Result<serde_json::Value, String>> =
        Default::default();
    let (mut accepted, mut refused) = (0, std::collections::BTreeMap::<String, usize>::new());
    let mut table = Vec::new();
    for sharing in &sharings {
        for mig in &migs {
            let mut extra = String::new();
            if let Some((replicas, rename, fail)) = sharing {
                extra.push_str(&format!(
                    "  sharing:\n    timeSlicing:\n      replicas: {replicas}\n      renameByDefault: {rename}\n      failRequestsGreaterThanOne: {fail}\n"
                ));
            }
            if let Some((strategy, profile)) = mig {
                extra.push_str(&format!("  mig:\n    strategy: {strategy}\n"));
                if let Some(p) = profile {
                    extra.push_str(&format!("    profile: {p}\n"));
                }
            }
            let yaml = PoolYaml::new("config-check")
                .agentpool("config-check")
                .extra_spec(&extra);
            let pool: GpuPool = yaml_serde::from_str(&yaml.to_string()).unwrap();
            let combination = format!("sharing {sharing:?}, mig {mig:?}");
            let spec = match api.create(&dry_run, &pool).await {
                Ok(created) => created.spec,
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    let rule = s.message.split(": ").skip(1).collect::<Vec<_>>().join(": ");
                    *refused.entry(rule).or_default() += 1;
                    // Refused at admission: the plugin must not be the only one to say no,
                    // and nothing gpupool renders for it is run anywhere.
                    continue;
                }
                Err(e) => panic!("{combination}: {e}"),
            };
            accepted += 1;
            let e = gpupool::decide::capacity::expected(&node, &spec, true);
            let Some(config) = gpupool::decide::plugin::config::plugin_config(&spec) else {
                // No config: the plugin runs with its defaults (whole GPUs, MIG strategy none).
                assert!(
                    sharing.is_none() && mig.is_none_or(|(s, _)| s == "none"),
                    "{combination}: no config rendered"
                );
                assert_eq!(
                    (e.resource.as_str(), e.count()),
                    ("nvidia.com/gpu", 8),
                    "{combination}"
                );
                continue;
            };
            let merged = read
                .entry(config.text.clone())
                .or_insert_with(|| plugin_reads(&bin, &config.text, dir.path()))
                .clone()
                .unwrap_or_else(|refusal| {
                    panic!(
                        "{combination}: the plugin refuses gpupool's config\n{}\n{refusal}",
                        config.text
                    )
                });
            let strategy = mig.map_or("none", |(s, _)| s);
            assert_eq!(merged["flags"]["migStrategy"], strategy, "{combination}");
            let shared = &merged["sharing"]["timeSlicing"]["resources"];
            let (name, replicas) = match sharing {
                Some((replicas, rename, fail)) => {
                    let [r] = shared.as_array().unwrap().as_slice() else {
                        panic!("{combination}: one shared resource: {shared}")
                    };
                    assert_eq!(r["name"], "nvidia.com/gpu", "{combination}");
                    assert_eq!(r["devices"], "all", "{combination}");
                    assert_eq!(r["replicas"], *replicas, "{combination}");
                    let ts = &merged["sharing"]["timeSlicing"];
                    assert_eq!(
                        ts["renameByDefault"].as_bool().unwrap_or(false),
                        *rename,
                        "{combination}"
                    );
                    assert_eq!(
                        ts["failRequestsGreaterThanOne"].as_bool().unwrap_or(false),
                        *fail,
                        "{combination}"
                    );
                    let name = r["rename"].as_str().unwrap_or("nvidia.com/gpu").to_string();
                    (name, i64::from(*replicas))
                }
                None => {
                    assert!(shared.is_null(), "{combination}: {shared}");
                    ("nvidia.com/gpu".to_string(), 1)
                }
            };
            // What gpupool counts on such a node is what the plugin advertises.
            let mig_devices = mig.filter(|(s, _)| *s != "none").map_or(1, |(_, p)| {
                p.map_or(1, |p| {
                    gpupool::decide::capacity::instances_per_gpu(
                        serde_json::from_value(json!(p)).unwrap(),
                    )
                })
            });
            assert_eq!(e.count(), 8 * mig_devices * replicas, "{combination}");
            if strategy == "mixed" {
                // Mixed advertises nvidia.com/mig-<profile> (no sharing: refused at admission).
                assert!(
                    e.resource.starts_with("nvidia.com/mig-"),
                    "{combination}: {}",
                    e.resource
                );
            } else {
                assert_eq!(e.resource, name, "{combination}");
            }
            let advertised = if strategy == "mixed" {
                "nvidia.com/mig-<profile>".to_string()
            } else {
                format!("{name} x{replicas}")
            };
            table.push(format!(
                "  {combination}: plugin runs migStrategy {strategy}, {advertised}; gpupool expects {} {}",
                e.count(),
                e.resource
            ));
        }
    }
    eprintln!(
        "{} combinations: {accepted} accepted, {} distinct configs, all read by the plugin as expected; refused at admission:",
        sharings.len() * migs.len(),
        read.len()
    );
    for (rule, n) in &refused {
        eprintln!("  {n} x {rule}");
    }
    for line in table.iter().step_by(7) {
        eprintln!("{line}");
    }
    assert_eq!(
        accepted + refused.values().sum::<usize>(),
        sharings.len() * migs.len()
    );
    // The plugin refuses what admission refuses: replicas 1.
    let one = "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n";
    let refusal = plugin_reads(&bin, one, dir.path()).unwrap_err();
    assert!(
        refusal.contains("number of replicas must be >= 2"),
        "{refusal}"
    );
}

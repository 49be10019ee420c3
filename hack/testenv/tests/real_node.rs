//! A real node (kubelet + containerd + runc) next to the plane: the real NVIDIA device plugin
//! (v0.18.0) runs in a pod over a mock NVML (go-nvml's dgxa100, 8 A100s) and `nvidia.com/gpu`
//! comes from the kubelet's device manager; a pod limited to one GPU gets it through the plugin's
//! Allocate.
//!
//! Needs root and what `hack/real-node/build.sh` builds (it runs it if `$GPUPOOL_REAL_NODE_DIR` is
//! unset). Runs by default and fails when anything is missing; `GPUPOOL_SKIP_REAL_NODE=1` skips it
//! (with a printed reason). One real node runs at a time on a machine, so these tests take turns.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use testenv::nodes;
use testenv::real_node::{RealNode, RealNodeOptions};
use testenv::{ControlPlane, wait_for};

const NAMESPACE: &str = "gpu-resources";
const TIMEOUT: Duration = Duration::from_secs(120);

fn skip() -> bool {
    if std::env::var("GPUPOOL_SKIP_REAL_NODE").is_ok_and(|v| v == "1") {
        eprintln!("skipped: GPUPOOL_SKIP_REAL_NODE=1 (real kubelet + containerd tests)");
        return true;
    }
    false
}

async fn start_node(plane: &ControlPlane, options: RealNodeOptions) -> RealNode<'_> {
    let started = Instant::now();
    let node = RealNode::start(plane, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("real node {} Ready in {:?}", node.name(), started.elapsed());
    node
}

async fn ensure_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.unwrap().is_none() {
        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap();
        api.create(&PostParams::default(), &ns).await.unwrap();
    }
}

/// A busybox pod runs to completion on the real node, with its output in the kubelet's pod log
/// folder and through the API server (which dials the kubelet).
#[tokio::test]
async fn a_pod_runs_on_the_real_node() {
    if skip() {
        return;
    }
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let node = start_node(plane, RealNodeOptions::aks_cpu("real-cpu-0", "cpu")).await;
    ensure_namespace(&client, "real-smoke").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "real-smoke");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "hello" },
        "spec": {
            "restartPolicy": "Never",
            "nodeName": node.name(),
            "containers": [{
                "name": "hello",
                "image": node.images().busybox.tag,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo hello from $(hostname)"],
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = wait_for("pod hello to finish", TIMEOUT, || async {
        let p = pods.get("hello").await.unwrap();
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    })
    .await;
    assert_eq!(phase, "Succeeded", "{}", node.logs_tail(40));
    let log = node.pod_log("real-smoke", "hello", "hello").unwrap();
    assert_eq!(log.trim(), "hello from hello");
    let api_log = pods.logs("hello", &Default::default()).await.unwrap();
    assert_eq!(api_log.trim(), "hello from hello");

    // The kubelet's identity is a node's: the Node authorizer and NodeRestriction keep it to its
    // own Node (another node's labels and the cluster's secrets are off limits).
    let kubeconfig = plane
        .kubeconfig_for_certificate(&format!("system:node:{}", node.name()), "system:nodes")
        .unwrap();
    let as_node = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    nodes::create_node(&client, &nodes::GpuNode::aks("real-smoke-kwok", "other"))
        .await
        .unwrap();
    let node_api: Api<Node> = Api::all(as_node.clone());
    let label = json!({ "metadata": { "labels": { "real-smoke": "yes" } } });
    node_api
        .patch(node.name(), &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("a kubelet may label its own Node");
    let denied = node_api
        .patch(
            "real-smoke-kwok",
            &PatchParams::default(),
            &Patch::Merge(&label),
        )
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("forbidden") || denied.to_string().contains("Forbidden"),
        "{denied}"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::all(as_node);
    let denied = secrets.list(&ListParams::default()).await.unwrap_err();
    assert!(denied.to_string().contains("forbidden"), "{denied}");
}

// --- the NVIDIA device plugin on a real node -----------------------------------------------------

/// The AKS article's DaemonSet (the seed manifest, as gpupool writes it: image, securityContext,
/// the kubelet's device-plugin folder, system-node-critical), pinned to `node`, with an optional
/// plugin config file mounted from ConfigMap `config` at /etc/gpupool/device-plugin/config.yaml
/// (passed with CONFIG_FILE, as gpupool does) and extra environment.
///
/// The plugin reads its config file once, at start: a ConfigMap change alone does not reach a
/// running plugin. As gpupool does, the config's text goes into a pod-template annotation, so a
/// config change rolls the DaemonSet.
fn plugin_daemonset(
    ns: &str,
    node: &str,
    image: &str,
    config: Option<(&str, &str)>,
    env: &[(&str, &str)],
    add_sys_admin: bool,
) -> DaemonSet {
    let mut env: Vec<_> = env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    let mut mounts =
        vec![json!({ "name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins" })];
    let mut volumes = vec![
        json!({ "name": "device-plugin", "hostPath": { "path": "/var/lib/kubelet/device-plugins", "type": "Directory" } }),
    ];
    let mut annotations = json!({ "scheduler.alpha.kubernetes.io/critical-pod": "" });
    if let Some((config, text)) = config {
        annotations["gpupool.io/plugin-config"] = json!(format!("{:016x}", fnv(text)));
        env.push(
            json!({ "name": "CONFIG_FILE", "value": "/etc/gpupool/device-plugin/config.yaml" }),
        );
        mounts.push(json!({ "name": "plugin-config", "mountPath": "/etc/gpupool/device-plugin", "readOnly": true }));
        volumes.push(json!({ "name": "plugin-config", "configMap": { "name": config } }));
    }
    let capabilities = if add_sys_admin {
        json!({ "drop": ["ALL"], "add": ["SYS_ADMIN"] })
    } else {
        json!({ "drop": ["ALL"] })
    };
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": { "name": "nvidia-device-plugin-daemonset", "namespace": ns },
        "spec": {
            "selector": { "matchLabels": { "name": "nvidia-device-plugin-ds" } },
            "updateStrategy": { "type": "RollingUpdate" },
            "template": {
                "metadata": {
                    "labels": { "name": "nvidia-device-plugin-ds" },
                    "annotations": annotations,
                },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": node },
                    "tolerations": [
                        { "key": "CriticalAddonsOnly", "operator": "Exists" },
                        { "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" },
                        { "key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" },
                    ],
                    "priorityClassName": "system-node-critical",
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "nvidia-device-plugin-ctr",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "env": env,
                        "securityContext": { "allowPrivilegeEscalation": false, "capabilities": capabilities },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }))
    .unwrap()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

async fn apply<K>(api: &Api<K>, name: &str, object: &K)
where
    K: kube::Resource + serde::Serialize + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.patch(
        name,
        &PatchParams::apply("real-node-test").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap();
}

async fn plugin_config(client: &kube::Client, ns: &str, name: &str, yaml: &str) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": ns },
        "data": { "config.yaml": yaml },
    }))
    .unwrap();
    apply(&Api::namespaced(client.clone(), ns), name, &cm).await;
}

/// Waits until the Node shows `nvidia.com/gpu` (capacity, allocatable) == `want`; returns how
/// long that took.
async fn wait_gpus(
    client: &kube::Client,
    ns: &str,
    node: &RealNode<'_>,
    want: (Option<u32>, Option<u32>),
) -> Duration {
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n = nodes.get(node.name()).await.unwrap();
        last = nodes::gpu_resources(&n);
        if last == want {
            eprintln!(
                "  nvidia.com/gpu (capacity, allocatable) = {want:?} after {:?}",
                started.elapsed()
            );
            return started.elapsed();
        }
        if Instant::now() > deadline {
            panic!(
                "node {} shows nvidia.com/gpu {last:?}, not {want:?}, after {TIMEOUT:?}\n{}\n{}",
                node.name(),
                plugin_logs(ns, node),
                node.logs_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The device plugin's log(s) on the node, for failure messages and observations.
fn plugin_logs(ns: &str, node: &RealNode<'_>) -> String {
    plugin_logs_tail(ns, node, 25)
}

fn plugin_logs_tail(ns: &str, node: &RealNode<'_>, lines: usize) -> String {
    let mut out = String::new();
    let dir = node.dir().join("kubelet/pod-logs");
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(&format!("{ns}_nvidia-device-plugin-daemonset-")) {
            let pod = format!(
                "nvidia-device-plugin-daemonset-{}",
                rest.split('_').next().unwrap()
            );
            if let Some(log) = node.pod_log(ns, &pod, "nvidia-device-plugin-ctr") {
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                out.push_str(&format!("===== plugin pod {pod} =====\n"));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Runs the validation image (a stand-in for the CUDA vectorAdd sample) as pod `name`, with
/// `limits: nvidia.com/gpu: gpus` when given; returns its phase and log.
async fn validation_pod(
    client: &kube::Client,
    ns: &str,
    node: &RealNode<'_>,
    name: &str,
    gpus: Option<u32>,
) -> (String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let resources = match gpus {
        Some(n) => json!({ "limits": { "nvidia.com/gpu": n.to_string() } }),
        None => json!({}),
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": { "kubernetes.io/hostname": node.name() },
            "tolerations": [{ "key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" }],
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "cuda-vectoradd",
                "image": node.images().cuda_sample.tag,
                "imagePullPolicy": "Never",
                "resources": resources,
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = wait_for(&format!("pod {name} to finish"), TIMEOUT, || async {
        let p = pods.get(name).await.unwrap();
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    })
    .await;
    let log = pods.logs(name, &Default::default()).await.unwrap();
    (phase, log)
}

/// Waits until the plugin DaemonSet's only pod runs the template with `config` (its text's hash
/// in the pod annotation; None: no config) and is Ready.
async fn wait_rollout(client: &kube::Client, ns: &str, config: Option<&str>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let want = config.map(|text| format!("{:016x}", fnv(text)));
    wait_for("the plugin DaemonSet to roll out", TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
            .await
            .unwrap()
            .items;
        let [pod] = list.as_slice() else { return None };
        let hash = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("gpupool.io/plugin-config"))
            .cloned();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        (hash == want && ready && pod.metadata.deletion_timestamp.is_none()).then_some(())
    })
    .await;
}

/// `nvidia.com/gpu` (capacity, allocatable) of a Node.
type Gpus = (Option<u32>, Option<u32>);

/// Records every change of the Node's `nvidia.com/gpu` (capacity, allocatable) until dropped.
struct GpuTimeline {
    task: tokio::task::JoinHandle<()>,
    changes: std::sync::Arc<std::sync::Mutex<Vec<(Duration, Gpus)>>>,
    started: Instant,
}

impl GpuTimeline {
    fn start(client: &kube::Client, node: &str) -> GpuTimeline {
        let nodes: Api<Node> = Api::all(client.clone());
        let node = node.to_owned();
        let changes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = Instant::now();
        let recorded = changes.clone();
        let task = tokio::spawn(async move {
            let mut last = None;
            loop {
                if let Ok(n) = nodes.get(&node).await {
                    let now = nodes::gpu_resources(&n);
                    if last != Some(now) {
                        recorded.lock().unwrap().push((started.elapsed(), now));
                        last = Some(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        GpuTimeline {
            task,
            changes,
            started,
        }
    }

    /// Prints the changes since the last call (or the start), with `what` happened at `mark`.
    fn report(&self, what: &str, mark: Instant) {
        let at = mark.duration_since(self.started);
        let changes = std::mem::take(&mut *self.changes.lock().unwrap());
        eprintln!(
            "  {what} (t={:.1}s); nvidia.com/gpu (capacity, allocatable) changes:",
            at.as_secs_f64()
        );
        for (t, v) in changes {
            eprintln!("    t={:.1}s {:?}", t.as_secs_f64(), v);
        }
    }
}

impl Drop for GpuTimeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const TIME_SLICING_4: &str = "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n    renameByDefault: false\n    failRequestsGreaterThanOne: false\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n";

/// The smoke test: the mock-GPU plugin registers 8 GPUs with the real kubelet, a pod limited to
/// one gets a GPU through Allocate (NVIDIA_VISIBLE_DEVICES); a pod without a GPU limit fails the
/// validation image; then time-slicing (replicas 4: 32) and the MIG strategies over the mock
/// (which has MIG-capable GPUs but no MIG devices).
#[tokio::test]
async fn device_plugin_registers_mock_gpus_with_the_kubelet() {
    if skip() {
        return;
    }
    let test_started = Instant::now();
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let node = start_node(
        plane,
        RealNodeOptions::aks_gpu("aks-gpu-12345678-vmss000000", "gpu").taint(
            "sku",
            "gpu",
            "NoSchedule",
        ),
    )
    .await;
    let nodes_api: Api<Node> = Api::all(client.clone());
    let registered = nodes_api.get(node.name()).await.unwrap();
    assert_eq!(
        nodes::gpu_resources(&registered),
        (None, None),
        "no GPUs before the plugin runs"
    );
    let labels = registered.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.azure.com/agentpool"], "gpu");
    assert_eq!(labels["kubernetes.azure.com/accelerator"], "nvidia");
    assert_eq!(
        labels["node.kubernetes.io/instance-type"],
        "Standard_ND96asr_v4"
    );
    let taints = registered
        .spec
        .clone()
        .and_then(|s| s.taints)
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t.key == "sku" && t.effect == "NoSchedule"),
        "{taints:?}"
    );

    let ns = NAMESPACE;
    ensure_namespace(&client, ns).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds_name = "nvidia-device-plugin-daemonset";
    let mock = node.images().device_plugin_mockgpu.tag.clone();
    eprintln!("plugin {mock}, no config:");
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(ns, node.name(), &mock, None, &[], false),
    )
    .await;
    wait_gpus(&client, ns, &node, (Some(8), Some(8))).await;

    let (phase, log) = validation_pod(&client, ns, &node, "vectoradd-1", Some(1)).await;
    eprintln!(
        "  pod vectoradd-1 (limit nvidia.com/gpu: 1): {phase}; {}",
        log.lines().nth(1).unwrap_or("")
    );
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(
        log.contains("NVIDIA_VISIBLE_DEVICES=GPU-4d4f434b-0000-4000-8000-"),
        "{log}"
    );
    assert!(log.contains("Test PASSED"), "{log}");
    let from_dir = node.pod_log(ns, "vectoradd-1", "cuda-vectoradd").unwrap();
    assert_eq!(
        from_dir, log,
        "the kubelet's pod log folder and the API agree"
    );

    let (phase, log) = validation_pod(&client, ns, &node, "vectoradd-2", Some(2)).await;
    eprintln!(
        "  pod vectoradd-2 (limit nvidia.com/gpu: 2): {phase}; {}",
        log.lines().nth(1).unwrap_or("")
    );
    assert_eq!(phase, "Succeeded", "{log}");
    assert_eq!(
        log.lines().nth(1).unwrap().matches("GPU-").count(),
        2,
        "{log}"
    );

    let (phase, log) = validation_pod(&client, ns, &node, "vectoradd-none", None).await;
    eprintln!(
        "  pod vectoradd-none (no GPU limit): {phase}; {}",
        log.lines().nth(1).unwrap_or("")
    );
    assert_eq!(phase, "Failed", "{log}");

    eprintln!("plugin with time-slicing, replicas 4 (--config-file):");
    plugin_config(&client, ns, "plugin-config", TIME_SLICING_4).await;
    let config = Some(("plugin-config", TIME_SLICING_4));
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(ns, node.name(), &mock, config, &[], false),
    )
    .await;
    wait_rollout(&client, ns, Some(TIME_SLICING_4)).await;
    wait_gpus(&client, ns, &node, (Some(32), Some(32))).await;
    let (phase, log) = validation_pod(&client, ns, &node, "vectoradd-shared", Some(1)).await;
    eprintln!(
        "  pod vectoradd-shared (1 of 32 replicas): {phase}; {}",
        log.lines().nth(1).unwrap_or("")
    );
    assert_eq!(phase, "Succeeded", "{log}");
    // A shared GPU's replica IDs (GPU-<uuid>::<n>) reach the container as the plain UUID.
    assert!(
        log.contains("NVIDIA_VISIBLE_DEVICES=GPU-4d4f434b-0000-4000-8000-") && !log.contains("::"),
        "{log}"
    );

    // MIG strategies, as gpupool configures them (NVIDIA_MIG_MONITOR_DEVICES=all, CAP_SYS_ADMIN).
    // MIG_MOCK_ENABLED turns MIG mode on for those mock GPUs (which then have no MIG devices).
    for (strategy, mig_enabled, want) in [
        ("single", "", (Some(8), Some(8))),
        ("mixed", "", (Some(8), Some(8))),
        ("mixed", "0,1", (Some(6), Some(6))),
    ] {
        let text = format!(
            "version: v1\nflags:\n  migStrategy: {strategy}\n# MIG_MOCK_ENABLED={mig_enabled}\n"
        );
        eprintln!(
            "plugin with migStrategy {strategy}, mock GPUs with MIG mode enabled: [{mig_enabled}]:"
        );
        plugin_config(&client, ns, "plugin-config", &text).await;
        let env = [
            ("NVIDIA_MIG_MONITOR_DEVICES", "all"),
            ("MIG_MOCK_ENABLED", mig_enabled),
        ];
        let ds = plugin_daemonset(
            ns,
            node.name(),
            &mock,
            Some(("plugin-config", &text)),
            &env,
            true,
        );
        apply(&daemonsets, ds_name, &ds).await;
        wait_rollout(&client, ns, Some(&text)).await;
        wait_gpus(&client, ns, &node, want).await;
        let n = nodes_api.get(node.name()).await.unwrap();
        let mig: Vec<String> = n
            .status
            .and_then(|s| s.capacity)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("nvidia.com/mig"))
            .map(|(k, v)| format!("{k}={}", v.0))
            .collect();
        eprintln!("  nvidia.com/mig-* resources: {mig:?}");
        assert!(mig.is_empty(), "the mock has no MIG devices: {mig:?}");
    }
    // single with MIG-enabled GPUs that have no MIG devices: the plugin refuses to start, and
    // the kubelet keeps the last capacity it saw (6) with allocatable 0.
    let text = "version: v1\nflags:\n  migStrategy: single\n# MIG_MOCK_ENABLED=0,1\n";
    eprintln!("plugin with migStrategy single, mock GPUs with MIG mode enabled: [0,1]:");
    plugin_config(&client, ns, "plugin-config", text).await;
    let env = [
        ("NVIDIA_MIG_MONITOR_DEVICES", "all"),
        ("MIG_MOCK_ENABLED", "0,1"),
    ];
    let timeline = GpuTimeline::start(&client, node.name());
    let mark = Instant::now();
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(
            ns,
            node.name(),
            &mock,
            Some(("plugin-config", text)),
            &env,
            true,
        ),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let failing = wait_for("the plugin pod to fail and restart", TIMEOUT, || async {
        pods.list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.restart_count >= 1))
            })
    })
    .await;
    let name = failing.metadata.name.clone().unwrap();
    let log = node
        .pod_log(ns, &name, "nvidia-device-plugin-ctr")
        .unwrap_or_default();
    eprintln!(
        "  plugin pod {name} restarts; its log ends: {}",
        log.lines().last().unwrap_or("")
    );
    assert!(
        log.contains("invalid MIG configuration") || log.contains("no MIG devices"),
        "{log}"
    );
    wait_gpus(&client, ns, &node, (Some(6), Some(0))).await;
    timeline.report("single with MIG-enabled GPUs applied", mark);

    daemonsets
        .delete(ds_name, &DeleteParams::default())
        .await
        .unwrap();
    eprintln!(
        "smoke test took {:?} (node start included)",
        test_started.elapsed()
    );
}

/// What the kubelet's device manager does with `nvidia.com/gpu` when the plugin pod is deleted, a
/// GPU reports a critical XID, the kubelet restarts and containerd restarts; a pod holding a GPU
/// keeps running throughout.
#[tokio::test]
async fn gpu_capacity_through_plugin_kubelet_and_containerd_restarts() {
    if skip() {
        return;
    }
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let node = start_node(
        plane,
        RealNodeOptions::aks_gpu("aks-gpu-12345678-vmss000001", "gpu"),
    )
    .await;
    // Tests share the plane: each keeps to its own namespace.
    let ns = "gpu-resources-restarts";
    ensure_namespace(&client, ns).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ds_name = "nvidia-device-plugin-daemonset";
    // Upstream's tag, which on a mock-GPU node is the mock-GPU build.
    let image = node.images().device_plugin.tag.clone();
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(ns, node.name(), &image, None, &[], false),
    )
    .await;
    wait_rollout(&client, ns, None).await;
    wait_gpus(&client, ns, &node, (Some(8), Some(8))).await;

    // A pod holding one GPU for the whole test.
    let holder: Pod = serde_json::from_value(json!({
        "metadata": { "name": "gpu-holder" },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": node.name() },
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "holder",
                "image": node.images().busybox.tag,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; exec sleep 3600"],
                "resources": { "limits": { "nvidia.com/gpu": "1" } },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &holder).await.unwrap();
    let running = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let holder = wait_for("gpu-holder to run", TIMEOUT, || async {
        pods.get_opt("gpu-holder").await.unwrap().filter(running)
    })
    .await;
    let holder_container = holder.status.unwrap().container_statuses.unwrap()[0]
        .container_id
        .clone();

    let timeline = GpuTimeline::start(&client, node.name());
    let plugin_pod = || async {
        pods.list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    };

    // 1. The plugin pod deleted (the DaemonSet makes a new one).
    let old = plugin_pod().await.unwrap().metadata.name.unwrap();
    let mark = Instant::now();
    pods.delete(&old, &DeleteParams::default()).await.unwrap();
    wait_rollout(&client, ns, None).await;
    wait_gpus(&client, ns, &node, (Some(8), Some(8))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    timeline.report("plugin pod deleted", mark);
    assert_eq!(last_gpus(&client, &node).await, (Some(8), Some(8)));

    // 2. GPU 3 reports XID 79 (fallen off the bus).
    let mark = Instant::now();
    node.inject_xid(3, 79).unwrap();
    wait_gpus(&client, ns, &node, (Some(8), Some(7))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    timeline.report("XID 79 on GPU 3", mark);
    assert_eq!(
        last_gpus(&client, &node).await,
        (Some(8), Some(7)),
        "GPU 3 stays unhealthy"
    );

    // 3. The kubelet restarts.
    let mark = Instant::now();
    node.restart_kubelet().await.unwrap();
    node.wait_ready(TIMEOUT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    timeline.report("kubelet restarted", mark);
    // The plugin sees the kubelet's socket come back, re-registers and lists its GPUs afresh:
    // the one marked unhealthy by the XID is healthy again (the plugin keeps health in memory).
    assert_eq!(last_gpus(&client, &node).await, (Some(8), Some(8)));
    let log = plugin_logs_tail(ns, &node, usize::MAX);
    assert!(
        log.contains("kubelet.sock created, restarting"),
        "the plugin noticed the kubelet restart:\n{log}"
    );

    // 4. containerd restarts.
    let mark = Instant::now();
    node.restart_containerd().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    timeline.report("containerd restarted", mark);
    assert_eq!(last_gpus(&client, &node).await, (Some(8), Some(8)));

    let holder = pods.get("gpu-holder").await.unwrap();
    let status = holder.status.unwrap();
    eprintln!(
        "  gpu-holder: phase {:?}, container {:?} (was {:?}), restarts {}",
        status.phase,
        status.container_statuses.as_ref().unwrap()[0].container_id,
        holder_container,
        status.container_statuses.as_ref().unwrap()[0].restart_count
    );
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(
        status.container_statuses.as_ref().unwrap()[0].container_id,
        holder_container
    );
    let log = node.pod_log(ns, "gpu-holder", "holder").unwrap();
    assert!(log.starts_with("NVIDIA_VISIBLE_DEVICES=GPU-"), "{log}");

    // 5. The DaemonSet deleted: no plugin at all.
    let mark = Instant::now();
    daemonsets
        .delete(ds_name, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    timeline.report("plugin DaemonSet deleted", mark);
    // Capacity stays (the kubelet keeps a stopped plugin's resource for a grace period),
    // allocatable drops to 0.
    assert_eq!(last_gpus(&client, &node).await, (Some(8), Some(0)));
    if std::env::var("GPUPOOL_REAL_NODE_LONG").is_ok_and(|v| v == "1") {
        let mark = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(420);
        while Instant::now() < deadline && last_gpus(&client, &node).await == (Some(8), Some(0)) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        timeline.report("(long) after the DaemonSet's deletion", mark);
    }
}

async fn last_gpus(client: &kube::Client, node: &RealNode<'_>) -> (Option<u32>, Option<u32>) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes::gpu_resources(&nodes.get(node.name()).await.unwrap())
}

/// On a node without GPUs, upstream's plugin image (the real build) finds no NVML library (so no
/// platform: "Incompatible strategy detected auto", "invalid device discovery strategy"): with the
/// default FAIL_ON_INIT_ERROR=true it exits and crash-loops (the known pain of a plugin scheduled
/// on CPU nodes); with FAIL_ON_INIT_ERROR=false (the AKS article's setting) it stays Running and
/// registers nothing. The Node never shows nvidia.com/gpu.
#[tokio::test]
async fn real_plugin_on_a_node_without_gpus() {
    if skip() {
        return;
    }
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let node = start_node(
        plane,
        RealNodeOptions::aks_cpu("aks-cpu-12345678-vmss000000", "cpu"),
    )
    .await;
    let ns = "gpu-resources-cpu";
    ensure_namespace(&client, ns).await;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ds_name = "nvidia-device-plugin-daemonset";
    let image = node.images().device_plugin.tag.clone();
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(ns, node.name(), &image, None, &[], false),
    )
    .await;
    let crashing = wait_for("the real plugin to crash and restart", TIMEOUT, || async {
        pods.list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.restart_count >= 1))
            })
    })
    .await;
    let name = crashing.metadata.name.unwrap();
    let log = node
        .pod_log(ns, &name, "nvidia-device-plugin-ctr")
        .unwrap_or_default();
    eprintln!("  FAIL_ON_INIT_ERROR=true (default): plugin pod {name} restarts; log:\n{log}");
    assert!(log.contains("invalid device discovery strategy"), "{log}");
    assert_eq!(last_gpus(&client, &node).await, (None, None));

    let env = [("FAIL_ON_INIT_ERROR", "false")];
    apply(
        &daemonsets,
        ds_name,
        &plugin_daemonset(ns, node.name(), &image, None, &env, false),
    )
    .await;
    let pod = wait_for(
        "the plugin with FAIL_ON_INIT_ERROR=false to run",
        TIMEOUT,
        || async {
            pods.list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|p| {
                    let env_set = p.spec.as_ref().is_some_and(|s| {
                        s.containers[0]
                            .env
                            .as_ref()
                            .is_some_and(|e| e.iter().any(|v| v.name == "FAIL_ON_INIT_ERROR"))
                    });
                    let running = p
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c.state.as_ref().and_then(|s| s.running.as_ref()).is_some()
                            })
                        });
                    env_set && running && p.metadata.deletion_timestamp.is_none()
                })
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let name = pod.metadata.name.unwrap();
    let pod = pods.get(&name).await.unwrap();
    let restarts = pod.status.unwrap().container_statuses.unwrap()[0].restart_count;
    let log = node
        .pod_log(ns, &name, "nvidia-device-plugin-ctr")
        .unwrap_or_default();
    eprintln!("  FAIL_ON_INIT_ERROR=false: plugin pod {name}, {restarts} restarts; log:\n{log}");
    assert_eq!(restarts, 0);
    assert_eq!(last_gpus(&client, &node).await, (None, None));
    daemonsets
        .delete(ds_name, &DeleteParams::default())
        .await
        .unwrap();
}

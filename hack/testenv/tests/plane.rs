//! The harness against a real control plane: kwok nodes, scheduling, controllers, RBAC.
//!
//! All tests share one plane and isolate themselves by node name and namespace.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use testenv::nodes::{self, GpuNode};
use testenv::{ControlPlane, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn ready_node(client: &kube::Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    wait_for(&format!("node {name} to become Ready"), TIMEOUT, || async {
        api.get_opt(name).await.unwrap().filter(nodes::is_ready)
    })
    .await
}

fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// 1) A tainted 8-GPU kwok node becomes Ready and keeps the GPU capacity we registered.
#[tokio::test]
async fn gpu_node_becomes_ready_with_its_gpus() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let created = nodes::create_node(
        &client,
        &GpuNode::aks("t1-gpu-8", "gpu")
            .gpus(8)
            .taint("sku", "gpu", "NoSchedule"),
    )
    .await
    .unwrap();
    // Capacity is there from creation on, before kwok has seen the node.
    assert_eq!(nodes::gpu_resources(&created), (Some(8), Some(8)));

    let node = ready_node(&client, "t1-gpu-8").await;
    assert_eq!(nodes::gpu_resources(&node), (Some(8), Some(8)));
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["kubernetes.azure.com/agentpool"], "gpu");
    assert_eq!(labels["kubernetes.azure.com/accelerator"], "nvidia");
    assert_eq!(
        labels["kubernetes.azure.com/node-image-version"],
        nodes::STANDARD_IMAGE
    );
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == "sku"
            && t.value.as_deref() == Some("gpu")
            && t.effect == "NoSchedule"),
        "taints: {taints:?}"
    );
}

/// 2) A DaemonSet tolerating the taint gets a Running+Ready pod on the node: the controller
/// manager, the scheduler and kwok all work. Deleting the pod makes it go away (and the
/// DaemonSet controller replaces it).
#[tokio::test]
async fn daemonset_pod_runs_on_tainted_gpu_node() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    namespace(&client, "t2-daemonset").await;
    nodes::create_node(
        &client,
        &GpuNode::aks("t2-gpu", "gpu")
            .taint("sku", "gpu", "NoSchedule")
            .label("t2", "yes"),
    )
    .await
    .unwrap();

    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "driver" },
        "spec": {
            "selector": { "matchLabels": { "app": "driver" } },
            "template": {
                "metadata": { "labels": { "app": "driver" } },
                "spec": {
                    "nodeSelector": { "t2": "yes" },
                    "tolerations": [{ "key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule" }],
                    "containers": [{ "name": "driver", "image": "example.invalid/driver:1" }]
                }
            }
        }
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(client.clone(), "t2-daemonset")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "t2-daemonset");
    let pod = wait_for(
        "the DaemonSet pod on t2-gpu to be Running and Ready",
        TIMEOUT,
        || async {
            pods.list(&ListParams::default().labels("app=driver"))
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("t2-gpu")
                        && pod_ready(p)
                })
        },
    )
    .await;
    let first = pod.metadata.name.clone().unwrap();

    pods.delete(&first, &DeleteParams::default()).await.unwrap();
    wait_for(
        "the deleted pod to be gone and replaced",
        TIMEOUT,
        || async {
            let list = pods
                .list(&ListParams::default().labels("app=driver"))
                .await
                .unwrap();
            let gone = list
                .items
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&first));
            let replaced = list.items.iter().any(pod_ready);
            (gone && replaced).then_some(())
        },
    )
    .await;
}

/// A Job's pod on a kwok node runs and completes.
#[tokio::test]
async fn job_completes_on_kwok_node() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    namespace(&client, "t-job").await;
    nodes::create_node(
        &client,
        &GpuNode::aks("t-job-gpu", "gpujob").label("tjob", "yes"),
    )
    .await
    .unwrap();
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "validate" },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": { "tjob": "yes" },
                    "containers": [{
                        "name": "validate",
                        "image": "example.invalid/cuda-validator:1",
                        "resources": { "limits": { "nvidia.com/gpu": "1" } }
                    }]
                }
            }
        }
    }))
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "t-job");
    jobs.create(&PostParams::default(), &job).await.unwrap();
    wait_for("the Job to succeed", TIMEOUT, || async {
        jobs.get("validate")
            .await
            .unwrap()
            .status
            .and_then(|s| s.succeeded)
            .filter(|n| *n >= 1)
    })
    .await;
}

/// 3) `set_gpus` changes capacity/allocatable and kwok's status heartbeats keep the values.
#[tokio::test]
async fn set_gpus_survives_kwok_heartbeats() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    nodes::create_node(
        &client,
        &GpuNode::aks("t3-gpu", "gpu").gpus(2).no_gpus_yet(),
    )
    .await
    .unwrap();
    let node = ready_node(&client, "t3-gpu").await;
    assert_eq!(nodes::gpu_resources(&node), (None, None));
    assert_eq!(
        node.metadata.labels.unwrap_or_default()["accelerator"],
        "nvidia",
        "a GPU machine is labelled as such before its device plugin registers"
    );

    nodes::set_gpus(&client, "t3-gpu", 2, 1).await.unwrap();
    let api: Api<Node> = Api::all(client.clone());
    let heartbeat = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.clone())
    };
    let after_patch = api.get("t3-gpu").await.unwrap();
    assert_eq!(nodes::gpu_resources(&after_patch), (Some(2), Some(1)));
    let before = heartbeat(&after_patch);

    let beaten = wait_for(
        "kwok's next node status heartbeat",
        Duration::from_millis(testenv::NODE_STATUS_HEARTBEAT_MS * 3),
        || async {
            let n = api.get("t3-gpu").await.unwrap();
            (heartbeat(&n) != before).then_some(n)
        },
    )
    .await;
    assert_eq!(nodes::gpu_resources(&beaten), (Some(2), Some(1)));
    assert!(nodes::is_ready(&beaten));

    // GPUs falling off the bus.
    nodes::set_gpus(&client, "t3-gpu", 2, 0).await.unwrap();
    assert_eq!(
        nodes::gpu_resources(&api.get("t3-gpu").await.unwrap()),
        (Some(2), Some(0))
    );
    nodes::delete_node(&client, "t3-gpu").await.unwrap();
    nodes::delete_node(&client, "t3-gpu").await.unwrap(); // idempotent
}

/// 4) A ServiceAccount without RBAC is forbidden to list nodes through its kubeconfig.
#[tokio::test]
async fn service_account_without_rbac_is_forbidden() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    namespace(&client, "t4-rbac").await;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "nobody" }
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "t4-rbac")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let path = plane
        .kubeconfig_for_service_account("t4-rbac", "nobody")
        .await
        .unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let sa_client = kube::Client::try_from(config).unwrap();
    match Api::<Node>::all(sa_client)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains("system:serviceaccount:t4-rbac:nobody"),
                "{status:?}"
            );
        }
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    // kubectl works with the admin kubeconfig.
    let out = plane
        .kubectl()
        .args(["auth", "can-i", "list", "nodes"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "yes",
        "{out:?}"
    );
}

/// Extra processes log into the plane's log folder and stop on request.
#[tokio::test]
async fn child_process_logs_and_stops() {
    let plane = ControlPlane::shared().await;
    let log = plane.dir().join("logs/child-test.log");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "echo started as $KUBECONFIG; exec sleep 1000"])
        .env("KUBECONFIG", plane.kubeconfig_path());
    let mut child = testenv::ChildProcess::spawn("child-test", cmd, &log).unwrap();
    wait_for("the child to log", TIMEOUT, || async {
        child.log_tail(5).contains("started as").then_some(())
    })
    .await;
    assert!(child.try_wait().is_none());
    let status = child.stop(Duration::from_secs(5)).await.unwrap();
    assert!(!status.success(), "sleep was terminated: {status:?}");
    assert!(plane.logs_tail(3).contains("kube-apiserver"));
}

/// A pod for `node` (by hostname) with `labels`.
fn pod_on(name: &str, node: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": { "kubernetes.io/hostname": node },
            "containers": [{ "name": "main", "image": "example.invalid/main:1" }]
        }
    }))
    .unwrap()
}

/// Deleted device-plugin pods stay Terminating for `Options::plugin_pod_termination` (3 s by
/// default) before kwok removes them; other pods go at once.
#[tokio::test]
async fn deleted_plugin_pods_terminate_slowly_and_other_pods_at_once() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    namespace(&client, "t-term").await;
    nodes::create_node(&client, &GpuNode::aks("t-term-gpu", "gputerm"))
        .await
        .unwrap();
    let (key, value) = testenv::DEVICE_PLUGIN_POD_LABEL;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "t-term");
    for pod in [
        pod_on("plugin", "t-term-gpu", serde_json::json!({ key: value })),
        pod_on("other", "t-term-gpu", serde_json::json!({})),
    ] {
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    for name in ["plugin", "other"] {
        wait_for(&format!("pod {name} to run"), TIMEOUT, || async {
            pods.get_opt(name).await.unwrap().filter(pod_ready)
        })
        .await;
    }

    let deleted_at = std::time::Instant::now();
    for name in ["plugin", "other"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for("the other pod to be gone", TIMEOUT, || async {
        pods.get_opt("other").await.unwrap().is_none().then_some(())
    })
    .await;
    let plugin = pods.get_opt("plugin").await.unwrap();
    assert!(
        plugin.is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the plugin pod is still Terminating when the other one is gone"
    );
    wait_for("the plugin pod to be gone", TIMEOUT, || async {
        pods.get_opt("plugin")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let terminating = deleted_at.elapsed();
    assert!(
        terminating >= Duration::from_secs(2),
        "the plugin pod went after {terminating:?}"
    );
}

/// The simulated kubelet finishes validation pods (here Job pods, which kwok's own pod-complete
/// stage would otherwise finish at once with exit code 0) as their node's label says.
#[tokio::test]
async fn validation_pods_pass_or_fail_as_their_node_says() {
    use testenv::simulate::{self, ValidationPods};
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    namespace(&client, "t-validation").await;
    nodes::create_node(&client, &GpuNode::aks("t-val-good", "gpuval"))
        .await
        .unwrap();
    nodes::create_node(
        &client,
        &GpuNode::aks("t-val-bad", "gpuval").label(simulate::SIMULATE_VALIDATION_LABEL, "fail"),
    )
    .await
    .unwrap();
    let simulation = ValidationPods::spawn(client.clone());

    let jobs: Api<Job> = Api::namespaced(client.clone(), "t-validation");
    for node in ["t-val-good", "t-val-bad"] {
        jobs.create(&PostParams::default(), &validation_job(node))
            .await
            .unwrap();
    }
    for (node, phase, exit_code, message) in [
        ("t-val-good", "Succeeded", 0, simulate::PASSED_MESSAGE),
        ("t-val-bad", "Failed", 1, simulate::FAILED_MESSAGE),
    ] {
        let pod = finished_pod(&client, node).await;
        assert_terminated(&pod, phase, exit_code, message);
        // The Job controller reacts (and updates the pod, so kwok looks at it again): the
        // finished status stays as written.
        let job = format!("validate-{node}");
        wait_for(&format!("Job {job} to count its pod"), TIMEOUT, || async {
            let status = jobs.get(&job).await.unwrap().status.unwrap_or_default();
            (status.succeeded.unwrap_or(0) + status.failed.unwrap_or(0) == 1).then_some(())
        })
        .await;
        let name = pod.metadata.name.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "t-validation");
        assert_terminated(&pods.get(&name).await.unwrap(), phase, exit_code, message);
    }
    simulation.stop().await;
}

fn assert_terminated(pod: &Pod, phase: &str, exit_code: i32, message: &str) {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some(phase), "{name}");
    let container = &status.container_statuses.unwrap_or_default()[0];
    let terminated = container.state.clone().unwrap_or_default().terminated;
    let terminated = terminated.unwrap_or_else(|| panic!("{name}: {container:?}"));
    assert_eq!(terminated.exit_code, exit_code, "{name}");
    assert_eq!(terminated.message.as_deref(), Some(message), "{name}");
    assert!(!container.ready, "{name}");
}

fn validation_job(node: &str) -> Job {
    let (key, value) = testenv::simulate::VALIDATION_POD_LABEL;
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": format!("validate-{node}") },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": { key: value } },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": { "kubernetes.io/hostname": node },
                    "containers": [{
                        "name": "validate",
                        "image": "example.invalid/cuda-vector-add:1",
                        "resources": { "limits": { "nvidia.com/gpu": "1" } }
                    }]
                }
            }
        }
    }))
    .unwrap()
}

/// The validation pod on `node`, once it has finished (Succeeded or Failed).
async fn finished_pod(client: &kube::Client, node: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "t-validation");
    wait_for(
        &format!("the validation pod on {node} to finish"),
        TIMEOUT,
        || async {
            let list = pods.list(&ListParams::default()).await.unwrap();
            list.items.into_iter().find(|p| {
                let on_node = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                on_node && matches!(phase, Some("Succeeded" | "Failed"))
            })
        },
    )
    .await
}

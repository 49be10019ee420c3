//! What a live AKS fleet does every day, on a real control plane: lifecycle taints that come and
//! go, node-image upgrades, overlapping pools handed over while plugin pods take seconds to
//! terminate, hand-applied plugins deleted, reboots and plugin restarts, nodes whose platform
//! runs the plugin itself, and a GpuPool asking for a plugin image from anywhere.

mod support;

use std::collections::BTreeMap;

use gpupool::controller::node_writes::UpdateEdit;
use gpupool::decide::names::DEVICE_PLUGIN_LABEL;
use gpupool::decide::plan::NodeUpdate;
use gpupool::decide::plugin::placement::LabelChange;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use support::*;
use testenv::nodes::{GpuNode, create_node, set_gpus};
use testenv::wait_for;

/// The grace period of this binary's operator: long enough to see a problem as progress first.
const GRACE: &str = "8s";

async fn fleet() -> Env {
    env_with(&["--gpu-grace-period", GRACE]).await
}

/// The plugin pods of a DaemonSet, by node: uid (a restarted pod has a new one).
async fn plugin_pods(c: &Client, pool: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    let list = pods
        .list(&ListParams::default().labels(&format!("gpupool.io/pool={pool}")))
        .await
        .unwrap();
    list.items
        .iter()
        .filter_map(|p| Some((p.spec.as_ref()?.node_name.clone()?, p.uid()?)))
        .collect()
}

fn generation(ds: &DaemonSet) -> i64 {
    ds.metadata.generation.unwrap_or(0)
}

/// Cordons a node and waits for the pool to report it, then uncordons it and waits again: the
/// operator has handled every node event before this one (one watch, in order).
async fn processed(env: &Env, pool: &str, node: &str) {
    patch_node(
        &env.client,
        node,
        serde_json::json!({"spec": {"unschedulable": true}}),
    )
    .await;
    wait_pool(env, pool, "the cordon marker seen", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.problem_nodes
                .iter()
                .any(|n| n.name == node && n.reason == "Cordoned")
        })
    })
    .await;
    patch_node(
        &env.client,
        node,
        serde_json::json!({"spec": {"unschedulable": null}}),
    )
    .await;
    wait_pool(env, pool, "the uncordon marker seen", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| !s.problem_nodes.iter().any(|n| n.name == node))
    })
    .await;
}

/// #10.1: autoscaler, Karpenter and node-lifecycle taints and a node-image upgrade leave the
/// DaemonSet and its pods alone; a genuinely new pool taint is tolerated.
#[tokio::test]
async fn routine_node_events_restart_no_plugin_pod() {
    let env = fleet().await;
    let c = &env.client;
    for name in node_names("churn-gpu", 2) {
        create_node(
            c,
            &GpuNode::aks(&name, "churnpool").taint("sku", "gpu", "NoSchedule"),
        )
        .await
        .unwrap();
    }
    create_pool(c, PoolYaml::new("churn").agentpool("churnpool")).await;
    let ds = wait_daemonset(&env, &plugin_name("churn"), "2 pods ready", |ds| {
        ds.status
            .as_ref()
            .is_some_and(|s| s.number_ready == 2 && s.updated_number_scheduled == Some(2))
    })
    .await;
    wait_condition(&env, "churn", "Ready", "True", None).await;
    let (gen_before, pods_before) = (generation(&ds), plugin_pods(c, "churn").await);
    assert_eq!(pods_before.len(), 2);

    let taints = |list: serde_json::Value| serde_json::json!({"spec": {"taints": list}});
    let sku = serde_json::json!({"key": "sku", "value": "gpu", "effect": "NoSchedule"});
    for (i, extra) in [
        serde_json::json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1795555000", "effect": "NoSchedule"}),
        serde_json::json!({"key": "ToBeDeletedByClusterAutoscaler", "value": "1795555999", "effect": "NoSchedule"}),
        serde_json::json!({"key": "DeletionCandidateOfClusterAutoscaler", "value": "1795555999", "effect": "PreferNoSchedule"}),
        serde_json::json!({"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}),
        serde_json::json!({"key": "karpenter.sh/unregistered", "effect": "NoExecute"}),
        serde_json::json!({"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoSchedule"}),
    ]
    .into_iter()
    .enumerate()
    {
        patch_node(c, &format!("churn-gpu-{}", i % 2), taints(serde_json::json!([sku, extra]))).await;
    }
    for node in node_names("churn-gpu", 2) {
        patch_node(c, &node, taints(serde_json::json!([sku]))).await;
    }
    // A weekly node-image upgrade to a newer standard image.
    patch_node(c, "churn-gpu-0", serde_json::json!({"metadata": {"labels": {"kubernetes.azure.com/node-image-version": "AKSUbuntu-2204gen2containerd-202611.20.0"}}})).await;
    processed(&env, "churn", "churn-gpu-1").await;

    let ds = get_daemonset(c, &plugin_name("churn")).await.unwrap();
    assert_eq!(
        generation(&ds),
        gen_before,
        "the DaemonSet changed: {:?}",
        placement(&ds).1
    );
    assert_eq!(
        plugin_pods(c, "churn").await,
        pods_before,
        "plugin pods were restarted"
    );
    let (_, tolerations) = placement(&ds);
    assert!(
        !tolerations
            .iter()
            .any(|t| t.starts_with("ToBeDeleted") || t.starts_with("karpenter.sh/")),
        "{tolerations:?}"
    );

    // A taint that describes the pool is tolerated (one rollout, as it must).
    patch_node(
        c,
        "churn-gpu-0",
        taints(serde_json::json!([sku, {"key": "team", "value": "ml", "effect": "NoSchedule"}])),
    )
    .await;
    wait_daemonset(&env, &plugin_name("churn"), "tolerates team", |ds| {
        placement(ds).1.contains(&"team=:NoSchedule".to_string())
    })
    .await;
}

/// #10.2: a deleted pool (in the background, and in the foreground as Argo CD prunes) keeps its
/// nodes until its plugin pods are gone; the younger pool that takes them over never runs a
/// second plugin next to a terminating one.
#[tokio::test]
async fn a_deleted_pool_hands_its_nodes_over_only_after_its_plugin_pods_are_gone() {
    let env = fleet().await;
    let c = &env.client;
    for (policy, prefix) in [
        (PropagationPolicy::Background, "hb"),
        (PropagationPolicy::Foreground, "hf"),
    ] {
        let node = format!("{prefix}-gpu-0");
        create_node(
            c,
            &GpuNode::aks(&node, &format!("{prefix}pool")).label("team", prefix),
        )
        .await
        .unwrap();
        let monitor = PluginPodMonitor::start(c, &[&node]).await;
        create_pool(
            c,
            PoolYaml::new(&format!("{prefix}-old")).agentpool(&format!("{prefix}pool")),
        )
        .await;
        wait_condition(&env, &format!("{prefix}-old"), "Ready", "True", None).await;
        create_pool(
            c,
            PoolYaml::new(&format!("{prefix}-young")).selector("team", prefix),
        )
        .await;
        wait_condition(
            &env,
            &format!("{prefix}-young"),
            "Conflict",
            "True",
            Some("NodesSelectedByOtherPools"),
        )
        .await;
        assert_eq!(
            plugin_owner(c, &node).await.as_deref(),
            Some(format!("{prefix}-old").as_str())
        );

        let params = DeleteParams {
            propagation_policy: Some(policy.clone()),
            ..DeleteParams::default()
        };
        Api::<gpupool::api::GpuPool>::all(c.clone())
            .delete(&format!("{prefix}-old"), &params)
            .await
            .unwrap();
        wait_for(
            &format!("{policy:?}: the young pool's plugin on {node}"),
            TIMEOUT,
            || async {
                let pods = monitor.on(&node);
                (pods.len() == 1 && pods[0].contains(&format!("{prefix}-young"))).then_some(())
            },
        )
        .await;
        wait_condition(&env, &format!("{prefix}-young"), "Ready", "True", None).await;
        let violations = monitor.stop();
        assert!(
            violations.is_empty(),
            "{policy:?}: two plugins on a node: {violations:?}"
        );
    }
}

/// #10.2: a selector change moves a node between overlapping pools, one plugin at a time.
#[tokio::test]
async fn a_selector_change_moves_a_node_between_pools_without_two_plugins() {
    let env = fleet().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("mv-gpu-0", "mvpool").label("zone", "mv-1"))
        .await
        .unwrap();
    let monitor = PluginPodMonitor::start(c, &["mv-gpu-0"]).await;
    create_pool(c, PoolYaml::new("mv-old").agentpool("mvpool")).await;
    wait_condition(&env, "mv-old", "Ready", "True", None).await;
    create_pool(c, PoolYaml::new("mv-young").selector("zone", "mv-1")).await;
    wait_condition(&env, "mv-young", "Conflict", "True", None).await;
    patch_pool(c, "mv-old", serde_json::json!({"spec": {"nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": "elsewhere"}}}})).await;
    wait_for("mv-young's plugin on mv-gpu-0", TIMEOUT, || async {
        let pods = monitor.on("mv-gpu-0");
        (pods.len() == 1 && pods[0].contains("mv-young")).then_some(())
    })
    .await;
    assert_eq!(
        plugin_owner(c, "mv-gpu-0").await.as_deref(),
        Some("mv-young")
    );
    assert_eq!(monitor.stop(), Vec::<String>::new());
}

/// #10.2: a hand-applied plugin that is deleted keeps its nodes until its pods are gone.
#[tokio::test]
async fn a_deleted_foreign_plugin_is_waited_for() {
    let env = fleet().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("fp-gpu-0", "fppool").label("fp", "yes"))
        .await
        .unwrap();
    let monitor = PluginPodMonitor::start(c, &["fp-gpu-0"]).await;
    // The AKS article's manifest, kept to this node.
    let seed: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"name": "nvidia-device-plugin-ds"}},
            "template": {
                "metadata": {"labels": {"name": "nvidia-device-plugin-ds"}},
                "spec": {
                    "nodeSelector": {"fp": "yes"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "nvidia-device-plugin-ctr", "image": "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11"}]
                }
            }
        }
    }))
    .unwrap();
    let daemonsets: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    daemonsets
        .create(&PostParams::default(), &seed)
        .await
        .unwrap();
    wait_for("the seed plugin's pod", TIMEOUT, || async {
        (monitor.on("fp-gpu-0").len() == 1).then_some(())
    })
    .await;
    create_pool(c, PoolYaml::new("fp").agentpool("fppool")).await;
    wait_condition(&env, "fp", "Conflict", "True", Some("ForeignDevicePlugin")).await;
    daemonsets
        .delete(
            "nvidia-device-plugin-daemonset",
            &DeleteParams::background(),
        )
        .await
        .unwrap();
    wait_for("gpupool's plugin on fp-gpu-0", TIMEOUT, || async {
        let pods = monitor.on("fp-gpu-0");
        (pods.len() == 1 && pods[0].contains("nvidia-device-plugin-fp")).then_some(())
    })
    .await;
    assert_eq!(monitor.stop(), Vec::<String>::new());
}

/// #10.2: a younger pool gives way only to an older pool that really serves the node: here the
/// older pool's DaemonSet is refused by the API server, so the younger one serves it, and no
/// status claims the older one does.
#[tokio::test]
async fn a_younger_pool_serves_what_an_older_pool_does_not() {
    let env = fleet().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("rs-gpu-0", "rspool").label("rs", "yes"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("rs-old").agentpool("rspool").extra_spec("  devicePlugin:\n    resources:\n      requests:\n        memory: 2Gi\n      limits:\n        memory: 1Gi\n"),
    )
    .await;
    wait_condition(&env, "rs-old", "Stalled", "True", Some("DaemonSetRejected")).await;
    create_pool(c, PoolYaml::new("rs-young").selector("rs", "yes")).await;
    let young = wait_condition(&env, "rs-young", "Ready", "True", None).await;
    assert_eq!(
        plugin_owner(c, "rs-gpu-0").await.as_deref(),
        Some("rs-young")
    );
    let conflict = condition(&young, "Conflict")
        .expect("the overlap is reported")
        .message
        .clone();
    assert!(conflict.contains("this pool serves them"), "{conflict}");
    let old = get_pool(c, "rs-old").await;
    for problem in &old.status.as_ref().unwrap().problem_nodes {
        assert!(
            !problem.message.contains("which serves it") || !problem.message.contains("rs-young"),
            "{problem:?}"
        );
    }
}

/// #10.5: a node that reboots, or whose plugin restarts, is progress for the grace period from
/// when that problem began, and a failure only after it.
#[tokio::test]
async fn reboots_and_plugin_restarts_are_progress_until_they_outlast_the_grace_period() {
    let env = fleet().await;
    let c = &env.client;
    for name in node_names("rb-gpu", 2) {
        create_node(c, &GpuNode::aks(&name, "rbpool"))
            .await
            .unwrap();
    }
    create_pool(c, PoolYaml::new("rb").agentpool("rbpool")).await;
    wait_condition(&env, "rb", "Ready", "True", None).await;

    // The plugin restarts: GPUs at 0 for a moment, then back.
    set_gpus(c, "rb-gpu-1", 1, 0).await.unwrap();
    let pool = wait_condition(&env, "rb", "Reconciling", "True", Some("WaitingForGpus")).await;
    assert!(
        condition(&pool, "Stalled").is_none(),
        "a plugin restart is not a failure"
    );
    set_gpus(c, "rb-gpu-1", 1, 1).await.unwrap();
    wait_condition(&env, "rb", "Ready", "True", None).await;

    // A reboot: kwok stops playing the kubelet, the node goes NotReady.
    patch_node(
        c,
        "rb-gpu-0",
        serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": null}}}),
    )
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let not_ready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "lastTransitionTime": now, "lastHeartbeatTime": now}]}});
    Api::<k8s_openapi::api::core::v1::Node>::all(c.clone())
        .patch_status(
            "rb-gpu-0",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&not_ready),
        )
        .await
        .unwrap();
    let pool = wait_condition(&env, "rb", "Reconciling", "True", None).await;
    assert!(
        condition(&pool, "Stalled").is_none(),
        "a reboot is not a failure at once"
    );
    let problem = pool
        .status
        .as_ref()
        .unwrap()
        .problem_nodes
        .iter()
        .find(|p| p.name == "rb-gpu-0")
        .cloned()
        .unwrap();
    assert_eq!(problem.reason, "NotReady");
    assert!(problem.since.is_some(), "{problem:?}");
    // It outlasts the grace period: now the pool is failed, and says why.
    let pool = wait_condition(&env, "rb", "Stalled", "True", Some("NodesNotReady")).await;
    assert!(condition(&pool, "Reconciling").is_none());
    // It comes back.
    patch_node(
        c,
        "rb-gpu-0",
        serde_json::json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": "fake"}}}),
    )
    .await;
    wait_condition(&env, "rb", "Ready", "True", None).await;
}

/// #10.6: an image from outside the allowed repositories gets no DaemonSet and stalls the pool;
/// the plugin pod carries no API credentials and mounts only the kubelet's directory.
#[tokio::test]
async fn a_plugin_image_from_elsewhere_is_refused_and_the_plugin_holds_no_credentials() {
    let env = fleet().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("img-gpu-0", "imgpool"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("img")
            .agentpool("imgpool")
            .extra_spec("  devicePlugin:\n    image: registry.example.com/not-nvidia/plugin:1\n"),
    )
    .await;
    let pool = wait_condition(&env, "img", "Stalled", "True", Some("ImageNotAllowed")).await;
    let message = &condition(&pool, "Stalled").unwrap().message;
    assert!(
        message.contains("registry.example.com/not-nvidia/plugin:1")
            && message.contains("--allowed-plugin-images"),
        "{message}"
    );
    assert!(get_daemonset(c, &plugin_name("img")).await.is_none());
    assert_eq!(plugin_owner(c, "img-gpu-0").await, None);

    patch_pool(c, "img", serde_json::json!({"spec": {"devicePlugin": {"image": "nvcr.io/nvidia/k8s-device-plugin:v0.18.0"}}})).await;
    wait_condition(&env, "img", "Ready", "True", None).await;
    let ds = get_daemonset(c, &plugin_name("img")).await.unwrap();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let volume = &pod.volumes.unwrap()[0];
    let host_path = volume.host_path.as_ref().unwrap();
    assert_eq!(
        (host_path.path.as_str(), host_path.type_.as_deref()),
        ("/var/lib/kubelet/device-plugins", Some("Directory"))
    );
}

/// #10.7: nodes whose platform runs the plugin itself (AKS managed GPU; an NVIDIA DRA driver)
/// get none from gpupool, and a DRA node's 0 GPUs are not missing GPUs.
#[tokio::test]
async fn managed_gpu_and_dra_nodes_get_no_plugin_and_miss_no_gpus() {
    let env = fleet().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("mix-gpu-std", "mixpool"))
        .await
        .unwrap();
    create_node(
        c,
        &GpuNode::aks("mix-gpu-managed", "mixpool")
            .label("kubernetes.azure.com/dcgm-exporter", "enabled"),
    )
    .await
    .unwrap();
    create_node(
        c,
        &GpuNode::aks("mix-gpu-dra", "mixpool")
            .gpus(0)
            .label("dratest", "mix")
            .label(
                testenv::simulate::dra::NFD_NVIDIA_PCI_LABEL.0,
                testenv::simulate::dra::NFD_NVIDIA_PCI_LABEL.1,
            ),
    )
    .await
    .unwrap();
    // The driver's kubelet plugin runs on the DRA node (its pod is what makes the node
    // GPU-ready, with its slices); the slice itself is written here as the plugin would.
    testenv::simulate::dra::install(
        c,
        &testenv::simulate::dra::Install::default()
            .namespace("dra-mix")
            .node_selector("dratest", "mix"),
    )
    .await
    .unwrap();
    let slice = serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "mix-gpu-dra-gpu.nvidia.com"},
        "spec": {
            "driver": "gpu.nvidia.com",
            "nodeName": "mix-gpu-dra",
            "pool": {"name": "mix-gpu-dra", "generation": 1, "resourceSliceCount": 1},
            "devices": [{"name": "gpu-0", "attributes": {"type": {"string": "gpu"}, "productName": {"string": "Tesla K80"}}}]
        }
    });
    let slices: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(c.clone());
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(slice).unwrap(),
        )
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("mix").agentpool("mixpool")).await;
    let pool = wait_condition(&env, "mix", "Ready", "True", None).await;
    let status = pool.status.as_ref().unwrap();
    let plugin = status.device_plugin.as_ref().unwrap();
    assert_eq!(
        (
            plugin.mode.as_str(),
            plugin.reason.as_str(),
            status.node_image.as_deref()
        ),
        ("Managed", "MixedImagesDetected", Some("Mixed"))
    );
    assert!(
        plugin.message.contains("managed GPU") && plugin.message.contains("DRA"),
        "{}",
        plugin.message
    );
    assert!(
        status.problem_nodes.iter().all(|p| p.name != "mix-gpu-dra"),
        "{:?}",
        status.problem_nodes
    );
    assert_eq!(status.nodes_with_gpus, 3);
    assert_eq!(plugin_owner(c, "mix-gpu-std").await.as_deref(), Some("mix"));
    assert_eq!(plugin_owner(c, "mix-gpu-managed").await, None);
    assert_eq!(plugin_owner(c, "mix-gpu-dra").await, None);
    wait_daemonset(
        &env,
        &plugin_name("mix"),
        "one pod, on the standard node",
        |ds| {
            ds.status
                .as_ref()
                .is_some_and(|s| s.number_ready == 1 && s.desired_number_scheduled == 1)
        },
    )
    .await;
}

/// #10.2: the node writer checks the API server itself before it puts a pool's plugin label on a
/// node: a reconcile decides from caches, which may not have seen the plugin pod the DaemonSet
/// controller created a moment ago (the SIGKILL churn test caught two plugins that way). A node
/// with a plugin pod, terminating or not, or labelled for a pool whose DaemonSet runs, is not
/// labelled for another pool.
#[tokio::test]
async fn the_plugin_label_goes_on_only_once_the_api_server_shows_the_node_free() {
    use gpupool::controller::node_writes::Written::{Changed, Occupied, Stale};

    let env = fleet().await;
    let c = &env.client;
    let (with_pod, held) = ("nw-gpu-0", "nw-gpu-1");
    create_node(c, &GpuNode::aks(with_pod, "nwpool"))
        .await
        .unwrap();
    create_node(
        c,
        &GpuNode::aks(held, "nwpool").label(DEVICE_PLUGIN_LABEL, "nw-old"),
    )
    .await
    .unwrap();
    let writer = LabelWriter::new(c);

    // A plugin pod of another pool on the node (as its DaemonSet would have made it).
    let pods: Api<Pod> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nw-old-plugin", "labels": {
            "app.kubernetes.io/managed-by": "gpupool", "name": "nvidia-device-plugin-ds",
            "gpupool.io/pool": "nw-old"}},
        "spec": {"nodeName": with_pod, "containers": [{"name": "plugin", "image": "plugin"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    writer.take(with_pod, None, Occupied, None).await;
    // From the cached node (#26): the cache may be wrong, so the write falls back to reading the
    // node and asking the API server whenever it cannot vouch for the cache: a node not vouched
    // for, a plugin pod cached there, or a node changed since the cached version (409).
    let seen = writer.nodes.get(with_pod).await.unwrap();
    for (vouched, plugin_pod) in [(false, false), (true, true)] {
        let cached = cached_node(&seen, vouched, plugin_pod);
        writer
            .take_cached(with_pod, None, Occupied, None, Some(&cached))
            .await;
    }
    // A node changed since the cached version: not written from the cache (the next reconcile
    // writes from the newer one the watch brings); one that keeps changing is read again.
    annotate(c, with_pod, "nw-changed", "yes").await;
    let stale = cached_node(&seen, true, false);
    for _ in 0..2 {
        writer
            .take_cached(with_pod, None, Stale, None, Some(&stale))
            .await;
    }
    writer
        .take_cached(with_pod, None, Occupied, None, Some(&stale))
        .await;
    // Terminating (kwok keeps a deleted plugin pod for a few seconds): still occupied.
    pods.delete("nw-old-plugin", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = pods.get("nw-old-plugin").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    writer.take(with_pod, None, Occupied, None).await;
    wait_deleted(&pods, "nw-old-plugin").await;
    let free = cached_node(&writer.nodes.get(with_pod).await.unwrap(), true, false);
    writer
        .take_cached(with_pod, None, Changed, Some("nw-new"), Some(&free))
        .await;

    // Labelled for a pool whose DaemonSet runs (here one that would start no pod: it is the
    // DaemonSet itself that holds the node, not a pod seen or unseen).
    let daemonsets: Api<DaemonSet> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nw-old-plugin", "labels": {
            "app.kubernetes.io/managed-by": "gpupool", "gpupool.io/pool": "nw-old"}},
        "spec": {
            "selector": {"matchLabels": {"app": "nw-old"}},
            "template": {
                "metadata": {"labels": {"app": "nw-old"}},
                "spec": {"nodeSelector": {"nw-no-such-label": "x"},
                         "containers": [{"name": "plugin", "image": "plugin"}]}
            }
        }
    }))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    writer
        .take(held, Some("nw-old"), Occupied, Some("nw-old"))
        .await;
    daemonsets
        .delete("nw-old-plugin", &DeleteParams::default())
        .await
        .unwrap();
    wait_deleted(&daemonsets, "nw-old-plugin").await;
    writer
        .take(held, Some("nw-old"), Changed, Some("nw-new"))
        .await;
}

/// The operator's node writer, moving device-plugin labels to pool `nw-new`.
struct LabelWriter {
    writer: gpupool::controller::node_writes::NodeWriter,
    nodes: Api<k8s_openapi::api::core::v1::Node>,
}

impl LabelWriter {
    fn new(c: &Client) -> LabelWriter {
        LabelWriter {
            writer: gpupool::controller::node_writes::NodeWriter::new(c.clone(), 50, 10),
            nodes: Api::all(c.clone()),
        }
    }

    /// Writes `from` → `nw-new` on `node`; asserts what the write did and the label after it.
    async fn take(
        &self,
        node: &str,
        from: Option<&str>,
        written: gpupool::controller::node_writes::Written,
        label_after: Option<&str>,
    ) {
        self.take_cached(node, from, written, label_after, None)
            .await;
    }

    /// `take`, offering the writer a cached view of the node.
    async fn take_cached(
        &self,
        node: &str,
        from: Option<&str>,
        written: gpupool::controller::node_writes::Written,
        label_after: Option<&str>,
        cached: Option<&gpupool::controller::node_writes::CachedNode>,
    ) {
        let update = NodeUpdate {
            node: node.to_string(),
            label: Some(LabelChange {
                node: node.to_string(),
                from: from.map(str::to_string),
                to: Some("nw-new".into()),
            }),
            ..NodeUpdate::default()
        };
        let did = self
            .writer
            .write(node, &UpdateEdit(&update), cached)
            .await
            .unwrap();
        assert_eq!(did, written, "{node}");
        let now = self.nodes.get(node).await.unwrap();
        assert_eq!(
            now.labels().get(DEVICE_PLUGIN_LABEL).map(String::as_str),
            label_after,
            "{node}"
        );
    }
}

/// The node as a cache would show it, vouched for or not, with or without a plugin pod.
fn cached_node(
    node: &k8s_openapi::api::core::v1::Node,
    vouched: bool,
    plugin_pod: bool,
) -> gpupool::controller::node_writes::CachedNode {
    gpupool::controller::node_writes::CachedNode {
        facts: std::sync::Arc::new(gpupool::decide::facts::NodeFacts::from_node(node)),
        hint: gpupool::index::WriteHint {
            resource_version: node.metadata.resource_version.clone().unwrap_or_default(),
            vouched,
        },
        plugin_pod,
    }
}

async fn annotate(c: &Client, node: &str, key: &str, value: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    nodes
        .patch(
            node,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {key: value}}}),
            ),
        )
        .await
        .unwrap();
}

async fn wait_deleted<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for(&format!("{name} gone"), TIMEOUT, || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

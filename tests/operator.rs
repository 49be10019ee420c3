//! The whole reconcile loop on a real control plane (etcd, kube-apiserver, controller-manager,
//! scheduler) with kwok GPU nodes, and the operator running as its own process.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use support::*;
use testenv::nodes::{GpuNode, create_cpu_node, create_node, delete_node, set_gpus};
use testenv::wait_for;

#[tokio::test]
async fn standard_pool_gets_a_plugin_on_exactly_its_nodes_and_turns_ready_when_gpus_register() {
    let env = env().await;
    let c = &env.client;
    for name in node_names("std-gpu", 2) {
        create_node(
            c,
            &GpuNode::aks(&name, "stdpool")
                .taint("sku", "gpu", "NoSchedule")
                .no_gpus_yet(),
        )
        .await
        .unwrap();
    }
    create_cpu_node(c, "std-cpu-0", "stdcpu").await.unwrap();
    create_pool(c, PoolYaml::new("std").agentpool("stdpool")).await;

    let ds = wait_daemonset(&env, &plugin_name("std"), "2 plugin pods ready", |ds| {
        ds.status
            .as_ref()
            .is_some_and(|s| s.desired_number_scheduled == 2 && s.number_ready == 2)
    })
    .await;
    let (_, tolerations) = placement(&ds);
    assert!(
        tolerations.contains(&"sku=:NoSchedule".to_string()),
        "{tolerations:?}"
    );
    let per_node = plugin_pods_per_node(c, Some(PLUGIN_NAMESPACE)).await;
    assert_eq!(per_node.get("std-gpu-0"), Some(&1));
    assert_eq!(per_node.get("std-gpu-1"), Some(&1));
    assert_eq!(
        per_node.get("std-cpu-0"),
        None,
        "the plugin stays off CPU nodes"
    );

    // The plugin is ready but no GPU registered: not Ready, and the nodes are named.
    let pool = wait_condition(
        &env,
        "std",
        "DevicePluginReady",
        "True",
        Some("DaemonSetReady"),
    )
    .await;
    let ready = condition(&pool, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("std-gpu-0"), "{}", ready.message);

    for name in node_names("std-gpu", 2) {
        set_gpus(c, &name, 1, 1).await.unwrap();
    }
    let pool = wait_condition(&env, "std", "Ready", "True", Some("Ready")).await;
    let status = pool.status.as_ref().unwrap();
    assert_eq!(
        (
            status.nodes,
            status.nodes_with_gpus,
            status.gpus_capacity,
            status.gpus_allocatable
        ),
        (2, 2, 2, 2)
    );
    assert!(condition(&pool, "Reconciling").is_none() && condition(&pool, "Stalled").is_none());
    assert_eq!(
        status.device_plugin.as_ref().unwrap().daemon_set.as_deref(),
        Some("gpu-resources/nvidia-device-plugin-std")
    );

    // What users and GitOps tools run.
    let out = env
        .plane
        .kubectl()
        .args([
            "wait",
            "--for=condition=Ready",
            "--timeout=30s",
            "gpupool/std",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env
        .plane
        .kubectl()
        .args(["get", "gpupools", "std"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("READY") && table.contains("Managed"),
        "{table}"
    );
}

#[tokio::test]
async fn specialized_pool_gets_no_plugin_and_switching_modes_adds_and_removes_it() {
    let env = env().await;
    let c = &env.client;
    for name in node_names("spec-gpu", 2) {
        create_node(c, &GpuNode::aks(&name, "specpool").specialized())
            .await
            .unwrap();
    }
    create_pool(c, PoolYaml::new("spec").agentpool("specpool")).await;
    let pool = wait_condition(&env, "spec", "Ready", "True", None).await;
    let status = pool.status.as_ref().unwrap();
    let plugin = status.device_plugin.as_ref().unwrap();
    assert_eq!(
        (plugin.mode.as_str(), plugin.reason.as_str()),
        ("Skipped", "SpecializedImageDetected")
    );
    assert_eq!(status.node_image.as_deref(), Some("Specialized"));
    assert_eq!(
        status.gpus_allocatable, 2,
        "GPUs are reported without a plugin of ours"
    );
    assert!(get_daemonset(c, &plugin_name("spec")).await.is_none());

    patch_pool(
        c,
        "spec",
        serde_json::json!({"spec": {"nodeImage": "Standard"}}),
    )
    .await;
    wait_daemonset(&env, &plugin_name("spec"), "created for Standard", |_| true).await;
    wait_pool(&env, "spec", "mode Managed", |p| {
        p.status
            .as_ref()
            .unwrap()
            .device_plugin
            .as_ref()
            .unwrap()
            .mode
            .as_str()
            == "Managed"
    })
    .await;

    patch_pool(
        c,
        "spec",
        serde_json::json!({"spec": {"nodeImage": "Specialized"}}),
    )
    .await;
    wait_daemonset_gone(&env, &plugin_name("spec")).await;
    let pool = wait_condition(&env, "spec", "Ready", "True", None).await;
    assert_eq!(
        pool.status.unwrap().device_plugin.unwrap().reason,
        "SpecializedImageRequested"
    );
}

#[tokio::test]
async fn edits_and_deletion_of_the_daemonset_are_undone() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("drift-gpu-0", "driftpool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("drift").agentpool("driftpool")).await;
    let name = plugin_name("drift");
    wait_condition(&env, "drift", "Ready", "True", None).await;
    let api: Api<DaemonSet> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);

    // Someone changes the image and adds an env var by hand.
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "nvidia-device-plugin-ctr", "image": "example.com/evil:1", "env": [{"name": "INJECTED", "value": "1"}]}
    ]}}}});
    api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    wait_daemonset(&env, &name, "hand edits reverted", |ds| {
        let c = &ds
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        c.image.as_deref() == Some(gpupool::decide::plugin::daemonset::DEFAULT_PLUGIN_IMAGE)
            && c.env.is_none()
    })
    .await;

    // Someone deletes it.
    let uid = get_daemonset(c, &name).await.unwrap().metadata.uid;
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_daemonset(&env, &name, "recreated", |ds| ds.metadata.uid != uid).await;
    wait_condition(&env, "drift", "Ready", "True", None).await;
}

#[tokio::test]
async fn nodes_joining_leaving_and_tainted_update_the_daemonset_and_status() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("member-gpu-0", "memberpool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("member").agentpool("memberpool")).await;
    wait_pool(&env, "member", "1 node", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes == 1 && s.gpus_allocatable == 1)
    })
    .await;

    create_node(c, &GpuNode::aks("member-gpu-1", "memberpool").gpus(4))
        .await
        .unwrap();
    wait_pool(&env, "member", "2 nodes, 5 GPUs", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes == 2 && s.gpus_allocatable == 5)
    })
    .await;

    // A node gains a taint: the plugin must tolerate it.
    let nodes: Api<Node> = Api::all(c.clone());
    let taint = serde_json::json!({"spec": {"taints": [{"key": "team", "value": "ml", "effect": "NoExecute"}]}});
    nodes
        .patch(
            "member-gpu-1",
            &PatchParams::default(),
            &Patch::Merge(&taint),
        )
        .await
        .unwrap();
    // By key (Exists): a new value of the same taint changes nothing.
    wait_daemonset(
        &env,
        &plugin_name("member"),
        "tolerates team:NoExecute",
        |ds| placement(ds).1.contains(&"team=:NoExecute".to_string()),
    )
    .await;

    // A node leaves by relabelling, another by deletion.
    let relabel = serde_json::json!({"metadata": {"labels": {"kubernetes.azure.com/agentpool": "elsewhere"}}});
    nodes
        .patch(
            "member-gpu-1",
            &PatchParams::default(),
            &Patch::Merge(&relabel),
        )
        .await
        .unwrap();
    wait_pool(&env, "member", "back to 1 node", |p| {
        p.status.as_ref().is_some_and(|s| s.nodes == 1)
    })
    .await;
    // A toleration once added stays: a taint that comes and goes (a startup taint) must not
    // restart every plugin pod of the pool each time.
    let ds = get_daemonset(c, &plugin_name("member")).await.unwrap();
    assert!(placement(&ds).1.contains(&"team=:NoExecute".to_string()));
    delete_node(c, "member-gpu-0").await.unwrap();
    // An empty pool is not failing.
    let pool = wait_condition(&env, "member", "Ready", "True", Some("NoNodes")).await;
    assert_eq!(pool.status.unwrap().nodes, 0);
}

#[tokio::test]
async fn a_node_losing_its_gpus_makes_the_pool_not_ready_and_is_named() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("lost-gpu-0", "lostpool").gpus(2))
        .await
        .unwrap();
    create_node(c, &GpuNode::aks("lost-gpu-1", "lostpool").gpus(2))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("lost").agentpool("lostpool")).await;
    wait_condition(&env, "lost", "Ready", "True", None).await;

    set_gpus(c, "lost-gpu-1", 0, 0).await.unwrap();
    let pool = wait_condition(&env, "lost", "Ready", "False", Some("GpusMissing")).await;
    let ready = condition(&pool, "Ready").unwrap();
    assert!(ready.message.contains("lost-gpu-1"), "{}", ready.message);
    let stalled = condition(&pool, "Stalled")
        .expect("a pool losing GPUs is failed, not current, for GitOps tools");
    assert_eq!(stalled.reason, "GpusMissing");
    assert_eq!(
        condition(&pool, "DevicePluginReady").unwrap().status,
        "True",
        "the plugin being up is not enough"
    );
    let problems = &pool.status.as_ref().unwrap().problem_nodes;
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].name.as_str(), problems[0].reason.as_str()),
        ("lost-gpu-1", "NoGpuCapacity")
    );

    set_gpus(c, "lost-gpu-1", 2, 2).await.unwrap();
    wait_condition(&env, "lost", "Ready", "True", None).await;
}

#[tokio::test]
async fn deleting_the_pool_garbage_collects_its_daemonset() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("gc-gpu-0", "gcpool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("gc").agentpool("gcpool")).await;
    wait_daemonset(&env, &plugin_name("gc"), "created", |_| true).await;
    Api::<gpupool::api::GpuPool>::all(c.clone())
        .delete("gc", &DeleteParams::default())
        .await
        .unwrap();
    wait_daemonset_gone(&env, &plugin_name("gc")).await;
}

#[tokio::test]
async fn overlapping_pools_never_put_two_plugins_on_a_node_and_both_report_it() {
    let env = env().await;
    let c = &env.client;
    create_node(
        c,
        &GpuNode::aks("overlap-gpu-0", "overlappool").label("zone", "overlap-z1"),
    )
    .await
    .unwrap();
    create_node(c, &GpuNode::aks("overlap-gpu-1", "overlappool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("overlap-a").agentpool("overlappool")).await;
    wait_condition(&env, "overlap-a", "Ready", "True", None).await;
    create_pool(c, PoolYaml::new("overlap-b").selector("zone", "overlap-z1")).await;

    let young = wait_condition(
        &env,
        "overlap-b",
        "Conflict",
        "True",
        Some("NodesSelectedByOtherPools"),
    )
    .await;
    let msg = &condition(&young, "Conflict").unwrap().message;
    assert!(
        msg.contains("overlap-gpu-0") && msg.contains("overlap-a"),
        "{msg}"
    );
    let old = wait_condition(&env, "overlap-a", "Conflict", "True", None).await;
    assert!(
        condition(&old, "Conflict")
            .unwrap()
            .message
            .contains("overlap-b")
    );

    // The node keeps the old pool's label (its plugin); the old one keeps serving it.
    let node = Api::<Node>::all(c.clone())
        .get("overlap-gpu-0")
        .await
        .unwrap();
    assert_eq!(
        node.metadata
            .labels
            .unwrap()
            .get("gpupool.io/device-plugin")
            .map(String::as_str),
        Some("overlap-a")
    );
    wait_daemonset(&env, &plugin_name("overlap-a"), "2 pods ready", |ds| {
        ds.status.as_ref().is_some_and(|s| s.number_ready == 2)
    })
    .await;
    let per_node = plugin_pods_per_node(c, None).await;
    assert_eq!(per_node.get("overlap-gpu-0"), Some(&1), "{per_node:?}");

    // Removing the overlap clears the conflict on both.
    Api::<gpupool::api::GpuPool>::all(c.clone())
        .delete("overlap-b", &DeleteParams::default())
        .await
        .unwrap();
    wait_pool(&env, "overlap-a", "conflict cleared", |p| {
        condition(p, "Conflict").is_none()
    })
    .await;
}

#[tokio::test]
async fn a_hand_applied_seed_plugin_is_reported_and_never_doubled() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("seed-gpu-0", "seedpool"))
        .await
        .unwrap();
    create_node(
        c,
        &GpuNode::aks("seed-gpu-1", "seedpool").label("seed", "yes"),
    )
    .await
    .unwrap();
    // The AKS article's manifest, restricted to one node so it does not touch other tests' nodes.
    let ns = "seed-test";
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    nsapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let seed: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"name": "nvidia-device-plugin-ds"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": {"name": "nvidia-device-plugin-ds"}, "annotations": {"scheduler.alpha.kubernetes.io/critical-pod": ""}},
                "spec": {
                    "nodeSelector": {"seed": "yes"},
                    "tolerations": [
                        {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [{
                        "name": "nvidia-device-plugin-ctr",
                        "image": "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11",
                        "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}]
                    }],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]
                }
            }
        }
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &seed)
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("seed").agentpool("seedpool")).await;

    let pool = wait_condition(
        &env,
        "seed",
        "Conflict",
        "True",
        Some("ForeignDevicePlugin"),
    )
    .await;
    let msg = &condition(&pool, "Conflict").unwrap().message;
    assert!(
        msg.contains("seed-test/nvidia-device-plugin-daemonset") && msg.contains("seed-gpu-1"),
        "{msg}"
    );
    wait_daemonset(
        &env,
        &plugin_name("seed"),
        "1 pod ready, seed-gpu-1 excluded",
        |ds| {
            ds.status
                .as_ref()
                .is_some_and(|s| s.desired_number_scheduled == 1 && s.number_ready == 1)
        },
    )
    .await;
    wait_for("the seed plugin's pod to run", TIMEOUT, || async {
        let per_node = plugin_pods_per_node(c, Some(ns)).await;
        (per_node.get("seed-gpu-1") == Some(&1)).then_some(())
    })
    .await;
    let ours = plugin_pods_per_node(c, Some(PLUGIN_NAMESPACE)).await;
    assert_eq!(
        ours.get("seed-gpu-1"),
        None,
        "no second plugin next to the hand-applied one"
    );
    assert_eq!(ours.get("seed-gpu-0"), Some(&1));

    // Removing the hand-applied plugin hands the node to gpupool.
    Api::<DaemonSet>::namespaced(c.clone(), ns)
        .delete("nvidia-device-plugin-daemonset", &DeleteParams::default())
        .await
        .unwrap();
    wait_pool(&env, "seed", "conflict cleared", |p| {
        condition(p, "Conflict").is_none()
    })
    .await;
    wait_daemonset(&env, &plugin_name("seed"), "2 pods", |ds| {
        ds.status
            .as_ref()
            .is_some_and(|s| s.desired_number_scheduled == 2)
    })
    .await;
}

#[tokio::test]
async fn a_missing_priority_class_is_reported_as_a_stuck_rollout_until_fixed() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("prio-gpu-0", "priopool"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("prio")
            .agentpool("priopool")
            .extra_spec("  devicePlugin:\n    priorityClassName: does-not-exist\n"),
    )
    .await;
    // Pods cannot be created; after the rollout deadline (10 s in tests) that is reported as such.
    let pool = wait_condition(
        &env,
        "prio",
        "DevicePluginReady",
        "False",
        Some("DaemonSetRolloutStuck"),
    )
    .await;
    assert!(
        condition(&pool, "DevicePluginReady")
            .unwrap()
            .message
            .contains("PriorityClass")
    );
    assert!(
        condition(&pool, "Reconciling").is_none(),
        "a stuck rollout is not progress"
    );
    assert_eq!(condition(&pool, "Ready").unwrap().status, "False");
    patch_pool(
        c,
        "prio",
        serde_json::json!({"spec": {"devicePlugin": {"priorityClassName": null}}}),
    )
    .await;
    wait_condition(&env, "prio", "Ready", "True", None).await;
}

#[tokio::test]
async fn a_daemonset_the_api_server_rejects_stalls_the_pool_without_a_hot_loop() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("stall-gpu-0", "stallpool"))
        .await
        .unwrap();
    // Passes the CRD schema, but a DaemonSet whose memory request exceeds its limit is invalid.
    create_pool(
        c,
        PoolYaml::new("stall").agentpool("stallpool").extra_spec(
            "  devicePlugin:\n    resources:\n      requests:\n        memory: 2Gi\n      limits:\n        memory: 1Gi\n",
        ),
    )
    .await;
    let pool = wait_condition(&env, "stall", "Stalled", "True", Some("DaemonSetRejected")).await;
    let stalled = condition(&pool, "Stalled").unwrap();
    assert!(stalled.message.contains("memory"), "{}", stalled.message);
    assert_eq!(
        condition(&pool, "Ready").unwrap().reason,
        "DaemonSetRejected"
    );
    assert!(condition(&pool, "Reconciling").is_none());
    assert!(get_daemonset(c, &plugin_name("stall")).await.is_none());
    // No hot loop: counted in the API server's audit log, over a window in which retrying with
    // backoff (1 s, 2 s, 4 s...) would have written several times; a stall waits a minute.
    let since = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    create_node(c, &GpuNode::aks("stall-probe-0", "stallprobe"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("stall-probe").agentpool("stallprobe")).await;
    wait_condition(&env, "stall-probe", "Ready", "True", None).await;
    // The probe's status write in the audit log: the log is flushed up to there.
    wait_for(
        "the audit log to show the probe pool's status write",
        TIMEOUT,
        || async {
            operator_requests(&env, since)
                .iter()
                .any(|r| {
                    r.resource == "gpupools/status" && r.name.as_deref() == Some("stall-probe")
                })
                .then_some(())
        },
    )
    .await;
    let stall_writes: Vec<_> = operator_requests(&env, since)
        .into_iter()
        .filter(|r| r.is_write())
        .filter(|r| {
            [Some("stall"), Some(plugin_name("stall").as_str())].contains(&r.name.as_deref())
        })
        .collect();
    assert!(
        stall_writes.is_empty(),
        "the stalled pool was written to within seconds: {stall_writes:?}"
    );
    assert!(
        operator_requests(&env, since).iter().any(|r| r.is_write()),
        "the operator wrote nothing at all: the audit log does not show it"
    );

    patch_pool(
        c,
        "stall",
        serde_json::json!({"spec": {"devicePlugin": {"resources": {"limits": {"memory": "4Gi"}}}}}),
    )
    .await;
    let pool = wait_condition(&env, "stall", "Ready", "True", None).await;
    assert!(
        condition(&pool, "Stalled").is_none(),
        "Stalled disappears once resolved"
    );
}

#[tokio::test]
async fn nothing_is_written_when_nothing_changed() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("quiet-gpu-0", "quietpool"))
        .await
        .unwrap();
    create_node(c, &GpuNode::aks("quiet-probe-0", "quietprobe"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("quiet").agentpool("quietpool")).await;
    create_pool(c, PoolYaml::new("quiet-probe").agentpool("quietprobe")).await;
    let before = wait_condition(&env, "quiet", "Ready", "True", None).await;
    wait_daemonset(&env, &plugin_name("quiet"), "ready", |ds| {
        ds.status.as_ref().is_some_and(|s| s.number_ready == 1)
    })
    .await;
    let before = get_pool(c, &gpupool_name(&before)).await;
    let ds_before = get_daemonset(c, &plugin_name("quiet")).await.unwrap();
    // The reconcile that wrote Ready publishes its events right after; wait for them.
    let events_before = wait_for("the pool's creation events", TIMEOUT, || async {
        let events = events_about(c, "quiet").await;
        events
            .iter()
            .any(|(reason, _)| reason == "Ready")
            .then_some(events)
    })
    .await;

    // Irrelevant node changes (an annotation, as heartbeats and other controllers make).
    let nodes: Api<Node> = Api::all(c.clone());
    let noise = serde_json::json!({"metadata": {"annotations": {"example.com/noise": "1"}}});
    nodes
        .patch(
            "quiet-gpu-0",
            &PatchParams::default(),
            &Patch::Merge(&noise),
        )
        .await
        .unwrap();
    // A relevant change elsewhere, issued after the noise: once the operator has processed it,
    // it has processed the noise too.
    set_gpus(c, "quiet-probe-0", 3, 3).await.unwrap();
    wait_pool(&env, "quiet-probe", "3 GPUs", |p| {
        p.status.as_ref().is_some_and(|s| s.gpus_allocatable == 3)
    })
    .await;

    let after = get_pool(c, "quiet").await;
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version,
        "status rewritten without a change:\nbefore: {}\nafter: {}",
        yaml_serde::to_string(&before.status).unwrap(),
        yaml_serde::to_string(&after.status).unwrap()
    );
    let ds_after = get_daemonset(c, &plugin_name("quiet")).await.unwrap();
    assert_eq!(
        ds_after.metadata.generation, ds_before.metadata.generation,
        "DaemonSet rewritten without a change"
    );
    assert_eq!(
        events_about(c, "quiet").await,
        events_before,
        "no events in steady state"
    );
}

fn gpupool_name(p: &gpupool::api::GpuPool) -> String {
    name_of(p)
}

#[tokio::test]
async fn long_pool_names_get_legal_daemonset_names() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("long-gpu-0", "longpool"))
        .await
        .unwrap();
    let name = format!("{}.example.com", "a-very-long-gpu-pool-name".repeat(8));
    assert!(name.len() > 200);
    create_pool(c, PoolYaml::new(&name).agentpool("longpool")).await;
    let ds = wait_daemonset(&env, &plugin_name(&name), "1 pod ready", |ds| {
        ds.status.as_ref().is_some_and(|s| s.number_ready == 1)
    })
    .await;
    assert!(ds.metadata.name.unwrap().len() <= 63);
    wait_condition(&env, &name, "Ready", "True", None).await;
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn an_auto_pool_never_puts_its_plugin_on_a_specialized_image_node() {
    let env = env().await;
    let c = &env.client;
    create_node(c, &GpuNode::aks("mixed-std-0", "mixedpool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("mixed").agentpool("mixedpool")).await;
    wait_condition(&env, "mixed", "Ready", "True", None).await;

    // A node with the GPU-dedicated image joins: it ships its own plugin.
    create_node(
        c,
        &GpuNode::aks("mixed-special-0", "mixedpool").specialized(),
    )
    .await
    .unwrap();
    let pool = wait_pool(&env, "mixed", "2 nodes, mixed images, Ready", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes == 2 && s.node_image.as_deref() == Some("Mixed"))
            && condition(p, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    let plugin = pool
        .status
        .as_ref()
        .unwrap()
        .device_plugin
        .as_ref()
        .unwrap();
    assert_eq!(plugin.reason, "MixedImagesDetected");
    assert!(
        plugin.message.contains("mixed-special-0"),
        "{}",
        plugin.message
    );
    assert_eq!(pool.status.as_ref().unwrap().gpus_allocatable, 2);
    let ds = wait_daemonset(&env, &plugin_name("mixed"), "1 pod", |ds| {
        ds.status
            .as_ref()
            .is_some_and(|s| s.desired_number_scheduled == 1 && s.number_ready == 1)
    })
    .await;
    assert_eq!(ds.status.unwrap().desired_number_scheduled, 1);
    let per_node = plugin_pods_per_node(c, Some(PLUGIN_NAMESPACE)).await;
    assert_eq!(per_node.get("mixed-special-0"), None, "{per_node:?}");
    assert_eq!(per_node.get("mixed-std-0"), Some(&1));
}

/// (reason, count) of the Events about a pool, as `kubectl describe` shows them.
async fn events_about(c: &kube::Client, pool: &str) -> Vec<(String, i32)> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "default");
    let mut out: Vec<(String, i32)> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool))
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.series.map_or(1, |s| s.count),
            )
        })
        .collect();
    out.sort();
    out
}

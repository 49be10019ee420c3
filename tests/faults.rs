//! Faults: the operator SIGKILLed repeatedly while pools and nodes churn, kube-apiserver and etcd
//! restarted under it (with etcd compacted, so its watches expire with 410 Gone), and garbage on
//! nodes. Tests that break the plane start their own; the garbage test shares the plane and the
//! operator of the other integration tests.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

use gpupool::api::GpuPool;
use gpupool::decide::facts::NodeFacts;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use support::replicas::{account_user, admin_accounts, lease_holder, own_plane};
use support::*;
use testenv::nodes::{GpuNode, create_node, delete_node, set_gpus};
use testenv::{ChildProcess, Options};

/// Bound for convergence after a restart; generous for a 2-core machine running other planes.
/// After an API server restart kube-runtime's default watcher backoff (up to 30 s, and a 410
/// Gone counts as an error too) can leave a watch idle for tens of seconds: observed 12–70 s.
const CONVERGE: Duration = Duration::from_secs(150);

/// Everything wrong with the cluster right now, as far as the operator is responsible: pools
/// whose status is not current or not correct vs the nodes, pools without their DaemonSet,
/// duplicate DaemonSets for a pool, and DaemonSets whose owner pool does not exist.
async fn convergence_problems(client: &Client) -> Vec<String> {
    let pools = Api::<GpuPool>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let nodes: Vec<NodeFacts> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(NodeFacts::from_node).collect())
        .unwrap_or_default();
    let daemonsets = Api::<DaemonSet>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut problems = Vec::new();
    let live: BTreeMap<String, &GpuPool> = pools
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.uid().unwrap_or_default(), p))
        .collect();
    for pool in live.values() {
        let name = pool.name_any();
        let members: Vec<&NodeFacts> = nodes
            .iter()
            .filter(|n| pool.spec.node_selector.selects(&n.labels))
            .collect();
        let allocatable: i64 = members.iter().map(|n| n.gpus_allocatable()).sum();
        let Some(status) = pool.status.as_ref() else {
            problems.push(format!("{name}: no status"));
            continue;
        };
        if status.observed_generation != pool.metadata.generation {
            problems.push(format!(
                "{name}: observedGeneration {:?} != generation {:?}",
                status.observed_generation, pool.metadata.generation
            ));
        }
        if status.nodes as usize != members.len() || status.gpus_allocatable != allocatable {
            problems.push(format!(
                "{name}: status says {} nodes / {} GPUs, the cluster has {} / {}",
                status.nodes,
                status.gpus_allocatable,
                members.len(),
                allocatable
            ));
        }
        let managed = status
            .device_plugin
            .as_ref()
            .is_some_and(|d| d.mode.as_str() == "Managed");
        let has_ds = daemonsets
            .iter()
            .any(|ds| ds.name_any() == plugin_name(&name) && owner_uid(ds) == pool.uid());
        if managed && !has_ds {
            problems.push(format!("{name}: its DaemonSet is missing"));
        }
    }
    let mut per_owner: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ds in daemonsets.iter() {
        if let Some(uid) = owner_uid(ds) {
            per_owner.entry(uid).or_default().push(ds.name_any());
        }
    }
    for (uid, names) in per_owner {
        match live.get(&uid) {
            None => problems.push(format!(
                "orphaned DaemonSet(s) {names:?} (owner uid {uid} is gone)"
            )),
            Some(pool) if names.len() > 1 => problems.push(format!(
                "duplicate DaemonSets {names:?} for pool {}",
                pool.name_any()
            )),
            Some(_) => {}
        }
    }
    problems
}

async fn wait_converged(client: &Client, what: &str, log: &dyn Fn() -> String) {
    let started = Instant::now();
    let deadline = started + CONVERGE;
    let mut next_report = started + Duration::from_secs(5);
    loop {
        let problems = convergence_problems(client).await;
        if problems.is_empty() {
            return;
        }
        if Instant::now() > next_report {
            eprintln!(
                "still converging {what} after {:?}: {}",
                started.elapsed(),
                problems.join("; ")
            );
            next_report += Duration::from_secs(5);
        }
        if Instant::now() > deadline {
            panic!(
                "not converged {what} after {CONVERGE:?}:\n{}\noperator log:\n{}",
                problems.join("\n"),
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn relabel(client: &Client, node: &str, agentpool: &str) {
    let patch = serde_json::json!({"metadata": {"labels": {
        "kubernetes.azure.com/agentpool": agentpool, "agentpool": agentpool
    }}});
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn delete_pool(client: &Client, name: &str) {
    match Api::<GpuPool>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("deleting pool {name}: {e}"),
    }
}

fn log_tail(op: &ChildProcess) -> String {
    op.log_tail(40)
}

/// Waits for `f` like `testenv::wait_for`, but reads the operator's log when it gives up, not
/// when it starts.
async fn wait_logged<T, Fut>(what: &str, op: &ChildProcess, f: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    testenv::poll_until(what, CONVERGE, Duration::from_millis(200), f)
        .await
        .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", log_tail(op)))
}

/// A deleted pool is gone once its plugin pods are (its finalizer): as `kubectl wait
/// --for=delete` would, wait for that before a pool of the same name is created again.
async fn wait_pool_gone(client: &Client, name: &str, op: &ChildProcess) {
    let pools: Api<GpuPool> = Api::all(client.clone());
    wait_logged(&format!("pool {name} to be gone"), op, || async {
        pools.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_repeatedly_while_pools_and_nodes_churn_it_always_converges() {
    let (plane, c) = own_plane(Options::default()).await;
    let agentpools = ["ka", "kb", "kc"];
    for (p, agentpool) in agentpools.iter().enumerate() {
        for i in 0..3 {
            let mut node = GpuNode::aks(&format!("k-{agentpool}-{i}"), agentpool).gpus(1 + i);
            if i == 0 {
                // The overlapping pool "k-zone" selects zone=z1 across agent pools.
                node = node.label("zone", "z1");
            }
            if p == 2 {
                node = node.taint("sku", "gpu", "NoSchedule");
            }
            create_node(&c, &node).await.unwrap();
        }
    }
    let mut op = start_operator(&plane, plane.kubeconfig_path().to_path_buf(), "op-0", &[]);
    for agentpool in agentpools {
        create_pool(
            &c,
            PoolYaml::new(&format!("k-{agentpool}")).agentpool(agentpool),
        )
        .await;
    }
    // Younger and overlapping: it must leave k-ka-0 and k-kb-0 to the older pools.
    let zone_pool = PoolYaml::new("k-zone").selector("zone", "z1");
    create_pool(&c, &zone_pool).await;
    wait_converged(&c, "initially", &|| log_tail(&op)).await;
    // Every pod event, not samples: two plugin pods on a node, neither terminating, at any moment.
    let doubles = PluginPodMonitor::start_live_pods(&c).await;

    let mut extra_nodes: Vec<String> = Vec::new();
    for round in 0..5u32 {
        let agentpool = agentpools[round as usize % 3];
        // Churn while the operator is up, and kill it in the middle of it.
        let new_node = format!("k-new-{round}");
        create_node(&c, &GpuNode::aks(&new_node, agentpool).gpus(2))
            .await
            .unwrap();
        extra_nodes.push(new_node);
        set_gpus(&c, &format!("k-{agentpool}-1"), 4, 3 - round % 2)
            .await
            .unwrap();
        match round {
            0 => {
                patch_pool(
                    &c,
                    "k-ka",
                    serde_json::json!({"spec": {"expectedGpusPerNode": 2, "devicePlugin": {"env": [{"name": "ROUND", "value": "0"}]}}}),
                )
                .await
            }
            1 => delete_pool(&c, "k-zone").await,
            2 => {
                wait_pool_gone(&c, "k-zone", &op).await;
                create_pool(&c, &zone_pool).await;
            }
            3 => delete_pool(&c, "k-kb").await,
            _ => {
                wait_pool_gone(&c, "k-kb", &op).await;
                create_pool(&c, PoolYaml::new("k-kb").agentpool("kb")).await;
            }
        }
        assert!(
            op.try_wait().is_none(),
            "the operator died on its own:\n{}",
            log_tail(&op)
        );
        op.kill();
        // More churn while it is down.
        let moved = format!("k-{}-2", agentpools[(round as usize + 1) % 3]);
        relabel(&c, &moved, agentpools[(round as usize + 2) % 3]).await;
        if round >= 2 {
            let gone = extra_nodes.remove(0);
            delete_node(&c, &gone).await.unwrap();
        }
        if round == 2 {
            patch_pool(
                &c,
                "k-kc",
                serde_json::json!({"spec": {"nodeSelector": {"matchExpressions": [{"key": "kubernetes.azure.com/agentpool", "operator": "In", "values": ["kc", "ka"]}]}}}),
            )
            .await;
        }
        if round == 4 {
            patch_pool(
                &c,
                "k-kc",
                serde_json::json!({"spec": {"nodeSelector": {"matchExpressions": null}}}),
            )
            .await;
        }
        op = start_operator(
            &plane,
            plane.kubeconfig_path().to_path_buf(),
            &format!("op-{}", round + 1),
            &[],
        );
        let started = Instant::now();
        wait_converged(&c, &format!("after restart {}", round + 1), &|| {
            log_tail(&op)
        })
        .await;
        eprintln!(
            "round {round}: converged {:?} after the restart",
            started.elapsed()
        );
    }
    let found = doubles.stop();
    assert!(
        found.is_empty(),
        "a node ran two device-plugin pods:\n{}",
        found.join("\n")
    );
    assert!(op.try_wait().is_none(), "{}", log_tail(&op));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_and_etcd_restart_with_expired_watches_it_reconnects_and_converges() {
    // Without the watch cache, watches are served by etcd itself, so resuming one from a
    // compacted revision is answered with 410 Gone — deterministically. Node heartbeats are
    // slowed down so nothing advances the operator's watches between the writes below and the
    // compaction.
    let (plane, c) = own_plane(Options {
        apiserver_args: vec!["--watch-cache=false".into()],
        node_status_heartbeat: Duration::from_secs(600),
        ..Options::default()
    })
    .await;
    for i in 0..2 {
        create_node(&c, &GpuNode::aks(&format!("r-gpu-{i}"), "rpool"))
            .await
            .unwrap();
    }
    let mut op = start_operator(
        &plane,
        plane.kubeconfig_path().to_path_buf(),
        "operator",
        &["--log-level", "info,gpupool=debug,kube_runtime=debug"],
    );
    let pid = op.id();
    create_pool(&c, PoolYaml::new("r").agentpool("rpool")).await;
    wait_converged(&c, "before the restart", &|| log_tail(&op)).await;

    // Advance etcd past every revision the operator has seen, compact, restart.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..3 {
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": format!("bump-{i}")}}))
                .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let revision = plane.compact_etcd().await.unwrap();
    plane
        .restart_apiserver()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let c = plane.client().await;

    // Changes after the restart: a node joins, another loses a GPU, a new pool appears.
    create_node(&c, &GpuNode::aks("r-gpu-2", "rpool").gpus(2))
        .await
        .unwrap();
    set_gpus(&c, "r-gpu-0", 1, 0).await.unwrap();
    create_node(&c, &GpuNode::aks("r2-gpu-0", "r2pool"))
        .await
        .unwrap();
    create_pool(&c, PoolYaml::new("r2").agentpool("r2pool")).await;
    wait_converged(&c, "after the restart", &|| log_tail(&op)).await;
    let r = get_pool(&c, "r").await;
    assert_eq!(
        (
            r.status.as_ref().unwrap().nodes,
            r.status.as_ref().unwrap().gpus_allocatable
        ),
        (3, 3)
    );
    assert!(
        op.try_wait().is_none(),
        "the operator exited:\n{}",
        log_tail(&op)
    );
    assert_eq!(op.id(), pid);
    let log = std::fs::read_to_string(op.log_path()).unwrap();
    // The operator's own line for a re-list, which only an expired watch (410 Gone) causes; not
    // "410" anywhere in a line (timestamps have it).
    let expired = log
        .lines()
        .filter(|l| l.contains("re-listed after the watch expired"))
        .count();
    eprintln!("etcd compacted at revision {revision}; {expired} watches re-listed after expiring");
    assert!(
        expired > 0,
        "no watch expired (410 Gone) after compaction and restart, so re-listing went untested:\n{}",
        log_tail(&op)
    );
    op.stop(Duration::from_secs(5)).await;
}

/// Nodes as the API server stores them, bypassing the harness's well-formed builder.
async fn create_raw_node(client: &Client, body: serde_json::Value) -> Result<Node, String> {
    let node: Node = serde_json::from_value(body).map_err(|e| e.to_string())?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn garbage_on_nodes_never_crashes_the_operator() {
    let env = env().await;
    let c = &env.client;
    let pid = operator_pid().expect("the shared operator runs");
    let base_labels = |name: &str| {
        serde_json::json!({
            "kubernetes.azure.com/agentpool": "garbage", "kubernetes.io/hostname": name
        })
    };
    let fake = serde_json::json!({"kwok.x-k8s.io/node": "fake"});
    let mut accepted: Vec<String> = Vec::new();
    let mut rejected: Vec<String> = Vec::new();
    let mut create = |what: &str, result: Result<Node, String>| match result {
        Ok(n) => accepted.push(format!("{what} ({})", n.name_any())),
        Err(e) => rejected.push(format!("{what}: {e}")),
    };

    // GPU quantities: whatever the API server lets through.
    for (i, q) in [
        "lots",
        "1.5",
        "500m",
        "-1",
        "1k",
        "2Ei",
        "1e3",
        "9223372036854775807",
        "9223372036854775807",
        "99999999999999999999999",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("garbage-q{i}");
        let body = serde_json::json!({
            "metadata": {"name": name, "labels": base_labels(&name), "annotations": fake},
            "status": {"capacity": {"nvidia.com/gpu": q, "cpu": "4", "pods": "110"},
                       "allocatable": {"nvidia.com/gpu": q, "cpu": "4", "pods": "110"}}
        });
        create(
            &format!("nvidia.com/gpu {q}"),
            create_raw_node(c, body).await,
        );
    }
    // No status at all, never managed by kwok: readiness unknown forever.
    let body = serde_json::json!({"metadata": {"name": "garbage-nostatus", "labels": base_labels("garbage-nostatus")}});
    create("no status", create_raw_node(c, body).await);
    // Odd but legal labels: 100 of them, maximal keys and values, dots, dashes, underscores.
    let mut labels = base_labels("garbage-labels");
    for i in 0..100 {
        let prefix = format!("{}.example.com", "p".repeat(200));
        let key = format!("{prefix}/{}-{i:03}", "k".repeat(55));
        labels[key] = serde_json::json!(format!("{}_.-{i:03}x", "v".repeat(56)));
    }
    labels["accelerator"] = serde_json::json!("");
    let body = serde_json::json!({"metadata": {"name": "garbage-labels", "labels": labels, "annotations": fake}});
    create("100 maximal labels", create_raw_node(c, body).await);
    // A huge annotation (the cache drops annotations).
    let body = serde_json::json!({"metadata": {"name": "garbage-annotation", "labels": base_labels("garbage-annotation"),
        "annotations": {"kwok.x-k8s.io/node": "fake", "example.com/blob": "x".repeat(200_000)}}});
    create("200 kB annotation", create_raw_node(c, body).await);
    // 100 taints of every effect, one with an empty value and one with a very long key.
    let taints: Vec<serde_json::Value> = (0..100)
        .map(|i| {
            let effect = ["NoSchedule", "NoExecute", "PreferNoSchedule"][i % 3];
            serde_json::json!({
                "key": format!("garbage.example.com/t{i}"),
                "value": if i % 2 == 0 { format!("v{i}") } else { String::new() },
                "effect": effect,
            })
        })
        .collect();
    let body = serde_json::json!({"metadata": {"name": "garbage-taints", "labels": base_labels("garbage-taints"), "annotations": fake},
        "spec": {"taints": taints},
        "status": {"capacity": {"nvidia.com/gpu": "1"}, "allocatable": {"nvidia.com/gpu": "1"}}});
    create("100 taints", create_raw_node(c, body).await);
    // Conditions that make no sense.
    let body = serde_json::json!({"metadata": {"name": "garbage-conditions", "labels": base_labels("garbage-conditions")},
    "status": {"conditions": [
        {"type": "Ready", "status": "Maybe"}, {"type": "Ready", "status": "True"}, {"type": "", "status": ""}
    ]}});
    create("nonsense conditions", create_raw_node(c, body).await);
    eprintln!(
        "accepted by the API server:\n  {}\nrejected by the API server:\n  {}",
        accepted.join("\n  "),
        rejected.join("\n  ")
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.starts_with("nvidia.com/gpu lots")),
        "the API server is expected to reject a non-numeric quantity"
    );

    create_pool(c, PoolYaml::new("garbage").agentpool("garbage")).await;
    let members = accepted.len();
    let pool = wait_pool(&env, "garbage", "every garbage node counted", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes as usize == members)
    })
    .await;
    eprintln!(
        "garbage pool status:\n{}",
        yaml_serde::to_string(&pool.status).unwrap()
    );
    let status = pool.status.as_ref().unwrap();
    assert!(
        status.gpus_allocatable >= 0 && status.gpus_capacity >= 0,
        "GPU sums overflowed: {status:?}"
    );
    let ds = wait_daemonset(&env, &plugin_name("garbage"), "created", |_| true).await;
    let (_, tolerations) = placement(&ds);
    for i in (0..100).filter(|i| i % 3 != 2) {
        assert!(
            tolerations
                .iter()
                .any(|t| t.starts_with(&format!("garbage.example.com/t{i}="))),
            "taint t{i} is not tolerated: {tolerations:?}"
        );
    }

    // Garbage changing under it: labels flip, GPUs change, nodes vanish.
    relabel(c, "garbage-labels", "garbage2").await;
    delete_node(c, "garbage-nostatus").await.unwrap();
    let _ = Api::<Node>::all(c.clone())
        .patch_status(
            "garbage-taints",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"allocatable": {"nvidia.com/gpu": "0"}}})),
        )
        .await;
    wait_pool(&env, "garbage", "the changes counted", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.nodes as usize == members - 2)
    })
    .await;

    // Still the same process, still reconciling other pools.
    assert_eq!(operator_exit(), None, "{}", operator_log(env.plane));
    assert_eq!(operator_pid(), Some(pid));
    create_node(c, &GpuNode::aks("garbage-after-0", "garbageafter"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("garbage-after").agentpool("garbageafter")).await;
    wait_condition(&env, "garbage-after", "Ready", "True", None).await;
    let names: BTreeSet<String> = accepted.iter().cloned().collect();
    assert!(!names.is_empty());
}

/// The uid of the GpuPool controlling a DaemonSet, if one does.
fn owner_uid(ds: &DaemonSet) -> Option<String> {
    gpupool::decide::facts::DaemonSetFacts::from_daemonset(ds)
        .pool_owner
        .map(|o| o.uid)
}

/// Scrapes the operator's /metrics.
async fn metrics(port: u16) -> String {
    testenv::http::get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// #10.3: a pool, a node and a foreign device plugin deleted while the operator's watches were
/// down (paused, then the API server restarted over a compacted etcd: 410 Gone, a re-list). After
/// the re-list nothing of them is left: no metric series of the pool, the pool that lost the node
/// counts one node fewer, and the node the foreign plugin held gets gpupool's plugin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_vanished_while_the_watch_was_down_is_dropped_after_the_relist() {
    let (plane, c) = own_plane(Options {
        apiserver_args: vec!["--watch-cache=false".into()],
        node_status_heartbeat: Duration::from_secs(600),
        ..Options::default()
    })
    .await;
    for node in ["v-keep-0", "v-keep-1"] {
        create_node(&c, &GpuNode::aks(node, "vkeep")).await.unwrap();
    }
    create_node(&c, &GpuNode::aks("v-gone-0", "vgone"))
        .await
        .unwrap();
    create_node(
        &c,
        &GpuNode::aks("v-foreign-0", "vforeign").label("seed", "v"),
    )
    .await
    .unwrap();
    let seed: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"name": "nvidia-device-plugin-ds"}},
            "template": {
                "metadata": {"labels": {"name": "nvidia-device-plugin-ds"}},
                "spec": {"nodeSelector": {"seed": "v"}, "containers": [{"name": "c", "image": "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11"}]}
            }
        }
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &seed)
        .await
        .unwrap();
    let port = testenv::free_port().unwrap();
    let mut op = start_operator(
        &plane,
        plane.kubeconfig_path().to_path_buf(),
        "operator",
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    for (pool, agentpool) in [
        ("v-keep", "vkeep"),
        ("v-gone", "vgone"),
        ("v-foreign", "vforeign"),
    ] {
        create_pool(&c, PoolYaml::new(pool).agentpool(agentpool)).await;
    }
    testenv::wait_for("the pools reported", CONVERGE, || async {
        let m = metrics(port).await;
        (m.contains(r#"gpupool_pool_nodes{pool="v-gone"} 1"#)
            && m.contains(r#"gpupool_pool_nodes{pool="v-keep"} 2"#))
        .then_some(())
    })
    .await;
    let foreign = get_pool(&c, "v-foreign").await;
    assert!(condition(&foreign, "Conflict").is_some_and(|c| c.reason == "ForeignDevicePlugin"));
    // Rollouts finished: no DaemonSet status update is still on its way to the paused watches.
    wait_logged("v-keep and v-gone Ready", &op, || async {
        for pool in ["v-keep", "v-gone"] {
            let pool = get_pool(&c, pool).await;
            condition(&pool, "Ready").filter(|r| r.status == "True")?;
        }
        Some(())
    })
    .await;

    op.pause();
    let pools: Api<GpuPool> = Api::all(c.clone());
    pools
        .delete("v-gone", &DeleteParams::default())
        .await
        .unwrap();
    // The finalizer is the operator's to remove; it is paused, so remove it as an admin would.
    pools
        .patch(
            "v-gone",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    delete_node(&c, "v-keep-1").await.unwrap();
    // Its plugin pod goes at once, as after a node lifecycle eviction, not when the pod GC gets
    // to it 40 s later (its DaemonSet's status would change then, after the compaction).
    let plugin_pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    for pod in plugin_pods
        .list(&ListParams::default().fields("spec.nodeName=v-keep-1"))
        .await
        .unwrap()
        .items
    {
        plugin_pods
            .delete(
                &pod.name_any(),
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await
            .unwrap();
    }
    Api::<DaemonSet>::namespaced(c.clone(), "default")
        .delete(
            "nvidia-device-plugin-daemonset",
            &DeleteParams::background(),
        )
        .await
        .unwrap();
    // The garbage collector and the DaemonSet controller act on those deletions on their own
    // time: wait for them, so that every watched kind's last event predates the compaction and
    // each watch has to re-list (a DaemonSet event after it would let that watch resume).
    let plugin_daemonsets: Api<DaemonSet> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    wait_logged(
        "v-gone's DaemonSet collected and v-keep's down to one node",
        &op,
        || async {
            let gone = plugin_daemonsets
                .get_opt(&plugin_name("v-gone"))
                .await
                .ok()?
                .is_none();
            let keep = plugin_daemonsets
                .get_opt(&plugin_name("v-keep"))
                .await
                .ok()??;
            let status = keep.status?;
            let keep_pods = plugin_pods
                .list(&ListParams::default().labels("gpupool.io/pool=v-keep"))
                .await
                .ok()?;
            (gone
                && status.desired_number_scheduled == 1
                && status.current_number_scheduled == 1
                && status.number_ready == 1
                && keep_pods.items.len() == 1)
                .then_some(())
        },
    )
    .await;
    // Advance etcd well past the last revision any watch has seen (a watch resumes from the
    // revision after its last event; that one must be compacted away too), then compact.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..3 {
        let cm: ConfigMap = serde_json::from_value(
            serde_json::json!({"metadata": {"name": format!("v-bump-{i}")}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    plane.compact_etcd().await.unwrap();
    plane
        .restart_apiserver()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    op.resume();
    let c = plane.client().await;

    wait_logged("the re-list to drop what vanished", &op, || async {
        let m = metrics(port).await;
        // The series exist at 0 from the first list: a re-list is a count of at least 1.
        let relisted = ["GpuPool", "Node", "DaemonSet"].iter().all(|k| {
            let series = format!(r#"gpupool_watch_relists_total{{kind="{k}"}} "#);
            m.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0)
        });
        (relisted
            && !m.contains(r#"pool="v-gone""#)
            && m.contains(r#"gpupool_pool_nodes{pool="v-keep"} 1"#))
        .then_some(())
    })
    .await;
    wait_logged("v-foreign to take its node", &op, || async {
        let pool = get_pool(&c, "v-foreign").await;
        (condition(&pool, "Conflict").is_none()
            && condition(&pool, "Ready").is_some_and(|r| r.status == "True"))
        .then_some(())
    })
    .await;
    let node = Api::<Node>::all(c.clone())
        .get("v-foreign-0")
        .await
        .unwrap();
    assert_eq!(
        node.labels()
            .get("gpupool.io/device-plugin")
            .map(String::as_str),
        Some("v-foreign")
    );
    op.stop(Duration::from_secs(5)).await;
}

/// #10.4: a leader paused (SIGSTOP) past its lease, while the other replica takes over, writes
/// nothing when it resumes: its writes are fenced by the renew deadline. The two replicas run as
/// different ServiceAccounts, so the API server's audit log tells their requests apart; they also
/// want different plugin images, so the old leader does try to write when it wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_writes_nothing_once_another_leads() {
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op-a", "op-b"]).await;
    let replica = |name: &str, kubeconfig: &std::path::Path, image: &str| {
        start_operator(
            &plane,
            kubeconfig.to_path_buf(),
            name,
            &[
                "--leader-elect",
                "--lease-namespace",
                "gpupool-system",
                "--lease-duration",
                "6s",
                "--default-plugin-image",
                image,
            ],
        )
    };
    create_node(&c, &GpuNode::aks("fence-gpu-0", "fencepool"))
        .await
        .unwrap();
    let mut a = replica(
        "op-a",
        &kubeconfigs[0],
        "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
    );
    let holder = || lease_holder(&c);
    testenv::wait_for("op-a to lead", CONVERGE, || async {
        holder().await.filter(|h| h == "op-a")
    })
    .await;
    let mut b = replica(
        "op-b",
        &kubeconfigs[1],
        "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
    );
    create_pool(&c, PoolYaml::new("fence").agentpool("fencepool")).await;
    testenv::wait_for("op-a's plugin image", CONVERGE, || async {
        let ds = Api::<DaemonSet>::namespaced(c.clone(), PLUGIN_NAMESPACE)
            .get_opt(&plugin_name("fence"))
            .await
            .ok()
            .flatten()?;
        let image = ds.spec?.template.spec?.containers.first()?.image.clone()?;
        image.ends_with("v0.17.0").then_some(())
    })
    .await;
    // A GPU falls off just before op-a stops. When it wakes, the grace period is over: its own
    // cache calls for a status write (its recheck timer is due at once), decided before it can
    // hear from the API server that it lost the Lease.
    set_gpus(&c, "fence-gpu-0", 1, 0).await.unwrap();
    testenv::wait_for("op-a to report the lost GPU", CONVERGE, || async {
        let pool = Api::<GpuPool>::all(c.clone()).get("fence").await.ok()?;
        pool.status?
            .problem_nodes
            .iter()
            .any(|p| p.name == "fence-gpu-0")
            .then_some(())
    })
    .await;

    a.pause();
    testenv::wait_for("op-b to take over", CONVERGE, || async {
        holder().await.filter(|h| h == "op-b")
    })
    .await;
    testenv::wait_for("op-b's plugin image", CONVERGE, || async {
        let ds = Api::<DaemonSet>::namespaced(c.clone(), PLUGIN_NAMESPACE)
            .get_opt(&plugin_name("fence"))
            .await
            .ok()
            .flatten()?;
        let image = ds.spec?.template.spec?.containers.first()?.image.clone()?;
        image.ends_with("v0.18.0").then_some(())
    })
    .await;
    let resumed = std::time::SystemTime::now();
    a.resume();
    // op-a wakes up to op-b's DaemonSet, wants its own image back, and must not write it; it
    // notices it lost the Lease and exits.
    let deadline = Instant::now() + CONVERGE;
    while a.try_wait().is_none() {
        assert!(
            Instant::now() < deadline,
            "op-a did not stop after losing the Lease:\n{}",
            a.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Woken up, op-a either tries its write and is fenced, or first finds its renew deadline
    // long past and stops leading: both are what keeps it from writing (the audit log below
    // says whether anything got through).
    let log = std::fs::read_to_string(a.log_path()).unwrap();
    assert!(
        log.contains("leadership is not confirmed") || log.contains("leadership lost"),
        "op-a neither was fenced nor noticed it lost the Lease:\n{}",
        a.log_tail(60)
    );
    // The audit log is written in batches of up to a second: op-b's requests after op-a exited
    // show it has been flushed past op-a's last one.
    let exited = std::time::SystemTime::now();
    let user = account_user;
    testenv::wait_for("the audit log to pass op-a's exit", CONVERGE, || async {
        testenv::audit::requests(&plane.audit_log_path(), &user("op-b"))
            .iter()
            .any(|r| r.received > exited)
            .then_some(())
    })
    .await;
    let writes: Vec<_> = testenv::audit::requests(&plane.audit_log_path(), &user("op-a"))
        .into_iter()
        .filter(|r| r.received >= resumed && r.is_write() && r.resource != "leases")
        .collect();
    assert!(
        writes.is_empty(),
        "the paused leader wrote after it resumed: {writes:?}"
    );
    let ds = Api::<DaemonSet>::namespaced(c.clone(), PLUGIN_NAMESPACE)
        .get(&plugin_name("fence"))
        .await
        .unwrap();
    assert!(
        ds.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref()
            .unwrap()
            .ends_with("v0.18.0")
    );
    b.stop(Duration::from_secs(10)).await;
}

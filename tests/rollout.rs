//! #22: GPU-verified plugin rollouts on the real control plane. The nodes' GPUs follow their
//! plugin pods (`testenv::simulate::PluginGpus`: a node shows its GPUs only while a plugin pod
//! runs there, none while it is replaced, and a plugin whose image tag says `broken` registers
//! none, as k8s-device-plugin v0.18.2 did on new nodes, #1645). Every plugin pod event and every
//! node event is watched: no node other than the ones the rollout replaces loses its pod, and
//! never more than `maxUnavailable` nodes are without GPUs at once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gpupool::api::GpuPool;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use support::*;
use testenv::nodes::{GpuNode, create_node};
use testenv::simulate::PluginGpus;

const GPUS: u32 = 2;
/// Long enough for a replaced node to come back on a 2-core machine running the plane; short
/// enough for a broken plugin to halt within the test.
const DEADLINE_SECONDS: i32 = 30;
const LONG: Duration = Duration::from_secs(180);

/// Every plugin pod and node event of one test's nodes, as they happen.
#[derive(Default)]
struct Timeline {
    /// node -> uids of the plugin pods seen there, in order.
    pods: BTreeMap<String, Vec<String>>,
    /// node -> allocatable GPUs now.
    gpus: BTreeMap<String, u32>,
    /// The most nodes without their GPUs at any one node event (once every node had them).
    worst: usize,
    settled: bool,
    /// pod uid -> image
    images: BTreeMap<String, String>,
}

struct Watching {
    timeline: Arc<Mutex<Timeline>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn watch(client: &Client, label: &str) -> Watching {
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let pods_seen = timeline.clone();
    let nodes = client.clone();
    let node_label = label.to_string();
    let pods_client = client.clone();
    let pod_task = tokio::spawn(async move {
        let api: Api<Pod> = Api::all(pods_client);
        let mut events = watcher(
            api,
            watcher::Config::default().labels("name=nvidia-device-plugin-ds"),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        while let Some(Ok(pod)) = events.next().await {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let uid = pod.uid().unwrap_or_default();
            let image = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first()?.image.clone())
                .unwrap_or_default();
            let mut t = pods_seen.lock().unwrap();
            let seen = t.pods.entry(node).or_default();
            if !seen.contains(&uid) {
                seen.push(uid.clone());
            }
            t.images.insert(uid, image);
        }
    });
    let gpus_seen = timeline.clone();
    let node_task = tokio::spawn(async move {
        let api: Api<Node> = Api::all(nodes);
        let mut events = watcher(api, watcher::Config::default().labels(&node_label))
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(node)) = events.next().await {
            let (_, allocatable) = testenv::nodes::gpu_resources(&node);
            let mut t = gpus_seen.lock().unwrap();
            t.gpus.insert(node.name_any(), allocatable.unwrap_or(0));
            if t.settled {
                let short = t.gpus.values().filter(|g| **g < GPUS).count();
                t.worst = t.worst.max(short);
            }
        }
    });
    Watching {
        timeline,
        tasks: vec![pod_task, node_task],
    }
}

async fn nodes(c: &Client, prefix: &str, n: usize) -> Vec<String> {
    let names = node_names(prefix, n);
    for name in &names {
        create_node(
            c,
            &GpuNode::aks(name, prefix)
                .gpus(GPUS)
                .gpus_follow_plugin()
                .label("rolltest", prefix),
        )
        .await
        .unwrap();
    }
    names
}

fn rollout_spec(on_failure: &str) -> String {
    format!(
        "  devicePlugin:\n    image: nvcr.io/nvidia/k8s-device-plugin:v0.17.0\n  rollout:\n    progressDeadlineSeconds: {DEADLINE_SECONDS}\n    onFailure: {on_failure}\n"
    )
}

async fn set_image(c: &Client, pool: &str, tag: &str) {
    patch_pool(
        c,
        pool,
        serde_json::json!({"spec": {"devicePlugin": {"image": format!("nvcr.io/nvidia/k8s-device-plugin:{tag}")}}}),
    )
    .await;
}

fn rollout_state(pool: &GpuPool) -> Option<String> {
    let r = pool
        .status
        .as_ref()?
        .device_plugin
        .as_ref()?
        .rollout
        .as_ref()?;
    Some(format!("{:?}", r.state))
}

/// Waits for the pool's status (current generation) to satisfy `pred`.
async fn wait(env: &Env, pool: &str, what: &str, pred: impl Fn(&GpuPool) -> bool) -> GpuPool {
    let api: Api<GpuPool> = Api::all(env.client.clone());
    testenv::poll_until(what, LONG, Duration::from_millis(250), || async {
        let p = api.get(pool).await.ok()?;
        let current = p.status.as_ref()?.observed_generation == p.metadata.generation;
        (current && pred(&p)).then_some(p)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\noperator log:\n{}", operator_log(env.plane)))
}

async fn settle(env: &Env, pool: &str, w: &Watching, names: &[String]) {
    wait(env, pool, "the pool Ready with every node's GPUs", |p| {
        condition(p, "Ready").is_some_and(|c| c.status == "True")
            && p.status
                .as_ref()
                .is_some_and(|s| s.gpus_allocatable == (GPUS as i64) * names.len() as i64)
    })
    .await;
    w.timeline.lock().unwrap().settled = true;
}

/// A plugin update that registers no GPUs halts after the first node: no other node's plugin
/// pod is touched (every pod event checked), the pool says which node and what it shows; the
/// fix then reaches every node with never more than one node without its GPUs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_update_halts_at_the_first_node_and_the_fix_rolls_out_node_by_node() {
    let env = env().await;
    let c = &env.client;
    let names = nodes(c, "rollhalt", 4).await;
    let _gpus = PluginGpus::spawn_selecting(c.clone(), "rolltest=rollhalt");
    let w = watch(c, "rolltest=rollhalt");
    create_pool(
        c,
        PoolYaml::new("rollhalt")
            .agentpool("rollhalt")
            .extra_spec(&rollout_spec("Halt")),
    )
    .await;
    settle(&env, "rollhalt", &w, &names).await;
    let before = w.timeline.lock().unwrap().pods.clone();

    set_image(c, "rollhalt", "v0.18.2-broken").await;
    let halted = wait(&env, "rollhalt", "the rollout to halt", |p| {
        rollout_state(p).as_deref() == Some("Halted")
    })
    .await;
    let plugin = condition(&halted, "DevicePluginReady").unwrap();
    assert_eq!(plugin.reason, "PluginRolloutHalted", "{plugin:?}");
    assert!(
        plugin.message.contains("0 of 2 GPUs allocatable"),
        "{}",
        plugin.message
    );
    let rollout = halted
        .status
        .as_ref()
        .unwrap()
        .device_plugin
        .as_ref()
        .unwrap()
        .rollout
        .clone()
        .unwrap();
    assert_eq!(rollout.halted.len(), 1, "{rollout:?}");
    let replaced = rollout.halted[0].name.clone();
    assert_eq!(rollout.left, 3);
    {
        let t = w.timeline.lock().unwrap();
        for node in &names {
            let pods = &t.pods[node];
            if *node == replaced {
                assert_eq!(pods.len(), 2, "{node}: {pods:?}");
                assert!(t.images[&pods[1]].ends_with("-broken"));
            } else {
                assert_eq!(pods, &before[node], "{node}'s plugin pod was touched");
            }
        }
        assert!(t.worst <= 1, "{} nodes without GPUs at once", t.worst);
    }
    assert!(
        event_notes(c, "rollhalt", "PluginRolloutHalted")
            .await
            .iter()
            .any(|n| n.contains(&replaced)),
        "a Warning event names the node"
    );
    // Held for as long as the spec stays: later reconciles touch nothing more.
    patch_pool(
        c,
        "rollhalt",
        serde_json::json!({"spec": {"expectedGpusPerNode": 2}}),
    )
    .await;
    wait(&env, "rollhalt", "still halted after a reconcile", |p| {
        rollout_state(p).as_deref() == Some("Halted")
    })
    .await;
    assert_eq!(
        w.timeline.lock().unwrap().pods[&names[if replaced == names[0] { 1 } else { 0 }]].len(),
        1
    );

    set_image(c, "rollhalt", "v0.18.0").await;
    let done = wait(&env, "rollhalt", "the fix everywhere", |p| {
        rollout_state(p).as_deref() == Some("Complete")
            && condition(p, "Ready").is_some_and(|c| c.status == "True")
    })
    .await;
    let rollout = done.status.unwrap().device_plugin.unwrap().rollout.unwrap();
    assert_eq!(rollout.updated, 4);
    assert!(rollout.last_good.unwrap().image.ends_with("v0.18.0"));
    let t = w.timeline.lock().unwrap();
    for node in &names {
        let last = t.pods[node].last().unwrap();
        assert!(t.images[last].ends_with("v0.18.0"), "{node}");
    }
    assert!(t.worst <= 1, "{} nodes without GPUs at once", t.worst);
}

/// With `onFailure: Rollback`, a halted rollout puts the last good plugin back on the node it
/// replaced, and says so until the spec changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_last_good_plugin() {
    let env = env().await;
    let c = &env.client;
    let names = nodes(c, "rollback", 3).await;
    let _gpus = PluginGpus::spawn_selecting(c.clone(), "rolltest=rollback");
    let w = watch(c, "rolltest=rollback");
    create_pool(
        c,
        PoolYaml::new("rollback")
            .agentpool("rollback")
            .extra_spec(&rollout_spec("Rollback")),
    )
    .await;
    settle(&env, "rollback", &w, &names).await;
    set_image(c, "rollback", "v0.18.2-broken").await;
    let back = wait(
        &env,
        "rollback",
        "the last good plugin back everywhere",
        |p| {
            rollout_state(p).as_deref() == Some("RolledBack")
                && p.status.as_ref().is_some_and(|s| {
                    s.gpus_allocatable == (GPUS as i64) * 3
                        && s.device_plugin
                            .as_ref()
                            .and_then(|d| d.rollout.as_ref())
                            .is_some_and(|r| r.updated == 3)
                })
        },
    )
    .await;
    let plugin = condition(&back, "DevicePluginReady").unwrap();
    assert_eq!(plugin.reason, "PluginRolledBack", "{plugin:?}");
    assert!(plugin.message.contains("v0.17.0"), "{}", plugin.message);
    let t = w.timeline.lock().unwrap();
    for node in &names {
        let last = t.pods[node].last().unwrap();
        assert!(
            t.images[last].ends_with("v0.17.0"),
            "{node}: {}",
            t.images[last]
        );
    }
    assert!(t.worst <= 1);
}

/// The operator restarts in the middle of a rollout: it goes on from the record in the status
/// and the pods' revisions, and replaces no node twice. A node that joins meanwhile gets the new
/// plugin directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_rollout_goes_on_and_a_joining_node_gets_the_new_plugin() {
    let env = env().await;
    let c = &env.client;
    let mut names = nodes(c, "rollrestart", 4).await;
    let _gpus = PluginGpus::spawn_selecting(c.clone(), "rolltest=rollrestart");
    let w = watch(c, "rolltest=rollrestart");
    create_pool(
        c,
        PoolYaml::new("rollrestart")
            .agentpool("rollrestart")
            .extra_spec(&rollout_spec("Halt")),
    )
    .await;
    settle(&env, "rollrestart", &w, &names).await;
    set_image(c, "rollrestart", "v0.18.0").await;
    wait(&env, "rollrestart", "the first node done", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.device_plugin.as_ref()?.rollout.as_ref())
            .is_some_and(|r| r.updated >= 1)
    })
    .await;
    restart_operator(&env);
    let joined = "rollrestart-9".to_string();
    create_node(
        c,
        &GpuNode::aks(&joined, "rollrestart")
            .gpus(GPUS)
            .gpus_follow_plugin()
            .label("rolltest", "rollrestart"),
    )
    .await
    .unwrap();
    names.push(joined.clone());
    wait(&env, "rollrestart", "every node on the new plugin", |p| {
        rollout_state(p).as_deref() == Some("Complete")
            && p.status
                .as_ref()
                .is_some_and(|s| s.nodes == 5 && s.gpus_allocatable == 10)
    })
    .await;
    let t = w.timeline.lock().unwrap();
    for node in &names[..4] {
        let pods = &t.pods[node];
        assert_eq!(pods.len(), 2, "{node} replaced once, not twice: {pods:?}");
        assert!(t.images[&pods[1]].ends_with("v0.18.0"));
    }
    let pods = &t.pods[&joined];
    assert_eq!(
        pods.len(),
        1,
        "the joining node's first plugin is the new one"
    );
    assert!(t.images[&pods[0]].ends_with("v0.18.0"));
}

/// A pool deleted in the middle of a rollout cleans up as always: no plugin, no label left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_deleted_mid_rollout_leaves_nothing() {
    let env = env().await;
    let c = &env.client;
    let names = nodes(c, "rolldel", 3).await;
    let _gpus = PluginGpus::spawn_selecting(c.clone(), "rolltest=rolldel");
    let w = watch(c, "rolltest=rolldel");
    create_pool(
        c,
        PoolYaml::new("rolldel")
            .agentpool("rolldel")
            .extra_spec(&rollout_spec("Halt")),
    )
    .await;
    settle(&env, "rolldel", &w, &names).await;
    set_image(c, "rolldel", "v0.18.0").await;
    wait(&env, "rolldel", "a node being replaced", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.device_plugin.as_ref()?.rollout.as_ref())
            .is_some_and(|r| !r.in_progress.is_empty())
    })
    .await;
    Api::<GpuPool>::all(c.clone())
        .delete("rolldel", &DeleteParams::default())
        .await
        .unwrap();
    let pools: Api<GpuPool> = Api::all(c.clone());
    testenv::poll_until(
        "the pool gone",
        LONG,
        Duration::from_millis(250),
        || async { pools.get_opt("rolldel").await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", operator_log(env.plane)));
    let api: Api<Node> = Api::all(c.clone());
    for node in &names {
        let labels: BTreeSet<String> = api
            .get(node)
            .await
            .unwrap()
            .labels()
            .keys()
            .cloned()
            .collect();
        assert!(
            !labels.contains(gpupool::decide::names::DEVICE_PLUGIN_LABEL),
            "{node}"
        );
    }
    let pods = plugin_pods_per_node(c, None).await;
    assert!(
        names.iter().all(|n| !pods.contains_key(n)),
        "plugin pods left: {pods:?}"
    );
}

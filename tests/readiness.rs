//! The readiness gate and the validation workload on a real control plane: nodes join tainted
//! and lose the taint once their GPUs are usable (Bootstrap), lose and regain it as their GPUs
//! come and go (Continuous), a dry run writes nothing, a concurrent taint writer loses nothing,
//! a deleted pool or removed gate leaves no taint behind; validation pods run per node, again
//! after a reboot or a plugin change, wait for a free GPU, fail and are retried with backoff,
//! and survive an operator restart.
//!
//! Validation pods are finished by the simulated kubelet of `testenv::simulate::ValidationPods`
//! (one per test, for its own pool): success after a second, or the CUDA sample's failure on a
//! node labelled `gpupool.io/simulate-validation=fail`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use gpupool::api::GpuPool;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;
use testenv::nodes::{GpuNode, create_node, reboot, set_gpus};
use testenv::simulate::{FAILED_MESSAGE, SIMULATE_VALIDATION_LABEL, ValidationPods};
use testenv::wait_for;

/// The default gate taint key.
const GATE: &str = "gpupool.io/gpu-not-ready";
/// The operator's grace period in this binary: how long a node may be not GPU-ready before the
/// Continuous gate closes on it.
const GRACE: Duration = Duration::from_secs(4);
const VALIDATION_RECORD: &str = "gpupool.io/validation";

async fn readiness_env() -> Env {
    env_with(&["--gpu-grace-period", "4s", "--validation-retry", "2s"]).await
}

/// A node that joins with the gate taint (AKS `--node-taints`, Karpenter `startupTaints`).
fn gated(name: &str, agentpool: &str) -> GpuNode {
    GpuNode::aks(name, agentpool).taint(GATE, "", "NoSchedule")
}

/// Simulates the validation containers of one pool's pods.
fn simulate_validation(c: &Client, pool: &str) -> ValidationPods {
    ValidationPods::spawn_selecting(
        c.clone(),
        &format!("gpupool.io/pool={pool}"),
        Duration::from_secs(1),
    )
}

async fn get_node(c: &Client, name: &str) -> Node {
    Api::<Node>::all(c.clone()).get(name).await.unwrap()
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn has_taint(node: &Node, key: &str) -> bool {
    taints(node)
        .iter()
        .any(|t| t.key == key && t.effect == "NoSchedule")
}

fn gate_on(node: &Node) -> bool {
    has_taint(node, GATE)
}

fn boot_id(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.clone())
        .unwrap_or_default()
}

/// The validation result gpupool recorded on the node.
fn record(node: &Node) -> Option<serde_json::Value> {
    let text = node.annotations().get(VALIDATION_RECORD)?;
    Some(serde_json::from_str(text).expect("the validation record is JSON"))
}

fn passed_on(node: &Node, boot: &str) -> bool {
    record(node).is_some_and(|r| r["result"] == "Passed" && r["bootId"] == boot)
}

async fn wait_node(env: &Env, name: &str, what: &str, pred: impl Fn(&Node) -> bool) -> Node {
    let api: Api<Node> = Api::all(env.client.clone());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let node = api.get(name).await.unwrap();
        if pred(&node) {
            return node;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for node {name}: {what}\ntaints: {:?}\nannotations: {:?}\noperator log:\n{}",
                taints(&node),
                node.annotations(),
                operator_log(env.plane)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn validation_pods(c: &Client, pool: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(c.clone(), PLUGIN_NAMESPACE)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/component=gpu-validation,gpupool.io/pool={pool}"
        )))
        .await
        .unwrap()
        .items
}

fn problem<'a>(pool: &'a GpuPool, node: &str) -> Option<&'a gpupool::api::ProblemNode> {
    pool.status
        .as_ref()?
        .problem_nodes
        .iter()
        .find(|p| p.name == node)
}

fn gated_nodes(pool: &GpuPool) -> Option<i32> {
    Some(pool.status.as_ref()?.readiness_gate.as_ref()?.gated_nodes)
}

/// The operator's writes to a node since `since` (audit log).
fn node_writes(env: &Env, node: &str, since: SystemTime) -> Vec<testenv::audit::Request> {
    operator_requests(env, since)
        .into_iter()
        .filter(|r| r.resource == "nodes" && r.name.as_deref() == Some(node) && r.is_write())
        .collect()
}

/// Events the operator recorded about a pool, by reason.
/// #11 Bootstrap: nodes join tainted; the taint comes off each node once it is GPU-ready (plugin
/// pod ready, GPUs allocatable); a node whose GPUs are not there stays tainted and is named; the
/// taint is never put back, not even when GPUs fall off later; untainted nodes are never tainted.
#[tokio::test]
async fn bootstrap_removes_the_gate_once_gpus_are_usable_and_never_adds_it() {
    let env = readiness_env().await;
    let c = &env.client;
    create_node(c, &gated("boot-0", "bootpool").no_gpus_yet())
        .await
        .unwrap();
    create_node(c, &gated("boot-1", "bootpool")).await.unwrap();
    create_node(c, &GpuNode::aks("boot-2", "bootpool").no_gpus_yet())
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("boot")
            .agentpool("bootpool")
            .extra_spec("  readinessGate:\n    mode: Bootstrap\n"),
    )
    .await;
    // The plugin tolerates the gate: the gate never keeps out what it waits for.
    let ds = wait_daemonset(&env, &plugin_name("boot"), "3 plugin pods ready", |ds| {
        ds.status.as_ref().is_some_and(|s| s.number_ready == 3)
    })
    .await;
    let tolerations = placement(&ds).1;
    assert!(
        tolerations
            .iter()
            .any(|t| t.starts_with(&format!("{GATE}="))),
        "the plugin tolerates the gate: {tolerations:?}"
    );
    wait_node(&env, "boot-1", "the gate removed (GPUs usable)", |n| {
        !gate_on(n)
    })
    .await;
    let pool = wait_pool(&env, "boot", "boot-0 kept gated and named", |p| {
        gated_nodes(p) == Some(1) && problem(p, "boot-0").is_some()
    })
    .await;
    assert!(gate_on(&get_node(c, "boot-0").await));
    let named = problem(&pool, "boot-0").unwrap();
    assert!(
        named.message.contains("nvidia.com/gpu"),
        "the problem says what is missing: {named:?}"
    );

    set_gpus(c, "boot-0", 1, 1).await.unwrap();
    wait_node(
        &env,
        "boot-0",
        "the gate removed once its GPUs registered",
        |n| !gate_on(n),
    )
    .await;
    set_gpus(c, "boot-2", 1, 1).await.unwrap();
    let pool = wait_condition(&env, "boot", "Ready", "True", None).await;
    assert_eq!(gated_nodes(&pool), Some(0));
    let opened = event_notes(c, "boot", "GateOpened").await;
    // (Events of one reason are folded into a series: the first note names the first nodes.)
    assert!(
        opened.iter().any(|n| n.contains("boot-")),
        "a GateOpened event names the nodes: {opened:?}"
    );

    // A GPU falls off boot-1 for longer than the grace period: reported, never gated again.
    // (The reconcile that reports the grace period over is the one that would have gated it:
    // the node writes come before the status write.)
    set_gpus(c, "boot-1", 1, 0).await.unwrap();
    wait_pool(
        &env,
        "boot",
        "boot-1's lost GPU failed after the grace period",
        |p| problem(p, "boot-1").is_some_and(|n| n.reason == "FewerGpusThanExpected"),
    )
    .await;
    for node in ["boot-0", "boot-1", "boot-2"] {
        assert!(
            !gate_on(&get_node(c, node).await),
            "Bootstrap never puts the taint on {node}"
        );
    }
}

/// #11 Continuous: a node not GPU-ready for longer than the grace period gets the taint
/// (NoSchedule: its running pods stay), its other taints kept; it loses the taint when it
/// recovers.
#[tokio::test]
async fn continuous_gates_a_node_after_the_grace_period_and_opens_on_recovery() {
    let env = readiness_env().await;
    let c = &env.client;
    create_node(
        c,
        &GpuNode::aks("cont-0", "contpool").taint("sku", "gpu", "NoSchedule"),
    )
    .await
    .unwrap();
    create_node(c, &GpuNode::aks("cont-1", "contpool"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("cont")
            .agentpool("contpool")
            .extra_spec("  readinessGate:\n    mode: Continuous\n"),
    )
    .await;
    wait_condition(&env, "cont", "Ready", "True", None).await;
    let plugin_before = plugin_pod_uid(c, "cont", "cont-0").await;

    set_gpus(c, "cont-0", 1, 0).await.unwrap();
    let lost = Instant::now();
    let node = wait_node(&env, "cont-0", "the gate put on", gate_on).await;
    assert!(
        lost.elapsed() >= GRACE - Duration::from_millis(100),
        "gated only after the grace period: after {:?}",
        lost.elapsed()
    );
    assert!(
        has_taint(&node, "sku"),
        "its other taints are kept: {:?}",
        taints(&node)
    );
    assert!(
        !gate_on(&get_node(c, "cont-1").await),
        "a GPU-ready node is left alone"
    );
    let pool = wait_pool(&env, "cont", "cont-0 reported gated", |p| {
        gated_nodes(p) == Some(1)
    })
    .await;
    assert!(problem(&pool, "cont-0").is_some());
    assert_eq!(
        plugin_pod_uid(c, "cont", "cont-0").await,
        plugin_before,
        "NoSchedule: the pods running there are not evicted"
    );
    let closed = event_notes(c, "cont", "GateClosed").await;
    assert!(closed.iter().any(|n| n.contains("cont-0")), "{closed:?}");

    set_gpus(c, "cont-0", 1, 1).await.unwrap();
    let node = wait_node(&env, "cont-0", "the gate removed on recovery", |n| {
        !gate_on(n)
    })
    .await;
    assert!(has_taint(&node, "sku"), "{:?}", taints(&node));
    wait_condition(&env, "cont", "Ready", "True", None).await;
}

async fn plugin_pod_uid(c: &Client, pool: &str, node: &str) -> Option<String> {
    Api::<Pod>::namespaced(c.clone(), PLUGIN_NAMESPACE)
        .list(&ListParams::default().labels(&format!("gpupool.io/pool={pool}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .and_then(|p| p.uid())
}

/// #11 dry run: nothing is written to the gated nodes; the status and an event say what would
/// be; turning the dry run off does it.
#[tokio::test]
async fn dry_run_writes_no_node_and_says_what_it_would_do() {
    let env = readiness_env().await;
    let c = &env.client;
    create_node(c, &gated("dry-0", "drypool")).await.unwrap();
    create_pool(
        c,
        PoolYaml::new("dry")
            .agentpool("drypool")
            .extra_spec("  readinessGate:\n    dryRun: true\n"),
    )
    .await;
    let pool = wait_pool(&env, "dry", "the dry run's would-do list", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.readiness_gate.as_ref())
            .is_some_and(|g| {
                g.would
                    .iter()
                    .any(|w| w == &format!("remove {GATE} from dry-0"))
            })
    })
    .await;
    assert!(pool.status.unwrap().readiness_gate.unwrap().dry_run);
    let since = SystemTime::now();
    let notes = wait_for("the GateDryRun event", TIMEOUT, || async {
        let notes = event_notes(c, "dry", "GateDryRun").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert!(notes[0].contains("dry-0"), "{notes:?}");
    // Cordoned, the node is not GPU-ready (nothing would be done); uncordoned, it is again: the
    // operator has looked at it twice more since, and written nothing.
    patch_node(c, "dry-0", json!({"spec": {"unschedulable": true}})).await;
    wait_pool(&env, "dry", "nothing to do on the cordoned node", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.readiness_gate.as_ref())
            .is_some_and(|g| g.would.is_empty())
    })
    .await;
    patch_node(c, "dry-0", json!({"spec": {"unschedulable": null}})).await;
    wait_pool(&env, "dry", "the would-do list back", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.readiness_gate.as_ref())
            .is_some_and(|g| !g.would.is_empty())
    })
    .await;
    assert!(
        gate_on(&get_node(c, "dry-0").await),
        "dry run: still tainted"
    );
    // Flushed past now: an empty list means no write, not an audit log behind.
    support::replicas::audit_flushed(env.plane, c).await;
    assert_eq!(
        node_writes(&env, "dry-0", since),
        vec![],
        "dry run: no node written"
    );

    patch_pool(
        c,
        "dry",
        json!({"spec": {"readinessGate": {"dryRun": false}}}),
    )
    .await;
    wait_node(
        &env,
        "dry-0",
        "the gate removed once the dry run is off",
        |n| !gate_on(n),
    )
    .await;
    wait_pool(&env, "dry", "nothing left to do", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.readiness_gate.as_ref())
            .is_some_and(|g| g.would.is_empty() && !g.dry_run && g.gated_nodes == 0)
    })
    .await;
}

/// Writes taints the way the cluster autoscaler does while it runs: read the node, add a taint,
/// update with the read resourceVersion, retry on conflict. Returns the keys it added.
async fn taint_writer(
    c: Client,
    node: &str,
    prefix: String,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> Vec<String> {
    let api: Api<Node> = Api::all(c);
    let mut added = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{prefix}/t{i}");
        loop {
            let mut n = api.get(node).await.unwrap();
            let spec = n.spec.get_or_insert_with(Default::default);
            spec.taints.get_or_insert_with(Vec::new).push(Taint {
                key: key.clone(),
                value: Some("x".into()),
                effect: "PreferNoSchedule".into(),
                time_added: None,
            });
            match api.replace(node, &PostParams::default(), &n).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => panic!("writer: {e}"),
            }
        }
        added.push(key);
        i += 1;
        tokio::time::sleep(pause).await;
    }
    added
}

/// #11: taint writes are read-modify-write guarded by the resourceVersion: a concurrent writer
/// (the cluster autoscaler) loses no taint, and the gate's own change is not lost either, both
/// when the gate opens and when it closes.
#[tokio::test]
async fn a_concurrent_taint_writer_loses_nothing() {
    let env = readiness_env().await;
    let c = &env.client;
    create_node(c, &gated("race-0", "racepool").no_gpus_yet())
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("race")
            .agentpool("racepool")
            .extra_spec("  readinessGate:\n    mode: Continuous\n"),
    )
    .await;
    wait_pool(&env, "race", "race-0 gated", |p| gated_nodes(p) == Some(1)).await;
    let since = SystemTime::now();

    // The gate opens while the writer adds taints.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(taint_writer(
        c.clone(),
        "race-0",
        "open.example.com".into(),
        stop.clone(),
        Duration::from_millis(20),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_gpus(c, "race-0", 1, 1).await.unwrap();
    wait_node(&env, "race-0", "the gate removed under the writer", |n| {
        !gate_on(n)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let added = writer.await.unwrap();
    let node = get_node(c, "race-0").await;
    let have: BTreeSet<String> = taints(&node).into_iter().map(|t| t.key).collect();
    for key in &added {
        assert!(have.contains(key), "the writer's {key} was lost: {have:?}");
    }
    assert!(!gate_on(&node));

    // The gate closes while the writer adds taints.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(taint_writer(
        c.clone(),
        "race-0",
        "close.example.com".into(),
        stop.clone(),
        Duration::from_millis(20),
    ));
    set_gpus(c, "race-0", 1, 0).await.unwrap();
    wait_node(&env, "race-0", "the gate put on under the writer", gate_on).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let added = writer.await.unwrap();
    let node = get_node(c, "race-0").await;
    let have: BTreeSet<String> = taints(&node).into_iter().map(|t| t.key).collect();
    for key in &added {
        assert!(have.contains(key), "the writer's {key} was lost: {have:?}");
    }
    assert!(gate_on(&node), "the gate's own write was not lost either");
    // The point is the race: the operator's guarded write must have lost it at least once (a
    // 409) and tried again. More rounds under a writer that does not pause, until it did.
    let mut round = 0;
    let writes = loop {
        support::replicas::audit_flushed(env.plane, c).await;
        let writes = node_writes(&env, "race-0", since);
        if writes.iter().any(|w| w.code == Some(409)) || round == 10 {
            break writes;
        }
        round += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn(taint_writer(
            c.clone(),
            "race-0",
            format!("round{round}.example.com"),
            stop.clone(),
            Duration::ZERO,
        ));
        // The writer that does not pause stops after 2 s: long enough to race the operator's
        // write, not so long that the operator (which backs off after five lost attempts in a
        // row) is kept out past the deadline on a loaded machine (seen once in the full suite:
        // 1,800 taints later, still racing).
        let stopper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                stop.store(true, Ordering::Relaxed);
            })
        };
        let open = !gate_on(&get_node(c, "race-0").await);
        set_gpus(c, "race-0", 1, if open { 0 } else { 1 })
            .await
            .unwrap();
        wait_node(&env, "race-0", "the gate flipped under the writer", |n| {
            gate_on(n) == open
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        stopper.abort();
        let added = writer.await.unwrap();
        let have: BTreeSet<String> = taints(&get_node(c, "race-0").await)
            .into_iter()
            .map(|t| t.key)
            .collect();
        for key in &added {
            assert!(have.contains(key), "the writer's {key} was lost: {have:?}");
        }
    };
    assert!(
        writes.iter().any(|w| w.code == Some(409)),
        "the operator's node writes never met the concurrent writer (no 409 in {round} extra rounds): {writes:?}"
    );
    assert!(
        writes.iter().all(|w| w.verb == "patch"),
        "the operator patches (guarded), never replaces: {writes:?}"
    );
    set_gpus(c, "race-0", 1, 1).await.unwrap();
    wait_node(&env, "race-0", "the gate removed", |n| !gate_on(n)).await;
}

/// #11: removing the gate from the spec, and deleting the pool, take gpupool's taint off every
/// node (the pool's finalizer waits for it).
#[tokio::test]
async fn removing_the_gate_or_deleting_the_pool_leaves_no_taint() {
    let env = readiness_env().await;
    let c = &env.client;
    for name in node_names("lift", 2) {
        create_node(c, &gated(&name, "liftpool").no_gpus_yet())
            .await
            .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("lift")
            .agentpool("liftpool")
            .extra_spec("  readinessGate:\n    mode: Continuous\n"),
    )
    .await;
    wait_pool(&env, "lift", "both nodes gated", |p| {
        gated_nodes(p) == Some(2)
    })
    .await;
    patch_pool(c, "lift", json!({"spec": {"readinessGate": null}})).await;
    for name in node_names("lift", 2) {
        wait_node(&env, &name, "the gate lifted with the gate removed", |n| {
            !gate_on(n)
        })
        .await;
    }
    wait_pool(&env, "lift", "no gate reported", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.readiness_gate.is_none())
    })
    .await;

    // A gate of its own key again: Continuous puts it on the nodes that still lack GPUs.
    patch_pool(
        c,
        "lift",
        json!({"spec": {"readinessGate": {"taintKey": "example.com/gpu-gate", "mode": "Continuous"}}}),
    )
    .await;
    for name in node_names("lift", 2) {
        wait_node(&env, &name, "the renamed gate put on", |n| {
            has_taint(n, "example.com/gpu-gate")
        })
        .await;
    }
    Api::<GpuPool>::all(c.clone())
        .delete("lift", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the pool to be gone", TIMEOUT, || async {
        Api::<GpuPool>::all(c.clone())
            .get_opt("lift")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    for name in node_names("lift", 2) {
        let node = get_node(c, &name).await;
        assert!(
            !has_taint(&node, "example.com/gpu-gate") && !gate_on(&node),
            "{name} keeps a gate taint after its pool is gone: {:?}",
            taints(&node)
        );
    }
}

/// #11 validation: a pod per node; the pass is recorded on the node (boot and plugin) and its
/// pod removed; the gate opens only then. A reboot (new bootID) and a plugin change each mean
/// validating again.
#[tokio::test]
async fn validation_runs_per_node_and_again_after_a_reboot_or_a_plugin_change() {
    let env = readiness_env().await;
    let c = &env.client;
    let _kubelet = simulate_validation(c, "val");
    for name in node_names("val", 2) {
        create_node(c, &gated(&name, "valpool")).await.unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("val")
            .agentpool("valpool")
            .extra_spec("  readinessGate: {}\n  validation:\n    maxConcurrent: 1\n"),
    )
    .await;
    let pool = wait_condition(&env, "val", "GpusValidated", "True", Some("GpusValidated")).await;
    assert_eq!(
        pool.status
            .as_ref()
            .unwrap()
            .validation
            .as_ref()
            .unwrap()
            .validated,
        2
    );
    wait_condition(&env, "val", "Ready", "True", None).await;
    let mut records = Vec::new();
    for name in node_names("val", 2) {
        let node = wait_node(&env, &name, "validated and opened", |n| !gate_on(n)).await;
        assert!(passed_on(&node, &boot_id(&node)), "{:?}", record(&node));
        records.push(record(&node).unwrap());
    }
    assert_ne!(records[0]["pod"], records[1]["pod"], "one pod per node");
    wait_for("finished validation pods removed", TIMEOUT, || async {
        validation_pods(c, "val").await.is_empty().then_some(())
    })
    .await;

    // A reboot: validated again on the new boot.
    let boot = reboot(c, "val-0").await.unwrap();
    let node = wait_node(&env, "val-0", "validated again after the reboot", |n| {
        passed_on(n, &boot)
    })
    .await;
    assert_ne!(record(&node).unwrap()["pod"], records[0]["pod"]);
    assert_eq!(
        record(&get_node(c, "val-1").await).unwrap(),
        records[1],
        "the other node is not validated again"
    );

    // A new plugin: every node validated again, with it.
    let plugin_before = records[1]["plugin"].clone();
    patch_pool(
        c,
        "val",
        json!({"spec": {"devicePlugin": {"image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.4"}}}),
    )
    .await;
    for name in node_names("val", 2) {
        wait_node(&env, &name, "validated again with the new plugin", |n| {
            record(n).is_some_and(|r| r["result"] == "Passed" && r["plugin"] != plugin_before)
        })
        .await;
    }
    wait_condition(&env, "val", "GpusValidated", "True", None).await;
}

/// Runs a pod taking every GPU of the node, as a training job would.
async fn occupy_gpus(c: &Client, name: &str, node: &str, gpus: u32) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "train", "image": "example.com/train:1",
                            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

async fn free_gpus(c: &Client, name: &str) {
    Api::<Pod>::namespaced(c.clone(), "default")
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
}

/// #11: validation never takes a GPU from a workload. On a node whose GPUs are all in use it
/// waits (and the status says so); a node that passed before and only waits after a reboot
/// stays Ready.
#[tokio::test]
async fn validation_waits_for_a_free_gpu() {
    let env = readiness_env().await;
    let c = &env.client;
    let _kubelet = simulate_validation(c, "busy");
    create_node(c, &GpuNode::aks("busy-0", "busypool"))
        .await
        .unwrap();
    occupy_gpus(c, "busy-train", "busy-0", 1).await;
    create_pool(
        c,
        PoolYaml::new("busy")
            .agentpool("busypool")
            .extra_spec("  validation: {}\n"),
    )
    .await;
    let pool = wait_condition(
        &env,
        "busy",
        "GpusValidated",
        "False",
        Some("ValidationWaitingForGpu"),
    )
    .await;
    let status = pool.status.as_ref().unwrap();
    assert_eq!(status.validation.as_ref().unwrap().waiting_for_gpu, 1);
    assert_eq!(
        problem(&pool, "busy-0").map(|p| p.reason.as_str()),
        Some("ValidationWaitingForGpu")
    );
    assert_eq!(condition(&pool, "Ready").unwrap().status, "False");
    let pods = validation_pods(c, "busy").await;
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.is_none()),
        "the validation pod is not bound while every GPU is in use"
    );

    free_gpus(c, "busy-train").await;
    wait_condition(&env, "busy", "GpusValidated", "True", None).await;
    wait_condition(&env, "busy", "Ready", "True", None).await;

    // Busy again, then a reboot: it passed before, so waiting for a GPU keeps it Ready.
    occupy_gpus(c, "busy-train-2", "busy-0", 1).await;
    wait_for("the workload to run", TIMEOUT, || async {
        let pod = Api::<Pod>::namespaced(c.clone(), "default")
            .get("busy-train-2")
            .await
            .unwrap();
        (pod.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(())
    })
    .await;
    reboot(c, "busy-0").await.unwrap();
    let pool = wait_pool(&env, "busy", "the revalidation waiting for a GPU", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.waiting_for_gpu == 1)
    })
    .await;
    assert_eq!(condition(&pool, "Ready").unwrap().status, "True");
    free_gpus(c, "busy-train-2").await;
    wait_pool(&env, "busy", "validated again", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.validated == 1)
    })
    .await;
}

/// #11: a failing node is named with the sample's own error, stays gated, keeps its last failed
/// pod for its log, and is retried with backoff (never a loop); once the GPU works it passes
/// and the gate opens.
#[tokio::test]
async fn a_failing_validation_is_reported_kept_and_retried_with_backoff() {
    let env = readiness_env().await;
    let c = &env.client;
    let _kubelet = simulate_validation(c, "bad");
    create_node(
        c,
        &gated("bad-0", "badpool").label(SIMULATE_VALIDATION_LABEL, "fail"),
    )
    .await
    .unwrap();
    create_node(c, &gated("bad-1", "badpool")).await.unwrap();
    create_pool(
        c,
        PoolYaml::new("bad")
            .agentpool("badpool")
            .extra_spec("  readinessGate: {}\n  validation: {}\n"),
    )
    .await;
    let pool = wait_condition(
        &env,
        "bad",
        "GpusValidated",
        "False",
        Some("ValidationFailed"),
    )
    .await;
    let named = problem(&pool, "bad-0").expect("bad-0 named");
    assert_eq!(named.reason, "ValidationFailed");
    assert!(
        named.message.contains(FAILED_MESSAGE),
        "the sample's error is quoted: {named:?}"
    );
    assert_eq!(
        condition(&pool, "Stalled").map(|c| c.status.as_str()),
        Some("True")
    );
    wait_node(&env, "bad-1", "the good node opened", |n| !gate_on(n)).await;
    assert!(
        gate_on(&get_node(c, "bad-0").await),
        "the failing node stays gated"
    );
    let failed_pods = validation_pods(c, "bad").await;
    assert!(
        failed_pods
            .iter()
            .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")),
        "the failed pod is kept for its log"
    );

    // Retried with backoff: 2 s, then 4 s, then 8 s.
    let first = Instant::now();
    wait_node(&env, "bad-0", "a third attempt recorded", |n| {
        record(n).is_some_and(|r| r["attempts"].as_u64() >= Some(3))
    })
    .await;
    assert!(
        first.elapsed() >= Duration::from_secs(5),
        "attempts 2 and 3 came after 2 s and 4 s of backoff, not at once: {:?}",
        first.elapsed()
    );
    let pods = validation_pods(c, "bad").await;
    assert!(pods.len() <= 2, "no pile of pods: {}", pods.len());

    // The GPU is fixed: the next attempt passes and the gate opens.
    patch_node(
        c,
        "bad-0",
        json!({"metadata": {"labels": {SIMULATE_VALIDATION_LABEL: null}}}),
    )
    .await;
    wait_node(&env, "bad-0", "passed and opened", |n| {
        !gate_on(n) && record(n).is_some_and(|r| r["result"] == "Passed")
    })
    .await;
    wait_condition(&env, "bad", "GpusValidated", "True", None).await;
    wait_for("the kept failure removed", TIMEOUT, || async {
        validation_pods(c, "bad").await.is_empty().then_some(())
    })
    .await;
}

/// #11: results survive an operator restart. Killed while a validation runs, the new operator
/// adopts the running pod (no second one), records its result, and does not validate a node
/// that passed before the restart again.
#[tokio::test]
async fn an_operator_restart_mid_validation_neither_loses_nor_repeats_it() {
    let env = readiness_env().await;
    let c = &env.client;
    // Slow validation containers, so the restart lands while one runs.
    let _kubelet = ValidationPods::spawn_selecting(
        c.clone(),
        "gpupool.io/pool=restart",
        Duration::from_secs(8),
    );
    create_node(c, &gated("restart-0", "restartpool"))
        .await
        .unwrap();
    create_node(c, &gated("restart-1", "restartpool"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("restart")
            .agentpool("restartpool")
            .extra_spec("  readinessGate: {}\n  validation:\n    maxConcurrent: 1\n"),
    )
    .await;
    // The first node passes; the second one's pod is running when the operator dies.
    let first = wait_for(
        "one node validated, the other's pod running",
        TIMEOUT,
        || async {
            let pods = validation_pods(c, "restart").await;
            let running = pods
                .iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))?;
            let validating = running.annotations().get("gpupool.io/node")?.clone();
            let other = if validating == "restart-0" {
                "restart-1"
            } else {
                "restart-0"
            };
            let node = get_node(c, other).await;
            passed_on(&node, &boot_id(&node))
                .then(|| (other.to_string(), validating, running.uid()))
        },
    )
    .await;
    let (passed, validating, running_uid) = first;
    let passed_record = record(&get_node(c, &passed).await).unwrap();
    restart_operator(&env);
    let node = wait_node(&env, &validating, "the running pod's pass recorded", |n| {
        passed_on(n, &boot_id(n)) && !gate_on(n)
    })
    .await;
    assert_eq!(
        record(&node).unwrap()["pod"].as_str(),
        running_uid.as_deref(),
        "the pod that ran across the restart is the one recorded: no second pod"
    );
    wait_condition(&env, "restart", "Ready", "True", None).await;
    assert_eq!(
        record(&get_node(c, &passed).await).unwrap(),
        passed_record,
        "the node validated before the restart is not validated again"
    );
}

/// #21: a node that leaves a gated pool (its labels change, the selector no longer matches it)
/// does not keep the pool's gate taint with no pool left to lift it; a node that moves into
/// another pool gated with the same taint keeps it, and that pool decides.
#[tokio::test]
async fn a_node_leaving_a_gated_pool_does_not_keep_its_taint() {
    let env = readiness_env().await;
    let c = &env.client;
    for (name, pool) in [("leave-0", "leavepool"), ("leave-1", "leavepool")] {
        create_node(c, &gated(name, pool).no_gpus_yet())
            .await
            .unwrap();
    }
    for (pool, agentpool) in [("leave", "leavepool"), ("joined", "joinedpool")] {
        create_pool(
            c,
            PoolYaml::new(pool)
                .agentpool(agentpool)
                .extra_spec("  readinessGate:\n    mode: Bootstrap\n"),
        )
        .await;
    }
    wait_pool(&env, "leave", "both nodes gated", |p| {
        gated_nodes(p) == Some(2)
    })
    .await;
    // leave-0 goes to an agent pool no GpuPool selects: the taint comes off.
    patch_node(
        c,
        "leave-0",
        json!({"metadata": {"labels": {"agentpool": "elsewhere", "kubernetes.azure.com/agentpool": "elsewhere"}}}),
    )
    .await;
    wait_node(&env, "leave-0", "the left pool's gate taint lifted", |n| {
        !gate_on(n)
    })
    .await;
    // leave-1 goes to the other gated pool: it keeps the taint until its GPUs are there.
    patch_node(
        c,
        "leave-1",
        json!({"metadata": {"labels": {"agentpool": "joinedpool", "kubernetes.azure.com/agentpool": "joinedpool"}}}),
    )
    .await;
    wait_pool(&env, "joined", "leave-1 gated in its new pool", |p| {
        gated_nodes(p) == Some(1)
    })
    .await;
    wait_pool(&env, "leave", "no node left", |p| {
        p.status.as_ref().is_some_and(|s| s.nodes == 0)
    })
    .await;
    assert!(
        gate_on(&get_node(c, "leave-1").await),
        "the new pool's gate"
    );
    set_gpus(c, "leave-1", 1, 1).await.unwrap();
    wait_node(&env, "leave-1", "the new pool opened it", |n| !gate_on(n)).await;
}

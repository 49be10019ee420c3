//! #23: GPU pools on DRA, on the real control plane. NVIDIA's GPU DRA driver is played by
//! `testenv::simulate::dra` on kwok nodes: its chart's DeviceClasses and kubelet-plugin
//! DaemonSet, and ResourceSlices published exactly as the driver's kubelet plugin does while its
//! pod runs on a node (wiped by the "kubelet" a while after it stops); the scheduler allocates
//! claims from them for real.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gpupool::api::GpuPool;
use gpupool::decide::names::{DEVICE_PLUGIN_LABEL, DRA_LABEL, pool_key};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use support::*;
use testenv::nodes::{GpuNode, create_node};
use testenv::simulate::dra::{
    self, DraDriver, DraDriverOptions, DraGpus, Install, TAINT_XID, create_dra_node,
};
use testenv::simulate::{PluginGpus, SIMULATE_VALIDATION_LABEL, ValidationPods};

const LONG: Duration = Duration::from_secs(120);

/// The binary's operator: a grace period long enough for a node to move between providers on
/// a loaded 2-core machine, short enough for the Continuous gate to close within a test.
async fn dra_env() -> Env {
    env_with(&["--gpu-grace-period", "20s", "--validation-retry", "2s"]).await
}

fn spec(allocation: &str, extra: &str) -> String {
    format!("  allocation: {allocation}\n  expectedGpusPerNode: 2\n{extra}")
}

/// Waits for the pool's status (current generation) to satisfy `pred`.
async fn wait(env: &Env, pool: &str, what: &str, pred: impl Fn(&GpuPool) -> bool) -> GpuPool {
    let api: Api<GpuPool> = Api::all(env.client.clone());
    let last = Mutex::new(None);
    testenv::poll_until(what, LONG, Duration::from_millis(250), || async {
        let p = api.get(pool).await.ok()?;
        let current = p.status.as_ref()?.observed_generation == p.metadata.generation;
        *last.lock().unwrap() = p.status.clone();
        (current && pred(&p)).then_some(p)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nlast status: {}\noperator log:\n{}",
            yaml_serde::to_string(&*last.lock().unwrap()).unwrap_or_default(),
            operator_log(env.plane)
        )
    })
}

fn problem<'a>(pool: &'a GpuPool, node: &str) -> Option<&'a gpupool::api::ProblemNode> {
    pool.status
        .as_ref()?
        .problem_nodes
        .iter()
        .find(|p| p.name == node)
}

fn is(pool: &GpuPool, condition_type: &str, status: &str, reason: Option<&str>) -> bool {
    condition(pool, condition_type)
        .is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
}

/// A DRA pool whose nodes the driver serves goes Ready from its slices alone, and says what they
/// hold: GPUs per node, the products (an A100 node among H100 nodes is a finding), the device
/// classes. A device taint then makes GpusHealthy False and names the device and taint.
#[tokio::test]
async fn a_dra_pool_goes_ready_from_its_slices_and_says_what_they_hold() {
    let env = dra_env().await;
    let c = &env.client;
    dra::install(
        c,
        &Install::default()
            .namespace("dra-ready")
            .node_selector("dratest", "ready"),
    )
    .await
    .unwrap();
    let driver = DraDriver::spawn_selecting(c.clone(), "dratest=ready");
    let h100 = "Standard_ND96isr_H100_v5";
    for (name, machine) in [
        ("dra-ready-0", DraGpus::h100_80gb(8)),
        ("dra-ready-1", DraGpus::h100_80gb(8)),
        // The VM size says H100; the GPUs are A100s.
        ("dra-ready-2", DraGpus::a100_40gb(8)),
    ] {
        let node = dra::dra_node(name, "draready", 8)
            .instance_type(h100)
            .label("dratest", "ready");
        create_dra_node(c, &node, &machine).await.unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("dra-ready")
            .agentpool("draready")
            .extra_spec("  allocation: Dra\n"),
    )
    .await;
    let pool = wait(&env, "dra-ready", "Ready from the slices", |p| {
        is(p, "Ready", "True", None)
    })
    .await;
    let status = pool.status.as_ref().unwrap();
    let dra = status.capacity.as_ref().unwrap().dra.as_ref().unwrap();
    assert_eq!((dra.nodes, dra.gpus, dra.usable), (3, 24, 24), "{dra:?}");
    assert_eq!(dra.driver, "gpu.nvidia.com");
    assert!(
        dra.device_classes.iter().any(|c| c == "gpu.nvidia.com")
            && dra.device_classes.iter().any(|c| c == "mig.nvidia.com"),
        "{:?}",
        dra.device_classes
    );
    assert_eq!(dra.products.len(), 2, "{:?}", dra.products);
    assert_eq!(status.nodes_with_gpus, 3);
    assert_eq!(status.gpus_capacity, 24);
    assert_eq!(status.capacity.as_ref().unwrap().resource, "gpu.nvidia.com");
    let plugin = status.device_plugin.as_ref().unwrap();
    assert_eq!(
        (plugin.mode.as_str(), plugin.reason.as_str()),
        ("Skipped", "DraAllocationRequested")
    );
    let finding = problem(&pool, "dra-ready-2").expect("the A100 node is named");
    assert_eq!(finding.reason, "UnexpectedGpuModel", "{finding:?}");
    assert!(finding.message.contains("A100"), "{}", finding.message);
    // No device plugin anywhere, and every node labelled for the driver.
    let nodes: Api<Node> = Api::all(c.clone());
    for name in ["dra-ready-0", "dra-ready-1", "dra-ready-2"] {
        let node = nodes.get(name).await.unwrap();
        let labels = node.labels();
        assert_eq!(
            labels.get(DRA_LABEL).map(String::as_str),
            Some(pool_key("dra-ready").as_str())
        );
        assert!(!labels.contains_key(DEVICE_PLUGIN_LABEL));
    }

    // An XID on one GPU: the driver taints it (NoSchedule).
    driver.xid("dra-ready-0", "gpu-3", 79).await.unwrap();
    let pool = wait(&env, "dra-ready", "GpusHealthy False (DeviceTaints)", |p| {
        is(p, "GpusHealthy", "False", Some("DeviceTaints"))
    })
    .await;
    let tainted = problem(&pool, "dra-ready-0").expect("the tainted node is named");
    assert!(
        tainted
            .message
            .contains(&format!("gpu-3 {TAINT_XID}=79:NoSchedule")),
        "{tainted:?}"
    );
    let dra = pool.status.unwrap().capacity.unwrap().dra.unwrap();
    assert_eq!((dra.gpus, dra.usable), (24, 23));
}

/// A slice pool published in two parts is not counted until the second part is there: the node
/// is named (IncompleteResourceSlices) and its gate stays closed; once complete, it opens.
#[tokio::test]
async fn a_slice_pool_published_in_parts_is_counted_only_once_complete() {
    let env = dra_env().await;
    let c = &env.client;
    dra::install(
        c,
        &Install::default()
            .namespace("dra-half")
            .node_selector("dra-plugin", "half")
            .tolerate("gpupool.io/gpu-not-ready"),
    )
    .await
    .unwrap();
    let driver = DraDriver::spawn_selecting(c.clone(), "dratest=half");
    let node = dra::dra_node("dra-half-0", "drahalf", 2)
        .label("dratest", "half")
        .taint("gpupool.io/gpu-not-ready", "", "NoSchedule");
    create_dra_node(c, &node, &DraGpus::a100_40gb(2).slices(2))
        .await
        .unwrap();
    // The driver publishes half the pool once its plugin starts (the node is selected for it).
    driver.publish_limit("dra-half-0", Some(1)).await.unwrap();
    patch_node(
        c,
        "dra-half-0",
        serde_json::json!({"metadata": {"labels": {"dra-plugin": "half"}}}),
    )
    .await;
    create_pool(
        c,
        PoolYaml::new("dra-half")
            .agentpool("drahalf")
            .extra_spec(&spec("Auto", "  readinessGate: {}\n")),
    )
    .await;
    let pool = wait(&env, "dra-half", "the half pool named", |p| {
        problem(p, "dra-half-0").is_some_and(|n| n.reason == "IncompleteResourceSlices")
    })
    .await;
    let message = &problem(&pool, "dra-half-0").unwrap().message;
    assert!(message.contains("1 of its 2 ResourceSlices"), "{message}");
    assert!(is(&pool, "Ready", "False", None));
    let nodes: Api<Node> = Api::all(c.clone());
    let gated = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "gpupool.io/gpu-not-ready"))
    };
    assert!(gated(&nodes.get("dra-half-0").await.unwrap()));
    driver.publish_limit("dra-half-0", None).await.unwrap();
    let pool = wait(&env, "dra-half", "Ready once complete", |p| {
        is(p, "Ready", "True", None)
    })
    .await;
    assert_eq!(pool.status.unwrap().gpus_capacity, 2);
    testenv::poll_until(
        "the gate open",
        LONG,
        Duration::from_millis(250),
        || async { (!gated(&nodes.get("dra-half-0").await.ok()?)).then_some(()) },
    )
    .await
    .unwrap();
}

/// With a Continuous gate, a GPU the driver taints closes the node to GPU work (after the grace
/// period) and GpusHealthy names it; the driver restarted without the taint reopens it.
#[tokio::test]
async fn a_device_taint_closes_a_continuous_gate_and_its_removal_reopens_it() {
    let env = dra_env().await;
    let c = &env.client;
    dra::install(
        c,
        &Install::default()
            .namespace("dra-taint")
            .node_selector("dratest", "taint"),
    )
    .await
    .unwrap();
    let driver = DraDriver::spawn_selecting(c.clone(), "dratest=taint");
    let node = dra::dra_node("dra-taint-0", "drataint", 2).label("dratest", "taint");
    create_dra_node(c, &node, &DraGpus::a100_40gb(2))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("dra-taint")
            .agentpool("drataint")
            .extra_spec(&spec("Auto", "  readinessGate: {mode: Continuous}\n")),
    )
    .await;
    wait(&env, "dra-taint", "Ready", |p| is(p, "Ready", "True", None)).await;
    driver.xid("dra-taint-0", "gpu-1", 79).await.unwrap();
    let pool = wait(&env, "dra-taint", "the node gated", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.readiness_gate.as_ref())
            .is_some_and(|g| g.gated_nodes == 1)
    })
    .await;
    assert!(is(&pool, "GpusHealthy", "False", Some("DeviceTaints")));
    let p = problem(&pool, "dra-taint-0").unwrap();
    assert!(p.message.contains("gpu-1"), "{p:?}");
    driver
        .untaint("dra-taint-0", "gpu-1", TAINT_XID)
        .await
        .unwrap();
    wait(&env, "dra-taint", "open and healthy again", |p| {
        is(p, "GpusHealthy", "True", None)
            && p.status
                .as_ref()
                .and_then(|s| s.readiness_gate.as_ref())
                .is_some_and(|g| g.gated_nodes == 0)
    })
    .await;
}

/// A DRA node is validated through a ResourceClaim from the pool's template: the scheduler
/// allocates one of the node's GPUs for it, the sample passes, the gate opens.
#[tokio::test]
async fn validation_through_a_resource_claim_passes_and_opens_the_gate() {
    let env = dra_env().await;
    let c = &env.client;
    dra::install(
        c,
        &Install::default()
            .namespace("dra-val")
            .node_selector("dratest", "val")
            .tolerate("gpupool.io/gpu-not-ready"),
    )
    .await
    .unwrap();
    let _driver = DraDriver::spawn_selecting(c.clone(), "dratest=val");
    let _kubelet = ValidationPods::spawn_selecting(
        c.clone(),
        &format!("gpupool.io/pool={}", pool_key("dra-val")),
        Duration::from_secs(1),
    );
    let claims_seen = watch_validation_claims(c, "dra-val");
    let node = dra::dra_node("dra-val-0", "draval", 2)
        .label("dratest", "val")
        .label(SIMULATE_VALIDATION_LABEL, "pass")
        .taint("gpupool.io/gpu-not-ready", "", "NoSchedule");
    create_dra_node(c, &node, &DraGpus::a100_40gb(2))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("dra-val")
            .agentpool("draval")
            .extra_spec(&spec("Dra", "  readinessGate: {}\n  validation: {}\n")),
    )
    .await;
    let pool = wait(&env, "dra-val", "validated and open", |p| {
        is(p, "GpusValidated", "True", None)
            && p.status
                .as_ref()
                .and_then(|s| s.readiness_gate.as_ref())
                .is_some_and(|g| g.gated_nodes == 0)
    })
    .await;
    assert!(is(&pool, "Ready", "True", None));
    let seen = claims_seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(template, limits)| template
            == &format!("{}-gpu-validation", pool_key("dra-val"))
            && !limits),
        "the validation pod took its GPU through the pool's claim template, not a resource limit: {seen:?}"
    );
}

/// The validation pods of a pool as created: (claim template, whether it has resource limits).
fn watch_validation_claims(c: &Client, pool: &str) -> Arc<Mutex<Vec<(String, bool)>>> {
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let record = seen.clone();
    let api: Api<Pod> = Api::all(c.clone());
    let selector = format!(
        "app.kubernetes.io/component=gpu-validation,gpupool.io/pool={}",
        pool_key(pool)
    );
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = events.next().await {
            let Some(spec) = pod.spec else { continue };
            let template = spec
                .resource_claims
                .iter()
                .flatten()
                .filter_map(|c| c.resource_claim_template_name.clone())
                .next()
                .unwrap_or_default();
            let limits = spec.containers[0]
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some_and(|l| !l.is_empty());
            record.lock().unwrap().push((template, limits));
        }
    });
    seen
}

/// What ran on each node, event by event: never a device plugin pod and the DRA driver's pod (or
/// its slices) on one node at once.
#[derive(Default)]
struct Providers {
    /// node -> live plugin pods (uid), terminating ones included.
    plugin: BTreeMap<String, BTreeSet<String>>,
    /// node -> live driver pods (uid).
    driver: BTreeMap<String, BTreeSet<String>>,
    /// nodes with slices.
    slices: BTreeSet<String>,
    violations: Vec<String>,
}

impl Providers {
    fn check(&mut self, at: &str) {
        for (node, pods) in &self.plugin {
            let driver = self.driver.get(node).is_some_and(|d| !d.is_empty());
            if !pods.is_empty() && (driver || self.slices.contains(node)) {
                self.violations.push(format!(
                    "{at}: {node} has plugin pods {pods:?} and the DRA driver (pod: {driver}, slices: {})",
                    self.slices.contains(node)
                ));
            }
        }
    }
}

fn watch_providers(c: &Client, nodes: &'static [&'static str]) -> Arc<Mutex<Providers>> {
    let state: Arc<Mutex<Providers>> = Arc::default();
    let pods_state = state.clone();
    let api: Api<Pod> = Api::all(c.clone());
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(Ok(event)) = events.next().await {
            let (pod, deleted) = match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
                watcher::Event::Delete(p) => (p, true),
                _ => continue,
            };
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if !nodes.contains(&node.as_str()) {
                continue;
            }
            let labels = pod.labels();
            let uid = pod.uid().unwrap_or_default();
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let mut s = pods_state.lock().unwrap();
            let set = if labels.get("name").map(String::as_str) == Some("nvidia-device-plugin-ds") {
                s.plugin.entry(node.clone()).or_default()
            } else if labels.contains_key("dra-driver-nvidia-gpu-component") {
                s.driver.entry(node.clone()).or_default()
            } else {
                continue;
            };
            if deleted || finished {
                set.remove(&uid);
            } else {
                set.insert(uid);
            }
            s.check(&format!("pod {} event", pod.name_any()));
        }
    });
    let slices_state = state.clone();
    let api: Api<k8s_openapi::api::resource::v1::ResourceSlice> = Api::all(c.clone());
    tokio::spawn(async move {
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut by_node: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        while let Some(Ok(event)) = events.next().await {
            let (slice, present) = match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => (s, true),
                watcher::Event::Delete(s) => (s, false),
                _ => continue,
            };
            let Some(node) = slice.spec.node_name.clone() else {
                continue;
            };
            let names = by_node.entry(node.clone()).or_default();
            if present {
                names.insert(slice.name_any());
            } else {
                names.remove(&slice.name_any());
            }
            let mut s = slices_state.lock().unwrap();
            if names.is_empty() {
                s.slices.remove(&node);
            } else {
                s.slices.insert(node.clone());
            }
            s.check(&format!("slice {} event", slice.name_any()));
        }
    });
    state
}

/// A plugin pool moved to DRA and back, one node at a time: at no pod or slice event does a node
/// have a device plugin pod and the DRA driver at once, the pool never counts a node twice, and
/// it ends Ready on the plugin with the driver gone.
#[tokio::test]
async fn a_plugin_pool_moved_to_dra_and_back_never_has_two_providers_on_a_node() {
    const NODES: &[&str] = &["dra-move-0", "dra-move-1", "dra-move-2"];
    let env = dra_env().await;
    let c = &env.client;
    let key = pool_key("dra-move");
    dra::install(
        c,
        &Install::default()
            .namespace("dra-move")
            .node_selector(DRA_LABEL, &key),
    )
    .await
    .unwrap();
    let _driver = DraDriver::spawn_with(
        c.clone(),
        DraDriverOptions {
            node_selector: "dratest=move".into(),
            wiping_delay: Duration::from_secs(3),
            ..Default::default()
        },
    );
    let _device_manager = PluginGpus::spawn_selecting(c.clone(), "dratest=move");
    let providers = watch_providers(c, NODES);
    for name in NODES {
        let node = GpuNode::aks(name, "dramove")
            .gpus(2)
            .gpus_follow_plugin()
            .label("dratest", "move")
            .label(dra::NFD_NVIDIA_PCI_LABEL.0, dra::NFD_NVIDIA_PCI_LABEL.1);
        create_node(c, &node).await.unwrap();
        dra::set_machine(c, name, &DraGpus::a100_40gb(2))
            .await
            .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("dra-move")
            .agentpool("dramove")
            .extra_spec(&spec("DevicePlugin", "")),
    )
    .await;
    let never_twice = |p: &GpuPool| {
        let s = p.status.as_ref();
        assert!(
            s.is_none_or(|s| s.gpus_capacity <= 6),
            "a node counted twice: {:?}",
            s.map(|s| s.gpus_capacity)
        );
    };
    wait(&env, "dra-move", "Ready on the plugin", |p| {
        never_twice(p);
        is(p, "Ready", "True", None) && p.status.as_ref().unwrap().gpus_allocatable == 6
    })
    .await;

    patch_pool(
        c,
        "dra-move",
        serde_json::json!({"spec": {"allocation": "Dra"}}),
    )
    .await;
    let pool = wait(&env, "dra-move", "Ready on DRA", |p| {
        never_twice(p);
        is(p, "Ready", "True", None)
            && p.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref()?.dra.as_ref())
                .is_some_and(|d| d.nodes == 3 && d.usable == 6)
    })
    .await;
    assert_eq!(
        pool.status.unwrap().device_plugin.unwrap().reason,
        "DraAllocationRequested"
    );

    patch_pool(
        c,
        "dra-move",
        serde_json::json!({"spec": {"allocation": "DevicePlugin"}}),
    )
    .await;
    wait(&env, "dra-move", "Ready on the plugin again", |p| {
        never_twice(p);
        is(p, "Ready", "True", None)
            && p.status.as_ref().is_some_and(|s| {
                s.gpus_allocatable == 6 && s.capacity.as_ref().is_none_or(|c| c.dra.is_none())
            })
    })
    .await;
    let nodes: Api<Node> = Api::all(c.clone());
    for name in NODES {
        assert!(
            !nodes
                .get(name)
                .await
                .unwrap()
                .labels()
                .contains_key(DRA_LABEL)
        );
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "dra-move");
    testenv::poll_until(
        "the driver's pods gone",
        LONG,
        Duration::from_millis(250),
        || async {
            pods.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await
    .unwrap();
    let s = providers.lock().unwrap();
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    // Both providers did serve every node at some point.
    assert!(
        NODES
            .iter()
            .all(|n| s.plugin.contains_key(*n) && s.driver.contains_key(*n))
    );
}

/// Slices gpupool must not count: another driver's, one for no node, one whose devices lack
/// their attributes. None crashes or confuses the operator; the node with attributeless devices
/// is named for the GPUs it lacks.
#[tokio::test]
async fn foreign_and_malformed_slices_are_ignored_or_named() {
    let env = dra_env().await;
    let c = &env.client;
    dra::install(
        c,
        &Install::default()
            .namespace("dra-bad")
            .node_selector("dratest", "bad"),
    )
    .await
    .unwrap();
    // Nodes with a driver pod but slices written by hand (no simulated plugin for them).
    for name in ["dra-bad-0", "dra-bad-1"] {
        let node = dra::dra_node(name, "drabad", 2).label("dratest", "bad");
        create_node(c, &node).await.unwrap();
    }
    let machine = DraGpus::a100_40gb(2);
    dra::create_slice(c, &dra::foreign_slice("dra-bad-0", "fpga.example.com", 4))
        .await
        .unwrap();
    dra::create_slice(
        c,
        &dra::slice_without_node("dra-bad-shared", &machine, ("dratest", "nowhere")),
    )
    .await
    .unwrap();
    dra::create_slice(
        c,
        &dra::without_attributes(
            dra::driver_slice("dra-bad-1", machine.devices("dra-bad-1")),
            &["type", "productName"],
        ),
    )
    .await
    .unwrap();
    create_pool(
        c,
        PoolYaml::new("dra-bad")
            .agentpool("drabad")
            .extra_spec(&spec("Dra", "")),
    )
    .await;
    let pool = wait(&env, "dra-bad", "both nodes named", |p| {
        problem(p, "dra-bad-0").is_some_and(|n| n.reason == "NoResourceSlices")
            && problem(p, "dra-bad-1").is_some_and(|n| n.reason == "FewerGpusThanExpected")
    })
    .await;
    assert!(is(&pool, "Ready", "False", None));
    let m = &problem(&pool, "dra-bad-1").unwrap().message;
    assert!(m.contains("0 of 2"), "{m}");
}

/// `allocation: Dra` on a cluster that serves no resource.k8s.io/v1 is Stalled, saying so.
#[tokio::test]
async fn dra_allocation_without_the_dra_api_is_stalled() {
    let (plane, client) = support::replicas::own_plane(testenv::Options {
        // Without its versions the API server's Node authorizer (which tracks ResourceSlices)
        // never syncs: this plane authorizes by RBAC alone, as nothing here is a kubelet.
        apiserver_args: vec![
            "--runtime-config=resource.k8s.io/v1=false,resource.k8s.io/v1beta1=false,resource.k8s.io/v1beta2=false".into(),
            "--authorization-mode=RBAC".into(),
        ],
        ..Default::default()
    })
    .await;
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let _operator = start_operator(&plane, kubeconfig, "operator", &[]);
    create_node(&client, &GpuNode::aks("old-0", "old"))
        .await
        .unwrap();
    create_pool(
        &client,
        PoolYaml::new("old")
            .agentpool("old")
            .extra_spec("  allocation: Dra\n"),
    )
    .await;
    let api: Api<GpuPool> = Api::all(client.clone());
    let pool = testenv::poll_until(
        "Stalled DraNotSupported",
        LONG,
        Duration::from_millis(250),
        || async {
            let p = api.get("old").await.ok()?;
            is(&p, "Stalled", "True", Some("DraNotSupported")).then_some(p)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(plane.dir().join("logs/operator.log")).unwrap_or_default()
        )
    });
    let stalled = condition(&pool, "Stalled").unwrap();
    assert!(
        stalled.message.contains("resource.k8s.io/v1"),
        "{}",
        stalled.message
    );
}

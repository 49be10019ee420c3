//! The DRA plan on plain data: which nodes the driver serves, and moves between it and the
//! device plugin, step by step as the cluster answers each write.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::api::GpuPool;
use crate::decide::facts::{DeviceKind, DraDevice};
use crate::decide::names::{DRA_LABEL, pool_key};
use crate::decide::testing::{gpu_node, plugin_pod};
use k8s_openapi::jiff::Timestamp;

const POOL: &str = "gpu";

fn pool(allocation: &str) -> Arc<GpuPool> {
    let mut pool: GpuPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": "GpuPool",
        "metadata": {"name": POOL, "uid": "uid-1"},
        "spec": {
            "nodeSelector": {"matchLabels": {"pool": "gpu"}},
            "allocation": allocation,
            "expectedGpusPerNode": 2,
        }
    }))
    .unwrap();
    pool.metadata.generation = Some(1);
    Arc::new(pool)
}

/// A small cluster: nodes with 2 GPUs each, served by the plugin or the driver, as a test says.
struct World {
    allocation: &'static str,
    nodes: Vec<NodeFacts>,
    pods: Vec<PodFacts>,
    slices: BTreeMap<String, Arc<DraNode>>,
}

fn slices(gpus: usize) -> Arc<DraNode> {
    Arc::new(DraNode {
        slices: 1,
        devices: (0..gpus)
            .map(|i| DraDevice {
                name: format!("gpu-{i}"),
                kind: DeviceKind::Gpu,
                uuid: Some(format!("GPU-{i}")),
                product: Some("NVIDIA A100 80GB PCIe".into()),
                taints: vec![],
            })
            .collect(),
        incomplete: vec![],
    })
}

fn plugin(node: &str) -> PodFacts {
    PodFacts {
        ready: true,
        ..plugin_pod(
            "gpu-resources",
            &format!("plugin-{node}"),
            Some(node),
            &pool_key(POOL),
        )
    }
}

fn driver(node: &str) -> PodFacts {
    PodFacts {
        role: PodRole::DraDriver,
        ready: true,
        pool_key: None,
        ..plugin_pod(
            "nvidia-dra-driver-gpu",
            &format!("kubelet-plugin-{node}"),
            Some(node),
            "",
        )
    }
}

impl World {
    /// `n` nodes, each served by the pool's device plugin (labelled, pod ready, 2 GPUs).
    fn on_plugin(allocation: &'static str, n: usize) -> World {
        let mut w = World {
            allocation,
            nodes: vec![],
            pods: vec![],
            slices: BTreeMap::new(),
        };
        for i in 0..n {
            let name = format!("n{i}");
            let mut node = gpu_node(&name, 2, 2);
            node.labels.insert("pool".into(), "gpu".into());
            node.labels
                .insert(DEVICE_PLUGIN_LABEL.into(), pool_key(POOL));
            w.pods.push(plugin(&name));
            w.nodes.push(node);
        }
        w
    }

    fn observed(&self) -> Observed {
        let mut o = crate::decide::testing::observed(pool(self.allocation));
        o.nodes = self.nodes.iter().cloned().map(Arc::new).collect();
        o.pods = self.pods.iter().cloned().map(Arc::new).collect();
        o.dra = self.slices.clone();
        o.now = Timestamp::now();
        o
    }

    fn plan(&self) -> DraPlan {
        plan_dra(&self.observed(), true)
    }

    fn node(&mut self, name: &str) -> &mut NodeFacts {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// What the API server and the controllers do with a plan: labels written, the plugin's
    /// DaemonSet controller removes pods from nodes without its label, the driver's starts
    /// its pod (and publishes slices) where the DRA label is, and the other way round.
    fn apply(&mut self, plan: &DraPlan) {
        for change in &plan.labels {
            let node = self.node(&change.node);
            match &change.to {
                Some(v) => node.labels.insert(DRA_LABEL.into(), v.clone()),
                None => node.labels.remove(DRA_LABEL),
            };
        }
        // The plugin placement: off the nodes the DRA plan keeps it off, on the others.
        for node in &mut self.nodes {
            if plan.plugin_off.contains(&node.name) {
                node.labels.remove(DEVICE_PLUGIN_LABEL);
            } else if !node.labels.contains_key(DRA_LABEL) {
                node.labels
                    .insert(DEVICE_PLUGIN_LABEL.into(), pool_key(POOL));
            }
        }
    }

    fn controllers_act(&mut self) {
        let labelled = |n: &NodeFacts, key: &str| n.labels.contains_key(key);
        let nodes = self.nodes.clone();
        // The kubelet removes a driver's slices a while after its pod went: one step late here.
        let drivers_before: Vec<String> = self
            .pods
            .iter()
            .filter(|p| p.role == PodRole::DraDriver)
            .filter_map(|p| p.node.clone())
            .collect();
        self.slices.retain(|node, _| drivers_before.contains(node));
        self.pods.retain(|p| {
            let node = nodes
                .iter()
                .find(|n| Some(&n.name) == p.node.as_ref())
                .unwrap();
            match p.role {
                PodRole::Plugin => labelled(node, DEVICE_PLUGIN_LABEL),
                _ => labelled(node, DRA_LABEL),
            }
        });
        for node in &nodes {
            let has = |pods: &[PodFacts], role| {
                pods.iter()
                    .any(|p| p.role == role && p.node.as_ref() == Some(&node.name))
            };
            if labelled(node, DRA_LABEL) && !has(&self.pods, PodRole::DraDriver) {
                self.pods.push(driver(&node.name));
                self.slices.insert(node.name.clone(), slices(2));
            }
            if labelled(node, DEVICE_PLUGIN_LABEL) && !has(&self.pods, PodRole::Plugin) {
                self.pods.push(plugin(&node.name));
            }
        }
    }

    /// Nodes served by each provider now, and the most nodes without GPU service.
    fn serving(&self) -> (usize, usize) {
        let dra = self
            .nodes
            .iter()
            .filter(|n| self.slices.contains_key(&n.name))
            .count();
        let plugin = self
            .pods
            .iter()
            .filter(|p| p.role == PodRole::Plugin)
            .count();
        (plugin, dra)
    }
}

#[test]
fn a_plugin_pool_moved_to_dra_goes_one_node_at_a_time_and_never_runs_both() {
    let mut w = World::on_plugin("Dra", 3);
    let mut steps = 0;
    loop {
        let plan = w.plan();
        assert!(
            plan.both.is_empty(),
            "both providers on a node: {:?}",
            plan.both
        );
        let (plugin, dra) = w.serving();
        assert!(
            plugin + dra >= 2,
            "more than maxUnavailable=1 node without GPUs: {plugin} on the plugin, {dra} on DRA"
        );
        if dra == 3 && plugin == 0 {
            assert_eq!(plan.served.len(), 3);
            assert!(plan.served.values().all(|s| s.judgement == Ok(None)));
            assert!(plan.moving.is_empty() && plan.queued.is_empty() && plan.labels.is_empty());
            break;
        }
        // The plugin never stays off a node the driver does not serve nor take over.
        w.apply(&plan);
        // No node has both labels.
        assert!(
            w.nodes.iter().all(|n| !(n.labels.contains_key(DRA_LABEL)
                && n.labels.contains_key(DEVICE_PLUGIN_LABEL)))
        );
        w.controllers_act();
        steps += 1;
        assert!(steps < 20, "no progress: {plan:?}");
    }
}

#[test]
fn a_dra_pool_moved_back_to_the_plugin_waits_for_the_driver_to_leave() {
    let mut w = World::on_plugin("Dra", 2);
    for _ in 0..10 {
        let plan = w.plan();
        w.apply(&plan);
        w.controllers_act();
    }
    assert_eq!(w.serving(), (0, 2));
    w.allocation = "DevicePlugin";
    let mut steps = 0;
    loop {
        let plan = w.plan();
        assert!(plan.both.is_empty());
        let (plugin, dra) = w.serving();
        assert!(plugin + dra >= 1, "both nodes without GPUs at once");
        if plugin == 2 {
            assert!(plan.served.is_empty() && plan.plugin_off.is_empty());
            break;
        }
        w.apply(&plan);
        w.controllers_act();
        // The driver's slices linger a moment after its pod goes: the plugin must wait.
        steps += 1;
        assert!(steps < 20, "no progress: {plan:?}");
    }
}

#[test]
fn slices_that_outlive_the_driver_pod_keep_the_plugin_off() {
    let mut w = World::on_plugin("DevicePlugin", 1);
    w.pods.clear();
    w.node("n0").labels.remove(DEVICE_PLUGIN_LABEL);
    // The driver's pod is gone, its slices not yet (the kubelet removes them after a while).
    w.slices.insert("n0".into(), slices(2));
    let plan = w.plan();
    assert!(plan.plugin_off.contains("n0"));
    assert_eq!(plan.moving.get("n0"), Some(&Provider::DevicePlugin));
    w.slices.clear();
    let plan = w.plan();
    assert!(plan.plugin_off.is_empty() && plan.moving.is_empty());
}

#[test]
fn auto_follows_the_driver_and_names_a_node_with_both() {
    let mut w = World::on_plugin("Auto", 2);
    // The driver was installed with its own node selector: it runs next to the plugin on n1.
    w.pods.push(driver("n1"));
    w.slices.insert("n1".into(), slices(2));
    let plan = w.plan();
    assert!(plan.both.contains_key("n1"), "{:?}", plan.both);
    assert!(
        plan.plugin_off.contains("n1"),
        "the plugin leaves the node DRA serves"
    );
    assert!(!plan.plugin_off.contains("n0"));
    assert!(
        plan.labels.is_empty(),
        "Auto never labels nodes for the driver"
    );
    // A pool without any DRA near it has nothing to decide.
    let plain = World::on_plugin("Auto", 2).plan();
    assert_eq!(
        plain,
        DraPlan {
            allocation: Allocation::Auto,
            ..DraPlan::default()
        }
    );
}

#[test]
fn a_devicepluginpool_names_a_driver_it_does_not_control() {
    let mut w = World::on_plugin("DevicePlugin", 1);
    w.pods.clear();
    w.node("n0").labels.remove(DEVICE_PLUGIN_LABEL);
    w.pods.push(driver("n0"));
    w.slices.insert("n0".into(), slices(2));
    let plan = w.plan();
    assert!(plan.foreign.contains_key("n0"));
    assert!(plan.plugin_off.contains("n0"));
}

#[test]
fn dra_without_the_api_stalls() {
    let w = World::on_plugin("Dra", 1);
    let plan = plan_dra(&w.observed(), false);
    assert_eq!(plan.stall.unwrap().reason, Reason::DraNotSupported);
    assert!(plan.labels.is_empty() && plan.plugin_off.is_empty());
}

/// A DRA node's validation pod tolerates the node's taints (AKS `sku=gpu:NoSchedule`): the
/// plugin's tolerations come from the nodes it serves, and it serves no DRA node (found by the
/// demo: the pods stayed Pending and the pool in ValidationPending).
#[test]
fn validation_pods_tolerate_the_taints_of_the_dra_nodes_they_validate() {
    use crate::decide::testing::{settings, taint};
    let mut w = World::on_plugin("Dra", 1);
    for _ in 0..10 {
        let plan = w.plan();
        w.apply(&plan);
        w.controllers_act();
    }
    assert_eq!(w.serving(), (0, 1), "the node is the driver's");
    w.node("n0").taints = vec![taint("sku", "gpu", "NoSchedule")];
    let mut o = w.observed();
    let mut pool = (*o.pool).clone();
    pool.spec.validation = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    o.pool = Arc::new(pool);
    let plan = crate::decide::plan::plan(&o, &settings());
    let validation = plan.readiness.validation.expect("the pool validates");
    let pod = validation.create.first().expect("a validation pod for n0");
    let tolerations = pod
        .spec
        .as_ref()
        .unwrap()
        .tolerations
        .clone()
        .unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("sku") && t.effect.as_deref() == Some("NoSchedule")),
        "{tolerations:?}"
    );
}

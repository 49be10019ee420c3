//! Which of a pool's nodes NVIDIA's GPU DRA driver serves, and moving nodes between the device
//! plugin and the driver (`spec.allocation`).
//!
//! A node is counted from its ResourceSlices once no device plugin pod of gpupool's runs there
//! (terminating ones included): never from both. A pool with `allocation: Dra` labels each such
//! node `gpupool.io/dra=<pool>`, which the driver's kubelet plugin DaemonSet selects (see the
//! README): the driver starts on a node only after the plugin has left it. Moving back, the
//! label comes off first, and the plugin goes on only once the driver's pod and slices are gone.
//! Moves of nodes that serve GPUs are paced by `spec.rollout.maxUnavailable`, counting every
//! node without GPU service against it, as a plugin rollout does; a node without GPU service
//! moves at once (it has nothing to lose).

mod judge;

pub use judge::judge_dra;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::api::{Allocation, Reason};
use crate::decide::capacity::{Expected, Judgement, expected, judge};
use crate::decide::facts::{DraNode, NodeFacts, NodeReadiness, Observed, PodFacts, PodRole, Stall};
use crate::decide::moves::{LabelChange, max_unavailable};
use crate::decide::names::{DEVICE_PLUGIN_LABEL, DRA_LABEL};

/// Where a node's GPUs come from, or go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Provider {
    DevicePlugin,
    Dra,
}

/// A node counted from its ResourceSlices.
#[derive(Clone, Debug, PartialEq)]
pub struct DraServed {
    pub slices: Option<Arc<DraNode>>,
    /// The driver's kubelet plugin pod on the node (a live one before a terminating one).
    pub driver_pod: Option<Arc<PodFacts>>,
    pub expected: Expected,
    pub judgement: Judgement,
}

/// What gpupool does about DRA for one pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DraPlan {
    pub allocation: Allocation,
    /// Nodes counted from their ResourceSlices.
    pub served: BTreeMap<String, DraServed>,
    /// Nodes gpupool's device plugin stays off: the driver serves them or is taking them over.
    pub plugin_off: BTreeSet<String>,
    /// `gpupool.io/dra` label writes.
    pub labels: Vec<LabelChange>,
    /// Nodes on their way from one provider to the other, and where to.
    pub moving: BTreeMap<String, Provider>,
    /// Nodes served by the provider `allocation` moves them from, waiting for
    /// `spec.rollout.maxUnavailable`.
    pub queued: Vec<String>,
    /// Nodes a device plugin and the DRA driver both serve now: what each is.
    pub both: BTreeMap<String, (String, String)>,
    /// Nodes of a DevicePlugin pool the driver serves without gpupool's label (its DaemonSet
    /// selects them by something else): the plugin cannot go there.
    pub foreign: BTreeMap<String, String>,
    /// `allocation: Dra` on a cluster without the DRA API.
    pub stall: Option<Stall>,
}

impl DraPlan {
    pub fn is_served(&self, node: &str) -> bool {
        self.served.contains_key(node)
    }
}

/// What runs on one node, as far as the two providers go.
struct NodeState<'a> {
    node: &'a NodeFacts,
    /// A gpupool plugin pod of any pool (terminating ones included).
    plugin_pod: Option<&'a PodFacts>,
    /// The pool's own plugin label is on the node.
    our_plugin_label: bool,
    /// The node's `gpupool.io/dra` label: Some(true) this pool's, Some(false) another's.
    dra_label: Option<bool>,
    driver_pod: Option<Arc<PodFacts>>,
    slices: Option<Arc<DraNode>>,
}

impl NodeState<'_> {
    fn dra_present(&self) -> bool {
        self.slices.is_some() || self.driver_pod.is_some()
    }

    fn plugin_present(&self) -> bool {
        self.plugin_pod.is_some() || self.our_plugin_label
    }

    fn in_service(&self) -> bool {
        self.node.ready == NodeReadiness::Ready && !self.node.unschedulable && !self.node.deleting
    }

    /// The driver's pod is going, or its slices outlive it: the driver is leaving the node.
    fn dra_leaving(&self) -> bool {
        match &self.driver_pod {
            Some(pod) => pod.deleting,
            None => self.slices.is_some(),
        }
    }
}

pub fn plan_dra(o: &Observed, dra_api: bool) -> DraPlan {
    let allocation = o.pool.spec.allocation;
    let mut plan = DraPlan {
        allocation,
        ..DraPlan::default()
    };
    if allocation == Allocation::Dra && !dra_api {
        plan.stall = Some(Stall {
            reason: Reason::DraNotSupported,
            message: "spec.allocation is Dra, but the cluster serves no resource.k8s.io/v1 (Dynamic Resource Allocation is GA from Kubernetes 1.34): upgrade the cluster or set allocation to DevicePlugin".into(),
        });
        return plan;
    }
    let key = o.pool_key();
    let states: Vec<NodeState> = o.nodes.iter().map(|n| state(o, n, &key)).collect();
    if allocation == Allocation::Auto
        && states
            .iter()
            .all(|s| !s.dra_present() && s.dra_label.is_none())
    {
        return plan; // no DRA anywhere near the pool: nothing to decide
    }
    let rollout = o.pool.spec.rollout.clone().unwrap_or_default();
    let slots = max_unavailable(&rollout.max_unavailable, states.len());
    let mut down = 0;
    let mut candidates = Vec::new();
    for s in &states {
        let name = &s.node.name;
        let target = target(allocation, s);
        if let (Some(pod), Some(dra)) = (s.plugin_pod.filter(|p| !p.deleting), dra_name(s)) {
            plan.both
                .insert(name.clone(), (format!("device plugin pod {}", pod.id), dra));
        }
        let serving = match target {
            Provider::Dra => place_on_dra(o, &mut plan, s, &key),
            Provider::DevicePlugin => place_on_plugin(o, &mut plan, s),
        };
        match serving {
            Serving::Target(true) | Serving::Other(true) => {}
            _ if s.in_service() => down += 1,
            _ => {}
        }
        if let Serving::Other(serves) = serving {
            candidates.push((serves, name.clone(), target));
        }
    }
    // Nodes that left the pool lose its DRA label (the driver leaves them).
    for stray in &o.strays {
        if stray.labels.get(DRA_LABEL) == Some(&key) && !stray.deleting {
            plan.labels.push(LabelChange {
                node: stray.name.clone(),
                from: Some(key.clone()),
                to: None,
            });
        }
    }
    // Nodes without GPU service move first, and at once; each serving node moved takes a slot.
    candidates.sort();
    let mut free = slots.saturating_sub(down);
    for (serves, name, target) in candidates {
        if serves {
            if free == 0 {
                plan.queued.push(name);
                continue;
            }
            free -= 1;
        }
        start_move(&mut plan, &name, target, &key);
    }
    plan
}

fn state<'a>(o: &'a Observed, node: &'a NodeFacts, key: &str) -> NodeState<'a> {
    let pods = o.shared_pods_on(&node.name);
    let plugin_pod = pods
        .iter()
        .copied()
        .filter(|p| p.role == PodRole::Plugin)
        .min_by_key(|p| p.deleting)
        .map(Arc::as_ref);
    let driver_pod = pods
        .iter()
        .copied()
        .filter(|p| p.role == PodRole::DraDriver)
        .min_by_key(|p| p.deleting)
        .cloned();
    NodeState {
        node,
        plugin_pod,
        our_plugin_label: node.labels.get(DEVICE_PLUGIN_LABEL).map(String::as_str) == Some(key),
        dra_label: node.labels.get(DRA_LABEL).map(|v| v == key),
        driver_pod,
        slices: o.dra.get(&node.name).cloned(),
    }
}

/// Where the pool wants the node's GPUs to come from. `Auto` follows the driver: a node it
/// serves (or starts to) is DRA's, any other the plugin's.
fn target(allocation: Allocation, s: &NodeState) -> Provider {
    match allocation {
        Allocation::Dra => Provider::Dra,
        Allocation::DevicePlugin => Provider::DevicePlugin,
        Allocation::Auto if s.dra_present() || s.dra_label.is_some() => Provider::Dra,
        Allocation::Auto => Provider::DevicePlugin,
    }
}

fn dra_name(s: &NodeState) -> Option<String> {
    match (&s.driver_pod, &s.slices) {
        (Some(pod), _) if !pod.deleting => Some(format!("DRA driver pod {}", pod.id)),
        (_, Some(slices)) => Some(format!("{} DRA ResourceSlices", slices.slices)),
        _ => None,
    }
}

/// Whether a node serves GPUs now, and through which provider.
enum Serving {
    /// Through the one the pool wants (true: its GPUs are there).
    Target(bool),
    /// Through the other, which it is to leave (true: its GPUs are there).
    Other(bool),
    /// Out of both (cordoned nodes and the like are counted by the status, not here).
    Neither,
}

/// A node the pool wants on DRA.
fn place_on_dra(o: &Observed, plan: &mut DraPlan, s: &NodeState, key: &str) -> Serving {
    let name = &s.node.name;
    if s.plugin_present() {
        if !s.our_plugin_label {
            // Its plugin label is off (gpupool took it off): waiting for the pod to go.
            plan.plugin_off.insert(name.clone());
            plan.moving.insert(name.clone(), Provider::Dra);
            return Serving::Neither;
        }
        return Serving::Other(plugin_serves(o, s));
    }
    plan.plugin_off.insert(name.clone());
    if plan.allocation == Allocation::Dra && s.dra_label.is_none() && !s.node.deleting {
        plan.labels.push(LabelChange {
            node: name.clone(),
            from: None,
            to: Some(key.to_string()),
        });
    }
    let served = served(o, s);
    let ok = served.judgement.is_ok();
    plan.served.insert(name.clone(), served);
    Serving::Target(ok)
}

/// A node the pool wants on the device plugin.
fn place_on_plugin(o: &Observed, plan: &mut DraPlan, s: &NodeState) -> Serving {
    let name = &s.node.name;
    match s.dra_label {
        Some(true) => {
            // Still labelled for the driver by this pool: it serves the node until it moves.
            plan.plugin_off.insert(name.clone());
            let served = served(o, s);
            let ok = served.judgement.is_ok();
            plan.served.insert(name.clone(), served);
            return Serving::Other(ok);
        }
        Some(false) => {
            // Another pool's DRA label (the node changed pools): that pool takes it off.
            plan.plugin_off.insert(name.clone());
            plan.moving.insert(name.clone(), Provider::DevicePlugin);
            return Serving::Neither;
        }
        None => {}
    }
    if s.dra_present() {
        plan.plugin_off.insert(name.clone());
        if s.dra_leaving() {
            plan.moving.insert(name.clone(), Provider::DevicePlugin);
        } else if let Some(dra) = dra_name(s) {
            plan.foreign.insert(name.clone(), dra);
        }
        return Serving::Neither;
    }
    Serving::Target(plugin_serves(o, s))
}

fn start_move(plan: &mut DraPlan, name: &str, target: Provider, key: &str) {
    plan.moving.insert(name.to_string(), target);
    match target {
        // The plugin label comes off (the placement sees `plugin_off`); the DRA label follows
        // once the plugin pod is gone.
        Provider::Dra => {
            plan.plugin_off.insert(name.to_string());
        }
        Provider::DevicePlugin => {
            plan.served.remove(name);
            plan.labels.push(LabelChange {
                node: name.to_string(),
                from: Some(key.to_string()),
                to: None,
            });
        }
    }
}

/// The pool's plugin serves the node: its pod ready, its GPUs there.
fn plugin_serves(o: &Observed, s: &NodeState) -> bool {
    let key = o.pool_key();
    let pod_ready = s
        .plugin_pod
        .is_some_and(|p| !p.deleting && p.ready && p.pool_key.as_deref() == Some(&key));
    let e = expected(s.node, &o.pool.spec, true);
    s.in_service() && pod_ready && judge(s.node, &e).is_ok()
}

fn served(o: &Observed, s: &NodeState) -> DraServed {
    let expected = dra_expected(s.node, o);
    let judgement = judge_dra(
        s.node,
        s.slices.as_deref(),
        s.driver_pod.as_deref(),
        &expected,
        o.now,
    );
    DraServed {
        slices: s.slices.clone(),
        driver_pod: s.driver_pod.clone(),
        expected,
        judgement,
    }
}

/// What a DRA node should publish: physical GPUs (sharing and MIG are the driver's business).
pub fn dra_expected(node: &NodeFacts, o: &Observed) -> Expected {
    Expected {
        resource: crate::decide::names::NVIDIA_GPU_DRIVER.to_string(),
        ..expected(node, &o.pool.spec, false)
    }
}

#[cfg(test)]
mod tests;

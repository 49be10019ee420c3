//! Property tests of the pure decisions, each checked against an independent model written out
//! plainly here (Kubernetes' label-selector, toleration and node-affinity semantics, and "the
//! oldest pool that really serves a node keeps it"), never against the crate's own helpers:
//! placement over many pools and foreign plugins through a simulated hand-over (never two plugin
//! pods on a node, terminating ones included, and exactly the expected one in the end), toleration
//! derivation, and condition transitions. The seed is fixed, so every run checks the same cases
//! (deterministic CI); raise `PROPTEST_CASES` locally to search further.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PodSpec, Toleration};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use crate::api::{
    Condition, ConditionStatus, ConditionType, GpuPool, GpuPoolSpec, GpuPoolStatus, NodeImage,
    PluginMode, PoolSelector, Reason, SelectorOperator, SelectorRequirement,
};
use crate::decide::applied::{Applied, PluginState};
use crate::decide::facts::{
    DaemonSetFacts, NodeFacts, NodeReadiness, NodeTaint, ObjectId, PodFacts, PoolRef, Rollout,
    Stall,
};
use crate::decide::names::{DEVICE_PLUGIN_LABEL, NODE_IMAGE_LABEL};
use crate::decide::plugin::PluginPlan;
use crate::decide::plugin::action::DaemonSetAction;
use crate::decide::plugin::claims::{ForeignPlugin, NodeClaims};
use crate::decide::plugin::mode::decide_plugin;
use crate::decide::scheduling::{base_tolerations, pool_taint_keys, tolerations_for};
use crate::decide::{Observed, Plan, Settings, plan, report};

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        rng_seed: RngSeed::Fixed(0x0067_7075_706f_6f6c),
        failure_persistence: None,
        ..Config::default()
    }
}

// ---- generators ----

const KEYS: [&str; 4] = ["agentpool", "zone", "team", "accelerator"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const IMAGES: [&str; 3] = [
    "AKSUbuntu-2204gen2containerd-202405.03.0",
    "AKSUbuntu-1804gpucontainerd-202307.27.0",
    "AKSUbuntu-2204gen2containerd-202501.01.0",
];
const TAINT_KEYS: [&str; 7] = [
    "sku",
    "dedicated",
    "nvidia.com/gpu",
    "CriticalAddonsOnly",
    "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/not-ready",
    "team",
];
const EFFECTS: [&str; 3] = ["NoSchedule", "NoExecute", "PreferNoSchedule"];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::collection::btree_map(
            prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            prop::sample::select(VALUES.to_vec()).prop_map(String::from),
            0..=KEYS.len(),
        ),
        prop::option::of(prop::sample::select(IMAGES.to_vec())),
    )
        .prop_map(|(mut labels, image)| {
            if let Some(image) = image {
                labels.insert(NODE_IMAGE_LABEL.into(), image.into());
            }
            labels
        })
}

fn taint() -> impl Strategy<Value = NodeTaint> {
    (
        prop::sample::select(TAINT_KEYS.to_vec()),
        prop::sample::select(vec!["", "gpu", "x"]),
        prop::sample::select(EFFECTS.to_vec()),
    )
        .prop_map(|(k, v, e)| NodeTaint {
            key: k.into(),
            value: v.into(),
            effect: e.into(),
        })
}

fn readiness() -> impl Strategy<Value = NodeReadiness> {
    prop_oneof![
        6 => Just(NodeReadiness::Ready),
        1 => Just(NodeReadiness::NotReady),
        1 => Just(NodeReadiness::Unknown),
    ]
}

/// Nodes named n0..nK with random labels, taints, readiness and GPUs.
fn nodes(max: usize) -> impl Strategy<Value = Vec<NodeFacts>> {
    prop::collection::vec(
        (
            labels(),
            prop::collection::vec(taint(), 0..3),
            any::<bool>(),
            readiness(),
            prop::option::of(0i64..5),
            prop::option::of(0i64..5),
            prop::option::of(0i64..2000),
            prop::bool::weighted(0.1),
        ),
        0..max,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(
                |(i, (labels, taints, unschedulable, ready, cap, alloc, age, deleting))| {
                    NodeFacts {
                        name: format!("n{i}"),
                        labels,
                        taints,
                        unschedulable: unschedulable && i % 3 == 0,
                        ready,
                        ready_since: None,
                        gpu_capacity: cap,
                        gpu_allocatable: alloc,
                        other_gpu_resources: Default::default(),
                        conditions: vec![],
                        created: age.map(|a| {
                            Timestamp::from_second(1_800_000_000 - a).expect("valid timestamp")
                        }),
                        deleting,
                        boot_id: format!("boot-n{i}"),
                        validation: None,
                    }
                },
            )
            .collect()
    })
}

fn requirement() -> impl Strategy<Value = SelectorRequirement> {
    (
        prop::sample::select(KEYS.to_vec()),
        prop::sample::select(vec![
            SelectorOperator::In,
            SelectorOperator::NotIn,
            SelectorOperator::Exists,
            SelectorOperator::DoesNotExist,
        ]),
        prop::collection::btree_set(prop::sample::select(VALUES.to_vec()), 1..3),
    )
        .prop_map(|(key, operator, values)| SelectorRequirement {
            key: key.into(),
            operator,
            values: match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.into_iter().map(String::from).collect()
                }
                _ => vec![],
            },
        })
}

/// A non-empty selector (the CRD rejects empty ones).
fn selector() -> impl Strategy<Value = PoolSelector> {
    (
        prop::collection::btree_map(
            prop::sample::select(KEYS.to_vec()).prop_map(String::from),
            prop::sample::select(VALUES.to_vec()).prop_map(String::from),
            0..3,
        ),
        prop::collection::vec(requirement(), 0..3),
        requirement(),
    )
        .prop_map(|(match_labels, mut match_expressions, fallback)| {
            if match_labels.is_empty() && match_expressions.is_empty() {
                match_expressions.push(fallback);
            }
            PoolSelector {
                match_labels,
                match_expressions,
            }
        })
}

/// Pools p0..pK with random selectors and creation times (ties included).
fn pools(max: usize) -> impl Strategy<Value = Vec<PoolRef>> {
    prop::collection::vec((selector(), prop::option::of(0i64..4)), 1..max).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (selector, created))| PoolRef {
                name: format!("p{i}"),
                uid: format!("uid-p{i}"),
                node_image: NodeImage::Standard,
                serving: true,
                created: created.map(|c| Timestamp::from_second(1_700_000_000 + c).unwrap()),
                selector,
                gate_key: None,
            })
            .collect()
    })
}

/// Device plugins gpupool does not own: a node selector on one label and/or the seed's tolerations.
fn foreign(max: usize) -> impl Strategy<Value = Vec<ForeignPlugin>> {
    prop::collection::vec(
        (
            prop::option::of((
                prop::sample::select(KEYS.to_vec()),
                prop::sample::select(VALUES.to_vec()),
            )),
            any::<bool>(),
        ),
        0..max,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (sel, tolerant))| ForeignPlugin {
                id: format!("kube-system/foreign-{i}"),
                pod: PodSpec {
                    node_selector: sel.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                    tolerations: Some(if tolerant {
                        vec![Toleration {
                            operator: Some("Exists".into()),
                            ..Toleration::default()
                        }]
                    } else {
                        base_tolerations()
                    }),
                    ..PodSpec::default()
                },
            })
            .collect()
    })
}

fn settings() -> Settings {
    crate::decide::testing::settings()
}

// ---- the independent model ----

/// Kubernetes' label-selector semantics, written out plainly (an empty selector selects
/// nothing in gpupool: the CRD rejects it).
fn model_selects(selector: &PoolSelector, labels: &BTreeMap<String, String>) -> bool {
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        return false;
    }
    for (k, v) in &selector.match_labels {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for r in &selector.match_expressions {
        let value = labels.get(&r.key);
        let ok = match r.operator {
            SelectorOperator::In => matches!(value, Some(v) if r.values.contains(v)),
            SelectorOperator::NotIn => !matches!(value, Some(v) if r.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// `v1.Toleration.ToleratesTaint`, written out plainly.
fn model_tolerates(tol: &Toleration, taint: &NodeTaint) -> bool {
    let effect_ok = match tol.effect.as_deref() {
        None | Some("") => true,
        Some(e) => e == taint.effect,
    };
    let key = tol.key.clone().unwrap_or_default();
    let key_ok = key.is_empty() || key == taint.key;
    let op_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        None | Some("") | Some("Equal") => {
            !key.is_empty() && tol.value.clone().unwrap_or_default() == taint.value
        }
        _ => false,
    };
    effect_ok && key_ok && op_ok
}

/// Where a foreign plugin DaemonSet's pods run: its node selector, and every NoSchedule/NoExecute
/// taint tolerated, except the node lifecycle ones the DaemonSet controller tolerates itself.
fn model_foreign_runs_on(pod: &PodSpec, node: &NodeFacts) -> bool {
    let selected = pod
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    let tolerated = node
        .taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
        .all(|t| tolerations.iter().any(|tol| model_tolerates(tol, t)));
    selected && tolerated
}

/// Whether a node's image ships the plugin (the retired GPU-dedicated image).
fn model_ships_plugin(node: &NodeFacts) -> bool {
    node.labels
        .get(NODE_IMAGE_LABEL)
        .is_some_and(|v| v.starts_with("AKSUbuntu-1804gpu"))
}

/// The pool whose plugin a node should end up running: the oldest (then by name) of the pools
/// that select it, run a plugin at all and put it on this node; none when a foreign plugin
/// covers the node.
fn model_owner(
    node: &NodeFacts,
    pools: &[(PoolRef, NodeImage)],
    nodes: &[NodeFacts],
    foreign: &[ForeignPlugin],
) -> Option<String> {
    if foreign.iter().any(|f| model_foreign_runs_on(&f.pod, node)) {
        return None;
    }
    let managed = |p: &PoolRef, image: NodeImage| match image {
        NodeImage::Standard => true,
        NodeImage::Specialized => false,
        NodeImage::Auto => nodes
            .iter()
            .any(|n| model_selects(&p.selector, &n.labels) && !model_ships_plugin(n)),
    };
    let eligible = |image: NodeImage| image == NodeImage::Standard || !model_ships_plugin(node);
    pools
        .iter()
        .filter(|(p, image)| {
            model_selects(&p.selector, &node.labels) && managed(p, *image) && eligible(*image)
        })
        .min_by_key(|(p, _)| (p.created.is_none(), p.created, p.name.clone()))
        .map(|(p, _)| p.name.clone())
}

// ---- the simulated cluster: gpupool's plans applied, the DaemonSet controller and kubelets ----

/// A plugin pod: its pool, and whether it is terminating.
type SimPod = (String, bool);

fn gpupool(p: &PoolRef, node_image: NodeImage, managed: bool) -> GpuPool {
    let mut pool = GpuPool::new(
        &p.name,
        GpuPoolSpec {
            node_selector: p.selector.clone(),
            node_image,
            ..Default::default()
        },
    );
    pool.metadata.uid = Some(p.uid.clone());
    pool.metadata.creation_timestamp = p
        .created
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    pool.status = Some(GpuPoolStatus {
        device_plugin: Some(crate::api::DevicePluginStatus {
            mode: if managed {
                PluginMode::Managed
            } else {
                PluginMode::Skipped
            },
            ..Default::default()
        }),
        ..Default::default()
    });
    pool
}

fn foreign_daemonset(f: &ForeignPlugin) -> DaemonSetFacts {
    let (namespace, name) = f.id.split_once('/').expect("namespace/name");
    DaemonSetFacts {
        id: ObjectId {
            namespace: namespace.into(),
            name: name.into(),
        },
        uid: f.id.clone(),
        deleting: false,
        pool_owner: None,
        desired_hash: None,
        spec_editors: vec![],
        tolerated: Default::default(),
        rollout: Rollout::default(),
        plugin_pod: Some(f.pod.clone()),
        pod_selector: Default::default(),
    }
}

struct Sim {
    nodes: Vec<NodeFacts>,
    pools: Vec<(PoolRef, NodeImage)>,
    foreign: Vec<ForeignPlugin>,
    pods: BTreeMap<String, Vec<SimPod>>,
    /// Pools whose last plan wanted a DaemonSet (their status says Managed).
    managed: BTreeSet<String>,
}

impl Sim {
    fn observed(&self, i: usize) -> Observed {
        let (p, image) = &self.pools[i];
        let spec = gpupool(p, *image, false).spec;
        let revision = crate::decide::plugin::daemonset::plugin_identity(
            &settings().default_plugin_image,
            spec.device_plugin.as_ref(),
            crate::decide::plugin::config::plugin_config(&spec).as_ref(),
        );
        let others = self
            .pools
            .iter()
            .filter(|(o, _)| o.name != p.name)
            .map(|(o, img)| PoolRef::of(&gpupool(o, *img, self.managed.contains(&o.name)), true))
            .collect();
        let pods = self
            .pods
            .iter()
            .flat_map(|(node, pods)| pods.iter().map(move |(pool, going)| (node, pool, going)))
            .map(|(node, pool, going)| {
                Arc::new(PodFacts {
                    deleting: *going,
                    // The DaemonSet controller copies the template's plugin revision: every
                    // pool here keeps one spec, so its pods run its one plugin.
                    plugin: Some(revision.clone()),
                    ..crate::decide::testing::plugin_pod(
                        "gpu-resources",
                        &format!("{pool}-{node}"),
                        Some(node),
                        pool,
                    )
                })
            })
            .collect();
        Observed {
            pool: Arc::new(gpupool(p, *image, self.managed.contains(&p.name))),
            nodes: self
                .nodes
                .iter()
                .filter(|n| model_selects(&p.selector, &n.labels))
                .cloned()
                .map(Arc::new)
                .collect(),
            strays: self
                .nodes
                .iter()
                .filter(|n| {
                    !model_selects(&p.selector, &n.labels)
                        && n.labels.get(DEVICE_PLUGIN_LABEL) == Some(&p.name)
                })
                .cloned()
                .map(Arc::new)
                .collect(),
            other_pools: others,
            plugin_daemonsets: self
                .foreign
                .iter()
                .map(|f| Arc::new(foreign_daemonset(f)))
                .collect(),
            pods,
            dra: Default::default(),
            dra_api: true,
            device_classes: Vec::new(),
            pool_uids: self.pools.iter().map(|(p, _)| p.uid.clone()).collect(),
            rejection: None,
            problem_clocks: None,
            plugin_configs: vec![],
            gpu_busy: Default::default(),
            now: Timestamp::UNIX_EPOCH,
            pods_by_node: Default::default(),
        }
    }

    /// gpupool reconciles every pool once (in this order), writing the labels it plans.
    fn reconcile(&mut self, order: &[usize]) {
        for &i in order {
            let plan = plan(&self.observed(i), &settings());
            let name = self.pools[i].0.name.clone();
            if plan.plugin.decision.mode == PluginMode::Managed {
                self.managed.insert(name);
            } else {
                self.managed.remove(&name);
            }
            for change in plan.plugin.placement.label_changes {
                let node = self
                    .nodes
                    .iter_mut()
                    .find(|n| n.name == change.node)
                    .expect("a known node");
                if node.labels.get(DEVICE_PLUGIN_LABEL) == change.from.as_ref() {
                    match change.to {
                        Some(to) => node.labels.insert(DEVICE_PLUGIN_LABEL.into(), to),
                        None => node.labels.remove(DEVICE_PLUGIN_LABEL),
                    };
                }
            }
        }
    }

    /// The DaemonSet controller and kubelets: a terminating pod is gone a step later; a pod whose
    /// node no longer carries its pool's label starts terminating; a labelled node without its
    /// pool's pod gets one (gpupool's DaemonSets require exactly that label).
    fn kubelets(&mut self) {
        for node in &self.nodes {
            let pods = self.pods.entry(node.name.clone()).or_default();
            pods.retain(|(_, going)| !going);
            let label = node.labels.get(DEVICE_PLUGIN_LABEL);
            for (pool, going) in pods.iter_mut() {
                if Some(&*pool) != label {
                    *going = true;
                }
            }
            if let Some(label) = label.filter(|l| !pods.iter().any(|(p, _)| p == *l)) {
                pods.push((label.clone(), false));
            }
        }
    }

    fn plugins_on(&self, node: &NodeFacts) -> usize {
        let foreign = self
            .foreign
            .iter()
            .filter(|f| model_foreign_runs_on(&f.pod, node))
            .count();
        foreign + self.pods.get(&node.name).map_or(0, Vec::len)
    }
}

/// Pools with random selectors, ages and image modes (Standard and Auto: Skipped pools deploy
/// nothing to check).
fn pools_with_modes(max: usize) -> impl Strategy<Value = Vec<(PoolRef, NodeImage)>> {
    (pools(max), prop::collection::vec(any::<bool>(), max)).prop_map(|(pools, auto)| {
        pools
            .into_iter()
            .zip(auto)
            .map(|(p, auto)| {
                (
                    p,
                    if auto {
                        NodeImage::Auto
                    } else {
                        NodeImage::Standard
                    },
                )
            })
            .collect()
    })
}

fn is_hard(t: &NodeTaint) -> bool {
    t.effect == "NoSchedule" || t.effect == "NoExecute"
}

fn lifecycle(key: &str) -> bool {
    key.starts_with("node.kubernetes.io/")
        || key == "ToBeDeletedByClusterAutoscaler"
        || key.starts_with("karpenter.sh/")
}

proptest! {
    #![proptest_config(config())]

    /// Over random pools, nodes and foreign plugins, gpupool's plans driven through a simulated
    /// cluster until they settle, the pools reconciled in a different order every round: no node
    /// ever runs two device plugins (terminating pods included), and in the end each node runs
    /// exactly the plugin the model says, or none.
    #[test]
    fn never_two_plugins_on_a_node_and_in_the_end_the_one_the_model_expects(
        nodes in nodes(10),
        pools in pools_with_modes(4),
        foreign in foreign(2),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim { nodes, pools, foreign, pods: BTreeMap::new(), managed: BTreeSet::new() };
        let mut order: Vec<usize> = (0..sim.pools.len()).collect();
        for round in 0..12u64 {
            let len = order.len();
            order.rotate_left(((seed >> (round % 8)) as usize) % len);
            sim.reconcile(&order);
            sim.kubelets();
            for node in &sim.nodes {
                prop_assert!(sim.plugins_on(node) <= 1, "round {}: node {} runs {:?} and foreign plugins", round, node.name, sim.pods.get(&node.name));
            }
        }
        let snapshot: Vec<(PoolRef, NodeImage)> = sim.pools.clone();
        for node in &sim.nodes {
            let want = model_owner(node, &snapshot, &sim.nodes, &sim.foreign);
            let running: Vec<&String> = sim.pods.get(&node.name).into_iter().flatten().map(|(p, _)| p).collect();
            prop_assert_eq!(running.first().copied(), want.as_ref(), "node {:?}", node);
        }
    }

    /// The tolerations gpupool derives let its plugin onto every node despite every taint that
    /// is not the cluster's own lifecycle taint, never tolerate a lifecycle taint, and do not
    /// change when a taint's value does or when the nodes come in another order.
    #[test]
    fn derived_tolerations_cover_pool_taints_ignore_lifecycle_taints_and_values(
        taints in prop::collection::vec(taint(), 0..8),
        rotate in 0usize..8,
    ) {
        let keys = pool_taint_keys(&taints);
        let all: Vec<Toleration> = base_tolerations().into_iter().chain(tolerations_for(&keys)).collect();
        for t in taints.iter().filter(|t| is_hard(t) && !lifecycle(&t.key)) {
            prop_assert!(all.iter().any(|tol| model_tolerates(tol, t)), "taint {:?} not tolerated by {:?}", t, all);
        }
        for tol in tolerations_for(&keys) {
            prop_assert!(!lifecycle(tol.key.as_deref().unwrap_or_default()), "{:?}", tol);
            prop_assert_eq!(tol.operator.as_deref(), Some("Exists"));
        }
        let revalued: Vec<NodeTaint> = taints.iter().map(|t| NodeTaint { value: format!("{}-changed", t.value), ..t.clone() }).collect();
        prop_assert_eq!(pool_taint_keys(&revalued), keys.clone(), "values do not matter");
        let mut shuffled = taints.clone();
        let len = shuffled.len().max(1);
        shuffled.rotate_left(rotate % len);
        shuffled.reverse();
        prop_assert_eq!(pool_taint_keys(&shuffled), keys);
    }

    /// Conditions over a sequence of reconciles: lastTransitionTime moves iff the status flips;
    /// Stalled and Reconciling are never both True, and a pool that is not Ready has exactly one
    /// of them (kstatus); Ready True implies DevicePluginReady True
    /// (and GpusSchedulable True, unless the pool has no nodes); the summary conditions are
    /// always present and the others only while True.
    #[test]
    fn condition_transitions_follow_the_conventions(
        steps in prop::collection::vec(
            (
                nodes(6),
                prop::sample::select(vec![NodeImage::Auto, NodeImage::Standard, NodeImage::Specialized]),
                0usize..4,
                (0i64..3, 0i64..3, 0i32..4, 0i32..4, 0i32..4),
                prop::option::of(prop::sample::select(vec![Reason::DaemonSetRejected, Reason::Forbidden, Reason::DaemonSetNameTaken])),
                1i64..900,
                prop::option::of(1i32..4),
                (prop::collection::btree_set(0usize..6, 0..3), prop::collection::btree_set(0usize..6, 0..3)),
            ),
            1..8,
        ),
    ) {
        let mut previous: Vec<Condition> = Vec::new();
        let mut previous_problems = Vec::new();
        let mut previous_mode = None;
        let mut now = Timestamp::from_second(1_800_000_000).unwrap();
        let selector = PoolSelector {
            match_labels: [("agentpool".to_string(), "a".to_string())].into(),
            match_expressions: vec![],
        };
        for (nodes, node_image, state, (generation_step, lag, desired, ready, updated), stall, advance, expected, (other, foreign)) in steps {
            now = now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(advance)).unwrap();
            let stall = stall.map(|reason| Stall { reason, message: format!("{reason} happened") });
            let generation = Some(1 + generation_step);
            let step = ConditionStep {
                nodes: &nodes, node_image, state, rollout: (generation_step, lag, desired, ready, updated),
                stall: stall.clone(), expected, other: &other, foreign: &foreign,
            };
            let outcome = report_step(&step, &selector, &previous, &previous_problems, previous_mode, now);
            check_conventions(&outcome, &previous, now, generation, stall.as_ref(), nodes.is_empty())?;
            previous = outcome.status.conditions.clone();
            previous_problems = outcome.status.problem_nodes.clone();
            previous_mode = outcome.status.device_plugin.as_ref().map(|d| d.mode);
        }
    }
}

/// One reconcile of `condition_transitions_follow_the_conventions`.
struct ConditionStep<'a> {
    nodes: &'a [NodeFacts],
    node_image: NodeImage,
    state: usize,
    rollout: (i64, i64, i32, i32, i32),
    stall: Option<Stall>,
    expected: Option<i32>,
    other: &'a BTreeSet<usize>,
    foreign: &'a BTreeSet<usize>,
}

/// The status `report` gives for one step, after the previous step's status.
fn report_step(
    step: &ConditionStep,
    selector: &PoolSelector,
    previous: &[Condition],
    previous_problems: &[crate::api::ProblemNode],
    previous_mode: Option<PluginMode>,
    now: Timestamp,
) -> crate::decide::StatusOutcome {
    let ConditionStep {
        nodes,
        node_image,
        state,
        rollout: (generation_step, ..),
        expected,
        other,
        foreign,
        ..
    } = *step;
    let generation = Some(1 + generation_step);
    let refs: Vec<&NodeFacts> = nodes.iter().collect();
    let plugin = decide_plugin(node_image, &refs, &Default::default(), previous_mode);
    let mut claims = NodeClaims::default();
    for i in other.iter().filter(|i| **i < nodes.len()) {
        claims
            .served_by_other_pool
            .insert(nodes[*i].name.clone(), "older".into());
    }
    for i in foreign.iter().filter(|i| **i < nodes.len()) {
        claims
            .foreign_plugins
            .insert(nodes[*i].name.clone(), vec!["kube-system/seed".into()]);
    }
    let daemonset = step_daemonset(plugin.mode, state, step.rollout);

    let mut pool = GpuPool::new(
        "p",
        GpuPoolSpec {
            node_selector: selector.clone(),
            node_image,
            device_plugin: None,
            expected_gpus_per_node: expected,
            ..Default::default()
        },
    );
    pool.metadata.generation = generation;
    pool.status = Some(GpuPoolStatus {
        conditions: previous.to_vec(),
        problem_nodes: previous_problems.to_vec(),
        ..Default::default()
    });
    let observed = Observed {
        pool: Arc::new(pool),
        nodes: nodes.iter().cloned().map(Arc::new).collect(),
        strays: vec![],
        other_pools: vec![],
        plugin_daemonsets: vec![],
        pods: vec![],
        dra: Default::default(),
        dra_api: true,
        device_classes: Vec::new(),
        pool_uids: Default::default(),
        rejection: None,
        problem_clocks: None,
        plugin_configs: vec![],
        gpu_busy: Default::default(),
        now,
        pods_by_node: Default::default(),
    };
    let plan = plan_with(&observed, plugin, claims);
    let applied = Applied::kept(daemonset, step.stall.clone());
    report(&observed, &plan, &applied, &settings())
}

/// The conventions every step's conditions keep (see the property's doc).
fn check_conventions(
    outcome: &crate::decide::StatusOutcome,
    previous: &[Condition],
    now: Timestamp,
    generation: Option<i64>,
    stall: Option<&Stall>,
    no_nodes: bool,
) -> Result<(), TestCaseError> {
    let conditions = &outcome.status.conditions;
    let find = |t: ConditionType| conditions.iter().find(|c| c.type_ == t.as_str());
    let types: BTreeSet<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
    prop_assert_eq!(
        types.len(),
        conditions.len(),
        "duplicate condition types: {:?}",
        conditions
    );
    let summary = [
        ConditionType::Ready,
        ConditionType::DevicePluginReady,
        ConditionType::GpusSchedulable,
        ConditionType::GpusHealthy,
    ];
    for always in summary {
        prop_assert!(find(always).is_some(), "{} missing", always);
    }
    for c in conditions {
        check_condition(c, &summary, previous, now, generation)?;
    }
    let is_true = |t: ConditionType| find(t).is_some_and(|c| c.is_true());
    let (stalled, reconciling) = (ConditionType::Stalled, ConditionType::Reconciling);
    prop_assert!(
        !(is_true(stalled) && is_true(reconciling)),
        "Stalled and Reconciling both True: {:?}",
        conditions
    );
    if let Some(stall) = stall {
        prop_assert!(is_true(stalled), "a stall is reported: {:?}", conditions);
        prop_assert_eq!(
            find(stalled).map(|c| c.reason.as_str()),
            Some(stall.reason.as_str())
        );
    }
    // kstatus: a pool that is not Ready is either progressing or failed (except when
    // every node is cordoned on purpose).
    let ready = find(ConditionType::Ready).unwrap();
    if !ready.is_true() && ready.reason != Reason::AllNodesCordoned.as_str() {
        prop_assert!(
            is_true(stalled) != is_true(reconciling),
            "not Ready needs exactly one of Reconciling/Stalled: {:?}",
            conditions
        );
    }
    if ready.is_true() {
        prop_assert!(
            is_true(ConditionType::DevicePluginReady),
            "Ready without the plugin ready: {:?}",
            conditions
        );
        prop_assert!(
            is_true(ConditionType::GpusSchedulable) || no_nodes,
            "Ready without schedulable GPUs: {:?}",
            conditions
        );
    }
    Ok(())
}

/// A plan that writes nothing, with the given plugin decision and claims.
fn plan_with(
    observed: &Observed,
    decision: crate::decide::plugin::mode::PluginDecision,
    claims: NodeClaims,
) -> Plan {
    Plan {
        dra: Default::default(),
        plugin: PluginPlan {
            decision,
            claims,
            image: "img".into(),
            delete_stale: vec![],
            daemonset: DaemonSetAction::Nothing,
            live: None,
            placement: Default::default(),
            leftover_pods: vec![],
            plugin_nodes: 0,
            expected: observed
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        crate::decide::capacity::expected(n, &observed.pool.spec, true),
                    )
                })
                .collect(),
            config: None,
            config_map: crate::decide::plugin::config::ConfigMapAction::Nothing,
            tolerated: Default::default(),
            revision: String::new(),
            rollout: None,
        },
        readiness: Default::default(),
    }
}

/// The DaemonSet's state in a step: none, pending, or live with the step's rollout counts.
fn step_daemonset(
    mode: PluginMode,
    state: usize,
    (generation_step, lag, desired, ready, updated): (i64, i64, i32, i32, i32),
) -> PluginState {
    let id = ObjectId {
        namespace: "gpu-resources".into(),
        name: "p".into(),
    };
    match (mode, state) {
        (PluginMode::Skipped, _) | (_, 0) => PluginState::NotDeployed,
        (_, 1) => PluginState::Pending { id },
        _ => PluginState::Live {
            id,
            rollout: Rollout {
                generation: 1 + generation_step,
                observed_generation: 1 + generation_step - lag.min(generation_step + 1),
                desired,
                ready: ready.min(desired),
                updated: updated.min(desired),
            },
        },
    }
}

/// One condition: True or False, present only while True unless a summary condition, this
/// generation, a CamelCase reason, and a lastTransitionTime that moves only on a flip.
fn check_condition(
    c: &Condition,
    summary: &[ConditionType],
    previous: &[Condition],
    now: Timestamp,
    generation: Option<i64>,
) -> Result<(), TestCaseError> {
    prop_assert!(
        c.has_status(ConditionStatus::True) || c.has_status(ConditionStatus::False),
        "{:?}",
        c
    );
    if !summary.iter().any(|t| t.as_str() == c.type_) {
        prop_assert!(c.is_true(), "{} is present only while True", &c.type_);
    }
    prop_assert_eq!(c.observed_generation, generation);
    prop_assert!(
        !c.reason.is_empty() && c.reason.chars().next().unwrap().is_ascii_uppercase(),
        "reason {:?}",
        c.reason
    );
    let now_s = Timestamp::from_second(now.as_second()).unwrap();
    match previous.iter().find(|p| p.type_ == c.type_) {
        Some(p) if p.status == c.status => prop_assert_eq!(
            &c.last_transition_time,
            &p.last_transition_time,
            "{} did not flip",
            &c.type_
        ),
        _ => prop_assert_eq!(
            c.last_transition_time.0,
            now_s,
            "{} flipped or appeared now",
            &c.type_
        ),
    }
    Ok(())
}

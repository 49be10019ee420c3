//! Property tests of the pure decisions: selector matching against the DaemonSet's generated
//! placement, toleration derivation, conflict resolution between pools and foreign plugins, and
//! condition transitions. The seed is fixed, so every run checks the same cases (deterministic
//! CI); raise `PROPTEST_CASES` locally to search further.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PodSpec, Toleration};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use crate::api::{
    Condition, GpuPool, GpuPoolSpec, NodeImage, PluginMode, PoolSelector, SelectorOperator,
    SelectorRequirement,
};
use crate::api::{ConditionStatus, ConditionType, Reason};
use crate::decide::action::DaemonSetAction;
use crate::decide::claims::{ForeignPlugin, NodeClaims, PoolRef};
use crate::decide::image::{ImageKind, classify, decide_plugin};
use crate::decide::model::{Applied, DaemonSetFacts, ObjectId, PluginState, Rollout, Stall};
use crate::decide::nodes::{NODE_IMAGE_LABEL, NodeFacts, NodeReadiness, NodeTaint};
use crate::decide::scheduling::{
    base_tolerations, daemon_pod_would_run_on, tolerates, tolerations_for_taints,
};
use crate::decide::selector::selects;
use crate::decide::{Observed, Plan, Settings, plan, report};
use std::sync::Arc;

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
                        gpu_capacity: cap,
                        gpu_allocatable: alloc,
                        created: age.map(|a| {
                            Timestamp::from_second(1_800_000_000 - a).expect("valid timestamp")
                        }),
                        deleting,
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
                created: created.map(|c| Timestamp::from_second(1_700_000_000 + c).unwrap()),
                selector,
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
    Settings {
        plugin_namespace: "gpu-resources".into(),
        default_plugin_image: crate::decide::daemonset::DEFAULT_PLUGIN_IMAGE.into(),
        gpu_grace_period: Duration::from_secs(600),
        rollout_deadline: Duration::from_secs(300),
    }
}

fn gpupool(p: &PoolRef, node_image: NodeImage) -> GpuPool {
    let mut pool = GpuPool::new(
        &p.name,
        GpuPoolSpec {
            node_selector: p.selector.clone(),
            node_image,
            device_plugin: None,
            expected_gpus_per_node: None,
        },
    );
    pool.metadata.uid = Some(format!("uid-{}", p.name));
    pool.metadata.creation_timestamp = p
        .created
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    pool
}

/// What the controller does for one pool: its members are the nodes it selects.
fn plan_for(
    p: &PoolRef,
    node_image: NodeImage,
    nodes: &[NodeFacts],
    pools: &[PoolRef],
    foreign: &[ForeignPlugin],
) -> Plan {
    let observed = Observed {
        pool: Arc::new(gpupool(p, node_image)),
        nodes: nodes
            .iter()
            .filter(|n| selects(&p.selector, &n.labels))
            .cloned()
            .map(Arc::new)
            .collect(),
        other_pools: pools.iter().filter(|o| o.name != p.name).cloned().collect(),
        plugin_daemonsets: foreign
            .iter()
            .map(|f| Arc::new(foreign_daemonset(f)))
            .collect(),
        pool_uids: pools.iter().map(|p| p.uid.clone()).collect(),
        now: Timestamp::UNIX_EPOCH,
    };
    plan(&observed, &settings())
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
        rollout: Rollout::default(),
        plugin_pod: Some(f.pod.clone()),
    }
}

fn desired(plan: &Plan) -> Option<&DaemonSet> {
    match &plan.daemonset {
        DaemonSetAction::Apply(ds) => Some(ds),
        _ => None,
    }
}

fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the desired DaemonSet has a pod template")
}

fn is_hard(t: &NodeTaint) -> bool {
    (t.effect == "NoSchedule" || t.effect == "NoExecute")
        && !t.key.starts_with("node.kubernetes.io/")
        && !t.key.starts_with("node.cloudprovider.kubernetes.io/")
}

// ---- properties ----

proptest! {
    #![proptest_config(config())]

    /// A node runs the pool's plugin iff the pool selects it, nobody else serves it, and (Auto)
    /// its image does not ship a plugin: the generated node affinity mirrors the selector, and
    /// the derived tolerations let the pod onto every node it is meant for.
    #[test]
    fn the_daemonset_runs_exactly_on_the_selected_nodes_minus_exclusions(
        nodes in nodes(12),
        mut pools in pools(4),
        foreign in foreign(2),
        auto in any::<bool>(),
    ) {
        // The pool under test is the youngest, so exclusions by older pools happen.
        pools[0].created = Some(Timestamp::from_second(1_800_000_000).unwrap());
        let this = pools[0].clone();
        let node_image = if auto { NodeImage::Auto } else { NodeImage::Standard };
        let d = plan_for(&this, node_image, &nodes, &pools, &foreign);
        let excluded = d.claims.excluded_nodes();
        let Some(ds) = desired(&d) else {
            prop_assert_eq!(d.plugin.mode, PluginMode::Skipped);
            prop_assert!(auto, "only Auto pools skip the plugin here");
            let members = nodes.iter().filter(|n| selects(&this.selector, &n.labels));
            prop_assert!(members.clone().count() > 0 && members.into_iter().all(|n| classify(n) == ImageKind::Specialized));
            return Ok(());
        };
        for node in &nodes {
            let want = selects(&this.selector, &node.labels)
                && !excluded.contains(&node.name)
                && !(auto && classify(node) == ImageKind::Specialized);
            prop_assert_eq!(
                daemon_pod_would_run_on(pod(ds), node),
                want,
                "node {:?} selector {:?} excluded {:?}",
                node, this.selector, excluded
            );
        }
    }

    /// Every NoSchedule/NoExecute taint that Kubernetes does not manage itself is tolerated by
    /// the base plus derived tolerations; nothing else is derived; input order does not matter.
    #[test]
    fn derived_tolerations_cover_every_hard_taint_and_only_those(
        taints in prop::collection::vec(taint(), 0..8),
        rotate in 0usize..8,
    ) {
        let derived = tolerations_for_taints(&taints);
        let all: Vec<Toleration> = base_tolerations().into_iter().chain(derived.iter().cloned()).collect();
        for t in taints.iter().filter(|t| is_hard(t)) {
            prop_assert!(all.iter().any(|tol| tolerates(tol, t)), "taint {:?} not tolerated by {:?}", t, all);
        }
        for tol in &derived {
            let effect = tol.effect.as_deref().unwrap_or_default();
            prop_assert!(effect == "NoSchedule" || effect == "NoExecute", "{:?}", tol);
            prop_assert!(
                taints.iter().any(|t| is_hard(t) && tolerates(tol, t)),
                "{:?} tolerates no hard taint of the nodes", tol
            );
            prop_assert!(!tol.key.as_deref().unwrap_or_default().starts_with("node.kubernetes.io/"));
        }
        let distinct: BTreeSet<String> = derived.iter().map(|t| format!("{t:?}")).collect();
        prop_assert_eq!(distinct.len(), derived.len(), "duplicates in {:?}", derived);
        let mut shuffled = taints.clone();
        let len = shuffled.len().max(1);
        shuffled.rotate_left(rotate % len);
        shuffled.reverse();
        prop_assert_eq!(tolerations_for_taints(&shuffled), derived);
    }

    /// Over random pools, nodes and foreign plugins: each node gets at most one gpupool plugin,
    /// exactly one when some pool selects it and no foreign plugin covers it, none when a
    /// foreign plugin does; and the result does not depend on the order of the inputs.
    #[test]
    fn every_node_is_served_by_at_most_one_plugin_whatever_the_order(
        nodes in nodes(10),
        pools in pools(5),
        foreign in foreign(2),
        rotate in 0usize..5,
    ) {
        let desired = |nodes: &[NodeFacts], pools: &[PoolRef]| -> BTreeMap<String, DaemonSet> {
            pools
                .iter()
                .filter_map(|p| {
                    desired(&plan_for(p, NodeImage::Standard, nodes, pools, &foreign))
                        .map(|ds| (p.name.clone(), ds.clone()))
                })
                .collect()
        };
        let daemonsets = desired(&nodes, &pools);
        prop_assert_eq!(daemonsets.len(), pools.len(), "Standard pools always want a DaemonSet");
        for node in &nodes {
            let running: Vec<&String> = daemonsets
                .iter()
                .filter(|(_, ds)| daemon_pod_would_run_on(pod(ds), node))
                .map(|(p, _)| p)
                .collect();
            let selected = pools.iter().any(|p| selects(&p.selector, &node.labels));
            let covered = foreign.iter().any(|f| daemon_pod_would_run_on(&f.pod, node));
            let want = usize::from(selected && !covered);
            prop_assert_eq!(
                running.len(), want,
                "node {:?}: plugins of {:?} (selected {}, foreign plugin {})",
                node, running, selected, covered
            );
        }
        // Order independence: pools listed and nodes observed in another order.
        let mut pools2 = pools.clone();
        let len = pools2.len();
        pools2.rotate_left(rotate % len);
        pools2.reverse();
        let mut nodes2 = nodes.clone();
        nodes2.reverse();
        prop_assert_eq!(desired(&nodes2, &pools2), daemonsets);
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
        let mut previous_mode = None;
        let mut now = Timestamp::from_second(1_800_000_000).unwrap();
        let selector = PoolSelector {
            match_labels: [("agentpool".to_string(), "a".to_string())].into(),
            match_expressions: vec![],
        };
        for (nodes, node_image, state, (generation_step, lag, desired, ready, updated), stall, advance, expected, (other, foreign)) in steps {
            now = now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(advance)).unwrap();
            let refs: Vec<&NodeFacts> = nodes.iter().collect();
            let plugin = decide_plugin(node_image, &refs, previous_mode);
            let mut claims = NodeClaims::default();
            for i in other.iter().filter(|i| **i < nodes.len()) {
                claims.served_by_other_pool.insert(nodes[*i].name.clone(), "older".into());
            }
            for i in foreign.iter().filter(|i| **i < nodes.len()) {
                claims.foreign_plugins.insert(nodes[*i].name.clone(), vec!["kube-system/seed".into()]);
            }
            let id = ObjectId { namespace: "gpu-resources".into(), name: "p".into() };
            let daemonset = match (plugin.mode, state) {
                (PluginMode::Skipped, _) | (_, 0) => PluginState::NotDeployed,
                (_, 1) => PluginState::Pending { id },
                _ => PluginState::Live { id, rollout: Rollout {
                    generation: 1 + generation_step,
                    observed_generation: 1 + generation_step - lag.min(generation_step + 1),
                    desired,
                    ready: ready.min(desired),
                    updated: updated.min(desired),
                }},
            };
            let stall = stall.map(|reason| Stall { reason, message: format!("{reason} happened") });
            let generation = Some(1 + generation_step);
            let mut pool = GpuPool::new("p", GpuPoolSpec {
                node_selector: selector.clone(),
                node_image,
                device_plugin: None,
                expected_gpus_per_node: expected,
            });
            pool.metadata.generation = generation;
            pool.status = Some(crate::api::GpuPoolStatus { conditions: previous.clone(), ..Default::default() });
            let observed = Observed {
                pool: Arc::new(pool),
                nodes: nodes.iter().cloned().map(Arc::new).collect(),
                other_pools: vec![],
                plugin_daemonsets: vec![],
                pool_uids: Default::default(),
                now,
            };
            let plan = Plan {
                plugin: plugin.clone(),
                claims,
                image: "img".into(),
                delete_stale: vec![],
                daemonset: DaemonSetAction::Nothing,
                live: None,
            };
            let applied = Applied { state: daemonset, stall: stall.clone(), change: None };
            let outcome = report(&observed, &plan, &applied, &settings());
            let conditions = &outcome.status.conditions;
            let find = |t: ConditionType| conditions.iter().find(|c| c.type_ == t.as_str());
            let types: BTreeSet<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
            prop_assert_eq!(types.len(), conditions.len(), "duplicate condition types: {:?}", conditions);
            let summary = [ConditionType::Ready, ConditionType::DevicePluginReady, ConditionType::GpusSchedulable];
            for always in summary {
                prop_assert!(find(always).is_some(), "{} missing", always);
            }
            for c in conditions {
                prop_assert!(c.has_status(ConditionStatus::True) || c.has_status(ConditionStatus::False), "{:?}", c);
                if !summary.iter().any(|t| t.as_str() == c.type_) {
                    prop_assert!(c.is_true(), "{} is present only while True", &c.type_);
                }
                prop_assert_eq!(c.observed_generation, generation);
                prop_assert!(!c.reason.is_empty() && c.reason.chars().next().unwrap().is_ascii_uppercase(), "reason {:?}", c.reason);
                let now_s = Timestamp::from_second(now.as_second()).unwrap();
                match previous.iter().find(|p| p.type_ == c.type_) {
                    Some(p) if p.status == c.status => prop_assert_eq!(&c.last_transition_time, &p.last_transition_time, "{} did not flip", &c.type_),
                    _ => prop_assert_eq!(c.last_transition_time.0, now_s, "{} flipped or appeared now", &c.type_),
                }
            }
            let is_true = |t: ConditionType| find(t).is_some_and(|c| c.is_true());
            let (stalled, reconciling) = (ConditionType::Stalled, ConditionType::Reconciling);
            prop_assert!(!(is_true(stalled) && is_true(reconciling)), "Stalled and Reconciling both True: {:?}", conditions);
            if let Some(stall) = &stall {
                prop_assert!(is_true(stalled), "a stall is reported: {:?}", conditions);
                prop_assert_eq!(find(stalled).map(|c| c.reason.as_str()), Some(stall.reason.as_str()));
            }
            // kstatus: a pool that is not Ready is either progressing or failed (except when
            // every node is cordoned on purpose).
            let ready = find(ConditionType::Ready).unwrap();
            if !ready.is_true() && ready.reason != Reason::AllNodesCordoned.as_str() {
                prop_assert!(is_true(stalled) != is_true(reconciling), "not Ready needs exactly one of Reconciling/Stalled: {:?}", conditions);
            }
            if ready.is_true() {
                prop_assert!(is_true(ConditionType::DevicePluginReady), "Ready without the plugin ready: {:?}", conditions);
                prop_assert!(is_true(ConditionType::GpusSchedulable) || nodes.is_empty(), "Ready without schedulable GPUs: {:?}", conditions);
            }
            previous = outcome.status.conditions.clone();
            previous_mode = outcome.status.device_plugin.as_ref().map(|d| d.mode);
        }
    }
}

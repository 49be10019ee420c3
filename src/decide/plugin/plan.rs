//! The plugin half of a pool's plan: the plugin mode, the nodes the pool serves, its DaemonSet
//! and ConfigMap, and the node labels that place it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::api::{
    Allocation, GpuPool, PluginMode, PluginRevision, Reason, RolloutState, RolloutStrategy,
};
use crate::decide::Settings;
use crate::decide::capacity::{self, Expected};
use crate::decide::dra::DraPlan;
use crate::decide::facts::{
    DaemonSetFacts, NodeFacts, NodeReadiness, ObjectId, Observed, PodFacts, PodRole, PoolRef,
    Stall, TaintKey,
};
use crate::decide::names::{
    DESIRED_HASH_ANNOTATION, DEVICE_PLUGIN_LABEL, DRA_LABEL, daemonset_name,
};
use crate::decide::scheduling::{pool_taint_keys, tolerates_node_taints};

use super::action::{DaemonSetAction, daemonset_action, stale_daemonsets};
use super::claims::{ForeignPlugin, NodeClaims, claim_nodes};
use super::config::{
    ConfigMapAction, PluginConfig, config_map_action, desired_config_map, plugin_config,
};
use super::daemonset::{PluginPlacement, desired_daemonset, plugin_identity};
use super::mode::{PluginDecision, decide_plugin};
use super::placement::{Placement, place};
use super::rollout::{RolloutInputs, RolloutNodeView, RolloutPlan, max_unavailable, plan_rollout};

/// What gpupool will do about a pool's device plugin, and what it decided on the way.
#[derive(Clone, Debug)]
pub struct PluginPlan {
    /// Which nodes get gpupool's plugin and which their platform's (the plugin mode).
    pub decision: PluginDecision,
    pub claims: NodeClaims,
    /// The plugin image the pool runs (or would run).
    pub image: String,
    /// This pool's DaemonSets in another namespace: deleted first.
    pub delete_stale: Vec<ObjectId>,
    pub daemonset: DaemonSetAction,
    /// The pool's own DaemonSet as observed before any write.
    pub live: Option<Arc<DaemonSetFacts>>,
    /// Node label writes that move the plugin onto and off nodes.
    pub placement: Placement,
    /// Pods of this pool's DaemonSets from another namespace, still going away.
    pub leftover_pods: Vec<ObjectId>,
    /// What each node should have allocatable (see `capacity`).
    pub expected: BTreeMap<String, Expected>,
    /// Nodes the plugin should run on once this plan is written: labelled for this pool, their
    /// taints tolerated. The DaemonSet's desired count must reach it before the plugin is ready.
    pub plugin_nodes: usize,
    /// The plugin's config file (sharing, MIG), and what to do to its ConfigMap.
    pub config: Option<PluginConfig>,
    pub config_map: ConfigMapAction,
    /// The taint keys the plugin tolerates (validation pods tolerate them too).
    pub tolerated: BTreeSet<TaintKey>,
    /// The revision of the plugin the DaemonSet runs (see `plugin_identity`): the spec's, or
    /// the last good one while a halted rollout is rolled back.
    pub revision: String,
    /// The GPU-verified rollout of the plugin (Managed pools with `spec.rollout` GpuVerified).
    pub rollout: Option<RolloutPlan>,
}

pub fn plan_plugin(observed: &Observed, settings: &Settings, dra: &DraPlan) -> PluginPlan {
    let pool = &observed.pool;
    let nodes: Vec<&NodeFacts> = observed.nodes.iter().map(Arc::as_ref).collect();
    let plugin = plugin_decision(observed, &nodes, dra);
    let claims = claim_nodes(
        &PoolRef::of(pool, false),
        &nodes,
        &observed.other_pools,
        &foreign_plugins(observed),
        &dra.plugin_off,
    );
    let wanted = wanted_revision(observed, settings);
    let live = own_daemonset(observed, &settings.plugin_namespace);
    let serves = |n: &NodeFacts| {
        plugin.wants_plugin_on(&n.name)
            && !claims.excludes(&n.name)
            && !dra.plugin_off.contains(&n.name)
    };
    let rollout = (plugin.mode == PluginMode::Managed)
        .then(|| {
            let namespace = &settings.plugin_namespace;
            rollout(observed, &wanted, &nodes, &serves, &plugin, namespace)
        })
        .flatten();
    let render = rollout.as_ref().map_or(&wanted, |r| &r.render);
    let image = render.image.clone();
    let config = (plugin.mode == PluginMode::Managed)
        .then(|| plugin_config(&rendered_spec(render)))
        .flatten();
    let tolerated = tolerated_taints(observed, live.as_deref(), &nodes, &serves);
    let desired = (plugin.mode == PluginMode::Managed).then(|| {
        desired_daemonset(&PluginPlacement {
            pool: &observed.pool_name(),
            pool_uid: observed.pool_uid(),
            namespace: &settings.plugin_namespace,
            image: &image,
            spec: render.device_plugin.as_ref(),
            tolerated: &tolerated,
            config: config.as_ref(),
            on_delete: gpu_verified(observed),
        })
    });
    let leftover_pods = leftover_pods(observed, &settings.plugin_namespace);
    let daemonset = daemonset_plan(
        observed,
        settings,
        desired.as_ref(),
        &image,
        live.is_some(),
        &leftover_pods,
    );
    let placement = placement(observed, &daemonset, &nodes, &serves, rollout.as_ref());
    let plugin_nodes = desired
        .as_ref()
        .map_or(0, |ds| plugin_nodes(observed, &placement, ds));
    PluginPlan {
        plugin_nodes,
        expected: expectations(observed, &plugin),
        config_map: plan_config_map(observed, settings, config.as_ref()),
        config,
        delete_stale: stale_daemonsets(
            observed.plugin_daemonsets.iter().map(Arc::as_ref),
            observed.pool_uid(),
            &settings.plugin_namespace,
        ),
        daemonset,
        live,
        placement,
        leftover_pods,
        revision: render.revision.clone(),
        image,
        decision: plugin,
        claims,
        tolerated,
        rollout,
    }
}

/// The label changes that put the plugin where it `serves`, but for the nodes whose plugin the
/// rollout replaces now (not served until their old pod is gone); none while the DaemonSet
/// cannot be written.
fn placement(
    observed: &Observed,
    daemonset: &DaemonSetAction,
    nodes: &[&NodeFacts],
    serves: &impl Fn(&NodeFacts) -> bool,
    rollout: Option<&RolloutPlan>,
) -> Placement {
    if matches!(daemonset, DaemonSetAction::Blocked(_)) {
        return Placement::default();
    }
    let strays: Vec<&NodeFacts> = observed.strays.iter().map(Arc::as_ref).collect();
    let replaced = |n: &NodeFacts| rollout.is_some_and(|r| r.take_off.contains(&n.name));
    place(
        &observed.pool_key(),
        nodes,
        |n| serves(n) && !replaced(n),
        &strays,
        observed,
    )
}

/// The nodes whose GPU use a rollout's next step chooses between (idle ones first): the pool's
/// nodes running another plugin than the spec's, ready to be replaced, a few per free slot. Empty
/// when no rollout has a free slot: then nothing is asked of the API server.
pub fn gpu_use_wanted(observed: &Observed, settings: &Settings) -> Vec<String> {
    if !gpu_verified(observed) {
        return Vec::new();
    }
    let pool = &observed.pool;
    let record = pool
        .status
        .as_ref()
        .and_then(|s| s.device_plugin.as_ref())
        .and_then(|d| d.rollout.as_ref());
    if record.is_some_and(|r| matches!(r.state, RolloutState::Halted | RolloutState::RolledBack)) {
        return Vec::new();
    }
    let spec = pool.spec.rollout.clone().unwrap_or_default();
    let in_progress = record.map_or(0, |r| r.in_progress.len());
    let slots =
        max_unavailable(&spec.max_unavailable, observed.nodes.len()).saturating_sub(in_progress);
    if slots == 0 {
        return Vec::new();
    }
    let wanted = wanted_revision(observed, settings).revision;
    let key = observed.pool_key();
    observed
        .nodes
        .iter()
        .filter(|n| n.ready == NodeReadiness::Ready && !n.unschedulable && !n.deleting)
        .filter(|n| !record.is_some_and(|r| r.in_progress.iter().any(|e| e.name == n.name)))
        .filter(|n| {
            observed.pods_on(&n.name).iter().any(|p| {
                p.role == PodRole::Plugin
                    && p.pool_key.as_deref() == Some(&key)
                    && !p.deleting
                    && p.plugin.as_deref() != Some(wanted.as_str())
            })
        })
        .map(|n| n.name.clone())
        .take((slots * 4).min(16))
        .collect()
}

/// Whether the pool's plugin changes roll out node by node, verified by GPUs (the default).
fn gpu_verified(observed: &Observed) -> bool {
    observed
        .pool
        .spec
        .rollout
        .as_ref()
        .is_none_or(|r| r.strategy == RolloutStrategy::GpuVerified)
}

/// The plugin the spec asks for, with what it is made from.
fn wanted_revision(observed: &Observed, settings: &Settings) -> PluginRevision {
    let spec = &observed.pool.spec;
    let image = plugin_image(&observed.pool, settings);
    let config = plugin_config(spec);
    PluginRevision {
        revision: plugin_identity(&image, spec.device_plugin.as_ref(), config.as_ref()),
        image,
        device_plugin: spec.device_plugin.clone(),
        sharing: spec.sharing.clone(),
        mig: spec.mig.clone(),
    }
}

/// The spec fields a plugin revision renders from.
fn rendered_spec(revision: &PluginRevision) -> crate::api::GpuPoolSpec {
    crate::api::GpuPoolSpec {
        sharing: revision.sharing.clone(),
        mig: revision.mig.clone(),
        ..Default::default()
    }
}

/// The rollout of a Managed pool's plugin, over the nodes it serves.
fn rollout(
    observed: &Observed,
    wanted: &PluginRevision,
    nodes: &[&NodeFacts],
    serves: &dyn Fn(&NodeFacts) -> bool,
    decision: &PluginDecision,
    namespace: &str,
) -> Option<RolloutPlan> {
    if !gpu_verified(observed) {
        return None;
    }
    let pool = &observed.pool;
    let spec = pool.spec.rollout.clone().unwrap_or_default();
    let key = observed.pool_key();
    let expected = expectations(observed, decision);
    let views: Vec<RolloutNodeView> = nodes
        .iter()
        .filter(|n| serves(n))
        .map(|n| {
            let mut pods: Vec<&PodFacts> = observed
                .pods_on(&n.name)
                .into_iter()
                .filter(|p| p.role == PodRole::Plugin && p.pool_key.as_deref() == Some(&key))
                .filter(|p| p.id.namespace == namespace)
                .collect();
            pods.sort_by_key(|p| p.deleting);
            RolloutNodeView {
                node: n,
                pod: pods.first().copied(),
                expected: expected.get(&n.name),
            }
        })
        .collect();
    Some(plan_rollout(&RolloutInputs {
        spec: &spec,
        wanted: wanted.clone(),
        previous: pool
            .status
            .as_ref()
            .and_then(|s| s.device_plugin.as_ref())
            .and_then(|d| d.rollout.as_ref()),
        nodes: views,
        validates: pool.spec.validation.is_some(),
        busy: &observed.gpu_busy,
        now: observed.now,
    }))
}

/// Which nodes run gpupool's plugin and which their platform's (the previous mode is kept while
/// the pool has no nodes to detect from).
fn plugin_decision(observed: &Observed, nodes: &[&NodeFacts], dra: &DraPlan) -> PluginDecision {
    let pool = &observed.pool;
    let previous_mode = pool
        .status
        .as_ref()
        .and_then(|s| s.device_plugin.as_ref())
        .map(|d| d.mode);
    let decision = decide_plugin(pool.spec.node_image, nodes, &dra.plugin_off, previous_mode);
    if pool.spec.allocation != Allocation::Dra
        || nodes.iter().any(|n| !dra.plugin_off.contains(&n.name))
    {
        return decision;
    }
    // Every node is the DRA driver's (or on its way): no plugin to run.
    PluginDecision {
        mode: PluginMode::Skipped,
        reason: Reason::DraAllocationRequested,
        message: format!(
            "spec.allocation is Dra: NVIDIA's GPU DRA driver serves the {} nodes (gpupool labels them {DRA_LABEL}=<pool> for its kubelet plugin), so gpupool runs no device plugin",
            nodes.len()
        ),
        ..decision
    }
}

/// How many nodes carry this pool's plugin label once `placement` is written (the DaemonSet's
/// only placement rule) and have no taint its pods do not tolerate.
fn plugin_nodes(observed: &Observed, placement: &Placement, ds: &DaemonSet) -> usize {
    let key = observed.pool_key();
    let Some(pod) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
        return 0;
    };
    let label_after = |n: &NodeFacts| -> Option<String> {
        match placement.label_changes.iter().find(|c| c.node == n.name) {
            Some(change) => change.to.clone(),
            None => n.labels.get(DEVICE_PLUGIN_LABEL).cloned(),
        }
    };
    observed
        .nodes
        .iter()
        .chain(&observed.strays)
        .filter(|n| label_after(n).as_deref() == Some(key.as_str()))
        .filter(|n| tolerates_node_taints(pod, n))
        .count()
}

/// What each node should have (sharing and MIG only where gpupool runs the plugin).
fn expectations(observed: &Observed, plugin: &PluginDecision) -> BTreeMap<String, Expected> {
    observed
        .nodes
        .iter()
        .map(|n| {
            let ours = !plugin.shipped.contains_key(&n.name);
            (
                n.name.clone(),
                capacity::expected(n, &observed.pool.spec, ours),
            )
        })
        .collect()
}

fn plan_config_map(
    observed: &Observed,
    settings: &Settings,
    config: Option<&PluginConfig>,
) -> ConfigMapAction {
    let namespace = &settings.plugin_namespace;
    config_map_action(
        config
            .map(|c| desired_config_map(&observed.pool_name(), observed.pool_uid(), namespace, c)),
        observed
            .plugin_configs
            .iter()
            .find(|c| &c.id.namespace == namespace)
            .map(Arc::as_ref),
    )
}

/// The taint keys the plugin tolerates: those it tolerated already (kept, see
/// `PluginPlacement::tolerated`), those of the nodes it serves, and the pool's gate taint.
fn tolerated_taints(
    observed: &Observed,
    live: Option<&DaemonSetFacts>,
    nodes: &[&NodeFacts],
    serves: &dyn Fn(&NodeFacts) -> bool,
) -> BTreeSet<TaintKey> {
    let mut tolerated: BTreeSet<TaintKey> = live.map(|ds| ds.tolerated.clone()).unwrap_or_default();
    tolerated.extend(pool_taint_keys(
        nodes
            .iter()
            .filter(|n| serves(n))
            .flat_map(|n| n.taints.iter()),
    ));
    if let Some(gate) = &observed.pool.spec.readiness_gate {
        // The gate must never keep out the very plugin it waits for.
        tolerated.insert((gate.taint_key.clone(), "NoSchedule".into()));
    }
    tolerated
}

/// What to do to the pool's own DaemonSet.
fn daemonset_plan(
    observed: &Observed,
    settings: &Settings,
    desired: Option<&DaemonSet>,
    image: &str,
    live: bool,
    leftover_pods: &[ObjectId],
) -> DaemonSetAction {
    let blocked = image_not_allowed(image, settings).filter(|_| desired.is_some());
    match blocked.or_else(|| refused_again(observed, desired, settings)) {
        Some(stall) => DaemonSetAction::Blocked(stall),
        // A pool's DaemonSet moved namespaces: its old pods go first (never two plugins).
        None if !live && !leftover_pods.is_empty() => DaemonSetAction::Wait {
            id: ObjectId {
                namespace: settings.plugin_namespace.clone(),
                name: daemonset_name(&observed.pool_name()),
            },
        },
        None => daemonset_action(
            desired,
            raw_daemonset(observed, &settings.plugin_namespace).as_deref(),
            observed.pool_uid(),
        ),
    }
}

/// The same DaemonSet the API server refused a moment ago: not written again on every event, only
/// once the spec changes (a new hash) or the stall retry period has passed.
fn refused_again(
    observed: &Observed,
    desired: Option<&DaemonSet>,
    settings: &Settings,
) -> Option<Stall> {
    let rejection = observed.rejection.as_ref()?;
    let hash = desired?
        .metadata
        .annotations
        .as_ref()?
        .get(DESIRED_HASH_ANNOTATION)?;
    let retry = k8s_openapi::jiff::SignedDuration::try_from(settings.stall_retry).ok()?;
    (*hash == rejection.hash && observed.now < rejection.at.checked_add(retry).ok()?)
        .then(|| rejection.stall.clone())
}

fn plugin_image(pool: &GpuPool, settings: &Settings) -> String {
    pool.spec
        .device_plugin
        .as_ref()
        .and_then(|d| d.image.clone())
        .unwrap_or_else(|| settings.default_plugin_image.clone())
}

/// Whoever chooses the plugin image on a node owns the node (the plugin decides the mounts,
/// devices and environment of other pods' containers): only images from the operator's
/// allowed repositories run.
fn image_not_allowed(image: &str, settings: &Settings) -> Option<Stall> {
    if settings.image_allowed(image) {
        return None;
    }
    Some(Stall {
        reason: Reason::ImageNotAllowed,
        message: format!(
            "spec.devicePlugin.image {image} is not from a repository the operator allows ({}): use an image from one of them, or have a cluster admin add its repository to --allowed-plugin-images",
            settings.allowed_plugin_images.join(", ")
        ),
    })
}

/// The DaemonSet at this pool's name in the plugin namespace, whoever owns it.
fn raw_daemonset(observed: &Observed, namespace: &str) -> Option<Arc<DaemonSetFacts>> {
    let name = daemonset_name(&observed.pool_name());
    observed
        .plugin_daemonsets
        .iter()
        .find(|ds| ds.id.namespace == namespace && ds.id.name == name)
        .cloned()
}

/// The pool's own DaemonSet in the plugin namespace.
fn own_daemonset(observed: &Observed, namespace: &str) -> Option<Arc<DaemonSetFacts>> {
    raw_daemonset(observed, namespace).filter(|ds| ds.controlled_by(observed.pool_uid()))
}

/// Plugin pods of this pool in another namespace than the plugin namespace.
fn leftover_pods(observed: &Observed, namespace: &str) -> Vec<ObjectId> {
    let key = observed.pool_key();
    observed
        .pods
        .iter()
        .filter(|p| {
            p.role == PodRole::Plugin
                && p.pool_key.as_deref() == Some(&key)
                && p.id.namespace != namespace
        })
        .map(|p| p.id.clone())
        .collect()
}

/// Device plugins that are not this pool's: others' DaemonSets, and gpupool's whose pool is gone.
fn foreign_plugins(observed: &Observed) -> Vec<ForeignPlugin> {
    let live: HashSet<&str> = observed.pool_uids.iter().map(String::as_str).collect();
    observed
        .plugin_daemonsets
        .iter()
        .filter(|ds| ds.is_foreign_plugin(&live) && !ds.controlled_by(observed.pool_uid()))
        .filter_map(|ds| {
            Some(ForeignPlugin {
                id: ds.id.to_string(),
                pod: ds.plugin_pod.clone()?,
            })
        })
        .collect()
}

//! `plan`: from what was observed of one pool and its surroundings to the writes that bring the
//! cluster where the pool wants it. Pure: the shell observes, this decides, the shell applies.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{GpuPool, PluginMode, Reason};
use crate::decide::Settings;
use crate::decide::action::{DaemonSetAction, daemonset_action, stale_daemonsets};
use crate::decide::capacity::{self, Expected};
use crate::decide::claims::{ForeignPlugin, NodeClaims, PoolRef, claim_nodes};
use crate::decide::daemonset::{PluginPlacement, daemonset_name, desired_daemonset, pool_key};
use crate::decide::gate::TaintChange;
use crate::decide::image::{PluginDecision, decide_plugin};
use crate::decide::model::{
    DESIRED_HASH_ANNOTATION, DaemonSetFacts, ObjectId, ProblemClocks, Rejection, Stall,
};
use crate::decide::nodes::NodeFacts;
use crate::decide::placement::{DEVICE_PLUGIN_LABEL, LabelChange, Occupancy, Placement, place};
use crate::decide::plugin_config::{
    ConfigMapAction, ConfigMapFacts, PluginConfig, config_map_action, desired_config_map,
    plugin_config,
};
use crate::decide::pods::{PodFacts, PodRole};
use crate::decide::readiness::{ReadinessPlan, plan_readiness};
use crate::decide::scheduling::{TaintKey, pool_taint_keys, tolerates_node_taints};
use crate::decide::validation::ValidationRecord;

/// Everything a reconcile of one pool reads, as plain data.
#[derive(Clone, Debug)]
pub struct Observed {
    pub pool: Arc<GpuPool>,
    /// The nodes the pool's selector selects, sorted by name.
    pub nodes: Vec<Arc<NodeFacts>>,
    /// Nodes carrying this pool's device-plugin label that it does not select (any more).
    pub strays: Vec<Arc<NodeFacts>>,
    /// Every other pool, for nodes they contest.
    pub other_pools: Vec<PoolRef>,
    /// Every device-plugin DaemonSet in the cluster, gpupool's and others'.
    pub plugin_daemonsets: Vec<Arc<DaemonSetFacts>>,
    /// gpupool's pods on the pool's nodes and the pool's own pods wherever they are.
    pub pods: Vec<Arc<PodFacts>>,
    /// Nodes whose GPUs an NVIDIA DRA driver publishes.
    pub dra_nodes: HashSet<String>,
    /// UIDs of the GpuPools that exist.
    pub pool_uids: HashSet<String>,
    /// The pool's last DaemonSet the API server refused.
    pub rejection: Option<Rejection>,
    /// The pool's plugin ConfigMaps (in the plugin namespace).
    pub plugin_configs: Vec<Arc<ConfigMapFacts>>,
    /// When each problem node's problem began, as the last reconcile found (None after a
    /// restart: then the status says it, for the nodes it lists).
    pub problem_clocks: Option<Arc<ProblemClocks>>,
    pub now: Timestamp,
}

impl Observed {
    pub fn pool_name(&self) -> String {
        self.pool.name_any()
    }

    pub fn pool_uid(&self) -> &str {
        self.pool.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn pool_key(&self) -> String {
        pool_key(&self.pool_name())
    }

    /// When each problem node's problem began.
    pub fn problem_clocks(&self) -> std::borrow::Cow<'_, ProblemClocks> {
        match &self.problem_clocks {
            Some(clocks) => std::borrow::Cow::Borrowed(clocks.as_ref()),
            None => std::borrow::Cow::Owned(ProblemClocks::of(
                self.pool.status.iter().flat_map(|s| s.problem_nodes.iter()),
            )),
        }
    }

    /// gpupool's pods on a node, terminating ones included.
    pub fn pods_on(&self, node: &str) -> Vec<&PodFacts> {
        self.pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(node))
            .map(Arc::as_ref)
            .collect()
    }
}

impl Occupancy for Observed {
    fn pods_on(&self, node: &str) -> Vec<&PodFacts> {
        Observed::pods_on(self, node)
    }

    fn runs_plugin(&self, key: &str) -> bool {
        self.plugin_daemonsets.iter().any(|ds| {
            !ds.deleting
                && ds
                    .pool_owner
                    .as_ref()
                    .is_some_and(|owner| pool_key(&owner.name) == key)
        })
    }
}

/// Everything to write on one node, in one read-modify-write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    pub node: String,
    pub label: Option<LabelChange>,
    pub taint: Option<TaintChange>,
    pub record: Option<ValidationRecord>,
}

/// The node writes of label changes, taint changes and validation records, one per node.
pub fn node_updates<'a>(
    labels: impl IntoIterator<Item = &'a LabelChange>,
    taints: impl IntoIterator<Item = &'a TaintChange>,
    records: impl IntoIterator<Item = &'a (String, ValidationRecord)>,
) -> Vec<NodeUpdate> {
    let mut merged: std::collections::BTreeMap<String, NodeUpdate> =
        std::collections::BTreeMap::new();
    fn entry<'m>(
        merged: &'m mut std::collections::BTreeMap<String, NodeUpdate>,
        node: &str,
    ) -> &'m mut NodeUpdate {
        merged
            .entry(node.to_string())
            .or_insert_with(|| NodeUpdate {
                node: node.to_string(),
                ..NodeUpdate::default()
            })
    }
    for label in labels {
        entry(&mut merged, &label.node).label = Some(label.clone());
    }
    for taint in taints {
        entry(&mut merged, &taint.node).taint = Some(taint.clone());
    }
    for (node, record) in records {
        entry(&mut merged, node).record = Some(record.clone());
    }
    merged.into_values().collect()
}

impl Plan {
    /// Every node write the plan calls for.
    pub fn node_updates(&self) -> Vec<NodeUpdate> {
        let r = &self.readiness;
        let taints = r.gate.iter().flat_map(|g| &g.changes).chain(&r.lift);
        node_updates(
            &self.placement.label_changes,
            taints,
            r.validation.iter().flat_map(|v| &v.records),
        )
    }
}

/// What gpupool will do for one pool, and what it decided on the way.
#[derive(Clone, Debug)]
pub struct Plan {
    pub plugin: PluginDecision,
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
    /// Each node's GPU readiness, the readiness gate and validation.
    pub readiness: ReadinessPlan,
    /// What each node should have allocatable (see `capacity`).
    pub expected: BTreeMap<String, Expected>,
    /// Nodes the plugin should run on once this plan is written: labelled for this pool, their
    /// taints tolerated. The DaemonSet's desired count must reach it before the plugin is ready.
    pub plugin_nodes: usize,
    /// The plugin's config file (sharing, MIG), and what to do to its ConfigMap.
    pub config: Option<PluginConfig>,
    pub config_map: ConfigMapAction,
}

pub fn plan(observed: &Observed, settings: &Settings) -> Plan {
    let pool = &observed.pool;
    let nodes: Vec<&NodeFacts> = observed.nodes.iter().map(Arc::as_ref).collect();
    let plugin = plugin_decision(observed, &nodes);
    let claims = claim_nodes(
        &PoolRef::of(pool, false),
        &nodes,
        &observed.other_pools,
        &foreign_plugins(observed),
        &observed.dra_nodes,
    );
    let image = plugin_image(pool, settings);
    let config = (plugin.mode == PluginMode::Managed)
        .then(|| plugin_config(&pool.spec))
        .flatten();
    let live = own_daemonset(observed, &settings.plugin_namespace);
    let serves = |n: &NodeFacts| plugin.wants_plugin_on(&n.name) && !claims.excludes(&n.name);
    let tolerated = tolerated_taints(observed, live.as_deref(), &nodes, &serves);
    let desired = (plugin.mode == PluginMode::Managed).then(|| {
        desired_daemonset(&PluginPlacement {
            pool: &observed.pool_name(),
            pool_uid: observed.pool_uid(),
            namespace: &settings.plugin_namespace,
            image: &image,
            spec: pool.spec.device_plugin.as_ref(),
            tolerated: &tolerated,
            config: config.as_ref(),
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
    let strays: Vec<&NodeFacts> = observed.strays.iter().map(Arc::as_ref).collect();
    let placement = match &daemonset {
        DaemonSetAction::Blocked(_) => Placement::default(),
        _ => place(&observed.pool_key(), &nodes, serves, &strays, observed),
    };
    let plugin_nodes = desired
        .as_ref()
        .map_or(0, |ds| plugin_nodes(observed, &placement, ds));
    let mut plan = Plan {
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
        image,
        plugin,
        claims,
        readiness: Default::default(),
    };
    plan.readiness = plan_readiness(observed, settings, &plan, &tolerated);
    plan
}

/// Which nodes run gpupool's plugin and which their platform's (the previous mode is kept while
/// the pool has no nodes to detect from).
fn plugin_decision(observed: &Observed, nodes: &[&NodeFacts]) -> PluginDecision {
    let pool = &observed.pool;
    let previous_mode = pool
        .status
        .as_ref()
        .and_then(|s| s.device_plugin.as_ref())
        .map(|d| d.mode);
    decide_plugin(
        pool.spec.node_image,
        nodes,
        &observed.dra_nodes,
        previous_mode,
    )
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

/// The gate taint keys a pool manages: its spec's, and one it managed before (status).
fn gate_keys(observed: &Observed) -> BTreeSet<String> {
    let spec = observed
        .pool
        .spec
        .readiness_gate
        .as_ref()
        .map(|g| g.taint_key.clone());
    let status = observed
        .pool
        .status
        .as_ref()
        .and_then(|s| s.readiness_gate.as_ref())
        .map(|g| g.taint_key.clone());
    spec.into_iter().chain(status).collect()
}

/// What deleting a pool still has to do before its finalizer may go: its DaemonSets deleted, its
/// node labels removed, and every one of its plugin pods gone (until then it still counts as
/// the owner of its nodes, so no other plugin starts there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub delete_daemonsets: Vec<ObjectId>,
    pub label_changes: Vec<crate::decide::placement::LabelChange>,
    /// The pool's gate taints still on nodes: a pool that goes away must not leave GPU work
    /// locked out of its nodes.
    pub taint_changes: Vec<TaintChange>,
    pub pods_left: Vec<ObjectId>,
}

impl Cleanup {
    pub fn is_done(&self) -> bool {
        self.delete_daemonsets.is_empty()
            && self.label_changes.is_empty()
            && self.taint_changes.is_empty()
            && self.pods_left.is_empty()
    }
}

pub fn plan_cleanup(observed: &Observed) -> Cleanup {
    let nodes: Vec<&NodeFacts> = observed.nodes.iter().map(Arc::as_ref).collect();
    let strays: Vec<&NodeFacts> = observed.strays.iter().map(Arc::as_ref).collect();
    let key = observed.pool_key();
    Cleanup {
        delete_daemonsets: observed
            .plugin_daemonsets
            .iter()
            .filter(|ds| ds.controlled_by(observed.pool_uid()) && !ds.deleting)
            .map(|ds| ds.id.clone())
            .collect(),
        label_changes: place(&key, &nodes, |_| false, &strays, observed).label_changes,
        taint_changes: gate_keys(observed)
            .iter()
            .flat_map(|key| crate::decide::gate::lift_gate(key, &nodes))
            .collect(),
        pods_left: observed
            .pods
            .iter()
            .filter(|p| p.role == PodRole::Plugin && p.pool_key.as_deref() == Some(&key))
            .map(|p| p.id.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GpuPoolSpec, NodeImage};
    use crate::decide::placement::DEVICE_PLUGIN_LABEL;
    use crate::decide::testing::{gpu_node, selector, settings, taint};

    fn observed(node_image: NodeImage, nodes: Vec<NodeFacts>) -> Observed {
        let mut pool = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                node_image,
                ..Default::default()
            },
        );
        pool.metadata.uid = Some("uid-1".into());
        Observed {
            pool: Arc::new(pool),
            nodes: nodes.into_iter().map(Arc::new).collect(),
            strays: vec![],
            other_pools: vec![],
            plugin_daemonsets: vec![],
            pods: vec![],
            dra_nodes: HashSet::new(),
            pool_uids: ["uid-1".to_string()].into(),
            rejection: None,
            problem_clocks: None,
            plugin_configs: vec![],
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn desired(plan: &Plan) -> &DaemonSet {
        match &plan.daemonset {
            DaemonSetAction::Apply(ds) => ds,
            other => panic!("expected an apply, got {other:?}"),
        }
    }

    #[test]
    fn taints_of_served_nodes_become_tolerations_and_nodes_get_the_label() {
        let mut a = gpu_node("a", 1, 1);
        a.taints.push(taint("sku", "gpu", "NoSchedule"));
        let plan = plan(&observed(NodeImage::Standard, vec![a]), &settings());
        let pod = desired(&plan)
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        assert!(
            pod.tolerations
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some("sku"))
        );
        assert_eq!(plan.placement.label_changes.len(), 1);
        assert_eq!(plan.placement.label_changes[0].to.as_deref(), Some("gpu"));
    }

    #[test]
    fn specialized_pools_get_no_daemonset_and_no_labels() {
        let plan = plan(
            &observed(NodeImage::Specialized, vec![gpu_node("a", 1, 1)]),
            &settings(),
        );
        assert_eq!(plan.daemonset, DaemonSetAction::Nothing);
        assert_eq!(plan.plugin.mode, PluginMode::Skipped);
        assert!(plan.placement.label_changes.is_empty());
    }

    #[test]
    fn the_daemonset_left_in_an_old_namespace_goes_first_and_the_new_one_waits_for_its_pods() {
        let mut o = observed(NodeImage::Standard, vec![gpu_node("a", 1, 1)]);
        let first = plan(&o, &settings());
        let mut old = DaemonSetFacts::from_daemonset(desired(&first));
        old.id.namespace = "old-plugins".into();
        o.plugin_daemonsets.push(Arc::new(old));
        let again = plan(&o, &settings());
        let stale = ObjectId {
            namespace: "old-plugins".into(),
            name: "nvidia-device-plugin-gpu".into(),
        };
        assert_eq!(again.delete_stale, vec![stale]);
        assert!(matches!(again.daemonset, DaemonSetAction::Apply(_)));
        // Its pods still terminating in the old namespace: the new DaemonSet waits.
        o.pods.push(Arc::new(PodFacts {
            id: ObjectId {
                namespace: "old-plugins".into(),
                name: "nvidia-device-plugin-gpu-x".into(),
            },
            uid: "x".into(),
            role: PodRole::Plugin,
            node: Some("a".into()),
            pool_key: Some("gpu".into()),
            deleting: true,
            phase: crate::decide::pods::PodPhase::Running,
            ready: false,
            created: None,
            plugin: None,
            validates: None,
            started: None,
            finished: None,
            waiting_for_gpu: false,
        }));
        let waiting = plan(&o, &settings());
        assert!(matches!(waiting.daemonset, DaemonSetAction::Wait { .. }));
        assert_eq!(
            waiting.placement.hand_overs.len(),
            1,
            "the node waits for the old pod too"
        );
    }

    #[test]
    fn an_unchanged_pool_plans_no_write() {
        let mut labelled = gpu_node("a", 1, 1);
        labelled
            .labels
            .insert(DEVICE_PLUGIN_LABEL.into(), "gpu".into());
        let mut o = observed(NodeImage::Standard, vec![labelled]);
        let first = plan(&o, &settings());
        o.plugin_daemonsets
            .push(Arc::new(DaemonSetFacts::from_daemonset(desired(&first))));
        let again = plan(&o, &settings());
        assert_eq!(
            (again.daemonset, again.delete_stale),
            (DaemonSetAction::Nothing, vec![])
        );
        assert!(again.placement.label_changes.is_empty());
    }

    #[test]
    fn a_refused_daemonset_is_not_written_again_until_the_spec_changes_or_the_retry_is_due() {
        let mut o = observed(NodeImage::Standard, vec![gpu_node("a", 1, 1)]);
        let first = plan(&o, &settings());
        let hash =
            desired(&first).metadata.annotations.as_ref().unwrap()[DESIRED_HASH_ANNOTATION].clone();
        let stall = Stall {
            reason: crate::api::Reason::DaemonSetRejected,
            message: "no".into(),
        };
        o.rejection = Some(Rejection {
            hash,
            at: o.now,
            stall: stall.clone(),
        });
        assert_eq!(
            plan(&o, &settings()).daemonset,
            DaemonSetAction::Blocked(stall)
        );
        o.now = o
            .now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(61))
            .unwrap();
        assert!(
            matches!(plan(&o, &settings()).daemonset, DaemonSetAction::Apply(_)),
            "retried after a minute"
        );
        o.now = Timestamp::UNIX_EPOCH;
        o.rejection.as_mut().unwrap().hash = "another spec".into();
        assert!(
            matches!(plan(&o, &settings()).daemonset, DaemonSetAction::Apply(_)),
            "a new spec is tried at once"
        );
    }
}

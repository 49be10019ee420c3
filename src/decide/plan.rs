//! `plan`: from what was observed of one pool and its surroundings to the writes that bring the
//! cluster where the pool wants it. Pure: the shell observes, this decides, the shell applies.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::decide::Settings;
use crate::decide::dra::{DraPlan, plan_dra};
use crate::decide::facts::{NodeFacts, ObjectId, Observed, PodRole, ValidationRecord};
use crate::decide::names::DRA_LABEL;
use crate::decide::plugin::placement::{LabelChange, place};
use crate::decide::plugin::{PluginPlan, plan_plugin};
use crate::decide::readiness::gate::{TaintChange, lift_gate};
use crate::decide::readiness::{ReadinessPlan, plan_readiness};

/// Everything to write on one node, in one read-modify-write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeUpdate {
    pub node: String,
    /// The device-plugin label.
    pub label: Option<LabelChange>,
    /// The `gpupool.io/dra` label.
    pub dra_label: Option<LabelChange>,
    pub taint: Option<TaintChange>,
    pub record: Option<ValidationRecord>,
}

/// The node writes of label changes, taint changes and validation records, one per node.
pub fn node_updates<'a>(
    labels: impl IntoIterator<Item = &'a LabelChange>,
    dra_labels: impl IntoIterator<Item = &'a LabelChange>,
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
    for label in dra_labels {
        entry(&mut merged, &label.node).dra_label = Some(label.clone());
    }
    for taint in taints {
        entry(&mut merged, &taint.node).taint = Some(taint.clone());
    }
    for (node, record) in records {
        entry(&mut merged, node).record = Some(record.clone());
    }
    merged.into_values().collect()
}

/// What gpupool will do for one pool: its device plugin, then its nodes' readiness (which
/// depends on the plugin plan, never the other way).
#[derive(Clone, Debug)]
pub struct Plan {
    /// Which nodes the DRA driver serves, and nodes moving between it and the plugin.
    pub dra: DraPlan,
    pub plugin: PluginPlan,
    /// Each selected node's GPU readiness, the readiness gate and validation.
    pub readiness: ReadinessPlan,
}

pub fn plan(observed: &Observed, settings: &Settings) -> Plan {
    let dra = plan_dra(observed, observed.dra_api);
    let plugin = plan_plugin(observed, settings, &dra);
    let readiness = plan_readiness(observed, settings, &plugin, &dra);
    Plan {
        dra,
        plugin,
        readiness,
    }
}

impl Plan {
    /// Every node write the plan calls for.
    pub fn node_updates(&self) -> Vec<NodeUpdate> {
        let r = &self.readiness;
        let taints = r.gate.iter().flat_map(|g| &g.changes).chain(&r.lift);
        node_updates(
            &self.plugin.placement.label_changes,
            &self.dra.labels,
            taints,
            r.validation.iter().flat_map(|v| &v.records),
        )
    }
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
    pub label_changes: Vec<LabelChange>,
    /// The pool's `gpupool.io/dra` labels: the DRA driver leaves nodes the pool no longer has.
    pub dra_label_changes: Vec<LabelChange>,
    /// The pool's gate taints still on nodes: a pool that goes away must not leave GPU work
    /// locked out of its nodes.
    pub taint_changes: Vec<TaintChange>,
    pub pods_left: Vec<ObjectId>,
}

impl Cleanup {
    pub fn is_done(&self) -> bool {
        self.delete_daemonsets.is_empty()
            && self.label_changes.is_empty()
            && self.dra_label_changes.is_empty()
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
        dra_label_changes: nodes
            .iter()
            .chain(&strays)
            .filter(|n| n.labels.get(DRA_LABEL) == Some(&key))
            .map(|n| LabelChange {
                node: n.name.clone(),
                from: Some(key.clone()),
                to: None,
            })
            .collect(),
        taint_changes: gate_keys(observed)
            .iter()
            .flat_map(|key| lift_gate(key, &nodes))
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

    use k8s_openapi::api::apps::v1::DaemonSet;

    use crate::api::{GpuPool, GpuPoolSpec, NodeImage, PluginMode};
    use crate::decide::facts::{DaemonSetFacts, PodFacts, Rejection, Stall};
    use crate::decide::names::{DESIRED_HASH_ANNOTATION, DEVICE_PLUGIN_LABEL};
    use crate::decide::plugin::action::DaemonSetAction;
    use crate::decide::testing::{gpu_node, plugin_pod, selector, settings, taint};
    use k8s_openapi::jiff::Timestamp;

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
            nodes: nodes.into_iter().map(Arc::new).collect(),
            ..crate::decide::testing::observed(Arc::new(pool))
        }
    }

    fn desired(plan: &Plan) -> &DaemonSet {
        match &plan.plugin.daemonset {
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
        assert_eq!(plan.plugin.placement.label_changes.len(), 1);
        assert_eq!(
            plan.plugin.placement.label_changes[0].to.as_deref(),
            Some("gpu")
        );
    }

    #[test]
    fn specialized_pools_get_no_daemonset_and_no_labels() {
        let plan = plan(
            &observed(NodeImage::Specialized, vec![gpu_node("a", 1, 1)]),
            &settings(),
        );
        assert_eq!(plan.plugin.daemonset, DaemonSetAction::Nothing);
        assert_eq!(plan.plugin.decision.mode, PluginMode::Skipped);
        assert!(plan.plugin.placement.label_changes.is_empty());
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
        assert_eq!(again.plugin.delete_stale, vec![stale]);
        assert!(matches!(again.plugin.daemonset, DaemonSetAction::Apply(_)));
        // Its pods still terminating in the old namespace: the new DaemonSet waits.
        o.pods.push(Arc::new(PodFacts {
            deleting: true,
            ready: false,
            ..plugin_pod(
                "old-plugins",
                "nvidia-device-plugin-gpu-x",
                Some("a"),
                "gpu",
            )
        }));
        let waiting = plan(&o, &settings());
        assert!(matches!(
            waiting.plugin.daemonset,
            DaemonSetAction::Wait { .. }
        ));
        assert_eq!(
            waiting.plugin.placement.hand_overs.len(),
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
            (again.plugin.daemonset, again.plugin.delete_stale),
            (DaemonSetAction::Nothing, vec![])
        );
        assert!(again.plugin.placement.label_changes.is_empty());
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
            plan(&o, &settings()).plugin.daemonset,
            DaemonSetAction::Blocked(stall)
        );
        o.now = o
            .now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(61))
            .unwrap();
        assert!(
            matches!(
                plan(&o, &settings()).plugin.daemonset,
                DaemonSetAction::Apply(_)
            ),
            "retried after a minute"
        );
        o.now = Timestamp::UNIX_EPOCH;
        o.rejection.as_mut().unwrap().hash = "another spec".into();
        assert!(
            matches!(
                plan(&o, &settings()).plugin.daemonset,
                DaemonSetAction::Apply(_)
            ),
            "a new spec is tried at once"
        );
    }
}

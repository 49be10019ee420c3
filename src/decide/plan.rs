//! `plan`: from what was observed of one pool and its surroundings to the writes that bring the
//! cluster where the pool wants it. Pure: the shell observes, this decides, the shell applies.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{GpuPool, PluginMode};
use crate::decide::Settings;
use crate::decide::action::{DaemonSetAction, daemonset_action, stale_daemonsets};
use crate::decide::claims::{ForeignPlugin, NodeClaims, PoolRef, claim_nodes};
use crate::decide::daemonset::{PluginPlacement, daemonset_name, desired_daemonset};
use crate::decide::image::{PluginDecision, decide_plugin};
use crate::decide::model::{DaemonSetFacts, ObjectId};
use crate::decide::nodes::NodeFacts;
use crate::decide::scheduling::tolerations_for_taints;

/// Everything a reconcile of one pool reads, as plain data.
#[derive(Clone, Debug)]
pub struct Observed {
    pub pool: Arc<GpuPool>,
    /// The nodes the pool's selector selects, sorted by name.
    pub nodes: Vec<Arc<NodeFacts>>,
    /// Every other pool, for nodes they contest.
    pub other_pools: Vec<PoolRef>,
    /// Every device-plugin DaemonSet in the cluster, gpupool's and others'.
    pub plugin_daemonsets: Vec<Arc<DaemonSetFacts>>,
    /// UIDs of the GpuPools that exist.
    pub pool_uids: HashSet<String>,
    pub now: Timestamp,
}

impl Observed {
    pub fn pool_name(&self) -> String {
        self.pool.name_any()
    }

    pub fn pool_uid(&self) -> &str {
        self.pool.metadata.uid.as_deref().unwrap_or_default()
    }

    /// The pool as a rival of others (its name, age and selector).
    pub fn pool_ref(&self) -> PoolRef {
        PoolRef::of(&self.pool)
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
    /// The pool's DaemonSet as observed before any write.
    pub live: Option<Arc<DaemonSetFacts>>,
}

pub fn plan(observed: &Observed, settings: &Settings) -> Plan {
    let pool = &observed.pool;
    let nodes: Vec<&NodeFacts> = observed.nodes.iter().map(Arc::as_ref).collect();
    let previous_mode = pool
        .status
        .as_ref()
        .and_then(|s| s.device_plugin.as_ref())
        .map(|d| d.mode);
    let plugin = decide_plugin(pool.spec.node_image, &nodes, previous_mode);
    let this = observed.pool_ref();
    let claims = claim_nodes(
        &this,
        &nodes,
        &observed.other_pools,
        &foreign_plugins(observed),
    );
    let excluded = claims.excluded_nodes();
    let served = nodes.iter().filter(|n| !excluded.contains(&n.name));
    let placement = PluginPlacement {
        pool: &this.name,
        pool_uid: observed.pool_uid(),
        namespace: &settings.plugin_namespace,
        default_image: &settings.default_plugin_image,
        spec: pool.spec.device_plugin.as_ref(),
        selector: &pool.spec.node_selector,
        allowed_image_versions: plugin.allowed_image_versions.as_ref(),
        excluded_nodes: &excluded,
        taint_tolerations: tolerations_for_taints(served.flat_map(|n| n.taints.iter())),
    };
    let desired = (plugin.mode == PluginMode::Managed).then(|| desired_daemonset(&placement));
    let live = own_daemonset(observed, &settings.plugin_namespace);
    Plan {
        image: placement.image(),
        delete_stale: stale_daemonsets(
            observed.plugin_daemonsets.iter().map(Arc::as_ref),
            observed.pool_uid(),
            &settings.plugin_namespace,
        ),
        daemonset: daemonset_action(desired.as_ref(), live.as_deref(), observed.pool_uid()),
        live,
        plugin,
        claims,
    }
}

/// The DaemonSet at this pool's name in the plugin namespace, whoever owns it.
fn own_daemonset(observed: &Observed, namespace: &str) -> Option<Arc<DaemonSetFacts>> {
    let name = daemonset_name(&observed.pool_name());
    observed
        .plugin_daemonsets
        .iter()
        .find(|ds| ds.id.namespace == namespace && ds.id.name == name)
        .cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GpuPoolSpec, NodeImage};
    use crate::decide::testing::{gpu_node, selector, settings, taint};

    fn observed(node_image: NodeImage, nodes: Vec<NodeFacts>) -> Observed {
        let mut pool = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                node_image,
                device_plugin: None,
                expected_gpus_per_node: None,
            },
        );
        pool.metadata.uid = Some("uid-1".into());
        Observed {
            pool: Arc::new(pool),
            nodes: nodes.into_iter().map(Arc::new).collect(),
            other_pools: vec![],
            plugin_daemonsets: vec![],
            pool_uids: ["uid-1".to_string()].into(),
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn desired(plan: &Plan) -> &k8s_openapi::api::apps::v1::DaemonSet {
        match &plan.daemonset {
            DaemonSetAction::Apply(ds) => ds,
            other => panic!("expected an apply, got {other:?}"),
        }
    }

    #[test]
    fn taints_of_served_nodes_become_tolerations() {
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
    }

    #[test]
    fn specialized_pools_get_no_daemonset() {
        let plan = plan(
            &observed(NodeImage::Specialized, vec![gpu_node("a", 1, 1)]),
            &settings(),
        );
        assert_eq!(plan.daemonset, DaemonSetAction::Nothing);
        assert_eq!(plan.plugin.mode, PluginMode::Skipped);
    }

    #[test]
    fn the_daemonset_left_in_an_old_namespace_is_deleted_first() {
        let mut o = observed(NodeImage::Standard, vec![gpu_node("a", 1, 1)]);
        let first = plan(&o, &settings());
        let mut old = DaemonSetFacts::from_daemonset(desired(&first));
        old.id.namespace = "old-plugins".into();
        o.plugin_daemonsets.push(Arc::new(old));
        let again = plan(&o, &settings());
        assert_eq!(
            again.delete_stale,
            vec![ObjectId {
                namespace: "old-plugins".into(),
                name: "nvidia-device-plugin-gpu".into()
            }]
        );
        assert!(matches!(again.daemonset, DaemonSetAction::Apply(_)));
    }

    #[test]
    fn an_unchanged_pool_plans_no_write() {
        let mut o = observed(NodeImage::Standard, vec![gpu_node("a", 1, 1)]);
        let first = plan(&o, &settings());
        o.plugin_daemonsets
            .push(Arc::new(DaemonSetFacts::from_daemonset(desired(&first))));
        let again = plan(&o, &settings());
        assert_eq!(
            (again.daemonset, again.delete_stale),
            (DaemonSetAction::Nothing, vec![])
        );
    }
}

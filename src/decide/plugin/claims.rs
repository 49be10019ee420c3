//! Never two device plugins on one node: which pool serves a node that several pools select, and
//! which nodes a device plugin gpupool does not own already covers. The oldest pool that really
//! serves a node keeps it (its plugin runs there: Managed, with its DaemonSet accepted, and the
//! node is one it puts its plugin on); a younger pool gives way to it and to nothing less.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::jiff::Timestamp;

use crate::api::NodeImage;
use crate::decide::facts::{NodeFacts, PoolRef};
use crate::decide::plugin::mode::classify;
use crate::decide::scheduling::daemon_pod_would_run_on;

impl PoolRef {
    /// The oldest pool wins a contested node (then the name, so the order is total): adding a
    /// new, overlapping pool never moves nodes away from a pool that already serves them.
    fn precedence(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.name)
    }

    /// Whether its plugin runs on this node (or would, were it not for another older pool).
    fn serves(&self, node: &NodeFacts, dra_nodes: &BTreeSet<String>) -> bool {
        self.serving
            && self.selector.selects(&node.labels)
            && match self.node_image {
                NodeImage::Standard => true,
                NodeImage::Specialized => false,
                NodeImage::Auto => !classify(node, dra_nodes).ships_plugin(),
            }
    }
}

/// A device-plugin DaemonSet gpupool does not own (e.g. the AKS article's hand-applied
/// `gpu-resources/nvidia-device-plugin-daemonset`).
#[derive(Clone, Debug)]
pub struct ForeignPlugin {
    /// namespace/name
    pub id: String,
    pub pod: PodSpec,
}

/// Who serves the pool's nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeClaims {
    /// Nodes an older pool also selects and serves: node -> that pool.
    pub served_by_other_pool: BTreeMap<String, String>,
    /// Nodes this pool serves although other pools select them too: node -> those pools.
    pub also_selected_by: BTreeMap<String, Vec<String>>,
    /// Nodes a foreign device plugin would run on: node -> its DaemonSets.
    pub foreign_plugins: BTreeMap<String, Vec<String>>,
}

impl NodeClaims {
    /// Whether another pool or a foreign plugin serves this node.
    pub fn excludes(&self, node: &str) -> bool {
        self.served_by_other_pool.contains_key(node) || self.foreign_plugins.contains_key(node)
    }

    pub fn has_conflicts(&self) -> bool {
        !(self.served_by_other_pool.is_empty()
            && self.also_selected_by.is_empty()
            && self.foreign_plugins.is_empty())
    }
}

pub fn claim_nodes(
    this: &PoolRef,
    nodes: &[&NodeFacts],
    pools: &[PoolRef],
    foreign: &[ForeignPlugin],
    dra_nodes: &BTreeSet<String>,
) -> NodeClaims {
    let mut claims = NodeClaims::default();
    for node in nodes {
        let rivals: Vec<&PoolRef> = pools
            .iter()
            .filter(|p| p.name != this.name && p.selector.selects(&node.labels))
            .collect();
        let older_server = rivals
            .iter()
            .filter(|p| p.precedence() < this.precedence() && p.serves(node, dra_nodes))
            .min_by(|a, b| a.precedence().cmp(&b.precedence()));
        match older_server {
            Some(older) => {
                claims
                    .served_by_other_pool
                    .insert(node.name.clone(), older.name.clone());
            }
            None if !rivals.is_empty() => {
                let mut names: Vec<String> = rivals.iter().map(|p| p.name.clone()).collect();
                names.sort();
                claims.also_selected_by.insert(node.name.clone(), names);
            }
            None => {}
        }
        let covering: Vec<String> = foreign
            .iter()
            .filter(|f| daemon_pod_would_run_on(&f.pod, node))
            .map(|f| f.id.clone())
            .collect();
        if !covering.is_empty() {
            claims.foreign_plugins.insert(node.name.clone(), covering);
        }
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::PoolRef;
    use crate::decide::scheduling::base_tolerations;
    use crate::decide::testing::{node_labelled, pool_ref};

    fn claim(
        this: &PoolRef,
        nodes: &[&NodeFacts],
        pools: &[PoolRef],
        foreign: &[ForeignPlugin],
    ) -> NodeClaims {
        claim_nodes(this, nodes, pools, foreign, &BTreeSet::new())
    }

    #[test]
    fn the_oldest_pool_serves_a_contested_node_and_both_report_it() {
        let n = node_labelled("n1", &[("agentpool", "gpu"), ("zone", "1")]);
        let old = pool_ref("old", 100, &[("agentpool", "gpu")]);
        let young = pool_ref("young", 200, &[("zone", "1")]);
        let pools = vec![old.clone(), young.clone()];
        let for_old = claim(&old, &[&n], &pools, &[]);
        assert!(!for_old.excludes("n1"));
        assert_eq!(for_old.also_selected_by["n1"], vec!["young".to_string()]);
        let for_young = claim(&young, &[&n], &pools, &[]);
        assert!(for_young.excludes("n1"));
        assert_eq!(for_young.served_by_other_pool["n1"], "old");
        assert!(for_old.has_conflicts() && for_young.has_conflicts());
    }

    #[test]
    fn a_younger_pool_gives_way_only_to_an_older_pool_that_really_serves() {
        let n = node_labelled("n1", &[("agentpool", "gpu")]);
        let young = pool_ref("young", 200, &[("agentpool", "gpu")]);
        let mut old = pool_ref("old", 100, &[("agentpool", "gpu")]);
        old.serving = false; // Skipped, or its DaemonSet rejected or gone
        let claims = claim(&young, &[&n], &[old.clone(), young.clone()], &[]);
        assert!(!claims.excludes("n1"), "nobody else serves it");
        assert_eq!(claims.also_selected_by["n1"], vec!["old".to_string()]);
        old.serving = true;
        old.node_image = NodeImage::Auto;
        let mut special = n.clone();
        special.labels.insert(
            crate::decide::names::NODE_IMAGE_LABEL.into(),
            "AKSUbuntu-1804gpucontainerd-202501.05.0".into(),
        );
        let claims = claim(&young, &[&special], &[old.clone(), young.clone()], &[]);
        assert!(
            !claims.excludes("n1"),
            "the older Auto pool puts no plugin on a GPU-image node"
        );
        assert!(claim(&young, &[&n], &[old, young.clone()], &[]).excludes("n1"));
    }

    #[test]
    fn equal_ages_fall_back_to_the_name() {
        let n = node_labelled("n1", &[("a", "1")]);
        let b = pool_ref("b", 100, &[("a", "1")]);
        let a = pool_ref("a", 100, &[("a", "1")]);
        let pools = vec![b.clone(), a.clone()];
        assert!(!claim(&a, &[&n], &pools, &[]).excludes("n1"));
        assert!(claim(&b, &[&n], &pools, &[]).excludes("n1"));
    }

    #[test]
    fn a_hand_applied_plugin_excludes_the_nodes_it_runs_on() {
        let n1 = node_labelled("n1", &[("agentpool", "gpu")]);
        let pool = pool_ref("gpu", 100, &[("agentpool", "gpu")]);
        let seed = ForeignPlugin {
            id: "gpu-resources/nvidia-device-plugin-daemonset".into(),
            pod: PodSpec {
                tolerations: Some(base_tolerations()),
                ..PodSpec::default()
            },
        };
        let claims = claim(&pool, &[&n1], std::slice::from_ref(&pool), &[seed]);
        assert_eq!(
            claims.foreign_plugins["n1"],
            vec!["gpu-resources/nvidia-device-plugin-daemonset".to_string()]
        );
        assert!(claims.excludes("n1"));
    }

    #[test]
    fn an_unrelated_pool_is_no_rival() {
        let n = node_labelled("n1", &[("agentpool", "gpu")]);
        let pool = pool_ref("gpu", 100, &[("agentpool", "gpu")]);
        let other = pool_ref("other", 1, &[("agentpool", "cpu")]);
        assert!(!claim(&pool, &[&n], &[pool.clone(), other], &[]).has_conflicts());
    }
}

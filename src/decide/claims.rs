//! Never two device plugins on one node: which pool serves a node that several pools select, and
//! which nodes a device plugin gpupool does not own already covers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::jiff::Timestamp;

use kube::ResourceExt;

use crate::api::{GpuPool, PoolSelector};
use crate::decide::nodes::NodeFacts;
use crate::decide::scheduling::daemon_pod_would_run_on;
use crate::decide::selector::selects;

/// Another pool, as far as node ownership is concerned.
#[derive(Clone, Debug)]
pub struct PoolRef {
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    pub selector: PoolSelector,
}

impl PoolRef {
    pub fn of(pool: &GpuPool) -> PoolRef {
        PoolRef {
            name: pool.name_any(),
            uid: pool.metadata.uid.clone().unwrap_or_default(),
            created: pool.creation_timestamp().map(|t| t.0),
            selector: pool.spec.node_selector.clone(),
        }
    }

    /// The oldest pool wins a contested node (then the name, so the order is total): adding a
    /// new, overlapping pool never moves nodes away from a pool that already serves them.
    fn precedence(&self) -> (bool, Option<Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.name)
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
    /// Nodes this pool serves although younger pools select them too: node -> those pools.
    pub also_selected_by: BTreeMap<String, Vec<String>>,
    /// Nodes a foreign device plugin would run on: node -> its DaemonSets.
    pub foreign_plugins: BTreeMap<String, Vec<String>>,
}

impl NodeClaims {
    /// Nodes our plugin must not run on, sorted.
    pub fn excluded_nodes(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .served_by_other_pool
            .keys()
            .chain(self.foreign_plugins.keys())
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
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
) -> NodeClaims {
    let mut claims = NodeClaims::default();
    for node in nodes {
        let mut rivals: Vec<&PoolRef> = pools
            .iter()
            .filter(|p| p.name != this.name && selects(&p.selector, &node.labels))
            .collect();
        rivals.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        match rivals.first() {
            Some(oldest) if oldest.precedence() < this.precedence() => {
                claims
                    .served_by_other_pool
                    .insert(node.name.clone(), oldest.name.clone());
            }
            Some(_) => {
                claims.also_selected_by.insert(
                    node.name.clone(),
                    rivals.iter().map(|p| p.name.clone()).collect(),
                );
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
    use crate::decide::scheduling::base_tolerations;
    use crate::decide::testing::{node_labelled, pool_ref};

    #[test]
    fn the_oldest_pool_serves_a_contested_node_and_both_report_it() {
        let n = node_labelled("n1", &[("agentpool", "gpu"), ("zone", "1")]);
        let old = pool_ref("old", 100, &[("agentpool", "gpu")]);
        let young = pool_ref("young", 200, &[("zone", "1")]);
        let pools = vec![old.clone(), young.clone()];

        let for_old = claim_nodes(&old, &[&n], &pools, &[]);
        assert!(for_old.excluded_nodes().is_empty());
        assert_eq!(for_old.also_selected_by["n1"], vec!["young".to_string()]);

        let for_young = claim_nodes(&young, &[&n], &pools, &[]);
        assert_eq!(for_young.excluded_nodes(), vec!["n1".to_string()]);
        assert_eq!(for_young.served_by_other_pool["n1"], "old");
        assert!(for_old.has_conflicts() && for_young.has_conflicts());
    }

    #[test]
    fn equal_ages_fall_back_to_the_name() {
        let n = node_labelled("n1", &[("a", "1")]);
        let b = pool_ref("b", 100, &[("a", "1")]);
        let a = pool_ref("a", 100, &[("a", "1")]);
        let pools = vec![b.clone(), a.clone()];
        assert!(
            claim_nodes(&a, &[&n], &pools, &[])
                .excluded_nodes()
                .is_empty()
        );
        assert_eq!(
            claim_nodes(&b, &[&n], &pools, &[]).excluded_nodes(),
            vec!["n1".to_string()]
        );
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
        let claims = claim_nodes(&pool, &[&n1], std::slice::from_ref(&pool), &[seed]);
        assert_eq!(
            claims.foreign_plugins["n1"],
            vec!["gpu-resources/nvidia-device-plugin-daemonset".to_string()]
        );
        assert_eq!(claims.excluded_nodes(), vec!["n1".to_string()]);
    }

    #[test]
    fn an_unrelated_pool_is_no_rival() {
        let n = node_labelled("n1", &[("agentpool", "gpu")]);
        let pool = pool_ref("gpu", 100, &[("agentpool", "gpu")]);
        let other = pool_ref("other", 1, &[("agentpool", "cpu")]);
        let claims = claim_nodes(&pool, &[&n], &[pool.clone(), other], &[]);
        assert!(!claims.has_conflicts());
    }
}

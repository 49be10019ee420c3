//! Which pools a node event concerns. A node event reaches every pool whose selector matches the
//! node now or matched it at the pool's last reconcile, and only when something gpupool decides
//! on changed (labels, taints, cordon, Ready, `nvidia.com/gpu`): kubelet heartbeats and image
//! lists never cause a reconcile.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::api::GpuPool;
use crate::decide::nodes::NodeFacts;
use crate::decide::selector::selects;

#[derive(Default)]
pub struct NodeTriggers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Fingerprint of each node's facts at its last event.
    fingerprints: HashMap<String, u64>,
    /// The nodes each pool selected at its last reconcile.
    members: HashMap<String, HashSet<String>>,
}

fn fingerprint(facts: &NodeFacts) -> u64 {
    let mut h = DefaultHasher::new();
    facts.hash(&mut h);
    h.finish()
}

impl NodeTriggers {
    /// The pools to reconcile for an event about `node`. `exists` is false when the node was
    /// deleted. Returns nothing when none of the node's facts changed.
    pub fn pools_for_node<'a>(
        &self,
        node: &NodeFacts,
        exists: bool,
        pools: impl IntoIterator<Item = &'a GpuPool>,
    ) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if exists {
            let print = fingerprint(node);
            if inner.fingerprints.insert(node.name.clone(), print) == Some(print) {
                return Vec::new();
            }
        } else {
            inner.fingerprints.remove(&node.name);
        }
        let mut out: HashSet<String> = inner
            .members
            .iter()
            .filter(|(_, nodes)| nodes.contains(&node.name))
            .map(|(pool, _)| pool.clone())
            .collect();
        for pool in pools {
            if exists && selects(&pool.spec.node_selector, &node.labels) {
                out.insert(pool.metadata.name.clone().unwrap_or_default());
            }
        }
        let mut out: Vec<String> = out.into_iter().collect();
        out.sort();
        out
    }

    /// Records the nodes a pool selected at its reconcile.
    pub fn record_members(&self, pool: &str, nodes: impl IntoIterator<Item = String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .members
            .insert(pool.to_string(), nodes.into_iter().collect());
    }

    /// The other pools that shared nodes with `pool` at their last reconciles: a pool created,
    /// changed or deleted can move nodes between them, so they must look again. A pool that no
    /// longer exists is forgotten here (a deleted pool is never reconciled again).
    pub fn pools_sharing_nodes(&self, pool: &str, exists: bool) -> Vec<String> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = match inner.members.get(pool) {
            Some(mine) if !mine.is_empty() => inner
                .members
                .iter()
                .filter(|(other, theirs)| {
                    other.as_str() != pool && {
                        let (small, large) = if theirs.len() < mine.len() {
                            (*theirs, mine)
                        } else {
                            (mine, *theirs)
                        };
                        small.iter().any(|n| large.contains(n))
                    }
                })
                .map(|(other, _)| other.clone())
                .collect(),
            _ => Vec::new(),
        };
        if !exists {
            inner.members.remove(pool);
        }
        out.sort();
        out
    }

    pub fn forget_pool(&self, pool: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.members.remove(pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuPoolSpec;
    use crate::decide::testing::{node_labelled, selector};

    fn pool(name: &str, labels: &[(&str, &str)]) -> GpuPool {
        GpuPool::new(
            name,
            GpuPoolSpec {
                node_selector: selector(labels),
                node_image: Default::default(),
                device_plugin: None,
                expected_gpus_per_node: None,
            },
        )
    }

    #[test]
    fn unchanged_facts_trigger_nothing() {
        let t = NodeTriggers::default();
        let pools = [pool("gpu", &[("agentpool", "gpu")])];
        let n = node_labelled("n1", &[("agentpool", "gpu")]);
        assert_eq!(t.pools_for_node(&n, true, &pools), vec!["gpu".to_string()]);
        assert!(
            t.pools_for_node(&n, true, &pools).is_empty(),
            "a heartbeat changes no fact"
        );
        let mut changed = n.clone();
        changed.gpu_allocatable = Some(3);
        assert_eq!(
            t.pools_for_node(&changed, true, &pools),
            vec!["gpu".to_string()]
        );
    }

    #[test]
    fn a_node_leaving_a_pool_still_reaches_it() {
        let t = NodeTriggers::default();
        let pools = [
            pool("gpu", &[("agentpool", "gpu")]),
            pool("other", &[("agentpool", "other")]),
        ];
        t.record_members("gpu", ["n1".to_string()]);
        let relabelled = node_labelled("n1", &[("agentpool", "other")]);
        assert_eq!(
            t.pools_for_node(&relabelled, true, &pools),
            vec!["gpu".to_string(), "other".to_string()]
        );
    }

    #[test]
    fn pools_sharing_nodes_are_found_and_deleted_pools_forgotten() {
        let t = NodeTriggers::default();
        t.record_members("a", ["n1".to_string(), "n2".to_string()]);
        t.record_members("b", ["n2".to_string()]);
        t.record_members("c", ["n3".to_string()]);
        assert_eq!(t.pools_sharing_nodes("a", true), vec!["b".to_string()]);
        assert_eq!(t.pools_sharing_nodes("b", false), vec!["a".to_string()]);
        assert!(
            t.pools_sharing_nodes("a", true).is_empty(),
            "b is forgotten"
        );
        let n2 = node_labelled("n2", &[]);
        assert_eq!(t.pools_for_node(&n2, false, &[]), vec!["a".to_string()]);
    }

    #[test]
    fn a_deleted_node_reaches_the_pools_it_was_in() {
        let t = NodeTriggers::default();
        let pools = [pool("gpu", &[("agentpool", "gpu")])];
        let n = node_labelled("n1", &[("agentpool", "gpu")]);
        t.pools_for_node(&n, true, &pools);
        t.record_members("gpu", ["n1".to_string()]);
        assert_eq!(t.pools_for_node(&n, false, &pools), vec!["gpu".to_string()]);
        t.forget_pool("gpu");
        assert!(t.pools_for_node(&n, false, &pools).is_empty());
    }
}

//! Which pools a change concerns. A node change reaches every pool whose selector matches the
//! node now or matched it before; a DaemonSet change reaches its pool, or every pool when it is a
//! device plugin gpupool does not own; a pool change reaches the pools it shared nodes with.
//! Heartbeats change no kept fact (see `index`), so they reach nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::GpuPool;
use crate::decide::facts::{DaemonSetFacts, NodeFacts, PodFacts};
use crate::decide::names::pool_key;
use crate::decide::plugin::placement::assigned;
use crate::index::{Change, NodeIndex};

use super::locking::lock;

/// Pools to look at for a node change: those selecting it before or after, and those whose
/// device-plugin label it carried or carries (a stray label is its pool's to remove).
pub fn pools_for_node(change: &Change<NodeFacts>, pools: &[Arc<GpuPool>]) -> BTreeSet<String> {
    let (old, new) = change.states();
    [old, new]
        .into_iter()
        .flatten()
        .flat_map(|n| pools_selecting(n, pools))
        .collect()
}

/// Pools that select a node or whose plugin label it carries.
pub fn pools_selecting(node: &NodeFacts, pools: &[Arc<GpuPool>]) -> Vec<String> {
    let assigned = assigned(node);
    pools
        .iter()
        .filter(|p| {
            p.spec.node_selector.selects(&node.labels)
                || assigned == Some(pool_key(&p.name_any()).as_str())
        })
        .map(|p| p.name_any())
        .collect()
}

/// Pools to look at for a change of one of gpupool's pods: its own pool, and the pools selecting
/// its node (a plugin pod that goes can free the node for another pool's plugin).
pub fn pools_for_pod(
    change: &Change<PodFacts>,
    pools: &[Arc<GpuPool>],
    nodes: &NodeIndex,
) -> BTreeSet<String> {
    let (old, new) = change.states();
    let mut out = BTreeSet::new();
    for pod in [old, new].into_iter().flatten() {
        out.extend(
            pools
                .iter()
                .filter(|p| pod.pool_key.as_deref() == Some(pool_key(&p.name_any()).as_str()))
                .map(|p| p.name_any()),
        );
        if let Some(node) = pod.node.as_deref().and_then(|n| nodes.get(n)) {
            out.extend(pools_selecting(node, pools));
        }
    }
    out
}

/// Pools to look at for a DaemonSet change: the pool that owns it, or every pool when it is a
/// device plugin no existing pool owns (it may cover any pool's nodes; such DaemonSets are few
/// and rarely change).
pub fn pools_for_daemonset(
    change: &Change<DaemonSetFacts>,
    pools: &[Arc<GpuPool>],
) -> BTreeSet<String> {
    let (old, new) = change.states();
    let mut out = BTreeSet::new();
    for ds in [old, new].into_iter().flatten() {
        let owner = ds.pool_owner.as_ref().and_then(|o| {
            pools
                .iter()
                .find(|p| p.metadata.uid.as_deref() == Some(o.uid.as_str()))
        });
        match owner {
            Some(pool) => {
                out.insert(pool.name_any());
            }
            None if ds.plugin_pod.is_some() => out.extend(pools.iter().map(|p| p.name_any())),
            None => {}
        }
    }
    out
}

/// What each pool was at its last reconcile, as far as other pools care: the nodes it selected
/// and whether its plugin runs. A pool created, changed or deleted can move nodes between the
/// pools it shares them with, so when either changes, those pools look again.
#[derive(Default)]
pub struct PoolMembers {
    members: Mutex<HashMap<String, (HashSet<String>, bool)>>,
}

impl PoolMembers {
    /// Records a pool's reconcile; returns the pools to wake because what it was changed.
    pub fn record(
        &self,
        pool: &str,
        nodes: impl IntoIterator<Item = String>,
        serving: bool,
    ) -> BTreeSet<String> {
        let now: HashSet<String> = nodes.into_iter().collect();
        let mut members = lock(&self.members);
        let before = members.insert(pool.to_string(), (now.clone(), serving));
        if before.as_ref() == Some(&(now.clone(), serving)) {
            return BTreeSet::new();
        }
        let mut touched = now;
        touched.extend(before.map(|(nodes, _)| nodes).unwrap_or_default());
        sharing(&members, pool, &touched)
    }

    pub fn forget(&self, pool: &str) {
        lock(&self.members).remove(pool);
    }

    /// The pool's members at its last reconcile.
    pub fn of(&self, pool: &str) -> Vec<String> {
        lock(&self.members)
            .get(pool)
            .map(|(nodes, _)| nodes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The other pools that shared nodes with `pool` at their last reconciles.
    pub fn sharing_nodes_with(&self, pool: &str) -> BTreeSet<String> {
        let members = lock(&self.members);
        match members.get(pool) {
            Some((mine, _)) => sharing(&members, pool, mine),
            None => BTreeSet::new(),
        }
    }
}

fn sharing(
    members: &HashMap<String, (HashSet<String>, bool)>,
    pool: &str,
    nodes: &HashSet<String>,
) -> BTreeSet<String> {
    members
        .iter()
        .filter(|(other, (theirs, _))| {
            let (small, large) = if theirs.len() < nodes.len() {
                (theirs, nodes)
            } else {
                (nodes, theirs)
            };
            other.as_str() != pool && small.iter().any(|n| large.contains(n))
        })
        .map(|(other, _)| other.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuPoolSpec;
    use crate::decide::testing::{node_labelled, selector};

    fn pool(name: &str, labels: &[(&str, &str)]) -> Arc<GpuPool> {
        let mut p = GpuPool::new(
            name,
            GpuPoolSpec {
                node_selector: selector(labels),
                node_image: Default::default(),
                ..Default::default()
            },
        );
        p.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(p)
    }

    fn names(set: BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn a_node_change_reaches_the_pools_it_leaves_and_joins() {
        let pools = [
            pool("gpu", &[("agentpool", "gpu")]),
            pool("other", &[("agentpool", "other")]),
            pool("cpu", &[("agentpool", "cpu")]),
        ];
        let relabel = Change::Applied {
            old: Some(Arc::new(node_labelled("n1", &[("agentpool", "gpu")]))),
            new: Arc::new(node_labelled("n1", &[("agentpool", "other")])),
        };
        assert_eq!(names(pools_for_node(&relabel, &pools)), ["gpu", "other"]);
        let gone = Change::Deleted(Arc::new(node_labelled("n1", &[("agentpool", "cpu")])));
        assert_eq!(names(pools_for_node(&gone, &pools)), ["cpu"]);
    }

    #[test]
    fn a_daemonset_change_reaches_its_pool_or_every_pool() {
        use crate::decide::facts::{ObjectId, PoolOwner, Rollout};
        let pools = [pool("a", &[("x", "1")]), pool("b", &[("x", "2")])];
        let ds = |owner: Option<&str>, plugin: bool| DaemonSetFacts {
            id: ObjectId {
                namespace: "ns".into(),
                name: "ds".into(),
            },
            uid: "ds".into(),
            deleting: false,
            pool_owner: owner.map(|uid| PoolOwner {
                name: "a".into(),
                uid: uid.into(),
            }),
            desired_hash: None,
            spec_editors: vec![],
            rollout: Rollout::default(),
            plugin_pod: plugin.then(Default::default),
            pod_selector: Default::default(),
            tolerated: Default::default(),
        };
        let change = |d| Change::Applied {
            old: None,
            new: Arc::new(d),
        };
        assert_eq!(
            names(pools_for_daemonset(
                &change(ds(Some("uid-a"), true)),
                &pools
            )),
            ["a"]
        );
        assert_eq!(
            names(pools_for_daemonset(&change(ds(None, true)), &pools)),
            ["a", "b"],
            "a foreign plugin"
        );
        assert_eq!(
            names(pools_for_daemonset(
                &change(ds(Some("uid-gone"), true)),
                &pools
            )),
            ["a", "b"],
            "an orphaned plugin"
        );
        assert!(
            pools_for_daemonset(&change(ds(None, false)), &pools).is_empty(),
            "not a plugin"
        );
    }

    #[test]
    fn pools_sharing_nodes_are_found_and_forgotten_pools_drop_out() {
        let m = PoolMembers::default();
        assert!(
            m.record("a", ["n1".to_string(), "n2".to_string()], true)
                .is_empty()
        );
        assert_eq!(
            names(m.record("b", ["n2".to_string()], false)),
            ["a"],
            "a new pool on a's node wakes a"
        );
        assert!(
            m.record("b", ["n2".to_string()], false).is_empty(),
            "nothing changed"
        );
        assert_eq!(
            names(m.record("b", ["n2".to_string()], true)),
            ["a"],
            "b's plugin runs now"
        );
        m.record("c", ["n3".to_string()], true);
        assert_eq!(names(m.sharing_nodes_with("a")), ["b"]);
        assert_eq!(names(m.sharing_nodes_with("b")), ["a"]);
        m.forget("b");
        assert!(m.sharing_nodes_with("a").is_empty());
        assert!(m.sharing_nodes_with("unknown").is_empty());
    }
}

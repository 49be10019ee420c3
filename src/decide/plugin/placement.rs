//! Which nodes run a pool's device plugin. gpupool tells its DaemonSet through a node label,
//! `gpupool.io/device-plugin=<pool>`, that the DaemonSet's node affinity requires: the pod
//! template never changes when nodes come and go, are tainted, upgraded or contested, and a node
//! is handed from one plugin to another only once every plugin pod on it is gone, terminating
//! ones included, so a node never runs two device plugins.
//!
//! A node whose label names another pool with a live DaemonSet is that pool's to release: its
//! DaemonSet would start (or restart) its plugin there for as long as the label says so, so
//! taking the label over while the pods look gone in a cache could start two plugins at once.
//! The node writer checks the same two things against the API server right before it writes
//! (see `controller::node_writes`).

use crate::decide::facts::{NodeFacts, ObjectId, Observed, PodFacts, PodRole};
use crate::decide::names::{DEVICE_PLUGIN_LABEL, pool_key};

pub use crate::decide::moves::LabelChange;

/// A node this pool should serve that still runs another plugin pod (or a terminating one), or
/// whose label still names another pool whose DaemonSet runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandOver {
    pub node: String,
    pub pods: Vec<ObjectId>,
    /// The pool whose label the node carries, until that pool releases it.
    pub held_by: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub label_changes: Vec<LabelChange>,
    pub hand_overs: Vec<HandOver>,
}

/// The label a node carries now.
pub fn assigned(node: &NodeFacts) -> Option<&str> {
    node.labels.get(DEVICE_PLUGIN_LABEL).map(String::as_str)
}

/// What runs on the nodes now, as far as handing them over is concerned.
pub trait Occupancy {
    /// gpupool's pods on a node, terminating ones included.
    fn pods_on(&self, node: &str) -> Vec<&PodFacts>;
    /// Whether the pool with this key has a DaemonSet that is not being deleted (its plugin
    /// goes wherever its label is).
    fn runs_plugin(&self, pool_key: &str) -> bool;
}

/// Label changes for the nodes a pool selects (`serves` says which of them its plugin belongs
/// on) and for `strays`, nodes carrying its label that it no longer selects.
pub fn place(
    pool_key: &str,
    nodes: &[&NodeFacts],
    serves: impl Fn(&NodeFacts) -> bool,
    strays: &[&NodeFacts],
    occupancy: &impl Occupancy,
) -> Placement {
    let mut placement = Placement::default();
    for node in nodes {
        let now = assigned(node);
        let mine = now == Some(pool_key);
        if serves(node) && !mine {
            let blocking: Vec<ObjectId> = occupancy
                .pods_on(&node.name)
                .into_iter()
                .filter(|p| p.role == PodRole::Plugin)
                .map(|p| p.id.clone())
                .collect();
            let held_by = now
                .filter(|holder| occupancy.runs_plugin(holder))
                .map(str::to_string);
            if blocking.is_empty() && held_by.is_none() {
                placement.label_changes.push(change(node, Some(pool_key)));
            } else {
                placement.hand_overs.push(HandOver {
                    node: node.name.clone(),
                    pods: blocking,
                    held_by,
                });
            }
        } else if !serves(node) && mine {
            placement.label_changes.push(change(node, None));
        }
    }
    for stray in strays.iter().filter(|n| assigned(n) == Some(pool_key)) {
        placement.label_changes.push(change(stray, None));
    }
    placement
}

fn change(node: &NodeFacts, to: Option<&str>) -> LabelChange {
    LabelChange {
        node: node.name.clone(),
        from: assigned(node).map(str::to_string),
        to: to.map(str::to_string),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::names::DEVICE_PLUGIN_LABEL;
    use crate::decide::testing::{node_labelled, plugin_pod as plugin_pod_of};

    fn plugin_pod(name: &str, node: &str, deleting: bool) -> PodFacts {
        PodFacts {
            deleting,
            ..plugin_pod_of("gpu-resources", name, Some(node), "old")
        }
    }

    /// Plugin pods by node, and the pools whose DaemonSet runs.
    #[derive(Default)]
    struct Cluster<'a> {
        pods: Vec<&'a PodFacts>,
        running: Vec<&'static str>,
    }

    impl Occupancy for Cluster<'_> {
        fn pods_on(&self, node: &str) -> Vec<&PodFacts> {
            self.pods
                .iter()
                .copied()
                .filter(|p| p.node.as_deref() == Some(node))
                .collect()
        }
        fn runs_plugin(&self, pool_key: &str) -> bool {
            self.running.contains(&pool_key)
        }
    }

    fn labelled(name: &str, owner: Option<&str>) -> NodeFacts {
        let mut n = node_labelled(name, &[("agentpool", "gpu")]);
        if let Some(owner) = owner {
            n.labels.insert(DEVICE_PLUGIN_LABEL.into(), owner.into());
        }
        n
    }

    #[test]
    fn nodes_are_labelled_once_no_plugin_pod_is_left_on_them() {
        let (free, taken, mine) = (
            labelled("free", None),
            labelled("taken", Some("old")),
            labelled("mine", Some("gpu")),
        );
        let going = plugin_pod("old-plugin", "taken", true);
        let cluster = Cluster {
            pods: vec![&going],
            ..Cluster::default()
        };
        let p = place("gpu", &[&free, &taken, &mine], |_| true, &[], &cluster);
        assert_eq!(
            p.label_changes,
            vec![LabelChange {
                node: "free".into(),
                from: None,
                to: Some("gpu".into())
            }]
        );
        assert_eq!(
            p.hand_overs,
            vec![HandOver {
                node: "taken".into(),
                pods: vec![going.id.clone()],
                held_by: None,
            }],
            "terminating pods count"
        );
        let p = place("gpu", &[&taken], |_| true, &[], &Cluster::default());
        assert_eq!(
            p.label_changes,
            vec![LabelChange {
                node: "taken".into(),
                from: Some("old".into()),
                to: Some("gpu".into())
            }]
        );
    }

    #[test]
    fn nodes_the_pool_no_longer_serves_or_selects_lose_its_label() {
        let (mine, theirs, stray) = (
            labelled("mine", Some("gpu")),
            labelled("theirs", Some("other")),
            labelled("stray", Some("gpu")),
        );
        let p = place(
            "gpu",
            &[&mine, &theirs],
            |_| false,
            &[&stray],
            &Cluster::default(),
        );
        assert_eq!(
            p.label_changes,
            vec![
                LabelChange {
                    node: "mine".into(),
                    from: Some("gpu".into()),
                    to: None
                },
                LabelChange {
                    node: "stray".into(),
                    from: Some("gpu".into()),
                    to: None
                },
            ],
            "another pool's label is that pool's to clear"
        );
        assert!(
            place("gpu", &[&mine], |_| true, &[], &Cluster::default())
                .label_changes
                .is_empty(),
            "nothing to do"
        );
    }

    #[test]
    fn a_node_labelled_for_a_pool_whose_daemonset_runs_waits_for_that_pool_to_release_it() {
        // Its plugin pod may be starting right now, unseen yet: the label is that pool's to clear.
        let taken = labelled("taken", Some("old"));
        let running = Cluster {
            running: vec!["old"],
            ..Cluster::default()
        };
        let p = place("gpu", &[&taken], |_| true, &[], &running);
        assert!(p.label_changes.is_empty());
        assert_eq!(
            p.hand_overs,
            vec![HandOver {
                node: "taken".into(),
                pods: vec![],
                held_by: Some("old".into()),
            }]
        );
        // Released by it: taken once no plugin pod is left.
        let released = labelled("taken", None);
        let p = place("gpu", &[&released], |_| true, &[], &running);
        assert_eq!(
            p.label_changes,
            vec![LabelChange {
                node: "taken".into(),
                from: None,
                to: Some("gpu".into())
            }]
        );
        // Its own DaemonSet running never holds a node back from it.
        let mine_running = Cluster {
            running: vec!["gpu"],
            ..Cluster::default()
        };
        assert_eq!(
            place("gpu", &[&released], |_| true, &[], &mine_running)
                .label_changes
                .len(),
            1
        );
    }
}

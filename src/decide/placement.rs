//! Which nodes run a pool's device plugin. gpupool tells its DaemonSet through a node label,
//! `gpupool.io/device-plugin=<pool>`, that the DaemonSet's node affinity requires: the pod
//! template never changes when nodes come and go, are tainted, upgraded or contested, and a node
//! is handed from one plugin to another only once every plugin pod on it is gone, terminating
//! ones included, so a node never runs two device plugins.

use crate::decide::model::ObjectId;
use crate::decide::nodes::NodeFacts;
use crate::decide::pods::{PodFacts, PodRole};

/// The node label that assigns a node to one pool's device plugin.
pub const DEVICE_PLUGIN_LABEL: &str = "gpupool.io/device-plugin";

/// A label write on one node, applied only while the label still has its `from` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelChange {
    pub node: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A node this pool should serve that still runs another plugin pod (or a terminating one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandOver {
    pub node: String,
    pub pods: Vec<ObjectId>,
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

/// Label changes for the nodes a pool selects (`serves` says which of them its plugin belongs
/// on) and for `strays`, nodes carrying its label that it no longer selects.
pub fn place<'a>(
    pool_key: &str,
    nodes: &[&NodeFacts],
    serves: impl Fn(&NodeFacts) -> bool,
    strays: &[&NodeFacts],
    pods_on: impl Fn(&str) -> Vec<&'a PodFacts>,
) -> Placement {
    let mut placement = Placement::default();
    for node in nodes {
        let now = assigned(node);
        let mine = now == Some(pool_key);
        if serves(node) && !mine {
            let blocking: Vec<ObjectId> = pods_on(&node.name)
                .into_iter()
                .filter(|p| p.role == PodRole::Plugin)
                .map(|p| p.id.clone())
                .collect();
            if blocking.is_empty() {
                placement.label_changes.push(change(node, Some(pool_key)));
            } else {
                placement.hand_overs.push(HandOver {
                    node: node.name.clone(),
                    pods: blocking,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::pods::PodPhase;
    use crate::decide::testing::node_labelled;

    fn plugin_pod(name: &str, node: &str, deleting: bool) -> PodFacts {
        PodFacts {
            id: ObjectId {
                namespace: "gpu-resources".into(),
                name: name.into(),
            },
            uid: name.into(),
            role: PodRole::Plugin,
            node: Some(node.into()),
            pool_key: Some("old".into()),
            deleting,
            phase: PodPhase::Running,
            ready: true,
            created: None,
            plugin: None,
            validates: None,
            started: None,
            finished: None,
            waiting_for_gpu: false,
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
        let p = place(
            "gpu",
            &[&free, &taken, &mine],
            |_| true,
            &[],
            |node| {
                if node == "taken" {
                    vec![&going]
                } else {
                    vec![]
                }
            },
        );
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
                pods: vec![going.id.clone()]
            }],
            "terminating pods count"
        );
        let p = place("gpu", &[&taken], |_| true, &[], |_| vec![]);
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
        let p = place("gpu", &[&mine, &theirs], |_| false, &[&stray], |_| vec![]);
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
            place("gpu", &[&mine], |_| true, &[], |_| vec![])
                .label_changes
                .is_empty(),
            "nothing to do"
        );
    }
}

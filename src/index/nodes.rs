//! The nodes, as the facts gpupool decides on, with an index from label to nodes so that a
//! pool's nodes are found without evaluating its selector on every node of the cluster.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::runtime::watcher::Event;

use crate::api::{PoolSelector, SelectorOperator};
use crate::decide::facts::NodeFacts;
use crate::decide::names::{DEVICE_PLUGIN_LABEL, DRA_LABEL};
use crate::index::{Change, Keyed, Tracked, map_event};

impl Keyed for NodeFacts {
    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }
}

/// Node names by label value, for the label keys pool selectors use.
type LabelIndex = HashMap<String, HashMap<String, BTreeSet<String>>>;

/// What a node write may rely on without reading the node first (see
/// `controller::node_writes`): the resourceVersion last seen, and whether the cache can be trusted
/// that no gpupool plugin pod is on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteHint {
    pub resource_version: String,
    /// Every version of the node since a point where no plugin pod was on it (its creation, seen
    /// by this watch, or a consistent list of plugin pods) was seen, and none carried a
    /// device-plugin or DRA label: no gpupool DaemonSet can have selected it since, so a plugin
    /// pod there would have to be one the pod cache shows. Lost at any such label and at a
    /// re-list (versions may have been missed).
    pub vouched: bool,
}

#[derive(Debug)]
pub struct NodeIndex {
    nodes: Tracked<NodeFacts>,
    /// Only keys some pool selects on are indexed: an AKS node has ~30 labels, a pool selects on
    /// one or two, and 5,000 nodes must fit in a small replica.
    by_label: LabelIndex,
    /// Kept apart from the facts: a heartbeat changes the resourceVersion, not the facts.
    hints: HashMap<String, WriteHint>,
}

impl Default for NodeIndex {
    /// The device-plugin label is always indexed: it finds the nodes a pool's plugin runs on.
    fn default() -> Self {
        NodeIndex {
            nodes: Tracked::default(),
            by_label: [
                (DEVICE_PLUGIN_LABEL.to_string(), HashMap::new()),
                (DRA_LABEL.to_string(), HashMap::new()),
            ]
            .into(),
            hints: HashMap::new(),
        }
    }
}

impl NodeIndex {
    /// The nodes carrying `key=value`, for indexed keys (sorted by name).
    pub fn with_label(&self, key: &str, value: &str) -> Vec<Arc<NodeFacts>> {
        self.by_label
            .get(key)
            .and_then(|values| values.get(value))
            .into_iter()
            .flatten()
            .filter_map(|name| self.nodes.get(name).cloned())
            .collect()
    }

    pub fn apply(&mut self, event: Event<NodeFacts>) -> Vec<Change<NodeFacts>> {
        self.apply_versioned(map_event(event, |facts| (facts, None)))
    }

    /// Applies a watch event whose objects carry their resourceVersion.
    pub fn apply_versioned(
        &mut self,
        event: Event<(NodeFacts, Option<String>)>,
    ) -> Vec<Change<NodeFacts>> {
        // A node first seen by a live watch was seen from its creation; one from a list was not.
        let live = matches!(event, Event::Apply(_))
            && self.nodes.is_synced()
            && !self.nodes.is_relisting();
        match &event {
            Event::Init => {
                for hint in self.hints.values_mut() {
                    hint.vouched = false;
                }
            }
            Event::Apply((facts, Some(version))) | Event::InitApply((facts, Some(version))) => {
                // Every heartbeat passes here: no new key (an allocation) unless the node is new.
                match self.hints.get_mut(&facts.name) {
                    Some(hint) => hint.resource_version.clone_from(version),
                    None => {
                        self.hints.insert(
                            facts.name.clone(),
                            WriteHint {
                                resource_version: version.clone(),
                                vouched: false,
                            },
                        );
                    }
                }
            }
            _ => {}
        }
        let changes = self.nodes.apply(map_event(event, |(facts, _)| facts));
        for change in &changes {
            let (old, new) = change.states();
            if let Some(old) = old {
                unindex(&mut self.by_label, old);
            }
            if let Some(new) = new {
                index(&mut self.by_label, new);
            }
            match (old, new) {
                (_, Some(new)) if carries_a_gpu_label(new) => {
                    self.hints.entry(new.name.clone()).or_default().vouched = false;
                }
                (None, Some(new)) if live => {
                    self.hints.entry(new.name.clone()).or_default().vouched = true;
                }
                (Some(old), None) => {
                    self.hints.remove(&old.name);
                }
                _ => {}
            }
        }
        changes
    }

    /// What a write to this node may rely on (None: the node is not known).
    pub fn hint(&self, name: &str) -> Option<&WriteHint> {
        self.hints.get(name)
    }

    /// A consistent list of gpupool's plugin pods showed none on any node but `occupied`: every
    /// node the cache shows without a device-plugin or DRA label is vouched for from here on.
    /// A node whose cached version is older than the list may have been labelled meanwhile;
    /// the label reaches this index (and un-vouches the node) before or after, and a write made
    /// before it is guarded by the cached resourceVersion, which the label changed.
    pub fn vouch_unoccupied(&mut self, occupied: &BTreeSet<String>) -> usize {
        if self.nodes.is_relisting() || !self.nodes.is_synced() {
            return 0;
        }
        let mut vouched = 0;
        for node in self.nodes.values() {
            if carries_a_gpu_label(node) || occupied.contains(&node.name) {
                continue;
            }
            if let Some(hint) = self.hints.get_mut(&node.name)
                && !hint.vouched
            {
                hint.vouched = true;
                vouched += 1;
            }
        }
        vouched
    }

    pub fn is_synced(&self) -> bool {
        self.nodes.is_synced()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<NodeFacts>> {
        self.nodes.get(name)
    }

    /// Starts indexing the label keys a selector uses (a new pool's).
    pub fn index_keys_of(&mut self, selector: &PoolSelector) {
        for key in positive_keys(selector) {
            if self.by_label.contains_key(key) {
                continue;
            }
            let mut values: HashMap<String, BTreeSet<String>> = HashMap::new();
            for node in self.nodes.values() {
                if let Some(v) = node.labels.get(key) {
                    values
                        .entry(v.clone())
                        .or_default()
                        .insert(node.name.clone());
                }
            }
            self.by_label.insert(key.to_string(), values);
        }
    }

    /// The nodes the selector selects, sorted by name.
    pub fn selected(&self, selector: &PoolSelector) -> Vec<Arc<NodeFacts>> {
        match self.candidates(selector) {
            Some(names) => names
                .into_iter()
                .filter_map(|n| self.nodes.get(n))
                .filter(|n| selector.selects(&n.labels))
                .cloned()
                .collect(),
            None => {
                let mut all: Vec<Arc<NodeFacts>> = self
                    .nodes
                    .values()
                    .filter(|n| selector.selects(&n.labels))
                    .cloned()
                    .collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                all
            }
        }
    }

    /// The smallest set of node names one indexed requirement admits, or None when no
    /// requirement can narrow the search (only NotIn/DoesNotExist, or keys not indexed yet).
    fn candidates(&self, selector: &PoolSelector) -> Option<BTreeSet<&str>> {
        let labels = selector
            .match_labels
            .iter()
            .map(|(k, v)| (k, Some(std::slice::from_ref(v))));
        let expressions = selector
            .match_expressions
            .iter()
            .filter_map(|r| match r.operator {
                SelectorOperator::In => Some((&r.key, Some(r.values.as_slice()))),
                SelectorOperator::Exists => Some((&r.key, None)),
                SelectorOperator::NotIn | SelectorOperator::DoesNotExist => None,
            });
        labels
            .chain(expressions)
            .filter_map(|(key, values)| {
                let by_value = self.by_label.get(key)?;
                let names: BTreeSet<&str> = match values {
                    Some(values) => values
                        .iter()
                        .filter_map(|v| by_value.get(v))
                        .flatten()
                        .map(String::as_str)
                        .collect(),
                    None => by_value.values().flatten().map(String::as_str).collect(),
                };
                Some(names)
            })
            .min_by_key(BTreeSet::len)
    }

    /// Every node (for pools whose selectors cannot use the index, and for tests).
    pub fn values(&self) -> impl Iterator<Item = &Arc<NodeFacts>> {
        self.nodes.values()
    }
}

/// A label that makes a gpupool DaemonSet (the plugin's, or the DRA driver's) select the node.
fn carries_a_gpu_label(node: &NodeFacts) -> bool {
    node.labels.contains_key(DEVICE_PLUGIN_LABEL) || node.labels.contains_key(DRA_LABEL)
}

/// Keys a selector requires to be present (the ones an index can narrow by).
fn positive_keys(selector: &PoolSelector) -> impl Iterator<Item = &str> {
    selector.match_labels.keys().map(String::as_str).chain(
        selector
            .match_expressions
            .iter()
            .filter(|r| matches!(r.operator, SelectorOperator::In | SelectorOperator::Exists))
            .map(|r| r.key.as_str()),
    )
}

fn index(by_label: &mut LabelIndex, node: &NodeFacts) {
    for (key, values) in by_label.iter_mut() {
        if let Some(v) = node.labels.get(key) {
            values
                .entry(v.clone())
                .or_default()
                .insert(node.name.clone());
        }
    }
}

fn unindex(by_label: &mut LabelIndex, node: &NodeFacts) {
    for (key, values) in by_label.iter_mut() {
        if let Some(v) = node.labels.get(key)
            && let Some(names) = values.get_mut(v)
        {
            names.remove(&node.name);
            if names.is_empty() {
                values.remove(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelectorRequirement;
    use crate::decide::testing::{node_labelled, selector};

    fn names(nodes: &[Arc<NodeFacts>]) -> Vec<&str> {
        nodes.iter().map(|n| n.name.as_str()).collect()
    }

    fn index_of(nodes: &[NodeFacts]) -> NodeIndex {
        let mut index = NodeIndex::default();
        for n in nodes {
            index.apply(Event::Apply(n.clone()));
        }
        index
    }

    #[test]
    fn selection_agrees_with_the_selector_indexed_or_not() {
        let nodes = [
            node_labelled("b", &[("agentpool", "gpu"), ("zone", "1")]),
            node_labelled("a", &[("agentpool", "gpu"), ("zone", "2")]),
            node_labelled("c", &[("agentpool", "cpu"), ("zone", "1")]),
            node_labelled("d", &[("zone", "3")]),
        ];
        let mut index = index_of(&nodes);
        let mut zone = selector(&[]);
        zone.match_expressions.push(SelectorRequirement {
            key: "zone".into(),
            operator: SelectorOperator::In,
            values: vec!["1".into(), "3".into()],
        });
        let gpu = selector(&[("agentpool", "gpu")]);
        let mut not_gpu = selector(&[]);
        not_gpu.match_expressions.push(SelectorRequirement {
            key: "agentpool".into(),
            operator: SelectorOperator::NotIn,
            values: vec!["gpu".into()],
        });
        for _ in 0..2 {
            assert_eq!(names(&index.selected(&gpu)), ["a", "b"]);
            assert_eq!(names(&index.selected(&zone)), ["b", "c", "d"]);
            assert_eq!(names(&index.selected(&not_gpu)), ["c", "d"]);
            for s in [&gpu, &zone, &not_gpu] {
                index.index_keys_of(s);
            }
        }
        assert!(
            index.candidates(&gpu).is_some_and(|c| c.len() == 2),
            "narrowed by the index"
        );
    }

    #[test]
    fn the_index_follows_label_changes_and_deletions() {
        let mut index = index_of(&[node_labelled("n1", &[("agentpool", "gpu")])]);
        let gpu = selector(&[("agentpool", "gpu")]);
        index.index_keys_of(&gpu);
        index.apply(Event::Apply(node_labelled("n1", &[("agentpool", "cpu")])));
        assert!(index.selected(&gpu).is_empty());
        index.apply(Event::Apply(node_labelled("n2", &[("agentpool", "gpu")])));
        assert_eq!(names(&index.selected(&gpu)), ["n2"]);
        index.apply(Event::Delete(node_labelled("n2", &[("agentpool", "gpu")])));
        assert!(index.selected(&gpu).is_empty());
        assert!(
            !index.by_label["agentpool"].contains_key("gpu"),
            "no empty sets left behind"
        );
    }

    fn versioned(
        name: &str,
        labels: &[(&str, &str)],
        version: &str,
    ) -> (NodeFacts, Option<String>) {
        (node_labelled(name, labels), Some(version.to_string()))
    }

    fn vouched(index: &NodeIndex, name: &str) -> bool {
        index.hint(name).is_some_and(|h| h.vouched)
    }

    #[test]
    fn only_nodes_whose_every_version_was_seen_without_a_gpu_label_are_vouched_for() {
        let mut index = NodeIndex::default();
        index.apply_versioned(Event::Init);
        index.apply_versioned(Event::InitApply(versioned("listed", &[], "1")));
        index.apply_versioned(Event::InitDone);
        assert!(!vouched(&index, "listed"), "its past is unknown");
        index.apply_versioned(Event::Apply(versioned("new", &[], "2")));
        assert!(vouched(&index, "new"), "seen from its creation");
        index.apply_versioned(Event::Apply(versioned("new", &[], "3")));
        assert_eq!(
            index.hint("new").unwrap().resource_version,
            "3",
            "a heartbeat"
        );
        assert!(vouched(&index, "new"));

        index.apply_versioned(Event::Apply(versioned(
            "new",
            &[(DEVICE_PLUGIN_LABEL, "a")],
            "4",
        )));
        assert!(!vouched(&index, "new"), "a DaemonSet may have selected it");
        index.apply_versioned(Event::Apply(versioned("new", &[], "5")));
        assert!(!vouched(&index, "new"), "its pod may still be there");
        let labelled_new = versioned("dra", &[(DRA_LABEL, "p")], "6");
        index.apply_versioned(Event::Apply(labelled_new));
        assert!(!vouched(&index, "dra"), "created labelled");

        // A consistent list of plugin pods vouches for the label-free nodes it shows free.
        let occupied: BTreeSet<String> = ["new".to_string()].into();
        assert_eq!(index.vouch_unoccupied(&occupied), 1);
        assert!(vouched(&index, "listed"));
        assert!(!vouched(&index, "new") && !vouched(&index, "dra"));

        // A re-list may have missed versions: nothing is vouched for any more.
        index.apply_versioned(Event::Init);
        assert!(!vouched(&index, "listed"));
        assert_eq!(
            index.vouch_unoccupied(&BTreeSet::new()),
            0,
            "not while re-listing"
        );
        index.apply_versioned(Event::InitApply(versioned("listed", &[], "7")));
        index.apply_versioned(Event::InitDone);
        assert!(
            index.hint("new").is_none() && index.hint("dra").is_none(),
            "gone"
        );
        assert!(!vouched(&index, "listed"));
        index.apply_versioned(Event::Delete(versioned("listed", &[], "8")));
        assert!(index.hint("listed").is_none());
    }
}

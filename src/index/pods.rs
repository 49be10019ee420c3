//! gpupool's own pods (device plugins and validation), by node.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kube::runtime::watcher::Event;

use crate::decide::facts::PodFacts;
use crate::index::{Change, Keyed, Tracked};

impl Keyed for PodFacts {
    fn key(&self) -> Cow<'_, str> {
        Cow::Owned(self.id.to_string())
    }
}

#[derive(Debug, Default)]
pub struct PodIndex {
    pods: Tracked<PodFacts>,
    by_node: HashMap<String, BTreeSet<String>>,
}

impl PodIndex {
    pub fn apply(&mut self, event: Event<PodFacts>) -> Vec<Change<PodFacts>> {
        let changes = self.pods.apply(event);
        for change in &changes {
            let (old, new) = change.states();
            if let Some((node, key)) = old.and_then(|p| Some((p.node.as_ref()?, p.key()))) {
                let empty = self.by_node.get_mut(node).is_some_and(|keys| {
                    keys.remove(key.as_ref());
                    keys.is_empty()
                });
                if empty {
                    self.by_node.remove(node);
                }
            }
            if let Some((node, key)) = new.and_then(|p| Some((p.node.as_ref()?, p.key()))) {
                self.by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(key.into_owned());
            }
        }
        changes
    }

    pub fn is_synced(&self) -> bool {
        self.pods.is_synced()
    }

    /// Whether every pod the API server had at the last list (and every event since) is here:
    /// synced, and no re-list under way.
    pub fn is_current(&self) -> bool {
        self.pods.is_synced() && !self.pods.is_relisting()
    }

    /// gpupool's pods bound to this node, terminating ones included.
    pub fn on_node(&self, node: &str) -> impl Iterator<Item = &Arc<PodFacts>> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|key| self.pods.get(key))
    }

    /// The pods of one pool (by its `gpupool.io/pool` key), wherever they are.
    pub fn of_pool<'a>(&'a self, pool_key: &'a str) -> impl Iterator<Item = &'a Arc<PodFacts>> {
        self.pods
            .values()
            .filter(move |p| p.pool_key.as_deref() == Some(pool_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: Option<&str>) -> PodFacts {
        crate::decide::testing::plugin_pod("gpu-resources", name, node, "gpu")
    }

    fn names<'a>(pods: impl Iterator<Item = &'a Arc<PodFacts>>) -> Vec<&'a str> {
        pods.map(|p| p.id.name.as_str()).collect()
    }

    #[test]
    fn pods_are_found_by_node_through_binding_and_deletion() {
        let mut index = PodIndex::default();
        index.apply(Event::Apply(pod("a", None)));
        assert!(names(index.on_node("n1")).is_empty(), "not bound yet");
        index.apply(Event::Apply(pod("a", Some("n1"))));
        index.apply(Event::Apply(pod("b", Some("n1"))));
        assert_eq!(names(index.on_node("n1")), ["a", "b"]);
        let mut going = pod("a", Some("n1"));
        going.deleting = true;
        index.apply(Event::Apply(going));
        assert_eq!(
            names(index.on_node("n1")),
            ["a", "b"],
            "terminating pods count"
        );
        index.apply(Event::Delete(pod("a", Some("n1"))));
        index.apply(Event::Delete(pod("b", Some("n1"))));
        assert!(names(index.on_node("n1")).is_empty());
        assert!(index.by_node.is_empty(), "no empty sets left behind");
        assert_eq!(names(index.of_pool("gpu")), Vec::<&str>::new());
    }
}

//! Which nodes a pool selects: Kubernetes label-selector semantics over a node's labels.

use std::collections::BTreeMap;

use super::{PoolSelector, SelectorOperator};

impl PoolSelector {
    /// Whether a node with these labels is selected. An empty selector selects nothing: the CRD
    /// rejects it, and treating it as "everything" would let one bad object claim the whole cluster.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.match_labels.is_empty() && self.match_expressions.is_empty() {
            return false;
        }
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::testing::{labels, req};

    fn selects(selector: &PoolSelector, labels: &BTreeMap<String, String>) -> bool {
        selector.selects(labels)
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let selector = PoolSelector {
            match_labels: labels(&[("agentpool", "gpu")]),
            match_expressions: vec![req("zone", SelectorOperator::In, &["1", "2"])],
        };
        assert!(selects(
            &selector,
            &labels(&[("agentpool", "gpu"), ("zone", "1")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("agentpool", "gpu"), ("zone", "3")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("agentpool", "cpu"), ("zone", "1")])
        ));
        assert!(!selects(&selector, &labels(&[("zone", "1")])));
    }

    #[test]
    fn operators_follow_kubernetes_semantics() {
        let node = labels(&[("a", "1")]);
        let one = |r| PoolSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![r],
        };
        assert!(selects(
            &one(req("a", SelectorOperator::Exists, &[])),
            &node
        ));
        assert!(!selects(
            &one(req("b", SelectorOperator::Exists, &[])),
            &node
        ));
        assert!(selects(
            &one(req("b", SelectorOperator::DoesNotExist, &[])),
            &node
        ));
        assert!(!selects(
            &one(req("a", SelectorOperator::DoesNotExist, &[])),
            &node
        ));
        // NotIn matches a missing label, as in Kubernetes.
        assert!(selects(
            &one(req("b", SelectorOperator::NotIn, &["1"])),
            &node
        ));
        assert!(!selects(
            &one(req("a", SelectorOperator::NotIn, &["1"])),
            &node
        ));
        assert!(!selects(
            &one(req("b", SelectorOperator::In, &["1"])),
            &node
        ));
    }

    #[test]
    fn an_empty_selector_selects_nothing() {
        assert!(!selects(&PoolSelector::default(), &labels(&[("a", "1")])));
    }
}

//! Label-selector matching and its translation into node affinity, so the DaemonSet lands on
//! exactly the nodes the pool selects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeSelectorRequirement;

use crate::api::{PoolSelector, SelectorOperator};

/// Whether a node with these labels is selected. An empty selector selects nothing: the CRD
/// rejects it, and treating it as "everything" would let one bad object claim the whole cluster.
pub fn selects(selector: &PoolSelector, labels: &BTreeMap<String, String>) -> bool {
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        return false;
    }
    selector
        .match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().all(|req| {
            let value = labels.get(&req.key);
            match req.operator {
                SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

/// The selector as node-affinity requirements (one ANDed term).
pub fn affinity_requirements(selector: &PoolSelector) -> Vec<NodeSelectorRequirement> {
    let labels = selector
        .match_labels
        .iter()
        .map(|(k, v)| NodeSelectorRequirement {
            key: k.clone(),
            operator: "In".into(),
            values: Some(vec![v.clone()]),
        });
    let expressions = selector.match_expressions.iter().map(|req| {
        let (operator, values) = match req.operator {
            SelectorOperator::In => ("In", Some(req.values.clone())),
            SelectorOperator::NotIn => ("NotIn", Some(req.values.clone())),
            SelectorOperator::Exists => ("Exists", None),
            SelectorOperator::DoesNotExist => ("DoesNotExist", None),
        };
        NodeSelectorRequirement {
            key: req.key.clone(),
            operator: operator.into(),
            values,
        }
    });
    labels.chain(expressions).collect()
}

/// A human rendering (`a=b,c in (d,e)`) for status messages.
pub fn describe(selector: &PoolSelector) -> String {
    let labels = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"));
    let expressions = selector.match_expressions.iter().map(|r| match r.operator {
        SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
        SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
        SelectorOperator::Exists => r.key.clone(),
        SelectorOperator::DoesNotExist => format!("!{}", r.key),
    });
    labels.chain(expressions).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
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

    #[test]
    fn affinity_mirrors_the_selector() {
        let selector = PoolSelector {
            match_labels: labels(&[("agentpool", "gpu")]),
            match_expressions: vec![req("x", SelectorOperator::DoesNotExist, &[])],
        };
        let reqs = affinity_requirements(&selector);
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            (reqs[0].key.as_str(), reqs[0].operator.as_str()),
            ("agentpool", "In")
        );
        assert_eq!(reqs[0].values, Some(vec!["gpu".to_string()]));
        assert_eq!(
            (reqs[1].operator.as_str(), reqs[1].values.clone()),
            ("DoesNotExist", None)
        );
        assert_eq!(describe(&selector), "agentpool=gpu,!x");
    }
}

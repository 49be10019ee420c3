//! A pool selector as node affinity, so the DaemonSet lands on exactly the nodes the pool
//! selects, and as words for status messages (matching itself is `PoolSelector::selects`).

use k8s_openapi::api::core::v1::NodeSelectorRequirement;

use crate::api::{PoolSelector, SelectorOperator};

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
    use crate::decide::testing::{labels, req};

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

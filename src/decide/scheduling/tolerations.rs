//! Scheduling facts gpupool needs without a scheduler: which tolerations the plugin needs for a
//! pool's taints, and whether some other DaemonSet's pods would run on a node.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Toleration};

use crate::decide::facts::{NodeFacts, NodeTaint, TaintKey};

/// Taints Kubernetes itself puts on and takes off nodes (not-ready, unreachable, pressure,
/// cordon...). The DaemonSet controller already tolerates them; copying them into the template
/// would restart every plugin pod each time a node flaps.
fn is_system_taint(key: &str) -> bool {
    key.starts_with("node.kubernetes.io/") || key.starts_with("node.cloudprovider.kubernetes.io/")
}

/// The tolerations every plugin pod carries, as in the AKS article's manifest.
pub fn base_tolerations() -> Vec<Toleration> {
    vec![
        Toleration {
            key: Some("CriticalAddonsOnly".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        },
        Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        },
    ]
}

/// Taints the cluster itself puts on and takes off nodes in their lifecycle: the node lifecycle
/// and cloud-node controllers (`node.kubernetes.io/*`, `node.cloudprovider.kubernetes.io/*`; the
/// DaemonSet controller already tolerates the ones daemon pods need), the cluster autoscaler
/// (`ToBeDeletedByClusterAutoscaler=<timestamp>`, `DeletionCandidateOfClusterAutoscaler`,
/// kubernetes/autoscaler `utils/taints/taints.go`) and Karpenter / AKS node auto-provisioning
/// (`karpenter.sh/disrupted`, `karpenter.sh/unregistered`, kubernetes-sigs/karpenter
/// `pkg/apis/v1/taints.go`). They must keep working as the cluster intends (a node being
/// removed takes no new pods), and their values change on every scale-down: never tolerated.
pub fn is_lifecycle_taint(key: &str) -> bool {
    key.starts_with("node.kubernetes.io/")
        || key.starts_with("node.cloudprovider.kubernetes.io/")
        || key.starts_with("karpenter.sh/")
        || key == "ToBeDeletedByClusterAutoscaler"
        || key == "DeletionCandidateOfClusterAutoscaler"
}

/// The keys of the NoSchedule/NoExecute taints that describe a pool's nodes (e.g. AKS
/// `sku=gpu:NoSchedule`, Spot's `kubernetes.azure.com/scalesetpriority`), lifecycle taints and
/// those the base tolerations cover left out.
pub fn pool_taint_keys<'a>(taints: impl IntoIterator<Item = &'a NodeTaint>) -> BTreeSet<TaintKey> {
    let base = base_tolerations();
    taints
        .into_iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !is_lifecycle_taint(&t.key))
        .filter(|t| !base.iter().any(|tol| tolerates(tol, t)))
        .map(|t| (t.key.clone(), t.effect.clone()))
        .collect()
}

/// One `Exists` toleration per taint key and effect, in a stable order.
pub fn tolerations_for(keys: &BTreeSet<TaintKey>) -> Vec<Toleration> {
    keys.iter()
        .map(|(key, effect)| Toleration {
            key: Some(key.clone()),
            operator: Some("Exists".into()),
            effect: Some(effect.clone()),
            ..Toleration::default()
        })
        .collect()
}

/// Kubernetes' toleration matching (`v1.Toleration.ToleratesTaint`).
pub fn tolerates(tol: &Toleration, taint: &NodeTaint) -> bool {
    if let Some(effect) = tol.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = tol.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match tol.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => !key.is_empty() && tol.value.as_deref().unwrap_or("") == taint.value,
        _ => false,
    }
}

/// Whether a DaemonSet with this pod template would run a pod on the node: node selector,
/// required node affinity and NoSchedule/NoExecute taints. The DaemonSet controller tolerates
/// Kubernetes' own node taints by itself.
pub fn daemon_pod_would_run_on(pod: &PodSpec, node: &NodeFacts) -> bool {
    if let Some(selector) = &pod.node_selector
        && !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    if let Some(terms) = required_node_terms(pod)
        && !terms.iter().any(|term| term_matches(term, node))
    {
        return false;
    }
    tolerates_node_taints(pod, node)
}

/// Whether the pod tolerates the node's NoSchedule/NoExecute taints (Kubernetes' own node taints
/// are tolerated by the DaemonSet controller by itself).
pub fn tolerates_node_taints(pod: &PodSpec, node: &NodeFacts) -> bool {
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .filter(|t| !is_system_taint(&t.key))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// The terms of the pod's required node affinity (ORed), if it has any.
pub fn required_node_terms(pod: &PodSpec) -> Option<&[NodeSelectorTerm]> {
    pod.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .map(|r| r.node_selector_terms.as_slice())
}

/// A node selector term: all of its requirements hold. A term without requirements matches
/// nothing, as in Kubernetes.
fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node.name.as_str());
            requirement_matches(r, value)
        })
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v > x)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(v), Some(x)) if v < x)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::TaintKey;
    use crate::decide::testing::{node, taint};
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector};

    #[test]
    fn pool_taints_are_tolerated_by_key_whatever_their_value() {
        let keys = pool_taint_keys(&[taint("sku", "gpu", "NoSchedule")]);
        let tols = tolerations_for(&keys);
        assert_eq!(tols.len(), 1);
        assert_eq!(
            (
                tols[0].key.as_deref(),
                tols[0].operator.as_deref(),
                tols[0].value.as_deref()
            ),
            (Some("sku"), Some("Exists"), None)
        );
        assert_eq!(tols[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            pool_taint_keys(&[taint("sku", "other", "NoSchedule")]),
            keys,
            "a new value is the same key"
        );
    }

    #[test]
    fn only_hard_uncovered_pool_taints_are_kept_and_lifecycle_taints_never() {
        let taints = [
            taint("sku", "gpu", "NoSchedule"),
            taint("sku", "gpu", "NoSchedule"),
            taint("dedicated", "", "NoExecute"),
            taint("soft", "x", "PreferNoSchedule"),
            taint("node.kubernetes.io/unschedulable", "", "NoSchedule"),
            taint(
                "node.cloudprovider.kubernetes.io/uninitialized",
                "true",
                "NoSchedule",
            ),
            taint("ToBeDeletedByClusterAutoscaler", "1732467000", "NoSchedule"),
            taint(
                "DeletionCandidateOfClusterAutoscaler",
                "1732467000",
                "PreferNoSchedule",
            ),
            taint("karpenter.sh/disrupted", "", "NoSchedule"),
            taint("karpenter.sh/unregistered", "", "NoExecute"),
            taint("nvidia.com/gpu", "present", "NoSchedule"),
            taint("CriticalAddonsOnly", "true", "NoSchedule"),
            taint(
                "kubernetes.azure.com/scalesetpriority",
                "spot",
                "NoSchedule",
            ),
        ];
        let keys: Vec<TaintKey> = pool_taint_keys(&taints).into_iter().collect();
        let key = |k: &str, e: &str| (k.to_string(), e.to_string());
        assert_eq!(
            keys,
            vec![
                key("dedicated", "NoExecute"),
                key("kubernetes.azure.com/scalesetpriority", "NoSchedule"),
                key("sku", "NoSchedule")
            ]
        );
    }

    #[test]
    fn nvidia_gpu_taint_with_noexecute_is_not_covered_by_the_base_toleration() {
        let keys = pool_taint_keys(&[taint("nvidia.com/gpu", "", "NoExecute")]);
        assert_eq!(
            keys.into_iter().collect::<Vec<_>>(),
            vec![("nvidia.com/gpu".to_string(), "NoExecute".to_string())]
        );
    }

    #[test]
    fn toleration_semantics() {
        let t = taint("k", "v", "NoSchedule");
        let tol =
            |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
                key: key.map(Into::into),
                operator: Some(op.into()),
                value: value.map(Into::into),
                effect: effect.map(Into::into),
                toleration_seconds: None,
            };
        assert!(tolerates(&tol(Some("k"), "Equal", Some("v"), None), &t));
        assert!(!tolerates(&tol(Some("k"), "Equal", Some("w"), None), &t));
        assert!(tolerates(
            &tol(Some("k"), "Exists", None, Some("NoSchedule")),
            &t
        ));
        assert!(!tolerates(
            &tol(Some("k"), "Exists", None, Some("NoExecute")),
            &t
        ));
        assert!(
            tolerates(&tol(None, "Exists", None, None), &t),
            "empty key with Exists tolerates everything"
        );
        assert!(!tolerates(&tol(None, "Equal", Some("v"), None), &t));
    }

    #[test]
    fn foreign_daemonset_placement_follows_selector_affinity_and_taints() {
        let mut gpu = node("gpu-1");
        gpu.labels.insert("accelerator".into(), "nvidia".into());
        gpu.taints.push(taint("sku", "gpu", "NoSchedule"));
        // The seed manifest: no selector, tolerates only nvidia.com/gpu and CriticalAddonsOnly.
        let seed = PodSpec {
            tolerations: Some(base_tolerations()),
            ..PodSpec::default()
        };
        assert!(
            !daemon_pod_would_run_on(&seed, &gpu),
            "the sku=gpu taint keeps the seed plugin off"
        );
        let mut untainted = gpu.clone();
        untainted.taints.clear();
        assert!(daemon_pod_would_run_on(&seed, &untainted));

        let mut selective = seed.clone();
        selective.node_selector = Some([("accelerator".to_string(), "amd".to_string())].into());
        assert!(!daemon_pod_would_run_on(&selective, &untainted));

        let affinity = |reqs: Vec<NodeSelectorRequirement>,
                        fields: Vec<NodeSelectorRequirement>| PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(reqs),
                            match_fields: Some(fields),
                        }],
                    }),
                    ..NodeAffinity::default()
                }),
                ..Affinity::default()
            }),
            ..PodSpec::default()
        };
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        assert!(daemon_pod_would_run_on(
            &affinity(vec![req("accelerator", "In", &["nvidia"])], vec![]),
            &untainted
        ));
        assert!(!daemon_pod_would_run_on(
            &affinity(
                vec![req("accelerator", "In", &["nvidia"])],
                vec![req("metadata.name", "NotIn", &["gpu-1"])]
            ),
            &untainted
        ));
        assert!(
            !daemon_pod_would_run_on(&affinity(vec![], vec![]), &untainted),
            "an empty term matches nothing"
        );
        let mut numbered = untainted.clone();
        numbered.labels.insert("gpus".into(), "8".into());
        assert!(daemon_pod_would_run_on(
            &affinity(vec![req("gpus", "Gt", &["4"])], vec![]),
            &numbered
        ));
        assert!(!daemon_pod_would_run_on(
            &affinity(vec![req("gpus", "Lt", &["4"])], vec![]),
            &numbered
        ));
    }
}

//! Node → `NodeFacts`: only the facts gpupool decides on are kept (the Node object is dropped as
//! soon as they are read), so 5,000 nodes fit in a small replica and an update that changes none
//! of them (a heartbeat) is no change at all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::decide::facts::{NodeCondition, NodeFacts, NodeReadiness, NodeTaint};
use crate::decide::names::{GPU_RESOURCE, VALIDATION_ANNOTATION};

/// The kubelet's own conditions, read elsewhere (Ready) or not GPU matters.
const KUBELET_CONDITIONS: [&str; 5] = [
    "Ready",
    "MemoryPressure",
    "DiskPressure",
    "PIDPressure",
    "NetworkUnavailable",
];

impl NodeFacts {
    /// As `from_node`, moving the labels (most of a node's facts) instead of copying them: the
    /// watch hands over every heartbeat, so this is on the idle path.
    pub fn from_owned(mut node: Node) -> NodeFacts {
        let labels = node.metadata.labels.take().unwrap_or_default();
        NodeFacts {
            labels,
            ..NodeFacts::from_node(&node)
        }
    }

    pub fn from_node(node: &Node) -> NodeFacts {
        let meta = &node.metadata;
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready_condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let ready = ready_condition.map_or(NodeReadiness::Unknown, |c| match c.status.as_str() {
            "True" => NodeReadiness::Ready,
            "False" => NodeReadiness::NotReady,
            _ => NodeReadiness::Unknown,
        });
        let gpu = |list: Option<&BTreeMap<String, Quantity>>| {
            list.and_then(|m| m.get(GPU_RESOURCE))
                .map(|q| parse_count(&q.0))
        };
        NodeFacts {
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|ts| ts.iter().map(NodeTaint::from).collect())
                .unwrap_or_default(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready,
            gpu_capacity: gpu(status.and_then(|s| s.capacity.as_ref())),
            gpu_allocatable: gpu(status.and_then(|s| s.allocatable.as_ref())),
            other_gpu_resources: other_gpu_resources(
                status.and_then(|s| s.capacity.as_ref()),
                status.and_then(|s| s.allocatable.as_ref()),
            ),
            conditions: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
                .map(|c| NodeCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                    since: c.last_transition_time.as_ref().map(|t| t.0),
                })
                .collect(),
            ready_since: ready_condition
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.is_some(),
            boot_id: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.boot_id.clone())
                .unwrap_or_default(),
            validation: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(VALIDATION_ANNOTATION))
                .and_then(|v| serde_json::from_str(v).ok()),
        }
    }
}

impl From<&Taint> for NodeTaint {
    fn from(t: &Taint) -> Self {
        NodeTaint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.clone(),
        }
    }
}

/// Every `nvidia.com/*` resource but `nvidia.com/gpu` (kept in its own fields).
fn other_gpu_resources(
    capacity: Option<&BTreeMap<String, Quantity>>,
    allocatable: Option<&BTreeMap<String, Quantity>>,
) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let nvidia = |name: &String| name.starts_with("nvidia.com/") && name != GPU_RESOURCE;
    for (name, q) in capacity.into_iter().flatten().filter(|(n, _)| nvidia(n)) {
        out.entry(name.clone()).or_default().0 = parse_count(&q.0);
    }
    for (name, q) in allocatable.into_iter().flatten().filter(|(n, _)| nvidia(n)) {
        out.entry(name.clone()).or_default().1 = parse_count(&q.0);
    }
    out
}

/// Parses a device count. Extended resources are whole numbers; anything else a node might carry
/// (garbage, fractions, suffixes) counts as zero GPUs rather than failing the reconcile.
pub fn parse_count(q: &str) -> i64 {
    let q = q.trim();
    if let Ok(n) = q.parse::<i64>() {
        return n.max(0);
    }
    // Suffixes are legal for integer quantities ("1k", "2Ei"); devices never use them, but be
    // exact (saturating: the API server accepts anything up to i64::MAX).
    const SUFFIXES: [(&str, i64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    SUFFIXES
        .iter()
        .find_map(|(suffix, mult)| {
            let digits = q.strip_suffix(suffix)?;
            Some(
                digits
                    .parse::<i64>()
                    .map_or(0, |n| n.saturating_mul(*mult).max(0)),
            )
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    fn node_with_gpu(capacity: &str, allocatable: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some([("agentpool".to_string(), "gpu".to_string())].into()),
                annotations: Some([("big".to_string(), "x".repeat(1000))].into()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.0.0.0/24".into()),
                taints: Some(vec![Taint {
                    key: "sku".into(),
                    value: Some("gpu".into()),
                    effect: "NoSchedule".into(),
                    time_added: None,
                }]),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                capacity: Some(
                    [
                        ("cpu".to_string(), Quantity("6".into())),
                        (GPU_RESOURCE.to_string(), Quantity(capacity.into())),
                    ]
                    .into(),
                ),
                allocatable: Some(
                    [(GPU_RESOURCE.to_string(), Quantity(allocatable.into()))].into(),
                ),
                conditions: Some(vec![
                    NodeCondition {
                        type_: "MemoryPressure".into(),
                        status: "False".into(),
                        ..NodeCondition::default()
                    },
                    NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_heartbeat_time: Some(
                            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                Timestamp::UNIX_EPOCH,
                            ),
                        ),
                        ..NodeCondition::default()
                    },
                ]),
                ..NodeStatus::default()
            }),
        }
    }

    #[test]
    fn facts_read_gpus_taints_and_readiness() {
        let facts = NodeFacts::from_node(&node_with_gpu("8", "7"));
        assert_eq!(facts.gpu_capacity, Some(8));
        assert_eq!(facts.gpu_allocatable, Some(7));
        assert_eq!(facts.ready, NodeReadiness::Ready);
        assert_eq!(
            facts.taints,
            vec![NodeTaint {
                key: "sku".into(),
                value: "gpu".into(),
                effect: "NoSchedule".into()
            }]
        );
    }

    #[test]
    fn malformed_gpu_quantities_count_as_zero() {
        assert_eq!(parse_count("4"), 4);
        assert_eq!(parse_count(" 2 "), 2);
        assert_eq!(parse_count("1k"), 1000);
        assert_eq!(parse_count("2Ki"), 2048);
        assert_eq!(parse_count("2Ei"), 2 << 60);
        assert_eq!(parse_count("10E"), i64::MAX, "saturates");
        assert_eq!(parse_count("9223372036854775807"), i64::MAX);
        assert_eq!(parse_count("-3"), 0);
        assert_eq!(parse_count("1.5"), 0);
        assert_eq!(parse_count("banana"), 0);
        assert_eq!(parse_count(""), 0);
        let facts = NodeFacts::from_node(&node_with_gpu("lots", "???"));
        assert_eq!((facts.gpus_capacity(), facts.gpus_allocatable()), (0, 0));
    }

    #[test]
    fn a_node_without_status_has_unknown_readiness_and_no_gpus() {
        let node = Node {
            metadata: ObjectMeta {
                name: Some("bare".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let facts = NodeFacts::from_node(&node);
        assert_eq!(facts.ready, NodeReadiness::Unknown);
        assert_eq!(facts.gpu_capacity, None);
        assert!(facts.labels.is_empty());
    }
}

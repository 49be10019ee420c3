//! Pod → `PodFacts`, for the pods gpupool runs (device-plugin pods of its DaemonSets, validation
//! pods); every other pod is None.

use k8s_openapi::api::core::v1::Pod;

use crate::decide::facts::{ObjectId, PodFacts, PodPhase, PodRole, Termination, ValidationTarget};
use crate::decide::names::{
    COMPONENT_LABEL, MANAGED_BY, PLUGIN_POD_LABEL, POOL_LABEL, VALIDATES_BOOT, VALIDATES_NODE,
    VALIDATES_PLUGIN, VALIDATION_ATTEMPT, VALIDATION_COMPONENT,
};

fn validation_target(pod: &Pod) -> Option<ValidationTarget> {
    let annotations = pod.metadata.annotations.as_ref()?;
    let get = |k: &str| annotations.get(k).cloned();
    Some(ValidationTarget {
        node: get(VALIDATES_NODE)?,
        boot_id: get(VALIDATES_BOOT).unwrap_or_default(),
        plugin: get(VALIDATES_PLUGIN).unwrap_or_default(),
        attempt: get(VALIDATION_ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
    })
}

fn termination(pod: &Pod) -> Option<Termination> {
    let status = pod.status.as_ref()?;
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.clone());
    match terminated {
        Some(t) => Some(Termination {
            exit_code: t.exit_code,
            reason: t.reason.unwrap_or_default(),
            message: t.message.unwrap_or_default(),
            at: t.finished_at.map(|f| f.0),
        }),
        // Failed without a container status (evicted, deadline exceeded): the pod says why.
        None if status.phase.as_deref() == Some("Failed") => Some(Termination {
            exit_code: -1,
            reason: status.reason.clone().unwrap_or_default(),
            message: status.message.clone().unwrap_or_default(),
            at: None,
        }),
        None => None,
    }
}

fn waiting_for_gpu(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.contains("nvidia.com/gpu"))
            })
        })
}

impl PodFacts {
    /// None for pods that are neither plugin nor validation pods of gpupool.
    pub fn from_pod(pod: &Pod) -> Option<PodFacts> {
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref()?;
        let label = |k: &str| labels.get(k).map(String::as_str);
        if label(MANAGED_BY.0) != Some(MANAGED_BY.1) {
            return None;
        }
        let role = if label(PLUGIN_POD_LABEL.0) == Some(PLUGIN_POD_LABEL.1) {
            PodRole::Plugin
        } else if label(COMPONENT_LABEL) == Some(VALIDATION_COMPONENT) {
            PodRole::Validation
        } else {
            return None;
        };
        let status = pod.status.as_ref();
        Some(PodFacts {
            id: ObjectId {
                namespace: meta.namespace.clone().unwrap_or_default(),
                name: meta.name.clone().unwrap_or_default(),
            },
            uid: meta.uid.clone().unwrap_or_default(),
            role,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pool_key: label(POOL_LABEL).map(str::to_string),
            deleting: meta.deletion_timestamp.is_some(),
            phase: match status.and_then(|s| s.phase.as_deref()) {
                Some("Pending") => PodPhase::Pending,
                Some("Running") => PodPhase::Running,
                Some("Succeeded") => PodPhase::Succeeded,
                Some("Failed") => PodPhase::Failed,
                _ => PodPhase::Unknown,
            },
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            plugin: (role == PodRole::Plugin)
                .then(|| meta.annotations.as_ref()?.get(VALIDATES_PLUGIN).cloned())
                .flatten(),
            validates: (role == PodRole::Validation)
                .then(|| validation_target(pod))
                .flatten(),
            started: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            finished: termination(pod),
            waiting_for_gpu: waiting_for_gpu(pod),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    fn pod(labels: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("gpu-resources".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn plugin_and_validation_pods_are_told_apart_and_others_ignored() {
        let plugin = pod(&[MANAGED_BY, PLUGIN_POD_LABEL, (POOL_LABEL, "gpu")]);
        let facts = PodFacts::from_pod(&plugin).unwrap();
        assert_eq!(
            (facts.role, facts.node.as_deref(), facts.pool_key.as_deref()),
            (PodRole::Plugin, Some("n1"), Some("gpu"))
        );
        assert!(facts.ready && facts.phase == PodPhase::Running && !facts.deleting);
        let validation = pod(&[MANAGED_BY, (COMPONENT_LABEL, VALIDATION_COMPONENT)]);
        assert_eq!(
            PodFacts::from_pod(&validation).unwrap().role,
            PodRole::Validation
        );
        assert!(
            PodFacts::from_pod(&pod(&[PLUGIN_POD_LABEL])).is_none(),
            "not gpupool's"
        );
        assert!(PodFacts::from_pod(&pod(&[MANAGED_BY])).is_none(), "no role");
        let mut going = plugin;
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(PodFacts::from_pod(&going).unwrap().deleting);
    }
}

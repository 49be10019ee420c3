//! Pod → `PodFacts`, for the pods gpupool runs (device-plugin pods of its DaemonSets, validation
//! pods); every other pod is None.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use crate::decide::facts::{
    ContainerHealth, ObjectId, PodFacts, PodPhase, PodRole, Termination, ValidationTarget,
};
use crate::decide::names::{
    COMPONENT_LABEL, GPU_RESOURCE, MANAGED_BY, MIG_RESOURCE_PREFIX, PLUGIN_POD_LABEL, POOL_LABEL,
    VALIDATES_BOOT, VALIDATES_NODE, VALIDATES_PLUGIN, VALIDATION_ATTEMPT, VALIDATION_COMPONENT,
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
        Some(t) => Some(to_termination(&t)),
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

/// Unschedulable for want of a GPU: the scheduler's message names the resource ("Insufficient
/// nvidia.com/gpu", "… nvidia.com/gpu.shared", "… nvidia.com/mig-1g.10gb"), or, for a pod taking
/// its GPU through a ResourceClaim, says no free device is left ("cannot allocate all claims").
/// The scheduler's DynamicResources plugin, when no device can be allocated for a pod's claims.
const NO_FREE_DEVICE: &str = "cannot allocate all claims";

fn waiting_for_gpu(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref().is_some_and(|m| {
                        m.contains(GPU_RESOURCE)
                            || m.contains(MIG_RESOURCE_PREFIX)
                            || m.contains(NO_FREE_DEVICE)
                    })
            })
        })
}

fn to_termination(t: &ContainerStateTerminated) -> Termination {
    Termination {
        exit_code: t.exit_code,
        reason: t.reason.clone().unwrap_or_default(),
        message: t.message.clone().unwrap_or_default(),
        at: t.finished_at.as_ref().map(|f| f.0),
    }
}

/// The containers as the kubelet reports them (the first one that does not run, if any).
fn container_health(pod: &Pod) -> ContainerHealth {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let restarts = statuses.iter().map(|c| c.restart_count.max(0)).sum();
    let troubled = statuses
        .iter()
        .find(|c| c.state.as_ref().is_none_or(|s| s.running.is_none()))
        .or(statuses.first());
    let Some(c) = troubled else {
        return ContainerHealth::default();
    };
    let state = c.state.as_ref();
    ContainerHealth {
        restarts,
        waiting: state.and_then(|s| s.waiting.as_ref()).map(|w| {
            (
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default(),
            )
        }),
        last_exit: state
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref()?.terminated.as_ref())
            .map(to_termination),
        running: state.is_some_and(|s| s.running.is_some()),
    }
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
        Some(Self::with_role(pod, role))
    }

    /// A pod of the DRA driver's kubelet plugin, among the driver's pods the watch selects: the
    /// chart labels it `<chart name>-component: kubelet-plugin` (its controller's pods carry
    /// another component). A pod the selector picked without any such label is taken as it is
    /// (a driver installed otherwise, selected by the admin's own `--dra-driver-pod-selector`).
    pub fn from_driver_pod(pod: &Pod) -> Option<PodFacts> {
        let labels = pod.metadata.labels.as_ref();
        let components: Vec<&String> = labels
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.ends_with("-component"))
            .map(|(_, v)| v)
            .collect();
        (components.is_empty() || components.iter().any(|v| *v == "kubelet-plugin"))
            .then(|| Self::with_role(pod, PodRole::DraDriver))
    }

    fn with_role(pod: &Pod, role: PodRole) -> PodFacts {
        let meta = &pod.metadata;
        let label = |k: &str| meta.labels.as_ref()?.get(k).map(String::as_str);
        let status = pod.status.as_ref();
        PodFacts {
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
            container: container_health(pod),
        }
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

    /// A crash-looping plugin pod's status as a real kubelet (v1.36) wrote it: between two
    /// restarts the container's state is `terminated` (then `waiting: CrashLoopBackOff` during the
    /// back-off), the run before it in `lastState`.
    #[test]
    fn a_crash_loop_is_read_from_the_container_statuses() {
        let mut p = pod(&[MANAGED_BY, PLUGIN_POD_LABEL, (POOL_LABEL, "gpu")]);
        let statuses: serde_json::Value = serde_json::json!([{
            "name": "nvidia-device-plugin-ctr", "image": "i", "imageID": "d", "ready": false,
            "restartCount": 3, "started": false,
            "state": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "E1205 main.go:177] error starting plugins: invalid device discovery strategy\n",
                "startedAt": "2026-12-05T21:34:15Z", "finishedAt": "2026-12-05T21:34:15Z"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "startedAt": "2026-12-05T21:33:49Z", "finishedAt": "2026-12-05T21:33:49Z"}}
        }]);
        p.status.as_mut().unwrap().container_statuses =
            Some(serde_json::from_value(statuses.clone()).unwrap());
        let now: Timestamp = "2026-12-05T21:34:20Z".parse().unwrap();
        let facts = PodFacts::from_pod(&p).unwrap();
        let failure = facts.container.failure(now).expect("a crash loop");
        assert_eq!(
            (failure.reason.as_str(), failure.restarts),
            ("CrashLoopBackOff", 3)
        );
        assert!(
            failure
                .last_exit
                .unwrap()
                .message
                .contains("invalid device discovery strategy"),
            "the run that just ended, not the one before"
        );
        let mut backing_off = statuses;
        backing_off[0]["state"] = serde_json::json!({"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 40s restarting failed container"}});
        p.status.as_mut().unwrap().container_statuses =
            Some(serde_json::from_value(backing_off).unwrap());
        let facts = PodFacts::from_pod(&p).unwrap();
        let failure = facts.container.failure(now).expect("a crash loop");
        assert_eq!(failure.reason, "CrashLoopBackOff");
        assert_eq!(failure.last_exit.unwrap().exit_code, 1, "from lastState");
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

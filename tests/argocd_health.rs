//! The Argo CD health check shipped for GpuPools (`deploy/argocd/health.lua`), run in a real Lua
//! 5.1 interpreter (mlua, vendored) on GpuPools the operator wrote on the test control plane
//! (`tests/argocd/live-pools.yaml`) and on hand-written ones in exactly the shape it writes, for
//! the states that take minutes to reach live (a stuck rollout, GPUs missing past the grace
//! period). `tests/packaging.rs` runs the same check on live objects too.
//!
//! Rules: generation ≠ status.observedGeneration → Progressing; Stalled=True → Degraded;
//! Reconciling=True → Progressing; Ready=True → Healthy; Ready=False → Degraded; no status or no
//! Ready yet → Progressing.

mod argocd;

use serde_json::Value;

fn live(name: &str) -> Value {
    use serde::Deserialize;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/argocd/live-pools.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .find(|p| p["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no pool {name} in {path}"))
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

#[track_caller]
fn check(pool: &Value, status: &str, message_contains: &str) {
    let (got, message) = argocd::health(&argocd::shipped_script(), pool);
    assert_eq!(
        got,
        status,
        "{}: {message}",
        pool["metadata"]["name"].as_str().unwrap_or("?")
    );
    assert!(
        message.contains(message_contains),
        "{}: message {message:?} lacks {message_contains:?}",
        pool["metadata"]["name"].as_str().unwrap_or("?")
    );
}

#[test]
fn the_argocd_cm_snippet_carries_the_shipped_script() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/argocd/argocd-cm-patch.yaml"
    );
    let cm: Value = yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(
        (&cm["kind"], &cm["metadata"]["name"]),
        (&Value::from("ConfigMap"), &Value::from("argocd-cm"))
    );
    let snippet = cm["data"]["resource.customizations.health.gpupool.io_GpuPool"]
        .as_str()
        .expect("argocd-cm carries resource.customizations.health.gpupool.io_GpuPool");
    assert!(
        snippet == argocd::shipped_script(),
        "deploy/argocd/argocd-cm-patch.yaml differs from deploy/argocd/health.lua"
    );
}

#[test]
fn a_ready_pool_is_healthy() {
    check(
        &live("pkg-std-ready"),
        "Healthy",
        "2 nodes with 2 allocatable",
    );
    check(&live("helm-gpu-example-ready"), "Healthy", "Ready: ");
}

#[test]
fn a_specialized_pool_without_a_plugin_of_ours_is_healthy() {
    check(
        &live("pkg-spec-specialized"),
        "Healthy",
        "device plugin Skipped",
    );
}

#[test]
fn a_conflict_alone_does_not_make_a_serving_pool_unhealthy() {
    // Conflict=True (a hand-applied plugin on one node) is reported in the pool's status and
    // events; the pool serves GPUs, so Argo CD shows it Healthy.
    let pool = live("pkg-seed-foreign-plugin");
    assert!(
        pool["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Conflict" && c["status"] == "True")
    );
    check(&pool, "Healthy", "");
}

#[test]
fn waiting_for_gpus_is_progressing() {
    let pool = live("pkg-std-waiting-for-gpus");
    check(&pool, "Progressing", "WaitingForGpus: waiting for GPUs on ");
    check(&pool, "Progressing", "pkgstd-0");
    check(&pool, "Progressing", "pkgstd-1");
}

#[test]
fn a_rejected_daemonset_is_degraded() {
    check(
        &live("pkg-stall-rejected"),
        "Degraded",
        "DaemonSetRejected: the API server rejected the device plugin DaemonSet",
    );
}

#[test]
fn an_unobserved_spec_change_is_progressing_even_if_ready() {
    let pool = live("pkg-spec-unobserved-generation");
    assert_eq!(pool["metadata"]["generation"], 2);
    check(&pool, "Progressing", "observe generation 2");
}

#[test]
fn a_status_without_observed_generation_is_progressing() {
    let mut pool = live("pkg-std-ready");
    pool["status"]
        .as_object_mut()
        .unwrap()
        .remove("observedGeneration");
    check(&pool, "Progressing", "generation 1");
}

#[test]
fn a_new_pool_without_status_is_progressing() {
    check(
        &yaml(
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: gpu\n  generation: 1\nspec:\n  nodeSelector:\n    matchLabels:\n      kubernetes.azure.com/agentpool: gpu\n",
        ),
        "Progressing",
        "Waiting for gpupool-operator",
    );
}

#[test]
fn a_status_without_ready_is_progressing() {
    check(
        &yaml(
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: gpu\n  generation: 1\nspec:\n  nodeSelector:\n    matchLabels:\n      kubernetes.azure.com/agentpool: gpu\nstatus:\n  observedGeneration: 1\n  nodes: 0\n",
        ),
        "Progressing",
        "Waiting for the Ready condition",
    );
}

/// The shape the operator writes (src/decide/status.rs) for a rollout past --rollout-deadline:
/// Ready=False, and Stalled=True with the same reason (not Ready and not progressing).
const ROLLOUT_STUCK: &str = r#"
apiVersion: gpupool.io/v1alpha1
kind: GpuPool
metadata:
  name: prio
  generation: 1
spec:
  nodeSelector:
    matchLabels:
      kubernetes.azure.com/agentpool: priopool
  nodeImage: Auto
  devicePlugin:
    priorityClassName: does-not-exist
status:
  observedGeneration: 1
  nodes: 1
  nodesWithGpus: 1
  gpusCapacity: 1
  gpusAllocatable: 1
  nodeImage: Standard
  devicePlugin:
    mode: Managed
    reason: StandardImageDetected
    message: the 1 nodes run a standard image without a device plugin, so gpupool deploys one
    daemonSet: gpu-resources/nvidia-device-plugin-prio
    image: nvcr.io/nvidia/k8s-device-plugin:v0.18.0
    desired: 1
    ready: 0
    updated: 0
  conditions:
  - type: Ready
    status: "False"
    observedGeneration: 1
    lastTransitionTime: "2026-11-23T21:16:21Z"
    reason: DaemonSetRolloutStuck
    message: "gpu-resources/nvidia-device-plugin-prio: 0 of 1 plugin pods updated, 0 ready for longer than 5m: the DaemonSet controller cannot create the pods; its FailedCreate events (kubectl -n gpu-resources describe daemonset nvidia-device-plugin-prio) name the cause, e.g. a missing PriorityClass (spec.devicePlugin.priorityClassName), a quota or an admission policy"
  - type: DevicePluginReady
    status: "False"
    observedGeneration: 1
    lastTransitionTime: "2026-11-23T21:16:21Z"
    reason: DaemonSetRolloutStuck
    message: "gpu-resources/nvidia-device-plugin-prio: 0 of 1 plugin pods updated, 0 ready for longer than 5m: the DaemonSet controller cannot create the pods"
  - type: GpusSchedulable
    status: "True"
    observedGeneration: 1
    lastTransitionTime: "2026-11-23T21:16:21Z"
    reason: GpusSchedulable
    message: 1 nodes with 1 allocatable nvidia.com/gpu
  - type: Stalled
    status: "True"
    observedGeneration: 1
    lastTransitionTime: "2026-11-23T21:16:21Z"
    reason: DaemonSetRolloutStuck
    message: "gpu-resources/nvidia-device-plugin-prio: 0 of 1 plugin pods updated, 0 ready for longer than 5m: the DaemonSet controller cannot create the pods; its FailedCreate events (kubectl -n gpu-resources describe daemonset nvidia-device-plugin-prio) name the cause, e.g. a missing PriorityClass (spec.devicePlugin.priorityClassName), a quota or an admission policy"
"#;

#[test]
fn a_stuck_rollout_is_degraded() {
    check(
        &yaml(ROLLOUT_STUCK),
        "Degraded",
        "DaemonSetRolloutStuck: gpu-resources/nvidia-device-plugin-prio",
    );
}

#[test]
fn a_rollout_in_progress_is_progressing() {
    // The same pool before the deadline: DaemonSetProgressing with Reconciling=True, not Stalled.
    let mut pool = yaml(ROLLOUT_STUCK);
    pool["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["type"] != "Stalled");
    for c in pool["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" || c["type"] == "DevicePluginReady" {
            c["reason"] = "DaemonSetProgressing".into();
            c["message"] =
                "gpu-resources/nvidia-device-plugin-prio rolling out: 0 of 1 plugin pods updated, 0 ready".into();
        }
    }
    pool["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(yaml(
            "type: Reconciling\nstatus: \"True\"\nobservedGeneration: 1\nlastTransitionTime: \"2026-11-23T21:16:21Z\"\nreason: Progressing\nmessage: DaemonSet gpu-resources/nvidia-device-plugin-prio is rolling out\n",
        ));
    check(&pool, "Progressing", "is rolling out");
}

#[test]
fn gpus_missing_after_the_grace_period_is_degraded() {
    let mut pool = live("pkg-std-ready");
    let message =
        "1 of 2 nodes cannot run GPU work: pkgstd-1 (NoGpuCapacity); see status.problemNodes";
    for c in pool["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" || c["type"] == "GpusSchedulable" {
            c["status"] = "False".into();
            c["reason"] = "GpusMissing".into();
            c["message"] = message.into();
        }
    }
    pool["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "type": "Stalled", "status": "True", "observedGeneration": 1,
            "lastTransitionTime": "2026-11-23T21:26:18Z", "reason": "GpusMissing", "message": message,
        }));
    pool["status"]["nodesWithGpus"] = 1.into();
    pool["status"]["gpusAllocatable"] = 1.into();
    check(
        &pool,
        "Degraded",
        "GpusMissing: 1 of 2 nodes cannot run GPU work",
    );
}

#[test]
fn not_ready_without_progress_or_stall_is_degraded() {
    // Every node cordoned: Ready=False (AllNodesCordoned), neither Reconciling nor Stalled.
    let mut pool = live("pkg-std-ready");
    let message = "all 2 nodes are cordoned or being deleted";
    for c in pool["status"]["conditions"].as_array_mut().unwrap() {
        if c["type"] == "Ready" || c["type"] == "GpusSchedulable" {
            c["status"] = "False".into();
            c["reason"] = "AllNodesCordoned".into();
            c["message"] = message.into();
        }
    }
    check(
        &pool,
        "Degraded",
        "AllNodesCordoned: all 2 nodes are cordoned",
    );
}

#[test]
fn ready_unknown_is_progressing() {
    let mut pool = live("pkg-std-ready");
    pool["status"]["conditions"][0]["status"] = "Unknown".into();
    check(&pool, "Progressing", "Waiting for the Ready condition");
}

#[test]
fn stalled_wins_over_reconciling() {
    // The operator never writes both (status.rs), but a check must not call a stalled pool
    // progressing should that ever change.
    let mut pool = live("pkg-stall-rejected");
    pool["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(yaml(
            "type: Reconciling\nstatus: \"True\"\nobservedGeneration: 1\nlastTransitionTime: \"2026-11-23T21:16:21Z\"\nreason: Progressing\nmessage: something\n",
        ));
    check(&pool, "Degraded", "DaemonSetRejected");
}

#[test]
fn validating_a_gated_pool_is_progressing() {
    let pool = live("pkg-val-validating");
    check(&pool, "Progressing", "to validate them");
    check(&pool, "Progressing", "pkgval-0");
}

#[test]
fn a_failed_validation_is_degraded_and_names_the_node() {
    let pool = live("pkg-val-validation-failed");
    check(
        &pool,
        "Degraded",
        "ValidationFailed: the GPU validation failed on pkgval-1",
    );
}

#[test]
fn a_validated_pool_is_healthy() {
    check(&live("pkg-val-validated"), "Healthy", "validated");
}

//! The validation workload: one pod per node that needs it (a node needs it until it passed on
//! its current boot with the pool's current plugin), pinned to the node, taking one GPU only when
//! one is free, bounded in time, retried with backoff; results recorded on the node (annotation
//! `gpupool.io/validation`), so they survive operator restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodResourceClaim, PodSpec, ResourceClaim, ResourceRequirements,
    SecurityContext, Toleration,
};
use k8s_openapi::api::resource::v1::{
    DeviceClaim, DeviceRequest, ExactDeviceRequest, ResourceClaimSpec, ResourceClaimTemplate,
    ResourceClaimTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::Validation;
use crate::decide::facts::{NodeFacts, ObjectId, PodFacts, ValidationRecord, ValidationResult};
use crate::decide::names::{
    COMPONENT_LABEL, GPU_DEVICE_CLASS, GPU_RESOURCE, MANAGED_BY, POOL_LABEL, VALIDATES_BOOT,
    VALIDATES_NODE, VALIDATES_PLUGIN, VALIDATION_ATTEMPT, VALIDATION_COMPONENT, fnv1a,
};

/// The name of the claim a DRA node's validation pod takes its GPU through.
const VALIDATION_CLAIM: &str = "gpu";

/// The pool's ResourceClaimTemplate for validating DRA nodes (in the plugin namespace).
pub fn validation_claim_template_name(pool_key: &str) -> String {
    format!("{pool_key}-gpu-validation")
}

/// One GPU of DeviceClass `gpu.nvidia.com` (a whole GPU: what the CUDA sample needs), owned by
/// the pool. The pod's node affinity pins it to its node; the scheduler allocates a device no
/// other claim holds, so validation never takes a GPU from a workload.
pub fn validation_claim_template(
    pool: &str,
    pool_uid: &str,
    pool_key: &str,
    namespace: &str,
) -> ResourceClaimTemplate {
    ResourceClaimTemplate {
        metadata: ObjectMeta {
            name: Some(validation_claim_template_name(pool_key)),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (POOL_LABEL.to_string(), pool_key.to_string()),
                    (
                        COMPONENT_LABEL.to_string(),
                        VALIDATION_COMPONENT.to_string(),
                    ),
                ]
                .into(),
            ),
            owner_references: Some(vec![crate::decide::names::pool_owner(pool, pool_uid)]),
            ..ObjectMeta::default()
        },
        spec: ResourceClaimTemplateSpec {
            metadata: None,
            spec: ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(vec![DeviceRequest {
                        name: VALIDATION_CLAIM.into(),
                        exactly: Some(ExactDeviceRequest {
                            device_class_name: GPU_DEVICE_CLASS.into(),
                            allocation_mode: Some("ExactCount".into()),
                            count: Some(1),
                            ..ExactDeviceRequest::default()
                        }),
                        first_available: None,
                    }]),
                    ..DeviceClaim::default()
                }),
            },
        },
    }
}

/// The longest wait between two attempts on a failing node.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

impl ValidationRecord {
    fn is_for(&self, pool: &str, boot_id: &str, plugin: &str) -> bool {
        self.pool == pool && self.boot_id == boot_id && self.plugin == plugin
    }
}

/// Where one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeValidation {
    /// Passed on its current boot with the current plugin.
    Passed,
    /// A pod is validating it.
    Running,
    /// Its pod waits for a free GPU; `passed_before`: it passed on an earlier boot or plugin.
    WaitingForGpu { passed_before: bool },
    /// Its turn has not come (at most `maxConcurrent` pods at once).
    Queued,
    /// Not validated on this boot with this plugin, and not GPU-ready yet: validation starts
    /// once it is.
    AwaitingGpus,
    /// Its last validation failed; tried again at `retry_at`.
    Failed {
        message: String,
        retry_at: Timestamp,
        attempts: u32,
        /// The failed pod, kept so its log can be read.
        pod: Option<ObjectId>,
    },
}

/// What validation needs written.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ValidationPlan {
    pub create: Vec<Pod>,
    pub delete: Vec<ObjectId>,
    /// Results to record on nodes: (node, record).
    pub records: Vec<(String, ValidationRecord)>,
    pub states: BTreeMap<String, NodeValidation>,
    /// When the first running validation times out.
    pub next_check: Option<Timestamp>,
    /// The ResourceClaimTemplate the pods to create take their GPU through (DRA nodes), created
    /// with them if it is not there.
    pub claim_template: Option<ResourceClaimTemplate>,
}

/// How a validation pod gets its GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidationGpu {
    /// One of this extended resource (the device plugin's).
    Resource(String),
    /// A ResourceClaim from the pool's template (`validation_claim_template`): one device of
    /// DeviceClass `gpu.nvidia.com`, allocated by the scheduler from the node's free GPUs.
    Claim,
}

/// Everything validation is decided from.
pub struct ValidationInputs<'a> {
    pub spec: &'a Validation,
    pub pool: &'a str,
    pub pool_uid: &'a str,
    pub pool_key: &'a str,
    pub namespace: &'a str,
    /// The nodes ready for validation (GPU-ready but for it), with the plugin they run.
    pub nodes: Vec<(&'a NodeFacts, String)>,
    /// The pool's other nodes in service (not GPU-ready yet), with the plugin they will run.
    pub not_ready: Vec<(&'a NodeFacts, String)>,
    /// This pool's validation pods.
    pub pods: Vec<&'a PodFacts>,
    /// Tolerations every validation pod carries (the gate taint, the pool's taints).
    pub tolerations: &'a [Toleration],
    /// The GPU each node's pod asks for: one of a resource (what the node's GPUs are
    /// advertised as: `nvidia.com/gpu.shared` with renamed time-slicing,
    /// `nvidia.com/mig-<profile>` with MIG mixed), or a DRA claim; nodes not listed: one
    /// `nvidia.com/gpu`.
    pub resources: BTreeMap<String, ValidationGpu>,
    /// The first retry's delay; it doubles with every failure, up to 10 minutes.
    pub retry: Duration,
    pub now: Timestamp,
}

/// The plan being built, and how many pods are in flight in it.
struct Building {
    plan: ValidationPlan,
    in_flight: usize,
}

pub fn plan_validation(i: &ValidationInputs) -> ValidationPlan {
    let mut plan = ValidationPlan::default();
    let wanted: BTreeSet<&str> = i.nodes.iter().map(|(n, _)| n.name.as_str()).collect();
    // Pods of nodes no longer to validate, or of an earlier boot or plugin, go.
    for pod in &i.pods {
        let current = pod.validates.as_ref().is_some_and(|t| {
            wanted.contains(t.node.as_str())
                && i.nodes.iter().any(|(n, plugin)| {
                    n.name == t.node && n.boot_id == t.boot_id && *plugin == t.plugin
                })
        });
        if !current && !pod.deleting {
            plan.delete.push(pod.id.clone());
        }
    }
    let in_flight = i
        .pods
        .iter()
        .filter(|p| !p.deleting && p.finished.is_none() && !plan.delete.contains(&p.id))
        .count();
    let mut b = Building { plan, in_flight };
    for (node, plugin) in &i.nodes {
        let state = node_validation(i, node, plugin, &mut b);
        b.plan.states.insert(node.name.clone(), state);
    }
    let mut plan = b.plan;
    for (node, plugin) in &i.not_ready {
        plan.states
            .insert(node.name.clone(), not_ready_validation(i, node, plugin));
    }
    let claims = plan
        .create
        .iter()
        .any(|p| p.spec.as_ref().is_some_and(|s| s.resource_claims.is_some()));
    if claims {
        plan.claim_template = Some(validation_claim_template(
            i.pool,
            i.pool_uid,
            i.pool_key,
            i.namespace,
        ));
    }
    let timeout = SignedDuration::from_secs(i64::from(i.spec.timeout_seconds) + 1);
    plan.next_check = i
        .pods
        .iter()
        .filter(|p| p.finished.is_none() && !p.deleting)
        .filter_map(|p| p.started?.checked_add(timeout).ok())
        .min();
    plan
}

fn node_validation(
    i: &ValidationInputs,
    node: &NodeFacts,
    plugin: &str,
    b: &mut Building,
) -> NodeValidation {
    let record = node
        .validation
        .as_ref()
        .filter(|r| r.is_for(i.pool, &node.boot_id, plugin));
    let passed_before = node
        .validation
        .as_ref()
        .is_some_and(|r| r.pool == i.pool && r.result == ValidationResult::Passed);
    let pod = i
        .pods
        .iter()
        .filter(|p| !p.deleting)
        .filter(|p| {
            p.validates.as_ref().is_some_and(|t| {
                t.node == node.name && t.boot_id == node.boot_id && t.plugin == plugin
            })
        })
        .max_by_key(|p| p.validates.as_ref().map_or(0, |t| t.attempt));
    if record.is_some_and(|r| r.result == ValidationResult::Passed) {
        if let Some(pod) = pod {
            b.plan.delete.push(pod.id.clone());
        }
        return NodeValidation::Passed;
    }
    match pod {
        Some(pod) => pod_validation(i, node, plugin, pod, record, passed_before, b),
        None => {
            let attempts = record.map_or(0, |r| r.attempts);
            if let Some(failed) = record.filter(|r| r.result == ValidationResult::Failed) {
                let retry_at = retry_at(failed.at, attempts, i.retry);
                if i.now < retry_at {
                    return NodeValidation::Failed {
                        message: failed.message.clone(),
                        retry_at,
                        attempts,
                        pod: None,
                    };
                }
            }
            start(i, node, plugin, attempts + 1, b)
        }
    }
}

/// A node not GPU-ready keeps the result it has for its boot and plugin.
fn not_ready_validation(i: &ValidationInputs, node: &NodeFacts, plugin: &str) -> NodeValidation {
    match node
        .validation
        .as_ref()
        .filter(|r| r.is_for(i.pool, &node.boot_id, plugin))
    {
        Some(r) if r.result == ValidationResult::Passed => NodeValidation::Passed,
        Some(r) => NodeValidation::Failed {
            message: r.message.clone(),
            retry_at: retry_at(r.at, r.attempts, i.retry),
            attempts: r.attempts,
            pod: None,
        },
        None => NodeValidation::AwaitingGpus,
    }
}

/// A node whose validation pod exists.
fn pod_validation(
    i: &ValidationInputs,
    node: &NodeFacts,
    plugin: &str,
    pod: &PodFacts,
    record: Option<&ValidationRecord>,
    passed_before: bool,
    b: &mut Building,
) -> NodeValidation {
    let attempt = pod.validates.as_ref().map_or(1, |t| t.attempt);
    let result = |result, message: String, at: Timestamp| ValidationRecord {
        pool: i.pool.to_string(),
        boot_id: node.boot_id.clone(),
        plugin: plugin.to_string(),
        result,
        attempts: attempt,
        at,
        pod: pod.uid.clone(),
        message,
    };
    match &pod.finished {
        Some(t) if t.exit_code == 0 && pod.phase == crate::decide::facts::PodPhase::Succeeded => {
            let passed = result(ValidationResult::Passed, String::new(), i.now);
            b.plan.records.push((node.name.clone(), passed));
            b.plan.delete.push(pod.id.clone());
            NodeValidation::Passed
        }
        Some(t) => {
            let failure = Failure {
                message: failure_message(t),
                at: t.at.unwrap_or(i.now),
                attempt,
            };
            failed_pod(i, node, plugin, pod, record, failure, b)
        }
        None if timed_out(pod, i) => {
            let message = format!(
                "timed out after {}s (spec.validation.timeoutSeconds)",
                i.spec.timeout_seconds
            );
            let failed = result(ValidationResult::Failed, message.clone(), i.now);
            b.plan.records.push((node.name.clone(), failed));
            b.plan.delete.push(pod.id.clone());
            NodeValidation::Failed {
                message,
                retry_at: retry_at(i.now, attempt, i.retry),
                attempts: attempt,
                pod: None,
            }
        }
        None if pod.waiting_for_gpu => NodeValidation::WaitingForGpu { passed_before },
        None => NodeValidation::Running,
    }
}

/// How a finished pod failed.
struct Failure {
    message: String,
    at: Timestamp,
    attempt: u32,
}

/// A failed pod: its result recorded once (at the time it failed), kept for its log until the
/// retry is due, then replaced by the next attempt.
fn failed_pod(
    i: &ValidationInputs,
    node: &NodeFacts,
    plugin: &str,
    pod: &PodFacts,
    record: Option<&ValidationRecord>,
    f: Failure,
    b: &mut Building,
) -> NodeValidation {
    let at = match record.filter(|r| r.pod == pod.uid) {
        Some(r) => r.at,
        None => {
            let failed = ValidationRecord {
                pool: i.pool.to_string(),
                boot_id: node.boot_id.clone(),
                plugin: plugin.to_string(),
                result: ValidationResult::Failed,
                attempts: f.attempt,
                at: f.at,
                pod: pod.uid.clone(),
                message: f.message.clone(),
            };
            b.plan.records.push((node.name.clone(), failed));
            f.at
        }
    };
    let retry_at = retry_at(at, f.attempt, i.retry);
    if i.now >= retry_at {
        b.plan.delete.push(pod.id.clone());
        return start(i, node, plugin, f.attempt + 1, b);
    }
    NodeValidation::Failed {
        message: f.message,
        retry_at,
        attempts: f.attempt,
        pod: Some(pod.id.clone()),
    }
}

fn start(
    i: &ValidationInputs,
    node: &NodeFacts,
    plugin: &str,
    attempt: u32,
    b: &mut Building,
) -> NodeValidation {
    if b.in_flight >= usize::try_from(i.spec.max_concurrent.max(1)).unwrap_or(1) {
        return NodeValidation::Queued;
    }
    b.in_flight += 1;
    b.plan.create.push(validation_pod(i, node, plugin, attempt));
    NodeValidation::Running
}

fn timed_out(pod: &PodFacts, i: &ValidationInputs) -> bool {
    let timeout = SignedDuration::from_secs(i64::from(i.spec.timeout_seconds));
    pod.started
        .and_then(|s| s.checked_add(timeout).ok())
        .is_some_and(|deadline| i.now > deadline)
}

/// When a failed node is tried again: `retry` after the first failure, doubling, at most 10 min.
pub fn retry_at(failed_at: Timestamp, attempts: u32, retry: Duration) -> Timestamp {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    let wait = retry.saturating_mul(factor).min(MAX_BACKOFF);
    failed_at
        .checked_add(SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

fn failure_message(t: &crate::decide::facts::Termination) -> String {
    let said = t.message.trim();
    let last_line = said.lines().last().unwrap_or_default();
    match (t.exit_code, last_line.is_empty()) {
        (-1, _) => format!("the pod failed: {} {}", t.reason, said)
            .trim()
            .to_string(),
        (code, true) => format!("exited with code {code} ({})", t.reason),
        (code, false) => format!("exited with code {code}: {last_line}"),
    }
}

/// The validation pod for one node, boot, plugin and attempt. Its name is derived from those, so
/// creating it twice is harmless.
pub fn validation_pod(i: &ValidationInputs, node: &NodeFacts, plugin: &str, attempt: u32) -> Pod {
    let identity = format!(
        "{}\n{}\n{}\n{}\n{attempt}",
        i.pool, node.name, node.boot_id, plugin
    );
    let name = format!("gpupool-validate-{:016x}", fnv1a(identity.as_bytes()));
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(i.namespace.to_string()),
            labels: Some(
                [
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (
                        COMPONENT_LABEL.to_string(),
                        VALIDATION_COMPONENT.to_string(),
                    ),
                    (POOL_LABEL.to_string(), i.pool_key.to_string()),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (VALIDATES_NODE.to_string(), node.name.clone()),
                    (VALIDATES_BOOT.to_string(), node.boot_id.clone()),
                    (VALIDATES_PLUGIN.to_string(), plugin.to_string()),
                    (VALIDATION_ATTEMPT.to_string(), attempt.to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![crate::decide::names::pool_owner(i.pool, i.pool_uid)]),
            ..ObjectMeta::default()
        },
        spec: Some(validation_pod_spec(i, &node.name)),
        status: None,
    }
}

fn validation_pod_spec(i: &ValidationInputs, node: &str) -> PodSpec {
    let gpu = i
        .resources
        .get(node)
        .cloned()
        .unwrap_or_else(|| ValidationGpu::Resource(GPU_RESOURCE.into()));
    let (resources, resource_claims) = match gpu {
        ValidationGpu::Resource(resource) => (
            ResourceRequirements {
                limits: Some([(resource, Quantity("1".into()))].into()),
                ..ResourceRequirements::default()
            },
            None,
        ),
        ValidationGpu::Claim => (
            ResourceRequirements {
                claims: Some(vec![ResourceClaim {
                    name: VALIDATION_CLAIM.into(),
                    request: None,
                }]),
                ..ResourceRequirements::default()
            },
            Some(vec![PodResourceClaim {
                name: VALIDATION_CLAIM.into(),
                resource_claim_template_name: Some(validation_claim_template_name(i.pool_key)),
                resource_claim_name: None,
            }]),
        ),
    };
    PodSpec {
        resource_claims,
        // Through the scheduler (not nodeName): it starts only when a GPU is free, so validation
        // never takes a GPU from a workload.
        affinity: Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: None,
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node.to_string()]),
                        }]),
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: None,
            }),
            ..Affinity::default()
        }),
        tolerations: Some(i.tolerations.to_vec()),
        restart_policy: Some("Never".into()),
        active_deadline_seconds: Some(i64::from(i.spec.timeout_seconds)),
        automount_service_account_token: Some(false),
        containers: vec![Container {
            name: "validate".into(),
            image: Some(i.spec.image.clone()),
            command: (!i.spec.command.is_empty()).then(|| i.spec.command.clone()),
            args: (!i.spec.args.is_empty()).then(|| i.spec.args.clone()),
            resources: Some(resources),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            // The sample's last lines ("Test PASSED", or the CUDA error) say what happened.
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::{
        PodPhase, PodRole, Termination, ValidationRecord, ValidationResult, ValidationTarget,
    };
    use crate::decide::testing::gpu_node;

    fn spec() -> Validation {
        Validation {
            image: crate::api::DEFAULT_VALIDATION_IMAGE.into(),
            command: vec![],
            args: vec![],
            timeout_seconds: 300,
            max_concurrent: 2,
        }
    }

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    fn inputs<'a>(
        spec: &'a Validation,
        nodes: Vec<(&'a NodeFacts, String)>,
        pods: Vec<&'a PodFacts>,
    ) -> ValidationInputs<'a> {
        ValidationInputs {
            spec,
            pool: "gpu",
            pool_uid: "uid",
            pool_key: "gpu",
            namespace: "gpu-resources",
            nodes,
            not_ready: vec![],
            pods,
            tolerations: &[],
            resources: BTreeMap::new(),
            retry: Duration::from_secs(30),
            now: now(),
        }
    }

    fn pod_for(node: &NodeFacts, attempt: u32, finished: Option<(i32, &str)>) -> PodFacts {
        PodFacts {
            id: ObjectId {
                namespace: "gpu-resources".into(),
                name: format!("v-{}-{attempt}", node.name),
            },
            uid: format!("uid-{}-{attempt}", node.name),
            role: PodRole::Validation,
            node: Some(node.name.clone()),
            pool_key: Some("gpu".into()),
            deleting: false,
            phase: match finished {
                Some((0, _)) => PodPhase::Succeeded,
                Some(_) => PodPhase::Failed,
                None => PodPhase::Running,
            },
            ready: finished.is_none(),
            created: None,
            plugin: None,
            validates: Some(ValidationTarget {
                node: node.name.clone(),
                boot_id: node.boot_id.clone(),
                plugin: "p1".into(),
                attempt,
            }),
            started: Some(now()),
            finished: finished.map(|(code, message)| Termination {
                exit_code: code,
                reason: "Error".into(),
                message: message.into(),
                at: Some(now()),
            }),
            waiting_for_gpu: false,
            container: Default::default(),
        }
    }

    #[test]
    fn a_node_gets_one_pod_at_most_max_concurrent_at_once() {
        let spec = spec();
        let nodes: Vec<NodeFacts> = (0..3).map(|i| gpu_node(&format!("n{i}"), 1, 1)).collect();
        let plan = plan_validation(&inputs(
            &spec,
            nodes.iter().map(|n| (n, "p1".to_string())).collect(),
            vec![],
        ));
        assert_eq!(plan.create.len(), 2, "maxConcurrent 2");
        assert_eq!(plan.states["n2"], NodeValidation::Queued);
        let pod = &plan.create[0];
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()[GPU_RESOURCE],
            Quantity("1".into())
        );
        assert_eq!(
            pod.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Never")
        );
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[VALIDATES_NODE],
            "n0"
        );
        let again = plan_validation(&inputs(
            &spec,
            nodes.iter().map(|n| (n, "p1".to_string())).collect(),
            vec![],
        ));
        assert_eq!(
            again.create[0].metadata.name, pod.metadata.name,
            "the same pod: creating it twice is harmless"
        );
    }

    #[test]
    fn a_pass_is_recorded_and_its_pod_removed_and_a_record_means_done() {
        let spec = spec();
        let mut node = gpu_node("n0", 1, 1);
        let passed = pod_for(&node, 1, Some((0, "Test PASSED")));
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![&passed]));
        assert_eq!(plan.records.len(), 1);
        assert_eq!(plan.records[0].1.result, ValidationResult::Passed);
        assert_eq!(plan.delete, vec![passed.id.clone()]);
        node.validation = Some(plan.records[0].1.clone());
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![]));
        assert_eq!(
            (plan.states["n0"].clone(), plan.create.len()),
            (NodeValidation::Passed, 0)
        );
        // A reboot, or a new plugin: validated again.
        node.boot_id = "boot-1".into();
        assert_eq!(
            plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![]))
                .create
                .len(),
            1
        );
        node.boot_id = "boot-0".into();
        assert_eq!(
            plan_validation(&inputs(&spec, vec![(&node, "p2".into())], vec![]))
                .create
                .len(),
            1
        );
    }

    #[test]
    fn a_failure_is_kept_recorded_once_and_retried_with_backoff() {
        let spec = spec();
        let mut node = gpu_node("n0", 1, 1);
        let failed = pod_for(
            &node,
            1,
            Some((
                1,
                "[Vector addition]\nFailed to allocate device vector A (error code no CUDA-capable device is detected)!",
            )),
        );
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![&failed]));
        let record = plan.records[0].1.clone();
        assert_eq!(
            (record.result, record.attempts),
            (ValidationResult::Failed, 1)
        );
        assert!(
            record
                .message
                .contains("exited with code 1: Failed to allocate device vector A"),
            "{}",
            record.message
        );
        assert!(
            plan.delete.is_empty(),
            "the last failure is kept for its log"
        );
        assert!(matches!(plan.states["n0"], NodeValidation::Failed { .. }));
        node.validation = Some(record);
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![&failed]));
        assert!(
            plan.records.is_empty() && plan.create.is_empty(),
            "recorded once; not retried before the backoff"
        );
        let mut later = inputs(&spec, vec![(&node, "p1".into())], vec![&failed]);
        later.now = now().checked_add(SignedDuration::from_secs(31)).unwrap();
        let plan = plan_validation(&later);
        assert_eq!(plan.delete, vec![failed.id.clone()]);
        assert_eq!(
            plan.create[0].metadata.annotations.as_ref().unwrap()[VALIDATION_ATTEMPT],
            "2"
        );
        assert_eq!(
            retry_at(now(), 3, Duration::from_secs(30)),
            now().checked_add(SignedDuration::from_secs(120)).unwrap()
        );
        assert_eq!(
            retry_at(now(), 30, Duration::from_secs(30)),
            now().checked_add(SignedDuration::from_secs(600)).unwrap()
        );
    }

    #[test]
    fn a_pod_waiting_for_a_gpu_waits_and_a_pod_past_its_timeout_fails() {
        let spec = spec();
        let node = gpu_node("n0", 1, 1);
        let mut waiting = pod_for(&node, 1, None);
        waiting.started = None;
        waiting.waiting_for_gpu = true;
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![&waiting]));
        assert_eq!(
            plan.states["n0"],
            NodeValidation::WaitingForGpu {
                passed_before: false
            }
        );
        let running = pod_for(&node, 1, None);
        let mut late = inputs(&spec, vec![(&node, "p1".into())], vec![&running]);
        late.now = now().checked_add(SignedDuration::from_secs(301)).unwrap();
        let plan = plan_validation(&late);
        assert_eq!(plan.delete, vec![running.id.clone()]);
        assert!(plan.records[0].1.message.contains("timed out after 300s"));
    }

    #[test]
    fn a_node_not_gpu_ready_keeps_its_result_or_awaits_its_gpus() {
        let spec = spec();
        let fresh = gpu_node("fresh", 0, 0);
        let mut passed = gpu_node("passed", 1, 0);
        passed.validation = Some(ValidationRecord {
            pool: "gpu".into(),
            boot_id: passed.boot_id.clone(),
            plugin: "p1".into(),
            result: ValidationResult::Passed,
            attempts: 1,
            at: now(),
            pod: "uid".into(),
            message: String::new(),
        });
        let mut i = inputs(&spec, vec![], vec![]);
        i.not_ready = vec![(&fresh, "p1".into()), (&passed, "p1".into())];
        let plan = plan_validation(&i);
        assert_eq!(plan.states["fresh"], NodeValidation::AwaitingGpus);
        assert_eq!(plan.states["passed"], NodeValidation::Passed);
        assert!(
            plan.create.is_empty(),
            "nothing runs on a node that is not GPU-ready"
        );
        i.not_ready = vec![(&passed, "p2".into())];
        assert_eq!(
            plan_validation(&i).states["passed"],
            NodeValidation::AwaitingGpus,
            "passed with another plugin"
        );
    }

    #[test]
    fn pods_of_an_earlier_boot_or_of_nodes_no_longer_validated_go() {
        let spec = spec();
        let mut node = gpu_node("n0", 1, 1);
        let old = pod_for(&node, 1, None);
        node.boot_id = "boot-1".into();
        let plan = plan_validation(&inputs(&spec, vec![(&node, "p1".into())], vec![&old]));
        assert!(plan.delete.contains(&old.id));
        assert_eq!(plan.create.len(), 1);
        let plan = plan_validation(&inputs(&spec, vec![], vec![&old]));
        assert_eq!(plan.delete, vec![old.id.clone()]);
    }
}

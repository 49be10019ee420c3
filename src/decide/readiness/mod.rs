//! Each node's GPU readiness, and what follows from it: the validation workload and the
//! readiness gate's taint writes.

pub mod gate;
pub mod validation;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::jiff::Timestamp;

use crate::api::{Reason, Validation};
use crate::decide::Settings;
use crate::decide::capacity::health::gpu_faults;
use crate::decide::capacity::judge;
use crate::decide::dra::{DraPlan, Provider};
use crate::decide::facts::{NodeFacts, NodeReadiness, Observed, PodRole, Stall};
use crate::decide::names::{ANY_MIG, GPU_RESOURCE, MIG_RESOURCE_PREFIX};
use crate::decide::plugin::PluginPlan;
use crate::decide::plugin::mode::ImageKind;
use crate::decide::readiness::gate::{
    GatePlan, NotReady, Readiness, TaintChange, lift_gate, plan_gate,
};
use crate::decide::readiness::validation::{
    NodeValidation, ValidationGpu, ValidationInputs, ValidationPlan, plan_validation,
};
use crate::decide::scheduling::{base_tolerations, pool_taint_keys, tolerations_for};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadinessPlan {
    /// Each selected node's GPU readiness (validation included).
    pub nodes: BTreeMap<String, Readiness>,
    pub gate: Option<GatePlan>,
    /// A gate removed or renamed: its taint comes off every node.
    pub lift: Vec<TaintChange>,
    pub validation: Option<ValidationPlan>,
    /// The validation image is not allowed: no validation pods.
    pub validation_stall: Option<Stall>,
}

pub fn plan_readiness(
    o: &Observed,
    settings: &Settings,
    plugin: &PluginPlan,
    dra: &DraPlan,
) -> ReadinessPlan {
    let spec = &o.pool.spec;
    let nodes: Vec<&NodeFacts> = o.nodes.iter().map(AsRef::as_ref).collect();
    let mut readiness: BTreeMap<String, Readiness> = nodes
        .iter()
        .map(|n| (n.name.clone(), base_readiness(o, plugin, dra, n)))
        .collect();
    // A node whose plugin a rollout replaces is progress until the rollout's deadline for it,
    // whatever it lacks meanwhile.
    for (node, until) in plugin.rollout.iter().flat_map(|r| &r.replacing) {
        if let Some(Err(not_ready)) = readiness.get_mut(node) {
            not_ready.closes_at = Some(*until);
        }
    }
    let mut out = ReadinessPlan::default();
    if let Some(validation) = &spec.validation {
        out.validation_stall = validation_image_not_allowed(validation, settings);
        if out.validation_stall.is_none() {
            let plan = validate(o, settings, plugin, dra, validation, &readiness);
            for (node, state) in &plan.states {
                if let Some(not_ready) = validation_not_ready(o, node, state) {
                    readiness.insert(node.clone(), Err(not_ready));
                }
            }
            out.validation = Some(plan);
        }
    }
    out.gate = spec
        .readiness_gate
        .as_ref()
        .map(|gate| plan_gate(gate, &nodes, &readiness, o.now, settings.gpu_grace_period));
    let renamed = lifted(o);
    let left = left(o).into_iter().filter(|l| !renamed.contains(l));
    out.lift = renamed.iter().cloned().chain(left).collect();
    out.nodes = readiness;
    out
}

/// Nodes that left the pool (its selector no longer matches them) still carrying its gate's
/// taint: nobody else would ever lift it, so it comes off, unless a pool that now selects the
/// node gates it with the same taint (then that pool decides). A node that left while the
/// operator was down is not known to have been a member, and keeps its taint.
fn left(o: &Observed) -> Vec<TaintChange> {
    let Some(gate) = &o.pool.spec.readiness_gate else {
        return Vec::new();
    };
    let key = gate.taint_key.as_str();
    let orphaned: Vec<&NodeFacts> = o
        .strays
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| !n.deleting)
        .filter(|n| {
            !o.other_pools
                .iter()
                .any(|p| p.gate_key.as_deref() == Some(key) && p.selector.selects(&n.labels))
        })
        .collect();
    lift_gate(key, &orphaned)
}

/// A gate taint gpupool managed before (status) that the spec no longer names.
fn lifted(o: &Observed) -> Vec<TaintChange> {
    let before = o
        .pool
        .status
        .as_ref()
        .and_then(|s| s.readiness_gate.as_ref())
        .map(|g| g.taint_key.as_str());
    let now = o
        .pool
        .spec
        .readiness_gate
        .as_ref()
        .map(|g| g.taint_key.as_str());
    match before.filter(|b| Some(*b) != now) {
        Some(key) => {
            let all: Vec<&NodeFacts> = o.nodes.iter().chain(&o.strays).map(AsRef::as_ref).collect();
            lift_gate(key, &all)
        }
        None => Vec::new(),
    }
}

/// GPU readiness but for validation: Ready, schedulable, the plugin (or the DRA driver) up,
/// the GPUs there.
fn base_readiness(o: &Observed, plugin: &PluginPlan, dra: &DraPlan, node: &NodeFacts) -> Readiness {
    let not_ready =
        |why: String, own: Option<Timestamp>| Err(NotReady::new(why, problem_since(o, node, own)));
    if node.ready != NodeReadiness::Ready {
        return not_ready("the node is not Ready".into(), node.ready_since);
    }
    if node.unschedulable {
        return not_ready("the node is cordoned".into(), None);
    }
    if let Some(to) = dra.moving.get(&node.name) {
        let why = match to {
            Provider::Dra => "it is moving from the device plugin to the DRA driver",
            Provider::DevicePlugin => "it is moving from the DRA driver to the device plugin",
        };
        return not_ready(why.into(), None);
    }
    if let Some(served) = dra.served.get(&node.name) {
        if let Err((_, why)) = &served.judgement {
            return not_ready(why.clone(), None);
        }
        return faults(o, node);
    }
    let platform = plugin.decision.shipped.contains_key(&node.name);
    let elsewhere = plugin.claims.excludes(&node.name);
    if let Some(until) = plugin
        .rollout
        .as_ref()
        .and_then(|r| r.replacing.get(&node.name))
        .filter(|_| !plugin_pod_ready(o, plugin, &node.name))
    {
        let until = Timestamp::from_second(until.as_second()).unwrap_or(*until);
        let why =
            format!("its device plugin is being replaced (a rollout; progress until {until})");
        return not_ready(why, None);
    }
    if !platform && !elsewhere && !plugin_pod_ready(o, plugin, &node.name) {
        return not_ready("its device plugin pod is not ready yet".into(), None);
    }
    if let Some(e) = plugin.expected.get(&node.name)
        && let Err((_, why)) = judge(node, e)
    {
        return not_ready(why, None);
    }
    faults(o, node)
}

/// A GPU fault the node reports keeps it from being ready, whoever serves its GPUs.
fn faults(o: &Observed, node: &NodeFacts) -> Readiness {
    let extra = o.pool.spec.fault_conditions();
    if let Some(fault) = gpu_faults(node, extra).first() {
        let why = format!("it reports a GPU fault: {}: {}", fault.type_, fault.message);
        return Err(NotReady::new(why, problem_since(o, node, fault.since)));
    }
    Ok(())
}

/// When the node's current problem began: its own record, or what the last status said, or now.
fn problem_since(o: &Observed, node: &NodeFacts, own: Option<Timestamp>) -> Timestamp {
    own.or_else(|| o.problem_clocks().get(&node.name).map(|c| c.since))
        .unwrap_or(o.now)
}

/// The plugin a node runs, if the pool's plugin pod there is ready: its revision.
fn ready_plugin(o: &Observed, node: &str) -> Option<String> {
    let key = o.pool_key();
    o.pods_on(node).into_iter().find_map(|p| {
        (p.role == PodRole::Plugin && p.pool_key.as_deref() == Some(&key) && p.ready && !p.deleting)
            .then(|| p.plugin.clone())
            .flatten()
    })
}

/// Whether the node runs a ready plugin pod of the pool that counts: the current plugin, or
/// (while gpupool rolls a new one out node by node) the one it ran before, until its turn.
/// Under the DaemonSet's own RollingUpdate an old pod does not count: validating it would
/// record a pass for the wrong plugin.
fn plugin_pod_ready(o: &Observed, plugin: &PluginPlan, node: &str) -> bool {
    ready_plugin(o, node).is_some_and(|running| {
        running == plugin.revision
            || plugin
                .rollout
                .as_ref()
                .is_some_and(|r| !r.replacing.contains_key(node))
    })
}

/// Which plugin a node runs, so a new plugin means validating again: a node a rollout has not
/// reached yet keeps the plugin (and the validation) it has.
fn node_plugin(o: &Observed, plugin: &PluginPlan, dra: &DraPlan, node: &str) -> String {
    if dra.is_served(node) {
        return format!("platform:{}", platform_name(ImageKind::Dra));
    }
    if let Some(kind) = plugin.decision.shipped.get(node) {
        return format!("platform:{}", platform_name(*kind));
    }
    let not_reached = plugin
        .rollout
        .as_ref()
        .is_some_and(|r| !r.replacing.contains_key(node));
    match ready_plugin(o, node) {
        Some(running) if not_reached => running,
        _ => plugin.revision.clone(),
    }
}

fn platform_name(kind: ImageKind) -> &'static str {
    match kind {
        ImageKind::Specialized => "gpu-image",
        ImageKind::ManagedGpu => "managed-gpu",
        ImageKind::Dra => "dra",
        ImageKind::Standard | ImageKind::Unlabelled => "none",
    }
}

fn validate(
    o: &Observed,
    settings: &Settings,
    plugin: &PluginPlan,
    dra: &DraPlan,
    spec: &Validation,
    readiness: &BTreeMap<String, Readiness>,
) -> ValidationPlan {
    let (eligible, not_ready): (Vec<_>, Vec<_>) = o
        .nodes
        .iter()
        .filter(|n| !plugin.claims.excludes(&n.name) && !n.unschedulable && !n.deleting)
        .map(|n| (n.as_ref(), node_plugin(o, plugin, dra, &n.name)))
        .partition(|(n, _)| readiness.get(&n.name).is_some_and(Result::is_ok));
    // What the plugin tolerates, and the taints of the nodes validated (a DRA node's are not
    // the plugin's: the plugin does not serve it, yet its validation pod must run there).
    let mut tolerated = plugin.tolerated.clone();
    tolerated.extend(pool_taint_keys(
        eligible.iter().flat_map(|(n, _)| n.taints.iter()),
    ));
    let mut tolerations: Vec<Toleration> = base_tolerations();
    tolerations.extend(tolerations_for(&tolerated));
    let key = o.pool_key();
    let name = o.pool_name();
    plan_validation(&ValidationInputs {
        spec,
        pool: &name,
        pool_uid: o.pool_uid(),
        pool_key: &key,
        namespace: &settings.plugin_namespace,
        nodes: eligible,
        not_ready,
        pods: o
            .pods
            .iter()
            .filter(|p| p.role == PodRole::Validation && p.pool_key.as_deref() == Some(&key))
            .map(AsRef::as_ref)
            .collect(),
        tolerations: &tolerations,
        resources: o
            .nodes
            .iter()
            .map(|n| (n.name.clone(), validation_gpu(plugin, dra, n)))
            .collect(),
        retry: settings.validation_retry,
        now: o.now,
    })
}

/// The GPU resource a node's validation pod asks one of: the one the node is counted in (a
/// pod asking `nvidia.com/gpu` never schedules where the plugin advertises
/// `nvidia.com/gpu.shared` or `nvidia.com/mig-*` only), or, with MIG mixed and no known profile,
/// a MIG resource the node has allocatable.
fn validation_gpu(plugin: &PluginPlan, dra: &DraPlan, node: &NodeFacts) -> ValidationGpu {
    if dra.is_served(&node.name) {
        return ValidationGpu::Claim;
    }
    ValidationGpu::Resource(validation_resource(plugin, node))
}

fn validation_resource(plugin: &PluginPlan, node: &NodeFacts) -> String {
    match plugin.expected.get(&node.name) {
        Some(e) if e.resource == ANY_MIG => node
            .other_gpu_resources
            .iter()
            .find(|(name, (_, allocatable))| {
                name.starts_with(MIG_RESOURCE_PREFIX) && *allocatable > 0
            })
            .map_or_else(|| GPU_RESOURCE.to_string(), |(name, _)| name.clone()),
        Some(e) => e.resource.clone(),
        None => GPU_RESOURCE.to_string(),
    }
}

/// A node that passed before and only waits for a free GPU to validate again counts as validated.
fn validation_not_ready(o: &Observed, node: &str, state: &NodeValidation) -> Option<NotReady> {
    let why = match state {
        // Not GPU-ready: its own reason says more.
        NodeValidation::Passed
        | NodeValidation::AwaitingGpus
        | NodeValidation::WaitingForGpu {
            passed_before: true,
        } => return None,
        NodeValidation::Running | NodeValidation::Queued => {
            "its GPU validation has not passed yet".to_string()
        }
        NodeValidation::WaitingForGpu { .. } => {
            "its GPU validation waits for a free GPU".to_string()
        }
        NodeValidation::Failed { message, .. } => format!("its GPU validation failed: {message}"),
    };
    let facts = o.nodes.iter().find(|n| n.name == node)?;
    Some(NotReady::new(why, problem_since(o, facts, None)))
}

fn validation_image_not_allowed(spec: &Validation, settings: &Settings) -> Option<Stall> {
    let repository = crate::decide::image_repository(&spec.image);
    if settings
        .allowed_validation_images
        .iter()
        .any(|a| a == repository)
    {
        return None;
    }
    Some(Stall {
        reason: Reason::ImageNotAllowed,
        message: format!(
            "spec.validation.image {} is not from a repository the operator allows ({}): use one of them, or have a cluster admin add it to --allowed-validation-images",
            spec.image,
            settings.allowed_validation_images.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{GpuPool, GpuPoolSpec, Mig, MigStrategy, Sharing, TimeSlicing};
    use crate::decide::plugin::plan_plugin;
    use crate::decide::testing::{gpu_node, selector, settings};

    fn observed(spec: GpuPoolSpec, node: NodeFacts) -> Observed {
        let mut pool = GpuPool::new("gpu", spec);
        pool.metadata.uid = Some("uid-1".into());
        Observed {
            nodes: vec![Arc::new(node)],
            ..crate::decide::testing::observed(Arc::new(pool))
        }
    }

    /// The validation pod asks for what the plugin advertises: a pod limited to `nvidia.com/gpu`
    /// never schedules on a node whose GPUs are `nvidia.com/gpu.shared` (renamed time-slicing) or
    /// `nvidia.com/mig-*` (MIG mixed). Found on a real node (#20).
    #[test]
    fn validation_asks_for_the_resource_the_node_advertises() {
        let spec = |sharing: Option<bool>, mig: Option<MigStrategy>| GpuPoolSpec {
            node_selector: selector(&[("agentpool", "gpu")]),
            sharing: sharing.map(|rename| Sharing {
                time_slicing: TimeSlicing {
                    replicas: 4,
                    rename_by_default: rename,
                    fail_requests_greater_than_one: false,
                },
            }),
            mig: mig.map(|strategy| Mig {
                strategy,
                profile: None,
            }),
            ..Default::default()
        };
        let mut node = gpu_node("n1", 0, 0);
        node.other_gpu_resources
            .insert("nvidia.com/mig-1g.10gb".into(), (7, 7));
        for (spec, want) in [
            (spec(None, None), "nvidia.com/gpu"),
            (spec(Some(false), None), "nvidia.com/gpu"),
            (spec(Some(true), None), "nvidia.com/gpu.shared"),
            (spec(None, Some(MigStrategy::Single)), "nvidia.com/gpu"),
            (
                spec(None, Some(MigStrategy::Mixed)),
                "nvidia.com/mig-1g.10gb",
            ),
        ] {
            let o = observed(spec.clone(), node.clone());
            let plugin = plan_plugin(&o, &settings(), &Default::default());
            assert_eq!(validation_resource(&plugin, &node), want, "{spec:?}");
        }
    }

    /// A node that left a gated pool keeps no taint nobody would lift: the pool lifts it, unless
    /// the pool that selects it now gates with the same taint.
    #[test]
    fn a_node_that_left_the_pool_loses_its_gate_taint_unless_another_gate_takes_it() {
        use crate::api::ReadinessGate;
        use crate::decide::testing::{pool_ref, taint};
        let gate = ReadinessGate {
            taint_key: "gpupool.io/gpu-not-ready".into(),
            ..serde_json::from_value(serde_json::json!({})).unwrap()
        };
        let spec = GpuPoolSpec {
            node_selector: selector(&[("agentpool", "gpu")]),
            readiness_gate: Some(gate),
            ..Default::default()
        };
        let stay = gpu_node("stay", 1, 1);
        let mut gone = gpu_node("gone", 1, 0);
        gone.labels = [("agentpool".to_string(), "cpu".to_string())].into();
        gone.taints = vec![taint("gpupool.io/gpu-not-ready", "", "NoSchedule")];
        let mut o = observed(spec, stay);
        o.strays = vec![Arc::new(gone.clone())];
        let lifts = |o: &Observed| -> Vec<String> { left(o).into_iter().map(|c| c.node).collect() };
        assert_eq!(lifts(&o), vec!["gone".to_string()]);
        let mut other = pool_ref("cpu", 1, &[("agentpool", "cpu")]);
        other.gate_key = Some("gpupool.io/gpu-not-ready".into());
        o.other_pools = vec![other.clone()];
        assert!(lifts(&o).is_empty(), "the pool it joined gates it");
        other.gate_key = Some("other.example.com/not-ready".into());
        o.other_pools = vec![other];
        assert_eq!(
            lifts(&o),
            vec!["gone".to_string()],
            "another gate: ours comes off"
        );
        let mut deleting = gone;
        deleting.deleting = true;
        o.strays = vec![Arc::new(deleting)];
        assert!(lifts(&o).is_empty(), "a node being deleted is left alone");
        let dra = DraPlan::default();
        let plan = plan_readiness(&o, &settings(), &plan_plugin(&o, &settings(), &dra), &dra);
        assert!(plan.lift.is_empty());
    }
}

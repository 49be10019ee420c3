//! How each node of a pool stands, and the pool's nodes summed up: who serves GPUs, who is
//! waiting, who fails, and the problem nodes an admin should look at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{ProblemNode, Reason};
use crate::decide::capacity::health::{gpu_faults, problem_reason};
use crate::decide::capacity::{Expected, Source, judge};
use crate::decide::dra::{DraPlan, DraServed, Provider};
use crate::decide::facts::{
    ContainerFailure, NodeFacts, NodeReadiness, ObjectId, Observed, PodRole, ProblemClocks,
};
use crate::decide::plugin::claims::NodeClaims;
use crate::decide::plugin::rollout::RolloutPlan;

/// How one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeHealth {
    /// Ready, schedulable, with the GPUs it should have.
    Serving,
    /// Serving, but an admin should look (e.g. some GPUs unhealthy).
    Degraded(Reason, String),
    /// Cannot run GPU work yet, but its problem began less than a grace period ago (it joined,
    /// rebooted, or its plugin restarted): progress until `until`.
    Waiting {
        reason: Reason,
        message: String,
        since: Timestamp,
        until: Timestamp,
    },
    /// Cannot run GPU work, for longer than the grace period.
    Failing {
        reason: Reason,
        message: String,
        since: Timestamp,
    },
    /// Cordoned or being deleted: deliberately out of service, not counted against the pool.
    OutOfService(Reason, String),
}

/// What a node's health is judged against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Expectations<'a> {
    /// What each node should have (nodes missing here: at least one `nvidia.com/gpu`).
    pub expected: &'a BTreeMap<String, Expected>,
    /// Node condition types that report a GPU fault when True, besides AKS's.
    pub fault_conditions: &'a [String],
    pub now: Timestamp,
    pub grace: Duration,
    /// When each problem node's problem began, as last reported.
    pub previous: &'a ProblemClocks,
    /// Whether gpupool reported on the pool before. Without that history a problem's start is
    /// unknown and taken to be the node's creation; with it, a problem not reported before
    /// began now.
    pub history: bool,
}

impl Expectations<'_> {
    /// When this node's current problem began: kept from the previous status while the problem
    /// stays of the same kind; else the node's own record (its Ready transition); else, with no
    /// status written before, the node's creation; else now.
    fn problem_since(&self, node: &NodeFacts, reason: Reason, own: Option<Timestamp>) -> Timestamp {
        let same_kind = |r: &str| {
            r.parse::<Reason>()
                .is_ok_and(|r| gpu_problem(r) == gpu_problem(reason))
        };
        let unknown = if self.history { None } else { node.created };
        self.previous
            .get(&node.name)
            .filter(|p| same_kind(&p.reason))
            .map(|p| p.since)
            .or(own)
            .or(unknown)
            .unwrap_or(self.now)
    }

    fn grace_ends(&self, since: Timestamp) -> Timestamp {
        since
            .checked_add(SignedDuration::try_from(self.grace).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX)
    }
}

/// NotReady is one kind of problem; every way of lacking GPUs is another.
fn gpu_problem(reason: Reason) -> bool {
    reason != Reason::NotReady
}

pub(super) fn node_health(node: &NodeFacts, e: Expectations, dra: &DraPlan) -> NodeHealth {
    if node.deleting {
        return NodeHealth::OutOfService(Reason::Deleting, "the node is being deleted".into());
    }
    if node.unschedulable {
        return NodeHealth::OutOfService(
            Reason::Cordoned,
            "the node is cordoned (spec.unschedulable); uncordon it to run GPU work there".into(),
        );
    }
    let (reason, message, own_since) = if node.ready != NodeReadiness::Ready {
        let message =
            "the node is not Ready: check the kubelet (kubectl describe node)".to_string();
        (Reason::NotReady, message, node.ready_since)
    } else if let Some(to) = dra.moving.get(&node.name) {
        let (reason, message) = moving(*to);
        (reason, message.to_string(), None)
    } else if let Some(dra_node) = dra.foreign.get(&node.name) {
        let message = format!(
            "spec.allocation is DevicePlugin, but the DRA driver serves the node ({dra_node}), so gpupool's device plugin stays off it: remove the node from the driver's node selector, or set spec.allocation to Auto or Dra"
        );
        (Reason::DraDriverOnNode, message, None)
    } else if let Some(served) = dra.served.get(&node.name) {
        match &served.judgement {
            Ok(None) => return NodeHealth::Serving,
            Ok(Some((reason, message))) => {
                return NodeHealth::Degraded(*reason, message.clone());
            }
            Err((reason, message)) => (*reason, message.clone(), None),
        }
    } else {
        let fallback;
        let expected = match e.expected.get(&node.name) {
            Some(x) => x,
            None => {
                fallback = at_least_one();
                &fallback
            }
        };
        match judge(node, expected) {
            Ok(None) => return NodeHealth::Serving,
            Ok(Some((reason, message))) => return NodeHealth::Degraded(reason, message),
            // Not backdated to the node's creation: a young node that served GPUs and lost
            // them gets its whole grace period from the loss (a node that never had any is
            // seen within moments of joining, or, with no status yet, dated from its creation).
            Err((reason, message)) => (reason, message, None),
        }
    };
    let since = e.problem_since(node, reason, own_since);
    let until = e.grace_ends(since);
    if until > e.now {
        NodeHealth::Waiting {
            reason,
            message,
            since,
            until,
        }
    } else {
        NodeHealth::Failing {
            reason,
            message,
            since,
        }
    }
}

fn moving(to: Provider) -> (Reason, &'static str) {
    match to {
        Provider::Dra => (
            Reason::MovingToDra,
            "moving from the device plugin to the DRA driver (spec.allocation): the plugin leaves first, then the node is labelled for the driver's kubelet plugin",
        ),
        Provider::DevicePlugin => (
            Reason::MovingToDevicePlugin,
            "moving from the DRA driver to the device plugin (spec.allocation): the driver's pod and ResourceSlices leave first, then the plugin starts",
        ),
    }
}

fn at_least_one() -> Expected {
    Expected {
        physical: 1,
        per_gpu: 1,
        resource: crate::decide::names::GPU_RESOURCE.to_string(),
        source: Source::NoSize,
        mig_devices: 0,
    }
}

/// The pool's nodes summed up. Name lists are sorted: the same nodes always give the same
/// status (the node cache's order changes as nodes come and go), so nothing is rewritten.
#[derive(Clone, Debug, Default)]
pub(super) struct NodeSummary {
    /// Nodes that can run GPU work now.
    pub serving: Vec<String>,
    /// Nodes neither cordoned nor being deleted.
    pub in_service: usize,
    pub failing: Vec<(String, Reason)>,
    pub waiting: Vec<(String, Reason)>,
    /// When the first waiting node's grace period ends.
    pub next_grace_end: Option<Timestamp>,
    pub problems: BTreeMap<String, ProblemNode>,
    pub gpus_capacity: i64,
    pub gpus_allocatable: i64,
    /// What the in-service nodes should have in total, and how many physical GPUs that is.
    pub gpus_expected: i64,
    pub physical_expected: i64,
    /// Nodes reporting GPU faults (a GPU node condition True), with the condition types.
    pub faulty: Vec<(String, Vec<String>)>,
    /// Nodes whose plugin marks some GPUs unhealthy (allocatable below capacity).
    pub unhealthy: Vec<String>,
    /// VM sizes of in-service nodes whose GPU count gpupool does not know.
    pub unknown_sizes: BTreeSet<String>,
    /// MIG mixed: (capacity, allocatable) per `nvidia.com/mig-*` resource.
    pub mig_resources: BTreeMap<String, (i64, i64)>,
    /// Nodes whose GPUs the DRA driver taints.
    pub tainted: Vec<String>,
    /// The nodes counted from ResourceSlices, summed up.
    pub dra: DraSummary,
}

/// The DRA nodes of a pool, summed up (`status.capacity.dra`).
#[derive(Clone, Debug, Default)]
pub(super) struct DraSummary {
    pub nodes: i32,
    pub gpus: i64,
    pub usable: i64,
    /// GPUs per node -> nodes.
    pub per_node: BTreeMap<i64, i32>,
    /// Product name -> nodes showing it.
    pub products: BTreeMap<String, i32>,
    /// MIG profile -> (published, untainted).
    pub mig: BTreeMap<String, (i64, i64)>,
}

impl NodeSummary {
    pub(super) fn problem(
        &mut self,
        node: &str,
        reason: Reason,
        message: String,
        since: Option<Timestamp>,
    ) {
        self.problems
            .entry(node.to_string())
            .or_insert(ProblemNode {
                name: node.into(),
                reason: reason.to_string(),
                message,
                since: since.map(whole_seconds),
            });
    }
}

pub(super) fn summarize(
    nodes: &[&NodeFacts],
    e: Expectations,
    claims: &NodeClaims,
    dra: &DraPlan,
) -> NodeSummary {
    let mut s = NodeSummary::default();
    for node in nodes {
        let served = dra.served.get(&node.name);
        let expected = served.map(|d| &d.expected).or(e.expected.get(&node.name));
        match served {
            Some(d) => count_dra(&mut s, node, d),
            None => count_capacity(&mut s, node, expected),
        }
        let health = node_health(node, e, dra);
        if !matches!(health, NodeHealth::OutOfService(..)) {
            s.in_service += 1;
            count_expectation(&mut s, expected);
            record_faults(&mut s, node, e.fault_conditions);
        }
        match health {
            NodeHealth::Serving => s.serving.push(node.name.clone()),
            NodeHealth::Degraded(reason, message) => {
                s.serving.push(node.name.clone());
                if reason == Reason::AllocatableBelowCapacity {
                    s.unhealthy.push(node.name.clone());
                }
                s.problem(&node.name, reason, message, None);
            }
            NodeHealth::Waiting {
                reason,
                message,
                since,
                until,
            } => {
                s.waiting.push((node.name.clone(), reason));
                s.next_grace_end = Some(s.next_grace_end.map_or(until, |t| t.min(until)));
                let (reason, message) = waiting_problem(reason, message, since, until);
                s.problem(&node.name, reason, message, Some(since));
            }
            NodeHealth::Failing {
                reason,
                message,
                since,
            } => {
                s.failing.push((node.name.clone(), reason));
                s.problem(&node.name, reason, message, Some(since));
            }
            NodeHealth::OutOfService(reason, message) => {
                s.problem(&node.name, reason, message, None)
            }
        }
    }
    s.serving.sort();
    s.failing.sort();
    s.waiting.sort();
    claim_problems(&mut s, claims);
    s
}

/// A node's GPU fault conditions: listed first among its problems (a reported fault says more
/// than a missing GPU).
fn record_faults(s: &mut NodeSummary, node: &NodeFacts, extra: &[String]) {
    let faults = gpu_faults(node, extra);
    let Some(fault) = faults.first() else {
        return;
    };
    s.faulty.push((
        node.name.clone(),
        faults.iter().map(|c| c.type_.clone()).collect(),
    ));
    let problem = ProblemNode {
        name: node.name.clone(),
        reason: problem_reason(fault),
        message: format!("{}: {}", fault.type_, fault.message),
        since: fault.since.map(whole_seconds),
    };
    s.problems.insert(node.name.clone(), problem);
}

/// Whole seconds, as the API server stores times: the same problem, the same status.
fn whole_seconds(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Totals of the counted resource (saturating: a node may report any integer the API server
/// accepts, up to i64::MAX).
fn count_capacity(s: &mut NodeSummary, node: &NodeFacts, expected: Option<&Expected>) {
    let (capacity, allocatable) = match expected {
        Some(e) => e.have(node),
        None => (node.gpus_capacity(), node.gpus_allocatable()),
    };
    s.gpus_capacity = s.gpus_capacity.saturating_add(capacity);
    s.gpus_allocatable = s.gpus_allocatable.saturating_add(allocatable);
    if expected.is_some_and(|e| {
        e.resource
            .starts_with(crate::decide::names::MIG_RESOURCE_PREFIX)
    }) {
        for (name, (c, a)) in node
            .other_gpu_resources
            .iter()
            .filter(|(n, _)| n.starts_with(crate::decide::names::MIG_RESOURCE_PREFIX))
        {
            let entry = s.mig_resources.entry(name.clone()).or_default();
            *entry = (entry.0.saturating_add(*c), entry.1.saturating_add(*a));
        }
    }
}

/// A node the DRA driver serves: its GPUs as published (capacity) and untainted
/// (allocatable), the product names, per-profile MIG devices, and its taints for GpusHealthy.
fn count_dra(s: &mut NodeSummary, node: &NodeFacts, d: &DraServed) {
    let Some(slices) = &d.slices else {
        s.dra.nodes += 1;
        return;
    };
    let gpus = slices.gpus();
    s.gpus_capacity = s.gpus_capacity.saturating_add(gpus.physical);
    s.gpus_allocatable = s.gpus_allocatable.saturating_add(gpus.usable);
    s.dra.nodes += 1;
    s.dra.gpus = s.dra.gpus.saturating_add(gpus.physical);
    s.dra.usable = s.dra.usable.saturating_add(gpus.usable);
    *s.dra.per_node.entry(gpus.physical).or_default() += 1;
    for product in slices.products() {
        *s.dra.products.entry(product.to_string()).or_default() += 1;
    }
    for (profile, (published, untainted)) in gpus.mig {
        let entry = s.dra.mig.entry(profile).or_default();
        *entry = (entry.0 + published, entry.1 + untainted);
    }
    if slices.tainted().next().is_some() {
        s.tainted.push(node.name.clone());
    }
}

fn count_expectation(s: &mut NodeSummary, expected: Option<&Expected>) {
    let Some(e) = expected else {
        s.gpus_expected = s.gpus_expected.saturating_add(1);
        s.physical_expected = s.physical_expected.saturating_add(1);
        return;
    };
    s.gpus_expected = s.gpus_expected.saturating_add(e.count());
    s.physical_expected = s.physical_expected.saturating_add(e.physical);
    if let Source::UnknownSize(size) = &e.source {
        s.unknown_sizes.insert(size.clone());
    }
}

/// A node within its grace period: lacking GPUs reads as WaitingForGpus (it joined, or its
/// plugin restarted); NotReady stays NotReady (it is rebooting), both say until when.
fn waiting_problem(
    reason: Reason,
    message: String,
    since: Timestamp,
    until: Timestamp,
) -> (Reason, String) {
    match reason {
        Reason::NotReady => (
            reason,
            format!("{message}; not Ready since {since}, counted as progress until {until}"),
        ),
        _ => (
            Reason::WaitingForGpus,
            format!("{message}; since {since} (joined or restarting), expected by {until}"),
        ),
    }
}

fn claim_problems(s: &mut NodeSummary, claims: &NodeClaims) {
    for (node, pool) in &claims.served_by_other_pool {
        let message = format!(
            "also selected by the older GpuPool {pool}, which serves it; make the selectors disjoint"
        );
        s.problem(node, Reason::SelectedByOtherPool, message, None);
    }
    for (node, pools) in &claims.also_selected_by {
        let message = format!(
            "also selected by GpuPool {}; this pool serves it; make the selectors disjoint",
            pools.join(", ")
        );
        s.problem(node, Reason::SelectedByOtherPool, message, None);
    }
    for (node, plugins) in &claims.foreign_plugins {
        let message = format!(
            "device plugin DaemonSet {} (not managed by gpupool) runs here",
            plugins.join(", ")
        );
        s.problem(node, Reason::ForeignDevicePlugin, message, None);
    }
}

/// Nodes a device plugin and the DRA driver both serve: named with both.
pub(super) fn dra_problems(dra: &DraPlan, s: &mut NodeSummary) {
    for (node, (plugin, driver)) in &dra.both {
        let since = s.problems.get(node).and_then(|p| p.since.clone());
        s.problems.insert(
            node.clone(),
            ProblemNode {
                name: node.clone(),
                reason: Reason::DevicePluginAndDraDriver.to_string(),
                message: format!(
                    "{plugin} and {driver} both serve the node: each hands out the same GPUs; select the driver's kubelet plugin by gpupool.io/dra"
                ),
                since,
            },
        );
    }
}

/// Problems a failing plugin pod explains better than the node's GPUs alone: no GPUs, none
/// allocatable, fewer, waiting for them.
const EXPLAINED_BY_THE_PLUGIN: [Reason; 6] = [
    Reason::NoGpuCapacity,
    Reason::NoAllocatableGpus,
    Reason::FewerGpusThanExpected,
    Reason::AllocatableBelowCapacity,
    Reason::WaitingForGpus,
    Reason::NoMigDevices,
];

/// Nodes a plugin rollout is replacing are progress until its deadline for them, whatever they
/// lack meanwhile (`PluginUpdating`); nodes that halted it fail with what they show.
pub(super) fn rollout_problems(rollout: &RolloutPlan, s: &mut NodeSummary) {
    let lacking =
        |s: &NodeSummary, node: &str| s.failing.iter().chain(&s.waiting).any(|(n, _)| n == node);
    let mut moved = false;
    for (node, until) in &rollout.replacing {
        if !lacking(s, node) {
            continue; // serving its GPUs already
        }
        s.failing.retain(|(n, _)| n != node);
        s.waiting.retain(|(n, _)| n != node);
        s.waiting.push((node.clone(), Reason::PluginUpdating));
        s.next_grace_end = Some(s.next_grace_end.map_or(*until, |t| t.min(*until)));
        let since = s.problems.get(node).and_then(|p| p.since.clone());
        s.problems.insert(
            node.clone(),
            ProblemNode {
                name: node.clone(),
                reason: Reason::PluginUpdating.to_string(),
                message: format!(
                    "its device plugin is being replaced by the rollout to {}; it must serve its GPUs again by {} (now: {})",
                    rollout.status.target_image,
                    whole_seconds(*until).0,
                    rollout.shows.get(node).map_or("unknown", String::as_str)
                ),
                since,
            },
        );
        moved = true;
    }
    for halted in &rollout.status.halted {
        if !lacking(s, &halted.name) {
            continue;
        }
        s.failing.retain(|(n, _)| *n != halted.name);
        s.waiting.retain(|(n, _)| *n != halted.name);
        s.failing
            .push((halted.name.clone(), Reason::PluginRolloutHalted));
        let since = s.problems.get(&halted.name).and_then(|p| p.since.clone());
        s.problems.insert(
            halted.name.clone(),
            ProblemNode {
                name: halted.name.clone(),
                reason: Reason::PluginRolloutHalted.to_string(),
                message: format!(
                    "the new device plugin ({}) did not bring its GPUs back: {}",
                    rollout.status.target_image, halted.message
                ),
                since,
            },
        );
        moved = true;
    }
    if moved {
        s.failing.sort();
        s.waiting.sort();
    }
}

/// Nodes where the kubelet cannot run the pool's plugin pod (crash loop, image pull, container
/// creation): the node's problem names the pod, why, its restarts, the plugin's last error and
/// where to look, instead of only "no GPUs". A real kubelet shows this; the simulation never did
/// (kwok runs every pod at once and forever). The grace period is unchanged: a plugin that
/// crashes while a node's driver is still being installed is progress within it.
pub(super) fn plugin_pod_problems(o: &Observed, s: &mut NodeSummary) {
    let key = o.pool_key();
    for node in &o.nodes {
        let failing = o.pods_on(&node.name).into_iter().find_map(|p| {
            let ours = p.role == PodRole::Plugin && p.pool_key.as_deref() == Some(&key);
            (ours && !p.deleting)
                .then(|| p.container.failure(o.now))
                .flatten()
                .map(|f| (p.id.clone(), f))
        });
        let Some((pod, failure)) = failing else {
            continue;
        };
        // A node serving its GPUs has no problem to explain (the plugin recovered).
        let explained = s.problems.get(&node.name).is_some_and(|p| {
            p.reason
                .parse::<Reason>()
                .is_ok_and(|r| EXPLAINED_BY_THE_PLUGIN.contains(&r))
        });
        if !explained {
            continue;
        }
        let since = s.problems.get(&node.name).and_then(|p| p.since.clone());
        s.problems.insert(
            node.name.clone(),
            ProblemNode {
                name: node.name.clone(),
                reason: Reason::PluginPodFailing.to_string(),
                message: plugin_failure_message(&pod, &failure),
                since,
            },
        );
        for (name, reason) in s.failing.iter_mut().chain(s.waiting.iter_mut()) {
            if *name == node.name {
                *reason = Reason::PluginPodFailing;
            }
        }
    }
}

/// "device plugin pod gpu-resources/nvidia-device-plugin-gpu-x2k4q: CrashLoopBackOff, restarted
/// 3 times, last exit code 1: <the plugin's last error> (<what it means>); its log: kubectl -n
/// gpu-resources logs nvidia-device-plugin-gpu-x2k4q --previous".
pub(super) fn plugin_failure_message(pod: &ObjectId, f: &ContainerFailure) -> String {
    let mut m = format!("device plugin pod {pod}: {}", f.reason);
    match f.restarts {
        ..=0 => {}
        1 => m.push_str(", restarted once"),
        n => m.push_str(&format!(", restarted {n} times")),
    }
    let image = f.reason.contains("Image");
    let said = f
        .last_exit
        .as_ref()
        .filter(|_| !image)
        .map(|t| (t.exit_code, last_error_line(&t.message)));
    match said {
        Some((code, line)) if !line.is_empty() => {
            m.push_str(&format!(", last exit code {code}: {}", shorten(&line)));
            if let Some(meaning) = known_plugin_error(&line) {
                m.push_str(&format!(" ({meaning})"));
            }
        }
        Some((code, _)) => m.push_str(&format!(", last exit code {code}")),
        None if !f.message.is_empty() => m.push_str(&format!(": {}", shorten(&f.message))),
        None => {}
    }
    let (ns, name) = (&pod.namespace, &pod.name);
    if image {
        m.push_str(&format!(
            "; check spec.devicePlugin.image and that the node can pull it (kubectl -n {ns} describe pod {name})"
        ));
    } else if f.last_exit.is_some() {
        m.push_str(&format!(
            "; its log: kubectl -n {ns} logs {name} --previous"
        ));
    } else {
        m.push_str(&format!("; kubectl -n {ns} describe pod {name}"));
    }
    m
}

/// The line of a container's termination message (its last log lines, with
/// `FallbackToLogsOnError`) that says why it exited: the last error line, else the last line,
/// without klog's prefix (`E1205 21:28:43.853325   25490 main.go:177] `).
fn last_error_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_error = |l: &&str| l.starts_with('E') || l.starts_with('F');
    let klog = |l: &str| -> bool {
        let b = l.as_bytes();
        b.len() > 5 && b"IWEF".contains(&b[0]) && b[1..5].iter().all(u8::is_ascii_digit)
    };
    let line = lines
        .iter()
        .rev()
        .find(|l| klog(l) && is_error(l))
        .or(lines.last())
        .copied()
        .unwrap_or_default();
    let text = if klog(line) {
        line.split_once("] ").map_or(line, |(_, rest)| rest)
    } else {
        line
    };
    text.to_string()
}

/// At most 300 characters, so a problem node's message stays readable: the end of the text,
/// where a Go error chain ("error starting plugins: …: …") names the most specific cause.
fn shorten(text: &str) -> String {
    const MAX: usize = 300;
    let chars = text.chars().count();
    if chars <= MAX {
        return text.to_string();
    }
    let tail: String = text.chars().skip(chars - MAX).collect();
    format!("…{tail}")
}

/// What the NVIDIA device plugin's known start-up errors mean.
fn known_plugin_error(line: &str) -> Option<&'static str> {
    if line.contains("invalid device discovery strategy") || line.contains("could not load NVML") {
        Some(
            "the plugin finds no NVIDIA driver (NVML) on the node: it has no GPU or no driver; keep nodes without GPUs out of spec.nodeSelector",
        )
    } else if line.contains("invalid MIG configuration") {
        Some(
            "the GPUs' MIG layout does not fit spec.mig.strategy: with single, every MIG-enabled GPU needs MIG devices of one profile (AKS: --gpu-instance-profile)",
        )
    } else if line.contains("unable to load config") {
        Some("the plugin refuses the config gpupool rendered: report it as a gpupool bug")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::{GpuPool, GpuPoolSpec};
    use crate::decide::facts::{ContainerHealth, PodFacts, Termination};
    use crate::decide::testing::{gpu_node, plugin_pod, selector};

    /// What the kubelet's status of a crash-looping NVIDIA plugin on a node without GPUs says
    /// (its termination message: the last log lines, with FallbackToLogsOnError).
    fn crash_looping() -> ContainerHealth {
        ContainerHealth {
            restarts: 3,
            waiting: Some((
                "CrashLoopBackOff".into(),
                "back-off 40s restarting failed container=nvidia-device-plugin-ctr".into(),
            )),
            last_exit: Some(Termination {
                exit_code: 1,
                reason: "Error".into(),
                message: "I1205 21:28:43.853066   25490 main.go:360] Retrieving plugins.\n\
                          E1205 21:28:43.853192   25490 factory.go:113] Incompatible strategy detected auto\n\
                          E1205 21:28:43.853325   25490 main.go:177] error starting plugins: error getting plugins: unable to create plugins: failed to construct resource managers: invalid device discovery strategy\n"
                    .into(),
                at: None,
            }),
            running: false,
        }
    }

    fn observed(nodes: Vec<NodeFacts>, pods: Vec<PodFacts>) -> Observed {
        let pool = GpuPool::new(
            "gpu",
            GpuPoolSpec {
                node_selector: selector(&[("agentpool", "gpu")]),
                ..Default::default()
            },
        );
        Observed {
            nodes: nodes.into_iter().map(Arc::new).collect(),
            pods: pods.into_iter().map(Arc::new).collect(),
            ..crate::decide::testing::observed(Arc::new(pool))
        }
    }

    #[test]
    fn a_crash_looping_plugin_names_the_pod_its_error_and_the_log_to_read() {
        let pod = ObjectId {
            namespace: "gpu-resources".into(),
            name: "nvidia-device-plugin-gpu-x2k4q".into(),
        };
        let now = Timestamp::UNIX_EPOCH;
        let message = plugin_failure_message(&pod, &crash_looping().failure(now).unwrap());
        assert_eq!(
            message,
            "device plugin pod gpu-resources/nvidia-device-plugin-gpu-x2k4q: CrashLoopBackOff, \
             restarted 3 times, last exit code 1: error starting plugins: error getting plugins: \
             unable to create plugins: failed to construct resource managers: invalid device \
             discovery strategy (the plugin finds no NVIDIA driver (NVML) on the node: it has no \
             GPU or no driver; keep nodes without GPUs out of spec.nodeSelector); its log: \
             kubectl -n gpu-resources logs nvidia-device-plugin-gpu-x2k4q --previous"
        );
        let pulling = ContainerHealth {
            waiting: Some((
                "ImagePullBackOff".into(),
                "Back-off pulling image \"nvcr.io/nvidia/k8s-device-plugin:v9\"".into(),
            )),
            ..ContainerHealth::default()
        };
        let message = plugin_failure_message(&pod, &pulling.failure(now).unwrap());
        assert!(
            message.starts_with(
                "device plugin pod gpu-resources/nvidia-device-plugin-gpu-x2k4q: ImagePullBackOff: Back-off pulling image"
            ) && message.ends_with(
                "check spec.devicePlugin.image and that the node can pull it (kubectl -n gpu-resources describe pod nvidia-device-plugin-gpu-x2k4q)"
            ),
            "{message}"
        );
    }

    #[test]
    fn a_failing_plugin_pod_explains_missing_gpus_but_not_other_problems() {
        let since = Some(whole_seconds(Timestamp::UNIX_EPOCH));
        let mut crashing = plugin_pod("gpu-resources", "p1", Some("n1"), "gpu");
        crashing.container = crash_looping();
        let mut other_pool = plugin_pod("gpu-resources", "p2", Some("n2"), "other");
        other_pool.container = crash_looping();
        let mut on_not_ready = plugin_pod("gpu-resources", "p3", Some("n3"), "gpu");
        on_not_ready.container = crash_looping();
        let mut on_serving = plugin_pod("gpu-resources", "p4", Some("n4"), "gpu");
        on_serving.container = crash_looping();
        let o = observed(
            vec![
                gpu_node("n1", 0, 0),
                gpu_node("n2", 0, 0),
                gpu_node("n3", 0, 0),
                gpu_node("n4", 1, 1),
            ],
            vec![crashing, other_pool, on_not_ready, on_serving],
        );
        let mut s = NodeSummary::default();
        s.serving.push("n4".into());
        for (node, reason) in [
            ("n1", Reason::NoGpuCapacity),
            ("n2", Reason::NoGpuCapacity),
            ("n3", Reason::NotReady),
        ] {
            s.failing.push((node.into(), reason));
            s.problem(node, reason, "…".into(), Some(Timestamp::UNIX_EPOCH));
        }
        plugin_pod_problems(&o, &mut s);
        let n1 = &s.problems["n1"];
        assert_eq!(n1.reason, "PluginPodFailing");
        assert!(n1.message.contains("gpu-resources/p1: CrashLoopBackOff"));
        assert_eq!(n1.since, since, "the problem's clock goes on");
        assert_eq!(s.failing[0], ("n1".into(), Reason::PluginPodFailing));
        assert!(!s.problems.contains_key("n4"), "a node serving its GPUs");
        assert_eq!(
            s.problems["n2"].reason, "NoGpuCapacity",
            "another pool's pod"
        );
        assert_eq!(
            s.problems["n3"].reason, "NotReady",
            "a node that is not Ready"
        );

        // As a real kubelet shows a crash loop: terminated for the back-off, then running for a
        // moment; a container running for a minute since, or that crashed once (not restarted
        // yet), or is still being created, is no failure.
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(600);
        let mut h = crash_looping();
        h.waiting = None;
        assert_eq!(
            h.failure(now).unwrap().reason,
            "CrashLoopBackOff",
            "in its back-off"
        );
        h.running = true;
        h.last_exit.as_mut().unwrap().at = Some(now - SignedDuration::from_secs(2));
        assert_eq!(
            h.failure(now).unwrap().reason,
            "CrashLoopBackOff",
            "running for a moment between two crashes"
        );
        h.last_exit.as_mut().unwrap().at = Some(now - SignedDuration::from_secs(61));
        assert_eq!(h.failure(now), None, "running for a minute: recovered");
        h.running = false;
        h.restarts = 0;
        assert_eq!(h.failure(now), None, "crashed once, not restarted yet");
        h.restarts = 1;
        h.waiting = Some(("ContainerCreating".into(), String::new()));
        assert_eq!(h.failure(now), None, "still being created");
    }
}

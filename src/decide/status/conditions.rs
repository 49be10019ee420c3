//! The conditions: each component's assessment, Ready rolled up from them, Reconciling and
//! Stalled from what is progressing, Conflict, and the Kubernetes condition each becomes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{Condition, ConditionStatus, ConditionType, PluginMode, Reason};
use crate::decide::plugin::claims::NodeClaims;
use crate::decide::text::name_list;

use super::nodes::NodeSummary;

/// One condition's outcome, and what it says about progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Assessment {
    pub ok: bool,
    pub reason: Reason,
    pub message: String,
    /// Set while not ok but getting there (a rollout, nodes within their grace period).
    pub progressing: Option<String>,
    pub recheck_at: Option<Timestamp>,
}

impl Assessment {
    pub fn ok(reason: Reason, message: String) -> Self {
        Assessment {
            ok: true,
            reason,
            message,
            progressing: None,
            recheck_at: None,
        }
    }
    pub fn failed(reason: Reason, message: String) -> Self {
        Assessment {
            ok: false,
            ..Assessment::ok(reason, message)
        }
    }
    pub fn progressing(reason: Reason, message: String, progress: String) -> Self {
        Assessment {
            progressing: Some(progress),
            ..Assessment::failed(reason, message)
        }
    }
}

/// Ready from the component conditions, then Reconciling or Stalled: a pool that is not Ready
/// is either making progress or, for kstatus (Flux), failed rather than in progress forever.
pub(super) fn rollup(
    components: Vec<(ConditionType, Assessment)>,
    stalled_by_write: bool,
    s: &NodeSummary,
    mode: PluginMode,
) -> Vec<(ConditionType, Assessment)> {
    let ready = ready_assessment(&components, s, mode);
    let progress: Vec<String> = components
        .iter()
        .filter_map(|(_, a)| a.progressing.clone())
        .collect();
    let stalled = stalled_by_write || (!ready.ok && progress.is_empty());
    let waiting_only = components
        .iter()
        .all(|(t, a)| a.progressing.is_none() || *t == ConditionType::GpusSchedulable);
    let mut out = vec![(ConditionType::Ready, ready.clone())];
    out.extend(components);
    if !progress.is_empty() && !stalled {
        let reason = if waiting_only {
            Reason::WaitingForGpus
        } else {
            Reason::Progressing
        };
        out.push((
            ConditionType::Reconciling,
            Assessment::ok(reason, progress.join("; ")),
        ));
    }
    if stalled {
        out.push((
            ConditionType::Stalled,
            Assessment::ok(ready.reason, ready.message),
        ));
    }
    out
}

/// `Ready`: the first failing component's reason (a pool without nodes is Ready as long as its
/// plugin is), or Ready.
fn ready_assessment(
    components: &[(ConditionType, Assessment)],
    s: &NodeSummary,
    mode: PluginMode,
) -> Assessment {
    let no_nodes = components.iter().find(|(_, a)| a.reason == Reason::NoNodes);
    match components
        .iter()
        .find(|(_, a)| !a.ok && a.reason != Reason::NoNodes)
    {
        Some((_, failing)) => Assessment::failed(failing.reason, failing.message.clone()),
        None if no_nodes.is_some() => Assessment::ok(
            Reason::NoNodes,
            no_nodes.map(|(_, a)| a.message.clone()).unwrap_or_default(),
        ),
        None => {
            let validated = components
                .iter()
                .any(|(t, _)| *t == ConditionType::GpusValidated);
            Assessment::ok(
                Reason::Ready,
                format!(
                    "{} nodes with {} allocatable nvidia.com/gpu{}; device plugin {}",
                    s.serving.len(),
                    s.gpus_allocatable,
                    if validated { ", validated" } else { "" },
                    mode.as_str()
                ),
            )
        }
    }
}

/// `Conflict`, while nodes are contested.
/// Conflict: nodes contested by pools or plugins. A device plugin and the DRA driver on the
/// same node is the conflict named first: two providers hand out the same GPUs.
pub(super) fn conflict_assessment(
    claims: &NodeClaims,
    both: &BTreeMap<String, (String, String)>,
) -> Option<Assessment> {
    if !both.is_empty() {
        let listed: Vec<String> = both
            .iter()
            .map(|(node, (plugin, dra))| format!("{node} ({plugin} and {dra})"))
            .collect();
        let mut message = format!(
            "a device plugin and NVIDIA's GPU DRA driver both serve {} nodes: {}; each hands out the same GPUs. Select the driver's kubelet plugin by gpupool.io/dra (gpupool sets it only once the plugin has left a node), or take the node out of the driver's node selector",
            both.len(),
            name_list(&listed, 10)
        );
        if claims.has_conflicts() {
            message = format!("{message}. Also: {}", conflict_message(claims));
        }
        return Some(Assessment::ok(Reason::DevicePluginAndDraDriver, message));
    }
    if !claims.has_conflicts() {
        return None;
    }
    let by_pools = !(claims.served_by_other_pool.is_empty() && claims.also_selected_by.is_empty());
    let reason = match (by_pools, !claims.foreign_plugins.is_empty()) {
        (true, true) => Reason::NodesSelectedByOtherPoolsAndForeignDevicePlugin,
        (false, _) => Reason::ForeignDevicePlugin,
        (true, false) => Reason::NodesSelectedByOtherPools,
    };
    Some(Assessment::ok(reason, conflict_message(claims)))
}

fn conflict_message(claims: &NodeClaims) -> String {
    let older = grouped(
        claims
            .served_by_other_pool
            .iter()
            .map(|(n, p)| (n, p.clone())),
    );
    let younger = grouped(
        claims
            .also_selected_by
            .iter()
            .map(|(n, p)| (n, p.join(", "))),
    );
    let foreign = grouped(
        claims
            .foreign_plugins
            .iter()
            .map(|(n, d)| (n, d.join(", "))),
    );
    let parts: Vec<String> = older
        .map(|(pool, nodes)| format!("{nodes} also selected by the older GpuPool {pool}, which serves them"))
        .chain(younger.map(|(pools, nodes)| format!("{nodes} also selected by GpuPool {pools}; this pool serves them")))
        .chain(foreign.map(|(plugins, nodes)| {
            format!("device plugin DaemonSet {plugins}, not managed by gpupool, runs on {nodes}; gpupool adds no second plugin there")
        }))
        .collect();
    format!(
        "{}. Make GpuPool selectors disjoint and remove hand-applied device plugins to resolve this",
        parts.join("; ")
    )
}

/// Nodes grouped by what they share (a pool, a list of DaemonSets), as "a, b and 3 more".
fn grouped<'a>(
    pairs: impl Iterator<Item = (&'a String, String)>,
) -> impl Iterator<Item = (String, String)> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (node, key) in pairs {
        groups.entry(key).or_default().push(node.clone());
    }
    groups
        .into_iter()
        .map(|(key, nodes)| (key, name_list(&nodes, 10)))
}

/// A condition that keeps its lastTransitionTime unless its status flips.
pub(super) fn condition(
    previous: &[Condition],
    generation: Option<i64>,
    now: Timestamp,
    type_: ConditionType,
    a: Assessment,
) -> Condition {
    let status = ConditionStatus::from_bool(a.ok);
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.has_status(status))
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        observed_generation: generation,
        last_transition_time,
        reason: a.reason.to_string(),
        message: a.message,
    }
}

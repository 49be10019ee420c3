//! `GpusSchedulable` and `GpusHealthy` from the node summary, and `status.capacity`.

use std::collections::BTreeMap;

use crate::api::{CapacityStatus, DraCapacity, GpusPerNode, MigResource, ProductCount, Reason};
use crate::decide::facts::Observed;
use crate::decide::names::{GPU_RESOURCE, NVIDIA_GPU_DRIVER, SHARED_RESOURCE};
use crate::decide::plan::Plan;
use crate::decide::text::name_list;

use super::conditions::Assessment;
use super::nodes::NodeSummary;

/// `GpusSchedulable`.
pub(super) fn gpus_assessment(
    s: &NodeSummary,
    node_count: usize,
    selector: &str,
    resource: &str,
) -> Assessment {
    if node_count == 0 {
        return Assessment::failed(
            Reason::NoNodes,
            format!(
                "the selector {selector} matches no nodes: the pool is scaled to zero, or the selector names a label the nodes lack"
            ),
        );
    }
    if !s.failing.is_empty() {
        return failing_assessment(s, node_count);
    }
    if !s.waiting.is_empty() {
        return waiting_assessment(s);
    }
    if s.in_service == 0 {
        return Assessment::failed(
            Reason::AllNodesCordoned,
            format!("all {node_count} nodes are cordoned or being deleted"),
        );
    }
    Assessment::ok(
        Reason::GpusSchedulable,
        format!(
            "{} nodes with {} allocatable {resource}{}",
            s.serving.len(),
            s.gpus_allocatable,
            if s.gpus_expected > 0 {
                format!(" ({} expected)", s.gpus_expected)
            } else {
                String::new()
            }
        ),
    )
}

/// Nodes that cannot run GPU work for longer than the grace period.
fn failing_assessment(s: &NodeSummary, node_count: usize) -> Assessment {
    let all_not_ready = s.failing.iter().all(|(_, r)| *r == Reason::NotReady);
    let listed: Vec<String> = s
        .failing
        .iter()
        .map(|(n, r)| format!("{n} ({r})"))
        .collect();
    let reason = if all_not_ready {
        Reason::NodesNotReady
    } else {
        Reason::GpusMissing
    };
    Assessment::failed(
        reason,
        format!(
            "{} of {node_count} nodes cannot run GPU work: {}; see status.problemNodes",
            s.failing.len(),
            name_list(&listed, 10)
        ),
    )
}

/// Nodes within their grace period: progress.
fn waiting_assessment(s: &NodeSummary) -> Assessment {
    let listed: Vec<String> = s
        .waiting
        .iter()
        .map(|(n, r)| format!("{n} ({})", waiting_word(*r)))
        .collect();
    let names = name_list(&listed, 10);
    Assessment::progressing(
        Reason::WaitingForGpus,
        format!(
            "{} nodes joined, rebooted or restarted their plugin within the grace period and cannot run GPU work yet: {names}",
            s.waiting.len()
        ),
        format!("waiting for GPUs on {names}"),
    )
}

/// `GpusHealthy`: no node reports a GPU fault and no plugin marks a GPU unhealthy.
pub(super) fn health_assessment(s: &NodeSummary) -> Assessment {
    if !s.faulty.is_empty() {
        let listed: Vec<String> = s
            .faulty
            .iter()
            .map(|(n, types)| format!("{n} ({})", types.join(", ")))
            .collect();
        return Assessment::failed(
            Reason::GpuFaultsReported,
            format!(
                "{} nodes report GPU faults: {}; see status.problemNodes, then drain the node and repair or replace it (kubectl describe node shows the condition)",
                s.faulty.len(),
                name_list(&listed, 10)
            ),
        );
    }
    if !s.tainted.is_empty() {
        return Assessment::failed(
            Reason::DeviceTaints,
            format!(
                "NVIDIA's GPU DRA driver taints GPUs on {} nodes (its health checks found XID errors or lost GPUs): {}; see status.problemNodes and the driver's log, then drain and repair the node",
                s.tainted.len(),
                name_list(&s.tainted, 10)
            ),
        );
    }
    if !s.unhealthy.is_empty() {
        return Assessment::failed(
            Reason::UnhealthyGpus,
            format!(
                "the device plugin marks GPUs unhealthy on {} nodes: {}; see status.problemNodes and the plugin pod's log",
                s.unhealthy.len(),
                name_list(&s.unhealthy, 10)
            ),
        );
    }
    Assessment::ok(
        Reason::GpusHealthy,
        format!("no GPU faults reported on {} nodes", s.in_service),
    )
}

/// `status.capacity`: what the nodes should have, in which resource.
pub(super) fn capacity_status(o: &Observed, plan: &Plan, s: &NodeSummary) -> CapacityStatus {
    let sharing = o.pool.spec.sharing.as_ref().map(|x| &x.time_slicing);
    CapacityStatus {
        resource: counted_resource(o, plan),
        expected: s.gpus_expected,
        physical_gpus: (s.physical_expected != s.gpus_expected).then_some(s.physical_expected),
        replicas: sharing.map(|t| t.replicas),
        unknown_sizes: s.unknown_sizes.iter().take(10).cloned().collect(),
        mig_resources: s
            .mig_resources
            .iter()
            .map(|(name, (capacity, allocatable))| MigResource {
                name: name.clone(),
                capacity: *capacity,
                allocatable: *allocatable,
            })
            .collect(),
        dra: dra_capacity(o, s),
    }
}

/// `status.capacity.dra`, when the DRA driver serves any of the pool's nodes.
fn dra_capacity(o: &Observed, s: &NodeSummary) -> Option<DraCapacity> {
    let d = &s.dra;
    (d.nodes > 0).then(|| DraCapacity {
        driver: NVIDIA_GPU_DRIVER.to_string(),
        device_classes: o.device_classes.clone(),
        nodes: d.nodes,
        gpus: d.gpus,
        usable: d.usable,
        gpus_per_node: d
            .per_node
            .iter()
            .map(|(gpus, nodes)| GpusPerNode {
                gpus: *gpus,
                nodes: *nodes,
            })
            .collect(),
        products: d
            .products
            .iter()
            .map(|(name, nodes)| ProductCount {
                name: name.clone(),
                nodes: *nodes,
            })
            .collect(),
        mig_devices: d
            .mig
            .iter()
            .map(|(name, (capacity, allocatable))| MigResource {
                name: name.clone(),
                capacity: *capacity,
                allocatable: *allocatable,
            })
            .collect(),
    })
}

/// The resource most of the pool's nodes are counted in (nodes whose platform runs the plugin
/// count plain `nvidia.com/gpu`).
pub(super) fn counted_resource(o: &Observed, plan: &Plan) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, e) in &plan.plugin.expected {
        let e = plan.dra.served.get(node).map_or(e, |d| &d.expected);
        *counts.entry(e.resource.as_str()).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(r, _)| r.to_string())
        .unwrap_or_else(|| {
            if o.pool
                .spec
                .sharing
                .as_ref()
                .is_some_and(|x| x.time_slicing.rename_by_default)
            {
                SHARED_RESOURCE.to_string()
            } else {
                GPU_RESOURCE.to_string()
            }
        })
}

fn waiting_word(reason: Reason) -> &'static str {
    if reason == Reason::NotReady {
        "NotReady"
    } else {
        "no GPUs yet"
    }
}

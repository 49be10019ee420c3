//! A round of node writes for one pool: as many as the rate limit allows now, each made from
//! the cached node where the cache can be trusted for it (see `node_writes`), and the hand-overs
//! the cache cannot vouch for checked with one consistent list for the whole batch rather than
//! one list a node.

use std::collections::HashMap;

use crate::decide::applied::FailedWrite;
use crate::decide::facts::PodRole;
use crate::decide::plan::NodeUpdate;

use super::context::Context;
use super::node_writes::{CachedNode, NodeEdit, UpdateEdit, Written};

/// When a pool whose node write found the node still occupied looks again at the latest: the
/// occupant's deletion event (a pod, a DaemonSet) wakes it first; this only bounds a missed one,
/// so a hand-over never polls.
const OCCUPIED_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// How many node writes one reconcile makes at most; the rest follow at once in the next one, so
/// a big scale-up does not hold a pool's status back.
pub const MAX_NODE_WRITES: usize = 100;

/// What a round of node writes did.
pub(super) struct NodeWrites {
    /// The updates that changed a node.
    pub changed: Vec<NodeUpdate>,
    /// When to come back for the rest, if any are left.
    pub due: Option<std::time::Duration>,
    pub failed: Vec<FailedWrite>,
}

/// Node writes, as many as the rate limit allows now (at most a bounded batch): a reconcile never
/// waits for the limiter, so a pool's DaemonSet is never held back behind other pools' node
/// writes.
pub(super) async fn write_nodes(ctx: &Context, pool: &str, updates: &[NodeUpdate]) -> NodeWrites {
    let nodes = &ctx.node_writer;
    let (allowed, due) = nodes.take(pool, updates.len(), MAX_NODE_WRITES);
    let mut results: Vec<(&NodeUpdate, Result<Written, kube::Error>)> = Vec::new();
    let batch: Vec<&NodeUpdate> = updates.iter().take(allowed).collect();
    let cached = cached_nodes(ctx, &batch).await;
    for group in batch.chunks(8) {
        let written = futures::future::join_all(group.iter().map(|u| async {
            nodes
                .write(&u.node, &UpdateEdit(u), cached.get(&u.node))
                .await
        }))
        .await;
        results.extend(group.iter().copied().zip(written));
    }
    let mut out = NodeWrites {
        changed: Vec::new(),
        due,
        failed: Vec::new(),
    };
    // Writes that found nothing to do (occupied, gone, already so) made no change: their slots
    // go back. A refused write (an error, or a patch refused as stale) did reach the API server
    // and keeps its slot.
    let not_written = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(w) if !matches!(w, Written::Changed | Written::Stale)))
        .count();
    nodes.refund(not_written);
    for (update, result) in results {
        if let Some(label) = &update.label {
            tracing::debug!(
                node = %update.node,
                from = ?label.from,
                to = ?label.to,
                result = ?result.as_ref().map_err(|e| e.to_string()),
                "device-plugin label write"
            );
        }
        match result {
            Ok(Written::Changed) => out.changed.push(update.clone()),
            // The pod's or DaemonSet's watch event wakes the pool too; this is the fallback.
            Ok(Written::Occupied) => {
                out.due = Some(out.due.map_or(OCCUPIED_RETRY, |d| d.min(OCCUPIED_RETRY)));
            }
            Ok(Written::Stale) => {
                out.due = Some(out.due.map_or(STALE_RETRY, |d| d.min(STALE_RETRY)));
            }
            Ok(_) => {}
            Err(e) => out.failed.push(failed(format!("node {}", update.node), &e)),
        }
    }
    out
}

/// When a pool whose write from the cache was refused as stale writes again: by then the watch
/// has brought the newer node.
const STALE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// Hand-overs to nodes the cache does not vouch for, from which on one consistent list of
/// plugin pods is cheaper than reading each node and listing the pods on it.
const CENSUS_FROM: usize = 8;

/// The cached view of each node of the batch. Where at least `CENSUS_FROM` of them would be
/// handed to a plugin or the DRA driver but the cache cannot vouch for them (nodes listed at
/// start, whose past the watch did not see), one list of every plugin pod vouches for every node
/// it shows free first; if that list fails, those writes read their nodes as before.
async fn cached_nodes(ctx: &Context, batch: &[&NodeUpdate]) -> HashMap<String, CachedNode> {
    let unvouched = {
        let nodes = ctx.nodes();
        batch
            .iter()
            .filter(|u| {
                nodes.get(&u.node).is_some_and(|facts| {
                    let edit = UpdateEdit(u);
                    (edit.hands_to(&facts.labels).is_some() || edit.gives_to_dra(&facts.labels))
                        && nodes.hint(&u.node).is_some_and(|h| !h.vouched)
                })
            })
            .count()
    };
    if unvouched >= CENSUS_FROM && ctx.pods().is_current() {
        match ctx.node_writer.plugin_pod_nodes().await {
            Ok(occupied) => {
                let vouched = ctx.nodes_mut().vouch_unoccupied(&occupied);
                tracing::debug!(vouched, occupied = occupied.len(), "plugin pods listed");
            }
            Err(e) => tracing::debug!(error = %e, "listing plugin pods failed"),
        }
    }
    // The same lock order as `observe` (pods, then nodes): a waiting writer blocks new readers.
    let pods = ctx.pods();
    let nodes = ctx.nodes();
    let current = pods.is_current();
    batch
        .iter()
        .filter_map(|u| {
            let facts = nodes.get(&u.node)?.clone();
            let hint = nodes.hint(&u.node)?.clone();
            let plugin_pod = !current || pods.on_node(&u.node).any(|p| p.role == PodRole::Plugin);
            Some((
                u.node.clone(),
                CachedNode {
                    facts,
                    hint,
                    plugin_pod,
                },
            ))
        })
        .collect()
}

/// A write that failed, as the report shows it.
pub(super) fn failed(target: String, error: &kube::Error) -> FailedWrite {
    let (code, message) = match error {
        kube::Error::Api(status) => (Some(status.code), status.message.clone()),
        other => (None, other.to_string()),
    };
    FailedWrite {
        target,
        code,
        message,
        attempts: 1,
    }
}

//! `observe`: everything one reconcile reads, copied out of the watched caches. No API calls, no
//! decisions.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

use crate::api::GpuPool;
use crate::decide::Observed;
use crate::decide::claims::PoolRef;

use super::context::Context;

pub fn observe(ctx: &Context, pool: Arc<GpuPool>) -> Observed {
    let pools = ctx.pools.state();
    let nodes = ctx.nodes().selected(&pool.spec.node_selector);
    let plugin_daemonsets = ctx
        .daemonsets()
        .values()
        .filter(|ds| ds.plugin_pod.is_some() || ds.pool_owner.is_some())
        .cloned()
        .collect();
    Observed {
        other_pools: pools
            .iter()
            .filter(|p| {
                p.metadata.uid != pool.metadata.uid && p.metadata.deletion_timestamp.is_none()
            })
            .map(|p| PoolRef::of(p))
            .collect(),
        pool_uids: pools
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect(),
        pool,
        nodes,
        plugin_daemonsets,
        now: Timestamp::now(),
    }
}

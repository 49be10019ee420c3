//! `observe`: everything one reconcile reads, copied out of the watched caches. No API calls, no
//! decisions.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::GpuPool;
use crate::decide::Observed;
use crate::decide::claims::PoolRef;
use crate::decide::daemonset::pool_key;
use crate::decide::placement::DEVICE_PLUGIN_LABEL;

use super::context::Context;

pub fn observe(ctx: &Context, pool: Arc<GpuPool>) -> Observed {
    let key = pool_key(&pool.name_any());
    let (nodes, strays) = {
        let index = ctx.nodes();
        let nodes = index.selected(&pool.spec.node_selector);
        let selected: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let strays = index
            .with_label(DEVICE_PLUGIN_LABEL, &key)
            .into_iter()
            .filter(|n| !selected.contains(n.name.as_str()))
            .collect();
        (nodes, strays)
    };
    let pods = {
        let index = ctx.pods();
        let mut pods: BTreeMap<String, _> = BTreeMap::new();
        for pod in nodes
            .iter()
            .flat_map(|n| index.on_node(&n.name))
            .chain(index.of_pool(&key))
        {
            pods.insert(pod.id.to_string(), pod.clone());
        }
        pods.into_values().collect()
    };
    let dra_nodes = {
        let dra = ctx.dra();
        nodes
            .iter()
            .filter(|n| dra.is_dra_node(&n.name))
            .map(|n| n.name.clone())
            .collect()
    };
    let (plugin_daemonsets, owners) = {
        let index = ctx.daemonsets();
        let mut plugins: Vec<_> = index
            .values()
            .filter(|ds| ds.plugin_pod.is_some())
            .cloned()
            .collect();
        // Deleted foreign plugins whose pods may still run (read under the index's lock).
        plugins.extend(ctx.tombstones.all());
        let owners: HashSet<String> = index
            .values()
            .filter(|ds| !ds.deleting)
            .filter_map(|ds| ds.pool_owner.as_ref().map(|o| o.uid.clone()))
            .collect();
        (plugins, owners)
    };
    let pools = ctx.pools.state();
    Observed {
        other_pools: pools
            .iter()
            .filter(|p| p.metadata.uid != pool.metadata.uid)
            .map(|p| {
                PoolRef::of(
                    p,
                    p.metadata.uid.as_ref().is_some_and(|u| owners.contains(u)),
                )
            })
            .collect(),
        pool_uids: pools
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect(),
        rejection: ctx.rejection(&pool.name_any()),
        plugin_configs: ctx
            .config_maps()
            .values()
            .filter(|c| c.pool_key.as_deref() == Some(key.as_str()))
            .cloned()
            .collect(),
        problem_clocks: ctx.problem_clocks(&pool.name_any()),
        pool,
        nodes,
        strays,
        plugin_daemonsets,
        pods,
        dra_nodes,
        now: Timestamp::now(),
    }
}

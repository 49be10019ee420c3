//! `observe`: everything one reconcile reads, copied out of the watched caches. No API calls, no
//! decisions.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::GpuPool;
use crate::decide::Observed;
use crate::decide::facts::{DaemonSetFacts, NodeFacts, ObjectId, PodFacts, PoolRef};
use crate::decide::names::{DEVICE_PLUGIN_LABEL, DRA_LABEL, MANAGED_BY, pool_key};

use super::context::Context;

pub fn observe(ctx: &Context, pool: Arc<GpuPool>) -> Observed {
    let key = pool_key(&pool.name_any());
    let (nodes, strays) = pool_nodes(ctx, &pool, &key);
    let pods = pods_of(ctx, &nodes, &key);
    let (dra, dra_api, device_classes) = {
        let index = ctx.dra();
        let dra = nodes
            .iter()
            .chain(&strays)
            .filter_map(|n| Some((n.name.clone(), index.node(&n.name)?)))
            .collect();
        (dra, !index.is_unsupported(), index.gpu_classes())
    };
    let (plugin_daemonsets, owners) = plugin_daemonsets(ctx);
    let pools = ctx.pools.state();
    Observed {
        other_pools: pools
            .iter()
            .filter(|p| p.metadata.uid != pool.metadata.uid)
            .map(|p| {
                let serving = p.metadata.uid.as_ref().is_some_and(|u| owners.contains(u));
                PoolRef::of(p, serving)
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
        dra,
        dra_api,
        device_classes,
        gpu_busy: Default::default(),
        now: Timestamp::now(),
        pods_by_node: Default::default(),
    }
}

/// The nodes the pool selects, and those it no longer selects but still carry its plugin label
/// or were its members at its last reconcile.
fn pool_nodes(
    ctx: &Context,
    pool: &GpuPool,
    key: &str,
) -> (Vec<Arc<NodeFacts>>, Vec<Arc<NodeFacts>>) {
    let index = ctx.nodes();
    let nodes = index.selected(&pool.spec.node_selector);
    let selected: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let mut strays: BTreeMap<String, Arc<NodeFacts>> = index
        .with_label(DEVICE_PLUGIN_LABEL, key)
        .into_iter()
        .chain(index.with_label(DRA_LABEL, key))
        .filter(|n| !selected.contains(n.name.as_str()))
        .map(|n| (n.name.clone(), n))
        .collect();
    // Nodes that were members at the last reconcile and left since (their gate taint is the
    // pool's to lift).
    for name in ctx.members.of(&pool.name_any()) {
        if !selected.contains(name.as_str())
            && let Some(node) = index.get(&name)
        {
            strays.entry(name).or_insert_with(|| node.clone());
        }
    }
    (nodes, strays.into_values().collect())
}

/// gpupool's pods on the pool's nodes and the pool's own pods wherever they are, once each. A
/// pod bound to a node that no longer exists is left out: it runs nothing and serves no node,
/// and it lingers until the pod garbage collector's 40 s quarantine ends (a deleted pool must not
/// wait for it).
fn pods_of(ctx: &Context, nodes: &[Arc<NodeFacts>], key: &str) -> Vec<Arc<PodFacts>> {
    let index = ctx.pods();
    let known = ctx.nodes();
    let drivers = ctx.driver_pods();
    let mut pods: BTreeMap<&ObjectId, &Arc<PodFacts>> = BTreeMap::new();
    for pod in nodes.iter().flat_map(|n| index.on_node(&n.name)).chain(
        index
            .of_pool(key)
            .filter(|p| p.node.as_ref().is_none_or(|n| known.get(n).is_some())),
    ) {
        pods.insert(&pod.id, pod);
    }
    for pod in nodes.iter().flat_map(|n| drivers.on_node(&n.name)) {
        pods.insert(&pod.id, pod);
    }
    pods.into_values().cloned().collect()
}

/// Every device plugin DaemonSet (and the tombstones of deleted foreign ones, read under the
/// index's lock), and the uids of the pools that own a live DaemonSet.
fn plugin_daemonsets(ctx: &Context) -> (Vec<Arc<DaemonSetFacts>>, HashSet<String>) {
    let index = ctx.daemonsets();
    let mut plugins: Vec<_> = index
        .values()
        .filter(|ds| ds.plugin_pod.is_some())
        .cloned()
        .collect();
    plugins.extend(ctx.tombstones.all());
    let owners = index
        .values()
        .filter(|ds| !ds.deleting)
        .filter_map(|ds| ds.pool_owner.as_ref().map(|o| o.uid.clone()))
        .collect();
    (plugins, owners)
}

/// Which of `nodes` run a pod that holds a GPU (a container asking for an `nvidia.com/*`
/// resource, not finished, not gpupool's own): asked of the API server one node at a time, for
/// the few nodes a rollout's next step chooses between. A node whose pods cannot be listed
/// counts as busy (it is then replaced last, not first).
pub async fn gpu_busy(client: &kube::Client, nodes: &[String]) -> BTreeSet<String> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams};
    let pods: Api<Pod> = Api::all(client.clone());
    let mut busy = BTreeSet::new();
    for node in nodes {
        let params = ListParams::default().fields(&format!(
            "spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed"
        ));
        let holds_gpu = match pods.list(&params).await {
            Ok(list) => list.items.iter().any(|pod| {
                let ours = pod.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
                !ours
                    && pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
                        c.resources.iter().any(|r| {
                            r.limits
                                .iter()
                                .chain(&r.requests)
                                .flatten()
                                .any(|(name, _)| name.starts_with("nvidia.com/"))
                        })
                    })
            }),
            Err(_) => true,
        };
        if holds_gpu {
            busy.insert(node.clone());
        }
    }
    busy
}

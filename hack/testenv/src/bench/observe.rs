//! What the benchmark sees of the cluster: the latest state of every GpuPool, the first sight of
//! every DaemonSet and of every rollout state, each from a watch and stamped with the time it
//! arrived; and, for the rollout phase, every node's allocatable GPUs as a Node watch delivers
//! them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;

use super::PLUGIN_NAMESPACE;

/// The GpuPool API, used as plain JSON so that this crate does not depend on gpupool.
pub(super) fn gpupool_resource() -> ApiResource {
    ApiResource {
        group: "gpupool.io".into(),
        version: "v1alpha1".into(),
        api_version: "gpupool.io/v1alpha1".into(),
        kind: "GpuPool".into(),
        plural: "gpupools".into(),
    }
}

/// What a pool's status must say, from the benchmark's own book-keeping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Expected {
    pub nodes: i64,
    pub allocatable: i64,
}

/// The fields of a pool's status the benchmark checks.
#[derive(Debug, Clone, Default)]
pub(super) struct Seen {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub nodes: Option<i64>,
    pub allocatable: Option<i64>,
    pub plugin_desired: Option<i64>,
    pub plugin_ready: Option<i64>,
    /// `capacity.dra`: nodes and GPUs counted from ResourceSlices.
    pub dra_nodes: Option<i64>,
    pub dra_gpus: Option<i64>,
    /// The `Ready` condition is True.
    pub ready: bool,
    /// `status.devicePlugin.rollout`: state, nodes updated and left, target image, halted nodes.
    pub rollout_state: Option<String>,
    pub rollout_updated: Option<i64>,
    pub rollout_left: Option<i64>,
    pub rollout_target_image: Option<String>,
    pub rollout_halted: Vec<String>,
}

impl Seen {
    fn of(obj: &DynamicObject) -> Seen {
        let status = obj.data.get("status");
        let int = |pointer: &str| status?.pointer(pointer)?.as_i64();
        let text = |pointer: &str| Some(status?.pointer(pointer)?.as_str()?.to_owned());
        Seen {
            rollout_state: text("/devicePlugin/rollout/state"),
            rollout_updated: int("/devicePlugin/rollout/updated"),
            rollout_left: int("/devicePlugin/rollout/left"),
            rollout_target_image: text("/devicePlugin/rollout/targetImage"),
            rollout_halted: status
                .and_then(|s| s.pointer("/devicePlugin/rollout/halted")?.as_array())
                .into_iter()
                .flatten()
                .filter_map(|h| Some(h.get("name")?.as_str()?.to_owned()))
                .collect(),
            generation: obj.metadata.generation,
            observed_generation: int("/observedGeneration"),
            nodes: int("/nodes"),
            allocatable: int("/gpusAllocatable"),
            plugin_desired: int("/devicePlugin/desired"),
            plugin_ready: int("/devicePlugin/ready"),
            dra_nodes: int("/capacity/dra/nodes"),
            dra_gpus: int("/capacity/dra/gpus"),
            ready: status
                .and_then(|s| s.get("conditions")?.as_array())
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        }
    }

    /// The status describes the current generation and has the expected counts.
    pub fn current(&self, want: &Expected) -> bool {
        self.observed_generation.is_some()
            && self.observed_generation == self.generation
            && self.nodes == Some(want.nodes)
            && self.allocatable == Some(want.allocatable)
    }

    /// Current and Ready: nothing left in flight for this pool.
    pub fn settled(&self, want: &Expected) -> bool {
        self.current(want) && self.ready
    }

    /// The generation the status describes, when it is the pool's current one.
    fn current_generation(&self) -> Option<i64> {
        self.observed_generation
            .filter(|g| Some(*g) == self.generation)
    }

    /// Every plugin pod the pool wants is ready.
    pub fn plugins_ready(&self, want: &Expected) -> bool {
        self.plugin_ready == Some(want.nodes) && self.plugin_desired == Some(want.nodes)
    }
}

/// A pool, one of its generations and a rollout state.
type StateKey = (String, i64, String);

/// GpuPools (latest state, and the first sight of each rollout state per generation) and
/// DaemonSets (first sight) as the watches report them.
#[derive(Default)]
pub(super) struct Watched {
    pools: Mutex<HashMap<String, (Seen, Instant)>>,
    daemonsets: Mutex<HashMap<String, Instant>>,
    rollout_states: Mutex<HashMap<StateKey, (Seen, Instant)>>,
}

impl Watched {
    /// Starts both watches; they run until the runtime ends.
    pub fn start(client: &kube::Client) -> Arc<Watched> {
        let watched = Arc::new(Watched::default());
        let pools: Api<DynamicObject> = Api::all_with(client.clone(), &gpupool_resource());
        let seen = watched.clone();
        tokio::spawn(for_each_applied(pools, move |pool| {
            if let Some(name) = pool.metadata.name.clone() {
                let (state, now) = (Seen::of(&pool), Instant::now());
                if let (Some(generation), Some(rollout)) =
                    (state.current_generation(), state.rollout_state.clone())
                {
                    lock(&seen.rollout_states)
                        .entry((name.clone(), generation, rollout))
                        .or_insert_with(|| (state.clone(), now));
                }
                lock(&seen.pools).insert(name, (state, now));
            }
        }));
        let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), PLUGIN_NAMESPACE);
        let seen = watched.clone();
        tokio::spawn(for_each_applied(daemonsets, move |ds| {
            if let Some(name) = ds.metadata.name {
                lock(&seen.daemonsets).entry(name).or_insert(Instant::now());
            }
        }));
        watched
    }

    /// The pool's latest state and when it arrived.
    pub fn pool(&self, name: &str) -> Option<(Seen, Instant)> {
        lock(&self.pools).get(name).cloned()
    }

    /// The pool's status when it first reported the rollout state `state` for `generation`,
    /// and when that arrived.
    pub fn rollout_state(
        &self,
        pool: &str,
        generation: i64,
        state: &str,
    ) -> Option<(Seen, Instant)> {
        lock(&self.rollout_states)
            .get(&(pool.to_owned(), generation, state.to_owned()))
            .cloned()
    }

    /// When the DaemonSet was first seen.
    pub fn daemonset(&self, name: &str) -> Option<Instant> {
        lock(&self.daemonsets).get(name).copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn for_each_applied<K>(api: Api<K>, mut f: impl FnMut(K))
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        if let Ok(object) = event {
            f(object);
        }
    }
}

/// Every bench node's allocatable `nvidia.com/gpu` as one Node watch delivers it, in order; per
/// pool (node j is in pool j mod P) how many nodes are without GPUs now, the most at once since
/// [`NodeGpus::reset`], and which nodes lost them since.
pub(super) struct NodeGpus {
    inner: Arc<Mutex<GpuBook>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct GpuBook {
    pools: usize,
    listed: bool,
    /// Node -> allocatable GPUs.
    gpus: HashMap<String, u32>,
    /// Per pool: nodes without GPUs now, and the most at once since the reset.
    without: Vec<usize>,
    worst: Vec<usize>,
    /// Nodes that lost their GPUs since the reset.
    lost: HashSet<String>,
    /// Node update events (not the initial list's) since the reset, of any node.
    updates: u64,
}

/// What [`NodeGpus`] saw since its reset.
#[derive(Debug, Clone, Default)]
pub(super) struct GpuSnapshot {
    /// Per pool: the most nodes without GPUs at once, and without them now.
    pub worst: Vec<usize>,
    pub without: Vec<usize>,
    /// Per pool: nodes that lost their GPUs at least once.
    pub lost: Vec<usize>,
}

impl GpuBook {
    fn pool(&self, node: &str) -> Option<usize> {
        let j: usize = node.strip_prefix("bench-node-")?.parse().ok()?;
        Some(j % self.pools)
    }

    fn saw(&mut self, node: String, allocatable: u32) {
        let Some(pool) = self.pool(&node) else {
            return;
        };
        let was_without = self.gpus.get(&node).is_some_and(|g| *g == 0);
        let is_without = allocatable == 0;
        if is_without && !was_without {
            self.without[pool] += 1;
            self.lost.insert(node.clone());
        } else if was_without && !is_without {
            self.without[pool] -= 1;
        }
        self.worst[pool] = self.worst[pool].max(self.without[pool]);
        self.gpus.insert(node, allocatable);
    }
}

impl NodeGpus {
    /// Starts the watch over every node (bench nodes counted, others ignored).
    pub fn start(client: &kube::Client, pools: usize) -> NodeGpus {
        let inner = Arc::new(Mutex::new(GpuBook {
            pools,
            without: vec![0; pools],
            worst: vec![0; pools],
            ..GpuBook::default()
        }));
        let book = inner.clone();
        let api: Api<NodeGpuObject> = Api::all(client.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let mut book = lock(&book);
                if let Ok(watcher::Event::Apply(_)) = &event {
                    book.updates += 1;
                }
                match event {
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                        if let Some(name) = n.metadata.name {
                            book.saw(name, n.allocatable);
                        }
                    }
                    Ok(watcher::Event::InitDone) => book.listed = true,
                    Ok(_) | Err(_) => {}
                }
            }
        });
        NodeGpus { inner, task }
    }

    /// Whether the first list is complete and `nodes` nodes are seen, all with GPUs.
    pub fn all_with_gpus(&self, nodes: usize) -> bool {
        let book = lock(&self.inner);
        book.listed && book.gpus.len() == nodes && book.without.iter().all(|w| *w == 0)
    }

    /// Starts counting anew from what the nodes show now.
    pub fn reset(&self) {
        let mut book = lock(&self.inner);
        book.worst = book.without.clone();
        book.lost.clear();
        book.updates = 0;
    }

    /// Whether the watch's first list is complete.
    pub fn listed(&self) -> bool {
        lock(&self.inner).listed
    }

    /// Node update events received since the reset.
    pub fn updates(&self) -> u64 {
        lock(&self.inner).updates
    }

    pub fn snapshot(&self) -> GpuSnapshot {
        let book = lock(&self.inner);
        let mut lost = vec![0; book.pools];
        for node in &book.lost {
            if let Some(pool) = book.pool(node) {
                lost[pool] += 1;
            }
        }
        GpuSnapshot {
            worst: book.worst.clone(),
            without: book.without.clone(),
            lost,
        }
    }
}

impl Drop for NodeGpus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Node decoded down to its name and allocatable `nvidia.com/gpu` (0 when absent): 5,000
/// heartbeating nodes cost this process little.
#[derive(Clone, Debug, Default)]
struct NodeGpuObject {
    metadata: ObjectMeta,
    allocatable: u32,
}

slim_core_v1!(NodeGpuObject, "Node", "nodes", kube::core::ClusterResourceScope, field metadata);

impl<'de> Deserialize<'de> for NodeGpuObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: RawMeta,
            status: Option<RawStatus>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct RawMeta {
            name: Option<String>,
            resource_version: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawStatus {
            allocatable: Option<BTreeMap<String, String>>,
        }
        let raw = Raw::deserialize(d)?;
        let allocatable = raw
            .status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.get(crate::nodes::GPU_RESOURCE)?.parse().ok())
            .unwrap_or(0);
        Ok(NodeGpuObject {
            metadata: ObjectMeta {
                name: raw.metadata.name,
                resource_version: raw.metadata.resource_version,
                ..ObjectMeta::default()
            },
            allocatable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_without_gpus_are_counted_per_pool_in_event_order() {
        let mut book = GpuBook {
            pools: 2,
            without: vec![0; 2],
            worst: vec![0; 2],
            ..GpuBook::default()
        };
        for j in 0..6 {
            book.saw(format!("bench-node-{j}"), 2);
        }
        book.saw("other".into(), 0);
        assert_eq!(book.without, [0, 0]);
        // Pool 0 (nodes 0, 2, 4): node 0 out, back, then node 2 out; pool 1: 1 and 3 at once.
        book.saw("bench-node-0".into(), 0);
        book.saw("bench-node-0".into(), 0);
        book.saw("bench-node-1".into(), 0);
        book.saw("bench-node-3".into(), 0);
        book.saw("bench-node-0".into(), 2);
        book.saw("bench-node-2".into(), 0);
        assert_eq!(book.without, [1, 2]);
        assert_eq!(book.worst, [1, 2]);
        assert_eq!(book.lost.len(), 4);
    }

    #[test]
    fn a_node_is_decoded_to_its_allocatable_gpus() {
        let node: NodeGpuObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "resourceVersion": "3", "managedFields": [{}]},
            "status": {"allocatable": {"cpu": "4", "nvidia.com/gpu": "8"}, "conditions": []},
        }))
        .unwrap();
        assert_eq!(
            (node.metadata.name.as_deref(), node.allocatable),
            (Some("n"), 8)
        );
        let none: NodeGpuObject =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(none.allocatable, 0);
    }
}

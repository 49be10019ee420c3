//! What the benchmark sees of the cluster: the latest state of every GpuPool and the first
//! sight of every DaemonSet, each from a watch and stamped with the time it arrived.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};

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
    /// The `Ready` condition is True.
    pub ready: bool,
}

impl Seen {
    fn of(obj: &DynamicObject) -> Seen {
        let status = obj.data.get("status");
        let int = |pointer: &str| status?.pointer(pointer)?.as_i64();
        Seen {
            generation: obj.metadata.generation,
            observed_generation: int("/observedGeneration"),
            nodes: int("/nodes"),
            allocatable: int("/gpusAllocatable"),
            plugin_desired: int("/devicePlugin/desired"),
            plugin_ready: int("/devicePlugin/ready"),
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

    /// Every plugin pod the pool wants is ready.
    pub fn plugins_ready(&self, want: &Expected) -> bool {
        self.plugin_ready == Some(want.nodes) && self.plugin_desired == Some(want.nodes)
    }
}

/// GpuPools (latest state) and DaemonSets (first sight) as the watches report them.
#[derive(Default)]
pub(super) struct Watched {
    pools: Mutex<HashMap<String, (Seen, Instant)>>,
    daemonsets: Mutex<HashMap<String, Instant>>,
}

impl Watched {
    /// Starts both watches; they run until the runtime ends.
    pub fn start(client: &kube::Client) -> Arc<Watched> {
        let watched = Arc::new(Watched::default());
        let pools: Api<DynamicObject> = Api::all_with(client.clone(), &gpupool_resource());
        let seen = watched.clone();
        tokio::spawn(for_each_applied(pools, move |pool| {
            if let Some(name) = pool.metadata.name.clone() {
                lock(&seen.pools).insert(name, (Seen::of(&pool), Instant::now()));
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

//! What the reconciles share: the API client, the cluster as the watches keep it, and the
//! per-pool bookkeeping that must be dropped when a pool goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::sync::watch;

use crate::api::GpuPool;
use crate::decide::Settings;
use crate::decide::applied::FailedWrite;
use crate::decide::facts::{ProblemClocks, Rejection};
use crate::index::{ConfigMapIndex, DaemonSetIndex, DraIndex, NodeIndex, PodIndex};
use crate::server::Health;
use crate::telemetry::Metrics;

use super::RunOptions;
use super::locking::lock;
use super::node_writes::NodeWriter;
use super::publisher::EventPublisher;
use super::sync::{Synced, WatchKind};
use super::tombstones::Tombstones;
use super::triggers::PoolMembers;

/// A failing pool's retry delays, and until when it waits.
struct Backoff {
    delays: ExponentialBackoff,
    until: Instant,
    generation: Option<i64>,
}

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub events: EventPublisher,
    /// Every pool is looked at at least this often, a safety net for missed events.
    pub resync: Duration,
    /// The watches stream their initial lists (`sendInitialEvents`) instead of paging.
    pub streaming_lists: bool,
    pub pools: Store<GpuPool>,
    pub nodes: RwLock<NodeIndex>,
    pub daemonsets: RwLock<DaemonSetIndex>,
    pub pods: RwLock<PodIndex>,
    pub config_maps: RwLock<ConfigMapIndex>,
    pub dra: RwLock<DraIndex>,
    /// The DRA driver's kubelet plugin pods, by node.
    pub driver_pods: RwLock<PodIndex>,
    /// Label selector of those pods.
    pub driver_pod_selector: String,
    pub node_writer: NodeWriter,
    pub members: PoolMembers,
    pub tombstones: Tombstones,
    /// Reconciles of other pools a reconcile asks for (see `PoolMembers::record`).
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<GpuPool>>,
    synced: watch::Sender<Synced>,
    health: Arc<Health>,
    /// When each node not yet serving GPUs was first seen in a pool: (pool, node) -> time.
    gpu_waits: Mutex<HashMap<(String, String), Instant>>,
    /// Retry delays of pools whose last reconcile failed, and when each may try again (for the
    /// generation that failed: a spec change goes at once).
    backoffs: Mutex<HashMap<String, Backoff>>,
    /// How many reconciles in a row each failing write of each pool has failed: pool -> target.
    failed_writes: Mutex<HashMap<String, HashMap<String, u32>>>,
    /// Each pool's last DaemonSet the API server refused.
    rejections: Mutex<HashMap<String, Rejection>>,
    /// When each problem node of each pool had its problem begin (see `ProblemClocks`).
    problem_clocks: Mutex<HashMap<String, Arc<ProblemClocks>>>,
    /// Held while a pool's bookkeeping is written or forgotten (see `keep`).
    keeping: Mutex<()>,
    /// The status this process last wrote for each pool, and the pool's resourceVersion it was
    /// written over (see `as_written`).
    written: Mutex<HashMap<String, (Option<String>, crate::api::GpuPoolStatus)>>,
}

impl Context {
    pub fn new(
        client: Client,
        streaming_lists: bool,
        options: &RunOptions,
        pools: Store<GpuPool>,
        wake: futures::channel::mpsc::UnboundedSender<ObjectRef<GpuPool>>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "gpupool-operator".into(),
                instance: options.instance.clone(),
            },
        );
        // The publishing task ends with the last Context (its sender dropped).
        let (events, publishing) = EventPublisher::new(recorder);
        tokio::spawn(publishing);
        Context {
            client: client.clone(),
            settings: options.settings.clone(),
            metrics: options.metrics.clone(),
            events,
            resync: options.resync,
            streaming_lists,
            pools,
            nodes: RwLock::default(),
            daemonsets: RwLock::default(),
            pods: RwLock::default(),
            config_maps: RwLock::default(),
            dra: RwLock::default(),
            driver_pods: RwLock::default(),
            driver_pod_selector: options.dra_driver_pods.clone(),
            node_writer: NodeWriter::new(
                client.clone(),
                options.node_writes_per_second,
                options.node_write_burst,
            ),
            members: PoolMembers::default(),
            tombstones: Tombstones::default(),
            wake,
            synced: watch::Sender::new(Synced::default()),
            health: options.health.clone(),
            gpu_waits: Mutex::default(),
            backoffs: Mutex::default(),
            failed_writes: Mutex::default(),
            rejections: Mutex::default(),
            problem_clocks: Mutex::default(),
            keeping: Mutex::default(),
            written: Mutex::default(),
        }
    }

    pub fn nodes(&self) -> std::sync::RwLockReadGuard<'_, NodeIndex> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, NodeIndex> {
        self.nodes.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn daemonsets(&self) -> std::sync::RwLockReadGuard<'_, DaemonSetIndex> {
        self.daemonsets.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn daemonsets_mut(&self) -> std::sync::RwLockWriteGuard<'_, DaemonSetIndex> {
        self.daemonsets.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pods(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pods_mut(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config_maps(&self) -> std::sync::RwLockReadGuard<'_, ConfigMapIndex> {
        self.config_maps.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config_maps_mut(&self) -> std::sync::RwLockWriteGuard<'_, ConfigMapIndex> {
        self.config_maps.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dra(&self) -> std::sync::RwLockReadGuard<'_, DraIndex> {
        self.dra.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn driver_pods(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.driver_pods.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn driver_pods_mut(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.driver_pods.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dra_mut(&self) -> std::sync::RwLockWriteGuard<'_, DraIndex> {
        self.dra.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Every watch has delivered a complete list.
    pub fn is_synced(&self) -> bool {
        self.synced.borrow().all()
    }

    /// Every watch has listed or was refused: events are changes from here on.
    pub fn is_settled(&self) -> bool {
        self.synced.borrow().settled()
    }

    /// Records that a watch delivered a complete list. After the first, each one is a re-list
    /// (its watch expired, e.g. 410 Gone after an API server restart): counted, and said with
    /// how many objects vanished meanwhile (they were dropped as deleted).
    pub fn listed(&self, kind: WatchKind, vanished: usize) {
        let mut again = false;
        let mut was_refused = false;
        self.synced.send_modify(|s| {
            was_refused = s.for_each_refused(|k| k == kind);
            again = s.listed(kind);
        });
        self.metrics.watch_listed(kind.as_str(), again);
        if again {
            tracing::info!(
                kind = kind.as_str(),
                vanished,
                "re-listed after the watch expired; what vanished meanwhile is dropped"
            );
        }
        if was_refused {
            tracing::info!(kind = kind.as_str(), "listed again after it was refused");
            self.wake_all();
        }
        let newly = !self
            .health
            .caches_synced
            .swap(self.is_synced(), std::sync::atomic::Ordering::AcqRel);
        if self.is_synced() && newly {
            tracing::info!("caches synced");
        }
    }

    /// Records a watch whose list the API server refused: the pools that depend on it report
    /// it (they are woken), the others go on.
    pub fn refused(&self, kind: WatchKind, unreadable: crate::decide::facts::Unreadable) {
        let mut news = false;
        self.synced.send_modify(|s| {
            news = !s.for_each_refused(|k| k == kind);
            s.failed(kind, unreadable.clone());
        });
        if news {
            tracing::warn!(kind = kind.as_str(), code = unreadable.code, message = %unreadable.message, "the API server refuses this watch's list; the pools that need it are Stalled until it lists");
            self.wake_all();
        }
        self.health
            .caches_synced
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Waits until every watch `pool` depends on has delivered a complete list (decisions on a
    /// half-filled cache would report nodes missing that are merely not listed yet), or one of
    /// them was refused: then what it cannot read.
    pub async fn caches_for(
        &self,
        pool: &GpuPool,
    ) -> Result<(), Vec<crate::decide::facts::Unreadable>> {
        let mut synced = self.synced.subscribe();
        loop {
            if let Some(result) = synced.borrow_and_update().for_pool(pool) {
                return result;
            }
            if synced.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Wakes every pool.
    pub fn wake_all(&self) {
        self.wake(
            self.pools
                .state()
                .iter()
                .map(|p| kube::ResourceExt::name_any(p.as_ref())),
        );
    }

    /// Asks for reconciles of these pools.
    pub fn wake(&self, pools: impl IntoIterator<Item = String>) {
        for pool in pools {
            // The receiver lives as long as the controller; after that nothing needs waking.
            let _ = self.wake.unbounded_send(ObjectRef::new(&pool));
        }
    }

    /// Runs `f`, bookkeeping for `pool` (metrics, clocks, backoff, members), unless the pool
    /// is gone: a reconcile that was in flight when its pool was deleted must not bring back
    /// what `forget_pool` dropped. The pool store loses a deleted pool before `forget_pool` runs,
    /// and both hold the same lock, so one of them always sees the other's result.
    pub fn keep<T>(&self, pool: &GpuPool, f: impl FnOnce() -> T) -> Option<T> {
        let _keeping = lock(&self.keeping);
        let live = self
            .pools
            .get(&ObjectRef::from_obj(pool))
            .is_some_and(|p| p.metadata.uid == pool.metadata.uid);
        live.then(f)
    }

    /// Drops everything kept for a pool that is gone.
    pub fn forget_pool(&self, pool: &str) {
        let _keeping = lock(&self.keeping);
        self.metrics.forget_pool(pool);
        self.node_writer.forget(pool);
        self.members.forget(pool);
        lock(&self.gpu_waits).retain(|(p, _), _| p != pool);
        lock(&self.backoffs).remove(pool);
        lock(&self.failed_writes).remove(pool);
        lock(&self.rejections).remove(pool);
        lock(&self.problem_clocks).remove(pool);
        lock(&self.written).remove(pool);
    }

    /// The status was written over `pool` (as the cache showed it).
    pub fn wrote_status(&self, pool: &GpuPool, status: &crate::api::GpuPoolStatus) {
        lock(&self.written).insert(
            pool.name_any(),
            (pool.metadata.resource_version.clone(), status.clone()),
        );
    }

    /// The pool with the status this process last wrote, while the cache still shows the pool as
    /// it was before that write (the write's watch event not in yet): a reconcile that follows
    /// its predecessor closely must not decide from the status before it (a rollout would
    /// forget the node it is replacing and call itself Complete, or replace a second one).
    pub fn as_written(&self, pool: Arc<GpuPool>) -> Arc<GpuPool> {
        let mut written = lock(&self.written);
        let name = pool.name_any();
        match written.get(&name) {
            Some((version, status)) if *version == pool.metadata.resource_version => {
                let mut newer = (*pool).clone();
                newer.status = Some(status.clone());
                Arc::new(newer)
            }
            Some(_) => {
                written.remove(&name);
                pool
            }
            None => pool,
        }
    }

    pub fn problem_clocks(&self, pool: &str) -> Option<Arc<ProblemClocks>> {
        lock(&self.problem_clocks).get(pool).cloned()
    }

    pub fn remember_problem_clocks(&self, pool: &str, clocks: ProblemClocks) {
        lock(&self.problem_clocks).insert(pool.to_string(), Arc::new(clocks));
    }

    /// Remembers (or forgets, with None) the pool's last refused DaemonSet.
    pub fn record_rejection(&self, pool: &str, rejection: Option<Rejection>) {
        let mut rejections = lock(&self.rejections);
        match rejection {
            Some(r) => rejections.insert(pool.to_string(), r),
            None => rejections.remove(pool),
        };
    }

    pub fn rejection(&self, pool: &str) -> Option<Rejection> {
        lock(&self.rejections).get(pool).cloned()
    }

    /// Feeds the time-to-GPUs histogram: a node first seen in the pool without schedulable GPUs
    /// starts a clock that stops when it serves. Nodes already serving when first seen are skipped.
    pub fn record_gpu_waits(&self, pool: &str, members: &[String], serving: &[String]) {
        let now = Instant::now();
        let mut waits = lock(&self.gpu_waits);
        for node in members {
            let key = (pool.to_string(), node.clone());
            if serving.binary_search(node).is_ok() {
                if let Some(since) = waits.remove(&key) {
                    self.metrics.node_got_gpus(now - since);
                }
            } else {
                waits.entry(key).or_insert(now);
            }
        }
        waits.retain(|(p, n), _| p != pool || members.binary_search(n).is_ok());
    }

    /// The next retry delay of a failing pool: exponential from 1 s to 5 min, with jitter so
    /// that pools failing together do not retry together. Until it is over, events do not
    /// reconcile the pool (see `backing_off`).
    pub fn back_off(&self, pool: &GpuPool) -> Duration {
        let name = pool.name_any();
        let mut backoffs = lock(&self.backoffs);
        let backoff = backoffs.entry(name).or_insert_with(|| Backoff {
            delays: ExponentialBuilder::new()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(300))
                .with_jitter()
                .without_max_times()
                .build(),
            until: Instant::now(),
            generation: None,
        });
        let delay = backoff.delays.next().unwrap_or(Duration::from_secs(300));
        backoff.until = Instant::now() + delay;
        backoff.generation = pool.metadata.generation;
        delay
    }

    /// How long a failing pool still waits before its next try, unless its spec changed or it
    /// is being deleted since it failed.
    pub fn backing_off(&self, pool: &GpuPool) -> Option<Duration> {
        if pool.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let backoffs = lock(&self.backoffs);
        let backoff = backoffs.get(&pool.name_any())?;
        let left = backoff.until.checked_duration_since(Instant::now())?;
        (backoff.generation == pool.metadata.generation && !left.is_zero()).then_some(left)
    }

    /// Counts each failed write's reconciles in a row (a write that no longer fails, or is no
    /// longer needed, starts over).
    pub fn count_failed_writes(&self, pool: &str, failed: &mut [FailedWrite]) {
        let mut all = lock(&self.failed_writes);
        let previous = all.remove(pool).unwrap_or_default();
        let mut now = HashMap::new();
        for f in failed.iter_mut() {
            f.attempts = previous.get(&f.target).copied().unwrap_or(0) + 1;
            now.insert(f.target.clone(), f.attempts);
        }
        if !now.is_empty() {
            all.insert(pool.to_string(), now);
        }
    }

    /// A successful reconcile starts the backoff over.
    pub fn reset_retry(&self, pool: &str) {
        lock(&self.backoffs).remove(pool);
    }
}

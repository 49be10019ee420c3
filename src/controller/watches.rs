//! The watches: each event updates what gpupool keeps of the cluster and turns into the pools to
//! reconcile. Nothing is reconciled for changes seen before every watch has listed once (every
//! pool is reconciled after that anyway).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceSlice};
use kube::api::ListParams;
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::GpuPool;
use crate::decide::facts::{ConfigMapFacts, DaemonSetFacts, NodeFacts, ObjectId, PodFacts};
use crate::decide::names::{CONFIG_COMPONENT, MANAGED_BY, NVIDIA_GPU_DRIVER, pool_key};
use crate::index::slim::{SlimNode, SlimPod};
use crate::index::{Change, GpuSlice, Keyed, PodIndex, Tracked, map_event};

use super::context::Context;
use super::sync::{WatchKind, refusal};
use super::triggers::{pools_for_daemonset, pools_for_node, pools_for_pod, pools_selecting};

type Triggers = Vec<ObjectRef<GpuPool>>;

fn refs(names: BTreeSet<String>) -> Triggers {
    names.iter().map(|n| ObjectRef::new(n)).collect()
}

/// How many objects an event found gone (a re-list's end reports those deleted meanwhile).
fn vanished<T>(changes: &[Change<T>]) -> usize {
    changes
        .iter()
        .filter(|c| matches!(c, Change::Deleted(_)))
        .count()
}

fn is_init_done<K>(event: &watcher::Event<K>) -> bool {
    matches!(event, watcher::Event::InitDone)
}

fn config(ctx: &Context) -> watcher::Config {
    let config = watcher::Config::default().any_semantic();
    if ctx.streaming_lists {
        config.streaming_lists()
    } else {
        config
    }
}

/// Turns each event of a watch into triggers with `step`. Watch errors are logged (the watch
/// retries with backoff by itself); a refused list is recorded, so the pools that need this
/// watch say so instead of waiting for it.
fn triggers_of<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    kind: WatchKind,
    namespace: Option<String>,
    ctx: Arc<Context>,
    mut step: impl FnMut(watcher::Event<K>) -> Triggers + Send,
) -> impl Stream<Item = Triggers> + Send {
    events.map(move |event| match event {
        Ok(event) => step(event),
        Err(e) => {
            match refusal(kind, namespace.as_deref(), &e) {
                Some(unreadable) => ctx.refused(kind, unreadable),
                None => warn!(error = %e, kind = kind.as_str(), "watch failed; retrying"),
            }
            Vec::new()
        }
    })
}

/// Node events: decoded slim (see `index::slim`), and only the facts gpupool decides on are
/// kept (the rest is dropped at once).
pub fn nodes(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let events = watcher(Api::<SlimNode>::all(client), config(&ctx)).default_backoff();
    triggers_of(events, WatchKind::Node, None, ctx.clone(), move |event| {
        let event = map_event(event, |mut n| {
            let version = n.0.metadata.resource_version.take();
            (NodeFacts::from_owned(n.0), version)
        });
        let done = is_init_done(&event);
        let changes = ctx.nodes_mut().apply_versioned(event);
        if done {
            ctx.listed(WatchKind::Node, vanished(&changes));
        }
        if !ctx.is_settled() || changes.is_empty() {
            return Vec::new();
        }
        let pools = ctx.pools.state();
        refs(
            changes
                .iter()
                .flat_map(|c| pools_for_node(c, &pools))
                .collect(),
        )
    })
}

/// DaemonSet events.
pub fn daemonsets(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let events = watcher(Api::<DaemonSet>::all(client), config(&ctx)).default_backoff();
    triggers_of(
        events,
        WatchKind::DaemonSet,
        None,
        ctx.clone(),
        move |event| {
            let event = map_event(event, |ds| DaemonSetFacts::from_daemonset(&ds));
            let done = is_init_done(&event);
            let changes = {
                // A deleted foreign plugin becomes a tombstone under the index's lock: a reconcile
                // reading the DaemonSets in between would see neither and take its nodes.
                let mut index = ctx.daemonsets_mut();
                let changes = index.apply(event);
                for change in &changes {
                    if let Change::Deleted(ds) = change
                        && ds.pool_owner.is_none()
                        && ds.plugin_pod.is_some()
                    {
                        ctx.tombstones.bury(ds.clone());
                    }
                }
                changes
            };
            if done {
                ctx.listed(WatchKind::DaemonSet, vanished(&changes));
            }
            if !ctx.is_settled() || changes.is_empty() {
                return Vec::new();
            }
            let pools = ctx.pools.state();
            refs(
                changes
                    .iter()
                    .flat_map(|c| pools_for_daemonset(c, &pools))
                    .collect(),
            )
        },
    )
}

/// Pod events: gpupool's own pods, wherever they run. A plugin pod going away can free a node
/// for another pool's plugin, so it reaches the pools selecting its node as well as its own.
pub fn pods(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    pod_watch(
        client,
        ctx,
        selector,
        WatchKind::Pod,
        Context::pods_mut,
        |p| PodFacts::from_pod(&p.0),
    )
}

/// A label-selected pod watch into one of the pod indexes, turned into the pools to look at:
/// each pod's own pool and the pools selecting its node.
fn pod_watch(
    client: Client,
    ctx: Arc<Context>,
    selector: String,
    kind: WatchKind,
    index: for<'a> fn(&'a Context) -> std::sync::RwLockWriteGuard<'a, PodIndex>,
    facts: fn(SlimPod) -> Option<PodFacts>,
) -> impl Stream<Item = Triggers> + Send {
    let events =
        watcher(Api::<SlimPod>::all(client), config(&ctx).labels(&selector)).default_backoff();
    triggers_of(events, kind, None, ctx.clone(), move |event| {
        let done = is_init_done(&event);
        let changes = match filter_event(event, facts) {
            Some(event) => index(&ctx).apply(event),
            None => Vec::new(),
        };
        if done {
            ctx.listed(kind, vanished(&changes));
        }
        if !ctx.is_settled() || changes.is_empty() {
            return Vec::new();
        }
        let pools = ctx.pools.state();
        let nodes = ctx.nodes();
        refs(
            changes
                .iter()
                .flat_map(|c| pools_for_pod(c, &pools, &nodes))
                .collect(),
        )
    })
}

/// gpupool's plugin ConfigMaps in the plugin namespace: one edited or deleted by someone else
/// is put back.
pub fn config_maps(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let (key, value) = CONFIG_COMPONENT;
    let api = Api::<ConfigMap>::namespaced(client, &ctx.settings.plugin_namespace);
    let events = watcher(api, config(&ctx).labels(&format!("{key}={value}"))).default_backoff();
    triggers_of(
        events,
        WatchKind::ConfigMap,
        Some(ctx.settings.plugin_namespace.clone()),
        ctx.clone(),
        move |event| {
            let event = map_event(event, |cm| ConfigMapFacts::from_config_map(&cm));
            let done = is_init_done(&event);
            let changes = ctx.config_maps_mut().apply(event);
            if done {
                ctx.listed(WatchKind::ConfigMap, vanished(&changes));
            }
            if !ctx.is_settled() || changes.is_empty() {
                return Vec::new();
            }
            let pools = ctx.pools.state();
            let keys: BTreeSet<String> = changes
                .iter()
                .flat_map(|c| {
                    let (old, new) = c.states();
                    [old, new]
                        .into_iter()
                        .flatten()
                        .filter_map(|cm| cm.pool_key.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            refs(
                pools
                    .iter()
                    .filter(|p| keys.contains(&pool_key(&p.name_any())))
                    .map(|p| p.name_any())
                    .collect(),
            )
        },
    )
}

/// ResourceSlices of NVIDIA's GPU DRA driver. A cluster that serves no `resource.k8s.io/v1`
/// has no DRA nodes: the watch then counts as synced.
pub fn dra(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let selector = format!("spec.driver={NVIDIA_GPU_DRIVER}");
    let events = watcher(
        Api::<ResourceSlice>::all(client),
        config(&ctx).fields(&selector),
    )
    .default_backoff();
    events.map(move |event| match event {
        Ok(event) => {
            let event = map_event(event, |s| GpuSlice::from_slice(&s));
            let done = is_init_done(&event);
            let changes = ctx.dra_mut().apply(event);
            if done {
                ctx.listed(WatchKind::ResourceSlice, vanished(&changes));
            }
            if !ctx.is_settled() || changes.is_empty() {
                return Vec::new();
            }
            let pools = ctx.pools.state();
            let nodes = ctx.nodes();
            let names = changes.iter().flat_map(|c| {
                let (old, new) = c.states();
                [old, new]
                    .into_iter()
                    .flatten()
                    .filter_map(|s| nodes.get(s.node.as_deref()?))
                    .flat_map(|n| pools_selecting(n, &pools))
                    .collect::<Vec<_>>()
            });
            refs(names.collect())
        }
        Err(e) if not_served(&e) => {
            // Retried with backoff like any watch error: say it once.
            if !ctx.dra().is_synced() {
                ctx.dra_mut().mark_unsupported();
                ctx.listed(WatchKind::ResourceSlice, 0);
            }
            Vec::new()
        }
        Err(e) => {
            match refusal(WatchKind::ResourceSlice, None, &e) {
                Some(unreadable) => ctx.refused(WatchKind::ResourceSlice, unreadable),
                None => warn!(error = %e, kind = "ResourceSlice", "watch failed; retrying"),
            }
            Vec::new()
        }
    })
}

/// The DRA driver's kubelet plugin pods (`--dra-driver-pod-selector`, any namespace): a DRA
/// node serves GPUs only while the driver's pod there is ready.
pub fn dra_driver_pods(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let selector = ctx.driver_pod_selector.clone();
    pod_watch(
        client,
        ctx,
        selector,
        WatchKind::DraDriverPod,
        Context::driver_pods_mut,
        |p| PodFacts::from_driver_pod(&p.0),
    )
}

/// DeviceClasses, for the ones that select the DRA driver's GPUs (`status.capacity.dra`). A
/// cluster without `resource.k8s.io/v1` has none: the watch then counts as listed.
pub fn device_classes(client: Client, ctx: Arc<Context>) -> impl Stream<Item = Triggers> + Send {
    let events = watcher(Api::<DeviceClass>::all(client), config(&ctx)).default_backoff();
    events.map(move |event| match event {
        Ok(event) => {
            let done = is_init_done(&event);
            let changed = ctx.dra_mut().apply_class(map_event(event, |c| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    selects_gpu_driver(&c),
                )
            }));
            if done {
                ctx.listed(WatchKind::DeviceClass, 0);
            }
            if !ctx.is_settled() || !changed {
                return Vec::new();
            }
            // Only a status field follows: every pool with DRA nodes says it at its next look.
            Vec::new()
        }
        Err(e) if not_served(&e) => {
            ctx.listed(WatchKind::DeviceClass, 0);
            Vec::new()
        }
        Err(e) => {
            match refusal(WatchKind::DeviceClass, None, &e) {
                Some(unreadable) => ctx.refused(WatchKind::DeviceClass, unreadable),
                None => warn!(error = %e, kind = "DeviceClass", "watch failed; retrying"),
            }
            Vec::new()
        }
    })
}

/// Whether a DeviceClass selects devices of NVIDIA's GPU driver (its CEL selectors name it).
fn selects_gpu_driver(class: &DeviceClass) -> bool {
    class
        .spec
        .selectors
        .iter()
        .flatten()
        .filter_map(|s| s.cel.as_ref())
        .any(|cel| cel.expression.contains(NVIDIA_GPU_DRIVER))
}

/// The API server does not serve the kind at all (404 on its list): a cluster without DRA. A
/// streaming list reports it when the watch starts, a paged one when the list fails.
fn not_served(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404
    )
}

/// Like `map_event`, for kinds of which only some objects are kept.
fn filter_event<A, B>(
    event: watcher::Event<A>,
    f: impl Fn(A) -> Option<B>,
) -> Option<watcher::Event<B>> {
    Some(match event {
        watcher::Event::Apply(a) => watcher::Event::Apply(f(a)?),
        watcher::Event::Delete(a) => watcher::Event::Delete(f(a)?),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(a) => watcher::Event::InitApply(f(a)?),
        watcher::Event::InitDone => watcher::Event::InitDone,
    })
}

/// A pool as the pool watch keeps it: enough to tell it apart and index its selector.
#[derive(Clone, Debug, PartialEq)]
struct PoolKey {
    name: String,
    selector: crate::api::PoolSelector,
}

impl Keyed for PoolKey {
    fn key(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.name)
    }
}

/// What the API server keeps about a pool's writers, which gpupool never reads: dropped before the
/// pool is cached (managedFields alone were 43 % of the JSON of 1,000 benchmark pools, and
/// `kubectl apply` keeps a copy of the whole spec in an annotation).
fn forget_bookkeeping(pool: &mut GpuPool) {
    pool.managed_fields_mut().clear();
    if let Some(annotations) = pool.metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// GpuPool events, from the one pool watch that also fills the controller's store: a pool that
/// appears, changes or goes can move nodes between the pools it shares them with, and a pool
/// that goes (also while the watch was down) takes its metrics and bookkeeping with it.
pub fn pools(
    client: Client,
    writer: Writer<GpuPool>,
    ctx: Arc<Context>,
) -> impl Stream<Item = Triggers> + Send {
    let mut known: Tracked<PoolKey> = Tracked::default();
    let events = watcher(Api::<GpuPool>::all(client), config(&ctx))
        .default_backoff()
        .modify(forget_bookkeeping)
        .reflect_shared(writer);
    triggers_of(
        events,
        WatchKind::GpuPool,
        None,
        ctx.clone(),
        move |event| {
            let event = map_event(event, |p| PoolKey {
                name: p.name_any(),
                selector: p.spec.node_selector.clone(),
            });
            let done = is_init_done(&event);
            let changes = known.apply(event);
            if done {
                ctx.listed(WatchKind::GpuPool, vanished(&changes));
            }
            on_pool_changes(&ctx, &changes)
        },
    )
}

fn on_pool_changes(ctx: &Context, changes: &[Change<PoolKey>]) -> Triggers {
    let mut wake = BTreeSet::new();
    for change in changes {
        match change {
            Change::Applied { new, .. } => {
                ctx.nodes_mut().index_keys_of(&new.selector);
                wake.extend(ctx.members.sharing_nodes_with(&new.name));
            }
            Change::Deleted(old) => {
                wake.extend(ctx.members.sharing_nodes_with(&old.name));
                ctx.forget_pool(&old.name);
            }
        }
    }
    if ctx.is_settled() {
        refs(wake)
    } else {
        Vec::new()
    }
}

/// How often the pods of deleted foreign plugins are looked for.
const TOMBSTONE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Lists the pods of each tombstone until none is left, then wakes every pool.
pub async fn clear_tombstones(client: Client, ctx: Arc<Context>) {
    // A tombstone whose pods cannot be listed (RBAC, an API server in trouble) is asked again
    // later and later, up to a minute, not every 2 s.
    let mut failing: std::collections::HashMap<ObjectId, (tokio::time::Instant, Duration)> =
        std::collections::HashMap::new();
    loop {
        tokio::time::sleep(TOMBSTONE_CHECK_EVERY).await;
        let now = tokio::time::Instant::now();
        let buried = ctx.tombstones.all();
        failing.retain(|id, _| buried.iter().any(|ds| &ds.id == id));
        for ds in buried {
            if failing.get(&ds.id).is_some_and(|(next, _)| *next > now) {
                continue;
            }
            match pods_left(&client, &ds).await {
                Ok(0) => {
                    info!(daemonset = %ds.id, "the deleted device plugin's pods are gone");
                    failing.remove(&ds.id);
                    ctx.tombstones.remove(&ds.id);
                    ctx.wake_all();
                }
                Ok(n) => {
                    failing.remove(&ds.id);
                    debug!(daemonset = %ds.id, pods = n, "the deleted device plugin's pods are still terminating")
                }
                Err(e) => {
                    let delay = failing.get(&ds.id).map_or(TOMBSTONE_CHECK_EVERY, |(_, d)| {
                        (*d * 2).min(Duration::from_secs(60))
                    });
                    failing.insert(ds.id.clone(), (now + delay, delay));
                    warn!(daemonset = %ds.id, error = %e, retry_in = ?delay, "cannot list the deleted device plugin's pods; its nodes get no plugin from gpupool until they can be seen gone")
                }
            }
        }
    }
}

async fn pods_left(client: &Client, ds: &DaemonSetFacts) -> Result<usize, kube::Error> {
    if ds.pod_selector.is_empty() {
        return Ok(0);
    }
    let selector: Vec<String> = ds
        .pod_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ds.id.namespace);
    let pods = api
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?;
    Ok(pods.items.len())
}

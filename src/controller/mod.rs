//! The I/O shell: watches feed in-memory caches, and each reconcile runs
//! observe (from the caches, no API calls) → decide (pure) → apply (at most one DaemonSet write)
//! → report (a status write only when the status changed).

pub mod apply;
pub mod triggers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::DeleteParams;
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::GpuPool;
use crate::decide::action::{controller_uid, daemonset_action};
use crate::decide::claims::{ForeignPlugin, PoolRef};
use crate::decide::daemonset::daemonset_name;
use crate::decide::events::pool_events;
use crate::decide::nodes::{NodeFacts, trim_node};
use crate::decide::selector::selects;
use crate::decide::status::{PluginState, Stall, StatusInputs, compute_status};
use crate::decide::{Settings, decide, is_device_plugin, is_foreign_plugin, owned_by_gpupool};
use crate::server::Health;
use crate::telemetry::Metrics;
use apply::{ApplyError, MANAGER, apply_daemonset, write_status};
use triggers::NodeTriggers;

/// How long a Stalled pool waits before it is looked at again (a spec change wakes it at once).
const STALLED_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

/// When each node not yet serving GPUs was first seen in a pool: (pool, node) -> time.
type GpuWaits = HashMap<(String, String), std::time::Instant>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    gpu_waits: Arc<Mutex<GpuWaits>>,
    pub settings: Settings,
    /// Periodic re-check of every pool, a safety net for missed watch events.
    pub resync: Duration,
    pub pools: Store<GpuPool>,
    pub nodes: Store<Node>,
    pub daemonsets: Store<DaemonSet>,
    pub triggers: Arc<NodeTriggers>,
    failures: Mutex<HashMap<String, u32>>,
    /// True once the pool, node and DaemonSet caches hold a full list. Reconciles wait on this
    /// and never on `Store::wait_until_ready` itself: that future keeps a single waker, so of
    /// many concurrent waiters only the last one is ever woken (kube-runtime 5's `DelayedInit`
    /// wraps a oneshot channel) and the rest would hang for good.
    synced: tokio::sync::watch::Receiver<bool>,
}

/// Options of the controller loop.
#[derive(Clone)]
pub struct RunOptions {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Name of this replica in the Events it publishes.
    pub instance: Option<String>,
    pub resync: Duration,
    /// Node events within this window are coalesced into one reconcile per pool.
    pub debounce: Duration,
}

/// Strips DaemonSets that are neither ours nor a device plugin down to their identity, and drops
/// managedFields from all but ours (only ours are checked for edits by others).
fn trim_daemonset(ds: &mut DaemonSet) {
    let ours = owned_by_gpupool(ds);
    if !ours {
        ds.metadata.managed_fields = None;
        if !is_device_plugin(ds) {
            ds.spec = None;
            ds.status = None;
            ds.metadata.annotations = None;
            ds.metadata.labels = None;
        }
    }
}

/// Marks objects of Delete events (after the reflector has applied them), so the mappers can
/// tell a deletion from an object listed while the store is being re-filled.
const DELETED_MARK: &str = "gpupool.io/internal-deleted-event";

fn mark_deleted<K: Resource>(event: watcher::Event<K>) -> watcher::Event<K> {
    match event {
        watcher::Event::Delete(mut obj) => {
            obj.meta_mut()
                .annotations
                .get_or_insert_with(Default::default)
                .insert(DELETED_MARK.into(), String::new());
            watcher::Event::Delete(obj)
        }
        other => other,
    }
}

fn is_deleted_event<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(DELETED_MARK))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pools_api: Api<GpuPool> = Api::all(client.clone());
    let nodes_api: Api<Node> = Api::all(client.clone());
    let ds_api: Api<DaemonSet> = Api::all(client.clone());

    let (nodes, node_writer) = reflector::store();
    let node_events = watcher(nodes_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim_node)
        .reflect(node_writer)
        .map_ok(mark_deleted)
        .touched_objects();
    let (daemonsets, ds_writer) = reflector::store();
    let ds_events = watcher(ds_api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(trim_daemonset)
        .reflect(ds_writer)
        .touched_objects();

    let controller = Controller::new(pools_api, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().debounce(options.debounce));
    let pools = controller.store();
    let triggers = Arc::new(NodeTriggers::default());

    let node_mapper = {
        let (pools, triggers) = (pools.clone(), triggers.clone());
        move |node: Node| {
            // Not a store lookup: during a (re-)list the store is swapped in only at the end, so
            // every listed node would look deleted, lose its fingerprint, and make its pools
            // reconcile again at its next heartbeat (one reconcile per node after each start).
            let exists = !is_deleted_event(&node);
            let facts = NodeFacts::from_node(&node);
            let all = pools.state();
            triggers
                .pools_for_node(&facts, exists, all.iter().map(|p| p.as_ref()))
                .into_iter()
                .map(|name| ObjectRef::<GpuPool>::new(&name))
                .collect::<Vec<_>>()
        }
    };
    // A pool created, changed or deleted can move contested nodes between pools.
    let (pool_events_reader, pool_events_writer) = reflector::store();
    let pool_events = watcher(
        Api::<GpuPool>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(pool_events_writer)
    .map_ok(mark_deleted)
    .touched_objects();
    // Readiness: the pool, node and DaemonSet caches hold a full list. This task is the only
    // waiter on each of these stores (see `Context::synced`).
    let (synced_tx, synced) = tokio::sync::watch::channel(false);
    {
        let (pools, nodes, daemonsets, health) = (
            pool_events_reader.clone(),
            nodes.clone(),
            daemonsets.clone(),
            options.health.clone(),
        );
        tokio::spawn(async move {
            let _ = pools.wait_until_ready().await;
            let _ = nodes.wait_until_ready().await;
            let _ = daemonsets.wait_until_ready().await;
            health
                .caches_synced
                .store(true, std::sync::atomic::Ordering::Release);
            let _ = synced_tx.send(true);
            info!("caches synced");
        });
    }
    let gpu_waits: Arc<Mutex<GpuWaits>> = Arc::default();
    let pool_mapper = {
        let (triggers, metrics, gpu_waits) =
            (triggers.clone(), options.metrics.clone(), gpu_waits.clone());
        move |pool: GpuPool| -> Vec<ObjectRef<GpuPool>> {
            // Not a store lookup: during a re-list (e.g. after 410 Gone) the store is swapped in
            // only at the end, and every pool would look deleted and lose its recorded members.
            let exists = !is_deleted_event(&pool);
            if !exists {
                // A deleted pool (no finalizer) is never reconciled again: drop its state here.
                let name = pool.name_any();
                metrics.forget_pool(&name);
                lock(&gpu_waits).retain(|(p, _), _| p != &name);
            }
            triggers
                .pools_sharing_nodes(&pool.name_any(), exists)
                .into_iter()
                .map(|name| ObjectRef::new(&name))
                .collect()
        }
    };
    let ds_mapper = {
        let pools = pools.clone();
        move |ds: DaemonSet| -> Vec<ObjectRef<GpuPool>> {
            let owners: Vec<ObjectRef<GpuPool>> = ds
                .owner_references()
                .iter()
                .filter(|r| owned_by_gpupool(&ds) && r.controller == Some(true))
                .map(|r| ObjectRef::new(&r.name))
                .filter(|owner| pools.get(owner).is_some())
                .collect();
            if !owners.is_empty() {
                owners
            } else if is_device_plugin(&ds) {
                // A device plugin gpupool does not own (or one whose pool is gone) may cover any
                // pool's nodes; such DaemonSets are few and rarely change.
                pools
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect()
            } else {
                Vec::new()
            }
        }
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "gpupool-operator".into(),
            instance: options.instance.clone(),
        },
    );
    let ctx = Arc::new(Context {
        metrics: options.metrics.clone(),
        recorder,
        gpu_waits,
        client,
        settings: options.settings,
        resync: options.resync,
        pools,
        nodes,
        daemonsets,
        triggers,
        failures: Mutex::new(HashMap::new()),
        synced,
    });

    controller
        .watches_stream(node_events, node_mapper)
        .watches_stream(ds_events, ds_mapper)
        .watches_stream(pool_events, pool_mapper)
        .graceful_shutdown_on(shutdown)
        .run(measured_reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                match e {
                    kube::runtime::controller::Error::ReconcilerFailed(err, obj) => {
                        warn!(pool = %obj.name, error = %err, "reconcile failed; retrying with backoff")
                    }
                    other => warn!(error = %other, "controller event"),
                }
            }
        })
        .await;
}

async fn measured_reconcile(
    pool: Arc<GpuPool>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = std::time::Instant::now();
    let result = reconcile(pool, ctx.clone()).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    result
}

/// Observe → decide → apply → report, for one pool.
pub async fn reconcile(pool: Arc<GpuPool>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let name = pool.name_any();
    if pool.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the DaemonSet through its owner reference.
        ctx.triggers.forget_pool(&name);
        ctx.metrics.forget_pool(&name);
        lock(&ctx.gpu_waits).retain(|(p, _), _| p != &name);
        return Ok(Action::await_change());
    }
    // Decisions on a half-filled cache would report nodes missing that are merely not listed yet.
    let _ = ctx.synced.clone().wait_for(|synced| *synced).await;

    // Observe: everything from the caches.
    let all_nodes = ctx.nodes.state();
    let facts: Vec<NodeFacts> = all_nodes
        .iter()
        .filter(|n| selects(&pool.spec.node_selector, n.labels()))
        .map(|n| NodeFacts::from_node(n))
        .collect();
    let members: Vec<&NodeFacts> = facts.iter().collect();
    let pools: Vec<PoolRef> = ctx
        .pools
        .state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| PoolRef {
            name: p.name_any(),
            created: p.creation_timestamp().map(|t| t.0),
            selector: p.spec.node_selector.clone(),
        })
        .collect();
    let all_daemonsets = ctx.daemonsets.state();
    let live_pool_uids: std::collections::HashSet<String> = ctx
        .pools
        .state()
        .iter()
        .filter_map(|p| p.metadata.uid.clone())
        .collect();
    let foreign: Vec<ForeignPlugin> = all_daemonsets
        .iter()
        .filter(|ds| {
            is_foreign_plugin(ds, &live_pool_uids)
                && controller_uid(ds) != pool.metadata.uid.as_deref()
        })
        .filter_map(|ds| {
            let pod = ds.spec.as_ref()?.template.spec.clone()?;
            Some(ForeignPlugin {
                id: format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any()),
                pod,
            })
        })
        .collect();
    let namespace = ctx.settings.plugin_namespace.clone();
    let live = ctx
        .daemonsets
        .get(&ObjectRef::new(&daemonset_name(&name)).within(&namespace));
    let pool_uid = pool.metadata.uid.clone().unwrap_or_default();

    // Decide.
    let decision = decide(&pool, &members, &pools, &foreign, &ctx.settings);
    let action = daemonset_action(
        decision.desired.as_ref(),
        live.as_deref(),
        &pool_uid,
        MANAGER,
    );

    // Apply. A DaemonSet of this pool left in another namespace (the plugin namespace flag
    // changed) goes first, so that no node ever runs two plugins.
    let mut stale_stall = None;
    for stale in all_daemonsets.iter().filter(|ds| {
        controller_uid(ds) == Some(pool_uid.as_str())
            && ds.namespace().as_deref() != Some(namespace.as_str())
    }) {
        let (ns, stale_name) = (stale.namespace().unwrap_or_default(), stale.name_any());
        match apply::delete(&ctx.client, &ns, &stale_name, &DeleteParams::background()).await {
            Ok(()) => {
                info!(pool = %name, "removed DaemonSet {ns}/{stale_name} from the previous plugin namespace")
            }
            Err(ApplyError::Transient(kube::Error::Api(status))) if status.code == 403 => {
                stale_stall = Some(Stall {
                    reason: "StaleDaemonSet",
                    message: format!(
                        "this pool's DaemonSet {ns}/{stale_name} is left in the previous plugin namespace and the operator may not delete it (its RBAC covers {namespace} only); delete it: kubectl -n {ns} delete daemonset {stale_name}"
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let applied = match stale_stall {
        Some(stall) => apply::Applied {
            state: live.as_deref().map_or(PluginState::NotDeployed, |ds| {
                PluginState::Live(apply::live_state(ds))
            }),
            stall: Some(stall),
            change: None,
        },
        None => apply_daemonset(&ctx.client, &namespace, action, live.as_deref()).await?,
    };
    let change = applied.change.clone();

    // Report.
    let previous = pool.status.clone().unwrap_or_default();
    let outcome = compute_status(&StatusInputs {
        generation: pool.metadata.generation,
        previous: &previous.conditions,
        now: Timestamp::now(),
        grace: ctx.settings.gpu_grace_period,
        rollout_deadline: ctx.settings.rollout_deadline,
        expected_gpus: pool.spec.expected_gpus_per_node,
        selector: &pool.spec.node_selector,
        nodes: &members,
        plugin: &decision.plugin,
        claims: &decision.claims,
        daemonset: &applied.state,
        image: Some(decision.image.clone()),
        stall: applied.stall.as_ref(),
    });
    let status_changed = pool.status.as_ref() != Some(&outcome.status);
    if status_changed {
        write_status(&ctx.client, &name, &outcome.status)
            .await
            .map_err(ReconcileError::Status)?;
    }
    for event in pool_events(pool.status.as_ref(), &outcome.status, change.as_ref()) {
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.into(),
            note: Some(event.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &pool.object_ref(&())).await {
            warn!(pool = %name, error = %e, "cannot publish event");
        }
    }
    ctx.metrics.set_pool(&name, &outcome.status);
    record_gpu_waits(&ctx, &name, &facts, &outcome.serving);
    ctx.triggers
        .record_members(&name, facts.iter().map(|n| n.name.clone()));
    lock(&ctx.failures).remove(&name);

    let next = if applied.stall.is_some() {
        STALLED_RETRY
    } else if matches!(applied.state, PluginState::Pending { .. }) {
        // A replaced DaemonSet is recreated once its deletion is visible; the watch usually
        // brings that first, this is the fallback.
        Duration::from_secs(2)
    } else {
        outcome
            .recheck_after
            .map_or(ctx.resync, |t| t.min(ctx.resync))
    };
    // One line per reconcile: info when something was written, debug otherwise.
    let ready = outcome
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready");
    let (ready_status, reason) =
        ready.map_or(("Unknown", ""), |c| (c.status.as_str(), c.reason.as_str()));
    let daemonset = change.as_ref().map(ToString::to_string).unwrap_or_default();
    if status_changed || change.is_some() {
        info!(pool = %name, nodes = outcome.status.nodes, gpus = outcome.status.gpus_allocatable, ready = ready_status, reason, daemonset, status_written = status_changed, requeue = ?next, "reconciled");
    } else {
        debug!(pool = %name, nodes = outcome.status.nodes, gpus = outcome.status.gpus_allocatable, ready = ready_status, reason, requeue = ?next, "reconciled, nothing to change");
    }
    Ok(Action::requeue(next))
}

/// Feeds the time-to-GPUs histogram: a node first seen in the pool without schedulable GPUs
/// starts a clock that stops when it serves. Nodes already serving when first seen are skipped.
fn record_gpu_waits(ctx: &Context, pool: &str, members: &[NodeFacts], serving: &[String]) {
    let now = std::time::Instant::now();
    let mut waits = lock(&ctx.gpu_waits);
    let serving: std::collections::HashSet<&str> = serving.iter().map(String::as_str).collect();
    for node in members {
        let key = (pool.to_string(), node.name.clone());
        if serving.contains(node.name.as_str()) {
            if let Some(since) = waits.remove(&key) {
                ctx.metrics.node_got_gpus(now - since);
            }
        } else {
            waits.entry(key).or_insert(now);
        }
    }
    let names: std::collections::HashSet<&str> = members.iter().map(|n| n.name.as_str()).collect();
    waits.retain(|(p, n), _| p != pool || names.contains(n.as_str()));
}

/// Transient errors: exponential backoff per pool (1 s doubling to 5 min), never a hot loop.
pub fn error_policy(pool: Arc<GpuPool>, _error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let mut failures = lock(&ctx.failures);
    let n = failures.entry(pool.name_any()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300));
    Action::requeue(delay)
}

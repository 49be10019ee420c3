//! The I/O shell: watches keep what gpupool knows of the cluster (`index`), and each reconcile
//! runs observe (from those caches, no API calls) → plan (pure) → apply (the only writes) →
//! report (pure), then writes the status only when it changed.

mod apply;
mod coalesce;
mod context;
mod finalizer;
mod locking;
mod node_batch;
pub mod node_writes;
mod observe;
mod publisher;
mod reconcile;
mod sync;
mod tombstones;
mod triggers;
mod watches;
mod write_schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::{Controller, reflector};
use tracing::{info, warn};

use crate::decide::Settings;
use crate::server::Health;
use crate::telemetry::Metrics;
pub use context::Context;
pub use reconcile::{ReconcileError, error_policy, reconcile};

/// Options of the controller loop.
#[derive(Clone)]
pub struct RunOptions {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Name of this replica in the Events it publishes.
    pub instance: Option<String>,
    pub resync: Duration,
    /// Reconcile requests for one pool within this window are coalesced.
    pub debounce: Duration,
    /// Pools reconciled at once (a cold start reconciles every pool).
    pub concurrency: u16,
    /// Rate and burst of node writes (device-plugin labels, readiness-gate taints).
    pub node_writes_per_second: u32,
    pub node_write_burst: u32,
    /// How the watches list (see [`WatchList`]).
    pub watch_list: WatchList,
    /// Label selector of the DRA driver's kubelet plugin pods.
    pub dra_driver_pods: String,
}

/// The label NVIDIA's GPU DRA driver chart puts on its pods: `app.kubernetes.io/name` is the
/// chart's name, `dra-driver-nvidia-gpu` since the driver moved to kubernetes-sigs,
/// `nvidia-dra-driver-gpu` before (v25.x). Of those pods, the kubelet plugin's are the ones
/// labelled `<chart name>-component: kubelet-plugin` (see `PodFacts::from_driver_pod`).
pub const DEFAULT_DRA_DRIVER_POD_SELECTOR: &str =
    "app.kubernetes.io/name in (dra-driver-nvidia-gpu,nvidia-dra-driver-gpu)";

/// How the watches get their initial state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchList {
    /// Streaming lists where the API server has them on by default (Kubernetes 1.34 and later),
    /// paginated lists elsewhere.
    Auto,
    /// Streaming lists (`sendInitialEvents`): objects arrive one by one from the watch cache,
    /// no 500-object pages to buffer and decode at once, no round trip per page.
    On,
    /// Paginated lists, then a watch.
    Off,
}

/// Whether an API server of this version has WatchList on by default (1.34 and later; minor
/// versions may carry a suffix, e.g. "34+" on managed clusters).
fn watch_list_on_by_default(major: &str, minor: &str) -> bool {
    let number = |v: &str| -> u32 {
        v.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    (number(major), number(minor)) >= (1, 34)
}

/// Whether to stream the initial lists: `Auto` asks the API server for its version. An API
/// server that has the `WatchList` feature turned off by hand needs `Off`.
async fn streaming_lists(client: &Client, mode: WatchList) -> bool {
    match mode {
        WatchList::On => true,
        WatchList::Off => false,
        WatchList::Auto => match client.apiserver_version().await {
            Ok(info) => watch_list_on_by_default(&info.major, &info.minor),
            Err(e) => {
                warn!(error = %e, "cannot read the API server's version; using paginated lists");
                false
            }
        },
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    // One pool watch fills the store the controller reads and feeds both the controller's own
    // triggers (through the subscriber) and the pools-sharing-nodes triggers.
    let (pools, pool_writer) = reflector::store_shared(1024);
    let subscriber = pool_writer
        .subscribe()
        .expect("a shared store hands out subscribers");
    let (wake_tx, wake_rx) = futures::channel::mpsc::unbounded();
    let streaming = streaming_lists(&client, options.watch_list).await;
    info!(streaming_lists = streaming, "watches start");
    let ctx = Arc::new(Context::new(
        client.clone(),
        streaming,
        &options,
        pools.clone(),
        wake_tx,
    ));
    let woken = wake_rx.map(|pool| vec![pool]);
    let triggers = futures::stream::select_all([
        woken.boxed(),
        watches::pools(client.clone(), pool_writer, ctx.clone()).boxed(),
        watches::nodes(client.clone(), ctx.clone()).boxed(),
        watches::daemonsets(client.clone(), ctx.clone()).boxed(),
        watches::pods(client.clone(), ctx.clone()).boxed(),
        watches::dra(client.clone(), ctx.clone()).boxed(),
        watches::dra_driver_pods(client.clone(), ctx.clone()).boxed(),
        watches::device_classes(client.clone(), ctx.clone()).boxed(),
        watches::config_maps(client.clone(), ctx.clone()).boxed(),
    ])
    .flat_map(futures::stream::iter);
    // Node, DaemonSet and pod changes batched per pool, one window at most (kube-runtime's own
    // debounce restarts on every trigger: a steady stream would starve a pool's reconcile).
    let triggers = coalesce::coalesce(triggers, options.debounce);

    let tombstones = tokio::spawn(watches::clear_tombstones(client.clone(), ctx.clone()));
    Controller::for_shared_stream(subscriber, pools)
        .with_config(
            ControllerConfig::default()
                .debounce(Duration::ZERO)
                .concurrency(options.concurrency),
        )
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ReconcilerFailed(err, obj)) => {
                    warn!(pool = %obj.name, error = %err, "reconcile failed; retrying with backoff")
                }
                Err(other) => warn!(error = %other, "controller event"),
                Ok(_) => {}
            }
        })
        .await;
    tombstones.abort();
}

#[cfg(test)]
mod tests {
    use super::watch_list_on_by_default;

    #[test]
    fn watch_lists_stream_from_kubernetes_1_34() {
        assert!(!watch_list_on_by_default("1", "33"));
        assert!(!watch_list_on_by_default("1", "33+"));
        assert!(watch_list_on_by_default("1", "34"));
        assert!(watch_list_on_by_default("1", "36+"));
        assert!(!watch_list_on_by_default("1", ""));
        assert!(watch_list_on_by_default("2", "0"));
    }
}

//! [`PluginGpus`]: the kubelet's device manager for kwok nodes that opt in, so that
//! `nvidia.com/gpu` shows on such a node only while a device-plugin pod really runs there.
//!
//! What it plays (as `hack/real-node/README.md` observed under a real kubelet):
//!
//! - a node whose plugin never ran has no `nvidia.com/gpu` at all (the node registers without it);
//! - a plugin pod that runs (bound, Running, Ready, not terminating) registers after a short
//!   delay: capacity and allocatable N, the machine's GPUs;
//! - a *broken* plugin (its image tag contains [`BROKEN_PLUGIN_TAG`]) runs and registers, but no
//!   usable GPU: capacity N, allocatable 0;
//! - once the plugin stops (pod terminating, deleted, not Ready), allocatable drops to 0 after the
//!   same delay and capacity stays, as the real kubelet keeps it for 5 minutes after a plugin
//!   stops, and then lists the resource with 0 ([`PluginGpusOptions::capacity_grace`]);
//! - the last plugin to register wins (a second plugin registering the same resource replaces
//!   the first one's endpoint in the kubelet), and the replaced one does not come back when the
//!   later one stops. Two plugin pods running on one node at once are recorded
//!   ([`PluginGpus::two_plugins`]): gpupool must never cause that.
//!
//! It scales to thousands of nodes, as the benchmark needs (5,000 nodes heartbeating every
//! minute, 2,500 plugins replaced at once): nodes and pods are decoded slim (only the fields read
//! here), an event costs the work of the one node it concerns (plugin pods are indexed by node,
//! timers kept per node), and status writes go out concurrently, one at a time per node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::{
    Container, Node, NodeStatus, Pod, PodCondition, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Api;
use kube::core::{ClusterResourceScope, NamespaceResourceScope};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::nodes::{self, KWOK_ANNOTATION};
use crate::stages::DEVICE_PLUGIN_POD_LABEL;

/// Node annotation opting a kwok node in: its value is the number of GPUs the machine has (what
/// a working plugin registers). Set by [`crate::nodes::GpuNode::gpus_follow_plugin`].
pub const GPUS_FOLLOW_PLUGIN_ANNOTATION: &str = "gpupool.test/gpus-follow-plugin";
/// A plugin pod with a container whose image tag contains this (e.g.
/// `nvcr.io/nvidia/k8s-device-plugin:v0.18.2-broken`) runs but registers no usable GPU.
pub const BROKEN_PLUGIN_TAG: &str = "broken";
/// How long after its pod is Running and Ready a plugin's GPUs show on the node (and after it
/// stops, how long until they are gone), by default. The real plugin's GPUs show ~0.3–1.7 s after
/// it starts with a 1 s node status update.
pub const DEFAULT_REGISTRATION_DELAY: Duration = Duration::from_millis(300);
/// How long the kubelet keeps a stopped plugin's capacity before it lists the resource with 0.
pub const STOPPED_PLUGIN_CAPACITY_GRACE: Duration = Duration::from_secs(5 * 60);
/// How soon a failed node status write is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// How to run [`PluginGpus`].
#[derive(Debug, Clone)]
pub struct PluginGpusOptions {
    /// A label selector for the nodes to simulate (besides their opting in), e.g.
    /// `pgtest=follow`: tests sharing a control plane each simulate their own nodes. Empty: every
    /// node that opts in.
    pub node_selector: String,
    /// Default [`DEFAULT_REGISTRATION_DELAY`].
    pub registration_delay: Duration,
    /// Default [`STOPPED_PLUGIN_CAPACITY_GRACE`].
    pub capacity_grace: Duration,
}

impl Default for PluginGpusOptions {
    fn default() -> Self {
        PluginGpusOptions {
            node_selector: String::new(),
            registration_delay: DEFAULT_REGISTRATION_DELAY,
            capacity_grace: STOPPED_PLUGIN_CAPACITY_GRACE,
        }
    }
}

/// A plugin pod registered its GPUs with a node's (simulated) kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node: String,
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    /// Capacity registered: the node's GPUs.
    pub capacity: u32,
    /// Allocatable registered: the node's GPUs, or 0 for a broken plugin.
    pub allocatable: u32,
    pub at: Instant,
}

/// Two plugin pods were running on one node at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoPlugins {
    pub node: String,
    /// `namespace/name` of both, the one that started running first first.
    pub pods: [String; 2],
    pub at: Instant,
}

/// A node status write of the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuWrite {
    pub node: String,
    pub capacity: u32,
    pub allocatable: u32,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Record {
    registrations: Vec<Registration>,
    two_plugins: Vec<TwoPlugins>,
    writes: Vec<GpuWrite>,
}

/// A running simulated device manager: a tokio task watching device-plugin pods
/// ([`DEVICE_PLUGIN_POD_LABEL`], all namespaces) and the kwok nodes annotated
/// [`GPUS_FOLLOW_PLUGIN_ANNOTATION`], writing each such node's `nvidia.com/gpu` capacity and
/// allocatable as the module docs say — only when the value changes, and again should anything
/// else overwrite it. Nodes that do not opt in, and their pods, are never touched.
///
/// Dropping the handle (or [`PluginGpus::stop`]) stops the task; what it wrote stays.
#[derive(Debug)]
pub struct PluginGpus {
    /// None once stopped.
    task: Option<JoinHandle<()>>,
    record: Arc<Mutex<Record>>,
    /// True once both watches have listed and the first decisions are made.
    synced: tokio::sync::watch::Receiver<bool>,
}

impl PluginGpus {
    /// Simulates every node that opts in, with the default delays; needs a tokio runtime.
    pub fn spawn(client: kube::Client) -> PluginGpus {
        Self::spawn_with(client, PluginGpusOptions::default())
    }

    /// Simulates the nodes that opt in and match the label selector `nodes` (e.g.
    /// `pgtest=follow`), with the default delays.
    pub fn spawn_selecting(client: kube::Client, nodes: &str) -> PluginGpus {
        Self::spawn_with(
            client,
            PluginGpusOptions {
                node_selector: nodes.to_owned(),
                ..Default::default()
            },
        )
    }

    pub fn spawn_with(client: kube::Client, options: PluginGpusOptions) -> PluginGpus {
        let record = Arc::new(Mutex::new(Record::default()));
        let (synced_tx, synced) = tokio::sync::watch::channel(false);
        PluginGpus {
            task: Some(tokio::spawn(run(
                client,
                options,
                record.clone(),
                synced_tx,
            ))),
            record,
            synced,
        }
    }

    /// Waits until the simulation has listed the plugin pods and the nodes and made its first
    /// decisions (from then on every plugin change is followed), for up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), crate::Error> {
        let mut synced = self.synced.clone();
        match tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(crate::Error::Deadline {
                what: "the simulated device manager to list the plugin pods and nodes".into(),
                timeout,
                detail: String::new(),
            }),
        }
    }

    /// Every registration so far, in order.
    pub fn registrations(&self) -> Vec<Registration> {
        self.record().registrations.clone()
    }

    /// Every time two plugin pods ran on one node at once (each pair once).
    pub fn two_plugins(&self) -> Vec<TwoPlugins> {
        self.record().two_plugins.clone()
    }

    /// Every node status write made, in order.
    pub fn writes(&self) -> Vec<GpuWrite> {
        self.record().writes.clone()
    }

    /// Stops the simulation and waits until it has stopped: nothing is written afterwards.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PluginGpus {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Whether `image`'s tag contains [`BROKEN_PLUGIN_TAG`] (the repository part does not count).
pub fn is_broken_image(image: &str) -> bool {
    let without_digest = image.split('@').next().unwrap_or_default();
    let last = without_digest.rsplit('/').next().unwrap_or_default();
    last.split_once(':')
        .is_some_and(|(_, tag)| tag.contains(BROKEN_PLUGIN_TAG))
}

/// A Node holding only what the simulation reads (name, resourceVersion, annotations, capacity
/// and allocatable); `managedFields`, conditions, images and the rest are skipped while parsing.
#[derive(Clone, Debug, Default)]
struct SlimNode(Node);

slim_core_v1!(SlimNode, "Node", "nodes", ClusterResourceScope);

/// A Pod holding only what the simulation reads (identity, deletion, node, images, phase and
/// conditions).
#[derive(Clone, Debug, Default)]
struct SlimPod(Pod);

slim_core_v1!(SlimPod, "Pod", "pods", NamespaceResourceScope);

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    deletion_timestamp: Option<Time>,
}

impl From<RawMeta> for ObjectMeta {
    fn from(m: RawMeta) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            annotations: m.annotations,
            deletion_timestamp: m.deletion_timestamp,
            ..ObjectMeta::default()
        }
    }
}

impl<'de> Deserialize<'de> for SlimNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: RawMeta,
            #[serde(default)]
            status: Option<RawStatus>,
        }
        #[derive(Deserialize)]
        struct RawStatus {
            capacity: Option<BTreeMap<String, Quantity>>,
            allocatable: Option<BTreeMap<String, Quantity>>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(SlimNode(Node {
            metadata: raw.metadata.into(),
            spec: None,
            status: raw.status.map(|s| NodeStatus {
                capacity: s.capacity,
                allocatable: s.allocatable,
                ..NodeStatus::default()
            }),
        }))
    }
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            metadata: RawMeta,
            #[serde(default)]
            spec: Option<RawSpec>,
            #[serde(default)]
            status: Option<RawStatus>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawSpec {
            node_name: Option<String>,
            #[serde(default)]
            containers: Vec<RawContainer>,
        }
        #[derive(Deserialize)]
        struct RawContainer {
            #[serde(default)]
            name: String,
            image: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawStatus {
            phase: Option<String>,
            conditions: Option<Vec<PodCondition>>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(SlimPod(Pod {
            metadata: raw.metadata.into(),
            spec: raw.spec.map(|s| PodSpec {
                node_name: s.node_name,
                containers: s
                    .containers
                    .into_iter()
                    .map(|c| Container {
                        name: c.name,
                        image: c.image,
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            status: raw.status.map(|s| PodStatus {
                phase: s.phase,
                conditions: s.conditions,
                ..PodStatus::default()
            }),
        }))
    }
}

/// A watch's objects as listed (a first list, or a re-list after the watch lost its place).
enum Listed<K> {
    /// A complete list.
    Done(Vec<K>),
    /// One object changed (or was deleted: `true`).
    Changed(K, bool),
    /// Nothing yet (a list is being buffered).
    Nothing,
}

/// Folds one watcher event into `listing`.
fn fold<K>(listing: &mut Option<Vec<K>>, event: watcher::Event<K>) -> Listed<K> {
    match event {
        watcher::Event::Init => {
            *listing = Some(Vec::new());
            Listed::Nothing
        }
        watcher::Event::InitApply(k) => {
            if let Some(l) = listing.as_mut() {
                l.push(k);
            }
            Listed::Nothing
        }
        watcher::Event::InitDone => Listed::Done(listing.take().unwrap_or_default()),
        watcher::Event::Apply(k) => Listed::Changed(k, false),
        watcher::Event::Delete(k) => Listed::Changed(k, true),
    }
}

async fn run(
    client: kube::Client,
    options: PluginGpusOptions,
    record: Arc<Mutex<Record>>,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let (key, value) = DEVICE_PLUGIN_POD_LABEL;
    let pod_config = watcher::Config::default().labels(&format!("{key}={value}"));
    let mut pods = watcher(Api::<SlimPod>::all(client.clone()), pod_config)
        .default_backoff()
        .boxed();
    let mut node_config = watcher::Config::default();
    if !options.node_selector.is_empty() {
        node_config = node_config.labels(&options.node_selector);
    }
    let mut nodes = watcher(Api::<SlimNode>::all(client.clone()), node_config)
        .default_backoff()
        .boxed();
    let (mut pod_listing, mut node_listing) = (None, None);
    let (mut pods_listed, mut nodes_listed) = (false, false);
    let mut simulation = Simulation::new(&options, record.clone());
    // Node status writes in flight (one per node at most), owned by this task: stopping it
    // stops them.
    let mut writing = FuturesUnordered::new();
    loop {
        let wake = simulation.next_wake(Instant::now());
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = pods.next() => {
                // Errors: the watcher retries with backoff.
                let Ok(event) = event else { continue };
                let now = Instant::now();
                match fold(&mut pod_listing, event) {
                    Listed::Done(list) => {
                        simulation.pods_listed(now, list.iter().map(|p| &p.0));
                        pods_listed = true;
                    }
                    Listed::Changed(pod, false) => simulation.pod_applied(now, &pod.0),
                    Listed::Changed(pod, true) => simulation.pod_deleted(now, &pod.0),
                    Listed::Nothing => {}
                }
            }
            Some(event) = nodes.next() => {
                let Ok(event) = event else { continue };
                match fold(&mut node_listing, event) {
                    Listed::Done(list) => {
                        simulation.nodes_listed(list.iter().map(|n| &n.0));
                        nodes_listed = true;
                    }
                    Listed::Changed(node, false) => simulation.node_applied(&node.0),
                    Listed::Changed(node, true) => simulation.node_deleted(&node.0),
                    Listed::Nothing => {}
                }
            }
            Some((write, result)) = writing.next() => {
                let write: GpuWrite = write;
                match result {
                    Ok(()) => {
                        tracing::info!(
                            node = %write.node,
                            capacity = write.capacity,
                            allocatable = write.allocatable,
                            "simulated device manager: nvidia.com/gpu written"
                        );
                        record
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .writes
                            .push(GpuWrite {
                                at: Instant::now(),
                                ..write.clone()
                            });
                        simulation.write_done(Instant::now(), &write.node, true);
                    }
                    Err(e) => {
                        let e: crate::Error = e;
                        tracing::warn!(node = %write.node, error = %e, "writing nvidia.com/gpu");
                        simulation.write_done(Instant::now(), &write.node, false);
                    }
                }
            }
            () = sleep => {}
        }
        // Nothing is decided before both lists are complete: a plugin pod not listed yet would
        // look stopped.
        if !(pods_listed && nodes_listed) {
            continue;
        }
        for write in simulation.evaluate(Instant::now()) {
            simulation.write_started(&write.node);
            let client = client.clone();
            writing.push(async move {
                let result =
                    nodes::set_gpus(&client, &write.node, write.capacity, write.allocatable).await;
                (write, result)
            });
        }
        synced.send_if_modified(|s| !std::mem::replace(s, true));
    }
}

/// What the simulation knows of one plugin pod.
#[derive(Debug, Clone)]
struct PluginPod {
    node: String,
    /// `namespace/name`.
    name: String,
    broken: bool,
    /// Since when it runs (None: not running yet).
    running_since: Option<Instant>,
    /// When it registered (in the current run).
    registered_at: Option<Instant>,
    /// When it stopped running (its registration ends `delay` later).
    stopped_at: Option<Instant>,
}

impl PluginPod {
    fn running(&self) -> bool {
        self.running_since.is_some() && self.stopped_at.is_none()
    }
}

/// What a node that opts in shows, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeView {
    /// The machine's GPUs (the annotation).
    gpus: u32,
    /// `nvidia.com/gpu` (capacity, allocatable) in its status.
    current: (Option<u32>, Option<u32>),
    resource_version: Option<String>,
}

impl NodeView {
    /// None for a node that does not opt in.
    fn of(node: &Node) -> Option<NodeView> {
        Some(NodeView {
            gpus: opted_in(node)?,
            current: nodes::gpu_resources(node),
            resource_version: node.metadata.resource_version.clone(),
        })
    }
}

/// What the simulation knows of one node that opts in.
#[derive(Debug, Default)]
struct NodeState {
    /// The pod whose registration the kubelet holds (the last to register).
    registered: Option<String>,
    /// Since when no registration is in effect.
    unregistered_since: Option<Instant>,
    /// The resourceVersion of the Node a write was decided on: no further write while the
    /// cache still shows that version (the write has not come back through the watch yet).
    written_on: Option<String>,
    /// A write is in flight: the next one waits for its answer.
    writing: bool,
    /// When a failed write is due again.
    retry_at: Option<Instant>,
}

/// The device manager's bookkeeping, apart from the API (so it can be tested on its own). Every
/// event marks the one node it concerns; [`Simulation::evaluate`] looks at the marked nodes and
/// those whose timer is due, nothing else.
struct Simulation {
    delay: Duration,
    grace: Duration,
    /// By pod uid.
    pods: HashMap<String, PluginPod>,
    /// Pod uids by node.
    pods_on: HashMap<String, BTreeSet<String>>,
    /// Nodes that opt in, as last seen.
    views: HashMap<String, NodeView>,
    nodes: HashMap<String, NodeState>,
    /// Nodes to look at in the next evaluation.
    dirty: BTreeSet<String>,
    /// Each node's next due time (a registration, the end of one, the end of the capacity grace,
    /// a write to retry), and the same ordered by time.
    timer_of: HashMap<String, Instant>,
    timers: BTreeSet<(Instant, String)>,
    /// Pod uid pairs already recorded as two plugins at once.
    pairs: HashSet<(String, String)>,
    /// Whether an evaluation has run: plugin pods found running before the first one have
    /// registered already (the simulation started after them).
    started: bool,
    record: Arc<Mutex<Record>>,
}

impl Simulation {
    fn new(options: &PluginGpusOptions, record: Arc<Mutex<Record>>) -> Self {
        Simulation {
            delay: options.registration_delay,
            grace: options.capacity_grace,
            pods: HashMap::new(),
            pods_on: HashMap::new(),
            views: HashMap::new(),
            nodes: HashMap::new(),
            dirty: BTreeSet::new(),
            timer_of: HashMap::new(),
            timers: BTreeSet::new(),
            pairs: HashSet::new(),
            started: false,
            record,
        }
    }

    /// Takes in the complete set of plugin pods and nodes at `now` (as after a list) and returns
    /// the node status writes due.
    #[cfg(test)]
    fn step<'a>(
        &mut self,
        now: Instant,
        pods: impl Iterator<Item = &'a Pod>,
        nodes: impl Iterator<Item = &'a Node>,
    ) -> Vec<GpuWrite> {
        self.pods_listed(now, pods);
        self.nodes_listed(nodes);
        self.evaluate(now)
    }

    /// A plugin pod was created or changed.
    fn pod_applied(&mut self, now: Instant, pod: &Pod) {
        let (Some(uid), Some(node)) = (
            pod.metadata.uid.clone(),
            pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ) else {
            return; // not bound yet
        };
        let running = is_running(pod);
        // Found running before the first evaluation: it registered before the simulation began.
        let since = if self.started {
            now
        } else {
            now.checked_sub(self.delay).unwrap_or(now)
        };
        let tracked = self.pods.entry(uid.clone()).or_insert_with(|| PluginPod {
            node: node.clone(),
            name: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
            broken: pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .any(|c| c.image.as_deref().is_some_and(is_broken_image)),
            running_since: None,
            registered_at: None,
            stopped_at: None,
        });
        if running && !tracked.running() {
            // Started, or started again (a container restart): it registers anew.
            tracked.running_since = Some(since);
            tracked.registered_at = None;
            tracked.stopped_at = None;
        } else if !running && tracked.running() {
            tracked.stopped_at = Some(now);
        }
        self.pods_on.entry(node.clone()).or_default().insert(uid);
        self.dirty.insert(node);
    }

    /// A plugin pod is gone: stopped now if it was running; forgotten if it never ran.
    fn pod_deleted(&mut self, now: Instant, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.pod_gone(now, uid);
        }
    }

    fn pod_gone(&mut self, now: Instant, uid: &str) {
        let Some(tracked) = self.pods.get_mut(uid) else {
            return;
        };
        let node = tracked.node.clone();
        if tracked.running() {
            tracked.stopped_at = Some(now);
        } else if tracked.running_since.is_none() {
            self.forget_pod(uid);
        }
        self.dirty.insert(node);
    }

    fn forget_pod(&mut self, uid: &str) {
        if let Some(pod) = self.pods.remove(uid)
            && let Some(on) = self.pods_on.get_mut(&pod.node)
        {
            on.remove(uid);
            if on.is_empty() {
                self.pods_on.remove(&pod.node);
            }
        }
    }

    /// Every plugin pod, as listed: the ones not in the list are gone.
    fn pods_listed<'a>(&mut self, now: Instant, pods: impl Iterator<Item = &'a Pod>) {
        let mut present = HashSet::new();
        for pod in pods {
            if let Some(uid) = &pod.metadata.uid {
                present.insert(uid.clone());
            }
            self.pod_applied(now, pod);
        }
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|uid| !present.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.pod_gone(now, &uid);
        }
    }

    /// A node was created or changed.
    fn node_applied(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        match NodeView::of(node) {
            Some(view) => {
                self.views.insert(name.clone(), view);
            }
            None => {
                self.views.remove(&name);
            }
        }
        self.dirty.insert(name);
    }

    fn node_deleted(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.views.remove(name);
            self.dirty.insert(name.clone());
        }
    }

    /// Every node, as listed: the ones not in the list are gone.
    fn nodes_listed<'a>(&mut self, nodes: impl Iterator<Item = &'a Node>) {
        let before: Vec<String> = self.views.keys().cloned().collect();
        self.views.clear();
        for node in nodes {
            self.node_applied(node);
        }
        self.dirty.extend(before);
    }

    /// A write to `node` is in flight: no other is made until it is answered.
    fn write_started(&mut self, node: &str) {
        if let Some(state) = self.nodes.get_mut(node) {
            state.writing = true;
        }
    }

    /// The write to `node` was answered; a failed one is tried again soon.
    fn write_done(&mut self, now: Instant, node: &str, ok: bool) {
        if let Some(state) = self.nodes.get_mut(node) {
            state.writing = false;
            if !ok {
                state.written_on = None;
                state.retry_at = Some(now + RETRY);
            }
        }
        self.dirty.insert(node.to_owned());
        self.schedule(now, node);
    }

    /// Looks at every node marked since the last call or whose timer is due at `now`; returns
    /// the node status writes due.
    fn evaluate(&mut self, now: Instant) -> Vec<GpuWrite> {
        while let Some((at, node)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, node.clone()));
            self.timer_of.remove(&node);
            self.dirty.insert(node);
        }
        let mut writes = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            if let Some(write) = self.evaluate_node(now, &name) {
                writes.push(write);
            }
            self.schedule(now, &name);
        }
        self.started = true;
        writes
    }

    fn evaluate_node(&mut self, now: Instant, name: &str) -> Option<GpuWrite> {
        let write = match self.views.get(name).cloned() {
            Some(view) => {
                self.note_two_plugins(now, name);
                self.register(now, name, view.gpus);
                self.decide(now, &view, name)
            }
            None => {
                self.nodes.remove(name);
                None
            }
        };
        // Plugins whose registration ended are forgotten.
        let delay = self.delay;
        let ended: Vec<String> = self
            .pods_on
            .get(name)
            .into_iter()
            .flatten()
            .filter(|uid| {
                self.pods
                    .get(*uid)
                    .is_some_and(|p| p.stopped_at.is_some_and(|at| at + delay <= now))
            })
            .cloned()
            .collect();
        for uid in ended {
            self.forget_pod(&uid);
        }
        write
    }

    /// Sets the node's timer to its next due time after `now`, if any.
    fn schedule(&mut self, now: Instant, node: &str) {
        if let Some(at) = self.timer_of.remove(node) {
            self.timers.remove(&(at, node.to_owned()));
        }
        let delay = self.delay;
        let pods = self
            .pods_on
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.pods.get(uid))
            .filter_map(|p| {
                if p.running() && p.registered_at.is_none() {
                    Some(p.running_since? + delay)
                } else {
                    p.stopped_at.map(|at| at + delay)
                }
            });
        let state = self.nodes.get(node);
        let grace = state
            .and_then(|s| s.unregistered_since)
            .map(|at| at + self.grace);
        let retry = state.and_then(|s| s.retry_at);
        let next = pods.chain(grace).chain(retry).filter(|at| *at > now).min();
        if let Some(at) = next {
            self.timer_of.insert(node.to_owned(), at);
            self.timers.insert((at, node.to_owned()));
        }
    }

    fn note_two_plugins(&mut self, now: Instant, node: &str) {
        let mut running: Vec<(&String, &PluginPod)> = self
            .pods_on
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|uid| Some((uid, self.pods.get(uid)?)))
            .filter(|(_, p)| p.running())
            .collect();
        if running.len() < 2 {
            return;
        }
        running.sort_by_key(|(uid, p)| (p.running_since, *uid));
        let mut found = Vec::new();
        for (i, (uid_a, a)) in running.iter().enumerate() {
            for (uid_b, b) in &running[i + 1..] {
                let pair = ((*uid_a).clone(), (*uid_b).clone());
                if !self.pairs.contains(&pair) {
                    tracing::warn!(node, first = %a.name, second = %b.name, "two device-plugin pods run on one node");
                    found.push((pair, [a.name.clone(), b.name.clone()]));
                }
            }
        }
        for (pair, pods) in found {
            self.pairs.insert(pair);
            self.lock().two_plugins.push(TwoPlugins {
                node: node.to_owned(),
                pods,
                at: now,
            });
        }
    }

    /// Registers the node's plugin pods whose delay is over, earliest first: the last one holds
    /// the registration.
    fn register(&mut self, now: Instant, node: &str, gpus: u32) {
        let delay = self.delay;
        let mut due: Vec<(Instant, String)> = self
            .pods_on
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|uid| Some((uid, self.pods.get(uid)?)))
            .filter(|(_, p)| p.running() && p.registered_at.is_none())
            .filter_map(|(uid, p)| {
                let at = p.running_since? + delay;
                (at <= now).then(|| (at, uid.clone()))
            })
            .collect();
        due.sort();
        for (at, uid) in due {
            let Some(pod) = self.pods.get_mut(&uid) else {
                continue;
            };
            pod.registered_at = Some(at);
            let allocatable = if pod.broken { 0 } else { gpus };
            tracing::info!(node, pod = %pod.name, capacity = gpus, allocatable, "simulated device plugin registered");
            let registration = Registration {
                node: node.to_owned(),
                pod: pod.name.clone(),
                uid: uid.clone(),
                capacity: gpus,
                allocatable,
                at,
            };
            self.nodes.entry(node.to_owned()).or_default().registered = Some(uid);
            self.lock().registrations.push(registration);
        }
    }

    /// The write the node needs now, if any.
    fn decide(&mut self, now: Instant, node: &NodeView, name: &str) -> Option<GpuWrite> {
        let delay = self.delay;
        let gpus = node.gpus;
        let in_effect = self
            .nodes
            .get(name)
            .and_then(|s| s.registered.as_ref())
            .and_then(|uid| self.pods.get(uid))
            .filter(|p| p.registered_at.is_some())
            .filter(|p| p.stopped_at.is_none_or(|at| at + delay > now))
            .map(|p| p.broken);
        let state = self.nodes.entry(name.to_owned()).or_default();
        if state.retry_at.is_some_and(|at| at <= now) {
            state.retry_at = None;
        }
        let current = node.current;
        let wanted = match in_effect {
            Some(broken) => {
                state.unregistered_since = None;
                // A broken plugin: the kubelet shows the GPUs it lists, none usable. A plugin that
                // lists its GPUs as unhealthy shows exactly that (capacity N, allocatable 0, as
                // in NVIDIA/k8s-device-plugin#58); #1645 (v0.18.2's config-manager race on
                // startup) reports `allocatable nvidia.com/gpu=0`. Either way no GPU can be had.
                (gpus, if broken { 0 } else { gpus })
            }
            None => {
                let since = *state.unregistered_since.get_or_insert(now);
                // No plugin: allocatable 0, capacity kept for the grace, then 0 (listed, never
                // removed). A node that never had the resource gets none.
                let capacity = current.0?;
                let capacity = if now >= since + self.grace {
                    0
                } else {
                    capacity
                };
                (capacity, 0)
            }
        };
        if current == (Some(wanted.0), Some(wanted.1)) {
            state.written_on = None;
            return None;
        }
        if state.writing || state.retry_at.is_some() {
            return None; // the write in flight (or the retry) comes first
        }
        let version = node.resource_version.clone();
        if version.is_some() && state.written_on == version {
            return None; // our write has not come back yet
        }
        state.written_on = version;
        Some(GpuWrite {
            node: name.to_owned(),
            capacity: wanted.0,
            allocatable: wanted.1,
            at: now,
        })
    }

    /// When the next registration, end of a registration, end of a grace or retry is due after
    /// `now`.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.timers.iter().map(|(at, _)| *at).find(|at| *at > now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The machine's GPUs of a kwok node that opts in.
fn opted_in(node: &Node) -> Option<u32> {
    let annotations: &BTreeMap<String, String> = node.metadata.annotations.as_ref()?;
    let kwok = annotations.get(KWOK_ANNOTATION.0).map(String::as_str) == Some(KWOK_ANNOTATION.1);
    let gpus = annotations.get(GPUS_FOLLOW_PLUGIN_ANNOTATION)?;
    match gpus.parse() {
        Ok(gpus) if kwok => Some(gpus),
        Ok(_) => None, // a real node: its kubelet has a device manager of its own
        Err(_) => {
            tracing::warn!(
                node = node.metadata.name.as_deref().unwrap_or_default(),
                value = %gpus,
                "{GPUS_FOLLOW_PLUGIN_ANNOTATION} is not a number of GPUs"
            );
            None
        }
    }
}

/// Whether the plugin pod runs: bound, Running, Ready and not being deleted.
fn is_running(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    phase && ready && pod.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_millis(300);
    const GRACE: Duration = Duration::from_secs(60);

    fn node(name: &str, gpus: Option<&str>, status: (Option<u32>, Option<u32>)) -> Node {
        let mut annotations = serde_json::json!({ "kwok.x-k8s.io/node": "fake" });
        if let Some(gpus) = gpus {
            annotations[GPUS_FOLLOW_PLUGIN_ANNOTATION] = gpus.into();
        }
        let mut capacity = serde_json::json!({ "cpu": "4" });
        let mut allocatable = serde_json::json!({ "cpu": "4" });
        if let Some(c) = status.0 {
            capacity[nodes::GPU_RESOURCE] = c.to_string().into();
        }
        if let Some(a) = status.1 {
            allocatable[nodes::GPU_RESOURCE] = a.to_string().into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "annotations": annotations, "resourceVersion": format!("{status:?}") },
            "status": { "capacity": capacity, "allocatable": allocatable },
        }))
        .unwrap()
    }

    fn pod(uid: &str, node: &str, image: &str, running: bool, deleting: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": uid, "namespace": "ns", "uid": uid },
            "spec": { "nodeName": node, "containers": [{ "name": "plugin", "image": image }] },
            "status": {
                "phase": if running { "Running" } else { "Pending" },
                "conditions": [{ "type": "Ready", "status": if running { "True" } else { "False" } }],
            },
        }))
        .unwrap();
        if deleting {
            pod.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        pod
    }

    fn simulation() -> (Simulation, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let options = PluginGpusOptions {
            node_selector: String::new(),
            registration_delay: DELAY,
            capacity_grace: GRACE,
        };
        (Simulation::new(&options, record.clone()), record)
    }

    fn values(writes: &[GpuWrite]) -> Vec<(&str, u32, u32)> {
        writes
            .iter()
            .map(|w| (w.node.as_str(), w.capacity, w.allocatable))
            .collect()
    }

    #[test]
    fn broken_is_read_from_the_tag_only() {
        assert!(is_broken_image(
            "nvcr.io/nvidia/k8s-device-plugin:v0.18.2-broken"
        ));
        assert!(is_broken_image("registry:5000/plugin:broken@sha256:00"));
        assert!(!is_broken_image("nvcr.io/nvidia/k8s-device-plugin:v0.18.0"));
        assert!(!is_broken_image("broken.example/broken-plugin:v1"));
        assert!(!is_broken_image("registry.broken:5000/plugin"));
    }

    #[test]
    fn a_plugin_registers_after_the_delay_and_its_end_keeps_capacity() {
        let (mut sim, record) = simulation();
        let t0 = Instant::now();
        let none = node("n", Some("4"), (None, None));
        let other = node("other", None, (Some(2), Some(2)));
        // No plugin, no resource: nothing to write.
        assert!(
            sim.step(t0, [].into_iter(), [&none, &other].into_iter())
                .is_empty()
        );
        let running = pod("a", "n", "img:v1", true, false);
        let pending = pod("a", "n", "img:v1", false, false);
        assert!(
            sim.step(t0, [&pending].into_iter(), [&none].into_iter())
                .is_empty()
        );
        assert!(
            sim.step(t0, [&running].into_iter(), [&none].into_iter())
                .is_empty()
        );
        assert_eq!(sim.next_wake(t0), Some(t0 + DELAY));
        let t1 = t0 + DELAY;
        let writes = sim.step(t1, [&running].into_iter(), [&none, &other].into_iter());
        assert_eq!(values(&writes), [("n", 4, 4)]);
        // Until the write comes back, it is not made again.
        assert!(
            sim.step(t1, [&running].into_iter(), [&none].into_iter())
                .is_empty()
        );
        let four = node("n", Some("4"), (Some(4), Some(4)));
        assert!(
            sim.step(t1, [&running].into_iter(), [&four].into_iter())
                .is_empty()
        );
        // Deleted: allocatable 0 after the delay, capacity kept, then 0 after the grace.
        let t2 = t1 + Duration::from_secs(1);
        let deleting = pod("a", "n", "img:v1", true, true);
        assert!(
            sim.step(t2, [&deleting].into_iter(), [&four].into_iter())
                .is_empty()
        );
        assert_eq!(sim.next_wake(t2), Some(t2 + DELAY));
        let t3 = t2 + DELAY;
        let writes = sim.step(t3, [].into_iter(), [&four].into_iter());
        assert_eq!(values(&writes), [("n", 4, 0)]);
        let zero = node("n", Some("4"), (Some(4), Some(0)));
        assert!(sim.step(t3, [].into_iter(), [&zero].into_iter()).is_empty());
        assert_eq!(sim.next_wake(t3), Some(t3 + GRACE));
        let writes = sim.step(t3 + GRACE, [].into_iter(), [&zero].into_iter());
        assert_eq!(values(&writes), [("n", 0, 0)]);
        let registrations = record.lock().unwrap().registrations.clone();
        assert_eq!(registrations.len(), 1);
        assert_eq!(
            (registrations[0].capacity, registrations[0].allocatable),
            (4, 4)
        );
    }

    #[test]
    fn a_broken_plugin_registers_no_usable_gpu() {
        let (mut sim, _) = simulation();
        let t0 = Instant::now();
        let none = node("n", Some("2"), (None, None));
        let broken = pod("b", "n", "img:v0.18.2-broken", true, false);
        sim.step(t0, [].into_iter(), [&none].into_iter());
        sim.step(t0, [&broken].into_iter(), [&none].into_iter());
        let writes = sim.step(t0 + DELAY, [&broken].into_iter(), [&none].into_iter());
        assert_eq!(values(&writes), [("n", 2, 0)]);
    }

    #[test]
    fn the_last_plugin_to_register_wins_and_two_at_once_are_recorded() {
        let (mut sim, record) = simulation();
        let t0 = Instant::now();
        let n = node("n", Some("2"), (Some(2), Some(2)));
        let a = pod("a", "n", "img:v1", true, false);
        // A node showing GPUs without a plugin: allocatable 0 at once, written once.
        assert_eq!(
            values(&sim.step(t0, [].into_iter(), [&n].into_iter())),
            [("n", 2, 0)]
        );
        assert!(sim.step(t0, [&a].into_iter(), [&n].into_iter()).is_empty());
        let zero = node("n", Some("2"), (Some(2), Some(0)));
        let t1 = t0 + DELAY;
        assert_eq!(
            values(&sim.step(t1, [&a].into_iter(), [&zero].into_iter())),
            [("n", 2, 2)]
        );
        let b = pod("b", "n", "img:broken", true, false);
        assert!(
            sim.step(t1, [&a, &b].into_iter(), [&n].into_iter())
                .is_empty()
        );
        assert_eq!(record.lock().unwrap().two_plugins.len(), 1);
        let t2 = t1 + DELAY;
        assert_eq!(
            values(&sim.step(t2, [&a, &b].into_iter(), [&n].into_iter())),
            [("n", 2, 0)]
        );
        // The later one gone, the first one's replaced registration does not come back.
        let t3 = t2 + DELAY;
        sim.step(t3, [&a].into_iter(), [&zero].into_iter());
        assert!(
            sim.step(t3 + DELAY, [&a].into_iter(), [&zero].into_iter())
                .is_empty()
        );
        assert_eq!(
            record.lock().unwrap().two_plugins.len(),
            1,
            "each pair once"
        );
    }

    #[test]
    fn plugins_running_when_the_simulation_starts_have_registered() {
        let (mut sim, _) = simulation();
        let t0 = Instant::now() + DELAY;
        let n = node("n", Some("2"), (Some(2), Some(2)));
        let a = pod("a", "n", "img:v1", true, false);
        assert!(sim.step(t0, [&a].into_iter(), [&n].into_iter()).is_empty());
        assert_eq!(sim.next_wake(t0), None);
    }

    #[test]
    fn only_kwok_nodes_that_opt_in_are_simulated() {
        let (mut sim, _) = simulation();
        let t0 = Instant::now();
        let real: Node = {
            let mut n = node("real", Some("2"), (Some(2), Some(2)));
            n.metadata
                .annotations
                .as_mut()
                .unwrap()
                .remove(KWOK_ANNOTATION.0);
            n
        };
        let bad = node("bad", Some("many"), (Some(2), Some(2)));
        let plain = node("plain", None, (Some(2), Some(2)));
        assert!(
            sim.step(t0, [].into_iter(), [&real, &bad, &plain].into_iter())
                .is_empty()
        );
    }

    #[test]
    fn an_event_looks_at_its_node_only_and_writes_wait_for_their_answer() {
        let (mut sim, _) = simulation();
        let t0 = Instant::now();
        let nodes: Vec<Node> = (0..3)
            .map(|j| node(&format!("n{j}"), Some("2"), (Some(2), Some(2))))
            .collect();
        let pods: Vec<Pod> = (0..3)
            .map(|j| pod(&format!("p{j}"), &format!("n{j}"), "img:v1", true, false))
            .collect();
        assert!(sim.step(t0, pods.iter(), nodes.iter()).is_empty());
        assert!(sim.dirty.is_empty() && sim.next_wake(t0).is_none());
        // A heartbeat (a new resourceVersion, the same GPUs): that node looked at, nothing due.
        let mut beat = nodes[1].clone();
        beat.metadata.resource_version = Some("beat".into());
        sim.node_applied(&beat);
        assert_eq!(sim.dirty, BTreeSet::from(["n1".to_owned()]));
        assert!(sim.evaluate(t0).is_empty());
        // n1's plugin stops: after the delay, one write for n1 alone.
        let t1 = t0 + Duration::from_secs(1);
        sim.pod_applied(t1, &pod("p1", "n1", "img:v1", true, true));
        assert!(sim.evaluate(t1).is_empty());
        assert_eq!(sim.next_wake(t1), Some(t1 + DELAY));
        let t2 = t1 + DELAY;
        let writes = sim.evaluate(t2);
        assert_eq!(values(&writes), [("n1", 2, 0)]);
        sim.write_started("n1");
        // While it is in flight, another event for n1: no second write until the answer.
        let mut beat2 = nodes[1].clone();
        beat2.metadata.resource_version = Some("beat2".into());
        sim.node_applied(&beat2);
        assert!(sim.evaluate(t2).is_empty());
        // The write failed: made again once the retry is due.
        sim.write_done(t2, "n1", false);
        assert!(sim.evaluate(t2).is_empty());
        assert_eq!(sim.next_wake(t2), Some(t2 + RETRY));
        let t3 = t2 + RETRY;
        assert_eq!(values(&sim.evaluate(t3)), [("n1", 2, 0)]);
        sim.write_started("n1");
        sim.write_done(t3, "n1", true);
        // Until the write comes back through the watch, it is not made again.
        assert!(sim.evaluate(t3).is_empty());
        let mut zero = node("n1", Some("2"), (Some(2), Some(0)));
        zero.metadata.resource_version = Some("zero".into());
        sim.node_applied(&zero);
        assert!(sim.evaluate(t3).is_empty());
        // The new plugin registers: its GPUs are back.
        sim.pod_applied(t3, &pod("q1", "n1", "img:v2", true, false));
        assert!(sim.evaluate(t3).is_empty());
        assert_eq!(values(&sim.evaluate(t3 + DELAY)), [("n1", 2, 2)]);
        sim.write_started("n1");
        sim.write_done(t3 + DELAY, "n1", true);
        let mut back = node("n1", Some("2"), (Some(2), Some(2)));
        back.metadata.resource_version = Some("back".into());
        sim.node_applied(&back);
        assert!(sim.evaluate(t3 + DELAY).is_empty());
        assert!(sim.next_wake(t3 + DELAY).is_none(), "no timer left");
        // The replaced pod is gone from the index once its registration ended.
        assert_eq!(sim.pods_on["n1"], BTreeSet::from(["q1".to_owned()]));
        sim.pod_deleted(t3 + DELAY, &pod("p1", "n1", "img:v1", false, true));
        assert!(!sim.pods.contains_key("p1"));
    }

    #[test]
    fn nodes_and_pods_are_decoded_slim() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "n", "resourceVersion": "7",
                "annotations": { "kwok.x-k8s.io/node": "fake", GPUS_FOLLOW_PLUGIN_ANNOTATION: "4" },
                "labels": { "type": "kwok" },
                "managedFields": [{ "manager": "kwok", "fieldsV1": { "f:status": {} } }],
            },
            "spec": { "taints": [{ "key": "sku", "value": "gpu", "effect": "NoSchedule" }] },
            "status": {
                "capacity": { "cpu": "4", "nvidia.com/gpu": "4" },
                "allocatable": { "cpu": "4", "nvidia.com/gpu": "0" },
                "conditions": [{ "type": "Ready", "status": "True" }],
                "images": [{ "names": ["a"], "sizeBytes": 1 }],
            },
        });
        let SlimNode(n) = serde_json::from_value(json).unwrap();
        assert!(n.metadata.managed_fields.is_none() && n.metadata.labels.is_none());
        assert_eq!(
            NodeView::of(&n),
            Some(NodeView {
                gpus: 4,
                current: (Some(4), Some(0)),
                resource_version: Some("7".into()),
            })
        );
        let json = serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u",
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "managedFields": [{ "manager": "kwok" }],
            },
            "spec": {
                "nodeName": "n",
                "containers": [{ "name": "plugin", "image": "img:v0.18.2-broken", "env": [] }],
                "volumes": [{ "name": "v", "hostPath": { "path": "/x" } }],
            },
            "status": {
                "phase": "Running",
                "conditions": [{ "type": "Ready", "status": "True" }],
                "containerStatuses": [{ "name": "plugin", "image": "i", "imageID": "", "ready": true, "restartCount": 0 }],
            },
        });
        let SlimPod(p) = serde_json::from_value(json).unwrap();
        assert!(p.metadata.deletion_timestamp.is_some() && !is_running(&p));
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n"));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("img:v0.18.2-broken")
        );
        assert!(spec.volumes.is_none());
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    }

    /// Not a timing assertion: prints what one event costs at 5,000 nodes (release build:
    /// `cargo test --release -p testenv --lib costs_at_5000 -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn costs_at_5000_nodes() {
        let (mut sim, _) = simulation();
        let t0 = Instant::now();
        let nodes: Vec<Node> = (0..5000)
            .map(|j| node(&format!("n{j}"), Some("2"), (Some(2), Some(2))))
            .collect();
        let pods: Vec<Pod> = (0..5000)
            .map(|j| pod(&format!("p{j}"), &format!("n{j}"), "img:v1", true, false))
            .collect();
        let started = Instant::now();
        sim.step(t0, pods.iter(), nodes.iter());
        eprintln!(
            "a full list of 5,000 nodes and pods: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        for (k, n) in nodes.iter().enumerate() {
            let mut beat = n.clone();
            beat.metadata.resource_version = Some(format!("beat{k}"));
            sim.node_applied(&beat);
            assert!(sim.evaluate(t0).is_empty());
        }
        eprintln!("a heartbeat: {:?}", started.elapsed() / 5000);
    }
}

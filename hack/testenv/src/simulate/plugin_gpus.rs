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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
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
        PluginGpus {
            task: Some(tokio::spawn(run(client, options, record.clone()))),
            record,
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

/// The watched objects, as the last complete list plus the events since (what a reflector
/// store holds), and whether a list has completed yet.
struct Cache<K> {
    objects: HashMap<String, K>,
    listing: Option<HashMap<String, K>>,
    listed: bool,
    key: fn(&K) -> Option<String>,
}

impl<K> Cache<K> {
    fn new(key: fn(&K) -> Option<String>) -> Self {
        Cache {
            objects: HashMap::new(),
            listing: None,
            listed: false,
            key,
        }
    }

    fn apply(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Apply(k) => {
                if let Some(key) = (self.key)(&k) {
                    self.objects.insert(key, k);
                }
            }
            watcher::Event::Delete(k) => {
                if let Some(key) = (self.key)(&k) {
                    self.objects.remove(&key);
                }
            }
            watcher::Event::Init => self.listing = Some(HashMap::new()),
            watcher::Event::InitApply(k) => {
                if let (Some(listing), Some(key)) = (self.listing.as_mut(), (self.key)(&k)) {
                    listing.insert(key, k);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.objects = listing;
                }
                self.listed = true;
            }
        }
    }
}

async fn run(client: kube::Client, options: PluginGpusOptions, record: Arc<Mutex<Record>>) {
    let (key, value) = DEVICE_PLUGIN_POD_LABEL;
    let pod_config = watcher::Config::default().labels(&format!("{key}={value}"));
    let mut pods = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .boxed();
    let mut node_config = watcher::Config::default();
    if !options.node_selector.is_empty() {
        node_config = node_config.labels(&options.node_selector);
    }
    let mut nodes = watcher(Api::<Node>::all(client.clone()), node_config)
        .default_backoff()
        .boxed();
    let mut pod_cache: Cache<Pod> = Cache::new(|p| p.metadata.uid.clone());
    let mut node_cache: Cache<Node> = Cache::new(|n| n.metadata.name.clone());
    let mut simulation = Simulation::new(&options, record.clone());
    let mut wake: Option<Instant> = None;
    loop {
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = pods.next() => {
                // Errors: the watcher retries with backoff.
                if let Ok(event) = event {
                    pod_cache.apply(event);
                }
            }
            Some(event) = nodes.next() => {
                if let Ok(event) = event {
                    node_cache.apply(event);
                }
            }
            () = sleep => {}
        }
        // Nothing is decided before both lists are complete: a plugin pod not listed yet would
        // look stopped.
        if !(pod_cache.listed && node_cache.listed) {
            continue;
        }
        let now = Instant::now();
        let writes = simulation.step(now, pod_cache.objects.values(), node_cache.objects.values());
        let mut retry = None;
        for write in writes {
            match nodes::set_gpus(&client, &write.node, write.capacity, write.allocatable).await {
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
                            ..write
                        });
                }
                Err(e) => {
                    tracing::warn!(node = %write.node, error = %e, "writing nvidia.com/gpu");
                    simulation.write_failed(&write.node);
                    retry = Some(Instant::now() + RETRY);
                }
            }
        }
        wake = match (simulation.next_wake(now), retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
}

/// The device manager's bookkeeping, apart from the API (so it can be tested on its own).
struct Simulation {
    delay: Duration,
    grace: Duration,
    /// By pod uid.
    pods: HashMap<String, PluginPod>,
    nodes: HashMap<String, NodeState>,
    /// Pod uid pairs already recorded as two plugins at once.
    pairs: HashSet<(String, String)>,
    /// Whether a step has run: plugin pods found running on the first one have registered
    /// already (the simulation started after them).
    started: bool,
    record: Arc<Mutex<Record>>,
}

impl Simulation {
    fn new(options: &PluginGpusOptions, record: Arc<Mutex<Record>>) -> Self {
        Simulation {
            delay: options.registration_delay,
            grace: options.capacity_grace,
            pods: HashMap::new(),
            nodes: HashMap::new(),
            pairs: HashSet::new(),
            started: false,
            record,
        }
    }

    /// Takes in the current plugin pods and nodes at `now`; returns the node status writes due.
    fn step<'a>(
        &mut self,
        now: Instant,
        pods: impl Iterator<Item = &'a Pod>,
        nodes: impl Iterator<Item = &'a Node>,
    ) -> Vec<GpuWrite> {
        self.track_pods(now, pods);
        let mut writes = Vec::new();
        let mut seen = HashSet::new();
        for node in nodes {
            let (Some(name), Some(gpus)) = (node.metadata.name.clone(), opted_in(node)) else {
                continue;
            };
            seen.insert(name.clone());
            self.note_two_plugins(now, &name);
            self.register(now, &name, gpus);
            if let Some(write) = self.decide(now, node, &name, gpus) {
                writes.push(write);
            }
        }
        self.nodes.retain(|name, _| seen.contains(name));
        let delay = self.delay;
        self.pods
            .retain(|_, p| p.stopped_at.is_none_or(|at| at + delay > now));
        self.started = true;
        writes
    }

    /// Follows each plugin pod's running and stopping.
    fn track_pods<'a>(&mut self, now: Instant, pods: impl Iterator<Item = &'a Pod>) {
        let initially_registered = now.checked_sub(self.delay).unwrap_or(now);
        let mut present = HashSet::new();
        for pod in pods {
            let (Some(uid), Some(node)) = (
                pod.metadata.uid.clone(),
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            present.insert(uid.clone());
            let running = is_running(pod);
            let started = self.started;
            let tracked = self.pods.entry(uid).or_insert_with(|| PluginPod {
                node,
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
                tracked.running_since = Some(if started { now } else { initially_registered });
                tracked.registered_at = None;
                tracked.stopped_at = None;
            } else if !running && tracked.running() {
                tracked.stopped_at = Some(now);
            }
        }
        self.pods.retain(|uid, p| {
            if !present.contains(uid) && p.running() {
                p.stopped_at = Some(now); // deleted while running
            }
            present.contains(uid) || p.running_since.is_some()
        });
    }

    fn note_two_plugins(&mut self, now: Instant, node: &str) {
        let mut running: Vec<(&String, &PluginPod)> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node == node && p.running())
            .collect();
        running.sort_by_key(|(uid, p)| (p.running_since, *uid));
        for (i, (uid_a, a)) in running.iter().enumerate() {
            for (uid_b, b) in &running[i + 1..] {
                if self.pairs.insert(((*uid_a).clone(), (*uid_b).clone())) {
                    tracing::warn!(node, first = %a.name, second = %b.name, "two device-plugin pods run on one node");
                    self.lock().two_plugins.push(TwoPlugins {
                        node: node.to_owned(),
                        pods: [a.name.clone(), b.name.clone()],
                        at: now,
                    });
                }
            }
        }
    }

    /// Registers the node's plugin pods whose delay is over, earliest first: the last one holds
    /// the registration.
    fn register(&mut self, now: Instant, node: &str, gpus: u32) {
        let delay = self.delay;
        let mut due: Vec<(Instant, String)> = self
            .pods
            .iter()
            .filter(|(_, p)| p.node == node && p.running() && p.registered_at.is_none())
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
    fn decide(&mut self, now: Instant, node: &Node, name: &str, gpus: u32) -> Option<GpuWrite> {
        let delay = self.delay;
        let in_effect = self
            .nodes
            .get(name)
            .and_then(|s| s.registered.as_ref())
            .and_then(|uid| self.pods.get(uid))
            .filter(|p| p.registered_at.is_some())
            .filter(|p| p.stopped_at.is_none_or(|at| at + delay > now))
            .map(|p| p.broken);
        let state = self.nodes.entry(name.to_owned()).or_default();
        let current = nodes::gpu_resources(node);
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
        let version = node.metadata.resource_version.clone();
        if current == (Some(wanted.0), Some(wanted.1)) {
            state.written_on = None;
            return None;
        }
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

    fn write_failed(&mut self, node: &str) {
        if let Some(state) = self.nodes.get_mut(node) {
            state.written_on = None;
        }
    }

    /// When the next registration, end of a registration or end of a grace is due after `now`.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let pods = self.pods.values().filter_map(|p| {
            if p.running() && p.registered_at.is_none() {
                Some(p.running_since? + self.delay)
            } else {
                p.stopped_at.map(|at| at + self.delay)
            }
        });
        let nodes = self
            .nodes
            .values()
            .filter_map(|s| s.unregistered_since.map(|at| at + self.grace));
        pods.chain(nodes).filter(|at| *at > now).min()
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
}

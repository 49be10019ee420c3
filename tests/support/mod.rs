//! Shared fixtures of the integration tests: one real control plane and one operator process per
//! test binary, and helpers that wait on observable state with deadlines.

#![allow(dead_code)]

pub mod proxy;
pub mod real;
pub mod replicas;
pub mod tools;

use std::path::PathBuf;
use std::time::Duration;

use gpupool::api::{Condition, GpuPool};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use testenv::{ChildProcess, ControlPlane, wait_for};
use tokio::sync::OnceCell;

pub const PLUGIN_NAMESPACE: &str = "gpu-resources";
/// Generous: the plane runs on 2 cores next to the compiler in CI.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Env {
    pub plane: &'static ControlPlane,
    pub client: Client,
}

static READY: OnceCell<()> = OnceCell::const_new();
static OPERATOR: std::sync::OnceLock<std::sync::Mutex<Option<ChildProcess>>> =
    std::sync::OnceLock::new();
/// How the shared operator was started (its kubeconfig and flags), to start it again.
static OPERATOR_START: std::sync::OnceLock<(PathBuf, Vec<String>)> = std::sync::OnceLock::new();

/// The user the shared operator runs as: the shipped ServiceAccount, with exactly the shipped
/// RBAC (deploy/rbac.yaml). The plane's default audit policy records its every request.
pub const OPERATOR_USER: &str = "system:serviceaccount:gpupool-system:gpupool-operator";

/// The shared plane with the CRD, the namespaces and the shipped RBAC installed and one operator
/// running as the shipped ServiceAccount (as its own process, the released binary's code path).
pub async fn env() -> Env {
    env_with(&[]).await
}

/// [`env`], the shared operator started with more flags (the first call in a test binary wins).
pub async fn env_with(operator_args: &[&str]) -> Env {
    let plane = ControlPlane::shared().await;
    READY
        .get_or_init(|| async {
            install_crd(plane).await;
            for manifest in ["deploy/namespaces.yaml", "deploy/rbac.yaml"] {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
                let out = plane
                    .kubectl()
                    .args(["apply", "--server-side", "-f"])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "kubectl apply {manifest}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let kubeconfig = plane
                .kubeconfig_for_service_account("gpupool-system", "gpupool-operator")
                .await
                .expect("a token for the shipped ServiceAccount");
            let operator = start_operator(plane, kubeconfig.clone(), "operator", operator_args);
            OPERATOR.get_or_init(|| std::sync::Mutex::new(Some(operator)));
            OPERATOR_START.get_or_init(|| {
                (
                    kubeconfig,
                    operator_args.iter().map(ToString::to_string).collect(),
                )
            });
        })
        .await;
    Env {
        plane,
        client: plane.client().await,
    }
}

/// The shared operator's requests since `since`, from the API server's audit log.
pub fn operator_requests(env: &Env, since: std::time::SystemTime) -> Vec<testenv::audit::Request> {
    testenv::audit::requests(&env.plane.audit_log_path(), OPERATOR_USER)
        .into_iter()
        .filter(|r| r.received >= since)
        .collect()
}

/// Applies `crds/gpupool.yaml` (the committed file, as a user would) and waits until it is served.
pub async fn install_crd(plane: &ControlPlane) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/gpupool.yaml");
    plane
        .apply_crd(std::path::Path::new(path), "gpupools.gpupool.io")
        .expect("the committed CRD installs");
}

/// Starts `gpupool-operator run` against the plane with test-friendly timings.
pub fn start_operator(
    plane: &ControlPlane,
    kubeconfig: PathBuf,
    name: &str,
    extra: &[&str],
) -> ChildProcess {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gpupool-operator"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env("GPUPOOL_LOG", "info,gpupool=debug")
        // The leader-election identity and the Events' reporting instance, as the Deployment sets it.
        .env("POD_NAME", name)
        .arg("run");
    let defaults = [
        ("--gpu-grace-period", "3s"),
        ("--debounce", "100ms"),
        ("--rollout-deadline", "10s"),
        ("--resync-period", "5m"),
        ("--metrics-addr", "127.0.0.1:0"),
    ];
    for (flag, value) in defaults.iter().filter(|(flag, _)| !extra.contains(flag)) {
        cmd.args([flag, value]);
    }
    cmd.args(extra);
    ChildProcess::spawn(
        name,
        cmd,
        &plane.dir().join("logs").join(format!("{name}.log")),
    )
    .expect("operator starts")
}

/// The operator's log, for failure messages.
pub fn operator_log(plane: &ControlPlane) -> String {
    std::fs::read_to_string(plane.dir().join("logs/operator.log"))
        .map(|s| {
            s.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A GpuPool manifest (YAML) for the tests: its name, the node labels it selects
/// (`spec.nodeSelector.matchLabels`, in the order given) and any further `spec` fields.
///
/// ```ignore
/// create_pool(c, PoolYaml::new("std").agentpool("stdpool")).await;
/// create_pool(c, PoolYaml::new("zone").selector("zone", "z1").extra_spec("  expectedGpusPerNode: 2\n")).await;
/// ```
#[derive(Debug, Clone)]
pub struct PoolYaml {
    name: String,
    match_labels: Vec<(String, String)>,
    extra_spec: String,
}

impl PoolYaml {
    pub fn new(name: &str) -> Self {
        PoolYaml {
            name: name.to_owned(),
            match_labels: Vec::new(),
            extra_spec: String::new(),
        }
    }

    /// Selects the nodes of an AKS agent pool (`kubernetes.azure.com/agentpool`).
    pub fn agentpool(self, agentpool: &str) -> Self {
        self.selector("kubernetes.azure.com/agentpool", agentpool)
    }

    /// Selects nodes with this label (besides the labels already given).
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.match_labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// More of `spec`, as YAML lines indented by two spaces, e.g.
    /// `"  devicePlugin:\n    priorityClassName: x\n"`.
    pub fn extra_spec(mut self, yaml: &str) -> Self {
        self.extra_spec.push_str(yaml);
        self
    }
}

impl std::fmt::Display for PoolYaml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: {}\nspec:\n  nodeSelector:\n    matchLabels:\n",
            self.name
        )?;
        for (key, value) in &self.match_labels {
            writeln!(f, "      {key}: {value}")?;
        }
        f.write_str(&self.extra_spec)
    }
}

/// Creates a pool from a manifest: a [`PoolYaml`] or YAML text. A pool of the same name that is
/// still being deleted (Terminating until its finalizer is removed, e.g. while its plugin pods
/// terminate) is waited for first, as someone re-applying the manifest would have to.
pub async fn create_pool(client: &Client, yaml: impl std::fmt::Display) -> GpuPool {
    let pool: GpuPool = yaml_serde::from_str(&yaml.to_string()).expect("test pool YAML parses");
    let api: Api<GpuPool> = Api::all(client.clone());
    let what = format!(
        "GpuPool {} to be created after its namesake is deleted",
        pool.name_any()
    );
    wait_for(&what, TIMEOUT, || async {
        match api.create(&PostParams::default(), &pool).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(s)) if s.code == 409 && s.message.contains("being deleted") => {
                None
            }
            Err(e) => panic!("pool is accepted: {e}"),
        }
    })
    .await
}

pub async fn get_pool(client: &Client, name: &str) -> GpuPool {
    Api::<GpuPool>::all(client.clone())
        .get(name)
        .await
        .expect("pool exists")
}

pub async fn patch_pool(client: &Client, name: &str, patch: serde_json::Value) {
    Api::<GpuPool>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pool patch is accepted");
}

pub fn condition<'a>(pool: &'a GpuPool, type_: &str) -> Option<&'a Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Waits until `pred` holds for the pool (and its status describes the current generation).
pub async fn wait_pool(
    env: &Env,
    name: &str,
    what: &str,
    pred: impl Fn(&GpuPool) -> bool,
) -> GpuPool {
    let api: Api<GpuPool> = Api::all(env.client.clone());
    let mut last = None;
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Ok(pool) = api.get(name).await {
            let current = pool.status.as_ref().and_then(|s| s.observed_generation)
                == pool.metadata.generation;
            if current && pred(&pool) {
                return pool;
            }
            last = Some(pool);
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for GpuPool {name}: {what}\nlast status: {}\noperator log:\n{}",
                last.and_then(|p| p.status)
                    .map(|s| yaml_serde::to_string(&s).unwrap())
                    .unwrap_or_default(),
                operator_log(env.plane)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_condition(
    env: &Env,
    pool: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> GpuPool {
    wait_pool(env, pool, &format!("{type_}={status} ({reason:?})"), |p| {
        condition(p, type_)
            .is_some_and(|c| c.status == status && reason.is_none_or(|r| c.reason == r))
    })
    .await
}

pub fn plugin_name(pool: &str) -> String {
    gpupool::decide::names::daemonset_name(pool)
}

pub async fn get_daemonset(client: &Client, name: &str) -> Option<DaemonSet> {
    Api::<DaemonSet>::namespaced(client.clone(), PLUGIN_NAMESPACE)
        .get_opt(name)
        .await
        .expect("API answers")
}

pub async fn wait_daemonset(
    env: &Env,
    name: &str,
    what: &str,
    pred: impl Fn(&DaemonSet) -> bool,
) -> DaemonSet {
    wait_for(
        &format!("DaemonSet {name}: {what}\n{}", operator_log(env.plane)),
        TIMEOUT,
        || async { get_daemonset(&env.client, name).await.filter(|ds| pred(ds)) },
    )
    .await
}

pub async fn wait_daemonset_gone(env: &Env, name: &str) {
    wait_for(
        &format!("DaemonSet {name} to be removed"),
        TIMEOUT,
        || async {
            get_daemonset(&env.client, name)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await
}

/// Nodes running a device-plugin pod (any DaemonSet whose pods carry `name=nvidia-device-plugin-ds`), with the count per node.
pub async fn plugin_pods_per_node(
    client: &Client,
    namespace: Option<&str>,
) -> std::collections::BTreeMap<String, usize> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pods = api
        .list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
        .await
        .expect("list pods");
    let mut per_node = std::collections::BTreeMap::new();
    for pod in pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *per_node.entry(node).or_insert(0) += 1;
        }
    }
    per_node
}

pub fn node_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The DaemonSet's node-affinity requirements and tolerations, for assertions.
pub fn placement(ds: &DaemonSet) -> (serde_json::Value, Vec<String>) {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let affinity = serde_json::to_value(pod.affinity.as_ref().unwrap()).unwrap();
    let tolerations = pod
        .tolerations
        .iter()
        .flatten()
        .map(|t| {
            format!(
                "{}={}:{}",
                t.key.clone().unwrap_or_default(),
                t.value.clone().unwrap_or_default(),
                t.effect.clone().unwrap_or_default()
            )
        })
        .collect();
    (affinity, tolerations)
}

pub fn name_of(pool: &GpuPool) -> String {
    pool.name_any()
}

/// SIGKILLs the shared operator (no shutdown, in-flight writes cut off: as a node failure or an
/// OOM kill would) and starts it again with the same flags. Other tests of the binary go on.
pub fn restart_operator(env: &Env) {
    let (kubeconfig, args) = OPERATOR_START.get().expect("env() started the operator");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cell = OPERATOR.get().expect("env() started the operator");
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(mut old) = guard.take() {
        old.kill();
    }
    *guard = Some(start_operator(
        env.plane,
        kubeconfig.clone(),
        "operator",
        &args,
    ));
}

/// Process id of the shared operator started by [`env`] (None before that).
pub fn operator_pid() -> Option<u32> {
    let cell = OPERATOR.get()?;
    let guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map(ChildProcess::id)
}

/// How the shared operator exited, or None while it runs (or before [`env`] started it).
pub fn operator_exit() -> Option<String> {
    let cell = OPERATOR.get()?;
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_mut()
        .and_then(ChildProcess::try_wait)
        .map(|s| s.to_string())
}

/// Watches every device-plugin pod (label `name=nvidia-device-plugin-ds`, gpupool's and the AKS
/// article's) and records each moment a node had more than one, terminating ones included: "never
/// two plugins on a node" is checked on every pod event, not on a few samples.
pub struct PluginPodMonitor {
    task: tokio::task::JoinHandle<()>,
    seen: std::sync::Arc<std::sync::Mutex<MonitorState>>,
}

#[derive(Default)]
struct MonitorState {
    /// node -> pod uid -> pod name
    on_node: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    violations: Vec<String>,
    synced: bool,
    /// The nodes watched (None: every node).
    watched: Option<std::collections::BTreeSet<String>>,
    /// Terminating pods count as running (they still hold the node's device-plugin socket).
    terminating_count: bool,
}

impl PluginPodMonitor {
    pub async fn start(client: &Client, nodes: &[&str]) -> PluginPodMonitor {
        Self::watching(
            client,
            Some(nodes.iter().map(|n| n.to_string()).collect()),
            true,
        )
        .await
    }

    /// On every node, counting only pods that are not terminating.
    pub async fn start_live_pods(client: &Client) -> PluginPodMonitor {
        Self::watching(client, None, false).await
    }

    async fn watching(
        client: &Client,
        watched: Option<std::collections::BTreeSet<String>>,
        terminating_count: bool,
    ) -> PluginPodMonitor {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen: std::sync::Arc<std::sync::Mutex<MonitorState>> =
            std::sync::Arc::new(std::sync::Mutex::new(MonitorState {
                watched,
                terminating_count,
                ..MonitorState::default()
            }));
        let state = seen.clone();
        let api: Api<Pod> = Api::all(client.clone());
        let events = watcher(
            api,
            watcher::Config::default().labels("name=nvidia-device-plugin-ds"),
        )
        .default_backoff();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(Ok(event)) = events.next().await {
                let mut s = state.lock().unwrap();
                match event {
                    watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => s.put(&pod),
                    watcher::Event::Delete(pod) => s.remove(&pod),
                    watcher::Event::InitDone => s.synced = true,
                    watcher::Event::Init => {}
                }
            }
        });
        let monitor = PluginPodMonitor { task, seen };
        wait_for("the plugin pod watch to list", TIMEOUT, || async {
            monitor.seen.lock().unwrap().synced.then_some(())
        })
        .await;
        monitor
    }

    /// Every moment a node ran two plugin pods so far.
    pub fn violations(&self) -> Vec<String> {
        self.seen.lock().unwrap().violations.clone()
    }

    /// The plugin pods on a node now, terminating ones included.
    pub fn on(&self, node: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .on_node
            .get(node)
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn stop(self) -> Vec<String> {
        self.task.abort();
        self.violations()
    }
}

impl MonitorState {
    fn put(&mut self, pod: &Pod) {
        if !self.terminating_count && pod.metadata.deletion_timestamp.is_some() {
            return self.remove(pod);
        }
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| self.watched.as_ref().is_none_or(|w| w.contains(n)))
        else {
            return;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
        let pods = self.on_node.entry(node.clone()).or_default();
        pods.insert(uid, name);
        if pods.len() > 1 {
            self.violations
                .push(format!("{node}: {:?}", pods.values().collect::<Vec<_>>()));
        }
    }

    fn remove(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for pods in self.on_node.values_mut() {
            pods.remove(&uid);
        }
    }
}

/// Merge-patches a node (labels, annotations, taints, unschedulable).
pub async fn patch_node(client: &Client, name: &str, patch: serde_json::Value) {
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching node {name}: {e}"));
}

/// The node's device-plugin label: the pool whose plugin it runs.
pub async fn plugin_owner(client: &Client, node: &str) -> Option<String> {
    let node = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get(node)
        .await
        .unwrap();
    node.metadata
        .labels
        .unwrap_or_default()
        .get("gpupool.io/device-plugin")
        .cloned()
}

/// The notes of the Events published about a pool with this reason.
pub async fn event_notes(c: &Client, pool: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool)
                && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.note)
        .collect()
}

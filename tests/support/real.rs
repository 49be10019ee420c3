//! Fixtures of the real-node tests (`tests/real_node.rs`): a real kubelet + containerd node from
//! `testenv::real_node`, and watches that record every version of a GpuPool's status and of a
//! Node, so that "never Stalled" or "the taint only went once the GPUs were there" is checked on
//! every change the API server made, not on a few samples.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gpupool::api::GpuPool;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use testenv::ControlPlane;
use testenv::real_node::{RealNode, RealNodeOptions};
use testenv::wait_for;

use super::{Env, PLUGIN_NAMESPACE, TIMEOUT, operator_log};

/// `GPUPOOL_SKIP_REAL_NODE=1` skips the real-node tests (they need root and
/// `hack/real-node/build.sh`'s pieces), with a printed reason.
pub fn skip() -> bool {
    if std::env::var("GPUPOOL_SKIP_REAL_NODE").is_ok_and(|v| v == "1") {
        eprintln!("skipped: GPUPOOL_SKIP_REAL_NODE=1 (real kubelet + containerd tests)");
        return true;
    }
    false
}

/// Starts a real node (waiting for another one on this machine to go first) and returns once its
/// Node is Ready.
pub async fn start_node(
    plane: &'static ControlPlane,
    options: RealNodeOptions,
) -> RealNode<'static> {
    let started = Instant::now();
    let node = RealNode::start(plane, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("real node {} Ready in {:?}", node.name(), started.elapsed());
    node
}

/// The end of a test: the pool deleted while the node's kubelet still runs (its finalizer waits
/// for the plugin pods to go, which takes a kubelet), then the node stopped and its Node object
/// deleted, so the next test's node starts afresh.
pub async fn finish(env: &Env, pool: &str, node: RealNode<'static>) {
    let pools: Api<GpuPool> = Api::all(env.client.clone());
    let _ = pools.delete(pool, &DeleteParams::default()).await;
    wait_for(
        &format!("GpuPool {pool} to be deleted"),
        TIMEOUT,
        || async { pools.get_opt(pool).await.unwrap().is_none().then_some(()) },
    )
    .await;
    let name = node.name().to_string();
    drop(node);
    let _ = Api::<Node>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}

/// gpupool's plugin pods of a pool (terminating ones included).
pub async fn plugin_pods(client: &Client, pool: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), PLUGIN_NAMESPACE)
        .list(&ListParams::default().labels(&format!(
            "name=nvidia-device-plugin-ds,gpupool.io/pool={}",
            gpupool::decide::names::pool_key(pool)
        )))
        .await
        .unwrap()
        .items
}

/// The pool's one plugin pod that is running (not terminating) and Ready.
pub async fn running_plugin_pod(env: &Env, pool: &str) -> Pod {
    wait_for(
        &format!(
            "a Ready plugin pod of pool {pool}\n{}",
            operator_log(env.plane)
        ),
        TIMEOUT,
        || async {
            plugin_pods(&env.client, pool).await.into_iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
            })
        },
    )
    .await
}

/// `nvidia.com/*` resources of a Node: name -> (capacity, allocatable).
pub fn gpu_resources(node: &Node) -> BTreeMap<String, (i64, i64)> {
    let status = node.status.as_ref();
    let read =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("nvidia.com/"))
                .map(|(k, v)| (k.clone(), v.0.parse::<i64>().unwrap_or(-1)))
                .collect::<BTreeMap<_, _>>()
        };
    let capacity = read(status.and_then(|s| s.capacity.as_ref()));
    let allocatable = read(status.and_then(|s| s.allocatable.as_ref()));
    capacity
        .keys()
        .chain(allocatable.keys())
        .map(|k| {
            (
                k.clone(),
                (
                    capacity.get(k).copied().unwrap_or(0),
                    allocatable.get(k).copied().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// One version of a Node, as a watch delivered it.
#[derive(Clone, Debug)]
pub struct NodeMoment {
    pub at: Duration,
    pub ready: bool,
    pub resources: BTreeMap<String, (i64, i64)>,
    pub taints: Vec<String>,
    /// The validation record gpupool keeps on the node (annotation `gpupool.io/validation`).
    pub validation: Option<serde_json::Value>,
}

impl NodeMoment {
    pub fn gpus(&self, resource: &str) -> (i64, i64) {
        self.resources.get(resource).copied().unwrap_or((0, 0))
    }

    pub fn tainted(&self, key: &str) -> bool {
        self.taints
            .iter()
            .any(|t| t.starts_with(&format!("{key}=")))
    }
}

impl std::fmt::Display for NodeMoment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "t={:.1}s ready={} {:?} taints {:?} validation {}",
            self.at.as_secs_f64(),
            self.ready,
            self.resources,
            self.taints,
            self.validation
                .as_ref()
                .map(|v| format!("{} ({})", v["result"], v["plugin"]))
                .unwrap_or_default()
        )
    }
}

/// One version of a GpuPool's status, as a watch delivered it.
#[derive(Clone, Debug)]
pub struct PoolMoment {
    pub at: Duration,
    pub generation: Option<i64>,
    pub observed: Option<i64>,
    /// type -> (status, reason, message)
    pub conditions: BTreeMap<String, (String, String, String)>,
    pub allocatable: i64,
    /// (node, reason, message)
    pub problems: Vec<(String, String, String)>,
}

impl PoolMoment {
    pub fn is(&self, type_: &str, status: &str) -> bool {
        self.conditions.get(type_).is_some_and(|c| c.0 == status)
    }

    pub fn reason(&self, type_: &str) -> &str {
        self.conditions.get(type_).map_or("", |c| c.1.as_str())
    }
}

impl std::fmt::Display for PoolMoment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let conditions: Vec<String> = self
            .conditions
            .iter()
            .map(|(t, (s, r, _))| format!("{t}={s}/{r}"))
            .collect();
        write!(
            f,
            "t={:.1}s gen {:?}/{:?} allocatable {} [{}] problems {:?}",
            self.at.as_secs_f64(),
            self.observed,
            self.generation,
            self.allocatable,
            conditions.join(" "),
            self.problems
                .iter()
                .map(|(n, r, _)| format!("{n}: {r}"))
                .collect::<Vec<_>>()
        )
    }
}

/// Records every version of one object a watch delivers, reduced by `moment`, until dropped.
pub struct Timeline<M> {
    task: tokio::task::JoinHandle<()>,
    seen: Arc<Mutex<Vec<M>>>,
    started: Instant,
}

impl<M: Clone + Send + 'static> Timeline<M> {
    async fn watch<K>(api: Api<K>, name: &str, moment: fn(&K, Duration) -> M) -> Timeline<M>
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let seen: Arc<Mutex<Vec<M>>> = Arc::default();
        let synced = Arc::new(tokio::sync::Notify::new());
        let started = Instant::now();
        let (record, ready) = (seen.clone(), synced.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = watcher(api, config).default_backoff();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        record.lock().unwrap().push(moment(&o, started.elapsed()))
                    }
                    Ok(watcher::Event::InitDone) => ready.notify_one(),
                    _ => {}
                }
            }
        });
        tokio::time::timeout(TIMEOUT, synced.notified())
            .await
            .expect("the watch lists");
        Timeline {
            task,
            seen,
            started,
        }
    }

    /// Every version so far.
    pub fn all(&self) -> Vec<M> {
        self.seen.lock().unwrap().clone()
    }

    /// The versions since `mark` (an instant of the test).
    pub fn since(&self, mark: Instant) -> Vec<M>
    where
        M: HasTime,
    {
        let from = mark.saturating_duration_since(self.started);
        self.all().into_iter().filter(|m| m.at() >= from).collect()
    }

    /// The versions since `mark`, one per line, for messages.
    pub fn print_since(&self, mark: Instant) -> String
    where
        M: HasTime + std::fmt::Display,
    {
        self.since(mark)
            .iter()
            .map(|m| format!("    {m}\n"))
            .collect()
    }

    /// Time since the timeline started (moments' `at` are on this clock).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }
}

impl<M> Drop for Timeline<M> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub trait HasTime {
    fn at(&self) -> Duration;
}

impl HasTime for NodeMoment {
    fn at(&self) -> Duration {
        self.at
    }
}

impl HasTime for PoolMoment {
    fn at(&self) -> Duration {
        self.at
    }
}

/// Every version of a Node: its `nvidia.com/*` resources, taints and Ready.
pub async fn node_timeline(client: &Client, node: &str) -> Timeline<NodeMoment> {
    Timeline::watch(Api::<Node>::all(client.clone()), node, |n: &Node, at| {
        NodeMoment {
            at,
            ready: testenv::nodes::is_ready(n),
            resources: gpu_resources(n),
            taints: n
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{}={}:{}",
                        t.key,
                        t.value.clone().unwrap_or_default(),
                        t.effect
                    )
                })
                .collect(),
            validation: n
                .annotations()
                .get("gpupool.io/validation")
                .and_then(|v| serde_json::from_str(v).ok()),
        }
    })
    .await
}

/// Every version of a GpuPool's status.
pub async fn pool_timeline(client: &Client, pool: &str) -> Timeline<PoolMoment> {
    Timeline::watch(
        Api::<GpuPool>::all(client.clone()),
        pool,
        |p: &GpuPool, at| {
            let status = p.status.clone().unwrap_or_default();
            PoolMoment {
                at,
                generation: p.metadata.generation,
                observed: status.observed_generation,
                conditions: status
                    .conditions
                    .iter()
                    .map(|c| {
                        (
                            c.type_.clone(),
                            (c.status.clone(), c.reason.clone(), c.message.clone()),
                        )
                    })
                    .collect(),
                allocatable: status.gpus_allocatable,
                problems: status
                    .problem_nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.reason.clone(), n.message.clone()))
                    .collect(),
            }
        },
    )
    .await
}

/// The pool's name, for messages.
pub fn pool_name(pool: &GpuPool) -> String {
    pool.name_any()
}

/// The host process of a pod's (first) container on a real node, from containerd's task list.
pub fn container_pid(node: &RealNode<'_>, pod: &Pod) -> u32 {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first()?.container_id.clone())
        .expect("the container started");
    let id = id.trim_start_matches("containerd://");
    let out = node.ctr().args(["tasks", "ls"]).output().expect("ctr runs");
    let list = String::from_utf8_lossy(&out.stdout);
    list.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(id))
                .then(|| f.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no task {id} in:\n{list}"))
}

/// A field of `/proc/<pid>/status` (e.g. `CapEff`, `NoNewPrivs`).
pub fn proc_status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The mount points inside a process's mount namespace, with their options.
pub fn mounts(pid: u32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.get(4)?.to_string(), f.get(5)?.to_string()))
        })
        .collect()
}

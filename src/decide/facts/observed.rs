//! `Observed`: everything one reconcile of one pool reads, as plain data (filled by the shell,
//! `controller::observe`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::GpuPool;
use crate::decide::names::pool_key;

use super::{
    ConfigMapFacts, DaemonSetFacts, DraNode, NodeFacts, PodFacts, PoolRef, ProblemClocks, Rejection,
};

/// Everything a reconcile of one pool reads, as plain data.
#[derive(Clone, Debug)]
pub struct Observed {
    pub pool: Arc<GpuPool>,
    /// The nodes the pool's selector selects, sorted by name.
    pub nodes: Vec<Arc<NodeFacts>>,
    /// Nodes carrying this pool's device-plugin label that it does not select (any more).
    pub strays: Vec<Arc<NodeFacts>>,
    /// Every other pool, for nodes they contest.
    pub other_pools: Vec<PoolRef>,
    /// Every device-plugin DaemonSet in the cluster, gpupool's and others'.
    pub plugin_daemonsets: Vec<Arc<DaemonSetFacts>>,
    /// gpupool's pods on the pool's nodes and the pool's own pods wherever they are.
    pub pods: Vec<Arc<PodFacts>>,
    /// What NVIDIA's GPU DRA driver publishes for the pool's nodes (and strays), by node.
    pub dra: BTreeMap<String, Arc<DraNode>>,
    /// The cluster serves `resource.k8s.io/v1` (DRA).
    pub dra_api: bool,
    /// DeviceClasses that select the DRA driver's GPUs.
    pub device_classes: Vec<String>,
    /// UIDs of the GpuPools that exist.
    pub pool_uids: HashSet<String>,
    /// The pool's last DaemonSet the API server refused.
    pub rejection: Option<Rejection>,
    /// The pool's plugin ConfigMaps (in the plugin namespace).
    pub plugin_configs: Vec<Arc<ConfigMapFacts>>,
    /// When each problem node's problem began, as the last reconcile found (None after a
    /// restart: then the status says it, for the nodes it lists).
    pub problem_clocks: Option<Arc<ProblemClocks>>,
    /// Nodes found running pods that hold a GPU (asked of the API server for the next nodes a
    /// plugin rollout may replace, see `plugin::rollout::gpu_use_wanted`; empty otherwise).
    pub gpu_busy: BTreeSet<String>,
    pub now: Timestamp,
    /// `pods` by node, built on first use.
    pub pods_by_node: PodsByNode,
}

/// `Observed::pods` by node, built on the first question: a reconcile asks for the pods on
/// each of the pool's nodes, which as a scan of every pod cost O(nodes × pods) (at 5,000 nodes
/// most of a reconcile's ~0.9 s). Rebuilt when `pods` is no longer what it was built from
/// (tests change `pods` in place; the shell never does): in release builds that is seen by the
/// count alone, debug builds compare every pod.
#[derive(Default)]
pub struct PodsByNode(Mutex<Option<BuiltIndex>>);

/// What the index was built from (see `PodsByNode::stamp`), and the positions by node.
type BuiltIndex = (Vec<usize>, HashMap<String, Vec<usize>>);

impl PodsByNode {
    fn stamp(pods: &[Arc<PodFacts>]) -> Vec<usize> {
        if cfg!(debug_assertions) {
            pods.iter().map(|p| Arc::as_ptr(p) as usize).collect()
        } else {
            vec![pods.len()]
        }
    }

    /// Positions in `pods` of the pods bound to `node`.
    fn positions(&self, pods: &[Arc<PodFacts>], node: &str) -> Vec<usize> {
        let mut index = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = Self::stamp(pods);
        if index.as_ref().is_none_or(|(built, _)| *built != stamp) {
            let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, pod) in pods.iter().enumerate() {
                if let Some(node) = &pod.node {
                    by_node.entry(node.clone()).or_default().push(i);
                }
            }
            *index = Some((stamp, by_node));
        }
        index
            .as_ref()
            .and_then(|(_, by_node)| by_node.get(node).cloned())
            .unwrap_or_default()
    }
}

impl Clone for PodsByNode {
    fn clone(&self) -> Self {
        PodsByNode::default()
    }
}

impl std::fmt::Debug for PodsByNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodsByNode")
    }
}

impl Observed {
    pub fn pool_name(&self) -> String {
        self.pool.name_any()
    }

    pub fn pool_uid(&self) -> &str {
        self.pool.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn pool_key(&self) -> String {
        pool_key(&self.pool_name())
    }

    /// When each problem node's problem began.
    pub fn problem_clocks(&self) -> std::borrow::Cow<'_, ProblemClocks> {
        match &self.problem_clocks {
            Some(clocks) => std::borrow::Cow::Borrowed(clocks.as_ref()),
            None => std::borrow::Cow::Owned(ProblemClocks::of(
                self.pool.status.iter().flat_map(|s| s.problem_nodes.iter()),
            )),
        }
    }

    /// gpupool's pods on a node, terminating ones included.
    pub fn pods_on(&self, node: &str) -> Vec<&PodFacts> {
        self.shared_pods_on(node)
            .into_iter()
            .map(Arc::as_ref)
            .collect()
    }

    /// `pods_on`, as the shared pods.
    pub fn shared_pods_on(&self, node: &str) -> Vec<&Arc<PodFacts>> {
        self.pods_by_node
            .positions(&self.pods, node)
            .into_iter()
            .map(|i| &self.pods[i])
            .collect()
    }
}

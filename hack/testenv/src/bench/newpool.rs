//! Phase 7: a new pool over many nodes (#26, "Large pools, cheaply"). `--new-pool-nodes` N GPU
//! nodes of their own agent pool join (tainted like the others) and become Ready; then
//!
//! 1. **the floor**: a plain DaemonSet over those nodes, run by the benchmark: the pod template
//!    the operator renders for a pool (copied from a throw-away pool's DaemonSet, so the operator
//!    under test decides it), placed by a `nodeSelector` on the agent-pool label instead of the
//!    per-node plugin label the operator writes, with its own pod labels and a pause image (so the
//!    operator takes it for neither its own pods nor a foreign device plugin; kwok pulls no image
//!    anyway). From its create request until a Ready pod of it was seen on every node; then it is
//!    deleted and its pods waited out;
//! 2. **the pool**: one GpuPool selecting the N nodes; from its create request until its plugin pod
//!    was seen Ready on every node, with the operator's requests (audit log) and CPU seconds
//!    (/proc) in that window; then until its status is current and Ready;
//! 3. **one node's allocatable in the big pool**: `--new-pool-samples` nodes, one at a time, down by
//!    one and back up, one change a second; from the node status patch until the pool's
//!    `status.gpusAllocatable` shows the new sum. (Spaced: the operator coalesces a pool's events,
//!    two at once after a quiet spell and then one per `--debounce`, so changes back to back in one
//!    pool would measure that pacing instead of one change.)
//! 4. with `--new-pool-grow M`: M more nodes join the pool's agent pool (its selector now matches
//!    N + M nodes); per node, from its create request until its plugin pod is Ready.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::observe::Expected;
use super::operator::Operator;
use super::phases::{Bench, read_proc_stats};
use super::pods::PodsReady;
use super::procfs::cpu_snapshot;
use super::report::{GrowReport, NewPoolReport, OPERATOR};
use super::{GPU_COUNTS, PLUGIN_NAMESPACE, log, setup};
use crate::nodes::{self, GpuNode};
use crate::{DEVICE_PLUGIN_POD_LABEL, Error, poll_until};

/// Phase names in `requests` and `cpu`.
pub(super) const NODES_JOIN: &str = "7a new pool: nodes join";
pub(super) const FLOOR: &str = "7b new pool: floor DaemonSet";
pub(super) const PLUGIN_EVERYWHERE: &str = "7c new pool: plugin everywhere";
pub(super) const SETTLE: &str = "7d new pool: status settles";
pub(super) const GPU_CHANGES: &str = "7e new pool: gpu changes";
pub(super) const GROW: &str = "7f new pool: more nodes join";

const POOL: &str = "bench-newpool";
const AGENTPOOL: &str = "benchnewpool";
const NODE_PREFIX: &str = "newpool-node-";
/// A pool of one node (tainted like the others), whose DaemonSet's pod template the floor copies.
const TEMPLATE_POOL: &str = "bench-newpool-template";
const TEMPLATE_AGENTPOOL: &str = "benchnewpooltemplate";
const TEMPLATE_NODE: &str = "newpool-template-node";
const FLOOR_DAEMONSET: &str = "bench-floor";
const FLOOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "bench-floor");
const FLOOR_IMAGE: &str = "registry.k8s.io/pause:3.10";
const AGENTPOOL_LABEL: &str = "kubernetes.azure.com/agentpool";
/// Pause before each allocatable change of the big pool.
const CHANGE_SPACING: Duration = Duration::from_secs(1);
/// How often a long wait logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

fn node_name(j: usize) -> String {
    format!("{NODE_PREFIX}{j}")
}

fn node(j: usize) -> GpuNode {
    GpuNode::aks(&node_name(j), AGENTPOOL)
        .gpus(GPU_COUNTS[j % GPU_COUNTS.len()])
        .taint("sku", "gpu", "NoSchedule")
}

fn plugin_daemonset(pool: &str) -> String {
    format!("nvidia-device-plugin-{pool}")
}

impl Bench<'_> {
    /// Phase 7 (see the module docs); nothing without `--new-pool-nodes`.
    pub(super) async fn new_pool(&mut self, op: &Operator) -> Result<(), Error> {
        let n = self.opts.new_pool_nodes;
        if n == 0 {
            return Ok(());
        }
        let pid = Some(op.pid());
        let mut report = NewPoolReport {
            nodes: n,
            ..NewPoolReport::default()
        };
        log(format!(
            "phase 7: {n} nodes of agent pool {AGENTPOOL} join (and one for a template pool)"
        ));
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let start = Instant::now();
        let mut joining: Vec<GpuNode> = (0..n).map(node).collect();
        joining.push(GpuNode::aks(TEMPLATE_NODE, TEMPLATE_AGENTPOOL).taint(
            "sku",
            "gpu",
            "NoSchedule",
        ));
        setup::create_plain_nodes(&self.client, joining, self.opts.create_concurrency).await?;
        let selector = format!("{AGENTPOOL_LABEL} in ({AGENTPOOL},{TEMPLATE_AGENTPOOL})");
        setup::wait_ready(&self.client, &selector, n + 1, self.opts.timeout).await?;
        report.nodes_ready = start.elapsed();
        self.end_phase(NODES_JOIN, pid, start);
        log(format!(
            "{n} nodes Ready after {:.1} s",
            report.nodes_ready.as_secs_f64()
        ));
        let names: Vec<String> = (0..n).map(node_name).collect();
        let mut gpus: Vec<u32> = (0..n).map(|j| GPU_COUNTS[j % GPU_COUNTS.len()]).collect();

        let template = self.plugin_template().await?;
        self.floor(pid, template, &names, &mut report).await?;
        let plugins = self
            .plugin_everywhere(op, &names, &gpus, &mut report)
            .await?;
        self.new_pool_gpu_changes(op, &mut gpus, &mut report)
            .await?;
        if self.opts.new_pool_grow > 0 {
            report.grow = Some(self.grow(op, &plugins, &mut gpus).await?);
        }
        let stats = read_proc_stats(op, "operator")?;
        report.peak_rss_kib = stats.peak_rss_kib;
        report.rss_kib = stats.rss_kib;
        self.report.new_pool = Some(report);
        Ok(())
    }

    /// A pool of one tainted node; its DaemonSet's pod template once its plugin runs. The pool is
    /// deleted again (and its DaemonSet and pod waited out) before anything is measured.
    async fn plugin_template(&mut self) -> Result<PodTemplateSpec, Error> {
        log(
            "the operator renders a plugin DaemonSet for a pool of one node (the floor's template)",
        );
        self.create_pool(TEMPLATE_POOL, TEMPLATE_AGENTPOOL).await?;
        self.pool_seen(
            TEMPLATE_POOL,
            "the template pool's plugin pod ready",
            None,
            |seen| seen.plugin_ready == Some(1),
        )
        .await?;
        let daemonsets: Api<DaemonSet> = Api::namespaced(self.client.clone(), PLUGIN_NAMESPACE);
        let name = plugin_daemonset(TEMPLATE_POOL);
        let ds = daemonsets.get(&name).await?;
        self.pools_api()
            .delete(TEMPLATE_POOL, &DeleteParams::default())
            .await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), PLUGIN_NAMESPACE);
        let on_node = ListParams::default().fields(&format!("spec.nodeName={TEMPLATE_NODE}"));
        poll_until(
            "the template pool, its DaemonSet and its pod gone",
            self.opts.timeout,
            Duration::from_millis(200),
            || async {
                let pool = self.pools_api().get_opt(TEMPLATE_POOL).await.ok()?;
                let ds = daemonsets.get_opt(&name).await.ok()?;
                let left = pods.list(&on_node).await.ok()?.items.len();
                (pool.is_none() && ds.is_none() && left == 0).then_some(())
            },
        )
        .await?;
        ds.spec.map(|s| s.template).ok_or_else(|| Error::Config {
            what: format!("DaemonSet {name}"),
            detail: "no spec".into(),
        })
    }

    /// The floor: the plugin's pod template as a plain DaemonSet over the new nodes, until a pod
    /// of it is Ready on every one; then deleted, until its pods are gone.
    async fn floor(
        &mut self,
        pid: Option<u32>,
        template: PodTemplateSpec,
        names: &[String],
        report: &mut NewPoolReport,
    ) -> Result<(), Error> {
        let label = format!("{}={}", FLOOR_LABEL.0, FLOOR_LABEL.1);
        let pods = PodsReady::start(&self.client, PLUGIN_NAMESPACE, &label, NODE_PREFIX);
        self.wait_listed(&pods).await?;
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), PLUGIN_NAMESPACE);
        let ds = floor_daemonset(template)?;
        log(format!(
            "phase 7 floor: DaemonSet {FLOOR_DAEMONSET} (the plugin's pod template, nodeSelector {AGENTPOOL_LABEL}={AGENTPOOL})"
        ));
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let t0 = Instant::now();
        api.create(&PostParams::default(), &ds).await?;
        let last = self
            .every_node_ready(&pods, names, "a floor pod Ready on every new node", t0)
            .await?;
        report.floor = last.saturating_duration_since(t0);
        self.end_phase(FLOOR, pid, t0);
        log(format!(
            "floor: a pod Ready on every node after {:.2} s; deleting it",
            report.floor.as_secs_f64()
        ));
        let t1 = Instant::now();
        api.delete(FLOOR_DAEMONSET, &DeleteParams::background())
            .await?;
        poll_until(
            "the floor's pods gone",
            self.opts.timeout,
            Duration::from_millis(50),
            || async { (pods.pods() == 0).then_some(()) },
        )
        .await?;
        report.floor_gone = t1.elapsed();
        log(format!(
            "the floor's pods gone {:.1} s after its deletion",
            report.floor_gone.as_secs_f64()
        ));
        Ok(())
    }

    /// The pool: from its create request until its plugin pod is Ready on every node (requests
    /// and CPU counted in that window), then until its status is current and Ready. Returns the
    /// watch of its plugin pods.
    async fn plugin_everywhere(
        &mut self,
        op: &Operator,
        names: &[String],
        gpus: &[u32],
        report: &mut NewPoolReport,
    ) -> Result<PodsReady, Error> {
        let pid = Some(op.pid());
        let label = format!(
            "{}={}",
            DEVICE_PLUGIN_POD_LABEL.0, DEVICE_PLUGIN_POD_LABEL.1
        );
        let plugins = PodsReady::start(&self.client, PLUGIN_NAMESPACE, &label, NODE_PREFIX);
        self.wait_listed(&plugins).await?;
        // Whatever the floor's deletion left for the controllers to do, done.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let want = Expected {
            nodes: names.len() as i64,
            allocatable: gpus.iter().map(|g| i64::from(*g)).sum(),
        };
        log(format!(
            "phase 7 pool: GpuPool {POOL} over the {} nodes",
            names.len()
        ));
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let t0 = Instant::now();
        let settled = self.first_settled(want.clone(), t0);
        self.create_pool(POOL, AGENTPOOL).await?;
        let last = self
            .every_node_ready(&plugins, names, "the pool's plugin Ready on every node", t0)
            .await?;
        report.plugin_everywhere = last.saturating_duration_since(t0);
        self.end_phase(PLUGIN_EVERYWHERE, pid, t0);
        report.operator_cpu_s = self.report.cpu[PLUGIN_EVERYWHERE]
            .get(OPERATOR)
            .copied()
            .unwrap_or(0.0);
        log(format!(
            "the pool's plugin Ready on every node after {:.2} s (floor {:.2} s); operator CPU {:.2} s",
            report.plugin_everywhere.as_secs_f64(),
            report.floor.as_secs_f64(),
            report.operator_cpu_s
        ));
        let t1 = Instant::now();
        let ready = settled.await.map_err(|e| Error::Command {
            what: "waiting for the new pool's status".into(),
            detail: e.to_string(),
        })??;
        report.pool_ready = ready.saturating_duration_since(t0);
        self.end_phase(SETTLE, pid, t1);
        log(format!(
            "the pool's status current and Ready after {:.2} s",
            report.pool_ready.as_secs_f64()
        ));
        Ok(plugins)
    }

    /// One node of the big pool at a time, one change a second: allocatable down by one until the
    /// pool shows it, then back up until it shows that.
    async fn new_pool_gpu_changes(
        &mut self,
        op: &Operator,
        gpus: &mut [u32],
        report: &mut NewPoolReport,
    ) -> Result<(), Error> {
        let (n, samples) = (gpus.len(), self.opts.new_pool_samples);
        if samples == 0 {
            return Ok(());
        }
        log(format!(
            "phase 7 gpu changes: nvidia.com/gpu allocatable of {samples} nodes of the pool, one at a time (down, then back up)"
        ));
        self.cpu_mark = cpu_snapshot(self.plane, Some(op.pid()));
        let start = Instant::now();
        let stride = (n / samples).max(1);
        for k in 0..samples {
            let j = (k * stride) % n;
            let capacity = gpus[j];
            for allocatable in [capacity - 1, capacity] {
                let want: i64 = gpus.iter().map(|g| i64::from(*g)).sum::<i64>()
                    - i64::from(capacity - allocatable);
                tokio::time::sleep(CHANGE_SPACING).await;
                let took = self
                    .time_gpu_change(POOL, &node_name(j), (capacity, allocatable), want)
                    .await?;
                report.gpu_change_to_status.samples.push(took);
            }
        }
        self.end_phase(GPU_CHANGES, Some(op.pid()), start);
        log(format!(
            "allocatable -> status in the big pool: p50 {:.1} ms, p99 {:.1} ms",
            report.gpu_change_to_status.p50().as_secs_f64() * 1e3,
            report.gpu_change_to_status.p99().as_secs_f64() * 1e3
        ));
        Ok(())
    }

    /// `--new-pool-grow` more nodes join the pool's agent pool; per node, from its create request
    /// until its plugin pod is Ready. Then until the pool's status counts them.
    async fn grow(
        &mut self,
        op: &Operator,
        plugins: &PodsReady,
        gpus: &mut Vec<u32>,
    ) -> Result<GrowReport, Error> {
        let (n, m) = (gpus.len(), self.opts.new_pool_grow);
        let pid = Some(op.pid());
        log(format!(
            "phase 7 grow: {m} more nodes join agent pool {AGENTPOOL}"
        ));
        gpus.extend((n..n + m).map(|j| GPU_COUNTS[j % GPU_COUNTS.len()]));
        let names: Vec<String> = (n..n + m).map(node_name).collect();
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let start = Instant::now();
        let client = &self.client;
        let created: Vec<(usize, Instant)> = futures::stream::iter(n..n + m)
            .map(|j| async move {
                let at = Instant::now();
                nodes::create_node(client, &node(j)).await?;
                Ok::<_, Error>((j, at))
            })
            .buffer_unordered(self.opts.create_concurrency.max(1))
            .try_collect()
            .await?;
        let last = self
            .every_node_ready(
                plugins,
                &names,
                "the plugin Ready on every node that joined",
                start,
            )
            .await?;
        self.end_phase(GROW, pid, start);
        let ready = plugins.ready_at(&names).unwrap_or_default();
        let mut grow = GrowReport {
            nodes: m,
            all: last.saturating_duration_since(start),
            operator_cpu_s: self.report.cpu[GROW].get(OPERATOR).copied().unwrap_or(0.0),
            ..GrowReport::default()
        };
        grow.node_to_plugin.samples = created
            .iter()
            .map(|(j, at)| ready[j - n].saturating_duration_since(*at))
            .collect();
        log(format!(
            "the plugin Ready on all {m} nodes that joined {:.1} s after the first was created (per node p50 {:.1} s, p99 {:.1} s)",
            grow.all.as_secs_f64(),
            grow.node_to_plugin.p50().as_secs_f64(),
            grow.node_to_plugin.p99().as_secs_f64()
        ));
        let want = Expected {
            nodes: gpus.len() as i64,
            allocatable: gpus.iter().map(|g| i64::from(*g)).sum(),
        };
        self.pool_seen(
            POOL,
            "the grown pool's status current and Ready",
            None,
            |seen| seen.settled(&want),
        )
        .await?;
        Ok(grow)
    }

    pub(super) async fn wait_listed(&self, pods: &PodsReady) -> Result<(), Error> {
        poll_until(
            "a pod watch listed",
            self.opts.timeout,
            Duration::from_millis(20),
            || async { pods.listed().then_some(()) },
        )
        .await
    }

    /// Waits until a Ready pod was seen on every one of `nodes`; returns when the last one was.
    pub(super) async fn every_node_ready(
        &self,
        pods: &PodsReady,
        nodes: &[String],
        what: &str,
        since: Instant,
    ) -> Result<Instant, Error> {
        let mut next_log = Instant::now() + PROGRESS_EVERY;
        poll_until(what, self.opts.timeout, Duration::from_millis(20), || {
            let now = Instant::now();
            if now >= next_log {
                next_log = now + PROGRESS_EVERY;
                log(format!(
                    "  {:.0} s: {} of {} nodes",
                    now.saturating_duration_since(since).as_secs_f64(),
                    pods.ready_among(nodes),
                    nodes.len()
                ));
            }
            let all = pods
                .ready_at(nodes)
                .map(|at| at.into_iter().max().unwrap_or(since));
            async move { all }
        })
        .await
    }

    /// A task watching for the first state of the new pool that is current (counts `want`) and
    /// Ready, arriving at or after `since`; returns when that state arrived.
    fn first_settled(
        &self,
        want: Expected,
        since: Instant,
    ) -> tokio::task::JoinHandle<Result<Instant, Error>> {
        let watched = self.watched.clone();
        let timeout = self.opts.timeout;
        tokio::spawn(async move {
            poll_until(
                "the new pool's status current and Ready",
                timeout,
                Duration::from_millis(10),
                || async {
                    let (seen, at) = watched.pool(POOL)?;
                    (at >= since && seen.settled(&want)).then_some(at)
                },
            )
            .await
        })
    }
}

/// The floor's DaemonSet: `template` (the plugin's pod template) with its own pod labels, a
/// nodeSelector on the new nodes' agent pool instead of the plugin label's affinity, and the pause
/// image.
fn floor_daemonset(mut template: PodTemplateSpec) -> Result<DaemonSet, Error> {
    let labels = serde_json::json!({FLOOR_LABEL.0: FLOOR_LABEL.1});
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels = Some(setup::object(labels.clone())?);
    }
    if let Some(pod) = template.spec.as_mut() {
        pod.affinity = None;
        pod.node_selector = Some([(AGENTPOOL_LABEL.to_owned(), AGENTPOOL.to_owned())].into());
        for container in &mut pod.containers {
            container.image = Some(FLOOR_IMAGE.to_owned());
        }
    }
    let mut ds: DaemonSet = setup::object(serde_json::json!({
        "metadata": {"name": FLOOR_DAEMONSET, "namespace": PLUGIN_NAMESPACE, "labels": labels},
        "spec": {"selector": {"matchLabels": labels}, "template": {}},
    }))?;
    if let Some(spec) = ds.spec.as_mut() {
        spec.template = template;
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_runs_the_plugins_pod_template_on_the_agent_pool() {
        let template: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {
                "labels": {"name": "nvidia-device-plugin-ds", "gpupool.io/pool": "p"},
                "annotations": {"scheduler.alpha.kubernetes.io/critical-pod": ""},
            },
            "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                    {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "gpupool.io/device-plugin", "operator": "In", "values": ["p"]}]}]}}},
                "tolerations": [{"key": "sku", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "system-node-critical",
                "containers": [{"name": "nvidia-device-plugin-ctr",
                    "image": "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"}],
            },
        }))
        .unwrap();
        let ds = floor_daemonset(template).unwrap();
        let json = serde_json::to_value(&ds).unwrap();
        assert_eq!(json["metadata"]["name"], FLOOR_DAEMONSET);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            json["spec"]["template"]["metadata"]["labels"]
        );
        let pod = &json["spec"]["template"]["spec"];
        assert!(pod.get("affinity").is_none(), "{pod}");
        assert_eq!(pod["nodeSelector"][AGENTPOOL_LABEL], AGENTPOOL);
        assert_eq!(pod["tolerations"][0]["key"], "sku");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["containers"][0]["image"], FLOOR_IMAGE);
        assert!(!json.to_string().contains("nvidia-device-plugin-ds"));
        assert!(!json.to_string().contains("k8s-device-plugin"));
    }
}

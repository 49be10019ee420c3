//! The measured phases, in order: operator start, a burst of pools, pools one a second, GPU
//! allocatable changes, a quiet period, a cold start and (in `rollout.rs`) a GPU-verified plugin
//! rollout.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};

use super::audit::count_requests;
use super::observe::{Expected, NodeGpus, Seen, Watched, gpupool_resource};
use super::operator::Operator;
use super::procfs::{cpu_delta, cpu_snapshot, proc_stats};
use super::report::{QUIET, Report};
use super::{BenchOptions, SPACED_POOL_INTERVAL, log, setup};
use crate::{ControlPlane, Error, nodes, poll_until};

/// One benchmark run on a plane whose nodes exist and are Ready.
pub(super) struct Bench<'a> {
    pub plane: &'a ControlPlane,
    pub opts: &'a BenchOptions,
    pub client: kube::Client,
    /// The operator's user name in the audit log.
    pub user: String,
    /// `(capacity, allocatable)` nvidia.com/gpu of node j, as last set.
    pub gpus: Vec<(u32, u32)>,
    pub watched: Arc<Watched>,
    pub report: Report,
    /// Pools of the spaced phase created so far.
    pub(super) spaced_created: usize,
    /// CPU seconds per process at the end of the last phase.
    pub(super) cpu_mark: BTreeMap<String, f64>,
    /// (phase, start, end), for counting requests in the audit log at the end.
    pub(super) windows: Vec<(&'static str, Instant, Instant)>,
}

impl<'a> Bench<'a> {
    pub fn new(plane: &'a ControlPlane, opts: &'a BenchOptions, client: kube::Client) -> Self {
        Bench {
            plane,
            opts,
            watched: Watched::start(&client),
            client,
            user: String::new(),
            gpus: Vec::new(),
            report: Report::default(),
            spaced_created: 0,
            cpu_mark: BTreeMap::new(),
            windows: Vec::new(),
        }
    }

    /// Runs every phase with the operator identity of `kubeconfig`.
    pub async fn run(mut self, kubeconfig: &Path) -> Result<Report, Error> {
        let mut op = self.start_operator(kubeconfig).await?;
        let mut measured = Ok(());
        if self.opts.pools > 0 {
            self.pool_burst(op.pid()).await?;
            self.spaced_pools(op.pid()).await?;
            self.allocatable_changes(op.pid()).await?;
            self.quiet_period(&op).await?;
            op = self.cold_start(op, kubeconfig).await?;
            measured = self.rollout(&op).await;
        }
        if measured.is_ok() {
            measured = self.new_pool(&op).await;
        }
        if measured.is_ok() {
            measured = self.dra(&op).await;
        }
        // Counted once every request received so far is in the log (written in batches).
        let counted = self.count_requests().await;
        op.stop().await;
        measured?;
        counted?;
        Ok(self.report)
    }

    async fn start_operator(&mut self, kubeconfig: &Path) -> Result<Operator, Error> {
        log("starting the operator");
        self.cpu_mark = cpu_snapshot(self.plane, None);
        let mut op = Operator::start(self.plane, &self.opts.operator, kubeconfig, "operator")?;
        self.report.operator_synced = op.wait_synced(self.opts.timeout).await?;
        log(format!(
            "operator caches synced after {:.2} s",
            self.report.operator_synced.as_secs_f64()
        ));
        self.end_phase("0 operator start", Some(op.pid()), op.started);
        Ok(op)
    }

    /// Phase 1: every pool created back to back (or `--pool-interval-ms` apart); DaemonSet first
    /// sight per pool, then every status current and every plugin pod ready.
    async fn pool_burst(&mut self, op_pid: u32) -> Result<(), Error> {
        log(format!("phase 1: creating {} pools", self.opts.pools));
        let phase_start = Instant::now();
        let mut created_at = Vec::with_capacity(self.opts.pools);
        for i in 0..self.opts.pools {
            created_at.push(Instant::now());
            self.create_pool(&super::pool_name(i), &super::agentpool(i))
                .await?;
            if !self.opts.pool_interval.is_zero() {
                tokio::time::sleep(self.opts.pool_interval).await;
            }
        }
        for (i, t0) in created_at.iter().enumerate() {
            let at = self.daemonset_seen(&super::pool_name(i)).await?;
            let latency = at.saturating_duration_since(*t0);
            self.report.pool_to_daemonset.samples.push(latency);
        }
        let first_created = created_at[0];
        let current = self
            .all_pools("every pool's status current", None, Seen::current)
            .await?;
        self.report.all_pools_current = current.saturating_duration_since(first_created);
        log(format!(
            "every pool current {:.2} s after the first was created; waiting for the plugin pods",
            self.report.all_pools_current.as_secs_f64()
        ));
        let ready = self
            .all_pools("every plugin pod ready", None, Seen::plugins_ready)
            .await?;
        self.report.plugin_pods_ready = ready.saturating_duration_since(first_created);
        log(format!(
            "every plugin pod ready after {:.1} s",
            self.report.plugin_pods_ready.as_secs_f64()
        ));
        self.end_phase("1 pools", Some(op_pid), phase_start);
        Ok(())
    }

    /// Phase 1b: `--spaced-pools` more pools (of agent pools without nodes), one a second, on a
    /// settled cluster: the latency of a single change rather than of a burst.
    async fn spaced_pools(&mut self, op_pid: u32) -> Result<(), Error> {
        let count = self.opts.spaced_pools;
        if count == 0 {
            return Ok(());
        }
        log(format!("phase 1b: creating {count} pools one a second"));
        let phase_start = Instant::now();
        let mut created_at = Vec::with_capacity(count);
        for k in 0..count {
            let due = phase_start + SPACED_POOL_INTERVAL * u32::try_from(k).unwrap_or(u32::MAX);
            tokio::time::sleep_until(due.into()).await;
            created_at.push(Instant::now());
            self.create_pool(&super::spaced_pool_name(k), &super::spaced_agentpool(k))
                .await?;
            self.spaced_created += 1;
        }
        for (k, t0) in created_at.iter().enumerate() {
            let at = self.daemonset_seen(&super::spaced_pool_name(k)).await?;
            let latency = at.saturating_duration_since(*t0);
            self.report.pool_to_daemonset_spaced.samples.push(latency);
        }
        self.all_pools("every spaced pool's status current", None, Seen::current)
            .await?;
        self.end_phase("1b spaced pools", Some(op_pid), phase_start);
        Ok(())
    }

    /// Phase 2: one node at a time, allocatable down by one until the pool shows it, then back
    /// up until the pool shows that (so the cluster is healthy again for the quiet period).
    async fn allocatable_changes(&mut self, op_pid: u32) -> Result<(), Error> {
        let (nodes, pools, samples) = (self.opts.nodes, self.opts.pools, self.opts.samples);
        log(format!(
            "phase 2: changing nvidia.com/gpu allocatable on {samples} nodes (down, then back up)"
        ));
        let phase_start = Instant::now();
        let stride = (nodes / samples.max(1)).max(1);
        for k in 0..samples {
            let j = (k * stride + k % pools) % nodes;
            let (capacity, allocatable) = self.gpus[j];
            for new in [allocatable - 1, allocatable] {
                let latency = self.change_allocatable(j, capacity, new).await?;
                self.report.gpu_change_to_status.samples.push(latency);
            }
        }
        // Let every pool settle (statuses current, nothing in flight) before the quiet period.
        self.all_pools(
            "every pool current after the GPU changes",
            None,
            Seen::current,
        )
        .await?;
        self.end_phase("2 gpu changes", Some(op_pid), phase_start);
        Ok(())
    }

    /// Sets node j's allocatable; returns the time until its pool's status showed the new sum.
    async fn change_allocatable(
        &mut self,
        j: usize,
        capacity: u32,
        allocatable: u32,
    ) -> Result<Duration, Error> {
        self.gpus[j] = (capacity, allocatable);
        let pool = super::pool_name(j % self.opts.pools);
        let want = self.expected()[j % self.opts.pools].1.allocatable;
        self.time_gpu_change(&pool, &super::node_name(j), (capacity, allocatable), want)
            .await
    }

    /// Sets `node`'s `nvidia.com/gpu` (capacity, allocatable); returns the time until `pool`'s
    /// status, as the benchmark's watch saw it, showed `want` allocatable GPUs.
    pub(super) async fn time_gpu_change(
        &self,
        pool: &str,
        node: &str,
        (capacity, allocatable): (u32, u32),
        want: i64,
    ) -> Result<Duration, Error> {
        let t0 = Instant::now();
        nodes::set_gpus(&self.client, node, capacity, allocatable).await?;
        let what = format!("{pool} to show {want} allocatable GPUs");
        let at = self
            .pool_seen(pool, &what, Some(t0), |seen| seen.allocatable == Some(want))
            .await?;
        Ok(at.saturating_duration_since(t0))
    }

    /// Waits until `pool`'s status passes `ok` in a version the benchmark's watch received at
    /// or after `since`; returns when the watch received it.
    pub(super) async fn pool_seen(
        &self,
        pool: &str,
        what: &str,
        since: Option<Instant>,
        ok: impl Fn(&Seen) -> bool,
    ) -> Result<Instant, Error> {
        // The time is the watch's, not this loop's: polling often only ends the wait sooner.
        poll_until(
            what,
            self.opts.timeout,
            Duration::from_millis(5),
            || async {
                let (seen, at) = self.watched.pool(pool)?;
                (since.is_none_or(|s| at >= s) && ok(&seen)).then_some(at)
            },
        )
        .await
    }

    /// Nothing changes but kwok's heartbeats; then the first operator's totals are read.
    async fn quiet_period(&mut self, op: &Operator) -> Result<(), Error> {
        // Quiet means settled: every pool Ready (the spaced pools' DaemonSets counted by a
        // DaemonSet controller still busy with the burst's 5,000 pods), and the last change's
        // Event, published right after the status the previous phase waited for, landed.
        self.all_pools(
            "every pool Ready before the quiet period",
            None,
            Seen::settled,
        )
        .await?;
        // A watch of its own counts the node events the operator's node watch takes in.
        let node_events = NodeGpus::start(&self.client, self.opts.pools.max(1));
        poll_until(
            "the benchmark's node watch listed",
            Duration::from_secs(120),
            Duration::from_millis(100),
            || async { node_events.listed().then_some(()) },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        log(format!("quiet period: {} s", self.opts.quiet.as_secs()));
        let before = op.reconcile_metrics().await;
        node_events.reset();
        let phase_start = Instant::now();
        tokio::time::sleep(self.opts.quiet).await;
        self.report.quiet_node_events = node_events.updates();
        drop(node_events);
        self.end_phase(QUIET, Some(op.pid()), phase_start);
        self.report.reconciles = op.reconcile_metrics().await;
        self.report.quiet_reconciles = before
            .zip(self.report.reconciles)
            .map(|((before, _), (after, _))| after - before);
        self.report.operator = read_proc_stats(op, "operator")?;
        Ok(())
    }

    /// Phase 3: the operator dies, every status is removed, a new operator starts; until every
    /// status is current again. Returns the new operator.
    async fn cold_start(&mut self, mut op: Operator, kubeconfig: &Path) -> Result<Operator, Error> {
        log("phase 3: cold start");
        op.process.kill();
        self.clear_statuses().await?;
        self.cpu_mark = cpu_snapshot(self.plane, None);
        let phase_start = Instant::now();
        let mut op2 =
            Operator::start(self.plane, &self.opts.operator, kubeconfig, "operator-cold")?;
        let started = op2.started;
        // Poll both: readiness is only for the report.
        let (synced, current) = tokio::join!(
            op2.wait_synced(self.opts.timeout),
            self.all_pools(
                "every pool's status current after the cold start",
                Some(started),
                Seen::current
            )
        );
        self.report.cold_start_synced = synced?;
        self.report.cold_start_current = current?.saturating_duration_since(started);
        // A few seconds of steady state belong to the cold start's resource use.
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.end_phase("3 cold start", Some(op2.pid()), phase_start);
        self.report.operator_cold = read_proc_stats(&op2, "restarted operator")?;
        Ok(op2)
    }

    /// The operator's requests in every phase, from the audit log.
    async fn count_requests(&mut self) -> Result<(), Error> {
        crate::audit::flush(self.plane).await?;
        let audit = self.plane.audit_log_path();
        for (name, from, to) in &self.windows {
            let counts = count_requests(&audit, &self.user, *from, *to);
            self.report.requests.insert(name, counts);
        }
        self.count_rollout_writes(&audit);
        if let Some(new_pool) = self.report.new_pool.as_mut() {
            let counts = |phase| self.report.requests.get(phase).cloned().unwrap_or_default();
            new_pool.requests = counts(super::newpool::PLUGIN_EVERYWHERE);
            if let Some(grow) = new_pool.grow.as_mut() {
                grow.requests = counts(super::newpool::GROW);
            }
        }
        if let Some(dra) = self.report.dra.as_mut() {
            let counts = |phase| self.report.requests.get(phase).cloned().unwrap_or_default();
            dra.driver_requests = counts(super::dra::DRIVER_EVERYWHERE);
            dra.slice_requests = counts(super::dra::SLICES);
            dra.quiet_requests = counts(super::dra::QUIET);
        }
        Ok(())
    }

    async fn clear_statuses(&self) -> Result<(), Error> {
        let api = self.pools_api();
        let want = self.expected();
        for (name, _) in &want {
            let patch = Patch::Merge(serde_json::json!({"status": null}));
            api.patch_status(name, &PatchParams::default(), &patch)
                .await?;
        }
        poll_until(
            "every status cleared",
            self.opts.timeout,
            Duration::from_millis(20),
            || async {
                want.iter()
                    .all(|(name, _)| {
                        self.watched
                            .pool(name)
                            .is_some_and(|(s, _)| s.observed_generation.is_none())
                    })
                    .then_some(())
            },
        )
        .await
    }
}

/// Book-keeping shared by the phases.
impl Bench<'_> {
    /// Closes a phase: its CPU use per process, and its window for the request counts.
    pub(super) fn end_phase(
        &mut self,
        name: &'static str,
        operator_pid: Option<u32>,
        from: Instant,
    ) {
        let snapshot = cpu_snapshot(self.plane, operator_pid);
        self.report
            .cpu
            .insert(name, cpu_delta(&self.cpu_mark, &snapshot));
        self.cpu_mark = snapshot;
        self.windows.push((name, from, Instant::now()));
    }

    /// Every pool created so far with what its status must say: node j belongs to pool j mod P;
    /// the spaced pools select no node.
    pub(super) fn expected(&self) -> Vec<(String, Expected)> {
        let pools = self.opts.pools;
        let mut out: Vec<(String, Expected)> = (0..pools)
            .map(|i| (super::pool_name(i), Expected::default()))
            .collect();
        for (j, (_, allocatable)) in self.gpus.iter().enumerate() {
            let want = &mut out[j % pools].1;
            want.nodes += 1;
            want.allocatable += i64::from(*allocatable);
        }
        out.extend(
            (0..self.spaced_created).map(|k| (super::spaced_pool_name(k), Expected::default())),
        );
        out
    }

    /// Waits until `ok` holds for every pool (with a state that arrived at or after `since`, if
    /// given); returns when the last of those states arrived.
    pub(super) async fn all_pools(
        &self,
        what: &str,
        since: Option<Instant>,
        ok: impl Fn(&Seen, &Expected) -> bool,
    ) -> Result<Instant, Error> {
        let want = self.expected();
        let every = Duration::from_millis(20);
        poll_until(what, self.opts.timeout, every, || async {
            let mut last: Option<Instant> = None;
            for (name, expected) in &want {
                let (seen, at) = self.watched.pool(name)?;
                if !ok(&seen, expected) || since.is_some_and(|s| at < s) {
                    return None;
                }
                last = Some(last.map_or(at, |l| l.max(at)));
            }
            last
        })
        .await
    }

    pub(super) fn pools_api(&self) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &gpupool_resource())
    }

    pub(super) async fn create_pool(&self, name: &str, agentpool: &str) -> Result<(), Error> {
        let spec = serde_json::json!({"devicePlugin": {"image": super::PLUGIN_IMAGE}});
        self.create_pool_with(name, agentpool, spec).await
    }

    /// A pool of the agent pool's nodes, with `spec` besides its nodeSelector.
    pub(super) async fn create_pool_with(
        &self,
        name: &str,
        agentpool: &str,
        mut spec: serde_json::Value,
    ) -> Result<(), Error> {
        spec["nodeSelector"] = serde_json::json!({
            "matchLabels": {"kubernetes.azure.com/agentpool": agentpool},
        });
        let body: DynamicObject = setup::object(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool",
            "metadata": {"name": name},
            "spec": spec,
        }))?;
        self.pools_api()
            .create(&PostParams::default(), &body)
            .await?;
        Ok(())
    }

    /// When the pool's DaemonSet was first seen (waiting for it up to `--timeout-seconds`).
    async fn daemonset_seen(&self, pool: &str) -> Result<Instant, Error> {
        let daemonset = format!("nvidia-device-plugin-{pool}");
        poll_until(
            &format!("DaemonSet {daemonset}"),
            self.opts.timeout,
            Duration::from_millis(20),
            || async { self.watched.daemonset(&daemonset) },
        )
        .await
    }
}

pub(super) fn read_proc_stats(op: &Operator, which: &str) -> Result<super::ProcStats, Error> {
    proc_stats(op.pid()).ok_or_else(|| Error::Command {
        what: format!("reading the {which}'s /proc entry"),
        detail: format!("process {} is gone", op.pid()),
    })
}

//! Phase 8: a DRA pool at scale (#23: "5,000 nodes with slices in the benchmark, slices watched,
//! memory per slice measured"). `--dra-nodes` N GPU nodes of their own agent pool join (no
//! `nvidia.com/gpu`: the DRA driver serves them; tainted like the others); NVIDIA's GPU DRA
//! driver's cluster pieces are installed as its chart does ([`crate::simulate::dra::install`]),
//! its kubelet-plugin DaemonSet selecting the nodes gpupool labels for the pool
//! (`gpupool.io/dra=<pool>`); then
//!
//! 1. one GpuPool with `allocation: Dra` over the N nodes: from its create request until the
//!    driver's pod is Ready on every node (the operator's label writes; requests counted);
//! 2. the operator's RSS once that settled, then the nodes' ResourceSlices arrive (one per node,
//!    as the driver publishes them, written here directly: [`crate::simulate::dra::driver_slice`]
//!    with the node's GPUs), until the pool's status is Ready with every node and GPU counted from
//!    them; the operator's RSS again once that settled: memory per slice (and per device) is the
//!    difference over the slices;
//! 3. a quiet period (`--dra-quiet-seconds`): the operator's CPU, requests, writes and reconciles
//!    while nothing but heartbeats happens.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};

use super::observe::Seen;
use super::operator::Operator;
use super::phases::{Bench, read_proc_stats};
use super::pods::PodsReady;
use super::procfs::cpu_snapshot;
use super::report::{DraReport, OPERATOR};
use super::{GPU_COUNTS, log, setup};
use crate::Error;
use crate::simulate::dra::{self, DraGpus, Install};

/// Phase names in `requests` and `cpu`.
pub(super) const NODES_JOIN: &str = "8a dra: nodes join";
pub(super) const DRIVER_EVERYWHERE: &str = "8b dra: driver everywhere";
pub(super) const SLICES: &str = "8c dra: slices arrive";
pub(super) const QUIET: &str = "8d dra: quiet";

const POOL: &str = "bench-dra";
const AGENTPOOL: &str = "benchdra";
const NODE_PREFIX: &str = "dra-node-";
/// gpupool's node label for a DRA pool's nodes, which the driver's DaemonSet selects.
const DRA_LABEL: &str = "gpupool.io/dra";
const AGENTPOOL_LABEL: &str = "kubernetes.azure.com/agentpool";
/// How long the operator is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(5);

fn node_name(j: usize) -> String {
    format!("{NODE_PREFIX}{j}")
}

fn gpus(j: usize) -> u32 {
    GPU_COUNTS[j % GPU_COUNTS.len()]
}

impl Bench<'_> {
    /// Phase 8 (see the module docs); nothing without `--dra-nodes`.
    pub(super) async fn dra(&mut self, op: &Operator) -> Result<(), Error> {
        let n = self.opts.dra_nodes;
        if n == 0 {
            return Ok(());
        }
        let pid = Some(op.pid());
        let mut report = DraReport {
            nodes: n,
            slices: n,
            devices: (0..n).map(|j| gpus(j) as usize).sum(),
            quiet: self.opts.dra_quiet,
            ..DraReport::default()
        };
        log(format!(
            "phase 8: {n} DRA nodes of agent pool {AGENTPOOL} join; the DRA driver is installed"
        ));
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let start = Instant::now();
        let joining = (0..n)
            .map(|j| {
                dra::dra_node(&node_name(j), AGENTPOOL, gpus(j)).taint("sku", "gpu", "NoSchedule")
            })
            .collect();
        setup::create_plain_nodes(&self.client, joining, self.opts.create_concurrency).await?;
        let selector = format!("{AGENTPOOL_LABEL}={AGENTPOOL}");
        setup::wait_ready(&self.client, &selector, n, self.opts.timeout).await?;
        let install = Install::default()
            .node_selector(DRA_LABEL, POOL)
            .tolerate("sku");
        dra::install(&self.client, &install).await?;
        self.end_phase(NODES_JOIN, pid, start);
        let names: Vec<String> = (0..n).map(node_name).collect();

        self.driver_everywhere(op, &install, &names, &mut report)
            .await?;
        self.slices_arrive(op, &names, &mut report).await?;
        self.dra_quiet(op, &mut report).await?;
        self.report.dra = Some(report);
        Ok(())
    }

    /// The DRA pool: from its create request until the driver's pod is Ready on every node.
    async fn driver_everywhere(
        &mut self,
        op: &Operator,
        install: &Install,
        names: &[String],
        report: &mut DraReport,
    ) -> Result<(), Error> {
        let pid = Some(op.pid());
        let (key, value) = dra::component_label(&install.chart);
        let drivers = PodsReady::start(
            &self.client,
            &install.namespace,
            &format!("{key}={value}"),
            NODE_PREFIX,
        );
        self.wait_listed(&drivers).await?;
        log(format!(
            "phase 8: GpuPool {POOL} (allocation: Dra) over the {} nodes",
            names.len()
        ));
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let t0 = Instant::now();
        self.create_pool_with(POOL, AGENTPOOL, serde_json::json!({"allocation": "Dra"}))
            .await?;
        let last = self
            .every_node_ready(&drivers, names, "the DRA driver Ready on every node", t0)
            .await?;
        report.driver_everywhere = last.saturating_duration_since(t0);
        self.end_phase(DRIVER_EVERYWHERE, pid, t0);
        log(format!(
            "the DRA driver Ready on every node after {:.2} s",
            report.driver_everywhere.as_secs_f64()
        ));
        Ok(())
    }

    /// The operator's RSS; every node's slice; until the pool is Ready with all of them counted;
    /// the RSS again.
    async fn slices_arrive(
        &mut self,
        op: &Operator,
        names: &[String],
        report: &mut DraReport,
    ) -> Result<(), Error> {
        let pid = Some(op.pid());
        self.pool_seen(POOL, "the DRA pool's status current", None, |seen| {
            seen.observed_generation.is_some() && seen.observed_generation == seen.generation
        })
        .await?;
        tokio::time::sleep(SETTLE).await;
        report.rss_before_kib = read_proc_stats(op, "operator")?.rss_kib;
        log(format!(
            "phase 8: {} ResourceSlices arrive (operator RSS before: {:.1} MiB)",
            names.len(),
            report.rss_before_kib as f64 / 1024.0
        ));
        let want_nodes = names.len() as i64;
        let want_gpus = report.devices as i64;
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let t0 = Instant::now();
        let client = &self.client;
        futures::stream::iter(names.iter().enumerate())
            .map(|(j, node)| async move {
                let devices = DraGpus::a100_40gb(gpus(j)).devices(node);
                dra::create_slice(client, &dra::driver_slice(node, devices))
                    .await
                    .map(drop)
            })
            .buffer_unordered(self.opts.create_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        report.slices_created = t0.elapsed();
        let counted = |seen: &Seen| {
            seen.ready && seen.dra_nodes == Some(want_nodes) && seen.dra_gpus == Some(want_gpus)
        };
        let at = self
            .pool_seen(
                POOL,
                "the DRA pool Ready with every slice counted",
                Some(t0),
                counted,
            )
            .await?;
        report.slices_to_ready = at.saturating_duration_since(t0);
        self.end_phase(SLICES, pid, t0);
        report.operator_cpu_s = self.report.cpu[SLICES]
            .get(OPERATOR)
            .copied()
            .unwrap_or(0.0);
        tokio::time::sleep(SETTLE).await;
        let stats = read_proc_stats(op, "operator")?;
        report.rss_after_kib = stats.rss_kib;
        report.peak_rss_kib = stats.peak_rss_kib;
        log(format!(
            "the DRA pool Ready with {want_gpus} GPUs on {want_nodes} nodes {:.2} s after the first slice (all created in {:.1} s); operator RSS {:.1} MiB ({:+.2} KiB per slice)",
            report.slices_to_ready.as_secs_f64(),
            report.slices_created.as_secs_f64(),
            report.rss_after_kib as f64 / 1024.0,
            report.kib_per_slice()
        ));
        Ok(())
    }

    /// Nothing but heartbeats: the operator's CPU, requests and reconciles.
    async fn dra_quiet(&mut self, op: &Operator, report: &mut DraReport) -> Result<(), Error> {
        if self.opts.dra_quiet.is_zero() {
            return Ok(());
        }
        log(format!(
            "phase 8 quiet period: {} s",
            self.opts.dra_quiet.as_secs()
        ));
        let pid = Some(op.pid());
        let before = op.reconcile_metrics().await;
        self.cpu_mark = cpu_snapshot(self.plane, pid);
        let start = Instant::now();
        tokio::time::sleep(self.opts.dra_quiet).await;
        self.end_phase(QUIET, pid, start);
        report.quiet_cpu_s = self.report.cpu[QUIET].get(OPERATOR).copied().unwrap_or(0.0);
        report.quiet_reconciles = before
            .zip(op.reconcile_metrics().await)
            .map(|((before, _), (after, _))| after - before);
        report.rss_after_quiet_kib = read_proc_stats(op, "operator")?.rss_kib;
        Ok(())
    }
}

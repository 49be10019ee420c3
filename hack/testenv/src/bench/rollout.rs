//! Phase 4: GPU-verified plugin rollouts at scale (#22). From here on every bench node's GPUs
//! follow its plugin pod ([`PluginGpus`] in this process: a replaced plugin's GPUs go away with
//! its pod and come back when the new one registers); `--rollout-pools` pools get a new plugin
//! image at once and are replaced node by node by the operator; then one of them gets a broken
//! plugin (registers no GPU) and must halt at its first node.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};

use super::audit::writes_by_pool;
use super::observe::{NodeGpus, Seen};
use super::operator::Operator;
use super::phases::Bench;
use super::report::RolloutReport;
use super::{BROKEN_IMAGE, PLUGIN_IMAGE, ROLLOUT_IMAGE, log, pool_name};
use crate::simulate::PluginGpus;
use crate::{Error, poll_until};

/// Phase names in `requests` and `cpu`.
pub(super) const IDLE: &str = "4a gpus follow plugins, idle";
pub(super) const ROLLOUT: &str = "4b rollout";
pub(super) const HALT: &str = "4c rollout halts";

/// How often the rollout's progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

impl Bench<'_> {
    /// Phase 4: the simulated device manager starts (and idles for `--rollout-idle-seconds`), the
    /// first `--rollout-pools` pools get [`ROLLOUT_IMAGE`] at once; until each reports its rollout
    /// Complete, a Node watch counts per pool the nodes without GPUs. Then pool 0 gets
    /// [`BROKEN_IMAGE`] with a short progress deadline, until it reports Halted.
    pub(super) async fn rollout(&mut self, op: &Operator) -> Result<(), Error> {
        let rolled = self.opts.rolled_pools();
        if rolled == 0 {
            return Ok(());
        }
        let expected = self.expected();
        let nodes: usize = expected[..rolled]
            .iter()
            .map(|(_, e)| e.nodes as usize)
            .sum();
        let mut report = RolloutReport {
            pools: rolled,
            nodes,
            max_unavailable: self.opts.rollout_max_unavailable,
            halt_deadline: self.opts.halt_deadline_seconds,
            idle: self.opts.rollout_idle,
            ..RolloutReport::default()
        };

        log(format!(
            "phase 4: every node's GPUs follow its plugin pod from now on; {} s idle",
            self.opts.rollout_idle.as_secs()
        ));
        let idle_start = Instant::now();
        let devices = PluginGpus::spawn(self.client.clone());
        devices.wait_synced(self.opts.timeout).await?;
        report.simulation_synced = idle_start.elapsed();
        report.simulation_initial_writes = devices.writes().len();
        // A measurement window (what following every node costs while nothing happens), not a
        // wait for anything.
        log(format!(
            "simulated device manager listed after {:.2} s, {} node writes at start",
            report.simulation_synced.as_secs_f64(),
            report.simulation_initial_writes
        ));
        tokio::time::sleep(self.opts.rollout_idle).await;
        self.end_phase(IDLE, Some(op.pid()), idle_start);

        let gpus = NodeGpus::start(&self.client, self.opts.pools);
        let all = self.opts.nodes;
        poll_until(
            "a Node watch showing every node with its GPUs",
            self.opts.timeout,
            Duration::from_millis(100),
            || async { gpus.all_with_gpus(all).then_some(()) },
        )
        .await?;
        gpus.reset();
        let registrations = devices.registrations().len();

        log(format!(
            "phase 4: rolling {rolled} pools ({nodes} nodes) from {PLUGIN_IMAGE} to {ROLLOUT_IMAGE} at once, maxUnavailable {}",
            report.max_unavailable
        ));
        let started = Instant::now();
        let mut generations = Vec::with_capacity(rolled);
        for i in 0..rolled {
            let patch = serde_json::json!({"spec": {
                "devicePlugin": {"image": ROLLOUT_IMAGE},
                "rollout": {"maxUnavailable": report.max_unavailable},
            }});
            generations.push(self.patch_pool(&pool_name(i), patch).await?);
        }
        let done = self.wait_complete(&generations, started).await?;
        self.end_phase(ROLLOUT, Some(op.pid()), started);
        let last = done.iter().map(|(_, at)| *at).max().unwrap_or(started);
        report.complete = last.saturating_duration_since(started);
        report.pool_complete.samples = done
            .iter()
            .map(|(_, at)| at.saturating_duration_since(started))
            .collect();
        for (i, (seen, _)) in done.iter().enumerate() {
            let want = expected[i].1.nodes;
            if seen.rollout_updated != Some(want)
                || seen.rollout_left != Some(0)
                || seen.rollout_target_image.as_deref() != Some(ROLLOUT_IMAGE)
            {
                report.notes.push(format!(
                    "{} reported Complete with updated {:?} of {want}, left {:?}, target {:?}",
                    pool_name(i),
                    seen.rollout_updated,
                    seen.rollout_left,
                    seen.rollout_target_image
                ));
            }
        }
        let seen = gpus.snapshot();
        report.max_nodes_without_gpus = seen.worst[..rolled].iter().copied().max().unwrap_or(0);
        report.nodes_replaced = seen.lost[..rolled].iter().sum();
        report.quiet_nodes_lost_gpus = seen.lost[rolled..].iter().sum();
        report.registrations = devices.registrations().len() - registrations;
        for (i, without) in seen.without.iter().enumerate().filter(|(_, w)| **w > 0) {
            report.notes.push(format!(
                "{}: {without} nodes without GPUs once the rollouts were Complete",
                pool_name(i)
            ));
        }
        log(format!(
            "every pool Complete after {:.1} s; at most {} nodes of a pool without GPUs at once; {} nodes lost GPUs in the pools rolled, {} in the others",
            report.complete.as_secs_f64(),
            report.max_nodes_without_gpus,
            report.nodes_replaced,
            report.quiet_nodes_lost_gpus
        ));

        if report.halt_deadline > 0 {
            self.halt(op, &gpus, &mut report).await?;
        }
        report.two_plugins = devices.two_plugins().len();
        devices.stop().await;
        self.report.rollout = Some(report);
        Ok(())
    }

    /// Waits until every rolled pool (pool i at `generations[i]`) has reported its rollout
    /// Complete; returns each one's first such status and when it arrived. A pool that halts
    /// instead stops the benchmark.
    async fn wait_complete(
        &self,
        generations: &[i64],
        started: Instant,
    ) -> Result<Vec<(Seen, Instant)>, Error> {
        let timeout = self.opts.timeout;
        let mut done: Vec<Option<(Seen, Instant)>> = vec![None; generations.len()];
        let mut next_log = started + PROGRESS_EVERY;
        loop {
            for (i, slot) in done.iter_mut().enumerate().filter(|(_, d)| d.is_none()) {
                let (pool, generation) = (pool_name(i), generations[i]);
                *slot = self.watched.rollout_state(&pool, generation, "Complete");
                if let Some((seen, _)) = self.watched.rollout_state(&pool, generation, "Halted") {
                    return Err(Error::Command {
                        what: format!("the rollout of {pool}"),
                        detail: format!("halted: {seen:?}"),
                    });
                }
            }
            let pending: Vec<usize> = (0..done.len()).filter(|i| done[*i].is_none()).collect();
            if pending.is_empty() {
                return Ok(done.into_iter().flatten().collect());
            }
            let now = Instant::now();
            if now >= next_log {
                next_log = now + PROGRESS_EVERY;
                let updated: i64 = (0..done.len())
                    .filter_map(|i| self.watched.pool(&pool_name(i))?.0.rollout_updated)
                    .sum();
                log(format!(
                    "  {:.0} s: {} of {} pools Complete, {updated} nodes updated",
                    now.saturating_duration_since(started).as_secs_f64(),
                    done.len() - pending.len(),
                    done.len()
                ));
            }
            if now.saturating_duration_since(started) >= timeout {
                let pool = pool_name(pending[0]);
                return Err(Error::Deadline {
                    what: format!("{} pools' rollouts to be Complete", pending.len()),
                    timeout,
                    detail: format!(
                        "; e.g. {pool} shows {:?}",
                        self.watched.pool(&pool).map(|(s, _)| s)
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pool 0 gets a plugin that registers no GPU, with `--halt-deadline-seconds` and
    /// maxUnavailable 1; until its status says Halted.
    async fn halt(
        &mut self,
        op: &Operator,
        gpus: &NodeGpus,
        report: &mut RolloutReport,
    ) -> Result<(), Error> {
        let pool = pool_name(0);
        log(format!(
            "phase 4: {pool} rolled to {BROKEN_IMAGE} with progressDeadlineSeconds {}",
            report.halt_deadline
        ));
        gpus.reset();
        let started = Instant::now();
        // One node at a time, whatever the rollout above used: it halts at its first node.
        let patch = serde_json::json!({"spec": {
            "devicePlugin": {"image": BROKEN_IMAGE},
            "rollout": {"progressDeadlineSeconds": report.halt_deadline, "maxUnavailable": 1},
        }});
        let generation = self.patch_pool(&pool, patch).await?;
        let (seen, at) = poll_until(
            &format!("{pool}'s rollout to halt"),
            self.opts.timeout,
            Duration::from_millis(20),
            || async { self.watched.rollout_state(&pool, generation, "Halted") },
        )
        .await?;
        self.end_phase(HALT, Some(op.pid()), started);
        report.halt = Some(at.saturating_duration_since(started));
        report.halted_nodes = seen.rollout_halted.clone();
        let nodes = gpus.snapshot();
        report.halt_max_nodes_without_gpus = nodes.worst[0];
        if nodes.lost[0] != 1 || seen.rollout_halted.len() != 1 {
            report.notes.push(format!(
                "{pool} halted with {} nodes that lost GPUs, halted nodes {:?}",
                nodes.lost[0], seen.rollout_halted
            ));
        }
        let others: usize = nodes.lost[1..].iter().sum();
        if others > 0 {
            report.notes.push(format!(
                "{others} nodes of other pools lost GPUs during the halt"
            ));
        }
        log(format!(
            "{pool} Halted after {:.1} s at {:?}",
            report.halt.unwrap_or_default().as_secs_f64(),
            seen.rollout_halted
        ));
        Ok(())
    }

    /// Merge-patches a pool's spec; returns its new generation.
    async fn patch_pool(&self, name: &str, patch: serde_json::Value) -> Result<i64, Error> {
        let pool = self
            .pools_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        pool.metadata.generation.ok_or_else(|| Error::Config {
            what: format!("GpuPool {name}"),
            detail: "no metadata.generation after a patch".into(),
        })
    }

    /// The rollout's requests and writes (from the counts of its window) and the writes during
    /// the rollout and the halt that concern pools not rolled.
    pub(super) fn count_rollout_writes(&mut self, audit: &Path) {
        let pools = self.opts.pools;
        let windows: Vec<(Instant, Instant)> = self
            .windows
            .iter()
            .filter(|(name, _, _)| [ROLLOUT, HALT].contains(name))
            .map(|(_, from, to)| (*from, *to))
            .collect();
        let Some(report) = self.report.rollout.as_mut() else {
            return;
        };
        if let Some(counts) = self.report.requests.get(ROLLOUT) {
            report.requests = counts.values().sum();
            report.writes = counts
                .iter()
                .filter(|((verb, _), _)| !matches!(verb.as_str(), "get" | "list" | "watch"))
                .map(|(_, n)| n)
                .sum();
        }
        let rolled: HashSet<String> = (0..report.pools).map(pool_name).collect();
        for (pool, writes) in writes_by_pool(audit, &self.user, &windows, pools) {
            match pool {
                Some(pool) if !rolled.contains(&pool) => report.quiet_pool_writes += writes,
                Some(_) => {}
                None => report.unattributed_writes += writes,
            }
        }
    }
}

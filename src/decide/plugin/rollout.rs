//! GPU-verified plugin rollouts. A plugin update that starts but registers no GPUs (NVIDIA
//! k8s-device-plugin #1645: v0.18.2, `allocatable nvidia.com/gpu=0`) passes every check a
//! DaemonSet rollout makes — its pod is Running and Ready — and a RollingUpdate carries it to
//! every node. So the pool's DaemonSet runs `OnDelete`, and gpupool replaces the plugin node by
//! node: at most `maxUnavailable` nodes at a time, idle nodes first, moving on only once a
//! replaced node serves its GPUs again with the new plugin; a node that does not within the
//! deadline halts the rollout (and with `onFailure: Rollback` the last good plugin goes back).
//!
//! A replacement reuses what keeps two plugins off a node: the node's plugin label comes off
//! (the DaemonSet controller deletes the old pod), and goes back once every plugin pod there is
//! gone (the DaemonSet controller then starts one from its current template). The rollout's
//! record is the pool's status (`status.devicePlugin.rollout`): what is in progress since when,
//! what halted, the last good plugin; after a restart gpupool goes on from it and from the
//! revisions of the pods it finds.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    HaltedNode, PluginRevision, RolloutFailurePolicy, RolloutNode, RolloutSpec, RolloutState,
    RolloutStatus,
};
use crate::decide::capacity::{Expected, judge};
use crate::decide::facts::{NodeFacts, NodeReadiness, PodFacts, ValidationResult};
pub use crate::decide::moves::max_unavailable;

/// A node the pool's plugin serves, as the rollout sees it.
#[derive(Clone, Debug)]
pub struct RolloutNodeView<'a> {
    pub node: &'a NodeFacts,
    /// The pool's plugin pod on it (a live one before a terminating one), if any.
    pub pod: Option<&'a PodFacts>,
    pub expected: Option<&'a Expected>,
}

impl RolloutNodeView<'_> {
    fn revision(&self) -> Option<&str> {
        self.pod
            .filter(|p| !p.deleting)
            .and_then(|p| p.plugin.as_deref())
    }

    /// Whether a plugin pod of another revision than `target` still runs here (terminating
    /// ones included: the node is not free until they are gone).
    fn runs_other(&self, target: &str) -> bool {
        self.pod
            .is_some_and(|p| p.deleting || p.plugin.as_deref() != Some(target))
    }

    /// Whether a live plugin pod of another revision than `target` runs here (a candidate).
    fn runs_live_other(&self, target: &str) -> bool {
        self.pod
            .is_some_and(|p| !p.deleting && p.plugin.as_deref() != Some(target))
    }

    /// Whether the node serves its GPUs now, with whatever plugin it runs.
    fn serving(&self) -> bool {
        let pod_ready = self.pod.is_some_and(|p| !p.deleting && p.ready);
        let gpus = self.gpus() > 0 && self.expected.is_none_or(|e| judge(self.node, e).is_ok());
        self.node.ready == NodeReadiness::Ready && pod_ready && gpus
    }

    fn available(&self) -> bool {
        self.node.ready == NodeReadiness::Ready && !self.node.unschedulable && !self.node.deleting
    }

    /// The GPUs the node advertises (allocatable) in the resource it is counted in.
    fn gpus(&self) -> i64 {
        self.expected
            .map_or(self.node.gpus_allocatable(), |e| e.have(self.node).1)
    }
}

/// Everything a rollout is decided from.
pub struct RolloutInputs<'a> {
    pub spec: &'a RolloutSpec,
    /// The plugin the spec asks for.
    pub wanted: PluginRevision,
    pub previous: Option<&'a RolloutStatus>,
    /// The nodes the plugin serves.
    pub nodes: Vec<RolloutNodeView<'a>>,
    /// The pool validates its nodes: a replaced node must pass again.
    pub validates: bool,
    /// Nodes known to run pods that hold a GPU (looked up for the next candidates only).
    pub busy: &'a BTreeSet<String>,
    pub now: Timestamp,
}

/// What the rollout wants done.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutPlan {
    /// The record to write in the status.
    pub status: RolloutStatus,
    /// The plugin the DaemonSet runs: the spec's, or the last good one after a rollback.
    pub render: PluginRevision,
    /// Nodes whose plugin comes off now (their label is removed; it goes back once the pod is
    /// gone, and the DaemonSet controller starts the target plugin there).
    pub take_off: BTreeSet<String>,
    /// Nodes being replaced, and until when that is progress (their readiness gate does not
    /// close before).
    pub replacing: BTreeMap<String, Timestamp>,
    /// What each node being replaced shows now (its plugin pod, its GPUs, its validation).
    pub shows: BTreeMap<String, String>,
    /// Nodes that did not serve their GPUs again within the deadline, with what they show.
    pub halted: Vec<HaltedNode>,
    /// Nodes without GPU service (not for the rollout) that use up `maxUnavailable`, when they
    /// keep the rollout from replacing any node.
    pub blocked_by: Vec<String>,
}

/// Where the rollout goes: the spec's plugin, or the last good one while a halt rolls back.
struct Course {
    previous: RolloutStatus,
    /// The spec's revision halted before (a halt holds until the spec changes).
    halted_before: bool,
    rolling_back: bool,
    last_good: Option<PluginRevision>,
    render: PluginRevision,
    deadline: SignedDuration,
}

fn course(i: &RolloutInputs) -> Course {
    let previous = i.previous.cloned().unwrap_or_default();
    let halted_before = previous
        .halted_revision
        .as_ref()
        .is_some_and(|r| *r == i.wanted.revision);
    let last_good = previous.last_good.clone().or_else(|| first_good(i));
    let rolling_back = halted_before
        && i.spec.on_failure == RolloutFailurePolicy::Rollback
        && last_good
            .as_ref()
            .is_some_and(|g| g.revision != i.wanted.revision);
    let render = match (&last_good, rolling_back) {
        (Some(good), true) => good.clone(),
        _ => i.wanted.clone(),
    };
    Course {
        previous,
        halted_before,
        rolling_back,
        last_good,
        render,
        deadline: SignedDuration::from_secs(i64::from(i.spec.progress_deadline_seconds)),
    }
}

pub fn plan_rollout(i: &RolloutInputs) -> RolloutPlan {
    let c = course(i);
    let target = c.render.revision.as_str();
    let by_name: BTreeMap<&str, &RolloutNodeView> =
        i.nodes.iter().map(|n| (n.node.name.as_str(), n)).collect();
    let (mut in_progress, halted) = still_in_progress(i, &c, &by_name);
    let halt = c.halted_before || !halted.is_empty();
    let blocked_by = if !halt || c.rolling_back {
        start_next(i, target, &mut in_progress)
    } else {
        Vec::new()
    };
    let take_off = in_progress
        .iter()
        .filter(|e| {
            by_name
                .get(e.name.as_str())
                .is_some_and(|v| v.runs_other(target))
        })
        .map(|e| e.name.clone())
        .collect();
    let replacing: BTreeMap<String, Timestamp> = in_progress
        .iter()
        .filter(|e| !halted.iter().any(|h| h.name == e.name))
        .map(|e| {
            let end = e.since.0.checked_add(c.deadline).unwrap_or(Timestamp::MAX);
            (e.name.clone(), end)
        })
        .collect();
    let shows = in_progress
        .iter()
        .filter(|e| replacing.contains_key(&e.name))
        .filter_map(|e| {
            let view = by_name.get(e.name.as_str())?;
            Some((e.name.clone(), self::shows(view, target, e)))
        })
        .collect();
    let status = record(i, &c, halt, in_progress, &halted);
    RolloutPlan {
        halted: status.halted.clone(),
        status,
        render: c.render,
        take_off,
        replacing,
        shows,
        blocked_by,
    }
}

/// The nodes of the previous record still being replaced, and those that halted the rollout
/// (overdue, or halted before).
fn still_in_progress(
    i: &RolloutInputs,
    c: &Course,
    by_name: &BTreeMap<&str, &RolloutNodeView>,
) -> (Vec<RolloutNode>, Vec<HaltedNode>) {
    let target = c.render.revision.as_str();
    let mut in_progress = Vec::new();
    let mut halted = Vec::new();
    for entry in &c.previous.in_progress {
        let Some(view) = by_name.get(entry.name.as_str()) else {
            continue; // no longer served: nothing to wait for
        };
        if !view.available() {
            continue; // NotReady, cordoned, going: counted, not waited for
        }
        if gpu_ready(view, target, entry.gpus_before, i.validates) {
            continue;
        }
        // A node that had no GPU service to lose is done once the new plugin runs there: what
        // it lacks is its own problem, reported as such, and it still counts against
        // maxUnavailable until it serves (so it cannot halt the rollout, nor let it take down
        // a serving node in its place).
        if entry.gpus_before == 0 && view.revision() == Some(target) {
            continue;
        }
        let overdue = entry
            .since
            .0
            .checked_add(c.deadline)
            .is_ok_and(|end| end <= i.now);
        let halted_before = c.previous.halted.iter().any(|h| h.name == entry.name);
        if (overdue || halted_before) && !c.rolling_back {
            halted.push(HaltedNode {
                name: entry.name.clone(),
                message: shows(view, target, entry),
            });
        }
        in_progress.push(entry.clone());
    }
    (in_progress, halted)
}

/// Starts replacing the next nodes, as `maxUnavailable` allows; returns the nodes without GPU
/// service that use it up when none could start.
fn start_next(i: &RolloutInputs, target: &str, in_progress: &mut Vec<RolloutNode>) -> Vec<String> {
    let slots = max_unavailable(&i.spec.max_unavailable, i.nodes.len());
    let mut candidates: Vec<&RolloutNodeView> = i
        .nodes
        .iter()
        .filter(|n| n.available() && n.runs_live_other(target))
        .filter(|n| !in_progress.iter().any(|e| e.name == n.node.name))
        .collect();
    // Nodes without their GPUs already cost nothing to replace and go first; then idle
    // nodes: no workload loses its GPU for an update another node can take.
    candidates.sort_by_key(|n| {
        (
            n.serving(),
            i.busy.contains(&n.node.name),
            n.node.name.clone(),
        )
    });
    // Nodes without GPU service count against maxUnavailable, whatever the reason.
    let mut down = i
        .nodes
        .iter()
        .filter(|n| n.available() && !n.serving())
        .filter(|n| !in_progress.iter().any(|e| e.name == n.node.name))
        .count();
    for view in candidates {
        let free = !view.serving();
        if !free && in_progress.len() + down >= slots {
            if in_progress.is_empty() {
                return i
                    .nodes
                    .iter()
                    .filter(|n| n.available() && !n.serving())
                    .map(|n| n.node.name.clone())
                    .collect();
            }
            break;
        }
        if free {
            down -= 1;
        }
        in_progress.push(RolloutNode {
            name: view.node.name.clone(),
            since: Time(whole_seconds(i.now)),
            gpus_before: if free { 0 } else { view.gpus() },
        });
    }
    Vec::new()
}

/// The rollout's record for the status.
fn record(
    i: &RolloutInputs,
    c: &Course,
    halt: bool,
    in_progress: Vec<RolloutNode>,
    halted: &[HaltedNode],
) -> RolloutStatus {
    let target = c.render.revision.as_str();
    let updated = i
        .nodes
        .iter()
        .filter(|n| n.revision() == Some(target))
        .count();
    // Left to replace: in-service nodes running another plugin, and the nodes being replaced.
    // A node with no plugin pod gets the target from the DaemonSet controller (its own
    // conditions say when it cannot); a node out of service (NotReady, cordoned) is replaced
    // once it is back, and meanwhile holds no rollout open.
    let left = i
        .nodes
        .iter()
        .filter(|n| n.revision() != Some(target))
        .filter(|n| {
            (n.available() && n.runs_live_other(target))
                || in_progress.iter().any(|e| e.name == n.node.name)
        })
        .count();
    let state = if c.rolling_back {
        RolloutState::RolledBack
    } else if halt {
        RolloutState::Halted
    } else if left == 0 && in_progress.is_empty() {
        RolloutState::Complete
    } else {
        RolloutState::Progressing
    };
    // A rollout that reached every node with every replaced node serving its GPUs again makes
    // its plugin the one to go back to.
    let serves = i.nodes.iter().any(|n| gpu_ready(n, target, 0, false));
    let last_good = if state == RolloutState::Complete && serves {
        Some(c.render.clone())
    } else {
        c.last_good.clone()
    };
    // What halted stays named (as it shows now) until the spec changes.
    let halted: Vec<HaltedNode> = if halt && !c.rolling_back {
        let mut all = halted.to_vec();
        for before in &c.previous.halted {
            if !all.iter().any(|h| h.name == before.name) {
                all.push(before.clone());
            }
        }
        all
    } else {
        Vec::new()
    };
    RolloutStatus {
        state,
        target_revision: c.render.revision.clone(),
        target_image: c.render.image.clone(),
        halted_revision: (halt || c.rolling_back).then(|| i.wanted.revision.clone()),
        updated: i32::try_from(updated).unwrap_or(i32::MAX),
        left: i32::try_from(left).unwrap_or(i32::MAX),
        in_progress: in_progress
            .into_iter()
            .filter(|e| !halted.iter().any(|h| h.name == e.name))
            .collect(),
        halted,
        last_good,
    }
}

/// The pool's first record: its plugin counts as good once every node runs it and one of them
/// serves its GPUs (there is nothing older to go back to).
fn first_good(i: &RolloutInputs) -> Option<PluginRevision> {
    let all = !i.nodes.is_empty()
        && i.nodes
            .iter()
            .all(|n| n.revision() == Some(i.wanted.revision.as_str()));
    let one = i
        .nodes
        .iter()
        .any(|n| gpu_ready(n, &i.wanted.revision, 0, false));
    (all && one).then(|| i.wanted.clone())
}

/// A replaced node serves its GPUs again: Ready, its target plugin pod ready, its GPUs back
/// (what it had, and what it should have), and validated with this plugin when the pool
/// validates.
fn gpu_ready(view: &RolloutNodeView, target: &str, before: i64, validates: bool) -> bool {
    let pod_ready = view
        .pod
        .is_some_and(|p| !p.deleting && p.ready && p.plugin.as_deref() == Some(target));
    let gpus_back =
        view.gpus() >= before.max(1) && view.expected.is_none_or(|e| judge(view.node, e).is_ok());
    let validated = !validates
        || view.node.validation.as_ref().is_some_and(|r| {
            r.plugin == target
                && r.boot_id == view.node.boot_id
                && r.result == ValidationResult::Passed
        });
    view.node.ready == NodeReadiness::Ready && pod_ready && gpus_back && validated
}

/// What a node that did not come back shows, for the halt's message.
fn shows(view: &RolloutNodeView, target: &str, entry: &RolloutNode) -> String {
    let pod = match view.pod {
        None => "no plugin pod".to_string(),
        Some(p) if p.deleting => "its previous plugin pod still terminating".to_string(),
        Some(p) if p.plugin.as_deref() != Some(target) => {
            "its previous plugin pod still running".to_string()
        }
        Some(p) if !p.ready => "its new plugin pod not ready".to_string(),
        Some(_) => "its new plugin pod ready".to_string(),
    };
    let validation = match view.node.validation.as_ref() {
        Some(r) if r.plugin == target && r.result == ValidationResult::Failed => {
            format!(", validation failed: {}", r.message)
        }
        _ => String::new(),
    };
    format!(
        "{pod}, {} of {} GPUs allocatable{validation}",
        view.gpus(),
        entry
            .gpus_before
            .max(view.expected.map_or(1, Expected::count))
    )
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::facts::PodFacts;
    use crate::decide::testing::{gpu_node, plugin_pod};

    const OLD: &str = "rev-old";
    const NEW: &str = "rev-new";

    fn revision(rev: &str) -> PluginRevision {
        PluginRevision {
            revision: rev.into(),
            image: format!("nvcr.io/nvidia/k8s-device-plugin:{rev}"),
            ..Default::default()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A cluster of nodes with 8 GPUs each, their plugin pods, and the rollout's record.
    struct World {
        nodes: Vec<NodeFacts>,
        pods: Vec<Option<PodFacts>>,
        record: Option<RolloutStatus>,
        spec: RolloutSpec,
        busy: BTreeSet<String>,
        now: Timestamp,
    }

    impl World {
        fn new(n: usize, rev: &str) -> World {
            let nodes: Vec<NodeFacts> = (0..n).map(|i| gpu_node(&format!("n{i}"), 8, 8)).collect();
            let pods = nodes
                .iter()
                .map(|n| Some(pod(&n.name, rev, true)))
                .collect();
            World {
                nodes,
                pods,
                record: None,
                spec: RolloutSpec::default(),
                busy: BTreeSet::new(),
                now: at(0),
            }
        }

        fn plan(&mut self, wanted: &str) -> RolloutPlan {
            let views = self
                .nodes
                .iter()
                .zip(&self.pods)
                .map(|(node, pod)| RolloutNodeView {
                    node,
                    pod: pod.as_ref(),
                    expected: None,
                })
                .collect();
            let plan = plan_rollout(&RolloutInputs {
                spec: &self.spec,
                wanted: revision(wanted),
                previous: self.record.as_ref(),
                nodes: views,
                validates: false,
                busy: &self.busy,
                now: self.now,
            });
            self.record = Some(plan.status.clone());
            plan
        }

        /// The DaemonSet controller: a node whose plugin comes off loses its pod.
        fn take_off(&mut self, plan: &RolloutPlan) {
            for (node, pod) in self.nodes.iter().zip(self.pods.iter_mut()) {
                if plan.take_off.contains(&node.name) {
                    *pod = None;
                }
            }
        }

        /// ...and a node with no pod gets one of `rev` (ready), its GPUs `gpus`.
        fn start(&mut self, rev: &str, gpus: i64) {
            for (node, pod) in self.nodes.iter_mut().zip(self.pods.iter_mut()) {
                if pod.is_none() {
                    *pod = Some(self::pod(&node.name, rev, true));
                    node.gpu_allocatable = Some(gpus);
                }
            }
        }

        fn later(&mut self, secs: i64) {
            self.now = self
                .now
                .checked_add(SignedDuration::from_secs(secs))
                .unwrap();
        }
    }

    fn pod(node: &str, rev: &str, ready: bool) -> PodFacts {
        PodFacts {
            plugin: Some(rev.into()),
            ready,
            ..plugin_pod("gpu-resources", &format!("p-{node}"), Some(node), "gpu")
        }
    }

    fn names(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn nothing_to_do_when_every_node_runs_the_plugin_and_it_becomes_the_last_good() {
        let mut w = World::new(3, NEW);
        let plan = w.plan(NEW);
        assert_eq!(plan.status.state, RolloutState::Complete);
        assert!(plan.take_off.is_empty() && plan.replacing.is_empty());
        assert_eq!(plan.status.updated, 3);
        assert_eq!(plan.status.last_good.unwrap().revision, NEW);
    }

    #[test]
    fn a_good_update_goes_node_by_node_and_only_on_once_gpus_are_back() {
        let mut w = World::new(3, OLD);
        w.plan(OLD);
        let first = w.plan(NEW);
        assert_eq!(first.status.state, RolloutState::Progressing);
        assert_eq!(names(&first.take_off), ["n0"], "one node at a time");
        assert_eq!(first.render.revision, NEW);
        w.take_off(&first);
        // The old pod is gone: the label goes back (take_off empty), n0 still in progress.
        let waiting = w.plan(NEW);
        assert!(waiting.take_off.is_empty());
        assert_eq!(waiting.status.in_progress.len(), 1);
        // The new pod runs but has no GPUs yet: still n0, nobody else.
        w.start(NEW, 0);
        w.later(30);
        let short = w.plan(NEW);
        assert_eq!(short.status.in_progress[0].name, "n0");
        assert!(short.take_off.is_empty());
        // GPUs back: n1 is next.
        w.nodes[0].gpu_allocatable = Some(8);
        let next = w.plan(NEW);
        assert_eq!(names(&next.take_off), ["n1"]);
        assert_eq!(next.status.updated, 1);
        for _ in 0..4 {
            let plan = w.plan(NEW);
            w.take_off(&plan);
            w.start(NEW, 8);
        }
        let done = w.plan(NEW);
        assert_eq!(done.status.state, RolloutState::Complete);
        assert_eq!(done.status.updated, 3);
        assert_eq!(done.status.last_good.unwrap().revision, NEW);
    }

    #[test]
    fn a_broken_update_halts_after_the_first_node_and_stays_halted_until_the_spec_changes() {
        let mut w = World::new(3, OLD);
        w.plan(OLD);
        let first = w.plan("rev-broken");
        w.take_off(&first);
        w.start("rev-broken", 0);
        w.later(599);
        assert_eq!(w.plan("rev-broken").status.state, RolloutState::Progressing);
        w.later(2);
        let halted = w.plan("rev-broken");
        assert_eq!(halted.status.state, RolloutState::Halted);
        assert_eq!(halted.halted.len(), 1);
        assert_eq!(halted.halted[0].name, "n0");
        assert!(
            halted.halted[0]
                .message
                .contains("new plugin pod ready, 0 of 8 GPUs"),
            "{}",
            halted.halted[0].message
        );
        assert!(halted.take_off.is_empty(), "no further node is touched");
        assert_eq!(halted.status.left, 2);
        assert_eq!(halted.status.last_good.as_ref().unwrap().revision, OLD);
        // Later reconciles (and a restart: the record is the status) keep the halt.
        w.later(3600);
        let still = w.plan("rev-broken");
        assert_eq!(still.status.state, RolloutState::Halted);
        assert!(still.take_off.is_empty());
        assert_eq!(still.status.halted[0].name, "n0");
        // A fixed spec rolls out again, starting with the node the broken plugin holds.
        let fixed = w.plan(NEW);
        assert_eq!(fixed.status.state, RolloutState::Progressing);
        assert_eq!(names(&fixed.take_off), ["n0"]);
    }

    #[test]
    fn rollback_puts_the_last_good_plugin_back_on_the_replaced_nodes() {
        let mut w = World::new(2, OLD);
        w.spec.on_failure = RolloutFailurePolicy::Rollback;
        w.plan(OLD);
        let first = w.plan("rev-broken");
        w.take_off(&first);
        w.start("rev-broken", 0);
        w.later(601);
        let halted = w.plan("rev-broken");
        assert_eq!(halted.status.state, RolloutState::Halted);
        let back = w.plan("rev-broken");
        assert_eq!(back.status.state, RolloutState::RolledBack);
        assert_eq!(
            back.render.revision, OLD,
            "the DaemonSet runs the last good plugin"
        );
        assert_eq!(
            names(&back.take_off),
            ["n0"],
            "the broken node is replaced back"
        );
        w.take_off(&back);
        w.start(OLD, 8);
        let restored = w.plan("rev-broken");
        assert_eq!(restored.status.state, RolloutState::RolledBack);
        assert_eq!(restored.status.updated, 2);
        assert_eq!(
            restored.status.halted_revision.as_deref(),
            Some("rev-broken"),
            "it says so until the spec changes"
        );
    }

    #[test]
    fn idle_nodes_go_first_and_unavailable_nodes_are_not_waited_for() {
        let mut w = World::new(4, OLD);
        w.spec.max_unavailable =
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("50%".into());
        w.plan(OLD);
        w.busy = ["n0".to_string(), "n1".to_string()].into();
        w.nodes[2].ready = NodeReadiness::NotReady;
        let plan = w.plan(NEW);
        let chosen: Vec<&str> = plan
            .status
            .in_progress
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            chosen,
            ["n3", "n0"],
            "idle first, then busy; never NotReady"
        );
        // A node in progress that goes NotReady is dropped, not waited for.
        w.take_off(&plan);
        w.nodes[3].ready = NodeReadiness::NotReady;
        let next = w.plan(NEW);
        assert!(next.status.in_progress.iter().all(|e| e.name != "n3"));
        assert_eq!(
            next.status.in_progress.len(),
            2,
            "{:?}",
            next.status.in_progress
        );
    }

    #[test]
    fn a_first_plugin_that_no_node_runs_yet_is_no_rollout() {
        // The DaemonSet controller has not started a pod anywhere (e.g. its PriorityClass is
        // missing): nothing to replace; the DaemonSet's own conditions say why.
        let mut w = World::new(2, NEW);
        w.pods = vec![None, None];
        let plan = w.plan(NEW);
        assert_eq!(plan.status.state, RolloutState::Complete);
        assert_eq!((plan.status.updated, plan.status.left), (0, 0));
        assert!(plan.take_off.is_empty() && plan.status.in_progress.is_empty());
        assert!(
            plan.status.last_good.is_none(),
            "nothing has served GPUs yet: no plugin to go back to"
        );
    }

    #[test]
    fn an_out_of_service_node_holds_no_rollout_open_and_is_replaced_once_back() {
        let mut w = World::new(2, OLD);
        w.plan(OLD);
        w.nodes[1].unschedulable = true;
        let first = w.plan(NEW);
        assert_eq!(names(&first.take_off), ["n0"]);
        assert_eq!(first.status.left, 1, "the cordoned node waits");
        w.take_off(&first);
        w.start(NEW, 8);
        let done = w.plan(NEW);
        assert_eq!(done.status.state, RolloutState::Complete, "{done:?}");
        assert_eq!(done.status.last_good.as_ref().unwrap().revision, NEW);
        // Uncordoned: it still runs the old plugin, so the rollout reaches it.
        w.nodes[1].unschedulable = false;
        let back = w.plan(NEW);
        assert_eq!(back.status.state, RolloutState::Progressing);
        assert_eq!(names(&back.take_off), ["n1"]);
    }

    #[test]
    fn a_node_without_gpus_before_is_replaced_first_never_halts_and_holds_the_budget() {
        let mut w = World::new(2, OLD);
        w.nodes[0].gpu_allocatable = Some(0); // dead before the rollout
        w.plan(OLD);
        let first = w.plan(NEW);
        assert_eq!(names(&first.take_off), ["n0"], "it has nothing to lose");
        assert_eq!(first.status.in_progress[0].gpus_before, 0);
        w.take_off(&first);
        w.start(NEW, 0); // the new plugin runs there; the node still has no GPUs
        w.later(700); // past the deadline
        let plan = w.plan(NEW);
        assert_eq!(plan.status.state, RolloutState::Progressing, "no halt");
        assert!(plan.status.in_progress.is_empty() && plan.halted.is_empty());
        assert!(
            plan.take_off.is_empty(),
            "n1 serves: maxUnavailable is used up"
        );
        assert_eq!(plan.blocked_by, ["n0"]);
        // Cordoned (out of service), it no longer holds the budget.
        w.nodes[0].unschedulable = true;
        let on = w.plan(NEW);
        assert_eq!(names(&on.take_off), ["n1"]);
    }
}

//! The readiness gate: which of a pool's nodes may take GPU work, and the taint writes that say
//! so. A node is GPU-ready when it is Ready and schedulable, its device plugin is up (gpupool's
//! pod ready, or its platform's), its `nvidia.com/gpu` allocatable is what it should be, and its
//! validation passed when the pool has one. Bootstrap removes the taint from GPU-ready nodes
//! and never adds it; Continuous also adds it to a node that has not been GPU-ready for longer
//! than the grace period. NoSchedule only: running work is never evicted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{GateMode, ReadinessGate};
use crate::decide::facts::NodeFacts;

/// Why a node is not GPU-ready, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotReady {
    pub why: String,
    pub since: Timestamp,
    /// When a Continuous gate closes on it, if not at the end of its grace period: a node whose
    /// plugin is being replaced is progress until the rollout's deadline.
    pub closes_at: Option<Timestamp>,
}

impl NotReady {
    pub fn new(why: String, since: Timestamp) -> NotReady {
        NotReady {
            why,
            since,
            closes_at: None,
        }
    }

    fn closes(&self, grace: SignedDuration) -> Timestamp {
        self.closes_at
            .unwrap_or_else(|| self.since.checked_add(grace).unwrap_or(Timestamp::MAX))
    }
}

/// A node's gate state.
pub type Readiness = Result<(), NotReady>;

/// A change of one node's gate taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaintChange {
    pub node: String,
    pub key: String,
    /// true: put the taint on; false: take it off.
    pub add: bool,
}

impl std::fmt::Display for TaintChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (verb, prep) = if self.add {
            ("add", "to")
        } else {
            ("remove", "from")
        };
        write!(f, "{verb} {} {prep} {}", self.key, self.node)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatePlan {
    /// Taint writes to make (none in dry run).
    pub changes: Vec<TaintChange>,
    /// Dry run: what would have been written.
    pub would: Vec<TaintChange>,
    /// Nodes carrying the taint now.
    pub gated: usize,
    /// Continuous: when the first not-ready node's grace period ends.
    pub next_check: Option<Timestamp>,
}

pub fn carries(node: &NodeFacts, key: &str) -> bool {
    node.taints
        .iter()
        .any(|t| t.key == key && t.effect == "NoSchedule")
}

/// The gate's taint writes for the pool's nodes, given each node's readiness.
pub fn plan_gate(
    gate: &ReadinessGate,
    nodes: &[&NodeFacts],
    readiness: &BTreeMap<String, Readiness>,
    now: Timestamp,
    grace: Duration,
) -> GatePlan {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let mut changes = Vec::new();
    let mut gated = 0;
    let mut next_check: Option<Timestamp> = None;
    for node in nodes.iter().filter(|n| !n.deleting) {
        let tainted = carries(node, &gate.taint_key);
        gated += usize::from(tainted);
        let change = |add| TaintChange {
            node: node.name.clone(),
            key: gate.taint_key.clone(),
            add,
        };
        match readiness.get(&node.name) {
            Some(Ok(())) if tainted => changes.push(change(false)),
            // A cordoned node is an admin's business; the gate leaves it as it is.
            Some(Err(not_ready))
                if !tainted
                    && gate.mode == GateMode::Continuous
                    && !node.unschedulable
                    && not_ready.closes(grace) <= now =>
            {
                changes.push(change(true))
            }
            Some(Err(not_ready))
                if !tainted && gate.mode == GateMode::Continuous && !node.unschedulable =>
            {
                let end = not_ready.closes(grace);
                next_check = Some(next_check.map_or(end, |t| t.min(end)));
            }
            _ => {}
        }
    }
    if gate.dry_run {
        GatePlan {
            changes: Vec::new(),
            would: changes,
            gated,
            next_check,
        }
    } else {
        GatePlan {
            changes,
            would: Vec::new(),
            gated,
            next_check,
        }
    }
}

/// Taking the gate off every node (the pool is deleted, or its gate removed or renamed).
pub fn lift_gate(key: &str, nodes: &[&NodeFacts]) -> Vec<TaintChange> {
    nodes
        .iter()
        .filter(|n| carries(n, key))
        .map(|n| TaintChange {
            node: n.name.clone(),
            key: key.to_string(),
            add: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::testing::{gpu_node, taint};

    fn gate(mode: GateMode, dry_run: bool) -> ReadinessGate {
        ReadinessGate {
            taint_key: "gpupool.io/gpu-not-ready".into(),
            mode,
            dry_run,
        }
    }

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    fn not_ready(minutes_ago: i64) -> Readiness {
        Err(NotReady {
            closes_at: None,
            why: "no GPUs".into(),
            since: now()
                .checked_sub(SignedDuration::from_mins(minutes_ago))
                .unwrap(),
        })
    }

    fn gated(name: &str) -> NodeFacts {
        let mut n = gpu_node(name, 1, 1);
        n.taints
            .push(taint("gpupool.io/gpu-not-ready", "", "NoSchedule"));
        n
    }

    #[test]
    fn bootstrap_only_removes_the_taint_from_ready_nodes() {
        let (ready, waiting, free) = (gated("ready"), gated("waiting"), gpu_node("free", 1, 1));
        let readiness: BTreeMap<String, Readiness> = [
            ("ready".into(), Ok(())),
            ("waiting".into(), not_ready(1)),
            ("free".into(), not_ready(60)),
        ]
        .into();
        let plan = plan_gate(
            &gate(GateMode::Bootstrap, false),
            &[&ready, &waiting, &free],
            &readiness,
            now(),
            Duration::from_secs(600),
        );
        assert_eq!(
            plan.changes,
            vec![TaintChange {
                node: "ready".into(),
                key: "gpupool.io/gpu-not-ready".into(),
                add: false
            }]
        );
        assert_eq!(plan.gated, 2);
    }

    #[test]
    fn continuous_gates_a_node_not_ready_for_longer_than_the_grace_period() {
        let (recent, long, cordoned) = (
            gpu_node("recent", 1, 1),
            gpu_node("long", 1, 1),
            gpu_node("cordoned", 1, 1),
        );
        let mut cordoned = cordoned;
        cordoned.unschedulable = true;
        let readiness: BTreeMap<String, Readiness> = [
            ("recent".into(), not_ready(1)),
            ("long".into(), not_ready(11)),
            ("cordoned".into(), not_ready(60)),
        ]
        .into();
        let plan = plan_gate(
            &gate(GateMode::Continuous, false),
            &[&recent, &long, &cordoned],
            &readiness,
            now(),
            Duration::from_secs(600),
        );
        assert_eq!(
            plan.changes,
            vec![TaintChange {
                node: "long".into(),
                key: "gpupool.io/gpu-not-ready".into(),
                add: true
            }]
        );
    }

    #[test]
    fn dry_run_writes_nothing_and_says_what_it_would() {
        let ready = gated("ready");
        let readiness: BTreeMap<String, Readiness> = [("ready".into(), Ok(()))].into();
        let plan = plan_gate(
            &gate(GateMode::Bootstrap, true),
            &[&ready],
            &readiness,
            now(),
            Duration::from_secs(600),
        );
        assert!(plan.changes.is_empty());
        assert_eq!(
            plan.would[0].to_string(),
            "remove gpupool.io/gpu-not-ready from ready"
        );
    }

    #[test]
    fn lifting_the_gate_takes_the_taint_off_every_node_carrying_it() {
        let (a, b) = (gated("a"), gpu_node("b", 1, 1));
        assert_eq!(lift_gate("gpupool.io/gpu-not-ready", &[&a, &b]).len(), 1);
    }
}

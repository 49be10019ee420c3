//! The pods gpupool runs (device-plugin pods of its DaemonSets, validation pods), reduced at
//! watch time to what it decides on. Terminating pods count: a plugin pod that is shutting down
//! still holds the node's device-plugin socket, so no other plugin may start there until it is
//! gone.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::ObjectId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRole {
    Plugin,
    Validation,
    /// The kubelet plugin of NVIDIA's GPU DRA driver (not gpupool's: watched to tell whether
    /// the driver serves a node).
    DraDriver,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A pod gpupool runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PodFacts {
    pub id: ObjectId,
    pub uid: String,
    pub role: PodRole,
    /// The node it is bound to, once scheduled.
    pub node: Option<String>,
    /// The `gpupool.io/pool` label: which pool it belongs to.
    pub pool_key: Option<String>,
    pub deleting: bool,
    pub phase: PodPhase,
    pub ready: bool,
    pub created: Option<Timestamp>,
    /// Plugin pods: the plugin they run (annotation `gpupool.io/plugin`, see `plugin_identity`).
    pub plugin: Option<String>,
    /// Validation pods: what they validate (from their annotations).
    pub validates: Option<ValidationTarget>,
    /// When its container started (`status.startTime`).
    pub started: Option<Timestamp>,
    /// How its container ended, once it did.
    pub finished: Option<Termination>,
    /// The scheduler found no free GPU resource (`nvidia.com/gpu`, `.shared`, `mig-*`) for it.
    pub waiting_for_gpu: bool,
    /// How its container fares while the kubelet keeps it (restarts, why it is not running).
    pub container: ContainerHealth,
}

/// A pod's container as its kubelet reports it: what a crash loop or an image that cannot be
/// pulled looks like (kwok never shows either: its pods run at once and forever).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerHealth {
    /// `restartCount`, summed over the containers.
    pub restarts: i32,
    /// `state.waiting`: (reason, message), e.g. `CrashLoopBackOff`, `ImagePullBackOff`.
    pub waiting: Option<(String, String)>,
    /// `state.terminated` of a container the kubelet restarts (its run just ended), else
    /// `lastState.terminated`: how its last run ended.
    pub last_exit: Option<Termination>,
    /// `state.running`.
    pub running: bool,
}

/// Container waiting reasons that mean the kubelet cannot run it (not "still being created").
const FAILING: [&str; 8] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// Why a pod's container does not run, as its kubelet says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFailure {
    /// `CrashLoopBackOff`, `ImagePullBackOff`, ..., or `Error` for a run that just ended.
    pub reason: String,
    /// The kubelet's message (image pulls, container creation).
    pub message: String,
    pub restarts: i32,
    pub last_exit: Option<Termination>,
}

/// How long a container that runs again after exiting with an error still counts as crash
/// looping: a crash-looping plugin runs for a moment (and is even Ready) before it exits again.
const CRASH_LOOP_WINDOW: SignedDuration = SignedDuration::from_secs(60);

impl ContainerHealth {
    /// Why the container does not run, when the kubelet says it cannot run it: a waiting reason
    /// of [`FAILING`], or a crash loop — it exited with an error and was restarted, and has not
    /// run for a minute since. None while it runs, is being created, or never failed.
    ///
    /// A real kubelet (v1.36) shows a crash loop mostly as `state.terminated` (the run that
    /// just ended, for the whole back-off), then `waiting: CrashLoopBackOff` and `running` in the
    /// same instant the back-off ends: all of it is "CrashLoopBackOff" here, so the node's
    /// problem does not change with every status the kubelet writes.
    pub fn failure(&self, now: Timestamp) -> Option<ContainerFailure> {
        let failure = |reason: &str, message: &str| ContainerFailure {
            reason: reason.to_string(),
            message: message.to_string(),
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        };
        let crashed = self
            .last_exit
            .as_ref()
            .filter(|t| t.exit_code != 0 && self.restarts > 0);
        match &self.waiting {
            Some((reason, message)) if FAILING.contains(&reason.as_str()) => {
                Some(failure(reason, message))
            }
            Some(_) => None,
            None if self.running => crashed
                .filter(|t| {
                    t.at.is_some_and(|at| now.duration_since(at) < CRASH_LOOP_WINDOW)
                })
                .map(|_| failure(CRASH_LOOP, "")),
            None => crashed.map(|_| failure(CRASH_LOOP, "")),
        }
    }
}

const CRASH_LOOP: &str = "CrashLoopBackOff";

/// What a validation pod validates: a node on one boot, with one plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationTarget {
    pub node: String,
    pub boot_id: String,
    pub plugin: String,
    /// 1 for the first try on this boot and plugin.
    pub attempt: u32,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub at: Option<Timestamp>,
}

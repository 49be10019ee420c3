//! Simulated node agents for what kwok's stages cannot express.
//!
//! [`ValidationPods`] plays the kubelet for GPU validation pods: kwok makes every pod bound to a
//! fake node Running, and this finishes the validation ones the way the container would on a real
//! GPU node — or would not, as a node's `gpupool.io/simulate-validation` label says. Pods on
//! nodes that are not kwok's (a [`crate::real_node::RealNode`]) are left to their real kubelet.
//!
//! [`PluginGpus`] plays the kubelet's device manager for kwok nodes that opt in
//! ([`GPUS_FOLLOW_PLUGIN_ANNOTATION`]): their `nvidia.com/gpu` follows the device-plugin pod
//! running there, as on a real node, instead of being written by the test.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, Node, Pod, PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::{JoinHandle, JoinSet};

pub mod dra;
mod plugin_gpus;

pub use plugin_gpus::{
    BROKEN_PLUGIN_TAG, DEFAULT_REGISTRATION_DELAY, GPUS_FOLLOW_PLUGIN_ANNOTATION, GpuWrite,
    PluginGpus, PluginGpusOptions, Registration, STOPPED_PLUGIN_CAPACITY_GRACE, TwoPlugins,
    is_broken_image,
};

/// The label of GPU validation pods (any namespace).
pub const VALIDATION_POD_LABEL: (&str, &str) = ("app.kubernetes.io/component", "gpu-validation");
/// Node label choosing how validation pods on the node end: `fail` (exit code 1, the CUDA
/// sample's error) or `hang` (never finish); absent or anything else: success.
pub const SIMULATE_VALIDATION_LABEL: &str = "gpupool.io/simulate-validation";
/// What the validation container prints on success (the CUDA vectorAdd sample).
pub const PASSED_MESSAGE: &str = "Test PASSED";
/// What it prints on a node whose GPU is not usable.
pub const FAILED_MESSAGE: &str =
    "Failed to allocate device vector A (error code no CUDA-capable device is detected)!";
/// How long a validation container "runs" by default.
pub const DEFAULT_RUN_TIME: Duration = Duration::from_secs(3);

/// How a validation container ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Hangs,
}

/// A running simulated kubelet for validation pods: a tokio task watching pods labelled
/// [`VALIDATION_POD_LABEL`] in all namespaces. Once such a pod is bound to a node and Running, it
/// waits the run time, then writes the pod's status as the kubelet does for a finished
/// container: phase `Succeeded`, the container terminated with exit code 0, reason `Completed`,
/// message [`PASSED_MESSAGE`] — or, on a node labelled [`SIMULATE_VALIDATION_LABEL`]`=fail`,
/// phase `Failed`, exit code 1, reason `Error`, message [`FAILED_MESSAGE`]; on `=hang` it leaves
/// the pod Running. The node's label is read when the run time is over.
///
/// Dropping the handle (or [`ValidationPods::stop`]) stops the task and every pending finish.
#[derive(Debug)]
pub struct ValidationPods {
    /// None once stopped.
    task: Option<JoinHandle<()>>,
}

impl ValidationPods {
    /// Starts the simulation with [`DEFAULT_RUN_TIME`]; needs a tokio runtime.
    pub fn spawn(client: kube::Client) -> ValidationPods {
        Self::spawn_with_run_time(client, DEFAULT_RUN_TIME)
    }

    /// Starts the simulation with validation containers that run for `run_time`.
    pub fn spawn_with_run_time(client: kube::Client, run_time: Duration) -> ValidationPods {
        Self::spawn_selecting(client, "", run_time)
    }

    /// Starts the simulation for the validation pods that also match the label selector `extra`
    /// (e.g. `gpupool.io/pool=a`): tests sharing a control plane each simulate their own pods.
    pub fn spawn_selecting(
        client: kube::Client,
        extra: &str,
        run_time: Duration,
    ) -> ValidationPods {
        let (key, value) = VALIDATION_POD_LABEL;
        let selector = if extra.is_empty() {
            format!("{key}={value}")
        } else {
            format!("{key}={value},{extra}")
        };
        ValidationPods {
            task: Some(tokio::spawn(watch(client, selector, run_time))),
        }
    }

    /// Stops the simulation and waits until it has stopped: no status is written afterwards.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ValidationPods {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn watch(client: kube::Client, selector: String, run_time: Duration) {
    let config = watcher::Config::default().labels(&selector);
    let mut pods = watcher(Api::<Pod>::all(client.clone()), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    // Owned here, so that aborting this task aborts every pending finish too.
    let mut finishing = JoinSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(event) = pods.next().await {
        while finishing.try_join_next().is_some() {}
        let Ok(pod) = event else {
            continue; // the watcher retries with backoff
        };
        let (Some(uid), Some(node)) = (pod.metadata.uid.clone(), bound_and_running(&pod)) else {
            continue;
        };
        if seen.insert(uid) {
            finishing.spawn(finish(client.clone(), pod, node, run_time));
        }
    }
}

/// The node of a pod that is bound, Running and not being deleted.
fn bound_and_running(pod: &Pod) -> Option<String> {
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let deleting = pod.metadata.deletion_timestamp.is_some();
    (running && !deleting)
        .then(|| pod.spec.as_ref()?.node_name.clone())
        .flatten()
}

/// After `run_time`, writes the finished status the node's label calls for.
async fn finish(client: kube::Client, pod: Pod, node: String, run_time: Duration) {
    tokio::time::sleep(run_time).await;
    let outcome = match node_label(&client, &node).await {
        // A real node (RealNode): its kubelet runs the container and writes the status.
        None => return,
        Some(label) => match label.as_deref() {
            Some("fail") => Outcome::Failed,
            Some("hang") => Outcome::Hangs,
            _ => Outcome::Passed,
        },
    };
    if outcome == Outcome::Hangs {
        return;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    // A few tries: the API server may be restarting under a fault test.
    for _ in 0..10 {
        match api.get_opt(&name).await {
            Ok(Some(current)) if current.metadata.uid == pod.metadata.uid => {
                let patch = Patch::Merge(finished_status(&current, outcome));
                match api
                    .patch_status(&name, &PatchParams::default(), &patch)
                    .await
                {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "writing a validation pod's status")
                    }
                }
            }
            Ok(_) => return, // gone, or replaced by another pod of the same name
            Err(e) => tracing::warn!(pod = %name, error = %e, "reading a validation pod"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node's [`SIMULATE_VALIDATION_LABEL`] (inner None when unset), or None when the node is not
/// a kwok node (or cannot be read): then nothing is simulated.
async fn node_label(client: &kube::Client, node: &str) -> Option<Option<String>> {
    let node = Api::<Node>::all(client.clone())
        .get_opt(node)
        .await
        .ok()
        .flatten();
    let node = match node {
        Some(node) => node,
        // Gone or unreadable: as before, finish the pod as passed.
        None => return Some(None),
    };
    let kwok = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::nodes::KWOK_ANNOTATION.0))
        .is_some_and(|v| v == crate::nodes::KWOK_ANNOTATION.1);
    if !kwok {
        return None;
    }
    Some(
        node.metadata
            .labels
            .and_then(|mut l| l.remove(SIMULATE_VALIDATION_LABEL)),
    )
}

/// The status patch a kubelet writes when the pod's containers have exited: every container
/// terminated with the outcome, phase Succeeded/Failed, and Ready/ContainersReady false.
fn finished_status(pod: &Pod, outcome: Outcome) -> serde_json::Value {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = pod.status.clone().unwrap_or_default();
    let conditions: Vec<PodCondition> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|mut c| {
            if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                c.status = "False".into();
                c.reason = Some("PodCompleted".into());
                c.last_transition_time = Some(now.clone());
            }
            c
        })
        .collect();
    let running: BTreeMap<String, ContainerStatus> = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    let container_statuses: Vec<ContainerStatus> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| terminated(c, running.get(&c.name), outcome, &now))
        .collect();
    let phase = if outcome == Outcome::Failed {
        "Failed"
    } else {
        "Succeeded"
    };
    serde_json::json!({"status": {
        "phase": phase,
        "conditions": conditions,
        "containerStatuses": container_statuses,
    }})
}

/// The status of `container` after it exited with the outcome; `running` is its status before.
fn terminated(
    container: &Container,
    running: Option<&ContainerStatus>,
    outcome: Outcome,
    now: &Time,
) -> ContainerStatus {
    let (exit_code, reason, message) = match outcome {
        Outcome::Failed => (1, "Error", FAILED_MESSAGE),
        _ => (0, "Completed", PASSED_MESSAGE),
    };
    let image = container.image.clone().unwrap_or_default();
    // kwok records no image digest; the reference stands in for it.
    let image_id = running
        .map(|s| s.image_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| image.clone());
    let started_at = running
        .and_then(|s| s.state.as_ref()?.running.as_ref()?.started_at.clone())
        .unwrap_or_else(|| now.clone());
    ContainerStatus {
        name: container.name.clone(),
        image,
        image_id,
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.into()),
                message: Some(message.into()),
                started_at: Some(started_at),
                finished_at: Some(now.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

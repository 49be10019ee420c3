//! Every condition type and reason gpupool writes (conditions, problem nodes, events). They are
//! API: dashboards, alerts, `kubectl wait` and GitOps tools match on them, so they are enums here
//! and a rename is a compile error rather than a silent break. The status keeps them as strings,
//! so that an older operator can still read a status written by a newer one.

use strum::{Display, EnumString, IntoStaticStr};

/// The `type` of a pool condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Display, EnumString, IntoStaticStr)]
pub enum ConditionType {
    /// The pool can run GPU work (always present).
    Ready,
    /// The device plugin runs where it should, or the node image ships it (always present).
    DevicePluginReady,
    /// Every in-service node has its GPUs allocatable (always present).
    GpusSchedulable,
    /// Work in progress (only while True; kstatus reads it).
    Reconciling,
    /// Not Ready and not making progress: an admin must act (only while True; kstatus reads it).
    Stalled,
    /// Nodes are contested by other pools or foreign plugins (only while True).
    Conflict,
    /// Every node passed the validation workload (present when `spec.validation` is set).
    GpusValidated,
    /// No node reports a GPU fault: no GPU node condition is True and no GPU is marked
    /// unhealthy by the plugin (always present).
    GpusHealthy,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The `status` of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Display, EnumString, IntoStaticStr)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn from_bool(ok: bool) -> Self {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// The CamelCase `reason` of a condition, a problem node or an event.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Display, EnumString, IntoStaticStr,
)]
pub enum Reason {
    // Ready
    Ready,
    NoNodes,
    // DevicePluginReady: why a plugin is (not) deployed
    StandardImageRequested,
    SpecializedImageRequested,
    StandardImageDetected,
    SpecializedImageDetected,
    MixedImagesDetected,
    ManagedGpuDetected,
    DraDriverDetected,
    NoNodesToDetect,
    // DevicePluginReady: the DaemonSet
    DaemonSetReady,
    DaemonSetPending,
    DaemonSetProgressing,
    DaemonSetRolloutStuck,
    PluginPodsNotReady,
    DuplicateDevicePlugin,
    // GpusSchedulable
    GpusSchedulable,
    GpusMissing,
    NodesNotReady,
    WaitingForGpus,
    AllNodesCordoned,
    // GpusValidated
    GpusValidated,
    ValidationPending,
    ValidationFailed,
    ValidationWaitingForGpu,
    // Reconciling
    Progressing,
    // Stalled by a write the API server refused
    DaemonSetRejected,
    PluginNamespaceNotFound,
    Forbidden,
    DaemonSetNameTaken,
    StaleDaemonSet,
    ImageNotAllowed,
    // Stalled by node or pod writes that keep failing (after the retries), by what the API said
    WriteRejected,
    WriteConflict,
    ApiUnavailable,
    // GpusHealthy
    GpusHealthy,
    GpuFaultsReported,
    UnhealthyGpus,
    // Conflict
    NodesSelectedByOtherPools,
    ForeignDevicePlugin,
    NodesSelectedByOtherPoolsAndForeignDevicePlugin,
    // Problem nodes
    NoGpuCapacity,
    NoAllocatableGpus,
    FewerGpusThanExpected,
    AllocatableBelowCapacity,
    NotNvidiaGpus,
    GpuFault,
    NotReady,
    Cordoned,
    Deleting,
    SelectedByOtherPool,
    Gated,
    // Events
    DaemonSetCreated,
    DaemonSetUpdated,
    DaemonSetReplaced,
    DaemonSetRemoved,
    PluginModeChanged,
    Conflict,
    Stalled,
    GateOpened,
    GateClosed,
    GateDryRun,
    ValidationPassed,
    // Problem nodes (real-node findings, #20)
    /// The pool's device plugin pod on the node does not run: crash loop, image pull, container
    /// creation errors; the message names the pod, its restarts, its last error and `kubectl logs`.
    PluginPodFailing,
    /// MIG is configured but the node advertises its GPUs whole (MIG mode off, or not partitioned).
    NoMigDevices,
    // The plugin's GPU-verified rollout (DevicePluginReady, problem nodes, events)
    PluginRollingOut,
    PluginRolloutHalted,
    PluginRolledBack,
    PluginRolloutComplete,
    /// A node whose plugin is being replaced (progress until the rollout's deadline).
    PluginUpdating,
    // DRA pools (#23)
    /// DevicePluginReady: `spec.allocation` is Dra, gpupool runs no device plugin.
    DraAllocationRequested,
    /// Stalled: `spec.allocation` Dra on a cluster that serves no `resource.k8s.io/v1`.
    DraNotSupported,
    /// Problem node: the DRA driver publishes no ResourceSlices for the node.
    NoResourceSlices,
    /// Problem node: a slice pool of the node is not completely published.
    IncompleteResourceSlices,
    /// Problem node: the DRA driver's kubelet plugin pod on the node is missing or not ready.
    DraDriverNotReady,
    /// Problem node / GpusHealthy: the DRA driver taints GPUs of the node (KEP-5055).
    DeviceTaints,
    /// Problem node: the GPUs published are not the model the VM size has.
    UnexpectedGpuModel,
    /// Problem node: moving between the device plugin and the DRA driver (`spec.allocation`).
    MovingToDra,
    MovingToDevicePlugin,
    /// Problem node: the DRA driver serves a node of a pool whose allocation is DevicePlugin.
    DraDriverOnNode,
    /// Conflict / problem node: a device plugin and the DRA driver both serve the node.
    DevicePluginAndDraDriver,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_variant_names() {
        assert_eq!(
            ConditionType::DevicePluginReady.as_str(),
            "DevicePluginReady"
        );
        assert_eq!(ConditionStatus::from_bool(false).as_str(), "False");
        assert_eq!(
            Reason::NodesSelectedByOtherPoolsAndForeignDevicePlugin.to_string(),
            "NodesSelectedByOtherPoolsAndForeignDevicePlugin"
        );
        assert_eq!("GpusMissing".parse::<Reason>(), Ok(Reason::GpusMissing));
    }
}

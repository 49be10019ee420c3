//! [`DraDriver`]: the NVIDIA GPU DRA driver (`gpu.nvidia.com`) on kwok nodes — its cluster pieces
//! as the Helm chart installs them, and its kubelet plugin's ResourceSlices, published while the
//! plugin pod runs on a node and wiped by the (simulated) kubelet after it stops.
//!
//! # What the real driver does (the facts this simulates)
//!
//! Read from `kubernetes-sigs/dra-driver-nvidia-gpu` at commit
//! `95932046683719c43b6a0dd9613c2e5aad5d6703` (main, chart `0.5.0-dev`, vendoring Kubernetes
//! v0.36.0 libraries; the last release is v25.12.0, chart `nvidia-dra-driver-gpu`), and from
//! `k8s.io/kubernetes@v1.36.3` (the control plane's version) and k8s-openapi 0.29 (`v1_36`).
//!
//! **Publishing** (`cmd/gpu-kubelet-plugin/driver.go` `publishResources`, `main.go`
//! `DriverName`): driver `gpu.nvidia.com`, **one pool named after the node**, **one slice** holding
//! every allocatable device (without the alpha `DynamicMIG` gate; with it, on 1.35+, G+1 slices:
//! one of SharedCounters and one per GPU — not simulated). The slices are written by the
//! ResourceSlice controller of `k8s.io/dynamic-resource-allocation`
//! (`resourceslice/resourceslicecontroller.go` `syncPool`, `kubeletplugin/draplugin.go`
//! `PublishResources`):
//! - name from `generateName` `<index as hex, ≥5 digits>-gpu.nvidia.com-<node>-` (e.g.
//!   `00000-gpu.nvidia.com-aks-gpu-0-x7k2q`); an ownerReference to the Node (controller: true),
//!   so the garbage collector removes them with the Node; `spec.nodeName` = the node;
//!   `spec.pool = {name: <node>, generation, resourceSliceCount: <slices>}`;
//! - generation: 1 on first publish; existing slices are matched by their index prefix and
//!   updated **in place**; the generation is kept when at most one update is needed and no slice
//!   is new, else bumped by one (every slice rewritten); slices of a lower generation, with an
//!   unparsable name or beyond the count are deleted first; slices of the node and driver in
//!   **other pools are deleted** (the controller owns every `gpu.nvidia.com` slice of its node);
//! - a plugin that stops does **not** delete its slices. The **kubelet** does
//!   (`pkg/kubelet/cm/dra/plugin/dra_plugin_manager.go` `sync`/`wipeResourceSlices`,
//!   `pkg/kubelet/cm/dra/manager.go` `defaultWipingDelay`): 30 s after the driver's last plugin
//!   deregistered or lost its connection, `DeleteCollection` of the ResourceSlices with
//!   `spec.nodeName=<node>,spec.driver=gpu.nvidia.com`; cancelled when a plugin of the driver
//!   registers again in time; at kubelet start every slice of the node is wiped.
//!
//! **Devices** (`cmd/gpu-kubelet-plugin/deviceinfo.go`, `mig.go`, `partitions.go`, `nvlib.go`,
//! `types.go`): full GPUs are `gpu-<minor>`; attributes (bare keys, domain implied):
//! `type` string `gpu`, `uuid` string `GPU-…`, `productName` string (NVML name, e.g.
//! `NVIDIA A100-SXM4-40GB`), `brand` string, `architecture` string (`Ampere`, `Hopper`),
//! `cudaComputeCapability`, `driverVersion`, `cudaDriverVersion` as **version** values (semver:
//! `8.0` → `8.0.0`, CUDA 12040 → `12.4.0`), and the standard, fully qualified
//! `resource.kubernetes.io/pciBusID` (`0000:07:00.0`) and `resource.kubernetes.io/pcieRoot`
//! (`pci0000:00`), optionally `resource.kubernetes.io/numaNode` int and `addressingMode`
//! (coherent-memory systems; neither simulated); capacity `memory` (NVML total bytes, BinarySI,
//! e.g. `40Gi`). A GPU with MIG mode enabled is **not** announced itself; its static MIG devices
//! are, named `gpu-<minor>-mig-<profile, dots removed>-<GI profile id>-<placement start>` (e.g.
//! `gpu-0-mig-1g5gb-19-0`), attributes `type` `mig`, `uuid` `MIG-…`, `parentUUID`, `profile`
//! (`1g.5gb`), and the parent's `productName`, `brand`, `architecture`, versions and PCI
//! attributes; capacity `multiprocessors`, `copyEngines`, `decoders`, `encoders`, `jpegEngines`,
//! `ofaEngines`, `memory` (profile MiB × 2^20) and `memorySlice<i>` = 1 for each memory slice of
//! its placement. (The project's docs page `site/content/docs/reference/resourceslice-attributes.md`
//! shows `gpu-0-mig-1g.5gb-0`; the code and the health-check guide's `gpu-0-mig-1g12gb-19-0` are
//! right: device names are DNS labels.) The driver lists devices in Go map order; this
//! simulation sorts them by name.
//!
//! **Health taints** (`cmd/gpu-kubelet-plugin/device_health.go`, `driver.go`
//! `deviceHealthEvents`; only on main, not in v25.12.0; behind the alpha `NVMLDeviceHealthCheck`
//! gate, off by default): on an NVML event the plugin adds a taint to the affected devices and
//! republishes (same slice, updated in place, `timeAdded` left for the API server to set):
//! - critical XID on a device: `gpu.nvidia.com/xid`, value the XID number, effect `NoSchedule`,
//!   or `None` for the application XIDs 13, 31, 43, 45, 68, 109 ([`IGNORED_XIDS`]);
//! - GPU lost (`ERROR_GPU_IS_LOST`, or an event whose device cannot be named): every device of
//!   the node `gpu.nvidia.com/gpu-lost`, no value, `NoSchedule`;
//! - a GPU that cannot be monitored: its devices `gpu.nvidia.com/unmonitored`, `None`.
//!
//! One taint per key per device (the latest value wins). **Taints are never removed** by a running
//! plugin; they live in its memory, so a plugin restart republishes the devices without them
//! ([`DraDriver::untaint`] is that, for one device). `NoExecute` is never set by the driver.
//!
//! **Chart** (`deployments/helm/dra-driver-nvidia-gpu/templates/kubeletplugin.yaml`,
//! `_helpers.tpl`, `values.yaml`, `deviceclass-*.yaml`, `rbac-kubeletplugin.yaml`): DaemonSet
//! `<chart name>-kubelet-plugin` (the chart *name*, not the release: `dra-driver-nvidia-gpu-kubelet-plugin`;
//! v25.x: `nvidia-dra-driver-gpu-kubelet-plugin`) in the release namespace (the docs install into
//! `dra-driver-nvidia-gpu`), selector label `<chart name>-component: kubelet-plugin`, pod labels
//! also `app.kubernetes.io/name: <chart name>`, `app.kubernetes.io/instance: <release>`;
//! `priorityClassName: system-node-critical`; `updateStrategy` RollingUpdate maxUnavailable 100%;
//! toleration `nvidia.com/gpu:NoSchedule` (Exists); no nodeSelector; a required node affinity on
//! NFD's `feature.node.kubernetes.io/pci-10de.present=true` or
//! `feature.node.kubernetes.io/pci-0302_10de.present=true`; service account
//! `<fullname>-service-account-kubeletplugin`; an init container and the containers
//! `compute-domains` and `gpus` (both on by default). DeviceClasses (`resource.k8s.io/v1`):
//! `gpu.nvidia.com` (`device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'`,
//! **`extendedResourceName: nvidia.com/gpu`**), `mig.nvidia.com` (`… .type == 'mig'`),
//! `vfio.gpu.nvidia.com` (`… .type == 'vfio'`). The chart refuses `resources.gpus.enabled` without
//! `gpuResourcesEnabledOverride=true`: the driver must not run next to the device plugin on one
//! node until KEP 5004 (DRA extended resources) is GA.
//!
//! **Kubernetes 1.36** (`pkg/features/kube_features.go`): `resource.k8s.io/v1` is GA;
//! `DRADeviceTaints` is beta and **on by default** (no flag needed on the test plane);
//! `DRADeviceTaintRules` (the `DeviceTaintRule` API) is beta but off; `DRAExtendedResource` is
//! beta and **on**: with the `gpu.nvidia.com` class installed, the scheduler serves a pod's
//! `nvidia.com/gpu` request from DRA on any node whose allocatable has no (or zero)
//! `nvidia.com/gpu` (`noderesources/fit.go` `shouldDelegateResourceToDRA`,
//! `dynamicresources/extendeddynamicresources.go`), creating a claim annotated
//! `resource.kubernetes.io/extended-resource-claim: "true"`. The allocator never allocates from an
//! incomplete pool (fewer slices of the newest generation than `resourceSliceCount`) and ignores
//! slices of older generations (`k8s.io/dynamic-resource-allocation/structured/internal/stable`).
//! k8s-openapi 0.29 `v1_36` has all of it in `k8s_openapi::api::resource::v1` (`ResourceSlice`,
//! `Device`, `DeviceTaint`, `DeviceClass` with `extended_resource_name`, `ResourceClaim`,
//! `ResourceClaimTemplate`).
//!
//! # What is simulated
//!
//! A kwok node opts in with the annotation [`MACHINE_ANNOTATION`], a JSON [`DraGpus`] (its GPUs:
//! how many, product, memory, static MIG devices, how many slices the pool is split into);
//! [`create_dra_node`] makes one. While a pod of the kubelet-plugin DaemonSet ([`install`]) runs
//! on such a node (Running, not terminating), [`DraDriver`] publishes the node's pool exactly as
//! the controller above does, [`DraDriverOptions::publish_delay`] after the pod started; the
//! machine is read when the plugin starts (as the plugin enumerates NVML once). Once no plugin pod
//! runs there, the slices are wiped after [`DraDriverOptions::wiping_delay`] (30 s, the kubelet's).
//! Fault knobs: [`DraDriver::publish_limit`] (a pool published in parts), [`DraDriver::stall`],
//! [`DraDriver::bump_generation`], [`DraDriver::xid`], [`DraDriver::gpu_lost`],
//! [`DraDriver::taint`], [`DraDriver::untaint`], [`DraDriver::remove_gpu`]; and slices no plugin
//! would write: [`foreign_slice`], [`slice_without_node`], [`without_attributes`] with
//! [`create_slice`].
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), testenv::Error> {
//! use testenv::simulate::dra::{self, DraDriver, DraGpus};
//! dra::install(&client, &dra::Install::default().node_selector("dratest", "a")).await?;
//! let node = dra::dra_node("aks-gpu-0", "gpu", 2).label("dratest", "a");
//! dra::create_dra_node(&client, &node, &DraGpus::a100_40gb(2)).await?;
//! let driver = DraDriver::spawn_selecting(client.clone(), "dratest=a");
//! // … the plugin pod runs, `00000-gpu.nvidia.com-aks-gpu-0-…` appears with gpu-0 and gpu-1 …
//! driver.xid("aks-gpu-0", "gpu-1", 79).await?; // gpu-1 tainted gpu.nvidia.com/xid=79:NoSchedule
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, DeviceClass, DeviceTaint, ResourcePool, ResourceSlice,
    ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::Error;
use crate::nodes::{self, GpuNode, KWOK_ANNOTATION};

/// The driver's name, in `spec.driver` of its slices and as the attribute domain.
pub const DRIVER: &str = "gpu.nvidia.com";
/// DeviceClass of full GPUs (`type == 'gpu'`), mapped to [`EXTENDED_RESOURCE`].
pub const GPU_CLASS: &str = "gpu.nvidia.com";
/// DeviceClass of MIG devices (`type == 'mig'`).
pub const MIG_CLASS: &str = "mig.nvidia.com";
/// DeviceClass of VFIO passthrough GPUs (`type == 'vfio'`; never published here).
pub const VFIO_CLASS: &str = "vfio.gpu.nvidia.com";
/// `extendedResourceName` of [`GPU_CLASS`].
pub const EXTENDED_RESOURCE: &str = "nvidia.com/gpu";
/// Annotation of the claim the scheduler makes for an extended-resource request served by DRA.
pub const EXTENDED_RESOURCE_CLAIM_ANNOTATION: &str =
    "resource.kubernetes.io/extended-resource-claim";
/// The chart's name on main (`deployments/helm/dra-driver-nvidia-gpu`).
pub const CHART: &str = "dra-driver-nvidia-gpu";
/// The chart's name in the v25.x releases (`deployments/helm/nvidia-dra-driver-gpu`).
pub const CHART_V25: &str = "nvidia-dra-driver-gpu";
/// The namespace the driver's docs install into.
pub const NAMESPACE: &str = "dra-driver-nvidia-gpu";
/// The image main's chart runs (`registry.k8s.io/dra-driver-nvidia/…:v<appVersion>`).
pub const IMAGE: &str = "registry.k8s.io/dra-driver-nvidia/dra-driver-nvidia-gpu:v0.5.0-dev";
/// NFD's label for a node with an NVIDIA PCI device, which the chart's affinity requires.
pub const NFD_NVIDIA_PCI_LABEL: (&str, &str) =
    ("feature.node.kubernetes.io/pci-10de.present", "true");
/// Taint key of a critical XID error on a device.
pub const TAINT_XID: &str = "gpu.nvidia.com/xid";
/// Taint key of every device of a node whose GPU is lost.
pub const TAINT_GPU_LOST: &str = "gpu.nvidia.com/gpu-lost";
/// Taint key of devices NVML cannot monitor (effect `None`).
pub const TAINT_UNMONITORED: &str = "gpu.nvidia.com/unmonitored";
/// XIDs the driver treats as application errors: their taint has effect `None`.
pub const IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];
/// How long the kubelet waits after a driver's last plugin went before it wipes its slices.
pub const WIPING_DELAY: Duration = Duration::from_secs(30);
/// Default time from a plugin pod running to its slices being written.
pub const DEFAULT_PUBLISH_DELAY: Duration = Duration::from_millis(300);
/// Node annotation opting a kwok node in: the machine's GPUs as JSON ([`DraGpus`]).
pub const MACHINE_ANNOTATION: &str = "gpupool.test/dra-gpus";
/// Minimum length of the hex index at the start of a slice name.
const INDEX_MIN_LENGTH: usize = 5;
/// How soon failed writes are tried again.
const RETRY: Duration = Duration::from_millis(500);

/// The kubelet-plugin DaemonSet's name for a chart name ([`CHART`] or [`CHART_V25`]).
pub fn daemonset_name(chart: &str) -> String {
    format!("{chart}-kubelet-plugin")
}

/// The kubelet-plugin pods' selector label for a chart name: `<chart>-component=kubelet-plugin`.
pub fn component_label(chart: &str) -> (String, String) {
    (format!("{chart}-component"), "kubelet-plugin".to_owned())
}

// ------------------------------------------------------------------------------------------
// The machine

/// A MIG GPU-instance profile as NVML describes it (`nvidia-smi mig -lgip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigProfile {
    /// e.g. `1g.5gb`.
    pub name: String,
    /// The GPU-instance profile id (`1g.5gb` on an A100 40GB: 19).
    pub gi_profile_id: u32,
    pub memory_mib: u64,
    pub multiprocessors: u32,
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpeg_engines: u32,
    pub ofa_engines: u32,
    /// Memory slices the instance spans (of 8 on an A100).
    pub placement_size: u32,
}

impl MigProfile {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        id: u32,
        memory_mib: u64,
        sm: u32,
        ce: u32,
        dec: u32,
        jpeg_ofa: u32,
        size: u32,
    ) -> Self {
        MigProfile {
            name: name.to_owned(),
            gi_profile_id: id,
            memory_mib,
            multiprocessors: sm,
            copy_engines: ce,
            decoders: dec,
            encoders: 0,
            jpeg_engines: jpeg_ofa,
            ofa_engines: jpeg_ofa,
            placement_size: size,
        }
    }
    /// A100-SXM4-40GB `1g.5gb`.
    pub fn a100_1g_5gb() -> Self {
        Self::new("1g.5gb", 19, 4864, 14, 1, 0, 0, 1)
    }
    /// A100-SXM4-40GB `2g.10gb`.
    pub fn a100_2g_10gb() -> Self {
        Self::new("2g.10gb", 14, 9984, 28, 2, 1, 0, 2)
    }
    /// A100-SXM4-40GB `3g.20gb`.
    pub fn a100_3g_20gb() -> Self {
        Self::new("3g.20gb", 9, 20096, 42, 3, 2, 0, 4)
    }
    /// A100-SXM4-40GB `7g.40gb`.
    pub fn a100_7g_40gb() -> Self {
        Self::new("7g.40gb", 0, 40192, 98, 7, 5, 1, 8)
    }
}

/// A static MIG device (created by the admin or MIG manager before the plugin started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigDevice {
    /// The parent GPU's index (minor).
    pub gpu: u32,
    pub profile: MigProfile,
    pub placement_start: u32,
}

/// A machine's GPUs, as NVML reports them to the driver: the value of [`MACHINE_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DraGpus {
    pub gpus: u32,
    pub product_name: String,
    pub brand: String,
    pub architecture: String,
    /// e.g. `8.0` (published as the version `8.0.0`).
    pub cuda_compute_capability: String,
    pub driver_version: String,
    /// e.g. `12.4`.
    pub cuda_driver_version: String,
    /// Total memory per GPU.
    pub memory_mib: u64,
    /// Static MIG devices; a GPU with any is in MIG mode and not announced itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig: Vec<MigDevice>,
    /// How many slices the pool is split into (the driver: 1). Devices are spread in name
    /// order, in contiguous runs.
    #[serde(default = "one")]
    pub slices: u32,
}

fn one() -> u32 {
    1
}

impl DraGpus {
    /// `gpus` × `NVIDIA A100-SXM4-40GB` (Ampere, 8.0, 40 GiB), driver 550.54.15, CUDA 12.4: the
    /// GPUs of the real node's mock NVML.
    pub fn a100_40gb(gpus: u32) -> Self {
        DraGpus {
            gpus,
            product_name: "NVIDIA A100-SXM4-40GB".into(),
            brand: "Nvidia".into(),
            architecture: "Ampere".into(),
            cuda_compute_capability: "8.0".into(),
            driver_version: "550.54.15".into(),
            cuda_driver_version: "12.4".into(),
            memory_mib: 40960,
            mig: Vec::new(),
            slices: 1,
        }
    }

    /// `gpus` × `NVIDIA H100 80GB HBM3` (Hopper, 9.0, 81559 MiB).
    pub fn h100_80gb(gpus: u32) -> Self {
        DraGpus {
            product_name: "NVIDIA H100 80GB HBM3".into(),
            architecture: "Hopper".into(),
            cuda_compute_capability: "9.0".into(),
            memory_mib: 81559,
            ..Self::a100_40gb(gpus)
        }
    }

    pub fn product_name(mut self, name: &str) -> Self {
        self.product_name = name.to_owned();
        self
    }

    /// Splits the pool into `n` slices.
    pub fn slices(mut self, n: u32) -> Self {
        self.slices = n.max(1);
        self
    }

    /// Puts GPU `gpu` in MIG mode with these devices, placed one after the other (each at the
    /// next start that is a multiple of its size).
    pub fn mig(mut self, gpu: u32, profiles: &[MigProfile]) -> Self {
        let mut next: u32 = 0;
        for profile in profiles {
            let size = profile.placement_size.max(1);
            let start = next.div_ceil(size) * size;
            next = start + size;
            self.mig.push(MigDevice {
                gpu,
                profile: profile.clone(),
                placement_start: start,
            });
        }
        self
    }

    /// The devices the plugin announces on `node`, sorted by name.
    pub fn devices(&self, node: &str) -> Vec<Device> {
        let mig_mode: BTreeSet<u32> = self.mig.iter().map(|m| m.gpu).collect();
        let mut devices: Vec<Device> = (0..self.gpus)
            .filter(|i| !mig_mode.contains(i))
            .map(|i| self.gpu_device(node, i))
            .collect();
        devices.extend(
            self.mig
                .iter()
                .filter(|m| m.gpu < self.gpus)
                .map(|m| self.mig_device(node, m)),
        );
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        devices
    }

    fn common_attributes(&self, gpu: u32) -> BTreeMap<String, DeviceAttribute> {
        let mut a = BTreeMap::new();
        a.insert("productName".into(), string(&self.product_name));
        a.insert("brand".into(), string(&self.brand));
        a.insert("architecture".into(), string(&self.architecture));
        a.insert(
            "cudaComputeCapability".into(),
            version(&self.cuda_compute_capability),
        );
        a.insert("driverVersion".into(), version(&self.driver_version));
        a.insert(
            "cudaDriverVersion".into(),
            version(&self.cuda_driver_version),
        );
        let (bus, root) = pci(gpu);
        a.insert("resource.kubernetes.io/pciBusID".into(), string(&bus));
        a.insert("resource.kubernetes.io/pcieRoot".into(), string(&root));
        a
    }

    fn gpu_device(&self, node: &str, gpu: u32) -> Device {
        let mut attributes = self.common_attributes(gpu);
        attributes.insert("type".into(), string("gpu"));
        attributes.insert("uuid".into(), string(&gpu_uuid(node, gpu)));
        Device {
            name: format!("gpu-{gpu}"),
            attributes: Some(attributes),
            capacity: Some(BTreeMap::from([(
                "memory".to_owned(),
                capacity(self.memory_mib << 20),
            )])),
            ..Default::default()
        }
    }

    fn mig_device(&self, node: &str, mig: &MigDevice) -> Device {
        let p = &mig.profile;
        let mut attributes = self.common_attributes(mig.gpu);
        attributes.insert("type".into(), string("mig"));
        attributes.insert("parentUUID".into(), string(&gpu_uuid(node, mig.gpu)));
        attributes.insert("profile".into(), string(&p.name));
        attributes.insert(
            "uuid".into(),
            string(&uuid(
                "MIG",
                &format!(
                    "{node}/{}/{}/{}",
                    mig.gpu, p.gi_profile_id, mig.placement_start
                ),
            )),
        );
        let mut caps = BTreeMap::from([
            (
                "multiprocessors".to_owned(),
                capacity(p.multiprocessors.into()),
            ),
            ("copyEngines".to_owned(), capacity(p.copy_engines.into())),
            ("decoders".to_owned(), capacity(p.decoders.into())),
            ("encoders".to_owned(), capacity(p.encoders.into())),
            ("jpegEngines".to_owned(), capacity(p.jpeg_engines.into())),
            ("ofaEngines".to_owned(), capacity(p.ofa_engines.into())),
            ("memory".to_owned(), capacity(p.memory_mib << 20)),
        ]);
        for i in mig.placement_start..mig.placement_start + p.placement_size {
            caps.insert(format!("memorySlice{i}"), capacity(1));
        }
        Device {
            name: mig_device_name(mig),
            attributes: Some(attributes),
            capacity: Some(caps),
            ..Default::default()
        }
    }
}

/// `gpu-<minor>-mig-<profile without dots, RFC 1123>-<GI profile id>-<placement start>`.
pub fn mig_device_name(mig: &MigDevice) -> String {
    let profile: String = mig
        .profile
        .name
        .replace('.', "")
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "gpu-{}-mig-{}-{}-{}",
        mig.gpu,
        profile.trim_matches('-'),
        mig.profile.gi_profile_id,
        mig.placement_start
    )
}

/// The stable UUID of GPU `gpu` of `node` (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn gpu_uuid(node: &str, gpu: u32) -> String {
    uuid("GPU", &format!("{node}/{gpu}"))
}

fn uuid(prefix: &str, seed: &str) -> String {
    let h = seed
        .bytes()
        .fold(0x6c62272e07bb014262b821756295c58d_u128, |h, b| {
            (h ^ u128::from(b)).wrapping_mul(0x0000000001000000000000000000013B)
        });
    let hex = format!("{h:032x}");
    format!(
        "{prefix}-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// PCI bus id and PCIe root of GPU `gpu` (a DGX A100's layout for the first eight).
fn pci(gpu: u32) -> (String, String) {
    const BUSES: [u32; 8] = [0x07, 0x0f, 0x47, 0x4e, 0x87, 0x90, 0xb7, 0xbd];
    let bus = BUSES
        .get(gpu as usize)
        .copied()
        .unwrap_or(0xc0 + gpu % 0x3f);
    (
        format!("0000:{bus:02x}:00.0"),
        format!("pci0000:{:02x}", bus & 0xc0),
    )
}

fn string(s: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s.to_owned()),
        ..Default::default()
    }
}

/// A version attribute: the semver the driver writes (`8.0` → `8.0.0`).
fn version(v: &str) -> DeviceAttribute {
    let mut parts: Vec<&str> = v.split('.').collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    DeviceAttribute {
        version: Some(parts.join(".")),
        ..Default::default()
    }
}

fn capacity(value: u64) -> DeviceCapacity {
    DeviceCapacity {
        value: Quantity(binary_si(value)),
        ..Default::default()
    }
}

/// A quantity's canonical BinarySI form, as Go's `resource.NewQuantity(n, BinarySI)` prints it.
fn binary_si(mut value: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut i = 0;
    while value != 0 && value.is_multiple_of(1024) && i < SUFFIXES.len() - 1 {
        value /= 1024;
        i += 1;
    }
    format!("{value}{}", SUFFIXES[i])
}

// ------------------------------------------------------------------------------------------
// Nodes

/// A kwok AKS GPU node for DRA: `gpus` GPUs (the `accelerator` labels), no `nvidia.com/gpu` in
/// status (no device plugin), NFD's [`NFD_NVIDIA_PCI_LABEL`] (which the chart's affinity needs).
/// Create it with [`create_dra_node`].
pub fn dra_node(name: &str, agentpool: &str, gpus: u32) -> GpuNode {
    GpuNode::aks(name, agentpool)
        .gpus(gpus)
        .no_gpus_yet()
        .label(NFD_NVIDIA_PCI_LABEL.0, NFD_NVIDIA_PCI_LABEL.1)
}

/// Creates the node and annotates it with its machine ([`MACHINE_ANNOTATION`]).
pub async fn create_dra_node(
    client: &kube::Client,
    node: &GpuNode,
    machine: &DraGpus,
) -> Result<Node, Error> {
    nodes::create_node(client, node).await?;
    set_machine(client, &node.name, machine).await
}

/// Sets the node's machine. A running plugin reads it at its next start.
pub async fn set_machine(
    client: &kube::Client,
    node: &str,
    machine: &DraGpus,
) -> Result<Node, Error> {
    let value = serde_json::to_string(machine).map_err(|e| Error::Config {
        what: "serializing a DraGpus".into(),
        detail: e.to_string(),
    })?;
    let patch = serde_json::json!({ "metadata": { "annotations": { MACHINE_ANNOTATION: value } } });
    Ok(Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?)
}

/// The machine of a kwok node that opts in.
fn machine(node: &Node) -> Option<DraGpus> {
    let annotations = node.metadata.annotations.as_ref()?;
    if annotations.get(KWOK_ANNOTATION.0).map(String::as_str) != Some(KWOK_ANNOTATION.1) {
        return None; // a real node has a kubelet (and plugin) of its own
    }
    let value = annotations.get(MACHINE_ANNOTATION)?;
    match serde_json::from_str(value) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(node = node.metadata.name.as_deref().unwrap_or_default(), error = %e, "{MACHINE_ANNOTATION} is not a DraGpus");
            None
        }
    }
}

// ------------------------------------------------------------------------------------------
// The chart's cluster pieces

/// How to install the driver's cluster pieces ([`install`]).
#[derive(Debug, Clone)]
pub struct Install {
    /// [`CHART`] (main) or [`CHART_V25`]: names and labels follow it.
    pub chart: String,
    /// Helm release name (`app.kubernetes.io/instance`; the service account's name).
    pub release: String,
    pub namespace: String,
    pub image: String,
    /// Added to the pod template, so that a test chooses the nodes (the chart's default is none).
    pub node_selector: BTreeMap<String, String>,
    /// The chart's default `resources.computeDomains.enabled` (a second container).
    pub compute_domains: bool,
    /// Taint keys tolerated (`Exists`, any effect) besides the chart's `nvidia.com/gpu`
    /// (`kubeletPlugin.tolerations`), e.g. a readiness gate's: a DaemonSet pod does not start on
    /// a node with a taint it does not tolerate.
    pub tolerations: Vec<String>,
}

impl Default for Install {
    fn default() -> Self {
        Install {
            chart: CHART.into(),
            release: CHART.into(),
            namespace: NAMESPACE.into(),
            image: IMAGE.into(),
            node_selector: BTreeMap::new(),
            compute_domains: true,
            tolerations: Vec::new(),
        }
    }
}

impl Install {
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }
    pub fn tolerate(mut self, key: &str) -> Self {
        self.tolerations.push(key.to_owned());
        self
    }
    pub fn node_selector(mut self, key: &str, value: &str) -> Self {
        self.node_selector.insert(key.to_owned(), value.to_owned());
        self
    }
    fn fullname(&self) -> String {
        if self.release.contains(&self.chart) {
            self.release.clone()
        } else {
            format!("{}-{}", self.release, self.chart)
        }
    }
    /// The kubelet plugin's service account.
    pub fn service_account(&self) -> String {
        format!("{}-service-account-kubeletplugin", self.fullname())
    }
}

/// The chart's DeviceClasses (`resource.k8s.io/v1`).
pub fn device_classes() -> Vec<DeviceClass> {
    let class = |name: &str, ty: &str, extended: Option<&str>| -> DeviceClass {
        let mut spec = serde_json::json!({ "selectors": [{ "cel": { "expression": format!(
            "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == '{ty}'"
        ) } }] });
        if let Some(extended) = extended {
            spec["extendedResourceName"] = extended.into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": { "name": name }, "spec": spec,
        }))
        .expect("a DeviceClass")
    };
    vec![
        class(GPU_CLASS, "gpu", Some(EXTENDED_RESOURCE)),
        class(MIG_CLASS, "mig", None),
        class(VFIO_CLASS, "vfio", None),
    ]
}

/// The kubelet-plugin DaemonSet as the chart renders it with `install`'s values.
pub fn kubelet_plugin_daemonset(install: &Install) -> DaemonSet {
    let chart = &install.chart;
    let (component_key, component_value) = component_label(chart);
    let labels = serde_json::json!({
        "helm.sh/chart": format!("{chart}-0.5.0-dev"),
        "app.kubernetes.io/version": "0.5.0-dev",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/name": chart,
        "app.kubernetes.io/instance": install.release,
    });
    let env = |name: &str| {
        serde_json::json!([
            { "name": "NVIDIA_DRIVER_ROOT", "value": "/" },
            { "name": "NVIDIA_VISIBLE_DEVICES", "value": "void" },
            { "name": "CDI_ROOT", "value": "/var/run/cdi" },
            { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
            { "name": "NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            { "name": "KUBELET_REGISTRAR_DIRECTORY_PATH", "value": "/var/lib/kubelet/plugins_registry" },
            { "name": "KUBELET_PLUGINS_DIRECTORY_PATH", "value": "/var/lib/kubelet/plugins" },
            { "name": "HEALTHCHECK_PORT", "value": if name == "gpus" { "51516" } else { "51515" } },
        ])
    };
    let container = |name: &str, binary: &str| {
        serde_json::json!({
            "name": name,
            "image": install.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["bash", "-c"],
            "args": [format!("{binary} -v $(LOG_VERBOSITY)")],
            "securityContext": { "privileged": true },
            "env": env(name),
            "volumeMounts": [
                { "name": "plugins-registry", "mountPath": "/var/lib/kubelet/plugins_registry" },
                { "name": "plugins", "mountPath": "/var/lib/kubelet/plugins", "mountPropagation": "Bidirectional" },
                { "name": "cdi", "mountPath": "/var/run/cdi" },
                { "name": "driver-root", "mountPath": "/driver-root", "mountPropagation": "HostToContainer" },
            ],
        })
    };
    let mut containers = Vec::new();
    if install.compute_domains {
        containers.push(container(
            "compute-domains",
            "compute-domain-kubelet-plugin",
        ));
    }
    containers.push(container("gpus", "gpu-kubelet-plugin"));
    let mut pod_labels = serde_json::json!({
        "app.kubernetes.io/name": chart,
        "app.kubernetes.io/instance": install.release,
    });
    pod_labels[&component_key] = component_value.clone().into();
    let mut spec = serde_json::json!({
        "priorityClassName": "system-node-critical",
        "serviceAccountName": install.service_account(),
        "securityContext": {},
        "initContainers": [{
            "name": "init-container",
            "image": install.image,
            "securityContext": { "privileged": true },
            "command": ["bash", "/usr/bin/kubelet-plugin-prestart.sh"],
        }],
        "containers": containers,
        "volumes": [
            { "name": "plugins-registry", "hostPath": { "path": "/var/lib/kubelet/plugins_registry" } },
            { "name": "plugins", "hostPath": { "path": "/var/lib/kubelet/plugins" } },
            { "name": "cdi", "hostPath": { "path": "/var/run/cdi" } },
            { "name": "driver-root-parent", "hostPath": { "path": "/", "type": "DirectoryOrCreate" } },
            { "name": "driver-root", "hostPath": { "path": "/", "type": "DirectoryOrCreate" } },
        ],
        "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                { "matchExpressions": [{ "key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"] }] },
                { "matchExpressions": [{ "key": "feature.node.kubernetes.io/pci-0302_10de.present", "operator": "In", "values": ["true"] }] },
            ]
        } } },
        "tolerations": [{ "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule" }],
    });
    for key in &install.tolerations {
        if let Some(list) = spec["tolerations"].as_array_mut() {
            list.push(serde_json::json!({ "key": key, "operator": "Exists" }));
        }
    }
    if !install.node_selector.is_empty() {
        spec["nodeSelector"] = serde_json::to_value(&install.node_selector).unwrap_or_default();
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": daemonset_name(chart), "namespace": install.namespace, "labels": labels },
        "spec": {
            "selector": { "matchLabels": { component_key.clone(): component_value } },
            "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": "100%" } },
            "template": { "metadata": { "labels": pod_labels }, "spec": spec },
        }
    }))
    .expect("a DaemonSet")
}

/// Installs the driver's pieces as `helm install` would: the namespace (if missing), the
/// DeviceClasses (cluster-wide, shared by every install), the kubelet plugin's service account
/// and its DaemonSet. Server-side apply, so it can be repeated (e.g. with another node selector).
pub async fn install(client: &kube::Client, install: &Install) -> Result<(), Error> {
    let params = PatchParams::apply("helm").force();
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": install.namespace }
    }))
    .expect("a Namespace");
    Api::<Namespace>::all(client.clone())
        .patch(&install.namespace, &params, &Patch::Apply(&ns))
        .await?;
    install_device_classes(client).await?;
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": { "name": install.service_account(), "namespace": install.namespace },
    }))
    .expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(client.clone(), &install.namespace)
        .patch(&install.service_account(), &params, &Patch::Apply(&sa))
        .await?;
    let ds = kubelet_plugin_daemonset(install);
    Api::<DaemonSet>::namespaced(client.clone(), &install.namespace)
        .patch(&daemonset_name(&install.chart), &params, &Patch::Apply(&ds))
        .await?;
    Ok(())
}

/// Creates (or re-applies) the chart's DeviceClasses only.
pub async fn install_device_classes(client: &kube::Client) -> Result<(), Error> {
    let params = PatchParams::apply("helm").force();
    let api: Api<DeviceClass> = Api::all(client.clone());
    for class in device_classes() {
        let name = class.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&class)).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Slices no plugin of the node would write

/// A slice of node `node`'s pool as the driver writes it (generation 1, one slice), named
/// `00000-gpu.nvidia.com-<node>-manual` instead of generated, without an owner: a starting
/// point for slices the tests write themselves ([`create_slice`]).
pub fn driver_slice(node: &str, devices: Vec<Device>) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}manual", slice_prefix(0, 1, node))),
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: DRIVER.into(),
            node_name: Some(node.into()),
            pool: ResourcePool {
                name: node.into(),
                generation: 1,
                resource_slice_count: 1,
            },
            devices: Some(devices),
            ..Default::default()
        },
    }
}

/// A slice of another driver (e.g. `gpu.example.com`) on `node` with `devices` GPUs of `type`
/// `gpu`.
pub fn foreign_slice(node: &str, driver: &str, devices: u32) -> ResourceSlice {
    let devices = (0..devices)
        .map(|i| Device {
            name: format!("gpu-{i}"),
            attributes: Some(BTreeMap::from([("type".to_owned(), string("gpu"))])),
            ..Default::default()
        })
        .collect();
    let mut slice = driver_slice(node, devices);
    slice.metadata.name = Some(format!("00000-{driver}-{node}-manual"));
    slice.spec.driver = driver.into();
    slice
}

/// A `gpu.nvidia.com` slice without `spec.nodeName`: pool `pool`, `machine`'s devices (as on a
/// node named `pool`), for the nodes with the label `selector` (`spec.nodeSelector`, as for
/// network-attached devices). Not `allNodes: true`: on a shared plane the scheduler would
/// allocate its devices to any test's claims.
pub fn slice_without_node(pool: &str, machine: &DraGpus, selector: (&str, &str)) -> ResourceSlice {
    let mut slice = driver_slice(pool, machine.devices(pool));
    slice.metadata.name = Some(format!("00000-gpu.nvidia.com-{pool}-node-selector"));
    slice.spec.node_name = None;
    slice.spec.node_selector = Some(
        serde_json::from_value(
            serde_json::json!({ "nodeSelectorTerms": [{ "matchExpressions": [
            { "key": selector.0, "operator": "In", "values": [selector.1] }
        ] }] }),
        )
        .expect("a NodeSelector"),
    );
    slice
}

/// The slice with the named attributes removed from every device (e.g. `type`, `productName`).
pub fn without_attributes(mut slice: ResourceSlice, names: &[&str]) -> ResourceSlice {
    for device in slice.spec.devices.iter_mut().flatten() {
        if let Some(attributes) = device.attributes.as_mut() {
            for name in names {
                attributes.remove(*name);
            }
        }
    }
    slice
}

/// Creates a slice (as is: name or generateName).
pub async fn create_slice(
    client: &kube::Client,
    slice: &ResourceSlice,
) -> Result<ResourceSlice, Error> {
    Ok(Api::<ResourceSlice>::all(client.clone())
        .create(&PostParams::default(), slice)
        .await?)
}

/// Every `gpu.nvidia.com` slice with `spec.nodeName` `node`, by name.
pub async fn node_slices(client: &kube::Client, node: &str) -> Result<Vec<ResourceSlice>, Error> {
    let fields = format!("spec.nodeName={node},spec.driver={DRIVER}");
    let mut slices = Api::<ResourceSlice>::all(client.clone())
        .list(&ListParams::default().fields(&fields))
        .await?
        .items;
    slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(slices)
}

/// A taint as the driver sets it for a critical XID on a device.
pub fn xid_taint(xid: u64) -> DeviceTaint {
    DeviceTaint {
        key: TAINT_XID.into(),
        value: Some(xid.to_string()),
        effect: if IGNORED_XIDS.contains(&xid) {
            "None"
        } else {
            "NoSchedule"
        }
        .into(),
        time_added: None,
    }
}

// ------------------------------------------------------------------------------------------
// The ResourceSlice controller's sync, apart from the API

/// `<index, hex, ≥5 digits>-gpu.nvidia.com-<node>-`.
fn slice_prefix(index: usize, count: usize, node: &str) -> String {
    let width = format!("{:x}", count.saturating_sub(1))
        .len()
        .max(INDEX_MIN_LENGTH);
    format!("{index:0width$x}-{DRIVER}-{node}-")
}

/// The index a slice name starts with, if it has the expected width.
fn decode_index(name: &str, count: usize) -> Option<usize> {
    let width = format!("{:x}", count.saturating_sub(1))
        .len()
        .max(INDEX_MIN_LENGTH);
    let (prefix, _) = name.split_once('-')?;
    if prefix.len() != width {
        return None;
    }
    usize::from_str_radix(prefix, 16).ok()
}

/// What the plugin wants published for its node.
#[derive(Debug, Clone)]
struct Desired {
    node: String,
    node_uid: String,
    /// The devices of each slice.
    slices: Vec<Vec<Device>>,
    /// Only slices with an index below this are created (the rest are held back).
    limit: usize,
}

#[derive(Debug, Clone)]
enum Op {
    Create(ResourceSlice),
    Update(ResourceSlice),
    Delete(ResourceSlice),
}

/// Devices as compared by the controller: taints' `timeAdded` ignored.
fn comparable(devices: &[Device]) -> serde_json::Value {
    let mut devices = devices.to_vec();
    for d in &mut devices {
        for t in d.taints.iter_mut().flatten() {
            t.time_added = None;
        }
        if d.taints.as_ref().is_some_and(Vec::is_empty) {
            d.taints = None;
        }
    }
    serde_json::to_value(devices).unwrap_or_default()
}

/// `to` with `timeAdded` of taints copied from the same device's same taint in `from`.
fn copy_time_added(from: &[Device], mut to: Vec<Device>) -> Vec<Device> {
    for device in &mut to {
        let Some(old) = from.iter().find(|d| d.name == device.name) else {
            continue;
        };
        for taint in device.taints.iter_mut().flatten() {
            if taint.time_added.is_some() {
                continue;
            }
            taint.time_added = old
                .taints
                .iter()
                .flatten()
                .find(|t| t.key == taint.key && t.value == taint.value && t.effect == taint.effect)
                .and_then(|t| t.time_added.clone());
        }
    }
    to
}

/// The writes that bring the node's slices (`existing`: every `gpu.nvidia.com` slice with its
/// nodeName) to `desired`, as `syncPool` of the ResourceSlice controller decides them; `held`
/// are the indexes an earlier sync decided to create but held back (they do not count as new).
fn sync_pool(existing: &[&ResourceSlice], desired: &Desired, held: &BTreeSet<usize>) -> Vec<Op> {
    let pool = &desired.node;
    let mut ops = Vec::new();
    // Other pools of this node and driver: not the plugin's any more.
    let (mine, other): (Vec<&ResourceSlice>, Vec<&ResourceSlice>) =
        existing.iter().partition(|s| &s.spec.pool.name == pool);
    ops.extend(other.into_iter().map(|s| Op::Delete(s.clone())));
    let count = desired.slices.len();
    let generation = mine
        .iter()
        .map(|s| s.spec.pool.generation)
        .max()
        .unwrap_or(0);
    let mut current: BTreeMap<usize, &ResourceSlice> = BTreeMap::new();
    let mut obsolete = Vec::new();
    for slice in mine {
        if slice.spec.pool.generation < generation {
            obsolete.push(slice);
            continue;
        }
        let index = slice
            .metadata
            .name
            .as_deref()
            .and_then(|n| decode_index(n, count));
        match index {
            Some(i) if i < count && !current.contains_key(&i) => {
                current.insert(i, slice);
            }
            _ => obsolete.push(slice),
        }
    }
    let wanted = |i: usize| i < desired.limit;
    let new: Vec<usize> = (0..count)
        .filter(|i| !current.contains_key(i) && wanted(*i) && !held.contains(i))
        .collect();
    let mut changed = BTreeSet::new();
    for (i, slice) in &current {
        let same_pool = slice.spec.pool.resource_slice_count == count as i64;
        let same_devices = comparable(slice.spec.devices.as_deref().unwrap_or_default())
            == comparable(&desired.slices[*i]);
        let placement = slice.spec.node_name.as_deref() == Some(pool)
            && slice.spec.all_nodes.is_none()
            && slice.spec.node_selector.is_none();
        if !(same_pool && same_devices && placement) {
            changed.insert(*i);
        }
    }
    let (generation, bumped) = if new.is_empty() && changed.len() <= 1 {
        (generation, false)
    } else {
        (generation + 1, true)
    };
    let pool_spec = ResourcePool {
        name: pool.clone(),
        generation,
        resource_slice_count: count as i64,
    };
    ops.extend(obsolete.into_iter().map(|s| Op::Delete(s.clone())));
    for (i, slice) in &current {
        if !changed.contains(i) && !bumped {
            continue;
        }
        let mut updated = (*slice).clone();
        updated.spec.pool = pool_spec.clone();
        updated.spec.node_name = Some(pool.clone());
        updated.spec.all_nodes = None;
        updated.spec.node_selector = None;
        updated.spec.devices = Some(copy_time_added(
            slice.spec.devices.as_deref().unwrap_or_default(),
            desired.slices[*i].clone(),
        ));
        ops.push(Op::Update(updated));
    }
    for i in (0..count).filter(|i| !current.contains_key(i) && wanted(*i)) {
        ops.push(Op::Create(new_slice(desired, i, pool_spec.clone())));
    }
    ops
}

fn new_slice(desired: &Desired, index: usize, pool: ResourcePool) -> ResourceSlice {
    ResourceSlice {
        metadata: ObjectMeta {
            generate_name: Some(slice_prefix(index, desired.slices.len(), &desired.node)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: desired.node.clone(),
                uid: desired.node_uid.clone(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: DRIVER.into(),
            node_name: Some(desired.node.clone()),
            pool,
            devices: Some(desired.slices[index].clone()),
            ..Default::default()
        },
    }
}

/// `devices` in `count` contiguous runs (the last ones may be empty).
fn split(devices: Vec<Device>, count: usize) -> Vec<Vec<Device>> {
    let count = count.max(1);
    let per = devices.len().div_ceil(count).max(1);
    let mut out: Vec<Vec<Device>> = devices.chunks(per).map(<[Device]>::to_vec).collect();
    out.resize(count, Vec::new());
    out
}

// ------------------------------------------------------------------------------------------
// The publisher

/// How to run [`DraDriver`].
#[derive(Debug, Clone)]
pub struct DraDriverOptions {
    /// A label selector for the nodes to simulate (besides their opting in), e.g. `dratest=a`.
    pub node_selector: String,
    /// The chart whose kubelet-plugin pods count ([`CHART`] or [`CHART_V25`]).
    pub chart: String,
    /// Default [`DEFAULT_PUBLISH_DELAY`].
    pub publish_delay: Duration,
    /// Default [`WIPING_DELAY`].
    pub wiping_delay: Duration,
}

impl Default for DraDriverOptions {
    fn default() -> Self {
        DraDriverOptions {
            node_selector: String::new(),
            chart: CHART.into(),
            publish_delay: DEFAULT_PUBLISH_DELAY,
            wiping_delay: WIPING_DELAY,
        }
    }
}

/// One write of the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceWrite {
    pub node: String,
    /// `create`, `update`, `delete` or `wipe` (the kubelet's DeleteCollection).
    pub op: &'static str,
    /// The slice (for `wipe`: empty).
    pub slice: String,
    pub generation: i64,
    pub at: Instant,
}

enum Knob {
    Limit(Option<usize>),
    Stall(bool),
    Bump,
    Taint(String, DeviceTaint),
    Untaint(String, String),
    GpuLost,
    RemoveGpu(u32),
}

struct Command {
    node: String,
    knob: Knob,
    reply: oneshot::Sender<Result<i64, String>>,
}

/// The driver's kubelet plugins (and the kubelet's slice wiping) for kwok nodes that opt in
/// ([`MACHINE_ANNOTATION`]): a tokio task watching the kubelet-plugin pods (all namespaces), the
/// nodes and the `gpu.nvidia.com` slices, writing as the module docs say. Knobs return once
/// their writes are done. Dropping the handle (or [`DraDriver::stop`]) stops it; slices stay.
#[derive(Debug)]
pub struct DraDriver {
    task: Option<JoinHandle<()>>,
    commands: mpsc::UnboundedSender<Command>,
    record: Arc<Mutex<Vec<SliceWrite>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Command").field("node", &self.node).finish()
    }
}

impl DraDriver {
    /// Simulates every node that opts in, with the default delays; needs a tokio runtime.
    pub fn spawn(client: kube::Client) -> DraDriver {
        Self::spawn_with(client, DraDriverOptions::default())
    }

    /// Simulates the nodes that opt in and match the label selector `nodes`.
    pub fn spawn_selecting(client: kube::Client, nodes: &str) -> DraDriver {
        Self::spawn_with(
            client,
            DraDriverOptions {
                node_selector: nodes.to_owned(),
                ..Default::default()
            },
        )
    }

    pub fn spawn_with(client: kube::Client, options: DraDriverOptions) -> DraDriver {
        let record = Arc::new(Mutex::new(Vec::new()));
        let (commands, receiver) = mpsc::unbounded_channel();
        DraDriver {
            task: Some(tokio::spawn(run(client, options, record.clone(), receiver))),
            commands,
            record,
        }
    }

    /// Every write so far, in order.
    pub fn writes(&self) -> Vec<SliceWrite> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn send(&self, node: &str, knob: Knob) -> Result<i64, Error> {
        let (reply, answer) = oneshot::channel();
        let command = Command {
            node: node.to_owned(),
            knob,
            reply,
        };
        let stopped = || Error::Config {
            what: format!("DRA driver simulation, node {node}"),
            detail: "the simulation has stopped".into(),
        };
        self.commands.send(command).map_err(|_| stopped())?;
        answer
            .await
            .map_err(|_| stopped())?
            .map_err(|detail| Error::Config {
                what: format!("DRA driver simulation, node {node}"),
                detail,
            })
    }

    /// Publishes only the node's first `limit` slices (of a pool split with [`DraGpus::slices`]),
    /// as a controller that has created some of them so far: the pool is incomplete, with
    /// `resourceSliceCount` the full count. `None` publishes the rest (same generation). Kept
    /// across plugin restarts; may be set before the plugin runs.
    pub async fn publish_limit(&self, node: &str, limit: Option<usize>) -> Result<(), Error> {
        self.send(node, Knob::Limit(limit)).await.map(drop)
    }

    /// A stalled plugin writes nothing (its slices stay as they are); unstalling syncs at once.
    /// The kubelet's wiping is not affected.
    pub async fn stall(&self, node: &str, stalled: bool) -> Result<(), Error> {
        self.send(node, Knob::Stall(stalled)).await.map(drop)
    }

    /// Republishes the node's pool with the generation after the newest one: new slices (new
    /// names) first, then — unless the node is [stalled](Self::stall) — the old ones deleted, as
    /// the controller deletes slices of an older generation. Returns the new generation. (The
    /// real controller bumps by updating slices in place when more than one changes.)
    pub async fn bump_generation(&self, node: &str) -> Result<i64, Error> {
        self.send(node, Knob::Bump).await
    }

    /// Adds (or replaces, by key) a taint on `device` of the running plugin and republishes.
    pub async fn taint(&self, node: &str, device: &str, taint: DeviceTaint) -> Result<(), Error> {
        self.send(node, Knob::Taint(device.to_owned(), taint))
            .await
            .map(drop)
    }

    /// A critical XID on `device`: [`xid_taint`].
    pub async fn xid(&self, node: &str, device: &str, xid: u64) -> Result<(), Error> {
        self.taint(node, device, xid_taint(xid)).await
    }

    /// NVML reports the GPU lost: every device of the node tainted `gpu.nvidia.com/gpu-lost`
    /// (`NoSchedule`).
    pub async fn gpu_lost(&self, node: &str) -> Result<(), Error> {
        self.send(node, Knob::GpuLost).await.map(drop)
    }

    /// Removes the taint `key` from `device` and republishes: what a plugin restart does to a
    /// healthy device (the running driver never removes taints).
    pub async fn untaint(&self, node: &str, device: &str, key: &str) -> Result<(), Error> {
        self.send(node, Knob::Untaint(device.to_owned(), key.to_owned()))
            .await
            .map(drop)
    }

    /// GPU `gpu` (and its MIG devices) no longer announced: what the plugin publishes after a
    /// restart on a machine that lost the GPU (the slice is updated in place). Lasts until the
    /// plugin restarts (then the machine annotation counts again).
    pub async fn remove_gpu(&self, node: &str, gpu: u32) -> Result<(), Error> {
        self.send(node, Knob::RemoveGpu(gpu)).await.map(drop)
    }

    /// Stops the simulation and waits until it has stopped: nothing is written afterwards.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for DraDriver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The watched objects, as the last complete list plus the events since; slices keep the newest
/// version seen (by resourceVersion), since the simulation also puts its own writes in.
struct Cache<K> {
    objects: HashMap<String, K>,
    listing: Option<HashMap<String, K>>,
    listed: bool,
    key: fn(&K) -> Option<String>,
}

impl<K: kube::Resource> Cache<K> {
    fn new(key: fn(&K) -> Option<String>) -> Self {
        Cache {
            objects: HashMap::new(),
            listing: None,
            listed: false,
            key,
        }
    }

    fn apply(&mut self, event: watcher::Event<K>, deleted: &HashSet<String>) {
        match event {
            watcher::Event::Apply(k) => {
                if let Some(key) = (self.key)(&k) {
                    if deleted.contains(&key) {
                        return;
                    }
                    let newer = self.objects.get(&key).is_none_or(|old| {
                        version(old.meta().resource_version.as_deref())
                            <= version(k.meta().resource_version.as_deref())
                    });
                    if newer {
                        self.objects.insert(key, k);
                    }
                }
            }
            watcher::Event::Delete(k) => {
                if let Some(key) = (self.key)(&k) {
                    self.objects.remove(&key);
                }
            }
            watcher::Event::Init => self.listing = Some(HashMap::new()),
            watcher::Event::InitApply(k) => {
                if let (Some(listing), Some(key)) = (self.listing.as_mut(), (self.key)(&k)) {
                    listing.insert(key, k);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = self.listing.take() {
                    self.objects = listing;
                }
                self.listed = true;
            }
        }

        fn version(rv: Option<&str>) -> u64 {
            rv.and_then(|v| v.parse().ok()).unwrap_or(0)
        }
    }
}

/// The plugin currently serving a node.
#[derive(Debug)]
struct Instance {
    pod_uid: String,
    /// When its slices are first written.
    publish_at: Instant,
    /// The devices it announces (from the machine at its start, then changed by knobs).
    devices: Vec<Device>,
    slices: usize,
}

#[derive(Debug, Default)]
struct NodeSim {
    uid: String,
    instance: Option<Instance>,
    /// Since when no plugin runs (None while one does).
    gone_since: Option<Instant>,
    wiped: bool,
    limit: Option<usize>,
    stalled: bool,
    held: BTreeSet<usize>,
    retry_at: Option<Instant>,
}

struct Sim {
    client: kube::Client,
    options: DraDriverOptions,
    record: Arc<Mutex<Vec<SliceWrite>>>,
    nodes: HashMap<String, NodeSim>,
    /// Pod uid → when it was first seen running.
    running_since: HashMap<String, Instant>,
    slices: Cache<ResourceSlice>,
    /// Names of slices deleted here (their late watch events are ignored).
    deleted: HashSet<String>,
    started: bool,
}

/// How long a command waits for its node to appear in the driver's node watch.
const UNKNOWN_NODE_WAIT: Duration = Duration::from_secs(30);

async fn run(
    client: kube::Client,
    options: DraDriverOptions,
    record: Arc<Mutex<Vec<SliceWrite>>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let (key, value) = component_label(&options.chart);
    let pod_config = watcher::Config::default().labels(&format!("{key}={value}"));
    let mut pods = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .boxed();
    let mut node_config = watcher::Config::default();
    if !options.node_selector.is_empty() {
        node_config = node_config.labels(&options.node_selector);
    }
    let mut node_events = watcher(Api::<Node>::all(client.clone()), node_config)
        .default_backoff()
        .boxed();
    let slice_config = watcher::Config::default().fields(&format!("spec.driver={DRIVER}"));
    let mut slice_events = watcher(Api::<ResourceSlice>::all(client.clone()), slice_config)
        .default_backoff()
        .boxed();
    let mut pod_cache: Cache<Pod> = Cache::new(|p| p.metadata.uid.clone());
    let mut node_cache: Cache<Node> = Cache::new(|n| n.metadata.name.clone());
    let mut sim = Sim {
        client,
        options,
        record,
        nodes: HashMap::new(),
        running_since: HashMap::new(),
        slices: Cache::new(|s| s.metadata.name.clone()),
        deleted: HashSet::new(),
        started: false,
    };
    let none = HashSet::new();
    // Commands with when they arrived: one for a node the node watch has not shown yet waits for
    // it (the test usually creates the node just before), up to UNKNOWN_NODE_WAIT.
    let mut pending: Vec<(Instant, Command)> = Vec::new();
    let mut wake: Option<Instant> = None;
    loop {
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = pods.next() => {
                if let Ok(event) = event { pod_cache.apply(event, &none); }
            }
            Some(event) = node_events.next() => {
                if let Ok(event) = event { node_cache.apply(event, &none); }
            }
            Some(event) = slice_events.next() => {
                if let Ok(event) = event { sim.slices.apply(event, &sim.deleted); }
            }
            Some(command) = commands.recv() => pending.push((Instant::now(), command)),
            () = sleep => {}
        }
        if !(pod_cache.listed && node_cache.listed && sim.slices.listed) {
            continue;
        }
        let now = Instant::now();
        sim.track(now, pod_cache.objects.values(), node_cache.objects.values());
        for (arrived, command) in std::mem::take(&mut pending) {
            if !sim.nodes.contains_key(&command.node) && now < arrived + UNKNOWN_NODE_WAIT {
                pending.push((arrived, command));
                continue;
            }
            let result = sim.command(&command.node, command.knob).await;
            let _ = command.reply.send(result);
        }
        let names: Vec<String> = sim.nodes.keys().cloned().collect();
        for name in names {
            sim.step_node(&name).await;
        }
        let give_up = pending.iter().map(|(at, _)| *at + UNKNOWN_NODE_WAIT).min();
        wake = sim.next_wake().into_iter().chain(give_up).min();
    }
}

impl Sim {
    /// Takes in the plugin pods and nodes: which plugin serves each node that opts in.
    fn track<'a>(
        &mut self,
        now: Instant,
        pods: impl Iterator<Item = &'a Pod>,
        nodes: impl Iterator<Item = &'a Node>,
    ) {
        let first = !self.started;
        self.started = true;
        // Running plugin pods by node: (since, uid).
        let mut running: HashMap<String, Vec<(Instant, String)>> = HashMap::new();
        let mut seen = HashSet::new();
        for pod in pods {
            let (Some(uid), Some(node)) = (
                pod.metadata.uid.clone(),
                pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ) else {
                continue;
            };
            if !is_running(pod) {
                continue;
            }
            seen.insert(uid.clone());
            // Pods already running when the simulation starts have published already.
            let since = *self.running_since.entry(uid.clone()).or_insert(if first {
                now.checked_sub(self.options.publish_delay).unwrap_or(now)
            } else {
                now
            });
            running.entry(node).or_default().push((since, uid));
        }
        self.running_since.retain(|uid, _| seen.contains(uid));
        let mut opted = HashSet::new();
        for node in nodes {
            let (Some(name), Some(uid), Some(machine)) = (
                node.metadata.name.clone(),
                node.metadata.uid.clone(),
                machine(node),
            ) else {
                continue;
            };
            opted.insert(name.clone());
            let state = self.nodes.entry(name.clone()).or_default();
            state.uid = uid;
            let mut pods = running.remove(&name).unwrap_or_default();
            pods.sort();
            let current = state
                .instance
                .as_ref()
                .is_some_and(|i| pods.iter().any(|(_, uid)| uid == &i.pod_uid));
            if current {
                continue;
            }
            match pods.last() {
                Some((since, pod_uid)) => {
                    tracing::info!(node = %name, pod = %pod_uid, "simulated DRA kubelet plugin started");
                    state.instance = Some(Instance {
                        pod_uid: pod_uid.clone(),
                        publish_at: *since + self.options.publish_delay,
                        devices: machine.devices(&name),
                        slices: machine.slices.max(1) as usize,
                    });
                    state.gone_since = None;
                    state.wiped = false;
                    state.held.clear();
                }
                None => {
                    if state.instance.take().is_some() {
                        tracing::info!(node = %name, "simulated DRA kubelet plugin stopped");
                    }
                    state.gone_since.get_or_insert(now);
                }
            }
        }
        self.nodes.retain(|name, _| opted.contains(name));
    }

    async fn command(&mut self, node: &str, knob: Knob) -> Result<i64, String> {
        let now = Instant::now();
        let Some(state) = self.nodes.get_mut(node) else {
            return Err(
                "not a simulated node (a kwok node with the machine annotation, matching the selector)"
                    .into(),
            );
        };
        let instance = match knob {
            Knob::Limit(limit) => {
                state.limit = limit;
                self.step_node(node).await;
                return Ok(0);
            }
            Knob::Stall(stalled) => {
                state.stalled = stalled;
                self.step_node(node).await;
                return Ok(0);
            }
            Knob::Bump => return self.bump(node).await,
            _ => match state.instance.as_mut() {
                Some(instance) => instance,
                None => return Err("no kubelet-plugin pod runs on the node".into()),
            },
        };
        let device = |instance: &mut Instance, name: &str| -> Result<usize, String> {
            instance
                .devices
                .iter()
                .position(|d| d.name == name)
                .ok_or_else(|| format!("no device {name}"))
        };
        match knob {
            Knob::Limit(_) | Knob::Stall(_) | Knob::Bump => {}
            Knob::Taint(name, taint) => {
                let i = device(instance, &name)?;
                add_taint(&mut instance.devices[i], taint);
            }
            Knob::Untaint(name, key) => {
                let i = device(instance, &name)?;
                let d = &mut instance.devices[i];
                if let Some(taints) = d.taints.as_mut() {
                    taints.retain(|t| t.key != key);
                }
                if d.taints.as_ref().is_some_and(Vec::is_empty) {
                    d.taints = None;
                }
            }
            Knob::GpuLost => {
                for d in &mut instance.devices {
                    add_taint(
                        d,
                        DeviceTaint {
                            key: TAINT_GPU_LOST.into(),
                            value: None,
                            effect: "NoSchedule".into(),
                            time_added: None,
                        },
                    );
                }
            }
            Knob::RemoveGpu(gpu) => {
                let gone = format!("gpu-{gpu}");
                let mig = format!("gpu-{gpu}-mig-");
                instance
                    .devices
                    .retain(|d| d.name != gone && !d.name.starts_with(&mig));
            }
        }
        // Before its first publish (or while stalled) the change goes out with the next write.
        if instance.publish_at > now || state.stalled {
            return Ok(0);
        }
        if self.write_node(node).await {
            Ok(0)
        } else {
            Err("writing the node's slices failed (see the log)".into())
        }
    }

    /// Writes the pool anew with the next generation, then (unless stalled) deletes the old.
    async fn bump(&mut self, node: &str) -> Result<i64, String> {
        let Some(desired) = self.desired(node) else {
            return Err("no kubelet-plugin pod runs on the node".into());
        };
        let generation = self
            .node_slices(node)
            .iter()
            .filter(|s| s.spec.pool.name == node)
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let pool = ResourcePool {
            name: node.to_owned(),
            generation,
            resource_slice_count: desired.slices.len() as i64,
        };
        let ops: Vec<Op> = (0..desired.slices.len().min(desired.limit))
            .map(|i| Op::Create(new_slice(&desired, i, pool.clone())))
            .collect();
        if !self.apply(node, ops).await {
            return Err("writing the node's slices failed (see the log)".into());
        }
        self.step_node(node).await;
        Ok(generation)
    }

    fn desired(&self, node: &str) -> Option<Desired> {
        let state = self.nodes.get(node)?;
        let instance = state.instance.as_ref()?;
        let slices = split(instance.devices.clone(), instance.slices);
        Some(Desired {
            node: node.to_owned(),
            node_uid: state.uid.clone(),
            limit: state.limit.unwrap_or(slices.len()),
            slices,
        })
    }

    /// The cached `gpu.nvidia.com` slices of the node.
    fn node_slices(&self, node: &str) -> Vec<ResourceSlice> {
        let mut slices: Vec<ResourceSlice> = self
            .slices
            .objects
            .values()
            .filter(|s| s.spec.driver == DRIVER && s.spec.node_name.as_deref() == Some(node))
            .cloned()
            .collect();
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        slices
    }

    /// Publishes or wipes what is due on the node now.
    async fn step_node(&mut self, node: &str) {
        let now = Instant::now();
        let Some(state) = self.nodes.get(node) else {
            return;
        };
        if state.retry_at.is_some_and(|at| at > now) {
            return;
        }
        match &state.instance {
            Some(instance) => {
                if instance.publish_at <= now && !state.stalled {
                    self.write_node(node).await;
                }
            }
            None => {
                let due = state
                    .gone_since
                    .is_some_and(|since| since + self.options.wiping_delay <= now);
                if due && !state.wiped {
                    self.wipe(node).await;
                }
            }
        }
    }

    /// Syncs the node's pool; false if a write failed (retried later).
    async fn write_node(&mut self, node: &str) -> bool {
        let Some(desired) = self.desired(node) else {
            return true;
        };
        let existing = self.node_slices(node);
        let existing: Vec<&ResourceSlice> = existing.iter().collect();
        let held = self
            .nodes
            .get(node)
            .map(|s| s.held.clone())
            .unwrap_or_default();
        let ops = sync_pool(&existing, &desired, &held);
        let count = desired.slices.len();
        let present: BTreeSet<usize> = existing
            .iter()
            .filter(|s| s.spec.pool.name == node)
            .filter_map(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .and_then(|n| decode_index(n, count))
            })
            .collect();
        if let Some(state) = self.nodes.get_mut(node) {
            state.held = (desired.limit..count)
                .filter(|i| !present.contains(i))
                .collect();
        }
        self.apply(node, ops).await
    }

    /// Carries out the writes, keeping the cache and the record; false at the first failure.
    async fn apply(&mut self, node: &str, ops: Vec<Op>) -> bool {
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        for op in ops {
            let result = match &op {
                Op::Create(slice) => api
                    .create(&PostParams::default(), slice)
                    .await
                    .map(|s| ("create", Some(s))),
                Op::Update(slice) => api
                    .replace(
                        slice.metadata.name.as_deref().unwrap_or_default(),
                        &PostParams::default(),
                        slice,
                    )
                    .await
                    .map(|s| ("update", Some(s))),
                Op::Delete(slice) => {
                    let params = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: slice.metadata.uid.clone(),
                            resource_version: slice.metadata.resource_version.clone(),
                        }),
                        ..Default::default()
                    };
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    match api.delete(&name, &params).await {
                        Ok(_) => Ok(("delete", None)),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(("delete", None)),
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok((what, stored)) => {
                    let slice = stored.as_ref().unwrap_or(match &op {
                        Op::Create(s) | Op::Update(s) | Op::Delete(s) => s,
                    });
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    tracing::info!(node, slice = %name, generation = slice.spec.pool.generation, "simulated DRA plugin: ResourceSlice {what}");
                    self.record(node, what, &name, slice.spec.pool.generation);
                    match stored {
                        Some(s) => {
                            self.slices.objects.insert(name, s);
                        }
                        None => {
                            self.slices.objects.remove(&name);
                            self.deleted.insert(name);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "simulated DRA plugin: writing a ResourceSlice");
                    if let Some(state) = self.nodes.get_mut(node) {
                        state.retry_at = Some(Instant::now() + RETRY);
                    }
                    return false;
                }
            }
        }
        if let Some(state) = self.nodes.get_mut(node) {
            state.retry_at = None;
        }
        true
    }

    /// The kubelet's wipe: every `gpu.nvidia.com` slice with the node's name.
    async fn wipe(&mut self, node: &str) {
        let api: Api<ResourceSlice> = Api::all(self.client.clone());
        let fields = format!("spec.nodeName={node},spec.driver={DRIVER}");
        match api
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().fields(&fields),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(
                    node,
                    "simulated kubelet: wiped the node's gpu.nvidia.com ResourceSlices"
                );
                for slice in self.node_slices(node) {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    self.slices.objects.remove(&name);
                    self.deleted.insert(name);
                }
                self.record(node, "wipe", "", 0);
                if let Some(state) = self.nodes.get_mut(node) {
                    state.wiped = true;
                    state.retry_at = None;
                }
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "simulated kubelet: wiping ResourceSlices");
                if let Some(state) = self.nodes.get_mut(node) {
                    state.retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
    }

    fn record(&self, node: &str, op: &'static str, slice: &str, generation: i64) {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(SliceWrite {
                node: node.to_owned(),
                op,
                slice: slice.to_owned(),
                generation,
                at: Instant::now(),
            });
    }

    /// When the next publish, wipe or retry is due.
    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        self.nodes
            .values()
            .flat_map(|s| {
                let publish = s.instance.as_ref().map(|i| i.publish_at);
                let wipe = (s.instance.is_none() && !s.wiped)
                    .then(|| s.gone_since.map(|at| at + self.options.wiping_delay))
                    .flatten();
                [publish, wipe, s.retry_at]
            })
            .flatten()
            .filter(|at| *at > now)
            .min()
    }
}

/// Adds the taint, replacing one of the same key (value and effect updated, time reset).
fn add_taint(device: &mut Device, taint: DeviceTaint) {
    let taints = device.taints.get_or_insert_with(Vec::new);
    match taints.iter_mut().find(|t| t.key == taint.key) {
        Some(existing) => {
            if existing.value != taint.value || existing.effect != taint.effect {
                *existing = taint;
            }
        }
        None => taints.push(taint),
    }
}

/// Whether the plugin pod runs: bound, Running and not being deleted (its plugin is registered).
fn is_running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    phase && pod.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(devices: usize, slices: usize, limit: Option<usize>) -> Desired {
        let machine = DraGpus::a100_40gb(devices as u32);
        let slices = split(machine.devices("n"), slices);
        Desired {
            node: "n".into(),
            node_uid: "uid".into(),
            limit: limit.unwrap_or(slices.len()),
            slices,
        }
    }

    /// What the API server makes of a create: a name from generateName.
    fn stored(op: &Op, suffix: &str) -> ResourceSlice {
        let (Op::Create(s) | Op::Update(s) | Op::Delete(s)) = op;
        let mut s = s.clone();
        if let Some(prefix) = s.metadata.generate_name.take() {
            s.metadata.name = Some(format!("{prefix}{suffix}"));
        }
        s
    }

    fn kinds(ops: &[Op]) -> Vec<(&'static str, i64)> {
        ops.iter()
            .map(|op| match op {
                Op::Create(s) => ("create", s.spec.pool.generation),
                Op::Update(s) => ("update", s.spec.pool.generation),
                Op::Delete(s) => ("delete", s.spec.pool.generation),
            })
            .collect()
    }

    #[test]
    fn devices_are_named_and_described_as_the_driver_does() {
        let machine =
            DraGpus::a100_40gb(2).mig(1, &[MigProfile::a100_3g_20gb(), MigProfile::a100_1g_5gb()]);
        let devices = machine.devices("node-a");
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["gpu-0", "gpu-1-mig-1g5gb-19-4", "gpu-1-mig-3g20gb-9-0"]
        );
        let gpu = &devices[0];
        let attrs = gpu.attributes.as_ref().unwrap();
        assert_eq!(attrs["type"].string.as_deref(), Some("gpu"));
        assert_eq!(attrs["uuid"].string, Some(gpu_uuid("node-a", 0)));
        assert_eq!(
            attrs["cudaComputeCapability"].version.as_deref(),
            Some("8.0.0")
        );
        assert_eq!(
            attrs["cudaDriverVersion"].version.as_deref(),
            Some("12.4.0")
        );
        assert_eq!(attrs["driverVersion"].version.as_deref(), Some("550.54.15"));
        assert_eq!(
            attrs["resource.kubernetes.io/pciBusID"].string.as_deref(),
            Some("0000:07:00.0")
        );
        assert_eq!(gpu.capacity.as_ref().unwrap()["memory"].value.0, "40Gi");
        let mig = &devices[2];
        let attrs = mig.attributes.as_ref().unwrap();
        assert_eq!(attrs["type"].string.as_deref(), Some("mig"));
        assert_eq!(attrs["profile"].string.as_deref(), Some("3g.20gb"));
        assert_eq!(attrs["parentUUID"].string, Some(gpu_uuid("node-a", 1)));
        assert!(attrs["uuid"].string.as_deref().unwrap().starts_with("MIG-"));
        let caps = mig.capacity.as_ref().unwrap();
        assert_eq!(caps["memory"].value.0, "20096Mi");
        assert_eq!(caps["multiprocessors"].value.0, "42");
        assert!(caps.contains_key("memorySlice3") && !caps.contains_key("memorySlice4"));
        assert_eq!(binary_si(0), "0");
        assert_eq!(binary_si(1023), "1023");
        assert_eq!(binary_si(81559 << 20), "81559Mi");
    }

    #[test]
    fn slice_names_carry_the_index_first() {
        assert_eq!(slice_prefix(0, 1, "n"), "00000-gpu.nvidia.com-n-");
        assert_eq!(slice_prefix(3, 0x12345 + 1, "n"), "00003-gpu.nvidia.com-n-");
        assert_eq!(
            slice_prefix(1, 0x123456 + 1, "n"),
            "000001-gpu.nvidia.com-n-"
        );
        assert_eq!(decode_index("00001-gpu.nvidia.com-n-abcde", 2), Some(1));
        assert_eq!(decode_index("1-gpu.nvidia.com-n-abcde", 2), None);
        assert_eq!(decode_index("manual", 2), None);
    }

    #[test]
    fn first_publish_is_generation_one_and_a_repeat_writes_nothing() {
        let want = desired(2, 1, None);
        let ops = sync_pool(&[], &want, &BTreeSet::new());
        assert_eq!(kinds(&ops), [("create", 1)]);
        let slice = stored(&ops[0], "abcde");
        assert_eq!(
            slice.metadata.name.as_deref(),
            Some("00000-gpu.nvidia.com-n-abcde")
        );
        assert_eq!(slice.spec.pool.resource_slice_count, 1);
        assert!(sync_pool(&[&slice], &want, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn one_changed_slice_is_updated_in_place_more_bump_the_generation() {
        let mut want = desired(4, 2, None);
        let ops = sync_pool(&[], &want, &BTreeSet::new());
        assert_eq!(kinds(&ops), [("create", 1), ("create", 1)]);
        let a = stored(&ops[0], "a");
        let b = stored(&ops[1], "b");
        // A taint on one device: one update, same generation; the API server's timeAdded kept.
        add_taint(&mut want.slices[0][0], xid_taint(79));
        let ops = sync_pool(&[&a, &b], &want, &BTreeSet::new());
        assert_eq!(kinds(&ops), [("update", 1)]);
        let mut a2 = stored(&ops[0], "");
        a2.spec.devices.as_mut().unwrap()[0]
            .taints
            .as_mut()
            .unwrap()[0]
            .time_added = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert!(sync_pool(&[&a2, &b], &want, &BTreeSet::new()).is_empty());
        // Both slices change: every slice rewritten with the next generation.
        add_taint(&mut want.slices[1][0], xid_taint(79));
        want.slices[0].pop();
        let ops = sync_pool(&[&a2, &b], &want, &BTreeSet::new());
        assert_eq!(kinds(&ops), [("update", 2), ("update", 2)]);
        let Op::Update(first) = &ops[0] else { panic!() };
        let taint = &first.spec.devices.as_ref().unwrap()[0]
            .taints
            .as_ref()
            .unwrap()[0];
        assert!(taint.time_added.is_some(), "timeAdded is preserved");
    }

    #[test]
    fn stale_generations_other_pools_and_odd_names_are_deleted() {
        let want = desired(1, 1, None);
        let ops = sync_pool(&[], &want, &BTreeSet::new());
        let current = stored(&ops[0], "a");
        let mut old = current.clone();
        old.metadata.name = Some("00000-gpu.nvidia.com-n-old".into());
        old.spec.pool.generation = 0;
        let mut other = current.clone();
        other.metadata.name = Some("other".into());
        other.spec.pool.name = "n-extra".into();
        let mut odd = current.clone();
        odd.metadata.name = Some("manual".into());
        let ops = sync_pool(&[&current, &old, &other, &odd], &want, &BTreeSet::new());
        let deleted: BTreeSet<&str> = ops
            .iter()
            .map(|op| match op {
                Op::Delete(s) => s.metadata.name.as_deref().unwrap(),
                _ => panic!("only deletes: {op:?}"),
            })
            .collect();
        assert_eq!(
            deleted,
            BTreeSet::from(["00000-gpu.nvidia.com-n-old", "other", "manual"])
        );
    }

    #[test]
    fn a_held_back_slice_is_published_later_in_the_same_generation() {
        let want = desired(2, 2, Some(1));
        let ops = sync_pool(&[], &want, &BTreeSet::new());
        assert_eq!(kinds(&ops), [("create", 1)]);
        let a = stored(&ops[0], "a");
        assert_eq!(a.spec.pool.resource_slice_count, 2);
        let held = BTreeSet::from([1]);
        assert!(sync_pool(&[&a], &want, &held).is_empty());
        let all = desired(2, 2, None);
        let ops = sync_pool(&[&a], &all, &held);
        assert_eq!(kinds(&ops), [("create", 1)]);
    }

    #[test]
    fn taints_replace_by_key() {
        let mut d = DraGpus::a100_40gb(1).devices("n").remove(0);
        add_taint(&mut d, xid_taint(48));
        add_taint(&mut d, xid_taint(43));
        let taints = d.taints.as_ref().unwrap();
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (taints[0].value.as_deref(), taints[0].effect.as_str()),
            (Some("43"), "None")
        );
    }
}

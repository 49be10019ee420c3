//! Every name gpupool reads or writes on Kubernetes objects, in one place: its labels,
//! annotations, resource names, the names of other components' labels it keys on, and the names
//! it derives for what it creates. A change here changes what gpupool looks for on a live
//! cluster, so these never change under a running pool.

/// The field manager gpupool writes with.
pub const MANAGER: &str = "gpupool-operator";
/// The finalizer that keeps a pool until its plugin, labels and gate taints are gone.
pub const FINALIZER: &str = "gpupool.io/cleanup";

// ---- Labels and annotations gpupool writes ----

/// Label on everything gpupool creates; the pod watch selects on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "gpupool");
/// Label naming the pool (a label-safe key of its name, `pool_key`) on gpupool's DaemonSets,
/// ConfigMaps and pods.
pub const POOL_LABEL: &str = "gpupool.io/pool";
/// The node label gpupool's DaemonSets select on: the pool (key) whose plugin runs there.
pub const DEVICE_PLUGIN_LABEL: &str = "gpupool.io/device-plugin";
/// The node label that gives a node to NVIDIA's GPU DRA driver for a pool with `allocation: Dra`
/// (`gpupool.io/dra=<pool>`): the driver's kubelet plugin DaemonSet selects nodes by it.
pub const DRA_LABEL: &str = "gpupool.io/dra";
/// The device-plugin pod label of the AKS article's manifest, kept on gpupool's plugin pods.
pub const PLUGIN_POD_LABEL: (&str, &str) = ("name", "nvidia-device-plugin-ds");
/// Label telling gpupool's validation pods and plugin ConfigMaps apart.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const VALIDATION_COMPONENT: &str = "gpu-validation";
/// Label of gpupool's plugin ConfigMaps (to watch only them).
pub const CONFIG_COMPONENT: (&str, &str) = (COMPONENT_LABEL, "device-plugin-config");

/// Annotation holding a hash of everything gpupool set, to tell "nothing to do" without a diff.
pub const DESIRED_HASH_ANNOTATION: &str = "gpupool.io/desired-hash";
/// Annotation listing the taint keys the plugin tolerates beyond its base tolerations.
pub const TOLERATED_TAINTS_ANNOTATION: &str = "gpupool.io/tolerated-taints";
/// The pod-template annotation carrying the plugin config's hash.
pub const CONFIG_HASH_ANNOTATION: &str = "gpupool.io/plugin-config";
/// The file in a plugin ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// The node annotation holding the last validation result.
pub const VALIDATION_ANNOTATION: &str = "gpupool.io/validation";

/// Annotations on validation pods (what they validate); `VALIDATES_PLUGIN` is on plugin pods too
/// (the plugin they run, see `plugin_identity`).
pub const VALIDATES_NODE: &str = "gpupool.io/node";
pub const VALIDATES_BOOT: &str = "gpupool.io/boot-id";
pub const VALIDATES_PLUGIN: &str = "gpupool.io/plugin";
pub const VALIDATION_ATTEMPT: &str = "gpupool.io/attempt";

// ---- Names other components set, which gpupool reads ----

/// The extended resource the NVIDIA device plugin registers.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The prefix of the MIG resources the device plugin advertises under strategy mixed.
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// The shared resource time-slicing advertises with `renameByDefault`.
pub const SHARED_RESOURCE: &str = "nvidia.com/gpu.shared";
/// The counted resource when MIG mixed runs without a known profile name.
pub const ANY_MIG: &str = "nvidia.com/mig-*";
/// The DeviceClass NVIDIA's GPU DRA driver installs for whole GPUs.
pub const GPU_DEVICE_CLASS: &str = "gpu.nvidia.com";
/// The DRA driver name of NVIDIA's GPU driver (ResourceSlices' `spec.driver`).
pub const NVIDIA_GPU_DRIVER: &str = "gpu.nvidia.com";

/// The AKS label that names the node image (and tells the GPU-dedicated image apart).
pub const NODE_IMAGE_LABEL: &str = "kubernetes.azure.com/node-image-version";
/// The label carrying the VM size (on AKS, e.g. `Standard_NC24ads_A100_v4`).
pub const INSTANCE_TYPE_LABEL: &str = "node.kubernetes.io/instance-type";
/// The label AKS's managed GPU experience puts on its nodes.
pub const MANAGED_GPU_LABEL: (&str, &str) = ("kubernetes.azure.com/dcgm-exporter", "enabled");
/// Node labels in which a provisioner states the machine's GPU count, in the order read.
/// - AKS node auto-provisioning (Karpenter Azure provider, `pkg/apis/v1beta1/labels.go`):
///   the SKU's GPU count, `"0"` on non-GPU SKUs;
/// - Karpenter AWS (`pkg/apis/v1/labels.go`): EC2's GPU count;
/// - GKE (Autopilot): `cloud.google.com/gke-accelerator-count`;
/// - Karpenter GCP (cloudpilot-ai, `pkg/apis/v1alpha1/labels.go`).
pub const GPU_COUNT_LABELS: [&str; 4] = [
    "karpenter.azure.com/sku-gpu-count",
    "karpenter.k8s.aws/instance-gpu-count",
    "cloud.google.com/gke-accelerator-count",
    "karpenter.k8s.gcp/instance-gpu-count",
];

// ---- Names gpupool derives ----

const DAEMONSET_PREFIX: &str = "nvidia-device-plugin-";
/// Names and label values stay within 63 characters.
const MAX_NAME: usize = 63;

/// The DaemonSet name for a pool. Pool names can be 253 characters with dots; DaemonSet names are
/// kept to 63 so the pod names derived from them stay legal everywhere. Long names keep a readable
/// prefix and end in a hash of the full name, so distinct pools never share a DaemonSet.
pub fn daemonset_name(pool: &str) -> String {
    format!(
        "{DAEMONSET_PREFIX}{}",
        pool_key_with_room(pool, MAX_NAME - DAEMONSET_PREFIX.len())
    )
}

/// The plugin ConfigMap's name: the DaemonSet's, suffixed.
pub fn config_map_name(pool: &str) -> String {
    format!("{}-config", daemonset_name(pool))
}

/// A label-value-safe (at most 63 characters) key for the pool.
pub fn pool_key(pool: &str) -> String {
    pool_key_with_room(pool, MAX_NAME)
}

fn pool_key_with_room(pool: &str, room: usize) -> String {
    if pool.len() <= room {
        return pool.to_string();
    }
    let hash = format!("{:016x}", fnv1a(pool.as_bytes()));
    let keep = room - 9; // '-' and 8 hex digits
    let prefix = pool[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &hash[..8])
}

/// FNV-1a 64: stable across releases (unlike std's hasher), so names and hashes never change
/// under a running pool.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hasher, bytes);
    std::hash::Hasher::finish(&hasher)
}

/// `fnv1a` as 16 hex digits, the form of every hash gpupool writes.
pub fn hash_hex(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// The owner reference that makes an object the pool's (garbage-collected with it).
pub fn pool_owner(
    pool: &str,
    pool_uid: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: crate::api::API_VERSION_FULL.into(),
        kind: crate::api::KIND.into(),
        name: pool.to_string(),
        uid: pool_uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

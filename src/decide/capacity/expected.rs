//! What each node of a pool should have allocatable, and where that expectation comes from:
//! `spec.expectedGpusPerNode`, else a GPU-count label its provisioner set, else its VM size
//! looked up in Azure's documented sizes, else "at least one". Sharing multiplies it by the
//! replicas, MIG by the devices per GPU; MIG mixed counts `nvidia.com/mig-<profile>` instead of
//! `nvidia.com/gpu`. Expectations are per node: a pool may mix sizes.

use crate::api::{AksMigProfile, GpuPoolSpec, MigStrategy, Reason};
use crate::decide::capacity::sizes::{PartialSize, SizeFacts, lookup};
use crate::decide::facts::NodeFacts;
use crate::decide::names::{
    ANY_MIG, GPU_COUNT_LABELS, GPU_RESOURCE, INSTANCE_TYPE_LABEL, MIG_RESOURCE_PREFIX,
    SHARED_RESOURCE,
};

/// Where a node's expected GPU count comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Spec,
    Label {
        key: &'static str,
        value: i64,
    },
    Size(crate::decide::capacity::sizes::GpuSize),
    Fraction {
        size: &'static str,
        part: PartialSize,
    },
    NotNvidia {
        size: &'static str,
        model: &'static str,
    },
    UnknownSize(String),
    NoSize,
}

/// What a node should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Physical GPUs (or vGPU devices) the node should have.
    pub physical: i64,
    /// Devices advertised per physical GPU: MIG devices per GPU times sharing replicas.
    pub per_gpu: i64,
    /// The resource counted: `nvidia.com/gpu`, `nvidia.com/gpu.shared`, `nvidia.com/mig-<name>`,
    /// or `nvidia.com/mig-*` (every MIG resource, the profile being unknown).
    pub resource: String,
    pub source: Source,
    /// MIG devices expected per GPU (0 without MIG): part of `per_gpu`.
    pub mig_devices: i64,
}

impl Expected {
    /// How many of `resource` the node should have allocatable.
    pub fn count(&self) -> i64 {
        self.physical.saturating_mul(self.per_gpu.max(1))
    }

    /// Whether the count is known, not the "at least one" fallback.
    pub fn known(&self) -> bool {
        !matches!(self.source, Source::UnknownSize(_) | Source::NoSize)
    }

    /// (capacity, allocatable) of the counted resource on the node.
    pub fn have(&self, node: &NodeFacts) -> (i64, i64) {
        if self.resource == ANY_MIG {
            node.mig_total()
        } else {
            node.resource(&self.resource)
        }
    }

    /// Where the expectation comes from, for messages: "for Standard_ND96isr_H100_v5 (8 × H100
    /// 80GB)".
    pub fn origin(&self) -> String {
        let multiplied = if self.per_gpu > 1 {
            format!(", {} per GPU", self.per_gpu)
        } else {
            String::new()
        };
        match &self.source {
            Source::Spec => format!(
                "by spec.expectedGpusPerNode ({}{multiplied})",
                self.physical
            ),
            Source::Label { key, value } => format!("by the node's {key}={value}{multiplied}"),
            Source::Size(s) => format!("for {} ({} × {}{multiplied})", s.name, s.gpus, s.model),
            Source::Fraction { size, part } => match part {
                PartialSize::NvidiaFraction {
                    numerator,
                    denominator,
                    memory_gb,
                    model,
                } => format!(
                    "for {size} (one vGPU device: {numerator}/{denominator} of an {model}, {memory_gb} GB{multiplied})"
                ),
                PartialSize::Amd { model } => format!("for {size} ({model})"),
            },
            Source::NotNvidia { size, model } => format!("for {size} ({model})"),
            Source::UnknownSize(size) => format!(
                "at least one: {size} is not a VM size gpupool knows (set spec.expectedGpusPerNode to be exact)"
            ),
            Source::NoSize => format!(
                "at least one: the node has no {INSTANCE_TYPE_LABEL} label (set spec.expectedGpusPerNode to be exact)"
            ),
        }
    }
}

/// What a node should have, given the pool's spec; `plugin_ours`: gpupool runs its plugin there
/// (sharing and MIG are what gpupool configures; a platform's plugin advertises plain GPUs).
pub fn expected(node: &NodeFacts, spec: &GpuPoolSpec, plugin_ours: bool) -> Expected {
    let (physical, source) = physical(node, spec.expected_gpus_per_node);
    let mut e = Expected {
        physical,
        per_gpu: 1,
        resource: GPU_RESOURCE.to_string(),
        source,
        mig_devices: 0,
    };
    if !plugin_ours {
        return e;
    }
    if let Some(mig) = spec
        .mig
        .as_ref()
        .filter(|m| m.strategy != MigStrategy::None)
    {
        let per_gpu = mig.profile.map_or(1, instances_per_gpu);
        e.per_gpu = per_gpu;
        e.mig_devices = per_gpu;
        if mig.strategy == MigStrategy::Mixed {
            let model = match &e.source {
                Source::Size(s) => Some(s.model),
                _ => None,
            };
            e.resource = mig
                .profile
                .zip(model)
                .and_then(|(p, m)| profile_name(p, m))
                .map_or(ANY_MIG.to_string(), |name| {
                    format!("{MIG_RESOURCE_PREFIX}{name}")
                });
        }
    }
    if let Some(sharing) = &spec.sharing {
        let ts = &sharing.time_slicing;
        e.per_gpu = e.per_gpu.saturating_mul(i64::from(ts.replicas.max(1)));
        if ts.rename_by_default {
            e.resource = SHARED_RESOURCE.to_string();
        }
    }
    e
}

fn physical(node: &NodeFacts, explicit: Option<i32>) -> (i64, Source) {
    if let Some(n) = explicit {
        return (i64::from(n.max(1)), Source::Spec);
    }
    for key in GPU_COUNT_LABELS {
        // "0" is what AKS node auto-provisioning puts on a SKU without GPUs: not a GPU count.
        if let Some(n) = node
            .labels
            .get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n > 0)
        {
            return (n, Source::Label { key, value: n });
        }
    }
    let Some(size) = node.labels.get(INSTANCE_TYPE_LABEL) else {
        return (1, Source::NoSize);
    };
    match lookup(size) {
        Some(SizeFacts::Whole(s)) => (i64::from(s.gpus), Source::Size(s)),
        Some(SizeFacts::Partial(name, part @ PartialSize::NvidiaFraction { .. })) => {
            (1, Source::Fraction { size: name, part })
        }
        Some(SizeFacts::Partial(name, PartialSize::Amd { model })) => {
            (1, Source::NotNvidia { size: name, model })
        }
        None => (1, Source::UnknownSize(size.clone())),
    }
}

/// MIG devices per GPU of an AKS GPU instance profile (GPU-instance profile IDs 19, 14, 9, 5, 0
/// created that many times per GPU by AgentBaker's mig-partition.sh).
pub fn instances_per_gpu(profile: AksMigProfile) -> i64 {
    match profile {
        AksMigProfile::MIG1g => 7,
        AksMigProfile::MIG2g => 3,
        AksMigProfile::MIG3g => 2,
        AksMigProfile::MIG4g | AksMigProfile::MIG7g => 1,
    }
}

/// The MIG profile name of an AKS profile on a GPU model (NVIDIA's MIG user guide, "Supported
/// MIG Profiles"; the names carry the slice's memory, so they differ by model). None for a model
/// without MIG or not in the table.
pub fn profile_name(profile: AksMigProfile, model: &str) -> Option<&'static str> {
    const NAMES: [(&str, [&str; 5]); 5] = [
        (
            "A100 40GB",
            ["1g.5gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
        ),
        (
            "A100 80GB",
            ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
        ),
        (
            "H100 80GB",
            ["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
        ),
        (
            "H100 94GB",
            ["1g.12gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb"],
        ),
        (
            "H200 141GB",
            ["1g.18gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"],
        ),
    ];
    let column = match profile {
        AksMigProfile::MIG1g => 0,
        AksMigProfile::MIG2g => 1,
        AksMigProfile::MIG3g => 2,
        AksMigProfile::MIG4g => 3,
        AksMigProfile::MIG7g => 4,
    };
    NAMES
        .iter()
        .find(|(prefix, _)| model.starts_with(prefix))
        .map(|(_, names)| names[column])
}

/// Why a node does not have what it should, or `Ok(None)` if it does.
pub type Judgement = Result<Option<(Reason, String)>, (Reason, String)>;

/// Ok(None): what it should have; Ok(Some): enough, but some devices unhealthy (allocatable
/// below capacity); Err: not enough, and why.
pub fn judge(node: &NodeFacts, e: &Expected) -> Judgement {
    let required = e.count().max(1);
    let (capacity, allocatable) = e.have(node);
    let resource = &e.resource;
    if let Source::NotNvidia { size, model } = &e.source {
        return Err((
            Reason::NotNvidiaGpus,
            format!(
                "{size} has AMD GPUs ({model}): it never has {GPU_RESOURCE}; take it out of spec.nodeSelector"
            ),
        ));
    }
    if allocatable >= required {
        return Ok((allocatable < capacity).then(|| {
            (
                Reason::AllocatableBelowCapacity,
                format!(
                    "{allocatable} of {capacity} {resource} allocatable: the device plugin reports some unhealthy (check its log and nvidia-smi)"
                ),
            )
        }));
    }
    if let Some(whole) = advertised_whole(node, e, capacity) {
        return Err(whole);
    }
    Err(if capacity == 0 {
        (
            Reason::NoGpuCapacity,
            format!(
                "the node reports no {resource} ({required} expected {}): the device plugin is not running there or found no GPU (check the plugin pod's log and the NVIDIA driver)",
                e.origin()
            ),
        )
    } else if e.known() || allocatable > 0 {
        (
            Reason::FewerGpusThanExpected,
            format!(
                "has {allocatable} of {required} {resource} expected {} (capacity {capacity}): GPUs may have fallen off the bus or be unhealthy",
                e.origin()
            ),
        )
    } else {
        (
            Reason::NoAllocatableGpus,
            format!(
                "capacity {capacity} {resource} but none allocatable: the device plugin reports the GPUs unhealthy (check the plugin pod's log and nvidia-smi)"
            ),
        )
    })
}

/// MIG is configured, but the plugin advertises the node's GPUs whole: MIG mode is off on them,
/// or they have no MIG devices (the real plugin over MIG-disabled GPUs, #20). With `mixed` the
/// node shows `nvidia.com/gpu` and no `nvidia.com/mig-*`; with `single`, exactly its GPU count
/// (times the sharing replicas) of `nvidia.com/gpu` where more MIG devices were expected. (With
/// `single` and one device per GPU, or no profile, whole GPUs and MIG devices count the same.)
fn advertised_whole(node: &NodeFacts, e: &Expected, capacity: i64) -> Option<(Reason, String)> {
    if e.mig_devices == 0 {
        return None;
    }
    let gpus = node.gpus_capacity();
    let cause = "MIG mode is off on its GPUs, or they have no MIG devices (AKS makes them for a node pool created with --gpu-instance-profile): set spec.mig to what the node pool was created with";
    if e.resource.starts_with(MIG_RESOURCE_PREFIX) {
        return (capacity == 0 && gpus > 0).then(|| {
            (
                Reason::NoMigDevices,
                format!(
                    "the node advertises {gpus} whole {GPU_RESOURCE} and no {}: {cause}",
                    e.resource
                ),
            )
        });
    }
    let replicas = e.per_gpu / e.mig_devices.max(1);
    let whole = e.physical.saturating_mul(replicas.max(1));
    (e.mig_devices > 1 && e.known() && capacity > 0 && capacity == whole).then(|| {
        (
            Reason::NoMigDevices,
            format!(
                "has {capacity} {}, its {} GPUs advertised whole, where {} MIG devices are expected {}: {cause}",
                e.resource,
                e.physical,
                e.count(),
                e.origin()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Mig, Sharing, TimeSlicing};
    use crate::decide::names::{ANY_MIG, INSTANCE_TYPE_LABEL, SHARED_RESOURCE};
    use crate::decide::testing::gpu_node;

    fn spec() -> GpuPoolSpec {
        GpuPoolSpec::default()
    }

    fn sized(name: &str, size: &str, gpus: i64) -> NodeFacts {
        let mut n = gpu_node(name, gpus, gpus);
        n.labels.insert(INSTANCE_TYPE_LABEL.into(), size.into());
        n
    }

    #[test]
    fn the_spec_wins_then_a_provisioner_label_then_the_vm_size_then_at_least_one() {
        let mut node = sized("n", "Standard_ND96isr_H100_v5", 8);
        assert_eq!(expected(&node, &spec(), true).count(), 8);
        node.labels
            .insert("karpenter.azure.com/sku-gpu-count".into(), "4".into());
        let e = expected(&node, &spec(), true);
        assert_eq!((e.count(), e.known()), (4, true));
        assert!(e.origin().contains("karpenter.azure.com/sku-gpu-count=4"));
        let mut s = spec();
        s.expected_gpus_per_node = Some(2);
        assert_eq!(expected(&node, &s, true).count(), 2);
        // A CPU SKU's "0" is no GPU count.
        node.labels
            .insert("karpenter.azure.com/sku-gpu-count".into(), "0".into());
        assert_eq!(expected(&node, &spec(), true).count(), 8);
        let unknown = sized("u", "Standard_ND96is_H100_v5", 8);
        let e = expected(&unknown, &spec(), true);
        assert_eq!((e.count(), e.known()), (1, false));
        assert!(
            e.origin()
                .contains("Standard_ND96is_H100_v5 is not a VM size gpupool knows")
        );
    }

    #[test]
    fn seven_of_eight_is_named_with_the_size() {
        let mut node = sized("n", "Standard_ND96isr_H100_v5", 8);
        node.gpu_allocatable = Some(7);
        let e = expected(&node, &spec(), true);
        let (reason, message) = judge(&node, &e).unwrap_err();
        assert_eq!(reason, Reason::FewerGpusThanExpected);
        assert!(
            message.starts_with(
                "has 7 of 8 nvidia.com/gpu expected for Standard_ND96isr_H100_v5 (8 × H100 80GB)"
            ),
            "{message}"
        );
        node.gpu_allocatable = Some(8);
        node.gpu_capacity = Some(9);
        assert_eq!(
            judge(&node, &e).unwrap().unwrap().0,
            Reason::AllocatableBelowCapacity
        );
    }

    #[test]
    fn fractional_and_amd_sizes_say_what_they_advertise() {
        let vgpu = sized("v", "Standard_NV6ads_A10_v5", 1);
        let e = expected(&vgpu, &spec(), true);
        assert_eq!(e.count(), 1);
        assert!(
            e.origin().contains("one vGPU device: 1/6 of an A10, 4 GB"),
            "{}",
            e.origin()
        );
        assert_eq!(judge(&vgpu, &e), Ok(None));
        let amd = sized("a", "Standard_ND96isr_MI300X_v5", 0);
        let e = expected(&amd, &spec(), true);
        let (reason, message) = judge(&amd, &e).unwrap_err();
        assert_eq!(reason, Reason::NotNvidiaGpus);
        assert!(message.contains("AMD"), "{message}");
    }

    #[test]
    fn sharing_and_mig_multiply_the_expectation_on_nodes_gpupool_serves() {
        let node = sized("n", "Standard_NC96ads_A100_v4", 4);
        let mut s = spec();
        s.sharing = Some(Sharing {
            time_slicing: TimeSlicing {
                replicas: 4,
                rename_by_default: false,
                fail_requests_greater_than_one: false,
            },
        });
        let e = expected(&node, &s, true);
        assert_eq!((e.count(), e.resource.as_str()), (16, GPU_RESOURCE));
        assert_eq!(expected(&node, &s, false).count(), 4, "a platform's plugin");
        s.sharing.as_mut().unwrap().time_slicing.rename_by_default = true;
        assert_eq!(expected(&node, &s, true).resource, SHARED_RESOURCE);

        let mut s = spec();
        s.mig = Some(Mig {
            strategy: MigStrategy::Mixed,
            profile: Some(AksMigProfile::MIG1g),
        });
        let e = expected(&node, &s, true);
        assert_eq!(
            (e.count(), e.resource.as_str()),
            (28, "nvidia.com/mig-1g.10gb")
        );
        s.mig.as_mut().unwrap().strategy = MigStrategy::Single;
        let e = expected(&node, &s, true);
        assert_eq!((e.count(), e.resource.as_str()), (28, GPU_RESOURCE));
        // Without a profile: at least one MIG device per GPU, of any profile.
        s.mig = Some(Mig {
            strategy: MigStrategy::Mixed,
            profile: None,
        });
        let mut mig_node = node.clone();
        mig_node.gpu_capacity = Some(0);
        mig_node.gpu_allocatable = Some(0);
        mig_node
            .other_gpu_resources
            .insert("nvidia.com/mig-3g.40gb".into(), (8, 8));
        let e = expected(&mig_node, &s, true);
        assert_eq!((e.count(), e.resource.as_str()), (4, ANY_MIG));
        assert_eq!(
            judge(&mig_node, &e),
            Ok(None),
            "nvidia.com/gpu 0 is no missing GPU"
        );
    }

    /// MIG mode off (as on the real plugin over the mock's A100s): the plugin advertises 8 whole
    /// nvidia.com/gpu, which is named as such, not as missing GPUs.
    #[test]
    fn gpus_advertised_whole_under_mig_are_named() {
        let node = sized("n", "Standard_ND96asr_v4", 8);
        let mut s = spec();
        s.mig = Some(Mig {
            strategy: MigStrategy::Mixed,
            profile: Some(AksMigProfile::MIG1g),
        });
        let e = expected(&node, &s, true);
        assert_eq!(e.resource, "nvidia.com/mig-1g.5gb");
        let (reason, message) = judge(&node, &e).unwrap_err();
        assert_eq!(reason, Reason::NoMigDevices);
        assert!(
            message.starts_with(
                "the node advertises 8 whole nvidia.com/gpu and no nvidia.com/mig-1g.5gb: MIG mode is off"
            ),
            "{message}"
        );
        s.mig.as_mut().unwrap().profile = None;
        let e = expected(&node, &s, true);
        assert_eq!(judge(&node, &e).unwrap_err().0, Reason::NoMigDevices);

        s.mig = Some(Mig {
            strategy: MigStrategy::Single,
            profile: Some(AksMigProfile::MIG1g),
        });
        s.sharing = Some(Sharing {
            time_slicing: TimeSlicing {
                replicas: 2,
                rename_by_default: false,
                fail_requests_greater_than_one: false,
            },
        });
        let mut shared = node.clone();
        (shared.gpu_capacity, shared.gpu_allocatable) = (Some(16), Some(16));
        let e = expected(&shared, &s, true);
        assert_eq!(e.count(), 112);
        let (reason, message) = judge(&shared, &e).unwrap_err();
        assert_eq!(reason, Reason::NoMigDevices);
        assert!(
            message.starts_with(
                "has 16 nvidia.com/gpu, its 8 GPUs advertised whole, where 112 MIG devices are expected"
            ),
            "{message}"
        );
        // Some MIG devices missing is not "advertised whole".
        (shared.gpu_capacity, shared.gpu_allocatable) = (Some(110), Some(110));
        assert_eq!(
            judge(&shared, &e).unwrap_err().0,
            Reason::FewerGpusThanExpected
        );
    }

    #[test]
    fn mig_profile_names_follow_the_gpu_model() {
        assert_eq!(
            profile_name(AksMigProfile::MIG1g, "A100 40GB"),
            Some("1g.5gb")
        );
        assert_eq!(
            profile_name(AksMigProfile::MIG3g, "H100 94GB"),
            Some("3g.47gb")
        );
        assert_eq!(
            profile_name(AksMigProfile::MIG7g, "H200 141GB"),
            Some("7g.141gb")
        );
        assert_eq!(profile_name(AksMigProfile::MIG1g, "Tesla T4"), None);
        assert_eq!(instances_per_gpu(AksMigProfile::MIG2g), 3);
    }
}

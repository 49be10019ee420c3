//! What NVIDIA's GPU DRA driver publishes for a node (`resource.k8s.io/v1` ResourceSlices of
//! driver `gpu.nvidia.com`), reduced at watch time (`crate::index::dra`) to what gpupool counts:
//! the devices of the node's complete slice pools, their kind (a whole GPU or a MIG device of
//! one), product name and device taints, and the slice pools not complete yet.
//!
//! A slice pool may span several ResourceSlices (`spec.pool.resourceSliceCount`); a driver that
//! republishes bumps `spec.pool.generation` and removes the older slices after. Only the newest
//! generation counts, and only once all its slices are there: a half-published pool would show
//! too few GPUs (dra-driver-nvidia-gpu #1008: empty slices after a driver race).

use std::collections::{BTreeMap, BTreeSet};

/// What a device is, from its `type` attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A whole GPU (`type: gpu`).
    Gpu,
    /// A MIG device (`type: mig`): its profile (e.g. `1g.10gb`) and its GPU's UUID.
    Mig {
        profile: String,
        parent: Option<String>,
    },
    /// Another type the driver publishes (e.g. `vfio`, `channel`): not counted as a GPU.
    Other(String),
    /// No `type` attribute: not counted, reported.
    Untyped,
}

/// A device taint (KEP-5055), as the driver's health checks set it (e.g. `gpu.nvidia.com/xid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceTaint {
    pub key: String,
    pub value: String,
    /// `NoSchedule`, `NoExecute` or `None`.
    pub effect: String,
}

impl DeviceTaint {
    /// Whether the scheduler keeps new claims off the device (`None` only informs).
    pub fn blocks(&self) -> bool {
        self.effect == "NoSchedule" || self.effect == "NoExecute"
    }
}

impl std::fmt::Display for DeviceTaint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// One device of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DraDevice {
    pub name: String,
    pub kind: DeviceKind,
    pub uuid: Option<String>,
    /// `productName`, e.g. `NVIDIA H100 80GB HBM3`.
    pub product: Option<String>,
    pub taints: Vec<DeviceTaint>,
}

impl DraDevice {
    fn blocked(&self) -> bool {
        self.taints.iter().any(DeviceTaint::blocks)
    }
}

/// A slice pool of the node not (yet) complete: `have` of its `expected` slices published.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IncompletePool {
    pub pool: String,
    pub generation: i64,
    pub have: usize,
    pub expected: i64,
}

/// What the DRA driver publishes for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DraNode {
    /// ResourceSlices of the driver for the node, any generation.
    pub slices: usize,
    /// The devices of its complete slice pools (newest generation).
    pub devices: Vec<DraDevice>,
    /// Its slice pools not complete yet.
    pub incomplete: Vec<IncompletePool>,
}

/// The GPUs of a node's complete slice pools.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DraGpus {
    /// Physical GPUs: whole GPU devices and the GPUs behind MIG devices, once each.
    pub physical: i64,
    /// Of those, the ones the scheduler may still allocate (no NoSchedule/NoExecute taint on
    /// the GPU; for a GPU in MIG mode, on at least one of its MIG devices).
    pub usable: i64,
    /// MIG devices per profile: (published, untainted).
    pub mig: BTreeMap<String, (i64, i64)>,
    /// Devices without a `type` attribute (not counted).
    pub untyped: usize,
}

impl DraNode {
    pub fn complete(&self) -> bool {
        self.incomplete.is_empty()
    }

    pub fn gpus(&self) -> DraGpus {
        let mut whole: BTreeMap<&str, bool> = BTreeMap::new();
        let mut parents: BTreeMap<&str, bool> = BTreeMap::new();
        let mut counts = DraGpus::default();
        for device in &self.devices {
            let usable = !device.blocked();
            let id = device.uuid.as_deref().unwrap_or(&device.name);
            match &device.kind {
                DeviceKind::Gpu => {
                    let entry = whole.entry(id).or_insert(true);
                    *entry &= usable;
                }
                DeviceKind::Mig { profile, parent } => {
                    let parent = parent.as_deref().unwrap_or(&device.name);
                    *parents.entry(parent).or_insert(false) |= usable;
                    let entry = counts.mig.entry(profile.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += i64::from(usable);
                }
                DeviceKind::Other(_) => {}
                DeviceKind::Untyped => counts.untyped += 1,
            }
        }
        // A GPU published whole and partitioned (dynamic MIG) is one GPU; it is usable while
        // the whole device or one of its partitions is.
        for (parent, usable) in parents {
            let entry = whole.entry(parent).or_insert(false);
            *entry |= usable;
        }
        counts.physical = whole.len() as i64;
        counts.usable = whole.values().filter(|u| **u).count() as i64;
        counts
    }

    /// Devices with a taint, and their taints.
    pub fn tainted(&self) -> impl Iterator<Item = (&DraDevice, &DeviceTaint)> {
        self.devices
            .iter()
            .flat_map(|d| d.taints.iter().map(move |t| (d, t)))
    }

    /// The product names of its GPUs.
    pub fn products(&self) -> BTreeSet<&str> {
        self.devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::Gpu | DeviceKind::Mig { .. }))
            .filter_map(|d| d.product.as_deref())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str, taints: &[(&str, &str)]) -> DraDevice {
        DraDevice {
            name: name.into(),
            kind: DeviceKind::Gpu,
            uuid: Some(format!("GPU-{name}")),
            product: Some("NVIDIA H100 80GB HBM3".into()),
            taints: taints
                .iter()
                .map(|(key, effect)| DeviceTaint {
                    key: (*key).into(),
                    value: "79".into(),
                    effect: (*effect).into(),
                })
                .collect(),
        }
    }

    fn mig(name: &str, parent: &str, tainted: bool) -> DraDevice {
        DraDevice {
            name: name.into(),
            kind: DeviceKind::Mig {
                profile: "1g.10gb".into(),
                parent: Some(format!("GPU-{parent}")),
            },
            uuid: Some(format!("MIG-{name}")),
            product: Some("NVIDIA H100 80GB HBM3".into()),
            taints: if tainted {
                vec![DeviceTaint {
                    key: "gpu.nvidia.com/xid".into(),
                    value: "48".into(),
                    effect: "NoSchedule".into(),
                }]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn whole_gpus_count_once_and_blocking_taints_make_them_unusable() {
        let node = DraNode {
            slices: 1,
            devices: vec![
                gpu("gpu-0", &[]),
                gpu("gpu-1", &[("gpu.nvidia.com/xid", "NoSchedule")]),
                gpu("gpu-2", &[("gpu.nvidia.com/unmonitored", "None")]),
            ],
            incomplete: vec![],
        };
        let gpus = node.gpus();
        assert_eq!((gpus.physical, gpus.usable), (3, 2));
        assert_eq!(node.tainted().count(), 2);
        assert_eq!(
            node.products().into_iter().collect::<Vec<_>>(),
            ["NVIDIA H100 80GB HBM3"]
        );
    }

    #[test]
    fn mig_devices_count_their_gpu_once_and_per_profile() {
        let node = DraNode {
            slices: 1,
            devices: vec![
                mig("a", "gpu-0", false),
                mig("b", "gpu-0", true),
                mig("c", "gpu-1", true),
                // Dynamic MIG: the whole GPU is published next to its partitions.
                gpu("gpu-0", &[]),
                DraDevice {
                    name: "x".into(),
                    kind: DeviceKind::Untyped,
                    uuid: None,
                    product: None,
                    taints: vec![],
                },
            ],
            incomplete: vec![],
        };
        let gpus = node.gpus();
        assert_eq!((gpus.physical, gpus.usable), (2, 1), "{gpus:?}");
        assert_eq!(gpus.mig["1g.10gb"], (3, 1));
        assert_eq!(gpus.untyped, 1);
    }
}

//! Nodes whose GPUs an NVIDIA DRA driver publishes as ResourceSlices (`resource.k8s.io/v1`,
//! driver `gpu.nvidia.com`, `spec.nodeName` naming the node; kubernetes-sigs/dra-driver-nvidia-gpu
//! `cmd/gpu-kubelet-plugin`). On such nodes `nvidia.com/gpu` stays 0 by design: their GPUs are
//! counted from the slices (`DraNode`), rebuilt for a node whenever one of its slices changes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::{Device, DeviceAttribute, ResourceSlice};
use kube::runtime::watcher::Event;

use crate::decide::facts::{DeviceKind, DeviceTaint, DraDevice, DraNode, IncompletePool};
use crate::index::{Change, Keyed, Tracked};

/// A ResourceSlice of the NVIDIA GPU driver, reduced to what gpupool counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSlice {
    pub name: String,
    /// `spec.nodeName`; None for slices not bound to one node (not counted).
    pub node: Option<String>,
    pub pool: String,
    pub generation: i64,
    /// `spec.pool.resourceSliceCount`: how many slices make the pool complete.
    pub slice_count: i64,
    pub devices: Vec<DraDevice>,
}

impl GpuSlice {
    pub fn from_slice(slice: &ResourceSlice) -> GpuSlice {
        let spec = &slice.spec;
        GpuSlice {
            name: slice.metadata.name.clone().unwrap_or_default(),
            node: spec.node_name.clone().filter(|n| !n.is_empty()),
            pool: spec.pool.name.clone(),
            generation: spec.pool.generation,
            slice_count: spec.pool.resource_slice_count,
            devices: spec
                .devices
                .iter()
                .flatten()
                .map(|d| device(d, &spec.driver))
                .collect(),
        }
    }
}

/// An attribute by its name, qualified with the driver's domain or not (both mean the same).
fn attribute<'a>(d: &'a Device, driver: &str, name: &str) -> Option<&'a DeviceAttribute> {
    let attributes = d.attributes.as_ref()?;
    attributes
        .get(name)
        .or_else(|| attributes.get(&format!("{driver}/{name}")))
}

fn string_attribute(d: &Device, driver: &str, name: &str) -> Option<String> {
    let a = attribute(d, driver, name)?;
    a.string.clone().or_else(|| a.version.clone())
}

fn device(d: &Device, driver: &str) -> DraDevice {
    let text = |name: &str| string_attribute(d, driver, name);
    let kind = match text("type").as_deref() {
        Some("gpu") => DeviceKind::Gpu,
        Some("mig") => DeviceKind::Mig {
            profile: text("profile").unwrap_or_default(),
            parent: text("parentUUID"),
        },
        Some(other) => DeviceKind::Other(other.to_string()),
        None => DeviceKind::Untyped,
    };
    DraDevice {
        name: d.name.clone(),
        kind,
        uuid: text("uuid"),
        product: text("productName"),
        taints: d
            .taints
            .iter()
            .flatten()
            .map(|t| DeviceTaint {
                key: t.key.clone(),
                value: t.value.clone().unwrap_or_default(),
                effect: t.effect.clone(),
            })
            .collect(),
    }
}

impl Keyed for GpuSlice {
    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }
}

/// A DeviceClass: its name, and whether it selects the GPU driver's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassFacts {
    pub name: String,
    pub gpu: bool,
}

impl Keyed for ClassFacts {
    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }
}

#[derive(Debug, Default)]
pub struct DraIndex {
    classes: Tracked<ClassFacts>,
    slices: Tracked<GpuSlice>,
    /// node -> its slices' names.
    per_node: HashMap<String, BTreeSet<String>>,
    /// node -> what its slices add up to (rebuilt when one of them changes).
    nodes: HashMap<String, Arc<DraNode>>,
    /// The cluster serves no ResourceSlice API: no node is DRA-managed.
    unsupported: bool,
}

impl DraIndex {
    /// Applies one watch event; returns the nodes whose DRA GPUs changed.
    pub fn apply(&mut self, event: Event<GpuSlice>) -> Vec<Change<GpuSlice>> {
        let changes = self.slices.apply(event);
        let mut touched = BTreeSet::new();
        for change in &changes {
            let (old, new) = change.states();
            if let Some(s) = old
                && let Some(node) = &s.node
            {
                let gone = self.per_node.get_mut(node).is_some_and(|names| {
                    names.remove(&s.name);
                    names.is_empty()
                });
                if gone {
                    self.per_node.remove(node);
                }
                touched.insert(node.clone());
            }
            if let Some(s) = new
                && let Some(node) = &s.node
            {
                self.per_node
                    .entry(node.clone())
                    .or_default()
                    .insert(s.name.clone());
                touched.insert(node.clone());
            }
        }
        for node in touched {
            self.rebuild(&node);
        }
        changes
    }

    fn rebuild(&mut self, node: &str) {
        let Some(names) = self.per_node.get(node) else {
            self.nodes.remove(node);
            return;
        };
        let slices: Vec<Arc<GpuSlice>> = names
            .iter()
            .filter_map(|n| self.slices.get(n).cloned())
            .collect();
        self.nodes
            .insert(node.to_string(), Arc::new(node_of(&slices)));
    }

    /// Applies a DeviceClass event (name, selects the GPU driver); returns whether the GPU
    /// classes changed.
    pub fn apply_class(&mut self, event: Event<(String, bool)>) -> bool {
        let event = match event {
            Event::Apply((name, gpu)) => Event::Apply(ClassFacts { name, gpu }),
            Event::Delete((name, gpu)) => Event::Delete(ClassFacts { name, gpu }),
            Event::InitApply((name, gpu)) => Event::InitApply(ClassFacts { name, gpu }),
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        };
        self.classes.apply(event).iter().any(|c| {
            let (old, new) = c.states();
            old.is_some_and(|o| o.gpu) || new.is_some_and(|n| n.gpu)
        })
    }

    /// The DeviceClasses that select the GPU driver's devices, sorted.
    pub fn gpu_classes(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .classes
            .values()
            .filter(|c| c.gpu)
            .map(|c| c.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The API is not served (a cluster before Kubernetes 1.34): nothing to wait for.
    pub fn mark_unsupported(&mut self) {
        self.unsupported = true;
    }

    pub fn is_unsupported(&self) -> bool {
        self.unsupported
    }

    pub fn is_synced(&self) -> bool {
        self.unsupported || self.slices.is_synced()
    }

    pub fn is_dra_node(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// What the driver publishes for a node, if anything.
    pub fn node(&self, node: &str) -> Option<Arc<DraNode>> {
        self.nodes.get(node).cloned()
    }

    /// Slices kept, for the memory they take (benchmarks).
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slices.len() == 0
    }
}

/// A node's slices added up: per slice pool, the newest generation, complete or not.
fn node_of(slices: &[Arc<GpuSlice>]) -> DraNode {
    let mut pools: BTreeMap<&str, Vec<&GpuSlice>> = BTreeMap::new();
    for s in slices {
        pools.entry(s.pool.as_str()).or_default().push(s);
    }
    let mut node = DraNode {
        slices: slices.len(),
        ..DraNode::default()
    };
    for (pool, of_pool) in pools {
        let generation = of_pool.iter().map(|s| s.generation).max().unwrap_or(0);
        let newest: Vec<&&GpuSlice> = of_pool
            .iter()
            .filter(|s| s.generation == generation)
            .collect();
        let expected = newest.iter().map(|s| s.slice_count).max().unwrap_or(1);
        if (newest.len() as i64) < expected {
            node.incomplete.push(IncompletePool {
                pool: pool.to_string(),
                generation,
                have: newest.len(),
                expected,
            });
            continue;
        }
        node.devices
            .extend(newest.iter().flat_map(|s| s.devices.iter().cloned()));
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::names::NVIDIA_GPU_DRIVER;
    use k8s_openapi::api::resource::v1::{
        DeviceTaint as ApiTaint, ResourcePool, ResourceSliceSpec,
    };

    fn attr(s: &str) -> DeviceAttribute {
        DeviceAttribute {
            string: Some(s.into()),
            ..Default::default()
        }
    }

    fn api_slice(
        name: &str,
        node: &str,
        generation: i64,
        count: i64,
        gpus: &[&str],
    ) -> ResourceSlice {
        ResourceSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: ResourceSliceSpec {
                driver: NVIDIA_GPU_DRIVER.into(),
                node_name: Some(node.into()),
                pool: ResourcePool {
                    name: node.into(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(
                    gpus.iter()
                        .map(|g| Device {
                            name: (*g).into(),
                            attributes: Some(
                                [
                                    ("type".to_string(), attr("gpu")),
                                    ("uuid".to_string(), attr(&format!("GPU-{node}-{g}"))),
                                    (
                                        "gpu.nvidia.com/productName".to_string(),
                                        attr("NVIDIA A100-SXM4-80GB"),
                                    ),
                                ]
                                .into(),
                            ),
                            taints: (*g == "tainted").then(|| {
                                vec![ApiTaint {
                                    key: "gpu.nvidia.com/xid".into(),
                                    value: Some("79".into()),
                                    effect: "NoSchedule".into(),
                                    time_added: None,
                                }]
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            },
        }
    }

    fn apply(index: &mut DraIndex, s: ResourceSlice) {
        index.apply(Event::Apply(GpuSlice::from_slice(&s)));
    }

    #[test]
    fn a_slice_pool_counts_once_complete_and_only_its_newest_generation() {
        let mut index = DraIndex::default();
        apply(
            &mut index,
            api_slice("n1-a", "n1", 1, 2, &["gpu-0", "gpu-1"]),
        );
        let half = index.node("n1").unwrap();
        assert!(half.devices.is_empty());
        assert_eq!(
            half.incomplete,
            [IncompletePool {
                pool: "n1".into(),
                generation: 1,
                have: 1,
                expected: 2
            }]
        );
        apply(
            &mut index,
            api_slice("n1-b", "n1", 1, 2, &["gpu-2", "tainted"]),
        );
        let whole = index.node("n1").unwrap();
        assert!(whole.complete());
        assert_eq!((whole.gpus().physical, whole.gpus().usable), (4, 3));
        assert_eq!(
            whole.products().into_iter().collect::<Vec<_>>(),
            ["NVIDIA A100-SXM4-80GB"]
        );
        // The driver republishes as one slice of generation 2, then removes the old ones.
        apply(
            &mut index,
            api_slice("n1-c", "n1", 2, 1, &["gpu-0", "gpu-1"]),
        );
        assert_eq!(index.node("n1").unwrap().gpus().physical, 2);
        for old in ["n1-a", "n1-b"] {
            index.apply(Event::Delete(GpuSlice::from_slice(&api_slice(
                old,
                "n1",
                1,
                2,
                &[],
            ))));
        }
        assert_eq!(index.node("n1").unwrap().slices, 1);
        index.apply(Event::Delete(GpuSlice::from_slice(&api_slice(
            "n1-c",
            "n1",
            2,
            1,
            &[],
        ))));
        assert!(!index.is_dra_node("n1") && index.node("n1").is_none());
    }

    #[test]
    fn slices_without_a_node_or_attributes_are_kept_apart_and_never_crash() {
        let mut index = DraIndex::default();
        let mut unbound = api_slice("shared", "", 1, 1, &["gpu-0"]);
        unbound.spec.node_name = None;
        unbound.spec.all_nodes = Some(true);
        apply(&mut index, unbound);
        let mut bare = api_slice("n2-a", "n2", 1, 1, &["gpu-0"]);
        bare.spec.devices.as_mut().unwrap()[0].attributes = None;
        apply(&mut index, bare);
        let n2 = index.node("n2").unwrap();
        assert_eq!(n2.gpus().physical, 0);
        assert_eq!(n2.gpus().untyped, 1);
        assert_eq!(index.len(), 2);
        assert!(!index.is_synced());
        index.mark_unsupported();
        assert!(index.is_synced());
    }
}

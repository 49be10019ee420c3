//! Nodes whose GPUs an NVIDIA DRA driver publishes as ResourceSlices (`resource.k8s.io/v1`,
//! driver `gpu.nvidia.com`, one pool per node named by `spec.nodeName`; NVIDIA/k8s-dra-driver-gpu
//! `cmd/gpu-kubelet-plugin`). On such nodes `nvidia.com/gpu` stays 0 by design, and a device
//! plugin would compete with the driver for the GPUs.

use std::borrow::Cow;
use std::collections::HashMap;

use k8s_openapi::api::resource::v1::ResourceSlice;
use kube::runtime::watcher::Event;

use crate::index::{Change, Keyed, Tracked};

/// A ResourceSlice of the NVIDIA GPU driver, reduced to the node it describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSlice {
    pub name: String,
    pub node: Option<String>,
}

impl GpuSlice {
    pub fn from_slice(slice: &ResourceSlice) -> GpuSlice {
        GpuSlice {
            name: slice.metadata.name.clone().unwrap_or_default(),
            node: slice.spec.node_name.clone(),
        }
    }
}

impl Keyed for GpuSlice {
    fn key(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.name)
    }
}

#[derive(Debug, Default)]
pub struct DraIndex {
    slices: Tracked<GpuSlice>,
    per_node: HashMap<String, usize>,
    /// The cluster serves no ResourceSlice API: no node is DRA-managed.
    unsupported: bool,
}

impl DraIndex {
    pub fn apply(&mut self, event: Event<GpuSlice>) -> Vec<Change<GpuSlice>> {
        let changes = self.slices.apply(event);
        for change in &changes {
            let (old, new) = change.states();
            if let Some(node) = old.and_then(|s| s.node.as_ref()) {
                let gone = self.per_node.get_mut(node).is_some_and(|n| {
                    *n -= 1;
                    *n == 0
                });
                if gone {
                    self.per_node.remove(node);
                }
            }
            if let Some(node) = new.and_then(|s| s.node.as_ref()) {
                *self.per_node.entry(node.clone()).or_default() += 1;
            }
        }
        changes
    }

    /// The API is not served (a cluster before Kubernetes 1.34): nothing to wait for.
    pub fn mark_unsupported(&mut self) {
        self.unsupported = true;
    }

    pub fn is_synced(&self) -> bool {
        self.unsupported || self.slices.is_synced()
    }

    pub fn is_dra_node(&self, node: &str) -> bool {
        self.per_node.contains_key(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, node: &str) -> GpuSlice {
        GpuSlice {
            name: name.into(),
            node: Some(node.into()),
        }
    }

    #[test]
    fn a_node_is_dra_managed_while_it_has_gpu_slices() {
        let mut index = DraIndex::default();
        index.apply(Event::Apply(slice("gpu-n1-a", "n1")));
        index.apply(Event::Apply(slice("gpu-n1-b", "n1")));
        assert!(index.is_dra_node("n1") && !index.is_dra_node("n2"));
        index.apply(Event::Delete(slice("gpu-n1-a", "n1")));
        assert!(index.is_dra_node("n1"));
        index.apply(Event::Delete(slice("gpu-n1-b", "n1")));
        assert!(!index.is_dra_node("n1"));
        assert!(!index.is_synced());
        index.mark_unsupported();
        assert!(index.is_synced());
    }
}

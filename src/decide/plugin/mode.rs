//! Which nodes already get an NVIDIA device plugin from their platform, and so which plugin mode
//! a pool gets. On AKS in 2026 that is three kinds of node:
//! - the retired GPU-dedicated image (`AKSUbuntu-1804gpucontainerd-…`, frozen at 202501.05.0,
//!   Azure/AKS#4472; AgentBaker `pkg/agent/datamodel/sig_config.go`), which bakes the plugin in;
//! - AKS's managed GPU experience (preview), which runs the plugin as a host systemd service
//!   (`nvidia-device-plugin.service`) and labels the node `kubernetes.azure.com/dcgm-exporter=enabled`
//!   (AgentBaker `parts/linux/cloud-init/artifacts/cse_config.sh`, `addKubeletNodeLabel`; the label is
//!   the one the AKS doc "Use managed GPU nodes" tells admins to check);
//! - nodes whose GPUs an NVIDIA DRA driver publishes as ResourceSlices (driver `gpu.nvidia.com`,
//!   `spec.nodeName` = the node; NVIDIA/k8s-dra-driver-gpu `cmd/gpu-kubelet-plugin`), where
//!   `nvidia.com/gpu` stays 0 by design and a device plugin would compete for the GPUs.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{NodeImage, PluginMode, Reason};
use crate::decide::facts::NodeFacts;
use crate::decide::names::{MANAGED_GPU_LABEL, NODE_IMAGE_LABEL};
use crate::decide::text::name_list;

/// What a node's platform says about the device plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageKind {
    /// A standard image: the node needs a device plugin deployed.
    Standard,
    /// No AKS image label (not AKS, or a self-managed node): treated as standard.
    Unlabelled,
    /// The retired GPU-dedicated image, which ships the device plugin.
    Specialized,
    /// AKS managed GPU: the plugin runs as a node service.
    ManagedGpu,
    /// GPUs exposed through Dynamic Resource Allocation; `nvidia.com/gpu` stays 0.
    Dra,
}

impl ImageKind {
    /// Whether the platform already provides what gpupool's plugin would.
    pub fn ships_plugin(self) -> bool {
        matches!(
            self,
            ImageKind::Specialized | ImageKind::ManagedGpu | ImageKind::Dra
        )
    }

    fn describe(self) -> &'static str {
        match self {
            ImageKind::Standard | ImageKind::Unlabelled => {
                "a standard image without a device plugin"
            }
            ImageKind::Specialized => "the GPU-dedicated image that ships the device plugin",
            ImageKind::ManagedGpu => {
                "AKS managed GPU, which runs the device plugin as a node service"
            }
            ImageKind::Dra => {
                "an NVIDIA DRA driver (GPUs are ResourceSlices, nvidia.com/gpu stays 0)"
            }
        }
    }
}

/// Classifies a node. The GPU-dedicated image shows in `kubernetes.azure.com/node-image-version`
/// as `<OS>-<definition>-<version>` with a definition containing `gpu` (e.g.
/// `AKSUbuntu-1804gpucontainerd-202501.05.0`); `accelerator=nvidia` is on every GPU node, so it
/// cannot tell the kinds apart.
pub fn classify(node: &NodeFacts, dra_nodes: &BTreeSet<String>) -> ImageKind {
    if dra_nodes.contains(&node.name) {
        return ImageKind::Dra;
    }
    if node.labels.get(MANAGED_GPU_LABEL.0).map(String::as_str) == Some(MANAGED_GPU_LABEL.1) {
        return ImageKind::ManagedGpu;
    }
    let Some(version) = node.labels.get(NODE_IMAGE_LABEL) else {
        return ImageKind::Unlabelled;
    };
    let parts: Vec<&str> = version.split('-').collect();
    // <OS>-<definition…>-<version>: everything between the first and the last segment.
    let definition = match parts.as_slice() {
        [_os, definition @ .., _version] if !definition.is_empty() => definition.join("-"),
        _ => return ImageKind::Standard,
    };
    if definition.to_ascii_lowercase().contains("gpu") {
        ImageKind::Specialized
    } else {
        ImageKind::Standard
    }
}

/// How a pool's nodes were classified (`status.nodeImage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display)]
pub enum DetectedImage {
    /// Every node needs a device plugin.
    Standard,
    /// Every node's platform ships one.
    Specialized,
    Mixed,
    /// No nodes to detect from.
    Unknown,
}

/// The plugin decision for a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDecision {
    pub mode: PluginMode,
    pub reason: Reason,
    pub message: String,
    pub detected: DetectedImage,
    /// Nodes whose platform ships the plugin, and how: never given gpupool's plugin (Auto), and
    /// a DRA node's 0 `nvidia.com/gpu` is no missing GPU.
    pub shipped: BTreeMap<String, ImageKind>,
}

impl PluginDecision {
    /// Whether gpupool's plugin belongs on this node.
    pub fn wants_plugin_on(&self, node: &str) -> bool {
        self.mode == PluginMode::Managed && !self.shipped.contains_key(node)
    }
}

pub fn decide_plugin(
    requested: NodeImage,
    nodes: &[&NodeFacts],
    dra_nodes: &BTreeSet<String>,
    previous: Option<PluginMode>,
) -> PluginDecision {
    let kinds: BTreeMap<String, ImageKind> = nodes
        .iter()
        .map(|n| (n.name.clone(), classify(n, dra_nodes)))
        .collect();
    let shipped: BTreeMap<String, ImageKind> = kinds
        .iter()
        .filter(|(_, k)| k.ships_plugin())
        .map(|(n, k)| (n.clone(), *k))
        .collect();
    let detected = match (nodes.len() - shipped.len(), shipped.len()) {
        (0, 0) => DetectedImage::Unknown,
        (_, 0) => DetectedImage::Standard,
        (0, _) => DetectedImage::Specialized,
        _ => DetectedImage::Mixed,
    };
    let decision = |mode, reason, message: String| PluginDecision {
        mode,
        reason,
        message,
        detected,
        shipped: BTreeMap::new(),
    };
    match requested {
        NodeImage::Standard => decision(
            PluginMode::Managed,
            Reason::StandardImageRequested,
            "spec.nodeImage is Standard: gpupool runs the NVIDIA device plugin on every node of the pool".into(),
        ),
        NodeImage::Specialized => decision(
            PluginMode::Skipped,
            Reason::SpecializedImageRequested,
            "spec.nodeImage is Specialized: the node image provides the device plugin, so gpupool deploys none".into(),
        ),
        NodeImage::Auto => PluginDecision {
            shipped: shipped.clone(),
            ..auto_decision(&kinds, &shipped, detected, previous)
        },
    }
}

fn auto_decision(
    kinds: &BTreeMap<String, ImageKind>,
    shipped: &BTreeMap<String, ImageKind>,
    detected: DetectedImage,
    previous: Option<PluginMode>,
) -> PluginDecision {
    let decision = |mode, reason, message| PluginDecision {
        mode,
        reason,
        message,
        detected,
        shipped: BTreeMap::new(),
    };
    if kinds.is_empty() {
        // Nothing to detect from: keep what was decided before, so a pool whose nodes ship the
        // plugin does not flip to Managed and back when it is scaled to zero.
        let mode = previous.unwrap_or(PluginMode::Managed);
        return decision(
            mode,
            Reason::NoNodesToDetect,
            format!(
                "the pool has no nodes to detect from; keeping mode {} until nodes join (on AKS the node image label {NODE_IMAGE_LABEL}, the managed GPU label {}={} and NVIDIA DRA ResourceSlices decide)",
                mode.as_str(),
                MANAGED_GPU_LABEL.0,
                MANAGED_GPU_LABEL.1
            ),
        );
    }
    let needing = kinds.len() - shipped.len();
    if needing == 0 {
        let most = most_common(shipped);
        let reason = match most {
            ImageKind::ManagedGpu => Reason::ManagedGpuDetected,
            ImageKind::Dra => Reason::DraDriverDetected,
            _ => Reason::SpecializedImageDetected,
        };
        let message = format!(
            "all {} nodes get a device plugin from their platform ({}), so gpupool deploys none; set spec.nodeImage to Standard to override",
            kinds.len(),
            by_kind(shipped)
        );
        return decision(PluginMode::Skipped, reason, message);
    }
    if shipped.is_empty() {
        let message = format!(
            "the {needing} nodes run a standard image without a device plugin, so gpupool deploys one"
        );
        return decision(PluginMode::Managed, Reason::StandardImageDetected, message);
    }
    let message = format!(
        "{needing} nodes run a standard image and get gpupool's device plugin; {} get one from their platform and are left alone ({})",
        shipped.len(),
        by_kind(shipped)
    );
    decision(PluginMode::Managed, Reason::MixedImagesDetected, message)
}

fn most_common(shipped: &BTreeMap<String, ImageKind>) -> ImageKind {
    let mut counts: BTreeMap<ImageKind, usize> = BTreeMap::new();
    for kind in shipped.values() {
        *counts.entry(*kind).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or(ImageKind::Specialized, |(k, _)| k)
}

/// "2 run the GPU-dedicated image …: a, b; 1 runs AKS managed GPU …: c".
fn by_kind(shipped: &BTreeMap<String, ImageKind>) -> String {
    let mut groups: BTreeMap<ImageKind, Vec<String>> = BTreeMap::new();
    for (node, kind) in shipped {
        groups.entry(*kind).or_default().push(node.clone());
    }
    groups
        .into_iter()
        .map(|(kind, nodes)| {
            format!(
                "{} with {}: {}",
                nodes.len(),
                kind.describe(),
                name_list(&nodes, 10)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::names::MANAGED_GPU_LABEL;
    use crate::decide::testing::node;

    const GPU_IMAGE: &str = "AKSUbuntu-1804gpucontainerd-202501.05.0";
    const STANDARD_IMAGE: &str = "AKSUbuntu-2204gen2containerd-202405.03.0";

    fn with_image(name: &str, image: &str) -> NodeFacts {
        let mut n = node(name);
        n.labels.insert(NODE_IMAGE_LABEL.into(), image.into());
        n
    }

    fn no_dra() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn gpu_dedicated_image_definitions_are_specialized() {
        for image in [
            GPU_IMAGE,
            "AKSUbuntu-1804gen2gpucontainerd-202307.27.0",
            "AKSUbuntu-1804fipsgpucontainerd-202307.27.0",
        ] {
            assert_eq!(
                classify(&with_image("n", image), &no_dra()),
                ImageKind::Specialized,
                "{image}"
            );
        }
        for image in [
            STANDARD_IMAGE,
            "AKSAzureLinux-V2gen2-202405.03.0",
            "weird",
            "gpu-1",
        ] {
            assert_eq!(
                classify(&with_image("n", image), &no_dra()),
                ImageKind::Standard,
                "{image}"
            );
        }
        assert_eq!(classify(&node("n"), &no_dra()), ImageKind::Unlabelled);
    }

    #[test]
    fn managed_gpu_and_dra_nodes_ship_their_plugin() {
        let mut managed = with_image("managed", STANDARD_IMAGE);
        managed
            .labels
            .insert(MANAGED_GPU_LABEL.0.into(), MANAGED_GPU_LABEL.1.into());
        assert_eq!(classify(&managed, &no_dra()), ImageKind::ManagedGpu);
        let dra: BTreeSet<String> = ["dra".to_string()].into();
        assert_eq!(
            classify(&with_image("dra", STANDARD_IMAGE), &dra),
            ImageKind::Dra
        );
        let d = decide_plugin(
            NodeImage::Auto,
            &[&with_image("dra", STANDARD_IMAGE)],
            &dra,
            None,
        );
        assert_eq!(
            (d.mode, d.reason),
            (PluginMode::Skipped, Reason::DraDriverDetected)
        );
        assert!(d.message.contains("DRA"), "{}", d.message);
        let d = decide_plugin(NodeImage::Auto, &[&managed], &no_dra(), None);
        assert_eq!(
            (d.mode, d.reason),
            (PluginMode::Skipped, Reason::ManagedGpuDetected)
        );
        assert!(d.message.contains("managed GPU"), "{}", d.message);
    }

    #[test]
    fn auto_skips_only_when_every_node_ships_the_plugin() {
        let a = with_image("a", GPU_IMAGE);
        let b = with_image("b", GPU_IMAGE);
        let d = decide_plugin(NodeImage::Auto, &[&a, &b], &no_dra(), None);
        assert_eq!(
            (d.mode, d.reason, d.detected),
            (
                PluginMode::Skipped,
                Reason::SpecializedImageDetected,
                DetectedImage::Specialized
            )
        );
        let c = with_image("c", STANDARD_IMAGE);
        let d = decide_plugin(NodeImage::Auto, &[&a, &c], &no_dra(), None);
        assert_eq!(
            (d.mode, d.reason, d.detected),
            (
                PluginMode::Managed,
                Reason::MixedImagesDetected,
                DetectedImage::Mixed
            )
        );
        assert_eq!(d.shipped.keys().collect::<Vec<_>>(), ["a"]);
        assert!(d.wants_plugin_on("c") && !d.wants_plugin_on("a"));
        let plain = node("plain");
        let d = decide_plugin(NodeImage::Auto, &[&plain], &no_dra(), None);
        assert_eq!(
            (d.mode, d.reason, d.detected),
            (
                PluginMode::Managed,
                Reason::StandardImageDetected,
                DetectedImage::Standard
            )
        );
    }

    #[test]
    fn explicit_modes_override_detection() {
        let a = with_image("a", GPU_IMAGE);
        let d = decide_plugin(NodeImage::Standard, &[&a], &no_dra(), None);
        assert_eq!(d.mode, PluginMode::Managed);
        assert!(
            d.wants_plugin_on("a"),
            "Standard puts the plugin everywhere"
        );
        let c = with_image("c", STANDARD_IMAGE);
        assert_eq!(
            decide_plugin(NodeImage::Specialized, &[&c], &no_dra(), None).mode,
            PluginMode::Skipped
        );
    }

    #[test]
    fn an_empty_auto_pool_keeps_its_previous_mode() {
        let skipped = decide_plugin(NodeImage::Auto, &[], &no_dra(), Some(PluginMode::Skipped));
        assert_eq!(skipped.mode, PluginMode::Skipped);
        let fresh = decide_plugin(NodeImage::Auto, &[], &no_dra(), None);
        assert_eq!(
            (fresh.mode, fresh.detected),
            (PluginMode::Managed, DetectedImage::Unknown)
        );
    }
}

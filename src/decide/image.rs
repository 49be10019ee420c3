//! Which nodes already run a device plugin from their image (AKS specialized GPU image), and so
//! which plugin mode a pool gets.

use std::collections::BTreeSet;

use crate::api::{NodeImage, PluginMode, Reason};
use crate::decide::nodes::{NODE_IMAGE_LABEL, NodeFacts};

/// What a node's image says about the device plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A standard image: the node needs a device plugin deployed.
    Standard,
    /// A GPU-dedicated image that ships the device plugin.
    Specialized,
    /// No AKS image label (not AKS, or a self-managed node): treated as standard.
    Unlabelled,
}

/// Classifies a node from `kubernetes.azure.com/node-image-version`, which AKS sets to
/// `<OS>-<definition>-<version>` (e.g. `AKSUbuntu-1804gpucontainerd-202307.27.0`): the
/// GPU-dedicated images are the definitions containing `gpu`. `accelerator=nvidia` is on both
/// kinds of image, so it cannot tell them apart.
pub fn classify(node: &NodeFacts) -> ImageKind {
    let Some(version) = node.labels.get(NODE_IMAGE_LABEL) else {
        return ImageKind::Unlabelled;
    };
    let mut parts = version.split('-');
    let _os = parts.next();
    let definition: Vec<&str> = parts.collect();
    // The last segment is the version (e.g. 202307.27.0); everything between is the definition.
    let definition = match definition.split_last() {
        Some((_version, rest)) if !rest.is_empty() => rest.join("-"),
        _ => return ImageKind::Standard,
    };
    if definition.to_ascii_lowercase().contains("gpu") {
        ImageKind::Specialized
    } else {
        ImageKind::Standard
    }
}

/// How a pool's node images were classified (`status.nodeImage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::Display)]
pub enum DetectedImage {
    Standard,
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
    /// In Auto mode, the plugin may only run on nodes without the image label or with one of
    /// these (standard) image versions, so a node with a GPU-dedicated image never gets a
    /// second plugin, not even for the moment before the next reconcile. None: no restriction.
    pub allowed_image_versions: Option<BTreeSet<String>>,
    /// Nodes whose image ships the plugin (Auto mode): reported, never given ours.
    pub specialized_nodes: Vec<String>,
}

pub fn decide_plugin(
    requested: NodeImage,
    nodes: &[&NodeFacts],
    previous: Option<PluginMode>,
) -> PluginDecision {
    let mut standard_versions = BTreeSet::new();
    let mut specialized_nodes = Vec::new();
    for node in nodes {
        match classify(node) {
            ImageKind::Standard => {
                standard_versions.extend(node.labels.get(NODE_IMAGE_LABEL).cloned());
            }
            ImageKind::Specialized => specialized_nodes.push(node.name.clone()),
            ImageKind::Unlabelled => {}
        }
    }
    let standard = nodes.len() - specialized_nodes.len();
    let detected = match (standard, specialized_nodes.len()) {
        (0, 0) => DetectedImage::Unknown,
        (_, 0) => DetectedImage::Standard,
        (0, _) => DetectedImage::Specialized,
        _ => DetectedImage::Mixed,
    };
    let base = PluginDecision {
        mode: PluginMode::Managed,
        reason: Reason::StandardImageRequested,
        message: String::new(),
        detected,
        allowed_image_versions: None,
        specialized_nodes: Vec::new(),
    };
    match requested {
        NodeImage::Standard => PluginDecision {
            reason: Reason::StandardImageRequested,
            message: "spec.nodeImage is Standard: gpupool runs the NVIDIA device plugin on every node of the pool".into(),
            ..base
        },
        NodeImage::Specialized => PluginDecision {
            mode: PluginMode::Skipped,
            reason: Reason::SpecializedImageRequested,
            message: "spec.nodeImage is Specialized: the node image provides the device plugin, so gpupool deploys none".into(),
            ..base
        },
        NodeImage::Auto if nodes.is_empty() => {
            // Nothing to detect from: keep what was decided before, so a specialized pool scaled
            // to zero does not flip to Managed and back.
            let mode = previous.unwrap_or(PluginMode::Managed);
            PluginDecision {
                mode,
                reason: Reason::NoNodesToDetect,
                message: format!(
                    "the pool has no nodes to detect the image from; keeping mode {} until nodes join (on AKS the label {NODE_IMAGE_LABEL} decides)",
                    mode.as_str()
                ),
                allowed_image_versions: Some(standard_versions),
                ..base
            }
        }
        NodeImage::Auto if standard == 0 => PluginDecision {
            mode: PluginMode::Skipped,
            reason: Reason::SpecializedImageDetected,
            message: format!(
                "all {} nodes run a GPU-dedicated image that ships the device plugin ({NODE_IMAGE_LABEL} names a gpu image), so gpupool deploys none; set spec.nodeImage to Standard to override",
                specialized_nodes.len()
            ),
            specialized_nodes,
            ..base
        },
        NodeImage::Auto if !specialized_nodes.is_empty() => PluginDecision {
            reason: Reason::MixedImagesDetected,
            message: format!(
                "{} nodes run a standard image and get the device plugin; {} run a GPU-dedicated image that ships it and are left alone: {}",
                standard,
                specialized_nodes.len(),
                crate::decide::model::name_list(&specialized_nodes, 10)
            ),
            allowed_image_versions: Some(standard_versions),
            specialized_nodes,
            ..base
        },
        NodeImage::Auto => PluginDecision {
            reason: Reason::StandardImageDetected,
            message: format!("the {standard} nodes run a standard image without a device plugin, so gpupool deploys one"),
            allowed_image_versions: Some(standard_versions),
            ..base
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::testing::node;

    fn with_image(name: &str, image: &str) -> NodeFacts {
        let mut n = node(name);
        n.labels.insert(NODE_IMAGE_LABEL.into(), image.into());
        n
    }

    #[test]
    fn gpu_dedicated_image_definitions_are_specialized() {
        for image in [
            "AKSUbuntu-1804gpucontainerd-202307.27.0",
            "AKSUbuntu-1804gen2gpucontainerd-202307.27.0",
            "AKSUbuntu-1804fipsgpucontainerd-202307.27.0",
        ] {
            assert_eq!(
                classify(&with_image("n", image)),
                ImageKind::Specialized,
                "{image}"
            );
        }
        for image in [
            "AKSUbuntu-2204gen2containerd-202405.03.0",
            "AKSAzureLinux-V2gen2-202405.03.0",
            "weird",
            "gpu-1",
        ] {
            assert_eq!(
                classify(&with_image("n", image)),
                ImageKind::Standard,
                "{image}"
            );
        }
        assert_eq!(classify(&node("n")), ImageKind::Unlabelled);
    }

    #[test]
    fn auto_skips_only_when_every_node_ships_the_plugin() {
        let a = with_image("a", "AKSUbuntu-1804gpucontainerd-202307.27.0");
        let b = with_image("b", "AKSUbuntu-1804gpucontainerd-202307.27.0");
        let d = decide_plugin(NodeImage::Auto, &[&a, &b], None);
        assert_eq!(
            (d.mode, d.reason, d.detected),
            (
                PluginMode::Skipped,
                Reason::SpecializedImageDetected,
                DetectedImage::Specialized
            )
        );

        let c = with_image("c", "AKSUbuntu-2204gen2containerd-202405.03.0");
        let d = decide_plugin(NodeImage::Auto, &[&a, &c], None);
        assert_eq!(
            (d.mode, d.reason, d.detected),
            (
                PluginMode::Managed,
                Reason::MixedImagesDetected,
                DetectedImage::Mixed
            )
        );
        assert_eq!(d.specialized_nodes, vec!["a".to_string()]);
        assert_eq!(
            d.allowed_image_versions
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["AKSUbuntu-2204gen2containerd-202405.03.0"]
        );

        let plain = node("plain");
        let d = decide_plugin(NodeImage::Auto, &[&plain], None);
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
        let a = with_image("a", "AKSUbuntu-1804gpucontainerd-202307.27.0");
        let d = decide_plugin(NodeImage::Standard, &[&a], None);
        assert_eq!(
            (d.mode, d.allowed_image_versions),
            (PluginMode::Managed, None)
        );
        let c = with_image("c", "AKSUbuntu-2204gen2containerd-202405.03.0");
        assert_eq!(
            decide_plugin(NodeImage::Specialized, &[&c], None).mode,
            PluginMode::Skipped
        );
    }

    #[test]
    fn an_empty_auto_pool_keeps_its_previous_mode() {
        assert_eq!(
            decide_plugin(NodeImage::Auto, &[], Some(PluginMode::Skipped)).mode,
            PluginMode::Skipped
        );
        assert_eq!(
            decide_plugin(NodeImage::Auto, &[], None).mode,
            PluginMode::Managed
        );
        assert_eq!(
            decide_plugin(NodeImage::Auto, &[], None).detected,
            DetectedImage::Unknown
        );
    }
}

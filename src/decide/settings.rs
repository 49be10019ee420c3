//! The operator's settings the decisions depend on (from its command line).

/// Operator settings the decisions depend on.
#[derive(Clone, Debug)]
pub struct Settings {
    pub plugin_namespace: String,
    pub default_plugin_image: String,
    pub gpu_grace_period: std::time::Duration,
    /// How long the plugin DaemonSet may take to become ready before it counts as stuck.
    pub rollout_deadline: std::time::Duration,
    /// Image repositories plugin images may come from (`registry/path`, no tag or digest).
    pub allowed_plugin_images: Vec<String>,
    /// How long a write the API server refused is not tried again (unless the spec changes).
    pub stall_retry: std::time::Duration,
    /// Image repositories validation images may come from.
    pub allowed_validation_images: Vec<String>,
    /// The first wait before a failed validation is tried again (it doubles, up to 10 min).
    pub validation_retry: std::time::Duration,
}

/// What the validation image may be by default: NVIDIA's CUDA samples and the AKS article's.
pub const DEFAULT_ALLOWED_VALIDATION_IMAGES: [&str; 2] = [
    "nvcr.io/nvidia/k8s/cuda-sample",
    "mcr.microsoft.com/azuredocs/samples-tf-mnist-demo",
];

/// What the device plugin image may be by default: NVIDIA's registry and the AKS mirror.
pub const DEFAULT_ALLOWED_PLUGIN_IMAGES: [&str; 2] = [
    "nvcr.io/nvidia/k8s-device-plugin",
    "mcr.microsoft.com/oss/nvidia/k8s-device-plugin",
];

impl Settings {
    /// Whether the image's repository (the reference without `:tag` and `@digest`) is allowed.
    pub fn image_allowed(&self, image: &str) -> bool {
        let repository = image_repository(image);
        self.allowed_plugin_images
            .iter()
            .any(|allowed| allowed == repository)
    }
}

/// `registry:port/path/name:tag@sha256:…` → `registry:port/path/name`.
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(r, _)| r);
    match without_digest.rsplit_once(':') {
        // A colon after the last slash starts the tag; before it, it is a registry port.
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => without_digest,
    }
}

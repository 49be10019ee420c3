//! What `hack/real-node/build.sh` builds: the kubelet, and the images a real node imports.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::Error;

/// An image: the tag pods name it by, and the OCI archive it is imported from.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub tag: String,
    pub archive: PathBuf,
}

/// The images of `images.json` in the build folder.
#[derive(Debug, Clone, Deserialize)]
pub struct Images {
    /// The pod sandbox image (containerd's `sandbox_image`).
    pub pause: Image,
    /// busybox (static), for general pods: `sh`, `sleep`, `cat`, ...
    pub busybox: Image,
    /// The NVIDIA device plugin built from its module, tagged as upstream's
    /// (`nvcr.io/nvidia/k8s-device-plugin:v0.18.0`): on a node without GPUs it fails to load NVML.
    pub device_plugin: Image,
    /// The same plugin over go-nvml's dgxa100 mock NVML (8 x A100), tagged
    /// `nvcr.io/nvidia/k8s-device-plugin:v0.18.0-mockgpu`.
    pub device_plugin_mockgpu: Image,
    /// Stand-in for `nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0`: passes when the plugin
    /// gave the container a device in `NVIDIA_VISIBLE_DEVICES`.
    pub cuda_sample: Image,
}

/// The build folder and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Artifacts {
    pub kubelet: PathBuf,
    /// The NVIDIA device plugin built from its module (the binary of upstream's image).
    pub device_plugin: PathBuf,
    pub images: Images,
}

/// `$GPUPOOL_REAL_NODE_DIR`, else the last stdout line of `hack/real-node/build.sh` (which builds
/// or reuses everything; cached for the process).
pub(crate) fn artifacts() -> Result<Artifacts, Error> {
    static DIR: OnceLock<Result<Artifacts, String>> = OnceLock::new();
    DIR.get_or_init(|| locate().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Error::Command {
            what: "locating the real node's binaries and images".into(),
            detail: e,
        })
}

fn locate() -> Result<Artifacts, Error> {
    let dir = match std::env::var_os("GPUPOOL_REAL_NODE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../real-node/build.sh");
            // stderr is inherited: a cold build takes minutes and prints progress there.
            let out = std::process::Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| Error::io(format!("running {}", script.display()), e))?;
            if !out.status.success() {
                return Err(Error::Command {
                    what: script.display().to_string(),
                    detail: format!("{} (see its messages on stderr above)", out.status),
                });
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
            PathBuf::from(last.ok_or_else(|| Error::Command {
                what: script.display().to_string(),
                detail: "printed nothing on stdout (expected the build folder)".into(),
            })?)
        }
    };
    let kubelet = dir.join("bin/kubelet");
    if !kubelet.is_file() {
        return Err(Error::Binaries(format!(
            "{} has no bin/kubelet (set GPUPOOL_REAL_NODE_DIR or run hack/real-node/build.sh)",
            dir.display()
        )));
    }
    let device_plugin = dir.join("bin/nvidia-device-plugin");
    if !device_plugin.is_file() {
        return Err(Error::Binaries(format!(
            "{} has no bin/nvidia-device-plugin (run hack/real-node/build.sh)",
            dir.display()
        )));
    }
    let manifest = dir.join("images.json");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| Error::io(format!("reading {}", manifest.display()), e))?;
    let images: Images = serde_json::from_str(&text).map_err(|e| Error::Config {
        what: format!("parsing {}", manifest.display()),
        detail: e.to_string(),
    })?;
    for image in [
        &images.pause,
        &images.busybox,
        &images.device_plugin,
        &images.device_plugin_mockgpu,
        &images.cuda_sample,
    ] {
        if !image.archive.is_file() {
            return Err(Error::Binaries(format!(
                "image archive {} of {} is missing (run hack/real-node/build.sh)",
                image.archive.display(),
                image.tag
            )));
        }
    }
    Ok(Artifacts {
        kubelet,
        device_plugin,
        images,
    })
}

//! Where the control-plane binaries are: `$GPUPOOL_CONTROL_PLANE_BIN`, or the folder
//! `hack/build-control-plane.sh` builds them into (and prints on its last stdout line).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::Error;

/// Binaries that must be present in the bin folder.
const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// Finds the binaries: `$GPUPOOL_CONTROL_PLANE_BIN`, else the last stdout line of
/// `hack/build-control-plane.sh` (cached for the process).
pub(crate) fn bin_dir() -> Result<PathBuf, Error> {
    // The message, not the Error: it is cached for every later caller and Error is not Clone.
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN_DIR
        .get_or_init(|| locate_binaries().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Binaries)
}

fn locate_binaries() -> Result<PathBuf, Error> {
    let dir = match std::env::var_os("GPUPOOL_CONTROL_PLANE_BIN") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build-control-plane.sh");
            // stderr is inherited: a cold build takes many minutes and prints progress there.
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
                detail: "printed nothing on stdout (expected the bin folder)".into(),
            })?)
        }
    };
    let missing: Vec<&str> = BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Binaries(format!(
            "{} lacks {missing:?} (set GPUPOOL_CONTROL_PLANE_BIN or run hack/build-control-plane.sh)",
            dir.display()
        )));
    }
    Ok(dir)
}

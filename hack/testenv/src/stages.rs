//! kwok Stage configuration for one plane.
//!
//! The upstream stage files are copied next to the kwok binary by `hack/build-control-plane.sh`.
//! We read them, keep only `kind: Stage` documents, shorten the node status heartbeat, check that
//! every stage the tests rely on is present, and write a single config file for `kwok --config`.

use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use yaml_serde::Value;

use crate::{Error, Options};

/// Stages the harness needs: nodes become Ready and keep heartbeating, pods bound to fake nodes
/// become Running+Ready, Job pods complete, and deleted pods go away.
const REQUIRED: &[&str] = &[
    "node-initialize",
    "node-heartbeat-with-lease",
    "pod-ready",
    "pod-complete",
    "pod-delete",
];

/// Node status heartbeat period. Upstream's `node-heartbeat-with-lease` rewrites node status only
/// every ~10 minutes (liveness goes through the Lease, as with a real kubelet). We use ~10 s, the
/// kubelet's `nodeStatusUpdateFrequency`, so that tests see kwok write node status regularly and
/// can prove that what they (or the operator) set survives those writes.
pub const NODE_STATUS_HEARTBEAT_MS: u64 = 10_000;
const NODE_STATUS_HEARTBEAT_JITTER_MS: u64 = 12_000;

/// Writes `<out_dir>/kwok-stages.yaml` from the stage files in `<bin_dir>/kwok-stages`.
pub(crate) fn prepare(bin_dir: &Path, out_dir: &Path, options: &Options) -> Result<PathBuf, Error> {
    let src = bin_dir.join("kwok-stages");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&src)
        .map_err(|e| {
            Error::io(
                format!(
                    "reading kwok stage folder {} (hack/build-control-plane.sh installs it)",
                    src.display()
                ),
                e,
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    entries.sort();

    let mut docs = Vec::new();
    let mut names = Vec::new();
    for path in &entries {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for de in yaml_serde::Deserializer::from_str(&text) {
            let mut doc = Value::deserialize(de).map_err(|e| Error::Config {
                what: format!("parsing kwok stage file {}", path.display()),
                detail: e.to_string(),
            })?;
            if doc.get("kind").and_then(Value::as_str) != Some("Stage") {
                continue; // e.g. a stray kustomization.yaml
            }
            let name = doc
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if name == "node-heartbeat-with-lease" {
                set_delay(&mut doc, options.node_status_heartbeat);
            }
            names.push(name);
            docs.push(doc);
        }
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !names.iter().any(|n| n == r))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Config {
            what: format!("kwok stages in {}", src.display()),
            detail: format!(
                "missing stage(s) {missing:?} (found {names:?}); re-run hack/build-control-plane.sh"
            ),
        });
    }

    let mut out = String::new();
    for doc in &docs {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(doc).map_err(|e| Error::Config {
            what: "serializing kwok stages".into(),
            detail: e.to_string(),
        })?);
    }
    let path = out_dir.join("kwok-stages.yaml");
    std::fs::write(&path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

fn set_delay(stage: &mut Value, heartbeat: std::time::Duration) {
    let period = u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX);
    // The same jitter-to-period ratio as the default (12 s on 10 s).
    let jitter = period.saturating_mul(NODE_STATUS_HEARTBEAT_JITTER_MS) / NODE_STATUS_HEARTBEAT_MS;
    if let Some(spec) = stage.get_mut("spec").and_then(Value::as_mapping_mut) {
        let mut delay = yaml_serde::Mapping::new();
        delay.insert("durationMilliseconds".into(), period.into());
        delay.insert("jitterDurationMilliseconds".into(), jitter.into());
        spec.insert("delay".into(), Value::Mapping(delay));
    }
}

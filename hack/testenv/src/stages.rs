//! kwok Stage configuration for one plane.
//!
//! The upstream stage files are copied next to the kwok binary by `hack/build-control-plane.sh`.
//! We read them, keep only `kind: Stage` documents, check that every stage the harness relies on
//! is present, adapt them (below), and write a single config file for `kwok --config`:
//!
//! - the node status heartbeat comes every ~10 s instead of every ~10 minutes;
//! - device-plugin pods (`name=nvidia-device-plugin-ds`) being deleted stay Terminating for
//!   [`Options::plugin_pod_termination`] before they go, as a real plugin's shutdown takes a
//!   moment; every other pod still goes at once (upstream's `pod-delete` excludes them, and a
//!   copy of it with a delay takes them);
//! - GPU validation pods (`app.kubernetes.io/component=gpu-validation`) are left out of
//!   upstream's `pod-complete`, which would finish any Job pod at once with exit code 0: the
//!   simulated kubelet of [`crate::simulate::ValidationPods`] finishes them instead, and no stage
//!   matches a finished pod, so nothing overwrites what it wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;
use yaml_serde::Value;

use crate::simulate::VALIDATION_POD_LABEL;
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

/// The label of the NVIDIA device plugin's pods (the upstream DaemonSet's and gpupool's).
pub const DEVICE_PLUGIN_POD_LABEL: (&str, &str) = ("name", "nvidia-device-plugin-ds");

/// Name of the stage that deletes device-plugin pods after their termination delay.
const PLUGIN_POD_DELETE: &str = "pod-delete-device-plugin";

/// Node status heartbeat period. Upstream's `node-heartbeat-with-lease` rewrites node status only
/// every ~10 minutes (liveness goes through the Lease, as with a real kubelet). We use ~10 s, the
/// kubelet's `nodeStatusUpdateFrequency`, so that tests see kwok write node status regularly and
/// can prove that what they (or the operator) set survives those writes.
pub const NODE_STATUS_HEARTBEAT_MS: u64 = 10_000;
const NODE_STATUS_HEARTBEAT_JITTER_MS: u64 = 12_000;

/// Writes `<out_dir>/kwok-stages.yaml` from the stage files in `<bin_dir>/kwok-stages`.
pub(crate) fn prepare(bin_dir: &Path, out_dir: &Path, options: &Options) -> Result<PathBuf, Error> {
    let src = bin_dir.join("kwok-stages");
    let mut stages = read_stages(&src)?;
    let names: Vec<&str> = stages.iter().map(stage_name).collect();
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|r| !names.contains(r))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Config {
            what: format!("kwok stages in {}", src.display()),
            detail: format!(
                "missing stage(s) {missing:?} (found {names:?}); re-run hack/build-control-plane.sh"
            ),
        });
    }
    let plugin_pod_delete = stages
        .iter()
        .find(|s| stage_name(s) == "pod-delete")
        .map(|s| plugin_pod_delete_stage(s.clone(), options.plugin_pod_termination));
    stages.extend(plugin_pod_delete);
    for stage in &mut stages {
        adapt(stage, options)?;
    }

    let mut out = String::new();
    for stage in &stages {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(stage).map_err(|e| Error::Config {
            what: "serializing kwok stages".into(),
            detail: e.to_string(),
        })?);
    }
    let path = out_dir.join("kwok-stages.yaml");
    std::fs::write(&path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// Every `kind: Stage` document of the `*.yaml` files in `dir`, in file name order.
fn read_stages(dir: &Path) -> Result<Vec<Value>, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            let context = format!(
                "reading kwok stage folder {} (hack/build-control-plane.sh installs it)",
                dir.display()
            );
            Error::io(context, e)
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut stages = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for document in yaml_serde::Deserializer::from_str(&text) {
            let doc = Value::deserialize(document).map_err(|e| Error::Config {
                what: format!("parsing kwok stage file {}", path.display()),
                detail: e.to_string(),
            })?;
            // Skips e.g. a stray kustomization.yaml.
            if doc.get("kind").and_then(Value::as_str) == Some("Stage") {
                stages.push(doc);
            }
        }
    }
    Ok(stages)
}

fn stage_name(stage: &Value) -> &str {
    stage
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The harness's changes to upstream stages (see the module docs).
fn adapt(stage: &mut Value, options: &Options) -> Result<(), Error> {
    match stage_name(stage) {
        "node-heartbeat-with-lease" => {
            let period = millis(options.node_status_heartbeat);
            // The same jitter-to-period ratio as the default (12 s on 10 s).
            let jitter =
                period.saturating_mul(NODE_STATUS_HEARTBEAT_JITTER_MS) / NODE_STATUS_HEARTBEAT_MS;
            set_delay(stage, period, jitter);
            Ok(())
        }
        "pod-delete" => require_label(stage, DEVICE_PLUGIN_POD_LABEL, "NotIn"),
        PLUGIN_POD_DELETE => require_label(stage, DEVICE_PLUGIN_POD_LABEL, "In"),
        "pod-complete" => require_label(stage, VALIDATION_POD_LABEL, "NotIn"),
        _ => Ok(()),
    }
}

/// Upstream's `pod-delete` (finalizers cleared, pod deleted), renamed and delayed; [`adapt`]
/// restricts it to device-plugin pods.
fn plugin_pod_delete_stage(mut stage: Value, termination: Duration) -> Value {
    if let Some(metadata) = stage.get_mut("metadata").and_then(Value::as_mapping_mut) {
        metadata.insert("name".into(), PLUGIN_POD_DELETE.into());
    }
    set_delay(&mut stage, millis(termination), 0);
    stage
}

fn set_delay(stage: &mut Value, duration_ms: u64, jitter_ms: u64) {
    if let Some(spec) = stage.get_mut("spec").and_then(Value::as_mapping_mut) {
        let mut delay = yaml_serde::Mapping::new();
        delay.insert("durationMilliseconds".into(), duration_ms.into());
        if jitter_ms > 0 {
            delay.insert("jitterDurationMilliseconds".into(), jitter_ms.into());
        }
        spec.insert("delay".into(), Value::Mapping(delay));
    }
}

/// Adds `label In/NotIn [value]` to the stage's selector (ANDed with what is there).
fn require_label(
    stage: &mut Value,
    (key, value): (&str, &str),
    operator: &str,
) -> Result<(), Error> {
    let expression = serde_json::json!({
        // jq: a label key may contain dots and slashes.
        "key": format!(".metadata.labels[{}]", serde_json::Value::from(key)),
        "operator": operator,
        "values": [value],
    });
    let expression = yaml_serde::to_value(expression).map_err(|e| Error::Config {
        what: "building a kwok selector expression".into(),
        detail: e.to_string(),
    })?;
    let name = stage_name(stage).to_owned();
    let expressions = stage
        .get_mut("spec")
        .and_then(|s| s.get_mut("selector"))
        .and_then(|s| s.get_mut("matchExpressions"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| Error::Config {
            what: format!("kwok stage {name}"),
            detail: "has no spec.selector.matchExpressions to add to".into(),
        })?;
    expressions.push(expression);
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! Whether a node the DRA driver serves has what it should: the driver's kubelet plugin ready on
//! it, its slice pools complete, the expected GPUs published and untainted — the DRA reading of
//! `capacity::judge`.

use crate::api::Reason;
use crate::decide::capacity::{Expected, Judgement, Source};
use crate::decide::facts::{ContainerFailure, DraNode, NodeFacts, PodFacts};
use crate::decide::text::name_list;
use k8s_openapi::jiff::Timestamp;

/// Ok(None): it serves what it should; Ok(Some): it does, but an admin should look (a taint
/// that leaves enough GPUs, another GPU model than the VM size has); Err: it does not, and why.
pub fn judge_dra(
    node: &NodeFacts,
    slices: Option<&DraNode>,
    driver_pod: Option<&PodFacts>,
    e: &Expected,
    now: Timestamp,
) -> Judgement {
    driver_ready(node, driver_pod, now)?;
    let required = e.count().max(1);
    let Some(node) = slices.filter(|s| s.slices > 0) else {
        return Err((
            Reason::NoResourceSlices,
            format!(
                "the DRA driver publishes no ResourceSlices for the node ({required} GPUs expected {}): its kubelet plugin found no GPU or cannot reach the NVIDIA driver (check its log)",
                e.origin()
            ),
        ));
    };
    if let Some(p) = node.incomplete.first() {
        return Err((
            Reason::IncompleteResourceSlices,
            format!(
                "slice pool {} (generation {}) has {} of its {} ResourceSlices: the DRA driver has not published all of them, so its GPUs are not counted yet",
                p.pool, p.generation, p.have, p.expected
            ),
        ));
    }
    let gpus = node.gpus();
    if gpus.physical < required {
        return Err((
            Reason::FewerGpusThanExpected,
            format!(
                "the DRA driver publishes {} of {required} GPUs expected {}: GPUs may have fallen off the bus",
                gpus.physical,
                e.origin()
            ),
        ));
    }
    let tainted: Vec<String> = node
        .tainted()
        .map(|(d, t)| format!("{} {t}", d.name))
        .collect();
    if gpus.usable < required {
        return Err((
            Reason::DeviceTaints,
            format!(
                "{} of {} GPUs are tainted by the DRA driver and take no new claims: {}; check the driver's log for the XID, then drain and repair the node",
                gpus.physical - gpus.usable,
                gpus.physical,
                name_list(&tainted, 5)
            ),
        ));
    }
    if !tainted.is_empty() {
        return Ok(Some((
            Reason::DeviceTaints,
            format!(
                "the DRA driver taints devices of the node: {}",
                name_list(&tainted, 5)
            ),
        )));
    }
    if let Some(found) = unexpected_model(node, e) {
        return Ok(Some((Reason::UnexpectedGpuModel, found)));
    }
    Ok(None)
}

/// The driver's kubelet plugin pod runs ready on the node.
fn driver_ready(
    node: &NodeFacts,
    driver_pod: Option<&PodFacts>,
    now: Timestamp,
) -> Result<(), (Reason, String)> {
    match driver_pod {
        None => {
            let taints: Vec<String> = node
                .taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect();
            let tolerate = if taints.is_empty() {
                String::new()
            } else {
                format!(
                    "; its pod must tolerate the node's taints ({})",
                    name_list(&taints, 5)
                )
            };
            Err((
                Reason::DraDriverNotReady,
                format!(
                    "no pod of the NVIDIA DRA driver's kubelet plugin runs on the node: check the driver's DaemonSet and its node affinity (gpupool.io/dra for pools with spec.allocation Dra){tolerate}"
                ),
            ))
        }
        Some(pod) if pod.deleting || !pod.ready => {
            let state = match pod.container.failure(now) {
                Some(f) => failure_text(&f),
                None if pod.deleting => "terminating".to_string(),
                None => "not ready yet".to_string(),
            };
            Err((
                Reason::DraDriverNotReady,
                format!(
                    "the DRA driver's kubelet plugin pod {} is {state}: kubectl -n {} describe pod {}",
                    pod.id, pod.id.namespace, pod.id.name
                ),
            ))
        }
        Some(_) => Ok(()),
    }
}

/// The VM size names a GPU model (e.g. "H100 80GB") and the driver publishes another.
fn unexpected_model(node: &DraNode, e: &Expected) -> Option<String> {
    let Source::Size(size) = &e.source else {
        return None;
    };
    // The model's first word with a digit ("H100 80GB" → "H100", "Tesla K80" → "K80") as a word
    // of the product name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"): product names spell
    // the rest differently, and "A10" must not match "A100".
    let family = size
        .model
        .split_whitespace()
        .find(|w| w.chars().any(|c| c.is_ascii_digit()))?;
    let products = node.products();
    let other: Vec<String> = products
        .iter()
        .filter(|p| !p.split([' ', '-']).any(|w| w == family))
        .map(|p| p.to_string())
        .collect();
    (!other.is_empty()).then(|| {
        format!(
            "{} has {} GPUs, but the DRA driver publishes {}: check the node's VM size and its GPUs",
            size.name,
            size.model,
            other.join(", ")
        )
    })
}

fn failure_text(f: &ContainerFailure) -> String {
    let exit = f
        .last_exit
        .as_ref()
        .map(|t| format!(", last exit code {}", t.exit_code))
        .unwrap_or_default();
    format!("{} ({} restarts{exit})", f.reason, f.restarts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GpuPoolSpec;
    use crate::decide::capacity::expected;
    use crate::decide::facts::{DeviceKind, DeviceTaint, DraDevice, IncompletePool, PodRole};
    use crate::decide::names::INSTANCE_TYPE_LABEL;
    use crate::decide::testing::{gpu_node, plugin_pod};

    fn h100_expectation() -> Expected {
        let mut node = gpu_node("n", 0, 0);
        node.labels.insert(
            INSTANCE_TYPE_LABEL.into(),
            "Standard_ND96isr_H100_v5".into(),
        );
        let spec: GpuPoolSpec = serde_json::from_value(
            serde_json::json!({"nodeSelector": {"matchLabels": {"a": "b"}}}),
        )
        .unwrap();
        expected(&node, &spec, false)
    }

    fn node() -> NodeFacts {
        gpu_node("n", 0, 0)
    }

    fn driver(ready: bool) -> PodFacts {
        PodFacts {
            role: PodRole::DraDriver,
            ready,
            ..plugin_pod("nvidia-dra-driver-gpu", "kubelet-plugin-x", Some("n"), "")
        }
    }

    fn published(n: usize, product: &str, tainted: usize) -> DraNode {
        DraNode {
            slices: 1,
            devices: (0..n)
                .map(|i| DraDevice {
                    name: format!("gpu-{i}"),
                    kind: DeviceKind::Gpu,
                    uuid: Some(format!("GPU-{i}")),
                    product: Some(product.into()),
                    taints: (i < tainted)
                        .then(|| DeviceTaint {
                            key: "gpu.nvidia.com/xid".into(),
                            value: "79".into(),
                            effect: "NoSchedule".into(),
                        })
                        .into_iter()
                        .collect(),
                })
                .collect(),
            incomplete: vec![],
        }
    }

    #[test]
    fn each_way_of_falling_short_is_named() {
        let e = h100_expectation();
        let now = Timestamp::now();
        let h100 = "NVIDIA H100 80GB HBM3";
        let ok = published(8, h100, 0);
        assert_eq!(
            judge_dra(&node(), Some(&ok), Some(&driver(true)), &e, now),
            Ok(None)
        );
        let reason = |slices: Option<&DraNode>, pod: Option<&PodFacts>| {
            judge_dra(&node(), slices, pod, &e, now).unwrap_err().0
        };
        assert_eq!(reason(Some(&ok), None), Reason::DraDriverNotReady);
        assert_eq!(
            reason(Some(&ok), Some(&driver(false))),
            Reason::DraDriverNotReady
        );
        assert_eq!(reason(None, Some(&driver(true))), Reason::NoResourceSlices);
        let half = DraNode {
            incomplete: vec![IncompletePool {
                pool: "n".into(),
                generation: 3,
                have: 1,
                expected: 2,
            }],
            ..published(4, h100, 0)
        };
        assert_eq!(
            reason(Some(&half), Some(&driver(true))),
            Reason::IncompleteResourceSlices
        );
        let (r, m) = judge_dra(
            &node(),
            Some(&published(7, h100, 0)),
            Some(&driver(true)),
            &e,
            now,
        )
        .unwrap_err();
        assert_eq!(r, Reason::FewerGpusThanExpected);
        assert!(
            m.contains("7 of 8") && m.contains("Standard_ND96isr_H100_v5"),
            "{m}"
        );
        let (r, m) = judge_dra(
            &node(),
            Some(&published(8, h100, 1)),
            Some(&driver(true)),
            &e,
            now,
        )
        .unwrap_err();
        assert_eq!(r, Reason::DeviceTaints);
        assert!(m.contains("gpu-0 gpu.nvidia.com/xid=79:NoSchedule"), "{m}");
    }

    #[test]
    fn taints_that_leave_enough_and_another_model_are_findings_not_failures() {
        let now = Timestamp::now();
        let mut lenient = h100_expectation();
        lenient.physical = 4;
        let degraded = judge_dra(
            &node(),
            Some(&published(8, "NVIDIA H100 80GB HBM3", 1)),
            Some(&driver(true)),
            &lenient,
            now,
        );
        assert_eq!(degraded.unwrap().unwrap().0, Reason::DeviceTaints);
        let e = h100_expectation();
        let a100 = judge_dra(
            &node(),
            Some(&published(8, "NVIDIA A100-SXM4-80GB", 0)),
            Some(&driver(true)),
            &e,
            now,
        );
        let (r, m) = a100.unwrap().unwrap();
        assert_eq!(r, Reason::UnexpectedGpuModel);
        assert!(m.contains("NVIDIA A100-SXM4-80GB"), "{m}");
    }
}

//! GPU faults a node reports through its conditions. AKS's node-problem-detector sets these on
//! GPU nodes (azure-aks-docs `articles/aks/node-problem-detector.md` and
//! `gpu-health-monitoring.md`): True means a problem was detected, False healthy. The doc's
//! headings also say `GPUXIDErrors` where its table says `XIDErrors`: both are read.

use crate::decide::facts::{NodeCondition, NodeFacts};

/// Condition types that report a GPU fault when True.
pub const AKS_GPU_CONDITIONS: [&str; 8] = [
    "GPUMissing",
    "XIDErrors",
    "GPUXIDErrors",
    "NVLinkStatusInactive",
    "GPUClockThrottling",
    "IBLinkFlapping",
    "UnhealthyNvidiaDevicePlugin",
    "UnhealthyNvidiaDCGMServices",
];

/// The node's GPU fault conditions that are True: AKS's and the pool's `extra` types.
pub fn gpu_faults<'a>(node: &'a NodeFacts, extra: &[String]) -> Vec<&'a NodeCondition> {
    node.conditions
        .iter()
        .filter(|c| c.status == "True")
        .filter(|c| AKS_GPU_CONDITIONS.contains(&c.type_.as_str()) || extra.contains(&c.type_))
        .collect()
}

/// The problem node's reason for a fault: the condition's own reason when it is one (CamelCase,
/// as conditions' reasons should be), else its type (node-problem-detector sometimes puts a
/// sentence in the reason).
pub fn problem_reason(c: &NodeCondition) -> String {
    let camel = !c.reason.is_empty()
        && c.reason.len() <= 64
        && c.reason.starts_with(|ch: char| ch.is_ascii_uppercase())
        && c.reason.chars().all(|ch| ch.is_ascii_alphanumeric());
    if camel {
        c.reason.clone()
    } else {
        c.type_.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::testing::gpu_node;

    fn condition(type_: &str, status: &str, reason: &str) -> NodeCondition {
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: "m".into(),
            since: None,
        }
    }

    #[test]
    fn true_gpu_conditions_are_faults_false_ones_and_others_are_not() {
        let mut node = gpu_node("n", 8, 8);
        node.conditions = vec![
            condition("XIDErrors", "True", "XIDErrors"),
            condition(
                "UnhealthyNvidiaDevicePlugin",
                "False",
                "HealthyNvidiaDevicePlugin",
            ),
            condition("KernelDeadlock", "True", "DockerHung"),
            condition("MyGpuCheck", "True", "Observed GPU count does not match"),
        ];
        let types = |extra: &[String]| -> Vec<String> {
            gpu_faults(&node, extra)
                .iter()
                .map(|c| c.type_.clone())
                .collect()
        };
        assert_eq!(types(&[]), vec!["XIDErrors"]);
        assert_eq!(
            types(&["MyGpuCheck".into()]),
            vec!["XIDErrors", "MyGpuCheck"]
        );
        assert_eq!(problem_reason(&node.conditions[0]), "XIDErrors");
        assert_eq!(problem_reason(&node.conditions[3]), "MyGpuCheck");
    }
}

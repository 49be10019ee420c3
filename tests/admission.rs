//! Bad input is rejected by the real API server at admission, with a message naming the field
//! (CRD schema and CEL rules from `crds/gpupool.yaml`).

mod support;

use kube::api::{Api, PostParams};
use serde_json::json;
use support::install_crd;
use testenv::ControlPlane;

/// (what is wrong, spec, a string the API server's message must contain)
fn catalogue() -> Vec<(&'static str, serde_json::Value, &'static str)> {
    let sel = json!({"matchLabels": {"kubernetes.azure.com/agentpool": "gpu"}});
    vec![
        (
            "missing selector",
            json!({}),
            "spec.nodeSelector: Required value",
        ),
        (
            "empty selector",
            json!({"nodeSelector": {}}),
            "spec.nodeSelector must not be empty",
        ),
        (
            "empty matchLabels",
            json!({"nodeSelector": {"matchLabels": {}}}),
            "spec.nodeSelector must not be empty",
        ),
        (
            "selector is a string",
            json!({"nodeSelector": "gpu"}),
            "spec.nodeSelector",
        ),
        (
            "bad label key",
            json!({"nodeSelector": {"matchLabels": {"bad key!": "x"}}}),
            "spec.nodeSelector.matchLabels",
        ),
        (
            "bad label value",
            json!({"nodeSelector": {"matchLabels": {"a": "white space"}}}),
            "spec.nodeSelector.matchLabels",
        ),
        (
            "label value too long",
            json!({"nodeSelector": {"matchLabels": {"a": "x".repeat(64)}}}),
            "spec.nodeSelector.matchLabels",
        ),
        (
            "unknown operator",
            json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]}}),
            "spec.nodeSelector.matchExpressions[0].operator",
        ),
        (
            "In without values",
            json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            "values must be non-empty for operators In and NotIn",
        ),
        (
            "Exists with values",
            json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
            "must be empty for Exists",
        ),
        (
            "empty expression key",
            json!({"nodeSelector": {"matchExpressions": [{"key": "", "operator": "Exists"}]}}),
            "spec.nodeSelector.matchExpressions[0].key",
        ),
        (
            "bad nodeImage",
            json!({"nodeSelector": sel, "nodeImage": "Fancy"}),
            "spec.nodeImage",
        ),
        (
            "zero expected GPUs",
            json!({"nodeSelector": sel, "expectedGpusPerNode": 0}),
            "spec.expectedGpusPerNode",
        ),
        (
            "negative expected GPUs",
            json!({"nodeSelector": sel, "expectedGpusPerNode": -2}),
            "spec.expectedGpusPerNode",
        ),
        (
            "expected GPUs as text",
            json!({"nodeSelector": sel, "expectedGpusPerNode": "four"}),
            "spec.expectedGpusPerNode",
        ),
        (
            "bad image reference",
            json!({"nodeSelector": sel, "devicePlugin": {"image": "NOT an image"}}),
            "spec.devicePlugin.image",
        ),
        (
            "empty image",
            json!({"nodeSelector": sel, "devicePlugin": {"image": ""}}),
            "spec.devicePlugin.image",
        ),
        (
            "image on a specialized pool",
            json!({"nodeSelector": sel, "nodeImage": "Specialized", "devicePlugin": {"image": "nvcr.io/nvidia/k8s-device-plugin:v0.18.0"}}),
            "spec.devicePlugin.image has no effect",
        ),
        (
            "bad priority class",
            json!({"nodeSelector": sel, "devicePlugin": {"priorityClassName": "Not_Valid"}}),
            "spec.devicePlugin.priorityClassName",
        ),
        (
            "bad toleration operator",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "a", "operator": "Maybe"}]}}),
            "spec.devicePlugin.tolerations[0].operator",
        ),
        (
            "Exists toleration with value",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]}}),
            "value must be empty when operator is Exists",
        ),
        (
            "Equal toleration without key",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"operator": "Equal", "value": "x"}]}}),
            "key is required when operator is Equal",
        ),
        (
            "bad toleration effect",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "a", "operator": "Exists", "effect": "Sometimes"}]}}),
            "spec.devicePlugin.tolerations[0].effect",
        ),
        (
            "negative tolerationSeconds",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "a", "operator": "Exists", "tolerationSeconds": -1}]}}),
            "spec.devicePlugin.tolerations[0].tolerationSeconds",
        ),
        (
            "bad resource quantity",
            json!({"nodeSelector": sel, "devicePlugin": {"resources": {"limits": {"memory": "lots"}}}}),
            "spec.devicePlugin.resources.limits.memory",
        ),
        (
            "env without a name",
            json!({"nodeSelector": sel, "devicePlugin": {"env": [{"value": "x"}]}}),
            "spec.devicePlugin.env[0].name",
        ),
        (
            "devicePlugin is a list",
            json!({"nodeSelector": sel, "devicePlugin": ["x"]}),
            "spec.devicePlugin",
        ),
    ]
}

#[tokio::test]
async fn invalid_gpupools_are_rejected_with_a_message_naming_the_field() {
    let plane = ControlPlane::shared().await;
    install_crd(plane).await;
    let client = plane.client().await;
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client,
        &kube::discovery::ApiResource {
            group: "gpupool.io".into(),
            version: "v1alpha1".into(),
            api_version: "gpupool.io/v1alpha1".into(),
            kind: "GpuPool".into(),
            plural: "gpupools".into(),
        },
    );
    let mut failures = Vec::new();
    for (i, (what, spec, expected)) in catalogue().into_iter().enumerate() {
        let body = json!({"apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool", "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let body: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                if !status.message.contains(expected) {
                    failures.push(format!(
                        "{what}: message does not contain {expected:?}: {}",
                        status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: unexpected error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad GpuPools were not rejected as expected:\n{}",
        failures.len(),
        catalogue().len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn valid_gpupools_are_accepted_with_defaults() {
    let plane = ControlPlane::shared().await;
    install_crd(plane).await;
    let client = plane.client().await;
    let api: Api<gpupool::api::GpuPool> = Api::all(client);
    let pool: gpupool::api::GpuPool = serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool", "metadata": {"name": "good"},
        "spec": {
            "nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": "gpu"}, "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["3"]}]},
            "expectedGpusPerNode": 4,
            "devicePlugin": {
                "image": "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11",
                "tolerations": [{"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "priorityClassName": "system-node-critical",
                "resources": {"limits": {"memory": "128Mi"}},
                "env": [{"name": "FAIL_ON_INIT_ERROR", "value": "false"}]
            }
        }
    }))
    .unwrap();
    let created = api
        .create(&PostParams::default(), &pool)
        .await
        .expect("a full, valid GpuPool is accepted");
    assert_eq!(
        created.spec.node_image,
        gpupool::api::NodeImage::Auto,
        "nodeImage defaults to Auto"
    );
    // Examples shipped to users must be valid too.
    for example in [
        "examples/aks-standard-pool.yaml",
        "examples/aks-specialized-pool.yaml",
    ] {
        let path = format!("{}/{example}", env!("CARGO_MANIFEST_DIR"));
        let out = plane
            .kubectl()
            .args(["apply", "--dry-run=server", "-f", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

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
    let many = |n: usize, f: &dyn Fn(usize) -> serde_json::Value| {
        serde_json::Value::Array((0..n).map(f).collect())
    };
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
        (
            "label value is a number",
            json!({"nodeSelector": {"matchLabels": {"a": 1}}}),
            "spec.nodeSelector.matchLabels.a",
        ),
        (
            "too many matchExpressions",
            json!({"nodeSelector": {"matchExpressions": many(33, &|i| json!({"key": format!("k{i}"), "operator": "Exists"}))}}),
            "spec.nodeSelector.matchExpressions",
        ),
        (
            "too many values",
            json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": many(65, &|i| json!(format!("v{i}")))}]}}),
            "spec.nodeSelector.matchExpressions[0].values",
        ),
        (
            "operator in lower case",
            json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}}),
            "spec.nodeSelector.matchExpressions[0].operator",
        ),
        (
            "nodeImage in lower case",
            json!({"nodeSelector": sel, "nodeImage": "auto"}),
            "spec.nodeImage",
        ),
        (
            "too many expected GPUs",
            json!({"nodeSelector": sel, "expectedGpusPerNode": 1025}),
            "spec.expectedGpusPerNode",
        ),
        (
            "fractional expected GPUs",
            json!({"nodeSelector": sel, "expectedGpusPerNode": 1.5}),
            "spec.expectedGpusPerNode",
        ),
        (
            "image reference too long",
            json!({"nodeSelector": sel, "devicePlugin": {"image": format!("example.com/{}:v1", "a".repeat(520))}}),
            "spec.devicePlugin.image",
        ),
        (
            "image with upper-case repository",
            json!({"nodeSelector": sel, "devicePlugin": {"image": "nvcr.io/NVIDIA/k8s-device-plugin:v0.18.0"}}),
            "spec.devicePlugin.image",
        ),
        (
            "too many env vars",
            json!({"nodeSelector": sel, "devicePlugin": {"env": many(65, &|i| json!({"name": format!("V{i}"), "value": "x"}))}}),
            "spec.devicePlugin.env",
        ),
        (
            "env from a Secret",
            json!({"nodeSelector": sel, "devicePlugin": {"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}),
            "spec.devicePlugin.env[].valueFrom.secretKeyRef is not allowed",
        ),
        (
            "env from a ConfigMap",
            json!({"nodeSelector": sel, "devicePlugin": {"env": [{"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}}),
            "spec.devicePlugin.env[].valueFrom.configMapKeyRef is not allowed",
        ),
        (
            "env from a resource field",
            json!({"nodeSelector": sel, "devicePlugin": {"env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]}}),
            "spec.devicePlugin.env[].valueFrom.resourceFieldRef is not allowed",
        ),
        (
            "toleration key too long",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "k".repeat(317), "operator": "Exists"}]}}),
            "spec.devicePlugin.tolerations[0].key",
        ),
        (
            "tolerationSeconds as text",
            json!({"nodeSelector": sel, "devicePlugin": {"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": "soon"}]}}),
            "spec.devicePlugin.tolerations[0].tolerationSeconds",
        ),
        (
            "quantity with a bad suffix",
            json!({"nodeSelector": sel, "devicePlugin": {"resources": {"requests": {"memory": "1Gb"}}}}),
            "spec.devicePlugin.resources.requests.memory",
        ),
        (
            "priority class name too long",
            json!({"nodeSelector": sel, "devicePlugin": {"priorityClassName": "a".repeat(254)}}),
            "spec.devicePlugin.priorityClassName",
        ),
        ("spec is a string", json!("gpu"), "spec"),
    ]
}

/// Bad pool names: (what, name, a string the message must contain).
fn bad_names() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "huge name",
            format!("{}.pool", "a".repeat(250)),
            "metadata.name",
        ),
        ("upper-case name", "GpuPool-A".into(), "metadata.name"),
        ("name with a slash", "gpu/pool".into(), "name"),
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
    let spec = json!({"nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": "gpu"}}});
    for (what, name, expected) in bad_names() {
        let body = json!({"apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool", "metadata": {"name": name}, "spec": spec});
        let body: kube::api::DynamicObject = serde_json::from_value(body).unwrap();
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
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
    let total = catalogue().len() + bad_names().len();
    assert!(total >= 30, "the catalogue shrank to {total}");
    assert!(
        failures.is_empty(),
        "{} of {total} bad GpuPools were not rejected as expected:\n{}",
        failures.len(),
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
        "examples/aks-gated-pool.yaml",
        "examples/aks-h100-pool.yaml",
        "examples/aks-rollout-pool.yaml",
        "examples/aks-dra-pool.yaml",
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

/// Unknown fields: kubectl's default (`--validate=strict`) rejects them naming the field; a
/// client that does not ask for strict validation gets them pruned (the schema is structural).
#[tokio::test]
async fn unknown_fields_are_rejected_by_kubectl_and_pruned_otherwise() {
    let plane = ControlPlane::shared().await;
    install_crd(plane).await;
    let manifest = |name: &str| {
        format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: {name}\nspec:\n  nodeSelector:\n    matchLabels:\n      kubernetes.azure.com/agentpool: nowhere\n  gpuCount: 4\n  devicePlugin:\n    imagePullPolicy: Always\n"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.yaml");
    std::fs::write(&path, manifest("unknown-strict")).unwrap();
    let out = plane
        .kubectl()
        .args(["apply", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply accepted unknown fields"
    );
    assert!(
        stderr.contains("unknown field \"spec.gpuCount\"")
            && stderr.contains("unknown field \"spec.devicePlugin.imagePullPolicy\""),
        "{stderr}"
    );

    std::fs::write(&path, manifest("unknown-pruned")).unwrap();
    let out = plane
        .kubectl()
        .args(["apply", "--validate=false", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = plane
        .kubectl()
        .args(["get", "gpupool", "unknown-pruned", "-o", "json"])
        .output()
        .unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        stored["spec"].get("gpuCount").is_none()
            && stored["spec"]["devicePlugin"]
                .get("imagePullPolicy")
                .is_none(),
        "unknown fields were stored: {}",
        stored["spec"]
    );
}

/// GpuPools the schema accepts but the operator cannot act on: each becomes Stalled with a reason
/// naming the problem, the operator keeps running (same process) and keeps reconciling others.
#[tokio::test]
async fn accepted_but_unusable_gpupools_stall_with_a_reason_and_nothing_crashes() {
    let env = support::env().await;
    let pid = support::operator_pid().expect("the shared operator runs");
    let c = &env.client;
    // (pool, devicePlugin, Stalled reason, a string the message must contain)
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "stall-request-above-limit",
            json!({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}),
            "DaemonSetRejected",
            "must be less than or equal to cpu limit",
        ),
        (
            "stall-negative-limit",
            json!({"resources": {"limits": {"memory": "-1Gi"}}}),
            "DaemonSetRejected",
            "must be greater than or equal to 0",
        ),
        (
            "stall-bad-resource-name",
            json!({"resources": {"limits": {"not a resource": "1"}}}),
            "DaemonSetRejected",
            "not a resource",
        ),
        (
            "stall-env-name-with-equals",
            json!({"env": [{"name": "A=B", "value": "x"}]}),
            "DaemonSetRejected",
            "env[0].name",
        ),
        (
            "stall-env-value-and-valuefrom",
            json!({"env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}),
            "DaemonSetRejected",
            "env[0].valueFrom",
        ),
        (
            "stall-env-bad-fieldpath",
            json!({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nonsense"}}}]}),
            "DaemonSetRejected",
            "fieldPath",
        ),
        (
            "stall-bad-toleration-key",
            json!({"tolerations": [{"key": "not a key!", "operator": "Exists"}]}),
            "DaemonSetRejected",
            "tolerations[",
        ),
        (
            "stall-toleration-seconds-noschedule",
            json!({"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
            "DaemonSetRejected",
            "NoExecute",
        ),
    ];
    for (name, plugin, _, _) in &cases {
        let pool = json!({"apiVersion": "gpupool.io/v1alpha1", "kind": "GpuPool", "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"kubernetes.azure.com/agentpool": format!("{name}-nodes")}}, "devicePlugin": plugin}});
        support::create_pool(c, &serde_json::to_string(&pool).unwrap()).await;
    }
    // The name of its DaemonSet is taken by someone else's.
    let taken = "stall-name-taken";
    let foreign: k8s_openapi::api::apps::v1::DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": support::plugin_name(taken), "namespace": support::PLUGIN_NAMESPACE},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
            "metadata": {"labels": {"app": "x"}},
            "spec": {"nodeSelector": {"nowhere": "true"}, "containers": [{"name": "c", "image": "example.com/x:1"}]}}}
    }))
    .unwrap();
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(c.clone(), support::PLUGIN_NAMESPACE)
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    support::create_pool(
        c,
        &format!("apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: {taken}\nspec:\n  nodeSelector:\n    matchLabels:\n      kubernetes.azure.com/agentpool: {taken}-nodes\n"),
    )
    .await;

    let mut all = cases
        .iter()
        .map(|(n, _, r, m)| (*n, *r, *m))
        .collect::<Vec<_>>();
    all.push((taken, "DaemonSetNameTaken", "not managed by this GpuPool"));
    for (name, reason, message) in all {
        let pool = support::wait_condition(&env, name, "Stalled", "True", Some(reason)).await;
        let stalled = support::condition(&pool, "Stalled").unwrap();
        assert!(
            stalled.message.contains(message),
            "{name}: Stalled message lacks {message:?}: {}",
            stalled.message
        );
        assert!(
            support::condition(&pool, "Reconciling").is_none(),
            "{name}: Stalled and Reconciling"
        );
        let ready = support::condition(&pool, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", reason),
            "{name}"
        );
    }
    assert_eq!(
        support::operator_exit(),
        None,
        "{}",
        support::operator_log(env.plane)
    );
    assert_eq!(support::operator_pid(), Some(pid));
    // Still reconciling the others.
    testenv::nodes::create_node(c, &testenv::nodes::GpuNode::aks("stall-ok-0", "stallok"))
        .await
        .unwrap();
    support::create_pool(
        c,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuPool\nmetadata:\n  name: stall-ok\nspec:\n  nodeSelector:\n    matchLabels:\n      kubernetes.azure.com/agentpool: stallok\n",
    )
    .await;
    support::wait_condition(&env, "stall-ok", "Ready", "True", None).await;
}

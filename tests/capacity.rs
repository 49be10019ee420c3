//! Capacity truth on a real control plane: each node's expected GPUs derived from its VM size or
//! its provisioner's label (no `expectedGpusPerNode`), a node missing one GPU named with the size,
//! unknown sizes said so, time-slicing rendered into the plugin's config (and rolled only when it
//! changes), MIG mixed counted per profile, and GPU faults from node-problem-detector conditions
//! set and cleared — with a Continuous readiness gate closing on a faulty node.

mod support;

use gpupool::api::GpuPool;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::*;
use testenv::nodes::{GpuNode, create_node, set_condition, set_gpus, set_resources};
use testenv::wait_for;

/// Grace period of this binary's operator.
const GRACE: &str = "4s";

async fn capacity_env() -> Env {
    env_with(&["--gpu-grace-period", GRACE]).await
}

fn problem<'a>(pool: &'a GpuPool, node: &str) -> Option<&'a gpupool::api::ProblemNode> {
    pool.status
        .as_ref()?
        .problem_nodes
        .iter()
        .find(|p| p.name == node)
}

fn capacity(pool: &GpuPool) -> gpupool::api::CapacityStatus {
    pool.status
        .as_ref()
        .and_then(|s| s.capacity.clone())
        .unwrap_or_default()
}

async fn plugin_config(c: &Client, pool: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(c.clone(), PLUGIN_NAMESPACE)
        .get_opt(&format!("{}-config", plugin_name(pool)))
        .await
        .unwrap()
}

fn template_annotation(ds: &DaemonSet, key: &str) -> Option<String> {
    ds.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

/// #12.1: expectations per node from the VM size (a pool mixing sizes), from AKS node
/// auto-provisioning's label, and "at least one" for a size nobody documents; an H100 node
/// showing 7 of 8 is named with its size.
#[tokio::test]
async fn expected_gpus_come_from_the_vm_size_or_the_provisioner_label() {
    let env = capacity_env().await;
    let c = &env.client;
    let nodes = [
        ("size-h100", "Standard_ND96isr_H100_v5", 8, None),
        ("size-a100", "Standard_NC48ads_A100_v4", 2, None),
        // NAP: Karpenter's label says 4; the size (not in Azure's docs) says nothing.
        (
            "size-nap",
            "Standard_ND96is_flex_H100_v5",
            4,
            Some("karpenter.azure.com/sku-gpu-count"),
        ),
        ("size-odd", "Standard_NC8ads_A10_v4", 1, None),
    ];
    for (name, size, gpus, label) in nodes {
        let mut node = GpuNode::aks(name, "sizepool")
            .instance_type(size)
            .gpus(gpus);
        if let Some(key) = label {
            node = node.label(key, &gpus.to_string());
        }
        create_node(c, &node).await.unwrap();
    }
    create_pool(c, PoolYaml::new("sizes").agentpool("sizepool")).await;
    let pool = wait_condition(&env, "sizes", "Ready", "True", None).await;
    let cap = capacity(&pool);
    assert_eq!(
        (cap.resource.as_str(), cap.expected),
        ("nvidia.com/gpu", 8 + 2 + 4 + 1)
    );
    assert_eq!(cap.unknown_sizes, vec!["Standard_NC8ads_A10_v4"]);

    // One GPU of the H100 node falls off the bus: reported at once (progress for the grace
    // period), then failing, named with what the size promises.
    set_gpus(c, "size-h100", 8, 7).await.unwrap();
    let pool = wait_pool(&env, "sizes", "size-h100 failing with 7 of 8", |p| {
        problem(p, "size-h100").is_some_and(|n| n.reason == "FewerGpusThanExpected")
    })
    .await;
    let message = &problem(&pool, "size-h100").unwrap().message;
    assert!(
        message.starts_with(
            "has 7 of 8 nvidia.com/gpu expected for Standard_ND96isr_H100_v5 (8 × H100 80GB)"
        ),
        "{message}"
    );
    assert_eq!(condition(&pool, "Ready").unwrap().status, "False");
    // The NAP node losing GPUs is measured against its label.
    set_gpus(c, "size-nap", 4, 3).await.unwrap();
    let pool = wait_pool(&env, "sizes", "size-nap failing with 3 of 4", |p| {
        problem(p, "size-nap").is_some_and(|n| n.reason == "FewerGpusThanExpected")
    })
    .await;
    assert!(
        problem(&pool, "size-nap")
            .unwrap()
            .message
            .contains("karpenter.azure.com/sku-gpu-count=4"),
        "{:?}",
        problem(&pool, "size-nap")
    );
    set_gpus(c, "size-h100", 8, 8).await.unwrap();
    set_gpus(c, "size-nap", 4, 4).await.unwrap();
    wait_condition(&env, "sizes", "Ready", "True", None).await;
}

/// #12.2: time-slicing renders the plugin's config into a ConfigMap owned by the pool, mounted
/// into the plugin; expected allocatable is GPUs × replicas; a replicas change updates the
/// config and rolls the plugin, other changes do not; removing sharing removes the ConfigMap.
#[tokio::test]
async fn time_slicing_configures_the_plugin_and_multiplies_the_expectation() {
    let env = capacity_env().await;
    let c = &env.client;
    for name in node_names("ts", 2) {
        create_node(
            c,
            &GpuNode::aks(&name, "tspool")
                .instance_type("Standard_NC24ads_A100_v4")
                .gpus(1),
        )
        .await
        .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("ts")
            .agentpool("tspool")
            .extra_spec("  sharing:\n    timeSlicing:\n      replicas: 4\n"),
    )
    .await;
    let cm = wait_for("the plugin's ConfigMap", TIMEOUT, || async {
        plugin_config(c, "ts").await
    })
    .await;
    let text = cm.data.as_ref().unwrap()["config.yaml"].clone();
    let config: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    assert_eq!(
        config["sharing"]["timeSlicing"]["resources"],
        json!([{"name": "nvidia.com/gpu", "replicas": 4}])
    );
    let owner = &cm.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("GpuPool", "ts")
    );
    let ds = wait_daemonset(&env, &plugin_name("ts"), "the config mounted", |ds| {
        template_annotation(ds, "gpupool.io/plugin-config").is_some()
    })
    .await;
    let container = &ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "CONFIG_FILE"
                && e.value.as_deref() == Some("/etc/gpupool/device-plugin/config.yaml")),
        "{:?}",
        container.env
    );
    // Still one GPU allocatable each: 2 of the 8 shared GPUs expected.
    let pool = wait_pool(&env, "ts", "the shared GPUs missing", |p| {
        problem(p, "ts-0").is_some()
    })
    .await;
    let cap = capacity(&pool);
    assert_eq!(
        (cap.expected, cap.physical_gpus, cap.replicas),
        (8, Some(2), Some(4))
    );
    // The plugin registers 4 replicas per GPU.
    for name in node_names("ts", 2) {
        set_gpus(c, &name, 4, 4).await.unwrap();
    }
    wait_condition(&env, "ts", "Ready", "True", None).await;

    // Another spec change rolls nothing; a replicas change rolls the plugin.
    let generation = ds.metadata.generation;
    patch_pool(c, "ts", json!({"spec": {"expectedGpusPerNode": 1}})).await;
    wait_pool(&env, "ts", "the spec change observed", |_| true).await;
    let same = get_daemonset(c, &plugin_name("ts")).await.unwrap();
    assert_eq!(
        same.metadata.generation, generation,
        "no roll without a config change"
    );
    patch_pool(
        c,
        "ts",
        json!({"spec": {"sharing": {"timeSlicing": {"replicas": 2}}}}),
    )
    .await;
    wait_for("the config updated", TIMEOUT, || async {
        let cm = plugin_config(c, "ts").await?;
        cm.data?["config.yaml"]
            .contains("replicas: 2")
            .then_some(())
    })
    .await;
    let rolled = wait_daemonset(&env, &plugin_name("ts"), "a new template", |ds| {
        ds.metadata.generation > generation
    })
    .await;
    assert_ne!(
        template_annotation(&rolled, "gpupool.io/plugin-config"),
        template_annotation(&ds, "gpupool.io/plugin-config")
    );
    // Someone edits the ConfigMap: put back.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    cms.patch(
        &format!("{}-config", plugin_name("ts")),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"data": {"config.yaml": "version: v1\n"}})),
    )
    .await
    .unwrap();
    wait_for("the edited config put back", TIMEOUT, || async {
        let cm = plugin_config(c, "ts").await?;
        cm.data?["config.yaml"]
            .contains("replicas: 2")
            .then_some(())
    })
    .await;
    patch_pool(c, "ts", json!({"spec": {"sharing": null}})).await;
    wait_for("the ConfigMap removed", TIMEOUT, || async {
        plugin_config(c, "ts").await.is_none().then_some(())
    })
    .await;
}

/// #12.2: MIG mixed on an AKS MIG1g node pool of NC24ads_A100_v4: 7 `nvidia.com/mig-1g.10gb`
/// expected per node, `nvidia.com/gpu: 0` is no missing GPU, a missing MIG device is named; the
/// plugin gets the strategy and what NVIDIA's chart gives it for MIG.
#[tokio::test]
async fn mig_mixed_is_counted_per_profile() {
    let env = capacity_env().await;
    let c = &env.client;
    create_node(
        c,
        &GpuNode::aks("mig-0", "migpool")
            .instance_type("Standard_NC24ads_A100_v4")
            .gpus(1)
            .no_gpus_yet(),
    )
    .await
    .unwrap();
    set_resources(
        c,
        "mig-0",
        &[("nvidia.com/gpu", 0, 0), ("nvidia.com/mig-1g.10gb", 7, 7)],
    )
    .await
    .unwrap();
    create_pool(
        c,
        PoolYaml::new("mig")
            .agentpool("migpool")
            .extra_spec("  mig:\n    strategy: mixed\n    profile: MIG1g\n"),
    )
    .await;
    let pool = wait_condition(&env, "mig", "Ready", "True", None).await;
    let cap = capacity(&pool);
    assert_eq!(
        (cap.resource.as_str(), cap.expected),
        ("nvidia.com/mig-1g.10gb", 7)
    );
    assert_eq!(cap.mig_resources[0].allocatable, 7);
    let ds = get_daemonset(c, &plugin_name("mig")).await.unwrap();
    let container = &ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert!(
        container
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "NVIDIA_MIG_MONITOR_DEVICES")
    );
    let caps = container
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref(), Some(&["SYS_ADMIN".to_string()][..]));
    let cm = plugin_config(c, "mig").await.unwrap();
    assert!(cm.data.unwrap()["config.yaml"].contains("migStrategy: mixed"));

    set_resources(c, "mig-0", &[("nvidia.com/mig-1g.10gb", 7, 6)])
        .await
        .unwrap();
    let pool = wait_pool(&env, "mig", "a MIG device missing", |p| {
        problem(p, "mig-0").is_some()
    })
    .await;
    let message = &problem(&pool, "mig-0").unwrap().message;
    assert!(
        message.contains("6 of 7 nvidia.com/mig-1g.10gb expected for Standard_NC24ads_A100_v4"),
        "{message}"
    );
}

/// #12.3: GPU faults from node conditions (AKS node-problem-detector's XIDErrors, and a condition
/// type of the pool's own) make the node a problem node and the pool's GPUs unhealthy; the
/// Continuous gate closes on the faulty node and opens when the condition clears. The
/// conditions survive kwok's status heartbeats, as they do a kubelet's.
#[tokio::test]
async fn gpu_faults_from_node_conditions_are_reported_and_gated() {
    let env = capacity_env().await;
    let c = &env.client;
    for name in node_names("npd", 2) {
        create_node(
            c,
            &GpuNode::aks(&name, "npdpool").instance_type("Standard_NC24ads_A100_v4"),
        )
        .await
        .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("npd").agentpool("npdpool").extra_spec(
            "  readinessGate:\n    mode: Continuous\n  health:\n    nodeConditions: [ExampleGpuBurnFailed]\n",
        ),
    )
    .await;
    wait_condition(&env, "npd", "GpusHealthy", "True", None).await;

    set_condition(
        c,
        "npd-0",
        "XIDErrors",
        "True",
        "XIDErrors",
        "XID 79: GPU has fallen off the bus",
    )
    .await
    .unwrap();
    set_condition(
        c,
        "npd-1",
        "ExampleGpuBurnFailed",
        "True",
        "BurnFailed",
        "gpu-burn found 12 errors",
    )
    .await
    .unwrap();
    let pool = wait_pool(&env, "npd", "both faults reported", |p| {
        condition(p, "GpusHealthy").is_some_and(|c| {
            c.status == "False" && c.reason == "GpuFaultsReported" && c.message.contains("npd-1")
        })
    })
    .await;
    let healthy = condition(&pool, "GpusHealthy").unwrap();
    assert!(
        healthy.message.contains("npd-0 (XIDErrors)")
            && healthy.message.contains("npd-1 (ExampleGpuBurnFailed)"),
        "{}",
        healthy.message
    );
    assert_eq!(problem(&pool, "npd-0").unwrap().reason, "XIDErrors");
    assert_eq!(problem(&pool, "npd-1").unwrap().reason, "BurnFailed");
    assert_eq!(condition(&pool, "Ready").unwrap().status, "False");
    let nodes: Api<Node> = Api::all(c.clone());
    let gated = |n: &Node| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == "gpupool.io/gpu-not-ready"))
    };
    wait_for("the gate closed on npd-0", TIMEOUT, || async {
        gated(&nodes.get("npd-0").await.unwrap()).then_some(())
    })
    .await;
    // Survives kwok's heartbeats (every ~10 s): wait for one (the Ready condition's
    // heartbeat time moves), then look.
    let heartbeat = |n: &Node| {
        n.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")?
            .last_heartbeat_time
            .clone()
    };
    let before = heartbeat(&nodes.get("npd-0").await.unwrap());
    let node = wait_for("a heartbeat of npd-0's status", TIMEOUT, || async {
        let node = nodes.get("npd-0").await.ok()?;
        (heartbeat(&node) != before).then_some(node)
    })
    .await;
    assert!(
        node.status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "XIDErrors" && c.status == "True")
    );

    set_condition(c, "npd-0", "XIDErrors", "False", "NoXIDErrors", "")
        .await
        .unwrap();
    set_condition(
        c,
        "npd-1",
        "ExampleGpuBurnFailed",
        "False",
        "BurnPassed",
        "",
    )
    .await
    .unwrap();
    wait_condition(&env, "npd", "GpusHealthy", "True", None).await;
    wait_for("the gate opened on npd-0", TIMEOUT, || async {
        (!gated(&nodes.get("npd-0").await.unwrap())).then_some(())
    })
    .await;
    wait_condition(&env, "npd", "Ready", "True", None).await;
    Api::<GpuPool>::all(c.clone())
        .delete("npd", &DeleteParams::default())
        .await
        .unwrap();
}

/// #12: the schema rejects sharing and MIG combinations the plugin rejects, naming the field.
#[tokio::test]
async fn invalid_sharing_and_mig_are_rejected_at_admission() {
    let env = capacity_env().await;
    // Sent as the API server gets it from kubectl, not through the typed client (which would
    // refuse a bad enum value before the API server sees it).
    let pools: Api<kube::api::DynamicObject> = Api::all_with(
        env.client.clone(),
        &kube::api::ApiResource::erase::<GpuPool>(&()),
    );
    for (extra, wanted) in [
        (
            "  sharing:\n    timeSlicing:\n      replicas: 1\n",
            "spec.sharing.timeSlicing.replicas",
        ),
        (
            "  sharing:\n    timeSlicing:\n      replicas: 2\n  mig:\n    strategy: mixed\n",
            "spec.sharing.timeSlicing shares nvidia.com/gpu, which spec.mig.strategy mixed does not advertise",
        ),
        (
            "  nodeImage: Specialized\n  mig:\n    strategy: single\n",
            "spec.sharing and spec.mig configure gpupool's device plugin",
        ),
        (
            "  mig:\n    strategy: none\n    profile: MIG2g\n",
            "spec.mig.profile needs spec.mig.strategy single or mixed",
        ),
        (
            "  mig:\n    strategy: single\n  devicePlugin:\n    env:\n    - name: MIG_STRATEGY\n      value: mixed\n",
            "spec.devicePlugin.env must not set CONFIG_FILE or MIG_STRATEGY",
        ),
        ("  mig:\n    strategy: Mixed\n", "spec.mig.strategy"),
    ] {
        let yaml = PoolYaml::new("bad-capacity")
            .agentpool("none")
            .extra_spec(extra);
        let err = pools
            .create(
                &PostParams::default(),
                &yaml_serde::from_str::<kube::api::DynamicObject>(&yaml.to_string()).unwrap(),
            )
            .await
            .expect_err(extra);
        assert!(err.to_string().contains(wanted), "{extra}: {err}");
    }
}

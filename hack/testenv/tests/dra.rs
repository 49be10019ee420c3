//! `testenv::simulate::dra`: the NVIDIA GPU DRA driver on kwok nodes, against the real control
//! plane — the scheduler allocates claims from the simulated ResourceSlices, and the slices
//! follow the kubelet-plugin pod as the driver and the kubelet make them.
//!
//! One plane for this test binary; each test installs the driver in its own namespace and
//! simulates its own nodes (label `dratest=<test>`); the kubelet-plugin DaemonSet runs on those
//! labelled `dra-plugin=<test>` too, so that a test can take a node away from the plugin.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceClaimTemplate, ResourceSlice};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use testenv::simulate::dra::{self, DraDriver, DraDriverOptions, DraGpus, Install, MigProfile};
use testenv::{ControlPlane, nodes, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The kubelet's wiping delay, shortened for the tests.
const WIPING: Duration = Duration::from_secs(2);

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

/// Installs the driver for the nodes labelled `dra-plugin=<test>` and starts its simulation for
/// the nodes labelled `dratest=<test>`.
async fn driver(client: &kube::Client, test: &str) -> DraDriver {
    let install = Install::default()
        .namespace(&format!("dra-{test}"))
        .node_selector("dra-plugin", test);
    dra::install(client, &install).await.unwrap();
    DraDriver::spawn_with(
        client.clone(),
        DraDriverOptions {
            node_selector: format!("dratest={test}"),
            wiping_delay: WIPING,
            ..Default::default()
        },
    )
}

async fn dra_node(client: &kube::Client, test: &str, name: &str, machine: &DraGpus) {
    let node = dra::dra_node(name, "gpu", machine.gpus)
        .label("dratest", test)
        .label("dra-plugin", test);
    dra::create_dra_node(client, &node, machine).await.unwrap();
}

async fn slices(client: &kube::Client, node: &str) -> Vec<ResourceSlice> {
    dra::node_slices(client, node).await.unwrap()
}

/// Waits until the node's `gpu.nvidia.com` slices satisfy `ok`, and returns them.
async fn wait_slices(
    client: &kube::Client,
    node: &str,
    what: &str,
    ok: impl Fn(&[ResourceSlice]) -> bool,
) -> Vec<ResourceSlice> {
    wait_for(&format!("{node}: {what}"), TIMEOUT, || async {
        let s = slices(client, node).await;
        ok(&s).then_some(s)
    })
    .await
}

fn device_names(slices: &[ResourceSlice]) -> Vec<String> {
    slices
        .iter()
        .flat_map(|s| s.spec.devices.iter().flatten())
        .map(|d| d.name.clone())
        .collect()
}

/// `(name, generation, resourceSliceCount)` of each slice.
fn pools(slices: &[ResourceSlice]) -> Vec<(String, i64, i64)> {
    slices
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.spec.pool.generation,
                s.spec.pool.resource_slice_count,
            )
        })
        .collect()
}

fn plugin_pods(client: &kube::Client, test: &str) -> Api<Pod> {
    Api::namespaced(client.clone(), &format!("dra-{test}"))
}

async fn plugin_pod_on(client: &kube::Client, test: &str, node: &str) -> Option<Pod> {
    let (key, value) = dra::component_label(dra::CHART);
    plugin_pods(client, test)
        .list(&ListParams::default().labels(&format!("{key}={value}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
}

async fn set_label(client: &kube::Client, node: &str, key: &str, value: Option<&str>) {
    let patch = serde_json::json!({ "metadata": { "labels": { key: value } } });
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn claim_template(client: &kube::Client, ns: &str, name: &str, class: &str) {
    let template: ResourceClaimTemplate = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "spec": { "devices": { "requests": [
            { "name": "gpu", "exactly": { "deviceClassName": class } }
        ] } } }
    }))
    .unwrap();
    Api::<ResourceClaimTemplate>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &template)
        .await
        .unwrap();
}

/// A pod pinned to `node` through the scheduler (a node selector, not nodeName: a claim is
/// allocated while scheduling), with a claim from `template`.
async fn claim_pod(client: &kube::Client, ns: &str, name: &str, node: &str, template: &str) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": node },
            "containers": [{ "name": "cuda", "image": "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0",
                             "resources": { "claims": [{ "name": "gpu" }] } }],
            "resourceClaims": [{ "name": "gpu", "resourceClaimTemplateName": template }],
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn wait_running(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("pod {ns}/{name} to run"), TIMEOUT, || async {
        api.get_opt(name).await.unwrap().filter(running)
    })
    .await
}

/// Waits until the scheduler has found no node for the pod, and returns its message.
async fn wait_unschedulable(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("pod {ns}/{name} to be unschedulable"),
        TIMEOUT,
        || async {
            let pod = api.get_opt(name).await.unwrap()?;
            let conditions = pod.status?.conditions?;
            let scheduled = conditions.into_iter().find(|c| c.type_ == "PodScheduled")?;
            (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable"))
                .then(|| scheduled.message.unwrap_or_default())
        },
    )
    .await
}

/// The device allocated to the pod's claim `gpu`: `(driver, pool, device)`.
async fn allocated(client: &kube::Client, ns: &str, pod: &str) -> (String, String, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let claims: Api<ResourceClaim> = Api::namespaced(client.clone(), ns);
    let pod = pods.get(pod).await.unwrap();
    let claim = pod
        .status
        .and_then(|s| s.resource_claim_statuses)
        .and_then(|s| s.into_iter().find(|c| c.name == "gpu"))
        .and_then(|c| c.resource_claim_name)
        .expect("the pod's claim");
    claim_device(&claims.get(&claim).await.unwrap())
}

fn claim_device(claim: &ResourceClaim) -> (String, String, String) {
    let result = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref())
        .and_then(|r| r.first())
        .expect("an allocated claim");
    (
        result.driver.clone(),
        result.pool.clone(),
        result.device.clone(),
    )
}

fn alloc(pool: &str, device: &str) -> (String, String, String) {
    (dra::DRIVER.into(), pool.into(), device.into())
}

#[tokio::test]
async fn the_scheduler_allocates_claims_from_the_simulated_slices() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let test = "sched";
    let _driver = driver(&client, test).await;
    let driver = &_driver;
    let ns = "dra-sched-work";
    namespace(&client, ns).await;
    let started = Instant::now();
    dra_node(&client, test, "dra-sched-1", &DraGpus::a100_40gb(1)).await;
    dra_node(&client, test, "dra-sched-2", &DraGpus::a100_40gb(2)).await;
    dra_node(&client, test, "dra-sched-3", &DraGpus::h100_80gb(1)).await;
    let mig =
        DraGpus::a100_40gb(1).mig(0, &[MigProfile::a100_3g_20gb(), MigProfile::a100_3g_20gb()]);
    dra_node(&client, test, "dra-sched-mig", &mig).await;
    for node in ["dra-sched-1", "dra-sched-2", "dra-sched-3", "dra-sched-mig"] {
        wait_slices(&client, node, "a published pool", |s| !s.is_empty()).await;
    }
    eprintln!(
        "4 nodes' slices published {:?} after the nodes were created",
        started.elapsed()
    );
    claim_template(&client, ns, "one-gpu", dra::GPU_CLASS).await;
    claim_template(&client, ns, "one-mig", dra::MIG_CLASS).await;

    // The node's only GPU goes to the first pod; a second one finds none.
    let t = Instant::now();
    claim_pod(&client, ns, "a", "dra-sched-1", "one-gpu").await;
    wait_running(&client, ns, "a").await;
    eprintln!("claim allocated and pod running in {:?}", t.elapsed());
    assert_eq!(
        allocated(&client, ns, "a").await,
        alloc("dra-sched-1", "gpu-0")
    );
    claim_pod(&client, ns, "b", "dra-sched-1", "one-gpu").await;
    let message = wait_unschedulable(&client, ns, "b").await;
    eprintln!("second pod: {message}");

    // A NoSchedule taint (critical XID) keeps gpu-0 from new claims; an application XID
    // (effect None, same key: it replaces the first) does not.
    driver.xid("dra-sched-2", "gpu-0", 79).await.unwrap();
    claim_pod(&client, ns, "c", "dra-sched-2", "one-gpu").await;
    wait_running(&client, ns, "c").await;
    assert_eq!(
        allocated(&client, ns, "c").await,
        alloc("dra-sched-2", "gpu-1")
    );
    claim_pod(&client, ns, "d", "dra-sched-2", "one-gpu").await;
    wait_unschedulable(&client, ns, "d").await;
    driver.xid("dra-sched-2", "gpu-0", 43).await.unwrap();
    wait_running(&client, ns, "d").await;
    assert_eq!(
        allocated(&client, ns, "d").await,
        alloc("dra-sched-2", "gpu-0")
    );

    // MIG devices through mig.nvidia.com; the MIG-mode GPU itself is not a `gpu` device.
    claim_pod(&client, ns, "m1", "dra-sched-mig", "one-mig").await;
    claim_pod(&client, ns, "m2", "dra-sched-mig", "one-mig").await;
    wait_running(&client, ns, "m1").await;
    wait_running(&client, ns, "m2").await;
    let mut migs = vec![
        allocated(&client, ns, "m1").await.2,
        allocated(&client, ns, "m2").await.2,
    ];
    migs.sort();
    assert_eq!(migs, ["gpu-0-mig-3g20gb-9-0", "gpu-0-mig-3g20gb-9-4"]);
    claim_pod(&client, ns, "m3", "dra-sched-mig", "one-gpu").await;
    wait_unschedulable(&client, ns, "m3").await;

    // DRAExtendedResource (beta, on in 1.36): `nvidia.com/gpu: 1` on a node without the
    // resource in its allocatable is served by DRA through the class's extendedResourceName.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "e" },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": "dra-sched-3" },
            "containers": [{ "name": "cuda", "image": "nvcr.io/nvidia/k8s/cuda-sample:vectoradd-cuda12.5.0",
                             "resources": { "limits": { "nvidia.com/gpu": "1" } } }],
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let pod = wait_running(&client, ns, "e").await;
    let status = pod
        .status
        .and_then(|s| s.extended_resource_claim_status)
        .expect("the pod's extended-resource claim");
    let claim = Api::<ResourceClaim>::namespaced(client.clone(), ns)
        .get(&status.resource_claim_name)
        .await
        .unwrap();
    let annotations = claim.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get(dra::EXTENDED_RESOURCE_CLAIM_ANNOTATION)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(claim_device(&claim), alloc("dra-sched-3", "gpu-0"));
    let node = Api::<Node>::all(client.clone())
        .get("dra-sched-3")
        .await
        .unwrap();
    assert_eq!(
        nodes::gpu_resources(&node),
        (None, None),
        "no device plugin there"
    );
}

#[tokio::test]
async fn slices_follow_the_kubelet_plugin_pod() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let test = "follow";
    let node = "dra-follow-1";
    // Not selected yet: no plugin, no slices.
    let machine = DraGpus::a100_40gb(2);
    let n = dra::dra_node(node, "gpu", 2).label("dratest", test);
    dra::create_dra_node(&client, &n, &machine).await.unwrap();
    let driver = driver(&client, test).await;
    let created = Instant::now();
    set_label(&client, node, "dra-plugin", Some(test)).await;
    let published = wait_slices(&client, node, "the pool", |s| !s.is_empty()).await;
    eprintln!(
        "slices published {:?} after the node was selected",
        created.elapsed()
    );
    let pod = plugin_pod_on(&client, test, node)
        .await
        .expect("the plugin pod");
    assert!(running(&pod));
    assert_eq!(
        pod.metadata.owner_references.as_ref().unwrap()[0].name,
        dra::daemonset_name(dra::CHART)
    );

    // Exactly as the driver's controller writes it.
    assert_eq!(published.len(), 1);
    let slice = &published[0];
    let name = slice.metadata.name.as_deref().unwrap();
    assert!(
        name.starts_with(&format!("00000-gpu.nvidia.com-{node}-")),
        "{name}"
    );
    assert_eq!(
        name.len(),
        format!("00000-gpu.nvidia.com-{node}-").len() + 5
    );
    assert_eq!(slice.spec.driver, "gpu.nvidia.com");
    assert_eq!(slice.spec.node_name.as_deref(), Some(node));
    assert_eq!(pools(&published), [(name.to_owned(), 1, 1)]);
    assert_eq!(slice.spec.pool.name, node);
    let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
    let node_object = Api::<Node>::all(client.clone()).get(node).await.unwrap();
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", node));
    assert_eq!(Some(&owner.uid), node_object.metadata.uid.as_ref());
    assert_eq!(device_names(&published), ["gpu-0", "gpu-1"]);
    let gpu = &slice.spec.devices.as_ref().unwrap()[1];
    let attrs = gpu.attributes.as_ref().unwrap();
    assert_eq!(attrs["type"].string.as_deref(), Some("gpu"));
    assert_eq!(
        attrs["productName"].string.as_deref(),
        Some("NVIDIA A100-SXM4-40GB")
    );
    assert_eq!(attrs["uuid"].string, Some(dra::gpu_uuid(node, 1)));
    assert_eq!(attrs["driverVersion"].version.as_deref(), Some("550.54.15"));
    assert_eq!(gpu.capacity.as_ref().unwrap()["memory"].value.0, "40Gi");

    // The plugin restarts (its pod deleted, the DaemonSet makes another): the kubelet does not
    // wipe within its delay, and the new plugin finds its slice as it wants it: no write at all.
    let writes_before = driver.writes().len();
    let old = pod.metadata.uid.clone();
    plugin_pods(&client, test)
        .delete(
            pod.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    wait_for("a new plugin pod to run", TIMEOUT, || async {
        plugin_pod_on(&client, test, node)
            .await
            .filter(|p| running(p) && p.metadata.uid != old)
    })
    .await;
    // Past the wiping delay: a wipe would have happened by now.
    tokio::time::sleep(WIPING + Duration::from_secs(1)).await;
    assert_eq!(pools(&slices(&client, node).await), pools(&published));
    assert_eq!(
        driver.writes().len(),
        writes_before,
        "{:?}",
        driver.writes()
    );

    // The DaemonSet no longer selects the node: its pod goes, and the kubelet wipes the slices
    // after its delay.
    let unselected = Instant::now();
    set_label(&client, node, "dra-plugin", None).await;
    wait_for("the plugin pod to go", TIMEOUT, || async {
        plugin_pod_on(&client, test, node)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    wait_slices(&client, node, "no slices", |s| s.is_empty()).await;
    let gone = unselected.elapsed();
    let wipe = driver
        .writes()
        .into_iter()
        .find(|w| w.node == node && w.op == "wipe")
        .expect("a wipe");
    assert!(
        wipe.at >= unselected + WIPING,
        "wiped before the kubelet's delay"
    );
    eprintln!("slices wiped {gone:?} after the node was unselected (delay {WIPING:?})");
}

#[tokio::test]
async fn a_pool_in_parts_and_a_generation_bump() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let test = "parts";
    let node = "dra-parts-1";
    let ns = "dra-parts-work";
    namespace(&client, ns).await;
    claim_template(&client, ns, "one-gpu", dra::GPU_CLASS).await;
    let driver = driver(&client, test).await;
    let machine = DraGpus::a100_40gb(2).slices(2);
    // Simulated, but no plugin pod yet (not labelled for the DaemonSet).
    let n = dra::dra_node(node, "gpu", 2).label("dratest", test);
    dra::create_dra_node(&client, &n, &machine).await.unwrap();
    // The first half only: an incomplete pool, which the scheduler does not allocate from.
    wait_for("the node to be simulated", TIMEOUT, || async {
        driver.publish_limit(node, Some(1)).await.ok()
    })
    .await;
    set_label(&client, node, "dra-plugin", Some(test)).await;
    let half = wait_slices(&client, node, "one slice", |s| !s.is_empty()).await;
    assert_eq!(half.len(), 1);
    assert_eq!(
        (
            half[0].spec.pool.generation,
            half[0].spec.pool.resource_slice_count
        ),
        (1, 2)
    );
    assert_eq!(device_names(&half), ["gpu-0"]);
    claim_pod(&client, ns, "a", node, "one-gpu").await;
    let message = wait_unschedulable(&client, ns, "a").await;
    eprintln!("incomplete pool: {message}");

    // The rest, in the same generation: the pool is complete and the pod runs.
    driver.publish_limit(node, None).await.unwrap();
    let whole = slices(&client, node).await;
    assert_eq!(whole.len(), 2);
    assert!(whole.iter().all(|s| s.spec.pool.generation == 1));
    assert_eq!(whole[0].metadata.name, half[0].metadata.name);
    assert!(
        whole[1]
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("00001-")
    );
    assert_eq!(device_names(&whole), ["gpu-0", "gpu-1"]);
    wait_running(&client, ns, "a").await;

    // A generation bump: the new slices next to the old ones while the plugin is stalled, the
    // old ones gone once it goes on.
    driver.stall(node, true).await.unwrap();
    assert_eq!(driver.bump_generation(node).await.unwrap(), 2);
    let both = slices(&client, node).await;
    let mut generations: Vec<i64> = both.iter().map(|s| s.spec.pool.generation).collect();
    generations.sort();
    assert_eq!(generations, [1, 1, 2, 2]);
    // Pods keep scheduling: the allocator uses the newest generation only.
    claim_pod(&client, ns, "b", node, "one-gpu").await;
    wait_running(&client, ns, "b").await;
    driver.stall(node, false).await.unwrap();
    let after = slices(&client, node).await;
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|s| s.spec.pool.generation == 2),
        "{:?}",
        pools(&after)
    );
    assert_eq!(device_names(&after), ["gpu-0", "gpu-1"]);
}

#[tokio::test]
async fn taints_lost_gpus_restarts_and_other_slices() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let test = "faults";
    let node = "dra-faults-1";
    let driver = driver(&client, test).await;
    dra_node(&client, test, node, &DraGpus::a100_40gb(2)).await;
    let first = wait_slices(&client, node, "the pool", |s| !s.is_empty()).await;
    let name = first[0].metadata.name.clone();

    // GPU lost: every device tainted, in place (same slice, same generation), timeAdded set by
    // the API server.
    driver.gpu_lost(node).await.unwrap();
    let lost = slices(&client, node).await;
    assert_eq!(pools(&lost), pools(&first));
    for device in lost[0].spec.devices.as_ref().unwrap() {
        let taints = device.taints.as_ref().expect("tainted");
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (
                taints[0].key.as_str(),
                taints[0].effect.as_str(),
                taints[0].value.as_deref()
            ),
            (dra::TAINT_GPU_LOST, "NoSchedule", None)
        );
        assert!(taints[0].time_added.is_some());
    }
    driver
        .untaint(node, "gpu-0", dra::TAINT_GPU_LOST)
        .await
        .unwrap();
    let untainted = slices(&client, node).await;
    let devices = untainted[0].spec.devices.as_ref().unwrap();
    assert!(devices[0].taints.is_none());
    assert!(devices[1].taints.is_some());
    driver.remove_gpu(node, 1).await.unwrap();
    let fewer = slices(&client, node).await;
    assert_eq!(device_names(&fewer), ["gpu-0"]);
    assert_eq!(
        (
            fewer[0].metadata.name.clone(),
            fewer[0].spec.pool.generation
        ),
        (name.clone(), 1)
    );

    // Slices the plugin does not own: another driver's on this node and one without nodeName
    // stay; a gpu.nvidia.com slice of this node in another pool is deleted by the plugin.
    let foreign = dra::create_slice(&client, &dra::foreign_slice(node, "gpu.example.com", 1))
        .await
        .unwrap();
    let all_nodes = dra::create_slice(
        &client,
        &dra::slice_without_node(
            "dra-faults-shared",
            &DraGpus::a100_40gb(1),
            ("dratest", test),
        ),
    )
    .await
    .unwrap();
    let mut extra = dra::driver_slice(node, DraGpus::a100_40gb(1).devices(node));
    extra.metadata.name = Some(format!("{node}-extra"));
    extra.spec.pool.name = format!("{node}-extra");
    dra::create_slice(&client, &extra).await.unwrap();
    wait_slices(&client, node, "the other pool's slice deleted", |s| {
        s.iter().all(|s| s.spec.pool.name == node)
    })
    .await;

    // A restart: the machine as NVML shows it again, no taints, the same slice updated in place.
    let pod = plugin_pod_on(&client, test, node).await.unwrap();
    plugin_pods(&client, test)
        .delete(
            pod.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    let restarted = wait_slices(&client, node, "both GPUs back", |s| {
        device_names(s) == ["gpu-0", "gpu-1"]
    })
    .await;
    assert_eq!(
        (
            restarted[0].metadata.name.clone(),
            restarted[0].spec.pool.generation
        ),
        (name, 1)
    );
    assert!(
        restarted[0]
            .spec
            .devices
            .iter()
            .flatten()
            .all(|d| d.taints.is_none())
    );

    // Unselected: the kubelet wipes the node's gpu.nvidia.com slices only.
    set_label(&client, node, "dra-plugin", None).await;
    wait_slices(&client, node, "wiped", |s| s.is_empty()).await;
    let api: Api<ResourceSlice> = Api::all(client.clone());
    for slice in [&foreign, &all_nodes] {
        let name = slice.metadata.name.as_deref().unwrap();
        assert!(api.get_opt(name).await.unwrap().is_some(), "{name} kept");
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }

    // A slice with attributes missing, on a node no plugin runs on: left as it is.
    let bare = dra::without_attributes(
        dra::driver_slice(node, DraGpus::a100_40gb(1).devices(node)),
        &["type", "productName"],
    );
    let bare = dra::create_slice(&client, &bare).await.unwrap();
    let attrs = bare.spec.devices.as_ref().unwrap()[0]
        .attributes
        .clone()
        .unwrap();
    assert!(!attrs.contains_key("type") && !attrs.contains_key("productName"));
    assert!(attrs.contains_key("uuid"));
}

//! `testenv::simulate::PluginGpus`: on kwok nodes that opt in, `nvidia.com/gpu` follows the
//! device-plugin pod running there, as the real kubelet's device manager shows it.
//!
//! A plane of this test binary's own; each test simulates its own nodes (label `pgtest=<test>`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use testenv::nodes::{self, GpuNode};
use testenv::simulate::{PluginGpus, PluginGpusOptions};
use testenv::{ControlPlane, DEVICE_PLUGIN_POD_LABEL, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);
const IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.0";
const BROKEN_IMAGE: &str = "nvcr.io/nvidia/k8s-device-plugin:v0.18.2-broken";

type Gpus = (Option<u32>, Option<u32>);

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn ready_node(client: &kube::Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    wait_for(&format!("node {name} to become Ready"), TIMEOUT, || async {
        api.get_opt(name).await.unwrap().filter(nodes::is_ready)
    })
    .await
}

async fn gpus(client: &kube::Client, node: &str) -> Gpus {
    nodes::gpu_resources(&Api::<Node>::all(client.clone()).get(node).await.unwrap())
}

async fn wait_gpus(client: &kube::Client, node: &str, want: (u32, u32)) {
    let want = (Some(want.0), Some(want.1));
    wait_for(
        &format!("{node} to show nvidia.com/gpu {want:?}"),
        TIMEOUT,
        || async { (gpus(client, node).await == want).then_some(()) },
    )
    .await
}

fn pod_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The Ready, not terminating plugin pod on `node` other than `not` (a uid).
async fn running_plugin_pod(
    client: &kube::Client,
    namespace: &str,
    node: &str,
    not: Option<&str>,
) -> Pod {
    let (key, value) = DEVICE_PLUGIN_POD_LABEL;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("a new plugin pod to run on {node}"),
        TIMEOUT,
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("{key}={value}")))
                .await
                .unwrap();
            list.items.into_iter().find(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && pod_ready(p)
                    && p.metadata.uid.as_deref() != not
            })
        },
    )
    .await
}

/// Every `nvidia.com/gpu` value the node showed (consecutive repeats merged), from a watch: no
/// version the API server served is missed between polls.
fn record_gpus(client: &kube::Client, node: &str) -> Arc<Mutex<Vec<Gpus>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let mut stream = watcher(Api::<Node>::all(client.clone()), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            if let Ok(node) = event {
                let gpus = nodes::gpu_resources(&node);
                let mut out = out.lock().unwrap();
                if out.last() != Some(&gpus) {
                    out.push(gpus);
                }
            }
        }
    });
    seen
}

fn plugin_daemonset(selector: (&str, &str), image: &str) -> DaemonSet {
    let (key, value) = DEVICE_PLUGIN_POD_LABEL;
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": "nvidia-device-plugin-daemonset" },
        "spec": {
            "selector": { "matchLabels": { key: value } },
            "template": {
                "metadata": { "labels": { key: value } },
                "spec": {
                    "nodeSelector": { selector.0: selector.1 },
                    "containers": [{ "name": "nvidia-device-plugin-ctr", "image": image }]
                }
            }
        }
    }))
    .unwrap()
}

fn plugin_pod(name: &str, node: &str, image: &str) -> Pod {
    let (key, value) = DEVICE_PLUGIN_POD_LABEL;
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { key: value } },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "nvidia-device-plugin-ctr", "image": image }]
        }
    }))
    .unwrap()
}

fn ready_heartbeat(node: &Node) -> Option<String> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(ready.last_heartbeat_time.as_ref()?.0.to_string())
}

/// A node that opts in has no GPUs until the DaemonSet's plugin pod runs there; then N; the pod
/// deleted: allocatable 0, capacity kept, until the DaemonSet's new pod registers; kwok's
/// heartbeat keeps it; a broken image registers 0; nodes that do not opt in are never touched.
#[tokio::test]
async fn gpus_follow_the_plugin_daemonset() {
    let started = Instant::now();
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = "pg-follow";
    namespace(&client, ns).await;
    let (a, plain, none) = ("pg-follow-a", "pg-follow-plain", "pg-follow-none");
    for node in [
        GpuNode::aks(a, "pgfollow").gpus(4).gpus_follow_plugin(),
        GpuNode::aks(plain, "pgfollow").gpus(2),
        GpuNode::aks(none, "pgfollow").gpus(2).no_gpus_yet(),
    ] {
        let created = nodes::create_node(&client, &node.label("pgtest", "follow"))
            .await
            .unwrap();
        if created.metadata.name.as_deref() == Some(a) {
            assert_eq!(nodes::gpu_resources(&created), (None, None));
        }
    }
    let history = record_gpus(&client, a);
    let simulation = PluginGpus::spawn_selecting(client.clone(), "pgtest=follow");
    for node in [a, plain, none] {
        ready_node(&client, node).await;
    }
    assert_eq!(gpus(&client, a).await, (None, None));

    // The plugin DaemonSet: its pod runs on all three nodes; only `a` follows it.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    daemonsets
        .create(
            &PostParams::default(),
            &plugin_daemonset(("pgtest", "follow"), IMAGE),
        )
        .await
        .unwrap();
    let first = running_plugin_pod(&client, ns, a, None).await;
    let pod_running = Instant::now();
    wait_gpus(&client, a, (4, 4)).await;
    eprintln!(
        "GPUs shown {:?} after the test saw the plugin pod Ready",
        pod_running.elapsed()
    );
    let registrations = simulation.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    assert_eq!(
        registrations[0].pod,
        format!("{ns}/{}", first.metadata.name.clone().unwrap())
    );
    assert_eq!(
        (registrations[0].capacity, registrations[0].allocatable),
        (4, 4)
    );

    // kwok's node status heartbeat keeps it, and nothing is written again for it.
    let api: Api<Node> = Api::all(client.clone());
    let before = ready_heartbeat(&api.get(a).await.unwrap());
    let writes = simulation.writes().len();
    let beaten = wait_for(
        "kwok's next node status heartbeat",
        Duration::from_millis(testenv::NODE_STATUS_HEARTBEAT_MS * 3),
        || async {
            let node = api.get(a).await.unwrap();
            (ready_heartbeat(&node) != before).then_some(node)
        },
    )
    .await;
    assert_eq!(nodes::gpu_resources(&beaten), (Some(4), Some(4)));
    assert_eq!(
        simulation.writes().len(),
        writes,
        "{:?}",
        simulation.writes()
    );

    // The plugin pod deleted: allocatable 0, capacity kept; the DaemonSet's new pod: 4 again.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first_name = first.metadata.name.clone().unwrap();
    pods.delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    wait_gpus(&client, a, (4, 0)).await;
    eprintln!("allocatable 0 {:?} after the delete", deleted.elapsed());
    let second = running_plugin_pod(&client, ns, a, first.metadata.uid.as_deref()).await;
    wait_gpus(&client, a, (4, 4)).await;
    eprintln!(
        "the DaemonSet's new pod's GPUs shown {:?} after the delete",
        deleted.elapsed()
    );

    // A plugin update whose image starts but registers no GPU (NVIDIA k8s-device-plugin #1645).
    let image = serde_json::json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "nvidia-device-plugin-ctr", "image": BROKEN_IMAGE }
    ]}}}});
    daemonsets
        .patch(
            "nvidia-device-plugin-daemonset",
            &PatchParams::default(),
            &Patch::Strategic(&image),
        )
        .await
        .unwrap();
    let broken = running_plugin_pod(&client, ns, a, second.metadata.uid.as_deref()).await;
    let broken_name = format!("{ns}/{}", broken.metadata.name.clone().unwrap());
    let registration = wait_for("the broken plugin's registration", TIMEOUT, || async {
        simulation
            .registrations()
            .into_iter()
            .find(|r| r.pod == broken_name)
    })
    .await;
    assert_eq!((registration.capacity, registration.allocatable), (4, 0));
    wait_gpus(&client, a, (4, 0)).await;
    let last = simulation.writes().last().cloned().unwrap();
    assert_eq!((last.capacity, last.allocatable), (4, 0), "{last:?}");

    // Back to the working image: 4 again.
    let image = serde_json::json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "nvidia-device-plugin-ctr", "image": IMAGE }
    ]}}}});
    daemonsets
        .patch(
            "nvidia-device-plugin-daemonset",
            &PatchParams::default(),
            &Patch::Strategic(&image),
        )
        .await
        .unwrap();
    running_plugin_pod(&client, ns, a, broken.metadata.uid.as_deref()).await;
    wait_gpus(&client, a, (4, 4)).await;

    // Every value the node showed, in order: none until the first plugin, no flapping.
    let shown = history.lock().unwrap().clone();
    let (n, z) = ((Some(4), Some(4)), (Some(4), Some(0)));
    assert_eq!(shown, [(None, None), n, z, n, z, n], "{shown:?}");
    // Only the node that opted in was written; the others kept what they had, although the
    // plugin pods on them came and went too.
    let writes = simulation.writes();
    assert!(writes.iter().all(|w| w.node == a), "{writes:?}");
    assert_eq!(gpus(&client, plain).await, (Some(2), Some(2)));
    assert_eq!(gpus(&client, none).await, (None, None));
    assert!(simulation.two_plugins().is_empty());
    simulation.stop().await;
    eprintln!("test took {:?}", started.elapsed());
}

/// Two plugin pods on one node at once are recorded, and the later one's registration wins.
#[tokio::test]
async fn two_plugin_pods_on_one_node_are_recorded() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = "pg-two";
    namespace(&client, ns).await;
    let node = "pg-two-a";
    nodes::create_node(
        &client,
        &GpuNode::aks(node, "pgtwo")
            .gpus(2)
            .gpus_follow_plugin()
            .label("pgtest", "two"),
    )
    .await
    .unwrap();
    let simulation = PluginGpus::spawn_selecting(client.clone(), "pgtest=two");
    ready_node(&client, node).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &plugin_pod("first", node, IMAGE))
        .await
        .unwrap();
    wait_gpus(&client, node, (2, 2)).await;
    assert!(simulation.two_plugins().is_empty());

    pods.create(
        &PostParams::default(),
        &plugin_pod("second", node, BROKEN_IMAGE),
    )
    .await
    .unwrap();
    let two = wait_for("two plugins to be recorded", TIMEOUT, || async {
        simulation.two_plugins().pop()
    })
    .await;
    assert_eq!(two.node, node);
    assert_eq!(two.pods, [format!("{ns}/first"), format!("{ns}/second")]);
    wait_gpus(&client, node, (2, 0)).await;
    let registered: Vec<_> = simulation
        .registrations()
        .into_iter()
        .map(|r| (r.pod, r.allocatable))
        .collect();
    assert_eq!(
        registered,
        [(format!("{ns}/first"), 2), (format!("{ns}/second"), 0)]
    );

    for name in ["first", "second"] {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for("both plugin pods to be gone", TIMEOUT, || async {
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(gpus(&client, node).await, (Some(2), Some(0)));
    assert_eq!(simulation.two_plugins().len(), 1);
    assert!(simulation.writes().iter().all(|w| w.node == node));
}

/// With no plugin for the capacity grace (5 minutes on a real kubelet, 2 s here), the resource
/// stays listed with capacity 0.
#[tokio::test]
async fn a_stopped_plugins_capacity_goes_after_the_grace() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = "pg-grace";
    namespace(&client, ns).await;
    let node = "pg-grace-a";
    nodes::create_node(
        &client,
        &GpuNode::aks(node, "pggrace")
            .gpus_follow_plugin()
            .label("pgtest", "grace"),
    )
    .await
    .unwrap();
    let grace = Duration::from_secs(2);
    let simulation = PluginGpus::spawn_with(
        client.clone(),
        PluginGpusOptions {
            node_selector: "pgtest=grace".into(),
            capacity_grace: grace,
            ..Default::default()
        },
    );
    ready_node(&client, node).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &plugin_pod("plugin", node, IMAGE))
        .await
        .unwrap();
    wait_gpus(&client, node, (1, 1)).await;
    pods.delete("plugin", &DeleteParams::default())
        .await
        .unwrap();
    wait_gpus(&client, node, (1, 0)).await;
    let stopped = Instant::now();
    wait_gpus(&client, node, (0, 0)).await;
    assert!(stopped.elapsed() >= grace - Duration::from_millis(500));
    let writes: Vec<_> = simulation
        .writes()
        .into_iter()
        .map(|w| (w.node, w.capacity, w.allocatable))
        .collect();
    let node = node.to_owned();
    assert_eq!(
        writes,
        [(node.clone(), 1, 1), (node.clone(), 1, 0), (node, 0, 0)]
    );
}

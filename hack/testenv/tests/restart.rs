//! A plane of its own: restart of kube-apiserver + etcd keeps data and the rest of the plane
//! recovers; dropping the plane stops everything.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use testenv::nodes::{self, GpuNode};
use testenv::{ControlPlane, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn restart_apiserver_keeps_data_and_drop_stops_everything() {
    let started = Instant::now();
    let plane = ControlPlane::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane started in {:?}", started.elapsed());
    let client = plane.client().await;

    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "survivor" }, "data": { "k": "v" }
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    let restarted = Instant::now();
    plane
        .restart_apiserver()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", plane.logs_tail(20)));
    eprintln!("apiserver restarted in {:?}", restarted.elapsed());
    let url = plane.server_url().to_owned();

    // A new client after the restart; the old one would reconnect too, but needn't be tested here.
    let client = plane.client().await;
    let got = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .get("survivor")
        .await
        .unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");

    // The controller-manager, scheduler and kwok reconnect: a pod gets scheduled and runs.
    nodes::create_node(&client, &GpuNode::aks("r-gpu", "gpu"))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "after-restart" },
        "spec": { "containers": [{ "name": "c", "image": "example.invalid/c:1" }] }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let running = Instant::now();
    wait_for("the pod to run after the restart", TIMEOUT, || async {
        let p = pods.get("after-restart").await.unwrap();
        (p.status.and_then(|s| s.phase).as_deref() == Some("Running")).then_some(())
    })
    .await;
    eprintln!("pod running after {:?}", running.elapsed());

    // etcd's JSON gateway answers through testenv::http: the revision is read, then compacted.
    assert!(plane.compact_etcd().await.unwrap() > 1);

    let dir = plane.dir().to_path_buf();
    let stopping = Instant::now();
    drop(plane);
    eprintln!("control plane stopped in {:?}", stopping.elapsed());
    let addr = url.trim_start_matches("https://").to_owned();
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "the API server still listens on {addr} after drop"
    );
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

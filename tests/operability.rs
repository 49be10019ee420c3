//! Operability on a real control plane: metrics and health endpoints, Kubernetes Events, leader
//! election with two replicas (failover on SIGKILL, hand-over on SIGTERM) and graceful shutdown.
//! Each test runs its own operator processes; a lock keeps them from overlapping on the shared plane.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use support::*;
use testenv::nodes::{GpuNode, create_node, set_gpus};
use testenv::{ChildProcess, ControlPlane, free_port, wait_for};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LEASE_NS: &str = "gpupool-system";

async fn plane() -> &'static ControlPlane {
    let plane = ControlPlane::shared().await;
    install_crd(plane).await;
    let client = plane.client().await;
    for ns in [PLUGIN_NAMESPACE, LEASE_NS] {
        let body: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        match Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &body)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("namespace {ns}: {e}"),
        }
    }
    plane
}

/// GET on the operator's endpoint: (status code, body), None while it does not answer.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    testenv::http::get(&format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()
}

/// The value of one sample line of the Prometheus text, e.g. `gpupool_pool_nodes{pool="x"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The replica's `gpupool_leader`, None while it does not answer.
async fn leader_gauge(port: u16) -> Option<f64> {
    let (_, text) = http_get(port, "/metrics").await?;
    sample(&text, "gpupool_leader")
}

fn operator(plane: &ControlPlane, name: &str, port: u16, leader_elect: bool) -> ChildProcess {
    let port = format!("127.0.0.1:{port}");
    let mut args = vec!["--metrics-addr", port.as_str()];
    if leader_elect {
        args.extend([
            "--leader-elect",
            "--lease-namespace",
            LEASE_NS,
            "--lease-name",
            "gpupool-test",
            "--lease-duration",
            "6s",
        ]);
    }
    start_operator(plane, plane.kubeconfig_path().to_path_buf(), name, &args)
}

async fn lease_holder(env: &Env) -> Option<String> {
    Api::<Lease>::namespaced(env.client.clone(), LEASE_NS)
        .get_opt("gpupool-test")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn metrics_health_and_events_tell_the_truth() {
    let _serial = SERIAL.lock().await;
    let plane = plane().await;
    let env = Env {
        plane,
        client: plane.client().await,
    };
    let c = &env.client;
    let port = free_port().unwrap();
    let mut op = operator(plane, "op-metrics", port, false);

    wait_for("/healthz and /readyz to answer 200", TIMEOUT, || async {
        let health = http_get(port, "/healthz").await?;
        let ready = http_get(port, "/readyz").await?;
        (health.0 == 200 && ready.0 == 200).then_some(())
    })
    .await;

    create_node(c, &GpuNode::aks("metrics-gpu-0", "metricspool").gpus(4))
        .await
        .unwrap();
    create_node(
        c,
        &GpuNode::aks("metrics-gpu-1", "metricspool")
            .gpus(4)
            .no_gpus_yet(),
    )
    .await
    .unwrap();
    create_pool(c, PoolYaml::new("metrics").agentpool("metricspool")).await;
    wait_condition(&env, "metrics", "GpusSchedulable", "False", None).await;
    set_gpus(c, "metrics-gpu-1", 4, 4).await.unwrap();
    wait_condition(&env, "metrics", "Ready", "True", None).await;

    let text = wait_for("per-pool gauges to show the pool", TIMEOUT, || async {
        let (_, text) = http_get(port, "/metrics").await?;
        (sample(&text, r#"gpupool_pool_gpus_allocatable{pool="metrics"}"#) == Some(8.0))
            .then_some(text)
    })
    .await;
    for (gauge, value) in [
        ("gpupool_pool_nodes", 2.0),
        ("gpupool_pool_nodes_with_gpus", 2.0),
        ("gpupool_pool_gpus_capacity", 8.0),
        ("gpupool_pool_ready", 1.0),
        ("gpupool_pool_plugin_managed", 1.0),
    ] {
        let series = format!(r#"{gauge}{{pool="metrics"}}"#);
        assert_eq!(sample(&text, &series), Some(value), "{series}");
    }
    assert_eq!(
        sample(&text, "gpupool_leader"),
        Some(1.0),
        "without leader election the replica leads"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0),
        "{text}"
    );
    let successes = sample(
        &text,
        r#"controller_runtime_reconcile_total{controller="gpupool",result="success"}"#,
    )
    .unwrap_or(0.0);
    assert!(successes >= 1.0, "{text}");
    assert!(
        sample(
            &text,
            r#"controller_runtime_reconcile_time_seconds_count{controller="gpupool"}"#
        )
        .unwrap_or(0.0)
            >= successes
    );
    // metrics-gpu-1 waited for its GPUs; metrics-gpu-0 may count too (a few ms): the harness
    // creates a node, then writes its status, and the pool's first reconcile can see the node
    // in between when the node watch is behind the pool watch.
    assert!(
        sample(&text, "gpupool_node_gpu_wait_seconds_count")
            .is_some_and(|n| (1.0..=2.0).contains(&n)),
        "metrics-gpu-1 waited for its GPUs:\n{text}"
    );

    // Events an admin sees in `kubectl describe gpupool`.
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let reasons = wait_for("events for the pool", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("metrics"))
            .filter_map(|e| e.reason.clone())
            .collect();
        (reasons.contains(&"DaemonSetCreated".to_string())
            && reasons.contains(&"Ready".to_string()))
        .then_some(reasons)
    })
    .await;
    assert!(
        !reasons.contains(&"NotReady".to_string()),
        "a new pool waiting for GPUs is not a NotReady flip: {reasons:?}"
    );
    let out = plane
        .kubectl()
        .args(["describe", "gpupool", "metrics"])
        .output()
        .unwrap();
    let describe = String::from_utf8_lossy(&out.stdout);
    assert!(describe.contains("DaemonSetCreated"), "{describe}");

    // A deleted pool's series disappear.
    Api::<gpupool::api::GpuPool>::all(c.clone())
        .delete("metrics", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "the deleted pool's series to disappear",
        TIMEOUT,
        || async {
            let (_, text) = http_get(port, "/metrics").await?;
            (!text.contains(r#"pool="metrics""#)).then_some(())
        },
    )
    .await;
    assert!(op.try_wait().is_none(), "the operator is still running");
}

/// Both replicas are ready, only the leader writes, a SIGKILLed leader is replaced within the
/// lease duration, and a SIGTERMed leader hands over at once and exits 0.
#[tokio::test]
async fn two_replicas_elect_one_writer_and_fail_over() {
    let _serial = SERIAL.lock().await;
    let plane = plane().await;
    let env = Env {
        plane,
        client: plane.client().await,
    };
    let c = &env.client;
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let mut a = operator(plane, "op-a", port_a, true);
    let holder = wait_for("a leader", TIMEOUT, || lease_holder(&env)).await;
    assert_eq!(holder, "op-a");
    let mut b = operator(plane, "op-b", port_b, true);
    wait_for("both replicas ready", TIMEOUT, || async {
        let a = http_get(port_a, "/readyz").await?;
        let b = http_get(port_b, "/readyz").await?;
        (a.0 == 200 && b.0 == 200).then_some(())
    })
    .await;

    // gpupool_leader (what the GpuPoolOperatorNoLeader alert sums): 1 on the leader, 0 on the
    // standby.
    wait_for("gpupool_leader 1 on op-a, 0 on op-b", TIMEOUT, || async {
        let a = leader_gauge(port_a).await?;
        let b = leader_gauge(port_b).await?;
        (a == 1.0 && b == 0.0).then_some(())
    })
    .await;

    create_node(c, &GpuNode::aks("le-gpu-0", "lepool"))
        .await
        .unwrap();
    create_pool(c, PoolYaml::new("le").agentpool("lepool")).await;
    wait_condition(&env, "le", "Ready", "True", None).await;
    assert!(
        b.log_tail(200).lines().all(|l| !l.contains("reconciled")),
        "the standby must not reconcile:\n{}",
        b.log_tail(50)
    );
    assert!(
        a.log_tail(400).contains("pool=le"),
        "the leader reconciled the pool"
    );

    // SIGKILL: no release; the standby takes over when the lease expires (6 s).
    let killed_at = Instant::now();
    a.kill();
    let holder = wait_for("op-b to take over", Duration::from_secs(30), || async {
        lease_holder(&env).await.filter(|h| h == "op-b")
    })
    .await;
    let took = killed_at.elapsed();
    assert_eq!(holder, "op-b");
    assert!(
        took < Duration::from_secs(6 + 6),
        "takeover took {took:?}, lease duration is 6s"
    );
    wait_for(
        "gpupool_leader 1 on op-b once it leads",
        TIMEOUT,
        || async { (leader_gauge(port_b).await? == 1.0).then_some(()) },
    )
    .await;
    set_gpus(c, "le-gpu-0", 2, 2).await.unwrap();
    wait_pool(&env, "le", "new leader reconciles", |p| {
        p.status.as_ref().is_some_and(|s| s.gpus_allocatable == 2)
    })
    .await;

    // SIGTERM: the leader finishes, releases the lease and exits 0; a fresh standby takes over
    // well before the lease would have expired.
    let port_c = free_port().unwrap();
    let c2 = operator(plane, "op-c", port_c, true);
    wait_for("op-c up as standby", TIMEOUT, || async {
        c2.log_tail(50)
            .contains("waiting for leadership")
            .then_some(())
    })
    .await;
    assert_eq!(leader_gauge(port_c).await, Some(0.0), "op-c stands by");
    let termed_at = Instant::now();
    let status = b.stop(Duration::from_secs(25)).await.expect("op-b exits");
    assert!(
        status.success(),
        "SIGTERM ends the operator with exit code 0, got {status:?}\n{}",
        b.log_tail(30)
    );
    assert!(
        b.log_tail(30).contains("released the leader Lease"),
        "{}",
        b.log_tail(30)
    );
    wait_for("op-c to take over", Duration::from_secs(30), || async {
        lease_holder(&env).await.filter(|h| h == "op-c")
    })
    .await;
    assert!(
        termed_at.elapsed() < Duration::from_secs(6),
        "hand-over after SIGTERM took {:?}",
        termed_at.elapsed()
    );
    wait_for(
        "gpupool_leader 1 on op-c once it leads",
        TIMEOUT,
        || async { (leader_gauge(port_c).await? == 1.0).then_some(()) },
    )
    .await;
    set_gpus(c, "le-gpu-0", 3, 3).await.unwrap();
    wait_pool(&env, "le", "op-c reconciles", |p| {
        p.status.as_ref().is_some_and(|s| s.gpus_allocatable == 3)
    })
    .await;
    Api::<gpupool::api::GpuPool>::all(c.clone())
        .delete("le", &DeleteParams::default())
        .await
        .unwrap();
}

/// An endpoint address already in use stops the operator at once with an error that names it,
/// instead of leaving it running without metrics and probes (a liveness probe would restart it
/// with nothing in its log to say why).
#[tokio::test]
async fn a_metrics_address_in_use_stops_the_operator_with_a_clear_error() {
    let plane = plane().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut op = operator(plane, "op-port-taken", port, false);
    let status = wait_for("the operator to exit", Duration::from_secs(30), || {
        let exited = op.try_wait();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "it exited successfully");
    let log = op.log_tail(20);
    assert!(
        log.contains(&format!("cannot listen on --metrics-addr 127.0.0.1:{port}")),
        "{log}"
    );
    drop(taken);
}

//! Faults at the API server: 429s from API Priority and Fairness, admission refusals, RBAC taken
//! away, stalled and cut connections (a TCP proxy between the operator and the API server). Each
//! test starts a plane of its own (they reconfigure the API server's flow control, admission or
//! RBAC, or run replicas that must not meet another test's operator).

mod support;

use std::time::{Duration, Instant, SystemTime};

use gpupool::api::GpuPool;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use support::proxy::{Flow, TcpProxy};
use support::replicas::{account_user, admin_accounts, audit_flushed, lease_holder, own_plane};
use support::*;
use testenv::nodes::{GpuNode, create_node, set_gpus};
use testenv::{ControlPlane, Options};

/// Lease timings of the replicas here: 6 s leases, renewed 2 s before they end, fenced 1 s
/// before (the renew deadline is the lease duration minus half the renewal margin).
const LEASE: Duration = Duration::from_secs(6);
const RENEW_DEADLINE: Duration = Duration::from_secs(5);
const SHUTDOWN: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(120);

fn replica_args(image: &str) -> Vec<String> {
    [
        "--leader-elect",
        "--lease-namespace",
        "gpupool-system",
        "--lease-duration",
        "6s",
        "--shutdown-timeout",
        "3s",
        "--default-plugin-image",
        image,
    ]
    .map(String::from)
    .to_vec()
}

fn start_replica(
    plane: &ControlPlane,
    name: &str,
    kubeconfig: &std::path::Path,
    image: &str,
) -> testenv::ChildProcess {
    let args = replica_args(image);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_operator(plane, kubeconfig.to_path_buf(), name, &args)
}

async fn plugin_image(client: &Client, pool: &str) -> Option<String> {
    let ds = Api::<DaemonSet>::namespaced(client.clone(), PLUGIN_NAMESPACE)
        .get_opt(&plugin_name(pool))
        .await
        .ok()
        .flatten()?;
    ds.spec?.template.spec?.containers.first()?.image.clone()
}

async fn wait_ready(client: &Client, pool: &str) {
    let pools: Api<GpuPool> = Api::all(client.clone());
    testenv::wait_for(&format!("pool {pool} Ready"), CONVERGE, || async {
        let pool = pools.get(pool).await.ok()?;
        condition(&pool, "Ready")
            .is_some_and(|c| c.status == "True")
            .then_some(())
    })
    .await;
}

/// API Priority and Fairness rejecting every write of `sa` with 429 at once: a flow schema that
/// puts the account's writes (ahead of every built-in schema) on a priority level with no seats
/// of its own and none to borrow. A level with no seats still runs a request when it runs
/// nothing else, so the level is kept busy: the account also creates ConfigMaps in a namespace
/// whose validating webhook never answers (a socket that accepts and stays silent), each create
/// holding its seat for the webhook's 30 s timeout. Dropping the returned guard ends it all.
async fn reject_writes_of(plane: &ControlPlane, client: &Client, sa: &str) -> WriteBlock {
    let level: PriorityLevelConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{sa}-starved")},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 0,
            "lendablePercent": 0,
            "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}
        }}
    }))
    .unwrap();
    Api::<PriorityLevelConfiguration>::all(client.clone())
        .create(&PostParams::default(), &level)
        .await
        .unwrap();
    let schema: FlowSchema = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{sa}-writes")},
        "spec": {
            "priorityLevelConfiguration": {"name": format!("{sa}-starved")},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"name": sa, "namespace": "gpupool-system"}}],
                "resourceRules": [{
                    "verbs": ["create", "update", "patch", "delete"],
                    "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"]
                }]
            }]
        }
    }))
    .unwrap();
    Api::<FlowSchema>::all(client.clone())
        .create(&PostParams::default(), &schema)
        .await
        .unwrap();
    let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = silent.local_addr().unwrap().port();
    let listener = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    support::replicas::create_namespace(client, "hog").await;
    let ca = std::fs::read(plane.dir().join("pki/ca.crt")).expect("the plane's CA");
    let webhook: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "silent"},
        "webhooks": [{
            "name": "silent.gpupool.test",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/"), "caBundle": base64_of(&ca)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hog"}},
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 30
        }]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &webhook)
        .await
        .unwrap();
    let account = plane
        .kubeconfig_for_service_account("gpupool-system", sa)
        .await
        .unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&account).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    config.default_retry = false;
    let as_sa = Client::try_from(config).unwrap();
    let hogs = tokio::spawn(async move {
        let api: Api<ConfigMap> = Api::namespaced(as_sa, "hog");
        for i in 0.. {
            let api = api.clone();
            tokio::spawn(async move {
                let cm: ConfigMap = serde_json::from_value(
                    serde_json::json!({"metadata": {"name": format!("hog-{i}")}}),
                )
                .unwrap();
                let _ = api.create(&PostParams::default(), &cm).await;
            });
            // Refused at once while one waits; the next takes the seat within 200 ms of its end.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    WriteBlock {
        client: client.clone(),
        sa: sa.to_string(),
        tasks: vec![listener, hogs],
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// What `reject_writes_of` set up; `allow` takes it away.
struct WriteBlock {
    client: Client,
    sa: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteBlock {
    async fn allow(self) {
        Api::<FlowSchema>::all(self.client.clone())
            .delete(&format!("{}-writes", self.sa), &DeleteParams::default())
            .await
            .unwrap();
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .delete("silent", &DeleteParams::default())
            .await
            .unwrap();
        for task in self.tasks {
            task.abort();
        }
    }
}

/// The leader's own writes are refused with 429 (its Lease renewals too, so another replica
/// takes over), then let through again. kube's client would retry a refused write inside the
/// request for minutes; here nothing the old leader sends lands after its renew deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_refused_with_429s_writes_nothing_after_its_renew_deadline() {
    let (plane, c) = own_plane(Options {
        // The test planes turn flow control off (tests measure the operator, not throttling).
        apiserver_args: vec!["--enable-priority-and-fairness=true".into()],
        ..Options::default()
    })
    .await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op-a", "op-b"]).await;
    create_node(&c, &GpuNode::aks("apf-gpu-0", "apfpool"))
        .await
        .unwrap();
    let mut a = start_replica(
        &plane,
        "op-a",
        &kubeconfigs[0],
        "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
    );
    testenv::wait_for("op-a to lead", CONVERGE, || async {
        lease_holder(&c).await.filter(|h| h == "op-a")
    })
    .await;
    let mut b = start_replica(
        &plane,
        "op-b",
        &kubeconfigs[1],
        "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
    );
    create_pool(&c, PoolYaml::new("apf").agentpool("apfpool")).await;
    testenv::wait_for("op-a's plugin", CONVERGE, || async {
        plugin_image(&c, "apf")
            .await
            .filter(|i| i.ends_with("v0.17.0"))
    })
    .await;

    let blocked = SystemTime::now();
    let block = reject_writes_of(&plane, &c, "op-a").await;
    // A GPU falls off: op-a wants to write the pool's status, and is refused.
    set_gpus(&c, "apf-gpu-0", 1, 0).await.unwrap();
    testenv::wait_for("op-b to take over", CONVERGE, || async {
        lease_holder(&c).await.filter(|h| h == "op-b")
    })
    .await;
    let refused: Vec<_> = testenv::audit::requests(&plane.audit_log_path(), &account_user("op-a"))
        .into_iter()
        .filter(|r| r.code == Some(429) && r.resource != "leases")
        .collect();
    assert!(
        !refused.is_empty(),
        "op-a never had a write refused with 429, so nothing was tested:\n{}",
        a.log_tail(40)
    );
    block.allow().await;
    // Long enough for a write kube's client kept retrying inside the request (its backoff
    // doubles, at least the 1 s APF asks for, 15 times: minutes in all) to get through now that
    // the API server takes it.
    let allowed = SystemTime::now();
    testenv::wait_for("op-b's plugin", CONVERGE, || async {
        plugin_image(&c, "apf")
            .await
            .filter(|i| i.ends_with("v0.18.0"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    audit_flushed(&plane, &c).await;

    let requests = testenv::audit::requests(&plane.audit_log_path(), &account_user("op-a"));
    for r in requests
        .iter()
        .filter(|r| r.is_write() && r.received >= blocked)
    {
        eprintln!(
            "op-a after the block: {} {} {:?}",
            r.verb, r.resource, r.code
        );
    }
    let renewals = |sa: &str| -> Vec<SystemTime> {
        testenv::audit::requests(&plane.audit_log_path(), &account_user(sa))
            .into_iter()
            .filter(|r| r.resource == "leases" && r.is_write() && r.code.is_some_and(|c| c < 300))
            .map(|r| r.received)
            .collect()
    };
    let b_leads = renewals("op-b")
        .into_iter()
        .min()
        .expect("op-b wrote the Lease when it took over");
    let a_renewals = renewals("op-a");
    let a_last = a_renewals
        .iter()
        .filter(|t| **t < b_leads)
        .max()
        .copied()
        .expect("op-a renewed its Lease while it led");
    let retaken: Vec<_> = a_renewals.iter().filter(|t| **t > b_leads).collect();
    assert!(
        retaken.is_empty(),
        "op-a wrote the Lease after op-b took it (at {b_leads:?}): {retaken:?}"
    );
    let late: Vec<_> = requests
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .filter(|r| r.code.is_some_and(|c| c < 300))
        .filter(|r| r.received > a_last + RENEW_DEADLINE)
        .collect();
    assert!(
        late.is_empty(),
        "op-a's writes landed after its renew deadline ({a_last:?} + {RENEW_DEADLINE:?}; writes allowed again at {allowed:?}): {late:#?}\n{}",
        a.log_tail(60)
    );
    assert!(
        a.try_wait().is_some(),
        "op-a still runs after losing its Lease:\n{}",
        a.log_tail(40)
    );
    assert_eq!(
        plugin_image(&c, "apf").await.as_deref(),
        Some("nvcr.io/nvidia/k8s-device-plugin:v0.18.0")
    );
    b.stop(Duration::from_secs(10)).await;
}

/// The leader's connections to the API server stall (a hung load balancer): it can neither renew
/// its Lease nor learn that another replica took it. It stops leading once its renew deadline
/// passes, and exits within the lease duration plus the shutdown timeout, even with a reconcile
/// stuck in a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_by_a_stalled_connection_exits_within_lease_and_shutdown_timeout() {
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op-a", "op-b"]).await;
    let api_port: u16 = plane
        .server_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the API server's port");
    let proxy = TcpProxy::start(([127, 0, 0, 1], api_port).into()).await;
    let proxied = plane.dir().join("op-a-proxied.kubeconfig");
    proxy.kubeconfig(&kubeconfigs[0], &proxied);
    create_node(&c, &GpuNode::aks("stall-gpu-0", "stallpool"))
        .await
        .unwrap();
    let mut a = start_replica(
        &plane,
        "op-a",
        &proxied,
        "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
    );
    testenv::wait_for("op-a to lead", CONVERGE, || async {
        lease_holder(&c).await.filter(|h| h == "op-a")
    })
    .await;
    let mut b = start_replica(
        &plane,
        "op-b",
        &kubeconfigs[1],
        "nvcr.io/nvidia/k8s-device-plugin:v0.18.0",
    );
    create_pool(&c, PoolYaml::new("stall").agentpool("stallpool")).await;
    wait_ready(&c, "stall").await;

    proxy.set(Flow::Stall);
    let stalled = Instant::now();
    // A change op-a will not hear of; whatever it had in flight hangs in the stall.
    set_gpus(&c, "stall-gpu-0", 1, 0).await.unwrap();
    let bound = LEASE + SHUTDOWN + Duration::from_secs(3);
    while a.try_wait().is_none() {
        assert!(
            stalled.elapsed() < bound,
            "op-a still runs {:?} after its connections stalled (bound {bound:?}):\n{}",
            stalled.elapsed(),
            a.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited_after = stalled.elapsed();
    eprintln!("op-a exited {exited_after:?} after its connections stalled");
    assert!(
        a.log_tail(80).contains("leadership lost"),
        "op-a exited for another reason:\n{}",
        a.log_tail(40)
    );
    testenv::wait_for("op-b to take over", CONVERGE, || async {
        lease_holder(&c).await.filter(|h| h == "op-b")
    })
    .await;
    let pools: Api<GpuPool> = Api::all(c.clone());
    testenv::wait_for("op-b to report the lost GPU", CONVERGE, || async {
        let pool = pools.get("stall").await.ok()?;
        pool.status?
            .problem_nodes
            .iter()
            .any(|p| p.name == "stall-gpu-0")
            .then_some(())
    })
    .await;
    proxy.set(Flow::Pass);
    b.stop(Duration::from_secs(10)).await;
}

/// An admission policy refusing the operator's writes to one node (of two in the pool).
async fn refuse_node_writes(client: &Client, sa: &str, node: &str) {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "refuse-node-writes"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]
            }]},
            "matchConditions": [{
                "name": "the-operator",
                "expression": format!("request.userInfo.username == '{}'", account_user(sa))
            }],
            "validations": [{
                "expression": format!("object.metadata.name != '{node}'"),
                "message": format!("denied by policy refuse-node-writes for {node}"),
                "reason": "Invalid"
            }]
        }
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "refuse-node-writes"},
        "spec": {"policyName": "refuse-node-writes", "validationActions": ["Deny"]}
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// One node of two refuses the operator's writes (an admission policy): the pool's status still
/// follows the other node and names the refused one, `Stalled` with the API's reason once the
/// retries are spent; and label churn on the refused node does not make the operator try again
/// sooner than its backoff allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_node_write_is_named_stalls_after_retries_and_churn_does_not_hasten_it() {
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op"]).await;
    refuse_node_writes(&c, "op", "refused-1").await;
    for name in ["refused-0", "refused-1"] {
        create_node(&c, &GpuNode::aks(name, "refusedpool"))
            .await
            .unwrap();
    }
    let op = start_operator(&plane, kubeconfigs[0].clone(), "op", &[]);
    create_pool(&c, PoolYaml::new("refused").agentpool("refusedpool")).await;
    let pools: Api<GpuPool> = Api::all(c.clone());
    let stalled = testenv::poll_until(
        "the pool to stall on the refused node",
        CONVERGE,
        Duration::from_millis(200),
        || async {
            let pool = pools.get("refused").await.ok()?;
            let stalled = condition(&pool, "Stalled")?.clone();
            (stalled.status == "True").then_some((pool, stalled))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(40)));
    let (pool, stalled) = stalled;
    assert_eq!(stalled.reason, "WriteRejected", "{stalled:?}");
    assert!(
        stalled.message.contains("node refused-1 (422: ")
            && stalled
                .message
                .contains("denied by policy refuse-node-writes for refused-1"),
        "{}",
        stalled.message
    );
    let status = pool.status.unwrap();
    assert_eq!(
        (status.nodes, status.gpus_allocatable),
        (2, 2),
        "the status follows the nodes"
    );
    let labelled = Api::<k8s_openapi::api::core::v1::Node>::all(c.clone())
        .get("refused-0")
        .await
        .unwrap()
        .labels()
        .get(gpupool::decide::names::DEVICE_PLUGIN_LABEL)
        .cloned();
    assert_eq!(
        labelled.as_deref(),
        Some("refused"),
        "the other node got its plugin"
    );

    // Churn: a label on the refused node changes every 100 ms for 20 s. Each change is an
    // event for the pool; its backoff (1 s, doubling) decides how often it writes.
    let churn_start = SystemTime::now();
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(c.clone());
    let started = Instant::now();
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(20) {
        let patch = serde_json::json!({"metadata": {"labels": {"churn": i.to_string()}}});
        nodes
            .patch(
                "refused-1",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    audit_flushed(&plane, &c).await;
    let attempts: Vec<_> = testenv::audit::requests(&plane.audit_log_path(), &account_user("op"))
        .into_iter()
        .filter(|r| r.received >= churn_start && r.is_write())
        .filter(|r| r.resource == "nodes" && r.name.as_deref() == Some("refused-1"))
        .collect();
    eprintln!(
        "{} label changes in 20 s; the operator wrote the refused node {} times",
        i,
        attempts.len()
    );
    // Backoff from where the stall left it (it doubles from 1 s, capped at 5 min): at most a
    // handful of attempts in 20 s, against one per event without it.
    assert!(
        attempts.len() <= 6,
        "{} writes to the refused node in 20 s of churn: {attempts:#?}",
        attempts.len()
    );
    assert!(i > 100, "the churn made {i} changes only");
}

/// The plane with the shipped namespaces and RBAC (deploy/), and the operator's kubeconfig as
/// the shipped ServiceAccount.
async fn shipped_rbac(plane: &ControlPlane) -> std::path::PathBuf {
    for manifest in ["deploy/namespaces.yaml", "deploy/rbac.yaml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest);
        let out = plane
            .kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply {manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    plane
        .kubeconfig_for_service_account("gpupool-system", "gpupool-operator")
        .await
        .unwrap()
}

async fn wait_condition_of(
    client: &Client,
    pool: &str,
    type_: &str,
    want: impl Fn(&gpupool::api::Condition) -> bool,
    op: &testenv::ChildProcess,
) -> gpupool::api::Condition {
    let pools: Api<GpuPool> = Api::all(client.clone());
    testenv::poll_until(
        &format!("pool {pool}: {type_} as wanted"),
        CONVERGE,
        Duration::from_millis(200),
        || async {
            let p = pools.get(pool).await.ok()?;
            let current = p.status.as_ref()?.observed_generation == p.metadata.generation;
            condition(&p, type_).filter(|c| current && want(c)).cloned()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(40)))
}

/// The plugin namespace lost the operator's Role (its RoleBinding deleted): the ConfigMap watch
/// cannot list. The pools that need the plugin namespace say so (`Stalled`, `Forbidden`, naming
/// what the operator may not do there); a pool whose nodes' image ships the plugin goes on; with
/// the Role back, every pool is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_namespace_without_its_role_stalls_the_pools_that_need_it_and_no_others() {
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfig = shipped_rbac(&plane).await;
    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    let binding = bindings.get("gpupool-operator-plugins").await.unwrap();
    bindings
        .delete("gpupool-operator-plugins", &DeleteParams::default())
        .await
        .unwrap();
    create_node(
        &c,
        &GpuNode::aks("norole-skip-0", "noroleskip").specialized(),
    )
    .await
    .unwrap();
    create_node(&c, &GpuNode::aks("norole-plain-0", "noroleplain"))
        .await
        .unwrap();
    create_node(&c, &GpuNode::aks("norole-shared-0", "norolelshared"))
        .await
        .unwrap();
    let op = start_operator(&plane, kubeconfig, "operator", &[]);
    create_pool(&c, PoolYaml::new("skip").agentpool("noroleskip")).await;
    create_pool(&c, PoolYaml::new("plain").agentpool("noroleplain")).await;
    create_pool(
        &c,
        PoolYaml::new("shared")
            .agentpool("norolelshared")
            .extra_spec("  sharing:\n    timeSlicing:\n      replicas: 2\n"),
    )
    .await;

    wait_condition_of(&c, "skip", "Ready", |c| c.status == "True", &op).await;
    let plain = wait_condition_of(&c, "plain", "Stalled", |c| c.status == "True", &op).await;
    assert_eq!(plain.reason, "Forbidden", "{plain:?}");
    let shared = wait_condition_of(&c, "shared", "Stalled", |c| c.status == "True", &op).await;
    assert_eq!(shared.reason, "Forbidden", "{shared:?}");
    assert!(
        shared
            .message
            .contains("ConfigMaps in namespace gpu-resources (403"),
        "{}",
        shared.message
    );

    let mut restored = binding.clone();
    restored.metadata.resource_version = None;
    restored.metadata.uid = None;
    restored.metadata.creation_timestamp = None;
    restored.metadata.managed_fields = None;
    bindings
        .create(&PostParams::default(), &restored)
        .await
        .unwrap();
    for pool in ["skip", "plain"] {
        wait_condition_of(&c, pool, "Ready", |c| c.status == "True", &op).await;
    }
    // The shared pool's simulated nodes advertise no time-sliced replicas (kwok runs no
    // plugin), so it is not Ready; what matters is that it is decided for again: its plugin
    // config is written.
    wait_condition_of(&c, "shared", "Ready", |c| c.reason != "Forbidden", &op).await;
    let configs: Api<ConfigMap> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    assert!(
        configs
            .get_opt(&gpupool::decide::names::config_map_name("shared"))
            .await
            .unwrap()
            .is_some(),
        "the shared pool's plugin config was not written"
    );
}

/// A pool created and deleted in a tight loop, sometimes before its first reconcile could add
/// its finalizer: once it is gone, nothing of it is left, neither on the nodes (a device-plugin
/// label written for a pool that was already gone would never be removed) nor in the metrics
/// (a stale `gpupool_pool_ready` series would fire `GpuPoolNotReady` for a pool that is no more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_created_and_deleted_in_a_tight_loop_leaves_nothing_behind() {
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op"]).await;
    let nodes = node_names("loop", 3);
    for name in &nodes {
        create_node(&c, &GpuNode::aks(name, "looppool"))
            .await
            .unwrap();
    }
    let port = testenv::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let op = start_operator(
        &plane,
        kubeconfigs[0].clone(),
        "op",
        &["--metrics-addr", &addr],
    );
    let pools: Api<GpuPool> = Api::all(c.clone());
    // A pool that stays, so the operator is busy and the metrics are known to be served.
    create_pool(&c, PoolYaml::new("stays").selector("absent", "label")).await;
    // A new name each round: a pool of the same name would take over (and clean up) what the
    // last one left.
    for round in 0..16u64 {
        let name = format!("loop-{round}");
        create_pool(&c, PoolYaml::new(&name).agentpool("looppool")).await;
        // From no wait at all (deleted before its first reconcile) to a few reconciles in.
        tokio::time::sleep(Duration::from_millis(round * 37 % 300)).await;
        match pools.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting pool {name}: {e}"),
        }
        testenv::poll_until(
            "the pool to be gone",
            CONVERGE,
            Duration::from_millis(50),
            || async { pools.get_opt(&name).await.ok()?.is_none().then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(40)));
    }
    // Whatever was in flight has had time to finish: the operator's own next reconcile of the
    // other pool and a scrape after it.
    patch_pool(
        &c,
        "stays",
        serde_json::json!({"spec": {"expectedGpusPerNode": 2}}),
    )
    .await;
    testenv::wait_for(
        "the other pool reconciled after the loop",
        CONVERGE,
        || async {
            let p = pools.get("stays").await.ok()?;
            (p.status?.observed_generation == p.metadata.generation).then_some(())
        },
    )
    .await;
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    for name in &nodes {
        let node = api.get(name).await.unwrap();
        assert_eq!(
            node.labels()
                .get(gpupool::decide::names::DEVICE_PLUGIN_LABEL),
            None,
            "node {name} still carries the gone pool's label:\n{}",
            op.log_tail(40)
        );
    }
    let scrape = testenv::http::get(&format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .1;
    let stale: Vec<&str> = scrape
        .lines()
        .filter(|l| l.contains("pool=\"loop-"))
        .collect();
    assert!(stale.is_empty(), "series of the gone pool: {stale:#?}");
    assert!(
        scrape.contains("pool=\"stays\""),
        "the scrape holds no pool series at all"
    );
}

/// The readiness gate's taint removal is refused (an admission policy keeps the taint on): the
/// operator tries, and says so in the status, but publishes no `GateOpened` for a write that did
/// not happen; once the policy goes, the gate opens and is announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_opening_the_api_refuses_is_not_announced() {
    const GATE: &str = "gpupool.io/gpu-not-ready";
    let (plane, c) = own_plane(Options::default()).await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op"]).await;
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "keep-the-gate"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["nodes"]
            }]},
            "validations": [{
                "expression": format!(
                    "!oldObject.spec.?taints.orValue([]).exists(t, t.key == '{GATE}') || object.spec.?taints.orValue([]).exists(t, t.key == '{GATE}')"
                ),
                "message": "the gate stays on",
                "reason": "Forbidden"
            }]
        }
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(c.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "keep-the-gate"},
        "spec": {"policyName": "keep-the-gate", "validationActions": ["Deny"]}
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(c.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    create_node(
        &c,
        &GpuNode::aks("kept-0", "keptpool").taint(GATE, "", "NoSchedule"),
    )
    .await
    .unwrap();
    let op = start_operator(&plane, kubeconfigs[0].clone(), "op", &[]);
    create_pool(
        &c,
        PoolYaml::new("kept")
            .agentpool("keptpool")
            .extra_spec("  readinessGate:\n    mode: Bootstrap\n"),
    )
    .await;
    let stalled = wait_condition_of(&c, "kept", "Stalled", |c| c.status == "True", &op).await;
    assert_eq!(stalled.reason, "Forbidden", "{stalled:?}");
    assert!(
        stalled.message.contains("node kept-0"),
        "{}",
        stalled.message
    );
    let opened = event_notes(&c, "kept", "GateOpened").await;
    assert!(
        opened.is_empty(),
        "GateOpened published for a taint that is still on: {opened:?}"
    );

    Api::<ValidatingAdmissionPolicyBinding>::all(c.clone())
        .delete("keep-the-gate", &DeleteParams::default())
        .await
        .unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    testenv::poll_until(
        "the gate to open",
        CONVERGE,
        Duration::from_millis(200),
        || async {
            let node = nodes.get("kept-0").await.ok()?;
            let tainted = node
                .spec?
                .taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == GATE);
            (!tainted).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(40)));
    let opened = testenv::poll_until(
        "the GateOpened event",
        CONVERGE,
        Duration::from_millis(200),
        || async {
            let notes = event_notes(&c, "kept", "GateOpened").await;
            (!notes.is_empty()).then_some(notes)
        },
    )
    .await
    .unwrap();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(opened[0].contains("kept-0"), "{opened:?}");
}

/// 500 nodes handed from one pool to another while the old plugin's pods take 30 s to
/// terminate: the new pool waits for the pods' deletion events, not by polling. Each node
/// costs at most one check against the API server and one label write from each pool; counted
/// from the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_hand_overs_cost_one_check_per_node() {
    const NODES: usize = 500;
    let (plane, c) = own_plane(Options {
        plugin_pod_termination: Duration::from_secs(30),
        ..Options::default()
    })
    .await;
    let kubeconfigs = admin_accounts(&plane, &c, &["op"]).await;
    let names = node_names("hand", NODES);
    for chunk in names.chunks(50) {
        let nodes: Vec<GpuNode> = chunk.iter().map(|n| GpuNode::aks(n, "handpool")).collect();
        futures::future::try_join_all(nodes.iter().map(|n| create_node(&c, n)))
            .await
            .unwrap();
    }
    let op = start_operator(
        &plane,
        kubeconfigs[0].clone(),
        "op",
        &[
            "--node-writes-per-second",
            "200",
            "--node-write-burst",
            "200",
        ],
    );
    create_pool(&c, PoolYaml::new("old").agentpool("handpool")).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), PLUGIN_NAMESPACE);
    let running = |pool: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&kube::api::ListParams::default().labels(&format!("gpupool.io/pool={pool}")))
                .await
                .ok()
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && p.status.as_ref().and_then(|s| s.phase.as_deref())
                                    == Some("Running")
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };
    testenv::poll_until(
        "the old pool's plugin on every node",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || async { (running("old").await == NODES).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(20)));

    let handing = SystemTime::now();
    create_pool(&c, PoolYaml::new("new").agentpool("handpool")).await;
    Api::<GpuPool>::all(c.clone())
        .delete("old", &DeleteParams::default())
        .await
        .unwrap();
    testenv::poll_until(
        "the new pool's plugin on every node",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || async { (running("new").await == NODES).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.log_tail(20)));
    audit_flushed(&plane, &c).await;
    let requests: Vec<_> = testenv::audit::requests(&plane.audit_log_path(), &account_user("op"))
        .into_iter()
        .filter(|r| r.received >= handing)
        .collect();
    let count = |verb: &str, resource: &str| {
        requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    };
    // A patch from the cache that kwok's heartbeat or the simulated plugin's allocatable update
    // raced is refused (409) and made again later: a race, not a poll. They are counted apart;
    // how many there are depends on how far the watch lags, i.e. on the machine's load.
    let conflicts = requests
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "nodes" && r.code == Some(409))
        .count();
    let (pod_lists, node_gets, node_patches) = (
        count("list", "pods"),
        count("get", "nodes"),
        count("patch", "nodes") - conflicts,
    );
    eprintln!(
        "{NODES} hand-overs: {pod_lists} pod LISTs, {node_gets} node GETs, {node_patches} node PATCHes and {conflicts} refused as stale, {} DaemonSet LISTs",
        count("list", "daemonsets")
    );
    // At most one check per node the new pool labels (no polling while the old pods
    // terminate). Since #26 a label write is made from the cached node: the old pool's removal
    // is one patch; the new pool's label too once one list of every plugin pod, made after the
    // old pods are gone, vouches for the nodes. Before #26: a GET per write and a pod LIST per
    // node, about 2,000 requests.
    assert!(
        pod_lists <= NODES + NODES / 10,
        "{pod_lists} pod LISTs for {NODES} hand-overs"
    );
    assert!(node_gets <= 3 * NODES, "{node_gets} node GETs");
    assert!(
        node_patches <= 2 * NODES + NODES / 2,
        "{node_patches} node PATCHes"
    );
    assert!(
        pod_lists + node_gets + node_patches <= 3 * NODES,
        "{} node requests for {NODES} hand-overs",
        pod_lists + node_gets + node_patches
    );
    // A write refused as stale is made from the cache at most twice before it reads the node,
    // 250 ms apart: about one refusal per write at most, far below a retry loop's count.
    assert!(
        conflicts <= 2 * NODES,
        "{conflicts} node PATCHes refused as stale for {} writes",
        node_patches
    );
}

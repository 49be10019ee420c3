//! How cluster admins install gpupool, checked on a real control plane: the kustomize manifests in
//! `deploy/` and the Helm chart in `charts/gpupool-operator` (RBAC, Pod Security, rendering,
//! installation), and how GitOps tools judge a GpuPool (kstatus for Flux, the Argo CD health
//! check), on statuses written by the live operator.
//!
//! The operator runs here as its own process with the shipped ServiceAccount's token (never as
//! admin) and with the arguments and environment of the shipped Deployment. Only one operator runs
//! at a time on the plane (two would fight over the same GpuPools): tests that run one hold
//! [`OPERATOR_SLOT`].
//!
//! Needs helm and kstatus: `hack/build-tools.sh` builds them from Go modules on first use
//! (about 2 minutes cold, instant when cached), or set `GPUPOOL_TOOLS_BIN`.

mod argocd;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gpupool::api::GpuPool;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::tools::{
    helm, path_str, read, repo, run, run_with_stdin, tools_bin, try_run, yaml_docs,
};
use support::{PLUGIN_NAMESPACE, PoolYaml, TIMEOUT};
use testenv::nodes::{GpuNode, create_node, set_gpus};
use testenv::{ChildProcess, ControlPlane, wait_for};

/// Held by every test that runs an operator, for as long as it runs.
static OPERATOR_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The permissions of the operator, reviewed: every rule of its ClusterRole and Roles, one verb
/// per line, as `scope: group/resource verb [resourceNames]` (scope `cluster` or the namespace).
/// Adding a permission to deploy/ or the chart fails the tests until it is added here, in review.
const REVIEWED_PERMISSIONS: &[&str] = &[
    // The GpuPool cache (watcher: list + watch), its finalizer (patch) and server-side-applied
    // status.
    "cluster: gpupool.io/gpupools list",
    "cluster: gpupool.io/gpupools patch",
    "cluster: gpupool.io/gpupools watch",
    "cluster: gpupool.io/gpupools/status patch",
    // ownerReferences with blockOwnerDeletion=true on its DaemonSets.
    "cluster: gpupool.io/gpupools/finalizers update",
    // Node cache, and the device-plugin label (read-modify-write: get, then patch).
    "cluster: core/nodes get",
    "cluster: core/nodes list",
    "cluster: core/nodes patch",
    "cluster: core/nodes watch",
    // Its own pods, wherever they run (label-selected watch).
    "cluster: core/pods list",
    "cluster: core/pods watch",
    // NVIDIA DRA driver ResourceSlices.
    "cluster: resource.k8s.io/resourceslices list",
    "cluster: resource.k8s.io/resourceslices watch",
    // DeviceClasses selecting the DRA driver's GPUs (named in status.capacity.dra).
    "cluster: resource.k8s.io/deviceclasses list",
    "cluster: resource.k8s.io/deviceclasses watch",
    // DaemonSet cache (its own, and device plugins it does not own, anywhere).
    "cluster: apps/daemonsets list",
    "cluster: apps/daemonsets watch",
    // Its DaemonSets, in the plugin namespace only: server-side apply (creates), delete, replace.
    "gpu-resources: apps/daemonsets create",
    "gpu-resources: apps/daemonsets delete",
    "gpu-resources: apps/daemonsets patch",
    // Validation pods (spec.validation), in the plugin namespace only.
    "gpu-resources: core/pods create",
    "gpu-resources: core/pods delete",
    // The validation ResourceClaimTemplate of pools with DRA nodes.
    "gpu-resources: resource.k8s.io/resourceclaimtemplates create",
    // The plugin's config (spec.sharing, spec.mig): its ConfigMap, watched and written there only.
    "gpu-resources: core/configmaps create",
    "gpu-resources: core/configmaps delete",
    "gpu-resources: core/configmaps list",
    "gpu-resources: core/configmaps patch",
    "gpu-resources: core/configmaps watch",
    // Events about cluster-scoped GpuPools (kube's Recorder: create, then patch for a series).
    "default: events.k8s.io/events create",
    "default: events.k8s.io/events patch",
    // Leader election (kube-lease-manager: get, create, patch of one Lease).
    "gpupool-system: coordination.k8s.io/leases create",
    "gpupool-system: coordination.k8s.io/leases get [gpupool-operator]",
    "gpupool-system: coordination.k8s.io/leases patch [gpupool-operator]",
    // The write fence watches the one Lease (field selector metadata.name).
    "gpupool-system: coordination.k8s.io/leases list [gpupool-operator]",
    "gpupool-system: coordination.k8s.io/leases watch [gpupool-operator]",
];

/// Makes a pod spec less secure, in place.
type Weaken = fn(&mut Value);

const HELM_RELEASE: &str = "helmtest";
const HELM_NAMESPACE: &str = "gpupool-helm";
const HELM_FULLNAME: &str = "helmtest-gpupool-operator";

// ---------------------------------------------------------------------------------------------
// Static checks of the manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn deploy_rbac_grants_exactly_the_reviewed_permissions() {
    let docs = yaml_docs(&read(&repo("deploy/rbac.yaml")));
    assert_eq!(
        permissions(&docs, &[]),
        reviewed(),
        "deploy/rbac.yaml differs from the reviewed list in tests/packaging.rs"
    );
    assert_bindings(&docs, "gpupool-system", "gpupool-operator");
    for file in [
        "deploy/rbac.yaml",
        "deploy/deployment.yaml",
        "deploy/namespaces.yaml",
    ] {
        for doc in yaml_docs(&read(&repo(file))) {
            assert_ne!(doc["kind"], "Secret", "{file} ships a Secret");
        }
    }
}

#[test]
fn chart_crd_is_the_committed_crd() {
    let committed = read(&repo("crds/gpupool.yaml"));
    let chart = read(&repo("charts/gpupool-operator/crds/gpupool.yaml"));
    assert!(
        chart == committed,
        "charts/gpupool-operator/crds/gpupool.yaml differs from crds/gpupool.yaml: run \
         `cp crds/gpupool.yaml charts/gpupool-operator/crds/gpupool.yaml` and commit it"
    );
}

// ---------------------------------------------------------------------------------------------
// Pod Security
// ---------------------------------------------------------------------------------------------

/// The operator's pod template (from `kubectl kustomize deploy/` and from the chart) is admitted
/// as a Pod by the API server in a namespace enforcing the restricted Pod Security Standard, and
/// weakened copies are rejected there (enforcement is really on).
#[tokio::test]
async fn operator_pods_pass_the_restricted_pod_security_standard() {
    let plane = ControlPlane::shared().await;
    let client = plane.client().await;
    let ns = "pss-restricted";
    create_namespace(
        &client,
        ns,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    let kustomized = yaml_docs(&run(plane
        .kubectl()
        .args(["kustomize", &path_str("deploy")])));
    let chart = yaml_docs(&helm_template(&[]));
    let templates = [
        (
            "deploy",
            find(&kustomized, "Deployment", "gpupool-operator"),
        ),
        ("chart", find(&chart, "Deployment", HELM_FULLNAME)),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (source, deployment) in templates {
        let spec = deployment["spec"]["template"]["spec"].clone();
        let sa = spec["serviceAccountName"].as_str().unwrap().to_string();
        // The ServiceAccount admission plugin wants the pod's ServiceAccount to exist.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
        let _ = sas
            .create(
                &Default::default(),
                &serde_json::from_value(json!({"metadata": {"name": sa}})).unwrap(),
            )
            .await;
        let pod = |name: &str, spec: Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
        };
        let name = format!("pss-{source}");
        pods.create(&Default::default(), &pod(&name, spec.clone()))
            .await
            .unwrap_or_else(|e| {
                panic!("the {source} operator pod is not admitted under restricted PSS: {e}")
            });
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();

        let weakenings: [(&str, Weaken); 4] = [
            ("privilege escalation allowed", |s| {
                s["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true)
            }),
            ("capabilities kept", |s| {
                s["containers"][0]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("capabilities");
            }),
            ("no seccomp profile", |s| {
                s["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("seccompProfile");
            }),
            ("may run as root", |s| {
                s["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
                s["containers"][0]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
            }),
        ];
        for (what, weaken) in weakenings {
            let mut weak = spec.clone();
            weaken(&mut weak);
            match pods
                .create(&Default::default(), &pod("pss-weak", weak))
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("PodSecurity") => {}
                other => panic!(
                    "a {source} pod with {what} should violate restricted PSS, got {other:?}"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// deploy/ (kustomize): the operator under its shipped RBAC, kstatus, Argo CD, re-apply
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kustomize_install_runs_the_operator_with_least_privilege() {
    let _slot = OPERATOR_SLOT.lock().await;
    let plane = ControlPlane::shared().await;
    let c = plane.client().await;

    // Exactly what the README tells users to run.
    run(plane.kubectl().args(["apply", "-k", &path_str("deploy")]));
    crd_established(plane);
    let rendered = yaml_docs(&run(plane
        .kubectl()
        .args(["kustomize", &path_str("deploy")])));
    let crd = find(&rendered, "CustomResourceDefinition", "gpupools.gpupool.io");
    assert_same_crd(crd, "deploy/ (kubectl kustomize)");
    let ns: Api<Namespace> = Api::all(c.clone());
    let labels = ns.get("gpupool-system").await.unwrap().labels().clone();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );

    wait_until_rbac_allows(&c, "gpupool-system", "gpupool-operator", &[]).await;
    let kubeconfig = plane
        .kubeconfig_for_service_account("gpupool-system", "gpupool-operator")
        .await
        .unwrap();
    let deployment = find(&rendered, "Deployment", "gpupool-operator");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/gpupool/gpupool-operator:0.1.0"
    );
    let pod_name = "gpupool-operator-5f7b9c-kustomize";
    let mut op = Operator::start(
        plane,
        deployment,
        &kubeconfig,
        "packaging-kustomize-operator",
        pod_name,
        "gpupool-system",
    );

    // A standard pool: its DaemonSet, progress while GPUs register, Ready once they have.
    for name in ["pkgstd-0", "pkgstd-1"] {
        create_node(
            &c,
            &GpuNode::aks(name, "pkgstd")
                .taint("sku", "gpu", "NoSchedule")
                .no_gpus_yet(),
        )
        .await
        .unwrap();
    }
    create_pool(&c, PoolYaml::new("pkg-std").agentpool("pkgstd")).await;
    wait_for(
        &format!("DaemonSet of pkg-std with 2 ready pods\n{}", op.tail()),
        TIMEOUT,
        || async {
            daemonset(&c, "pkg-std")
                .await
                .filter(|ds| {
                    ds.status
                        .as_ref()
                        .is_some_and(|s| s.desired_number_scheduled == 2 && s.number_ready == 2)
                })
                .map(|_| ())
        },
    )
    .await;
    let waiting = op
        .wait_pool(&c, "pkg-std", "Reconciling=True (WaitingForGpus)", |p| {
            cond(p, "Reconciling").is_some_and(|r| r.0 == "True" && r.1 == "WaitingForGpus")
                && cond(p, "DevicePluginReady").is_some_and(|d| d.0 == "True")
        })
        .await;
    assert_gitops(&waiting, "InProgress", "Progressing");
    assert_eq!(cond(&waiting, "Ready").unwrap().0, "False");

    for name in ["pkgstd-0", "pkgstd-1"] {
        set_gpus(&c, name, 1, 1).await.unwrap();
    }
    let ready = op
        .wait_pool(&c, "pkg-std", "Ready=True", |p| {
            cond(p, "Ready").is_some_and(|r| r.0 == "True")
        })
        .await;
    assert_gitops(&ready, "Current", "Healthy");

    // Events are published (events.k8s.io, namespace default: GpuPools are cluster-scoped).
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    wait_for(
        &format!(
            "Events DaemonSetCreated and Ready about pkg-std\n{}",
            op.tail()
        ),
        TIMEOUT,
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: BTreeSet<String> = list
                .items
                .iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("pkg-std")
                        && e.reporting_controller.as_deref() == Some("gpupool-operator")
                })
                .filter_map(|e| e.reason.clone())
                .collect();
            (reasons.contains("DaemonSetCreated") && reasons.contains("Ready")).then_some(())
        },
    )
    .await;

    // Leader election went through the shipped Role.
    let lease = Api::<Lease>::namespaced(c.clone(), "gpupool-system")
        .get("gpupool-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod_name)
    );

    // A pool on the specialized image gets no DaemonSet.
    create_node(&c, &GpuNode::aks("pkgspec-0", "pkgspec").specialized())
        .await
        .unwrap();
    create_pool(&c, PoolYaml::new("pkg-spec").agentpool("pkgspec")).await;
    let spec = op
        .wait_pool(&c, "pkg-spec", "Ready=True, plugin Skipped", |p| {
            cond(p, "Ready").is_some_and(|r| r.0 == "True")
                && p["status"]["devicePlugin"]["mode"] == "Skipped"
        })
        .await;
    assert_gitops(&spec, "Current", "Healthy");
    assert!(daemonset(&c, "pkg-spec").await.is_none());

    // A hand-applied device plugin elsewhere is detected (cluster-wide DaemonSet read access).
    create_namespace(&c, "pkg-foreign", &[]).await;
    let seed: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "nvidia-device-plugin-daemonset", "namespace": "pkg-foreign"},
        "spec": {
            "selector": {"matchLabels": {"name": "nvidia-device-plugin-ds"}},
            "template": {
                "metadata": {"labels": {"name": "nvidia-device-plugin-ds"}},
                "spec": {
                    "nodeSelector": {"pkgseed": "yes"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "nvidia-device-plugin-ctr",
                        "image": "mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11",
                        "volumeMounts": [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}]
                    }],
                    "volumes": [{"name": "device-plugin", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]
                }
            }
        }
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "pkg-foreign")
        .create(&Default::default(), &seed)
        .await
        .unwrap();
    create_node(&c, &GpuNode::aks("pkgseed-0", "pkgseed"))
        .await
        .unwrap();
    create_node(
        &c,
        &GpuNode::aks("pkgseed-1", "pkgseed").label("pkgseed", "yes"),
    )
    .await
    .unwrap();
    create_pool(&c, PoolYaml::new("pkg-seed").agentpool("pkgseed")).await;
    let seeded = op
        .wait_pool(&c, "pkg-seed", "Conflict ForeignDevicePlugin, Ready", |p| {
            cond(p, "Conflict").is_some_and(|r| r.1 == "ForeignDevicePlugin")
                && cond(p, "Ready").is_some_and(|r| r.0 == "True")
        })
        .await;
    assert!(
        cond(&seeded, "Conflict")
            .unwrap()
            .2
            .contains("pkg-foreign/nvidia-device-plugin-daemonset")
    );
    assert_gitops(&seeded, "Current", "Healthy");

    // A DaemonSet the API server rejects stalls the pool: Failed for kstatus, Degraded for Argo CD.
    create_node(&c, &GpuNode::aks("pkgstall-0", "pkgstall"))
        .await
        .unwrap();
    create_pool(
        &c,
        PoolYaml::new("pkg-stall").agentpool("pkgstall").extra_spec(
            "  devicePlugin:\n    resources:\n      requests:\n        memory: 2Gi\n      limits:\n        memory: 1Gi\n",
        ),
    )
    .await;
    let stalled = op
        .wait_pool(&c, "pkg-stall", "Stalled=True (DaemonSetRejected)", |p| {
            cond(p, "Stalled").is_some_and(|r| r.0 == "True" && r.1 == "DaemonSetRejected")
        })
        .await;
    assert_gitops(&stalled, "Failed", "Degraded");

    gated_and_validated_pool_for_gitops(&c, &op).await;

    // Deleting a pool removes its DaemonSet (the operator takes its plugin off its nodes first).
    Api::<GpuPool>::all(c.clone())
        .delete("pkg-std", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("DaemonSet of pkg-std to be removed", TIMEOUT, || async {
        daemonset(&c, "pkg-std").await.is_none().then_some(())
    })
    .await;

    reapplying_the_examples_changes_nothing(plane, &c, &op).await;

    // Stopped, the operator releases its Lease and exits cleanly.
    let status = op.child.stop(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "operator exit: {status:?}\n{}",
        op.tail()
    );

    // A spec change nobody has observed yet: in progress for both tools, whatever the conditions say.
    patch_spec(&c, "pkg-spec", json!({"spec": {"expectedGpusPerNode": 2}})).await;
    let unobserved = get_pool(&c, "pkg-spec").await.unwrap();
    assert_ne!(
        unobserved["metadata"]["generation"],
        unobserved["status"]["observedGeneration"]
    );
    assert_eq!(cond(&unobserved, "Ready").unwrap().0, "True");
    assert_gitops(&unobserved, "InProgress", "Progressing");

    op.assert_never_forbidden();
    delete_pools(
        &c,
        &[
            "pkg-spec",
            "pkg-seed",
            "pkg-stall",
            "pkg-val",
            "gpu",
            "gpuspecial",
            "gpugated",
            "gpuh100",
            "gpuroll",
            "gpudra",
        ],
    )
    .await;
}

/// The pools of examples/.
const EXAMPLE_POOLS: [&str; 6] = [
    "gpu",
    "gpuspecial",
    "gpugated",
    "gpuh100",
    "gpuroll",
    "gpudra",
];

/// Applying examples/ again, client-side or server-side, writes nothing: no generation bump, no
/// new resourceVersion, no status churn.
async fn reapplying_the_examples_changes_nothing(plane: &ControlPlane, c: &Client, op: &Operator) {
    create_node(
        c,
        &GpuNode::aks("examples-gpu-0", "gpu").taint("sku", "gpu", "NoSchedule"),
    )
    .await
    .unwrap();
    create_node(
        c,
        &GpuNode::aks("examples-gpuspecial-0", "gpuspecial").specialized(),
    )
    .await
    .unwrap();
    let examples = path_str("examples");
    run(plane.kubectl().args(["apply", "-f", &examples]));
    // Every example pool settled (those without nodes here are Ready with NoNodes).
    for name in EXAMPLE_POOLS {
        op.wait_pool(c, name, "Ready=True, not Reconciling", |p| {
            cond(p, "Ready").is_some_and(|r| r.0 == "True") && cond(p, "Reconciling").is_none()
        })
        .await;
    }
    wait_for("the examples' DaemonSet to be ready", TIMEOUT, || async {
        daemonset(c, "gpu")
            .await
            .filter(|ds| ds.status.as_ref().is_some_and(|s| s.number_ready == 1))
            .map(|_| ())
    })
    .await;
    // The DaemonSet's readiness reaches the status in one more reconcile; wait for it to settle.
    op.wait_pool(c, "gpu", "plugin ready in status", |p| {
        p["status"]["devicePlugin"]["ready"] == 1
    })
    .await;

    let snapshot = |p: &Value| {
        (
            p["metadata"]["generation"].clone(),
            p["metadata"]["resourceVersion"].clone(),
            p["status"].clone(),
        )
    };
    let pools_now = || async {
        let mut out = Vec::new();
        for name in EXAMPLE_POOLS {
            out.push(snapshot(&get_pool(c, name).await.unwrap()));
        }
        out
    };
    let ds_generation = || async { daemonset(c, "gpu").await.unwrap().metadata.generation };
    let before = pools_now().await;
    let ds_before = ds_generation().await;

    let out = run(plane.kubectl().args(["apply", "-f", &examples]));
    assert!(
        out.lines().all(|l| l.ends_with(" unchanged")),
        "client-side re-apply: {out}"
    );
    assert_eq!(pools_now().await, before, "client-side re-apply wrote");

    // The first server-side apply takes over field ownership (managedFields), then nothing moves.
    run(plane
        .kubectl()
        .args(["apply", "--server-side", "-f", &examples]));
    let after_first = pools_now().await;
    for (b, a) in before.iter().zip(&after_first) {
        assert_eq!((&b.0, &b.2), (&a.0, &a.2), "generation or status changed");
    }
    run(plane
        .kubectl()
        .args(["apply", "--server-side", "-f", &examples]));
    assert_eq!(pools_now().await, after_first, "server-side re-apply wrote");

    // Status churn would come from the operator reacting to those applies: once it has reacted to
    // a later change elsewhere, it has seen them.
    create_node(c, &GpuNode::aks("examples-probe-0", "examplesprobe"))
        .await
        .unwrap();
    create_pool(
        c,
        PoolYaml::new("examples-probe").agentpool("examplesprobe"),
    )
    .await;
    op.wait_pool(c, "examples-probe", "Ready", |p| {
        cond(p, "Ready").is_some_and(|r| r.0 == "True")
    })
    .await;
    set_gpus(c, "examples-probe-0", 2, 2).await.unwrap();
    op.wait_pool(c, "examples-probe", "2 GPUs", |p| {
        p["status"]["gpusAllocatable"] == 2
    })
    .await;
    assert_eq!(
        pools_now().await,
        after_first,
        "status churn after re-apply"
    );
    assert_eq!(ds_generation().await, ds_before, "DaemonSet rewritten");
    delete_pools(c, &["examples-probe"]).await;
}

// ---------------------------------------------------------------------------------------------
// Helm chart
// ---------------------------------------------------------------------------------------------

/// Non-default values touching every knob.
const CUSTOM_VALUES: &str = r#"
replicaCount: 2
image:
  repository: registry.example.com/platform/gpupool-operator
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
imagePullSecrets:
  - name: registry-credentials
operator:
  pluginNamespace: gpu-plugins
  defaultPluginImage: mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11
  gpuGracePeriod: 15m
  rolloutDeadline: 8m
  resyncPeriod: 30m
  debounce: 500ms
  shutdownTimeout: 25s
  leaderElection:
    leaseName: gpupool-leader
    leaseDuration: 30s
  logFormat: human
  logLevel: gpupool=debug,info
  extraEnv:
    - name: TZ
      value: UTC
serviceAccount:
  name: gpupool-custom
  annotations:
    example.com/owner: platform
podAnnotations:
  example.com/scrape: "true"
podLabels:
  team: platform
priorityClassName: system-cluster-critical
resources:
  requests:
    cpu: 100m
    memory: 96Mi
  limits:
    memory: 256Mi
nodeSelector:
  kubernetes.azure.com/mode: system
tolerations:
  - key: CriticalAddonsOnly
    operator: Exists
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              app.kubernetes.io/name: gpupool-operator
metrics:
  port: 9090
  serviceMonitor:
    enabled: true
    interval: 15s
    labels:
      release: prometheus
"#;

#[tokio::test]
async fn helm_chart_lints_renders_installs_and_runs_the_operator() {
    let plane = ControlPlane::shared().await;
    let c = plane.client().await;
    let chart = path_str("charts/gpupool-operator");
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values.path(), CUSTOM_VALUES).unwrap();
    let values = values.path().to_str().unwrap().to_string();

    run(helm().args(["lint", "--strict", &chart]));
    run(helm().args(["lint", "--strict", &chart, "-f", &values]));
    let (ok, _, err) = try_run(
        helm().args([
            "template",
            "x",
            &chart,
            "--set",
            "replicaCount=2",
            "--set",
            "operator.leaderElection.enabled=false",
        ]),
        None,
    );
    assert!(
        !ok && err.contains("leaderElection"),
        "2 replicas without leader election must not render: {err}"
    );

    // Default values: the same reviewed permissions, bound to the chart's ServiceAccount.
    let default_text = helm_template(&["--include-crds"]);
    let defaults = yaml_docs(&default_text);
    let alias = [
        (HELM_NAMESPACE, "gpupool-system"),
        (HELM_FULLNAME, "gpupool-operator"),
    ];
    assert_eq!(permissions(&defaults, &alias), reviewed());
    assert_bindings(&defaults, HELM_NAMESPACE, HELM_FULLNAME);
    assert_same_crd(
        find(&defaults, "CustomResourceDefinition", "gpupools.gpupool.io"),
        "the chart (helm template --include-crds)",
    );
    let plugin_ns = find(&defaults, "Namespace", PLUGIN_NAMESPACE);
    assert_eq!(
        plugin_ns["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "the plugin namespace (and so the plugins) must survive helm uninstall"
    );
    assert!(
        !defaults.iter().any(|d| d["kind"] == "ServiceMonitor"),
        "ServiceMonitor is off by default"
    );
    let deployment = find(&defaults, "Deployment", HELM_FULLNAME);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/gpupool/gpupool-operator:0.1.0");
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"], "/healthz",
        "{container}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");

    // Non-default values reach the objects.
    let custom = yaml_docs(&helm_template(&["-f", &values]));
    let alias_custom = [
        (HELM_NAMESPACE, "gpupool-system"),
        ("gpu-plugins", "gpu-resources"),
        ("gpupool-leader", "gpupool-operator"),
    ];
    assert_eq!(permissions(&custom, &alias_custom), reviewed());
    assert_bindings(&custom, HELM_NAMESPACE, "gpupool-custom");
    let deployment = find(&custom, "Deployment", HELM_FULLNAME);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        container["image"],
        "registry.example.com/platform/gpupool-operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for wanted in [
        "--plugin-namespace=gpu-plugins",
        "--default-plugin-image=mcr.microsoft.com/oss/nvidia/k8s-device-plugin:1.11",
        "--gpu-grace-period=15m",
        "--rollout-deadline=8m",
        "--resync-period=30m",
        "--debounce=500ms",
        "--metrics-addr=0.0.0.0:9090",
        "--leader-elect",
        "--lease-name=gpupool-leader",
        "--lease-duration=30s",
        "--shutdown-timeout=25s",
        "--log-format=human",
        "--log-level=gpupool=debug,info",
    ] {
        assert!(args.contains(&wanted), "{wanted} missing from {args:?}");
    }
    assert_eq!(pod["serviceAccountName"], "gpupool-custom");
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"]["kubernetes.azure.com/mode"], "system");
    assert_eq!(pod["tolerations"][0]["key"], "CriticalAddonsOnly");
    assert!(pod["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-credentials");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["team"],
        "platform"
    );
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "TZ")
    );
    let service = find(&custom, "Service", &format!("{HELM_FULLNAME}-metrics"));
    assert_eq!(service["spec"]["ports"][0]["port"], 9090);
    let monitor = find(&custom, "ServiceMonitor", HELM_FULLNAME);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["metadata"]["labels"]
            .as_object()
            .map(|l| {
                json!({
                    "app.kubernetes.io/name": l["app.kubernetes.io/name"],
                    "app.kubernetes.io/instance": l["app.kubernetes.io/instance"],
                })
            })
            .unwrap()
    );
    find(&custom, "Namespace", "gpu-plugins");

    // The API server accepts both renderings (server-side dry run: admission, schema, strict
    // field validation). The namespaces must exist for that; the ServiceMonitor's CRD
    // (prometheus-operator) is not installed here, so it is left out.
    create_namespace(
        &c,
        HELM_NAMESPACE,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    create_namespace(&c, "gpu-plugins", &[]).await;
    create_namespace(&c, PLUGIN_NAMESPACE, &[]).await;
    let without_monitor: Vec<Value> = custom
        .iter()
        .filter(|d| d["kind"] != "ServiceMonitor")
        .cloned()
        .collect();
    for (what, docs) in [("default", &defaults), ("custom", &without_monitor)] {
        let out = kubectl_apply(plane, &["--dry-run=server"], docs);
        assert!(
            out.contains("(server dry run)"),
            "{what} values, dry run: {out}"
        );
    }

    // Install with helm itself (the plugin namespace exists already, as after the AKS article's
    // `kubectl create namespace gpu-resources`: the chart uses it as it is), then run the
    // operator with the chart's ServiceAccount and the installed Deployment's arguments and
    // environment.
    let _slot = OPERATOR_SLOT.lock().await;
    let admin = plane.kubeconfig_path().to_str().unwrap().to_string();
    let helm_cluster = |args: &[&str]| {
        run(helm()
            .args(args)
            .args(["--namespace", HELM_NAMESPACE, "--kubeconfig", &admin]))
    };
    helm_cluster(&["install", HELM_RELEASE, &chart]);
    crd_established(plane);
    // The Deployment's pods are admitted in the restricted namespace (kwok pretends to run them).
    let pods: Api<Pod> = Api::namespaced(c.clone(), HELM_NAMESPACE);
    wait_for(
        "the chart's Deployment to create its pod in the restricted namespace",
        TIMEOUT,
        || async {
            let list = pods
                .list(
                    &ListParams::default()
                        .labels(&format!("app.kubernetes.io/instance={HELM_RELEASE}")),
                )
                .await
                .ok()?;
            (!list.items.is_empty()).then_some(())
        },
    )
    .await;
    wait_until_rbac_allows(
        &c,
        HELM_NAMESPACE,
        HELM_FULLNAME,
        &[
            ("gpupool-system", HELM_NAMESPACE),
            ("gpupool-operator", HELM_FULLNAME),
        ],
    )
    .await;
    let kubeconfig = plane
        .kubeconfig_for_service_account(HELM_NAMESPACE, HELM_FULLNAME)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), HELM_NAMESPACE);
    let installed = serde_json::to_value(deployments.get(HELM_FULLNAME).await.unwrap()).unwrap();
    let pod_name = "helmtest-gpupool-operator-6c8d7f-helm";
    let mut op = Operator::start(
        plane,
        &installed,
        &kubeconfig,
        "packaging-helm-operator",
        pod_name,
        HELM_NAMESPACE,
    );

    // The standard example pool, on its own nodes.
    create_node(
        &c,
        &GpuNode::aks("helmgpu-0", "helmgpu").taint("sku", "gpu", "NoSchedule"),
    )
    .await
    .unwrap();
    let mut example: Value =
        yaml_serde::from_str(&read(&repo("examples/aks-standard-pool.yaml"))).unwrap();
    example["metadata"]["name"] = json!("helm-gpu");
    example["spec"]["nodeSelector"]["matchLabels"]["kubernetes.azure.com/agentpool"] =
        json!("helmgpu");
    kubectl_apply(plane, &[], &[example]);
    let pool = op
        .wait_pool(&c, "helm-gpu", "Ready=True", |p| {
            cond(p, "Ready").is_some_and(|r| r.0 == "True")
        })
        .await;
    let plugin = support::plugin_name("helm-gpu");
    assert_eq!(pool["status"]["devicePlugin"]["mode"], "Managed");
    assert_eq!(
        pool["status"]["devicePlugin"]["daemonSet"],
        format!("{PLUGIN_NAMESPACE}/{plugin}")
    );
    assert_gitops(&pool, "Current", "Healthy");
    let lease = Api::<Lease>::namespaced(c.clone(), HELM_NAMESPACE)
        .get(HELM_FULLNAME)
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod_name)
    );
    let status = op.child.stop(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", op.tail());
    op.assert_never_forbidden();

    // Upgrade: a changed value reaches the Deployment.
    helm_cluster(&[
        "upgrade",
        HELM_RELEASE,
        &chart,
        "--reuse-values",
        "--set",
        "operator.gpuGracePeriod=20m",
    ]);
    let upgraded = deployments.get(HELM_FULLNAME).await.unwrap();
    let args = upgraded.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--gpu-grace-period=20m".to_string()),
        "{args:?}"
    );

    // Uninstall removes the operator and its RBAC, and leaves the CRD, the pools and their
    // device plugins serving GPUs.
    helm_cluster(&["uninstall", HELM_RELEASE, "--wait"]);
    assert!(deployments.get_opt(HELM_FULLNAME).await.unwrap().is_none());
    let cluster_roles: Api<ClusterRole> = Api::all(c.clone());
    assert!(
        cluster_roles
            .get_opt(HELM_FULLNAME)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        get_pool(&c, "helm-gpu").await.is_some(),
        "the pool survives"
    );
    assert!(
        daemonset(&c, "helm-gpu").await.is_some(),
        "its device plugin keeps running"
    );
    Api::<Namespace>::all(c.clone())
        .get(PLUGIN_NAMESPACE)
        .await
        .expect("the plugin namespace survives");
    delete_pools(&c, &["helm-gpu"]).await;
    wait_for("the pool's DaemonSet to be collected", TIMEOUT, || async {
        daemonset(&c, "helm-gpu").await.is_none().then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The operator process
// ---------------------------------------------------------------------------------------------

struct Operator {
    child: ChildProcess,
}

impl Operator {
    /// Runs gpupool-operator as the Deployment's container would: its args (the image's entrypoint
    /// is the binary) and env, the downward API filled in, with `kubeconfig` standing in for the
    /// in-cluster ServiceAccount token. Only `--metrics-addr` changes (to a free port).
    fn start(
        plane: &ControlPlane,
        deployment: &Value,
        kubeconfig: &Path,
        name: &str,
        pod_name: &str,
        pod_namespace: &str,
    ) -> Operator {
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert!(
            container.get("command").is_none(),
            "the image's entrypoint must be used"
        );
        let mut metrics_addr = false;
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("container args")
            .iter()
            .map(|a| {
                let a = a.as_str().expect("args are strings");
                if a.starts_with("--metrics-addr=") {
                    metrics_addr = true;
                    "--metrics-addr=127.0.0.1:0".to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        assert!(metrics_addr, "no --metrics-addr=… in {args:?}");
        assert_eq!(args.first().map(String::as_str), Some("run"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gpupool-operator"));
        for (key, _) in std::env::vars() {
            if key.starts_with("GPUPOOL_") || key == "RUST_LOG" || key == "POD_NAME" {
                cmd.env_remove(key);
            }
        }
        cmd.env("KUBECONFIG", kubeconfig).args(&args);
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"].as_str().unwrap();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_string()
            } else {
                match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.to_string(),
                    Some("metadata.namespace") => pod_namespace.to_string(),
                    other => panic!("unsupported env source for {key}: {other:?}"),
                }
            };
            cmd.env(key, value);
        }
        let child = ChildProcess::spawn(
            name,
            cmd,
            &plane.dir().join("logs").join(format!("{name}.log")),
        )
        .expect("operator starts");
        Operator { child }
    }

    fn tail(&self) -> String {
        format!("operator log:\n{}", self.child.log_tail(40))
    }

    /// No API call was refused for lack of permission.
    fn assert_never_forbidden(&self) {
        let log = read(self.child.log_path());
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains("code: 403") || l.contains("\"code\":403")
            })
            .collect();
        assert!(
            bad.is_empty(),
            "the operator was refused API calls:\n{}",
            bad.join("\n")
        );
        assert!(log.contains("became leader"), "{}", self.tail());
    }

    /// Waits until the pool's status describes its generation and `pred` holds; returns the pool
    /// as the API server serves it (JSON).
    async fn wait_pool(
        &self,
        c: &Client,
        name: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut last = Value::Null;
        loop {
            if let Some(pool) = get_pool(c, name).await {
                let current =
                    pool["metadata"]["generation"] == pool["status"]["observedGeneration"];
                if current && pred(&pool) {
                    return pool;
                }
                last = pool;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for GpuPool {name}: {what}\nlast: {}\n{}",
                serde_json::to_string_pretty(&last["status"]).unwrap(),
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GitOps verdicts
// ---------------------------------------------------------------------------------------------

/// A pool with a readiness gate and validation, under the shipped RBAC (validation pods are
/// created and deleted by the operator's ServiceAccount): validating is progress, a failing
/// node stalls the pool, a fixed one makes it Current/Healthy.
async fn gated_and_validated_pool_for_gitops(c: &Client, op: &Operator) {
    use testenv::simulate::{SIMULATE_VALIDATION_LABEL, ValidationPods};
    let _kubelet = ValidationPods::spawn_selecting(
        c.clone(),
        "gpupool.io/pool=pkg-val",
        Duration::from_secs(3),
    );
    for (name, outcome) in [("pkgval-0", "pass"), ("pkgval-1", "fail")] {
        create_node(
            c,
            &GpuNode::aks(name, "pkgval")
                .taint("gpupool.io/gpu-not-ready", "", "NoSchedule")
                .label(SIMULATE_VALIDATION_LABEL, outcome),
        )
        .await
        .unwrap();
    }
    create_pool(
        c,
        PoolYaml::new("pkg-val").agentpool("pkgval").extra_spec(
            "  readinessGate: {}
  validation: {}
",
        ),
    )
    .await;
    let validating = op
        .wait_pool(
            c,
            "pkg-val",
            "GpusValidated False (ValidationPending)",
            |p| {
                cond(p, "GpusValidated")
                    .is_some_and(|r| r.0 == "False" && r.1 == "ValidationPending")
            },
        )
        .await;
    assert_gitops(&validating, "InProgress", "Progressing");
    let failed = op
        .wait_pool(
            c,
            "pkg-val",
            "GpusValidated False (ValidationFailed)",
            |p| {
                cond(p, "GpusValidated")
                    .is_some_and(|r| r.0 == "False" && r.1 == "ValidationFailed")
            },
        )
        .await;
    assert!(
        cond(&failed, "GpusValidated")
            .unwrap()
            .2
            .contains("pkgval-1"),
        "{failed}"
    );
    assert_gitops(&failed, "Failed", "Degraded");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(c.clone());
    nodes
        .patch(
            "pkgval-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SIMULATE_VALIDATION_LABEL: "pass"}}})),
        )
        .await
        .unwrap();
    let validated = op
        .wait_pool(c, "pkg-val", "GpusValidated True, Ready", |p| {
            cond(p, "GpusValidated").is_some_and(|r| r.0 == "True")
                && cond(p, "Ready").is_some_and(|r| r.0 == "True")
        })
        .await;
    assert_gitops(&validated, "Current", "Healthy");
}

/// What kstatus (Flux) and the shipped Argo CD health check say about the live object.
fn assert_gitops(pool: &Value, kstatus_wanted: &str, argocd_wanted: &str) {
    if std::env::var_os("PACKAGING_DUMP").is_some() {
        eprintln!("DUMP {}", pool);
    }
    let (status, message) = kstatus(pool);
    assert_eq!(
        status,
        kstatus_wanted,
        "kstatus of {} ({message})\n{}",
        pool["metadata"]["name"],
        serde_json::to_string_pretty(&pool["status"]).unwrap()
    );
    let (health, message) = argocd::health(&argocd::shipped_script(), pool);
    assert_eq!(
        health,
        argocd_wanted,
        "Argo CD health of {} ({message})\n{}",
        pool["metadata"]["name"],
        serde_json::to_string_pretty(&pool["status"]).unwrap()
    );
    assert!(!message.is_empty());
}

/// `status.Compute` of sigs.k8s.io/cli-utils/pkg/kstatus (hack/tools/kstatus): (status, message).
fn kstatus(object: &Value) -> (String, String) {
    let out = run_with_stdin(
        &mut Command::new(tools_bin().join("kstatus")),
        &object.to_string(),
    );
    let v: Value = serde_json::from_str(out.trim()).expect("kstatus prints JSON");
    (
        v["status"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// A condition of a pool as JSON: (status, reason, message).
fn cond(pool: &Value, type_: &str) -> Option<(String, String, String)> {
    pool["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

// ---------------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------------

fn reviewed() -> BTreeSet<String> {
    REVIEWED_PERMISSIONS.iter().map(|s| s.to_string()).collect()
}

/// Every rule of every ClusterRole and Role in `docs`, one verb per entry (see
/// [`REVIEWED_PERMISSIONS`]); `alias` maps release-specific names (namespaces, Lease names) to
/// the reviewed ones.
fn permissions(docs: &[Value], alias: &[(&str, &str)]) -> BTreeSet<String> {
    let name = |s: &str| {
        alias
            .iter()
            .find(|(from, _)| *from == s)
            .map_or(s.to_string(), |(_, to)| to.to_string())
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut out = BTreeSet::new();
    // The roles for users (gpupool-view, gpupool-admin) are not the operator's.
    let for_users =
        |doc: &Value| doc["metadata"]["labels"]["app.kubernetes.io/component"] == "user-roles";
    for doc in docs.iter().filter(|d| !for_users(d)) {
        let scope = match doc["kind"].as_str() {
            Some("ClusterRole") => "cluster".to_string(),
            Some("Role") => name(
                doc["metadata"]["namespace"]
                    .as_str()
                    .expect("Role namespace"),
            ),
            _ => continue,
        };
        assert!(
            doc.get("aggregationRule").is_none(),
            "aggregated roles are not reviewable"
        );
        for rule in doc["rules"].as_array().expect("rules") {
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "nonResourceURLs: {rule}"
            );
            let names: Vec<String> = strings(&rule["resourceNames"])
                .iter()
                .map(|n| name(n))
                .collect();
            let names = if names.is_empty() {
                String::new()
            } else {
                format!(" [{}]", names.join(","))
            };
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        let group = if group.is_empty() { "core" } else { &group };
                        assert!(
                            !resource.contains('*') && verb != "*" && group != "*",
                            "wildcard in {rule}"
                        );
                        assert!(resource != "secrets", "Secrets in {rule}");
                        out.insert(format!("{scope}: {group}/{resource} {verb}{names}"));
                    }
                }
            }
        }
    }
    out
}

/// Every role of the operator is bound, and only to the operator's ServiceAccount.
fn assert_bindings(docs: &[Value], sa_namespace: &str, sa_name: &str) {
    let roles: BTreeSet<(String, String, String)> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        // The roles for users are bound by admins, to people.
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] != "user-roles")
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut bound = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(
            subjects,
            &vec![json!({"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace})],
            "{binding}"
        );
        let kind = binding["roleRef"]["kind"].as_str().unwrap().to_string();
        let namespace = if kind == "Role" {
            binding["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            String::new()
        };
        bound.insert((
            kind,
            namespace,
            binding["roleRef"]["name"].as_str().unwrap().to_string(),
        ));
    }
    assert_eq!(bound, roles, "every role bound exactly once");
    let sa = docs
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .expect("a ServiceAccount");
    assert_eq!(sa["metadata"]["name"], sa_name);
    assert_eq!(sa["metadata"]["namespace"], sa_namespace);
}

/// Asks the API server (SubjectAccessReview) whether the ServiceAccount may do each reviewed
/// thing (`alias` maps reviewed names to the installation's), waiting until RBAC has caught up
/// with freshly applied bindings; and that it may not do a few things it must never do.
async fn wait_until_rbac_allows(
    c: &Client,
    sa_namespace: &str,
    sa_name: &str,
    alias: &[(&str, &str)],
) {
    let user = format!("system:serviceaccount:{sa_namespace}:{sa_name}");
    let name = |s: &str| {
        alias
            .iter()
            .find(|(from, _)| *from == s)
            .map_or(s.to_string(), |(_, to)| to.to_string())
    };
    let mut wanted = Vec::new();
    for entry in REVIEWED_PERMISSIONS {
        let (scope, rest) = entry.split_once(": ").unwrap();
        let mut words = rest.split(' ');
        let (group, resource) = words.next().unwrap().split_once('/').unwrap();
        let verb = words.next().unwrap();
        let resource_name = words
            .next()
            .map(|n| name(n.trim_start_matches('[').trim_end_matches(']')));
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (resource, None),
        };
        wanted.push(json!({
            "namespace": (scope != "cluster").then(|| name(scope)),
            "group": if group == "core" { "" } else { group },
            "resource": resource,
            "subresource": subresource,
            "verb": verb,
            "name": resource_name,
        }));
    }
    let never = [
        json!({"group": "", "resource": "secrets", "verb": "list"}),
        json!({"group": "", "resource": "configmaps", "verb": "list"}),
        json!({"group": "", "resource": "configmaps", "verb": "patch", "namespace": "kube-system"}),
        json!({"group": "", "resource": "secrets", "verb": "get", "namespace": sa_namespace}),
        json!({"group": "apps", "resource": "daemonsets", "verb": "create", "namespace": "kube-system"}),
        json!({"group": "apps", "resource": "daemonsets", "verb": "delete", "namespace": "default"}),
        json!({"group": "gpupool.io", "resource": "gpupools", "verb": "delete"}),
        json!({"group": "gpupool.io", "resource": "gpupools", "verb": "update"}),
        json!({"group": "", "resource": "nodes", "verb": "delete"}),
        json!({"group": "", "resource": "nodes", "verb": "update"}),
        json!({"group": "", "resource": "pods", "verb": "delete", "namespace": "kube-system"}),
        json!({"group": "", "resource": "pods", "verb": "create", "namespace": "default"}),
        json!({"group": "", "resource": "pods", "verb": "delete", "namespace": "default"}),
        json!({"group": "", "resource": "pods", "subresource": "exec", "verb": "create", "namespace": "gpu-resources"}),
        json!({"group": "coordination.k8s.io", "resource": "leases", "verb": "patch", "namespace": sa_namespace, "name": "someone-elses-lease"}),
    ];
    let allowed = |attrs: Value| {
        let c = c.clone();
        let user = user.clone();
        async move {
            let api: Api<SubjectAccessReview> = Api::all(c);
            let review: SubjectAccessReview = serde_json::from_value(json!({
                "spec": {"user": user, "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_namespace}"), "system:authenticated"], "resourceAttributes": attrs}
            }))
            .unwrap();
            api.create(&Default::default(), &review)
                .await
                .expect("SubjectAccessReview")
                .status
                .is_some_and(|s| s.allowed)
        }
    };
    wait_for(
        &format!("RBAC to allow {user} every reviewed permission"),
        TIMEOUT,
        || async {
            for attrs in &wanted {
                if !allowed(attrs.clone()).await {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    for attrs in never {
        assert!(!allowed(attrs.clone()).await, "{user} may {attrs}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster helpers
// ---------------------------------------------------------------------------------------------

async fn create_pool(c: &Client, yaml: impl std::fmt::Display) {
    support::create_pool(c, yaml).await;
}

/// The pool as the API server serves it (raw JSON, as kstatus and Argo CD see it).
async fn get_pool(c: &Client, name: &str) -> Option<Value> {
    let api: Api<DynamicObject> = Api::all_with(c.clone(), &ApiResource::erase::<GpuPool>(&()));
    let obj = api.get_opt(name).await.expect("API answers")?;
    Some(serde_json::to_value(obj).unwrap())
}

async fn patch_spec(c: &Client, name: &str, patch: Value) {
    Api::<GpuPool>::all(c.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pool patch is accepted");
}

/// Deletes pools once the operator is gone (stopped or uninstalled): their finalizer
/// (gpupool.io/cleanup) is then removed by hand, as the README's uninstall section says.
async fn delete_pools(c: &Client, names: &[&str]) {
    let api: Api<GpuPool> = Api::all(c.clone());
    let no_finalizers = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("deleting GpuPool {name}: {e}"),
        }
        match api
            .patch(name, &PatchParams::default(), &no_finalizers)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => panic!("removing the finalizer of GpuPool {name}: {e}"),
        }
    }
    for name in names {
        wait_for(
            &format!("GpuPool {name} to be deleted"),
            TIMEOUT,
            || async {
                api.get_opt(name)
                    .await
                    .ok()
                    .and_then(|p| p.is_none().then_some(()))
            },
        )
        .await;
    }
}

async fn daemonset(c: &Client, pool: &str) -> Option<DaemonSet> {
    support::get_daemonset(c, &support::plugin_name(pool)).await
}

async fn create_namespace(c: &Client, name: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let api: Api<Namespace> = Api::all(c.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
    api.patch(
        name,
        &PatchParams::apply("packaging-test"),
        &Patch::Apply(&ns),
    )
    .await
    .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
}

fn crd_established(plane: &ControlPlane) {
    run(plane.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gpupools.gpupool.io",
    ]));
}

/// `kubectl apply <flags> -f -` of `docs`; returns stdout.
fn kubectl_apply(plane: &ControlPlane, flags: &[&str], docs: &[Value]) -> String {
    let text: String = docs
        .iter()
        .map(|d| format!("---\n{}", yaml_serde::to_string(d).unwrap()))
        .collect();
    run_with_stdin(
        plane.kubectl().arg("apply").args(flags).args(["-f", "-"]),
        &text,
    )
}

// ---------------------------------------------------------------------------------------------
// Tools, files, processes
// ---------------------------------------------------------------------------------------------

/// `helm template helmtest charts/gpupool-operator -n gpupool-helm <args>`.
fn helm_template(args: &[&str]) -> String {
    run(helm()
        .args([
            "template",
            HELM_RELEASE,
            &path_str("charts/gpupool-operator"),
            "--namespace",
            HELM_NAMESPACE,
        ])
        .args(args))
}

/// `crd` is crds/gpupool.yaml (numbers compared by value: kustomize writes 1.0 as 1).
fn assert_same_crd(crd: &Value, source: &str) {
    fn normalize(v: &Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64().unwrap()),
            Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
            }
            other => other.clone(),
        }
    }
    let committed = &yaml_docs(&read(&repo("crds/gpupool.yaml")))[0];
    assert!(
        normalize(crd) == normalize(committed),
        "{source} does not install crds/gpupool.yaml"
    );
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the manifests"))
}

/// #10.6: the shipped ValidatingAdmissionPolicy rejects a plugin image from elsewhere at
/// admission (in the real API server's CEL), and the shipped user roles let `view` read GpuPools
/// but not write them.
#[tokio::test]
async fn the_admission_policy_and_the_user_roles_hold_on_the_real_api_server() {
    let plane = ControlPlane::shared().await;
    let c = plane.client().await;
    run(plane.kubectl().args([
        "apply",
        "--server-side",
        "-f",
        &path_str("crds/gpupool.yaml"),
    ]));
    crd_established(plane);
    // Client-side, as `kubectl apply -k deploy/` (another test) applies the same objects.
    for file in ["deploy/admission-policy.yaml", "deploy/user-roles.yaml"] {
        run(plane.kubectl().args(["apply", "-f", &path_str(file)]));
    }
    let bad = PoolYaml::new("vap-bad")
        .agentpool("vap")
        .extra_spec("  devicePlugin:\n    image: registry.example.com/evil/plugin:1\n")
        .to_string();
    let pools: Api<DynamicObject> = Api::all_with(c.clone(), &gpupool_resource());
    let body: DynamicObject = yaml_serde::from_str(&bad).unwrap();
    // The policy's bindings take a moment to reach the admission chain: retry until refused.
    let refused = wait_for(
        "the admission policy to refuse a foreign plugin image",
        TIMEOUT,
        || async {
            match pools.create(&PostParams::default(), &body).await {
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
                Ok(_) => {
                    let _ = pools
                        .delete("vap-bad", &kube::api::DeleteParams::default())
                        .await;
                    None
                }
                Err(_) => None,
            }
        },
    )
    .await;
    assert!(refused.contains("spec.devicePlugin.image registry.example.com/evil/plugin:1 is not from an allowed repository"), "{refused}");
    let good = PoolYaml::new("vap-good").agentpool("vap").extra_spec("  devicePlugin:\n    image: mcr.microsoft.com/oss/nvidia/k8s-device-plugin:v0.18.0@sha256:0000000000000000000000000000000000000000000000000000000000000000\n");
    pools
        .create(
            &PostParams::default(),
            &yaml_serde::from_str(&good.to_string()).unwrap(),
        )
        .await
        .expect("an allowed repository, even with a tag and a digest, passes");
    // The validation image gets a GPU on every node of the pool: held to its own list.
    let bad_validation = PoolYaml::new("vap-bad-validation")
        .agentpool("vap")
        .extra_spec("  validation:\n    image: registry.example.com/miner:1\n");
    let refused = pools
        .create(
            &PostParams::default(),
            &yaml_serde::from_str(&bad_validation.to_string()).unwrap(),
        )
        .await
        .expect_err("a validation image from elsewhere is refused");
    assert!(
        refused.to_string().contains(
            "spec.validation.image registry.example.com/miner:1 is not from an allowed repository"
        ),
        "{refused}"
    );
    let good_validation = PoolYaml::new("vap-good-validation").agentpool("vap").extra_spec(
        "  validation:\n    image: mcr.microsoft.com/azuredocs/samples-tf-mnist-demo:gpu\n    args: [--max_steps, \"500\"]\n",
    );
    pools
        .create(
            &PostParams::default(),
            &yaml_serde::from_str(&good_validation.to_string()).unwrap(),
        )
        .await
        .expect("the AKS article's sample passes");

    // A user bound to the built-in view role reads GpuPools and cannot write them.
    let viewer = "system:serviceaccount:default:gpu-viewer";
    let can = |verb: &'static str| {
        let c = c.clone();
        async move {
            let review: k8s_openapi::api::authorization::v1::SubjectAccessReview = serde_json::from_value(json!({
                "spec": {"user": viewer, "groups": ["system:serviceaccounts", "system:authenticated"],
                         "resourceAttributes": {"group": "gpupool.io", "resource": "gpupools", "verb": verb}}
            }))
            .unwrap();
            let api: Api<k8s_openapi::api::authorization::v1::SubjectAccessReview> = Api::all(c);
            api.create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
                .allowed
        }
    };
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "gpu-viewer-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "gpu-viewer", "namespace": "default"}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(c.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    wait_for(
        "view to include gpupool-view (aggregation)",
        TIMEOUT,
        || async { can("list").await.then_some(()) },
    )
    .await;
    assert!(can("get").await && can("watch").await);
    for verb in ["create", "update", "patch", "delete"] {
        assert!(!can(verb).await, "view may {verb} GpuPools");
    }
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(c.clone());
    for role in ["edit", "admin"] {
        let rules = roles.get(role).await.unwrap().rules.unwrap_or_default();
        assert!(
            !rules
                .iter()
                .any(|r| r.api_groups.iter().flatten().any(|g| g == "gpupool.io")
                    && r.verbs.iter().any(|v| v == "create")),
            "{role} may create GpuPools"
        );
    }
}

fn gpupool_resource() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "gpupool.io".into(),
        version: "v1alpha1".into(),
        api_version: "gpupool.io/v1alpha1".into(),
        kind: "GpuPool".into(),
        plural: "gpupools".into(),
    }
}

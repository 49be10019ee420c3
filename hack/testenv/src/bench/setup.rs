//! Setup: the CRD, namespaces, the operator's ServiceAccount, and the nodes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::{BenchOptions, OPERATOR_NAMESPACE, OPERATOR_SA, PLUGIN_NAMESPACE, log};
use crate::nodes::{self, GpuNode};
use crate::{ControlPlane, Error, poll_until};

/// Installs the CRD and the namespaces, and makes the operator's ServiceAccount (bound to
/// cluster-admin, so that the audit log tells its requests apart from everyone else's). Returns a
/// kubeconfig for it.
pub(super) async fn operator_identity(plane: &ControlPlane) -> Result<PathBuf, Error> {
    let client = plane.client().await;
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/gpupool.yaml");
    plane.apply_crd(&crd, "gpupools.gpupool.io")?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [PLUGIN_NAMESPACE, OPERATOR_NAMESPACE] {
        namespaces
            .create(
                &PostParams::default(),
                &object(serde_json::json!({"metadata": {"name": ns}}))?,
            )
            .await?;
    }
    let sa: ServiceAccount = object(serde_json::json!({"metadata": {"name": OPERATOR_SA}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .create(&PostParams::default(), &sa)
        .await?;
    let binding: ClusterRoleBinding = object(serde_json::json!({
        "metadata": {"name": "gpupool-bench-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}],
    }))?;
    Api::<ClusterRoleBinding>::all(client)
        .create(&PostParams::default(), &binding)
        .await?;
    plane
        .kubeconfig_for_service_account(OPERATOR_NAMESPACE, OPERATOR_SA)
        .await
}

pub(super) fn object<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<T, Error> {
    serde_json::from_value(json).map_err(|e| Error::Config {
        what: "building an API object".into(),
        detail: e.to_string(),
    })
}

/// Creates the nodes (`create_concurrency` at a time) and returns how long that took. Each node
/// shows its GPUs from the start and opts in to GPUs that follow its plugin pod
/// ([`crate::simulate::GPUS_FOLLOW_PLUGIN_ANNOTATION`]), which matters only once the rollout
/// phase starts [`crate::simulate::PluginGpus`].
pub(super) async fn create_nodes(
    client: &kube::Client,
    opts: &BenchOptions,
    gpus: &[(u32, u32)],
) -> Result<Duration, Error> {
    log(format!("creating {} nodes", opts.nodes));
    let started = Instant::now();
    let created = AtomicUsize::new(0);
    futures::stream::iter(0..opts.nodes)
        .map(|j| {
            let node = GpuNode::aks(&super::node_name(j), &super::agentpool(j % opts.pools))
                .gpus(gpus[j].0)
                .taint("sku", "gpu", "NoSchedule");
            let created = &created;
            async move {
                nodes::create_node(client, &node).await?;
                follow_plugin(client, &node.name, node.gpus).await?;
                let n = created.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(1000) {
                    log(format!("  {n} nodes"));
                }
                Ok::<(), Error>(())
            }
        })
        .buffer_unordered(opts.create_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    log(format!(
        "nodes created in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(started.elapsed())
}

/// Annotates the node so that its GPUs follow its plugin pod once a [`crate::simulate::PluginGpus`]
/// runs. (Not [`GpuNode::gpus_follow_plugin`]: that registers the node without GPUs, and the
/// phases before the rollout measure nodes that have theirs.)
async fn follow_plugin(client: &kube::Client, node: &str, gpus: u32) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {
        crate::simulate::GPUS_FOLLOW_PLUGIN_ANNOTATION: gpus.to_string(),
    }}});
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Creates `nodes` as they are (`concurrency` at a time); returns how long that took.
pub(super) async fn create_plain_nodes(
    client: &kube::Client,
    nodes: Vec<GpuNode>,
    concurrency: usize,
) -> Result<Duration, Error> {
    let started = Instant::now();
    futures::stream::iter(nodes)
        .map(|node| async move { nodes::create_node(client, &node).await.map(drop) })
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

/// Waits until kwok has marked every node Ready, so the pool phases do not race node
/// initialisation.
pub(super) async fn wait_nodes_ready(
    client: &kube::Client,
    opts: &BenchOptions,
) -> Result<(), Error> {
    wait_ready(client, "", opts.nodes, opts.timeout).await?;
    log("every node is Ready");
    Ok(())
}

/// Waits until at least `count` nodes matching the label selector `labels` (every node: "") are
/// Ready.
pub(super) async fn wait_ready(
    client: &kube::Client,
    labels: &str,
    count: usize,
    timeout: Duration,
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(client.clone());
    poll_until(
        &format!("{count} nodes Ready"),
        timeout,
        Duration::from_secs(1),
        || async {
            let mut ready = 0;
            let mut token: Option<String> = None;
            loop {
                let mut lp = ListParams::default().limit(1000);
                if !labels.is_empty() {
                    lp = lp.labels(labels);
                }
                if let Some(t) = &token {
                    lp = lp.continue_token(t);
                }
                let page = api.list(&lp).await.ok()?;
                ready += page.items.iter().filter(|n| nodes::is_ready(n)).count();
                token = page.metadata.continue_.filter(|t| !t.is_empty());
                if token.is_none() {
                    break;
                }
            }
            (ready >= count).then_some(())
        },
    )
    .await
}

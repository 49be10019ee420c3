//! Planes of their own for tests that break things, and operator replicas on them, each running
//! as its own ServiceAccount (bound to cluster-admin) so the API server's audit log tells their
//! requests apart.

use std::path::PathBuf;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, PostParams};
use testenv::{ControlPlane, Options};

use super::{PLUGIN_NAMESPACE, install_crd};

/// A plane of its own with the CRD and the plugin namespace.
pub async fn own_plane(options: Options) -> (ControlPlane, Client) {
    let plane = ControlPlane::start_with(options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    install_crd(&plane).await;
    let client = plane.client().await;
    create_namespace(&client, PLUGIN_NAMESPACE).await;
    (plane, client)
}

pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
        .expect("a Namespace");
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// A ServiceAccount in `gpupool-system` (the namespace the plane's audit policy records) per
/// name, each bound to cluster-admin; their kubeconfigs, in order.
pub async fn admin_accounts(plane: &ControlPlane, client: &Client, names: &[&str]) -> Vec<PathBuf> {
    create_namespace(client, testenv::audit::AUDITED_NAMESPACE).await;
    let mut kubeconfigs = Vec::new();
    for sa in names {
        let account: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), testenv::audit::AUDITED_NAMESPACE)
            .create(&PostParams::default(), &account)
            .await
            .unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{sa}-admin")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": testenv::audit::AUDITED_NAMESPACE}]
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        kubeconfigs.push(
            plane
                .kubeconfig_for_service_account(testenv::audit::AUDITED_NAMESPACE, sa)
                .await
                .unwrap(),
        );
    }
    kubeconfigs
}

/// The user name of a ServiceAccount made by [`admin_accounts`].
pub fn account_user(sa: &str) -> String {
    format!(
        "system:serviceaccount:{}:{sa}",
        testenv::audit::AUDITED_NAMESPACE
    )
}

/// Who holds the leader Lease (`gpupool-operator` in `gpupool-system`) now.
pub async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), testenv::audit::AUDITED_NAMESPACE)
        .get_opt("gpupool-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Waits until the API server's audit log holds every request received up to now (see
/// `testenv::audit::flush`).
pub async fn audit_flushed(plane: &ControlPlane, _client: &Client) {
    testenv::audit::flush(plane)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

//! Identities and kubeconfigs: the static bearer tokens of the plane's own users, and
//! self-contained kubeconfig files for them and for ServiceAccounts.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::process::write_private;
use crate::{Error, pki};

/// Kubeconfigs of the plane's static users, and the token file kube-apiserver authenticates them
/// with.
#[derive(Debug, Clone)]
pub(crate) struct StaticUsers {
    /// `--token-auth-file` of kube-apiserver.
    pub token_file: PathBuf,
    /// `admin`, group `system:masters`: tests, kubectl, the demo.
    pub admin: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
    /// kwok plays every kubelet; `system:masters` spares it the Node authorizer's per-node rules.
    pub kwok: PathBuf,
}

/// Makes one bearer token per user and writes the token file and a kubeconfig for each.
///
/// One identity per component, as in a real cluster, so that RBAC's bootstrap roles apply to the
/// controller-manager and scheduler exactly as there.
pub(crate) fn static_users(
    root: &Path,
    server_url: &str,
    ca_pem: &[u8],
) -> Result<StaticUsers, Error> {
    let users = StaticUsers {
        token_file: root.join("pki/tokens.csv"),
        admin: root.join("kubeconfig"),
        controller_manager: root.join("kubeconfigs/kube-controller-manager.yaml"),
        scheduler: root.join("kubeconfigs/kube-scheduler.yaml"),
        kwok: root.join("kubeconfigs/kwok.yaml"),
    };
    // Lines of the token file (token,user,uid[,"groups"]) after the token.
    let table = [
        (&users.admin, "admin", "uid-admin,\"system:masters\""),
        (
            &users.controller_manager,
            "system:kube-controller-manager",
            "uid-kube-controller-manager",
        ),
        (
            &users.scheduler,
            "system:kube-scheduler",
            "uid-kube-scheduler",
        ),
        (&users.kwok, "kwok", "uid-kwok,\"system:masters\""),
    ];
    let mut csv = String::new();
    for (kubeconfig, user, uid_and_groups) in table {
        let token = pki::random_token()?;
        csv.push_str(&format!("{token},{user},{uid_and_groups}\n"));
        write(kubeconfig, server_url, ca_pem, user, &token)?;
    }
    write_private(&users.token_file, csv.as_bytes())?;
    Ok(users)
}

/// Writes a self-contained kubeconfig (CA inline) with a bearer token, readable only by us.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_pem: &[u8],
    user: &str,
    token: &str,
) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "gpupool-testenv",
            "cluster": {
                "server": server,
                "certificate-authority-data": pki::base64(ca_pem),
            },
        }],
        "users": [{ "name": user, "user": { "token": token } }],
        "contexts": [{
            "name": "gpupool-testenv",
            "context": { "cluster": "gpupool-testenv", "user": user },
        }],
        "current-context": "gpupool-testenv",
    });
    let text = yaml_serde::to_string(&doc).map_err(|e| Error::Config {
        what: format!("serializing kubeconfig {}", path.display()),
        detail: e.to_string(),
    })?;
    write_private(path, text.as_bytes())
}

/// Writes a self-contained kubeconfig (CA inline) with a client certificate and key inline,
/// readable only by us.
pub(crate) fn write_with_certificate(
    path: &Path,
    server: &str,
    ca_pem: &[u8],
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), Error> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "gpupool-testenv",
            "cluster": {
                "server": server,
                "certificate-authority-data": pki::base64(ca_pem),
            },
        }],
        "users": [{ "name": user, "user": {
            "client-certificate-data": pki::base64(cert_pem.as_bytes()),
            "client-key-data": pki::base64(key_pem.as_bytes()),
        } }],
        "contexts": [{
            "name": "gpupool-testenv",
            "context": { "cluster": "gpupool-testenv", "user": user },
        }],
        "current-context": "gpupool-testenv",
    });
    let text = yaml_serde::to_string(&doc).map_err(|e| Error::Config {
        what: format!("serializing kubeconfig {}", path.display()),
        detail: e.to_string(),
    })?;
    write_private(path, text.as_bytes())
}

/// A client from a kubeconfig file (admin and ServiceAccount kubeconfigs).
pub(crate) async fn client(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

//! What the operator asked of the API server, read back from kube-apiserver's audit log (JSON
//! lines): tests and the benchmark count the operator's requests instead of trusting its logs.

use std::path::Path;
use std::time::SystemTime;

/// The ServiceAccount namespace whose requests the default audit policy records: run the operator
/// as a ServiceAccount there and every request it makes is in [`crate::ControlPlane::audit_log_path`].
pub const AUDITED_NAMESPACE: &str = "gpupool-system";

/// Records (at Metadata level) only the requests of ServiceAccounts in [`AUDITED_NAMESPACE`].
pub fn default_policy() -> String {
    policy_for(
        "userGroups",
        &format!("system:serviceaccounts:{AUDITED_NAMESPACE}"),
    )
}

/// Records only `user`'s requests (and the marker's, see [`flush`]).
pub fn policy_for_user(user: &str) -> String {
    policy_for("users", &format!("{user}\", \"{}", marker_user()))
}

fn policy_for(field: &str, value: &str) -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n  {field}: [\"{value}\"]\n- level: None\n"
    )
}

/// The ServiceAccount [`flush`] marks the log with.
const MARKER: &str = "audit-marker";

fn marker_user() -> String {
    format!("system:serviceaccount:{AUDITED_NAMESPACE}:{MARKER}")
}

/// Waits until the audit log (written in batches of up to a second) holds every request the
/// API server received before this call: a marker request is made as a ServiceAccount of its
/// own in [`AUDITED_NAMESPACE`] (refused, 403, and recorded all the same) and waited for. An
/// empty count read after this is a count, not a log that lags behind.
pub async fn flush(plane: &crate::ControlPlane) -> Result<(), crate::Error> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    use kube::api::{Api, PostParams};
    let admin = plane.client().await;
    let ignore_exists = |r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other,
    };
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": AUDITED_NAMESPACE}}))
            .map_err(kube::Error::SerdeError)?;
    ignore_exists(
        Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map(drop),
    )?;
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": MARKER}}))
            .map_err(kube::Error::SerdeError)?;
    ignore_exists(
        Api::<ServiceAccount>::namespaced(admin, AUDITED_NAMESPACE)
            .create(&PostParams::default(), &sa)
            .await
            .map(drop),
    )?;
    let kubeconfig = plane
        .kubeconfig_for_service_account(AUDITED_NAMESPACE, MARKER)
        .await?;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let marker = kube::Client::try_from(config)?;
    let sent = SystemTime::now();
    let _ = Api::<Namespace>::all(marker).get("default").await;
    let log = plane.audit_log_path();
    crate::poll_until(
        "the audit log to be flushed",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(100),
        || {
            let log = log.clone();
            async move {
                requests(&log, &marker_user())
                    .iter()
                    .any(|r| r.received >= sent)
                    .then_some(())
            }
        },
    )
    .await
}

/// One request as the audit log has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    pub verb: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub received: SystemTime,
    /// The response's HTTP status code (e.g. 409 for a write that lost a resourceVersion race).
    pub code: Option<u16>,
}

impl Request {
    /// A request that changes something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Every request of `user` in the log, each once: watches when their response started,
/// everything else when it completed.
pub fn requests(audit_log: &Path, user: &str) -> Vec<Request> {
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| request(&event))
        .filter(|r| r.user == user)
        .collect()
}

fn request(event: &serde_json::Value) -> Option<Request> {
    let text = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let verb = text("/verb")?;
    let counted_stage = if verb == "watch" {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    if text("/stage").as_deref() != Some(counted_stage) {
        return None;
    }
    let resource = text("/objectRef/resource").unwrap_or_else(|| "(non-resource)".into());
    let received = text("/requestReceivedTimestamp")?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()?;
    Some(Request {
        user: text("/user/username")?,
        resource: match text("/objectRef/subresource") {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        },
        namespace: text("/objectRef/namespace"),
        name: text("/objectRef/name"),
        verb,
        received: SystemTime::from(received),
        code: event
            .pointer("/responseStatus/code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok()),
    })
}

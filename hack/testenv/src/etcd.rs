//! etcd: its command line, its health, and compaction through its JSON gateway (plain HTTP on
//! the client URL; keys are base64).

use std::ffi::OsString;
use std::path::Path;

use crate::{Error, http};

/// The command line of a single-member etcd on loopback.
pub(crate) fn args(data_dir: &Path, client_url: &str, peer_port: u16) -> Vec<OsString> {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    [
        "--name=testenv".to_owned(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=testenv={peer_url}"),
        // Test data is throwaway: fsync only costs time.
        "--unsafe-no-fsync".to_owned(),
        "--log-level=warn".to_owned(),
    ]
    .map(OsString::from)
    .to_vec()
}

/// Whether `GET /health` says healthy; `Err` while etcd does not answer.
pub(crate) async fn healthy(client_url: &str) -> Result<bool, Error> {
    let (_, body) = http::get(&format!("{client_url}/health")).await?;
    Ok(body.contains("\"health\":\"true\""))
}

/// Compacts etcd's history up to its current revision (physically); returns that revision.
pub(crate) async fn compact(client_url: &str) -> Result<i64, Error> {
    // The key "\0" with limit 1: any answer carries the current revision in its header.
    let range = post(
        client_url,
        "/v3/kv/range",
        serde_json::json!({"key": "AA==", "limit": 1}),
    )
    .await?;
    let revision = range
        .pointer("/header/revision")
        // int64 fields are strings in the gateway's JSON.
        .and_then(|r| {
            r.as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .or(r.as_i64())
        })
        .ok_or_else(|| Error::Command {
            what: "etcd range (reading the current revision)".into(),
            detail: range.to_string(),
        })?;
    post(
        client_url,
        "/v3/kv/compaction",
        serde_json::json!({"revision": revision.to_string(), "physical": true}),
    )
    .await?;
    Ok(revision)
}

/// JSON POST to the gateway; returns the parsed response body.
async fn post(
    client_url: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let fail = |detail: String| Error::Command {
        what: format!("etcd POST {path}"),
        detail,
    };
    match http::post_json(&format!("{client_url}{path}"), &body).await? {
        (200, payload) => {
            serde_json::from_str(&payload).map_err(|e| fail(format!("{e}: {payload}")))
        }
        (status, payload) => Err(fail(format!("HTTP {status}: {payload}"))),
    }
}

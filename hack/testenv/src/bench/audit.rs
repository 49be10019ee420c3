//! The operator's API requests, counted from kube-apiserver's audit log (JSON lines).

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::report::RequestCounts;

/// Counts `user`'s requests that the API server received in `[from, to)`. Watches count once,
/// when their response started; everything else when it completed.
pub(super) fn count_requests(
    audit_log: &Path,
    user: &str,
    from: Instant,
    to: Instant,
) -> RequestCounts {
    // Audit timestamps are wall-clock: map the Instants onto the system clock.
    let (now_i, now_s) = (Instant::now(), SystemTime::now());
    let wall = |i: Instant| now_s - now_i.saturating_duration_since(i);
    let window = wall(from)..wall(to);
    let text = std::fs::read_to_string(audit_log).unwrap_or_default();
    let mut counts = RequestCounts::new();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(key) = counted(&event, user)
            && event_time(&event).is_some_and(|t| window.contains(&t))
        {
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

/// (verb, resource[/subresource]) of an event of `user` at the stage it counts at.
fn counted(event: &serde_json::Value, user: &str) -> Option<(String, String)> {
    let text = |pointer: &str| event.pointer(pointer).and_then(|v| v.as_str());
    if text("/user/username") != Some(user) {
        return None;
    }
    let verb = text("/verb").unwrap_or("");
    let counted_stage = if verb == "watch" {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };
    if text("/stage") != Some(counted_stage) {
        return None;
    }
    let resource = text("/objectRef/resource").unwrap_or("(non-resource)");
    let resource = match text("/objectRef/subresource") {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    Some((verb.to_owned(), resource))
}

fn event_time(event: &serde_json::Value) -> Option<SystemTime> {
    let received = event.get("requestReceivedTimestamp")?.as_str()?;
    let timestamp = received.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    Some(SystemTime::from(timestamp))
}

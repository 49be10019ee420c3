//! The operator's API requests per phase, counted from kube-apiserver's audit log.

use std::path::Path;
use std::time::{Instant, SystemTime};

use super::report::RequestCounts;

/// Counts `user`'s requests that the API server received in `[from, to)`.
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
    let mut counts = RequestCounts::new();
    for request in crate::audit::requests(audit_log, user)
        .into_iter()
        .filter(|r| window.contains(&r.received))
    {
        *counts.entry((request.verb, request.resource)).or_insert(0) += 1;
    }
    counts
}

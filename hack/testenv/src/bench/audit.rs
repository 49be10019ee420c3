//! The operator's API requests per phase, counted from kube-apiserver's audit log.

use std::collections::BTreeMap;
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

/// `user`'s writes that the API server received in any of `windows`, by the pool they concern
/// (see [`pool_of`]); `None` counts the writes no pool can be named for.
pub(super) fn writes_by_pool(
    audit_log: &Path,
    user: &str,
    windows: &[(Instant, Instant)],
    pools: usize,
) -> BTreeMap<Option<String>, u64> {
    let (now_i, now_s) = (Instant::now(), SystemTime::now());
    let wall = |i: Instant| now_s - now_i.saturating_duration_since(i);
    let windows: Vec<_> = windows.iter().map(|(f, t)| wall(*f)..wall(*t)).collect();
    let mut out = BTreeMap::new();
    for request in crate::audit::requests(audit_log, user)
        .into_iter()
        .filter(|r| r.is_write() && windows.iter().any(|w| w.contains(&r.received)))
    {
        let pool = request
            .name
            .as_deref()
            .and_then(|name| pool_of(&request.resource, name, pools));
        *out.entry(pool).or_insert(0) += 1;
    }
    out
}

/// The bench pool a request's object belongs to: the pool itself (`bench-pool-<i>`,
/// `bench-spaced-<k>`), its DaemonSet and ConfigMap (`nvidia-device-plugin-<pool>[-config]`), a
/// node (`bench-node-<j>` is in pool j mod P), or an Event about any of these (`<object>.<hex>`).
pub(super) fn pool_of(resource: &str, name: &str, pools: usize) -> Option<String> {
    let object = if resource == "events" {
        name.split('.').next()?
    } else {
        name
    };
    let object = match object.strip_prefix("nvidia-device-plugin-") {
        Some(rest) => rest.strip_suffix("-config").unwrap_or(rest),
        None => object,
    };
    if let Some(j) = object.strip_prefix("bench-node-") {
        let j: usize = j.parse().ok()?;
        return Some(super::pool_name(j % pools.max(1)));
    }
    let pool = object
        .strip_prefix("bench-pool-")
        .or(object.strip_prefix("bench-spaced-"))?;
    pool.parse::<usize>().ok().map(|_| object.to_owned())
}

#[cfg(test)]
mod tests {
    use super::pool_of;

    #[test]
    fn writes_are_attributed_to_their_pool() {
        let of = |resource, name| pool_of(resource, name, 100);
        assert_eq!(
            of("gpupools/status", "bench-pool-7").as_deref(),
            Some("bench-pool-7")
        );
        assert_eq!(
            of("nodes", "bench-node-1207").as_deref(),
            Some("bench-pool-7")
        );
        assert_eq!(
            of("events", "bench-pool-12.18a0f3").as_deref(),
            Some("bench-pool-12")
        );
        assert_eq!(
            of("events", "bench-node-99.ff").as_deref(),
            Some("bench-pool-99")
        );
        assert_eq!(
            of("daemonsets", "nvidia-device-plugin-bench-pool-3").as_deref(),
            Some("bench-pool-3")
        );
        assert_eq!(
            of("configmaps", "nvidia-device-plugin-bench-spaced-2-config").as_deref(),
            Some("bench-spaced-2")
        );
        assert_eq!(of("leases", "gpupool-operator"), None);
        assert_eq!(of("events", "gpupool-operator.1"), None);
    }
}

//! Which watches have delivered a complete list, and which cannot list at all (RBAC taken away,
//! a namespace without its Role): a pool is reconciled once every watch it depends on has
//! listed, and reported `Stalled` when one of them cannot, instead of waiting forever.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{Allocation, GpuPool};
use crate::decide::facts::Unreadable;
use crate::decide::plugin::config::plugin_config;

/// The watches.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, strum::Display, strum::IntoStaticStr,
)]
pub enum WatchKind {
    GpuPool,
    Node,
    DaemonSet,
    Pod,
    ResourceSlice,
    ConfigMap,
    /// The DRA driver's kubelet plugin pods.
    DraDriverPod,
    DeviceClass,
}

pub const ALL: [WatchKind; 8] = [
    WatchKind::GpuPool,
    WatchKind::Node,
    WatchKind::DaemonSet,
    WatchKind::Pod,
    WatchKind::ResourceSlice,
    WatchKind::ConfigMap,
    WatchKind::DraDriverPod,
    WatchKind::DeviceClass,
];

impl WatchKind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The state of every watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Watches that delivered a complete list at least once.
    listed: BTreeSet<WatchKind>,
    /// Watches whose last list was refused (and not listed since).
    failed: BTreeMap<WatchKind, Unreadable>,
}

impl Synced {
    /// Every watch has listed.
    pub fn all(&self) -> bool {
        ALL.iter().all(|k| self.listed.contains(k))
    }

    /// Every watch has listed or been refused: the start is over, events mean changes.
    pub fn settled(&self) -> bool {
        ALL.iter()
            .all(|k| self.listed.contains(k) || self.failed.contains_key(k))
    }

    /// Marks a complete list; returns whether the watch had listed before (a re-list).
    pub fn listed(&mut self, kind: WatchKind) -> bool {
        self.failed.remove(&kind);
        !self.listed.insert(kind)
    }

    pub fn failed(&mut self, kind: WatchKind, unreadable: Unreadable) {
        self.failed.insert(kind, unreadable);
    }

    /// Whether any refused watch matches.
    pub fn for_each_refused(&self, mut f: impl FnMut(WatchKind) -> bool) -> bool {
        self.failed.keys().any(|k| f(*k))
    }

    /// For a pool: Some(Ok) once every watch it depends on has listed, Some(Err) with what it
    /// cannot read once one of them was refused, None while still listing.
    pub fn for_pool(&self, pool: &GpuPool) -> Option<Result<(), Vec<Unreadable>>> {
        let needed = needed_by(pool);
        let refused: Vec<Unreadable> = needed
            .iter()
            .filter_map(|k| self.failed.get(k).cloned())
            .collect();
        if !refused.is_empty() {
            return Some(Err(refused));
        }
        needed
            .iter()
            .all(|k| self.listed.contains(k))
            .then_some(Ok(()))
    }
}

/// The watches a pool's decisions read: all but the plugin ConfigMaps', which only pools with a
/// plugin config (sharing, MIG) need, and the DRA driver's pods and DeviceClasses, which pools
/// with `allocation: DevicePlugin` do not.
fn needed_by(pool: &GpuPool) -> Vec<WatchKind> {
    let config = plugin_config(&pool.spec).is_some();
    let dra = pool.spec.allocation != Allocation::DevicePlugin;
    ALL.into_iter()
        .filter(|k| *k != WatchKind::ConfigMap || config)
        .filter(|k| !matches!(k, WatchKind::DraDriverPod | WatchKind::DeviceClass) || dra)
        .collect()
}

/// What a refused list says, if it is one only an admin can fix (401, 403); other errors are
/// retried by the watch.
pub fn refusal(
    kind: WatchKind,
    namespace: Option<&str>,
    error: &kube::runtime::watcher::Error,
) -> Option<Unreadable> {
    use kube::runtime::watcher::Error;
    let status = match error {
        Error::InitialListFailed(kube::Error::Api(s))
        | Error::WatchStartFailed(kube::Error::Api(s))
        | Error::WatchFailed(kube::Error::Api(s)) => s,
        Error::WatchError(s) => s,
        _ => return None,
    };
    matches!(status.code, 401 | 403).then(|| Unreadable {
        resource: kind.to_string(),
        namespace: namespace.map(str::to_string),
        code: status.code,
        message: status.message.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GpuPoolSpec, Sharing, TimeSlicing};

    fn refused(resource: &str) -> Unreadable {
        Unreadable {
            resource: resource.into(),
            namespace: Some("gpu-resources".into()),
            code: 403,
            message: "forbidden".into(),
        }
    }

    #[test]
    fn a_refused_config_map_watch_stalls_only_the_pools_with_a_plugin_config() {
        let plain = GpuPool::new("plain", GpuPoolSpec::default());
        let shared = GpuPool::new(
            "shared",
            GpuPoolSpec {
                sharing: Some(Sharing {
                    time_slicing: TimeSlicing {
                        replicas: 2,
                        rename_by_default: false,
                        fail_requests_greater_than_one: false,
                    },
                }),
                ..Default::default()
            },
        );
        let mut synced = Synced::default();
        assert_eq!(synced.for_pool(&plain), None, "still listing");
        for kind in ALL.into_iter().filter(|k| *k != WatchKind::ConfigMap) {
            assert!(!synced.listed(kind));
        }
        assert_eq!(synced.for_pool(&plain), Some(Ok(())));
        assert_eq!(synced.for_pool(&shared), None);
        assert!(!synced.settled());
        synced.failed(WatchKind::ConfigMap, refused("ConfigMap"));
        assert!(synced.settled() && !synced.all());
        assert_eq!(synced.for_pool(&plain), Some(Ok(())));
        assert_eq!(
            synced.for_pool(&shared),
            Some(Err(vec![refused("ConfigMap")]))
        );
        // The Role is back: the next list clears it.
        assert!(!synced.listed(WatchKind::ConfigMap));
        assert_eq!(synced.for_pool(&shared), Some(Ok(())));
        assert!(synced.all());
        assert!(synced.listed(WatchKind::Node), "a second list is a re-list");
    }
}

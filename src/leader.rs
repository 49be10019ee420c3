//! Leader election, and a fence so that only the leader writes, even when it is cut off.
//!
//! The Lease is held with kube-lease-manager. What that crate cannot give is client-go's renew
//! deadline: a leader that is paused or partitioned past its lease must not write when it wakes
//! up, although the other replica may already lead. So every write of the operator goes through
//! the fence on its API client (`crate::client`), which refuses it unless this replica's own last
//! renewal of the Lease (seen through a watch of the Lease) is younger than the renew deadline,
//! which ends before the lease expires for the others, and cancels a write still in flight when
//! the deadline comes. Once the deadline passes without a renewal the replica stops leading
//! (`Fence::lost`): kube-lease-manager keeps retrying a renewal it cannot make and would not tell.
//! The Lease itself is renewed on a client of its own.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Until when this replica may write. The Lease's renewTime is wall-clock time (it is what the
/// other replicas compare with theirs), but once read it is turned into a point on this process's
/// monotonic clock: a wall clock stepped back or forth (NTP) must not reopen the fence.
#[derive(Debug)]
pub struct Fence {
    /// None: closed (never opened, or another replica holds the Lease).
    open_until: watch::Sender<Option<Instant>>,
    /// Leader election off: always open.
    always_open: bool,
}

impl Fence {
    pub fn always_open() -> Arc<Fence> {
        Arc::new(Fence {
            open_until: watch::Sender::new(None),
            always_open: true,
        })
    }

    pub fn closed() -> Arc<Fence> {
        Arc::new(Fence {
            open_until: watch::Sender::new(None),
            always_open: false,
        })
    }

    pub fn is_open(&self) -> bool {
        self.always_open || self.deadline().is_some_and(|until| Instant::now() < until)
    }

    /// When the fence closes unless a renewal comes first (None when closed, or always open).
    pub fn deadline(&self) -> Option<Instant> {
        *self.open_until.borrow()
    }

    pub fn is_always_open(&self) -> bool {
        self.always_open
    }

    /// Opens the fence until `until_ms` (wall clock, milliseconds), as measured now.
    pub(crate) fn open_until_wall_ms(&self, until_ms: i64) {
        let left = Duration::from_millis(u64::try_from(until_ms - now_ms()).unwrap_or(0));
        self.open_until.send_replace(Some(Instant::now() + left));
    }

    fn close(&self) {
        self.open_until.send_replace(None);
    }

    /// Resolves once this replica can no longer count itself the leader: the fence was open and
    /// its deadline passed without a renewal, another replica took the Lease, or it never opened
    /// within `deadline` from now (the Lease watch never showed this replica's renewal).
    pub async fn lost(&self, deadline: Duration) {
        let mut until = self.open_until.subscribe();
        let mut opened = false;
        let first = Instant::now() + deadline;
        loop {
            let current = *until.borrow_and_update();
            let due = match current {
                Some(at) => {
                    opened = true;
                    at
                }
                None if opened => return,
                None => first,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    if *until.borrow() == current {
                        return;
                    }
                }
                changed = until.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The fence's deadline after a renewal: before the lease expires for the others (`duration`),
/// with half the renewal margin (`grace`, the time before expiry at which the leader renews)
/// to spare for clock skew and for a write already on its way.
pub fn renew_deadline(duration: Duration, grace: Duration) -> Duration {
    duration.saturating_sub(grace / 2)
}

/// Opens the fence for `deadline` after each renewal of the Lease by `identity`, and closes it
/// the moment another replica holds it. Runs until the watch ends.
pub async fn fence_on_lease(
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    deadline: Duration,
    fence: Arc<Fence>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut leases = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    let deadline_ms = i64::try_from(deadline.as_millis()).unwrap_or(i64::MAX);
    while let Some(event) = leases.next().await {
        match event {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                let mine = spec.holder_identity.as_deref() == Some(identity.as_str());
                let renewed = spec.renew_time.map(|t| t.0.as_millisecond());
                match renewed.filter(|_| mine) {
                    Some(at) => fence.open_until_wall_ms(at.saturating_add(deadline_ms)),
                    None => {
                        if fence.is_open() {
                            info!(holder = ?spec.holder_identity, "another replica holds the Lease: no more writes from this one");
                        }
                        fence.close()
                    }
                }
            }
            Err(e) => warn!(error = %e, "Lease watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn leadership_is_lost_when_the_deadline_passes_without_a_renewal() {
        let fence = Fence::closed();
        fence.open_until_wall_ms(now_ms() + 10_000);
        let lost = fence.lost(Duration::from_secs(3));
        tokio::pin!(lost);
        // Renewed at 5 s: the deadline moves on.
        tokio::select! {
            _ = &mut lost => panic!("lost while open"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        fence.open_until_wall_ms(now_ms() + 10_000);
        tokio::select! {
            _ = &mut lost => panic!("lost although renewed"),
            _ = tokio::time::sleep(Duration::from_secs(9)) => {}
        }
        assert!(fence.is_open());
        tokio::time::timeout(Duration::from_secs(2), &mut lost)
            .await
            .expect("lost once the renewed deadline passed");
        assert!(!fence.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_never_confirmed_is_lost_after_the_deadline() {
        let fence = Fence::closed();
        let started = Instant::now();
        fence.lost(Duration::from_secs(3)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_ends_leadership_at_once() {
        let fence = Fence::closed();
        fence.open_until_wall_ms(now_ms() + 10_000);
        let lost = fence.lost(Duration::from_secs(3));
        tokio::pin!(lost);
        tokio::select! {
            _ = &mut lost => panic!("lost while open"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        fence.close();
        tokio::time::timeout(Duration::from_millis(10), &mut lost)
            .await
            .expect("lost as soon as the fence closed");
    }
}

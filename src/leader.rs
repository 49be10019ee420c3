//! Leader election, and a fence so that only the leader writes, even when it is cut off.
//!
//! The Lease is held with kube-lease-manager. What that crate cannot give is client-go's renew
//! deadline: a leader that is paused or partitioned past its lease must not write when it wakes
//! up, although the other replica may already lead. So every write of the operator goes through
//! a [`FenceLayer`] on its API client that refuses it unless this replica's own last renewal of
//! the Lease (seen through a watch of the Lease) is younger than the renew deadline, which ends
//! before the lease expires for the others. The Lease itself is renewed on a client of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use http::{Method, Request};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tower::{Layer, Service};
use tracing::{info, warn};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Until when this replica may write (wall-clock milliseconds; 0: not at all).
#[derive(Debug, Default)]
pub struct Fence {
    open_until_ms: AtomicI64,
    /// Leader election off: always open.
    always_open: bool,
}

impl Fence {
    pub fn always_open() -> Arc<Fence> {
        Arc::new(Fence {
            open_until_ms: AtomicI64::new(0),
            always_open: true,
        })
    }

    pub fn closed() -> Arc<Fence> {
        Arc::new(Fence::default())
    }

    pub fn is_open(&self) -> bool {
        self.always_open || now_ms() < self.open_until_ms.load(Ordering::Acquire)
    }

    fn open_until(&self, until_ms: i64) {
        self.open_until_ms.store(until_ms, Ordering::Release);
    }
}

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error(
    "not writing: this replica's leadership is not confirmed (its last Lease renewal is older than the renew deadline)"
)]
pub struct Fenced;

/// A tower layer for the operator's API client that refuses writes while the fence is closed.
#[derive(Clone)]
pub struct FenceLayer(pub Arc<Fence>);

impl<S> Layer<S> for FenceLayer {
    type Service = FenceService<S>;
    fn layer(&self, inner: S) -> FenceService<S> {
        FenceService {
            inner,
            fence: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FenceService<S> {
    inner: S,
    fence: Arc<Fence>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<Request<B>> for FenceService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
        if !reads.contains(request.method()) && !self.fence.is_open() {
            return Box::pin(async { Err(Box::new(Fenced) as BoxError) });
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
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
                    Some(at) => fence.open_until(at.saturating_add(deadline_ms)),
                    None => {
                        if fence.is_open() {
                            info!(holder = ?spec.holder_identity, "another replica holds the Lease: no more writes from this one");
                        }
                        fence.open_until(0)
                    }
                }
            }
            Err(e) => warn!(error = %e, "Lease watch failed; retrying"),
        }
    }
}

//! The operator's API client: every request bounded in time, writes fenced by leadership, and no
//! retries hidden below the fence.
//!
//! kube's default client retries 429, 503 and 504 up to 15 times inside one request, honouring
//! `Retry-After`: a write let through the fence once could reach the API server minutes later,
//! after another replica took over. Here a request is sent once; a failed write fails the
//! reconcile, which backs off and asks the fence again. A write still in flight when the fence's
//! deadline comes is cancelled (the API server drops a request whose client went away), and every
//! other request that is not a watch gives up after `--request-timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use kube::Client;
use kube::client::ClientBuilder;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::leader::Fence;

/// The error a fenced write fails with.
#[derive(Debug, thiserror::Error)]
#[error(
    "not writing: this replica's leadership is not confirmed (its last Lease renewal is older than the renew deadline)"
)]
pub struct Fenced;

/// A request that took longer than it may.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: no answer from the API server within {waited:?}")]
pub struct TimedOut {
    method: Method,
    path: String,
    waited: Duration,
}

/// The operator's client for `config`: no built-in retries, each request bounded by `timeout`,
/// writes only while `fence` is open and never past its deadline.
pub fn operator_client(
    mut config: kube::Config,
    fence: Arc<Fence>,
    timeout: Duration,
) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&BoundedLayer { fence, timeout })
        .build())
}

/// A tower layer: the fence and the time bound, outermost on the client's stack.
#[derive(Clone)]
pub struct BoundedLayer {
    pub fence: Arc<Fence>,
    pub timeout: Duration,
}

impl<S> Layer<S> for BoundedLayer {
    type Service = Bounded<S>;
    fn layer(&self, inner: S) -> Bounded<S> {
        Bounded {
            inner,
            fence: self.fence.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct Bounded<S> {
    inner: S,
    fence: Arc<Fence>,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a request may take: a watch as long as it streams (the server ends it), a read
/// `timeout`, a write `timeout` but not past the fence's deadline; None: refused by the fence.
fn allowed_until<B>(
    request: &Request<B>,
    fence: &Fence,
    timeout: Duration,
    now: Instant,
) -> Option<Option<Instant>> {
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if !reads.contains(request.method()) {
        if !fence.is_open() {
            return None;
        }
        let bound = now + timeout;
        return Some(Some(
            fence.deadline().map_or(bound, |until| until.min(bound)),
        ));
    }
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    Some((!watch).then_some(now + timeout))
}

impl<S, B> Service<Request<B>> for Bounded<S>
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
        let now = Instant::now();
        let Some(until) = allowed_until(&request, &self.fence, self.timeout, now) else {
            return Box::pin(async { Err(Box::new(Fenced) as BoxError) });
        };
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let call = self.inner.call(request);
        Box::pin(async move {
            let Some(until) = until else {
                return call.await.map_err(Into::into);
            };
            match tokio::time::timeout_at(until, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(TimedOut {
                    method,
                    path,
                    waited: until - now,
                }) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_bounded_watches_are_not_and_writes_stop_at_the_fence() {
        let now = Instant::now();
        let timeout = Duration::from_secs(30);
        let open = Fence::always_open();
        let get = request(Method::GET, "/api/v1/nodes/a");
        assert_eq!(
            allowed_until(&get, &open, timeout, now),
            Some(Some(now + timeout))
        );
        let watch = request(Method::GET, "/api/v1/nodes?watch=true&resourceVersion=1");
        assert_eq!(allowed_until(&watch, &open, timeout, now), Some(None));
        let list = request(Method::GET, "/api/v1/nodes?watchList=false");
        assert_eq!(
            allowed_until(&list, &open, timeout, now),
            Some(Some(now + timeout))
        );
        let patch = request(Method::PATCH, "/api/v1/nodes/a");
        assert_eq!(
            allowed_until(&patch, &open, timeout, now),
            Some(Some(now + timeout))
        );
        let leading = Fence::closed();
        leading.open_until_wall_ms(crate::leader::now_ms() + 5_000);
        let Some(Some(until)) = allowed_until(&patch, &leading, timeout, now) else {
            panic!("an open fence lets writes through");
        };
        assert!(
            until <= now + Duration::from_secs(5),
            "a write ends with the fence"
        );
        let closed = Fence::closed();
        assert_eq!(allowed_until(&patch, &closed, timeout, now), None);
        assert_eq!(
            allowed_until(&get, &closed, timeout, now),
            Some(Some(now + timeout)),
            "reads go on while fenced"
        );
    }
}

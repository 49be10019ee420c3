//! Coalescing of reconcile triggers. The first trigger for a pool opens a window; further
//! triggers for it within the window are absorbed; when the window closes the pool is
//! reconciled once. Unlike a debounce that restarts its timer on every trigger (kube-runtime's
//! scheduler does), a steady stream of node changes, such as a 1,000-node scale-up whose GPUs
//! register a few per second, cannot postpone a pool's reconcile: it waits one window at most.

use std::collections::HashSet;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Fuse, Stream, StreamExt};
use tokio_util::time::DelayQueue;

pub struct Coalesce<S: Stream> {
    input: Fuse<S>,
    windows: DelayQueue<S::Item>,
    open: HashSet<S::Item>,
    window: Duration,
}

/// Each item of `input` comes out once, `window` after the first of its kind arrived.
pub fn coalesce<S>(input: S, window: Duration) -> Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Hash + Eq + Clone,
{
    Coalesce {
        input: input.fuse(),
        windows: DelayQueue::new(),
        open: HashSet::new(),
        window,
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Hash + Eq + Clone + Unpin,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        while let Poll::Ready(Some(item)) = Pin::new(&mut this.input).poll_next(cx) {
            if this.open.insert(item.clone()) {
                this.windows.insert(item, this.window);
            }
        }
        match this.windows.poll_expired(cx) {
            Poll::Ready(Some(expired)) => {
                let item = expired.into_inner();
                this.open.remove(&item);
                Poll::Ready(Some(item))
            }
            // Nothing waiting: done once the input is, else woken by the input.
            Poll::Ready(None) if this.input.is_done() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_triggers_cannot_postpone_a_reconcile() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let mut out = coalesce(rx, Duration::from_millis(200));
        let start = Instant::now();
        // A trigger every 50 ms for 2 s: a debounce that restarts would never fire.
        let feeder = tokio::spawn(async move {
            for _ in 0..40 {
                tx.unbounded_send("gpu").unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let mut fired = Vec::new();
        while fired.len() < 5 {
            out.next().await.unwrap();
            fired.push(start.elapsed());
        }
        feeder.abort();
        assert_eq!(
            fired[0],
            Duration::from_millis(200),
            "one window after the first"
        );
        for pair in fired.windows(2) {
            assert!(
                pair[1] - pair[0] <= Duration::from_millis(250),
                "at most a window (and a trigger) apart: {fired:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_within_a_window_make_one_reconcile_per_pool() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let mut out = coalesce(rx, Duration::from_millis(200));
        for pool in ["a", "b", "a", "a", "b", "c"] {
            tx.unbounded_send(pool).unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(pool) = out.next().await {
            got.push(pool);
        }
        got.sort();
        assert_eq!(got, vec!["a", "b", "c"]);
    }
}

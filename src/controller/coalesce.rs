//! Coalescing of reconcile triggers. A pool's first trigger after a quiet spell goes out at once
//! and opens a window; triggers for it within the window are absorbed into one more, sent when
//! the window closes (which opens the next). An isolated change costs no wait; a storm costs one
//! reconcile per window. Unlike a debounce that restarts its timer on every trigger (kube-runtime's
//! scheduler does), a steady stream, such as a 1,000-node scale-up whose GPUs register a few per
//! second, cannot postpone a pool's reconcile: it waits one window at most.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Fuse, Stream, StreamExt};
use tokio_util::time::DelayQueue;

pub struct Coalesce<S: Stream> {
    input: Fuse<S>,
    /// Open windows, closing in this order.
    windows: DelayQueue<S::Item>,
    /// Items with an open window, and whether a trigger arrived in it.
    open: HashMap<S::Item, bool>,
    /// Items to send now (first of a burst, or a window that closed with triggers in it).
    ready: std::collections::VecDeque<S::Item>,
    window: Duration,
}

/// Each item of `input` goes out at once the first time, then at most once per `window`.
pub fn coalesce<S>(input: S, window: Duration) -> Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Hash + Eq + Clone,
{
    Coalesce {
        input: input.fuse(),
        windows: DelayQueue::new(),
        open: HashMap::new(),
        ready: std::collections::VecDeque::new(),
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
            match this.open.get_mut(&item) {
                Some(pending) => *pending = true,
                None => {
                    this.open.insert(item.clone(), false);
                    this.windows.insert(item.clone(), this.window);
                    this.ready.push_back(item);
                }
            }
        }
        while let Poll::Ready(Some(expired)) = this.windows.poll_expired(cx) {
            let item = expired.into_inner();
            if this.open.remove(&item) == Some(true) {
                // Triggers came in the window: one reconcile for them, and a new window.
                this.open.insert(item.clone(), false);
                this.windows.insert(item.clone(), this.window);
                this.ready.push_back(item);
            }
        }
        if let Some(item) = this.ready.pop_front() {
            return Poll::Ready(Some(item));
        }
        if this.input.is_done() && this.open.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn an_isolated_trigger_goes_out_at_once() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let mut out = coalesce(rx, Duration::from_millis(200));
        let start = Instant::now();
        tx.unbounded_send("gpu").unwrap();
        assert_eq!(out.next().await, Some("gpu"));
        assert_eq!(start.elapsed(), Duration::ZERO);
        // The window closes without a trigger in it: nothing more; the next one goes out at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = Instant::now();
        tx.unbounded_send("gpu").unwrap();
        assert_eq!(out.next().await, Some("gpu"));
        assert_eq!(again.elapsed(), Duration::ZERO);
    }

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
        while fired.len() < 6 {
            out.next().await.unwrap();
            fired.push(start.elapsed());
        }
        feeder.abort();
        assert_eq!(fired[0], Duration::ZERO, "the first at once");
        for pair in fired.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                Duration::from_millis(200),
                "then one per window: {fired:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_within_a_window_make_two_reconciles_per_pool_at_most() {
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
        // a, b, c at once; a and b again for the triggers that followed them; c had none.
        assert_eq!(got, vec!["a", "b", "c", "a", "b"]);
    }
}

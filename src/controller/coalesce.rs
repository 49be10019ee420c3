//! Coalescing of reconcile triggers, per pool, as a token bucket: a pool has `burst` triggers
//! that go out at once, and gets one back per window. An isolated change, or a change and its
//! undoing a few milliseconds later, costs no wait; a storm costs one reconcile per window once
//! the burst is spent. Unlike a debounce that restarts its timer on every trigger (kube-runtime's
//! scheduler does), a steady stream, such as a 1,000-node scale-up whose GPUs register a few per
//! second, cannot postpone a pool's reconcile: it waits one window at most.
//!
//! Why not the `governor` crate's keyed limiter: the bucket arithmetic is a few lines (`refill`);
//! what matters is the stream around it: one pending trigger per pool, a timer per bucket that
//! is not full, buckets dropped once full again (memory stays bounded by the pools that are
//! busy). governor would keep a state per key until pruned and runs on its own clock, which
//! tokio's paused time in the tests below does not move.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{Fuse, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::time::DelayQueue;

/// Triggers a pool may send at once after a quiet spell.
pub const BURST: u32 = 2;

/// One pool's bucket. It exists while it is not full; its one timer fires at the next refill.
struct Bucket {
    tokens: u32,
    /// When the last token came back (or the bucket was made).
    refilled: Instant,
    /// A trigger is waiting for the next token.
    pending: bool,
}

pub struct Coalesce<S: Stream> {
    input: Fuse<S>,
    /// Each bucket's next refill.
    refills: DelayQueue<S::Item>,
    buckets: HashMap<S::Item, Bucket>,
    /// Items to send now.
    ready: std::collections::VecDeque<S::Item>,
    window: Duration,
}

/// Each item of `input` goes out at once while its bucket has tokens, then once per `window`.
pub fn coalesce<S>(input: S, window: Duration) -> Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Hash + Eq + Clone,
{
    Coalesce {
        input: input.fuse(),
        refills: DelayQueue::new(),
        buckets: HashMap::new(),
        ready: std::collections::VecDeque::new(),
        window: window.max(Duration::from_millis(1)),
    }
}

impl Bucket {
    /// Tokens earned since the last refill, up to `BURST`.
    fn refill(&mut self, now: Instant, window: Duration) {
        let ticks = (now - self.refilled).as_nanos() / window.as_nanos();
        let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(ticks).min(BURST);
        self.refilled += window * ticks.min(BURST);
    }
}

impl<S> Coalesce<S>
where
    S: Stream + Unpin,
    S::Item: Hash + Eq + Clone + Unpin,
{
    fn trigger(&mut self, item: S::Item, now: Instant) {
        let window = self.window;
        match self.buckets.get_mut(&item) {
            None => {
                self.buckets.insert(
                    item.clone(),
                    Bucket {
                        tokens: BURST - 1,
                        refilled: now,
                        pending: false,
                    },
                );
                self.refills.insert(item.clone(), window);
                self.ready.push_back(item);
            }
            Some(bucket) => {
                bucket.refill(now, window);
                // A pending trigger already covers this one.
                if !bucket.pending {
                    if bucket.tokens > 0 {
                        bucket.tokens -= 1;
                        self.ready.push_back(item);
                    } else {
                        bucket.pending = true;
                    }
                }
            }
        }
    }

    fn refilled(&mut self, item: S::Item, now: Instant) {
        let window = self.window;
        let Some(bucket) = self.buckets.get_mut(&item) else {
            return;
        };
        bucket.refill(now, window);
        if bucket.pending && bucket.tokens > 0 {
            bucket.pending = false;
            bucket.tokens -= 1;
            self.ready.push_back(item.clone());
        }
        if bucket.tokens >= BURST && !bucket.pending {
            self.buckets.remove(&item);
        } else {
            let next = (bucket.refilled + window).saturating_duration_since(now);
            self.refills.insert(item, next);
        }
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
            this.trigger(item, Instant::now());
        }
        while let Poll::Ready(Some(expired)) = this.refills.poll_expired(cx) {
            this.refilled(expired.into_inner(), Instant::now());
        }
        if let Some(item) = this.ready.pop_front() {
            return Poll::Ready(Some(item));
        }
        if this.input.is_done() && this.buckets.values().all(|b| !b.pending) {
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
        let ms = Duration::from_millis;
        assert_eq!(
            fired,
            [ms(0), ms(50), ms(200), ms(400), ms(600), ms(800)],
            "the burst at once, then one per window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_pool_is_forgotten() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let mut out = coalesce(rx, Duration::from_millis(200));
        tx.unbounded_send("gpu").unwrap();
        assert_eq!(out.next().await, Some("gpu"));
        assert_eq!(out.buckets.len(), 1);
        // Nothing more comes; the refill timer fires within the wait and drops the full bucket.
        let nothing = tokio::time::timeout(Duration::from_millis(300), out.next()).await;
        assert!(nothing.is_err());
        assert!(out.buckets.is_empty() && out.refills.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_and_its_undoing_both_go_out_at_once() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let mut out = coalesce(rx, Duration::from_millis(200));
        let start = Instant::now();
        tx.unbounded_send("gpu").unwrap();
        assert_eq!(out.next().await, Some("gpu"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.unbounded_send("gpu").unwrap();
        assert_eq!(out.next().await, Some("gpu"));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_within_a_window_make_the_burst_and_one_more_per_pool_at_most() {
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
        // The burst of a and b and c's one at once; a's third when its first token is back.
        assert_eq!(got, vec!["a", "b", "a", "b", "c", "a"]);
    }
}

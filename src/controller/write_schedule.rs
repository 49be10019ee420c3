//! When each pool may write its nodes: one rate over all pools, handed out first come, first
//! served. A pool that finds the rate used up reserves the next free slots and is told when they
//! are due, so it comes back exactly once then instead of polling: 100 new pools of 50 nodes
//! each cost about two reconciles apiece, not one every 100 ms for the 100 s the writes take.
//!
//! Pure bookkeeping over an injected clock (a GCRA-style virtual clock: `free_at` is when the next
//! unreserved write is due; being idle banks up to `burst` writes).
//!
//! Why not the `governor` crate: its GCRA answers "may one cell go now, else when", per key or
//! for all; what is needed here is one shared rate whose future slots are *reserved* by a pool
//! (first come, first served, across pools) and handed out when that pool comes back, so no pool
//! polls and none overtakes another. governor has no reservations of future cells, and its clock
//! is its own (the tests drive this one with plain `Instant`s, no sleeping).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// After a 429 the rate halves, down to one write a second; it then climbs back to the
/// configured rate linearly, in this long from the slowest (additive increase, multiplicative
/// decrease: the API server's API Priority and Fairness says when it is too much, the configured
/// rate stays the bound).
const SLOWEST: Duration = Duration::from_secs(1);
const RECOVERY: Duration = Duration::from_secs(20);

/// Reservations not picked up for this long are dropped (their pool was deleted, or no longer
/// needed the writes); their slots are simply not reused.
const RESERVATION_TTL: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
struct Reservation {
    writes: usize,
    /// When the last reserved write is due.
    due: Instant,
}

#[derive(Debug)]
pub struct WriteSchedule {
    /// The configured rate, as the time between two writes.
    fastest: Duration,
    /// The rate now (slower than `fastest` for a while after the API server throttled).
    interval: Duration,
    /// When `interval` was last changed.
    adjusted_at: Option<Instant>,
    burst: u32,
    free_at: Option<Instant>,
    reserved: HashMap<String, Reservation>,
}

/// What one `take` grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Writes to make now.
    pub now: usize,
    /// When to come back for the rest, if any are left.
    pub come_back: Option<Duration>,
}

impl WriteSchedule {
    pub fn new(per_second: u32, burst: u32) -> WriteSchedule {
        let fastest = Duration::from_secs(1) / per_second.max(1);
        WriteSchedule {
            fastest,
            interval: fastest,
            adjusted_at: None,
            burst: burst.max(1),
            free_at: None,
            reserved: HashMap::new(),
        }
    }

    /// `pool` wants to make `wanted` writes, at most `batch` of them in this reconcile.
    pub fn take(&mut self, pool: &str, wanted: usize, batch: usize, now: Instant) -> Grant {
        self.recover(now);
        self.reserved.retain(|_, r| r.due + RESERVATION_TTL > now);
        let cap = wanted.min(batch.max(1));
        let mut granted = 0;
        if let Some(r) = self.reserved.get(pool).copied() {
            if r.due > now && wanted > 0 {
                // Woken early (a watch event): its slots are not due yet.
                return Grant {
                    now: 0,
                    come_back: Some(r.due - now),
                };
            }
            self.reserved.remove(pool);
            granted = r.writes.min(cap);
            // Fewer writes needed than reserved (or none): the rest go back to the rate.
            self.refund(r.writes - granted, now);
        }
        if wanted == 0 {
            return Grant {
                now: 0,
                come_back: None,
            };
        }
        let banked = now.checked_sub(self.interval * self.burst).unwrap_or(now);
        let mut free_at = self.free_at.map_or(banked, |f| f.max(banked));
        let available = usize::try_from(
            now.saturating_duration_since(free_at).as_nanos() / self.interval.as_nanos().max(1),
        )
        .unwrap_or(usize::MAX);
        let from_bucket = available.min(cap - granted);
        free_at += self.interval * u32::try_from(from_bucket).unwrap_or(u32::MAX);
        granted += from_bucket;
        let short = cap - granted;
        let come_back = if short > 0 {
            free_at += self.interval * u32::try_from(short).unwrap_or(u32::MAX);
            self.reserved.insert(
                pool.to_string(),
                Reservation {
                    writes: short,
                    due: free_at,
                },
            );
            Some(free_at.saturating_duration_since(now))
        } else if granted < wanted {
            // A full batch now, more to do: the next reconcile follows at once.
            Some(Duration::ZERO)
        } else {
            None
        };
        self.free_at = Some(free_at);
        Grant {
            now: granted,
            come_back,
        }
    }

    /// The API server answered a write with 429 (Too Many Requests): half the rate from now on,
    /// and no burst banked.
    pub fn throttled(&mut self, now: Instant) {
        self.recover(now);
        self.interval = (self.interval * 2).min(SLOWEST).max(self.fastest);
        self.adjusted_at = Some(now);
        self.free_at = Some(self.free_at.map_or(now, |f| f.max(now)));
    }

    /// The writes per second allowed now.
    pub fn rate(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }

    /// Climbs back towards the configured rate, linearly over time.
    fn recover(&mut self, now: Instant) {
        let Some(since) = self.adjusted_at else {
            return;
        };
        let fastest = 1.0 / self.fastest.as_secs_f64();
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        let rate = self.rate() + fastest * elapsed / RECOVERY.as_secs_f64();
        if rate >= fastest {
            self.interval = self.fastest;
            self.adjusted_at = None;
        } else {
            self.interval = Duration::from_secs_f64(1.0 / rate);
            self.adjusted_at = Some(now);
        }
    }

    /// Forgets a pool's reservation (the pool is gone).
    pub fn forget(&mut self, pool: &str) {
        self.reserved.remove(pool);
    }

    /// Gives back `writes` granted now but not made (the node was occupied, gone, or needed
    /// nothing any more): they go to whoever asks next, up to the burst.
    pub fn refund(&mut self, writes: usize, now: Instant) {
        let Some(free_at) = self.free_at else {
            return;
        };
        let back = self.interval * u32::try_from(writes).unwrap_or(u32::MAX);
        let banked = now.checked_sub(self.interval * self.burst).unwrap_or(now);
        // Never earlier than a full bank, and never past a slot reserved by a pool: reserved
        // slots end at `free_at` too, so only the unreserved tail moves.
        let reserved_until = self.reserved.values().map(|r| r.due).max();
        let earliest = reserved_until.map_or(banked, |r| r.max(banked));
        self.free_at = Some(free_at.checked_sub(back).unwrap_or(earliest).max(earliest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_schedule_grants_a_burst_at_once() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(50, 100);
        assert_eq!(
            s.take("a", 30, 100, t0),
            Grant {
                now: 30,
                come_back: None
            }
        );
        assert_eq!(
            s.take("b", 70, 100, t0),
            Grant {
                now: 70,
                come_back: None
            }
        );
    }

    #[test]
    fn pools_past_the_burst_reserve_slots_in_turn_and_come_back_once() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(50, 50);
        // The first pool uses the burst.
        assert_eq!(s.take("p0", 50, 100, t0).now, 50);
        // Each next pool of 50 writes is told to come back one second after the one before.
        let mut due = Vec::new();
        for i in 1..=4 {
            let g = s.take(&format!("p{i}"), 50, 100, t0);
            assert_eq!(g.now, 0);
            due.push(g.come_back.unwrap());
        }
        assert_eq!(
            due,
            [1000 * MS, 2000 * MS, 3000 * MS, 4000 * MS],
            "slots are handed out in turn"
        );
        // Woken early by an event: nothing yet, the same time to come back.
        let early = s.take("p2", 50, 100, t0 + 500 * MS);
        assert_eq!(early.now, 0);
        assert_eq!(early.come_back, Some(1500 * MS));
        // Back on time: all its writes, nothing left over.
        assert_eq!(
            s.take("p2", 50, 100, t0 + 2000 * MS),
            Grant {
                now: 50,
                come_back: None
            }
        );
        // A pool arriving later queues behind every reservation.
        let late = s.take("p5", 10, 100, t0 + 2000 * MS);
        assert_eq!(late.now, 0);
        assert_eq!(late.come_back, Some(2200 * MS));
    }

    #[test]
    fn the_rate_holds_over_all_pools() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(50, 10);
        let mut written = 0;
        // 20 pools of 25 writes each, every pool coming back exactly when told.
        let mut next: Vec<(Instant, String, usize)> =
            (0..20).map(|i| (t0, format!("p{i}"), 25)).collect();
        let mut last = t0;
        while let Some(pos) = (0..next.len()).min_by_key(|&i| next[i].0) {
            let (at, pool, left) = next.remove(pos);
            let g = s.take(&pool, left, 100, at);
            written += g.now;
            last = last.max(at);
            if let Some(back) = g.come_back {
                next.push((at + back, pool, left - g.now));
            }
        }
        assert_eq!(written, 500);
        // 500 writes at 50/s with 10 banked: 9.8 s, give or take one slot.
        let took = last - t0;
        assert!(
            took >= 9700 * MS && took <= 9900 * MS,
            "500 writes took {took:?}"
        );
    }

    #[test]
    fn more_than_a_batch_comes_back_at_once_for_the_rest() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(1000, 1000);
        assert_eq!(
            s.take("a", 250, 100, t0),
            Grant {
                now: 100,
                come_back: Some(Duration::ZERO)
            }
        );
    }

    #[test]
    fn reservations_of_pools_that_never_come_back_expire() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 1);
        s.take("a", 1, 100, t0);
        let g = s.take("gone", 5, 100, t0);
        assert!(g.come_back.is_some());
        s.take("b", 0, 100, t0 + RESERVATION_TTL + Duration::from_secs(2));
        assert!(s.reserved.is_empty());
    }

    #[test]
    fn writes_not_made_are_given_back_to_the_next_pool() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 10);
        assert_eq!(s.take("a", 10, 100, t0).now, 10);
        // Nothing left for b at once.
        assert_eq!(s.take("b", 1, 100, t0).now, 0);
        s.forget("b");
        // a made 4 of its 10 writes (6 nodes were occupied): b gets 6 at once.
        let mut s = WriteSchedule::new(10, 10);
        assert_eq!(s.take("a", 10, 100, t0).now, 10);
        s.refund(6, t0);
        assert_eq!(s.take("b", 10, 100, t0).now, 6);
        // Refunds never bank more than the burst.
        let mut s = WriteSchedule::new(10, 10);
        s.take("a", 1, 100, t0);
        s.refund(1000, t0);
        assert_eq!(s.take("b", 100, 100, t0).now, 10);
    }

    #[test]
    fn a_refund_does_not_reach_into_reserved_slots() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 10);
        assert_eq!(s.take("a", 10, 100, t0).now, 10);
        let reserved = s.take("r", 5, 100, t0);
        assert_eq!(reserved.now, 0);
        s.refund(6, t0);
        // The refund cannot hand out the slots r waits for.
        assert_eq!(s.take("b", 1, 100, t0).now, 0);
    }

    #[test]
    fn a_pool_that_needs_fewer_writes_than_it_reserved_gives_the_rest_back() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 10);
        assert_eq!(s.take("a", 10, 100, t0).now, 10);
        let g = s.take("r", 20, 100, t0);
        assert_eq!((g.now, g.come_back), (0, Some(2000 * MS)));
        // r no longer needs any (its nodes went away meanwhile): the next pool does not wait
        // behind its 20 slots.
        assert_eq!(s.take("r", 0, 100, t0 + 100 * MS).now, 0);
        let next = s.take("b", 1, 100, t0 + 100 * MS);
        assert_eq!(next.now, 1, "{next:?}");
    }

    #[test]
    fn a_deleted_pool_gives_up_its_reservation() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 1);
        s.take("a", 1, 100, t0);
        assert!(s.take("gone", 5, 100, t0).come_back.is_some());
        s.forget("gone");
        assert!(s.reserved.is_empty());
    }

    #[test]
    fn a_throttled_rate_halves_and_climbs_back_to_the_configured_one() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(200, 1000);
        assert_eq!(s.take("a", 100, 100, t0).now, 100, "the burst");
        s.throttled(t0);
        assert!((s.rate() - 100.0).abs() < 1e-6, "{}", s.rate());
        let after = s.take("a", 10, 100, t0);
        assert_eq!(after.now, 0, "no burst banked after a 429: {after:?}");
        for _ in 0..10 {
            s.throttled(t0);
        }
        assert!(
            (s.rate() - 1.0).abs() < 1e-6,
            "one a second at the slowest: {}",
            s.rate()
        );
        s.recover(t0 + RECOVERY / 2);
        assert!(
            (s.rate() - 101.0).abs() < 1e-3,
            "half way back after half the recovery time: {}",
            s.rate()
        );
        s.recover(t0 + RECOVERY * 2);
        assert!(
            (s.rate() - 200.0).abs() < 1e-6,
            "never past the bound: {}",
            s.rate()
        );
    }
}

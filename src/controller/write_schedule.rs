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
    interval: Duration,
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
        WriteSchedule {
            interval: Duration::from_secs(1) / per_second.max(1),
            burst: burst.max(1),
            free_at: None,
            reserved: HashMap::new(),
        }
    }

    /// `pool` wants to make `wanted` writes, at most `batch` of them in this reconcile.
    pub fn take(&mut self, pool: &str, wanted: usize, batch: usize, now: Instant) -> Grant {
        self.reserved.retain(|_, r| r.due + RESERVATION_TTL > now);
        if wanted == 0 {
            return Grant {
                now: 0,
                come_back: None,
            };
        }
        let cap = wanted.min(batch.max(1));
        let mut granted = 0;
        if let Some(r) = self.reserved.get(pool).copied() {
            if r.due > now {
                // Woken early (a watch event): its slots are not due yet.
                return Grant {
                    now: 0,
                    come_back: Some(r.due - now),
                };
            }
            self.reserved.remove(pool);
            granted = r.writes.min(cap);
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

    /// Forgets a pool's reservation (the pool is gone).
    pub fn forget(&mut self, pool: &str) {
        self.reserved.remove(pool);
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
    fn a_deleted_pool_gives_up_its_reservation() {
        let t0 = Instant::now();
        let mut s = WriteSchedule::new(10, 1);
        s.take("a", 1, 100, t0);
        assert!(s.take("gone", 5, 100, t0).come_back.is_some());
        s.forget("gone");
        assert!(s.reserved.is_empty());
    }
}

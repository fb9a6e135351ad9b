//! Per-key metering on the data plane: the rolling-hour rate limit, and the usage counters (last
//! use, request count) that a background task flushes to the store in batches.
//!
//! Everything here is in memory and sharded: a request takes one short, uncontended-in-practice
//! lock on one of [`SHARDS`] maps and never waits for the database.
//!
//! The hour is sixty one-minute buckets. A request counts against the limit from the moment it
//! is admitted until its minute leaves the window, 59 to 60 minutes later. With several nodes,
//! each node meters the requests it serves (see the README's many-nodes section).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::clock::{Clock, UnixTime};
use crate::ids::KeyId;

const BUCKETS: usize = 60;
/// [`BUCKETS`] as a minute count.
const WINDOW: i64 = 60;
const BUCKET_SECONDS: i64 = 60;
/// Number of independently locked maps.
pub const SHARDS: usize = 64;

/// The rate-limit state reported to the caller in `X-Rate-Limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// When refused: seconds until the oldest counted minute leaves the window.
    pub retry_after: Option<u32>,
}

impl RateState {
    /// The `X-Rate-Limit` value, App Store Connect's format.
    pub fn header_value(&self) -> String {
        format!(
            "user-hour-lim:{};user-hour-rem:{};",
            self.limit, self.remaining
        )
    }
}

/// Usage of one key since the last flush, as written to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    pub key_id: KeyId,
    pub last_used_at: UnixTime,
    pub requests: u64,
}

#[derive(Debug)]
struct KeyMeter {
    /// The minute (Unix seconds / 60) of the newest bucket.
    head: i64,
    /// `counts[m % 60]` counts the requests of minute `m`, for the 60 minutes up to `head`.
    counts: [u32; BUCKETS],
    last_used: UnixTime,
    unflushed: u64,
}

impl KeyMeter {
    fn new(minute: i64) -> Self {
        Self {
            head: minute,
            counts: [0; BUCKETS],
            last_used: 0,
            unflushed: 0,
        }
    }

    fn slot(minute: i64) -> usize {
        usize::try_from(minute.rem_euclid(WINDOW)).unwrap_or(0)
    }

    /// Moves the window so that `minute` is its newest bucket, clearing the minutes it skips.
    /// A clock that steps back keeps the newer head (counts are never forgotten early).
    fn advance(&mut self, minute: i64) {
        if minute <= self.head {
            return;
        }
        let gap = minute - self.head;
        if gap >= WINDOW {
            self.counts = [0; BUCKETS];
        } else {
            for m in self.head + 1..=minute {
                if let Some(c) = self.counts.get_mut(Self::slot(m)) {
                    *c = 0;
                }
            }
        }
        self.head = minute;
    }

    fn used(&self) -> u32 {
        self.counts.iter().fold(0u32, |a, c| a.saturating_add(*c))
    }

    /// Seconds until the oldest counted minute leaves the window.
    fn retry_after(&self, now: UnixTime) -> u32 {
        let oldest = (self.head - (WINDOW - 1)..=self.head)
            .find(|m| self.counts.get(Self::slot(*m)).is_some_and(|c| *c > 0))
            .unwrap_or(self.head);
        let frees_at = (oldest + WINDOW) * BUCKET_SECONDS;
        u32::try_from((frees_at - now).max(1)).unwrap_or(u32::MAX)
    }
}

/// The per-key meters of one node.
#[derive(Debug)]
pub struct Meter {
    shards: [Mutex<HashMap<KeyId, KeyMeter>>; SHARDS],
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl Meter {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            clock,
        }
    }

    #[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)] // i < SHARDS
    fn shard(&self, key: &KeyId) -> MutexGuard<'_, HashMap<KeyId, KeyMeter>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // A panic while holding the lock cannot leave a meter half-updated in a way that
        // matters (counts only ever grow or are cleared), so a poisoned lock is still usable.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request of `key` if it is under `limit`; `Err` (counting nothing) if not.
    pub fn admit(&self, key: KeyId, limit: u32) -> Result<RateState, RateState> {
        let now = self.clock.now();
        let minute = now.div_euclid(BUCKET_SECONDS);
        let mut shard = self.shard(&key);
        let m = shard.entry(key).or_insert_with(|| KeyMeter::new(minute));
        m.advance(minute);
        let used = m.used();
        if used >= limit {
            return Err(RateState {
                limit,
                remaining: 0,
                retry_after: Some(m.retry_after(now)),
            });
        }
        if let Some(c) = m.counts.get_mut(KeyMeter::slot(m.head)) {
            *c = c.saturating_add(1);
        }
        m.last_used = m.last_used.max(now);
        m.unflushed = m.unflushed.saturating_add(1);
        Ok(RateState {
            limit,
            remaining: limit - used - 1,
            retry_after: None,
        })
    }

    /// The state of `key` without counting a request (for refused requests of a known key).
    /// `retry_after` is set when nothing is left.
    pub fn peek(&self, key: KeyId, limit: u32) -> RateState {
        let now = self.clock.now();
        let minute = now.div_euclid(BUCKET_SECONDS);
        let mut shard = self.shard(&key);
        let Some(m) = shard.get_mut(&key) else {
            return RateState {
                limit,
                remaining: limit,
                retry_after: None,
            };
        };
        m.advance(minute);
        let used = m.used();
        let remaining = limit.saturating_sub(used);
        RateState {
            limit,
            remaining,
            retry_after: (remaining == 0).then(|| m.retry_after(now)),
        }
    }

    /// Takes the usage recorded since the last drain, and forgets keys with nothing left to
    /// count, so memory follows the keys used in the last hour.
    pub fn drain_usage(&self) -> Vec<KeyUsage> {
        let minute = self.clock.now().div_euclid(BUCKET_SECONDS);
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|id, m| {
                if m.unflushed > 0 {
                    out.push(KeyUsage {
                        key_id: *id,
                        last_used_at: m.last_used,
                        requests: m.unflushed,
                    });
                    m.unflushed = 0;
                }
                m.advance(minute);
                m.used() > 0
            });
        }
        out
    }

    /// Puts back usage whose flush failed, so the next flush writes it.
    pub fn restore_usage(&self, batch: &[KeyUsage]) {
        let minute = self.clock.now().div_euclid(BUCKET_SECONDS);
        for u in batch {
            let mut shard = self.shard(&u.key_id);
            let m = shard
                .entry(u.key_id)
                .or_insert_with(|| KeyMeter::new(minute));
            m.unflushed = m.unflushed.saturating_add(u.requests);
            m.last_used = m.last_used.max(u.last_used_at);
        }
    }

    /// Keys with a meter in memory (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn key(s: &str) -> KeyId {
        KeyId::parse(s).unwrap()
    }

    #[test]
    fn counts_down_and_refuses_over_the_limit() {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let meter = Meter::new(clock.clone());
        let k = key("AAAAAAAAAA");
        for expected in (0..3).rev() {
            let s = meter.admit(k, 3).unwrap();
            assert_eq!((s.limit, s.remaining), (3, expected));
        }
        let refused = meter.admit(k, 3).unwrap_err();
        assert_eq!(refused.remaining, 0);
        // 1_800_000_000 is minute 30_000_000 exactly: the window frees it 3600 s later.
        assert_eq!(refused.retry_after, Some(3600));
        assert_eq!(meter.peek(k, 3).remaining, 0);
        // Another key has its own budget.
        assert_eq!(meter.admit(key("BBBBBBBBBB"), 3).unwrap().remaining, 2);
    }

    #[test]
    fn the_window_rolls_minute_by_minute() {
        let start = 1_800_000_000;
        let clock = Arc::new(ManualClock::new(start));
        let meter = Meter::new(clock.clone());
        let k = key("AAAAAAAAAA");
        meter.admit(k, 2).unwrap(); // minute 0
        clock.advance(30 * 60);
        meter.admit(k, 2).unwrap(); // minute 30
        assert!(meter.admit(k, 2).is_err());
        clock.set(start + 59 * 60 + 59);
        assert!(meter.admit(k, 2).is_err(), "minute 0 is still in the hour");
        clock.set(start + 60 * 60);
        assert_eq!(meter.admit(k, 2).unwrap().remaining, 0, "minute 0 left");
        assert_eq!(meter.peek(k, 2).remaining, 0);
        clock.set(start + 3 * 3600);
        assert_eq!(meter.peek(k, 2).remaining, 2, "all of it left");
        assert_eq!(meter.admit(k, 2).unwrap().remaining, 1);
    }

    #[test]
    fn a_clock_stepping_back_forgets_nothing() {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let meter = Meter::new(clock.clone());
        let k = key("AAAAAAAAAA");
        meter.admit(k, 2).unwrap();
        clock.advance(-600);
        meter.admit(k, 2).unwrap();
        assert!(meter.admit(k, 2).is_err());
    }

    #[test]
    fn usage_drains_once_and_can_be_restored() {
        let clock = Arc::new(ManualClock::new(1_800_000_000));
        let meter = Meter::new(clock.clone());
        let (a, b) = (key("AAAAAAAAAA"), key("BBBBBBBBBB"));
        meter.admit(a, 10).unwrap();
        clock.advance(5);
        meter.admit(a, 10).unwrap();
        meter.admit(b, 10).unwrap();
        let mut batch = meter.drain_usage();
        batch.sort_by_key(|u| u.key_id);
        assert_eq!(
            batch,
            vec![
                KeyUsage {
                    key_id: a,
                    last_used_at: 1_800_000_005,
                    requests: 2
                },
                KeyUsage {
                    key_id: b,
                    last_used_at: 1_800_000_005,
                    requests: 1
                },
            ]
        );
        assert!(meter.drain_usage().is_empty());
        meter.restore_usage(&batch);
        meter.admit(a, 10).unwrap();
        let again = meter.drain_usage();
        let a_usage = again.iter().find(|u| u.key_id == a).unwrap();
        assert_eq!(a_usage.requests, 3);
        // After the hour, idle keys are forgotten.
        clock.advance(2 * 3600);
        meter.drain_usage();
        assert_eq!(meter.tracked_keys(), 0);
    }
}

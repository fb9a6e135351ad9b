//! Sign-in throttling: failed attempts per account and per source address over a sliding
//! window. Per node and in memory, like the rate limits: an attacker spreading guesses over `n`
//! nodes gets `n` times the budget, still far too few for a password search.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::UnixTime;

/// How many failures are allowed within [`SignInThrottle::WINDOW`].
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    pub per_account: usize,
    pub per_address: usize,
    /// The most accounts, and the most addresses, remembered at once. When a table is full,
    /// entries whose failures have all aged out are dropped; if none have, an attempt for an
    /// account or from an address that is not tracked is refused until one ages out: the
    /// table fails closed, never open (a full table must not mean "not counted").
    pub tracked: usize,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            tracked: 100_000,
        }
    }
}

#[derive(Debug, Default)]
struct Failures {
    by_account: Table<String>,
    by_address: Table<IpAddr>,
}

/// Failure times per key, bounded in keys.
#[derive(Debug)]
struct Table<K> {
    map: HashMap<K, VecDeque<UnixTime>>,
    /// While the table is full: the first time an entry can age out. Until then nothing can be
    /// dropped, so the O(n) scan is not repeated on every attempt.
    full_until: Option<UnixTime>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            full_until: None,
        }
    }
}

impl<K: std::hash::Hash + Eq> Table<K> {
    /// Whether `key` may be counted: it is tracked already, or there is room (after dropping
    /// the entries that aged out). `Err(seconds)` when the table is full.
    fn room_for(&mut self, key: &K, max: usize, now: UnixTime) -> Result<(), i64> {
        if self.map.len() < max || self.map.contains_key(key) {
            return Ok(());
        }
        if let Some(until) = self.full_until
            && now < until
        {
            return Err(until - now);
        }
        let cutoff = now - SignInThrottle::WINDOW;
        self.map
            .retain(|_, q| q.back().is_some_and(|t| *t > cutoff));
        if self.map.len() < max {
            self.full_until = None;
            return Ok(());
        }
        let until = self
            .map
            .values()
            .filter_map(|q| q.back())
            .min()
            .map_or(now + 1, |t| t + SignInThrottle::WINDOW);
        self.full_until = Some(until);
        Err((until - now).max(1))
    }

    fn track(&mut self, key: K, limit: usize, now: UnixTime) {
        let q = self.map.entry(key).or_default();
        q.push_back(now);
        while q.len() > limit {
            q.pop_front();
        }
    }
}

#[derive(Debug)]
pub struct SignInThrottle {
    limits: ThrottleLimits,
    failures: Mutex<Failures>,
}

/// IPv6 addresses count per /64 (what one host can usually choose from); IPv4 per address.
fn address_key(ip: IpAddr) -> IpAddr {
    match crate::secret_key::canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & (u128::MAX << 64)).into()),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn account_key(account: &str) -> Option<String> {
    // Longer ones cannot be a user's email: nothing to lock out.
    crate::user::email_fits(account).then(|| account.to_lowercase())
}

impl SignInThrottle {
    /// 15 minutes.
    pub const WINDOW: i64 = 15 * 60;

    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts an attempt: `Err(seconds to wait)` if the account or the address has used up its
    /// failures; otherwise the attempt is counted as a failure at once, so parallel attempts
    /// cannot all pass the check while their passwords are hashed. [`Self::succeeded`] takes it
    /// back.
    pub fn attempt(
        &self,
        account: &str,
        address: Option<IpAddr>,
        now: UnixTime,
    ) -> Result<(), i64> {
        let mut f = self.lock();
        let account = account_key(account);
        let address = address.map(address_key);
        let by_account = account
            .as_ref()
            .and_then(|a| f.by_account.map.get_mut(a))
            .and_then(|q| wait(q, self.limits.per_account, now));
        let by_address = address.and_then(|ip| {
            f.by_address
                .map
                .get_mut(&ip)
                .and_then(|q| wait(q, self.limits.per_address, now))
        });
        if let Some(wait) = by_account.max(by_address) {
            return Err(wait);
        }
        let max = self.limits.tracked;
        let account_room = account
            .as_ref()
            .map_or(Ok(()), |a| f.by_account.room_for(a, max, now));
        let address_room = address.map_or(Ok(()), |ip| f.by_address.room_for(&ip, max, now));
        if let Some(wait) = account_room.err().max(address_room.err()) {
            return Err(wait);
        }
        if let Some(a) = account {
            f.by_account.track(a, self.limits.per_account, now);
        }
        if let Some(ip) = address {
            f.by_address.track(ip, self.limits.per_address, now);
        }
        Ok(())
    }

    /// A successful sign-in: the account's failures are cleared, and this attempt no longer
    /// counts against the address.
    pub fn succeeded(&self, account: &str, address: Option<IpAddr>, now: UnixTime) {
        let mut f = self.lock();
        if let Some(a) = account_key(account) {
            f.by_account.map.remove(&a);
        }
        if let Some(q) = address.and_then(|ip| f.by_address.map.get_mut(&address_key(ip))) {
            if let Some(i) = q.iter().rposition(|t| *t == now) {
                q.remove(i);
            }
        }
    }
}

fn wait(q: &mut VecDeque<UnixTime>, limit: usize, now: UnixTime) -> Option<i64> {
    while q
        .front()
        .is_some_and(|t| *t <= now - SignInThrottle::WINDOW)
    {
        q.pop_front();
    }
    if q.len() >= limit {
        q.front().map(|first| first + SignInThrottle::WINDOW - now)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_per_account_and_per_address_then_age_out() {
        let t = SignInThrottle::new(ThrottleLimits {
            per_account: 3,
            per_address: 5,
            ..ThrottleLimits::default()
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other_ip: IpAddr = "192.0.2.2".parse().unwrap();
        // Three attempts in flight at once all count: a fourth is refused before any finishes.
        for i in 0..3 {
            assert_eq!(t.attempt("Ada@example.com", Some(ip), 1000 + i), Ok(()));
        }
        assert_eq!(
            t.attempt("ada@example.com", Some(other_ip), 1010),
            Err(890),
            "any address, any case"
        );
        assert_eq!(
            t.attempt("ada@example.com", None, 1000 + 900),
            Ok(()),
            "the window passes"
        );
        // The address is blocked for any account after five attempts.
        t.attempt("b@example.com", Some(ip), 1020).unwrap();
        t.attempt("c@example.com", Some(ip), 1021).unwrap();
        assert!(t.attempt("d@example.com", Some(ip), 1022).is_err());
        assert!(t.attempt("d@example.com", Some(other_ip), 1022).is_ok());
        // Success clears the account and gives the address its attempt back.
        t.attempt("e@example.com", Some(other_ip), 1030).unwrap();
        t.succeeded("e@example.com", Some(other_ip), 1030);
        assert!(t.attempt("e@example.com", Some(other_ip), 1031).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_long_accounts_are_not_tracked() {
        let t = SignInThrottle::new(ThrottleLimits {
            per_account: 100,
            per_address: 2,
            ..ThrottleLimits::default()
        });
        t.attempt("a@example.com", Some("2001:db8:1:2::1".parse().unwrap()), 0)
            .unwrap();
        t.attempt(
            "b@example.com",
            Some("2001:db8:1:2::ffff".parse().unwrap()),
            0,
        )
        .unwrap();
        assert!(
            t.attempt(
                "c@example.com",
                Some("2001:db8:1:2:abcd::9".parse().unwrap()),
                0
            )
            .is_err()
        );
        assert!(
            t.attempt("c@example.com", Some("2001:db8:1:3::1".parse().unwrap()), 0)
                .is_ok()
        );
        let long = "x".repeat(10_000);
        assert!(t.attempt(&long, None, 0).is_ok());
        assert!(t.lock().by_account.map.keys().all(|k| k.len() <= 254));
    }

    /// Filling a table from many addresses never lets an untracked account go uncounted: it
    /// fails closed until an entry ages out, and the victim's lockout holds throughout.
    #[test]
    fn a_full_table_fails_closed_never_open() {
        let t = SignInThrottle::new(ThrottleLimits {
            per_account: 5,
            per_address: 20,
            tracked: 100,
        });
        let victim = "holder@example.com";
        let victim_ip: IpAddr = "198.51.100.7".parse().unwrap();
        // The attacker fills the account table with one failure each, from many addresses.
        for i in 0..100u8 {
            let ip = IpAddr::from([10, 0, i / 10, i % 10]);
            let _ = t.attempt(&format!("filler{i}@example.com"), Some(ip), 1000);
        }
        // An untracked account (the victim) is refused, not let through uncounted.
        let mut refused = 0;
        for i in 0..23 {
            if t.attempt(victim, Some(victim_ip), 1001 + i).is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 23, "a full table refuses, never forgets");
        // When the fillers age out, tracking resumes and the lockout counts as usual.
        let later = 1000 + SignInThrottle::WINDOW + 1;
        let mut allowed = 0;
        for i in 0..23 {
            if t.attempt(victim, Some(victim_ip), later + i).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "five failures, then locked out");
        // The same holds for the address table.
        let t = SignInThrottle::new(ThrottleLimits {
            per_account: 5,
            per_address: 20,
            tracked: 10,
        });
        for i in 0..10u8 {
            let _ = t.attempt(
                &format!("x{i}@example.com"),
                Some(IpAddr::from([10, 0, 0, i])),
                5,
            );
        }
        assert!(
            t.attempt("y@example.com", Some(IpAddr::from([10, 0, 1, 1])), 6)
                .is_err()
        );
    }
}

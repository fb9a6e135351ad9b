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
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
        }
    }
}

/// The most accounts and addresses remembered. When full, entries whose failures have all aged
/// out are dropped; if none have, new accounts and addresses are not tracked until some do (the
/// ones already tracked, the likely attackers, stay blocked).
const MAX_TRACKED: usize = 100_000;

/// Longest account name tracked: longer ones cannot be an email of a user.
const MAX_ACCOUNT_CHARS: usize = 254;

#[derive(Debug, Default)]
struct Failures {
    by_account: HashMap<String, VecDeque<UnixTime>>,
    by_address: HashMap<IpAddr, VecDeque<UnixTime>>,
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
    (account.chars().count() <= MAX_ACCOUNT_CHARS).then(|| account.to_lowercase())
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
            .and_then(|a| f.by_account.get_mut(a))
            .and_then(|q| wait(q, self.limits.per_account, now));
        let by_address = address.and_then(|ip| {
            f.by_address
                .get_mut(&ip)
                .and_then(|q| wait(q, self.limits.per_address, now))
        });
        if let Some(wait) = by_account.max(by_address) {
            return Err(wait);
        }
        if let Some(a) = account {
            track(&mut f.by_account, a, self.limits.per_account, now);
        }
        if let Some(ip) = address {
            track(&mut f.by_address, ip, self.limits.per_address, now);
        }
        Ok(())
    }

    /// A successful sign-in: the account's failures are cleared, and this attempt no longer
    /// counts against the address.
    pub fn succeeded(&self, account: &str, address: Option<IpAddr>, now: UnixTime) {
        let mut f = self.lock();
        if let Some(a) = account_key(account) {
            f.by_account.remove(&a);
        }
        if let Some(q) = address.and_then(|ip| f.by_address.get_mut(&address_key(ip))) {
            if let Some(i) = q.iter().rposition(|t| *t == now) {
                q.remove(i);
            }
        }
    }
}

fn track<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, VecDeque<UnixTime>>,
    key: K,
    limit: usize,
    now: UnixTime,
) {
    if !map.contains_key(&key) && map.len() >= MAX_TRACKED {
        map.retain(|_, q| q.back().is_some_and(|t| *t > now - SignInThrottle::WINDOW));
        if map.len() >= MAX_TRACKED {
            return;
        }
    }
    let q = map.entry(key).or_default();
    q.push_back(now);
    while q.len() > limit {
        q.pop_front();
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
        assert!(t.lock().by_account.keys().all(|k| k.len() <= 254));
    }
}

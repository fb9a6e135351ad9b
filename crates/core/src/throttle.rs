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

/// The most accounts and addresses remembered; past it the oldest-idle entries go first.
const MAX_TRACKED: usize = 100_000;

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

impl SignInThrottle {
    /// 15 minutes.
    pub const WINDOW: i64 = 15 * 60;

    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            failures: Mutex::new(Failures::default()),
        }
    }

    /// `Some(seconds to wait)` if the account or the address has used up its failures.
    pub fn blocked(&self, account: &str, address: Option<IpAddr>, now: UnixTime) -> Option<i64> {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let account = account.to_lowercase();
        let by_account = f
            .by_account
            .get_mut(&account)
            .and_then(|q| wait(q, self.limits.per_account, now));
        let by_address = address.and_then(|ip| {
            f.by_address
                .get_mut(&ip)
                .and_then(|q| wait(q, self.limits.per_address, now))
        });
        by_account.max(by_address)
    }

    pub fn record_failure(&self, account: &str, address: Option<IpAddr>, now: UnixTime) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.by_account.len() >= MAX_TRACKED {
            f.by_account
                .retain(|_, q| q.back().is_some_and(|t| *t > now - Self::WINDOW));
        }
        if f.by_address.len() >= MAX_TRACKED {
            f.by_address
                .retain(|_, q| q.back().is_some_and(|t| *t > now - Self::WINDOW));
        }
        push(
            f.by_account.entry(account.to_lowercase()).or_default(),
            self.limits.per_account,
            now,
        );
        if let Some(ip) = address {
            push(
                f.by_address.entry(ip).or_default(),
                self.limits.per_address,
                now,
            );
        }
    }

    /// A successful sign-in clears the account's failures (not the address's).
    pub fn record_success(&self, account: &str) {
        let mut f = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.by_account.remove(&account.to_lowercase());
    }
}

fn push(q: &mut VecDeque<UnixTime>, limit: usize, now: UnixTime) {
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
        for i in 0..3 {
            assert_eq!(t.blocked("Ada@example.com", Some(ip), 1000 + i), None);
            t.record_failure("Ada@example.com", Some(ip), 1000 + i);
        }
        // The account is blocked from any address, case-insensitively, until the first failure ages out.
        assert_eq!(
            t.blocked("ada@example.com", Some(other_ip), 1010),
            Some(890)
        );
        assert_eq!(t.blocked("ada@example.com", None, 1000 + 900), None);
        // The address is blocked for any account after five failures.
        t.record_failure("b@example.com", Some(ip), 1020);
        t.record_failure("c@example.com", Some(ip), 1021);
        assert!(t.blocked("d@example.com", Some(ip), 1022).is_some());
        assert!(t.blocked("d@example.com", Some(other_ip), 1022).is_none());
        t.record_success("b@example.com");
        assert!(t.blocked("b@example.com", Some(other_ip), 1022).is_none());
    }
}

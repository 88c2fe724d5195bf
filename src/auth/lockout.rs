//! Login throttling: after a few failures for an account or from an address, further attempts
//! wait, doubling each time. Owns all rate limiting of logins.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures older than this are forgotten.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept at most (oldest pruned first).
const MAX_ENTRIES: usize = 100_000;
/// An address may fail this many times more than an account (shared NAT, several users).
const ADDRESS_FACTOR: u32 = 4;

struct Failures {
    count: u32,
    last: Instant,
}

/// Per-account and per-address failure counts.
pub struct Lockout {
    failures: Mutex<HashMap<String, Failures>>,
    max_failures: u32,
    base: Duration,
    max: Duration,
}

impl Lockout {
    /// After `max_failures`, wait `base`, doubling up to `max`.
    pub fn new(max_failures: u32, base: Duration, max: Duration) -> Self {
        Self { failures: Mutex::new(HashMap::new()), max_failures, base, max }
    }

    /// `Err(retry_after)` if this account or address must wait.
    pub fn check(&self, username: &str, address: &str) -> Result<(), Duration> {
        let Ok(map) = self.failures.lock() else { return Ok(()) };
        let now = Instant::now();
        let wait =
            [(account_key(username), self.max_failures), (address_key(address), self.max_failures * ADDRESS_FACTOR)]
                .iter()
                .filter_map(|(key, limit)| map.get(key).and_then(|f| self.remaining(f, *limit, now)))
                .max();
        match wait {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt.
    pub fn failed(&self, username: &str, address: &str) {
        let Ok(mut map) = self.failures.lock() else { return };
        let now = Instant::now();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, f| now.duration_since(f.last) < WINDOW);
        }
        for key in [account_key(username), address_key(address)] {
            let entry = map.entry(key).or_insert(Failures { count: 0, last: now });
            if now.duration_since(entry.last) >= WINDOW {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
        }
    }

    /// Forgets the account's failures after a successful login.
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(&account_key(username));
        }
    }

    fn remaining(&self, f: &Failures, limit: u32, now: Instant) -> Option<Duration> {
        if f.count < limit || now.duration_since(f.last) >= WINDOW {
            return None;
        }
        let doublings = (f.count - limit).min(20);
        let wait = self.base.saturating_mul(1u32 << doublings).min(self.max);
        wait.checked_sub(now.duration_since(f.last)).filter(|d| !d.is_zero())
    }
}

fn account_key(username: &str) -> String {
    format!("u:{username}")
}

fn address_key(address: &str) -> String {
    format!("a:{address}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_and_success_unlocks_the_account() {
        let l = Lockout::new(3, Duration::from_secs(60), Duration::from_secs(600));
        for _ in 0..2 {
            l.failed("bob", "1.1.1.1");
            assert!(l.check("bob", "1.1.1.1").is_ok());
        }
        l.failed("bob", "1.1.1.1");
        let wait = l.check("bob", "2.2.2.2").unwrap_err();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        l.succeeded("bob");
        assert!(l.check("bob", "2.2.2.2").is_ok());
    }

    #[test]
    fn waits_double_up_to_the_maximum() {
        let l = Lockout::new(1, Duration::from_secs(10), Duration::from_secs(25));
        l.failed("a", "x");
        l.failed("a", "x");
        assert!(l.check("a", "y").unwrap_err() > Duration::from_secs(10));
        for _ in 0..10 {
            l.failed("a", "x");
        }
        assert!(l.check("a", "y").unwrap_err() <= Duration::from_secs(25));
    }

    #[test]
    fn an_address_gets_more_attempts_than_an_account() {
        let l = Lockout::new(2, Duration::from_secs(10), Duration::from_secs(10));
        for i in 0..7 {
            l.failed(&format!("user{i}"), "9.9.9.9");
        }
        assert!(l.check("fresh", "9.9.9.9").is_ok());
        l.failed("user8", "9.9.9.9");
        assert!(l.check("fresh", "9.9.9.9").is_err());
    }
}

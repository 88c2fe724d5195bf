//! Login throttling: owns all rate limiting of logins and password confirmations.
//!
//! An attempt is taken from counters in the store *before* its password hash is checked, in one
//! statement per counter, so attempts held back and released together (here or at another
//! replica) cannot all be checked: at most `login_max_failures` hashes per round. In this
//! process an address also has one attempt in flight at a time.
//!
//! Counters are kept per account *at an address* and per address, so failures elsewhere never
//! lock the owner out. Guessing one account from many addresses is stopped by an account-wide
//! counter that spares the addresses the account has logged in from before: the owner's known
//! addresses still get in while strangers are refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::store::{Store, StoreError};
use crate::time::{ms, now_ms};

/// A key quiet this long starts afresh (and is purged).
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// An address that logged in to an account within this long is known to it.
pub const KNOWN_ADDRESS_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// An address, and an account from unknown addresses, may fail this many times more than an
/// account at one address (shared NAT, several users; an owner trying several devices).
const WIDE_FACTOR: i64 = 4;
/// Addresses with an attempt in flight remembered before dead entries are pruned.
const PRUNE_AT: usize = 10_000;

/// The throttle key of an account from any address.
pub fn account_key(username: &str) -> String {
    format!("account:{username}")
}

/// What every throttle key of an account at one address starts with (names hold no `|`).
pub fn pair_prefix(username: &str) -> String {
    format!("pair:{username}|")
}

/// The account a throttle key counts against, if it is an account's (not an address's).
pub fn account_of_key(key: &str) -> Option<&str> {
    key.strip_prefix("account:").or_else(|| key.strip_prefix("pair:").and_then(|rest| rest.split('|').next()))
}

/// What a refused attempt says.
#[derive(Debug)]
pub enum Refusal {
    /// Too many attempts: wait this long.
    Wait(Duration),
    /// The store failed.
    Store(StoreError),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e)
    }
}

/// The throttle of one gateway, on counters in the store.
pub struct Lockout {
    store: Arc<dyn Store>,
    addresses: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    max_failures: i64,
    base: Duration,
    max: Duration,
}

/// One taken attempt: report how it went with [`Attempt::failed`] or [`Attempt::succeeded`]
/// (dropped unreported, it stays counted until its key is forgotten).
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    /// Keys taken, most specific first, with their limits.
    taken: Vec<(String, i64)>,
    _in_flight: OwnedMutexGuard<()>,
}

impl Lockout {
    /// After `max_failures` in a round, wait `base`, doubling up to `max`.
    pub fn new(store: Arc<dyn Store>, max_failures: u32, base: Duration, max: Duration) -> Self {
        Self {
            store,
            addresses: Mutex::new(HashMap::new()),
            max_failures: i64::from(max_failures.max(1)),
            base: base.min(max),
            max,
        }
    }

    /// Takes an attempt for `username` from `address`; `account_wide` also counts it against
    /// the account from any address (for addresses the account does not know).
    pub async fn attempt(&self, username: &str, address: &str, account_wide: bool) -> Result<Attempt<'_>, Refusal> {
        let in_flight = self.in_flight(address).await;
        let mut keys = vec![
            (format!("{}{address}", pair_prefix(username)), self.max_failures),
            (format!("address:{address}"), self.max_failures * WIDE_FACTOR),
        ];
        if account_wide {
            keys.push((account_key(username), self.max_failures * WIDE_FACTOR));
        }
        let mut attempt = Attempt { lockout: self, taken: Vec::with_capacity(keys.len()), _in_flight: in_flight };
        let now = now_ms();
        for (key, limit) in keys {
            match self.store.take_login_attempt(&key, limit, now, now - ms(FORGET_AFTER)).await {
                Ok(None) => attempt.taken.push((key, limit)),
                Ok(Some(blocked_until)) => {
                    attempt.give_back().await;
                    let wait = Duration::from_millis(u64::try_from(blocked_until - now).unwrap_or(0));
                    return Err(Refusal::Wait(wait.max(Duration::from_secs(1))));
                }
                Err(e) => {
                    attempt.give_back().await;
                    return Err(e.into());
                }
            }
        }
        Ok(attempt)
    }

    /// Waits for this address's attempt in flight, if any, and holds its place.
    async fn in_flight(&self, address: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= PRUNE_AT {
                map.retain(|_, lock| lock.strong_count() > 0);
            }
            match map.get(address).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(address.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

impl Attempt<'_> {
    /// The password was wrong: each full round blocks its key.
    pub async fn failed(self) {
        let store = &self.lockout.store;
        let (base, max) = (ms(self.lockout.base), ms(self.lockout.max));
        for (key, limit) in &self.taken {
            if let Err(e) = store.login_attempt_failed(key, *limit, now_ms(), base, max).await {
                tracing::warn!(error = %e, "cannot record a failed login");
            }
        }
    }

    /// The password was right: the account at this address starts afresh, and the attempt is
    /// given back to the wider counters (other people's failures stay counted).
    pub async fn succeeded(self) {
        for (i, (key, _)) in self.taken.iter().enumerate() {
            if let Err(e) = self.lockout.store.return_login_attempt(key, i == 0).await {
                tracing::warn!(error = %e, "cannot record a successful login");
            }
        }
    }

    /// The attempt was not checked (refused by a later key, or the hasher failed).
    pub async fn give_back(&mut self) {
        for (key, _) in self.taken.drain(..) {
            if let Err(e) = self.lockout.store.return_login_attempt(&key, false).await {
                tracing::warn!(error = %e, "cannot return a login attempt");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_keys_name_their_account_and_address_keys_none() {
        assert_eq!(account_of_key(&account_key("a_b.c")), Some("a_b.c"));
        assert_eq!(account_of_key(&format!("{}10.0.0.1", pair_prefix("bob"))), Some("bob"));
        assert_eq!(account_of_key("address:10.0.0.1"), None);
    }
}

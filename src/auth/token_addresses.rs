//! The addresses each API token has been used from, so that its first use from a new address
//! is audited once (`token_new_address`). Bounded: [`PER_TOKEN`] addresses per token (a token
//! used from more is audited for the first [`PER_TOKEN`] only) and [`TOKENS`] tokens (beyond,
//! the map starts afresh and is seeded again from the store's audit rows).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Addresses remembered per token.
pub const PER_TOKEN: usize = 32;
/// Tokens remembered.
pub const TOKENS: usize = 10_000;

/// The audit event this bookkeeping writes (its rows seed it after a restart).
pub const EVENT: &str = "token_new_address";

/// One token's addresses, `None` until seeded from the store, behind an async lock.
pub type Seen = Arc<tokio::sync::Mutex<Option<Vec<String>>>>;

/// The addresses seen, per token id.
#[derive(Default)]
pub struct TokenAddresses {
    seen: Mutex<HashMap<i64, Seen>>,
}

impl TokenAddresses {
    /// The (async) lock of one token's addresses: held while a new address is audited, so 200
    /// concurrent first uses give one line.
    pub fn of(&self, token_id: i64) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= TOKENS && !seen.contains_key(&token_id) {
            seen.clear();
        }
        seen.entry(token_id).or_default().clone()
    }
}

//! One-time notices bound to one session (or token): the operator's console leaves one when a
//! form is done (Post/Redirect/Get), and the page the browser is sent to takes it, deleting it.
//! A generated password rides in one, so: held in memory only, never in a URL, a cookie or a
//! log; readable only by the credential that caused it; read once; gone after [`TTL`] unread.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{AuthMethod, Identity};

/// How long an unread notice is kept.
pub const TTL: Duration = Duration::from_secs(120);
/// Notices kept per caller (older ones are dropped).
const PER_CALLER: usize = 8;
/// Callers with notices kept at most; past it, expired ones are pruned and, if still full,
/// the new notice is dropped.
const CALLERS: usize = 10_000;

/// Whose notice it is: one session, or one API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A browser session (store id).
    Session(i64),
    /// An API token (store id).
    Token(i64),
}

impl Owner {
    /// The owner for `identity`'s credential.
    pub fn of(identity: &Identity) -> Self {
        match identity.method {
            AuthMethod::Session { session_id, .. } => Owner::Session(session_id),
            AuthMethod::Token { token_id, .. } => Owner::Token(token_id),
        }
    }
}

/// One notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flash {
    /// Whether it reports a refusal.
    pub error: bool,
    /// What happened.
    pub text: String,
    /// A generated secret (a password) to show this once.
    pub secret: Option<String>,
}

impl Flash {
    /// A success notice.
    pub fn notice(text: impl Into<String>) -> Self {
        Flash { error: false, text: text.into(), secret: None }
    }

    /// A refusal.
    pub fn error(text: impl Into<String>) -> Self {
        Flash { error: true, text: text.into(), secret: None }
    }

    /// A success notice showing `secret` once.
    pub fn secret(text: impl Into<String>, secret: String) -> Self {
        Flash { error: false, text: text.into(), secret: Some(secret) }
    }
}

/// The notices of a running gateway.
#[derive(Debug, Default)]
pub struct Flashes {
    held: Mutex<HashMap<Owner, Vec<(Instant, Flash)>>>,
}

impl Flashes {
    /// Leaves `flash` for `owner`'s next console page.
    pub fn push(&self, owner: Owner, flash: Flash) {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.len() >= CALLERS && !held.contains_key(&owner) {
            held.retain(|_, list| list.iter().any(|(at, _)| now.duration_since(*at) < TTL));
            if held.len() >= CALLERS {
                return;
            }
        }
        let list = held.entry(owner).or_default();
        list.retain(|(at, _)| now.duration_since(*at) < TTL);
        if list.len() >= PER_CALLER {
            list.remove(0);
        }
        list.push((now, flash));
    }

    /// Takes (and so deletes) `owner`'s unexpired notices, oldest first.
    pub fn take(&self, owner: Owner) -> Vec<Flash> {
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.remove(&owner)
            .unwrap_or_default()
            .into_iter()
            .filter(|(at, _)| now.duration_since(*at) < TTL)
            .map(|(_, flash)| flash)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_read_once_and_only_by_its_owner() {
        let flashes = Flashes::default();
        flashes.push(Owner::Session(1), Flash::secret("created", "pw".to_owned()));
        assert!(flashes.take(Owner::Session(2)).is_empty(), "another session");
        assert!(flashes.take(Owner::Token(1)).is_empty(), "a token with the same id");
        assert_eq!(flashes.take(Owner::Session(1)), [Flash::secret("created", "pw".to_owned())]);
        assert!(flashes.take(Owner::Session(1)).is_empty(), "read once");
    }

    #[test]
    fn a_caller_keeps_only_its_latest_notices() {
        let flashes = Flashes::default();
        for i in 0..20 {
            flashes.push(Owner::Session(1), Flash::notice(i.to_string()));
        }
        let kept = flashes.take(Owner::Session(1));
        assert_eq!(kept.len(), PER_CALLER);
        assert_eq!(kept.last().map(|f| f.text.as_str()), Some("19"));
    }
}

//! Password hashing: argon2id for new hashes, bcrypt accepted for imported ComfyUI-Login hashes.
//!
//! Hashing is slow on purpose, so it runs on blocking threads behind a semaphore: a flood of
//! logins waits its turn instead of starving the proxy's async workers.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use tokio::sync::{OnceCell, Semaphore};

/// Hashing could not run.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The hasher failed (should not happen with valid parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task died.
    #[error("password hashing task failed")]
    Task,
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Wrong password (or an unreadable stored hash).
    Invalid,
    /// Right password; `rehash` says the stored hash should be replaced by argon2id.
    Valid {
        /// The stored hash is bcrypt (imported) and should be upgraded.
        rehash: bool,
    },
}

/// Hashes and verifies passwords off the async workers, a bounded number at a time.
#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    decoy: Arc<OnceCell<String>>,
}

impl PasswordHasher {
    /// At most `concurrency` hashes run at once.
    pub fn new(concurrency: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), decoy: Arc::new(OnceCell::new()) }
    }

    /// A new argon2id PHC string for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_owned();
        self.blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| HashError::Hash(e.to_string()))
        })
        .await
    }

    /// Checks `password` against a stored argon2 PHC string or bcrypt hash.
    pub async fn verify(&self, password: &str, stored: &str) -> Result<Verdict, HashError> {
        let password = password.to_owned();
        let stored = stored.to_owned();
        self.blocking(move || Ok(verify_now(&password, &stored))).await
    }

    /// Spends the same time as a real check, for logins of unknown users (no timing oracle).
    pub async fn verify_decoy(&self, password: &str) -> Result<(), HashError> {
        let decoy = self
            .decoy
            .get_or_try_init(|| async {
                let random = crate::auth::secret::random_secret().map_err(|e| HashError::Hash(e.to_string()))?;
                self.hash(&random).await
            })
            .await?
            .clone();
        self.verify(password, &decoy).await.map(|_| ())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Task)?;
        tokio::task::spawn_blocking(work).await.map_err(|_| HashError::Task)?
    }
}

/// Whether `stored` looks like a bcrypt hash (ComfyUI-Login's `PASSWORD` file).
pub fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| stored.starts_with(p)) && stored.len() == 60
}

fn verify_now(password: &str, stored: &str) -> Verdict {
    if is_bcrypt(stored) {
        return match bcrypt::verify(password, stored) {
            Ok(true) => Verdict::Valid { rehash: true },
            _ => Verdict::Invalid,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else { return Verdict::Invalid };
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Verdict::Valid { rehash: false },
        Err(_) => Verdict::Invalid,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn argon2id_round_trip() {
        let h = PasswordHasher::new(1);
        let stored = h.hash("correct horse").await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        assert_eq!(h.verify("correct horse", &stored).await.unwrap(), Verdict::Valid { rehash: false });
        assert_eq!(h.verify("wrong", &stored).await.unwrap(), Verdict::Invalid);
    }

    #[tokio::test]
    async fn bcrypt_hashes_verify_and_ask_for_rehash() {
        let stored = bcrypt::hash("legacy-pass", 4).unwrap();
        let h = PasswordHasher::new(1);
        assert_eq!(h.verify("legacy-pass", &stored).await.unwrap(), Verdict::Valid { rehash: true });
        assert_eq!(h.verify("nope", &stored).await.unwrap(), Verdict::Invalid);
    }

    #[tokio::test]
    async fn garbage_hash_is_invalid_not_an_error() {
        let h = PasswordHasher::new(1);
        assert_eq!(h.verify("x", "not a hash").await.unwrap(), Verdict::Invalid);
        h.verify_decoy("x").await.unwrap();
    }
}

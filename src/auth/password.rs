//! Password hashing: argon2id for new hashes, bcrypt accepted for imported ComfyUI-Login hashes.
//!
//! Hashing is slow on purpose, so it runs on blocking threads behind a semaphore: a flood of
//! logins waits its turn instead of starving the proxy's async workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    argon2_decoy: Arc<OnceCell<String>>,
    bcrypt_decoys: Arc<Mutex<HashMap<u32, String>>>,
}

impl PasswordHasher {
    /// At most `concurrency` hashes run at once.
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            argon2_decoy: Arc::new(OnceCell::new()),
            bcrypt_decoys: Arc::new(Mutex::new(HashMap::new())),
        }
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

    /// Checks `password` against `stored` (`None`: an unknown user) in a time that does not say
    /// which kind of account it is: an argon2id verification always runs (a decoy's when the
    /// account has no argon2 hash), and while any account still has a bcrypt hash (`bcrypt_cost`
    /// is the highest cost in use), so does a bcrypt verification of that cost (a decoy's when
    /// the account has none). All run on one blocking thread, one after the other.
    pub async fn verify_uniformly(
        &self,
        password: &str,
        stored: Option<&str>,
        bcrypt_cost: Option<u32>,
    ) -> Result<Verdict, HashError> {
        let stored = stored.filter(|s| is_bcrypt(s) || PasswordHash::new(s).is_ok());
        let bcrypt = stored.is_some_and(is_bcrypt);
        // The real check first (its verdict is the answer), then decoys for the kinds it is not.
        let mut checks: Vec<String> = stored.map(str::to_owned).into_iter().collect();
        if stored.is_none() || bcrypt {
            checks.push(self.argon2_decoy().await?);
        }
        if let Some(cost) = bcrypt_cost.filter(|_| !bcrypt) {
            checks.push(self.bcrypt_decoy(cost).await?);
        }
        let real = stored.is_some();
        let password = password.to_owned();
        self.blocking(move || {
            let verdicts: Vec<Verdict> = checks.iter().map(|hash| verify_now(&password, hash)).collect();
            Ok(verdicts.first().copied().filter(|_| real).unwrap_or(Verdict::Invalid))
        })
        .await
    }

    /// An argon2id hash of a random secret, with the parameters new hashes get.
    async fn argon2_decoy(&self) -> Result<String, HashError> {
        let decoy = self
            .argon2_decoy
            .get_or_try_init(|| async {
                let random = crate::auth::secret::random_secret().map_err(|e| HashError::Hash(e.to_string()))?;
                self.hash(&random).await
            })
            .await?;
        Ok(decoy.clone())
    }

    /// A bcrypt hash of a random secret at `cost`.
    async fn bcrypt_decoy(&self, cost: u32) -> Result<String, HashError> {
        let known = self.bcrypt_decoys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&cost).cloned();
        if let Some(decoy) = known {
            return Ok(decoy);
        }
        let random = crate::auth::secret::random_secret().map_err(|e| HashError::Hash(e.to_string()))?;
        let decoy =
            self.blocking(move || bcrypt::hash(random, cost).map_err(|e| HashError::Hash(e.to_string()))).await?;
        self.bcrypt_decoys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(cost, decoy.clone());
        Ok(decoy)
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
        assert_eq!(h.verify_uniformly("x", Some("not a hash"), Some(4)).await.unwrap(), Verdict::Invalid);
    }

    #[tokio::test]
    async fn uniform_checks_answer_for_the_real_hash_only() {
        let h = PasswordHasher::new(1);
        let argon2 = h.hash("argon-pass").await.unwrap();
        let legacy = bcrypt::hash("legacy-pass", 4).unwrap();
        for cost in [None, Some(4)] {
            assert_eq!(
                h.verify_uniformly("argon-pass", Some(&argon2), cost).await.unwrap(),
                Verdict::Valid { rehash: false }
            );
            assert_eq!(
                h.verify_uniformly("legacy-pass", Some(&legacy), cost).await.unwrap(),
                Verdict::Valid { rehash: true }
            );
            assert_eq!(h.verify_uniformly("legacy-pass", Some(&argon2), cost).await.unwrap(), Verdict::Invalid);
            assert_eq!(h.verify_uniformly("argon-pass", None, cost).await.unwrap(), Verdict::Invalid);
        }
    }
}

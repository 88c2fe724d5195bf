//! Password hashing: argon2id for new hashes, bcrypt accepted for imported ComfyUI-Login hashes.
//!
//! Hashing is slow on purpose, so it runs on a few threads of its own behind a semaphore: a flood
//! of logins waits its turn instead of starving the proxy's async workers. Each thread keeps the
//! ~19 MiB of memory an argon2id computation works in for the next one, so the gateway's memory
//! does not swing (and fragment) by 19 MiB a login: the memory is taken once per thread, on the
//! first hash, and kept until the thread has had nothing to do for a minute.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::{OnceCell, Semaphore, oneshot};

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
    threads: Arc<Threads>,
    argon2_decoy: Arc<OnceCell<String>>,
    bcrypt_decoys: Arc<Mutex<HashMap<u32, String>>>,
}

impl PasswordHasher {
    /// At most `concurrency` hashes run at once.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            threads: Arc::new(Threads::start(concurrency)),
            argon2_decoy: Arc::new(OnceCell::new()),
            bcrypt_decoys: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A new argon2id PHC string for `password`.
    pub async fn hash(&self, password: &str) -> Result<String, HashError> {
        let password = password.to_owned();
        self.blocking(move |memory| hash_now(memory, password.as_bytes())).await
    }

    /// Checks `password` against a stored argon2 PHC string or bcrypt hash.
    pub async fn verify(&self, password: &str, stored: &str) -> Result<Verdict, HashError> {
        let password = password.to_owned();
        let stored = stored.to_owned();
        self.blocking(move |memory| Ok(verify_now(memory, &password, &stored))).await
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
        self.blocking(move |memory| {
            let verdicts: Vec<Verdict> = checks.iter().map(|hash| verify_now(memory, &password, hash)).collect();
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
            self.blocking(move |_| bcrypt::hash(random, cost).map_err(|e| HashError::Hash(e.to_string()))).await?;
        self.bcrypt_decoys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(cost, decoy.clone());
        Ok(decoy)
    }

    /// Runs `work` on one of the hashing threads, with that thread's argon2 memory.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Memory) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self.permits.acquire().await.map_err(|_| HashError::Task)?;
        let (reply, answer) = oneshot::channel();
        self.threads.run(Box::new(move |memory| {
            // The caller may have gone away (its request was dropped): nothing to tell.
            let _ = reply.send(work(memory));
        }))?;
        answer.await.map_err(|_| HashError::Task)?
    }
}

/// The memory one argon2 computation works in, kept by its thread for the next.
type Memory = Vec<Block>;

/// One unit of hashing work.
type Work = Box<dyn FnOnce(&mut Memory) + Send>;

/// The hashing threads: they take work from one queue and end when the hasher is dropped.
struct Threads {
    queue: Mutex<Option<mpsc::Sender<Work>>>,
}

impl Threads {
    /// Starts up to `count` threads (fewer when the system refuses more; none is an error on use).
    fn start(count: usize) -> Self {
        let (queue, work) = mpsc::channel::<Work>();
        let work = Arc::new(Mutex::new(work));
        let started = (0..count)
            .filter(|_| {
                let work = work.clone();
                std::thread::Builder::new().name("comfygate-hash".into()).spawn(move || serve(&work)).is_ok()
            })
            .count();
        Self { queue: Mutex::new((started > 0).then_some(queue)) }
    }

    fn run(&self, job: Work) -> Result<(), HashError> {
        let queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.as_ref().ok_or(HashError::Task)?.send(job).map_err(|_| HashError::Task)
    }
}

/// How long a hashing thread keeps its memory without work (a gateway nobody logs in to holds none).
const KEEP_IDLE_MEMORY: std::time::Duration = std::time::Duration::from_secs(60);

/// A hashing thread's loop: one job at a time until the queue's sender is gone.
fn serve(work: &Mutex<mpsc::Receiver<Work>>) {
    let mut memory = Memory::new();
    loop {
        let job = work.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv_timeout(KEEP_IDLE_MEMORY);
        let job = match job {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                memory = Memory::new();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // A panic in one job (its caller sees `HashError::Task`) must not take the thread with it.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut memory)));
    }
}

/// At least `blocks` of argon2 memory: the thread's own, grown to the default parameters' size at
/// most (a stored hash with a larger memory cost gets memory of its own, given back after).
fn memory_for(memory: &mut Memory, blocks: usize, run: impl FnOnce(&mut [Block]) -> bool) -> bool {
    if blocks > Params::DEFAULT_M_COST as usize {
        return run(&mut vec![Block::default(); blocks]);
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    run(memory)
}

/// A new argon2id PHC string (the default parameters) for `password`, computed in `memory`.
fn hash_now(memory: &mut Memory, password: &[u8]) -> Result<String, HashError> {
    let failed = |e: &dyn std::fmt::Display| HashError::Hash(e.to_string());
    let argon2 = Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_raw = salt.as_salt().decode_b64(&mut salt_bytes).map_err(|e| failed(&e))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let mut error = None;
    let done = memory_for(memory, argon2.params().block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password, salt_raw, &mut out, blocks).map_err(|e| error = Some(e)).is_ok()
    });
    if !done {
        return Err(error.map_or_else(|| HashError::Task, |e| failed(&e)));
    }
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params()).map_err(|e| failed(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` gives the argon2 hash `stored` (any argon2 variant, version and
/// parameters), computed in `memory` and compared in constant time.
fn argon2_matches(memory: &mut Memory, password: &[u8], stored: &PasswordHash) -> bool {
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else { return false };
    let Ok(algorithm) = Algorithm::try_from(stored.algorithm) else { return false };
    let Ok(version) = stored.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(stored) else { return false };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else { return false };
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = &mut out[..expected.len()];
    memory_for(memory, argon2.params().block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password, salt, out, blocks).is_ok()
    }) && Output::new(out).is_ok_and(|computed| computed == expected)
}

/// Whether `stored` looks like a bcrypt hash (ComfyUI-Login's `PASSWORD` file).
pub fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| stored.starts_with(p)) && stored.len() == 60
}

fn verify_now(memory: &mut Memory, password: &str, stored: &str) -> Verdict {
    if is_bcrypt(stored) {
        return match bcrypt::verify(password, stored) {
            Ok(true) => Verdict::Valid { rehash: true },
            _ => Verdict::Invalid,
        };
    }
    let Ok(parsed) = PasswordHash::new(stored) else { return Verdict::Invalid };
    if argon2_matches(memory, password.as_bytes(), &parsed) {
        Verdict::Valid { rehash: false }
    } else {
        Verdict::Invalid
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

    /// Hashes stored before this hasher (the argon2 crate's own PHC path), of any variant,
    /// version and parameters, verify; ours verify with the crate's; a changed byte does not.
    #[tokio::test]
    async fn compatible_with_the_argon2_crates_own_hashes() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let h = PasswordHasher::new(2);
        let params = Params::new(4096, 3, 2, Some(24)).unwrap();
        for (algorithm, version) in [
            (Algorithm::Argon2id, Version::V0x13),
            (Algorithm::Argon2i, Version::V0x13),
            (Algorithm::Argon2d, Version::V0x10),
        ] {
            for argon2 in [Argon2::default(), Argon2::new(algorithm, version, params.clone())] {
                let salt = SaltString::generate(&mut OsRng);
                let theirs = argon2.hash_password(b"old password", &salt).unwrap().to_string();
                assert_eq!(
                    h.verify("old password", &theirs).await.unwrap(),
                    Verdict::Valid { rehash: false },
                    "{theirs}"
                );
                assert_eq!(h.verify("old passwore", &theirs).await.unwrap(), Verdict::Invalid, "{theirs}");
                let (head, tail) = theirs.rsplit_once('$').unwrap();
                let flipped =
                    if tail.starts_with('A') { tail.replacen('A', "B", 1) } else { format!("A{}", &tail[1..]) };
                assert_eq!(h.verify("old password", &format!("{head}${flipped}")).await.unwrap(), Verdict::Invalid);
            }
        }
        let ours = h.hash("new password").await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default().verify_password(b"new password", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"new passworD", &parsed).is_err());
        assert_eq!(parsed.params, ParamsString::try_from(&Params::default()).unwrap());
    }

    /// More work than threads: every caller gets its own answer.
    #[tokio::test]
    async fn more_callers_than_threads_each_get_their_answer() {
        let h = PasswordHasher::new(2);
        let stored = h.hash("shared secret").await.unwrap();
        let checks = (0..8).map(|i| {
            let (h, stored) = (h.clone(), stored.clone());
            tokio::spawn(async move {
                let guess = if i % 2 == 0 { "shared secret" } else { "wrong secret" };
                (i, h.verify(guess, &stored).await.unwrap())
            })
        });
        for check in checks {
            let (i, verdict) = check.await.unwrap();
            let expected = if i % 2 == 0 { Verdict::Valid { rehash: false } } else { Verdict::Invalid };
            assert_eq!(verdict, expected, "caller {i}");
        }
    }
}

//! Verified credentials kept in memory, so a request costs a digest and a map lookup.
//!
//! Entries are dropped wholesale whenever anything is revoked (here or, through the revocation
//! epoch, in another process). A lookup that raced with a revocation cannot re-insert stale
//! data: inserts carry the generation they started from.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::identity::Identity;
use super::secret::SecretDigest;

/// One verified token or session.
#[derive(Debug)]
pub struct Grant {
    /// Who it belongs to.
    pub identity: Identity,
    /// Absolute end (unix ms), if any.
    pub expires_at: Option<i64>,
    /// For sessions: the idle limit (ms).
    pub idle_limit: Option<i64>,
    /// Last use (unix ms), written to the store lazily.
    pub last_used: AtomicI64,
    /// The last value written to the store.
    pub recorded_use: AtomicI64,
}

/// The cache itself.
pub struct GrantCache {
    entries: RwLock<HashMap<SecretDigest, Arc<Grant>, BuildHasherDefault<DigestHasher>>>,
    generation: AtomicU64,
    capacity: usize,
    cleared: tokio::sync::watch::Sender<u64>,
}

impl GrantCache {
    /// A cache of at most `capacity` grants.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::default()),
            generation: AtomicU64::new(0),
            capacity: capacity.max(1),
            cleared: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The grant for a digest, if cached.
    pub fn get(&self, digest: &SecretDigest) -> Option<Arc<Grant>> {
        self.entries.read().ok()?.get(digest).cloned()
    }

    /// The generation to pass to [`GrantCache::insert`] after a store lookup.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a grant unless the cache was cleared since `generation` was read.
    pub fn insert(&self, digest: SecretDigest, grant: Arc<Grant>, generation: u64) {
        let Ok(mut entries) = self.entries.write() else { return };
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            if let Some(victim) = entries.keys().next().copied() {
                entries.remove(&victim);
            }
        }
        entries.insert(digest, grant);
    }

    /// Forgets one grant (logout, expiry).
    pub fn remove(&self, digest: &SecretDigest) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(digest);
        }
    }

    /// Forgets everything (a revocation happened somewhere) and tells [`GrantCache::watch`]ers.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            entries.clear();
            self.cleared.send_replace(generation);
        }
    }

    /// Changes each time the cache is cleared: long-lived connections re-check their credential.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cleared.subscribe()
    }

    /// Uses not yet written to the store: `(is_session, id, last_used)`.
    pub fn unrecorded_uses(&self) -> Vec<(bool, i64, i64)> {
        let Ok(entries) = self.entries.read() else { return Vec::new() };
        entries
            .values()
            .filter_map(|g| {
                let used = g.last_used.load(Ordering::Relaxed);
                (used > g.recorded_use.swap(used, Ordering::Relaxed)).then(|| match &g.identity.method {
                    super::AuthMethod::Session { session_id, .. } => (true, *session_id, used),
                    super::AuthMethod::Token { token_id, .. } => (false, *token_id, used),
                })
            })
            .collect()
    }

    /// How many grants are cached.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys are SHA-256 digests, already uniformly spread: eight of their bytes make a fine
/// hash, far cheaper than SipHash. (Only verified credentials are cached, and choosing secrets
/// whose digests collide in 64 bits is out of reach.)
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for chunk in bytes.chunks(8).take(1) {
            word[..chunk.len()].copy_from_slice(chunk);
        }
        self.0 = self.0.rotate_left(13) ^ u64::from_le_bytes(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;
    use crate::store::Role;

    fn grant() -> Arc<Grant> {
        Arc::new(Grant {
            identity: Identity {
                user_id: 1,
                username: "a".into(),
                role: Role::User,
                method: AuthMethod::Session { session_id: 7, created_at: 0 },
            },
            expires_at: None,
            idle_limit: None,
            last_used: AtomicI64::new(5),
            recorded_use: AtomicI64::new(0),
        })
    }

    #[test]
    fn insert_after_clear_with_old_generation_is_ignored() {
        let c = GrantCache::new(10);
        let g = c.generation();
        c.clear();
        c.insert([1; 32], grant(), g);
        assert!(c.get(&[1; 32]).is_none());
        c.insert([1; 32], grant(), c.generation());
        assert!(c.get(&[1; 32]).is_some());
    }

    #[test]
    fn capacity_is_bounded() {
        let c = GrantCache::new(2);
        for i in 0..5u8 {
            c.insert([i; 32], grant(), c.generation());
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn unrecorded_uses_are_reported_once() {
        let c = GrantCache::new(2);
        c.insert([1; 32], grant(), c.generation());
        assert_eq!(c.unrecorded_uses(), vec![(true, 7, 5)]);
        assert!(c.unrecorded_uses().is_empty());
    }
}

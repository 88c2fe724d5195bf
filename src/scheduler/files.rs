//! Where files are: which backend holds a file and whose it is (outputs recorded from job
//! events, uploads as they pass), read from the store through a short-lived in-memory cache,
//! because every `/view` asks and a store round trip costs more than the rest of the request.
//!
//! Records go through here too, so this process never serves its own stale answer. What
//! another process records is seen within [`TTL`]. A cached record can only be out of date by
//! naming an older holder or owner; an answer "not recorded" is cached only when no other
//! process writes to the store, since a stale one would let a `/view` pass to a file another
//! user's job made meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreResult, StoredFile};

/// How long a looked-up location is used before the store is asked again.
pub const TTL: Duration = Duration::from_secs(2);
/// Files kept at most; when full, expired entries go, and if none has expired, all.
const MAX_FILES: usize = 4096;
/// Longest file key kept (ComfyUI's names are short): with [`MAX_FILES`], the cache stays
/// within a few MiB whatever names clients ask for.
const MAX_KEY: usize = 1024;

/// The file locations of one store.
pub struct FileLocations {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Whether "not recorded" may be cached (no other process records files in this store).
    cache_absent: bool,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// Bumped by every record: a lookup that began before a record does not cache its answer.
    generation: u64,
    /// By file (see [`key`]), then by the user the lookup preferred.
    files: HashMap<String, HashMap<i64, Entry>>,
}

struct Entry {
    found: Option<Arc<StoredFile>>,
    at: Instant,
}

impl FileLocations {
    /// Locations kept in `store`, cached for [`TTL`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_ttl(store, TTL)
    }

    /// Locations kept in `store`, cached for `ttl`.
    pub fn with_ttl(store: Arc<dyn Store>, ttl: Duration) -> Self {
        let cache_absent = !store.shared();
        Self { store, ttl, cache_absent, cache: Mutex::new(Cache::default()) }
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The backend known to hold a file: `prefer_user`'s own record first, then the newest
    /// (as [`Store::file`]).
    pub async fn file(
        &self,
        kind: &str,
        subfolder: &str,
        filename: &str,
        prefer_user: i64,
    ) -> StoreResult<Option<Arc<StoredFile>>> {
        if [kind, subfolder, filename].iter().any(|name| name.contains('\0')) {
            // No record has one (ComfyUI cannot write such a file), and PostgreSQL text cannot
            // even hold it: asking would fail the request instead of answering "not recorded".
            return Ok(None);
        }
        let key = key(kind, subfolder, filename);
        let generation = {
            let cache = self.cache();
            if let Some(entry) = cache.files.get(&key).and_then(|users| users.get(&prefer_user)) {
                if entry.at.elapsed() < self.ttl {
                    return Ok(entry.found.clone());
                }
            }
            cache.generation
        };
        let found = self.store.file(kind, subfolder, filename, prefer_user).await?.map(Arc::new);
        if (found.is_some() || self.cache_absent) && key.len() <= MAX_KEY {
            let mut cache = self.cache();
            if cache.generation == generation {
                if cache.files.len() >= MAX_FILES && !cache.files.contains_key(&key) {
                    cache.evict(self.ttl);
                }
                let entry = Entry { found: found.clone(), at: Instant::now() };
                cache.files.entry(key).or_default().insert(prefer_user, entry);
            }
        }
        Ok(found)
    }

    /// Records which backend holds a file (and whose it is).
    pub async fn record(&self, file: &StoredFile) -> StoreResult<()> {
        let result = self.store.record_file(file).await;
        // Even after a failed write: the store may hold it anyway.
        let mut cache = self.cache();
        cache.generation += 1;
        cache.files.remove(&key(&file.kind, &file.subfolder, &file.filename));
        result
    }
}

impl Cache {
    fn evict(&mut self, ttl: Duration) {
        self.files.retain(|_, users| {
            users.retain(|_, entry| entry.at.elapsed() < ttl);
            !users.is_empty()
        });
        if self.files.len() >= MAX_FILES {
            self.files.clear();
        }
    }
}

/// One string for a file's three names, unambiguous whatever they contain (lengths first).
fn key(kind: &str, subfolder: &str, filename: &str) -> String {
    format!("{}:{}:{kind}{subfolder}{filename}", kind.len(), subfolder.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn long_names_are_looked_up_but_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let files = FileLocations::new(crate::store::open(&url).await.unwrap());
        let long = "x".repeat(MAX_KEY);
        assert!(files.file("output", "", &long, 1).await.unwrap().is_none());
        assert!(files.file("output", "", "short.png", 1).await.unwrap().is_none());
        let cache = files.cache();
        assert!(cache.files.contains_key(&key("output", "", "short.png")));
        assert!(!cache.files.contains_key(&key("output", "", &long)));
    }

    #[test]
    fn keys_do_not_collide_whatever_the_names_hold() {
        assert_ne!(key("output", "a", "b"), key("output", "", "ab"));
        assert_ne!(key("output", "a", "b"), key("outputa", "", "b"));
        assert_ne!(key("1:1:a", "", ""), key("1", "1", ":a"));
        assert_eq!(key("output", "a", "b"), key("output", "a", "b"));
    }
}

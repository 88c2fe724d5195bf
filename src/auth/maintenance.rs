//! Keeping a running gateway in step with changes made elsewhere.
//!
//! Every revocation bumps an epoch in the store. Each gateway polls it, drops its caches when
//! it moves, and records the epoch it has applied; the CLI waits for every live gateway to
//! confirm, so `comfygate token revoke` has taken effect everywhere when it returns.
//! If the store cannot be read for a while, caches are dropped too: fail closed.
//!
//! With replicas on PostgreSQL the store pushes every bump (a trigger's `NOTIFY`, see
//! [`crate::cluster`]): the epoch is read at once, and polled only while the notification
//! connection is down (otherwise once a second, with the heartbeat).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::store::{Store, StoreResult};
use crate::time::{ms, now_ms};

use super::Auth;

/// A gateway without a heartbeat for this long is considered gone.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(5);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const RECORD_USE_EVERY: Duration = Duration::from_secs(15);
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// How long the cache may be trusted without reading the epoch.
const TRUST_WITHOUT_STORE: Duration = Duration::from_secs(3);

impl Auth {
    /// Runs until `shutdown` turns true; `instance` names this process in the store.
    pub async fn maintain(
        self: Arc<Self>,
        instance: String,
        bus: Option<Arc<crate::cluster::Bus>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.revocation_poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut last_ok, mut last_beat, mut last_use, mut last_purge) =
            (Instant::now(), None::<Instant>, Instant::now(), Instant::now());
        let mut notes = bus.as_ref().map(|b| b.subscribe());
        let listening = bus.as_ref().map(|b| b.listening());
        let mut last_read: Option<Instant> = None;
        loop {
            let pushed = tokio::select! {
                _ = tick.tick() => false,
                () = revocation_pushed(&mut notes) => true,
                _ = shutdown.changed() => break,
            };
            let pushes_arrive = listening.as_ref().is_some_and(|l| *l.borrow());
            if !pushed && pushes_arrive && last_read.is_some_and(|t| t.elapsed() < HEARTBEAT_EVERY) {
                continue;
            }
            last_read = Some(Instant::now());
            match self.store.revocation_epoch().await {
                Ok(epoch) => {
                    last_ok = Instant::now();
                    let previous = self.applied_epoch.swap(epoch, Ordering::AcqRel);
                    if previous != epoch {
                        self.cache.clear();
                    }
                    if previous != epoch || last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_EVERY) {
                        match self.store.heartbeat(&instance, epoch, now_ms()).await {
                            Ok(()) => last_beat = Some(Instant::now()),
                            Err(e) => tracing::warn!(error = %e, "cannot record heartbeat"),
                        }
                    }
                }
                Err(e) => {
                    if last_ok.elapsed() > TRUST_WITHOUT_STORE {
                        self.cache.clear();
                    }
                    tracing::warn!(error = %e, "cannot read the revocation epoch");
                }
            }
            if last_use.elapsed() >= RECORD_USE_EVERY {
                last_use = Instant::now();
                self.record_uses().await;
            }
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                let idle_since = now_ms() - ms(self.config.session_idle_timeout);
                if let Err(e) = self.store.purge_sessions(now_ms(), idle_since).await {
                    tracing::warn!(error = %e, "cannot purge old sessions");
                }
                let quiet_since = now_ms() - ms(super::lockout::FORGET_AFTER);
                if let Err(e) = self.store.purge_login_throttle(quiet_since).await {
                    tracing::warn!(error = %e, "cannot purge old login counters");
                }
                let keys_before = now_ms() - ms(crate::store::IDEMPOTENCY_KEEP_FOR);
                if let Err(e) = self.store.purge_idempotency_keys(keys_before).await {
                    tracing::warn!(error = %e, "cannot purge old idempotency keys");
                }
            }
        }
        self.record_uses().await;
        if let Err(e) = self.store.remove_instance(&instance).await {
            tracing::warn!(error = %e, "cannot deregister this gateway");
        }
    }

    /// Writes "last used" times gathered in memory.
    pub async fn record_uses(&self) {
        let uses = self.cache.unrecorded_uses();
        let (sessions, tokens): (Vec<_>, Vec<_>) = uses.into_iter().partition(|(is_session, _, _)| *is_session);
        let strip = |v: Vec<(bool, i64, i64)>| v.into_iter().map(|(_, id, at)| (id, at)).collect::<Vec<_>>();
        let (sessions, tokens) = (strip(sessions), strip(tokens));
        if !sessions.is_empty() {
            if let Err(e) = self.store.record_session_use(&sessions).await {
                tracing::warn!(error = %e, "cannot record session use");
            }
        }
        if !tokens.is_empty() {
            if let Err(e) = self.store.record_token_use(&tokens).await {
                tracing::warn!(error = %e, "cannot record token use");
            }
        }
    }
}

/// Resolves when the store pushes a revocation (or this gateway fell behind its notes); never
/// without a bus.
async fn revocation_pushed(notes: &mut Option<tokio::sync::broadcast::Receiver<Arc<crate::cluster::Note>>>) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(notes) = notes else { return std::future::pending().await };
    loop {
        match notes.recv().await {
            Ok(note) if note.channel == crate::cluster::channel::REVOCATIONS => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Waits until every live gateway has applied the current revocation epoch; returns how many
/// still lag when `timeout` runs out (0 = the change is in force everywhere).
pub async fn wait_until_applied(store: &dyn Store, timeout: Duration) -> StoreResult<i64> {
    let epoch = store.revocation_epoch().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let lagging = store.lagging_instances(epoch, now_ms() - ms(HEARTBEAT_STALE)).await?;
        if lagging == 0 || Instant::now() >= deadline {
            return Ok(lagging);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

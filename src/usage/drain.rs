//! Backend drains kept in the store (`backend_drains`): the CLI, the console and the admin API
//! write them; every gateway applies them at start and within [`POLL`] after, so a drain
//! survives restarts and holds for every replica.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::scheduler::Scheduler;

/// How often the store's drains are read.
pub const POLL: Duration = Duration::from_millis(500);

/// Makes each backend's drained state the store's; whether anything changed.
pub async fn apply(scheduler: &Scheduler) -> Result<bool, crate::store::StoreError> {
    let drained: HashSet<String> = scheduler.store().drained_backends().await?.into_iter().collect();
    let mut changed = false;
    for backend in scheduler.pool().all().iter() {
        if backend.set_drained(drained.contains(backend.name())) {
            tracing::info!(backend = backend.name(), drained = backend.is_drained(), "backend drain applied");
            changed = true;
        }
    }
    if changed {
        scheduler.pool().forget_merged();
    }
    Ok(changed)
}

/// Applies the store's drains every [`POLL`] until shutdown (a resumed backend gets work at once).
pub async fn maintain(scheduler: Arc<Scheduler>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match apply(&scheduler).await {
            Ok(true) => scheduler.kick(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the backend drains"),
        }
    }
}

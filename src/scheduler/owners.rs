//! Jobs whose owner is no longer active: a disabled or removed user, or a revoked or expired
//! token that submitted them. Their waiting jobs are cancelled, their running ones
//! interrupted, each with an audit line; none is dispatched (checked again at dispatch).

use std::collections::BTreeSet;
use std::sync::Arc;

use http::Method;
use serde_json::json;

use super::Scheduler;
use crate::audit::{Context, Event};
use crate::store::JobState;
use crate::time::now_ms;

impl Scheduler {
    /// The audit line of a job cancelled because its owner is no longer active (the
    /// cancellation goes ahead whatever the audit log says: it only takes access away).
    async fn audit_cancel(&self, id: &str, owner: i64, reason: &str) {
        let event = Event::success("job_cancelled").field("prompt_id", id).field("user_id", owner).reason(reason);
        self.audit.note(&Context::gateway("scheduler"), event).await;
    }

    /// Why jobs of `owner` (submitted with `token_id`) may no longer run; `None` while they
    /// may, or when the store cannot tell (then nothing is cancelled).
    async fn inactive_reason(&self, owner: i64, token_id: Option<i64>) -> Option<&'static str> {
        let now = now_ms();
        match self.store.owner_active(owner, None, now).await {
            Ok(false) => return Some("its owner's account was disabled or removed"),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check job owners");
                return None;
            }
        }
        match self.store.owner_active(owner, token_id, now).await {
            Ok(false) => Some("the API token that submitted it was revoked or expired"),
            _ => None,
        }
    }

    /// Cancels job `id`, found at dispatch to belong to an owner who is no longer active.
    pub(super) async fn cancel_for_owner(&self, id: &str, owner: i64, token_id: Option<i64>) {
        let reason = self.inactive_reason(owner, token_id).await.unwrap_or("its owner is no longer active");
        if self.end(id, JobState::Cancelled, &format!("cancelled: {reason}"), true).await {
            self.audit_cancel(id, owner, reason).await;
        }
    }

    /// Checks the owner of every held job after accounts or tokens changed: the jobs of owners
    /// no longer active are cancelled (waiting), withdrawn (on a backend, not started) or
    /// interrupted (running).
    pub async fn prune_owners(self: &Arc<Self>) {
        if !self.is_leading() {
            return;
        }
        let owners: BTreeSet<(i64, Option<i64>)> = self.inner().jobs.values().map(|j| (j.owner, j.token_id)).collect();
        for (owner, token_id) in owners {
            let Some(reason) = self.inactive_reason(owner, token_id).await else { continue };
            let reason = format!("cancelled: {reason}");
            let jobs: Vec<(String, JobState, Option<String>)> = {
                let mut inner = self.inner();
                inner
                    .jobs
                    .iter_mut()
                    // A job already ending (an earlier pass's interruption) is not cancelled twice.
                    .filter(|(_, j)| j.owner == owner && j.token_id == token_id && j.outcome.is_none())
                    .map(|(id, j)| {
                        if j.state == JobState::Running {
                            j.outcome = Some((JobState::Cancelled, reason.clone()));
                        }
                        (id.to_string(), j.state, j.backend.clone())
                    })
                    .collect()
            };
            // Each is audited once, by whichever pass (this one, or a dispatch finding the owner
            // inactive) actually ended it.
            for (id, state, backend) in jobs {
                let ended = match (state, backend.as_deref().and_then(|b| self.pool.get(b))) {
                    (JobState::Running, Some(backend)) => {
                        // Ends when the backend reports the interruption, with this reason.
                        let body = json!({"prompt_id": id}).to_string();
                        let timeout = backend.config.response_timeout;
                        let _ = backend.proxy.call(Method::POST, "/interrupt", Some(body.into()), timeout).await;
                        true
                    }
                    (JobState::Dispatched, Some(backend)) => {
                        // Taken out first: a copy that starts meanwhile is a stray, interrupted.
                        let ended = self.end(&id, JobState::Cancelled, &reason, true).await;
                        self.withdraw(&backend, &id).await;
                        ended
                    }
                    _ => self.end(&id, JobState::Cancelled, &reason, true).await,
                };
                if ended {
                    self.audit_cancel(&id, owner, &reason).await;
                }
            }
        }
        self.pump().await;
    }
}

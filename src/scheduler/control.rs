//! What clients can see of and do to the queue: ComfyUI's queue view, deleting and
//! interrupting jobs. A user sees and touches only their own jobs; admins see everyone's.

use http::Method;
use serde_json::{Value, json};

use super::Scheduler;
use crate::store::JobState;

/// Whose jobs a caller may see or touch.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// One user's.
    Owner(i64),
    /// Everyone's (admins).
    All,
}

impl Scope {
    /// Whether a job of `owner` is in scope.
    pub fn covers(self, owner: i64) -> bool {
        match self {
            Scope::Owner(id) => id == owner,
            Scope::All => true,
        }
    }
}

impl Scheduler {
    /// ComfyUI's `GET /queue`: running jobs, then waiting ones (on backends, then in the gateway).
    pub fn queue_view(&self, scope: Scope, viewer: i64) -> Value {
        let inner = self.inner();
        let mut running = Vec::new();
        let mut dispatched = Vec::new();
        for (id, job) in inner.jobs.iter().filter(|(_, j)| scope.covers(j.owner)) {
            match job.state {
                JobState::Running => running.push((job.number, job.queue_item(id, viewer))),
                JobState::Dispatched => dispatched.push((job.number, job.queue_item(id, viewer))),
                _ => {}
            }
        }
        running.sort_by_key(|(n, _)| *n);
        dispatched.sort_by_key(|(n, _)| *n);
        let waiting = inner
            .queue
            .in_order()
            .into_iter()
            .filter(|(owner, _)| scope.covers(*owner))
            .filter_map(|(_, id)| inner.jobs.get(&id).map(|j| j.queue_item(&id, viewer)));
        let pending: Vec<Value> = dispatched.into_iter().map(|(_, item)| item).chain(waiting).collect();
        json!({"queue_running": running.into_iter().map(|(_, item)| item).collect::<Vec<_>>(), "queue_pending": pending})
    }

    /// Why each job in the gateway's queue is still waiting (for operators).
    pub fn waiting(&self) -> Vec<Value> {
        let backends = self.pool.all();
        let inner = self.inner();
        inner
            .queue
            .in_order()
            .into_iter()
            .filter_map(|(owner, id)| {
                let job = inner.jobs.get(&id)?;
                let healthy: Vec<_> = backends.iter().filter(|b| b.is_healthy()).collect();
                let capable: Vec<_> = healthy
                    .iter()
                    .filter(|b| job.pinned.as_deref().is_none_or(|p| p == b.name()))
                    .filter(|b| match (&job.requirements, b.capabilities()) {
                        (Some(req), Some(caps)) => req.satisfied_by(&caps),
                        _ => true,
                    })
                    .collect();
                let reason = if healthy.is_empty() {
                    "no backend is healthy".to_owned()
                } else if let (Some(pinned), true) = (&job.pinned, capable.is_empty()) {
                    format!("its input files are on backend `{pinned}`, which is not available")
                } else if capable.is_empty() {
                    let models: Vec<String> =
                        job.requirements.as_ref().map(|r| r.model_files().into_iter().collect()).unwrap_or_default();
                    format!("no healthy backend has everything it needs (models: {})", models.join(", "))
                } else if job.requirements.is_none() {
                    "waiting for the backends to report their nodes and models".to_owned()
                } else {
                    "waiting for a free slot (fair share between users)".to_owned()
                };
                Some(json!({"prompt_id": id, "user_id": owner, "reason": reason}))
            })
            .collect()
    }

    /// The owner and backend of a job the gateway holds or held.
    pub async fn locate(&self, prompt_id: &str) -> Option<(i64, Option<String>)> {
        if let Some(job) = self.inner().jobs.get(prompt_id) {
            return Some((job.owner, job.backend.clone()));
        }
        match self.store.job(prompt_id).await {
            Ok(Some(job)) => Some((job.user_id, job.backend)),
            _ => None,
        }
    }

    /// `POST /queue {"delete": [...]}`: jobs still waiting in the gateway are removed there;
    /// jobs handed to a backend are deleted from its queue.
    pub async fn delete(&self, scope: Scope, ids: &[String]) {
        for id in ids {
            let target = {
                let mut inner = self.inner();
                let Some(job) = inner.jobs.get(id) else { continue };
                if !scope.covers(job.owner) || job.state == JobState::Running {
                    continue;
                }
                let backend = job.backend.clone();
                if backend.is_none() {
                    inner.queue.remove(id);
                    inner.jobs.remove(id);
                } else if let Some(job) = inner.jobs.get_mut(id) {
                    job.outcome = Some((JobState::Cancelled, "deleted from the queue".to_owned()));
                }
                backend
            };
            match target.as_deref().and_then(|b| self.pool.get(b)).cloned() {
                None => self.save_state(id, JobState::Cancelled, None, Some("deleted from the queue")).await,
                Some(backend) => {
                    let body = json!({"delete": [id]}).to_string();
                    let _ = backend
                        .proxy
                        .call(Method::POST, "/queue", Some(body.into()), backend.config.response_timeout)
                        .await;
                    self.finish(&backend, id).await;
                }
            }
        }
        self.announce_status();
        self.pump().await;
    }

    /// `POST /queue {"clear": true}`: every waiting job in scope.
    pub async fn clear(&self, scope: Scope) {
        let ids: Vec<String> = self
            .inner()
            .jobs
            .iter()
            .filter(|(_, j)| scope.covers(j.owner) && j.state != JobState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        self.delete(scope, &ids).await;
    }

    /// `POST /interrupt`: the named job, or every running job in scope.
    pub async fn interrupt(&self, scope: Scope, prompt_id: Option<&str>) {
        let targets: Vec<(String, String)> = {
            let inner = self.inner();
            inner
                .jobs
                .iter()
                .filter(|(id, j)| scope.covers(j.owner) && prompt_id.is_none_or(|p| p == id.as_str()))
                .filter(|(_, j)| j.state == JobState::Running)
                .filter_map(|(id, j)| j.backend.clone().map(|b| (id.clone(), b)))
                .collect()
        };
        for (id, backend) in targets {
            let Some(backend) = self.pool.get(&backend) else { continue };
            let body = json!({"prompt_id": id}).to_string();
            let _ = backend
                .proxy
                .call(Method::POST, "/interrupt", Some(body.into()), backend.config.response_timeout)
                .await;
        }
        if let Some(id) = prompt_id {
            self.delete(scope, &[id.to_owned()]).await;
        }
    }
}

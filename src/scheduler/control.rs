//! What clients can see of and do to the queue: ComfyUI's queue view, deleting and
//! interrupting jobs. A user sees and touches only their own jobs; admins see everyone's.

use http::Method;
use serde_json::{Value, json};

use std::collections::HashMap;
use std::sync::Arc;

use super::Scheduler;
use super::SchedulerError;
use super::events::Entry;
use super::jobs::QueueEntry;
use super::observe::JobReport;
use crate::store::JobState;

/// A queue view of more jobs than this is built off the request workers, one at a time.
const LARGE_VIEW: usize = 200;

/// Writes queue items, comma-separated, from the jobs' stored requests.
fn write_items(out: &mut String, items: &[QueueEntry], requests: &HashMap<String, String>, viewer: i64, admin: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let request = requests.get(&item.id).map_or("{}", String::as_str);
        item.write(out, viewer, admin, request);
    }
}

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
    /// ComfyUI's `GET /queue`: running jobs, then waiting ones (on backends, then in the
    /// gateway). Built from a snapshot taken under the lock and workflows read from the store
    /// outside it; a user's view costs in proportion to their own jobs.
    pub async fn queue_view(&self, scope: Scope, viewer: i64) -> Result<String, SchedulerError> {
        self.fresh().await;
        let (mut running, mut dispatched, waiting) = {
            let inner = self.inner();
            let (mut running, mut dispatched) = (Vec::new(), Vec::new());
            for backend in self.pool.all().iter() {
                for id in backend.load().inflight.iter() {
                    let Some(job) = inner.job(id).filter(|j| scope.covers(j.owner)) else { continue };
                    match job.state {
                        JobState::Running => running.push(job.view(id)),
                        _ => dispatched.push(job.view(id)),
                    }
                }
            }
            let order = match scope {
                Scope::Owner(owner) => inner.queue.line(owner),
                Scope::All => inner.queue.in_order(crate::time::now_ms()).into_iter().map(|(_, id)| id).collect(),
            };
            let waiting: Vec<QueueEntry> = order.iter().filter_map(|id| inner.job(id).map(|j| j.view(id))).collect();
            (running, dispatched, waiting)
        };
        running.sort_by_key(|i| i.number);
        dispatched.sort_by_key(|i| i.number);
        let ids: Vec<String> = running.iter().chain(&dispatched).chain(&waiting).map(|i| i.id.clone()).collect();
        // Large views (an admin's, a heavy user's) take turns, and are built off the request
        // workers: a small user's view never waits behind them.
        let _turn = match ids.len() > LARGE_VIEW {
            true => Some(self.large_views.acquire().await.map_err(|_| SchedulerError::Internal("view turns closed"))?),
            false => None,
        };
        let requests = self.store.job_requests(&ids).await?;
        let admin = matches!(scope, Scope::All);
        let build = move || {
            let mut out = String::with_capacity(64 + requests.values().map(|r| r.len() + 64).sum::<usize>());
            out.push_str(r#"{"queue_running":["#);
            write_items(&mut out, &running, &requests, viewer, admin);
            out.push_str(r#"],"queue_pending":["#);
            write_items(&mut out, &dispatched, &requests, viewer, admin);
            if !dispatched.is_empty() && !waiting.is_empty() {
                out.push(',');
            }
            write_items(&mut out, &waiting, &requests, viewer, admin);
            out.push_str("]}");
            out
        };
        if ids.len() > LARGE_VIEW {
            tokio::task::spawn_blocking(build).await.map_err(|_| SchedulerError::Internal("view building failed"))
        } else {
            Ok(build())
        }
    }

    /// How many jobs wait that no backend in service can run: none is up, the one holding
    /// their input files is not, or none up has their nodes and models (a backend that has not
    /// reported its capabilities yet is taken as able). One verdict per workflow shape: jobs of
    /// one workflow share their requirements.
    pub fn unrunnable_jobs(&self) -> usize {
        let all = self.pool.all();
        let up: Vec<_> = all.iter().filter(|b| b.in_service()).map(|b| (b.name(), b.capabilities())).collect();
        let inner = self.inner();
        let mut verdicts: HashMap<(usize, Option<&str>), bool> = HashMap::new();
        inner
            .jobs
            .values()
            .filter(|job| job.state == JobState::Queued)
            .filter(|job| {
                let shape = job.requirements.as_ref().map_or(0, |r| std::sync::Arc::as_ptr(r) as usize);
                let pinned = job.pinned.as_deref();
                !*verdicts.entry((shape, pinned)).or_insert_with(|| {
                    up.iter().any(|(name, caps)| {
                        pinned.is_none_or(|p| p == *name)
                            && match (&job.requirements, caps) {
                                (Some(req), Some(caps)) => req.satisfied_by(caps),
                                _ => true,
                            }
                    })
                })
            })
            .count()
    }

    /// Why each job in the gateway's queue is still waiting (for operators).
    pub fn waiting(&self) -> Vec<Value> {
        let backends = self.pool.all();
        let inner = self.inner();
        inner
            .queue
            .in_order(crate::time::now_ms())
            .into_iter()
            .filter_map(|(owner, id)| {
                let job = inner.job(&id)?;
                let reason = wait_reason(&backends, job);
                Some(json!({"prompt_id": id, "user_id": owner, "reason": reason}))
            })
            .collect()
    }

    /// The jobs the gateway holds, for the operator's console: every job running or handed to
    /// a backend (by number), then the first `waiting` of the gateway's queue in dispatch order,
    /// each with why it waits; and how many jobs the gateway holds in all.
    pub fn overview(&self, waiting: usize) -> (Vec<JobSummary>, usize) {
        let backends = self.pool.all();
        let inner = self.inner();
        let mut held: Vec<JobSummary> = inner
            .jobs
            .iter()
            .filter(|(_, job)| job.backend.is_some() && job.state != JobState::Queued)
            .map(|(id, job)| JobSummary::of(id, job, None))
            .collect();
        held.sort_by_key(|j| (j.state != JobState::Running, j.number));
        for (_, id) in inner.queue.first_in_order(crate::time::now_ms(), waiting) {
            if let Some(job) = inner.job(&id) {
                held.push(JobSummary::of(&id, job, Some(wait_reason(&backends, job))));
            }
        }
        (held, inner.jobs.len())
    }

    /// `owner`'s jobs the gateway holds, for their account page: those on backends, then those
    /// waiting with their place in the gateway's dispatch order (`None` past the first
    /// [`POSITIONS_COUNTED`] places) and why they wait.
    pub fn jobs_of(&self, owner: i64) -> Vec<(JobSummary, Option<usize>)> {
        let backends = self.pool.all();
        let inner = self.inner();
        let mut out: Vec<(JobSummary, Option<usize>)> = Vec::new();
        for backend in backends.iter() {
            for id in backend.load().inflight.iter() {
                if let Some(job) = inner.job(id).filter(|j| j.owner == owner) {
                    out.push((JobSummary::of(id, job, None), None));
                }
            }
        }
        let mut places: HashMap<Arc<str>, usize> = HashMap::new();
        if inner.queue.waiting_of(owner) > 0 {
            for (place, (who, id)) in
                inner.queue.first_in_order(crate::time::now_ms(), POSITIONS_COUNTED).into_iter().enumerate()
            {
                if who == owner {
                    places.insert(id, place + 1);
                }
            }
        }
        for id in inner.queue.line(owner) {
            if let Some(job) = inner.job(&id) {
                let reason = wait_reason(&backends, job);
                out.push((JobSummary::of(&id, job, Some(reason)), places.get(&id).copied()));
            }
        }
        out
    }

    /// The held job with gateway id `id`, as [`Scheduler::overview`] shows it (without a wait
    /// reason).
    pub fn summary(&self, id: &str) -> Option<JobSummary> {
        self.inner().job(id).map(|job| JobSummary::of(id, job, None))
    }

    /// The held jobs in `scope` (queued, dispatched, running), for the jobs API: a user's cost
    /// in proportion to their own jobs. The id `viewer` knows each by is
    /// [`JobSummary::shown_id`].
    pub fn held_jobs(&self, scope: Scope) -> Vec<JobSummary> {
        let inner = self.inner();
        match scope {
            Scope::All => inner.jobs.iter().map(|(id, job)| JobSummary::of(id, job, None)).collect(),
            Scope::Owner(owner) => {
                let mut out = Vec::new();
                for backend in self.pool.all().iter() {
                    for id in backend.load().inflight.iter() {
                        if let Some(job) = inner.job(id).filter(|j| j.owner == owner) {
                            out.push(JobSummary::of(id, job, None));
                        }
                    }
                }
                for id in inner.queue.line(owner) {
                    if let Some(job) = inner.job(&id) {
                        out.push(JobSummary::of(&id, job, None));
                    }
                }
                out
            }
        }
    }

    /// The held job `viewer` calls `id` (their own id; for admins, also anyone's gateway id).
    /// Another user's id is never found.
    pub fn held_job(&self, scope: Scope, viewer: i64, id: &str) -> Option<JobSummary> {
        let found = self.held(scope, viewer, id)?;
        let inner = self.inner();
        inner.job(&found).filter(|j| scope.covers(j.owner)).map(|job| JobSummary::of(&found, job, None))
    }

    /// The gateway id, owner and backend of the job `viewer` calls `id` (their own id first;
    /// for admins, then the gateway's id), held now or recorded.
    pub async fn locate(&self, scope: Scope, viewer: i64, id: &str) -> Option<(String, i64, Option<String>)> {
        self.fresh().await;
        if let Some(found) = self.held(scope, viewer, id) {
            let inner = self.inner();
            let job = inner.job(&found)?;
            return Some((found.clone(), job.owner, job.backend.clone()));
        }
        let job = match self.store.job_of(viewer, id).await {
            Ok(Some(job)) => Some(job),
            Ok(None) if matches!(scope, Scope::All) => self.store.job(id).await.ok().flatten(),
            _ => None,
        }?;
        Some((job.prompt_id, job.user_id, job.backend))
    }

    /// The gateway id of the held job `viewer` calls `id`: one of their own by the id they know
    /// it by, else (admins) anyone's by the gateway's id. Another user's id is never found.
    fn held(&self, scope: Scope, viewer: i64, id: &str) -> Option<String> {
        let inner = self.inner();
        let own = inner.own(viewer, id).map(|found| found.to_string());
        own.or_else(|| match scope {
            Scope::All => inner.jobs.contains_key(id).then(|| id.to_owned()),
            Scope::Owner(_) => None,
        })
    }

    /// `POST /queue {"delete": [...]}` (ids as `viewer` knows them): jobs still waiting in the
    /// gateway are removed there; jobs handed to a backend are deleted from its queue.
    pub async fn delete(&self, scope: Scope, viewer: i64, ids: &[String]) {
        self.fresh().await;
        let ids: Vec<String> = ids.iter().filter_map(|id| self.held(scope, viewer, id)).collect();
        if !self.is_leading() {
            self.pass_delete(scope, ids);
            return self.stale().await;
        }
        self.delete_held(scope, &ids, "deleted from the queue").await;
    }

    /// Deletes held jobs by gateway id (running ones are left alone).
    pub(super) async fn delete_held(&self, scope: Scope, ids: &[String], reason: &str) {
        for id in ids {
            let target = {
                let mut inner = self.inner();
                let Some(job) = inner.job(id) else { continue };
                if !scope.covers(job.owner) || job.state == JobState::Running {
                    continue;
                }
                let backend = job.backend.clone();
                let mut report = None;
                if backend.is_none() {
                    if let Some(job) = inner.remove(id) {
                        let ended = crate::time::now_ms();
                        report = Some(JobReport::of(id, &job, JobState::Cancelled, Some(reason), Some(ended)));
                    }
                    self.count_end(JobState::Cancelled, false, None);
                } else if let Some(job) = inner.job_mut(id) {
                    job.outcome = Some((JobState::Cancelled, reason.to_owned()));
                }
                (backend, report)
            };
            let (target, report) = target;
            match target.as_deref().and_then(|b| self.pool.get(b)) {
                None => {
                    self.end_job(id, JobState::Cancelled, None, Some(reason), None).await;
                    if let Some(report) = report {
                        self.tell(report).await;
                    }
                }
                Some(backend) => {
                    // Taken out first: a copy that starts meanwhile is a stray, interrupted.
                    self.finish(&backend, id, Entry::Omitted).await;
                    self.withdraw(&backend, id).await;
                }
            }
        }
        self.announce_status();
        self.pump().await;
    }

    /// `POST /queue {"clear": true}`: every waiting job in scope.
    pub async fn clear(&self, scope: Scope) {
        if !self.is_leading() {
            self.pass_clear(scope);
            return self.stale().await;
        }
        let ids: Vec<String> = self
            .inner()
            .jobs
            .iter()
            .filter(|(_, j)| scope.covers(j.owner) && j.state != JobState::Running)
            .map(|(id, _)| id.to_string())
            .collect();
        self.delete_held(scope, &ids, "deleted from the queue").await;
    }

    /// `POST /interrupt`: the named job (as `viewer` knows it), or every running job in scope.
    pub async fn interrupt(&self, scope: Scope, viewer: i64, prompt_id: Option<&str>) {
        self.fresh().await;
        let prompt_id = match prompt_id {
            Some(id) => match self.held(scope, viewer, id) {
                Some(found) => Some(found),
                None => return,
            },
            None => None,
        };
        if !self.is_leading() {
            self.pass_interrupt(scope, prompt_id);
            return self.stale().await;
        }
        self.interrupt_held(scope, prompt_id.as_deref()).await;
    }

    /// Interrupts the held job `prompt_id` (gateway id) and deletes it from the queue, or every
    /// running job in scope.
    pub(super) async fn interrupt_held(&self, scope: Scope, prompt_id: Option<&str>) {
        let targets: Vec<(String, String)> = {
            let inner = self.inner();
            inner
                .jobs
                .iter()
                .filter(|(id, j)| scope.covers(j.owner) && prompt_id.is_none_or(|p| p == &***id))
                .filter(|(_, j)| j.state == JobState::Running)
                .filter_map(|(id, j)| j.backend.clone().map(|b| (id.to_string(), b)))
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
            self.delete_held(scope, &[id.to_owned()], "deleted from the queue").await;
        }
    }
}

/// One held job as the console shows it.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// The gateway's id.
    pub id: String,
    /// The id its owner knows it by (their own choice, or the gateway's).
    pub public_id: String,
    /// ComfyUI's queue number.
    pub number: i64,
    /// Owner's user id.
    pub owner: i64,
    /// Owner's name.
    pub username: String,
    /// Queued (in the gateway), dispatched (on a backend's queue) or running.
    pub state: JobState,
    /// The backend holding it.
    pub backend: Option<String>,
    /// When it was submitted (unix ms).
    pub created_at: i64,
    /// When its run started (unix ms).
    pub started_at: Option<i64>,
    /// Why it still waits in the gateway's queue (only for queued jobs).
    pub reason: Option<String>,
}

impl JobSummary {
    /// The id `viewer` knows this job by: its owner's own id, else the gateway's.
    pub fn shown_id(&self, viewer: i64) -> &str {
        if self.owner == viewer { &self.public_id } else { &self.id }
    }

    fn of(id: &str, job: &super::jobs::Active, reason: Option<String>) -> Self {
        JobSummary {
            id: id.to_owned(),
            public_id: job.public_id.to_string(),
            number: job.number,
            owner: job.owner,
            username: job.username.to_string(),
            state: job.state,
            backend: job.backend.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            reason,
        }
    }
}

/// How far into the gateway's queue a user's account page counts places.
pub const POSITIONS_COUNTED: usize = 10_000;

/// Why `job`, in the gateway's queue, still waits, in plain words.
fn wait_reason(backends: &[std::sync::Arc<crate::backends::Backend>], job: &super::jobs::Active) -> String {
    let healthy: Vec<_> = backends.iter().filter(|b| b.is_healthy()).collect();
    let capable: Vec<_> = healthy
        .iter()
        .filter(|b| job.pinned.as_deref().is_none_or(|p| p == b.name()))
        .filter(|b| match (&job.requirements, b.capabilities()) {
            (Some(req), Some(caps)) => req.satisfied_by(&caps),
            _ => true,
        })
        .collect();
    if healthy.is_empty() {
        "no backend is healthy".to_owned()
    } else if let (Some(pinned), true) = (&job.pinned, capable.is_empty()) {
        format!("its input files are on backend `{pinned}`, which is not available")
    } else if capable.is_empty() {
        let models: Vec<String> =
            job.requirements.as_ref().map(|r| r.model_files().into_iter().collect()).unwrap_or_default();
        format!("no healthy backend has everything it needs (models: {})", models.join(", "))
    } else if capable.iter().all(|b| b.is_retiring() || b.is_drained()) {
        let names: Vec<&str> = capable.iter().map(|b| b.name()).collect();
        format!("every backend that can run it is drained or leaving the pool ({})", names.join(", "))
    } else if job.requirements.is_none() {
        "waiting for the backends to report their nodes and models".to_owned()
    } else {
        "waiting for a free slot (fair share between users)".to_owned()
    }
}

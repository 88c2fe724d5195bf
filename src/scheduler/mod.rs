//! The gateway-held job queue: jobs wait here and go to a backend only when it has room,
//! picked by fair share between users among the jobs that backend can run, preferring the
//! backend that already has the job's models loaded. The queue lives in the store, so a
//! restart loses nothing; jobs on a backend that dies are re-dispatched (not started yet) or
//! reported failed (running).
//!
//! [`submit`](Scheduler::submit) → [`pump`](Scheduler::pump) (decide under one lock, then
//! POST to backends) → events from [`monitor`](crate::backends::monitor) drive
//! [`events`] → [`delivery`] to the owner's WebSocket.

pub mod control;
pub mod delivery;
mod events;
pub mod fair;
pub mod files;
mod jobs;
pub mod workflow;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::backends::{Backend, Pool, Reach};
use crate::config::SchedulerConfig;
use crate::store::{Job, JobState, Store, StoreError};
use crate::time::now_ms;
use delivery::Subscribers;
pub use events::execution_error;
use fair::FairQueue;
use files::FileLocations;
use jobs::Active;
pub use jobs::{Answer, strip_secrets};
use workflow::Requirements;

/// Why a submission is refused before it is queued.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job on its way to a backend.
struct Dispatch {
    id: String,
    backend: Arc<Backend>,
    username: String,
    request: Arc<Value>,
    waiter: Option<oneshot::Sender<Answer>>,
}

struct Inner {
    queue: FairQueue,
    jobs: HashMap<String, Active>,
    /// Jobs moved away from a backend that went down, to delete there when it comes back.
    abandoned: HashMap<String, Vec<String>>,
}

/// The scheduler of a running gateway.
pub struct Scheduler {
    store: Arc<dyn Store>,
    files: FileLocations,
    pool: Arc<Pool>,
    config: SchedulerConfig,
    inner: Mutex<Inner>,
    numbers: AtomicI64,
    announced: AtomicUsize,
    subscribers: Subscribers,
}

impl Scheduler {
    /// Loads the jobs the store still has waiting or running.
    pub async fn load(store: Arc<dyn Store>, pool: Arc<Pool>, config: SchedulerConfig) -> Result<Self, StoreError> {
        let numbers = AtomicI64::new(store.max_job_number().await?);
        let mut inner = Inner { queue: FairQueue::default(), jobs: HashMap::new(), abandoned: HashMap::new() };
        for job in store.jobs_in_states(&[JobState::Queued, JobState::Dispatched, JobState::Running]).await? {
            let mut active = Active::from_job(&job);
            // A job handed to a backend that is still configured stays with it (reconciled once
            // its socket connects); anything else waits in the queue again.
            let holder = match job.state {
                JobState::Dispatched | JobState::Running => job.backend.as_deref().and_then(|b| pool.get(b)),
                _ => None,
            };
            match holder {
                Some(backend) => backend.load().inflight.push(job.prompt_id.clone()),
                None => {
                    active.state = JobState::Queued;
                    active.backend = None;
                    inner.queue.push_back(job.user_id, job.prompt_id.clone());
                }
            }
            inner.jobs.insert(job.prompt_id.clone(), active);
        }
        if !inner.jobs.is_empty() {
            tracing::info!(jobs = inner.jobs.len(), "resumed jobs from the store");
        }
        Ok(Self {
            files: FileLocations::new(store.clone()),
            store,
            pool,
            config,
            inner: Mutex::new(inner),
            numbers,
            announced: AtomicUsize::new(usize::MAX),
            subscribers: Subscribers::default(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The backends.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Which backend holds which file (through a short-lived cache: read and record files here,
    /// not in the store directly).
    pub fn files(&self) -> &FileLocations {
        &self.files
    }

    /// Jobs waiting or running, gateway-wide (ComfyUI's `queue_remaining`).
    pub fn queue_remaining(&self) -> usize {
        self.inner().jobs.len()
    }

    /// Registers a client's WebSocket for the events of its jobs.
    pub fn subscribe(&self, user_id: i64, client_id: &str) -> tokio::sync::mpsc::Receiver<delivery::Outgoing> {
        self.subscribers.subscribe(user_id, client_id)
    }

    /// Queues a `POST /prompt` body for `user_id`; dispatches at once when a capable backend has
    /// room, returning that backend's own answer.
    pub async fn submit(
        &self,
        user_id: i64,
        username: &str,
        mut body: Map<String, Value>,
    ) -> Result<Answer, SchedulerError> {
        let Some(prompt) = body.get("prompt").and_then(Value::as_object).cloned() else {
            return Ok(Answer::comfy_error("no_prompt", "No prompt provided", "No prompt provided"));
        };
        let known = self.pool.capabilities_complete().then(|| self.pool.known_capabilities(Reach::Any)).flatten();
        let requirements = match known {
            Some(known) => match workflow::analyse(&prompt, &known) {
                Ok(req) => Some(req),
                Err(rejection) => return Ok(Answer::json(StatusCode::BAD_REQUEST, &rejection)),
            },
            None => None,
        };
        let client_id = match body.remove("client_id") {
            // Kept with the job, and PostgreSQL text cannot hold NUL: refused for every store alike.
            Some(Value::String(id)) if id.chars().any(char::is_control) => {
                return Ok(Answer::comfy_error(
                    "invalid_client_id",
                    "client_id must not contain control characters",
                    "",
                ));
            }
            Some(Value::String(id)) => id,
            _ => String::new(),
        };
        let prompt_id = match body.remove("prompt_id") {
            None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
            Some(Value::String(id)) if valid_prompt_id(&id) => id,
            Some(_) => {
                return Ok(Answer::comfy_error(
                    "invalid_prompt_id",
                    "prompt_id must be a string of 1-128 letters, digits, '-' or '_'",
                    "",
                ));
            }
        };
        let pinned = match &requirements {
            Some(req) => self.backend_holding(user_id, &req.input_files).await?,
            None => None,
        };
        let number = self.numbers.fetch_add(1, Ordering::AcqRel) + 1;
        let job = Job {
            prompt_id: prompt_id.clone(),
            user_id,
            username: username.to_owned(),
            client_id: client_id.clone(),
            number,
            request: Value::Object(body).to_string(),
            state: JobState::Queued,
            backend: None,
            error: None,
            created_at: now_ms(),
        };
        match self.store.insert_job(&job).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Ok(Answer::json(
                    StatusCode::CONFLICT,
                    &json!({"error": {"type": "duplicate_prompt_id", "message": "prompt_id is already in use",
                        "details": prompt_id, "extra_info": {}}, "node_errors": {}}),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let (tx, mut rx) = oneshot::channel();
        {
            let mut inner = self.inner();
            let mut active = Active::from_job(&job);
            active.requirements = requirements;
            active.pinned = pinned;
            active.waiter = Some(tx);
            inner.jobs.insert(prompt_id.clone(), active);
            inner.queue.push_back(user_id, prompt_id.clone());
        }
        self.pump().await;
        self.announce_status();
        match rx.try_recv() {
            Ok(answer) => Ok(answer),
            Err(_) => {
                if let Some(job) = self.inner().jobs.get_mut(&prompt_id) {
                    job.waiter = None;
                }
                Ok(Answer::json(StatusCode::OK, &json!({"prompt_id": prompt_id, "number": number, "node_errors": {}})))
            }
        }
    }

    /// The backend that holds the uploaded input files the job uses (when one is known).
    async fn backend_holding(&self, user_id: i64, files: &BTreeSet<String>) -> Result<Option<String>, StoreError> {
        for file in files {
            let clean = file.trim_end_matches(" [input]").trim_end_matches(" [output]").trim_end_matches(" [temp]");
            let (subfolder, name) = clean.rsplit_once('/').unwrap_or(("", clean));
            if let Some(stored) = self.files.file("input", subfolder, name, user_id).await? {
                return Ok(Some(stored.backend.clone()));
            }
        }
        Ok(None)
    }

    /// Hands jobs to backends with room until none fits: decisions under one lock, then the
    /// POSTs concurrently.
    pub async fn pump(&self) {
        for _ in 0..4 {
            let assignments = self.assign();
            if assignments.is_empty() {
                return;
            }
            let dispatches = assignments.into_iter().map(|d| self.dispatch(d));
            futures_util::future::join_all(dispatches).await;
        }
    }

    fn assign(&self) -> Vec<Dispatch> {
        let known = self.pool.capabilities_complete().then(|| self.pool.known_capabilities(Reach::Any)).flatten();
        let backends = self.pool.all().to_vec();
        let mut inner = self.inner();
        let inner = &mut *inner;
        if let Some(known) = &known {
            for job in inner.jobs.values_mut().filter(|j| j.requirements.is_none()) {
                job.requirements = Some(workflow::analyse(&job.prompt_map(), known).unwrap_or_default());
            }
        }
        let mut out = Vec::new();
        loop {
            let rooms: Vec<&Arc<Backend>> = backends.iter().filter(|b| b.has_room()).collect();
            if rooms.is_empty() {
                break;
            }
            let jobs = &mut inner.jobs;
            let taken = inner.queue.take(|id| jobs.get(id).is_some_and(|j| best_backend(j, &rooms).is_some()));
            let Some((_, id)) = taken else { break };
            let Some(job) = jobs.get_mut(&id) else { continue };
            let Some(backend) = best_backend(job, &rooms).cloned() else { continue };
            backend.load().inflight.push(id.clone());
            job.state = JobState::Dispatched;
            job.backend = Some(backend.name().to_owned());
            out.push(Dispatch {
                id,
                backend,
                username: job.username.clone(),
                request: job.request.clone(),
                waiter: job.waiter.take(),
            });
        }
        out
    }

    async fn dispatch(&self, Dispatch { id, backend, username, request, waiter }: Dispatch) {
        let mut body = (*request).clone();
        body["client_id"] = Value::String(backend.monitor_id.clone());
        body["prompt_id"] = Value::String(id.clone());
        let bytes = Bytes::from(body.to_string());
        let timeout = backend.config.response_timeout;
        let result = backend.proxy.call_as(Some(&username), Method::POST, "/prompt", Some(bytes), timeout).await;
        match result {
            Ok((StatusCode::OK, answer)) => {
                self.save_state(&id, JobState::Dispatched, Some(backend.name()), None).await;
                if let Some(w) = waiter {
                    let _ = w.send(Answer::raw(StatusCode::OK, answer));
                }
            }
            Ok((status, _)) if status.is_server_error() => {
                // Our body is valid JSON: a 5xx is the backend's trouble (passive health check).
                tracing::warn!(prompt_id = %id, backend = backend.name(), %status, "backend failed; job goes back to the queue");
                self.pool.request_failed(
                    &backend,
                    &format!("POST /prompt answered {status}"),
                    self.config.unhealthy_after,
                );
                self.requeue(&id, &backend);
            }
            Ok((status, answer)) => {
                let error = String::from_utf8_lossy(&answer).into_owned();
                tracing::info!(prompt_id = %id, backend = backend.name(), %status, "backend refused a job");
                // The submitter may have stopped waiting: then the owner's socket is told.
                let told = waiter.is_some_and(|w| w.send(Answer::raw(status, answer)).is_ok());
                self.fail(&id, &error, !told).await;
            }
            Err(e) => {
                tracing::warn!(prompt_id = %id, backend = backend.name(), error = %e, "dispatch failed; job goes back to the queue");
                self.pool.request_failed(&backend, &e.to_string(), self.config.unhealthy_after);
                self.requeue(&id, &backend);
            }
        }
    }

    /// Puts a dispatched job back at the front of its owner's line.
    fn requeue(&self, id: &str, backend: &Backend) {
        backend.load().inflight.retain(|x| x != id);
        let mut inner = self.inner();
        let Some(job) = inner.jobs.get_mut(id) else { return };
        job.state = JobState::Queued;
        job.backend = None;
        let owner = job.owner;
        inner.queue.push_front(owner, id.to_owned());
    }

    async fn save_state(&self, id: &str, state: JobState, backend: Option<&str>, error: Option<&str>) {
        if let Err(e) = self.store.update_job(id, state, backend, error).await {
            tracing::error!(prompt_id = id, error = %e, "cannot record job state");
        }
    }

    fn announce_status(&self) {
        let remaining = self.queue_remaining();
        if self.announced.swap(remaining, Ordering::AcqRel) != remaining {
            self.subscribers.broadcast(&delivery::status_message(remaining, None));
        }
    }
}

/// The best backend with room for `job`: one that can run it (and holds its input files),
/// preferring the one whose last job used the same models, then the least loaded.
fn best_backend<'a>(job: &Active, rooms: &[&'a Arc<Backend>]) -> Option<&'a Arc<Backend>> {
    let models = job.requirements.as_ref().map(Requirements::model_files).unwrap_or_default();
    rooms
        .iter()
        .filter(|b| job.pinned.as_deref().is_none_or(|p| p == b.name()))
        .filter(|b| match (&job.requirements, b.capabilities()) {
            (Some(req), Some(caps)) => req.satisfied_by(&caps),
            // A backend that has not said what it has gets no job whose needs are known.
            (Some(_), None) => false,
            (None, _) => true,
        })
        .min_by_key(|b| {
            let load = b.load();
            let affine = !models.is_empty() && load.last_models == models;
            (!affine, load.inflight.len())
        })
        .copied()
}

fn valid_prompt_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

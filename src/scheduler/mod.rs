//! The gateway-held job queue: jobs wait here and go to a backend only when it has room,
//! picked by fair share between users among the jobs that backend can run, preferring the
//! backend that already has the job's models loaded. The queue lives in the store, so a
//! restart loses nothing; jobs on a backend that dies are re-dispatched (not started yet) or
//! reported failed (running).
//!
//! [`submit`](Scheduler::submit) ([`submission`] builds what may be forwarded) →
//! [`pump`](Scheduler::pump) (decide under one lock, then POST to backends) → events from
//! [`monitor`](crate::backends::monitor) drive [`events`] → [`delivery`] to the owner's
//! WebSocket; [`owners`] cancels the jobs of owners who are no longer active.
//!
//! Every change to a job happens under the scheduler's lock and only from the state the
//! change expects (a dispatch's result applies only while it is the job's latest dispatch
//! to that backend; events only from the backend holding the job), so a late answer, a
//! backend dying mid-dispatch or a reconciliation racing a dispatch can neither lose a job
//! nor run it twice. Backend answers never block the event feed: work that calls backends
//! from it is spawned.

pub mod control;
pub mod delivery;
pub mod demand;
mod events;
pub mod fair;
pub mod files;
mod jobs;
pub mod observe;
mod owners;
mod placement;
mod replicas;
pub use crate::config::priority;
pub mod submission;
pub mod swaps;
pub mod workflow;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::backends::{Backend, Pool, Reach};
use crate::config::{LimitsConfig, SchedulerConfig};
use crate::limits::{HOUR, Limits, Refusal};
use crate::metrics::{JobOutcome, Metrics};
use crate::store::{Job, JobState, Store, StoreError};
use crate::time::now_ms;
use delivery::Subscribers;
pub use events::execution_error;
use fair::FairQueue;
use files::FileLocations;
use jobs::Active;
pub use jobs::{Answer, is_secret_key, renamed, shown_extra, strip_secrets, with_owner};

/// Why a submission is refused before it is queued.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway itself failed (a task it waited for died).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Who submits a job.
#[derive(Debug, Clone, Copy)]
pub struct Submitter<'a> {
    /// Store id of the user.
    pub user_id: i64,
    /// Their name (ComfyUI's `comfy-user`).
    pub username: &'a str,
    /// The API token they used, if they used one (revoking it cancels the job).
    pub token_id: Option<i64>,
}

/// The key marking a stored request whose credentials were withheld from the store.
const WITHHELD: &str = "comfygate_withheld";

/// A job on its way to a backend.
struct Dispatch {
    id: String,
    public_id: String,
    number: i64,
    attempt: u32,
    owner: i64,
    token_id: Option<i64>,
    backend: Arc<Backend>,
    username: Arc<str>,
    secrets: Option<Map<String, Value>>,
    waiter: Option<oneshot::Sender<Answer>>,
}

struct Inner {
    queue: FairQueue,
    jobs: HashMap<Arc<str>, Active>,
    /// Jobs moved away from a backend that went down, to delete there when it comes back.
    abandoned: HashMap<String, Vec<String>>,
    /// Backends being reconciled now (one reconciliation at a time each).
    reconciling: HashSet<String>,
    /// Jobs whose requirements are not known yet (their workflow is held until they are).
    unanalysed: Vec<Arc<str>>,
    /// Gateway ids by (owner, the id the owner chose), for jobs whose owner chose one.
    by_public: HashMap<(i64, Arc<str>), Arc<str>>,
    /// Each owner's limits as last read (at their latest submission).
    limits: HashMap<i64, Limits>,
    /// Names the held jobs share.
    names: jobs::Names,
    /// What model swaps cost.
    swaps: swaps::Swaps,
}

impl Inner {
    fn new(config: &SchedulerConfig) -> Self {
        Inner {
            queue: FairQueue::new(config.fair_share_half_life, config.default_run_time),
            swaps: swaps::Swaps::new(config),
            jobs: HashMap::new(),
            abandoned: HashMap::new(),
            reconciling: HashSet::new(),
            unanalysed: Vec::new(),
            by_public: HashMap::new(),
            limits: HashMap::new(),
            names: jobs::Names::default(),
        }
    }

    fn insert(&mut self, id: Arc<str>, job: Active) {
        if job.public_id != id {
            self.by_public.insert((job.owner, job.public_id.clone()), id.clone());
        }
        self.jobs.insert(id, job);
    }

    fn remove(&mut self, id: &str) -> Option<Active> {
        let job = self.jobs.remove(id)?;
        if &*job.public_id != id {
            self.by_public.remove(&(job.owner, job.public_id.clone()));
        }
        self.queue.remove(job.owner, id);
        Some(job)
    }

    /// Puts a dispatched job back at the front of its owner's line in its class (the GPU time
    /// its dispatch was charged is given back).
    fn requeue_front(&mut self, id: &str, refund_ms: f64) {
        if let Some(job) = self.jobs.get(id) {
            let (owner, class) = (job.owner, job.priority);
            self.queue.push_front(owner, Arc::from(id), class);
            self.queue.charge(owner, -refund_ms, now_ms());
        }
    }

    fn job(&self, id: &str) -> Option<&Active> {
        self.jobs.get(id)
    }

    fn job_mut(&mut self, id: &str) -> Option<&mut Active> {
        self.jobs.get_mut(id)
    }

    /// The gateway id of the held job `owner` knows as `public_id`.
    fn own(&self, owner: i64, public_id: &str) -> Option<Arc<str>> {
        if let Some((id, _)) =
            self.jobs.get_key_value(public_id).filter(|(_, j)| j.owner == owner && &*j.public_id == public_id)
        {
            return Some(id.clone());
        }
        self.by_public.get(&(owner, Arc::from(public_id))).cloned()
    }
}

/// What became of a dispatch that did not land.
enum Requeued {
    /// Back in the queue.
    Waiting,
    /// Out of tries: failed with this reason.
    Failed(String),
    /// The job had moved on (deleted, finished, dispatched again): nothing to do.
    Stale,
}

/// The scheduler of a running gateway.
pub struct Scheduler {
    store: Arc<dyn Store>,
    audit: Arc<crate::audit::Audit>,
    files: FileLocations,
    pool: Arc<Pool>,
    config: SchedulerConfig,
    /// `[limits]`, replaced by a reload.
    limits: std::sync::RwLock<Arc<LimitsConfig>>,
    max_request_body: u64,
    inner: Mutex<Inner>,
    /// One submission at a time per user, so their limits hold under concurrency.
    submitting: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Large queue views take turns (see `control::LARGE_VIEW`).
    large_views: tokio::sync::Semaphore,
    numbers: AtomicI64,
    announced: AtomicUsize,
    subscribers: Subscribers,
    metrics: Arc<Metrics>,
    /// Set at shutdown: jobs stay waiting in the store for the next start.
    dispatch_stopped: std::sync::atomic::AtomicBool,
    /// Told of every job's start and end ([`observe`]).
    observers: std::sync::RwLock<Vec<Arc<dyn observe::JobObserver>>>,
    /// Replicas: whether this gateway schedules, under which term, and how it talks to the
    /// others ([`replicas`]).
    replicas: replicas::Replicas,
}

impl Scheduler {
    /// Loads the jobs the store still has waiting or running and schedules them (the only
    /// gateway on its store, or the first to hold the scheduler's lock).
    pub async fn load(
        store: Arc<dyn Store>,
        pool: Arc<Pool>,
        config: SchedulerConfig,
        limits: LimitsConfig,
        max_request_body: u64,
        metrics: Arc<Metrics>,
        audit: Arc<crate::audit::Audit>,
    ) -> Result<Self, StoreError> {
        let scheduler = Self::standby(store, pool, config, limits, max_request_body, metrics, audit);
        scheduler.resume("gateway").await?;
        Ok(scheduler)
    }

    /// A scheduler that does not schedule yet: it takes submissions into the store for the
    /// gateway that does, and shows the queue from the store, until [`lead`](Self::lead).
    pub fn standby(
        store: Arc<dyn Store>,
        pool: Arc<Pool>,
        config: SchedulerConfig,
        limits: LimitsConfig,
        max_request_body: u64,
        metrics: Arc<Metrics>,
        audit: Arc<crate::audit::Audit>,
    ) -> Self {
        Self {
            files: FileLocations::new(store.clone()),
            inner: Mutex::new(Inner::new(&config)),
            store,
            audit,
            pool,
            config,
            limits: std::sync::RwLock::new(Arc::new(limits)),
            max_request_body,
            submitting: Mutex::new(HashMap::new()),
            large_views: tokio::sync::Semaphore::new(1),
            numbers: AtomicI64::new(0),
            announced: AtomicUsize::new(usize::MAX),
            subscribers: Subscribers::default(),
            metrics,
            dispatch_stopped: std::sync::atomic::AtomicBool::new(false),
            observers: std::sync::RwLock::new(Vec::new()),
            replicas: replicas::Replicas::default(),
        }
    }

    /// Takes the next scheduling term (claims under older ones fail from now on), then loads
    /// every job the store holds waiting or running, in place of whatever was shown before.
    async fn resume(&self, instance: &str) -> Result<(), StoreError> {
        let term = self.store.take_scheduler_term(instance, now_ms()).await?;
        let numbers = self.store.max_job_number().await?;
        let config = &self.config;
        let pool = &self.pool;
        let store = &self.store;
        let mut inner = Inner::new(config);
        for backend in pool.all().iter() {
            backend.load().inflight.clear();
        }
        for job in store.jobs_in_states(&[JobState::Queued, JobState::Dispatched, JobState::Running]).await? {
            let id: Arc<str> = Arc::from(job.prompt_id.as_str());
            let active = Active::resumed(&job, &id, &mut inner.names);
            inner.unanalysed.push(id.clone());
            // A job handed to a backend that is still configured stays with it (reconciled once
            // its socket connects); anything else waits in the queue again.
            self.place(&mut inner, id, active, true);
        }
        if !inner.jobs.is_empty() {
            tracing::info!(jobs = inner.jobs.len(), "resumed jobs from the store");
        }
        // Fair share remembers across restarts: the GPU time of the last eight half-lives (what
        // is older counts for less than 1/256) from the usage ledger.
        let half_life = i64::try_from(config.fair_share_half_life.as_millis()).unwrap_or(i64::MAX);
        let since = now_ms().saturating_sub(half_life.saturating_mul(8));
        for (user, ended_at, run_ms) in store.gpu_ms_since(None, since).await? {
            inner.queue.charge(user, run_ms as f64, ended_at);
        }
        let owners: HashSet<i64> = inner.jobs.values().map(|j| j.owner).collect();
        let limits = self.limits();
        for owner in owners {
            let resolved = Limits::of(store.as_ref(), &limits, self.max_request_body, owner).await?;
            inner.queue.set_weight(owner, resolved.weight);
            inner.limits.insert(owner, resolved);
        }
        self.numbers.store(numbers, Ordering::Release);
        *self.inner() = inner;
        self.replicas.began(term);
        Ok(())
    }

    /// Holds `active` in `inner`: with the backend its record names when that one is still in
    /// the pool (`resumed`: and it was handed there), else in the queue.
    fn place(&self, inner: &mut Inner, id: Arc<str>, mut active: Active, resumed: bool) {
        let holder = match active.state {
            JobState::Dispatched | JobState::Running => active.backend.as_deref().and_then(|b| self.pool.get(b)),
            _ => None,
        };
        match holder {
            Some(backend) => {
                if resumed {
                    active.attempt = 1;
                }
                backend.load().inflight.push(id.to_string());
            }
            None => {
                active.state = JobState::Queued;
                active.backend = None;
                active.accepted = false;
                inner.queue.push_back(active.owner, id.clone(), active.priority);
            }
        }
        inner.insert(id, active);
    }

    /// The GPU time (ms) a dispatch charges its owner until the job's real run time is known.
    fn dispatch_charge(&self) -> f64 {
        self.config.default_run_time.as_secs_f64() * 1000.0
    }

    /// Registers an observer of every job's start and end.
    pub fn observe(&self, observer: Arc<dyn observe::JobObserver>) {
        self.observers.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(observer);
    }

    /// Tells the observers a job started (`ended_at: None`) or ended.
    async fn tell(&self, report: observe::JobReport) {
        let observers = self.observers.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for observer in observers {
            match report.ended_at {
                None => observer.job_started(&report).await,
                Some(_) => observer.job_ended(&report).await,
            }
        }
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

    /// Jobs waiting in the gateway's queue (not yet on a backend).
    pub fn waiting_jobs(&self) -> usize {
        self.inner().queue.len()
    }

    /// Registers a client's WebSocket for the events of its jobs.
    pub fn subscribe(&self, user_id: i64, client_id: &str) -> tokio::sync::mpsc::Receiver<delivery::Outgoing> {
        self.subscribers.subscribe(user_id, client_id)
    }

    /// Queues a `POST /prompt` body; dispatches at once when a capable backend has room,
    /// answering with that backend's verdict.
    pub async fn submit(&self, by: Submitter<'_>, body: Map<String, Value>) -> Result<Answer, SchedulerError> {
        let submission = match submission::check(body) {
            Ok(s) => s,
            Err(refusal) => return Ok(refusal),
        };
        let known = self.pool.capabilities_complete().then(|| self.pool.known_capabilities(Reach::Any)).flatten();
        let empty = Map::new();
        let prompt = submission.request["prompt"].as_object().unwrap_or(&empty);
        let requirements = match known {
            Some(known) => match workflow::analyse(prompt, &known) {
                Ok(req) => Some(req),
                Err(rejection) => return Ok(Answer::json(StatusCode::BAD_REQUEST, &rejection)),
            },
            None => None,
        };
        let limits = Limits::of(self.store.as_ref(), &self.limits(), self.max_request_body, by.user_id).await?;
        // One submission of this user at a time: the counts below hold until it is queued.
        let turn = self.submitting_lock(by.user_id);
        let turn = turn.lock().await;
        // Not scheduling: the count of waiting jobs comes from the store (what the other
        // gateways queued too).
        if limits.max_waiting.is_some() {
            self.fresh().await;
        }
        if let Some(refusal) = self.over_limits(by.user_id, &limits).await? {
            return Ok(Answer::refused(&refusal));
        }
        let priority = match limits.priority(submission.priority, submission.front) {
            Ok(priority) => priority,
            Err(refusal) => return Ok(Answer::refused(&refusal)),
        };
        // The backends see a gateway-wide id; a client's own choice names the job for them only.
        let prompt_id = uuid::Uuid::new_v4().to_string();
        let public_id = submission.prompt_id.clone().unwrap_or_else(|| prompt_id.clone());
        let pinned = match &requirements {
            Some(req) => self.backend_holding(by.user_id, &req.input_files).await?,
            None => None,
        };
        let number = match self.store.next_job_number().await? {
            Some(number) => number,
            None => self.numbers.fetch_add(1, Ordering::AcqRel) + 1,
        };
        let kept = jobs::Kept { priority, webhook: submission.webhook.clone() };
        // Credentials never reach the store: they wait in memory for the dispatch.
        let mut request = submission.request;
        let secrets = jobs::take_secrets(&mut request["extra_data"]);
        let stored = match request.as_object_mut() {
            Some(map) => {
                if secrets.is_some() {
                    map.insert(WITHHELD.to_owned(), Value::Bool(true));
                }
                if kept != jobs::Kept::default() {
                    map.insert(jobs::GATEWAY_KEY.to_owned(), serde_json::to_value(&kept).unwrap_or_default());
                }
                let text = request.to_string();
                if let Some(map) = request.as_object_mut() {
                    map.remove(WITHHELD);
                    map.remove(jobs::GATEWAY_KEY);
                }
                text
            }
            None => request.to_string(),
        };
        if u64::try_from(stored.len()).unwrap_or(u64::MAX) > limits.max_workflow {
            let message = format!("the workflow is larger than your limit of {} bytes", limits.max_workflow);
            return Ok(Answer::refused(&Refusal::too_large("workflow_too_large", message)));
        }
        let job = Job {
            prompt_id: prompt_id.clone(),
            public_id: public_id.clone(),
            user_id: by.user_id,
            token_id: by.token_id,
            username: by.username.to_owned(),
            client_id: submission.client_id.clone(),
            number,
            request: stored,
            state: JobState::Queued,
            backend: None,
            error: None,
            created_at: now_ms(),
            outcome: None,
            in_history: true,
        };
        match self.store.insert_job(&job).await {
            Ok(()) => self.metrics.job_submitted(),
            Err(StoreError::Conflict(_)) => {
                return Ok(Answer::json(
                    StatusCode::CONFLICT,
                    &json!({"error": {"type": "duplicate_prompt_id", "message": "prompt_id is already in use",
                        "details": public_id, "extra_info": {}}, "node_errors": {}}),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        if !self.is_leading() {
            // Another gateway schedules: it is told (credentials go along, never stored).
            self.announce_queued(&prompt_id, secrets);
            self.mirror_queued(&job);
            drop(turn);
            return Ok(accepted(&public_id, number, &Value::Object(Map::new())));
        }
        let (tx, mut rx) = oneshot::channel();
        {
            let mut inner = self.inner();
            let inner = &mut *inner;
            let id: Arc<str> = Arc::from(prompt_id.as_str());
            let mut active = Active::from_job(&job, &id, &mut inner.names);
            match requirements {
                Some(req) => active.requirements = Some(inner.names.requirements(req)),
                None => {
                    active.request = Some(Arc::new(request));
                    inner.unanalysed.push(id.clone());
                }
            }
            active.secrets = secrets.map(Box::new);
            active.priority = kept.priority;
            active.webhook = kept.webhook.map(Arc::new);
            inner.queue.set_weight(by.user_id, limits.weight);
            inner.limits.insert(by.user_id, limits);
            active.pinned = pinned;
            active.waiter = Some(tx);
            let class = active.priority;
            inner.insert(id.clone(), active);
            inner.queue.push_back(by.user_id, id, class);
        }
        // Queued: the user's next submission may be counted (dispatch does not hold it up).
        drop(turn);
        self.pump().await;
        self.announce_status();
        match rx.try_recv() {
            Ok(answer) => Ok(answer),
            Err(_) => {
                if let Some(job) = self.inner().job_mut(&prompt_id) {
                    job.waiter = None;
                }
                Ok(accepted(&public_id, number, &Value::Object(Map::new())))
            }
        }
    }

    fn submitting_lock(&self, user_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.submitting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(user_id).or_default().clone()
    }

    /// Whether one more job of `user_id` would go over their limits (waiting jobs, jobs per
    /// hour); the caller holds the user's submission turn.
    async fn over_limits(&self, user_id: i64, limits: &Limits) -> Result<Option<Refusal>, StoreError> {
        if let Some(max) = limits.max_waiting {
            let waiting = self.inner().queue.waiting_of(user_id);
            if u64::try_from(waiting).unwrap_or(u64::MAX) >= max {
                let message = format!("you have {waiting} jobs waiting, your limit is {max}");
                return Ok(Some(Refusal::busy("too_many_waiting_jobs", message, 10)));
            }
        }
        if let Some(max) = limits.jobs_per_hour {
            let now = now_ms();
            let since = now - i64::try_from(HOUR.as_millis()).unwrap_or(i64::MAX);
            let recent = self.store.submissions_since(user_id, since, i64::try_from(max).unwrap_or(i64::MAX)).await?;
            if let Some(wait) = limits.hourly_wait(&recent, now) {
                let message = format!("you submitted {} jobs in the last hour, your limit is {max}", recent.len());
                return Ok(Some(Refusal::busy("too_many_jobs_per_hour", message, wait)));
            }
        }
        if let Some(quota) = limits.gpu_seconds_per_day {
            let now = now_ms();
            let runs = self.store.gpu_ms_since(Some(user_id), crate::limits::day_start(now)).await?;
            let used_ms: i64 = runs.iter().map(|(_, _, ms)| *ms).fold(0, i64::saturating_add);
            if u64::try_from(used_ms).unwrap_or(0) >= quota.saturating_mul(1000) {
                let message =
                    format!("your jobs ran {} GPU seconds today (UTC), your limit is {quota}", used_ms / 1000);
                let wait = crate::limits::seconds_to_next_day(now);
                return Ok(Some(Refusal::busy("gpu_quota_exceeded", message, wait)));
            }
        }
        Ok(None)
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
    /// POSTs concurrently. Never call it from the event feed (it waits for backends): use
    /// [`kick`](Self::kick) there.
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

    /// [`pump`](Self::pump) in its own task.
    pub fn kick(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move { this.pump().await });
    }

    /// The `[limits]` in force.
    pub fn limits(&self) -> Arc<LimitsConfig> {
        self.limits.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts new `[limits]` in force (a reload): the next submission is held to them, and so
    /// are the running-job counts of everyone with jobs in the queue.
    pub async fn set_limits(self: &Arc<Self>, limits: LimitsConfig) -> Result<(), StoreError> {
        let limits = Arc::new(limits);
        *self.limits.write().unwrap_or_else(std::sync::PoisonError::into_inner) = limits.clone();
        let owners: Vec<i64> = self.inner().limits.keys().copied().collect();
        for owner in owners {
            let resolved = Limits::of(self.store.as_ref(), &limits, self.max_request_body, owner).await?;
            let mut inner = self.inner();
            inner.queue.set_weight(owner, resolved.weight);
            inner.limits.insert(owner, resolved);
        }
        self.kick();
        Ok(())
    }

    /// Takes the backends a reload retired out of the pool once their jobs are done (under the
    /// decision lock: no job is handed to one meanwhile); returns their replacements.
    pub fn sweep_retired(&self) -> Vec<Arc<Backend>> {
        let _deciding = self.inner();
        self.pool.sweep()
    }

    /// Hands out no more jobs (shutdown): those waiting stay in the store for the next start.
    pub fn stop_dispatching(&self) {
        self.dispatch_stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    async fn dispatch(&self, d: Dispatch) {
        let Dispatch { id, public_id, number, attempt, owner, token_id, backend, username, secrets, waiter } = d;
        // A job is never dispatched for an owner who is no longer active.
        match self.store.owner_active(owner, token_id, now_ms()).await {
            Ok(true) => {}
            Ok(false) => {
                self.release(&id, &backend, attempt);
                self.cancel_for_owner(&id, owner, token_id).await;
                return;
            }
            Err(e) => {
                tracing::warn!(prompt_id = %id, error = %e, "cannot check the job's owner; it waits");
                self.release(&id, &backend, attempt);
                return;
            }
        }
        let mut body = match self.store.job(&id).await {
            Ok(Some(job)) => serde_json::from_str::<Value>(&job.request).unwrap_or(Value::Null),
            Ok(None) => {
                // Its owner was removed (their jobs with them).
                self.release(&id, &backend, attempt);
                self.end(&id, JobState::Cancelled, "cancelled: its owner was removed", true).await;
                return;
            }
            Err(e) => {
                tracing::warn!(prompt_id = %id, error = %e, "cannot read the job's workflow; it waits");
                self.release(&id, &backend, attempt);
                return;
            }
        };
        // With replicas, the dispatch is claimed in the store first: under this gateway's term,
        // so a gateway that lost the lead without knowing yet hands nothing out twice.
        match self.claim(&id, backend.name()).await {
            Ok(true) => {}
            Ok(false) => {
                self.release(&id, &backend, attempt);
                return;
            }
            Err(e) => {
                tracing::warn!(prompt_id = %id, error = %e, "cannot claim the job's dispatch; it waits");
                self.release(&id, &backend, attempt);
                return;
            }
        }
        let withheld = body.as_object_mut().is_some_and(|m| m.remove(WITHHELD).is_some());
        if let Some(map) = body.as_object_mut() {
            map.remove(jobs::GATEWAY_KEY);
        }
        match (secrets, body["extra_data"].as_object_mut()) {
            (Some(secrets), Some(extra)) => extra.extend(secrets),
            (None, _) if withheld => {
                // Submitted before a restart of the gateway, which does not keep credentials.
                self.release(&id, &backend, attempt);
                let reason = "its credentials (extra_data keys and tokens) are not kept across gateway restarts: \
                              submit it again";
                self.fail(&id, reason, true).await;
                return;
            }
            _ => {}
        }
        body["client_id"] = Value::String(backend.monitor_id.clone());
        body["prompt_id"] = Value::String(id.clone());
        let bytes = Bytes::from(body.to_string());
        let timeout = backend.config.response_timeout;
        let result = backend.proxy.call_as(Some(&username), Method::POST, "/prompt", Some(bytes), timeout).await;
        let current = self.is_current(&id, &backend, attempt);
        match result {
            Ok((StatusCode::OK, answer)) => {
                let node_errors = serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| v.get("node_errors").cloned())
                    .unwrap_or_else(|| json!({}));
                if let Some(w) = waiter {
                    let _ = w.send(accepted(&public_id, number, &node_errors));
                }
                if !current {
                    // Moved on while the answer travelled (deleted, or its backend was given up):
                    // the copy the backend queued must not run.
                    self.withdraw(&backend, &id).await;
                    return;
                }
                if let Some(dispatched) = self.mark_accepted(&id, &backend, attempt) {
                    tracing::info!(prompt_id = %id, backend = backend.name(), owner = %username, attempt, "job dispatched");
                    if dispatched {
                        self.save_state(&id, JobState::Dispatched, Some(backend.name()), None).await;
                    }
                }
            }
            Ok((status, answer)) if status.is_server_error() => {
                // A server error to one job is that job's trouble, not the backend's health.
                let detail = String::from_utf8_lossy(&answer).chars().take(2000).collect::<String>();
                tracing::warn!(prompt_id = %id, backend = backend.name(), %status,
                    "backend answered a dispatch with a server error; the job is offered elsewhere");
                let reason = format!("ComfyUI backend `{}` answered {status}: {detail}", backend.name());
                let outcome = self.requeue(&id, &backend, attempt, true, &reason);
                self.settle(&id, outcome, waiter, status, &public_id).await;
            }
            Ok((status, answer)) => {
                let error = String::from_utf8_lossy(&answer).into_owned();
                tracing::info!(prompt_id = %id, backend = backend.name(), %status, "backend refused a job");
                if !current {
                    return;
                }
                // The submitter may have stopped waiting: then the owner's socket is told.
                let answer = Bytes::from(renamed(&String::from_utf8_lossy(&answer), &id, &public_id));
                let told = waiter.is_some_and(|w| w.send(Answer::raw(status, answer)).is_ok());
                self.fail(&id, &error, !told).await;
            }
            Err(e) if e.maybe_received() => {
                // The backend may have queued (even started) it before the answer was lost: the
                // job stays with it, in doubt, until its fate is known. If the backend is gone,
                // it is taken out and the job moves (or fails, if its events said it started);
                // if it is not, its queue and history tell (reconciliation).
                tracing::warn!(prompt_id = %id, backend = backend.name(), error = %e,
                    "dispatch answer lost; the backend's queue and history will tell");
                self.pool.request_failed(&backend, &e.to_string(), self.config.unhealthy_after);
                if let Some(w) = waiter {
                    let _ = w.send(accepted(&public_id, number, &json!({})));
                }
                let mut inner = self.inner();
                if let Some(job) = inner.job_mut(&id).filter(|j| j.attempt == attempt) {
                    job.accepted = true;
                }
            }
            Err(e) => {
                // Never sent: the job goes back to the queue.
                tracing::warn!(prompt_id = %id, backend = backend.name(), error = %e,
                    "dispatch failed; the job goes back to the queue");
                self.pool.request_failed(&backend, &e.to_string(), self.config.unhealthy_after);
                let outcome = self.requeue(&id, &backend, attempt, false, &e.to_string());
                self.settle(&id, outcome, waiter, StatusCode::BAD_GATEWAY, &public_id).await;
            }
        }
    }

    /// Records what became of a dispatch that did not land.
    async fn settle(
        &self,
        id: &str,
        outcome: Requeued,
        waiter: Option<oneshot::Sender<Answer>>,
        status: StatusCode,
        public_id: &str,
    ) {
        match outcome {
            Requeued::Waiting => {
                // The record keeps its last backend: a restart finds the job missing there and
                // queues it again.
                if let Some(w) = waiter {
                    // Queued after all: the submitter gets the usual answer (the job runs later).
                    let number = self.inner().job(id).map_or(0, |j| j.number);
                    let _ = w.send(accepted(public_id, number, &json!({})));
                }
            }
            Requeued::Failed(reason) => {
                let answer = Answer::json(
                    status,
                    &json!({"error": {"type": "backend_error", "message": reason, "details": "", "extra_info": {}},
                        "node_errors": {}}),
                );
                let told = waiter.is_some_and(|w| w.send(answer).is_ok());
                self.fail(id, &reason, !told).await;
            }
            Requeued::Stale => {}
        }
    }

    /// Whether `attempt` is still job `id`'s latest dispatch, to `backend`.
    fn is_current(&self, id: &str, backend: &Backend, attempt: u32) -> bool {
        self.inner().job(id).is_some_and(|j| j.attempt == attempt && j.backend.as_deref() == Some(backend.name()))
    }

    /// The backend took the job: `None` when the job has moved on since (another attempt, or
    /// gone), else whether the record should say so (not running yet: the backend's events may
    /// tell that its run started before its answer to the dispatch arrives).
    fn mark_accepted(&self, id: &str, backend: &Backend, attempt: u32) -> Option<bool> {
        let mut inner = self.inner();
        let job = inner.job_mut(id)?;
        if job.attempt != attempt || job.backend.as_deref() != Some(backend.name()) {
            return None;
        }
        job.accepted = true;
        Some(job.state == JobState::Dispatched)
    }

    /// Puts a dispatched job back where it was, untried (it was never sent).
    fn release(&self, id: &str, backend: &Backend, attempt: u32) {
        let mut inner = self.inner();
        let Some(job) = inner.job_mut(id) else { return };
        if job.attempt != attempt || job.backend.as_deref() != Some(backend.name()) {
            return;
        }
        backend.load().inflight.retain(|x| x != id);
        job.state = JobState::Queued;
        job.backend = None;
        job.attempt = job.attempt.saturating_sub(1);
        inner.requeue_front(id, self.dispatch_charge());
    }

    /// A dispatch of `attempt` did not land on `backend`: the job goes back to the front of its
    /// owner's line, unless it is out of tries. `refused`: the backend answered with an error
    /// (it is not offered the job again).
    fn requeue(&self, id: &str, backend: &Backend, attempt: u32, refused: bool, reason: &str) -> Requeued {
        let mut inner = self.inner();
        let Some(job) = inner.job_mut(id) else { return Requeued::Stale };
        if job.attempt != attempt || job.backend.as_deref() != Some(backend.name()) || job.state != JobState::Dispatched
        {
            return Requeued::Stale;
        }
        backend.load().inflight.retain(|x| x != id);
        if refused && !job.refused_by.iter().any(|b| b == backend.name()) {
            job.refused_by.push(backend.name().to_owned());
        }
        let refusals = u32::try_from(job.refused_by.len()).unwrap_or(u32::MAX);
        let others = self
            .pool
            .all()
            .iter()
            .filter(|b| job.pinned.as_deref().is_none_or(|p| p == b.name()))
            .any(|b| !job.refused_by.iter().any(|r| r == b.name()));
        if refused && (refusals >= self.config.dispatch_attempts || !others) {
            return Requeued::Failed(reason.to_owned());
        }
        if job.attempt >= self.config.max_dispatches {
            return Requeued::Failed(format!("dispatched {} times without running; last: {reason}", job.attempt));
        }
        job.state = JobState::Queued;
        job.backend = None;
        job.accepted = false;
        inner.requeue_front(id, self.dispatch_charge());
        Requeued::Waiting
    }

    /// Asks `backend` to drop its copy of a job the gateway no longer has there.
    async fn withdraw(&self, backend: &Backend, id: &str) {
        let body = json!({"delete": [id]}).to_string();
        let timeout = backend.config.response_timeout;
        let _ = backend.proxy.call(Method::POST, "/queue", Some(body.into()), timeout).await;
    }

    /// Counts a job that ended in `state` (`lost`: its backend went away or forgot it while it
    /// ran), with its run time when it started.
    fn count_end(&self, state: JobState, lost: bool, started_at: Option<i64>) {
        let outcome = match state {
            JobState::Done => JobOutcome::Success,
            JobState::Cancelled => JobOutcome::Interrupted,
            _ if lost => JobOutcome::Lost,
            _ => JobOutcome::Error,
        };
        let ran = started_at.map(|t| std::time::Duration::from_millis(u64::try_from(now_ms() - t).unwrap_or(0)));
        self.metrics.job_finished(outcome, ran);
    }

    async fn end_job(
        &self,
        id: &str,
        state: JobState,
        backend: Option<&str>,
        error: Option<&str>,
        outcome: Option<&str>,
    ) {
        if let Err(e) = self.store.end_job(id, state, backend, error, outcome).await {
            tracing::error!(prompt_id = id, error = %e, "cannot record how a job ended");
        }
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

/// ComfyUI's answer to an accepted `POST /prompt`, with the id the owner knows the job by.
fn accepted(public_id: &str, number: i64, node_errors: &Value) -> Answer {
    Answer::json(StatusCode::OK, &json!({"prompt_id": public_id, "number": number, "node_errors": node_errors}))
}

//! Several gateways on one PostgreSQL store: one schedules (it holds the scheduler's lock,
//! [`crate::cluster::leader`]), the others take submissions into the store and pass queue
//! operations to it over the bus, and show the queue from the store. The one that schedules
//! relays every job event to the others ([`delivery`](super::delivery)), so a client's socket
//! gets its events on whichever gateway it is connected to.
//!
//! What one gateway sends another is a hint, never the only copy: a submission is in the store
//! before it is announced, and the scheduling gateway also picks up, every
//! [`SWEEP_EVERY`], queued jobs it was not told of (a note lost while its connection was down,
//! or sent while no gateway scheduled). Only credentials travel on the bus alone (they are
//! never stored): a job whose note is lost fails, saying its credentials were not kept, as after
//! a restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::control::Scope;
use super::jobs::Active;
use super::{Inner, Scheduler};
use crate::cluster::{Bus, Note, channel};
use crate::limits::Limits;
use crate::store::{Job, JobState, StoreError};
use crate::time::now_ms;

/// How long a non-scheduling gateway's picture of the queue (read from the store) is used.
const MIRROR_TTL: Duration = Duration::from_millis(500);
/// How often the scheduling gateway looks for queued jobs nobody told it of.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A queued job unknown to the scheduling gateway is taken from the store once it is this old
/// (younger ones: their note may still be on its way, with their credentials).
const SWEEP_AGE: Duration = Duration::from_secs(3);

/// A queue operation for the gateway that schedules.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    /// A job was queued in the store; `secrets` are its withheld credentials.
    Queued {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secrets: Option<Map<String, Value>>,
    },
    /// `POST /queue {"delete"}`: held jobs by gateway id, within `owner`'s jobs (`None`: all).
    Delete { owner: Option<i64>, ids: Vec<String> },
    /// `POST /queue {"clear"}`.
    Clear { owner: Option<i64> },
    /// `POST /interrupt`: the job by gateway id, or every running one in scope.
    Interrupt { owner: Option<i64>, id: Option<String> },
}

fn scope_of(owner: Option<i64>) -> Scope {
    owner.map_or(Scope::All, Scope::Owner)
}

fn owner_of(scope: Scope) -> Option<i64> {
    match scope {
        Scope::Owner(owner) => Some(owner),
        Scope::All => None,
    }
}

/// This gateway's part among the replicas.
pub(super) struct Replicas {
    leading: AtomicBool,
    term: AtomicI64,
    bus: std::sync::OnceLock<Arc<Bus>>,
    /// When the queue shown by a gateway that does not schedule was last read.
    mirror: tokio::sync::Mutex<Option<Instant>>,
    /// Set when this gateway found another scheduling in its place.
    superseded: tokio::sync::watch::Sender<bool>,
}

impl Default for Replicas {
    fn default() -> Self {
        Self {
            leading: AtomicBool::new(false),
            term: AtomicI64::new(0),
            bus: std::sync::OnceLock::new(),
            mirror: tokio::sync::Mutex::new(None),
            superseded: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl Replicas {
    /// This gateway schedules from now on, under `term`.
    pub fn began(&self, term: i64) {
        self.term.store(term, Ordering::Release);
        self.leading.store(true, Ordering::Release);
    }

    /// The scheduling term this gateway took.
    pub fn term(&self) -> i64 {
        self.term.load(Ordering::Acquire)
    }
}

impl Scheduler {
    /// Whether this gateway schedules the queue (always, on a store of its own).
    pub fn is_leading(&self) -> bool {
        self.replicas.leading.load(Ordering::Acquire)
    }

    /// Talks to the other replicas on `bus` (before [`lead`](Self::lead), if ever).
    pub fn join(&self, bus: Arc<Bus>) {
        let _ = self.replicas.bus.set(bus);
    }

    /// Resolves when another gateway turned out to schedule in this one's place (its claims
    /// failed): this one must stop.
    pub async fn superseded(&self) {
        let mut superseded = self.replicas.superseded.subscribe();
        let _ = superseded.wait_for(|s| *s).await;
    }

    /// Takes over the queue (this gateway now holds the scheduler's lock): a new term, every
    /// held job read from the store, events relayed to the other replicas, dispatch at once.
    pub async fn lead(self: &Arc<Self>, instance: &str) -> Result<(), StoreError> {
        // Relayed from the first event on: what settling the resumed jobs tells their owners
        // reaches them wherever they are connected.
        if let Some(bus) = self.replicas.bus.get() {
            self.subscribers.relay_to(bus.clone());
        }
        self.resume(instance).await?;
        tracing::info!(term = self.replicas.term(), jobs = self.queue_remaining(), "scheduling the queue");
        self.announce_status();
        self.kick();
        Ok(())
    }

    /// The dispatch of job `id` to `backend`, claimed in the store under this gateway's term.
    /// False when the claim failed: another gateway schedules now (this one stops dispatching).
    pub(super) async fn claim(&self, id: &str, backend: &str) -> Result<bool, StoreError> {
        if !self.store.shared() {
            // One gateway per store: nobody to claim against.
            return Ok(true);
        }
        let claimed = self.store.claim_job(id, backend, self.replicas.term()).await?;
        if !claimed {
            tracing::error!(
                prompt_id = id,
                term = self.replicas.term(),
                "another gateway schedules the queue now; this one stops dispatching"
            );
            self.stop_dispatching();
            self.replicas.superseded.send_replace(true);
        }
        Ok(claimed)
    }

    /// A submission queued in the store by a gateway that does not schedule: announced to the
    /// one that does, with its credentials (never stored).
    pub(super) fn announce_queued(&self, id: &str, secrets: Option<Map<String, Value>>) {
        self.send(&Op::Queued { id: id.to_owned(), secrets });
    }

    fn send(&self, op: &Op) {
        match (self.replicas.bus.get(), serde_json::to_string(op)) {
            (Some(bus), Ok(body)) => bus.publish(channel::JOBS, &body),
            _ => tracing::warn!("no gateway to pass a queue operation to"),
        }
    }

    /// Passes a delete of held jobs (gateway ids, resolved here) to the scheduling gateway.
    pub(super) fn pass_delete(&self, scope: Scope, ids: Vec<String>) {
        if !ids.is_empty() {
            self.send(&Op::Delete { owner: owner_of(scope), ids });
        }
    }

    /// Passes a clear to the scheduling gateway.
    pub(super) fn pass_clear(&self, scope: Scope) {
        self.send(&Op::Clear { owner: owner_of(scope) });
    }

    /// Passes an interrupt (gateway id, resolved here) to the scheduling gateway.
    pub(super) fn pass_interrupt(&self, scope: Scope, id: Option<String>) {
        self.send(&Op::Interrupt { owner: owner_of(scope), id });
    }

    /// Makes the queue this gateway shows current: a gateway that does not schedule reads the
    /// held jobs from the store (at most every [`MIRROR_TTL`]); the scheduling one holds them.
    pub async fn fresh(&self) {
        if self.is_leading() {
            return;
        }
        let mut read_at = self.replicas.mirror.lock().await;
        if read_at.is_some_and(|t| t.elapsed() < MIRROR_TTL) {
            return;
        }
        match self.store.held_jobs_brief().await {
            Ok(jobs) => {
                let mut inner = Inner::new(&self.config);
                let mut inner_ref = self.inner();
                if self.is_leading() {
                    return;
                }
                for backend in self.pool.all().iter() {
                    let mut load = backend.load();
                    load.inflight.clear();
                    load.running = None;
                }
                for job in &jobs {
                    let id: Arc<str> = Arc::from(job.prompt_id.as_str());
                    let active = Active::from_job(job, &id, &mut inner.names);
                    if active.state == JobState::Running {
                        if let Some(backend) = active.backend.as_deref().and_then(|b| self.pool.get(b)) {
                            backend.load().running = Some(job.prompt_id.clone());
                        }
                    }
                    self.place(&mut inner, id, active, false);
                }
                *inner_ref = inner;
                *read_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the queue from the store"),
        }
    }

    /// Shows `job`, just queued in the store by this gateway, in its picture of the queue until
    /// the next read (so its owner's next submission counts it without a read of every job).
    pub(super) fn mirror_queued(&self, job: &Job) {
        let mut inner = self.inner();
        if self.is_leading() || inner.job(&job.prompt_id).is_some() {
            return;
        }
        let inner = &mut *inner;
        let id: Arc<str> = Arc::from(job.prompt_id.as_str());
        let active = Active::from_job(job, &id, &mut inner.names);
        self.place(inner, id, active, false);
    }

    /// Forgets when the shown queue was read (this gateway just changed it).
    pub(super) async fn stale(&self) {
        *self.replicas.mirror.lock().await = None;
    }

    /// Acts on a note from another gateway: job events go to the sockets connected here; the
    /// scheduling gateway takes submissions and queue operations.
    pub async fn on_note(self: &Arc<Self>, note: &Note) {
        match note.channel.as_str() {
            channel::EVENTS if !self.is_leading() => self.subscribers.deliver_relayed(&note.body),
            channel::ENDS if !self.is_leading() => {
                // Its final event is relayed right after; sent from here only if it never is.
                let (this, body) = (self.clone(), note.body.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(super::delivery::END_GRACE).await;
                    this.subscribers.ended_in_store(&body);
                });
            }
            channel::JOBS if self.is_leading() => {
                let Ok(op) = serde_json::from_str::<Op>(&note.body) else {
                    return tracing::warn!(from = %note.from, "unreadable queue operation from another gateway");
                };
                match op {
                    Op::Queued { id, secrets } => self.adopt(&id, secrets).await,
                    Op::Delete { owner, ids } => {
                        self.delete_held(scope_of(owner), &ids, "deleted from the queue").await
                    }
                    Op::Clear { owner } => self.clear(scope_of(owner)).await,
                    Op::Interrupt { owner, id } => self.interrupt_held(scope_of(owner), id.as_deref()).await,
                }
            }
            _ => {}
        }
    }

    /// Takes a job another gateway queued in the store into the queue (once).
    async fn adopt(self: &Arc<Self>, id: &str, secrets: Option<Map<String, Value>>) {
        if self.inner().jobs.contains_key(id) {
            return;
        }
        let job = match self.store.job(id).await {
            Ok(Some(job)) if job.state == JobState::Queued => job,
            Ok(_) => return,
            Err(e) => return tracing::warn!(prompt_id = id, error = %e, "cannot read a queued job; the sweep retries"),
        };
        let limits = match Limits::of(self.store.as_ref(), &self.limits(), self.max_request_body, job.user_id).await {
            Ok(limits) => limits,
            Err(e) => return tracing::warn!(prompt_id = id, error = %e, "cannot read a job owner's limits"),
        };
        {
            let mut inner = self.inner();
            if inner.jobs.contains_key(id) || !self.is_leading() {
                return;
            }
            let key: Arc<str> = Arc::from(id);
            let mut active = Active::resumed(&job, &key, &mut inner.names);
            active.secrets = secrets.map(Box::new);
            inner.unanalysed.push(key.clone());
            inner.queue.set_weight(job.user_id, limits.weight);
            inner.limits.insert(job.user_id, limits);
            self.place(&mut inner, key, active, false);
        }
        self.announce_status();
        self.pump().await;
    }

    /// Takes queued jobs nobody announced (a lost note) into the queue.
    pub async fn sweep_unannounced(self: &Arc<Self>) {
        if !self.is_leading() {
            return;
        }
        let before = now_ms() - i64::try_from(SWEEP_AGE.as_millis()).unwrap_or(0);
        let ids = match self.store.queued_job_ids(before).await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "cannot look for unannounced jobs"),
        };
        let unknown: Vec<String> = {
            let inner = self.inner();
            let known: HashSet<&str> = inner.jobs.keys().map(|k| &**k).collect();
            ids.into_iter().filter(|id| !known.contains(id.as_str())).collect()
        };
        for id in unknown {
            tracing::info!(prompt_id = %id, "taking a queued job no gateway announced");
            self.adopt(&id, None).await;
        }
    }

    /// Listens to the other gateways until `stop`: their notes, and after each gap in the
    /// notifications a sweep for what was missed.
    pub async fn follow_notes(self: Arc<Self>, bus: Arc<Bus>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut notes = bus.subscribe();
        let mut resyncs = bus.resyncs();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Ok(note) => {
                    // Queue operations may wait for backends: events for sockets never wait
                    // behind them.
                    if note.channel == channel::JOBS {
                        let this = self.clone();
                        tokio::spawn(async move { this.on_note(&note).await });
                    } else {
                        self.on_note(&note).await;
                    }
                }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "fell behind the other gateways' notes");
                        self.sweep_unannounced().await;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                Ok(()) = resyncs.changed() => self.sweep_unannounced().await,
                _ = sweep.tick() => self.sweep_unannounced().await,
                _ = stop.changed() => return,
            }
        }
    }
}

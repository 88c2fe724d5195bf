//! What happens to jobs as backends report on them, go down or come back.
//!
//! These run on the gateway's one event feed: nothing here waits for a backend's answer
//! (dispatches, reconciliations and withdrawals are spawned), so one slow backend never
//! delays the events of the others.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::delivery::Outgoing;
use super::jobs::{Active, Record};
use super::observe::JobReport;
use super::{Scheduler, renamed};
use crate::backends::monitor::Frame;
use crate::backends::{Backend, BackendEvent};
use crate::store::{JobState, StoredFile};
use crate::time::now_ms;

/// What a job's history entry is when it ends.
pub(super) enum Entry {
    /// What the gateway saw of its run.
    Seen,
    /// None (deleted from the queue: ComfyUI keeps no entry either).
    Omitted,
    /// The backend's own (read from its history).
    Given(String),
}

/// A job as it ended, taken out of the scheduler.
pub(super) struct Ended {
    pub job: Active,
    pub state: JobState,
    pub error: Option<String>,
}

impl Scheduler {
    /// Handles one frame from a backend's monitor socket.
    pub async fn on_frame(self: &Arc<Self>, backend_name: &str, frame: Frame) {
        let Some(backend) = self.pool.get(backend_name) else { return };
        // A replica that does not schedule keeps its sockets open (to schedule at once when it
        // takes over) but acts on nothing they say.
        let leading = self.is_leading();
        if leading {
            backend.load().last_event = Some(std::time::Instant::now());
        }
        match frame {
            Frame::Connected => {
                backend.load().monitored = true;
                if leading {
                    self.spawn_reconcile(&backend);
                    self.kick();
                }
            }
            Frame::Disconnected => backend.load().monitored = false,
            _ if !leading => {}
            Frame::Binary(data) => {
                let running = backend.load().running.clone();
                let Some(id) = running else { return };
                let owner = self.inner().job(&id).map(|j| (j.owner, j.client_id.clone()));
                if let Some((user, client)) = owner {
                    self.subscribers.send(user, &client, Outgoing::Binary(data));
                }
            }
            Frame::Text(text) => self.on_message(&backend, text).await,
        }
    }

    async fn on_message(self: &Arc<Self>, backend: &Arc<Backend>, text: String) {
        let Ok(message) = serde_json::from_str::<Value>(&text) else { return };
        let kind = message["type"].as_str().unwrap_or_default();
        let data = &message["data"];
        let Some(id) = data["prompt_id"].as_str() else {
            // Broadcast `status` frames carry one backend's queue; clients get the gateway's.
            return;
        };
        let held = {
            let mut inner = self.inner();
            match inner.job_mut(id) {
                // Events count only from the backend holding the job.
                Some(job) if job.backend.as_deref() == Some(backend.name()) => {
                    job.accepted = true;
                    job.record().note(kind, data);
                    Some((job.owner, job.client_id.clone(), job.public_id.clone()))
                }
                _ => None,
            }
        };
        let Some((owner, client_id, public_id)) = held else {
            if kind == "execution_start" {
                // A copy the gateway gave up on (moved elsewhere, deleted, ended) started here:
                // it must not run twice.
                tracing::warn!(
                    prompt_id = id,
                    backend = backend.name(),
                    "stray copy of a job started; interrupting it"
                );
                self.spawn_interrupt(backend, id);
            }
            return;
        };
        match kind {
            "execution_start" => {
                let started = {
                    let mut inner = self.inner();
                    let now = now_ms();
                    let (models, waited) = inner
                        .jobs
                        .get_mut(id)
                        .map(|job| {
                            job.state = JobState::Running;
                            // A repeated `execution_start` (reconnect) is not a second start.
                            let first = job.started_at.is_none();
                            job.started_at.get_or_insert(now);
                            let models = job.requirements.as_ref().map(|r| r.model_files()).unwrap_or_default();
                            (models, first.then(|| now - job.created_at))
                        })
                        .unwrap_or_default();
                    if let Some(waited) = waited {
                        self.metrics.job_started(std::time::Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
                    }
                    let report = waited
                        .and_then(|_| inner.job(id))
                        .map(|job| JobReport::of(id, job, JobState::Running, None, None));
                    let mut load = backend.load();
                    load.running = Some(id.to_owned());
                    if waited.is_some() && !models.is_empty() && !models.is_subset(&load.last_models) {
                        self.metrics.model_load(backend.name());
                        if let Some(job) = inner.jobs.get_mut(id) {
                            job.swapped = true;
                        }
                    }
                    if !models.is_empty() {
                        load.last_models = models;
                    }
                    report
                };
                self.save_state(id, JobState::Running, Some(backend.name()), None).await;
                if let Some(report) = started {
                    self.tell(report).await;
                }
            }
            "executed" => self.record_outputs(backend.name(), id, owner, &data["output"]).await,
            "execution_error" => self.set_outcome(id, JobState::Failed, data.to_string()),
            "execution_interrupted" => self.set_outcome_unless_set(id, JobState::Cancelled, "interrupted"),
            _ => {}
        }
        let ended = kind == "executing" && data["node"].is_null();
        if ended {
            // Recorded before the owner hears of it, as ComfyUI writes its history before the
            // final `executing`: a client that asks for the history at once finds the entry.
            self.finish(backend, id, Entry::Seen).await;
        }
        self.subscribers.send(owner, &client_id, Outgoing::Text(renamed(&text, id, &public_id)));
        if ended {
            self.kick();
        }
    }

    fn set_outcome(&self, id: &str, state: JobState, detail: String) {
        if let Some(job) = self.inner().job_mut(id) {
            job.outcome = Some((state, detail));
        }
    }

    /// An interruption the gateway asked for keeps its reason (e.g. the owner was disabled).
    fn set_outcome_unless_set(&self, id: &str, state: JobState, detail: &str) {
        if let Some(job) = self.inner().job_mut(id) {
            job.outcome.get_or_insert_with(|| (state, detail.to_owned()));
        }
    }

    async fn record_outputs(&self, backend: &str, id: &str, owner: i64, output: &Value) {
        let files: Vec<Value> = match output.as_object() {
            Some(map) => map.values().filter_map(Value::as_array).flatten().cloned().collect(),
            None => Vec::new(),
        };
        for file in &files {
            let (Some(filename), Some(kind)) = (file["filename"].as_str(), file["type"].as_str()) else { continue };
            let stored = StoredFile {
                backend: backend.to_owned(),
                kind: kind.to_owned(),
                subfolder: file["subfolder"].as_str().unwrap_or_default().to_owned(),
                filename: filename.to_owned(),
                prompt_id: Some(id.to_owned()),
                user_id: Some(owner),
            };
            if let Err(e) = self.files.record(&stored).await {
                tracing::error!(error = %e, "cannot record an output file");
            }
        }
    }

    /// Takes job `id` out of the scheduler if `backend` holds it (`None`: wherever it is).
    pub(super) fn take_job(&self, id: &str, backend: Option<&Backend>) -> Option<Active> {
        let mut inner = self.inner();
        let holder = inner.job(id)?.backend.clone();
        if backend.is_some_and(|b| holder.as_deref() != Some(b.name())) {
            return None;
        }
        let job = inner.remove(id)?;
        if let Some(b) = holder.as_deref().and_then(|b| self.pool.get(b)) {
            let mut load = b.load();
            load.inflight.retain(|x| x != id);
            if load.running.as_deref() == Some(id) {
                load.running = None;
            }
        }
        Some(job)
    }

    /// A job ended on `backend` (successfully unless an error was seen), with its history
    /// `entry`; the caller fills the freed slot.
    pub(super) async fn finish(&self, backend: &Backend, id: &str, entry: Entry) -> Option<Ended> {
        let job = self.take_job(id, Some(backend))?;
        let (state, error) = match &job.outcome {
            Some((state, detail)) => (*state, Some(detail.clone())),
            None => (JobState::Done, None),
        };
        self.count_end(state, false, job.started_at);
        let outputs = job.requirements.as_ref().map(|r| r.outputs.clone()).unwrap_or_default();
        let outcome = match entry {
            Entry::Seen => {
                let done = state == JobState::Done;
                Some(
                    job.record
                        .as_deref()
                        .map_or_else(|| Record::default().outcome(done, &outputs), |r| r.outcome(done, &outputs)),
                )
            }
            Entry::Omitted => None,
            Entry::Given(text) => Some(text),
        };
        self.end_job(id, state, Some(backend.name()), error.as_deref(), outcome.as_deref()).await;
        let report = JobReport::of(id, &job, state, error.as_deref(), Some(now_ms()));
        self.learn(&report, job.swapped);
        self.tell(report).await;
        let ran_s = job.started_at.map(|t| (crate::time::now_ms() - t) as f64 / 1000.0);
        tracing::info!(prompt_id = id, backend = backend.name(), state = ?state, ran_s, "job ended");
        self.announce_status();
        Some(Ended { job, state, error })
    }

    /// Learns from a job that ended: its real GPU time replaces the estimate its owner was
    /// charged at dispatch, and a clean run teaches run and model load times.
    fn learn(&self, report: &JobReport, swapped: bool) {
        let mut inner = self.inner();
        let now = now_ms();
        let ran = report.run_ms.unwrap_or(0) as f64;
        if report.started_at.is_some() || report.backend.is_some() {
            inner.queue.charge(report.owner, ran - self.dispatch_charge(), now);
        }
        if let (JobState::Done, Some(backend), Some(_)) = (report.state, &report.backend, report.run_ms) {
            let models: std::collections::BTreeSet<String> = report.models.iter().cloned().collect();
            inner.swaps.observe(backend, &models, ran, swapped);
        }
    }

    /// Ends a job that did not run to its end (refused by the backend, lost with it): recorded
    /// with its reason; when `notify`, the owner's socket gets `execution_error` and the final
    /// `executing`, as ComfyUI sends for a failed job.
    pub(super) async fn fail(&self, id: &str, error: &str, notify: bool) {
        self.end(id, JobState::Failed, error, notify).await;
    }

    /// Ends a job (wherever it is) in `state` with `reason`, which its history entry shows.
    pub(super) async fn end(&self, id: &str, state: JobState, reason: &str, notify: bool) -> bool {
        let mut job = self.take_job(id, None);
        let held = job.is_some();
        let report = job.as_ref().map(|job| JobReport::of(id, job, state, Some(reason), Some(now_ms())));
        if let Some(job) = &job {
            // A job ended here without its backend's word that had started: lost with it.
            self.count_end(state, job.started_at.is_some(), job.started_at);
        }
        // A failed job always gets an entry, held or not: `GET /history` lists what
        // `/history/{id}` shows.
        let ran = match job.as_mut() {
            Some(job) => Some((
                job.record.take().unwrap_or_default(),
                job.requirements.as_ref().map(|r| r.outputs.clone()).unwrap_or_default(),
            )),
            None => (state == JobState::Failed).then(|| (Box::default(), Vec::new())),
        };
        let outcome = ran.map(|(mut record, outputs)| {
            record.messages.push(json!(["execution_error", execution_error(id, reason)]));
            record.outcome(false, &outputs)
        });
        self.end_job(id, state, None, Some(reason), outcome.as_deref()).await;
        if let Some(report) = report {
            self.learn(&report, false);
            self.tell(report).await;
        }
        tracing::info!(prompt_id = id, state = ?state, reason, "job ended in the gateway");
        if let (Some(job), true) = (job, notify) {
            self.notify_failure(&job, reason);
        }
        self.announce_status();
        held
    }

    fn notify_failure(&self, job: &Active, error: &str) {
        let shown = &job.public_id;
        let event = json!({"type": "execution_error", "data": execution_error(shown, error)});
        self.subscribers.send(job.owner, &job.client_id, Outgoing::Text(event.to_string()));
        let done = super::delivery::final_executing_frame(shown);
        self.subscribers.send(job.owner, &job.client_id, Outgoing::Text(done));
    }

    /// Reacts to a backend going down or coming back.
    pub async fn on_backend_event(self: &Arc<Self>, event: BackendEvent) {
        if !self.is_leading() {
            return;
        }
        match event {
            BackendEvent::Down(name) => {
                self.evacuate(&name, &format!("ComfyUI backend `{name}` stopped answering")).await
            }
            BackendEvent::Up(name) => {
                let moved = self.inner().abandoned.remove(&name).unwrap_or_default();
                if let (false, Some(backend)) = (moved.is_empty(), self.pool.get(&name)) {
                    // It may not have died after all: the copies it still queues must not run.
                    let this = self.clone();
                    tokio::spawn(async move {
                        for id in moved {
                            this.withdraw(&backend, &id).await;
                        }
                    });
                }
            }
            BackendEvent::Changed => {}
        }
        self.kick();
    }

    /// Moves a backend's jobs away: not started → back to the queue (same prompt id);
    /// running → failed, saying which backend failed.
    async fn evacuate(self: &Arc<Self>, name: &str, reason: &str) {
        let Some(backend) = self.pool.get(name) else { return };
        let mut lost = Vec::new();
        let mut worn_out = Vec::new();
        {
            let mut inner = self.inner();
            let inner = &mut *inner;
            let running = {
                let mut load = backend.load();
                load.inflight.clear();
                load.running.take()
            };
            let held: Vec<Arc<str>> = inner
                .jobs
                .iter()
                .filter(|(_, j)| j.backend.as_deref() == Some(name))
                .map(|(id, _)| id.clone())
                .collect();
            for id in held {
                let Some(job) = inner.job_mut(&id) else { continue };
                if running.as_deref() == Some(&*id) || job.state == JobState::Running {
                    lost.push(id);
                    continue;
                }
                if job.attempt >= self.config.max_dispatches {
                    worn_out.push(id);
                    continue;
                }
                job.state = JobState::Queued;
                job.backend = None;
                job.accepted = false;
                inner.requeue_front(&id, self.dispatch_charge());
                inner.abandoned.entry(name.to_owned()).or_default().push(id.to_string());
            }
        }
        for id in lost {
            tracing::warn!(prompt_id = %id, backend = name, "job lost with its backend");
            self.fail(&id, reason, true).await;
        }
        for id in worn_out {
            let why = format!("{reason}; the job was dispatched {} times without running", self.config.max_dispatches);
            self.fail(&id, &why, true).await;
        }
    }

    /// Settles the jobs of backends that have been quiet for a while: their events may go
    /// elsewhere (jobs dispatched before a gateway restart) or have been missed.
    pub fn reconcile_quiet(self: &Arc<Self>, quiet_for: std::time::Duration) {
        if !self.is_leading() {
            return;
        }
        for backend in self.pool.healthy() {
            let quiet = {
                let load = backend.load();
                !load.inflight.is_empty() && load.last_event.is_none_or(|t| t.elapsed() >= quiet_for)
            };
            if quiet {
                self.spawn_reconcile(&backend);
            }
        }
    }

    fn spawn_reconcile(self: &Arc<Self>, backend: &Arc<Backend>) {
        if !self.inner().reconciling.insert(backend.name().to_owned()) {
            return;
        }
        let (this, backend) = (self.clone(), backend.clone());
        tokio::spawn(async move {
            this.reconcile(&backend).await;
            this.inner().reconciling.remove(backend.name());
            this.pump().await;
        });
    }

    fn spawn_interrupt(&self, backend: &Arc<Backend>, id: &str) {
        let (backend, body) = (backend.clone(), json!({"prompt_id": id}).to_string());
        tokio::spawn(async move {
            let timeout = backend.config.response_timeout;
            let _ = backend.proxy.call(Method::POST, "/interrupt", Some(body.into()), timeout).await;
        });
    }

    /// Settles the jobs a backend accepted whose end may have been missed (after its monitor
    /// socket reconnects, or when it has been quiet): its queue and history tell. Jobs whose
    /// dispatch is still on its way are left alone (the backend cannot know them yet).
    async fn reconcile(self: &Arc<Self>, backend: &Arc<Backend>) {
        let held: Vec<(String, u32)> = {
            let inner = self.inner();
            inner
                .jobs
                .iter()
                .filter(|(_, j)| j.backend.as_deref() == Some(backend.name()) && j.accepted)
                .map(|(id, j)| (id.to_string(), j.attempt))
                .collect()
        };
        if held.is_empty() {
            return;
        }
        let timeout = backend.config.response_timeout;
        let queue = match backend.proxy.call(Method::GET, "/queue", None, timeout).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            _ => return,
        };
        let listed = |section: &str, id: &str| {
            queue[section].as_array().is_some_and(|items| items.iter().any(|item| item[1].as_str() == Some(id)))
        };
        for (id, attempt) in held {
            if listed("queue_running", &id) {
                let mut inner = self.inner();
                if let Some(job) = inner.job_mut(&id).filter(|j| j.attempt == attempt) {
                    job.state = JobState::Running;
                    backend.load().running = Some(id.clone());
                }
                continue;
            }
            if listed("queue_pending", &id) {
                continue;
            }
            // Gone from its queue: finished (history says how) or lost with a restart.
            let path = format!("/history/{id}");
            let history = match backend.proxy.call(Method::GET, &path, None, timeout).await {
                Ok((StatusCode::OK, body)) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                _ => continue,
            };
            if !self.is_current(&id, backend, attempt) {
                continue;
            }
            let entry = &history[id.as_str()];
            if entry.is_object() {
                let owner = self.inner().job(&id).map(|j| j.owner);
                if let Some(owner) = owner {
                    let outputs: Vec<Value> = match entry["outputs"].as_object() {
                        Some(map) => map.values().cloned().collect(),
                        None => Vec::new(),
                    };
                    for output in &outputs {
                        self.record_outputs(backend.name(), &id, owner, output).await;
                    }
                }
                if entry["status"]["status_str"].as_str() == Some("error") {
                    self.set_outcome(&id, JobState::Failed, entry["status"].to_string());
                }
                if let Some(ended) = self.finish_from_history(backend, &id, entry).await {
                    self.notify_end(&ended);
                }
            } else {
                let was_running = self.inner().job(&id).is_some_and(|j| j.state == JobState::Running);
                if was_running {
                    let reason =
                        format!("ComfyUI backend `{}` lost this job while running it (restarted?)", backend.name());
                    self.fail(&id, &reason, true).await;
                } else {
                    let reason = format!("ComfyUI backend `{}` lost this job before it started", backend.name());
                    if let super::Requeued::Failed(why) = self.requeue(&id, backend, attempt, false, &reason) {
                        self.fail(&id, &why, true).await;
                    }
                }
            }
        }
    }

    /// Ends a job whose end the backend's history told (its events were missed): the entry
    /// is kept as the backend wrote it.
    async fn finish_from_history(&self, backend: &Backend, id: &str, entry: &Value) -> Option<Ended> {
        let mut kept = entry.clone();
        if let Some(map) = kept.as_object_mut() {
            let outputs = map.get("prompt").and_then(|p| p.get(4)).cloned().unwrap_or_else(|| json!([]));
            map.remove("prompt");
            map.insert("outputs_to_execute".to_owned(), outputs);
        }
        self.finish(backend, id, Entry::Given(kept.to_string())).await
    }

    /// Tells the owner's socket that a job settled by reconciliation ended (its own final
    /// events were missed).
    fn notify_end(&self, ended: &Ended) {
        let job = &ended.job;
        if ended.state == JobState::Failed {
            self.notify_failure(job, ended.error.as_deref().unwrap_or("failed"));
            return;
        }
        let done = super::delivery::final_executing_frame(&job.public_id);
        self.subscribers.send(job.owner, &job.client_id, Outgoing::Text(done));
    }
}

/// ComfyUI's `execution_error` payload for a job the gateway reports as failed.
pub fn execution_error(id: &str, error: &str) -> Value {
    json!({
        "prompt_id": id, "node_id": null, "node_type": null, "executed": [],
        "exception_message": error, "exception_type": "comfygate.BackendError",
        "traceback": [], "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(),
    })
}

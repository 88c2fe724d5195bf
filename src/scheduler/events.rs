//! What happens to jobs as backends report on them, go down or come back.

use std::sync::Arc;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::delivery::Outgoing;
use super::{Scheduler, jobs::Active};
use crate::backends::monitor::Frame;
use crate::backends::{Backend, BackendEvent};
use crate::store::{JobState, StoredFile};
use crate::time::now_ms;

impl Scheduler {
    /// Handles one frame from a backend's monitor socket.
    pub async fn on_frame(self: &Arc<Self>, backend_name: &str, frame: Frame) {
        let Some(backend) = self.pool.get(backend_name).cloned() else { return };
        backend.load().last_event = Some(std::time::Instant::now());
        match frame {
            Frame::Connected => {
                let this = self.clone();
                tokio::spawn(async move { this.reconcile(&backend).await });
            }
            Frame::Binary(data) => {
                let running = backend.load().running.clone();
                let Some(id) = running else { return };
                let owner = self.inner().jobs.get(&id).map(|j| (j.owner, j.client_id.clone()));
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
        let Some((owner, client_id)) = self.inner().jobs.get(id).map(|j| (j.owner, j.client_id.clone())) else {
            return;
        };
        match kind {
            "execution_start" => {
                {
                    let mut inner = self.inner();
                    let models = inner
                        .jobs
                        .get_mut(id)
                        .map(|job| {
                            job.state = JobState::Running;
                            job.requirements.as_ref().map(|r| r.model_files()).unwrap_or_default()
                        })
                        .unwrap_or_default();
                    let mut load = backend.load();
                    load.running = Some(id.to_owned());
                    load.last_models = models;
                }
                self.save_state(id, JobState::Running, Some(backend.name()), None).await;
            }
            "executed" => self.record_outputs(backend.name(), id, owner, &data["output"]).await,
            "execution_error" => self.set_outcome(id, JobState::Failed, data.to_string()),
            "execution_interrupted" => self.set_outcome(id, JobState::Cancelled, "interrupted".to_owned()),
            _ => {}
        }
        self.subscribers.send(owner, &client_id, Outgoing::Text(text));
        if kind == "executing" && data["node"].is_null() {
            self.finish(backend, id).await;
        }
    }

    fn set_outcome(&self, id: &str, state: JobState, detail: String) {
        if let Some(job) = self.inner().jobs.get_mut(id) {
            job.outcome = Some((state, detail));
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

    /// A job ended on `backend` (successfully unless an error was seen).
    pub(super) async fn finish(&self, backend: &Backend, id: &str) {
        let ended = {
            let mut load = backend.load();
            load.inflight.retain(|x| x != id);
            if load.running.as_deref() == Some(id) {
                load.running = None;
            }
            drop(load);
            self.inner().jobs.remove(id)
        };
        let Some(job) = ended else { return };
        let (state, error) = match job.outcome {
            Some((state, detail)) => (state, Some(detail)),
            None => (JobState::Done, None),
        };
        // The freed slot is filled first; the record can wait a moment.
        self.pump().await;
        self.save_state(id, state, Some(backend.name()), error.as_deref()).await;
        self.announce_status();
    }

    /// Ends a job that never ran (refused by the backend, lost with it): recorded with its
    /// reason; when `notify`, the owner's socket gets `execution_error` and the final
    /// `executing`, as ComfyUI sends for a failed job.
    pub(super) async fn fail(&self, id: &str, error: &str, notify: bool) {
        let job = self.inner().jobs.remove(id);
        if let Some(backend) = job.as_ref().and_then(|j| j.backend.as_deref()).and_then(|b| self.pool.get(b)) {
            let mut load = backend.load();
            load.inflight.retain(|x| x != id);
            if load.running.as_deref() == Some(id) {
                load.running = None;
            }
        }
        self.save_state(id, JobState::Failed, None, Some(error)).await;
        if let (Some(job), true) = (job, notify) {
            self.notify_failure(&job, id, error);
        }
        self.announce_status();
    }

    fn notify_failure(&self, job: &Active, id: &str, error: &str) {
        let event = json!({"type": "execution_error", "data": execution_error(id, error)});
        self.subscribers.send(job.owner, &job.client_id, Outgoing::Text(event.to_string()));
        let done = json!({"type": "executing", "data": {"node": null, "prompt_id": id}});
        self.subscribers.send(job.owner, &job.client_id, Outgoing::Text(done.to_string()));
    }

    /// Reacts to a backend going down or coming back.
    pub async fn on_backend_event(self: &Arc<Self>, event: BackendEvent) {
        match event {
            BackendEvent::Down(name) => {
                self.evacuate(&name, &format!("ComfyUI backend `{name}` stopped answering")).await
            }
            BackendEvent::Up(name) => {
                let moved = self.inner().abandoned.remove(&name).unwrap_or_default();
                if let (false, Some(backend)) = (moved.is_empty(), self.pool.get(&name)) {
                    let body = json!({"delete": moved}).to_string();
                    let _ = backend
                        .proxy
                        .call(Method::POST, "/queue", Some(body.into()), backend.config.response_timeout)
                        .await;
                }
            }
            BackendEvent::Changed => {}
        }
        self.pump().await;
    }

    /// Moves a backend's jobs away: not started → back to the queue (same prompt id);
    /// running → failed, saying which backend failed.
    async fn evacuate(self: &Arc<Self>, name: &str, reason: &str) {
        let Some(backend) = self.pool.get(name).cloned() else { return };
        let (inflight, running) = {
            let mut load = backend.load();
            (std::mem::take(&mut load.inflight), load.running.take())
        };
        let mut failed = Vec::new();
        {
            let mut inner = self.inner();
            for id in &inflight {
                let Some(job) = inner.jobs.get_mut(id) else { continue };
                if running.as_deref() == Some(id.as_str()) || job.state == JobState::Running {
                    failed.push(id.clone());
                    continue;
                }
                job.state = JobState::Queued;
                job.backend = None;
                let owner = job.owner;
                inner.queue.push_front(owner, id.clone());
                inner.abandoned.entry(name.to_owned()).or_default().push(id.clone());
            }
        }
        for id in inflight.iter().filter(|id| !failed.contains(id)) {
            self.save_state(id, JobState::Queued, None, None).await;
        }
        for id in failed {
            tracing::warn!(prompt_id = %id, backend = name, "job lost with its backend");
            self.fail(&id, reason, true).await;
        }
    }

    /// Settles the jobs of backends that have been quiet for a while: their events may go
    /// elsewhere (jobs dispatched before a gateway restart) or have been missed.
    pub async fn reconcile_quiet(self: &Arc<Self>, quiet_for: std::time::Duration) {
        for backend in self.pool.healthy() {
            let quiet = {
                let load = backend.load();
                !load.inflight.is_empty() && load.last_event.is_none_or(|t| t.elapsed() >= quiet_for)
            };
            if quiet {
                self.reconcile(&backend).await;
            }
        }
    }

    /// After the monitor socket (re)connects: settles jobs whose end may have been missed.
    async fn reconcile(self: &Arc<Self>, backend: &Arc<Backend>) {
        let inflight = backend.load().inflight.clone();
        if inflight.is_empty() {
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
        for id in inflight {
            if listed("queue_running", &id) {
                backend.load().running = Some(id.clone());
                if let Some(job) = self.inner().jobs.get_mut(&id) {
                    job.state = JobState::Running;
                }
                continue;
            }
            if listed("queue_pending", &id) {
                continue;
            }
            let history = match backend.proxy.call(Method::GET, &format!("/history/{id}"), None, timeout).await {
                Ok((StatusCode::OK, body)) => serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                _ => continue,
            };
            let entry = &history[id.as_str()];
            if entry.is_object() {
                let owner = self.inner().jobs.get(&id).map(|j| j.owner);
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
                self.finish(backend, &id).await;
            } else {
                let was_running = self.inner().jobs.get(&id).is_some_and(|j| j.state == JobState::Running);
                if was_running {
                    let reason =
                        format!("ComfyUI backend `{}` lost this job while running it (restarted?)", backend.name());
                    self.fail(&id, &reason, true).await;
                } else {
                    self.requeue(&id, backend);
                    self.save_state(&id, JobState::Queued, None, None).await;
                }
            }
        }
        self.pump().await;
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

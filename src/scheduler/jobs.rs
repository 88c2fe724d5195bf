//! A job while the gateway holds it, and the answers `POST /prompt` gives.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::workflow::Requirements;
use crate::store::{Job, JobState};

/// What `POST /prompt` answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: StatusCode,
    /// JSON body.
    pub body: Bytes,
    /// Seconds after which trying again makes sense (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Answer {
    /// A backend's answer, passed on unchanged.
    pub fn raw(status: StatusCode, body: Bytes) -> Self {
        Self { status, body, retry_after: None }
    }

    /// A JSON answer.
    pub fn json(status: StatusCode, body: &Value) -> Self {
        Self { status, body: Bytes::from(body.to_string()), retry_after: None }
    }

    /// A limit's refusal.
    pub fn refused(refusal: &crate::limits::Refusal) -> Self {
        Self { retry_after: refusal.retry_after, ..Self::json(refusal.status, &refusal.body()) }
    }

    /// ComfyUI's error shape (`400 {"error": {...}, "node_errors": {}}`).
    pub fn comfy_error(kind: &str, message: &str, details: &str) -> Self {
        Self::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"type": kind, "message": message, "details": details, "extra_info": {}}, "node_errors": {}}),
        )
    }
}

/// Keys of `extra_data` that carry a user's credentials for paid API nodes (Comfy.org).
const SECRET_KEYS: &[&str] = &["api_key_comfy_org", "auth_token_comfy_org"];

/// Whether an `extra_data` key names a credential: Comfy.org's keys, and anything named like a
/// key or token (any case).
pub fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&lower.as_str())
        || ["api_key", "apikey", "token", "secret", "password"].iter().any(|s| lower.contains(s))
}

/// Removes credentials from an `extra_data` object (for views, history and the store).
pub fn strip_secrets(extra: &mut Value) {
    if let Some(map) = extra.as_object_mut() {
        map.retain(|key, _| !is_secret_key(key));
    }
}

/// Takes the credentials out of an `extra_data` object; `None` when it held none.
pub fn take_secrets(extra: &mut Value) -> Option<Map<String, Value>> {
    let map = extra.as_object_mut()?;
    let keys: Vec<String> = map.keys().filter(|k| is_secret_key(k)).cloned().collect();
    if keys.is_empty() {
        return None;
    }
    Some(keys.into_iter().filter_map(|k| map.remove(&k).map(|v| (k, v))).collect())
}

/// A job the gateway holds (waiting, dispatched or running).
pub(super) struct Active {
    pub owner: i64,
    pub username: String,
    pub client_id: String,
    /// The prompt id the owner knows it by (the backends see the gateway's own).
    pub public_id: String,
    /// The API token that submitted it, if one did.
    pub token_id: Option<i64>,
    pub number: i64,
    /// The workflow, held in memory only until its requirements are known (the store keeps
    /// it; dispatch and views read it from there).
    pub request: Option<Arc<Value>>,
    /// Credentials from `extra_data` (Comfy.org API keys and the like): never written to the
    /// store, so held here until the job is dispatched.
    pub secrets: Option<Map<String, Value>>,
    /// What it needs; `None` until some backend's capabilities are known.
    pub requirements: Option<Requirements>,
    /// The backend holding its uploaded input files.
    pub pinned: Option<String>,
    pub state: JobState,
    pub backend: Option<String>,
    /// The submitter, waiting for the backend's answer to an immediate dispatch.
    pub waiter: Option<oneshot::Sender<Answer>>,
    /// An execution error or interruption seen before the job ended.
    pub outcome: Option<(JobState, String)>,
    /// Dispatches so far; each dispatch's result is applied only while it is the latest.
    pub attempt: u32,
    /// Whether the backend accepted the latest dispatch (its `POST /prompt` answered 200, or
    /// its events arrived): only then can the backend's queue and history tell its fate.
    pub accepted: bool,
    /// Backends that answered a dispatch of this job with a server error: not tried again.
    pub refused_by: Vec<String>,
    /// What its run has shown so far, for its history entry.
    pub record: Record,
}

/// What a job's run showed: the parts of ComfyUI's history entry the gateway keeps.
#[derive(Debug, Default)]
pub struct Record {
    /// Outputs by node id (from `executed`).
    pub outputs: Map<String, Value>,
    /// Output nodes' `{node_id, display_node, parent_node, real_node_id}`.
    pub meta: Map<String, Value>,
    /// `[type, data]` of the execution messages ComfyUI keeps in history.
    pub messages: Vec<Value>,
}

impl Record {
    /// Notes one message from the backend.
    pub fn note(&mut self, kind: &str, data: &Value) {
        match kind {
            "execution_start"
            | "execution_cached"
            | "execution_success"
            | "execution_error"
            | "execution_interrupted" => self.messages.push(json!([kind, data])),
            "executed" => {
                let Some(node) = data["node"].as_str() else { return };
                self.outputs.insert(node.to_owned(), data["output"].clone());
                let display = data.get("display_node").cloned().unwrap_or_else(|| json!(node));
                let real = data.get("real_node_id").cloned().unwrap_or_else(|| json!(node));
                let parent = data.get("parent_node").cloned().unwrap_or(Value::Null);
                self.meta.insert(
                    node.to_owned(),
                    json!({"node_id": node, "display_node": display, "parent_node": parent, "real_node_id": real}),
                );
            }
            _ => {}
        }
    }

    /// The history entry without its prompt, as stored: `success` unless it ended otherwise.
    pub fn outcome(&self, success: bool, outputs_to_execute: &[String]) -> String {
        json!({
            "outputs": self.outputs,
            "status": {"status_str": if success { "success" } else { "error" }, "completed": success,
                "messages": self.messages},
            "meta": self.meta,
            "outputs_to_execute": outputs_to_execute,
        })
        .to_string()
    }
}

impl Active {
    pub fn from_job(job: &Job) -> Self {
        Self {
            owner: job.user_id,
            username: job.username.clone(),
            client_id: job.client_id.clone(),
            public_id: job.public_id.clone(),
            token_id: job.token_id,
            number: job.number,
            request: None,
            secrets: None,
            requirements: None,
            pinned: None,
            state: job.state,
            backend: job.backend.clone(),
            waiter: None,
            outcome: None,
            attempt: 0,
            // Resumed as handed to a backend: that backend's queue and history tell.
            accepted: matches!(job.state, JobState::Dispatched | JobState::Running),
            refused_by: Vec::new(),
            record: Record::default(),
        }
    }

    /// What a view of the queue needs of this job (gateway id `id`), taken under the lock.
    pub fn view(&self, id: &str) -> QueueEntry {
        QueueEntry {
            id: id.to_owned(),
            number: self.number,
            owner: self.owner,
            client_id: self.client_id.clone(),
            public_id: self.public_id.clone(),
            outputs: self.requirements.as_ref().map(|r| r.outputs.clone()).unwrap_or_default(),
        }
    }
}

/// A job as a queue view shows it, without its workflow (read from the store).
pub struct QueueEntry {
    pub id: String,
    pub number: i64,
    owner: i64,
    client_id: String,
    public_id: String,
    outputs: Vec<String>,
}

impl QueueEntry {
    /// ComfyUI's queue item `[number, prompt_id, prompt, extra_data, outputs_to_execute]`, as
    /// `viewer` may see it, from the job's stored `request` (which holds no credentials).
    pub fn item(&self, viewer: i64, request: &Value) -> Value {
        let mut extra = request.get("extra_data").cloned().unwrap_or_else(|| json!({}));
        strip_secrets(&mut extra);
        let own = viewer == self.owner;
        if !self.client_id.is_empty() && own {
            extra["client_id"] = Value::String(self.client_id.clone());
        }
        let shown = if own { &self.public_id } else { &self.id };
        json!([self.number, shown, request.get("prompt").cloned().unwrap_or(Value::Null), extra, self.outputs])
    }
}

/// A backend's message or answer about job `id` as its owner sees it: the gateway's id
/// replaced by the owner's own (a UUID never occurs by chance in other text).
pub fn renamed(text: &str, id: &str, public_id: &str) -> String {
    if id == public_id { text.to_owned() } else { text.replace(id, public_id) }
}

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
    /// The limit that refused the submission, if one did (`too_many_waiting_jobs`...).
    pub limit: Option<&'static str>,
}

impl Answer {
    /// A backend's answer, passed on unchanged.
    pub fn raw(status: StatusCode, body: Bytes) -> Self {
        Self { status, body, retry_after: None, limit: None }
    }

    /// A JSON answer.
    pub fn json(status: StatusCode, body: &Value) -> Self {
        Self { status, body: Bytes::from(body.to_string()), retry_after: None, limit: None }
    }

    /// A limit's refusal.
    pub fn refused(refusal: &crate::limits::Refusal) -> Self {
        Self {
            retry_after: refusal.retry_after,
            limit: Some(refusal.kind),
            ..Self::json(refusal.status, &refusal.body())
        }
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

/// A job's `extra_data` as a viewer sees it in queue and history items: no credentials, and the
/// submitter's own `client_id` for the owner only (the backend saw the gateway's).
/// What an admin's view adds to a job's `extra_data`: whose it is and where it runs (ComfyUI's
/// own views have no owner; the frontend ignores the key).
pub fn with_owner(mut extra: Value, owner: &str, backend: Option<&str>) -> Value {
    if let Some(map) = extra.as_object_mut() {
        map.insert("comfygate".to_owned(), json!({"owner": owner, "backend": backend}));
    }
    extra
}

pub fn shown_extra(mut extra: Value, client_id: &str, own: bool) -> Value {
    strip_secrets(&mut extra);
    if own && !client_id.is_empty() {
        extra["client_id"] = Value::String(client_id.to_owned());
    }
    extra
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

/// The top-level key of a stored request that holds what the gateway keeps of a job for itself
/// (`{"priority": ..., "webhook": ...}`); taken out before a dispatch, ignored by views.
pub(super) const GATEWAY_KEY: &str = "comfygate_job";

/// What the gateway kept for itself in a stored request (see [`GATEWAY_KEY`]).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Kept {
    #[serde(default)]
    pub priority: super::priority::Priority,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Value>,
}

impl Kept {
    /// What a stored request text holds (the defaults when nothing or something unreadable).
    pub fn of_stored(request: &Value) -> Self {
        request.get(GATEWAY_KEY).and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
    }
}

/// A job the gateway holds (waiting, dispatched or running).
pub(super) struct Active {
    pub owner: i64,
    /// Shared by the owner's jobs (see [`Names`]).
    pub username: Arc<str>,
    pub client_id: Arc<str>,
    /// The prompt id the owner knows it by (the backends see the gateway's own, which it is
    /// unless the owner chose one: then both share one allocation).
    pub public_id: Arc<str>,
    /// The API token that submitted it, if one did.
    pub token_id: Option<i64>,
    pub number: i64,
    /// The workflow, held in memory only until its requirements are known (the store keeps
    /// it; dispatch and views read it from there).
    pub request: Option<Arc<Value>>,
    /// Credentials from `extra_data` (Comfy.org API keys and the like): never written to the
    /// store, so held here until the job is dispatched.
    pub secrets: Option<Box<Map<String, Value>>>,
    /// What it needs; `None` until some backend's capabilities are known. Jobs of one
    /// workflow share one.
    pub requirements: Option<Arc<Requirements>>,
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
    /// What its run has shown so far, for its history entry (once it has shown anything).
    pub record: Option<Box<Record>>,
    /// When it was submitted (ms), for its wait time.
    pub created_at: i64,
    /// When its run started (ms), for its run time.
    pub started_at: Option<i64>,
    /// Its priority class, resolved at submission.
    pub priority: super::priority::Priority,
    /// `extra_data.webhook` as submitted (told to observers; never forwarded).
    pub webhook: Option<Arc<Value>>,
    /// Since when (unix ms) it has been passed over while first in fair order (by a backend
    /// with room that kept or swapped to other models); bounded by `[scheduler] max_extra_wait`.
    pub waiting_since: Option<i64>,
    /// Whether its run started with a model swap on its backend (for learning load times).
    pub swapped: bool,
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

/// Names many jobs share, held once: user names and requirements.
#[derive(Default)]
pub(super) struct Names {
    strings: std::collections::HashSet<Arc<str>>,
    requirements: std::collections::HashSet<Arc<Requirements>>,
}

impl Names {
    /// The one copy of `text`.
    pub fn text(&mut self, text: &str) -> Arc<str> {
        if let Some(known) = self.strings.get(text) {
            return known.clone();
        }
        // Bounded: past this many distinct names, sharing stops paying for the table.
        if self.strings.len() >= 10_000 {
            self.strings.clear();
        }
        let new: Arc<str> = Arc::from(text);
        self.strings.insert(new.clone());
        new
    }

    /// The one copy of `req`.
    pub fn requirements(&mut self, req: Requirements) -> Arc<Requirements> {
        if let Some(known) = self.requirements.get(&req) {
            return known.clone();
        }
        if self.requirements.len() >= 10_000 {
            self.requirements.clear();
        }
        let new = Arc::new(req);
        self.requirements.insert(new.clone());
        new
    }
}

impl Active {
    /// A held job from its record; `id` is its gateway id (shared with `public_id` when equal).
    pub fn from_job(job: &Job, id: &Arc<str>, names: &mut Names) -> Self {
        let public_id = if job.public_id == job.prompt_id { id.clone() } else { Arc::from(job.public_id.as_str()) };
        Self {
            owner: job.user_id,
            username: names.text(&job.username),
            // Client ids are mostly one per browser tab: not worth a table entry each.
            client_id: Arc::from(job.client_id.as_str()),
            public_id,
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
            record: None,
            created_at: job.created_at,
            started_at: None,
            priority: super::priority::Priority::Normal,
            webhook: None,
            waiting_since: None,
            swapped: false,
        }
    }

    /// A held job read back from the store, with what its stored request keeps (priority,
    /// webhook) and the request itself until its requirements are known.
    pub fn resumed(job: &Job, id: &Arc<str>, names: &mut Names) -> Self {
        let mut active = Self::from_job(job, id, names);
        active.request = serde_json::from_str(&job.request).ok().map(Arc::new);
        if let Some(request) = &active.request {
            let kept = Kept::of_stored(request);
            active.priority = kept.priority;
            active.webhook = kept.webhook.map(Arc::new);
        }
        active
    }

    /// What its run has shown, to add to.
    pub fn record(&mut self) -> &mut Record {
        self.record.get_or_insert_with(Box::default)
    }

    /// What a view of the queue needs of this job (gateway id `id`), taken under the lock.
    pub fn view(&self, id: &str) -> QueueEntry {
        QueueEntry {
            id: id.to_owned(),
            number: self.number,
            owner: self.owner,
            username: self.username.clone(),
            backend: self.backend.clone(),
            client_id: self.client_id.clone(),
            public_id: self.public_id.clone(),
            requirements: self.requirements.clone(),
        }
    }
}

/// A job as a queue view shows it, without its workflow (read from the store).
pub struct QueueEntry {
    pub id: String,
    pub number: i64,
    owner: i64,
    username: Arc<str>,
    backend: Option<String>,
    client_id: Arc<str>,
    public_id: Arc<str>,
    requirements: Option<Arc<Requirements>>,
}

impl QueueEntry {
    /// Writes ComfyUI's queue item `[number, prompt_id, prompt, extra_data,
    /// outputs_to_execute]`, as `viewer` may see it (an `admin` also whose it is and where it
    /// runs), from the job's stored `request` (which holds no credentials): the workflow is
    /// copied as it was stored, not parsed.
    pub fn write(&self, out: &mut String, viewer: i64, admin: bool, request: &str) {
        #[derive(serde::Deserialize)]
        struct Stored<'a> {
            #[serde(borrow)]
            prompt: Option<&'a serde_json::value::RawValue>,
            #[serde(default)]
            extra_data: Map<String, Value>,
        }
        let stored: Option<Stored<'_>> = serde_json::from_str(request).ok();
        let (prompt, extra) = match stored {
            Some(s) => (s.prompt.map_or("null", |p| p.get()), Value::Object(s.extra_data)),
            None => ("null", json!({})),
        };
        let own = viewer == self.owner;
        let extra = shown_extra(extra, &self.client_id, own);
        let extra = if admin { with_owner(extra, &self.username, self.backend.as_deref()) } else { extra };
        let shown: &str = if own { &self.public_id } else { &self.id };
        let outputs: &[String] = self.requirements.as_ref().map_or(&[], |r| r.outputs.as_slice());
        out.push('[');
        out.push_str(&self.number.to_string());
        out.push(',');
        out.push_str(&Value::String(shown.to_owned()).to_string());
        out.push(',');
        out.push_str(prompt);
        out.push(',');
        out.push_str(&extra.to_string());
        out.push(',');
        out.push_str(&serde_json::to_string(outputs).unwrap_or_else(|_| "[]".to_owned()));
        out.push(']');
    }
}

/// A backend's message or answer about job `id` as its owner sees it: the gateway's id
/// replaced by the owner's own (a UUID never occurs by chance in other text).
pub fn renamed(text: &str, id: &str, public_id: &str) -> String {
    if id == public_id { text.to_owned() } else { text.replace(id, public_id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_item_copies_the_stored_workflow_and_shows_each_viewer_their_id() {
        let entry = QueueEntry {
            id: "gw-id".to_owned(),
            number: 7,
            owner: 1,
            username: Arc::from("alice"),
            backend: Some("gpu0".to_owned()),
            client_id: Arc::from("tab-1"),
            public_id: Arc::from("job-0001"),
            requirements: Some(Arc::new(Requirements { outputs: vec!["2".to_owned()], ..Requirements::default() })),
        };
        let request = r#"{"prompt":{"1":{"class_type":"EmptyImage","inputs":{"w":"a\"b"}}},"extra_data":{"api_key_x":"k","note":1}}"#;
        let item = |viewer| {
            let mut out = String::new();
            entry.write(&mut out, viewer, false, request);
            serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)
        };
        let prompt = json!({"1": {"class_type": "EmptyImage", "inputs": {"w": "a\"b"}}});
        assert_eq!(item(1), json!([7, "job-0001", prompt, {"note": 1, "client_id": "tab-1"}, ["2"]]));
        assert_eq!(item(2), json!([7, "gw-id", prompt, {"note": 1}, ["2"]]), "others: the gateway id, no client id");
        let mut out = String::new();
        entry.write(&mut out, 2, true, request);
        let admins: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        assert_eq!(
            admins[3]["comfygate"],
            json!({"owner": "alice", "backend": "gpu0"}),
            "an admin sees whose and where"
        );
        let mut out = String::new();
        entry.write(&mut out, 1, false, "not json");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap_or(Value::Null)[2], Value::Null);
    }
}

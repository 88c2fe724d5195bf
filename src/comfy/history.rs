//! History, kept by the gateway: when a job ends its entry (outputs, status, meta) is stored,
//! so history survives the backend that ran it (down, restarted, replaced) and the list is
//! read page by page from the store in ComfyUI's order and `max_items`/`offset` semantics,
//! streamed with bounded memory whatever its size. Each user sees their own jobs under the
//! ids they know them by; admins see everyone's.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::{Value, json};

use super::{json_response, ok_empty, read_json};
use crate::http::ApiError;
use crate::scheduler::control::Scope;
use crate::scheduler::{execution_error, renamed, shown_extra, with_owner};
use crate::state::AppState;
use crate::store::{Job, JobState, Store};

/// Entries read from the store at a time while a list streams.
const PAGE: i64 = 100;

/// `GET /history/{id}`: `id` as the viewer knows the job (their own id; for admins, also
/// anyone's gateway id). Another user's id is answered like an unknown one.
pub async fn one(app: &AppState, scope: Scope, viewer: i64, id: &str) -> Result<Response, ApiError> {
    let store = app.scheduler.store();
    let job = match store.job_of(viewer, id).await.map_err(unavailable)? {
        Some(job) => Some(job),
        None if matches!(scope, Scope::All) => store.job(id).await.map_err(unavailable)?,
        None => None,
    };
    let Some(job) = job.filter(|j| scope.covers(j.user_id) && j.in_history) else {
        return Ok(json_response(StatusCode::OK, &json!({})));
    };
    let shown = shown_id(&job, viewer).to_owned();
    let viewer = Viewer { id: viewer, admin: matches!(scope, Scope::All) };
    if job.outcome.is_some() {
        return Ok(json_response(StatusCode::OK, &json!({ shown: entry(&job, viewer) })));
    }
    // Not ended yet: no entry (as ComfyUI answers for a job still queued or running), even if
    // the backend's history already has it before the gateway heard of its end.
    if !matches!(job.state, JobState::Done | JobState::Failed | JobState::Cancelled) {
        return Ok(json_response(StatusCode::OK, &json!({})));
    }
    // Ended before the gateway kept entries: the backend that ran it may still have it.
    if let Some(entry) = from_backend(app, &job, viewer).await {
        return Ok(json_response(StatusCode::OK, &json!({ shown: entry })));
    }
    if matches!(job.state, JobState::Failed | JobState::Cancelled) {
        return Ok(json_response(StatusCode::OK, &json!({ shown: failed_entry(&job, viewer) })));
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

/// The id `viewer` knows `job` by.
fn shown_id(job: &Job, viewer: i64) -> &str {
    if job.user_id == viewer { &job.public_id } else { &job.prompt_id }
}

/// Whose views show whose jobs: an admin's (every job, with owner and backend) or a user's.
#[derive(Debug, Clone, Copy)]
struct Viewer {
    id: i64,
    admin: bool,
}

/// ComfyUI's `prompt` element of an entry: `[number, id, prompt, extra_data, outputs]`.
fn prompt_item(job: &Job, viewer: Viewer, outputs: Value) -> Value {
    let request: Value = serde_json::from_str(&job.request).unwrap_or(Value::Null);
    let extra = request.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    let extra = shown_extra(extra, &job.client_id, job.user_id == viewer.id);
    let extra = if viewer.admin { with_owner(extra, &job.username, job.backend.as_deref()) } else { extra };
    let viewer = viewer.id;
    json!([job.number, shown_id(job, viewer), request.get("prompt").cloned().unwrap_or(Value::Null), extra, outputs])
}

/// A stored entry as `viewer` sees it.
fn entry(job: &Job, viewer: Viewer) -> Value {
    let outcome: Value = job.outcome.as_deref().and_then(|o| serde_json::from_str(o).ok()).unwrap_or(Value::Null);
    let outputs = outcome.get("outputs_to_execute").cloned().unwrap_or_else(|| json!([]));
    let entry = json!({
        "prompt": prompt_item(job, viewer, outputs),
        "outputs": outcome.get("outputs").cloned().unwrap_or_else(|| json!({})),
        "status": outcome.get("status").cloned().unwrap_or_else(|| json!({})),
        "meta": outcome.get("meta").cloned().unwrap_or_else(|| json!({})),
    });
    as_known_by(entry, &job.prompt_id, shown_id(job, viewer.id))
}

/// The entry of a job that failed before the gateway kept entries.
fn failed_entry(job: &Job, viewer: Viewer) -> Value {
    let shown = shown_id(job, viewer.id);
    let error = execution_error(shown, job.error.as_deref().unwrap_or("failed"));
    json!({
        "prompt": prompt_item(job, viewer, json!([])),
        "outputs": {},
        "status": {"status_str": "error", "completed": false, "messages": [["execution_error", error]]},
        "meta": {},
    })
}

/// The backend's own entry for `job`, as `viewer` sees it.
async fn from_backend(app: &AppState, job: &Job, viewer: Viewer) -> Option<Value> {
    let backend = job.backend.as_deref().and_then(|b| app.scheduler.pool().get(b))?;
    let internal = job.prompt_id.as_str();
    let path =
        format!("/history/{}", percent_encoding::utf8_percent_encode(internal, percent_encoding::NON_ALPHANUMERIC));
    let Ok((StatusCode::OK, body)) =
        backend.proxy.call(Method::GET, &path, None, backend.config.response_timeout).await
    else {
        return None;
    };
    let Value::Object(mut entries) = serde_json::from_slice::<Value>(&body).ok()? else { return None };
    let found = entries.remove(internal)?;
    let outputs = found.get("prompt").and_then(|p| p.get(4)).cloned().unwrap_or_else(|| json!([]));
    let entry = json!({
        "prompt": prompt_item(job, viewer, outputs),
        "outputs": found.get("outputs").cloned().unwrap_or_else(|| json!({})),
        "status": found.get("status").cloned().unwrap_or_else(|| json!({})),
        "meta": found.get("meta").cloned().unwrap_or_else(|| json!({})),
    });
    Some(as_known_by(entry, internal, shown_id(job, viewer.id)))
}

/// An entry with the gateway's id replaced by the one the viewer knows.
fn as_known_by(entry: Value, internal: &str, shown: &str) -> Value {
    if internal == shown {
        return entry;
    }
    serde_json::from_str(&renamed(&entry.to_string(), internal, shown)).unwrap_or(entry)
}

/// Where a list starts and how many entries it has, by ComfyUI's rules (`offset` -1 by
/// default; a negative offset with `max_items` means the last `max_items`).
fn window(count: i64, max_items: Option<i64>, offset: i64) -> (i64, i64) {
    let start = match (offset < 0, max_items) {
        (true, Some(max)) => (count - max).max(0),
        (true, None) => 0,
        (false, _) => offset,
    };
    let available = (count - start).max(0);
    (start, max_items.map_or(available, |m| m.max(0).min(available)))
}

/// `GET /history?max_items=&offset=`: streamed from the store, oldest first as ComfyUI
/// lists it.
pub async fn list(app: &AppState, scope: Scope, viewer: i64, query: Option<&str>) -> Result<Response, ApiError> {
    let (mut max_items, mut offset) = (None, -1);
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = || v.trim().parse::<i64>().map_err(|_| ApiError::BadRequest(format!("{k} must be an integer")));
        match k.as_ref() {
            "max_items" => max_items = Some(number()?),
            "offset" => offset = number()?,
            _ => {}
        }
    }
    let user = match scope {
        Scope::Owner(user) => Some(user),
        Scope::All => None,
    };
    let store = app.scheduler.store().clone();
    let count = store.history_count(user).await.map_err(unavailable)?;
    let (start, total) = window(count, max_items, offset);
    let pages = Pages { store, user, viewer, next: start, left: total, written: 0, opened: false, closed: false };
    let stream = futures_util::stream::unfold(pages, |mut pages| async move {
        let chunk = pages.next_chunk().await?;
        Some((chunk, pages))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    Ok(response)
}

/// A history list being streamed.
struct Pages {
    store: Arc<dyn Store>,
    user: Option<i64>,
    viewer: i64,
    next: i64,
    left: i64,
    written: u64,
    opened: bool,
    closed: bool,
}

impl Pages {
    /// The next piece of the JSON object; `None` once it is complete.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.closed {
            return None;
        }
        let mut out = String::new();
        if !self.opened {
            self.opened = true;
            out.push('{');
        }
        if self.left > 0 {
            let jobs = match self.store.history_page(self.user, self.next, self.left.min(PAGE)).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::error!(error = %e, "history page failed");
                    self.closed = true;
                    return Some(Err(std::io::Error::other("the job store failed while the history streamed")));
                }
            };
            if jobs.is_empty() {
                self.left = 0;
            }
            for job in &jobs {
                if self.written > 0 {
                    out.push(',');
                }
                self.written += 1;
                let key = Value::String(shown_id(job, self.viewer).to_owned());
                out.push_str(&key.to_string());
                out.push(':');
                out.push_str(&entry(job, Viewer { id: self.viewer, admin: self.user.is_none() }).to_string());
                self.next += 1;
                self.left -= 1;
            }
        }
        if self.left <= 0 {
            out.push('}');
            self.closed = true;
        }
        Some(Ok(Bytes::from(out)))
    }
}

/// `POST /history {"delete": [ids]}` / `{"clear": true}`: entries leave the caller's history
/// (the store keeps the job, e.g. for hourly limits); the backends' own copies go too.
pub async fn action(app: &AppState, scope: Scope, viewer: i64, req: Request<Body>) -> Result<Response, ApiError> {
    let body = read_json(app, req).await?;
    let ids: Vec<String> =
        body["delete"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    let store = app.scheduler.store();
    let user = match scope {
        Scope::Owner(user) => Some(user),
        Scope::All => None,
    };
    if body["clear"].as_bool() == Some(true) {
        store.hide_history(user, None).await.map_err(unavailable)?;
        if matches!(scope, Scope::All) {
            for backend in app.scheduler.pool().healthy() {
                let clear = Some(Bytes::from_static(br#"{"clear":true}"#));
                let _ = backend.proxy.call(Method::POST, "/history", clear, backend.config.response_timeout).await;
            }
        }
    }
    let pool = app.scheduler.pool();
    for id in ids {
        let Some((id, owner, backend)) = app.scheduler.locate(scope, viewer, &id).await else { continue };
        if !scope.covers(owner) {
            continue;
        }
        store.hide_history(Some(owner), Some(std::slice::from_ref(&id))).await.map_err(unavailable)?;
        if let Some(backend) = backend.as_deref().and_then(|b| pool.get(b)) {
            let body = json!({"delete": [id]}).to_string();
            let _ =
                backend.proxy.call(Method::POST, "/history", Some(body.into()), backend.config.response_timeout).await;
        }
    }
    Ok(ok_empty())
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "history lookup failed");
    ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
}

#[cfg(test)]
mod tests {
    use super::window;

    #[test]
    fn the_window_follows_comfyuis_rules() {
        // (count, max_items, offset) → (start, how many)
        let cases = [
            ((10, None, -1), (0, 10)),
            ((10, Some(3), -1), (7, 3)),
            ((10, Some(30), -1), (0, 10)),
            ((10, Some(3), 2), (2, 3)),
            ((10, None, 4), (4, 6)),
            ((10, Some(3), 9), (9, 1)),
            ((10, Some(3), 20), (20, 0)),
            ((0, Some(5), -1), (0, 0)),
            ((10, Some(-2), -1), (12, 0)),
            ((10, Some(0), -1), (10, 0)),
        ];
        for ((count, max, offset), expected) in cases {
            assert_eq!(window(count, max, offset), expected, "{count} {max:?} {offset}");
        }
    }
}

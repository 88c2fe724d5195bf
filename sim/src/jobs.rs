//! ComfyUI's jobs API (`GET /api/jobs`, `GET /api/jobs/{id}`, `comfy_execution/jobs.py`) over the
//! simulator's own queue and history: one shape for every job, whatever its state.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::json::J;
use crate::state::{AppState, QueueItem};

fn value(j: &J) -> Value {
    serde_json::from_str(&j.dumps()).unwrap_or(Value::Null)
}

fn answer(status: StatusCode, v: &Value) -> Response {
    (status, [("content-type", "application/json; charset=utf-8")], v.to_string()).into_response()
}

/// A queued or running item.
fn queued(item: &QueueItem, status: &str, full: bool) -> Value {
    let extra = value(&item.extra_data);
    let mut out = Map::new();
    out.insert("id".into(), item.prompt_id.clone().into());
    out.insert("status".into(), status.into());
    out.insert("priority".into(), value(&item.number));
    if let Some(t) = extra.get("create_time").filter(|t| !t.is_null()) {
        out.insert("create_time".into(), t.clone());
    }
    out.insert("outputs_count".into(), 0.into());
    if let Some(id) = extra.pointer("/extra_pnginfo/workflow/id").filter(|v| !v.is_null()) {
        out.insert("workflow_id".into(), id.clone());
    }
    if full {
        out.insert("workflow".into(), json!({"prompt": value(&item.prompt), "extra_data": extra}));
    }
    Value::Object(out)
}

/// A history entry.
fn ended(id: &str, entry: &J, full: bool) -> Value {
    let entry = value(entry);
    let item = &entry["prompt"];
    let extra = item.get(3).cloned().unwrap_or(Value::Null);
    let status = entry.get("status").cloned().unwrap_or_else(|| json!({}));
    let outputs = entry.get("outputs").cloned().unwrap_or_else(|| json!({}));
    let failed = status["status_str"] == "error"
        && !status["messages"].as_array().into_iter().flatten().any(|m| m[0] == "execution_interrupted");
    let mut out = Map::new();
    out.insert("id".into(), id.into());
    out.insert("status".into(), if failed { "failed" } else { "completed" }.into());
    out.insert("priority".into(), item.get(0).cloned().unwrap_or(Value::Null));
    if let Some(t) = extra.get("create_time").filter(|t| !t.is_null()) {
        out.insert("create_time".into(), t.clone());
    }
    let (mut count, mut first, mut first_output) = (0, None, None);
    for (node, media) in outputs.as_object().into_iter().flatten() {
        for (kind, items) in media.as_object().into_iter().flatten() {
            for file in items.as_array().into_iter().flatten().filter_map(Value::as_object) {
                count += 1;
                let mut preview = file.clone();
                preview.insert("nodeId".into(), node.as_str().into());
                preview.insert("mediaType".into(), kind.as_str().into());
                if first_output.is_none() && file.get("type").and_then(Value::as_str) == Some("output") {
                    first_output = Some(Value::Object(preview.clone()));
                }
                first.get_or_insert(Value::Object(preview));
            }
        }
    }
    out.insert("outputs_count".into(), count.into());
    if let Some(id) = extra.pointer("/extra_pnginfo/workflow/id").filter(|v| !v.is_null()) {
        out.insert("workflow_id".into(), id.clone());
    }
    if let Some(preview) = first_output.or(first) {
        out.insert("preview_output".into(), preview);
    }
    let messages = status["messages"].as_array().cloned().unwrap_or_default();
    let find = |names: &[&str]| {
        messages.iter().find(|m| m[0].as_str().is_some_and(|n| names.contains(&n))).map(|m| m[1].clone())
    };
    if let Some(t) = find(&["execution_start"]).map(|d| d["timestamp"].clone()).filter(|t| !t.is_null()) {
        out.insert("execution_start_time".into(), t);
    }
    let end = ["execution_success", "execution_error", "execution_interrupted"];
    if let Some(t) = find(&end).map(|d| d["timestamp"].clone()).filter(|t| !t.is_null()) {
        out.insert("execution_end_time".into(), t);
    }
    if let Some(error) = find(&["execution_error"]) {
        out.insert("execution_error".into(), error);
    }
    if full {
        out.insert("outputs".into(), outputs);
        out.insert("execution_status".into(), status);
        let prompt = item.get(2).cloned().unwrap_or(Value::Null);
        out.insert("workflow".into(), json!({"prompt": prompt, "extra_data": extra}));
    }
    Value::Object(out)
}

fn duration(job: &Value) -> i64 {
    match (job["execution_start_time"].as_i64(), job["execution_end_time"].as_i64()) {
        (Some(s), Some(e)) => e - s,
        _ => 0,
    }
}

fn bad(message: &str) -> Response {
    answer(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

/// `GET /api/jobs`.
pub async fn list(State(state): State<Arc<AppState>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned());
    const STATUSES: [&str; 4] = ["pending", "in_progress", "completed", "failed"];
    let statuses: Vec<String> = match param("status") {
        Some(s) => s.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        None => Vec::new(),
    };
    if statuses.iter().any(|s| !STATUSES.contains(&s.as_str())) {
        return bad("invalid status");
    }
    let wants = |s: &str| statuses.is_empty() || statuses.iter().any(|w| w == s);
    let by_duration = match param("sort_by").as_deref() {
        None | Some("created_at") => false,
        Some("execution_duration") => true,
        Some(_) => return bad("sort_by must be 'created_at' or 'execution_duration'"),
    };
    let ascending = match param("sort_order").as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return bad("sort_order must be 'asc' or 'desc'"),
    };
    let number = |k: &str| param(k).map(|v| v.parse::<usize>());
    let limit = match number("limit") {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return bad("limit must be a non-negative integer"),
    };
    let offset = match number("offset") {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => return bad("offset must be a non-negative integer"),
    };
    let mut jobs: Vec<Value> = Vec::new();
    {
        let inner = state.lock();
        if let Some(running) = inner.running.as_ref().filter(|_| wants("in_progress")) {
            jobs.push(queued(&running.item, "in_progress", false));
        }
        if wants("pending") {
            jobs.extend(inner.sorted_pending().into_iter().map(|i| queued(i, "pending", false)));
        }
        for (id, entry) in &inner.history {
            let job = ended(id, entry, false);
            if job["status"].as_str().is_some_and(wants) {
                jobs.push(job);
            }
        }
    }
    // Stable: jobs without a create time keep the order above.
    jobs.sort_by(|a, b| {
        let key = |j: &Value| if by_duration { duration(j) } else { j["create_time"].as_i64().unwrap_or(0) };
        if ascending { key(a).cmp(&key(b)) } else { key(b).cmp(&key(a)) }
    });
    let total = jobs.len();
    let page: Vec<Value> = jobs.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
    answer(StatusCode::OK, &json!({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total}}))
}

/// `GET /api/jobs/{id}`: history first, then running, then pending.
pub async fn one(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let inner = state.lock();
    let found = if let Some(entry) = inner.history.get(&id) {
        Some(ended(&id, entry, true))
    } else if let Some(running) = inner.running.as_ref().filter(|r| r.item.prompt_id == id) {
        Some(queued(&running.item, "in_progress", true))
    } else {
        inner.pending.iter().find(|i| i.prompt_id == id).map(|i| queued(i, "pending", true))
    };
    drop(inner);
    match found {
        Some(job) => answer(StatusCode::OK, &job),
        None => answer(StatusCode::NOT_FOUND, &json!({"error": "Job not found"})),
    }
}

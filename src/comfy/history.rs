//! History: one job's entry comes from the backend that ran it (or the gateway's own record
//! of why it failed); the list merges every backend, newest first, limited to the caller's
//! own jobs.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, StatusCode};
use serde_json::{Map, Value, json};

use super::{json_response, ok_empty, read_json};
use crate::http::ApiError;
use crate::scheduler::control::Scope;
use crate::state::AppState;
use crate::store::{JobRef, JobState};

/// Recent jobs of a user considered for the history list.
const OWN_JOBS: i64 = 10_000;

/// `GET /history/{id}`: `id` as the viewer knows the job (their own id; for admins, also
/// anyone's gateway id). Another user's id is answered like an unknown one.
pub async fn one(app: &AppState, scope: Scope, viewer: i64, id: &str) -> Result<Response, ApiError> {
    let store = app.scheduler.store();
    let job = match store.job_of(viewer, id).await.map_err(unavailable)? {
        Some(job) => Some(job),
        None if matches!(scope, Scope::All) => store.job(id).await.map_err(unavailable)?,
        None => None,
    };
    let Some(job) = job.filter(|j| scope.covers(j.user_id)) else {
        return Ok(json_response(StatusCode::OK, &json!({})));
    };
    let internal = job.prompt_id.as_str();
    let own = job.user_id == viewer;
    let shown = if own { job.public_id.as_str() } else { internal };
    if let Some(backend) = job.backend.as_deref().and_then(|b| app.scheduler.pool().get(b)) {
        let path =
            format!("/history/{}", percent_encoding::utf8_percent_encode(internal, percent_encoding::NON_ALPHANUMERIC));
        if let Ok((StatusCode::OK, body)) =
            backend.proxy.call(Method::GET, &path, None, backend.config.response_timeout).await
        {
            if let Ok(Value::Object(mut entries)) = serde_json::from_slice::<Value>(&body) {
                if let Some(mut entry) = entries.remove(internal) {
                    set_client_id(&mut entry, if own { &job.client_id } else { "" });
                    if !own {
                        if let Some(extra) = entry.get_mut("prompt").and_then(|p| p.get_mut(3)) {
                            crate::scheduler::strip_secrets(extra);
                        }
                    }
                    let entry = as_known_by(entry, internal, shown);
                    return Ok(json_response(StatusCode::OK, &json!({ shown: entry })));
                }
            }
        }
    }
    if matches!(job.state, JobState::Failed | JobState::Cancelled) {
        let request: Value = serde_json::from_str(&job.request).unwrap_or(Value::Null);
        let mut extra = request.get("extra_data").cloned().unwrap_or_else(|| json!({}));
        if !job.client_id.is_empty() && own {
            extra["client_id"] = Value::String(job.client_id.clone());
        }
        if !own {
            crate::scheduler::strip_secrets(&mut extra);
        }
        let error = crate::scheduler::execution_error(shown, job.error.as_deref().unwrap_or("failed"));
        let entry = json!({
            "prompt": [job.number, shown, request.get("prompt").cloned().unwrap_or(Value::Null), extra, []],
            "outputs": {},
            "status": {"status_str": "error", "completed": false, "messages": [["execution_error", error]]},
            "meta": {},
        });
        return Ok(json_response(StatusCode::OK, &json!({ shown: entry })));
    }
    Ok(json_response(StatusCode::OK, &json!({})))
}

/// A backend's history entry with the gateway's id replaced by the one the viewer knows.
fn as_known_by(entry: Value, internal: &str, shown: &str) -> Value {
    if internal == shown {
        return entry;
    }
    let text = crate::scheduler::renamed(&entry.to_string(), internal, shown);
    serde_json::from_str(&text).unwrap_or(entry)
}

/// `GET /history?max_items=&offset=`.
pub async fn list(app: &AppState, scope: Scope, viewer: i64, query: Option<&str>) -> Result<Response, ApiError> {
    let mut max_items: Option<usize> = None;
    let mut offset = 0usize;
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "max_items" => max_items = v.parse().ok(),
            "offset" => offset = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    let mine: HashMap<String, JobRef> = app
        .scheduler
        .store()
        .job_refs_of(viewer, OWN_JOBS)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|r| (r.prompt_id.clone(), r))
        .collect();
    let only_mine = matches!(scope, Scope::Owner(_));
    let mut entries: Vec<(i64, String, Value)> = Vec::new();
    for backend in app.scheduler.pool().healthy() {
        let Ok((StatusCode::OK, body)) =
            backend.proxy.call(Method::GET, "/history", None, backend.config.response_timeout).await
        else {
            continue;
        };
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&body) else { continue };
        for (id, mut entry) in map {
            let own = mine.get(&id);
            if only_mine && own.is_none() {
                continue;
            }
            // The backend saw the gateway's own client id: the owner gets theirs back, others none.
            set_client_id(&mut entry, own.map_or("", |r| r.client_id.as_str()));
            let Some(own) = own else {
                if let Some(extra) = entry.get_mut("prompt").and_then(|p| p.get_mut(3)) {
                    crate::scheduler::strip_secrets(extra);
                }
                entries.push((started_at(&entry), id, entry));
                continue;
            };
            let entry = as_known_by(entry, &id, &own.public_id);
            entries.push((started_at(&entry), own.public_id.clone(), entry));
        }
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let selected: Map<String, Value> = entries
        .into_iter()
        .skip(offset)
        .take(max_items.unwrap_or(usize::MAX))
        .map(|(_, id, entry)| (id, entry))
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Object(selected)))
}

/// `POST /history {"delete": [ids]}` / `{"clear": true}`, on the backends that hold them.
pub async fn action(app: &AppState, scope: Scope, viewer: i64, req: Request<Body>) -> Result<Response, ApiError> {
    let body = read_json(app, req).await?;
    let mut ids: Vec<String> =
        body["delete"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    let clear = body["clear"].as_bool() == Some(true);
    let pool = app.scheduler.pool();
    if clear {
        match scope {
            Scope::All => {
                for backend in pool.healthy() {
                    let _ = backend
                        .proxy
                        .call(
                            Method::POST,
                            "/history",
                            Some(r#"{"clear":true}"#.into()),
                            backend.config.response_timeout,
                        )
                        .await;
                }
            }
            Scope::Owner(user) => {
                let refs = app.scheduler.store().job_refs_of(user, OWN_JOBS).await.map_err(unavailable)?;
                ids.extend(refs.into_iter().map(|r| r.public_id));
            }
        }
    }
    for id in ids {
        let Some((id, owner, Some(backend))) = app.scheduler.locate(scope, viewer, &id).await else { continue };
        let Some(backend) = pool.get(&backend).filter(|_| scope.covers(owner)) else { continue };
        let body = json!({"delete": [id]}).to_string();
        let _ = backend.proxy.call(Method::POST, "/history", Some(body.into()), backend.config.response_timeout).await;
    }
    Ok(ok_empty())
}

/// When the job started, from its `execution_start` message (0 if unknown).
fn started_at(entry: &Value) -> i64 {
    entry["status"]["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m[0].as_str() == Some("execution_start"))
        .and_then(|m| m[1]["timestamp"].as_i64())
        .unwrap_or(0)
}

/// Puts the submitter's own `client_id` back in a history entry.
fn set_client_id(entry: &mut Value, client_id: &str) {
    if let Some(extra) = entry.get_mut("prompt").and_then(|p| p.get_mut(3)).and_then(Value::as_object_mut) {
        if client_id.is_empty() {
            extra.remove("client_id");
        } else {
            extra.insert("client_id".to_owned(), Value::String(client_id.to_owned()));
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "history lookup failed");
    ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
}

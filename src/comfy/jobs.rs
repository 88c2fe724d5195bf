//! ComfyUI's jobs API (`GET /api/jobs`, `GET /api/jobs/{id}`), answered by the gateway for the
//! whole pool: jobs the scheduler holds are `pending` (waiting in the gateway or on a
//! backend's queue) or `in_progress` (running), ended ones come from the history the gateway
//! keeps. The same jobs, under the same ids, as `/queue` and `/history` show: a user sees their
//! own by the ids they know them by, admins see everyone's.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::json_response;
use crate::http::ApiError;
use crate::scheduler::control::{JobSummary, Scope};
use crate::scheduler::{renamed, shown_extra, with_owner};
use crate::state::AppState;
use crate::store::{Job, JobState};
use axum::response::Response;

/// Jobs in one page at most (and by default).
pub const MAX_LIMIT: usize = 500;
/// Deepest `offset` taken: a page by creation time reads at most `offset + limit` ended jobs.
pub const MAX_OFFSET: usize = 5_000;
/// Ended jobs (the most recently submitted) sorted by execution duration.
pub const DURATION_WINDOW: usize = 1_000;

/// A job's status in ComfyUI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
}

impl Status {
    const ALL: [Status; 4] = [Status::Pending, Status::InProgress, Status::Completed, Status::Failed];

    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    fn of_held(state: JobState) -> Status {
        if state == JobState::Running { Status::InProgress } else { Status::Pending }
    }

    /// An ended job: failed when it failed, completed otherwise (interrupted included, as
    /// ComfyUI counts them).
    fn of_ended(state: JobState) -> Status {
        if state == JobState::Failed { Status::Failed } else { Status::Completed }
    }
}

/// What a list asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    statuses: Vec<Status>,
    by_duration: bool,
    ascending: bool,
    limit: usize,
    offset: usize,
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// Parses the list's query; anything malformed is a 400 naming the parameter.
fn parse_query(query: Option<&str>) -> Result<Query, ApiError> {
    let mut q =
        Query { statuses: Status::ALL.to_vec(), by_duration: false, ascending: false, limit: MAX_LIMIT, offset: 0 };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let v = v.trim();
        match k.as_ref() {
            "status" => {
                let mut statuses = Vec::new();
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let status = Status::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
                        let shown: String = name.chars().take(40).collect();
                        bad(format!(
                            "unknown status {shown:?}: use pending, in_progress, completed or failed, comma-separated"
                        ))
                    })?;
                    if !statuses.contains(&status) {
                        statuses.push(status);
                    }
                }
                if !statuses.is_empty() {
                    q.statuses = statuses;
                }
            }
            "sort_by" => {
                q.by_duration = match v {
                    "created_at" => false,
                    "execution_duration" => true,
                    _ => return Err(bad("sort_by must be created_at or execution_duration".to_owned())),
                }
            }
            "sort_order" => {
                q.ascending = match v {
                    "asc" => true,
                    "desc" => false,
                    _ => return Err(bad("sort_order must be asc or desc".to_owned())),
                }
            }
            "limit" => {
                let limit: usize = v.parse().map_err(|_| bad("limit must be a non-negative integer".to_owned()))?;
                q.limit = limit.min(MAX_LIMIT);
            }
            "offset" => {
                let offset: usize = v.parse().map_err(|_| bad("offset must be a non-negative integer".to_owned()))?;
                if offset > MAX_OFFSET {
                    return Err(bad(format!("offset is at most {MAX_OFFSET}")));
                }
                q.offset = offset;
            }
            _ => {}
        }
    }
    Ok(q)
}

/// One job of a list before it is written: its sort keys and its JSON.
struct Listed {
    created_at: i64,
    number: i64,
    duration: i64,
    value: Value,
    /// A held job's gateway id: its `workflow_id` is read once it is on the page.
    held: Option<String>,
}

/// `GET /api/jobs`.
pub async fn list(app: &AppState, scope: Scope, viewer: i64, query: Option<&str>) -> Result<Response, ApiError> {
    let q = parse_query(query)?;
    let admin = matches!(scope, Scope::All);
    let user = match scope {
        Scope::Owner(user) => Some(user),
        Scope::All => None,
    };
    let mut items: Vec<Listed> = Vec::new();
    app.scheduler.fresh().await;
    let mut held: Vec<JobSummary> =
        app.scheduler.held_jobs(scope).into_iter().filter(|j| q.statuses.contains(&Status::of_held(j.state))).collect();
    let mut ended_total = 0;
    let wants = |s| q.statuses.contains(&s);
    let failed = match (wants(Status::Completed), wants(Status::Failed)) {
        (true, true) => Some(None),
        (true, false) => Some(Some(false)),
        (false, true) => Some(Some(true)),
        (false, false) => None,
    };
    if let Some(failed) = failed {
        let store = app.scheduler.store();
        let count = store.ended_count(user, failed).await.map_err(unavailable)?;
        ended_total = usize::try_from(count).unwrap_or(0);
        // By creation time, the page needs at most `offset + limit` ended jobs in that order;
        // by duration, the most recently submitted window is sorted.
        let (newest_first, read) =
            if q.by_duration { (true, DURATION_WINDOW) } else { (!q.ascending, q.offset + q.limit) };
        let read = i64::try_from(read).unwrap_or(i64::MAX);
        let ended = store.ended_jobs(user, failed, newest_first, 0, read).await.map_err(unavailable)?;
        // A job that ended between the snapshot and the read is shown once, as ended.
        let ended_ids: std::collections::HashSet<&str> = ended.iter().map(|j| j.prompt_id.as_str()).collect();
        held.retain(|j| !ended_ids.contains(j.id.as_str()));
        items.extend(ended.iter().map(|job| {
            let value = ended_job(job, viewer, admin, false);
            let duration = duration_of(&value);
            Listed { created_at: job.created_at, number: job.number, duration, value, held: None }
        }));
    }
    let total = held.len() + ended_total;
    for job in &held {
        let value = held_job(job, None, viewer, admin, None);
        let held = Some(job.id.clone());
        items.push(Listed { created_at: job.created_at, number: job.number, duration: 0, value, held });
    }
    items.sort_by(|a, b| {
        let key =
            |l: &Listed| if q.by_duration { (l.duration, l.created_at, l.number) } else { (l.created_at, l.number, 0) };
        if q.ascending { key(a).cmp(&key(b)) } else { key(b).cmp(&key(a)) }
    });
    let mut page: Vec<Listed> = items.into_iter().skip(q.offset).take(q.limit).collect();
    // Only the page's held jobs have their workflows read (an admin's view may hold thousands).
    let ids: Vec<String> = page.iter().filter_map(|l| l.held.clone()).collect();
    if !ids.is_empty() {
        let requests = app.scheduler.store().job_requests(&ids).await.map_err(unavailable)?;
        for listed in &mut page {
            let request = listed.held.as_ref().and_then(|id| requests.get(id));
            let id = request.and_then(|r| serde_json::from_str::<Value>(r).ok()).as_ref().and_then(workflow_id);
            if let (Some(id), Some(map)) = (id, listed.value.as_object_mut()) {
                map.insert("workflow_id".into(), id);
            }
        }
    }
    let jobs: Vec<Value> = page.into_iter().map(|l| l.value).collect();
    let body = json!({"jobs": jobs, "pagination": {"offset": q.offset, "limit": q.limit, "total": total}});
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /api/jobs/{id}`: `id` as the viewer knows the job. Unknown, and another user's, are
/// the same 404.
pub async fn one(app: &AppState, scope: Scope, viewer: i64, id: &str) -> Result<Response, ApiError> {
    let admin = matches!(scope, Scope::All);
    let not_found = || Ok(json_response(StatusCode::NOT_FOUND, &json!({"error": "Job not found"})));
    let store = app.scheduler.store();
    app.scheduler.fresh().await;
    if let Some(held) = app.scheduler.held_job(scope, viewer, id) {
        let job = store.job(&held.id).await.map_err(unavailable)?;
        let request = job.as_ref().and_then(|j| serde_json::from_str::<Value>(&j.request).ok());
        let client_id = job.as_ref().map(|j| j.client_id.as_str()).unwrap_or_default();
        let value = held_job(&held, request.as_ref(), viewer, admin, Some(client_id));
        return Ok(json_response(StatusCode::OK, &value));
    }
    let job = match store.job_of(viewer, id).await.map_err(unavailable)? {
        Some(job) => Some(job),
        None if admin => store.job(id).await.map_err(unavailable)?,
        None => None,
    };
    match job.filter(|j| scope.covers(j.user_id) && j.in_history && j.outcome.is_some()) {
        Some(job) => Ok(json_response(StatusCode::OK, &ended_job(&job, viewer, admin, true))),
        None => not_found(),
    }
}

/// `extra_data.extra_pnginfo.workflow.id` of a request.
fn workflow_id(request: &Value) -> Option<Value> {
    request.pointer("/extra_data/extra_pnginfo/workflow/id").filter(|v| !v.is_null()).cloned()
}

/// The `workflow` of the one-job form: the prompt and the extra data as the viewer may see it.
fn workflow(request: &Value, client_id: &str, own: bool, owner: (&str, Option<&str>), admin: bool) -> Value {
    let extra = request.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    let extra = shown_extra(extra, client_id, own);
    let extra = if admin { with_owner(extra, owner.0, owner.1) } else { extra };
    json!({"prompt": request.get("prompt").cloned().unwrap_or(Value::Null), "extra_data": extra})
}

/// A held job; `full` (the client id known) for the one-job form.
fn held_job(job: &JobSummary, request: Option<&Value>, viewer: i64, admin: bool, full: Option<&str>) -> Value {
    let shown = job.shown_id(viewer);
    let mut out = Map::new();
    out.insert("id".into(), shown.into());
    out.insert("status".into(), Status::of_held(job.state).as_str().into());
    out.insert("priority".into(), job.number.into());
    out.insert("create_time".into(), job.created_at.into());
    out.insert("outputs_count".into(), 0.into());
    if let Some(id) = request.and_then(workflow_id) {
        out.insert("workflow_id".into(), id);
    }
    if admin {
        out.insert("comfygate".into(), json!({"owner": job.username, "backend": job.backend}));
    }
    if let (Some(client_id), Some(request)) = (full, request) {
        let owner = (job.username.as_str(), job.backend.as_deref());
        out.insert("workflow".into(), workflow(request, client_id, job.owner == viewer, owner, admin));
    }
    as_known_by(Value::Object(out), &job.id, shown)
}

/// An ended job from its stored history entry; `full` for the one-job form.
fn ended_job(job: &Job, viewer: i64, admin: bool, full: bool) -> Value {
    let shown = if job.user_id == viewer { job.public_id.as_str() } else { job.prompt_id.as_str() };
    let outcome: Value = job.outcome.as_deref().and_then(|o| serde_json::from_str(o).ok()).unwrap_or(Value::Null);
    let request: Value = serde_json::from_str(&job.request).unwrap_or(Value::Null);
    let outputs = outcome.get("outputs").cloned().unwrap_or_else(|| json!({}));
    let status = outcome.get("status").cloned().unwrap_or_else(|| json!({}));
    let mut out = Map::new();
    out.insert("id".into(), shown.into());
    out.insert("status".into(), Status::of_ended(job.state).as_str().into());
    out.insert("priority".into(), job.number.into());
    out.insert("create_time".into(), job.created_at.into());
    let (count, preview) = previews(&outputs);
    out.insert("outputs_count".into(), count.into());
    if let Some(id) = workflow_id(&request) {
        out.insert("workflow_id".into(), id);
    }
    if let Some(preview) = preview {
        out.insert("preview_output".into(), preview);
    }
    let messages = status.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let message = |names: &[&str]| {
        messages
            .iter()
            .find(|m| m.get(0).and_then(Value::as_str).is_some_and(|n| names.contains(&n)))
            .and_then(|m| m.get(1))
    };
    if let Some(t) = message(&["execution_start"]).and_then(|d| d.get("timestamp")).filter(|t| t.is_number()) {
        out.insert("execution_start_time".into(), t.clone());
    }
    let end = ["execution_success", "execution_error", "execution_interrupted"];
    if let Some(t) = message(&end).and_then(|d| d.get("timestamp")).filter(|t| t.is_number()) {
        out.insert("execution_end_time".into(), t.clone());
    }
    if let Some(error) = message(&["execution_error"]) {
        out.insert("execution_error".into(), error.clone());
    }
    if admin {
        out.insert("comfygate".into(), json!({"owner": job.username, "backend": job.backend}));
    }
    if full {
        out.insert("outputs".into(), outputs);
        out.insert("execution_status".into(), status);
        let owner = (job.username.as_str(), job.backend.as_deref());
        out.insert("workflow".into(), workflow(&request, &job.client_id, job.user_id == viewer, owner, admin));
    }
    as_known_by(Value::Object(out), &job.prompt_id, shown)
}

/// How many output files a history entry lists, and the first to preview (`type: output`
/// preferred) with `nodeId` and `mediaType` added.
fn previews(outputs: &Value) -> (usize, Option<Value>) {
    let (mut count, mut first, mut first_output) = (0, None, None);
    for (node, media) in outputs.as_object().into_iter().flatten() {
        for (kind, items) in media.as_object().into_iter().flatten() {
            for item in items.as_array().into_iter().flatten() {
                let Some(file) = item.as_object().filter(|f| f.contains_key("filename")) else { continue };
                count += 1;
                let mut preview = file.clone();
                preview.insert("nodeId".into(), node.as_str().into());
                preview.insert("mediaType".into(), kind.as_str().into());
                if first.is_none() {
                    first = Some(Value::Object(preview.clone()));
                }
                if first_output.is_none() && file.get("type").and_then(Value::as_str) == Some("output") {
                    first_output = Some(Value::Object(preview));
                }
            }
        }
    }
    (count, first_output.or(first))
}

/// End minus start, when both are known (0 otherwise, as ComfyUI sorts them).
fn duration_of(job: &Value) -> i64 {
    match (job["execution_start_time"].as_i64(), job["execution_end_time"].as_i64()) {
        (Some(start), Some(end)) => end.saturating_sub(start),
        _ => 0,
    }
}

/// A job with the gateway's id replaced by the one the viewer knows.
fn as_known_by(value: Value, internal: &str, shown: &str) -> Value {
    if internal == shown {
        return value;
    }
    serde_json::from_str(&renamed(&value.to_string(), internal, shown)).unwrap_or(value)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "jobs lookup failed");
    ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_refused() {
        let q =
            parse_query(Some("status=failed,pending&sort_by=execution_duration&sort_order=asc&limit=9000&offset=3"))
                .unwrap();
        assert_eq!(q.statuses, vec![Status::Failed, Status::Pending]);
        assert!(q.by_duration && q.ascending);
        assert_eq!((q.limit, q.offset), (MAX_LIMIT, 3));
        assert_eq!(parse_query(None).unwrap().statuses.len(), 4);
        for bad in
            ["status=done", "sort_by=name", "sort_order=up", "limit=-1", "limit=x", "offset=-2", "offset=9999999"]
        {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn previews_prefer_output_files() {
        let outputs =
            json!({"9": {"images": [{"filename": "t.png", "type": "temp"}, {"filename": "o.png", "type": "output"}]}});
        let (count, preview) = previews(&outputs);
        assert_eq!(count, 2);
        let preview = preview.unwrap();
        assert_eq!((preview["filename"].as_str(), preview["nodeId"].as_str()), (Some("o.png"), Some("9")));
        assert_eq!(preview["mediaType"], "images");
    }
}

//! `GET /comfygate/api/usage`: the usage ledger's totals (admins: anyone's; a user: their own).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::Event;
use crate::http::{ApiError, Caller, RequestContext};
use crate::state::AppState;
use crate::store::{UsageGroup, UsageQuery};
use crate::time::now_ms;
use crate::usage::window::parse_time;

/// `GET /comfygate/api/usage` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
    user: Option<String>,
}

/// `GET /comfygate/api/usage?since=30d&until=..&by=user|token|model|backend|day&user=NAME`:
/// `{since, until, by, user, rows: [{key, jobs, done, failed, cancelled, gpu_seconds,
/// mean_wait_seconds, outputs}]}`. A user who is not an admin sees only their own jobs (naming
/// anyone else is 403).
pub async fn usage(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query?;
    let now = now_ms();
    let since = parse_time(q.since.as_deref().unwrap_or("30d"), now)
        .map_err(|e| ApiError::BadRequest(format!("since: {e}")))?;
    let until = match &q.until {
        Some(text) => parse_time(text, now).map_err(|e| ApiError::BadRequest(format!("until: {e}")))?,
        None => now.saturating_add(1),
    };
    if until <= since {
        return Err(ApiError::BadRequest("until must be after since".to_owned()));
    }
    let by: UsageGroup = match &q.by {
        Some(text) => text.parse().map_err(|e| ApiError::BadRequest(format!("by: {e}")))?,
        None => UsageGroup::User,
    };
    let me = &caller.identity;
    let wanted = q.user.map(|u| u.trim().to_lowercase());
    let store = app.scheduler.store();
    let unavailable = |e: crate::store::StoreError| {
        tracing::warn!(error = %e, "cannot read the usage ledger");
        ApiError::Unavailable("the store is unavailable".to_owned())
    };
    let (user_id, username) = match wanted {
        None if me.is_admin() => (None, None),
        None => (Some(me.user_id), Some(me.username.to_string())),
        Some(name) if name == *me.username => (Some(me.user_id), Some(name)),
        Some(_) if !me.is_admin() => {
            return Err(ApiError::Forbidden("only admins see other users' usage".to_owned()));
        }
        Some(name) => match store.user_by_name(&name).await.map_err(unavailable)? {
            Some(user) => (Some(user.id), Some(user.username)),
            None => return Err(ApiError::NotFound("no such user".to_owned())),
        },
    };
    let rows = store.usage_totals(&UsageQuery { since, until, user_id, by }).await.map_err(unavailable)?;
    Ok(Json(json!({
        "since": since,
        "until": until,
        "by": by,
        "user": username,
        "rows": rows,
    })))
}

/// `POST /comfygate/api/backends/{name}/drain` and `/resume` body: an empty JSON object (a
/// JSON body, like every state-changing call of this API, so a cross-site form cannot send it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {}

/// `POST /comfygate/api/backends/{name}/drain` (admins): no new job for it, its jobs finish;
/// kept in the store, so every gateway applies it and it survives restarts.
pub async fn drain_backend(
    State(app): State<AppState>,
    admin: crate::http::AdminCaller,
    RequestContext(context): RequestContext,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<DrainBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    set_drain(app, admin, context, name, body, true).await
}

/// `POST /comfygate/api/backends/{name}/resume` (admins): back in service.
pub async fn resume_backend(
    State(app): State<AppState>,
    admin: crate::http::AdminCaller,
    RequestContext(context): RequestContext,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<DrainBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    set_drain(app, admin, context, name, body, false).await
}

async fn set_drain(
    app: AppState,
    crate::http::AdminCaller(admin): crate::http::AdminCaller,
    context: crate::audit::Context,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Json<DrainBody>, axum::extract::rejection::JsonRejection>,
    drained: bool,
) -> Result<Json<Value>, ApiError> {
    let Path(name) = name?;
    let Json(DrainBody {}) = body?;
    let Some(backend) = app.scheduler.pool().get(&name).filter(|b| !b.is_retiring()) else {
        return Err(ApiError::NotFound("no such backend in service".to_owned()));
    };
    let store = app.scheduler.store();
    let changed =
        store.set_backend_drain(backend.name(), drained, &admin.identity.username, now_ms()).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot record the backend drain");
            ApiError::Unavailable("the store is unavailable".to_owned())
        })?;
    if changed {
        let event = if drained { "backend_drained" } else { "backend_resumed" };
        let context = context.by(&admin.identity.username);
        app.audit.record(&context, Event::success(event).field("backend", backend.name())).await.map_err(|_| {
            ApiError::Unavailable("the audit log cannot be written: admin actions are refused until it can".to_owned())
        })?;
    }
    if backend.set_drained(drained) {
        app.scheduler.pool().forget_merged();
        app.scheduler.kick();
    }
    Ok(Json(json!({ "name": backend.name(), "drained": drained })))
}

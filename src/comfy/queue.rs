//! `POST /queue` (delete, clear) and `POST /interrupt`, limited to the caller's own jobs; an
//! admin's, which reach everyone's jobs, are audited first (and refused without their line).

use axum::body::Body;
use axum::response::Response;
use http::Request;

use serde_json::Value;

use super::{ok_empty, read_json};
use crate::audit::{Context, Event};
use crate::http::{ApiError, Caller};
use crate::scheduler::control::Scope;
use crate::state::AppState;

/// Prompt ids an admin action's audit line names at most (the rest are counted).
const AUDITED_IDS: usize = 100;

/// `POST /queue {"delete": [ids]}` and/or `{"clear": true}`.
pub async fn action(
    app: &AppState,
    caller: &Caller,
    context: &Context,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (scope, viewer) = (super::scope_of(caller), caller.identity.user_id);
    let body = read_json(app, req).await?;
    if body["clear"].as_bool() == Some(true) {
        audit_admin(app, scope, caller, context, Event::success("admin_queue_cleared")).await?;
        app.scheduler.clear(scope).await;
    }
    if let Some(ids) = body["delete"].as_array() {
        let ids: Vec<String> = ids.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        let named: Vec<Value> = ids.iter().take(AUDITED_IDS).map(|id| Value::from(cut(id))).collect();
        let event = Event::success("admin_jobs_deleted").field("prompt_ids", named).field("count", ids.len());
        audit_admin(app, scope, caller, context, event).await?;
        app.scheduler.delete(scope, viewer, &ids).await;
    }
    Ok(ok_empty())
}

/// `POST /interrupt` with an optional `{"prompt_id"}`.
pub async fn interrupt(
    app: &AppState,
    caller: &Caller,
    context: &Context,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (scope, viewer) = (super::scope_of(caller), caller.identity.user_id);
    let body = read_json(app, req).await?;
    let prompt_id = body["prompt_id"].as_str();
    let event = Event::success("admin_interrupt").field("prompt_id", prompt_id.map(cut));
    audit_admin(app, scope, caller, context, event).await?;
    app.scheduler.interrupt(scope, viewer, prompt_id).await;
    Ok(ok_empty())
}

/// Writes an admin's queue action to the audit log before it is done (a user's own actions
/// touch only their own jobs and are not audited).
async fn audit_admin(
    app: &AppState,
    scope: Scope,
    caller: &Caller,
    context: &Context,
    event: Event,
) -> Result<(), ApiError> {
    if matches!(scope, Scope::Owner(_)) {
        return Ok(());
    }
    let context = context.by(&caller.identity.username);
    app.audit.record(&context, event).await.map_err(|_| {
        ApiError::Unavailable("the audit log cannot be written: admin actions are refused until it can".to_owned())
    })
}

/// A client-given id, cut to a sane length for the audit line.
fn cut(id: &str) -> String {
    id.chars().take(80).collect()
}

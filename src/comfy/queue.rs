//! `POST /queue` (delete, clear) and `POST /interrupt`, limited to the caller's own jobs.

use axum::body::Body;
use axum::response::Response;
use http::Request;

use super::{ok_empty, read_json};
use crate::http::ApiError;
use crate::scheduler::control::Scope;
use crate::state::AppState;

/// `POST /queue {"delete": [ids]}` and/or `{"clear": true}`.
pub async fn action(app: &AppState, scope: Scope, viewer: i64, req: Request<Body>) -> Result<Response, ApiError> {
    let body = read_json(app, req).await?;
    if body["clear"].as_bool() == Some(true) {
        app.scheduler.clear(scope).await;
    }
    if let Some(ids) = body["delete"].as_array() {
        let ids: Vec<String> = ids.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        app.scheduler.delete(scope, viewer, &ids).await;
    }
    Ok(ok_empty())
}

/// `POST /interrupt` with an optional `{"prompt_id"}`.
pub async fn interrupt(app: &AppState, scope: Scope, viewer: i64, req: Request<Body>) -> Result<Response, ApiError> {
    let body = read_json(app, req).await?;
    app.scheduler.interrupt(scope, viewer, body["prompt_id"].as_str()).await;
    Ok(ok_empty())
}

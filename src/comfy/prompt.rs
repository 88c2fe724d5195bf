//! `POST /prompt` (into the gateway's queue) and `GET /prompt` (gateway-wide count).

use axum::body::Body;
use axum::response::Response;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use super::{bytes_response, json_response, read_json};
use crate::audit::{Context, Event};
use crate::auth::AuthMethod;
use crate::http::{ApiError, Caller};
use crate::scheduler::Submitter;
use crate::state::AppState;

/// `POST /prompt`, once per `Idempotency-Key` (see [`super::idempotency`]).
pub async fn submit(
    app: &AppState,
    caller: &Caller,
    context: &Context,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    super::idempotency::run(app, caller.identity.user_id, req, |req| queue(app, caller, context, req)).await
}

/// Queues one submission.
async fn queue(app: &AppState, caller: &Caller, context: &Context, req: Request<Body>) -> Result<Response, ApiError> {
    let Value::Object(mut body) = read_json(app, req).await? else {
        return Err(ApiError::BadRequest("the request body must be a JSON object".to_owned()));
    };
    // The files a workflow names are the caller's own: bound to their real place, or refused.
    if let Some(Value::Object(prompt)) = body.get_mut("prompt") {
        if let Err(rejection) = super::files::references::bind_workflow(app, caller, prompt).await {
            return Ok(json_response(StatusCode::BAD_REQUEST, &rejection));
        }
    }
    // A webhook is checked here, with the caller's answer in ComfyUI's error shape.
    if let Some(hook) = body.get("extra_data").and_then(|e| e.get("webhook")).filter(|h| !h.is_null()) {
        if let Err(why) = crate::webhooks::spec::parse(hook, &app.config.webhooks) {
            return Ok(crate::webhooks::refusal(&why));
        }
    }
    let token_id = match &caller.identity.method {
        AuthMethod::Token { token_id, .. } => Some(*token_id),
        AuthMethod::Session { .. } => None,
    };
    app.webhooks.apply_token_default(token_id, &mut body).await;
    let by = Submitter { user_id: caller.identity.user_id, username: &caller.identity.username, token_id };
    let answer = app.scheduler.submit(by, body).await.map_err(|e| {
        tracing::error!(error = %e, "cannot queue a prompt");
        ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
    })?;
    if answer.status == StatusCode::OK {
        tracing::debug!(username = %caller.identity.username, "prompt accepted");
    }
    if let Some(limit) = answer.limit {
        let event = Event::refused("quota_refused").user(&caller.identity.username).field("limit", limit);
        app.audit.note(context, event.field("status", answer.status.as_u16())).await;
    }
    let mut response = bytes_response(answer.status, answer.body);
    if let Some(seconds) = answer.retry_after {
        response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
    }
    Ok(response)
}

/// `GET /prompt`.
pub async fn status(app: &AppState) -> Response {
    app.scheduler.fresh().await;
    json_response(StatusCode::OK, &json!({"exec_info": {"queue_remaining": app.scheduler.queue_remaining()}}))
}

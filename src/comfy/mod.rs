//! ComfyUI-aware handlers: the routes whose answer depends on which backend holds a job or a
//! file, or that aggregate every backend. Everything else goes through the generic proxy to
//! the primary backend.

pub mod extension;
mod files;
mod history;
pub mod idempotency;
mod info;
mod jobs;
mod prompt;
mod queue;
pub mod ws;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode};
use serde_json::Value;

use crate::http::{ApiError, Caller, ClientInfo};
use crate::policy::NormalizedPath;
use crate::scheduler::control::Scope;
use crate::state::AppState;

/// A ComfyUI route the gateway answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /prompt`.
    Submit,
    /// `GET /prompt`.
    PromptStatus,
    /// `GET /queue`.
    Queue,
    /// `POST /queue`.
    QueueAction,
    /// `POST /interrupt`.
    Interrupt,
    /// `GET /history`.
    History,
    /// `GET /history/{id}`.
    HistoryOne(String),
    /// `POST /history`.
    HistoryAction,
    /// `GET /api/jobs` (every job, whatever its state).
    Jobs,
    /// `GET /api/jobs/{id}`.
    JobOne(String),
    /// `/jobs...` without `/api`: ComfyUI does not serve it; a 404, never forwarded.
    JobsNotServed,
    /// `GET` and `HEAD /view`.
    View,
    /// `POST /upload/image` and `/upload/mask`.
    Upload,
    /// `GET /system_stats`.
    SystemStats,
    /// `GET /object_info`.
    ObjectInfo,
    /// `GET /object_info/{class}`.
    ObjectInfoOne(String),
    /// `GET /models`.
    Models,
    /// `GET /models/{folder}`.
    ModelFolder(String),
    /// `POST /free` (every backend).
    Free,
    /// `GET /ws`.
    WebSocket,
    /// `GET /extensions` (the frontend's extension scripts, the gateway's added).
    Extensions,
    /// `GET /extensions/comfygate/account.js` (the gateway's own extension script).
    ExtensionScript,
}

/// The ComfyUI-aware route for a request, if any.
pub fn route(method: &Method, path: &NormalizedPath) -> Option<Route> {
    let segments = path.route();
    // HEAD is GET without the body (hyper drops it): it takes the same handler, checks included.
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    // ComfyUI registers the jobs routes with their `/api` prefix only (served as `/api/jobs`
    // and `/api/api/jobs`), unlike the others.
    let all = path.segments();
    let jobs = match all.as_slice() {
        ["api", "api", rest @ ..] | ["api", rest @ ..] => rest,
        _ => &[][..],
    };
    match (jobs, get) {
        (["jobs"], true) => return Some(Route::Jobs),
        (["jobs", id], true) => return Some(Route::JobOne((*id).to_owned())),
        _ => {}
    }
    if segments.first() == Some(&"jobs") {
        return Some(Route::JobsNotServed);
    }
    Some(match (segments.as_slice(), get, post) {
        (["prompt"], false, true) => Route::Submit,
        (["prompt"], true, _) => Route::PromptStatus,
        (["queue"], true, _) => Route::Queue,
        (["queue"], false, true) => Route::QueueAction,
        (["interrupt"], false, true) => Route::Interrupt,
        (["history"], true, _) => Route::History,
        (["history", id], true, _) => Route::HistoryOne((*id).to_owned()),
        (["history"], false, true) => Route::HistoryAction,
        (["view"], true, _) => Route::View,
        (["upload", "image" | "mask"], false, true) => Route::Upload,
        (["system_stats"], true, _) => Route::SystemStats,
        (["object_info"], true, _) => Route::ObjectInfo,
        (["object_info", class], true, _) => Route::ObjectInfoOne((*class).to_owned()),
        (["models"], true, _) => Route::Models,
        (["models", folder], true, _) => Route::ModelFolder((*folder).to_owned()),
        (["free"], false, true) => Route::Free,
        (["ws"], true, _) => Route::WebSocket,
        (["extensions"], true, _) => Route::Extensions,
        (["extensions", "comfygate", "account.js"], true, _) => Route::ExtensionScript,
        _ => return None,
    })
}

/// Answers a ComfyUI-aware route.
pub async fn handle(
    app: &AppState,
    caller: Caller,
    client: &ClientInfo,
    route: Route,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let scope = scope_of(&caller);
    match route {
        Route::Submit => {
            let context = crate::http::audit_context::of_headers(req.headers(), client);
            prompt::submit(app, &caller, &context, req).await
        }
        Route::PromptStatus => Ok(prompt::status(app).await),
        Route::Queue => match app.scheduler.queue_view(scope, caller.identity.user_id).await {
            Ok(view) => Ok(bytes_response(StatusCode::OK, Bytes::from(view))),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the queue's workflows");
                Err(ApiError::Unavailable("the job store is temporarily unavailable".to_owned()))
            }
        },
        Route::QueueAction => {
            let context = crate::http::audit_context::of_headers(req.headers(), client);
            queue::action(app, &caller, &context, req).await
        }
        Route::Interrupt => {
            let context = crate::http::audit_context::of_headers(req.headers(), client);
            queue::interrupt(app, &caller, &context, req).await
        }
        Route::History => history::list(app, scope, caller.identity.user_id, req.uri().query()).await,
        Route::HistoryOne(id) => history::one(app, scope, caller.identity.user_id, &id).await,
        Route::HistoryAction => history::action(app, scope, caller.identity.user_id, req).await,
        Route::Jobs => jobs::list(app, scope, caller.identity.user_id, req.uri().query()).await,
        Route::JobOne(id) => jobs::one(app, scope, caller.identity.user_id, &id).await,
        Route::JobsNotServed => Err(ApiError::NotFound("ComfyUI serves the jobs API under /api/jobs".to_owned())),
        Route::View => files::view(app, &caller, client, path, req).await,
        Route::Upload => files::upload(app, &caller, client, path, req).await,
        Route::SystemStats => info::system_stats(app).await,
        Route::ObjectInfo => info::object_info(app, &caller, None).await,
        Route::ObjectInfoOne(class) => info::object_info(app, &caller, Some(&class)).await,
        Route::Models => info::models(app, None).await,
        Route::ModelFolder(folder) => info::models(app, Some(&folder)).await,
        Route::Free => info::free(app, &caller.identity.username, req).await,
        Route::WebSocket => ws::upgrade(app, caller, req).await,
        Route::Extensions => extension::list(app).await,
        Route::ExtensionScript => Ok(extension::script()),
    }
}

fn scope_of(caller: &Caller) -> Scope {
    if caller.identity.is_admin() { Scope::All } else { Scope::Owner(caller.identity.user_id) }
}

/// A JSON response as aiohttp writes it.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    bytes_response(status, Bytes::from(value.to_string()))
}

/// A JSON body already serialised.
pub(crate) fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

/// An empty 200, as ComfyUI answers actions.
pub(crate) fn ok_empty() -> Response {
    StatusCode::OK.into_response()
}

/// Reads a JSON body (at most `server.max_request_body`, and 32 MiB); an empty body is `{}`.
pub(crate) async fn read_json(app: &AppState, req: Request<Body>) -> Result<Value, ApiError> {
    let limit = usize::try_from(app.config.server.max_request_body.as_u64()).unwrap_or(usize::MAX).min(MAX_JSON_BODY);
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| crate::http::error::unreadable_body(&e, limit))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))
}

/// Largest JSON body read by the gateway (workflows with embedded images can be large).
pub(crate) const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_jobs_routes_are_found_under_their_spellings() {
        let route_of = |method: &str, p: &str| {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            route(&method, &crate::policy::normalize(p).unwrap())
        };
        let id = |s: &str| Some(Route::JobOne(s.to_owned()));
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<Route>)] = &[
            ("GET", "/api/jobs", Some(Route::Jobs)),
            ("HEAD", "/api/jobs", Some(Route::Jobs)),
            ("GET", "/api/jobs/", Some(Route::Jobs)),
            ("GET", "/api//jobs", Some(Route::Jobs)),
            ("GET", "/api/./jobs", Some(Route::Jobs)),
            ("GET", "/api/api/jobs", Some(Route::Jobs)),
            ("GET", "/api/x/../jobs", Some(Route::Jobs)),
            ("GET", "/api/jobs/ID", id("ID")),
            ("GET", "/api/jobs/ID/", id("ID")),
            ("GET", "/api/jobs/a%2Fb", id("a/b")),
            ("GET", "/api/api/jobs/ID", id("ID")),
            ("GET", "/api/jobs/../queue", Some(Route::Queue)),
            ("GET", "/api/jobs/%2e%2e/queue", Some(Route::Queue)),
            ("GET", "/api/jobs/%2E%2E/history", Some(Route::History)),
            ("GET", "/jobs", Some(Route::JobsNotServed)),
            ("GET", "/jobs/ID", Some(Route::JobsNotServed)),
            ("POST", "/api/jobs", Some(Route::JobsNotServed)),
            ("GET", "/api/jobs/ID/x", Some(Route::JobsNotServed)),
            ("GET", "/API/jobs", None),
            ("GET", "/api/Jobs", None),
        ];
        for (method, p, expected) in cases {
            assert_eq!(&route_of(method, p), expected, "{method} {p}");
        }
    }
}

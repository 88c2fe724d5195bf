//! Files: `/view` goes to the backend that holds the file (outputs are recorded from job
//! events, uploads when they pass through), and uploads go to the least busy backend. A user
//! cannot view a file the gateway knows belongs to another user.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::backends::Backend;
use crate::http::{ApiError, Caller, ClientInfo};
use crate::policy::NormalizedPath;
use crate::state::AppState;
use crate::store::StoredFile;

/// Largest upload answer read back (it is a few dozen bytes).
const MAX_UPLOAD_ANSWER: usize = 64 * 1024;

/// `GET /view?filename=&type=&subfolder=`.
pub async fn view(
    app: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let (mut filename, mut kind, mut subfolder) = (String::new(), "output".to_owned(), String::new());
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "filename" => filename = v.into_owned(),
            "type" => kind = v.into_owned(),
            "subfolder" => subfolder = v.into_owned(),
            _ => {}
        }
    }
    let stored =
        app.scheduler.files().file(&kind, &subfolder, &filename, caller.identity.user_id).await.map_err(|e| {
            tracing::error!(error = %e, "file lookup failed");
            ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
        })?;
    let backend = match &stored {
        Some(file) => {
            let others = file.user_id.is_some_and(|owner| owner != caller.identity.user_id);
            if others && !caller.identity.is_admin() {
                return Err(ApiError::NotFound("no such file".to_owned()));
            }
            app.scheduler.pool().get(&file.backend).cloned()
        }
        None => None,
    };
    let backend = backend.or_else(|| app.scheduler.pool().primary()).ok_or_else(no_backend)?;
    Ok(backend.proxy.forward(req, &path.canonical, &caller.identity.username, &client.forwarded(), None).await?)
}

/// `POST /upload/image` and `/upload/mask`: streamed to the least busy healthy backend, which
/// is remembered so the prompt using the file goes there.
pub async fn upload(
    app: &AppState,
    caller: &Caller,
    client: &ClientInfo,
    path: &NormalizedPath,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let backend = least_busy(app).ok_or_else(no_backend)?;
    let response =
        backend.proxy.forward(req, &path.canonical, &caller.identity.username, &client.forwarded(), None).await?;
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = http_body_util::Limited::new(body, MAX_UPLOAD_ANSWER)
        .collect()
        .await
        .map_err(|_| {
            ApiError::BadGateway(format!("ComfyUI backend `{}` sent an unreadable upload answer", backend.name()))
        })?
        .to_bytes();
    if let Ok(answer) = serde_json::from_slice::<Value>(&bytes) {
        if let Some(name) = answer["name"].as_str() {
            let file = StoredFile {
                backend: backend.name().to_owned(),
                kind: answer["type"].as_str().unwrap_or("input").to_owned(),
                subfolder: answer["subfolder"].as_str().unwrap_or_default().to_owned(),
                filename: name.to_owned(),
                prompt_id: None,
                user_id: Some(caller.identity.user_id),
            };
            if let Err(e) = app.scheduler.files().record(&file).await {
                tracing::error!(error = %e, "cannot record an upload");
            }
        }
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

fn least_busy(app: &AppState) -> Option<Arc<Backend>> {
    let pool = app.scheduler.pool();
    pool.healthy().into_iter().min_by_key(|b| b.load().inflight.len()).or_else(|| pool.primary())
}

fn no_backend() -> ApiError {
    ApiError::BadGateway("no ComfyUI backend is configured".to_owned())
}

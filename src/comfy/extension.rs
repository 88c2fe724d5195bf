//! The gateway inside ComfyUI, without changing ComfyUI: `GET /extensions` (the frontend's list
//! of extension scripts to import) gains one script the gateway serves itself, which shows who
//! is logged in with links to the account page and to log out.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::json_response;
use crate::http::ApiError;
use crate::state::AppState;

/// Where the script is served (a path of ComfyUI's extension space the gateway answers itself).
pub const SCRIPT_PATH: &str = "/extensions/comfygate/account.js";

/// The script.
const SCRIPT: &str = include_str!("assets/account.js");

/// `GET /extensions`: the backend's list with the gateway's script added.
pub async fn list(app: &AppState) -> Result<Response, ApiError> {
    let backend = app
        .scheduler
        .pool()
        .primary()
        .ok_or_else(|| ApiError::BadGateway("no ComfyUI backend is configured".to_owned()))?;
    let (status, body) = backend.proxy.call(Method::GET, "/extensions", None, backend.config.response_timeout).await?;
    let mut scripts = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(scripts)) if status == StatusCode::OK => scripts,
        _ => {
            return Err(ApiError::BadGateway(format!(
                "ComfyUI backend `{}` answered GET /extensions with {status} and no list",
                backend.name()
            )));
        }
    };
    scripts.retain(|s| s.as_str() != Some(SCRIPT_PATH));
    scripts.push(Value::String(SCRIPT_PATH.to_owned()));
    Ok(json_response(StatusCode::OK, &Value::Array(scripts)))
}

/// `GET /extensions/comfygate/account.js`.
pub fn script() -> Response {
    let mut response = (StatusCode::OK, SCRIPT).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

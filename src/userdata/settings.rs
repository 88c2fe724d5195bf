//! `/settings` and `/settings/{id}`, as ComfyUI's `app_settings.py` answers them: one JSON
//! object in `comfy.settings.json` in the user's folder.

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Map, Value};

use super::reply;
use super::store::{UserDataError, UserDir};

/// ComfyUI's name for the settings file.
const SETTINGS_FILE: &str = "comfy.settings.json";

/// `GET /settings`: the object, or `{}`.
pub(super) async fn get_all(user: &UserDir) -> Result<Response, UserDataError> {
    Ok(reply::json(StatusCode::OK, &Value::Object(load(user).await?)))
}

/// `GET /settings/{id}`: the value, or `null`.
pub(super) async fn get_one(user: &UserDir, id: &str) -> Result<Response, UserDataError> {
    let value = load(user).await?.remove(id).unwrap_or(Value::Null);
    Ok(reply::json(StatusCode::OK, &value))
}

/// `POST /settings`: a JSON object merged into the settings.
pub(super) async fn merge(max_body: u64, user: &UserDir, body: Body) -> Result<Response, UserDataError> {
    let Value::Object(new) = read_json(max_body, body).await? else {
        return Err(UserDataError::InvalidJson);
    };
    update(user, |settings| settings.extend(new)).await
}

/// `POST /settings/{id}`: any JSON value stored under `id`.
pub(super) async fn set_one(max_body: u64, user: &UserDir, id: &str, body: Body) -> Result<Response, UserDataError> {
    let value = read_json(max_body, body).await?;
    update(user, |settings| {
        settings.insert(id.to_owned(), value);
    })
    .await
}

/// Reads, changes and saves the settings, one update at a time per user.
async fn update(user: &UserDir, change: impl FnOnce(&mut Map<String, Value>)) -> Result<Response, UserDataError> {
    let _guard = user.locks.settings.lock().await;
    let mut settings = load(user).await?;
    change(&mut settings);
    let mut text = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut text, formatter);
    serde::Serialize::serialize(&settings, &mut serializer).map_err(|e| UserDataError::Io(e.into()))?;
    user.write_bytes(&user.root.join(SETTINGS_FILE), &text).await?;
    Ok(reply::empty(StatusCode::OK))
}

/// The settings object; `{}` when there is none or it is unreadable (as ComfyUI).
async fn load(user: &UserDir) -> Result<Map<String, Value>, UserDataError> {
    match tokio::fs::read(user.root.join(SETTINGS_FILE)).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(settings)) => Ok(settings),
            _ => {
                tracing::warn!(folder = %user.root.display(), "settings file is not a JSON object; answering {{}}");
                Ok(Map::new())
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(e.into()),
    }
}

/// Largest settings body read (ComfyUI settings are a few KiB).
const MAX_JSON_BODY: usize = 32 * 1024 * 1024;

async fn read_json(max_body: u64, body: Body) -> Result<Value, UserDataError> {
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX).min(MAX_JSON_BODY);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| UserDataError::TooLarge)?;
    serde_json::from_slice(&bytes).map_err(|_| UserDataError::InvalidJson)
}

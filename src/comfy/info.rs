//! What the backends have, together: devices of every backend, node classes and model files
//! at least one healthy backend has.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::response::Response;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::{bytes_response, json_response, ok_empty, read_json};
use crate::http::{ApiError, Caller};
use crate::state::AppState;

/// `GET /system_stats`: the first backend's `system`, every backend's devices, each named.
pub async fn system_stats(app: &AppState) -> Result<Response, ApiError> {
    let mut system = Value::Null;
    let mut devices = Vec::new();
    for backend in app.scheduler.pool().healthy() {
        let Ok((StatusCode::OK, body)) =
            backend.proxy.call(Method::GET, "/system_stats", None, backend.config.response_timeout).await
        else {
            continue;
        };
        let Ok(stats) = serde_json::from_slice::<Value>(&body) else { continue };
        if system.is_null() {
            system = stats["system"].clone();
        }
        for mut device in stats["devices"].as_array().cloned().unwrap_or_default() {
            let name = device["name"].as_str().unwrap_or("device").to_owned();
            device["name"] = Value::String(format!("{}: {name}", backend.name()));
            device["comfygate_backend"] = Value::String(backend.name().to_owned());
            device["comfygate_labels"] = json!(backend.config.labels);
            devices.push(device);
        }
    }
    if system.is_null() {
        return Err(ApiError::BadGateway("no ComfyUI backend is answering".to_owned()));
    }
    Ok(json_response(StatusCode::OK, &json!({"system": system, "devices": devices})))
}

/// `GET /object_info[/{class}]`: what at least one healthy backend has, model lists merged,
/// file lists holding the caller's own files only.
pub async fn object_info(app: &AppState, caller: &Caller, class: Option<&str>) -> Result<Response, ApiError> {
    let Some(known) = app.scheduler.pool().known_capabilities(crate::backends::Reach::Healthy) else {
        // Just started (or every backend just came back): nothing read yet, so ask a backend.
        let backend = app
            .scheduler
            .pool()
            .primary()
            .ok_or_else(|| ApiError::BadGateway("no ComfyUI backend is configured".to_owned()))?;
        let path = match class {
            Some(c) => {
                format!("/object_info/{}", percent_encoding::utf8_percent_encode(c, percent_encoding::NON_ALPHANUMERIC))
            }
            None => "/object_info".to_owned(),
        };
        let (status, body) = backend.proxy.call(Method::GET, &path, None, backend.config.response_timeout).await?;
        return match serde_json::from_slice::<Value>(&body) {
            Ok(info) if status == StatusCode::OK => Ok(json_response(status, &own_files(app, caller, info).await?)),
            _ => Ok(bytes_response(status, body)),
        };
    };
    let body = match class {
        None => known.raw.clone(),
        Some(class) => match known.raw.get(class) {
            Some(def) => json!({ class: def }),
            None => json!({}),
        },
    };
    Ok(json_response(StatusCode::OK, &own_files(app, caller, body).await?))
}

async fn own_files(app: &AppState, caller: &Caller, info: Value) -> Result<Value, ApiError> {
    super::files::references::own_file_lists(app, caller, info).await.map_err(|e| {
        tracing::error!(error = %e, "cannot list a user's files");
        ApiError::Unavailable("the job store is temporarily unavailable".to_owned())
    })
}

/// `GET /models[/{folder}]`: the union over healthy backends (404 for a folder none has).
pub async fn models(app: &AppState, folder: Option<&str>) -> Result<Response, ApiError> {
    let path = match folder {
        Some(f) => format!("/models/{}", percent_encoding::utf8_percent_encode(f, percent_encoding::NON_ALPHANUMERIC)),
        None => "/models".to_owned(),
    };
    let mut found = false;
    let mut union: BTreeSet<String> = BTreeSet::new();
    let mut ordered = Vec::new();
    for backend in app.scheduler.pool().healthy() {
        let Ok((StatusCode::OK, body)) =
            backend.proxy.call(Method::GET, &path, None, backend.config.response_timeout).await
        else {
            continue;
        };
        let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else { continue };
        found = true;
        for item in items {
            if union.insert(item.to_string()) {
                ordered.push(item);
            }
        }
    }
    if !found {
        return Err(ApiError::NotFound(format!("no backend has the model folder `{}`", folder.unwrap_or(""))));
    }
    Ok(json_response(StatusCode::OK, &Value::Array(ordered)))
}

/// `POST /free`: every healthy backend (admin-only by policy).
pub async fn free(app: &AppState, username: &str, req: Request<Body>) -> Result<Response, ApiError> {
    let body = read_json(app, req).await?.to_string();
    for backend in app.scheduler.pool().healthy() {
        let timeout = backend.config.response_timeout;
        let _ = backend.proxy.call_as(Some(username), Method::POST, "/free", Some(body.clone().into()), timeout).await;
    }
    Ok(ok_empty())
}

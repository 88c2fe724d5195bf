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

/// `GET /system_stats`: the `system` of the first backend that answers, every answering
/// backend's devices (each named after its backend), and under `comfygate` every configured
/// backend with whether it answered and its ComfyUI version, plus a warning when the versions
/// differ (the web app comes from one of them). Backends are asked together.
pub async fn system_stats(app: &AppState) -> Result<Response, ApiError> {
    let backends: Vec<_> = app.scheduler.pool().all().iter().filter(|b| !b.is_retiring()).cloned().collect();
    let asked = backends.iter().map(|backend| async move {
        if !backend.is_healthy() {
            return None;
        }
        match backend.proxy.call(Method::GET, "/system_stats", None, backend.config.response_timeout).await {
            Ok((StatusCode::OK, body)) => serde_json::from_slice::<Value>(&body).ok(),
            _ => None,
        }
    });
    let answers = futures_util::future::join_all(asked).await;
    let mut system = Value::Null;
    let mut devices = Vec::new();
    let mut listed = Vec::new();
    let mut versions: Vec<(String, String)> = Vec::new();
    for (backend, stats) in backends.iter().zip(answers) {
        let Some(stats) = stats else {
            // Down backends are listed, never silently left out (no error text: it may name
            // internal addresses).
            listed.push(json!({"name": backend.name(), "up": false}));
            continue;
        };
        if system.is_null() {
            system = stats["system"].clone();
        }
        let version = stats["system"]["comfyui_version"].as_str().unwrap_or("unknown").to_owned();
        listed.push(json!({"name": backend.name(), "up": true, "comfyui_version": version}));
        versions.push((backend.name().to_owned(), version));
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
    let warnings: Vec<String> = version_warning(&versions).into_iter().collect();
    let gateway = json!({"backends": listed, "warnings": warnings});
    Ok(json_response(StatusCode::OK, &json!({"system": system, "devices": devices, "comfygate": gateway})))
}

/// A warning when the backends run different ComfyUI versions.
fn version_warning(versions: &[(String, String)]) -> Option<String> {
    let distinct: BTreeSet<&str> = versions.iter().map(|(_, v)| v.as_str()).collect();
    (distinct.len() > 1).then(|| {
        let each: Vec<String> = versions.iter().map(|(name, v)| format!("{name} {v}")).collect();
        format!(
            "the backends run different ComfyUI versions ({}): the web app comes from one of them and may not match \
             the others",
            each.join(", ")
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_on_different_comfyui_versions_are_warned_about_by_name() {
        let same = [("a".to_owned(), "0.3.64".to_owned()), ("b".to_owned(), "0.3.64".to_owned())];
        assert_eq!(version_warning(&same), None);
        let mixed = [("a".to_owned(), "0.3.64".to_owned()), ("b".to_owned(), "0.8.0".to_owned())];
        let warning = version_warning(&mixed).unwrap_or_default();
        assert!(warning.contains("a 0.3.64, b 0.8.0"), "{warning}");
    }
}

//! `/userdata*`, `/v2/userdata`, `/settings*` and `/users` for ComfyUI's single default user
//! (`<data_dir>/user/default`), as `app/user_manager.py` and `app/app_settings.py` answer them.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::files::resolve_within;
use crate::http::{empty, json_response, server_error};
use crate::json::{self, J, Obj};
use crate::state::AppState;

type Q = Query<Vec<(String, String)>>;

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn is_true(q: &[(String, String)], key: &str) -> bool {
    first(q, key).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn user_root(state: &AppState) -> PathBuf {
    state.dirs().root.join("user").join("default")
}

/// `get_request_user_filepath`: a name holding `%` is unquoted once more, then joined.
fn user_path(state: &AppState, file: &str) -> Option<PathBuf> {
    let file = if file.contains('%') {
        percent_encoding::percent_decode_str(file).decode_utf8_lossy().into_owned()
    } else {
        file.to_string()
    };
    resolve_within(&user_root(state), &file)
}

fn relative(root: &FsPath, path: &FsPath) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned()
}

fn ms(t: std::io::Result<std::time::SystemTime>) -> i64 {
    t.ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as i64)
}

fn secs(t: std::io::Result<std::time::SystemTime>) -> f64 {
    t.ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}

fn file_info(path: &FsPath, base: &FsPath) -> J {
    let meta = std::fs::metadata(path).ok();
    J::obj([
        ("path", J::s(relative(base, path))),
        ("size", J::u(meta.as_ref().map_or(0, |m| m.len()))),
        ("modified", J::int(meta.as_ref().map_or(0, |m| ms(m.modified())))),
        ("created", J::int(meta.as_ref().map_or(0, |m| ms(m.created().or_else(|_| m.modified()))))),
    ])
}

/// Files under `dir` (all below with `recurse`), hidden names left out as `glob` does, sorted.
fn glob_files(dir: &FsPath, recurse: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                if recurse {
                    folders.push(path);
                }
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `GET /userdata?dir=&recurse=&full_info=&split=`.
pub async fn list(State(state): State<Arc<AppState>>, Query(q): Q) -> Response {
    let dir = first(&q, "dir").unwrap_or("");
    if dir.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Directory not provided");
    }
    let Some(path) = user_path(&state, dir) else { return text(StatusCode::FORBIDDEN, "Invalid directory") };
    if !path.exists() {
        return text(StatusCode::NOT_FOUND, "Directory not found");
    }
    let (recurse, full_info, split) = (is_true(&q, "recurse"), is_true(&q, "full_info"), is_true(&q, "split"));
    let items = glob_files(&path, recurse)
        .into_iter()
        .map(|full| {
            let rel = relative(&path, &full);
            if full_info {
                file_info(&full, &path)
            } else if split {
                let mut parts = vec![J::s(rel.clone())];
                parts.extend(rel.split('/').map(J::s));
                J::Arr(parts)
            } else {
                J::s(rel)
            }
        })
        .collect();
    json_response(StatusCode::OK, &J::Arr(items))
}

/// `GET /v2/userdata?path=`.
pub async fn list_v2(State(state): State<Arc<AppState>>, Query(q): Q) -> Response {
    let requested =
        percent_encoding::percent_decode_str(first(&q, "path").unwrap_or("")).decode_utf8_lossy().into_owned();
    let root = user_root(&state);
    let Some(target) = user_path(&state, &requested) else {
        return text(StatusCode::BAD_REQUEST, "Invalid path requested");
    };
    if !target.exists() {
        if target == root {
            return json_response(StatusCode::OK, &J::Arr(Vec::new()));
        }
        return text(StatusCode::NOT_FOUND, "Requested path not found");
    }
    if !target.is_dir() {
        return text(StatusCode::BAD_REQUEST, "Requested path is not a directory");
    }
    let mut entries: Vec<(bool, String, J)> = Vec::new();
    let mut folders = vec![target];
    while let Some(folder) = folders.pop() {
        let Ok(read) = std::fs::read_dir(&folder) else { continue };
        for entry in read.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let rel = relative(&root, &path);
            if path.is_dir() {
                let item = J::obj([("name", J::s(&name)), ("path", J::s(rel)), ("type", J::s("directory"))]);
                entries.push((false, name.to_lowercase(), item));
                folders.push(path);
            } else {
                let meta = entry.metadata().ok();
                let item = J::obj([
                    ("name", J::s(&name)),
                    ("path", J::s(rel)),
                    ("type", J::s("file")),
                    ("size", J::u(meta.as_ref().map_or(0, |m| m.len()))),
                    ("modified", J::float(meta.as_ref().map_or(0.0, |m| secs(m.modified())))),
                ]);
                entries.push((true, name.to_lowercase(), item));
            }
        }
    }
    entries.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    json_response(StatusCode::OK, &J::Arr(entries.into_iter().map(|(_, _, item)| item).collect()))
}

/// `GET /userdata/{file}`.
pub async fn get_file(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(path) = user_path(&state, &file) else { return empty(StatusCode::FORBIDDEN) };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let ty = mime_guess::from_path(&path).first_raw().unwrap_or("application/octet-stream");
            (StatusCode::OK, [(header::CONTENT_TYPE, ty)], bytes).into_response()
        }
        Err(_) => empty(StatusCode::NOT_FOUND),
    }
}

/// `POST /userdata/{file}?overwrite=&full_info=`.
pub async fn post_file(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    Query(q): Q,
    body: Body,
) -> Response {
    let Some(path) = user_path(&state, &file) else { return empty(StatusCode::FORBIDDEN) };
    if first(&q, "overwrite") == Some("false") && path.exists() {
        return text(StatusCode::CONFLICT, "File already exists");
    }
    let max = usize::try_from(state.config().max_upload_bytes).unwrap_or(usize::MAX);
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response();
    };
    if let Some(parent) = path.parent() {
        let _ = tokio::fs::create_dir_all(parent).await;
    }
    if tokio::fs::write(&path, &bytes).await.is_err() {
        return server_error();
    }
    saved(&state, &path, is_true(&q, "full_info"))
}

/// `DELETE /userdata/{file}`.
pub async fn delete_file(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(path) = user_path(&state, &file) else { return empty(StatusCode::FORBIDDEN) };
    match tokio::fs::remove_file(&path).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(_) => empty(StatusCode::NOT_FOUND),
    }
}

/// `POST /userdata/{file}/move/{dest}?overwrite=&full_info=`.
pub async fn move_file(
    State(state): State<Arc<AppState>>,
    Path((file, dest)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    let Some(source) = user_path(&state, &file) else { return empty(StatusCode::FORBIDDEN) };
    if !source.exists() {
        return empty(StatusCode::NOT_FOUND);
    }
    let Some(target) = user_path(&state, &dest) else { return empty(StatusCode::FORBIDDEN) };
    if first(&q, "overwrite") == Some("false") && target.exists() {
        return text(StatusCode::CONFLICT, "File already exists");
    }
    if let Some(parent) = target.parent() {
        let _ = tokio::fs::create_dir_all(parent).await;
    }
    if tokio::fs::rename(&source, &target).await.is_err() {
        return server_error();
    }
    saved(&state, &target, is_true(&q, "full_info"))
}

fn saved(state: &AppState, path: &FsPath, full_info: bool) -> Response {
    let root = user_root(state);
    let answer = if full_info { file_info(path, &root) } else { J::s(relative(&root, path)) };
    json_response(StatusCode::OK, &answer)
}

fn settings_file(state: &AppState) -> PathBuf {
    user_root(state).join("comfy.settings.json")
}

fn load_settings(state: &AppState) -> Obj {
    std::fs::read(settings_file(state))
        .ok()
        .and_then(|bytes| json::parse(&bytes).ok())
        .and_then(|j| j.as_obj().cloned())
        .unwrap_or_default()
}

fn save_settings(state: &AppState, settings: Obj) -> Response {
    let file = settings_file(state);
    if let Some(parent) = file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(file, J::Obj(settings).dumps()) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => server_error(),
    }
}

/// `GET /settings`.
pub async fn get_settings(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &J::Obj(load_settings(&state)))
}

/// `GET /settings/{id}`.
pub async fn get_setting(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    json_response(StatusCode::OK, load_settings(&state).get(&id).unwrap_or(&J::Null))
}

async fn body_json(body: Body) -> Option<J> {
    let bytes = axum::body::to_bytes(body, 32 * 1024 * 1024).await.ok()?;
    json::parse(&bytes).ok()
}

/// `POST /settings`: an object merged in (anything else is a server error, as in ComfyUI).
pub async fn post_settings(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let Some(J::Obj(new)) = body_json(body).await else { return server_error() };
    let mut settings = load_settings(&state);
    settings.extend(new);
    save_settings(&state, settings)
}

/// `POST /settings/{id}`.
pub async fn post_setting(State(state): State<Arc<AppState>>, Path(id): Path<String>, body: Body) -> Response {
    let Some(value) = body_json(body).await else { return server_error() };
    let mut settings = load_settings(&state);
    settings.insert(id, value);
    save_settings(&state, settings)
}

/// `GET /users` without `--multi-user`.
pub async fn get_users(State(state): State<Arc<AppState>>) -> Response {
    let migrated = user_root(&state).exists();
    json_response(StatusCode::OK, &J::obj([("storage", J::s("server")), ("migrated", J::Bool(migrated))]))
}

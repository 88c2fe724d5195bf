//! What ComfyUI answers so that its web frontend boots: the static web root, the extension,
//! translation and template lists, and the single-user settings and user data (`user/default/`).

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::{empty, json_response, server_error};
use crate::json::{self, J, Obj};
use crate::state::AppState;

/// `GET /`: the frontend's `index.html`, never cached (ComfyUI sets `no-cache` on it).
pub async fn index(State(state): State<Arc<AppState>>) -> Response {
    let Some(root) = state.config().web_root.clone() else {
        return not_found();
    };
    match tokio::fs::read(root.join("index.html")).await {
        Ok(bytes) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/html"), (header::CACHE_CONTROL, "no-cache")], bytes)
                .into_response()
        }
        Err(_) => not_found(),
    }
}

/// Any other path: a static file under the web root, or aiohttp's 404.
pub async fn static_file(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Response {
    let Some(root) = state.config().web_root.clone() else {
        return not_found();
    };
    let Some(rel) = safe_relative(uri.path().trim_start_matches('/')) else {
        return not_found();
    };
    let path = root.join(rel);
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            (StatusCode::OK, [(header::CONTENT_TYPE, mime.to_string())], bytes).into_response()
        }
        Err(_) => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "404: Not Found").into_response()
}

/// A relative path with no `..`, root or prefix component; `None` otherwise.
fn safe_relative(p: &str) -> Option<PathBuf> {
    let path = FsPath::new(p);
    if p.is_empty() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(path.to_path_buf())
}

/// `GET /extensions`: the JavaScript files of custom nodes (none here).
pub async fn extensions() -> Response {
    json_response(StatusCode::OK, &J::Arr(vec![]))
}

/// `GET /i18n` and `GET /workflow_templates`: what custom nodes contribute (nothing here).
pub async fn empty_object() -> Response {
    json_response(StatusCode::OK, &J::empty_obj())
}

/// `GET /users` without `--multi-user`.
pub async fn users() -> Response {
    json_response(StatusCode::OK, &J::obj([("storage", J::s("server")), ("migrated", J::Bool(true))]))
}

fn user_dir(state: &AppState) -> PathBuf {
    state.dirs().root.join("user").join("default")
}

fn settings_file(state: &AppState) -> PathBuf {
    user_dir(state).join("comfy.settings.json")
}

async fn read_settings(state: &AppState) -> Obj {
    match tokio::fs::read(settings_file(state)).await {
        Ok(bytes) => match json::parse(&bytes) {
            Ok(J::Obj(o)) => o,
            _ => Obj::new(),
        },
        Err(_) => Obj::new(),
    }
}

async fn write_settings(state: &AppState, settings: Obj) -> Response {
    let file = settings_file(state);
    if let Some(parent) = file.parent()
        && tokio::fs::create_dir_all(parent).await.is_err()
    {
        return server_error();
    }
    match tokio::fs::write(file, J::Obj(settings).dumps()).await {
        Ok(()) => empty(StatusCode::OK),
        Err(_) => server_error(),
    }
}

/// `GET /settings`.
pub async fn get_settings(State(state): State<Arc<AppState>>) -> Response {
    json_response(StatusCode::OK, &J::Obj(read_settings(&state).await))
}

/// `POST /settings`: merges the posted object into the stored settings.
pub async fn post_settings(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return server_error();
    };
    let Ok(J::Obj(new)) = json::parse(&bytes) else {
        return server_error();
    };
    let mut settings = read_settings(&state).await;
    for (k, v) in new {
        settings.insert(k, v);
    }
    write_settings(&state, settings).await
}

/// `GET /settings/{id}`: the value, or `null`.
pub async fn get_setting(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let settings = read_settings(&state).await;
    json_response(StatusCode::OK, settings.get(&id).unwrap_or(&J::Null))
}

/// `POST /settings/{id}`.
pub async fn post_setting(State(state): State<Arc<AppState>>, Path(id): Path<String>, body: Body) -> Response {
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return server_error();
    };
    let Ok(value) = json::parse(&bytes) else {
        return server_error();
    };
    let mut settings = read_settings(&state).await;
    settings.insert(id, value);
    write_settings(&state, settings).await
}

/// A user file's path inside the user folder; `None` (ComfyUI answers 403) for one that leaves it.
fn user_file(state: &AppState, name: &str) -> Option<PathBuf> {
    safe_relative(name).map(|rel| user_dir(state).join(rel))
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn flag(q: &[(String, String)], k: &str, default: bool) -> bool {
    param(q, k).map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(default)
}

fn mtime(meta: &std::fs::Metadata) -> J {
    let secs = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs_f64());
    J::float(secs.unwrap_or(0.0))
}

/// `{path, size, modified}` of a file, its path relative to `base` with `/` separators.
fn file_info(path: &FsPath, base: &FsPath) -> J {
    let rel = path.strip_prefix(base).unwrap_or(path).to_string_lossy().replace('\\', "/");
    let meta = std::fs::metadata(path).ok();
    J::obj([
        ("path", J::s(rel)),
        ("size", J::u(meta.as_ref().map(|m| m.len()).unwrap_or(0))),
        ("modified", meta.as_ref().map(mtime).unwrap_or(J::float(0.0))),
    ])
}

fn walk(dir: &FsPath, recurse: bool, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && recurse => walk(&p, recurse, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

/// `GET /userdata?dir=D[&recurse][&full_info][&split]`: the files of a user folder.
pub async fn list_userdata(State(state): State<Arc<AppState>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let Some(dir) = param(&q, "dir").filter(|d| !d.is_empty()) else {
        return json_response(StatusCode::BAD_REQUEST, &J::obj([("error", J::s("Directory not provided"))]));
    };
    let Some(base) = user_file(&state, dir) else {
        return empty(StatusCode::FORBIDDEN);
    };
    if !base.is_dir() {
        return json_response(StatusCode::NOT_FOUND, &J::obj([("error", J::s("Directory not found"))]));
    }
    let (recurse, full_info, split) =
        (flag(&q, "recurse", false), flag(&q, "full_info", false), flag(&q, "split", false));
    let mut files = Vec::new();
    let walk_base = base.clone();
    let listed = tokio::task::spawn_blocking(move || {
        walk(&walk_base, recurse, &mut files);
        files.sort();
        files
    })
    .await
    .unwrap_or_default();
    let items = listed
        .iter()
        .map(|p| {
            if full_info {
                return file_info(p, &base);
            }
            let rel = p.strip_prefix(&base).unwrap_or(p).to_string_lossy().replace('\\', "/");
            if split {
                let mut parts = vec![J::s(rel.as_str())];
                parts.extend(rel.split('/').map(J::s));
                J::Arr(parts)
            } else {
                J::s(rel)
            }
        })
        .collect();
    json_response(StatusCode::OK, &J::Arr(items))
}

/// `GET /v2/userdata?path=P`: the entries of one user folder, folders included.
pub async fn list_userdata_v2(State(state): State<Arc<AppState>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let rel = param(&q, "path").unwrap_or("").trim_matches('/');
    let root = user_dir(&state);
    let dir = if rel.is_empty() {
        root.clone()
    } else {
        match user_file(&state, rel) {
            Some(p) => p,
            None => return empty(StatusCode::FORBIDDEN),
        }
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return json_response(StatusCode::NOT_FOUND, &J::obj([("error", J::s("Directory not found"))]));
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    let items = entries
        .iter()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path().strip_prefix(&root).ok()?.to_string_lossy().replace('\\', "/");
            let mut o = Obj::new();
            o.insert("name".into(), J::s(name));
            o.insert("path".into(), J::s(path));
            o.insert("type".into(), J::s(if meta.is_dir() { "directory" } else { "file" }));
            if meta.is_file() {
                o.insert("size".into(), J::u(meta.len()));
            }
            o.insert("modified".into(), mtime(&meta));
            Some(J::Obj(o))
        })
        .collect();
    json_response(StatusCode::OK, &J::Arr(items))
}

/// `GET /userdata/{file}`.
pub async fn get_userdata(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(path) = user_file(&state, &file) else {
        return empty(StatusCode::FORBIDDEN);
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            (StatusCode::OK, [(header::CONTENT_TYPE, mime.to_string())], bytes).into_response()
        }
        Err(_) => not_found(),
    }
}

/// `POST /userdata/{file}[?overwrite=false][&full_info=true]`: stores the body, answers its path.
pub async fn post_userdata(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    body: Body,
) -> Response {
    let Some(path) = user_file(&state, &file) else {
        return empty(StatusCode::FORBIDDEN);
    };
    if !flag(&q, "overwrite", true) && path.exists() {
        return json_response(StatusCode::CONFLICT, &J::s("File already exists"));
    }
    let max = usize::try_from(state.config().max_upload_bytes).unwrap_or(usize::MAX);
    let Ok(bytes) = axum::body::to_bytes(body, max).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large").into_response();
    };
    if let Some(parent) = path.parent()
        && tokio::fs::create_dir_all(parent).await.is_err()
    {
        return server_error();
    }
    if tokio::fs::write(&path, &bytes).await.is_err() {
        return server_error();
    }
    let root = user_dir(&state);
    if flag(&q, "full_info", false) {
        json_response(StatusCode::OK, &file_info(&path, &root))
    } else {
        let rel = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        json_response(StatusCode::OK, &J::s(rel))
    }
}

/// `DELETE /userdata/{file}`.
pub async fn delete_userdata(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let Some(path) = user_file(&state, &file) else {
        return empty(StatusCode::FORBIDDEN);
    };
    match tokio::fs::remove_file(&path).await {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(_) => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_relative;

    #[test]
    fn relative_paths_that_leave_the_folder_are_refused() {
        assert!(safe_relative("../etc/passwd").is_none());
        assert!(safe_relative("/etc/passwd").is_none());
        assert!(safe_relative("a/../../b").is_none());
        assert!(safe_relative("").is_none());
        assert!(safe_relative("assets/index.js").is_some());
    }
}

//! What ComfyUI answers so that its web frontend boots: the static web root, the extension,
//! translation and template lists (settings and user data are in [`crate::userdata`]).

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::json_response;
use crate::json::J;
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

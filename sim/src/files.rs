//! `/view` and `/upload/*`: files on disk, streamed both ways.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::http::{empty, json_response, server_error};
use crate::json::J;
use crate::state::AppState;

/// Joins `rel` onto `base` lexically (like `os.path.abspath(os.path.join(..))`), or `None` when the
/// result would leave `base`.
pub fn resolve_within(base: &Path, rel: &str) -> Option<PathBuf> {
    let rel_path = Path::new(rel);
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let start: PathBuf = if rel_path.is_absolute() { PathBuf::from("/") } else { base.to_path_buf() };
    let mut out = PathBuf::new();
    for c in start.components().chain(rel_path.components()) {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                parts.clear();
                out = PathBuf::from(c.as_os_str());
            }
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_os_string()),
        }
    }
    for p in parts {
        out.push(p);
    }
    if out.starts_with(base) { Some(out) } else { None }
}

fn first<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn content_type_for(name: &str) -> String {
    let guess = mime_guess::from_path(name).first_raw().unwrap_or("application/octet-stream");
    match guess {
        "text/html"
        | "text/html-sandboxed"
        | "application/xhtml+xml"
        | "text/javascript"
        | "application/javascript"
        | "text/css" => "application/octet-stream".to_string(),
        other => other.to_string(),
    }
}

/// `GET /view?filename=&type=&subfolder=`.
pub async fn view(State(state): State<Arc<AppState>>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let Some(raw) = first(&q, "filename") else {
        return empty(StatusCode::NOT_FOUND);
    };
    let mut filename = raw.to_string();
    let mut dir: Option<PathBuf> = None;
    for t in ["output", "input", "temp"] {
        let tag = format!("[{t}]");
        if filename.ends_with(&tag) {
            filename = filename[..filename.len() - tag.len()].trim_end_matches(' ').to_string();
            dir = state.dirs().by_type(t).cloned();
        }
    }
    if filename.is_empty() || filename.starts_with('/') || filename.contains("..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let base = match dir {
        Some(d) => d,
        None => match state.dirs().by_type(first(&q, "type").unwrap_or("output")) {
            Some(d) => d.clone(),
            None => return empty(StatusCode::BAD_REQUEST),
        },
    };
    let folder = match first(&q, "subfolder") {
        Some(sub) => match resolve_within(&base, sub) {
            Some(f) => f,
            None => return empty(StatusCode::FORBIDDEN),
        },
        None => base,
    };
    let name = filename.rsplit('/').next().unwrap_or(&filename).to_string();
    let path = folder.join(&name);
    let meta = match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => m,
        _ => return empty(StatusCode::NOT_FOUND),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return empty(StatusCode::NOT_FOUND),
    };
    let mut resp = Response::new(Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024)));
    let h = resp.headers_mut();
    let disposition = format!("filename=\"{name}\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&content_type_for(&name)) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    resp
}

fn too_large(max: u64, actual: u64) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("Maximum request body size {max} exceeded, actual body size {actual}"),
    )
        .into_response()
}

/// Deletes a temporary upload file when dropped (unless it was moved into place).
struct TempFile(Option<PathBuf>);
impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (ma, mb) = (tokio::fs::metadata(a).await?, tokio::fs::metadata(b).await?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (tokio::fs::File::open(a).await?, tokio::fs::File::open(b).await?);
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = fa.read(&mut ba).await?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n]).await?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// `POST /upload/image` and `/upload/mask`: the file is streamed to disk chunk by chunk.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let max = state.config().max_upload_bytes;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > max
    {
        return too_large(max, len);
    }
    let Ok(mut multipart) = multipart else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let tmp_dir = state.dirs().root.join(".upload-tmp");
    if tokio::fs::create_dir_all(&tmp_dir).await.is_err() {
        return server_error();
    }
    let mut total: u64 = 0;
    let mut image: Option<(String, TempFile)> = None;
    let mut fields: Vec<(String, String)> = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => return empty(StatusCode::BAD_REQUEST),
        };
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        if name == "image" && image.is_none() && file_name.is_some() {
            let tmp_path = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
            let guard = TempFile(Some(tmp_path.clone()));
            let Ok(file) = tokio::fs::File::create(&tmp_path).await else {
                return server_error();
            };
            let mut out = tokio::io::BufWriter::with_capacity(256 * 1024, file);
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        total += chunk.len() as u64;
                        if total > max {
                            return too_large(max, total);
                        }
                        if out.write_all(&chunk).await.is_err() {
                            return server_error();
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return empty(StatusCode::BAD_REQUEST),
                }
            }
            if out.flush().await.is_err() {
                return server_error();
            }
            image = Some((file_name.unwrap_or_default(), guard));
        } else {
            let mut value = Vec::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => {
                        total += chunk.len() as u64;
                        if total > max {
                            return too_large(max, total);
                        }
                        if value.len() < 1024 * 1024 {
                            value.extend_from_slice(&chunk);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => return empty(StatusCode::BAD_REQUEST),
                }
            }
            fields.push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some((filename, mut guard)) = image else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if filename.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let upload_type = get("type").unwrap_or_else(|| "input".into());
    let Some(base) = state.dirs().by_type(&upload_type).cloned() else {
        return server_error();
    };
    let subfolder = get("subfolder").unwrap_or_default();
    let Some(folder) = resolve_within(&base, &subfolder) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Some(mut path) = resolve_within(&folder, &filename).filter(|p| p.starts_with(&base)) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    if tokio::fs::create_dir_all(&folder).await.is_err() {
        return server_error();
    }
    let overwrite = matches!(get("overwrite").as_deref(), Some("true") | Some("1"));
    let mut name = filename.clone();
    let mut duplicate = false;
    let Some(tmp_path) = guard.0.clone() else {
        return server_error();
    };
    if !overwrite {
        let (stem, ext) = split_ext(&filename);
        let mut i = 1;
        while tokio::fs::try_exists(&path).await.unwrap_or(false) {
            if same_content(&path, &tmp_path).await.unwrap_or(false) {
                duplicate = true;
                break;
            }
            name = format!("{stem} ({i}){ext}");
            path = folder.join(&name);
            i += 1;
        }
    }
    if !duplicate {
        if let Some(parent) = path.parent() {
            let _ = tokio::fs::create_dir_all(parent).await;
        }
        if tokio::fs::rename(&tmp_path, &path).await.is_err() {
            return server_error();
        }
        guard.0 = None;
    }
    json_response(
        StatusCode::OK,
        &J::obj([("name", J::s(name)), ("subfolder", J::s(subfolder)), ("type", J::s(upload_type))]),
    )
}

/// Python's `os.path.splitext`.
fn split_ext(name: &str) -> (String, String) {
    let base_start = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    let base = &name[base_start..];
    let trimmed = base.trim_start_matches('.');
    let lead = base.len() - trimmed.len();
    match trimmed.rfind('.') {
        Some(i) => {
            let at = base_start + lead + i;
            (name[..at].to_string(), name[at..].to_string())
        }
        None => (name.to_string(), String::new()),
    }
}

//! `GET /userdata?dir=` (files below a folder, as ComfyUI's glob finds them) and
//! `GET /v2/userdata?path=` (folders and files, as ComfyUI's `os.walk` finds them). Both are
//! sorted so the answer does not depend on the file system's order.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::reply;
use super::store::{TEMP_PREFIX, UserDataError, UserDir};

/// `GET /userdata?dir=D&recurse=&full_info=&split=`.
pub(super) async fn list(user: &UserDir, query: Option<&str>) -> Result<Response, UserDataError> {
    let query = Query::parse(query);
    let dir = query.get("dir").unwrap_or_default();
    if dir.is_empty() {
        return Err(UserDataError::DirectoryNotProvided);
    }
    let (_, path) = user.resolve(&dir).map_err(|_| UserDataError::InvalidDirectory)?;
    if tokio::fs::symlink_metadata(&path).await.is_err() {
        return Err(UserDataError::DirectoryNotFound);
    }
    let flag = |name: &str| query.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (recurse, full_info, split) = (flag("recurse"), flag("full_info"), flag("split"));
    let files = blocking(move || glob_files(&path, recurse)).await?;
    let items = files
        .into_iter()
        .map(|(relative, meta)| {
            if full_info {
                json!({"path": relative, "size": meta.size, "modified": meta.modified_ms, "created": meta.created_ms})
            } else if split {
                let mut parts = vec![Value::String(relative.clone())];
                parts.extend(relative.split('/').map(|s| Value::String(s.to_owned())));
                Value::Array(parts)
            } else {
                Value::String(relative)
            }
        })
        .collect();
    Ok(reply::json(StatusCode::OK, &Value::Array(items)))
}

/// `GET /v2/userdata?path=P`.
pub(super) async fn list_v2(user: &UserDir, query: Option<&str>) -> Result<Response, UserDataError> {
    let requested = Query::parse(query).get("path").unwrap_or_default();
    let requested = percent_encoding::percent_decode_str(&requested).decode_utf8_lossy().into_owned();
    let (relative, path) = user.resolve(&requested).map_err(|_| UserDataError::InvalidPath)?;
    match tokio::fs::metadata(&path).await {
        Err(_) if relative.is_empty() => return Ok(reply::json(StatusCode::OK, &json!([]))),
        Err(_) => return Err(UserDataError::PathNotFound),
        Ok(meta) if !meta.is_dir() => return Err(UserDataError::NotADirectory),
        Ok(_) => {}
    }
    let root = user.root.clone();
    let mut entries = blocking(move || walk(&root, &path)).await?;
    entries.sort_by_key(|e| (!e.is_dir, e.name.to_lowercase()));
    let items = entries
        .into_iter()
        .map(|e| {
            if e.is_dir {
                json!({"name": e.name, "path": e.path, "type": "directory"})
            } else {
                json!({"name": e.name, "path": e.path, "type": "file", "size": e.meta.size, "modified": e.meta.modified_secs})
            }
        })
        .collect();
    Ok(reply::json(StatusCode::OK, &Value::Array(items)))
}

/// What a listing shows of a file.
struct Meta {
    size: u64,
    modified_ms: i64,
    created_ms: i64,
    modified_secs: f64,
}

impl Meta {
    fn of(meta: &std::fs::Metadata) -> Self {
        Meta {
            size: meta.len(),
            modified_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
            created_ms: meta.ctime() * 1000 + meta.ctime_nsec() / 1_000_000,
            modified_secs: meta.mtime() as f64 + meta.mtime_nsec() as f64 / 1e9,
        }
    }
}

/// One `/v2/userdata` entry.
struct Entry {
    name: String,
    path: String,
    is_dir: bool,
    meta: Meta,
}

/// Files directly in `dir` (or anywhere below with `recurse`), relative to it, sorted; like
/// `glob`, names starting with `.` are left out.
fn glob_files(dir: &Path, recurse: bool) -> io::Result<Vec<(String, Meta)>> {
    let mut out = Vec::new();
    let mut folders = vec![(dir.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let meta = std::fs::metadata(entry.path())?;
            if meta.is_dir() {
                if recurse {
                    folders.push((entry.path(), relative));
                }
            } else if meta.is_file() {
                out.push((relative, Meta::of(&meta)));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Everything below `start`, with paths relative to `root` (the user's folder).
fn walk(root: &Path, start: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut folders: Vec<PathBuf> = vec![start.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let full = entry.path();
            let path = full.strip_prefix(root).unwrap_or(&full).to_string_lossy().into_owned();
            let meta = std::fs::metadata(&full)?;
            let is_dir = meta.is_dir();
            if is_dir {
                folders.push(full);
            }
            out.push(Entry { name, path, is_dir, meta: Meta::of(&meta) });
        }
    }
    Ok(out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T, UserDataError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| UserDataError::Io(io::Error::other(e)))?
        .map_err(UserDataError::from)
}

/// The query's parameters, first value of each (as aiohttp's `query.get`).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Query(form_urlencoded::parse(query.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

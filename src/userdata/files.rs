//! `/userdata/{file}` (GET, POST, DELETE) and `/userdata/{file}/move/{dest}`, as ComfyUI's
//! `user_manager.py` answers them.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::reply;
use super::store::{UserDataError, UserDir, create_private_dir, exists, file_info, in_the_way};
use crate::policy::content;

/// The one file the frontend loads as a stylesheet from user data.
const USER_CSS: &str = "user.css";

/// `GET /userdata/{file}`: the file, inert (downloaded unless it is the user's stylesheet).
pub(super) async fn read(user: &UserDir, raw: &str) -> Result<Response, UserDataError> {
    let (relative, path) = user.resolve_file(raw)?;
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory) => {
            return Err(UserDataError::NotFound);
        }
        Err(e) => return Err(in_the_way(e).not_found_if_in_the_way()),
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(guess_type(&relative)));
    content::protect(headers, &relative);
    if relative == USER_CSS {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/css"));
        headers.insert(CONTENT_DISPOSITION, HeaderValue::from_static("inline"));
    } else if !headers.contains_key(CONTENT_DISPOSITION) {
        headers.insert(CONTENT_DISPOSITION, content::attachment(&relative));
    }
    Ok(response)
}

/// `POST /userdata/{file}?overwrite=&full_info=`: the raw body saved, answered with its path.
pub(super) async fn write(
    max_body: u64,
    user: &UserDir,
    raw: &str,
    query: Option<&str>,
    body: Body,
) -> Result<Response, UserDataError> {
    let (relative, path) = user.resolve_file(raw)?;
    let flags = Flags::parse(query);
    let limit = max_body.min(user.max_file_bytes);
    user.write_stream(&path, body, limit, flags.overwrite).await?;
    answer(&path, relative, flags.full_info).await
}

/// `DELETE /userdata/{file}`: 204, or 404 when there is no such file.
pub(super) async fn delete(user: &UserDir, raw: &str) -> Result<Response, UserDataError> {
    let (_, path) = user.resolve_file(raw)?;
    let _guard = user.locks.write.lock().await;
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(reply::empty(StatusCode::NO_CONTENT)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(UserDataError::NotFound),
        Err(e) => Err(in_the_way(e)),
    }
}

/// `POST /userdata/{file}/move/{dest}?overwrite=&full_info=`.
pub(super) async fn rename(
    user: &UserDir,
    raw: &str,
    raw_dest: &str,
    query: Option<&str>,
) -> Result<Response, UserDataError> {
    let (_, source) = user.resolve_file(raw)?;
    let (relative, dest) = user.resolve_file(raw_dest)?;
    let flags = Flags::parse(query);
    {
        let _guard = user.locks.write.lock().await;
        if !exists(&source).await {
            return Err(UserDataError::NotFound);
        }
        if !flags.overwrite && exists(&dest).await {
            return Err(UserDataError::Exists);
        }
        if let Some(parent) = dest.parent() {
            create_private_dir(parent).await?;
        }
        tokio::fs::rename(&source, &dest).await.map_err(in_the_way)?;
    }
    answer(&dest, relative, flags.full_info).await
}

/// The saved file's path relative to the user's folder, or its full information.
async fn answer(path: &std::path::Path, relative: String, full_info: bool) -> Result<Response, UserDataError> {
    let value = if full_info { file_info(path, &relative).await? } else { Value::String(relative) };
    Ok(reply::json(StatusCode::OK, &value))
}

/// `overwrite` (anything but `false` overwrites) and `full_info` (`true`, any case).
struct Flags {
    overwrite: bool,
    full_info: bool,
}

impl Flags {
    fn parse(query: Option<&str>) -> Self {
        let mut flags = Flags { overwrite: true, full_info: false };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "overwrite" => flags.overwrite = value != "false",
                "full_info" => flags.full_info = value.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        flags
    }
}

impl UserDataError {
    /// Reading through a file as if it were a folder finds nothing.
    fn not_found_if_in_the_way(self) -> Self {
        match self {
            UserDataError::FolderInTheWay => UserDataError::NotFound,
            other => other,
        }
    }
}

/// The content type Python's `mimetypes` gives common user-data files (`protect` then makes
/// the active ones downloads).
fn guess_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "json" => "application/json",
        "txt" | "md" => "text/plain",
        "csv" => "text/csv",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "html" | "htm" => "text/html",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrite_is_on_unless_exactly_false() {
        assert!(Flags::parse(None).overwrite);
        assert!(Flags::parse(Some("overwrite=0")).overwrite);
        assert!(!Flags::parse(Some("overwrite=false")).overwrite);
        assert!(Flags::parse(Some("full_info=TRUE")).full_info);
        assert!(!Flags::parse(Some("full_info=1")).full_info);
    }
}

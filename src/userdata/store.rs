//! One folder per gateway user under `<store.data_dir>/userdata/<user id>/` (keyed by id, so a
//! re-created user name starts empty). Names are resolved as ComfyUI resolves them; writes go
//! to a temporary file in the same folder and are renamed into place, so a reader or a
//! concurrent writer never sees a torn file; a quota bounds each user's disk use.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::reply;
use crate::config::UserDataConfig;
use crate::policy::NameError;
use crate::policy::names::resolve_relative;
use crate::store::private;

/// Temporary files start with this; listings and quotas leave them out.
pub(super) const TEMP_PREFIX: &str = ".comfygate-tmp-";

/// Why a user-data request failed; each answers as ComfyUI does.
#[derive(Debug, thiserror::Error)]
pub enum UserDataError {
    /// `GET /userdata` without `dir`.
    #[error("Directory not provided")]
    DirectoryNotProvided,
    /// `dir` leaves the user's folder.
    #[error("Invalid directory")]
    InvalidDirectory,
    /// `dir` does not exist.
    #[error("Directory not found")]
    DirectoryNotFound,
    /// `/v2/userdata` `path` does not exist.
    #[error("Requested path not found")]
    PathNotFound,
    /// `/v2/userdata` `path` is a file.
    #[error("Requested path is not a directory")]
    NotADirectory,
    /// `/v2/userdata` `path` leaves the user's folder.
    #[error("Invalid path requested")]
    InvalidPath,
    /// A file name leaves the user's folder.
    #[error("the file name leaves the user folder")]
    Escapes,
    /// A file name holds invalid characters or is empty.
    #[error("Invalid file name")]
    InvalidName,
    /// No such file.
    #[error("no such file")]
    NotFound,
    /// `overwrite=false` and the file exists.
    #[error("File already exists")]
    Exists,
    /// A folder stands where the file would go (or a file where a folder would).
    #[error("A folder is in the way")]
    FolderInTheWay,
    /// The body is larger than one file may be.
    #[error("File too large")]
    TooLarge,
    /// The user's files would take more than their quota.
    #[error("User data quota exceeded")]
    QuotaExceeded,
    /// A settings body that is not the JSON expected.
    #[error("Invalid JSON body")]
    InvalidJson,
    /// The body could not be read from the client.
    #[error("Request body could not be read")]
    BodyRead,
    /// The disk failed; logged, not shown.
    #[error("user data I/O: {0}")]
    Io(#[from] io::Error),
}

impl UserDataError {
    fn status(&self) -> StatusCode {
        use UserDataError::*;
        match self {
            DirectoryNotProvided | NotADirectory | InvalidPath | InvalidName | InvalidJson | BodyRead => {
                StatusCode::BAD_REQUEST
            }
            InvalidDirectory | Escapes => StatusCode::FORBIDDEN,
            DirectoryNotFound | PathNotFound | NotFound => StatusCode::NOT_FOUND,
            Exists | FolderInTheWay => StatusCode::CONFLICT,
            TooLarge | QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
            Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error for a file name refused by [`resolve_relative`] on a file route.
    pub(super) fn of_file_name(e: NameError) -> Self {
        match e {
            NameError::Escapes => UserDataError::Escapes,
            NameError::InvalidCharacters | NameError::TooLong => UserDataError::InvalidName,
        }
    }
}

impl IntoResponse for UserDataError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            // ComfyUI answers these with an empty body.
            UserDataError::Escapes | UserDataError::NotFound => reply::empty(status),
            UserDataError::Io(e) => {
                tracing::error!(error = %e, "user data I/O failed");
                reply::text(status, "500 Internal Server Error\n\nServer got itself in trouble")
            }
            other => {
                let mut response = (status, other.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
                response
            }
        }
    }
}

/// Every user's folder, and the locks that order writes inside each.
pub struct UserData {
    root: PathBuf,
    max_bytes_per_user: u64,
    max_file_bytes: u64,
    locks: Mutex<HashMap<i64, Arc<UserLocks>>>,
}

/// Writes (rename into place, with the quota check) and settings updates (read, merge, write)
/// of one user happen one at a time.
#[derive(Default)]
pub(super) struct UserLocks {
    pub(super) write: tokio::sync::Mutex<()>,
    pub(super) settings: tokio::sync::Mutex<()>,
}

impl UserData {
    /// User data under `<data_dir>/userdata/`.
    pub fn new(data_dir: &Path, config: &UserDataConfig) -> Self {
        Self {
            root: data_dir.join("userdata"),
            max_bytes_per_user: config.max_bytes_per_user.as_u64(),
            max_file_bytes: config.max_file_bytes.as_u64(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The folder of user `user_id`.
    pub(super) fn user(&self, user_id: i64) -> UserDir {
        let locks =
            self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(user_id).or_default().clone();
        UserDir {
            root: self.root.join(user_id.to_string()),
            quota: self.max_bytes_per_user,
            max_file_bytes: self.max_file_bytes,
            locks,
        }
    }
}

/// One user's folder.
pub(super) struct UserDir {
    pub(super) root: PathBuf,
    quota: u64,
    pub(super) max_file_bytes: u64,
    pub(super) locks: Arc<UserLocks>,
}

impl UserDir {
    /// Resolves a (once-decoded) name; `Ok` holds the relative form and the path on disk.
    pub(super) fn resolve(&self, raw: &str) -> Result<(String, PathBuf), NameError> {
        let relative = resolve_relative(raw, true)?;
        let path = if relative.is_empty() { self.root.clone() } else { self.root.join(&relative) };
        Ok((relative, path))
    }

    /// Resolves a file name on a file route: it must name something inside the folder.
    pub(super) fn resolve_file(&self, raw: &str) -> Result<(String, PathBuf), UserDataError> {
        let (relative, path) = self.resolve(raw).map_err(UserDataError::of_file_name)?;
        if relative.is_empty() {
            return Err(UserDataError::InvalidName);
        }
        Ok((relative, path))
    }

    /// Streams `body` (at most `limit` bytes) into `target`, replacing it unless `overwrite`
    /// is false, within the quota.
    pub(super) async fn write_stream(
        &self,
        target: &Path,
        body: Body,
        limit: u64,
        overwrite: bool,
    ) -> Result<(), UserDataError> {
        if !overwrite && exists(target).await {
            return Err(UserDataError::Exists);
        }
        let temp = self.temp_beside(target).await?;
        let written = match stream_to(&temp, body, limit).await {
            Ok(written) => written,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        self.commit(&temp, target, written, overwrite).await
    }

    /// Writes `bytes` into `target` atomically, within the quota.
    pub(super) async fn write_bytes(&self, target: &Path, bytes: &[u8]) -> Result<(), UserDataError> {
        let temp = self.temp_beside(target).await?;
        let written = async {
            let mut file = create_private_file(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_data().await?;
            Ok::<_, io::Error>(bytes.len() as u64)
        }
        .await;
        match written {
            Ok(written) => self.commit(&temp, target, written, true).await,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(e.into())
            }
        }
    }

    /// A fresh temporary name in `target`'s folder (created with its parents).
    async fn temp_beside(&self, target: &Path) -> Result<PathBuf, UserDataError> {
        let parent = target.parent().unwrap_or(&self.root);
        create_private_dir(parent).await?;
        Ok(parent.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple())))
    }

    /// Renames `temp` (of `size` bytes) onto `target` under the user's write lock, if the
    /// quota allows; removes `temp` otherwise.
    async fn commit(&self, temp: &Path, target: &Path, size: u64, overwrite: bool) -> Result<(), UserDataError> {
        let _guard = self.locks.write.lock().await;
        let result = async {
            let replaced = match tokio::fs::symlink_metadata(target).await {
                Ok(meta) if meta.is_dir() => return Err(UserDataError::FolderInTheWay),
                Ok(_) if !overwrite => return Err(UserDataError::Exists),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            };
            let used = self.usage().await?;
            if used.saturating_sub(replaced).saturating_add(size) > self.quota {
                return Err(UserDataError::QuotaExceeded);
            }
            tokio::fs::rename(temp, target).await.map_err(in_the_way)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(temp).await;
        }
        result
    }

    /// Bytes taken by the user's files (temporary files left out).
    async fn usage(&self) -> Result<u64, UserDataError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || walk_size(&root))
            .await
            .map_err(|e| UserDataError::Io(io::Error::other(e)))?
            .map_err(UserDataError::from)
    }
}

/// `{"path", "size", "modified", "created"}` of `path`, relative to `base` (ms integers), as
/// ComfyUI's `get_file_info`.
pub(super) async fn file_info(path: &Path, relative: &str) -> Result<Value, UserDataError> {
    let meta = tokio::fs::metadata(path).await?;
    Ok(json!({
        "path": relative,
        "size": meta.len(),
        "modified": meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
        "created": meta.ctime() * 1000 + meta.ctime_nsec() / 1_000_000,
    }))
}

/// Creates `folder` and its missing parents, readable by the gateway only.
pub(super) async fn create_private_dir(folder: &Path) -> Result<(), UserDataError> {
    let folder = folder.to_path_buf();
    tokio::task::spawn_blocking(move || private::create_dir_all(&folder))
        .await
        .map_err(|e| UserDataError::Io(io::Error::other(e)))?
        .map_err(in_the_way)
}

/// A new file at `path` (truncated if it exists), readable by the gateway only.
async fn create_private_file(path: &Path) -> io::Result<tokio::fs::File> {
    let path = path.to_path_buf();
    let file =
        tokio::task::spawn_blocking(move || private::open_for_writing(&path)).await.map_err(io::Error::other)??;
    Ok(tokio::fs::File::from_std(file))
}

/// Whether something exists at `path`.
pub(super) async fn exists(path: &Path) -> bool {
    tokio::fs::symlink_metadata(path).await.is_ok()
}

/// A folder where a file should be, or a file where a folder should be, is a conflict.
pub(super) fn in_the_way(e: io::Error) -> UserDataError {
    match e.kind() {
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory | io::ErrorKind::AlreadyExists => {
            UserDataError::FolderInTheWay
        }
        io::ErrorKind::DirectoryNotEmpty => UserDataError::FolderInTheWay,
        _ => UserDataError::Io(e),
    }
}

async fn stream_to(temp: &Path, body: Body, limit: u64) -> Result<u64, UserDataError> {
    let mut file = create_private_file(temp).await?;
    let mut stream = body.into_data_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| UserDataError::BodyRead)?;
        written = written.saturating_add(chunk.len() as u64);
        if written > limit {
            return Err(UserDataError::TooLarge);
        }
        file.write_all(&chunk).await?;
    }
    file.sync_data().await?;
    Ok(written)
}

fn walk_size(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                folders.push(entry.path());
            } else if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn alice() -> UserDir {
        UserData::new(Path::new("/data"), &UserDataConfig::default()).user(7)
    }

    #[test]
    fn every_spelling_of_a_name_is_one_file_in_the_users_own_folder() {
        let user = alice();
        for raw in [
            "workflows/a.json",
            "workflows%2Fa.json",
            "workflows%2F.%2Fa.json",
            "./workflows//a.json",
            "x%2F..%2Fworkflows%2Fa.json",
            "workflows/sub/../a.json",
            "workflows%2Fa.json%2F",
        ] {
            let (relative, path) = user.resolve_file(raw).unwrap();
            assert_eq!(relative, "workflows/a.json", "{raw}");
            assert_eq!(path, Path::new("/data/userdata/7/workflows/a.json"), "{raw}");
        }
    }

    #[test]
    fn names_leaving_the_folder_or_naming_nothing_are_refused() {
        let user = alice();
        for raw in [
            "../8/a.json",
            "..%2F8%2Fa.json",
            "a%2F..%2F..%2Fx",
            "/etc/passwd",
            "%2Fetc%2Fpasswd",
            "../../comfygate.db",
        ] {
            assert!(matches!(user.resolve_file(raw), Err(UserDataError::Escapes)), "{raw}");
        }
        for raw in ["", ".", "a%2F..", "a\\b", "a%5Cb", "a%00b", "%ff"] {
            assert!(matches!(user.resolve_file(raw), Err(UserDataError::InvalidName)), "{raw}");
        }
    }

    #[test]
    fn users_are_kept_apart_by_id() {
        let data = UserData::new(Path::new("/data"), &UserDataConfig::default());
        assert_eq!(data.user(1).root, Path::new("/data/userdata/1"));
        assert_ne!(data.user(1).root, data.user(2).root);
    }
}

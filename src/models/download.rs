//! One file: request (resuming a partial with `Range`), stream to the hidden partial while
//! hashing, and rename to the final name only once size and sha256 match.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, HeaderValue, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::local;
use super::manifest::ModelFile;
use super::progress::FileProgress;

/// No byte for this long and the download stops (the partial is kept for the next run).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Write buffer: fewer, larger writes to the partial.
const WRITE_BUFFER: usize = 1 << 20;

/// Why one file could not be downloaded (the others go on).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// `headers_env` names a variable that cannot be used; no request was made.
    #[error("{name}: the environment variable {var} named by headers_env {problem}")]
    AuthEnv {
        /// The file.
        name: String,
        /// The variable.
        var: String,
        /// `is not set`, `is empty`...
        problem: &'static str,
    },
    /// 404.
    #[error("{name}: the server answered 404 Not Found for {url} (check the url in the manifest)")]
    NotFound {
        /// The file.
        name: String,
        /// The manifest's URL.
        url: String,
    },
    /// 401 or 403.
    #[error("{name}: the server answered {status} for {url}: {hint}")]
    Denied {
        /// The file.
        name: String,
        /// The manifest's URL.
        url: String,
        /// 401 or 403.
        status: StatusCode,
        /// What to check, by whether an Authorization value was sent.
        hint: String,
    },
    /// Another unexpected status.
    #[error("{name}: the server answered {status} for {url}")]
    Status {
        /// The file.
        name: String,
        /// The manifest's URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// No answer at all (DNS, connection refused, TLS, timeout before the headers).
    #[error("{name}: cannot download {url}: {cause}")]
    Request {
        /// The file.
        name: String,
        /// The manifest's URL.
        url: String,
        /// The client's error, without the URL (a redirect target may carry a signature).
        cause: String,
    },
    /// The body stopped early; the partial is kept.
    #[error("{name}: interrupted at {at} of {size} bytes; run again to resume ({cause})")]
    Interrupted {
        /// The file.
        name: String,
        /// Bytes in the partial.
        at: u64,
        /// The manifest's size.
        size: u64,
        /// Why.
        cause: String,
    },
    /// The bytes are not the manifest's; the partial was deleted.
    #[error("checksum mismatch for {name}: expected {expected}, got {got} (the download was deleted)")]
    Checksum {
        /// The file.
        name: String,
        /// The manifest's sha256.
        expected: String,
        /// The downloaded bytes' sha256.
        got: String,
    },
    /// The server's size is not the manifest's; nothing was written.
    #[error("{name}: the server has {server} bytes but the manifest says size = {size} (check the manifest)")]
    SizeDiffers {
        /// The file.
        name: String,
        /// Content-Length or the Content-Range total.
        server: u64,
        /// The manifest's size.
        size: u64,
    },
    /// The server kept sending past the manifest's size; the partial was deleted.
    #[error("{name}: the server sent more than the manifest's size = {size} bytes (check the manifest)")]
    TooLong {
        /// The file.
        name: String,
        /// The manifest's size.
        size: u64,
    },
    /// ENOSPC while writing; the partial is kept.
    #[error("{name}: disk full writing {} (at {at} of {size} bytes); free some space and run again to resume", path.display())]
    DiskFull {
        /// The file.
        name: String,
        /// The partial.
        path: PathBuf,
        /// Bytes in the partial.
        at: u64,
        /// The manifest's size.
        size: u64,
    },
    /// A bug: the download's task ended abnormally.
    #[error("{name}: the download stopped unexpectedly ({cause}); run again to resume")]
    Internal {
        /// The file.
        name: String,
        /// The task's error.
        cause: String,
    },
    /// Another file-system error.
    #[error("{name}: cannot {action} {}: {source}", path.display())]
    Io {
        /// The file.
        name: String,
        /// What was being done (`create`, `write`, `rename to`...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a download stopped on a signal.
const STOPPED: &str = "stopped by Ctrl-C or SIGTERM";

/// Asks the downloads to stop, flushing what they have (on Ctrl-C or SIGTERM).
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// A stop and the switch that triggers it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Whether a stop was asked for.
    pub fn asked(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once a stop is asked for (never, once the switch is gone without one).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The error of a file stopped with `at` bytes in its partial.
    pub fn interrupted(&self, file: &ModelFile, at: u64) -> FileError {
        FileError::Interrupted { name: file.name.clone(), at, size: file.size, cause: STOPPED.to_owned() }
    }
}

/// How a download ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The partial's length the server continued from (0: from the start).
    pub resumed_from: u64,
}

/// The HTTP client for downloads: the timeouts above and `comfygate/<version>`.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("comfygate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(STALL_TIMEOUT)
        .build()
}

/// The `Authorization` value named by the file's `headers_env`, marked sensitive so it is never
/// printed; an unusable variable fails the file before any request.
pub fn authorization(file: &ModelFile) -> Result<Option<HeaderValue>, FileError> {
    let Some(var) = &file.headers_env else { return Ok(None) };
    let problem = |problem| FileError::AuthEnv { name: file.name.clone(), var: var.clone(), problem };
    let value = match std::env::var(var) {
        Ok(value) => value,
        Err(std::env::VarError::NotPresent) => return Err(problem("is not set")),
        Err(std::env::VarError::NotUnicode(_)) => return Err(problem("is not valid UTF-8")),
    };
    if value.trim().is_empty() {
        return Err(problem("is empty"));
    }
    let mut header = HeaderValue::from_str(value.trim())
        .map_err(|_| problem("holds characters not allowed in an HTTP header (a line break?)"))?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// What the response said to do with the partial.
enum Answer {
    /// Write the body from `offset` (206) or from 0 (200).
    Body { response: reqwest::Response, offset: u64 },
    /// 416 with a partial of the full size: it may already be the whole file.
    RangeNotSatisfiable,
    /// The server's range does not start where the partial ends.
    StartOver,
}

/// Downloads `file` under `models_dir` (its folder must be creatable), resuming its partial.
pub async fn fetch(
    client: &reqwest::Client,
    file: &ModelFile,
    models_dir: &Path,
    progress: &mut FileProgress,
    stop: &Stop,
) -> Result<Fetched, FileError> {
    let auth = authorization(file)?;
    let part = file.part(models_dir);
    let folder = models_dir.join(&file.folder);
    tokio::fs::create_dir_all(&folder).await.map_err(io_error(file, "create the folder", &folder))?;
    let mut offset = local::partial_len(file, models_dir).map_err(io_error(file, "read", &part))?;
    if offset > file.size {
        // Longer than the file: not a prefix of it.
        offset = 0;
    }
    let mut started_over = false;
    // At most: a resume, a start over, and its answer.
    for _ in 0..3 {
        let hasher = if offset > 0 { prefix_hasher(file, &part, offset).await? } else { Sha256::new() };
        let answer = tokio::select! {
            biased;
            () = stop.wait() => return Err(stop.interrupted(file, offset)),
            answer = request(client, file, auth.as_ref(), offset) => answer?,
        };
        let done = match answer {
            Answer::Body { response, offset: from } => {
                let hasher = if from == offset {
                    hasher
                } else {
                    progress.restart();
                    Sha256::new()
                };
                Some((write_body(file, &part, response, from, hasher, progress, stop).await?, from))
            }
            Answer::RangeNotSatisfiable if offset == file.size => Some((hasher, offset)),
            Answer::RangeNotSatisfiable | Answer::StartOver => None,
        };
        let Some((hasher, from)) = done else {
            if started_over {
                break;
            }
            started_over = true;
            offset = 0;
            progress.restart();
            continue;
        };
        let got = local::hex(hasher);
        if got == file.sha256 {
            finish(file, &part, &file.dest(models_dir), &folder).await?;
            return Ok(Fetched { resumed_from: from });
        }
        let _ = tokio::fs::remove_file(&part).await;
        if from == file.size && !started_over {
            // A complete partial (416) that is wrong: one fresh download.
            started_over = true;
            offset = 0;
            progress.restart();
            continue;
        }
        return Err(FileError::Checksum { name: file.name.clone(), expected: file.sha256.clone(), got });
    }
    Err(FileError::Status {
        name: file.name.clone(),
        url: file.url.to_string(),
        status: StatusCode::RANGE_NOT_SATISFIABLE,
    })
}

/// A file-system error on `path` while doing `action`.
fn io_error(file: &ModelFile, action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError + use<> {
    let (name, path) = (file.name.clone(), path.to_owned());
    move |source| FileError::Io { name, action, path, source }
}

/// The hash of the partial's first `offset` bytes, which the server's bytes will extend.
async fn prefix_hasher(file: &ModelFile, part: &Path, offset: u64) -> Result<Sha256, FileError> {
    let path = part.to_owned();
    let (hasher, read) = tokio::task::spawn_blocking(move || local::hash_prefix(&path, offset, |_| {}))
        .await
        .map_err(|e| FileError::Io {
            name: file.name.clone(),
            action: "hash",
            path: part.to_owned(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| FileError::Io { name: file.name.clone(), action: "read", path: part.to_owned(), source })?;
    if read != offset {
        // The partial shrank meanwhile: let the next run sort it out.
        return Err(FileError::Interrupted {
            name: file.name.clone(),
            at: read,
            size: file.size,
            cause: "the partial file changed while it was read".to_owned(),
        });
    }
    Ok(hasher)
}

/// Sends the request (with `Range` when resuming) and reads what the status means.
async fn request(
    client: &reqwest::Client,
    file: &ModelFile,
    auth: Option<&HeaderValue>,
    offset: u64,
) -> Result<Answer, FileError> {
    let name = || file.name.clone();
    let url = || file.url.to_string();
    let mut request = client.get(file.url.clone());
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth.clone());
    }
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let response = request.send().await.map_err(|e| FileError::Request {
        name: name(),
        url: url(),
        cause: cause(&e.without_url()),
    })?;
    let status = response.status();
    let size_differs = |server| FileError::SizeDiffers { name: name(), server, size: file.size };
    match status {
        StatusCode::OK => {
            if let Some(len) = response.content_length().filter(|len| *len != file.size) {
                return Err(size_differs(len));
            }
            Ok(Answer::Body { response, offset: 0 })
        }
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range = response.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).and_then(content_range);
            match range {
                Some((start, total)) if start == offset => {
                    if let Some(total) = total.filter(|t| *t != file.size) {
                        return Err(size_differs(total));
                    }
                    Ok(Answer::Body { response, offset })
                }
                _ => Ok(Answer::StartOver),
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => Ok(Answer::RangeNotSatisfiable),
        StatusCode::NOT_FOUND => Err(FileError::NotFound { name: name(), url: url() }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            let hint = match &file.headers_env {
                Some(var) => format!(
                    "the Authorization value from ${var} (named by headers_env) was sent and refused; check the \
                     token, that it is written as `Bearer TOKEN`, and that its account was granted access to the \
                     model (gated models need their licence accepted on the model's page)"
                ),
                None => "no Authorization was sent; for a gated model set headers_env = \"HF_AUTHORIZATION\" on \
                         this [[file]] and export HF_AUTHORIZATION=\"Bearer hf_...\""
                    .to_owned(),
            };
            Err(FileError::Denied { name: name(), url: url(), status, hint })
        }
        _ => Err(FileError::Status { name: name(), url: url(), status }),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL unless `*`).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    Some((start.trim().parse().ok()?, total))
}

/// The error's message with its sources (`error sending request: connection refused`).
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}

/// Streams the body into the partial from `offset` (appending, or truncating at 0), hashing
/// as it goes; the hasher once the partial holds exactly `size` bytes, synced.
async fn write_body(
    file: &ModelFile,
    part: &Path,
    response: reqwest::Response,
    offset: u64,
    mut hasher: Sha256,
    progress: &mut FileProgress,
    stop: &Stop,
) -> Result<Sha256, FileError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true);
    if offset > 0 {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let opened = options.open(part).await.map_err(|source| FileError::Io {
        name: file.name.clone(),
        action: "open",
        path: part.to_owned(),
        source,
    })?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, opened);
    let mut written = offset;
    let write_error = |source: std::io::Error, at: u64| {
        if source.kind() == std::io::ErrorKind::StorageFull || source.kind() == std::io::ErrorKind::QuotaExceeded {
            FileError::DiskFull { name: file.name.clone(), path: part.to_owned(), at, size: file.size }
        } else {
            FileError::Io { name: file.name.clone(), action: "write", path: part.to_owned(), source }
        }
    };
    let mut stream = response.bytes_stream();
    let ended = loop {
        let next = tokio::select! {
            biased;
            () = stop.wait() => break Some(STOPPED.to_owned()),
            next = tokio::time::timeout(STALL_TIMEOUT, stream.next()) => next,
        };
        let chunk = match next {
            Err(_) => break Some(format!("no data for {} s", STALL_TIMEOUT.as_secs())),
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(cause(&e.without_url())),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let len = chunk.len() as u64;
        if written.saturating_add(len) > file.size {
            drop(out);
            let _ = tokio::fs::remove_file(part).await;
            return Err(FileError::TooLong { name: file.name.clone(), size: file.size });
        }
        if let Err(e) = out.write_all(&chunk).await {
            // What reached the file is a valid prefix; keep it for the next run.
            let _ = out.flush().await;
            let at = local_len(part).await.unwrap_or(written);
            return Err(write_error(e, at));
        }
        hasher.update(&chunk);
        written += len;
        progress.advance(len);
    };
    if let Err(e) = out.flush().await {
        let at = local_len(part).await.unwrap_or(written);
        return Err(write_error(e, at));
    }
    let opened = out.into_inner();
    opened.sync_all().await.map_err(|e| write_error(e, written))?;
    if written < file.size {
        let cause = ended.unwrap_or_else(|| "the connection closed early".to_owned());
        return Err(FileError::Interrupted { name: file.name.clone(), at: written, size: file.size, cause });
    }
    Ok(hasher)
}

async fn local_len(path: &Path) -> Option<u64> {
    tokio::fs::metadata(path).await.ok().map(|m| m.len())
}

/// Renames the verified partial to the final name and syncs the folder, so that after a crash
/// there is either no final file or the whole verified one.
async fn finish(file: &ModelFile, part: &Path, dest: &Path, folder: &Path) -> Result<(), FileError> {
    let io = |action, path: &Path| io_error(file, action, path);
    // The 416 path reaches here without having written: sync what it verified.
    tokio::fs::File::open(part).await.map_err(io("open", part))?.sync_all().await.map_err(io("sync", part))?;
    tokio::fs::rename(part, dest).await.map_err(io("rename the download to", dest))?;
    tokio::fs::File::open(folder).await.map_err(io("open", folder))?.sync_all().await.map_err(io("sync", folder))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn content_range_reads_start_and_total() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(content_range("bytes */200"), None);
    }
}

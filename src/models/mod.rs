//! Model files for ComfyUI from a manifest: `pull` downloads them in parallel (resuming partial
//! downloads, verifying sha256 before a file gets its final name), `verify` checks what is on
//! disk. See docs/models.md.

pub mod disk;
pub mod download;
pub mod local;
pub mod manifest;
pub mod progress;

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use futures_util::StreamExt;

pub use download::FileError;
pub use manifest::{Manifest, ManifestError, ModelFile};

use local::OnDisk;
use progress::Progress;

/// A run that could not start (nothing was downloaded).
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The files still to download do not fit.
    #[error(
        "not enough disk space under {}: {} bytes ({}) still to download, {} bytes ({}) available",
        shortfall.folder.display(),
        shortfall.needed,
        ByteSize(shortfall.needed),
        shortfall.available,
        ByteSize(shortfall.available)
    )]
    NoSpace {
        /// The filesystem that is short.
        shortfall: disk::Shortfall,
    },
    /// The models folder or a file in it cannot be examined.
    #[error("cannot examine {}: {source}", path.display())]
    Examine {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Ctrl-C and SIGTERM handlers cannot be installed.
    #[error("cannot install the Ctrl-C handler: {0}")]
    Signals(std::io::Error),
    /// The HTTP client cannot be built (no TLS roots...).
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// `pull`'s options.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The ComfyUI `models` folder.
    pub models_dir: PathBuf,
    /// Say what would be downloaded; download nothing.
    pub dry_run: bool,
    /// Downloads at once (at least 1).
    pub jobs: usize,
}

/// How a run went, per file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Files verified (present or downloaded).
    pub ok: usize,
    /// Of those, downloaded in this run.
    pub downloaded: usize,
    /// Files that failed.
    pub failed: usize,
    /// Stopped by Ctrl-C or SIGTERM.
    pub stopped: bool,
}

/// What a file needs, by size on disk.
struct Plan<'a> {
    file: &'a ModelFile,
    on_disk: OnDisk,
    /// Bytes still to download (0 for a present file, which is hashed instead).
    to_fetch: u64,
}

fn plan<'a>(manifest: &'a Manifest, models_dir: &Path) -> Result<Vec<Plan<'a>>, PullError> {
    manifest
        .files
        .iter()
        .map(|file| {
            let on_disk = OnDisk::of(file, models_dir)
                .map_err(|source| PullError::Examine { path: file.dest(models_dir), source })?;
            let to_fetch = match on_disk {
                OnDisk::Present => 0,
                OnDisk::Partial(done) if done <= file.size => file.size - done,
                OnDisk::Partial(_) | OnDisk::WrongSize(_) => file.size,
            };
            Ok(Plan { file, on_disk, to_fetch })
        })
        .collect()
}

/// Downloads what is missing (or only says what it would, `dry_run`), printing a line per
/// file; refuses to start when the disk cannot hold it.
pub async fn pull(manifest: &Manifest, options: &PullOptions) -> Result<Summary, PullError> {
    let models_dir = &options.models_dir;
    let plans = plan(manifest, models_dir)?;
    let needs: Vec<(PathBuf, u64)> =
        plans.iter().filter(|p| p.to_fetch > 0).map(|p| (models_dir.join(&p.file.folder), p.to_fetch)).collect();
    let total: u64 = needs.iter().map(|(_, n)| n).sum();
    let available = match disk::check(&needs) {
        Ok(Ok(available)) => available,
        Ok(Err(shortfall)) => return Err(PullError::NoSpace { shortfall }),
        Err(source) => return Err(PullError::Examine { path: models_dir.clone(), source }),
    };
    if options.dry_run {
        return Ok(dry_run(&plans, models_dir, total, available, &needs));
    }
    let client = download::client()?;
    let (stopper, stop) = download::Stop::new();
    let signals = on_signal(stopper)?;
    let progress = Progress::new((total > 0).then_some(total));
    let mut summary = Summary::default();
    let mut runs = futures_util::stream::iter(plans.iter())
        .map(|plan| {
            // A task per file, so that hashing runs on every worker thread, not on this one.
            let (client, file, dir, progress, stop) =
                (client.clone(), plan.file.clone(), models_dir.clone(), progress.clone(), stop.clone());
            let on_disk = plan.on_disk;
            let name = plan.file.name.clone();
            async move {
                let task = tokio::spawn(async move { pull_one(&client, &file, on_disk, &dir, &progress, &stop).await });
                task.await.unwrap_or_else(|e| Err(FileError::Internal { name, cause: e.to_string() }))
            }
        })
        .buffer_unordered(options.jobs.max(1));
    while let Some(result) = runs.next().await {
        match result {
            Ok((downloaded, line)) => {
                summary.ok += 1;
                summary.downloaded += usize::from(downloaded);
                progress.println(&line);
            }
            Err(error) => {
                summary.failed += 1;
                progress.eprintln(&format!("error: {error}"));
            }
        }
    }
    progress.finish();
    signals.abort();
    summary.stopped = stop.asked();
    Ok(summary)
}

/// On the first Ctrl-C or SIGTERM, `stopper` asks the downloads to stop (they keep their
/// partials, flushed); on a second, the process exits at once. The handlers are installed
/// before this returns, so no signal kills a download half-written.
fn on_signal(stopper: tokio::sync::watch::Sender<bool>) -> Result<tokio::task::JoinHandle<()>, PullError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind| signal(kind).map_err(PullError::Signals);
    let (mut interrupt, mut terminate) = (install(SignalKind::interrupt())?, install(SignalKind::terminate())?);
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        let _ = stopper.send(true);
        eprintln!("stopping: the partial downloads are kept for the next run (again to quit at once)");
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        std::process::exit(130);
    }))
}

/// One file: hash it when present, else (or when that fails) download it; whether it was
/// downloaded, and the result line.
async fn pull_one(
    client: &reqwest::Client,
    file: &ModelFile,
    on_disk: OnDisk,
    models_dir: &Path,
    progress: &Progress,
    stop: &download::Stop,
) -> Result<(bool, String), FileError> {
    if stop.asked() {
        return Err(stop.interrupted(file, local::partial_len(file, models_dir).unwrap_or(0)));
    }
    let mut note = String::new();
    match on_disk {
        OnDisk::Present => match hash_present(file, models_dir, progress).await {
            Ok(got) if got == file.sha256 => return Ok((false, format!("{}: ok (already present)", file.label()))),
            Ok(got) => {
                progress.eprintln(&format!(
                    "{}: the present file does not match (sha256 {got}, expected {}); downloading it again",
                    file.label(),
                    file.sha256
                ));
                note = " (replaced a file that did not match)".to_owned();
            }
            Err(error) => return Err(error),
        },
        OnDisk::WrongSize(len) => {
            progress.eprintln(&format!(
                "{}: the present file has {len} bytes, not {}; downloading it again",
                file.label(),
                file.size
            ));
            note = " (replaced a file of the wrong size)".to_owned();
        }
        OnDisk::Partial(_) => {}
    }
    let start = local::partial_len(file, models_dir).unwrap_or(0).min(file.size);
    let mut bar = progress.file(&file.label(), "downloading", file.size, start, true);
    let result = download::fetch(client, file, models_dir, &mut bar, stop).await;
    bar.finish();
    result.map(|fetched| {
        let line = match fetched.resumed_from {
            0 if start > 0 => format!(
                "ok (downloaded {} bytes from the start: the server did not resume the {start}-byte partial; \
                 sha256 verified){note}",
                file.size
            ),
            0 => format!("ok (downloaded {} bytes, sha256 verified){note}", file.size),
            from => format!("ok (resumed at {from} of {} bytes, sha256 verified){note}", file.size),
        };
        (true, format!("{}: {line}", file.label()))
    })
}

/// The sha256 of the file under its final name.
async fn hash_present(file: &ModelFile, models_dir: &Path, progress: &Progress) -> Result<String, FileError> {
    let dest = file.dest(models_dir);
    let mut bar = progress.file(&file.label(), "verifying", file.size, 0, false);
    let path = dest.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        let result = local::hash_file(&path, |n| bar.advance(n));
        bar.finish();
        result
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    hashed.map_err(|source| FileError::Io { name: file.name.clone(), action: "read", path: dest, source })
}

fn dry_run(plans: &[Plan<'_>], models_dir: &Path, total: u64, available: u64, needs: &[(PathBuf, u64)]) -> Summary {
    println!("models folder: {}", models_dir.display());
    for plan in plans {
        let file = plan.file;
        let what = match plan.on_disk {
            OnDisk::Present => "present (pull verifies its sha256; nothing to download)".to_owned(),
            OnDisk::WrongSize(len) => {
                format!("would download {} bytes ({}), replacing a file of {len} bytes", file.size, ByteSize(file.size))
            }
            OnDisk::Partial(0) => format!("would download {} bytes ({})", file.size, ByteSize(file.size)),
            OnDisk::Partial(done) if done <= file.size => {
                format!("would resume at {done} of {} bytes ({} to download)", file.size, ByteSize(file.size - done))
            }
            OnDisk::Partial(done) => {
                format!("would start over ({done}-byte partial is too long): {} bytes", file.size)
            }
        };
        println!("{}: {what}", file.label());
    }
    let space = if needs.is_empty() {
        String::new()
    } else {
        format!("; {available} bytes ({}) available", ByteSize(available))
    };
    println!("total to download: {total} bytes ({}){space}", ByteSize(total));
    Summary { ok: plans.len(), ..Summary::default() }
}

/// One file's state, as `verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Size and sha256 match.
    Ok,
    /// No final file and no partial.
    Missing,
    /// Only a partial of this many bytes.
    Partial(u64),
    /// The final file has this many bytes.
    WrongSize(u64),
    /// The final file's sha256.
    Mismatch(String),
    /// The file cannot be read.
    Unreadable(String),
}

/// Checks every file under `models_dir` (hashing the present ones), printing a line per file;
/// the number that are not ok.
pub async fn verify(manifest: &Manifest, models_dir: &Path) -> usize {
    let progress = Progress::new(None);
    let mut bad = 0;
    for file in &manifest.files {
        let verdict = match OnDisk::of(file, models_dir) {
            Err(e) => Verdict::Unreadable(e.to_string()),
            Ok(OnDisk::Partial(0)) => Verdict::Missing,
            Ok(OnDisk::Partial(done)) => Verdict::Partial(done),
            Ok(OnDisk::WrongSize(len)) => Verdict::WrongSize(len),
            Ok(OnDisk::Present) => match hash_present(file, models_dir, &progress).await {
                Ok(got) if got == file.sha256 => Verdict::Ok,
                Ok(got) => Verdict::Mismatch(got),
                Err(e) => Verdict::Unreadable(e.to_string()),
            },
        };
        let line = match &verdict {
            Verdict::Ok => "ok".to_owned(),
            Verdict::Missing => "missing".to_owned(),
            Verdict::Partial(done) => {
                format!("partial ({done} of {} bytes): `comfygate models pull` resumes it", file.size)
            }
            Verdict::WrongSize(len) => format!("wrong size ({len} bytes, expected {})", file.size),
            Verdict::Mismatch(got) => format!("checksum mismatch (expected {}, got {got})", file.sha256),
            Verdict::Unreadable(e) => format!("unreadable: {e}"),
        };
        if verdict != Verdict::Ok {
            bad += 1;
        }
        progress.println(&format!("{}: {line}", file.label()));
    }
    progress.finish();
    bad
}

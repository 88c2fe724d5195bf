//! The audit log: one JSON line per security event (logins, logouts, lockouts, tokens, account
//! changes, refusals, admin actions), appended to a private file and to the store before the
//! action it records takes effect. A line that cannot be written refuses that action (fail
//! closed) and marks the log unhealthy ([`Audit::failure`]) until a write succeeds again.
//!
//! Callers build an [`Event`] and [`Audit::record`] it in a [`Context`] (who acts, from where).

pub mod event;
pub mod file;
mod repeats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::store::{AuditRecord, Store};
use crate::time::now_ms;

pub use event::{Context, Event, Outcome};
use file::AuditFile;
use repeats::Repeats;

/// Why an audit line could not be written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The audit file could not be opened or written.
    #[error("cannot write the audit file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The store refused the audit row.
    #[error("cannot write the audit event to the store: {0}")]
    Store(String),
}

/// The audit log of one process.
pub struct Audit {
    file: Arc<Mutex<AuditFile>>,
    path: PathBuf,
    store: Arc<dyn Store>,
    failure: Mutex<Option<String>>,
    repeats: Repeats,
}

impl Audit {
    /// Opens the audit file configured for `config` (`[audit] file`, else
    /// `<data_dir>/audit.jsonl`) and writes events to it and to `store`.
    pub fn open(config: &Config, store: Arc<dyn Store>) -> Result<Self, AuditError> {
        let path = config.audit.file_in(&config.store.data_dir);
        let file = AuditFile::open(&path, config.audit.max_file_size.as_u64(), config.audit.keep)
            .map_err(|e| file_error(&path, &e))?;
        let repeats = Repeats::new(config.audit.repeat_window);
        Ok(Self { file: Arc::new(Mutex::new(file)), path, store, failure: Mutex::new(None), repeats })
    }

    /// The audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` while the audit log is healthy; otherwise why the last write failed (cleared by
    /// the next write that succeeds).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map_or_else(|_| Some("the audit log's state is poisoned".to_owned()), |f| f.clone())
    }

    /// Writes `event` to the file (flushed to the OS) and to the store. An `Err` means the
    /// action the event records must not take effect (or must be undone).
    pub async fn record(&self, context: &Context, event: Event) -> Result<(), AuditError> {
        let at = now_ms();
        let line = event.line(context, at);
        let result = self.write(&event, context, at, line).await;
        self.set_failure(result.as_ref().err());
        match &result {
            // For operators who collect logs: the event in brief (the file and the store are the record).
            Ok(()) => tracing::info!(target: "comfygate::audit", event = event.name(),
                username = %event.username().unwrap_or("-"), address = context.address.as_deref().unwrap_or("-"),
                outcome = event.outcome().as_str()),
            Err(e) => tracing::error!(target: "comfygate::audit", event = event.name(), error = %e,
                "audit log write failed: the action is refused"),
        }
        result
    }

    /// Records a refusal or a failure whose answer is already decided (401, 403, 429): the
    /// answer stays what it is whether or not the line is written (a failing write still
    /// marks the log unhealthy).
    ///
    /// Refusals repeated within `[audit] repeat_window` (same event, user, address, reason and
    /// fields) are coalesced: the first is written, the rest counted, and one line
    /// with `"repeated": n` closes the window (see `repeats.rs`), so a flood of refused
    /// requests cannot fill the disk.
    pub async fn note(&self, context: &Context, event: Event) {
        // Failures (wrong passwords) are bounded by the lockout and each worth its line.
        if event.outcome() != Outcome::Refused {
            let _ = self.record(context, event).await;
            return;
        }
        let admission = self.repeats.admit(context, &event, std::time::Instant::now());
        if let Some((context, summary)) = admission.summary {
            let _ = self.record(&context, summary).await;
        }
        if admission.write {
            let _ = self.record(context, event).await;
        }
    }

    /// Writes the summaries of coalescing windows as they close, and all of them at shutdown.
    pub async fn flush_repeats(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let period = self.repeats.window();
        if period.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(period);
        loop {
            let stopping = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            let now = std::time::Instant::now();
            let closed_by = if stopping { now + period } else { now };
            for (context, summary) in self.repeats.due(closed_by) {
                let _ = self.record(&context, summary).await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn write(&self, event: &Event, context: &Context, at: i64, line: String) -> Result<(), AuditError> {
        let record = AuditRecord {
            at,
            event: event.name().to_owned(),
            username: event.username().map(str::to_owned),
            token_id: event.token_id(),
            address: context.address.clone(),
            line,
        };
        self.append(record.line.clone()).await?;
        if let Err(e) = self.store.insert_audit_event(&record).await {
            // The file now holds a line for an action that will be refused: say so after it.
            let note = Event::failure("audit_write_failed")
                .reason(format!("store: {e}"))
                .field("failed_event", event.name())
                .line(&Context::gateway("audit"), now_ms());
            let _ = self.append(note).await;
            return Err(AuditError::Store(e.to_string()));
        }
        Ok(())
    }

    /// Appends one line to the file, off the async workers.
    async fn append(&self, line: String) -> Result<(), AuditError> {
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), AuditError> {
            let mut file = file.lock().map_err(|_| AuditError::File {
                path: path.display().to_string(),
                reason: "the audit file's lock is poisoned".to_owned(),
            })?;
            file.append(&line).map_err(|e| file_error(file.path(), &e))
        })
        .await
        .map_err(|e| AuditError::File { path: self.path.display().to_string(), reason: e.to_string() })?
    }

    fn set_failure(&self, error: Option<&AuditError>) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = error.map(ToString::to_string);
        }
    }

    /// Deletes audit events older than `retention` from the store, at start and then hourly.
    pub async fn purge(
        store: Arc<dyn Store>,
        retention: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let cutoff = now_ms().saturating_sub(crate::time::ms(retention));
            match store.purge_audit_events(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "purged audit events past their retention"),
                Err(e) => tracing::warn!(error = %e, "cannot purge audit events"),
            }
        }
    }
}

fn file_error(path: &Path, e: &std::io::Error) -> AuditError {
    AuditError::File { path: path.display().to_string(), reason: e.to_string() }
}

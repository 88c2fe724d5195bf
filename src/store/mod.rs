//! The gateway's state: users, API tokens, sessions and the revocation epoch.
//!
//! Reached only through the [`Store`] trait, with one implementation per database
//! ([`sqlite`], [`postgres`]) sharing the same SQL ([`sql`]) and mirrored migrations.

pub mod backup;
mod idempotency;
mod model;
mod outbox;
mod postgres;
pub mod private;
mod probe;
pub mod running;
pub mod schema;
mod sql;
mod sqlite;
pub mod usage;

use std::sync::Arc;

use async_trait::async_trait;

pub use idempotency::{IdempotencyRecord, KEEP_FOR as IDEMPOTENCY_KEEP_FOR};
pub use model::{
    ApiToken, AuditQuery, AuditRecord, Job, JobState, NewSession, NewToken, NewUser, Role, Session, StoredFile,
    TokenKind, User, UserLimits,
};
pub use outbox::{Attempted, Delivery, NewDelivery};
pub use probe::Probe;
pub use usage::{UsageGroup, UsageQuery, UsageRecord, UsageTotals};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique name is taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// The database said no.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value makes no sense (hand-edited database?).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The URL names no supported database.
    #[error("unsupported database URL (use sqlite://path or postgres://...)")]
    UnsupportedUrl,
    /// The SQLite file does not exist (and this command does not create stores).
    #[error(
        "no store at {0}: `comfygate serve` or `comfygate init` creates it; check that --config names the \
         gateway's configuration (relative paths in it are resolved against its folder)"
    )]
    Missing(String),
    /// The data folder or database file could not be created or made private.
    #[error("cannot create {path} readable by the gateway only: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A batch of "last used at" times: `(id, unix ms)`.
pub type UseTimes = [(i64, i64)];

/// Everything the gateway keeps, whatever the database.
///
/// Every method that revokes access (password change, disable, delete, token or session
/// revocation) also bumps the revocation epoch in the same transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Whether other gateway processes (replicas) may write to this store at the same time.
    fn shared(&self) -> bool;
    /// Answers a trivial query: whether the database is reachable now.
    async fn ping(&self) -> StoreResult<()>;
    /// Closes every connection (at shutdown); every later call fails.
    async fn close(&self);
    /// Creates a user; [`StoreError::Conflict`] if the name is taken.
    async fn create_user(&self, new: NewUser) -> StoreResult<User>;
    /// A user by (lower-case) name.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<User>>;
    /// Every user, by name.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// How many users exist.
    async fn count_users(&self) -> StoreResult<i64>;
    /// How many enabled admins exist.
    async fn count_active_admins(&self) -> StoreResult<i64>;
    /// Sets a new password hash, ends every session of the user and revokes every token a
    /// session of theirs minted without `keep`; returns the ids of those tokens.
    async fn set_password(&self, user_id: i64, password_hash: &str) -> StoreResult<Vec<i64>>;
    /// Replaces the hash of the same password (argon2id upgrade); sessions stay.
    async fn rehash_password(&self, user_id: i64, password_hash: &str) -> StoreResult<()>;
    /// Disables or enables a user; disabling ends every session.
    async fn set_disabled(&self, user_id: i64, disabled: bool) -> StoreResult<()>;
    /// Changes a user's role.
    async fn set_role(&self, user_id: i64, role: Role) -> StoreResult<()>;
    /// Deletes a user with its tokens and sessions.
    async fn delete_user(&self, user_id: i64) -> StoreResult<()>;

    /// Stores a new token (its hash only).
    async fn create_token(&self, new: NewToken) -> StoreResult<ApiToken>;
    /// Tokens of one user, or of everyone.
    async fn list_tokens(&self, user_id: Option<i64>) -> StoreResult<Vec<ApiToken>>;
    /// The token with this SHA-256 hex digest, with its owner.
    async fn token_by_hash(&self, token_hash: &str) -> StoreResult<Option<(ApiToken, User)>>;
    /// Revokes a token; false if it was unknown or already revoked.
    async fn revoke_token(&self, token_id: i64, now: i64) -> StoreResult<bool>;
    /// Records when tokens were last used.
    async fn record_token_use(&self, uses: &UseTimes) -> StoreResult<()>;

    /// Stores a new session (its hash only).
    async fn create_session(&self, new: NewSession) -> StoreResult<Session>;
    /// The session with this SHA-256 hex digest, with its user.
    async fn session_by_hash(&self, token_hash: &str) -> StoreResult<Option<(Session, User)>>;
    /// Ends one session and revokes the tokens it minted without `keep`; returns their ids.
    async fn revoke_session(&self, session_id: i64, now: i64) -> StoreResult<Vec<i64>>;
    /// Records when sessions were last seen.
    async fn record_session_use(&self, uses: &UseTimes) -> StoreResult<()>;
    /// Counts sessions neither revoked, past their end at `now`, nor idle since before
    /// `idle_since`.
    async fn count_sessions(&self, now: i64, idle_since: i64) -> StoreResult<i64>;
    /// Deletes revoked sessions and those past their end or idle since before `idle_since`.
    async fn purge_sessions(&self, now: i64, idle_since: i64) -> StoreResult<u64>;

    /// Takes one login attempt from throttle `key`, atomically (concurrent attempts in any
    /// process cannot all pass): `None` if granted, else the time (unix ms) the key is blocked
    /// until (not after `now` when it is refused because `limit` attempts are still in flight).
    /// A key quiet since before `forget_before` starts a fresh round.
    async fn take_login_attempt(&self, key: &str, limit: i64, now: i64, forget_before: i64)
    -> StoreResult<Option<i64>>;
    /// A taken attempt failed: if the round is full, the key is blocked for `base_ms` (doubling
    /// with each block, up to `max_ms`), after which one more attempt is allowed.
    async fn login_attempt_failed(&self, key: &str, limit: i64, now: i64, base_ms: i64, max_ms: i64)
    -> StoreResult<()>;
    /// Gives a taken attempt back (it succeeded, or was never checked); `forget` drops the key.
    async fn return_login_attempt(&self, key: &str, forget: bool) -> StoreResult<()>;
    /// Deletes throttle keys quiet since before `before`.
    async fn purge_login_throttle(&self, before: i64) -> StoreResult<u64>;
    /// Records that `user_id` logged in from `address` at `now`.
    async fn record_login_address(&self, user_id: i64, address: &str, now: i64) -> StoreResult<()>;
    /// Whether `user_id` logged in from `address` at or after `since`.
    async fn known_login_address(&self, user_id: i64, address: &str, since: i64) -> StoreResult<bool>;
    /// Throttle keys blocked past `now`, with the time (unix ms) each is blocked until.
    async fn blocked_login_keys(&self, now: i64) -> StoreResult<Vec<(String, i64)>>;
    /// Deletes throttle key `exact` and every key starting with `prefix`; returns how many.
    async fn clear_login_keys(&self, exact: &str, prefix: &str) -> StoreResult<u64>;
    /// Each user's latest login (user id, unix ms), for users who ever logged in.
    async fn last_logins(&self) -> StoreResult<Vec<(i64, i64)>>;
    /// The sessions of `user_id` neither revoked nor past their end at `now`, newest first.
    async fn sessions_of(&self, user_id: i64, now: i64) -> StoreResult<Vec<Session>>;
    /// The highest bcrypt cost among the stored password hashes (imported ComfyUI-Login
    /// accounts not yet upgraded), if there are any.
    async fn max_bcrypt_cost(&self) -> StoreResult<Option<u32>>;

    /// The current revocation epoch.
    async fn revocation_epoch(&self) -> StoreResult<i64>;
    /// Says that gateway `instance` is alive and has applied `applied_epoch`.
    async fn heartbeat(&self, instance: &str, applied_epoch: i64, now: i64) -> StoreResult<()>;
    /// Live gateways (heartbeat after `alive_since`) that have not applied `epoch` yet.
    async fn lagging_instances(&self, epoch: i64, alive_since: i64) -> StoreResult<i64>;
    /// Forgets a gateway that is shutting down.
    async fn remove_instance(&self, instance: &str) -> StoreResult<()>;

    /// Records a new job; [`StoreError::Conflict`] if its owner already has a job with that
    /// public id.
    async fn insert_job(&self, job: &Job) -> StoreResult<()>;
    /// Moves a job to a new state (and backend / error); a job that has ended (done, failed,
    /// cancelled) stays as it ended, so a late write can never revive it.
    async fn update_job(
        &self,
        prompt_id: &str,
        state: JobState,
        backend: Option<&str>,
        error: Option<&str>,
    ) -> StoreResult<()>;
    /// One job, by the id the backends see.
    async fn job(&self, prompt_id: &str) -> StoreResult<Option<Job>>;
    /// One of `user_id`'s jobs, by the id they know it by.
    async fn job_of(&self, user_id: i64, public_id: &str) -> StoreResult<Option<Job>>;
    /// Jobs in the given states, by number.
    async fn jobs_in_states(&self, states: &[JobState]) -> StoreResult<Vec<Job>>;
    /// The stored requests of the given jobs (those that exist), by prompt id.
    async fn job_requests(&self, prompt_ids: &[String]) -> StoreResult<std::collections::HashMap<String, String>>;
    /// Ends a job (done, failed, cancelled) with its history entry; a job that has ended
    /// already stays as it ended.
    async fn end_job(
        &self,
        prompt_id: &str,
        state: JobState,
        backend: Option<&str>,
        error: Option<&str>,
        outcome: Option<&str>,
    ) -> StoreResult<()>;
    /// How many history entries `user_id` (everyone's: `None`) has.
    async fn history_count(&self, user_id: Option<i64>) -> StoreResult<i64>;
    /// History entries in the order the jobs ended (ComfyUI's order), from `offset`.
    async fn history_page(&self, user_id: Option<i64>, offset: i64, limit: i64) -> StoreResult<Vec<Job>>;
    /// Ended jobs still in the history, by submission time (newest first when `newest_first`),
    /// `limit` from `offset`; `failed`: only failed ones (`Some(true)`), only the others, or all.
    async fn ended_jobs(
        &self,
        user_id: Option<i64>,
        failed: Option<bool>,
        newest_first: bool,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Vec<Job>>;
    /// How many jobs [`Store::ended_jobs`] would list without a limit.
    async fn ended_count(&self, user_id: Option<i64>, failed: Option<bool>) -> StoreResult<i64>;
    /// Takes history entries out of the history (the given jobs, or all) of `user_id`
    /// (anyone's: `None`); returns how many.
    async fn hide_history(&self, user_id: Option<i64>, prompt_ids: Option<&[String]>) -> StoreResult<u64>;
    /// Deletes jobs that ended before `ended_before` (unix ms); returns how many.
    async fn purge_jobs(&self, ended_before: i64) -> StoreResult<u64>;
    /// When `user_id`'s jobs submitted since `since` (unix ms) were submitted, newest first, at
    /// most `limit`.
    async fn submissions_since(&self, user_id: i64, since: i64, limit: i64) -> StoreResult<Vec<i64>>;
    /// The limits set for a user.
    async fn user_limits(&self, user_id: i64) -> StoreResult<UserLimits>;
    /// Sets a user's limits (all of them: `None` returns one to the default).
    async fn set_user_limits(&self, user_id: i64, limits: &UserLimits) -> StoreResult<()>;
    /// Whether jobs of `user_id` (submitted with `token_id`, if any) may still run: the user
    /// exists and is enabled, and the token is neither revoked nor expired at `now`.
    async fn owner_active(&self, user_id: i64, token_id: Option<i64>, now: i64) -> StoreResult<bool>;
    /// The highest job number given so far (0 if none).
    async fn max_job_number(&self) -> StoreResult<i64>;
    /// The next queue number from the store's own sequence, when several gateways submit to it
    /// (PostgreSQL); `None` when one gateway alone numbers its jobs (SQLite).
    async fn next_job_number(&self) -> StoreResult<Option<i64>>;
    /// Takes the next scheduling term for `instance` (which holds the scheduler's lock) and
    /// returns it: claims made under older terms fail from now on.
    async fn take_scheduler_term(&self, instance: &str, now: i64) -> StoreResult<i64>;
    /// Claims a job for a dispatch to `backend` under `term`: it becomes `dispatched` there,
    /// unless it has ended or `term` is no longer the store's (another gateway schedules now).
    async fn claim_job(&self, prompt_id: &str, backend: &str, term: i64) -> StoreResult<bool>;
    /// The jobs waiting, dispatched or running, by number, without their requests (for the
    /// queue views of a gateway that does not schedule).
    async fn held_jobs_brief(&self) -> StoreResult<Vec<Job>>;
    /// Gateway ids of the jobs waiting in the queue that were submitted before `before` (ms).
    async fn queued_job_ids(&self, before: i64) -> StoreResult<Vec<String>>;
    /// Records which backend holds a file.
    async fn record_file(&self, file: &StoredFile) -> StoreResult<()>;
    /// The files of one kind (`input`, `output`, `temp`) recorded as `user_id`'s, newest first.
    async fn files_of(&self, user_id: i64, kind: &str, limit: i64) -> StoreResult<Vec<StoredFile>>;
    /// The backend known to hold a file: the `prefer_user`'s own record first, then the newest.
    async fn file(
        &self,
        kind: &str,
        subfolder: &str,
        filename: &str,
        prefer_user: i64,
    ) -> StoreResult<Option<StoredFile>>;

    /// Appends one audit event.
    async fn insert_audit_event(&self, record: &AuditRecord) -> StoreResult<()>;
    /// The JSON lines of the audit events `query` selects, newest first.
    async fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<String>>;
    /// Deletes audit events older than `before` (unix ms); returns how many.
    async fn purge_audit_events(&self, before: i64) -> StoreResult<u64>;
    /// The addresses recorded as `event` for token `token_id` (at most `limit`).
    async fn audit_token_addresses(&self, token_id: i64, event: &str, limit: i64) -> StoreResult<Vec<String>>;

    /// Claims `user_id`'s idempotency `key` for a body with digest `body_sha256`, atomically
    /// (of concurrent claims in any process exactly one wins): true if this call claimed it. A
    /// row claimed before `expired_before`, or still unanswered since before `abandoned_before`,
    /// is forgotten first.
    async fn claim_idempotency_key(
        &self,
        user_id: i64,
        key: &str,
        body_sha256: &str,
        now: i64,
        expired_before: i64,
        abandoned_before: i64,
    ) -> StoreResult<bool>;
    /// `user_id`'s idempotency key `key`, if claimed.
    async fn idempotency_key(&self, user_id: i64, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
    /// Stores the answer of a claimed key (once: an answered key keeps its first answer).
    async fn answer_idempotency_key(
        &self,
        user_id: i64,
        key: &str,
        status: i32,
        answer: &str,
        retry_after: Option<i64>,
    ) -> StoreResult<()>;
    /// Gives up a claim that has no answer (the request failed, or its answer is not kept).
    async fn release_idempotency_key(&self, user_id: i64, key: &str) -> StoreResult<()>;
    /// Deletes idempotency keys claimed before `before` (unix ms); returns how many.
    async fn purge_idempotency_keys(&self, before: i64) -> StoreResult<u64>;

    /// Adds a pending webhook delivery, due now; a message id already there is left as it is.
    async fn insert_delivery(&self, new: &NewDelivery) -> StoreResult<()>;
    /// Claims up to `limit` pending deliveries due at `now` and not claimed by anyone, until
    /// `lock_until`: an atomic conditional update, so no two workers claim the same row.
    async fn claim_deliveries(&self, now: i64, lock_until: i64, limit: i64) -> StoreResult<Vec<Delivery>>;
    /// Records one attempt of delivery `id` and releases its claim.
    async fn delivery_attempted(&self, id: i64, outcome: &Attempted) -> StoreResult<()>;
    /// The newest deliveries of `user_id` (everyone's: `None`), at most `limit`.
    async fn deliveries(&self, user_id: Option<i64>, limit: i64) -> StoreResult<Vec<Delivery>>;
    /// When the next pending delivery is due (unix ms), if there is one.
    async fn next_delivery_due(&self) -> StoreResult<Option<i64>>;
    /// Deletes delivered and failed deliveries made before `before`; returns how many.
    async fn purge_deliveries(&self, before: i64) -> StoreResult<u64>;
    /// Sets (or clears) token `token_id`'s default webhook spec (JSON text).
    async fn set_token_webhook(&self, token_id: i64, spec: Option<&str>) -> StoreResult<()>;
    /// Token `token_id`'s default webhook spec (JSON text), if it has one.
    async fn token_webhook(&self, token_id: i64) -> StoreResult<Option<String>>;
    /// Adds a finished job to the usage ledger; false (and nothing written) if it is there
    /// already.
    async fn record_usage(&self, record: &UsageRecord) -> StoreResult<bool>;
    /// Usage totals of the jobs `query` selects, one row per group, by group name.
    async fn usage_totals(&self, query: &UsageQuery) -> StoreResult<Vec<UsageTotals>>;
    /// `(user_id, ended_at, run_ms)` of the ledger's jobs of `user_id` (everyone's: `None`)
    /// that ended at or after `since` and ran, oldest first.
    async fn gpu_ms_since(&self, user_id: Option<i64>, since: i64) -> StoreResult<Vec<(i64, i64, i64)>>;

    /// Drains backend `name` (by `by`, at `now`) or resumes it; whether that changed anything.
    async fn set_backend_drain(&self, name: &str, drained: bool, by: &str, now: i64) -> StoreResult<bool>;
    /// The names of the drained backends.
    async fn drained_backends(&self) -> StoreResult<Vec<String>>;
    /// How many jobs each backend holds (dispatched or running), by backend name.
    async fn jobs_on_backends(&self) -> StoreResult<Vec<(String, i64)>>;
}

/// Opens (and migrates) the database named by `url`, creating a missing SQLite file (what
/// `serve` and `init` do).
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// [`open`], but a SQLite file that does not exist is an error, not a new empty store: the
/// commands that manage a gateway's accounts must not quietly work on another one.
pub async fn open_existing(url: &str) -> StoreResult<Arc<dyn Store>> {
    if let Some(file) = sqlite::file_of(url)? {
        if !file.exists() {
            return Err(StoreError::Missing(file.display().to_string()));
        }
    }
    open(url).await
}

/// Which store `url` names, for people: the SQLite file, or the PostgreSQL server and database
/// without the password.
pub fn describe(url: &str) -> String {
    if let Ok(Some(file)) = sqlite::file_of(url) {
        let file = std::path::absolute(&file).unwrap_or(file);
        return format!("SQLite {}", file.display());
    }
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split('?').next().unwrap_or_default();
            let rest = match rest.rsplit_once('@') {
                Some((user, host)) => format!("{}@{host}", user.split(':').next().unwrap_or_default()),
                None => rest.to_owned(),
            };
            format!("PostgreSQL {scheme}://{rest}")
        }
        None => "an unrecognised store URL".to_owned(),
    }
}

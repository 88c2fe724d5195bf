//! The embedded default: SQLite in WAL mode.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::sql::{
    BLOCK_LOGIN_KEY, BUMP_EPOCH, ENDED_STATES, FileRow, JOB_COLUMNS, JobRow, REVOKE_SESSION_TOKENS, REVOKE_USER_SESSION_TOKENS,
    SESSION_SELECT, SessionRow, TAKE_LOGIN_ATTEMPT, TOKEN_SELECT, TokenRow, USER_COLUMNS, UserRow, impl_store, map_conflict,
};
use super::{
    ApiToken, Job, JobState, NewSession, NewToken, NewUser, Role, Session, StoreError, StoreResult, StoredFile,
    UseTimes, User,
};

/// A [`Store`](super::Store) on a SQLite file.
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

impl SqliteStore {
    /// Opens `sqlite://path` (creating the file and its folder) and migrates it.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
        }
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

// One gateway process per SQLite file (replicas share PostgreSQL).
impl_store!(SqliteStore, sqlx::Sqlite, shared: false);

//! The embedded default: SQLite in WAL mode.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::sql::{
    BLOCK_LOGIN_KEY, BUMP_EPOCH, ENDED_STATES, FileRow, JOB_COLUMNS, JobRow, REVOKE_SESSION_TOKENS,
    REVOKE_USER_SESSION_TOKENS, SESSION_SELECT, SessionRow, TAKE_LOGIN_ATTEMPT, TOKEN_SELECT, TokenRow, USER_COLUMNS,
    UserRow, impl_store, map_conflict,
};
use super::{
    ApiToken, Job, JobState, NewSession, NewToken, NewUser, Role, Session, StoreError, StoreResult, StoredFile,
    UseTimes, User, private,
};

/// A [`Store`](super::Store) on a SQLite file.
/// The file a `sqlite:` URL names (`None`: not a SQLite URL, or an in-memory database).
pub(super) fn file_of(url: &str) -> StoreResult<Option<PathBuf>> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let file = SqliteConnectOptions::from_str(url)?.get_filename().to_path_buf();
    Ok((!file.as_os_str().is_empty() && file.as_os_str() != ":memory:").then_some(file))
}

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
            // 1 MiB of page cache per connection (SQLite's default is 2 MiB): the pool's caches
            // are part of the gateway's steady memory, and the OS caches the file anyway.
            .pragma("cache_size", "-1024")
            .busy_timeout(Duration::from_secs(10));
        let file = options.get_filename().to_path_buf();
        let in_memory = file.as_os_str().is_empty() || file.as_os_str() == ":memory:";
        let data_dir = |source| StoreError::DataDir { path: file.display().to_string(), source };
        if !in_memory {
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                private::create_dir_all(dir).map_err(data_dir)?;
                private::warn_if_shared(dir);
            }
            // Created private before SQLite opens it (SQLite would make it 0644 under umask 022).
            private::create_file(&file).map_err(data_dir)?;
        }
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        if !in_memory {
            // SQLite gives its journal files the database's mode; made sure of here.
            for suffix in ["-wal", "-shm", "-journal"] {
                let mut name = file.clone().into_os_string();
                name.push(suffix);
                private::make_private(Path::new(&name)).map_err(data_dir)?;
            }
        }
        Ok(Self { pool })
    }
}

// One gateway process per SQLite file (replicas share PostgreSQL).
impl_store!(SqliteStore, sqlx::Sqlite, shared: false);
